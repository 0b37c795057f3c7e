"""An exponential moving average of the model's weights during training (``--ema MOMENTUM``).

The average is what gets validated and what the best checkpoint (``model.keras``) holds; training itself
always steps the raw weights, and ``last.keras`` (the resume point) holds the raw weights too, with the
average beside it in ``average.npz`` so a resumed run continues both.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np

from seg.runtime.atomic import atomic_path
from seg.runtime.errors import SegWarning

AVERAGE_FILE = "average.npz"


class WeightAverage(keras.callbacks.Callback):
    """Keeps ``avg = m * avg + (1 - m) * w`` over every float weight after each step, with
    ``m = min(momentum, (1 + step) / (10 + step))`` so the first steps do not drag the average towards
    the initial weights. Call :meth:`swap_in` first and :meth:`swap_out` last at epoch end (``SwapAverage``):
    in between, the model holds the averaged weights."""

    def __init__(self, momentum: float, run_dir: Path, resume_steps: int | None = None) -> None:
        super().__init__()
        if not 0 < momentum < 1:
            raise ValueError(f"momentum {momentum}: must be in (0, 1), e.g. 0.99")
        self.momentum, self.path, self.resume_steps = momentum, run_dir / AVERAGE_FILE, resume_steps
        self.average: list[np.ndarray] = []
        self.raw_weights: list[np.ndarray] | None = None
        self.updates = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        weights = self.model.get_weights()
        saved = self._load(weights) if self.resume_steps is not None else None
        if saved is None:
            self.average = [w.astype(np.float64) if _averaged(w) else w for w in weights]
        else:
            self.average = saved

    def _load(self, weights: list[np.ndarray]) -> list[np.ndarray] | None:
        """The saved average when it belongs to the resume point (same step count and shapes), else None
        with a warning: the average then starts again from the resumed weights."""
        try:
            with np.load(self.path) as saved:
                updates, average = int(saved["updates"]), [saved[f"w{i}"] for i in range(len(weights))]
        except (OSError, KeyError, ValueError) as exc:
            problem = f"unreadable ({exc})"
        else:
            if updates == self.resume_steps and [a.shape for a in average] == [w.shape for w in weights]:
                self.updates = updates
                return average
            problem = f"from step {updates}, the resume point is step {self.resume_steps}"
        warnings.warn(f"{self.path}: weight average {problem}; averaging starts again from the resumed weights",
                      SegWarning, stacklevel=2)
        return None

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        m = min(self.momentum, (1 + self.updates) / (10 + self.updates))
        for avg, w in zip(self.average, self.model.get_weights(), strict=True):
            if _averaged(w):
                avg *= m
                avg += np.multiply(w, 1 - m, dtype=np.float64)  # float32 * float would round to float32
        self.updates += 1

    def swap_in(self) -> None:
        """Put the averaged weights into the model (the raw ones are kept for :meth:`swap_out`)."""
        self.raw_weights = self.model.get_weights()
        self.model.set_weights([a.astype(w.dtype) if _averaged(w) else w
                                for a, w in zip(self.average, self.raw_weights, strict=True)])

    def swap_out(self) -> None:
        """Put the raw weights back."""
        if self.raw_weights is not None:
            self.model.set_weights(self.raw_weights)
            self.raw_weights = None

    def save(self) -> None:
        """Write the average (and its step count) to ``average.npz`` atomically, beside ``last.keras``."""
        with atomic_path(self.path) as tmp, open(tmp, "wb") as file:
            np.savez(file, updates=self.updates, **{f"w{i}": a for i, a in enumerate(self.average)})

    @contextlib.contextmanager
    def raw(self) -> Iterator[None]:
        """Within the block the model holds the raw (trained) weights, e.g. to save the resume point."""
        if self.raw_weights is None:
            yield
            return
        averaged = self.model.get_weights()
        self.model.set_weights(self.raw_weights)
        try:
            yield
        finally:
            self.model.set_weights(averaged)


class SwapAverage(keras.callbacks.Callback):
    """At epoch end, ``into=True`` (first callback) puts the averaged weights in for validation and the best
    checkpoint; ``into=False`` (last callback) puts the raw ones back so training goes on from them."""

    def __init__(self, average: WeightAverage, into: bool) -> None:
        super().__init__()
        self.average, self.into = average, into

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.into:
            self.average.swap_in()
        else:
            self.average.swap_out()


def _averaged(weight: np.ndarray) -> bool:
    return weight.dtype.kind == "f"
