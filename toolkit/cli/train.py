"""``seg train``: a thin layer over ``seg.train.fit`` / ``seg.train.resume``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from seg.toolkit.cli.console import command, console, plural, quiet_tensorflow, typed_options

if TYPE_CHECKING:
    from seg.train.models import ModelSpec

Opt = typer.Option


@command
def train_command(
    context: typer.Context,
    data: Annotated[Path | None, Opt("--data", help="Dataset: DIR/train/{image,label} or ISBI stacks.")] = None,
    model: Annotated[str, Opt("--model", help="Architecture: unet (default) or cnn (the seed's plain CNN).")] = "unet",
    width: Annotated[int | None, Opt("--width", min=1, max=256,
                                     help="Base filters (default: 16 for unet, 32 for cnn).")] = None,
    depth: Annotated[int | None, Opt("--depth", min=1, max=8, help="U-Net poolings (default 3); for the cnn, "
                                     "hidden conv layers minus one (default 4).")] = None,
    stem: Annotated[int | None, Opt("--stem", min=1, max=2, help="U-Net stem stride: 2 (default; levels at half "
                                    "resolution) or 1 (classic full-resolution first level).")] = None,
    head: Annotated[int, Opt("--head", min=0, max=64, help="Channels of an optional full-resolution head of the "
                             "stem U-Net (0 = none).")] = 0,
    batch_norm: Annotated[bool, Opt("--batch-norm/--no-batch-norm", help="Batch normalisation in the U-Net.")] = True,
    loss: Annotated[str, Opt("--loss", help="mse (default, the seed's), bce, dice or bce-dice.")] = "mse",
    epochs: Annotated[int, Opt("--epochs", help="Maximum epochs (an epoch = --steps-per-epoch batches).")] = 1000,
    steps_per_epoch: Annotated[int, Opt("--steps-per-epoch", help="Batches between validations/checkpoints.")] = 40,
    batch: Annotated[int, Opt("--batch", help="Crops per batch.")] = 8,
    crop: Annotated[int, Opt("--crop", help="Random crop size (a multiple of stem x 2^depth).")] = 256,
    lr: Annotated[float, Opt("--lr", help="Peak Adam learning rate (warm-up, then cosine decay).")] = 3e-3,
    val: Annotated[float, Opt("--val", help="Fraction of slices held out for validation.")] = 0.2,
    seed: Annotated[int, Opt("--seed", min=0, help="Seed for the split, the crops and the weights.")] = 0,
    time_budget: Annotated[float | None, Opt("--time-budget", help="Stop cleanly after this many seconds.")] = None,
    patience: Annotated[int, Opt("--patience", help="Stop after N epochs without better val F1.")] = 0,
    elastic: Annotated[bool, Opt("--elastic/--no-elastic", help="Elastic deformation in the augmentation.")] = True,
    border_weight: Annotated[float | None, Opt("--border-weight", help="Extra loss weight of thin borders between "
                                               "cells (U-Net w0; default 10 for mse and bce, 0 for the per-crop "
                                               "dice losses); 0 = plain MSE.")] = None,
    ema: Annotated[float, Opt("--ema", help="Validate and keep a moving average of the weights with this "
                              "momentum; 0 = off.")] = 0.995,
    label_offset: Annotated[str, Opt("--label-offset", help="Where the labels sit from their images, DY,DX px, "
                                     "kept through the flips/rotations; auto = measure it on the training "
                                     "slices, 0 = assume none.")] = "auto",
    amp: Annotated[bool, Opt("--amp", help="Mixed precision: float16 on a GPU, bfloat16 on a CPU with "
                                          "AVX512-BF16 or AMX; float32 elsewhere.")] = False,
    name: Annotated[str | None, Opt("--name", help="Run folder name under runs/train (default: a timestamp).")] = None,
    resume: Annotated[str | None, Opt("--resume", help="Continue an interrupted run (folder or name).")] = None,
    quiet: Annotated[bool, Opt("--quiet", help="No progress bar.")] = False,
) -> None:
    """Train a segmentation model and write runs/train/<name>/: model.keras (best, of the weight average),
    last.keras + average.npz + state.json (resume), config.json, history.csv, loss.png, samples.png.
    --time-budget counts the run's total time, also across --resume; given with --resume it replaces the run's
    budget (kept for later resumes), and the learning-rate schedule stretches to the new length."""
    quiet_tensorflow()
    from seg import train

    if resume:
        _warn_ignored_on_resume(context)
        result = train.resume(resume, progress=not quiet, time_budget=time_budget)
    else:
        if data is None:
            from seg.runtime.errors import InputError

            raise InputError("give --data DIR (a dataset folder), or --resume RUN to continue a run")
        spec = _model_spec(model, width, depth, stem, batch_norm, head)
        config = train.TrainConfig(
            data=str(data), model=spec, loss=loss, epochs=epochs, steps_per_epoch=steps_per_epoch, batch=batch,
            crop=crop, lr=lr, val=val, seed=seed, time_budget=time_budget, patience=patience, elastic=elastic,
            border_weight=border_weight, ema=ema, label_offset=_offset(label_offset), amp=amp, name=name,
        )
        result = train.fit(config, progress=not quiet)
    console.print(
        f"run [bold]{escape(str(result.run_dir))}[/]: {plural(result.epochs, 'epoch')} on {result.device} "
        f"(stopped: {result.stopped}), "
        f"{result.crops_per_s:.1f} crops/s; best epoch {result.best_epoch}: "
        f"val MSE {result.val_mse:.4f}, val membrane F1 {result.val_f1:.4f}",
        soft_wrap=True,
    )
    if any(result.label_offset):
        dy, dx = result.label_offset
        console.print(f"labels sit ({dy:+.2f}, {dx:+.2f}) px (dy, dx) from their images; every flip kept them there",
                      soft_wrap=True)
    _write_figures(result.run_dir)


RESUME_OPTIONS = {"resume", "time_budget", "quiet"}
"""What ``--resume`` takes from the command line; everything else comes from the run's config.json."""


