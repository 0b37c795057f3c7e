"""SIGKILL ``seg train`` and ``seg infer`` at seeded random points, then rerun: nothing is ever torn.

After every kill each file the command wrote must decode completely (PNG/TIFF pages, JSON, CSV, .keras),
the best checkpoint must load whenever the state says one exists, and a rerun must finish the job and
remove the temporaries the killed writer left. (``tests/toolkit/test_cmd_infer.py`` has the plain
kill-and-resume folder run; these add training, stacks/prob/overlay outputs and repeated kills.)
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from seg.runtime.atomic import is_temporary
from seg.runtime.errors import SegWarning
from seg.runtime.io import read_pages
from tests.helpers import make_dataset
from tests.reliability import files as f

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
TRAIN = ["--width", "4", "--depth", "2", "--crop", "64", "--batch", "2", "--steps-per-epoch", "3", "--quiet"]
EPOCHS = 6

pytestmark = pytest.mark.slow


def _seg(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "toolkit", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_after(process: subprocess.Popen[bytes], seconds: float, ready: Callable[[], bool] = lambda: True) -> bool:
    """SIGKILL ``process`` ``seconds`` after ``ready()`` turns true; False when it finished first (then it
    must have succeeded)."""
    deadline = time.monotonic() + 300
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True
    stderr = process.stderr.read().decode() if process.stderr else ""
    assert process.returncode == 0, stderr
    return False


def _check_intact(folder: Path) -> dict[str, int]:
    """Every final (non-temporary) file under ``folder`` decodes completely; returns counts per suffix."""
    counts: dict[str, int] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not is_temporary(p)):
        suffix = path.suffix.lower()
        if suffix in (".png", ".tif"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SegWarning)  # RGBA figures are read as gray: fine here
                assert all(page.size for page in read_pages(path)), path
        elif suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif suffix == ".csv":
            rows = list(csv.DictReader(path.open(encoding="utf-8")))
            assert all(None not in row.values() for row in rows), path  # no torn last line
        elif suffix == ".keras":
            import keras

            keras.models.load_model(path, compile=False, safe_mode=True)
        counts[suffix] = counts.get(suffix, 0) + 1
    return counts


def _epoch(run: Path) -> int:
    try:
        return int(json.loads((run / "state.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if is_temporary(p)] if folder.exists() else []


# -- seg train ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_train_killed_repeatedly_resumes_to_the_end_with_its_best_checkpoint(tmp_path: Path, seed: int) -> None:
    data = make_dataset(tmp_path / "data", n=4, size=64, seed=seed)
    run = tmp_path / "runs" / "train" / "r"
    rng = np.random.default_rng(seed)
    kills = 0
    # Kill points: a seeded random delay after (1) the run folder gets its config (TensorFlow loaded, no
    # epoch yet), (2) epoch 2 and (3) epoch 4 are checkpointed, so kills land in training, validation and saves.
    for target in [0, 2, 4, None]:
        started = run.joinpath("config.json").is_file()
        args = ["train", "--resume", "r"] if started else ["train", "--data", str(data), "--name", "r"]
        process = _seg([*args, *TRAIN, "--epochs", str(EPOCHS)], tmp_path)
        if target is None:
            _, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr.decode()
            break
        ready = (lambda: run.joinpath("config.json").is_file()) if target == 0 else (
            lambda target=target: _epoch(run) >= target)
        if not _kill_after(process, float(rng.uniform(0.0, 1.5)), ready):
            break
        kills += 1
        if run.exists():
            _check_intact(run)
            state = json.loads((run / "state.json").read_text()) if (run / "state.json").is_file() else {}
            if state.get("best_epoch", 0) >= 1:
                assert (run / "model.keras").is_file(), "the state names a best epoch: its checkpoint must exist"
    assert kills >= 2, "the kills should land mid-run"
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == EPOCHS and 1 <= state["best_epoch"] <= EPOCHS
    epochs = [int(float(row["epoch"])) for row in csv.DictReader((run / "history.csv").open())]
    assert epochs == list(range(1, EPOCHS + 1))  # resumed epochs are not duplicated
    assert _check_intact(run)[".keras"] == 2 and (run / "loss.png").is_file()
    assert _temporaries(run) == []


def test_train_resume_removes_stray_temporaries_and_survives_a_torn_one(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n=4, size=64)
    first = subprocess.run([sys.executable, "-m", "toolkit", "train", "--data", str(data), "--name", "r", *TRAIN,
                            "--epochs", "1"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "runs" / "train" / "r"
    best = (run / "model.keras").read_bytes()
    strays = [f.raw(run / ".model.tmp-k1ll3d.keras", best[: len(best) // 3]),
              f.raw(run / ".state.tmp-k1ll3d.json", b'{"epoch": 9'),
              f.raw(run / ".history.tmp-k1ll3d.csv", b"epoch,loss\n1,0.")]
    again = subprocess.run([sys.executable, "-m", "toolkit", "train", "--resume", "r", "--quiet"],
                           cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not any(p.exists() for p in strays)
    assert json.loads((run / "state.json").read_text())["epoch"] == 1
    assert (run / "model.keras").read_bytes() == best and _check_intact(run)[".keras"] == 2


def test_a_run_killed_before_its_first_epoch_can_be_resumed_or_restarted(tmp_path: Path) -> None:
    from seg import train
    from seg.train.models import ModelSpec
    from seg.train.runs import new_run_dir

    data = make_dataset(tmp_path / "data", n=4, size=64)
    root = tmp_path / "runs"
    (root / "empty").mkdir(parents=True)  # killed between mkdir and config.json: the name is free again
    assert new_run_dir(root, "empty") == root / "empty"
    config = train.TrainConfig(data=str(data), model=ModelSpec("unet", 4, 2), epochs=1, steps_per_epoch=2,
                               batch=2, crop=64, runs_root=str(root), name="early")
    run = new_run_dir(root, "early")
    from seg.runtime.atomic import write_json_atomic
    from seg.train.trainer import _config_record, _load_data

    write_json_atomic(run / "config.json", _config_record(config, *_load_data(config)))  # killed right after
    result = train.resume(run, progress=False)
    assert result.epochs == 1 and (run / "model.keras").is_file() and (run / "state.json").is_file()


# -- seg infer ----------------------------------------------------------------------------------------


def test_infer_killed_twice_with_stacks_probs_and_overlays_then_finishes(tmp_path: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "out"
    for i in range(24):
        f.png(images / f"{i:02d}.png", f.gray((192, 192), seed=i))
    f.stack(images / "vol.tif", [f.gray((96, 128), seed=100 + i) for i in range(6)])
    model = f.onnx_file(tmp_path / "model.onnx")
    args = ["infer", "-i", str(images), "-m", str(model), "-o", str(out), "-p", "cpu", "--tta", "--save-prob",
            "--overlay"]
    rng = np.random.default_rng(0)
    landed = 0
    for _ in range(2):
        process = _seg(args, tmp_path)
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.005)  # the output folder appears when segmenting starts (the whole run takes ~2 s)
        landed += _kill_after(process, float(rng.uniform(0.05, 1.0)))
        if out.exists():
            _check_intact(out)
    assert landed >= 1, "no kill landed mid-run"
    f.raw(out / ".00.tmp-k1ll3d.png", b"\x89PNG\r\n\x1a\n")  # what a kill inside a write leaves behind
    f.raw(out / "prob" / ".vol.tmp-k1ll3d.tif", b"II*\x00")
    done = subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=tmp_path, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _temporaries(out) == []
    counts = _check_intact(out)
    # 24 masks + 24 overlays; 25 prob maps, the stack mask + overlay; the run settings record
    assert counts == {".png": 48, ".tif": 27, ".json": 1}
    assert len(read_pages(out / "vol.tif")) == len(read_pages(out / "overlay" / "vol.tif")) == 6
