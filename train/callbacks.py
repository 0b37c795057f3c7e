"""Keras callbacks for the fit loop: validation scores, checkpoints, history, LR schedule, time budget,
and a rich progress bar. Every file is written atomically (a killed run never leaves a torn file)."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from seg.runtime.atomic import atomic_path, write_json_atomic, write_text_atomic
from seg.runtime.scores import best_pixel_threshold, membrane_f1, mse
from seg.runtime.tiling import pad_to_multiple
from seg.train import runs
from seg.train.averaging import WeightAverage
from seg.train.data import Slice


class ValidationScores(keras.callbacks.Callback):
    """Adds ``val_loss`` (the training loss function, without the border weights the training ``loss`` carries,
    so the two are not on one scale), ``val_mse`` and ``val_f1`` (membrane F1 at 0.5), each the mean
    over the whole validation slices, and ``val_threshold`` with its ``val_pixel_error`` (the threshold with
    the fewest wrong pixels, ``seg.runtime.scores.best_pixel_threshold``) to the logs."""

    def __init__(self, slices: list[Slice], loss: Any, size_multiple: int = 1) -> None:
        super().__init__()
        self.slices, self.loss, self.size_multiple = slices, keras.losses.get(loss), size_multiple

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None or not self.slices:
            return
        pairs = [(self._predict(s.image), s.label) for s in self.slices]
        logs["val_loss"] = float(np.mean([self._loss(prob, label) for prob, label in pairs]))
        logs["val_mse"] = float(np.mean([mse(prob, label) for prob, label in pairs]))
        logs["val_f1"] = float(np.mean([membrane_f1(prob, label) for prob, label in pairs]))
        probs, labels = [prob for prob, _ in pairs], [label for _, label in pairs]
        logs["val_threshold"], logs["val_pixel_error"] = best_pixel_threshold(probs, labels)

    def _loss(self, prob: np.ndarray, label: np.ndarray) -> float:
        value = self.loss(label[None, :, :, None], prob[None, :, :, None])
        return float(np.mean(keras.ops.convert_to_numpy(value)))

    def _predict(self, image: np.ndarray) -> np.ndarray:
        """``(H, W) float32 in [0, 1]`` -> the model's ``(H, W)`` map, the slice padded as the runtime pads a
        whole image (``pad_to_multiple`` of the model's size multiple) and cropped back."""
        padded = pad_to_multiple(image, self.size_multiple)
        out = self.model(padded[None, :, :, None], training=False)
        return np.asarray(out, dtype=np.float32)[0, : image.shape[0], : image.shape[1], 0]


class Checkpoints(keras.callbacks.Callback):
    """Saves the best model (by ``monitor``, higher is better), writing its ``val_threshold`` into
    ``config.json`` (export carries it into the model's metadata), and, every epoch, the last model with
    ``state.json`` so ``--resume`` continues where a killed run stopped. Also rewrites ``history.csv``.
    With a weight ``average``, the model holds the averaged weights here; ``last.keras`` gets the raw ones."""

    def __init__(self, run_dir: Path, state: dict[str, Any], history: list[dict[str, float]],
                 monitor: str = "val_f1", average: WeightAverage | None = None) -> None:
        super().__init__()
        self.run_dir, self.state, self.history, self.monitor = run_dir, state, history, monitor
        self.average = average

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()},
               "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
               "elapsed_s": self.state["elapsed_s"] + time.monotonic() - self.state["_started"]}
        self.history.append(row)
        score = logs.get(self.monitor, -float(logs.get("loss", math.inf)))
        if score > self.state["best_score"]:
            self.state.update(best_score=float(score), best_epoch=epoch + 1, best_logs=row)
            self._save(self.run_dir / "model.keras")
            self._record_threshold(logs.get("val_threshold"))
        with self.average.raw() if self.average else contextlib.nullcontext():
            self._save(self.run_dir / "last.keras")
        if self.average:
            self.average.save()  # before state.json: a resume point never comes with an older average
        write_text_atomic(self.run_dir / "history.csv", _history_csv(self.history))
        self.state["epoch"] = epoch + 1
        write_json_atomic(self.run_dir / "state.json", _public_state(self.state, row["elapsed_s"]))

    def _record_threshold(self, threshold: float | None) -> None:
        if threshold is None:
            return
        config = runs.read_json(self.run_dir / runs.CONFIG)
        config["threshold"] = float(threshold)
        write_json_atomic(self.run_dir / runs.CONFIG, config)

    def _save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            self.model.save(tmp)


def _public_state(state: dict[str, Any], elapsed: float) -> dict[str, Any]:
    public = {k: v for k, v in state.items() if not k.startswith("_")}
    public["elapsed_s"] = elapsed
    return public


def _history_csv(rows: list[dict[str, float]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class ScheduleAndBudget(keras.callbacks.Callback):
    """Cosine learning-rate decay over the run's progress (epochs or time budget, whichever is further)
    after a short warm-up; stops training cleanly when the time budget is spent."""

    def __init__(self, base_lr: float, total_steps: int, budget_s: float | None, state: dict[str, Any],
                 warmup_steps: int = 20) -> None:
        super().__init__()
        self.base_lr, self.total_steps, self.budget_s = base_lr, max(total_steps, 1), budget_s
        self.state, self.warmup_steps = state, warmup_steps
        self.spent_s, self.step = float(state.get("elapsed_s", 0.0)), int(state.get("steps", 0))
        self.started = time.monotonic()
        self.out_of_time = False

    def progress(self) -> float:
        """Fraction of the run done, in [0, 1]."""
        by_steps = self.step / self.total_steps
        if self.budget_s is None:
            return min(by_steps, 1.0)
        by_time = (self.spent_s + time.monotonic() - self.started) / self.budget_s
        return min(max(by_steps, by_time), 1.0)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        warm = min(1.0, (self.step + 1) / self.warmup_steps)
        lr = self.base_lr * warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * self.progress())))
        self.model.optimizer.learning_rate.assign(lr)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.step += 1
        self.state["steps"] = self.step
        if self.budget_s is not None and self.spent_s + time.monotonic() - self.started >= self.budget_s:
            self.out_of_time = True
            self.model.stop_training = True


class RichProgress(keras.callbacks.Callback):
    """One rich progress bar over the run — by steps, or by time when a time budget ends it sooner —
    showing the step count, loss and the latest validation scores."""

    def __init__(self, schedule: ScheduleAndBudget) -> None:
        super().__init__()
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train[/]"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), TextColumn("{task.fields[scores]}"),
            transient=False,
        )
        self.schedule = schedule
        self.val_text = ""

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.progress.start()
        self.task = self.progress.add_task("train", total=1.0, completed=self.schedule.progress(), scores="")

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        text = f"step {self.schedule.step}" + (f" loss {float(loss):.4f}" if loss is not None else "")
        self.progress.update(self.task, completed=self.schedule.progress(), scores=f"{text} {self.val_text}")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        if "val_f1" in logs:
            self.val_text = f"| epoch {epoch + 1} val_mse {logs['val_mse']:.4f} val_f1 {logs['val_f1']:.4f}"

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.progress.stop()
