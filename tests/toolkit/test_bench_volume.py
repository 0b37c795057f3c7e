"""``seg benchmark --volume``: structure and relations of one tiny real run (never timings), the volume builder,
the CLI wiring and bad options (exit 2, one line)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from seg.toolkit.bench.volume import PEAK_BUDGET_MB, VolumeBenchReport, build_volume, peak_line, run_volume_benchmark
from seg.toolkit.cli import app
from tests.runtime.test_segmenter import wide_model

SIZE, SLICES, BLOCK = 512, 2, 512


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench-volume") / "model.onnx"
    path.write_bytes(wide_model(17))  # one 17x17 conv: tile 128, halo 16
    return path


@pytest.fixture(scope="module")
def report(model: Path) -> VolumeBenchReport:
    """One real run on 2 synthetic 512x512 slices, block 512, one round; the peak measured on a 512 block."""
    lines: list[str] = []
    found = run_volume_benchmark(model, size=SIZE, slices=SLICES, block=BLOCK, rounds=1, peak_size=512,
                                 progress=lines.append)
    assert lines[0] == "round 1/1: Segmenter loop, 1 process x 2 threads" and lines[-1].startswith("peak memory")
    return found


def test_rows_relate_to_one_another(report: VolumeBenchReport) -> None:
    loop, *dask = report.rows
    assert (loop.name, loop.workers, loop.threads) == ("loop", 1, 2)
    assert [(row.name, row.workers, row.threads) for row in dask] == [("dask", 2, 1), ("dask", 1, 2)]
    assert report.shape == (SLICES, SIZE, SIZE) and "synthetic" in report.data
    for row in report.rows:
        assert row.voxels == SLICES * SIZE * SIZE
        assert len(row.seconds) == 1 and row.voxels_per_s == row.voxels / row.seconds[0] > 0
    assert loop.vs_loop is None and loop.startup_s == [] and loop.peak_rss_mb is None
    for row in dask:
        assert row.vs_loop == pytest.approx(row.voxels_per_s / loop.voxels_per_s, rel=1e-12)
        assert len(row.startup_s) == 1 and row.startup_s[0] > 0 and row.peak_rss_mb > 0
        assert row.mask_agreement is not None and row.mask_agreement > 0.999  # the same answer as the loop


def test_peak_is_read_from_the_worker_and_judged_against_the_budget(report: VolumeBenchReport) -> None:
    peak = report.peak
    assert peak["shape"] == [1, 512, 512] and peak["block"] == 512 and peak["budget_mb"] == PEAK_BUDGET_MB == 1536
    assert 0 < peak["idle_mb"] <= peak["peak_mb"] < PEAK_BUDGET_MB and peak["within_budget"] is True
    assert "VmHWM" in peak_line(peak) and "(within the 1.5 GB budget;" in peak_line(peak)
    over = {**peak, "peak_mb": PEAK_BUDGET_MB + 1, "within_budget": False}
    assert "(OVER the 1.5 GB budget;" in peak_line(over)
    assert "not measured" in peak_line({**peak, "peak_mb": None, "within_budget": None})


def test_table_and_json_show_the_same_numbers(report: VolumeBenchReport) -> None:
    lines = report.table()
    rows = [line for line in lines if line.startswith("| ") and "configuration" not in line]
    assert len(rows) == 3 and lines[-1] == peak_line(report.peak)
    for line, row in zip(rows, report.rows, strict=True):
        assert line.startswith(f"| {row.label} | {row.voxels_per_s / 1e6:.2f} M | ")
        assert f" | {row.vs_loop:.2f}x | " in line if row.name == "dask" else " | - | - | - | - |" in line
    data = json.loads(json.dumps(report.to_dict()))
    assert data["shape"] == [SLICES, SIZE, SIZE] and data["block"] == BLOCK
    assert [r["voxels_per_s"] for r in data["rows"]] == [row.voxels_per_s for row in report.rows]
    assert data["peak"]["within_budget"] is True


def test_build_volume_tiles_mosaics_that_differ_per_slice(tmp_path: Path) -> None:
    import zarr

    images = [np.full((300, 200), value, np.uint8) for value in (10, 20, 30)]
    images[1] = np.full((310, 220), 20, np.uint8)  # larger: cropped to the common 300 x 200
    volume = zarr.open_array(str(build_volume(images, 500, 2, tmp_path / "v.zarr")), mode="r")[...]
    assert volume.shape == (2, 500, 500) and volume.dtype == np.uint8
    assert [volume[0, 0, 0], volume[0, 0, 200], volume[0, 0, 400], volume[0, 300, 0]] == [10, 20, 30, 10]
    assert [volume[1, 0, 0], volume[1, 0, 200]] == [20, 30]  # slice z starts at image z


def test_cli_passes_options_prints_the_table_and_writes_json(report: VolumeBenchReport, model: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake(model_path: Path, **options: Any) -> VolumeBenchReport:
        calls.append({"model": model_path, **options})
        return report

    monkeypatch.setattr("seg.toolkit.bench.volume.run_volume_benchmark", fake)
    out = tmp_path / "volume.json"
    args = ["benchmark", "--model", str(model), "--volume", "--volume-size", "512", "--volume-slices", "2",
            "--block", "512", "--rounds", "3", "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {k: calls[0][k] for k in ("size", "slices", "block", "rounds", "data")} == \
        {"size": 512, "slices": 2, "block": 512, "rounds": 3, "data": None}
    assert "\n".join(report.table()) in result.output
    assert json.loads(out.read_text())["rows"][1]["vs_loop"] == report.rows[1].vs_loop
    assert CliRunner().invoke(app, ["benchmark", "--model", str(model), "--volume"]).exit_code == 0
    assert {k: calls[1][k] for k in ("size", "slices", "block", "rounds")} == \
        {"size": 2048, "slices": 4, "block": 1024, "rounds": 1}


@pytest.mark.parametrize(("args", "message"), [
    (["--volume", "--volume-size", "0"], "--volume-size must be an int >= 1, got 0"),
    (["--volume", "--volume-slices", "0"], "--volume-slices must be an int >= 1, got 0"),
    (["--volume", "--rounds", "0"], "--rounds must be an int >= 1, got 0"),
    (["--volume", "--block", "1000"], "--block 1000: must be a positive multiple of 512"),
    (["--volume", "--keras", "model.keras"], "--keras: not with --volume"),
    (["--volume", "--data", "nowhere"], "nowhere: no such folder"),
    (["--volume-size", "512"], "--volume-size: only with --volume"),
    (["--block", "512", "--volume-slices", "2"], "--volume-slices, --block: only with --volume"),
    (["--volume", "--providers", "cuda", "--batch", "4"], "--providers, --batch: not with --volume"),
])
def test_bad_volume_options_exit_2_with_one_line(model: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["benchmark", "--model", str(model), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]


def test_a_missing_model_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["benchmark", "--model", str(tmp_path / "nope.onnx"), "--volume"])
    assert result.exit_code == 2 and "nope.onnx: no such model file" in result.output
