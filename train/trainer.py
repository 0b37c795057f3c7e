"""The fit loop: ``seg.train.fit(TrainConfig(...))`` trains a model and writes ``runs/train/<name>/``.

Data are loaded and validated before anything is written, so bad data leaves ``runs/`` untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg.runtime.atomic import remove_temporaries, write_json_atomic
from seg.runtime.errors import InputError
from seg.runtime.preprocess import DTYPE_RANGE
from seg.train import backend, runs
from seg.train.augment import sample_batch
from seg.train.data import Slice, dataset_summary, load_split, split_by_slice
from seg.train.losses import LOSSES, PER_PIXEL_LOSSES
from seg.train.models import ModelSpec
from seg.train.offset import MAX_OFFSET, measure_label_offset
from seg.train.weights import BORDER_W0, border_weights

EMA_MOMENTUM = 0.995  # the weight average's default: a window of about 200 steps (5 epochs of 40)


@dataclass
class TrainConfig:
    """Every knob of a training run; saved as ``config.json`` so a run can be rebuilt and exported."""

    data: str
    model: ModelSpec = field(default_factory=ModelSpec)
    loss: str = "mse"
    epochs: int = 1000
    steps_per_epoch: int = 40
    batch: int = 8
    crop: int = 256
    lr: float = 3e-3
    val: float = 0.2
    seed: int = 0
    time_budget: float | None = None
    patience: int = 0
    elastic: bool = True
    border_weight: float | None = None  # None: BORDER_W0 for a per-pixel loss, 0 for a per-crop (Dice) loss
    ema: float = EMA_MOMENTUM
    label_offset: tuple[float, float] | None = None  # (dy, dx) px the labels sit from their images; None: measure
    amp: bool = False
    name: str | None = None
    runs_root: str = str(runs.RUNS_ROOT)

    def __post_init__(self) -> None:
        if self.border_weight is None:
            self.border_weight = BORDER_W0 if self.loss in PER_PIXEL_LOSSES else 0.0

    def check(self) -> None:
        """Raise ``InputError`` for option values that cannot work, naming the option and the fix."""
        if self.loss not in LOSSES:
            raise InputError(f"--loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        for option, value in (("--epochs", self.epochs), ("--batch", self.batch),
                              ("--steps-per-epoch", self.steps_per_epoch)):
            if value < 1:
                raise InputError(f"{option} {value}: must be at least 1")
        if self.crop % self.model.size_multiple or self.crop < self.model.size_multiple:
            raise InputError(f"--crop {self.crop}: must be a positive multiple of {self.model.size_multiple} "
                             f"({_multiple_reason(self.model)})")
        if not (self.ema == 0 or 0.5 <= self.ema < 1):
            raise InputError(f"--ema {self.ema}: use 0 (off) or a momentum in [0.5, 1), e.g. 0.99")
        if not self.border_weight >= 0:  # type: ignore[operator]
            raise InputError(f"--border-weight {self.border_weight}: must be 0 (off) or positive, e.g. {BORDER_W0:g}")
        if self.border_weight and self.loss not in PER_PIXEL_LOSSES:
            raise InputError(f"--border-weight {self.border_weight:g} with --loss {self.loss}: border weights weight "
                             f"each pixel's loss, and {self.loss} is one value per crop; use --border-weight 0, or "
                             f"--loss {' or '.join(PER_PIXEL_LOSSES)}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise InputError(f"--time-budget {self.time_budget:g}: must be a positive number of seconds, e.g. 600")
        if self.patience and not self.val:
            raise InputError(f"--patience {self.patience} with --val 0: early stopping watches the validation "
                             "F1; hold slices out (--val 0.2) or drop --patience")
        if not self.lr > 0:
            raise InputError(f"--lr {self.lr}: must be positive, e.g. 3e-3")
        if self.label_offset is not None and not all(abs(v) <= MAX_OFFSET for v in self.label_offset):
            dy, dx = self.label_offset
            raise InputError(f"--label-offset {dy:g},{dx:g}: each of dy, dx must be within "
                             f"+-{MAX_OFFSET:g} px, e.g. 0.5,0 (or auto to measure it)")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        kwargs["model"] = ModelSpec.from_dict(values["model"])
        kwargs.setdefault("border_weight", 0.0)  # runs recorded before the weighting existed trained without it
        kwargs.setdefault("ema", 0.0)  # and before the weight average, without it
        kwargs["label_offset"] = tuple(kwargs.get("label_offset") or (0.0, 0.0))  # and before the offset, without
        return cls(**kwargs)


def _multiple_reason(spec: ModelSpec) -> str:
    if spec.kind != "unet":
        return "any positive size"
    return f"stem {spec.stem} x 2^{spec.depth} for this U-Net; a lower --depth or --stem allows smaller crops"


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports. Scores are the best checkpoint's validation scores."""

    run_dir: Path
    epochs: int
    best_epoch: int
    val_mse: float
    val_f1: float
    crops_per_s: float
    stopped: str
    device: str
    label_offset: tuple[float, float] = (0.0, 0.0)  # (dy, dx) px the labels sat from their images, kept in training


