"""``RunStats``: what a ``Segmenter`` has done since it was made, counted safely from several threads."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class RunStats:
    """Counters since the Segmenter was made: images and tiles done, seconds inside ``session.run``.

    Updated under a lock, so counts from concurrent calls add up; read them once those calls returned.
    """

    images: int = 0
    tiles: int = 0
    batches: int = 0
    compute_s: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # not a field: asdict() and == see the counters only

    def add(self, images: int = 0, tiles: int = 0, batches: int = 0, seconds: float = 0.0) -> None:
        """Add to the counters atomically (safe from several threads)."""
        with self._lock:
            self.images += images
            self.tiles += tiles
            self.batches += batches
            self.compute_s += seconds
