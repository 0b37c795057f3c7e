"""``seg data``: make datasets in the seed layout (synthetic slices, or the original ISBI stacks)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit.console import command, console

Arg = typer.Argument
Opt = typer.Option

data_app = typer.Typer(
    name="data",
    help="Make datasets in the seed layout: DIR/train/{image,label}, DIR/test/{image,label}.",
    no_args_is_help=True,
)

SYNTH_HELP = (
    "Write synthetic EM-like membrane slices with exact labels (255 = interior, 0 = membrane).\n\n"
    "Cells from a warped, jittered Voronoi tessellation, dark membranes 2-6 px wide, textured interiors, "
    "dark organelles that are NOT membrane, blur and noise. Deterministic for --seed; about a fifth of the "
    "slices go to OUT/test. An existing non-empty OUT is refused unless --overwrite."
)
IMPORT_HELP = (
    "Convert the ISBI 2012 training stacks (train-volume.tif, train-labels.tif) into "
    "OUT/train/image/NN.png and OUT/train/label/NN.png. Nothing is written unless every page converts."
)


def register(app: typer.Typer) -> None:
    """Add the ``seg data`` group (``synth``, ``import``) to ``app``."""
    data_app.command("synth", help=SYNTH_HELP)(synth)
    data_app.command("import", help=IMPORT_HELP)(import_stacks)
    app.add_typer(data_app, name="data")


@command
def synth(
    out: Annotated[Path, Arg(help="Dataset folder to create.", show_default=False)],
    n: Annotated[int, Opt("--n", min=1, help="Slices in all (train + test).")] = 30,
    size: Annotated[int, Opt("--size", min=16, help="Slice width and height, pixels.")] = 512,
    seed: Annotated[int, Opt("--seed", help="Random seed; the same seed gives the same bytes.")] = 0,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace OUT's train/ and test/ if present.")] = False,
) -> None:
    from toolkit.synth import synthesize  # scipy / scikit-image load only for this command

    s = synthesize(out, n=n, size=size, seed=seed, overwrite=overwrite)
    console.print(
        f"wrote {s.n_train} train + {s.n_test} test synthetic {s.size}x{s.size} slices to {s.root} "
        f"(seed {s.seed}, membrane {s.membrane_fraction:.1%}) in {s.seconds:.1f} s",
        soft_wrap=True,
        markup=False,
    )


@command
def import_stacks(
    volume: Annotated[Path, Arg(help="Image stack, e.g. train-volume.tif.", show_default=False)],
    labels: Annotated[Path, Arg(help="Label stack, e.g. train-labels.tif (255 = interior).", show_default=False)],
    out: Annotated[Path, Arg(help="Dataset folder to create.", show_default=False)],
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace OUT/train if present (OUT/test is kept).")] = False,
) -> None:
    from toolkit.datasets import import_isbi_stacks

    root = import_isbi_stacks(volume, labels, out, overwrite=overwrite)
    count = sum(1 for _ in (root / "train" / "image").glob("*.png"))
    console.print(f"wrote {count} train slices with labels to {root}", soft_wrap=True, markup=False)
