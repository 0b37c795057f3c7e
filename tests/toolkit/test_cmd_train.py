from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from seg import train
from seg.toolkit.cli import app
from tests.helpers import make_dataset, write_png

runner = CliRunner()


def _corrupt_png(root: Path) -> None:
    (root / "train/image/01.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: [p.unlink() for p in (root / "train/image").iterdir()], "no images found"),
        (lambda root: (root / "train/label/01.png").unlink(), "01.png: no label with the same name"),
        (lambda root: write_png(root / "train/label/02.png", np.zeros((8, 8), np.uint8)), "does not match image"),
        (_corrupt_png, "train/image/01.png: "),
        (lambda root: (root / "train/label/00.png").write_bytes(b""), "train/label/00.png: empty file (0 bytes)"),
    ],
    ids=["empty-folder", "missing-label", "size-mismatch", "corrupt-png", "zero-byte"],
)
def test_bad_data_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, monkeypatch, damage, message) -> None:
    data = make_dataset(tmp_path / "data", n=3, size=32)
    damage(data)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--data", str(data), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_bad_options_exit_2(tmp_path: Path, monkeypatch) -> None:
    data = make_dataset(tmp_path / "data", n=3, size=32)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--data", str(data), "--crop", "20"])
    assert result.exit_code == 2 and "--crop 20: must be a positive multiple of 16" in result.output
    result = runner.invoke(app, ["train", "--data", str(data), "--loss", "l1"])
    assert result.exit_code == 2 and "--loss 'l1': choose one of mse, bce, dice, bce-dice" in result.output
    for option, value in (("--stem", "3"), ("--width", "0"), ("--depth", "0")):
        result = runner.invoke(app, ["train", "--data", str(data), option, value])
        assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output, result.output
    result = runner.invoke(app, ["train", "--data", str(data), "--model", "cnn", "--stem", "2"])
    assert result.exit_code == 2 and "--stem 2: the cnn has no stem; leave --stem out" in result.output
    result = runner.invoke(app, ["train", "--data", str(data), "--depth", "7"])
    assert result.exit_code == 2
    assert "--depth/--stem/--head: depth 7 with stem 2 makes inputs multiples of 256" in result.output
    result = runner.invoke(app, ["train", "--data", str(data), "--depth", "4", "--crop", "48"])
    assert result.exit_code == 2 and "--crop 48: must be a positive multiple of 32 (stem 2 x 2^4" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("value", "message"), [
    ("up", "--label-offset 'up': expected auto, 0 or DY,DX in pixels, e.g. 0.5,0"),
    ("1,2,3", "--label-offset '1,2,3': expected auto, 0 or DY,DX in pixels"),
    ("0,2.5", "--label-offset 0,2.5: each of dy, dx must be within +-2 px"),
])
def test_bad_label_offset_exits_2_naming_the_option(tmp_path: Path, monkeypatch, value: str, message: str) -> None:
    data = make_dataset(tmp_path / "data", n=3, size=32)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--data", str(data), "--label-offset", value])
    assert result.exit_code == 2 and message in result.output.replace("\n", ""), result.output
    assert not (tmp_path / "runs").exists()


class _Recorder:
    """Stands in for ``seg.train.fit`` / ``seg.train.resume``: records the call, returns a finished run."""

    def __init__(self, tmp_path: Path) -> None:
        self.calls: list[tuple[str, object, dict]] = []
        self.run_dir = tmp_path / "runs" / "train" / "fake"

    def fit(self, config: object, progress: bool = True) -> object:
        self.calls.append(("fit", config, {"progress": progress}))
        return self._result()

    def resume(self, run: object, progress: bool = True, time_budget: float | None = None) -> object:
        self.calls.append(("resume", run, {"progress": progress, "time_budget": time_budget}))
        return self._result()

    def _result(self) -> object:
        from seg.train.trainer import TrainResult

        return TrainResult(self.run_dir, 3, 2, 0.0512, 0.8123, 12.5, "time budget", "CPU", (0.575, 0.15))


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    """``seg train`` through the real CLI, with the fit/resume functions and the figures replaced by records."""
    from seg import train
    from seg.toolkit.evaluation import figures

    fake = _Recorder(tmp_path)
    monkeypatch.setattr(train, "fit", fake.fit)
    monkeypatch.setattr(train, "resume", fake.resume)
    monkeypatch.setattr(figures, "write_run_figures", lambda run_dir: fake.calls.append(("figures", run_dir, {})))
    return fake


