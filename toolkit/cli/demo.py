"""``seg demo``: a thin layer over ``seg.toolkit.demo.run_demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from seg.toolkit.cli.console import command, console, quiet_tensorflow

Opt = typer.Option


@command
def demo_command(
    data: Annotated[Path | None, Opt("--data", help="Dataset folder; default: synthesise 30 EM-like slices.")] = None,
    out: Annotated[Path, Opt("--out", help="Where everything goes.")] = Path("runs/demo"),
    budget: Annotated[float, Opt("--budget", help="Training time budget in seconds.")] = 240.0,
    seed: Annotated[int, Opt("--seed", min=0, help="Seed for the data, the split and the weights.")] = 0,
    width: Annotated[int, Opt("--width", min=1, max=256, help="U-Net base filters.")] = 16,
) -> None:
    """Train, export with parity, infer tiled on a large mosaic, segment the test slices as a volume on a
    2-worker Dask cluster (checked against Segmenter.predict), evaluate, and write report.md — on synthetic
    data when no --data is given. Rerunning into the same --out reuses its data and continues its training up
    to the new --budget; other --data, --seed or --width need another --out."""
    quiet_tensorflow()
    from seg.toolkit.demo import run_demo

    run_demo(out, data, budget, seed, width, say=lambda line: console.print(line, markup=False))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