def _warn_ignored_on_resume(context: typer.Context) -> None:
    """One ``SegWarning`` naming the options given with ``--resume`` that it does not use (the run keeps its own)."""
    import warnings

    from seg.runtime.errors import SegWarning

    given = typed_options(context, RESUME_OPTIONS)
    if given:
        warnings.warn(f"--resume continues the run with the settings in its config.json; {', '.join(given)} "
                      "ignored (only --time-budget and --quiet apply)", SegWarning, stacklevel=2)


def _model_spec(model: str, width: int | None, depth: int | None, stem: int | None, batch_norm: bool,
                head: int = 0) -> ModelSpec:
    """The options as a ``ModelSpec``; unset ones take the kind's defaults."""
    from seg.runtime.errors import InputError
    from seg.train.models import ModelSpec

    if model not in ("unet", "cnn"):
        raise InputError(f"--model {model!r}: choose unet or cnn")
    if model == "cnn" and stem not in (None, 1):
        raise InputError(f"--stem {stem}: the cnn has no stem; leave --stem out (it applies to --model unet)")
    default = ModelSpec() if model == "unet" else ModelSpec(kind="cnn", width=32, depth=4)
    try:
        return ModelSpec(kind=model, width=default.width if width is None else width,
                         depth=default.depth if depth is None else depth, batch_norm=batch_norm,
                         stem=0 if stem is None else stem, head=head)
    except ValueError as exc:
        raise InputError(f"--depth/--stem/--head: {exc}") from None


def _offset(text: str) -> tuple[float, float] | None:
    """``--label-offset``: auto -> None (measure), 0 -> (0, 0), DY,DX -> floats."""
    from seg.runtime.errors import InputError

    if text.strip().lower() == "auto":
        return None
    parts = [part.strip() for part in text.split(",")]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if values == [0.0]:
        return 0.0, 0.0
    if len(values) != 2:
        raise InputError(f"--label-offset {text!r}: expected auto, 0 or DY,DX in pixels, e.g. 0.5,0")
    return values[0], values[1]


def _write_figures(run_dir: Path) -> None:
    """loss.png and samples.png in the run folder."""
    from seg.toolkit.evaluation.figures import write_run_figures

    write_run_figures(run_dir)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
