"""Backend-neutral training: the recipe trains on JAX too, and its model exports with parity (TensorFlow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax", reason="JAX comes with the dev extra")

TRAIN = """
from seg import train
from seg.train.models import ModelSpec
config = train.TrainConfig(data={data!r}, model=ModelSpec(width=4, depth=1), epochs=2, steps_per_epoch=3, batch=2,
                           crop=64, runs_root={root!r}, name="jax")
result = train.fit(config, progress=False)
print(result.device)
"""


def _run(args: list[str], cwd: Path, backend: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_jax_training_writes_a_run_that_exports_with_parity(labelled_dir: Path, tmp_path: Path) -> None:
    trained = _run([sys.executable, "-c", TRAIN.format(data=str(labelled_dir), root=str(tmp_path / "runs"))],
                   tmp_path, "jax")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert trained.stdout.strip().splitlines()[-1] == "CPU (jax)"  # the device it really used, and the backend
    config = json.loads((tmp_path / "runs" / "jax" / "config.json").read_text())
    assert config["versions"]["backend"] == "jax" and "jax" in config["versions"]
    exported = _run([sys.executable, "-m", "seg.toolkit", "export", "model.onnx", "--weights",
                     str(tmp_path / "runs" / "jax"), "--data", str(labelled_dir)], tmp_path, "jax")
    assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-2000:]
    assert "PASS" in exported.stdout and (tmp_path / "model.onnx").is_file()


def test_export_in_a_process_already_on_another_backend_says_how_to_fix_it(tmp_path: Path) -> None:
    code = ("import keras\nfrom seg.export.convert import use_tensorflow_backend\n"
            "try:\n    use_tensorflow_backend()\nexcept Exception as exc:\n    print(type(exc).__name__, exc)")
    result = _run([sys.executable, "-c", code], tmp_path, "jax")
    assert result.stdout.startswith("InputError export converts with TensorFlow, but this process runs Keras on jax")
