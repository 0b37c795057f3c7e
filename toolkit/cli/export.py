"""``seg export OUT.onnx``: convert the newest (or a given) trained model to ONNX behind the parity gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from seg.toolkit.cli.console import command, console, quiet_tensorflow


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to ``app``."""
    app.command("export")(export)


@command
def export(
    out: Annotated[Path, typer.Argument(help="ONNX file to write, e.g. model.onnx (only if the gate passes).")],
    weights: Annotated[str | None, typer.Option(
        "--weights", help="Run folder, run name or .keras file (default: the newest run's best model).")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Images for the parity gate (dataset or image folder) (default: the run's dataset).")] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 17,
    atol: Annotated[float, typer.Option("--atol", help="Largest allowed |Keras - ONNX| probability.")] = 1e-4,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write OUT.fp16.onnx (fp16 weights, fp32 IO).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Also write OUT.int8.onnx (static QDQ, per-channel).")] = False,
    uint8: Annotated[bool, typer.Option("--uint8", help="Also write OUT.u8.onnx: takes raw 8-bit pixels and "
                                        "normalises inside the graph (less host work and GPU upload).")] = False,
    calib: Annotated[Path | None, typer.Option(
        "--calib", help="Calibration images for --int8 (default: dataset images the gate does not use).")] = None,
    bioimageio: Annotated[bool, typer.Option("--bioimageio", help="Also write OUT.bioimageio.zip, a bioimage.io "
                                             "model package (needs the zoo extra of seg-toolkit).")] = False,
) -> None:
    """Export a trained Keras model to ONNX; fails (exit 1, no model written, OUT.parity.json says why) unless
    ONNX matches Keras."""
    from seg.export import to_onnx
    from seg.export.convert import use_tensorflow_backend
    from seg.train.runs import resolve_model

    use_tensorflow_backend()  # before Keras loads: models trained on JAX or PyTorch convert through TensorFlow
    quiet_tensorflow()

    report = to_onnx(resolve_model(weights), out, data=data, opset=opset, atol=atol, fp16=fp16, int8=int8,
                     uint8=uint8, calib=calib, bioimageio=bioimageio)
    for line in _lines(report):
        console.print(line, soft_wrap=True)


def _lines(report: Any) -> list[str]:
    parity = report.parity
    lines = [f"parity on {len(parity.images)} images from {parity.source} (Keras vs onnxruntime, same arrays)",
             f"{report.out.name}: max |Δ| {parity.max_abs_diff:.2e}  mean |Δ| {parity.mean_abs_diff:.2e}  "
             f"mask agreement {parity.mask_agreement:.4%}  batch-4 max |Δ| {parity.batch4_max_abs_diff:.2e}  "
             f"{_size(report.size_bytes)}  [bold green]PASS[/]"]
    if parity.second_host:
        lines.append(f"{report.out.name} in {parity.second_host}: max |Δ| {parity.second_host_max_abs_diff:.2e} "
                     "against onnxruntime  [bold green]PASS[/]")
    if report.cleanups:
        lines.insert(0, _cleanup_line(report.cleanups))
    for variant in report.variants:
        lines.append(f"{variant.path.name}: mask agreement {variant.mask_agreement:.4%}  "
                     f"|Δ membrane F1| {variant.delta_f1:.4f} (against {variant.f1_reference})  "
                     f"{_size(variant.size_bytes)} "
                     f"({variant.size_ratio:.2f}x FP32)  CPU {variant.ms_variant:.1f} ms/img "
                     f"(FP32 {variant.ms_fp32:.1f})  [bold green]PASS[/]{_advice(variant)}")
    if report.package is not None:
        lines.append(f"{report.package.name}: bioimage.io model package (ONNX weights, test tensors, cover, README); "
                     f"check it with: bioimageio test {report.package}")
    written = [report.out.name, report.parity_path.name] + [v.path.name for v in report.variants]
    written += [report.package.name] if report.package is not None else []
    lines.append(f"wrote {', '.join(written)} in {report.out.parent}")
    return lines


def _cleanup_line(cleanups: dict[str, int]) -> str:
    """What the exact graph clean-up did, and how many crops it kept because removing them was not proven."""
    line = (f"graph clean-up: {cleanups.get('identity_crops', 0)} identity crops after up-convolutions removed, "
            f"{cleanups.get('dead_nodes', 0)} dead nodes pruned, {cleanups.get('explicit_pads', 0)} auto_pad "
            "written as explicit pads")
    kept = cleanups.get("reverted", 0)
    return line + (f"; [yellow]{kept} kept[/] (removing them changed outputs, see the warning)" if kept else "")


def _advice(variant: Any) -> str:
    """For INT8: whether it is worth deploying for speed on this CPU (it always saves file size)."""
    if variant.settings.get("recommended_on_this_cpu") is False:
        return (f"  (only {variant.settings['cpu_speedup']:.2f}x FP32 speed on this CPU: deploy it for size, "
                "not speed)")
    return ""


def _size(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"
