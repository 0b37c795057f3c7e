"""``run_volume_benchmark``: voxels/s of a one-process ``Segmenter`` loop against ``segment_volume`` on Dask,
over the same ``(Z, Y, X)`` uint8 Zarr in one run, and the peak memory of one worker on one large block.

Volume: ``slices`` mosaics of ``size x size`` pixels tiled from the images of ``bench_images`` (a dataset's
``train/image``, an image folder, or synthetic slices from ``seg.toolkit.data.synth``); slice z starts at
image z, so no two slices are alike. Written to a temporary Zarr v3 array, chunks ``(1, 512, 512)``.

Configurations, each timed ``rounds`` times, interleaved (loop, dask 2x1, dask 1x2, loop, ...); the rate is
voxels over the median wall time:

- ``loop``: this process, ``Segmenter(threads=2)`` on the CPU: read slice z from the Zarr, ``predict``, and
  write the same OME-Zarr output as the Dask path (``VolumeOutput``: probability and mask at every level):
  the same job without Dask. The session is opened inside the timed span (each Dask worker opens its own in
  its first task).
- ``dask W x T``: ``segment_volume(client=...)`` on a fresh ``LocalCluster`` of W worker processes with T
  threads each, started before and closed after the timed span (start-up reported apart). The span holds the
  client-side validation and the OME-Zarr output (uint8 probability and mask at every level) written to a
  fresh temporary folder. ``vs_loop`` = its rate / the loop's rate; ``mask_agreement``: the fraction of
  level-0 mask voxels equal to the loop's (first round).

Peak memory: a ``(1, peak_size, peak_size)`` volume as one block on a fresh cluster of 1 worker x 1 thread;
the worker process's ``VmHWM`` (``/proc/self/status``, read through ``client.run``) before and after the
block, against ``PEAK_BUDGET_MB``. dask/distributed/zarr are imported inside functions only.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seg.runtime.errors import InputError
from seg.runtime.io import read_image
from seg.toolkit.bench.benchmark import _check_model
from seg.toolkit.bench.data import bench_images
from seg.toolkit.bench.report import LARGE_RSS_LIMIT_MB
from seg.toolkit.bench.worker import peak_rss_mb

if TYPE_CHECKING:
    from distributed import Client

    from seg.runtime.volume.dask_run import VolumeSummary

LOOP_THREADS = 2
DASK_LAYOUTS = ((2, 1), (1, 2))
"""``(workers, threads per worker)`` of the Dask configurations."""
PEAK_BUDGET_MB = LARGE_RSS_LIMIT_MB
ZARR_CHUNK = 512
MAX_SOURCE_IMAGES = 16
Progress = Callable[[str], None]


@dataclass
class VolumeRow:
    """One configuration: ``seconds`` (wall time per round), ``startup_s`` (cluster start-up per round; empty
    for the loop), ``peak_rss_mb`` (largest worker ``VmHWM`` over rounds, MB; None for the loop)."""

    name: str  # "loop" | "dask"
    workers: int
    threads: int
    voxels: int
    seconds: list[float] = field(default_factory=list)
    startup_s: list[float] = field(default_factory=list)
    peak_rss_mb: float | None = None
    vs_loop: float | None = None
    mask_agreement: float | None = None

    @property
    def label(self) -> str:
        if self.name == "loop":
            return f"Segmenter loop, 1 process x {self.threads} threads"
        return f"segment_volume, {self.workers} worker{'s' * (self.workers > 1)} x {self.threads} thread" + \
            "s" * (self.threads > 1)

    @property
    def median_s(self) -> float:
        return float(np.median(self.seconds))

    @property
    def voxels_per_s(self) -> float:
        """Voxels over the median wall time of the rounds."""
        return self.voxels / self.median_s

    @property
    def median_startup_s(self) -> float | None:
        return float(np.median(self.startup_s)) if self.startup_s else None


@dataclass
class VolumeBenchReport:
    """Everything one ``run_volume_benchmark`` measured. ``shape``: ``(Z, Y, X)`` of the timed volume;
    ``peak``: the one-block memory measurement (``peak_mb``/``idle_mb`` in MB, ``within_budget``)."""

    model: str
    data: str
    machine: str
    shape: tuple[int, int, int]
    block: int
    rounds: int
    rows: list[VolumeRow] = field(default_factory=list)
    peak: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[str]:
        """Markdown table lines, then one line on the peak memory."""
        z, y, x = self.shape
        lines = [f"volume {z} x {y} x {x} uint8 ({self.rows[0].voxels / 1e6:.1f} M voxels) from {self.data}; "
                 f"block {self.block}; median of {self.rounds} round{'s' * (self.rounds > 1)}; {self.machine}", "",
                 "| configuration | voxels/s | s (median) | x loop | cluster start-up s | worker peak RSS MB "
                 "| mask agreement |", "|---|---:|---:|---:|---:|---:|---:|"]
        for row in self.rows:
            cells = [row.label, f"{row.voxels_per_s / 1e6:.2f} M", f"{row.median_s:.2f}",
                     _fmt(row.vs_loop, "{:.2f}x"), _fmt(row.median_startup_s, "{:.1f}"),
                     _fmt(row.peak_rss_mb, "{:.0f}"), _fmt(row.mask_agreement, "{:.4%}")]
            lines.append("| " + " | ".join(cells) + " |")
        return [*lines, "", peak_line(self.peak)]

    def to_dict(self) -> dict[str, Any]:
        rows = [{**asdict(row), "label": row.label, "median_s": row.median_s, "voxels_per_s": row.voxels_per_s,
                 "median_startup_s": row.median_startup_s} for row in self.rows]
        return {**asdict(self), "rows": rows, "shape": list(self.shape)}


def peak_line(peak: dict[str, Any]) -> str:
    """One line: a worker's peak memory on one block against the budget."""
    head = f"peak memory of 1 worker (1 thread) on one {peak['block']} x {peak['block']} block"
    if peak.get("peak_mb") is None:
        return f"{head}: not measured (no /proc/self/status VmHWM on this system)"
    verdict = "within" if peak["within_budget"] else "OVER"
    return (f"{head}: VmHWM {peak['peak_mb']:.0f} MB ({verdict} the {peak['budget_mb'] / 1024:.1f} GB budget; "
            f"{peak['idle_mb']:.0f} MB after start-up, before the block; block in {peak['seconds']:.1f} s)")


