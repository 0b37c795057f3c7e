"""``run_benchmark``: every provider x variant x batch (and Keras) on the same images, in one run.

Each configuration runs in a fresh ``python -m seg.toolkit.bench.worker`` process (``seg.toolkit.bench.worker``), so
its peak RSS is its own and one configuration cannot warm caches or leak memory into the next; the parent
only plans, scores accuracy (``seg.toolkit.evaluation.metrics.score_slices`` on the probabilities the workers save) and
profiles FP32 against INT8 (``seg.toolkit.bench.profile``). Work per image is counted from the ONNX graph and
set against the CPU's estimated FP32 peak (``seg.toolkit.bench.flops``).

Images: ``data`` is a dataset (``DIR/train/image`` + ``DIR/train/label``: the first ``images`` slices are
timed, the validation slices of ``seg train``'s default split (20 %, seed 0) are scored), an image folder
(timed, not scored) or None (synthetic slices from ``seg.toolkit.data.synth``, timed and scored against their labels).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from seg.runtime.errors import InputError
from seg.runtime.io import read_image
from seg.runtime.metadata import ModelInfo
from seg.runtime.streams import auto_streams
from seg.toolkit.bench.data import BenchImages, bench_images
from seg.toolkit.bench.flops import achieved, count_flops, cpu_peak, sgemm_gflops
from seg.toolkit.bench.report import BenchReport, BenchRow, add_ratios, int8_verdict
from seg.toolkit.bench.worker import Spec

VARIANTS = ("fp32", "fp16", "int8", "u8")
PROVIDERS = ("cpu", "cuda")
CPU_FP16 = ("not recommended on CPU: onnxruntime's CPU provider has few FP16 kernels, so FP16 runs through "
            "Casts and is slower than FP32; use FP16 on CUDA (cpu_fp16=True measures it anyway)")
PROVIDER_FAILED = "provider cannot load: "
Progress = Callable[[str], None]


def run_benchmark(
    model: str | Path,
    *,
    keras: str | Path | None = None,
    data: str | Path | None = None,
    providers: Sequence[str] = PROVIDERS,
    variants: Sequence[str] = VARIANTS,
    batches: Sequence[int] = (1, 4, 8),
    streams: Sequence[int | None] = (None,),
    images: int = 8,
    repeats: int = 3,
    rounds: int = 1,
    latency_runs: int = 20,
    large: int = 8192,
    threads: int | None = None,
    cpu_fp16: bool = False,
    profile: bool = True,
    timeout_s: float = 900.0,
    progress: Progress | None = None,
) -> BenchReport:
    """Measure ``model`` (``.onnx``; its ``.fp16``/``.int8`` siblings for the variants) and optionally the Keras
    model on the same images; ``large`` > 0 adds one ``large x large`` uint8 image through the tiled runtime.
    ``streams``: the ``Segmenter`` streams to measure (None: as ``seg infer`` runs, one per physical core, at
    most 4, on the CPU and two on CUDA; 1: one run at a time), each count once. ``rounds`` > 1
    sweeps every configuration that many times, interleaved, and keeps the median per configuration: on a
    shared machine, load that drifts during the run then hits every row alike.
    Raises ``InputError`` (exit 2) for a missing model/keras file, bad data or bad options."""
    model = _check_model(Path(model)).resolve()
    keras_path = _check_keras(Path(keras)).resolve() if keras is not None else None
    variants, providers, batches = _check_options(variants, providers, batches, images)
    streams = _check_streams(streams)
    say = progress or (lambda _line: None)
    with tempfile.TemporaryDirectory(prefix="seg-benchmark-") as folder:
        work = Path(folder)
        bench = bench_images(data, images, work)
        info = _model_info(model)
        tile = info.tile_size or 512
        flops = count_flops(model, tile)
        report = BenchReport(str(model), cpu_peak(), flops["total"] / 1e9, flops, [str(p) for p in bench.timing],
                             [str(p) for p in bench.labelled],
                             {"providers": providers, "variants": variants, "batches": batches, "streams": streams,
                              "images": images,
                              "repeats": repeats, "rounds": rounds, "latency_runs": latency_runs, "large": large,
                              "threads": threads, "cpu_fp16": cpu_fp16, "tile": tile, "data": bench.source,
                              "keras": str(keras_path) if keras_path else None})
        runner = _Runner(work, bench, repeats, latency_runs, threads, timeout_s, say)
        threshold = info.threshold
        sweeps = []
        for round_ in range(max(1, rounds)):
            runner.scoring = round_ == 0  # accuracy does not change between rounds
            rows = [row for provider in providers
                    for row in runner.onnx_rows(model, provider, variants, _configs(provider, batches, streams),
                                                cpu_fp16, threshold)]
            sweeps.append(rows + (runner.keras_rows(keras_path, batches, threshold) if keras_path else []))
        report.rows = merge_rounds(sweeps)
        _add_compute_rates(report, flops["total"] / tile**2)
        report.sgemm_gflops = sgemm_gflops() if "cpu" in providers else None
        add_ratios(report.rows)
        report.paired = runner.paired(model, report.rows, max(7, 2 * repeats)) if "int8" in variants else None
        report.int8_verdict = int8_verdict(report.rows, report.paired)
        if large > 0:
            report.large = runner.large(model, _working_provider(report.rows), large)
        if profile and "int8" in variants and "cpu" in providers:
            _profile(report, model, bench, say)
    return report


def _check_streams(streams: Sequence[int | None]) -> list[int | None]:
    """Stream counts to measure, each once; ``None`` (auto) stays, for ``_configs`` to resolve per provider."""
    if not streams or any(s is not None and s < 1 for s in streams):
        raise InputError(f"--streams: each must be an int >= 1 or auto, got {list(streams)}")
    return list(dict.fromkeys(streams))


def _configs(provider: str, batches: list[int], streams: list[int | None]) -> list[tuple[int, int]]:
    """``(batch, streams)`` pairs to measure on ``provider``, auto resolved to what ``seg infer`` runs there."""
    counts = sorted({auto_streams(provider) if s is None else s for s in streams})
    return [(batch, count) for batch in batches for count in counts]


def variant_file(model: Path, variant: str) -> Path:
    """``model.onnx`` for fp32, else its ``model.<variant>.onnx`` sibling (as ``seg export`` names them)."""
    return model if variant == "fp32" else model.with_name(f"{model.stem}.{variant}{model.suffix}")


def _check_model(model: Path) -> Path:
    if not model.is_file():
        raise InputError(f"{model}: no such model file; export one with `seg export {model.name}`")
    if model.suffix.lower() != ".onnx":
        raise InputError(f"{model}: --model must be an .onnx file (pass the Keras model with --keras)")
    return model


def _check_keras(keras: Path) -> Path:
    if not keras.is_file() or keras.suffix.lower() != ".keras":
        raise InputError(f"{keras}: no such .keras file; pass a run's model.keras (e.g. runs/train/NAME/model.keras)")
    return keras


def _check_options(variants: Sequence[str], providers: Sequence[str], batches: Sequence[int],
                   images: int) -> tuple[list[str], list[str], list[int]]:
    for option, names, known in (("--variants", variants, VARIANTS), ("--providers", providers, PROVIDERS)):
        if not names:
            raise InputError(f"{option}: give at least one of {', '.join(known)}")
    for name in variants:
        if name not in VARIANTS:
            raise InputError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    for name in providers:
        if name not in PROVIDERS:
            raise InputError(f"unknown provider {name!r}; choose from {', '.join(PROVIDERS)}")
    if not batches or min(batches) < 1:
        raise InputError(f"batch sizes must be >= 1, got {list(batches)}")
    if images < 1:
        raise InputError(f"--images must be >= 1, got {images}")
    return list(dict.fromkeys(variants)), list(dict.fromkeys(providers)), sorted(set(batches))


def _model_info(model: Path) -> ModelInfo:
    import onnx

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise InputError(f"{model}: not a loadable ONNX model ({type(exc).__name__}); export it with `seg export`") \
            from None
    return ModelInfo.from_props({p.key: p.value for p in proto.metadata_props}, source=str(model))


class _Runner:
    """Spawns one worker per configuration and turns its JSON into ``BenchRow``s."""

    def __init__(self, work: Path, bench: BenchImages, repeats: int, latency_runs: int, threads: int | None,
                 timeout_s: float, say: Progress) -> None:
        self.work, self.bench, self.repeats, self.latency_runs = work, bench, repeats, latency_runs
        self.threads, self.timeout_s, self.say = threads, timeout_s, say
        self._count = 0
        self.scoring = True

    def onnx_rows(self, model: Path, provider: str, variants: list[str], configs: list[tuple[int, int]],
                  cpu_fp16: bool, threshold: float) -> list[BenchRow]:
        rows: list[BenchRow] = []
        for variant in variants:
            path = variant_file(model, variant)
            if provider == "cpu" and variant == "fp16" and not cpu_fp16:
                rows.append(BenchRow("onnxruntime", provider, variant, None, CPU_FP16))
                continue
            if not path.is_file():
                rows.append(BenchRow("onnxruntime", provider, variant, None,
                                     f"not found: {path.name} (export it with `seg export {model.name} --{variant}`)"))
                continue
            scored: BenchRow | None = None  # accuracy is the variant's, scored at its first configuration
            for index, (batch, streams) in enumerate(configs):
                row = self.measure("onnx", path, provider, variant, batch, first=index == 0, threshold=threshold,
                                   streams=streams)
                if row.status.startswith(PROVIDER_FAILED):
                    row.status = row.status.removeprefix(PROVIDER_FAILED)
                    if not any(r.ok for r in rows):  # the provider, not this model: one row says why
                        row.variant, row.batch = "all", None
                        return [r for r in rows if not r.ok] + [row]
                row.size_mb = path.stat().st_size / 1e6
                scored = row if index == 0 and row.ok else scored
                if index > 0 and scored is not None and row.ok:
                    row.membrane_f1, row.v_rand = scored.membrane_f1, scored.v_rand
                rows.append(row)
        return rows

    def keras_rows(self, keras: Path, batches: list[int], threshold: float) -> list[BenchRow]:
        rows = []
        for index, batch in enumerate(batches):
            row = self.measure("keras", keras, "cpu", "fp32", batch, first=index == 0, threshold=threshold)
            row.engine, row.size_mb = "keras", keras.stat().st_size / 1e6
            if index > 0 and rows and rows[0].ok:
                row.membrane_f1, row.v_rand = rows[0].membrane_f1, rows[0].v_rand
            rows.append(row)
        return rows

    def measure(self, engine: str, path: Path, provider: str, variant: str, batch: int, first: bool,
                threshold: float, streams: int = 1) -> BenchRow:
        """One worker run -> one row (accuracy and latency only for the ``first`` batch of a model)."""
        probs = self.work / f"probs-{self._count}.npy"
        spec = Spec(engine, str(path), provider, batch, [str(p) for p in self.bench.timing],
                    [str(p) for p in self.bench.labelled] if first and self.scoring else [], str(probs), self.repeats,
                    self.latency_runs if first and engine == "onnx" else 0, self.threads, streams=streams)
        self.say(f"{engine} {provider} {variant} batch {batch}" + (f" streams {streams}" if engine == "onnx" else ""))
        result = self.spawn(spec)
        row = BenchRow("onnxruntime" if engine == "onnx" else engine, provider, variant, batch,
                       streams_asked=streams if engine == "onnx" else None)
        row.streams = result.get("streams")
        if "error" in result:
            kind = result.get("error_kind", "")
            row.status = (PROVIDER_FAILED if kind == "ProviderError" else "") + result["error"]
            return row
        row.providers, row.pixels_per_image = result.get("providers", []), result.get("pixels_per_image")
        row.compute_ips, row.e2e_ips, row.peak_rss_mb = result["compute_ips"], result["e2e_ips"], result["peak_rss_mb"]
        if "latency_ms" in result:
            row.p50_ms, row.p95_ms = result["latency_ms"]["p50"], result["latency_ms"]["p95"]
        if first and self.scoring and probs.is_file() and self.bench.labels:
            row.membrane_f1, row.v_rand = score(np.load(probs), self.bench.labels, threshold)
        return row

    def paired(self, model: Path, rows: list[BenchRow], pairs: int) -> dict[str, Any] | None:
        """FP32 and INT8 alternating in one CPU worker at INT8's fastest batch
        (``seg.toolkit.bench.worker.measure_paired``); None unless both measured on the CPU."""
        cpu = {(r.variant, r.batch, r.streams_asked): r for r in rows
               if r.ok and r.provider == "cpu" and r.engine == "onnxruntime"}
        int8 = [r for (variant, *config), r in cpu.items() if variant == "int8" and ("fp32", *config) in cpu]
        if not int8:
            return None
        fastest = max(int8, key=lambda r: r.compute_ips or 0.0)
        batch, streams = fastest.batch or 1, fastest.streams_asked or 1
        spec = Spec("paired", str(model), "cpu", batch, [str(p) for p in self.bench.timing], repeats=pairs,
                    threads=self.threads, other=str(variant_file(model, "int8")), streams=streams)
        self.say(f"paired fp32 vs int8 cpu batch {batch} streams {streams}")
        return self.spawn(spec)

    def large(self, model: Path, provider: str | None, size: int) -> dict[str, Any]:
        if provider is None:
            return {"error": "no provider could load the model"}
        spec = Spec("large", str(model), provider, 4, [str(self.bench.timing[0])], threads=self.threads, size=size)
        self.say(f"large {size}x{size} on {provider}")
        return self.spawn(spec)

    def spawn(self, spec: Spec) -> dict[str, Any]:
        """Run ``seg.toolkit.bench.worker`` on ``spec`` in a fresh interpreter; its JSON result (or an error)."""
        self._count += 1
        spec_path, out_path = self.work / f"spec-{self._count}.json", self.work / f"result-{self._count}.json"
        spec_path.write_text(json.dumps(asdict(spec)), encoding="utf-8")
        command = [sys.executable, "-m", "seg.toolkit.bench.worker", str(spec_path), str(out_path)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {self.timeout_s:.0f} s"}
        if not out_path.is_file():
            tail = [line for line in done.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
            return {"error": f"worker failed (exit {done.returncode}): {tail[0]}"}
        return json.loads(out_path.read_text(encoding="utf-8"))


def merge_rounds(sweeps: list[list[BenchRow]]) -> list[BenchRow]:
    """One row per configuration from several sweeps: median speeds/latencies, largest peak RSS, the first
    sweep's accuracy; a configuration that failed in any sweep keeps that sweep's failed row."""
    merged = []
    for row in sweeps[0]:
        same = [r for sweep in sweeps for r in sweep if _key(r) == _key(row)]
        failed = [r for r in same if not r.ok]
        if failed or len(same) == 1:
            merged.append(failed[0] if failed else row)
            continue
        for name in ("compute_ips", "e2e_ips", "p50_ms", "p95_ms"):
            values = [getattr(r, name) for r in same if getattr(r, name) is not None]
            setattr(row, name, float(np.median(values)) if values else None)
        row.peak_rss_mb = max(r.peak_rss_mb or 0.0 for r in same)
        merged.append(row)
    return merged


def _key(row: BenchRow) -> tuple[str, str, str, int | None, int | None]:
    return row.engine, row.provider, row.variant, row.batch, row.streams_asked


def score(probs: np.ndarray, labels: list[np.ndarray], threshold: float) -> tuple[float, float]:
    """``(membrane F1, V_rand)`` of ``(N, H, W) float32`` probabilities against ``labels``."""
    from seg.toolkit.evaluation.metrics import score_slices

    scores = score_slices(list(probs), labels, threshold=threshold)
    return float(scores["membrane_f1"]), float(scores["v_rand"])  # type: ignore[arg-type]


def _add_compute_rates(report: BenchReport, flop_per_pixel: float) -> None:
    """GFLOP/s and the fraction of the CPU's peak of each measured row, from the pixels the row computed per
    image (the network's FLOPs grow linearly with them); a row that reported none is charged one tile."""
    for row in report.rows:
        if row.ok and row.compute_ips:
            gflop = flop_per_pixel * row.pixels_per_image / 1e9 if row.pixels_per_image else report.gflop_per_image
            row.gflops, fraction = achieved(gflop, row.compute_ips, report.machine)
            row.peak_fraction = fraction if row.provider == "cpu" else None


def _working_provider(rows: list[BenchRow]) -> str | None:
    for row in rows:
        if row.ok and row.engine == "onnxruntime" and row.variant == "fp32":
            return row.provider
    return None


def _profile(report: BenchReport, model: Path, bench: BenchImages, say: Progress) -> None:
    """Per-operator profile of FP32 and INT8 on the CPU at batch 4 (or fewer images), into ``report``."""
    from seg.toolkit.bench.profile import compare_table, profile_ops

    int8 = variant_file(model, "int8")
    if not int8.is_file():
        return
    say("profile fp32 vs int8 (cpu)")
    images = [read_image(p) for p in bench.timing[:4]]
    fp32_ops = profile_ops(model, images, runs=2, threads=report.settings["threads"])
    int8_ops = profile_ops(int8, images, runs=2, threads=report.settings["threads"])
    report.profile = {"fp32": fp32_ops.to_dict(), "int8": int8_ops.to_dict()}
    report.profile_table = compare_table(fp32_ops, int8_ops)
