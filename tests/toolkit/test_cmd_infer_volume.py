"""``seg infer`` on volumes through typer's CliRunner: a run on seg's own cluster and its resume, and bad inputs
(exit 2, one line, nothing written). File/folder mode is covered by test_cmd_infer.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from seg.runtime.volume.store import VolumeOutput
from seg.toolkit.cli import app
from tests.helpers import write_png
from tests.runtime.test_segmenter import wide_model
from tests.runtime.volume.conftest import write_zarr

runner = CliRunner()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """``(vol.zarr: (1, 600, 700) uint8, model.onnx)`` in ``tmp_path``."""
    model = tmp_path / "model.onnx"
    model.write_bytes(wide_model(17))
    volume = np.random.default_rng(0).integers(0, 256, (1, 600, 700), dtype=np.uint8)
    return write_zarr(tmp_path / "vol.zarr", volume), model


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_volume_run_reports_the_dashboard_and_resumes(setup: tuple[Path, Path], tmp_path: Path) -> None:
    volume, model = setup
    out = tmp_path / "out.zarr"
    args = ["infer", "-i", str(volume), "-o", str(out), "-m", str(model), "--workers", "1", "--block", "512"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Dask dashboard: http" in result.output
    assert f"4 of 4 blocks (420.0k voxels) -> {out} in " in result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "0 of 4 blocks" in again.output and "4 already done, skipped" in again.output
    assert "dashboard" not in again.output  # nothing left to do: no cluster started


def _other_output(out: Path, change: str) -> None:
    """A seg output at ``out`` made for another volume shape or by another model (no blocks computed)."""
    shape = (2, 600, 700) if change == "shape" else (1, 600, 700)
    VolumeOutput.create_or_resume(out, shape, {"threshold": 0.5, "model_sha256": "0" * 64})


@pytest.mark.parametrize(("case", "message"), [
    ("missing store", "missing.zarr: no such file or folder"),
    ("2-D array", "a 2-D image of shape (600, 700), not a (Z, Y, X) volume"),
    ("int32 pixels", "int32 pixels are not supported"),
    ("block not a multiple of 512", "--block 1000: must be a positive multiple of 512"),
    ("block smaller than the halo", "--block 512: a block smaller than the model's halo (600 px)"),
    ("bad prob dtype", "--prob-dtype 'int8' is not one of uint8, float16, float32"),
    ("threshold", "threshold 1.5 is outside [0, 1]"),
    ("no workers", "--workers must be an int >= 1, got 0"),
    ("workers for a running cluster", "--workers sizes the cluster seg starts on this machine"),
    ("bad scheduler address", "nonsense: cannot reach the Dask scheduler (missing port number"),
    ("missing model", "nope.onnx: no such model file"),
    ("overlay", "--overlay is for images"),
    ("save-prob", "--save-prob is for images; a volume's output always holds the probability"),
    ("streams", "--streams is for images; a volume runs one block per Dask worker thread"),
    ("not a zarr output", "a volume is written to an OME-Zarr; give --output OUT.zarr"),
    ("output of another shape", "differs (shape [2, 600, 700] there, [1, 600, 700] now"),
    ("output of another model", "model_sha256 000000000000... there, "),
])
def test_bad_volume_input_exits_2_with_one_line_and_writes_nothing(case: str, message: str,
                                                                   setup: tuple[Path, Path], tmp_path: Path) -> None:
    volume, model = setup
    out = tmp_path / "out.zarr"
    if case == "missing store":
        volume = tmp_path / "missing.zarr"
    elif case == "2-D array":
        volume = write_zarr(tmp_path / "flat.zarr", np.zeros((600, 700), np.uint8))
    elif case == "int32 pixels":
        volume = write_zarr(tmp_path / "wide.zarr", np.zeros((1, 600, 700), np.int32))
    elif case.startswith("output of another"):
        _other_output(out, case.split()[-1])
    extra = {
        "block not a multiple of 512": ["--block", "1000"],
        "block smaller than the halo": ["--tile", "1280", "--halo", "600", "--block", "512"],
        "bad prob dtype": ["--prob-dtype", "int8"],
        "threshold": ["--threshold", "1.5"],
        "no workers": ["--workers", "0"],
        "workers for a running cluster": ["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"],
        "bad scheduler address": ["--scheduler", "nonsense"],
        "missing model": ["-m", str(tmp_path / "nope.onnx")],
        "overlay": ["--overlay"],
        "save-prob": ["--save-prob"],
        "streams": ["--streams", "2"],
        "not a zarr output": ["-o", str(tmp_path / "masks")],
    }.get(case, [])
    before = _snapshot(tmp_path)
    result = runner.invoke(app, ["infer", "-i", str(volume), "-o", str(out), "-m", str(model), *extra])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert _snapshot(tmp_path) == before


def test_volume_options_on_image_files_exit_2(tmp_path: Path) -> None:
    write_png(tmp_path / "images" / "a.png", np.zeros((64, 64), np.uint8))
    result = runner.invoke(app, ["infer", "-i", str(tmp_path / "images"), "-o", str(tmp_path / "masks"),
                                 "--workers", "2", "--block", "1024"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --workers, --block: only for volumes (a .zarr or .h5:/dataset " \
                                    "--input, or a .zarr --output)"
    assert not (tmp_path / "masks").exists()
