"""Faults during a volume run: a worker process SIGKILLed mid-run, the ``seg infer`` process SIGKILLed mid-run
(then resumed), KeyboardInterrupt with seg's own cluster, and an error raised inside a task."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from seg.runtime.errors import InputError
from seg.runtime.volume.dask_run import segment_volume
from seg.runtime.volume.store import MARKERS
from seg.toolkit.cli import app
from tests.runtime.volume.conftest import assert_matches, spawned_workers, still_running, write_zarr

Synth = tuple[Path, np.ndarray]


def test_a_worker_killed_mid_run_costs_only_its_blocks(dask_client: object, volume_model: Path,
                                                      synth_volume: Synth, tmp_path: Path) -> None:
    """After the 2nd block, one worker process is SIGKILLed; Dask reschedules its tasks (its nanny starts a
    new worker), the run completes and equals the reference."""
    path, expected = synth_volume
    killed: list[int] = []

    def kill_one(done: int, total: int, voxels: int) -> None:
        if done == 2 and not killed:
            pid = sorted(dask_client.run(os.getpid).values())[0]  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    summary = segment_volume(path, volume_model, tmp_path / "out.zarr", client=dask_client, block=512,
                             prob_dtype="float32", progress=kill_one)
    assert killed and killed[0] not in dask_client.run(os.getpid).values()  # type: ignore[attr-defined]
    assert summary.computed == summary.blocks == 27
    assert_matches(tmp_path / "out.zarr", expected)


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            found.append(int(entry))
    return found


def _markers(out: Path) -> int:
    folder = out / MARKERS
    return len([p for p in folder.iterdir() if not p.name.startswith(".")]) if folder.is_dir() else 0


def test_seg_infer_killed_mid_run_leaves_no_workers_and_resumes(dask_client: object, volume_model: Path,
                                                                synth_volume: Synth, tmp_path: Path) -> None:
    """``python -m seg.toolkit infer`` (its own 2-worker LocalCluster) in a new session, SIGKILLed once 2 blocks
    are marked done. Its worker processes notice and exit by themselves (the group is killed afterwards in any
    case); a rerun (on the test cluster, through --scheduler) skips the done blocks and completes the output."""
    path, expected = synth_volume
    out = tmp_path / "out.zarr"
    command = [sys.executable, "-m", "seg.toolkit", "infer", "--input", str(path), "--output", str(out), "--model",
               str(volume_model), "--workers", "2", "--block", "512", "--prob-dtype", "float32", "-p", "cpu"]
    with open(tmp_path / "log.txt", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _markers(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, (tmp_path / "log.txt").read_text()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 15
        while _group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group(proc.pid), "worker processes outlived the killed seg infer"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    done = _markers(out)
    assert 2 <= done < 27
    address = dask_client.scheduler.address  # type: ignore[attr-defined]
    result = CliRunner().invoke(app, ["infer", "-i", str(path), "-o", str(out), "-m", str(volume_model), "--block",
                                      "512", "--prob-dtype", "float32", "-p", "cpu", "--scheduler", address])
    assert result.exit_code == 0, result.output
    assert f"{27 - done} of 27 blocks" in result.output and f"{done} already done, skipped" in result.output
    assert_matches(out, expected)


def test_keyboard_interrupt_shuts_down_segs_own_cluster(volume_model: Path, synth_volume: Synth,
                                                        tmp_path: Path) -> None:
    import zarr

    one = write_zarr(tmp_path / "one.zarr", zarr.open_array(str(synth_volume[0]), mode="r")[:1])
    before = {p.pid for p in spawned_workers()}

    def interrupt(done: int, total: int, voxels: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_volume(one, volume_model, tmp_path / "out.zarr", workers=1, block=512, progress=interrupt)
    assert not still_running([p for p in spawned_workers() if p.pid not in before])


def test_an_error_inside_a_task_stops_the_run_with_that_error(dask_client: object, volume_model: Path,
                                                             tmp_path: Path) -> None:
    """Float pixels outside [0, 1] in a later slice (the client checks slice 0 only) are refused by
    ``predict_region`` on the worker: the run raises that ``InputError`` (after its retries) and the failing
    block stays unmarked, so it is never taken as done."""
    volume = np.stack([np.full((600, 600), 0.5, np.float32), np.full((600, 600), 200.0, np.float32)])
    path = write_zarr(tmp_path / "float.zarr", volume)
    with pytest.raises(InputError, match="float pixels outside"):
        segment_volume(path, volume_model, tmp_path / "out.zarr", client=dask_client, block=512, retries=0)
    assert not list((tmp_path / "out.zarr" / MARKERS).glob("z1_*"))


def test_a_float_volume_outside_the_unit_range_is_refused_before_anything_is_written(
        volume_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_zarr(tmp_path / "float.zarr", np.full((1, 600, 600), 200.0, np.float32))
    with pytest.raises(InputError, match=r"float.zarr: float pixels span \[200, 200\] in slice 0, outside \[0, 1\]"):
        segment_volume(path, volume_model, tmp_path / "out.zarr", block=512)
    assert not (tmp_path / "out.zarr").exists()
    nan = np.full((1, 600, 600), 0.5, np.float32)
    nan[0, 3, 3] = np.nan
    with pytest.raises(InputError, match=r"nan.zarr: NaN or infinite pixels in slice 0"):
        segment_volume(write_zarr(tmp_path / "nan.zarr", nan), volume_model, tmp_path / "out.zarr", block=512)
    from seg.runtime.volume import dask_run, sources

    read: list[tuple[int, int]] = []
    real_read = sources.VolumeSource.read
    monkeypatch.setattr(dask_run, "FLOAT_CHECK_SIDE", 256)  # the client reads a bounded corner only
    monkeypatch.setattr(sources.VolumeSource, "read", lambda self, z, rows, cols: (
        read.append((rows.stop - rows.start, cols.stop - cols.start)), real_read(self, z, rows, cols))[1])
    with pytest.raises(InputError, match="float pixels span"):
        segment_volume(path, volume_model, tmp_path / "out.zarr", block=512)
    assert read == [(256, 256)]


def test_an_output_that_cannot_be_written_is_one_line_naming_the_block(
        volume_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk or read-only store inside a task: returned as one line naming the output and the block (the
    client raises it as an ``InputError``), not raised for Dask to retry and log; the block stays unmarked."""
    from seg.runtime.volume import dask_run, store, worker

    path = write_zarr(tmp_path / "in.zarr", np.zeros((1, 600, 600), np.uint8))
    job = dask_run._prepare(path, volume_model, tmp_path / "out.zarr", block=512, provider="cpu", device_id=0,
                            threshold=None, prob_dtype="uint8", batch_size=4, tile_size=None, halo=None, tta=False,
                            spread_gpus=False)
    out = dask_run._open_output(tmp_path / "out.zarr", job, "uint8", False)

    def full(self: object, block: object, prob: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.VolumeOutput, "write", full)
    key, message = worker.run_block(job.source, out, job.blocks[0], job.spec)
    assert key == job.blocks[0].key and isinstance(message, str)
    assert message.startswith(f"{out.path}: block {key}: cannot write (No space left on device); free space")
    assert not list((tmp_path / "out.zarr" / MARKERS).glob("*"))
