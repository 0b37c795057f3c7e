"""``RunStats``: what a ``Segmenter`` has done since it was made, counted safely from several threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class RunStats:
    """Counters since the Segmenter was made: images, tiles and batches done, and time inside ``session.run``.

    ``compute_s`` sums the seconds of every run; ``busy_s`` counts the seconds during which at least one run
    was going. They are equal when runs never overlap; with several streams (or threads sharing a Segmenter)
    ``busy_s`` is the smaller, and ``images / busy_s`` is the rate onnxruntime delivered. Updated under a lock,
    so counts from concurrent calls add up; read them once those calls returned.
    """

    images: int = 0
    tiles: int = 0
    batches: int = 0
    compute_s: float = 0.0
    busy_s: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # not fields: asdict() and == see the counters only
        self._running = 0
        self._busy_since = 0.0

    def add(self, images: int = 0, tiles: int = 0, batches: int = 0, seconds: float = 0.0) -> None:
        """Add to the counters atomically (safe from several threads); ``seconds`` counts as busy time too."""
        with self._lock:
            self.images += images
            self.tiles += tiles
            self.batches += batches
            self.compute_s += seconds
            self.busy_s += seconds

    @contextmanager
    def run(self) -> Iterator[None]:
        """Time one ``session.run`` (one batch) inside the block, overlapping others or not."""
        start = time.perf_counter()
        with self._lock:
            if self._running == 0:
                self._busy_since = start
            self._running += 1
        try:
            yield
        finally:
            end = time.perf_counter()
            with self._lock:
                self._running -= 1
                self.batches += 1
                self.compute_s += end - start
                if self._running == 0:
                    self.busy_s += end - self._busy_since
