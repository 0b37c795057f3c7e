"""Figures written into a training run: the loss curve and a sample of validation predictions."""

from __future__ import annotations

from pathlib import Path

from seg.toolkit.evaluation.evaluate import keras_predict_file, select_split
from seg.train import runs
from seg.train.data import Slice


def write_run_figures(run_dir: Path, n_samples: int = 2) -> list[Path]:
    """Write ``loss.png`` (train/val loss per epoch) and ``samples.png`` (image, truth, prediction for up
    to ``n_samples`` validation slices) into ``run_dir``; returns the paths written."""
    from seg.toolkit.evaluation import plots

    written = [plots.plot_loss_curve(run_dir / runs.HISTORY, run_dir / "loss.png", title=run_dir.name)]
    samples = _validation_samples(run_dir, n_samples)
    if samples:
        probs = keras_predict_file(run_dir / runs.BEST_MODEL, [s.image for s in samples])
        written.append(plots.plot_predictions([s.image for s in samples], [s.label for s in samples], probs,
                                              run_dir / "samples.png", title=f"{run_dir.name}: validation"))
    return written


def _validation_samples(run_dir: Path, n_samples: int) -> list[Slice]:
    record = runs.read_json(run_dir / runs.CONFIG)
    if not record["data"].get("val_slices"):
        return []
    train = record["train"]
    return select_split(Path(record["data"]["dir"]), "val", train["val"], train["seed"], recorded=record)[:n_samples]
