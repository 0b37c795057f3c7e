"""The read -> infer -> write pipeline behind ``segment_paths``: inputs are decoded ahead by a thread pool,
``Segmenter.predict_iter`` runs in the calling thread, outputs are written behind by another pool and
finished in input order. ``io_threads`` sizes the pools by provider."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg.runtime.errors import SegError
from seg.runtime.io import read_calibrated, write_pages
from seg.runtime.preprocess import normalize, overlay_rgb, to_mask
from seg.runtime.providers import usable_cpus
from seg.runtime.segmenter import Segmenter

Progress = Callable[[int, int], None]  # (images done, images to do)
OnError = Callable[[str], None]  # one line per failed input
_QUEUE_FILES = (8, 64)  # files decoded ahead / finished files waiting for the writers: at least 8, at most 64,
_READ_AHEAD_BYTES = 64 << 20  # and beyond 8 only while they hold about this many bytes of pixels
_WRITE_BEHIND_BYTES = 128 << 20  # (a finished 8192x8192 image holds 256 MB: 8; a 512x512 slice 1 MB: 64)


def queue_limit(item_bytes: int, budget: int) -> int:
    """How many files a queue may hold when each holds ``item_bytes``: ``budget / item_bytes`` within
    ``_QUEUE_FILES``. Small slices queue deep enough to keep large batches (e.g. 32 on CUDA) fed."""
    low, high = _QUEUE_FILES
    return max(low, min(high, budget // max(1, item_bytes)))


@dataclass
class Item:
    """One input file and the outputs it owns."""

    source: Path
    mask: Path
    prob: Path | None
    overlay: Path | None

    def outputs(self) -> list[Path]:
        return [p for p in (self.mask, self.prob, self.overlay) if p is not None]

    def complete(self) -> bool:
        return all(p.is_file() for p in self.outputs())

    def every_output(self) -> list[Path]:
        """Every file a run may write for this input, asked for this time or not."""
        return [self.mask, prob_path(self.mask), overlay_path(self.mask)]


def prob_path(mask: Path) -> Path:
    """Where the probability map of the input whose mask is ``mask`` goes: ``prob/STEM.tif`` beside it."""
    return mask.parent / "prob" / f"{mask.stem}.tif"


def overlay_path(mask: Path) -> Path:
    """Where the overlay of the input whose mask is ``mask`` goes: ``overlay/NAME`` beside it."""
    return mask.parent / "overlay" / mask.name


def _read(path: Path, method: str) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Pages of ``path`` as ``(H, W)`` raw 8/16-bit integers or float32 in [0, 1], and its calibration
    (``read_calibrated``); floats and wider integers are normalised (and checked) here, so a bad page fails its
    own file, named, not the whole run."""
    pages, calibration = read_calibrated(path)
    pages = [p if p.dtype.kind in "ui" and p.dtype.itemsize <= 2 else normalize(p, method, str(path)) for p in pages]
    return pages, calibration


@dataclass
class _Open:
    item: Item
    pages: list[np.ndarray]
    calibration: dict[str, Any] = field(default_factory=dict)  # the input's, carried to its TIFF outputs
    probs: list[np.ndarray] = field(default_factory=list)
    failure: str | None = None  # why a page could not be segmented: the file is reported, not written

    def add(self, prob: np.ndarray | None, error: Exception | None) -> bool:
        """Take the next page's map (None: ``error`` stopped it); True once every page is in."""
        if prob is None and self.failure is None:
            self.failure = _page_failure(self.item.source, len(self.probs), len(self.pages), error)
        self.probs.append(prob)  # type: ignore[arg-type]  # a failed file's maps are dropped, never written
        return len(self.probs) == len(self.pages)


def _page_failure(source: Path, page: int, pages: int, error: Exception | None) -> str:
    """``"<file>[ page k]: <what is wrong>"``, the error's own ``image N:`` prefix (the index of the page in
    the whole run, meaningless to a user) replaced by the file and page."""
    text = str(error) if error is not None else "could not be segmented"
    head, sep, tail = text.partition(": ")
    if sep and head.startswith("image "):
        text = tail
    where = f"{source} page {page}" if pages > 1 else str(source)
    return f"{where}: {text}"