def fit(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train a new run from ``config``."""
    config.check()
    train_set, val_set = _load_data(config)
    if config.label_offset is None:
        config.label_offset = measure_label_offset(train_set)
    record = _config_record(config, train_set, val_set)  # imports TensorFlow: before the run folder exists
    run_dir = runs.new_run_dir(Path(config.runs_root), config.name)
    write_json_atomic(run_dir / runs.CONFIG, record)
    with _caller_policy_kept():
        return _run(config, run_dir, train_set, val_set, _fresh_state(), [], progress)


def _fresh_state() -> dict[str, Any]:
    return {"epoch": 0, "best_score": -math.inf, "best_epoch": 0, "elapsed_s": 0.0, "steps": 0}


def resume(run: str | Path, progress: bool = True, time_budget: float | None = None) -> TrainResult:
    """Continue a run from its ``last.keras`` and ``state.json`` (e.g. after it was killed).

    A run killed before its first epoch ended starts over from its config; temporaries a killed save
    left in the run folder are deleted; history rows past the saved state are dropped (redone).
    """
    run_dir = runs.resolve_run(run, Path(runs.RUNS_ROOT))
    record = runs.read_json(run_dir / runs.CONFIG)
    config = TrainConfig.from_dict(record["train"])
    if time_budget is not None and time_budget != config.time_budget:  # kept for the next resume too
        config.time_budget = record["train"]["time_budget"] = time_budget
        write_json_atomic(run_dir / runs.CONFIG, record)
    remove_temporaries(run_dir)
    state, history = _fresh_state(), []
    if (run_dir / runs.LAST_MODEL).is_file() and (run_dir / runs.STATE).is_file():
        state = runs.read_json(run_dir / runs.STATE)
        history = [row for row in _read_history(run_dir / runs.HISTORY) if row.get("epoch", 0) <= state["epoch"]]
    train_set, val_set = _load_data(config)
    with _caller_policy_kept():
        return _run(config, run_dir, train_set, val_set, state, history, progress)


@contextlib.contextmanager
def _caller_policy_kept() -> Iterator[None]:
    """The caller's global Keras dtype policy back after a run that set its own (``_setup_device``)."""
    import keras

    previous = keras.mixed_precision.global_policy()
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _load_data(config: TrainConfig) -> tuple[list[Slice], list[Slice]]:
    slices = load_split(config.data, "train", require_labels=True)
    smallest = min(min(s.image.shape) for s in slices)
    if config.crop > smallest:
        raise InputError(f"--crop {config.crop}: larger than the smallest slice ({smallest} px); lower --crop")
    return split_by_slice(slices, config.val, config.seed)


def _config_record(config: TrainConfig, train_set: list[Slice], val_set: list[Slice]) -> dict[str, Any]:
    spec = config.model
    return {
        "train": {**config.to_dict(), "data": str(Path(config.data).resolve())},  # resumable from any folder
        "model": {**spec.to_dict(), "receptive_field": spec.receptive_field, "size_multiple": spec.size_multiple},
        "data": {"dir": str(Path(config.data).resolve()), "train_slices": [s.source for s in train_set],
                 "val_slices": [s.source for s in val_set],
                 "summary": dataset_summary(Path(config.data).resolve(), train_set, val_set)},
        "normalization": DTYPE_RANGE,
        "threshold": 0.5,
        "versions": backend.versions(),
    }


def _read_history(path: Path) -> list[dict[str, float]]:
    import csv

    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def _make_batches(train_set: list[Slice], config: TrainConfig, first_epoch: int) -> Any:
    import keras

    weights = [border_weights(s.label, config.border_weight) for s in train_set]  # type: ignore[arg-type]
    mean_weight = float(np.mean([w.mean() for w in weights]))
    weights = [w / mean_weight for w in weights]  # mean 1: the weighted loss stays on the MSE's scale
    per_pixel = config.loss in PER_PIXEL_LOSSES  # a per-crop (Dice) loss takes no per-pixel weights

    class CropBatches(keras.utils.PyDataset):
        """``steps_per_epoch`` augmented batches per epoch, reproducible from (seed, epoch, step): ``(x, y,
        per-pixel loss weights)``, or ``(x, y)`` for a per-crop loss."""

        def __init__(self) -> None:
            super().__init__(workers=backend.batch_workers(), use_multiprocessing=False)
            self.epoch = first_epoch

        def __len__(self) -> int:
            return config.steps_per_epoch

        def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
            rng = np.random.default_rng([config.seed, self.epoch, index])
            x, y, w = sample_batch(train_set, config.batch, config.crop, rng, use_elastic=config.elastic,
                                   weights=weights, label_offset=config.label_offset or (0.0, 0.0))
            return (x, y, w) if per_pixel else (x, y)

        def on_epoch_end(self) -> None:
            self.epoch += 1

    return CropBatches()


def _setup_device(config: TrainConfig, resuming: bool = False) -> tuple[str, bool]:
    """``(label, on_gpu)``: the GPUs the Keras backend really sees. Sets the precision new layers compute in
    (``--amp``: float16 on a GPU, bfloat16 on a CPU that has it, ``backend.mixed_policy``; else float32); a
    resumed run keeps the precision it was saved in (``_precision_label``)."""
    import warnings

    import keras

    from seg.runtime.errors import SegWarning

    gpus = backend.accelerators()
    policy = backend.mixed_policy(gpus) if config.amp else None
    if config.amp and policy is None and not resuming:
        warnings.warn("--amp needs a GPU, or TensorFlow on a CPU with bfloat16 instructions (AVX512-BF16 or AMX); "
                      "training in float32", SegWarning, stacklevel=2)
    keras.mixed_precision.set_global_policy(policy or "float32")  # fit and resume restore the caller's
    return backend.device_label(gpus), bool(gpus)


def _precision_label(model: Any, device: str, run_dir: Path, resuming: bool) -> str:
    """``device`` plus the mixed precision ``model`` computes in (``"CPU (tensorflow), mixed bfloat16"``); a
    resumed run whose saved precision differs from what this machine would choose warns and keeps its own."""
    import warnings

    import keras

    from seg.runtime.errors import SegWarning

    computing = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    policies = {layer.dtype_policy.name for layer in computing} - {"float32"}  # the sigmoid output: float32 always
    chosen = keras.mixed_precision.global_policy().name
    if resuming and policies != ({chosen} - {"float32"}):
        saved = ", ".join(sorted(policies)) or "float32"
        warnings.warn(f"{run_dir}: resumed in {saved}, the precision it was saved in (this machine would train "
                      f"it in {chosen})", SegWarning, stacklevel=2)
    return ", ".join([device, *(policy.replace("_", " ") for policy in sorted(policies))])


def _model_for(config: TrainConfig, run_dir: Path, state: dict[str, Any], on_gpu: bool) -> Any:
    """A fresh compiled model, or the run's ``last.keras`` (with optimizer state) when resuming.

    Whether the train step is compiled depends on the backend (``backend.jit_compile``).
    """
    import keras

    from seg.train.losses import get_loss
    from seg.train.models import build_model

    if state["epoch"] > 0:
        model = keras.models.load_model(run_dir / runs.LAST_MODEL, safe_mode=True)
    else:
        model = build_model(config.model)
        model.compile(optimizer=keras.optimizers.Adam(config.lr), loss=get_loss(config.loss))
    model.jit_compile = backend.jit_compile(on_gpu)
    return model


def _run(config: TrainConfig, run_dir: Path, train_set: list[Slice], val_set: list[Slice],
         state: dict[str, Any], history: list[dict[str, float]], progress: bool) -> TrainResult:
    import keras

    from seg.train.callbacks import RichProgress, ScheduleAndBudget

    resuming = state["epoch"] > 0
    device, on_gpu = _setup_device(config, resuming)
    keras.utils.set_random_seed(config.seed + int(state["epoch"]))
    model = _model_for(config, run_dir, state, on_gpu=on_gpu)
    device = _precision_label(model, device, run_dir, resuming)
    state["_started"] = time.monotonic()
    total_steps = config.epochs * config.steps_per_epoch
    schedule = ScheduleAndBudget(config.lr, total_steps, config.time_budget, state)
    callbacks = _epoch_callbacks(config, run_dir, state, history, val_set, schedule)
    if config.patience:
        callbacks.append(keras.callbacks.EarlyStopping("val_f1", mode="max", patience=config.patience))
    if progress:
        callbacks.append(RichProgress(schedule))
    first_step, started = int(state.get("steps", 0)), time.monotonic()
    if state["epoch"] < config.epochs and not _budget_spent(config, state):
        model.fit(_make_batches(train_set, config, int(state["epoch"])), epochs=config.epochs,
                  initial_epoch=int(state["epoch"]), callbacks=callbacks, verbose=0)
    seconds = max(time.monotonic() - started, 1e-9)
    return _result(config, run_dir, state, schedule, (int(state.get("steps", 0)) - first_step) / seconds, device)


def _epoch_callbacks(config: TrainConfig, run_dir: Path, state: dict[str, Any], history: list[dict[str, float]],
                     val_set: list[Slice], schedule: Any) -> list[Any]:
    """Schedule, validation and checkpoints, in that order; with ``--ema`` the validation and the best
    checkpoint see the averaged weights (swapped in before them and out after)."""
    from seg.train.averaging import SwapAverage, WeightAverage
    from seg.train.callbacks import Checkpoints, ValidationScores
    from seg.train.losses import get_loss

    validation = ValidationScores(val_set, get_loss(config.loss), config.model.size_multiple)
    if not config.ema:
        return [schedule, validation, Checkpoints(run_dir, state, history)]
    average = WeightAverage(config.ema, run_dir, resume_steps=int(state["steps"]) if state["epoch"] > 0 else None)
    return [schedule, average, SwapAverage(average, into=True), validation,
            Checkpoints(run_dir, state, history, average=average), SwapAverage(average, into=False)]


def _budget_spent(config: TrainConfig, state: dict[str, Any]) -> bool:
    return config.time_budget is not None and float(state.get("elapsed_s", 0.0)) >= config.time_budget


def _result(config: TrainConfig, run_dir: Path, state: dict[str, Any], schedule: Any,
            steps_per_s: float, device: str) -> TrainResult:
    if state["best_epoch"] == 0 and state["epoch"] == 0:
        raise InputError(f"{run_dir}: training stopped before one epoch finished; raise --time-budget")
    if state["best_epoch"] == 0:
        raise InputError(f"{run_dir}: {state['epoch']} epochs trained but none scored (a NaN loss or validation "
                         "score: the training diverged); lower --lr, or check the images and labels")
    best = state.get("best_logs", {})
    if schedule.out_of_time or _budget_spent(config, state):
        stopped = "time budget"
    elif state["epoch"] < config.epochs:
        stopped = "early stopping"
    else:
        stopped = "epochs"
    return TrainResult(run_dir, int(state["epoch"]), int(state["best_epoch"]), float(best.get("val_mse", "nan")),
                       float(best.get("val_f1", "nan")), steps_per_s * config.batch, stopped, device,
                       tuple(config.label_offset or (0.0, 0.0)))  # type: ignore[arg-type]
