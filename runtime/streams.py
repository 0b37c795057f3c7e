"""Streams: several onnxruntime runs of one model at once, each on its own session, results kept in order.

On a CPU with few cores, one single-threaded run per core does more work per second than one run split
over all cores (no waiting at every operator for the slowest thread), and the host work around the runs
(decoding, normalising, writing) fills the gaps instead of stalling every core. One image still takes as
long as its stream's cores need for it, so streams are for throughput over many images or tiles; one stream,
with all cores in its run, gives the lowest latency for a single image. ``seg infer`` and ``segment_paths``
use ``streams=None``: one per physical core, at most ``MAX_AUTO_STREAMS``.

On CUDA a stream is a session of its own on the same GPU: while one batch's pixels go to the device and its
probabilities come back, another batch's kernels run, which a single session serialises (copy in, run, copy
out). ``streams=None`` there makes ``CUDA_AUTO_STREAMS``.
"""

from __future__ import annotations

import queue
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from seg.runtime.errors import InputError, SegWarning
from seg.runtime.providers import check_provider, cuda_problem, physical_cores, session_providers

if TYPE_CHECKING:
    import onnxruntime as ort

Item = TypeVar("Item")
Result = TypeVar("Result")

MAX_AUTO_STREAMS = 4
"""``streams=None`` makes at most this many on the CPU: each stream holds one batch's activations at a time."""

CUDA_AUTO_STREAMS = 2
"""``streams=None`` on CUDA: two sessions, so one batch's host-device copies overlap the other's kernels."""


def resolve_streams(streams: int | None, threads: int | None) -> tuple[int, list[int | None]]:
    """``(streams, intra-op threads of each stream's session)`` for the CPU provider.

    ``streams``: an int >= 1, or None for one per physical core (at most ``MAX_AUTO_STREAMS``).
    ``threads``: intra-op threads of every stream's session; None keeps one stream's default (all physical
    cores) and shares the cores out between several streams, every core to one of them (at least one thread
    each). ``InputError`` for a bad value.
    """
    check_streams(streams)
    cores = physical_cores()
    count = min(cores, MAX_AUTO_STREAMS) if streams is None else streams
    if count > cores:
        warnings.warn(f"streams={count} on {cores} physical cores: the runs will take turns on them, and each "
                      "holds its own batch in memory; one stream per core is usually the fastest", SegWarning,
                      stacklevel=4)  # the caller's Segmenter(...)
    if threads is not None or count == 1:
        return count, [threads] * count
    share, extra = divmod(cores, count)
    return count, [max(1, share + (k < extra)) for k in range(count)]


def auto_streams(provider: str) -> int:
    """What ``streams=None`` makes for a model running on ``provider``: ``CUDA_AUTO_STREAMS`` for ``"cuda"``,
    the CPU's count (``resolve_streams``) for any other."""
    return CUDA_AUTO_STREAMS if check_provider(provider) == "cuda" else resolve_streams(None, None)[0]


def check_streams(streams: int | None) -> None:
    """``InputError`` unless ``streams`` is None or an int >= 1."""
    if streams is not None and (isinstance(streams, bool) or not isinstance(streams, int) or streams < 1):
        raise InputError(f"streams must be an int >= 1 (concurrent onnxruntime runs), got {streams!r}")


def open_sessions(open_one: Callable[[str, int | None], ort.InferenceSession], provider: str, streams: int | None,
                  threads: int | None) -> list[ort.InferenceSession]:
    """One session per stream: ``open_one(provider, threads)`` makes each. On CUDA (``provider`` ``"cuda"``,
    or ``"auto"`` where CUDA loads) every stream is a session on the GPU (``None``: ``CUDA_AUTO_STREAMS``), with
    ``threads`` as given, and each holds its own GPU memory; should ``"auto"`` land on the CPU after all, the
    streams are the CPU's."""
    check_streams(streams)
    provider = check_provider(provider)
    if provider == "cuda" or (provider == "auto" and cuda_problem() is None):
        first = open_one(provider, threads)
        if session_providers(first)[0] == "cuda" or provider == "cuda":
            count = auto_streams("cuda") if streams is None else streams
            return [first, *(open_one("cuda", threads) for _ in range(count - 1))]
        provider = "cpu"  # the libraries loaded, the session did not: one stream per core, as without CUDA
    count, per_stream = resolve_streams(streams, threads)
    first = open_one(provider, per_stream[0])
    if count == 1 or session_providers(first)[0] != "cpu":
        return [first]
    return [first, *(open_one("cpu", n) for n in per_stream[1:])]


class SessionPool:
    """The sessions of a ``Segmenter``, lent to one run at a time when there are several.

    With one session, ``lend`` shares it between any number of concurrent runs (onnxruntime allows it);
    with several, a run waits for a free one, so each session runs one batch at a time on its own threads.
    """

    def __init__(self, sessions: list[ort.InferenceSession]) -> None:
        self.sessions = sessions
        self._idle: queue.SimpleQueue[ort.InferenceSession] = queue.SimpleQueue()
        for session in sessions:
            self._idle.put(session)  # used only when there are several

    def __len__(self) -> int:
        return len(self.sessions)

    @contextmanager
    def lend(self) -> Iterator[ort.InferenceSession]:
        """A session for one ``run``: the only one, or the next free one of several."""
        if len(self.sessions) == 1:
            yield self.sessions[0]
            return
        session = self._idle.get()
        try:
            yield session
        finally:
            self._idle.put(session)


def ordered_runs(items: Iterable[Item], run: Callable[[Item], Result], streams: int) -> Iterator[tuple[Item, Result]]:
    """``(item, run(item))`` for each item, in input order, with up to ``streams`` runs at once.

    Items are pulled (and so prepared, when ``items`` is a generator) in the calling thread, one ahead of the
    running ones, so a stream never waits for the next batch to be gathered; results are handed back in the
    calling thread, in order, so whatever it does with them happens in the same order as serial runs. With
    ``streams == 1`` everything runs inline. An exception from ``run`` is raised here, for its item, after
    the runs still going have ended; one from ``items`` is raised after the items pulled before it are
    handed back; abandoning the iterator cancels the runs not yet started.
    """
    if streams <= 1:
        for item in items:
            yield item, run(item)
        return
    pending: deque[tuple[Item, Future[Result]]] = deque()
    pool = ThreadPoolExecutor(streams, thread_name_prefix="seg-stream")
    upcoming = iter(items)
    failure: Exception | None = None
    try:
        while True:
            try:
                item = next(upcoming)
            except StopIteration:
                break
            except Exception as exc:  # pulling a bad item: hand back the ones before it first
                failure = exc
                break
            pending.append((item, pool.submit(run, item)))
            if len(pending) > streams:
                yield _settled(pending)
        while pending:
            yield _settled(pending)
        if failure is not None:
            raise failure
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _settled(pending: deque[tuple[Item, Future[Result]]]) -> tuple[Item, Result]:
    """The oldest pending ``(item, result)``, waiting for its run (whose exception it raises)."""
    item, future = pending.popleft()
    return item, future.result()
