"""``seg export`` through the CLI: the no-flag default, the gate's exit code, bad inputs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from seg.runtime.errors import InputError
from seg.toolkit.cli import app
from seg.train.runs import newest_run, resolve_model

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, labelled_dir: Path) -> Path:
    import keras

    from seg.train.models import ModelSpec, build_model
    from tests.export.conftest import save_run

    keras.utils.set_random_seed(1)
    spec = ModelSpec(width=2, depth=1, batch_norm=False)
    return save_run(tmp_path_factory.mktemp("cli") / "tiny", build_model(spec), labelled_dir, spec.to_dict())


def _error_line(result: Any) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.slow
def test_export_defaults_to_the_newest_run(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(tiny_run, tmp_path / "runs" / "train" / "20250101-000000")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", "model.onnx"])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "max |Δ|" in result.output and "mask agreement" in result.output
    assert "graph clean-up: 2 identity crops after up-convolutions removed" in result.output  # depth 1 + stem
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.parity.json").is_file()


@pytest.mark.slow
def test_failed_gate_exits_1_and_writes_no_model(tiny_run: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from seg.export import convert

    real_convert = convert.convert_keras

    def tampered(model: Any, opset: int = 17) -> Any:
        proto = real_convert(model, opset)
        weights = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
        weights.raw_data = bytes(len(weights.raw_data))  # zero one conv kernel
        return proto

    monkeypatch.setattr(convert, "convert_keras", tampered)
    out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", str(out), "--weights", str(tiny_run)])
    assert result.exit_code == 1, result.output
    assert "model.onnx: parity gate FAILED (max |Δ|" in _error_line(result)
    assert not out.exists() and (tmp_path / "model.parity.json").is_file()


def _lambda_model(folder: Path) -> Path:
    import keras

    inputs = keras.Input((None, None, 1))
    keras.Model(inputs, keras.layers.Lambda(lambda t: t + 1.0)(inputs)).save(folder / "lambda.keras")
    return folder / "lambda.keras"


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "missing.keras", "missing.keras: no such model; give a .keras or .onnx file, a run folder"),
    (lambda d: (d / "fake.keras").write_text("not a zip") and d / "fake.keras", "fake.keras: not a Keras model"),
    (_lambda_model, "lambda.keras: cannot load as a Keras model: it contains a Lambda layer"),
])
def test_bad_weights_exit_2_with_one_line(tmp_path: Path, make: Any, message: str) -> None:
    result = runner.invoke(app, ["export", str(tmp_path / "model.onnx"), "--weights", str(make(tmp_path))])
    assert result.exit_code == 2, result.output
    assert message in _error_line(result)
    assert not (tmp_path / "model.onnx").exists()


def test_no_run_and_bad_out_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", "model.onnx"])
    assert result.exit_code == 2
    assert "runs/train: no finished training run found; run `seg train --data DIR` first" in _error_line(result)
    (tmp_path / "w.keras").write_text("x")
    result = runner.invoke(app, ["export", "model.txt", "--weights", "w.keras"])
    assert result.exit_code == 2
    assert "model.txt: the output must end in .onnx, e.g. model.onnx" in _error_line(result)


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--opset", "5", "--opset 5: unsupported; use 13 to "), ("--atol", "-1", "--atol -1: must be >= 0")])
def test_impossible_gate_settings_exit_2_before_loading(tmp_path: Path, option: str, value: str,
                                                        message: str) -> None:
    (tmp_path / "w.keras").write_bytes(b"not loaded: the settings are checked first")
    result = runner.invoke(app, ["export", str(tmp_path / "m.onnx"), "--weights", str(tmp_path / "w.keras"),
                                 option, value])
    assert result.exit_code == 2 and message in _error_line(result)
    assert [p.name for p in tmp_path.iterdir()] == ["w.keras"]


def test_resolve_model(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "model.keras").write_text(name)
    (root / "empty").mkdir()
    assert newest_run(root) in (root / "a", root / "b")
    assert resolve_model(None, root) == newest_run(root) / "model.keras"
    assert resolve_model("a", root) == root / "a" / "model.keras"
    assert resolve_model(root / "b", root) == root / "b" / "model.keras"
    assert resolve_model(root / "b" / "model.keras", root) == root / "b" / "model.keras"
    with pytest.raises(InputError, match=r"empty/model.keras: no such file; the run has no best model yet"):
        resolve_model("empty", root)
    (root / "b" / "model.onnx").write_bytes(b"onnx")
    assert resolve_model(root / "b" / "model.onnx", root) == root / "b" / "model.onnx"
    with pytest.raises(InputError, match=r"^zzz: no such model; give a .keras or .onnx file, a run folder or a run "):
        resolve_model("zzz", root)
