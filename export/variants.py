"""Edge variants of a gated FP32 model: FP16 (float32 IO kept) and static INT8 (QDQ, per-channel).

Their gate is task-level, not 1e-4: mask agreement with FP32 (default >= 99 %) and the change of
membrane F1 against the labels (default <= 0.01; against the FP32 masks when there are no labels), on
the gate's real images. Each variant gets its own ``<stem>.<kind>.parity.json``; a failed variant is not
written. The report also times both models on the same images with onnxruntime on the CPU.
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from seg.export.parity import ImageSet, predict_pairs, report_path, run_onnx
from seg.runtime.atomic import write_bytes_atomic, write_json_atomic
from seg.runtime.errors import GateError
from seg.runtime.metadata import ModelInfo
from seg.runtime.providers import make_session
from seg.runtime.scores import mask_agreement, membrane_f1
from seg.runtime.tiling import pad_to_multiple

TIMING_IMAGES = 4
RECOMMEND_SPEEDUP = 1.5  # an INT8 model is worth its accuracy risk only this much faster than FP32


@dataclass(frozen=True)
class VariantOptions:
    min_agreement: float = 0.99
    max_delta_f1: float = 0.01
    timing_runs: int = 3


@dataclass
class VariantReport:
    """A variant against FP32 on the same images. ``ms_*`` are CPU milliseconds per image (median)."""

    kind: str
    path: Path
    size_bytes: int
    size_ratio: float
    mask_agreement: float
    f1_fp32: float
    f1_variant: float
    delta_f1: float
    f1_reference: str
    ms_fp32: float
    ms_variant: float
    min_agreement: float
    max_delta_f1: float
    settings: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def passed(self) -> bool:
        return not self.reason

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.path.name, "passed": self.passed, **asdict(self), "path": str(self.path)}


def variant_path(out: Path, kind: str) -> Path:
    """``model.onnx`` -> ``model.fp16.onnx`` / ``model.int8.onnx``."""
    return out.with_name(f"{out.stem}.{kind}{out.suffix}")


def export_fp16(proto: onnx.ModelProto, out: Path, image_set: ImageSet, info: ModelInfo,
                options: VariantOptions) -> VariantReport:
    """FP16 weights and compute with float32 ``image``/``prob`` (onnxconverter-common); gated, written."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():  # "the float32 number 7e-08 will be truncated": tiny weights, gated below
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(copy.deepcopy(proto), keep_io_types=True)
    _copy_metadata(proto, half, "fp16")
    return _gate_and_write("fp16", proto, half.SerializeToString(), out, image_set, info, options, {})


def export_int8(proto: onnx.ModelProto, out: Path, image_set: ImageSet, calib: ImageSet, info: ModelInfo,
                options: VariantOptions) -> VariantReport:
    """Static INT8 QDQ, per-channel weights, MinMax calibration on ``calib``; U8S8 first, then
    ``reduce_range`` and U8U8 while the gate fails. The first recipe that passes is written.

    Why U8S8 first: it is the layout onnxruntime's x86 int8 kernels take natively. With VNNI (``vpdpbusd``,
    u8 x s8 -> s32) it cannot saturate; without VNNI (AVX2 ``pmaddubsw``) its int16 intermediate can, which
    is what ``reduce_range`` (7-bit weights) and U8U8 fall back for. S8S8 was measured on a Xeon with
    AVX512-VNNI/AMX at 0.7-0.8x the U8S8 speed (activations are shifted to u8 at run time), so it is not
    tried. Where INT8 pays depends on width: a width-32 U-Net ran 1.86x FP32, the default width-8 one
    1.0-1.4x, because its full-resolution 8-channel convolutions run slower in int8 than in FP32 (K = 72,
    N = 8 is too thin for the int8 GEMM) and take ~45 % of the FP32 time. Keeping them in FP32
    (``nodes_to_exclude``) was measured too: at most 1.1x better, the Q/DQ boundaries eat the rest, so the
    recipe quantizes the whole graph. ``settings["cpu_speedup"]`` records the measured speed-up
    over FP32 and ``settings["recommended_on_this_cpu"]`` whether it reaches ``RECOMMEND_SPEEDUP``; ``seg
    benchmark`` shows the per-operator profile behind it."""
    from onnxruntime.quantization import QuantType

    recipes = [{"activation": QuantType.QUInt8, "weight": QuantType.QInt8, "reduce_range": False},
               {"activation": QuantType.QUInt8, "weight": QuantType.QInt8, "reduce_range": True},
               {"activation": QuantType.QUInt8, "weight": QuantType.QUInt8, "reduce_range": False}]
    failures = []
    for recipe in recipes:
        settings = {"activation": recipe["activation"].name, "weight": recipe["weight"].name,
                    "reduce_range": recipe["reduce_range"], "calibration": f"MinMax on {len(calib.images)} images"}
        quantized = quantize_int8(proto, calib, info.size_multiple, **recipe)
        _copy_metadata(proto, quantized, "int8")
        try:
            return _gate_and_write("int8", proto, quantized.SerializeToString(), out, image_set, info, options,
                                   {**settings, "failed_recipes": failures})
        except GateError as exc:
            failures.append(f"{settings['activation']}/{settings['weight']} reduce_range="
                            f"{settings['reduce_range']}: {exc}")
    raise GateError(f"{variant_path(out, 'int8')}: every INT8 recipe failed the gate; last: {failures[-1]}")


