"""What runs on a Dask worker: one ``Segmenter`` per worker process, and the task that segments one block.

The task (``run_block``) is a module-level function so that workers import it by name; its arguments
(a ``VolumeSource``, a ``VolumeOutput``, a ``Block`` and a ``ModelSpec``) are small picklable
descriptions: pixels are read and written on the worker, and only ``(key, voxels)`` comes back.

Sessions: ``worker_segmenter`` keeps one ``Segmenter`` per process for each ``ModelSpec`` (an
``lru_cache`` behind a lock, so threads of one worker share it and never build two): onnxruntime
loads the model once per worker process, never once per block. A ``Segmenter`` is thread-safe, so a
worker's threads run blocks through it concurrently.

CUDA: one worker per GPU. Workers of a ``LocalCluster`` that seg starts are named 0, 1, ...; with
``ModelSpec.spread_gpus`` worker ``i`` runs on device ``device_id + i``. Workers of a cluster started
elsewhere all use ``device_id``: start one worker per GPU with that GPU made visible to it alone, e.g.
``CUDA_VISIBLE_DEVICES=1 dask worker tcp://HOST:8786 --nworkers 1 --nthreads 2`` (then ``device_id`` 0).

``dask_setup`` is the preload hook seg's own ``LocalCluster`` runs in each worker process: they ignore
SIGINT, so Ctrl-C stops the seg process alone, which then shuts them down. dask/distributed are imported
inside functions only.
"""

from __future__ import annotations

import functools
import hashlib
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seg.runtime.errors import InputError
from seg.runtime.segmenter import Segmenter

if TYPE_CHECKING:
    from seg.runtime.volume.blocks import Block
    from seg.runtime.volume.sources import VolumeSource
    from seg.runtime.volume.store import VolumeOutput


@dataclass(frozen=True)
class ModelSpec:
    """How a worker builds its ``Segmenter``: the model file (absolute path) and the SHA-256 of the bytes the
    client validated, and the ``Segmenter`` options exactly as the caller gave them (None = the model's, so
    every worker resolves the same tile plan as the client). Hashable: it keys the per-process cache."""

    path: str
    sha256: str
    provider: str = "cpu"
    device_id: int = 0
    spread_gpus: bool = False  # worker i of seg's own LocalCluster uses device_id + i
    tile_size: int | None = None
    halo: int | None = None
    batch_size: int = 4
    tta: bool = False


_lock = threading.Lock()


def worker_segmenter(spec: ModelSpec) -> Segmenter:
    """This process's ``Segmenter`` for ``spec``, built on first use, with ``placement``'s device and intra-op
    threads. ``InputError`` when the model file changed since
    the client validated it (its SHA-256 differs) or cannot be read; ``ProviderError`` when CUDA cannot load."""
    device, threads = placement(spec)
    with _lock:
        return _cached_segmenter(spec, device, threads)


@functools.lru_cache(maxsize=4)
def _cached_segmenter(spec: ModelSpec, device: int, threads: int) -> Segmenter:
    try:
        digest = hashlib.sha256(Path(spec.path).read_bytes()).hexdigest()
    except OSError as exc:
        raise InputError(f"{spec.path}: this worker cannot read the model ({exc.strerror or exc}); workers "
                         "need the model, input and output on a filesystem they share") from None
    if digest != spec.sha256:
        raise InputError(f"{spec.path}: the model changed while the volume was being segmented; rerun")
    return Segmenter(spec.path, provider=spec.provider, tile_size=spec.tile_size, halo=spec.halo,
                     batch_size=spec.batch_size, tta=spec.tta, threads=threads, device_id=device)


def placement(spec: ModelSpec) -> tuple[int, int]:
    """``(device_id, intra-op threads)`` for this worker. Threads: 1 on the CPU, where each of the worker's
    threads runs one block at a time, so T threads keep T cores busy (T intra-op threads per block would put
    T x T threads on them); on CUDA the Dask worker's ``nthreads`` (1 outside a worker). Device:
    ``spec.device_id``, plus the worker's index when ``spec.spread_gpus`` and the worker is named by an int
    (as ``LocalCluster`` names them)."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # called outside a worker (tests, a synchronous scheduler)
        return spec.device_id, 1
    index = worker.name if spec.spread_gpus and isinstance(worker.name, int) else 0
    threads = max(1, int(worker.state.nthreads)) if spec.provider == "cuda" else 1
    return spec.device_id + index, threads


def dask_setup(worker: Any) -> None:
    """Dask preload hook, run in each worker process of seg's own ``LocalCluster`` as it starts (restarted ones
    included): ignore SIGINT. Ctrl-C in a terminal reaches the whole process group; the seg process alone
    handles it and shuts its workers down, instead of every worker printing its own KeyboardInterrupt."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_block(source: VolumeSource, output: VolumeOutput, block: Block, spec: ModelSpec) -> tuple[str, int | str]:
    """Segment ``block`` of ``source`` into ``output``: ``predict_region`` over slice ``block.z``'s own tile
    grid (so the answer does not depend on the block size), write the ``(h, w) float32`` probability (and
    mask) at every level, then mark the block done. Returns ``(block.key, block.voxels)``, or ``(block.key,
    message)`` when the block's pixels are unusable (an ``InputError`` naming the volume and slice) or its output
    cannot be written (an ``OSError``, e.g. a full disk): returned, not raised, so Dask neither retries it nor
    logs a traceback on the worker.

    A worker killed anywhere before ``mark_done`` leaves the block unmarked: it is redone, never trusted."""
    seg = worker_segmenter(spec)
    _, height, width = source.shape
    try:
        prob = seg.predict_region(lambda rows, cols: source.read(block.z, rows, cols), (height, width),
                                  block.rows, block.cols)  # (h, w) float32 in [0, 1]
    except InputError as exc:
        return block.key, f"{source.spec}: slice {block.z}, {exc}"
    try:
        output.write(block, prob)
        output.mark_done(block)
    except OSError as exc:  # a full disk or a read-only store: no retry helps, and the rest would fail alike
        return block.key, (f"{output.path}: block {block.key}: cannot write ({exc.strerror or exc}); free space or "
                           "fix the permissions, then rerun the same command to resume")
    return block.key, block.voxels
