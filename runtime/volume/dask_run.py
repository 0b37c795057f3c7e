"""Segment a ``(Z, Y, X)`` volume block by block on a Dask cluster: ``segment_volume``.

>>> summary = segment_volume("em.zarr", "model.onnx", "seg.zarr")             # a LocalCluster on this machine
>>> summary = segment_volume("em.h5:/raw", "model.onnx", "seg.zarr", scheduler="tcp://host:8786")

The run in four steps:

1. Validate on the client, writing nothing: the input (``open_volume``), the model (a CPU ``Segmenter`` reads
   its metadata: tile, halo, threshold), the options, the block plan (``plan_blocks``) and, with a
   ``scheduler`` address, the connection to it. Bad input raises a one-line ``InputError``/``ProviderError``.
2. Create the output, or reopen it to resume (``VolumeOutput.create_or_resume``: another shape, model or
   settings raises ``InputError`` unless ``overwrite``). Blocks already marked done are skipped.
3. Submit one task per remaining block (``worker.run_block``): it predicts the block's core from its slice's
   own global tile grid (``Segmenter.predict_region``), writes probability and mask at every level, then marks
   the block done. Tasks of a worker that dies are rescheduled by Dask (and retried ``retries`` times when
   they raise), so a lost worker costs its blocks in flight, nothing more; a killed run resumes where it was.
4. ``VolumeOutput.finish``, then a ``VolumeSummary``.

Clusters: ``client`` (a ``distributed.Client``) is used as given and left open; ``scheduler`` connects to a
running scheduler (workers must see the model, input and output at the same paths: a shared filesystem);
otherwise seg starts a ``LocalCluster`` of worker processes and shuts it down when the run ends, however it
ends (an error, KeyboardInterrupt: its workers ignore SIGINT, so Ctrl-C in a terminal reaches seg alone, which
cancels and closes them). If the seg process itself is killed, its workers notice their parent is gone and
exit. dask/distributed/zarr are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from seg.runtime.errors import InputError, ProviderError, first_line
from seg.runtime.preprocess import check_threshold
from seg.runtime.providers import CUDA_FIX, check_provider, cuda_problem, usable_cpus
from seg.runtime.segmenter import Segmenter
from seg.runtime.volume import worker
from seg.runtime.volume.worker import ModelSpec, run_block

if TYPE_CHECKING:
    from distributed import Client, Future

    from seg.runtime.volume.blocks import Block
    from seg.runtime.volume.sources import VolumeSource
    from seg.runtime.volume.store import VolumeOutput

VolumeProgress = Callable[[int, int, int], None]
"""``progress(done_blocks, total_blocks, voxels)``: blocks finished and voxels segmented so far in this run, of
``total_blocks`` to compute (blocks skipped on resume are not counted)."""


@dataclass
class VolumeSummary:
    """What a run did: ``blocks`` in the plan = ``computed`` now + ``skipped`` (done by an earlier run);
    ``voxels`` segmented now, in ``seconds`` of wall time; ``dashboard``: the Dask dashboard's address when
    seg started the cluster, else ""."""

    output: str
    blocks: int = 0
    computed: int = 0
    skipped: int = 0
    voxels: int = 0
    seconds: float = 0.0
    dashboard: str = ""

    @property
    def voxels_per_s(self) -> float:
        """Voxels segmented per second of wall time in this run (0.0 when nothing was computed)."""
        return self.voxels / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "voxels_per_s": self.voxels_per_s}


@dataclass(frozen=True)
class _Job:
    """Everything validated on the client before anything is written."""

    source: VolumeSource
    blocks: list[Block]
    spec: ModelSpec
    settings: dict[str, object]


def segment_volume(
    input: str | os.PathLike[str],
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    client: Client | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    block: int = 4096,
    provider: str = "auto",
    device_id: int = 0,
    threshold: float | None = None,
    prob_dtype: str = "uint8",
    overwrite: bool = False,
    batch_size: int = 4,
    tile_size: int | None = None,
    halo: int | None = None,
    tta: bool = False,
    retries: int = 2,
    progress: VolumeProgress | None = None,
    log: Callable[[str], None] | None = None,
) -> VolumeSummary:
    """Segment the ``(Z, Y, X)`` volume ``input`` (a spec ``open_volume`` accepts: ``*.zarr``, ``*.h5:/dataset``
    ...) with ``model`` into the OME-Zarr ``output`` (probability as ``prob_dtype`` and 8-bit mask, 255 =
    interior, at every level), block by block on Dask; see the module docstring for the steps and clusters.

    ``block``: the core side in pixels (a multiple of 512, at least the halo); slices are cut into blocks in
    Y and X, one slice per block. ``workers``/``threads_per_worker`` size seg's own ``LocalCluster`` (default:
    one single-threaded worker per usable CPU; with ``provider="cuda"`` one worker per visible GPU from
    ``device_id`` on, worker i on device ``device_id + i``, 2 threads each). Each worker process holds one
    onnxruntime session; on the CPU each of its threads runs one block at a time on one core. ``provider``:
    "auto" (CUDA where it loads and a GPU is visible, else the CPU; as ``seg infer``) | "cuda" (strict) |
    "cpu". ``threshold`` defaults to the model's. ``tile_size``/``halo``/
    ``batch_size``/``tta`` as for ``Segmenter``. ``progress(done, total, voxels)`` is called on the client as
    blocks finish; ``log(line)`` gets the resume count, the voxel size carried and the dashboard address.

    Raises ``InputError``/``ProviderError`` (one line, nothing written) for a bad input, model, option or output,
    or an unreachable scheduler; an error inside a task is raised here after the remaining tasks are cancelled
    (the blocks already marked done stay done: rerun to resume).
    """
    say = log or (lambda line: None)
    local = client is None and not scheduler
    job = _prepare(input, model, output, block=block, provider=_resolve_provider(provider, local),
                   device_id=device_id, threshold=threshold, prob_dtype=prob_dtype, batch_size=batch_size,
                   tile_size=tile_size, halo=halo, tta=tta, spread_gpus=local)
    count, threads = _cluster_size(workers, threads_per_worker, job.spec, local)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if client is None and scheduler:
            client = stack.enter_context(_remote_client(scheduler))
        out = _open_output(output, job, prob_dtype, overwrite)
        done = out.done_keys()
        todo = [b for b in job.blocks if b.key not in done]
        summary = VolumeSummary(str(output), blocks=len(job.blocks), skipped=len(job.blocks) - len(todo))
        say(f"{summary.skipped} of {len(job.blocks)} blocks already done, skipped; {len(todo)} to compute")
        voxel = job.source.voxel
        say("voxel size: the input records no usable one; the output is in pixels" if voxel.is_pixels
            else f"voxel size {voxel.describe()} (the input's)")
        if todo:
            if client is None:
                client = stack.enter_context(_local_client(count, threads))
                summary.dashboard = client.dashboard_link
                served = importlib.util.find_spec("bokeh") is not None
                say(f"Dask dashboard: {summary.dashboard}" + ("" if served else " (pip install bokeh to serve it)"))
            summary.computed, summary.voxels = _run_blocks(client, job, out, todo, retries, progress)
        out.finish(job.blocks)
    summary.seconds = time.perf_counter() - start
    return summary


def _prepare(input: str | os.PathLike[str], model: str | os.PathLike[str], output: str | os.PathLike[str], *,
             block: int, provider: str, device_id: int, threshold: float | None, prob_dtype: str,
             batch_size: int, tile_size: int | None, halo: int | None, tta: bool, spread_gpus: bool) -> _Job:
    """Validate everything that can be validated without writing; ``InputError`` (one line) otherwise."""
    from seg.runtime.providers import check_device_id
    from seg.runtime.volume.blocks import plan_blocks
    from seg.runtime.volume.sources import open_volume
    from seg.runtime.volume.store import PROB_DTYPES

    if not str(output).strip():
        raise InputError("empty --output path; give an output store such as out.zarr")
    if prob_dtype not in PROB_DTYPES:
        raise InputError(f"--prob-dtype {prob_dtype!r} is not one of {', '.join(PROB_DTYPES)}")
    check_device_id(device_id)
    _check_extras(input)
    source = open_volume(input)
    _check_apart(source, output)
    _check_float_range(source)
    path, digest = _model_file(model)
    with Segmenter(path, provider="cpu", tile_size=tile_size, halo=halo, batch_size=batch_size, tta=tta,
                   threads=1) as seg:
        if not seg.tile_size:
            raise InputError("volumes are segmented tile by tile; --tile 0 (whole images) is not supported")
        cut = check_threshold(seg.info.threshold if threshold is None else threshold)
        _, height, width = source.shape
        settings: dict[str, object] = {
            "model_sha256": digest, "threshold": cut, "block": int(block), "tile": seg.tile_for(height, width),
            "halo": seg.halo, "tta": tta, "blend": seg.blend, "prob_dtype": prob_dtype, "source": _identity(source)}
        blocks = plan_blocks(source.shape, block, seg.halo, name="--block")
    spec = ModelSpec(path, digest, provider, device_id, spread_gpus, tile_size, halo, batch_size, tta)
    return _Job(source, blocks, spec, settings)


def _identity(source: VolumeSource) -> str:
    """The volume an output was made from, as its resume record keeps it: the real absolute path (and HDF5
    dataset), so ``vol.zarr``, ``./vol.zarr/`` and ``/data/vol.zarr`` resume one output and a same-named
    volume elsewhere does not."""
    real = os.path.realpath(source.path)
    return f"{real}:{source.inner}" if source.inner else real


def _check_extras(input: str | os.PathLike[str]) -> None:
    """``InputError`` naming the extra to install when Dask, Zarr (or h5py, for an HDF5 input) cannot be
    imported: checked before an output is created or replaced."""
    import importlib

    from seg.runtime.volume.sources import HDF5_SUFFIXES

    needed = ["distributed", "zarr"]
    if Path(os.fspath(input).split(":")[0]).suffix.lower() in HDF5_SUFFIXES:  # file.h5 or file.h5:/dataset
        needed.append("h5py")
    missing = []
    for name in needed:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise InputError(f"volumes need {', '.join(missing)}, which this install lacks; install the volume extra: "
                         'pip install "seg-toolkit[volume]" (from a checkout: pip install -e ".[volume]")')


def _check_apart(source: VolumeSource, output: str | os.PathLike[str]) -> None:
    """``InputError`` when the output store is the input, holds it or sits inside it (or inside the Zarr store
    the input array belongs to): replacing the output (``--overwrite``) would delete data being read."""
    from seg.runtime.volume.sources import zarr_root

    root = zarr_root(Path(source.spec))
    out = os.path.realpath(output)
    for src in {os.path.realpath(source.path), *([os.path.realpath(root)] if root else [])}:
        if src == out or src.startswith(out + os.sep) or out.startswith(src + os.sep):
            raise InputError(f"{output}: is, holds or sits inside the input {source.spec}; choose another --output")


FLOAT_CHECK_SIDE = 2048
"""The float range is checked on slice 0's top-left corner up to this side (bounded memory on the client);
any block outside [0, 1] still fails on its own, named, in the worker."""


def _check_float_range(source: VolumeSource) -> None:
    """``InputError`` for a float volume whose first slice (its top-left ``FLOAT_CHECK_SIDE`` square) leaves
    [0, 1] or holds NaN: each block would be normalised by its own range, so seg takes floats in [0, 1] only
    (integers are scaled by their dtype's range)."""
    import numpy as np

    if source.dtype.kind != "f":
        return
    rows, cols = (slice(0, min(side, FLOAT_CHECK_SIDE)) for side in source.shape[1:])
    corner = source.read(0, rows, cols)
    if not np.isfinite(corner).all():
        raise InputError(f"{source.spec}: NaN or infinite pixels in slice 0; replace them before segmenting")
    low, high = float(corner.min()), float(corner.max())
    if not 0.0 <= low <= high <= 1.0:
        raise InputError(f"{source.spec}: float pixels span [{low:g}, {high:g}] in slice 0, outside [0, 1]; scale the "
                         "volume to [0, 1] (or store it as uint8/uint16)")


def _model_file(model: str | os.PathLike[str]) -> tuple[str, str]:
    """``(absolute path, SHA-256 of its bytes)``; ``InputError`` when the model file cannot be read."""
    path = Path(model).expanduser().resolve()
    try:
        return str(path), hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise InputError(f"{model}: no such model file; export one with `seg export` or give --model") from None
    except OSError as exc:
        raise InputError(f"{model}: cannot read the model ({exc.strerror or exc})") from None


def _resolve_provider(provider: str, local: bool) -> str:
    """``provider`` checked here when seg's own workers run on this machine ("auto" -> "cuda" or "cpu");
    ``ProviderError`` when "cuda" cannot load. Workers elsewhere resolve and check it themselves."""
    provider = check_provider(provider)
    if not local or provider == "cpu":
        return provider
    problem = cuda_problem()
    if provider == "cuda" and problem is not None:
        raise ProviderError(f"CUDA provider cannot load: {problem}; fix: {CUDA_FIX}")
    return "cuda" if problem is None and visible_gpus() > 0 else "cpu"  # "auto": CUDA libraries and a GPU


def _cluster_size(workers: int | None, threads: int | None, spec: ModelSpec, local: bool) -> tuple[int, int]:
    """``(workers, threads per worker)`` for seg's own ``LocalCluster``: given, or one single-threaded worker
    per usable CPU; on CUDA one worker per visible GPU from ``spec.device_id`` on, 2 threads each (one block's
    reading and writing overlaps another's GPU work). ``InputError`` for counts below 1, or counts given for a
    cluster seg does not start (``local`` False)."""
    for name, value in (("--workers", workers), ("--threads-per-worker", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{name} must be an int >= 1, got {value!r}")
        if value is not None and not local:
            raise InputError(f"{name} sizes the cluster seg starts on this machine; a running cluster "
                             "(--scheduler, client) has its own workers: start them with the size you want")
    if spec.provider == "cuda":
        threads = threads or 2
        return workers or max(1, visible_gpus() - spec.device_id), threads
    threads = threads or 1
    return workers or max(1, usable_cpus() // threads), threads


def visible_gpus() -> int:
    """NVIDIA GPUs this process may use: those ``CUDA_VISIBLE_DEVICES`` lists, else those the driver lists
    under ``/proc/driver/nvidia/gpus`` (0 when neither says)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return len([d for d in listed.split(",") if d.strip() and not d.strip().startswith("-")])
    return len(glob.glob("/proc/driver/nvidia/gpus/*"))


def _open_output(output: str | os.PathLike[str], job: _Job, prob_dtype: str, overwrite: bool) -> VolumeOutput:
    """The output store, created or reopened to resume (its own ``InputError`` for a mismatch)."""
    from seg.runtime.volume.store import VolumeOutput

    return VolumeOutput.create_or_resume(output, job.source.shape, job.settings, prob_dtype=prob_dtype,
                                         overwrite=overwrite, voxel=job.source.voxel)


@contextlib.contextmanager
def _remote_client(address: str) -> Iterator[Client]:
    """A ``Client`` of the running scheduler at ``address``, closed on exit; ``InputError`` when unreachable."""
    from distributed import Client

    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise InputError(f"{address}: cannot reach the Dask scheduler ({first_line(exc)}); start one with "
                         "`dask scheduler` (and workers), or leave --scheduler out to run on this machine") from None
    with client:
        yield client


@contextlib.contextmanager
def _local_client(workers: int, threads: int) -> Iterator[Client]:
    """A ``Client`` of a new ``LocalCluster`` of ``workers`` worker processes (``threads`` threads each); the
    cluster and its processes are shut down on exit, whatever the exit."""
    from distributed import Client, LocalCluster

    with _quiet("distributed"), LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                                             silence_logs=logging.ERROR, preload=[worker.__name__]) as cluster, \
            Client(cluster) as client:
        yield client


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Raise logger ``name`` to ERROR for the duration (its INFO records of the scheduler and nannies living in
    this process would reach the root handler), unless the root logger is at DEBUG (``seg --debug``)."""
    logger = logging.getLogger(name)
    previous = logger.level
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logger.setLevel(max(previous, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(previous)


def _run_blocks(client: Client, job: _Job, out: VolumeOutput, todo: Sequence[Block], retries: int,
                progress: VolumeProgress | None) -> tuple[int, int]:
    """Submit one task per block of ``todo``; ``(blocks, voxels)`` done, reported through ``progress`` as they
    finish. On any error (a task's, KeyboardInterrupt) the remaining tasks are cancelled and it propagates."""
    from distributed import as_completed

    name = f"seg-block-{uuid.uuid4().hex}"
    futures: list[Future] = [
        client.submit(run_block, job.source, out, block, job.spec, key=(name, i), retries=retries, pure=False)
        for i, block in enumerate(todo)]
    done = voxels = 0
    if progress:
        progress(0, len(todo), 0)
    try:
        for future in as_completed(futures):
            _, count = future.result()
            if isinstance(count, str):  # the block's pixels are unusable: no retry can fix that
                raise InputError(count)
            done, voxels = done + 1, voxels + int(count)
            if progress:
                progress(done, len(todo), voxels)
    finally:
        if done < len(todo):
            client.cancel(futures)
    return done, voxels