def run_volume_benchmark(model: str | Path, data: str | Path | None = None, size: int = 2048, slices: int = 4,
                         block: int = 1024, rounds: int = 1, peak_size: int = 4096,
                         progress: Progress | None = None) -> VolumeBenchReport:
    """Measure ``model`` (``.onnx``) on a ``(slices, size, size)`` volume built from ``data`` (see the module
    docstring), and one worker's peak memory on a ``peak_size`` block (a multiple of 512). ``InputError``
    (exit 2, one line) for a missing model, bad data or bad options."""
    from seg.runtime.volume.blocks import check_block_size
    from seg.toolkit.bench.flops import cpu_peak

    model = _check_model(Path(model)).resolve()
    for name, value in (("--volume-size", size), ("--volume-slices", slices), ("--rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an int >= 1, got {value!r}")
    check_block_size(block, 0, "--block")
    check_block_size(peak_size, 0, "peak_size")
    say = progress or (lambda _line: None)
    with tempfile.TemporaryDirectory(prefix="seg-volume-bench-") as folder:
        work = Path(folder)
        wanted = (-(-max(size, peak_size) // 512)) ** 2 + slices - 1  # 512-px mosaic cells + a shift per slice
        bench = bench_images(data, min(MAX_SOURCE_IMAGES, wanted), work)
        images = [_uint8(read_image(path)) for path in dict.fromkeys(bench.timing)]
        volume = build_volume(images, size, slices, work / "volume.zarr")
        machine = cpu_peak()
        report = VolumeBenchReport(str(model), bench.source, f"{machine.model}, {machine.cores} cores ({machine.isa})",
                                   (slices, size, size), block, rounds)
        report.rows = _timed_rounds(model, volume, slices * size * size, block, rounds, work, say)
        say(f"peak memory: one {peak_size} x {peak_size} block on 1 worker")
        report.peak = _peak(model, images, peak_size, work)
    return report


def _timed_rounds(model: Path, volume: Path, voxels: int, block: int, rounds: int, work: Path,
                  say: Progress) -> list[VolumeRow]:
    """The loop and every ``DASK_LAYOUTS`` configuration on ``volume`` (``voxels`` in all), ``rounds`` times
    interleaved; mask agreement from the first round, ``vs_loop`` from the medians."""
    loop = VolumeRow("loop", 1, LOOP_THREADS, voxels)
    dask = [VolumeRow("dask", workers, threads, voxels) for workers, threads in DASK_LAYOUTS]
    for round_ in range(rounds):
        say(f"round {round_ + 1}/{rounds}: {loop.label}")
        seconds, masks = _loop(model, volume, LOOP_THREADS, keep=round_ == 0, work=work)
        loop.seconds.append(seconds)
        for row in dask:
            say(f"round {round_ + 1}/{rounds}: {row.label}")
            _dask_round(row, model, volume, block, work, masks)
    for row in dask:
        row.vs_loop = row.voxels_per_s / loop.voxels_per_s
    return [loop, *dask]


def build_volume(images: list[np.ndarray], size: int, slices: int, path: Path) -> Path:
    """A ``(slices, size, size)`` uint8 Zarr v3 array at ``path``: slice z is a mosaic of ``images`` (each
    ``(H, W)`` uint8, cropped to the smallest common shape) from image z on, cut to ``size x size``."""
    import zarr

    height, width = min(i.shape[0] for i in images), min(i.shape[1] for i in images)
    cells = [image[:height, :width] for image in images]
    rows, cols = -(-size // height), -(-size // width)
    array = zarr.create_array(store=str(path), shape=(slices, size, size), dtype=np.uint8, zarr_format=3,
                              chunks=(1, min(ZARR_CHUNK, size), min(ZARR_CHUNK, size)))
    for z in range(slices):
        grid = [np.concatenate([cells[(z + r * cols + c) % len(cells)] for c in range(cols)], axis=1)
                for r in range(rows)]
        array[z] = np.concatenate(grid, axis=0)[:size, :size]
    return path


def _uint8(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` image -> uint8 (other dtypes min-max scaled to 0..255)."""
    if image.dtype == np.uint8:
        return image
    low, high = float(image.min()), float(image.max())
    return np.rint((image - low) / max(high - low, 1e-12) * 255).astype(np.uint8)


def _loop(model: Path, volume: Path, threads: int, keep: bool, work: Path) -> tuple[float, np.ndarray | None]:
    """``(wall seconds, (Z, Y, X) uint8 masks when keep)``: open a CPU ``Segmenter``, then read, predict and
    write every slice of ``volume`` in turn into the same kind of output ``segment_volume`` writes (probability
    and mask at every level, through ``VolumeOutput``), so both sides do the same job."""
    import zarr

    from seg.runtime.segmenter import Segmenter
    from seg.runtime.volume.blocks import Block
    from seg.runtime.volume.store import VolumeOutput

    array = zarr.open_array(str(volume), mode="r")
    output = work / f"loop-{uuid.uuid4().hex[:8]}.zarr"
    start = time.perf_counter()
    with Segmenter(model, provider="cpu", threads=threads) as seg:
        out = VolumeOutput.create_or_resume(output, array.shape, {"threshold": seg.info.threshold, "loop": True})
        for z in range(array.shape[0]):
            out.write(Block(z, slice(0, array.shape[1]), slice(0, array.shape[2])), seg.predict(array[z]))
    seconds = time.perf_counter() - start
    masks = _level0_mask(output) if keep else None
    shutil.rmtree(output, ignore_errors=True)
    return seconds, masks


def _dask_round(row: VolumeRow, model: Path, volume: Path, block: int, work: Path,
                masks: np.ndarray | None) -> None:
    """Start a ``row.workers x row.threads`` cluster, time ``segment_volume`` on it into a fresh output and
    add the round's seconds, start-up, worker peak and (with ``masks``) mask agreement to ``row``."""
    from seg.runtime.volume.dask_run import _local_client

    output = work / f"out-{uuid.uuid4().hex[:8]}.zarr"
    start = time.perf_counter()
    with _local_client(row.workers, row.threads) as client:
        client.wait_for_workers(row.workers)
        ready = time.perf_counter()
        _segment(client, model, volume, output, block, row.voxels)
        row.seconds.append(time.perf_counter() - ready)
        peaks = [mb for mb in client.run(peak_rss_mb).values() if mb is not None]
    row.startup_s.append(ready - start)
    if peaks:
        row.peak_rss_mb = max(row.peak_rss_mb or 0.0, *peaks)
    if masks is not None:
        row.mask_agreement = float(np.mean(_level0_mask(output) == masks))
    shutil.rmtree(output, ignore_errors=True)


def _segment(client: Client, model: Path, volume: Path, output: Path, block: int, voxels: int) -> VolumeSummary:
    """``segment_volume`` on ``client``; ``RuntimeError`` unless it segmented all ``voxels``."""
    from seg.runtime.volume.dask_run import segment_volume

    summary = segment_volume(volume, model, output, client=client, block=block, provider="cpu")
    if summary.voxels != voxels:
        raise RuntimeError(f"segment_volume segmented {summary.voxels} voxels, expected {voxels}")
    return summary


def _level0_mask(output: Path) -> np.ndarray:
    import zarr

    return zarr.open_array(str(output / "labels" / "mask" / "0"), mode="r")[...]


def _peak(model: Path, images: list[np.ndarray], size: int, work: Path) -> dict[str, Any]:
    """One ``(1, size, size)`` volume as one block on a fresh 1-worker, 1-thread cluster: the worker's
    ``VmHWM`` (MB) before and after, against ``PEAK_BUDGET_MB``."""
    from seg.runtime.volume.dask_run import _local_client

    volume = build_volume(images, size, 1, work / "peak.zarr")
    output = work / "peak-out.zarr"
    with _local_client(1, 1) as client:
        client.wait_for_workers(1)
        idle = max(client.run(peak_rss_mb).values(), key=lambda mb: mb or 0.0)
        summary = _segment(client, model, volume, output, size, size * size)
        peak = max(client.run(peak_rss_mb).values(), key=lambda mb: mb or 0.0)
    shutil.rmtree(output, ignore_errors=True)
    return {"shape": [1, size, size], "block": size, "workers": 1, "threads": 1, "seconds": summary.seconds,
            "idle_mb": idle, "peak_mb": peak, "budget_mb": PEAK_BUDGET_MB,
            "within_budget": None if peak is None else peak <= PEAK_BUDGET_MB}


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)
