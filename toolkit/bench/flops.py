"""Work and limits for the benchmark: FLOPs counted from an ONNX graph, the CPU's FP32 peak from its flags.

FLOP convention: one multiply-add = 2 FLOPs; only ``Conv``, ``ConvTranspose``, ``MatMul`` and ``Gemm`` are
counted (bias adds, activations, batch norm and resizes are a rounding error next to them):

- ``Conv``: ``2 * prod(output) * (C_in / group) * prod(kernel)``
- ``ConvTranspose``: ``2 * prod(input) * (C_out / group) * prod(kernel)`` (every input pixel scatters a kernel)
- ``MatMul`` / ``Gemm``: ``2 * prod(output) * K``

Shapes come from ``onnx.shape_inference`` after fixing the model input to one ``(1, S, S, 1)`` image, so
the count is per image of ``S x S`` pixels. QDQ (INT8) graphs count the same: their Conv weights are
``DequantizeLinear`` outputs whose shapes shape inference knows.

FP32 peak = physical cores x FP32 lanes per vector x FMA units per core x 2 FLOPs per FMA x clock, with
lanes 16 for AVX-512F, 8 for AVX2+FMA, 4 otherwise; 2 FMA units assumed for AVX-512 server parts (Xeon
Gold/Platinum and newer, AMD Zen 4 double-pumps 256-bit units to the same effect) and for AVX2 cores; clock
from ``cpu MHz`` (what a VM reports as nominal), else the model name's ``@ x.xxGHz``, else cpufreq's base or
maximum frequency in ``/sys``. A machine that reports no clock gets no peak (``gflops`` None, "unknown"), never
an assumed one. Turbo and AVX-512 frequency licences move the real number, so ratios to this peak are estimates.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

COUNTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
CPUFREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq")


def count_flops(model: str | Path | Any, size: int = 512) -> dict[str, float]:
    """FLOPs per ``size x size`` image by op type (plus ``"total"``) of a seg ONNX model (path or proto)."""
    import onnx

    proto = onnx.load(str(model)) if isinstance(model, str | Path) else model
    proto = _fixed_input(proto, size)
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = _shapes(inferred)
    totals = dict.fromkeys(COUNTED_OPS, 0.0)
    for node in inferred.graph.node:
        if node.op_type in totals:
            totals[node.op_type] += _node_flops(node, shapes)
    totals["total"] = sum(totals[op] for op in COUNTED_OPS)
    return totals


def _fixed_input(proto: Any, size: int) -> Any:
    """A copy of ``proto`` whose first input is ``(1, size, size, 1)`` (NHWC) or ``(1, 1, size, size)`` (NCHW)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    dims = copy.graph.input[0].type.tensor_type.shape.dim
    channels_last = len(dims) == 4 and dims[3].HasField("dim_value") and dims[3].dim_value == 1
    fixed = (1, size, size, 1) if channels_last else (1, 1, size, size)
    for dim, value in zip(dims, fixed, strict=False):
        dim.Clear()
        dim.dim_value = value
    for value_info in copy.graph.output:  # stale symbolic output shapes would clash with the fixed ones
        value_info.type.tensor_type.ClearField("shape")
    return copy


def _shapes(proto: Any) -> dict[str, list[int]]:
    """Name -> static shape for every value with a fully known shape (initializers included)."""
    shapes: dict[str, list[int]] = {}
    graph = proto.graph
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    for tensor in graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    return shapes


def _node_flops(node: Any, shapes: dict[str, list[int]]) -> float:
    attrs = {a.name: a for a in node.attribute}
    try:
        if node.op_type == "Conv":
            weight = shapes[node.input[1]]  # (C_out, C_in / group, kH, kW)
            return 2.0 * math.prod(shapes[node.output[0]]) * math.prod(weight[1:])
        if node.op_type == "ConvTranspose":
            weight = shapes[node.input[1]]  # (C_in, C_out / group, kH, kW)
            return 2.0 * math.prod(shapes[node.input[0]]) * math.prod(weight[1:])
        a_shape = shapes[node.input[0]]
        trans_a = node.op_type == "Gemm" and "transA" in attrs and attrs["transA"].i == 1
        inner = a_shape[-2] if trans_a else a_shape[-1]
        return 2.0 * math.prod(shapes[node.output[0]]) * inner
    except KeyError as missing:
        raise ValueError(f"{node.op_type} node {node.name!r}: shape of {missing} unknown after inference") from None


@dataclass(frozen=True)
class CpuPeak:
    """Estimated FP32 peak of the CPU cores this process may use, and how it was estimated."""

    model: str
    cores: int
    isa: str
    lanes: int
    fma_units: int
    ghz: float | None  # None: the machine reports no clock
    gflops: float | None  # None: unknown (no clock)
    int8_note: str
    how: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_peak(cpuinfo: str | None = None, cores: int | None = None, cpufreq: Path | None = CPUFREQ) -> CpuPeak:
    """``CpuPeak`` from ``/proc/cpuinfo`` text (read when None) and, when that names no clock, the cpufreq folder
    ``cpufreq`` (None: not consulted); ``cores`` defaults to the usable physical cores."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    if cores is None:
        from seg.runtime.providers import physical_cores

        cores = physical_cores()
    fields = _first_block(cpuinfo)
    flags = set(fields.get("flags", "").split())
    model = fields.get("model name", "unknown CPU")
    isa, lanes, fma_units = _vector_unit(flags)
    ghz, source = _clock_ghz(fields, model, cpufreq)
    if ghz is None:
        how = f"unknown: the machine reports no CPU clock ({cores} cores x {lanes} FP32 lanes ({isa}))"
        return CpuPeak(model, cores, isa, lanes, fma_units, None, None, _int8_note(flags), how)
    gflops = cores * lanes * fma_units * 2 * ghz
    how = (f"{cores} cores x {lanes} FP32 lanes ({isa}) x {fma_units} FMA units (assumed) x 2 FLOP/FMA x "
           f"{ghz:.2f} GHz ({source}) = {gflops:.0f} GFLOP/s")
    return CpuPeak(model, cores, isa, lanes, fma_units, ghz, gflops, _int8_note(flags), how)


def _first_block(cpuinfo: str) -> dict[str, str]:
    """``key: value`` pairs of the first processor block of ``/proc/cpuinfo`` text."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _vector_unit(flags: set[str]) -> tuple[str, int, int]:
    if "avx512f" in flags:
        return "AVX-512F", 16, 2
    if "avx2" in flags and "fma" in flags:
        return "AVX2+FMA", 8, 2
    if "avx" in flags:
        return "AVX (no FMA)", 8, 1
    return "SSE", 4, 1


def _clock_ghz(fields: dict[str, str], model: str, cpufreq: Path | None) -> tuple[float | None, str]:
    """``(GHz, where it was read)``: ``cpu MHz``, the model name's ``@ x.xxGHz``, cpufreq's ``base_frequency``
    or ``cpuinfo_max_freq`` (kHz); ``(None, "")`` when the machine reports none of them."""
    try:
        return float(fields["cpu MHz"]) / 1000.0, "cpu MHz"
    except (KeyError, ValueError):
        pass
    match = re.search(r"@\s*([\d.]+)\s*GHz", model)
    if match:
        return float(match.group(1)), "model name"
    for name in ("base_frequency", "cpuinfo_max_freq"):
        try:
            return int((cpufreq / name).read_text().strip()) / 1e6, f"cpufreq {name}"  # type: ignore[operator]
        except (OSError, TypeError, ValueError):
            continue
    return None, ""


def _int8_note(flags: set[str]) -> str:
    if "amx_int8" in flags:
        return "AMX-INT8 and AVX512-VNNI: int8 dot products in hardware (VNNI 4x the FP32 MAC rate per lane)"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "VNNI: int8 dot products in hardware (4x the FP32 MAC rate per lane)"
    return "no VNNI: int8 GEMM runs as pmaddubsw+pmaddwd (U8S8 can saturate), about 2x FP32 at best"


def sgemm_gflops(size: int = 2048, runs: int = 5) -> float:
    """Best GFLOP/s of a ``size``-cubed float32 matrix product through numpy's BLAS on this machine: the
    practical FP32 ceiling to read beside the estimated peak (turbo clocks can put it above the estimate)."""
    import time

    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.random((size, size), dtype=np.float32) for _ in range(2))
    a @ b  # warm-up (thread pool, pages)
    best = float("inf")
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def achieved(gflop_per_image: float, images_per_s: float, peak: CpuPeak) -> tuple[float, float | None]:
    """``(GFLOP/s, fraction of peak)`` for a measured throughput; the fraction is None when the peak is unknown."""
    rate = gflop_per_image * images_per_s
    return rate, (rate / peak.gflops if peak.gflops else None)
