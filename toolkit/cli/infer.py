"""``seg infer``: segment folders, files, globs or TIFF stacks (one or several) with an exported ONNX model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from seg.toolkit.cli.console import command, console, err_console, plural

HELP = (
    "Segment images with an exported ONNX model (tiled, batched; CUDA or CPU).\n\n"
    "Writes OUTPUT/<stem>.png masks (255 = cell interior, 0 = membrane; a multi-page TIFF input gives a "
    "<stem>.tif mask stack), OUTPUT/prob/<stem>.tif float32 probabilities with --save-prob and "
    "OUTPUT/overlay/<stem>.png (.tif for stacks) with --overlay. OUTPUT defaults to runs/infer/<input folder "
    "name or file stem> (test/image -> test-image).\n\n"
    "Several inputs: --input a.png b.png c.tif, --input day1 --input day2, or an unquoted glob "
    "--input dir/*.png (the shell lists the files). Outputs are named by stem alone, in one OUTPUT: a file "
    "named twice is done once; files in different folders with one stem (day1/00.png, day2/00.png) stop the "
    "run before anything is written (exit 2): rename them or give each folder its own --output.\n\n"
    "Inputs whose outputs all exist are skipped (resume) unless --overwrite; a rerun with another model, "
    "threshold, tiling or input redoes them (OUTPUT/.seg-infer.json records what made them; an unreadable "
    "record redoes them all, with a warning). "
    "Exits 1 if any file failed, "
    "2 if the input or the model is unusable (then nothing is written)."
)
Opt = typer.Option


def register(app: typer.Typer) -> None:
    """Add ``seg infer`` to ``app``."""
    app.command("infer", help=HELP)(infer)


@command
def infer(
    input: Annotated[list[str] | None, Opt(
        "--input", "-i", metavar="PATH", show_default=False,
        help="Folder, image file, glob ('dir/*.png') or TIFF stack; repeat it, or list more PATHs, for several.",
    )] = None,
    paths: Annotated[list[str] | None, typer.Argument(
        metavar="PATH", show_default=False,
        help="More inputs, as for --input: the files an unquoted glob expands to (--input dir/*.png).",
    )] = None,
    model: Annotated[Path, Opt("--model", "-m", help="Exported ONNX model.")] = Path("model.onnx"),
    provider: Annotated[str, Opt("--provider", "-p", help="cuda (strict) | cpu | auto (CUDA, else CPU).")] = "auto",
    output: Annotated[Path | None, Opt("--output", "-o", help="Output folder (default: runs/infer/<name>).")] = None,
    threshold: Annotated[float | None, Opt(help="Interior probability cut for masks (default: the model's).")] = None,
    save_prob: Annotated[bool, Opt("--save-prob", help="Also write float32 TIFF probability maps.")] = False,
    overlay: Annotated[bool, Opt("--overlay", help="Also write membranes (red) over the image.")] = False,
    overwrite: Annotated[bool, Opt("--overwrite", help="Redo inputs whose outputs already exist.")] = False,
    tile: Annotated[int | None, Opt("--tile", help="Tile size; 0 = whole image (default: the model's, doubled "
                                                   "for images larger than it both ways).")] = None,
    halo: Annotated[int | None, Opt("--halo", help="Tile overlap margin, pixels (default: the model's).")] = None,
    batch: Annotated[int, Opt("--batch", help="Tiles per onnxruntime call.")] = 4,
    tta: Annotated[bool, Opt("--tta", help="Average the 8 flips/rotations (8x slower).")] = False,
) -> None:
    from seg.runtime.folders import segment_paths

    bar = Progress(
        TextColumn("[bold]segmenting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err_console, transient=True,
    )
    task = bar.add_task("infer", total=None)

    def progress(done: int, total: int) -> None:
        if not bar.live.is_started:  # started on the first image: early errors leave no empty bar behind
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        summary = segment_paths(
            [*(input or []), *(paths or [])], model, output, provider=provider, threshold=threshold,
            save_prob=save_prob, overlay=overlay, overwrite=overwrite, tile_size=tile, halo=halo, batch_size=batch,
            tta=tta,
            progress=progress, on_error=lambda line: bar.console.print(f"[red]failed:[/] {line}", soft_wrap=True),
        )
    finally:
        if bar.live.is_started:
            bar.stop()
    skipped = f"; {summary.skipped} already done, skipped" if summary.skipped else ""
    console.print(
        f"{plural(summary.images, 'image')} -> {summary.output_dir} on [bold]{summary.provider.upper()}[/] "
        f"in {summary.seconds:.1f} s ({summary.images_per_s:.2f} images/s; "
        f"compute {summary.compute_images_per_s:.2f} images/s){skipped}; {len(summary.failures)} failed",
        soft_wrap=True,
    )
    if summary.failures:
        for line in summary.failures:
            err_console.print(f"  [red]-[/] {line}", soft_wrap=True)
        raise typer.Exit(1)
