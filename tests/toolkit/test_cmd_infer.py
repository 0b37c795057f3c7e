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
    assert "images/s" not in again.output  # nothing ran: no rate to report


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
    (images / "03[old].png").write_bytes(b"garbage")  # brackets: printed as they are, not as rich markup
    bad = runner.invoke(app, ["infer", "-i", str(images), "-m", str(model), "-o", str(tmp_path / "o[1]")])
    assert bad.exit_code == 1
    flat = " ".join(bad.output.split())
    assert "03[old].png: not a readable image" in flat and f"3 images -> {tmp_path / 'o[1]'} on" in flat
    assert not (tmp_path / "o[1]" / "03[old].png").exists()
    streams = runner.invoke(app, ["infer", "-i", str(images), "-m", str(model), "-o", str(tmp_path / "s"),
                                  "--streams", "0"])
    assert streams.exit_code == 2 and not (tmp_path / "s").exists()
    assert streams.output.strip() == "error: --streams 0: must be >= 1 (onnxruntime runs at once), e.g. 2"


def test_infer_takes_the_paths_a_shell_expands_an_unquoted_glob_into(setup: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    """``seg infer --input images/*.png`` reaches the command as ``--input 00.png 01.png 02.png``."""
    images, model = setup
    out = tmp_path / "out"
    expanded = [str(p) for p in sorted(images.glob("*.png"))]
    result = runner.invoke(app, ["infer", "--input", *expanded, "-m", str(model), "-o", str(out), "-p", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"3 images -> {out} on CPU" in result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["00.png", "01.png", "02.png"]
    quoted = runner.invoke(app, ["infer", "-i", f"{images}/*.png", "-m", str(model), "-o", str(tmp_path / "q"),
                                 "-p", "cpu"])
    assert quoted.exit_code == 0, quoted.output
    for name in ("00.png", "01.png", "02.png"):  # quoted or not: the same masks
        np.testing.assert_array_equal(read_image(out / name), read_image(tmp_path / "q" / name))
    again = runner.invoke(app, ["infer", "-m", str(model), "-o", str(out), "-p", "cpu", "-i", *expanded])
    assert again.exit_code == 0 and "3 already done, skipped" in again.output, again.output


def test_infer_repeated_input_options_and_default_output(setup: tuple[Path, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    images, model = setup
    other = tmp_path / "more"
    other.mkdir()
    Image.fromarray(np.zeros((64, 80), np.uint8)).save(other / "extra.png")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["infer", "--input", str(images), "--input", str(other), "-m", str(model),
                                 "-p", "cpu"])
    assert result.exit_code == 0, result.output
    out = Path("runs/infer") / tmp_path.name  # the folder holding both inputs
    assert f"4 images -> {out} on CPU" in result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["00.png", "01.png", "02.png", "extra.png"]


def test_infer_one_stem_in_two_folders_exits_2_before_writing(setup: tuple[Path, Path], tmp_path: Path) -> None:
    images, model = setup
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "01.png").write_bytes((images / "01.png").read_bytes())
    out = tmp_path / "out"
    result = runner.invoke(app, ["infer", "-i", str(images), str(copy), "-m", str(model), "-o", str(out)])
    assert result.exit_code == 2
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert error == [f"error: {copy / '01.png'}: same name as {images / '01.png'} in another folder; both would "
                     f"write {out / '01.png'}; rename one, or give each folder its own --output"]
    assert not out.exists()


def test_infer_without_any_input_exits_2(setup: tuple[Path, Path]) -> None:
    _, model = setup
    result = runner.invoke(app, ["infer", "-m", str(model)])
    assert result.exit_code == 2
    assert "error: no input given; give --input PATH (a folder, image file, glob or TIFF stack)" in result.output


def test_infer_corrupt_resume_record_redoes_outputs_and_says_so(setup: tuple[Path, Path], tmp_path: Path) -> None:
    images, model = setup
    out = tmp_path / "out"
    args = ["infer", "-i", str(images), "-m", str(model), "-o", str(out), "-p", "cpu"]
    assert runner.invoke(app, args).exit_code == 0
    expected = read_image(out / "00.png")
    Image.fromarray(np.full(expected.shape, 7, np.uint8)).save(out / "00.png")  # a stale output, to catch
    (out / ".seg-infer.json").write_bytes(b"\x00garbage")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (f"warning: {out / '.seg-infer.json'}: the resume record is corrupt (not JSON); settings unknown, so "
            f"every output in {out} is redone") in result.output
    assert "3 images" in result.output and "skipped" not in result.output
    np.testing.assert_array_equal(read_image(out / "00.png"), expected)


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
