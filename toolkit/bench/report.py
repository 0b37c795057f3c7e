"""What ``seg benchmark`` measured: one ``BenchRow`` per configuration, the ``BenchReport`` around them, the
markdown table, the ratios (ORT vs Keras, variant vs FP32) and the INT8 verdict."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from seg.toolkit.bench.flops import CpuPeak

LARGE_RSS_LIMIT_MB = 1536.0  # the memory budget for tiling an 8192 x 8192 image
COLUMNS = (
    ("engine", "engine"), ("provider", "provider"), ("variant", "variant"), ("batch", "batch"),
    ("streams", "streams"), ("compute_ips", "compute img/s"), ("e2e_ips", "end-to-end img/s"),
    ("e2e_fraction", "end-to-end / compute"), ("p50_ms", "p50 ms (b=1)"),
    ("p95_ms", "p95 ms (b=1)"), ("gflops", "GFLOP/s"), ("peak_fraction", "% FP32 peak"),
    ("peak_rss_mb", "peak RSS MB"), ("size_mb", "model MB"), ("membrane_f1", "membrane F1"),
    ("v_rand", "V_rand"), ("vs_fp32_compute", "x FP32 (compute)"), ("vs_keras_compute", "x Keras (compute)"),
    ("vs_keras_e2e", "x Keras (end-to-end)"), ("status", "status"),
)


@dataclass
class BenchRow:
    """One measured (or failed) configuration. ``status`` is ``"ok"`` or why nothing was measured."""

    engine: str
    provider: str
    variant: str
    batch: int | None
    status: str = "ok"
    streams: int | None = None  # concurrent onnxruntime runs (Segmenter streams); None for Keras
    streams_asked: int | None = 1  # the streams the configuration asked for (None for Keras)
    providers: list[str] = field(default_factory=list)
    compute_ips: float | None = None
    e2e_ips: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    gflops: float | None = None
    peak_fraction: float | None = None
    peak_rss_mb: float | None = None
    size_mb: float | None = None
    membrane_f1: float | None = None
    v_rand: float | None = None
    vs_fp32_compute: float | None = None
    vs_keras_compute: float | None = None
    vs_keras_e2e: float | None = None
    e2e_fraction: float | None = None
    pixels_per_image: float | None = None  # what the model computed per image: tiles, padding and TTA included

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class BenchReport:
    """Everything one ``run_benchmark`` measured, on the same images, in one run."""

    model: str
    machine: CpuPeak
    gflop_per_image: float
    flops_by_op: dict[str, float]
    images: list[str]
    accuracy_on: list[str]
    settings: dict[str, Any]
    rows: list[BenchRow] = field(default_factory=list)
    large: dict[str, Any] | None = None
    paired: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    profile_table: list[str] = field(default_factory=list)
    int8_verdict: str = ""
    sgemm_gflops: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["machine"] = self.machine.to_dict()
        data["columns"] = [key for key, _ in COLUMNS]
        return data

    def table(self) -> str:
        """The markdown table: one line per row, ``-`` where a value does not apply."""
        lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
                 "|" + "|".join("---:" if key not in ("engine", "provider", "variant", "status") else "---"
                                for key, _ in COLUMNS) + "|"]
        for row in self.rows:
            lines.append("| " + " | ".join(_format(key, getattr(row, key)) for key, _ in COLUMNS) + " |")
        return "\n".join(lines)

    def summary(self) -> list[str]:
        """Lines under the table: work per image, the peak and how it was estimated, large image, INT8."""
        tile = self.settings.get("tile", 512)
        lines = [f"model: {self.model}; {self.gflop_per_image:.2f} GFLOP per {tile}x{tile} tile "
                 "(Conv/ConvTranspose/MatMul from the ONNX graph, 2 FLOP per multiply-add)",
                 f"machine: {self.machine.model}; FP32 peak {self.machine.how}; {self.machine.int8_note}",
                 *([f"practical ceiling: numpy's float32 matrix product reached {self.sgemm_gflops:.0f} GFLOP/s "
                    f"here on all cores ({self.sgemm_gflops / self.machine.gflops:.0%} of the estimated peak)"]
                   if self.sgemm_gflops and self.machine.gflops else []),
                 f"images: {len(self.images)} for timing; accuracy on {len(self.accuracy_on) or 'no'} labelled slices"]
        lines.extend(work_lines(self.rows, tile, self.gflop_per_image))
        if self.large:
            lines.append(large_line(self.large))
        if self.int8_verdict:
            lines.append(self.int8_verdict)
        if any((row.e2e_fraction or 0.0) > 1.0 for row in self.rows):
            lines.append("end-to-end above compute in some rows: the timed passes were too short to tell them "
                         "apart on this machine; --images 16 --repeats 5 --rounds 3 gives steadier figures")
        ceiling = keras_ceiling(self.rows, max(self.machine.gflops or 0.0, self.sgemm_gflops or 0.0))
        if ceiling:
            lines.append(ceiling)
        return lines


def work_lines(rows: list[BenchRow], tile: int, gflop_per_tile: float) -> list[str]:
    """A line for each different amount of work per image that rows computed other than one ``tile`` (images of
    another size, a grid of tiles, TTA): GFLOP/s counts what each row computed."""
    lines = []
    for pixels in sorted({r.pixels_per_image for r in rows if r.ok and r.pixels_per_image}):
        tiles = pixels / tile**2
        if abs(tiles - 1.0) > 0.01:
            engines = sorted({r.engine for r in rows if r.ok and r.pixels_per_image == pixels})
            lines.append(f"work per image ({', '.join(engines)}): {tiles:.2f} x the {tile}x{tile} tile's pixels "
                         f"(image size, tiles and padding), {tiles * gflop_per_tile:.2f} GFLOP; GFLOP/s counts it")
    return lines


def keras_ceiling(rows: list[BenchRow], peak_gflops: float) -> str:
    """One line: how much faster than Keras any FP32 engine could be here (``peak_gflops``, the larger of the
    estimated peak and the measured matrix product, over Keras's achieved GFLOP/s), against what onnxruntime
    reached (best CPU batch of each, compute-only). Empty without Keras CPU rows."""
    keras = [r for r in rows if r.ok and r.engine == "keras" and r.gflops]
    onnx = [r for r in rows if r.ok and r.engine == "onnxruntime" and r.provider == "cpu" and r.variant == "fp32"
            and r.gflops]
    if not keras or not onnx or peak_gflops <= 0:
        return ""
    best_keras = max(keras, key=lambda r: r.gflops or 0.0)
    best_onnx = max(onnx, key=lambda r: r.gflops or 0.0)
    keras_gflops, onnx_gflops = best_keras.gflops or 0.0, best_onnx.gflops or 0.0
    return (f"Keras ceiling: Keras reached {keras_gflops:.0f} GFLOP/s ({keras_gflops / peak_gflops:.0%} of "
            f"{peak_gflops:.0f} GFLOP/s, the higher of the estimated peak and the measured matrix product), so no "
            f"FP32 engine can run this model much more than {peak_gflops / keras_gflops:.1f}x faster than Keras here; "
            f"onnxruntime FP32 reached {onnx_gflops / keras_gflops:.2f}x")


def large_line(large: dict[str, Any]) -> str:
    if "error" in large:
        return f"large image: not measured ({large['error']})"
    verdict = "within" if large["peak_rss_mb"] <= LARGE_RSS_LIMIT_MB else "OVER"
    return (f"large image: {large['size']}x{large['size']} uint8 tiled ({large['tiles']} tiles of {large['tile']}, "
            f"halo {large['halo']}, {large.get('batch', '?')} per call) in {large['seconds']:.1f} s on "
            f"{', '.join(large['providers'])}; peak RSS "
            f"{large['peak_rss_mb']:.0f} MB ({verdict} the {LARGE_RSS_LIMIT_MB / 1024:.1f} GB budget; "
            f"{large['rss_before_mb']:.0f} MB before the image)")


def _format(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key in ("peak_fraction", "e2e_fraction"):
        return f"{value:.0%}"
    if key.startswith("vs_"):
        return f"{value:.2f}x"
    if key in ("membrane_f1", "v_rand"):
        return f"{value:.4f}"
    if key in ("size_mb",):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    return str(value).replace("|", "/")


def add_ratios(rows: list[BenchRow]) -> None:
    """Fill ``e2e_fraction`` (end-to-end / compute), ``vs_fp32_compute`` (same engine, provider, batch and
    streams) and ``vs_keras_*`` (same batch) in place."""
    ok = [row for row in rows if row.ok]
    fp32 = {(r.provider, r.batch, r.streams_asked): r for r in ok if r.engine == "onnxruntime" and r.variant == "fp32"}
    keras = {r.batch: r for r in ok if r.engine == "keras"}
    for row in ok:
        if row.compute_ips and row.e2e_ips:
            row.e2e_fraction = row.e2e_ips / row.compute_ips
        if row.engine != "onnxruntime":
            continue
        base = fp32.get((row.provider, row.batch, row.streams_asked))
        if base is not None and base.compute_ips and row.compute_ips:
            row.vs_fp32_compute = row.compute_ips / base.compute_ips
        other = keras.get(row.batch)
        if other is not None and other.compute_ips and row.compute_ips:
            row.vs_keras_compute = row.compute_ips / other.compute_ips
        if other is not None and other.e2e_ips and row.e2e_ips:
            row.vs_keras_e2e = row.e2e_ips / other.e2e_ips


def int8_verdict(rows: list[BenchRow], paired: dict[str, Any] | None = None, max_delta: float = 0.01,
                 min_speedup: float = 1.5) -> str:
    """One line: is INT8 worth it on this CPU? Speed is the ``paired`` run's (FP32 and INT8 alternating in one
    process) when there is one, else the table's best INT8 over its best FP32; accuracy within ``max_delta``."""
    int8 = [r for r in rows if r.ok and r.variant == "int8" and r.provider == "cpu"]
    fp32 = [r for r in rows if r.ok and r.variant == "fp32" and r.provider == "cpu" and r.engine == "onnxruntime"]
    if not int8 or not fp32:
        return ""
    best = max(int8, key=lambda r: r.compute_ips or 0.0)
    base = max(fp32, key=lambda r: r.compute_ips or 0.0)
    if not best.compute_ips or not base.compute_ips:
        return ""
    table_speed = best.compute_ips / base.compute_ips
    if paired and "ratio" in paired:
        speed = float(paired["ratio"])
        streams = f", {paired['streams']} streams" if paired.get("streams", 1) > 1 else ""
        how = (f"paired in one process at batch {paired['batch']}{streams}, median of {paired['pairs']} alternating "
               "passes; "
               f"the table's best INT8 / best FP32: {table_speed:.2f}x")
    else:
        speed, how = table_speed, f"the table's best INT8 (batch {best.batch}) / best FP32 (batch {base.batch})"
        if paired and "error" in paired:
            how += f"; the paired run failed: {paired['error']}"
    deltas = [abs(a - b) for a, b in ((best.membrane_f1, base.membrane_f1), (best.v_rand, base.v_rand))
              if a is not None and b is not None]
    accuracy = (f"|Δ membrane F1| {deltas[0]:.4f}, |Δ V_rand| {deltas[1]:.4f}" if len(deltas) == 2
                else "accuracy unscored")
    accurate = len(deltas) == 2 and max(deltas) <= max_delta
    if speed >= min_speedup and accurate:
        word = "RECOMMENDED on this CPU"
    elif speed >= 1.0 and accurate:
        word = f"faster but below the {min_speedup}x target on this CPU"
    else:
        word = "NOT recommended on this CPU (see the per-operator profile)"
    return f"INT8 vs FP32 (CPU, compute-only): {speed:.2f}x ({how}), {accuracy}: {word}"
