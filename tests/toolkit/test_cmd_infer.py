"""`seg infer` through typer's CliRunner, plus a SIGKILL-and-resume run in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from seg.runtime import providers
from seg.runtime.io import read_image
from seg.runtime.metadata import ModelInfo
from seg.toolkit.cli import app
from tests.runtime.test_providers import tiny_model

REPO = Path(__file__).resolve().parents[2]
META = ModelInfo(tile_size=64, halo=16, size_multiple=16).to_props()
runner = CliRunner()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "model.onnx"
    model.write_bytes(tiny_model(metadata=META))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 80)).astype(np.uint8)).save(images / f"{i:02d}.png")
    return images, model


def test_infer_auto_runs_and_reports_the_provider(setup: tuple[Path, Path], tmp_path: Path) -> None:
    images, model = setup
    out = tmp_path / "out"
    result = runner.invoke(app, ["infer", "--input", str(images), "--model", str(model), "--output", str(out)])
    assert result.exit_code == 0, result.output
    expected = "CUDA" if providers.cuda_problem() is None else "CPU"
    assert f"3 images -> {out} on {expected}" in result.output
    assert sorted(p.name for p in out.iterdir()) == [".seg-infer.json", "00.png", "01.png", "02.png"]
    again = runner.invoke(app, ["infer", "-i", str(images), "-m", str(model), "-o", str(out)])
    assert "0 images" in again.output and "3 already done, skipped" in again.output


@pytest.mark.skipif(providers.cuda_problem() is None, reason="CUDA loads here")
def test_infer_cuda_fails_with_the_fix_and_writes_nothing(setup: tuple[Path, Path], tmp_path: Path) -> None:
    images, model = setup
    out = tmp_path / "never"
    result = runner.invoke(app, ["infer", "-i", str(images), "-m", str(model), "-o", str(out), "-p", "cuda"])
    assert result.exit_code == 2
    assert f"error: {model}: CUDA provider cannot load: " in result.output
    assert 'pip install "seg-toolkit[cuda]"' in result.output
    assert not out.exists()


def test_infer_exit_codes_for_bad_inputs(setup: tuple[Path, Path], tmp_path: Path) -> None:
    images, model = setup
    missing = runner.invoke(app, ["infer", "-i", str(tmp_path / "nope"), "-m", str(model), "-o", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "nope: no such file or folder" in missing.output
    no_model = runner.invoke(app, ["infer", "-i", str(images), "-m", str(tmp_path / "x.onnx")])
    assert no_model.exit_code == 2 and "no such model file" in no_model.output
    (images / "03.png").write_bytes(b"garbage")
    bad = runner.invoke(app, ["infer", "-i", str(images), "-m", str(model), "-o", str(tmp_path / "o")])
    assert bad.exit_code == 1
    assert "03.png: not a readable image" in bad.output and "3 images" in bad.output
    assert not (tmp_path / "o" / "03.png").exists()


@pytest.mark.slow
def test_sigkill_during_a_folder_run_then_rerun_completes_every_mask(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(tiny_model(metadata=META))
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (256, 256)).astype(np.uint8)).save(images / f"{i:02d}.png")
    command = [sys.executable, "-m", "toolkit", "infer", "-i", str(images), "-m", str(model), "-o", str(out),
               "-p", "cpu", "--tta", "--save-prob"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def masks() -> set[str]:  # final names only: an atomic write's temporary is a hidden ".NN.tmp-*.png"
        return {p.name for p in out.glob("*.png") if not p.name.startswith(".")}

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(masks()) < 3 and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = masks()
    assert 3 <= len(done_before) < 40, "the kill should land mid-run"
    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done_before)} already done, skipped" in rerun.stdout.replace("\n", " ")
    for i in range(40):
        mask = read_image(out / f"{i:02d}.png")  # decodes fully: a truncated PNG would raise
        assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 255}
        assert read_image(out / "prob" / f"{i:02d}.tif").shape == (256, 256)