def quantize_int8(proto: onnx.ModelProto, calib: ImageSet, multiple: int, activation: Any, weight: Any,
                  reduce_range: bool) -> onnx.ModelProto:
    """``quant_pre_process`` (no symbolic shapes) then ``quantize_static`` (QDQ, per-channel)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="seg-int8-") as folder:
        fp32, pre, int8 = (Path(folder) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(proto, fp32)
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        batches = [pad_to_multiple(image, multiple)[None, :, :, None] for image in calib.images]
        quantize_static(str(pre), str(int8), _calibration_reader(proto.graph.input[0].name, batches),
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                        activation_type=activation, weight_type=weight, calibrate_method=CalibrationMethod.MinMax)
        return onnx.load(int8)


def _calibration_reader(name: str, batches: list[np.ndarray]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Feeds ``(1, H, W, 1) float32`` normalised, padded real images, one per call."""

        def __init__(self) -> None:
            self._items = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._items, None)
            return None if batch is None else {name: batch.astype(np.float32)}

    return Reader()


def _copy_metadata(source: onnx.ModelProto, target: onnx.ModelProto, precision: str) -> None:
    del target.metadata_props[:]
    for prop in source.metadata_props:
        target.metadata_props.add(key=prop.key, value=prop.value)
    target.metadata_props.add(key="seg.precision", value=precision)


def _gate_and_write(kind: str, fp32: onnx.ModelProto, variant_bytes: bytes, out: Path, image_set: ImageSet,
                    info: ModelInfo, options: VariantOptions, settings: dict[str, Any]) -> VariantReport:
    path = variant_path(out, kind)
    fp32_bytes = fp32.SerializeToString()
    ref_session = make_session(fp32_bytes, provider="cpu")
    var_session = make_session(variant_bytes, provider="cpu")
    pairs = predict_pairs(_runner(ref_session), _runner(var_session), image_set.images, info.size_multiple)
    f1_ref, f1_var, reference = _f1_pair(pairs, image_set.labels, info.threshold)
    timing = [_ms_per_image(s, image_set, info.size_multiple, options.timing_runs)
              for s in (ref_session, var_session)]
    ref = np.concatenate([r.ravel() for r, _ in pairs])
    got = np.concatenate([g.ravel() for _, g in pairs])
    report = VariantReport(kind, path, len(variant_bytes), len(variant_bytes) / len(fp32_bytes),
                           mask_agreement(ref, got, info.threshold), f1_ref, f1_var, abs(f1_var - f1_ref),
                           reference, timing[0], timing[1], options.min_agreement, options.max_delta_f1, settings)
    report.reason = _reason(report)
    speedup = report.ms_fp32 / report.ms_variant if report.ms_variant > 0 else 0.0
    report.settings["cpu_speedup"] = round(speedup, 3)
    report.settings["recommended_on_this_cpu"] = speedup >= RECOMMEND_SPEEDUP
    write_json_atomic(report_path(path), report.to_dict())
    if not report.passed:
        raise GateError(f"{path}: {kind} gate FAILED ({report.reason}); not written, see {report_path(path)}")
    write_bytes_atomic(path, variant_bytes)
    return report


def _runner(session: Any) -> Callable[[np.ndarray], np.ndarray]:
    return lambda batch: run_onnx(session, batch)


def _f1_pair(pairs: list[tuple[np.ndarray, np.ndarray]], labels: list[np.ndarray | None],
             threshold: float) -> tuple[float, float, str]:
    """Pooled membrane F1 of FP32 and of the variant: against labels where every image has one,
    else against the FP32 masks (then FP32 scores 1.0 by definition)."""
    ref = np.concatenate([r.ravel() for r, _ in pairs])
    got = np.concatenate([g.ravel() for _, g in pairs])
    if all(label is not None for label in labels):
        truth = np.concatenate([label.ravel() for label in labels if label is not None])
        return membrane_f1(ref, truth, threshold), membrane_f1(got, truth, threshold), "labels"
    truth = (ref >= threshold).astype(np.float32)
    return 1.0, membrane_f1(got, truth, threshold), "fp32 masks"


def _ms_per_image(session: Any, image_set: ImageSet, multiple: int, runs: int) -> float:
    """Median CPU milliseconds per image over ``runs`` passes on the first same-size images (1 warm-up)."""
    padded = [pad_to_multiple(image, multiple) for image in image_set.images]
    same = [image[None, :, :, None] for image in padded if image.shape == padded[0].shape][:TIMING_IMAGES]
    run_onnx(session, same[0])
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        for batch in same:
            run_onnx(session, batch)
        times.append((time.perf_counter() - start) * 1000.0 / len(same))
    return float(np.median(times))


def _reason(report: VariantReport) -> str:
    if report.mask_agreement < report.min_agreement:
        return f"mask agreement {report.mask_agreement:.3%} < {report.min_agreement:.0%} vs FP32"
    if report.delta_f1 > report.max_delta_f1:
        return f"|Δ membrane F1| {report.delta_f1:.4f} > {report.max_delta_f1:g} vs FP32"
    return ""
