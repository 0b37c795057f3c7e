"""``seg data``: make datasets in the seed layout (synthetic slices, or the original ISBI stacks)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from seg.toolkit.cli.console import command, console, err_console

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

FETCH_HELP = (
    "Download the public ISBI 2012 training stacks (train-volume.tif, train-labels.tif: 30 slices of "
    "512x512, 8-bit) and convert them into DIR/train/image/NN.png and DIR/train/label/NN.png.\n\n"
    "Default mirror: https://raw.githubusercontent.com/alexklibisz/isbi-2012/master/data/ (the original "
    "http://brainiac2.mit.edu/isbi_challenge/ is often down); --mirror takes any http(s):// or file:// base "
    "URL holding both files. Each file's SHA-256 is checked against a pinned digest or --sha256-volume / "
    "--sha256-labels; no digest is pinned in this release yet, so the computed ones are printed for you to "
    "pin. Offline, or on a mismatch, nothing is written: place the files by hand and run "
    "'seg data import train-volume.tif train-labels.tif DIR'. An existing non-empty DIR is refused unless "
    "--overwrite."
)


class FetchDataset(StrEnum):
    """Datasets ``seg data fetch`` knows."""

    isbi2012 = "isbi2012"


def register(app: typer.Typer) -> None:
    """Add the ``seg data`` group (``synth``, ``import``, ``fetch``) to ``app``."""
    data_app.command("synth", help=SYNTH_HELP)(synth)
    data_app.command("import", help=IMPORT_HELP)(import_stacks)
    data_app.command("fetch", help=FETCH_HELP)(fetch)
    app.add_typer(data_app, name="data")


@command
def synth(
    out: Annotated[Path, Arg(help="Dataset folder to create.", show_default=False)],
    n: Annotated[int, Opt("--n", min=1, help="Slices in all (train + test).")] = 30,
    size: Annotated[int, Opt("--size", min=16, max=8192, help="Slice width and height, pixels.")] = 512,
    seed: Annotated[int, Opt("--seed", min=0, help="Random seed; the same seed gives the same bytes.")] = 0,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace OUT's train/ and test/ if present.")] = False,
) -> None:
    from seg.toolkit.data.synth import synthesize  # scipy / scikit-image load only for this command

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
    from seg.toolkit.data.datasets import import_isbi_stacks

    root = import_isbi_stacks(volume, labels, out, overwrite=overwrite)
    count = sum(1 for _ in (root / "train" / "image").glob("*.png"))
    console.print(f"wrote {count} train slices with labels to {root}", soft_wrap=True, markup=False)


@command
def fetch(
    dataset: Annotated[FetchDataset, Arg(help="Dataset to download.", show_default=False)],
    dir: Annotated[Path, Opt("--dir", help="Dataset folder to create.")] = Path("data/isbi2012"),
    mirror: Annotated[str | None, Opt("--mirror", help="Base URL holding both stacks.", show_default=False)] = None,
    sha256_volume: Annotated[str | None, Opt("--sha256-volume", help="Expected SHA-256 of train-volume.tif.",
                                             show_default=False)] = None,
    sha256_labels: Annotated[str | None, Opt("--sha256-labels", help="Expected SHA-256 of train-labels.tif.",
                                             show_default=False)] = None,
    keep_raw: Annotated[bool, Opt("--keep-raw", help="Keep the downloaded stacks in DIR/raw/.")] = False,
    timeout: Annotated[float, Opt("--timeout", min=0.1, help="Seconds to wait for the server.")] = 60.0,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace DIR/train if present (DIR/test is kept).")] = False,
) -> None:
    from seg.toolkit.data.fetch import DEFAULT_MIRROR, LABELS, VOLUME, expected_digests, fetch_isbi2012

    overrides = {name: d for name, d in ((VOLUME, sha256_volume), (LABELS, sha256_labels)) if d is not None}
    root = fetch_isbi2012(dir, mirror, checksums=overrides, overwrite=overwrite, keep_raw=keep_raw,
                          timeout=timeout, progress=err_console.is_terminal)
    count = sum(1 for _ in (root / "train" / "image").glob("*.png"))
    pinned = all(expected_digests(overrides).values())
    console.print(
        f"wrote {count} train slices with labels to {root} from {mirror or DEFAULT_MIRROR} "
        f"(SHA-256 {'verified' if pinned else 'not pinned; see the warnings'}"
        f"{'; stacks kept in ' + str(root / 'raw') if keep_raw else ''})",
        soft_wrap=True,
        markup=False,
    )