@pytest.mark.parametrize(
    ("args", "want"),
    [((), ("unet", 16, 3, 2, True, 0)), (("--stem", "1", "--width", "8", "--depth", "4"), ("unet", 8, 4, 1, True, 0)),
     (("--model", "cnn"), ("cnn", 32, 4, 1, True, 0)), (("--no-batch-norm",), ("unet", 16, 3, 2, False, 0)),
     (("--head", "8"), ("unet", 16, 3, 2, True, 8))],
)
def test_model_options_reach_the_training_config(recorder: _Recorder, tmp_path: Path, args: tuple[str, ...],
                                                 want: tuple) -> None:
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "data"), *args])
    assert result.exit_code == 0, result.output
    (kind, config, options), figures_call = recorder.calls
    assert kind == "fit" and options == {"progress": True} and figures_call == ("figures", recorder.run_dir, {})
    spec = config.model
    assert (spec.kind, spec.width, spec.depth, spec.stem, spec.batch_norm, spec.head) == want
    defaults = train.TrainConfig(data="d")  # the CLI repeats the recipe's defaults (it must not import scipy)
    assert (config.elastic, config.border_weight, config.ema) == (defaults.elastic, defaults.border_weight,
                                                                   defaults.ema)
    assert config.label_offset is None and defaults.label_offset is None  # measured on the training slices


def test_every_training_option_reaches_the_config_and_the_summary_is_printed(recorder: _Recorder,
                                                                             tmp_path: Path) -> None:
    args = ["--loss", "bce", "--epochs", "7", "--steps-per-epoch", "11", "--batch", "3", "--crop", "64",
            "--lr", "0.001", "--val", "0.3", "--seed", "5", "--time-budget", "90", "--patience", "4", "--no-elastic",
            "--border-weight", "2.5", "--ema", "0.99", "--label-offset", "0.5,-0.25", "--amp", "--name", "mine",
            "--quiet"]
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "data"), *args])
    assert result.exit_code == 0, result.output
    _, config, options = recorder.calls[0]
    assert options == {"progress": False}
    keys = ("data", "loss", "epochs", "steps_per_epoch", "batch", "crop", "lr", "val", "seed", "time_budget",
            "patience", "elastic", "border_weight", "ema", "label_offset", "amp", "name")
    got = {key: getattr(config, key) for key in keys}
    assert got == {"data": str(tmp_path / "data"), "loss": "bce", "epochs": 7, "steps_per_epoch": 11, "batch": 3,
                   "crop": 64, "lr": 0.001, "val": 0.3, "seed": 5, "time_budget": 90.0, "patience": 4,
                   "elastic": False, "border_weight": 2.5, "ema": 0.99, "label_offset": (0.5, -0.25), "amp": True,
                   "name": "mine"}
    assert "3 epochs on CPU (stopped: time budget), 12.5 crops/s; best epoch 2: val MSE 0.0512, " in result.output
    assert "val membrane F1 0.8123" in result.output
    assert "labels sit (+0.57, +0.15) px (dy, dx) from their images; every flip kept them there" in result.output


def test_resume_is_wired_with_its_budget(recorder: _Recorder) -> None:
    result = runner.invoke(app, ["train", "--resume", "old-run", "--time-budget", "60", "--quiet"])
    assert result.exit_code == 0, result.output
    assert recorder.calls[0] == ("resume", "old-run", {"progress": False, "time_budget": 60.0})
    assert "ignored" not in result.output


def test_resume_names_the_options_it_does_not_use(recorder: _Recorder) -> None:
    result = runner.invoke(app, ["train", "--data", "elsewhere", "--resume", "old-run", "--width", "32", "--quiet"])
    assert result.exit_code == 0, result.output
    assert recorder.calls[0][0] == "resume"
    assert ("warning: --resume continues the run with the settings in its config.json; --data, --width ignored "
            "(only --time-budget and --quiet apply)") in " ".join(result.output.split())


def _modules_after(code: str) -> set[str]:
    """Modules loaded by ``code`` in a fresh interpreter started outside the repository (so only the installed
    ``seg`` package can be imported, never the source folders by accident)."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).parents[3]).stdout
    return set(out.split())


HEAVY = {"tensorflow", "keras", "tf2onnx", "matplotlib", "dask", "zarr", "torch", "jax"}


@pytest.mark.parametrize(
    "code",
    ["import seg.runtime", "from seg.runtime import Segmenter, read_image, segment_paths",
     "import seg.train, seg.train.data, seg.train.models, seg.train.augment",
     "import seg.export",
     "from typer.testing import CliRunner; from seg.toolkit.cli import app; CliRunner().invoke(app, ['--help']); "
     "CliRunner().invoke(app, ['train', '--help'])"],
    ids=["runtime", "runtime-api", "train-data", "export", "seg-help"],
)
def test_light_imports_load_no_heavy_framework(code: str) -> None:
    assert not HEAVY & _modules_after(code)


def test_runtime_imports_nothing_above_it() -> None:
    loaded = _modules_after("import seg.runtime")
    assert not {"seg.train", "seg.export", "seg.toolkit", "onnx"} & loaded


@pytest.mark.parametrize("name", ["runtime", "train", "export", "toolkit"])
def test_no_generic_top_level_package_is_installed(name: str) -> None:
    result = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True,
                            cwd=Path(__file__).parents[3])
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr
