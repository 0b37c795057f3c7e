"""Per-operator time of an ONNX model with onnxruntime's own profiler, and FP32-vs-INT8 comparisons.

``profile_ops`` runs a model ``runs`` times on one batch of images through ``Segmenter`` with
``SessionOptions.enable_profiling`` and sums the profiler's ``Node`` events (kernel time, microseconds) by
operator type. Fused kernels keep the name onnxruntime gives them (``QLinearConv``, ``FusedConv``,
``QuantizeLinear`` ...), which is the point: the profile shows which kernels an INT8 model really runs and
where its time goes.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class OpProfile:
    """Kernel milliseconds per image by operator type (``ms_by_op``), sorted largest first."""

    model: str
    batch: int
    runs: int
    ms_by_op: dict[str, float] = field(default_factory=dict)
    calls_by_op: dict[str, int] = field(default_factory=dict)

    @property
    def total_ms(self) -> float:
        return float(sum(self.ms_by_op.values()))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "batch": self.batch, "runs": self.runs, "total_ms_per_image": self.total_ms,
                "ms_per_image_by_op": self.ms_by_op, "calls_per_run_by_op": self.calls_by_op}


def profile_ops(model: str | Path, images: list[np.ndarray], runs: int = 3, threads: int | None = None) -> OpProfile:
    """Profile ``model`` through a CPU ``Segmenter`` predicting ``images`` (``(H, W)`` arrays, one onnxruntime
    batch) ``runs`` times after 1 untimed warm-up run, with onnxruntime's profiler switched on."""
    from seg.runtime import Segmenter
    from seg.runtime.providers import session_options

    with tempfile.TemporaryDirectory(prefix="seg-profile-") as folder:
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "ort")
        with Segmenter(model, "cpu", batch_size=len(images), session_options=options) as seg:
            for _ in range(runs + 1):
                seg.predict_batch(images)
            events = json.loads(Path(seg.session.end_profiling()).read_text(encoding="utf-8"))
    return summarize(events, str(model), len(images), runs)


def summarize(events: list[dict[str, Any]], model: str, batch: int, runs: int) -> OpProfile:
    """Sum ``Node`` kernel events by ``args.op_name``, dropping the first (warm-up) run of each node."""
    micros: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    seen: set[str] = set()
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        op = str(event.get("args", {}).get("op_name", "?"))
        name = str(event["name"])
        if name not in seen:  # first occurrence of each node = the warm-up run
            seen.add(name)
            continue
        micros[op] += float(event.get("dur", 0))
        calls[op] += 1
    scale = 1.0 / (1000.0 * max(1, runs) * max(1, batch))
    ordered = sorted(micros, key=micros.get, reverse=True)  # type: ignore[arg-type]
    return OpProfile(model, batch, runs, {op: micros[op] * scale for op in ordered},
                     {op: calls[op] // max(1, runs) for op in ordered})


def compare_table(reference: OpProfile, candidate: OpProfile, top: int = 10) -> list[str]:
    """Markdown table of the ``top`` operator types by time in either profile, ms per image side by side."""
    ops = list(dict.fromkeys([*reference.ms_by_op, *candidate.ms_by_op]))
    ops.sort(key=lambda op: -max(reference.ms_by_op.get(op, 0.0), candidate.ms_by_op.get(op, 0.0)))
    lines = [f"| operator | {Path(reference.model).name} ms/img | {Path(candidate.model).name} ms/img |",
             "|---|---:|---:|"]
    for op in ops[:top]:
        lines.append(f"| {op} | {_cell(reference.ms_by_op.get(op))} | {_cell(candidate.ms_by_op.get(op))} |")
    lines.append(f"| **total (kernels)** | {reference.total_ms:.1f} | {candidate.total_ms:.1f} |")
    return lines


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