def io_threads(providers: list[str]) -> tuple[int, int]:
    """``(readers, writers)`` beside a session on ``providers[0]``: 2 and 1 beside the CPU provider, whose
    threads need the cores; beside CUDA the cores are free and PNG decoding/encoding, which costs more per
    image than the GPU's work, is the bottleneck, so half the CPUs each, 2 to 8."""
    if providers and providers[0] == "cuda":
        count = max(2, min(8, usable_cpus() // 2))
        return count, count
    return 2, 1


def run_pipeline(seg: Segmenter, todo: list[Item], threshold: float, report: OnError,
              progress: Progress | None) -> int:
    """Read ahead (thread pool) -> ``seg.predict_iter`` -> write behind (thread pool), files finished in
    order. A file the segmenter refuses a page of (e.g. 16-bit pixels for a uint8-input model) is reported
    by ``report`` and not written; the run goes on. Returns the images (pages) of the files written."""
    opened: deque[_Open] = deque()
    writes: deque[tuple[Item, Future[None]]] = deque()
    rejected: dict[int, Exception] = {}  # page index in the run -> why the segmenter could not take it
    done = images = 0
    reading, writing = io_threads(seg.providers)
    with ThreadPoolExecutor(reading, "seg-read") as readers, ThreadPoolExecutor(writing, "seg-write") as writer:
        pages = _pages(todo, readers, seg.info.normalization, opened, report)
        probs = seg.predict_iter(pages, on_error=rejected.__setitem__)
        for index, prob in enumerate(probs):
            if not opened[0].add(prob, rejected.pop(index, None)):
                continue
            entry = opened.popleft()
            if entry.failure:
                report(entry.failure)
                continue
            images += len(entry.pages)
            writes.append((entry.item, writer.submit(_write, entry, threshold)))
            behind = queue_limit(sum(p.nbytes for p in entry.probs), _WRITE_BEHIND_BYTES)
            while len(writes) > behind or (writes and writes[0][1].done()):
                done += _settle(*writes.popleft(), report)
                if progress:
                    progress(done, len(todo))
        while writes:
            done += _settle(*writes.popleft(), report)
            if progress:
                progress(done, len(todo))
    return images


def _pages(todo: list[Item], readers: ThreadPoolExecutor, method: str, opened: deque[_Open],
           report: OnError) -> Iterator[np.ndarray]:
    """Every page of every readable input, in order, decoded ahead: ``queue_limit`` files for the size of
    the last file read, growing by at most 2 files per file (so one tiny file before large ones cannot send
    64 large reads ahead) and shrinking at once."""
    queue: deque[tuple[Item, Future[tuple[list[np.ndarray], dict[str, Any]]]]] = deque()
    upcoming = iter(todo)
    ahead = _QUEUE_FILES[0]
    while True:
        while len(queue) < ahead and (item := next(upcoming, None)) is not None:
            queue.append((item, readers.submit(_read, item.source, method)))
        if not queue:
            return
        item, future = queue.popleft()
        try:
            pages, calibration = future.result()
        except SegError as exc:
            report(str(exc))
            continue
        ahead = min(ahead + 2, queue_limit(sum(p.nbytes for p in pages), _READ_AHEAD_BYTES))
        opened.append(_Open(item, pages, calibration))
        yield from pages


def _settle(item: Item, future: Future[None], report: OnError) -> int:
    try:
        future.result()
        return 1
    except (SegError, OSError, ValueError) as exc:  # ValueError: tifffile refusing a value to write
        report(f"{item.source}: could not write outputs ({exc})")
        return 0


def _write(entry: _Open, threshold: float) -> None:
    """Write the mask (and prob map, overlay) of one input; each file atomically."""
    item = entry.item
    masks = [to_mask(prob, threshold) for prob in entry.probs]
    if item.prob is not None:
        write_pages(item.prob, entry.probs, entry.calibration)
    if item.overlay is not None:
        pairs = zip(entry.pages, entry.probs, strict=True)
        overlays = [overlay_rgb(normalize(page), prob, threshold) for page, prob in pairs]
        write_pages(item.overlay, overlays, entry.calibration)
    write_pages(item.mask, masks, entry.calibration)  # last: the mask marks the input as done
