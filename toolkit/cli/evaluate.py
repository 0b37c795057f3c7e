"""``seg evaluate``: a thin layer over ``seg.toolkit.evaluation.evaluate.evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from seg.toolkit.cli.console import command, console, plural, quiet_tensorflow

Opt = typer.Option


@command
def evaluate_command(
    model: Annotated[Path, Opt("--model", help="A .onnx (run through the runtime, tiled) or .keras model, or a run.")],
    data: Annotated[Path, Opt("--data", help="Dataset folder in the seed layout (or ISBI stacks).")],
    split: Annotated[str, Opt("--split", help="val (slices held out by training; for a model.keras in its run "
                              "folder, the very slices its run recorded), test or train.")] = "val",
    figures: Annotated[Path | None, Opt("--figures", help="Write figures (PNG) into this folder.")] = None,
    json_out: Annotated[Path | None, Opt("--json", help="Write all scores as JSON to this file.")] = None,
    provider: Annotated[str, Opt("--provider", help="For ONNX models: cpu, cuda or auto (cpu by default, "
                                        "so scores do not depend on the machine's GPU).")] = "cpu",
    val: Annotated[float, Opt("--val", help="Validation fraction used by training (for --split val; a "
                              "model.keras in its run folder uses its run's).")] = 0.2,
    seed: Annotated[int, Opt("--seed", min=0, help="Seed used by training's split (for --split val; a model.keras in "
                             "its run folder uses its run's).")] = 0,
    threshold: Annotated[float | None, Opt("--threshold", help="Threshold for the pixel scores (default: the "
                                           "model's own, chosen on validation by training).")] = None,
    tta: Annotated[bool, Opt("--tta", help="Average the 8 flips/rotations (8x slower).")] = False,
) -> None:
    """Score a model with the seed's MSE and the ISBI 2012 scores (V_rand, V_info after thinning)."""
    from rich.table import Table

    from seg.runtime.atomic import write_json_atomic
    from seg.toolkit.evaluation.evaluate import SCORE_ROWS, evaluate

    if model.suffix != ".onnx":
        quiet_tensorflow()
    report = evaluate(model, data, split, figures=figures, provider=provider, val=val, seed=seed,
                      threshold=threshold, tta=tta)
    table = Table(title=f"{Path(report.model).name} on {split} ({plural(len(report.slice_names), 'slice')}, "
                        f"{report.engine})")
    table.add_column("score")
    table.add_column("value", justify="right")
    for key, label in SCORE_ROWS:
        table.add_row(label, f"{report.scores[key]:.4f}")
    console.print(table)
    if json_out:
        write_json_atomic(json_out, report.to_dict())
        console.print(f"scores written to {json_out}", markup=False)
    for path in report.figures:
        console.print(f"figure: {path}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
