"""``seg benchmark --model model.onnx``: ORT variants x providers x batches (and Keras) in one table; with
``--volume``, a Segmenter loop against ``segment_volume`` on Dask over one Zarr volume (``bench.volume``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from seg.runtime.errors import InputError
from seg.toolkit.cli.console import command, console, err_console, fail, typed_options


def register(app: typer.Typer) -> None:
    """Add the ``benchmark`` command to ``app``."""
    app.command("benchmark")(benchmark)


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{option} {text!r}: expected comma-separated integers, e.g. 1,4,8") from None


def _streams(text: str) -> list[int | None]:
    """``--streams`` text -> ints and None (``auto``); ``InputError`` for anything else."""
    parts = _names(text)
    try:
        if parts:
            return [None if part == "auto" else int(part) for part in parts]
    except ValueError:
        pass
    raise InputError(f"--streams {text!r}: expected comma-separated integers and/or auto, e.g. 1,auto")


def _names(text: str) -> list[str]:
    return [part.strip().lower() for part in text.split(",") if part.strip()]


VOLUME_OPTIONS = {"model", "data", "rounds", "json_out", "volume", "volume_size", "volume_slices", "block", "keras"}
"""The parameters ``--volume`` uses (``--keras`` is refused with its own message)."""


@command
def benchmark(
    context: typer.Context,
    model: Annotated[Path, typer.Option(
        "--model", help="The FP32 .onnx model; variants are its .fp16/.int8 siblings.")],
    keras: Annotated[Path | None, typer.Option(
        "--keras", help="The Keras model to compare with (model.keras).")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Dataset (DIR/train/image+label: timed and scored) or image folder (default: synthetic).")
    ] = None,
    providers: Annotated[str, typer.Option("--providers", help="Comma-separated: cpu,cuda.")] = "cpu,cuda",
    variants: Annotated[str, typer.Option(
        "--variants", help="Comma-separated: fp32,fp16,int8,u8 (u8: raw 8-bit input).")] = "fp32,fp16,int8",
    batch: Annotated[str, typer.Option("--batch", help="Comma-separated batch sizes.")] = "1,4,8",
    streams: Annotated[str, typer.Option(
        "--streams", help="Comma-separated streams (onnxruntime runs at once): integers and/or auto (as seg "
                          "infer runs: one per physical core, at most 4, on the CPU; 2 on CUDA); 1 = one run.")
    ] = "auto",
    images: Annotated[int, typer.Option("--images", help="Images per timed pass.")] = 8,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed passes per measurement (median).")] = 3,
    rounds: Annotated[int, typer.Option(
        "--rounds", help="Sweep all configurations this many times, interleaved; median per row.")] = 1,
    latency_runs: Annotated[int, typer.Option("--latency-runs", help="Single-image runs for p50/p95.")] = 20,
    large: Annotated[int, typer.Option("--large", help="Side of the large tiled image (0 = skip).")] = 8192,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads per stream (default: "
                                                                "physical cores, shared between streams).")] = None,
    cpu_fp16: Annotated[bool, typer.Option("--cpu-fp16", help="Measure FP16 on the CPU too (slow there).")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the full report as JSON here.")] = None,
    volume: Annotated[bool, typer.Option(
        "--volume", help="Volume mode: a Segmenter loop vs segment_volume on Dask (2x1, 1x2 workers x threads) "
                         "over one Zarr volume, and one worker's peak memory on a 4096 block; only --model, "
                         "--data, --rounds, --json and the options below apply.")] = False,
    volume_size: Annotated[int | None, typer.Option(
        "--volume-size", help="--volume: side of each slice in pixels (default 2048).", show_default=False)] = None,
    volume_slices: Annotated[int | None, typer.Option(
        "--volume-slices", help="--volume: number of slices (default 4).", show_default=False)] = None,
    block: Annotated[int | None, typer.Option(
        "--block", help="--volume: Dask block side, a multiple of 512 (default 1024).", show_default=False)] = None,
) -> None:
    """Measure speed, memory and accuracy of every configuration on the same images; print a markdown table."""
    if volume:
        ignored = typed_options(context, VOLUME_OPTIONS)
        if ignored:
            raise InputError(f"{', '.join(ignored)}: not with --volume (it takes only --model, --data, --rounds, "
                             "--json, --volume-size, --volume-slices and --block)")
        _volume(model, data, keras, rounds, json_out, size=volume_size, slices=volume_slices, block=block)
        return
    given = [name for name, value in (("--volume-size", volume_size), ("--volume-slices", volume_slices),
                                      ("--block", block)) if value is not None]
    if given:
        raise InputError(f"{', '.join(given)}: only with --volume")
    from seg.runtime.atomic import write_json_atomic
    from seg.toolkit.bench.benchmark import run_benchmark

    report = run_benchmark(model, keras=keras, data=data, providers=_names(providers), variants=_names(variants),
                           batches=_ints(batch, "--batch"), streams=_streams(streams), images=images,
                           repeats=repeats, rounds=rounds,
                           latency_runs=latency_runs, large=large, threads=threads, cpu_fp16=cpu_fp16,
                           progress=lambda line: err_console.print(f"[dim]measuring {line}[/]"))
    console.print(report.table(), markup=False, soft_wrap=True)
    console.print("")
    for line in report.summary():
        console.print(line, markup=False, soft_wrap=True)
    if report.profile_table:
        console.print("\nper-operator kernel time, FP32 vs INT8 (onnxruntime profiler, CPU):", markup=False)
        console.print("\n".join(report.profile_table), markup=False, soft_wrap=True)
    if json_out is not None:
        write_json_atomic(json_out, report.to_dict())
        console.print(f"wrote {json_out}", markup=False)
    if not any(row.ok for row in report.rows):
        raise fail("nothing was measured: every configuration failed (the status column says why)", 1)


def _volume(model: Path, data: Path | None, keras: Path | None, rounds: int, json_out: Path | None,
            size: int | None, slices: int | None, block: int | None) -> None:
    """``seg benchmark --volume``: ``run_volume_benchmark``, its table, optionally its JSON."""
    from seg.runtime.atomic import write_json_atomic
    from seg.toolkit.bench.volume import run_volume_benchmark

    if keras is not None:
        raise InputError("--keras: not with --volume (the volume benchmark runs the ONNX model only)")
    report = run_volume_benchmark(model, data=data, size=2048 if size is None else size,
                                  slices=4 if slices is None else slices, block=1024 if block is None else block,
                                  rounds=rounds, progress=lambda line: err_console.print(f"[dim]measuring {line}[/]"))
    console.print("\n".join(report.table()), markup=False, soft_wrap=True)
    if json_out is not None:
        write_json_atomic(json_out, report.to_dict())
        console.print(f"wrote {json_out}", markup=False)
