"""``seg infer``: segment folders, files, globs or TIFF stacks (one or several) with an exported ONNX model."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from seg.runtime.errors import InputError
from seg.toolkit.cli.console import command, console, err_console, plural

if TYPE_CHECKING:
    from seg.runtime.folders import InferSummary

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
    "threshold, tiling or input redoes them, with a warning (OUTPUT/.seg-infer.json records what made them; "
    "an unreadable record redoes them all). "
    "Exits 1 if any file failed, "
    "2 if the input or the model is unusable (then nothing is written).\n\n"
    "Volumes: a (Z, Y, X) --input (vol.zarr, OME-Zarr, file.h5:/dataset) or a .zarr --output segments block by "
    "block on Dask, on worker processes started here (--workers, --threads-per-worker) or on a running cluster "
    "(--scheduler tcp://HOST:8786; workers must see the same paths). OUTPUT.zarr is an OME-Zarr of the "
    "probability (--prob-dtype) and the mask at every level; the answer does not depend on --block. Blocks "
    "marked done are skipped on a rerun (resume after a kill) unless --overwrite; an output of another shape, "
    "model or settings is refused (exit 2)."
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
                                                   "for images at least twice it both ways).")] = None,
    halo: Annotated[int | None, Opt("--halo", help="Tile overlap margin, pixels (default: the model's).")] = None,
    batch: Annotated[int, Opt("--batch", help="Tiles per onnxruntime call.")] = 4,
    tta: Annotated[bool, Opt("--tta", help="Average the 8 flips/rotations (8x slower).")] = False,
    streams: Annotated[int | None, Opt("--streams", help="Images: onnxruntime runs at once (default: on the CPU "
                                       "one per core, at most 4, the cores shared between them; on CUDA 2, so "
                                       "copies overlap kernels; 1 = one batch at a time).", show_default=False)] = None,
    workers: Annotated[int | None, Opt("--workers", help="Volumes: Dask worker processes on this machine "
                                       "(default: one per CPU; one per GPU with --provider cuda).")] = None,
    threads_per_worker: Annotated[int | None, Opt("--threads-per-worker", help="Volumes: threads per worker "
                                                  "(each runs one block at a time; default 1, 2 on CUDA).")] = None,
    scheduler: Annotated[str | None, Opt("--scheduler", metavar="ADDRESS", help="Volumes: a running Dask "
                                         "scheduler (tcp://HOST:8786) instead of workers on this machine.")] = None,
    block: Annotated[int | None, Opt("--block", help="Volumes: block side in pixels, a multiple of 512 "
                                     "(default 4096).", show_default=False)] = None,
    prob_dtype: Annotated[str | None, Opt("--prob-dtype", metavar="uint8|float16|float32", help="Volumes: "
                                          "probability dtype in the output (default uint8).")] = None,
) -> None:
    texts = [*(input or []), *(paths or [])]
    volume = dict(workers=workers, threads_per_worker=threads_per_worker, scheduler=scheduler, block=block,
                  prob_dtype=prob_dtype)
    if _is_volume_run(texts, output):
        if overlay:
            raise InputError("--overlay is for images; a volume's output holds the probability and the mask")
        if save_prob:
            raise InputError("--save-prob is for images; a volume's output always holds the probability "
                             "(uint8 by default; --prob-dtype float32 keeps it exact)")
        if streams is not None:
            raise InputError("--streams is for images; a volume runs one block per Dask worker thread "
                             "(--workers, --threads-per-worker)")
        _infer_volume(texts, model, output, provider=provider, threshold=threshold, overwrite=overwrite,
                      tile_size=tile, halo=halo, batch_size=batch, tta=tta, **volume)
        return
    if streams is not None and streams < 1:
        raise InputError(f"--streams {streams}: must be >= 1 (onnxruntime runs at once), e.g. 2")
    given = [f"--{name.replace('_', '-')}" for name, value in volume.items() if value is not None]
    if given:
        raise InputError(f"{', '.join(given)}: only for volumes (a .zarr or .h5:/dataset --input, or a .zarr "
                         "--output)")
    _infer_images(texts, model, output, provider=provider, threshold=threshold, save_prob=save_prob,
                  overlay=overlay, overwrite=overwrite, tile_size=tile, halo=halo, batch_size=batch, tta=tta,
                  streams=streams)


def _infer_images(texts: list[str], model: Path, output: Path | None, **options: Any) -> None:
    """Folder/file mode: ``segment_paths``, a progress bar over images, one summary line; exit 1 on failures."""
    from seg.runtime.folders import segment_paths

    with _lazy_bar(TextColumn("[bold]segmenting")) as update:
        summary = segment_paths(
            texts, model, output, **options,
            progress=lambda done, total: update(completed=done, total=total),
            on_error=lambda line: err_console.print(f"[red]failed:[/] {escape(line)}", soft_wrap=True),
        )
    console.print(_summary_line(summary), soft_wrap=True)
    if summary.failures:
        for line in summary.failures:
            err_console.print(f"  [red]-[/] {escape(line)}", soft_wrap=True)
        raise typer.Exit(1)


def _summary_line(summary: InferSummary) -> str:
    """One line: images, output, provider and streams, time and rates (none when nothing ran), skips, failures."""
    streams = f" ({summary.streams} streams)" if summary.streams > 1 else ""
    timing = (f" in {summary.seconds:.1f} s ({summary.images_per_s:.2f} images/s; "
              f"compute {summary.compute_images_per_s:.2f} images/s)") if summary.images else ""
    skipped = f"; {summary.skipped} already done, skipped" if summary.skipped else ""
    return (f"{plural(summary.images, 'image')} -> {escape(summary.output_dir)} on [bold]{summary.provider.upper()}[/]"
            f"{streams}{timing}{skipped}; {len(summary.failures)} failed")


def _is_volume_run(texts: list[str], output: Path | None) -> bool:
    """Volume mode: one input that ``is_volume_spec`` accepts (``*.zarr``, ``*.h5:/dataset`` ...), or a
    ``.zarr`` output."""
    from seg.runtime.volume.sources import is_volume_spec

    return any(is_volume_spec(text) for text in texts) or (output is not None and output.suffix.lower() == ".zarr")


def _infer_volume(texts: list[str], model: Path, output: Path | None, *, block: int | None,
                  prob_dtype: str | None, **options: Any) -> None:
    """Volume mode: ``segment_volume`` with a progress bar over blocks (voxels/s, ETA), one summary line."""
    from seg.runtime.volume.dask_run import segment_volume

    if len(texts) != 1:
        raise InputError(f"a volume run takes one --input, got {len(texts)}: {' '.join(texts) or 'none'}")
    if output is None or output.suffix.lower() != ".zarr":
        raise InputError(f"{output or 'no --output'}: a volume is written to an OME-Zarr; give --output OUT.zarr")
    start = time.perf_counter()
    with _lazy_bar(TextColumn("[bold]segmenting blocks"), TextColumn("{task.fields[rate]}")) as update:

        def progress(done: int, total: int, voxels: int) -> None:
            rate = voxels / max(time.perf_counter() - start, 1e-9)
            update(completed=done, total=total, rate=f"{_mega(rate)} voxels/s")

        summary = segment_volume(texts[0], model, output, block=4096 if block is None else block,
                                 prob_dtype="uint8" if prob_dtype is None else prob_dtype,
                                 progress=progress,
                                 log=lambda line: err_console.print(line, soft_wrap=True, markup=False),
                                 **options)
    skipped = f"; {summary.skipped} already done, skipped" if summary.skipped else ""
    console.print(
        f"{summary.computed} of {plural(summary.blocks, 'block')} ({_mega(summary.voxels)} voxels) -> "
        f"{summary.output} in {summary.seconds:.1f} s ({_mega(summary.voxels_per_s)} voxels/s){skipped}",
        soft_wrap=True,
        markup=False,
    )


@contextlib.contextmanager
def _lazy_bar(label: TextColumn, *extra: TextColumn) -> Iterator[Callable[..., None]]:
    """A transient rich progress bar on stderr, started by its first update (so an early error leaves no empty
    bar behind) and stopped on the way out; yields ``update(completed=, total=, **fields)``."""
    bar = Progress(label, BarColumn(), MofNCompleteColumn(), *extra, TimeRemainingColumn(), console=err_console,
                   transient=True)
    task = bar.add_task("seg", total=None, rate="")

    def update(**fields: Any) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, **fields)

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()


def _mega(count: float) -> str:
    """``12.3M`` for 12.3 million, ``45.6k`` for 45,600; plain below a thousand."""
    if count >= 1e6:
        return f"{count / 1e6:.1f}M"
    return f"{count / 1e3:.1f}k" if count >= 1e3 else f"{count:.0f}"
