"""``seg train``: a thin layer over ``train.fit`` / ``train.resume``."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.console import command, console


@command
def train_command(
    data: Path = typer.Option(None, "--data", help="Dataset folder (DIR/train/image + DIR/train/label, or ISBI stacks)."),
    model: str = typer.Option("unet", "--model", help="Architecture: unet (default) or cnn (the seed's plain CNN)."),
    width: int = typer.Option(None, "--width", help="Base filters (default: 16 for unet, 32 for cnn)."),
    depth: int = typer.Option(4, "--depth", help="U-Net poolings (input sizes must be multiples of 2^depth) / CNN layers."),
    batch_norm: bool = typer.Option(True, "--batch-norm/--no-batch-norm", help="Batch normalisation in the U-Net."),
    loss: str = typer.Option("mse", "--loss", help="mse (default, the seed's), bce, dice or bce-dice."),
    epochs: int = typer.Option(1000, "--epochs", help="Maximum epochs (an epoch = --steps-per-epoch batches)."),
    steps_per_epoch: int = typer.Option(20, "--steps-per-epoch", help="Batches between validations/checkpoints."),
    batch: int = typer.Option(8, "--batch", help="Crops per batch."),
    crop: int = typer.Option(256, "--crop", help="Random crop size (a multiple of 2^depth)."),
    lr: float = typer.Option(3e-3, "--lr", help="Peak Adam learning rate (warm-up, then cosine decay)."),
    val: float = typer.Option(0.2, "--val", help="Fraction of slices held out for validation."),
    seed: int = typer.Option(0, "--seed", help="Seed for the split, the crops and the weights."),
    time_budget: float = typer.Option(None, "--time-budget", help="Stop cleanly after this many seconds."),
    patience: int = typer.Option(0, "--patience", help="Early stopping after N epochs without a better val F1 (0 = off)."),
    elastic: bool = typer.Option(False, "--elastic", help="Add elastic deformation to the augmentation."),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision (GPU only)."),
    name: str = typer.Option(None, "--name", help="Run folder name under runs/train (default: a timestamp)."),
    resume: str = typer.Option(None, "--resume", help="Continue an interrupted run (folder or name)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train a segmentation model and write runs/train/<name>/ (model.keras, config.json, history.csv, loss.png)."""
    import train
    from train.models import ModelSpec

    if resume:
        result = train.resume(resume, progress=not quiet, time_budget=time_budget)
    else:
        if data is None:
            raise typer.BadParameter("give --data DIR (or --resume RUN)", param_hint="--data")
        spec = ModelSpec(kind=model, width=width or (16 if model == "unet" else 32), depth=depth,
                         batch_norm=batch_norm) if model in ("unet", "cnn") else _bad_model(model)
        config = train.TrainConfig(
            data=str(data), model=spec, loss=loss, epochs=epochs, steps_per_epoch=steps_per_epoch, batch=batch,
            crop=crop, lr=lr, val=val, seed=seed, time_budget=time_budget, patience=patience, elastic=elastic,
            amp=amp, name=name,
        )
        result = train.fit(config, progress=not quiet)
    _write_figures(result.run_dir)
    console.print(
        f"run [bold]{result.run_dir}[/]: {result.epochs} epochs on {result.device} (stopped: {result.stopped}), "
        f"{result.crops_per_s:.1f} crops/s; best epoch {result.best_epoch}: "
        f"val MSE {result.val_mse:.4f}, val membrane F1 {result.val_f1:.4f}"
    )


def _bad_model(model: str) -> None:
    raise typer.BadParameter(f"{model!r}; choose unet or cnn", param_hint="--model")


def _write_figures(run_dir: Path) -> None:
    """The loss curve beside the run's history (toolkit.plots, when matplotlib is installed)."""
    try:
        from toolkit import plots
    except ImportError:
        return
    write = getattr(plots, "write_run_figures", None)
    if write is not None:
        write(run_dir)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
