"""``seg benchmark --model model.onnx``: ORT variants x providers x batches (and Keras) in one table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from seg.runtime.errors import InputError
from seg.toolkit.cli.console import command, console, err_console


def register(app: typer.Typer) -> None:
    """Add the ``benchmark`` command to ``app``."""
    app.command("benchmark")(benchmark)


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{option} {text!r}: expected comma-separated integers, e.g. 1,4,8") from None


def _names(text: str) -> list[str]:
    return [part.strip().lower() for part in text.split(",") if part.strip()]


@command
def benchmark(
    model: Annotated[Path, typer.Option(
        "--model", help="The FP32 .onnx model; variants are its .fp16/.int8 siblings.")],
    keras: Annotated[Path | None, typer.Option(
        "--keras", help="The Keras model to compare with (model.keras).")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Dataset (DIR/train/image+label: timed and scored) or image folder (default: synthetic).")
    ] = None,
    providers: Annotated[str, typer.Option("--providers", help="Comma-separated: cpu,cuda.")] = "cpu,cuda",
    variants: Annotated[str, typer.Option("--variants", help="Comma-separated: fp32,fp16,int8.")] = "fp32,fp16,int8",
    batch: Annotated[str, typer.Option("--batch", help="Comma-separated batch sizes.")] = "1,4,8",
    images: Annotated[int, typer.Option("--images", help="Images per timed pass.")] = 8,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed passes per measurement (median).")] = 3,
    rounds: Annotated[int, typer.Option(
        "--rounds", help="Sweep all configurations this many times, interleaved; median per row.")] = 1,
    latency_runs: Annotated[int, typer.Option("--latency-runs", help="Single-image runs for p50/p95.")] = 20,
    large: Annotated[int, typer.Option("--large", help="Side of the large tiled image (0 = skip).")] = 8192,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads (default: physical cores).")] = None,
    cpu_fp16: Annotated[bool, typer.Option("--cpu-fp16", help="Measure FP16 on the CPU too (slow there).")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the full report as JSON here.")] = None,
) -> None:
    """Measure speed, memory and accuracy of every configuration on the same images; print a markdown table."""
    from seg.runtime.atomic import write_json_atomic
    from seg.toolkit.bench.benchmark import run_benchmark

    report = run_benchmark(model, keras=keras, data=data, providers=_names(providers), variants=_names(variants),
                           batches=_ints(batch, "--batch"), images=images, repeats=repeats, rounds=rounds,
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
