"""Edge variants of a gated FP32 model: FP16 (float32 IO kept) and static INT8 (QDQ, per-channel).

Their gate is task-level, not 1e-4, on the gate's real images: mask agreement with FP32 (at least
``VariantOptions.min_agreement``, a fraction in [0, 1]) and the change of pooled membrane F1
(at most ``VariantOptions.max_delta_f1``). F1 is scored against the labels of the images that have one;
only when no image has a label is it scored against the FP32 masks, and ``VariantReport.f1_reference``
(also in the JSON report and in a failed gate's message) says which reference was used. Each variant
gets its own ``<stem>.<kind>.parity.json``; a failed variant is not written. The report also times both
models on the same images with onnxruntime on the CPU (milliseconds per image).
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
from seg.runtime.errors import GateError, SegWarning
from seg.runtime.metadata import ModelInfo
from seg.runtime.providers import make_session
from seg.runtime.scores import mask_agreement, membrane_f1
from seg.runtime.tiling import pad_to_multiple

TIMING_IMAGES = 4
RECOMMEND_SPEEDUP = 1.5  # an INT8 model is worth its accuracy risk only this much faster than FP32
NO_LABELS = "fp32 masks (no labels)"


@dataclass(frozen=True)
class VariantOptions:
    """Variant gate limits: ``min_agreement`` (fraction of pixels whose mask matches FP32's, in [0, 1]),
    ``max_delta_f1`` (largest allowed |F1 change|, in [0, 1]) and ``timing_runs`` (timing passes, >= 1)."""

    min_agreement: float = 0.99
    max_delta_f1: float = 0.01
    timing_runs: int = 3


@dataclass
class VariantReport:
    """A variant against FP32 on the same images. ``mask_agreement`` and the F1s are fractions in [0, 1];
    ``f1_reference`` names what F1 was scored against (``"labels"``, ``"labels (k of n images)"`` or
    ``NO_LABELS``); ``ms_*`` are CPU milliseconds per image (median); ``reason`` is empty when it passed."""

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
    """``model.onnx`` -> ``model.fp16.onnx`` / ``model.int8.onnx`` / ``model.u8.onnx``."""
    return out.with_name(f"{out.stem}.{kind}{out.suffix}")


def export_fp16(proto: onnx.ModelProto, out: Path, image_set: ImageSet, info: ModelInfo,
                options: VariantOptions) -> VariantReport:
    """FP16 weights and compute with float32 ``image``/``prob`` (onnxconverter-common); gated, written.

    ``settings["clamped_extremes"]`` counts the weight extremes the conversion clamped into FP16's range
    (magnitudes below 1e-7 or above 1e4); the gate below judges whether that mattered."""
    half, clamped = _to_float16(proto)
    _copy_metadata(proto, half, "fp16")
    return _gate_and_write("fp16", proto, half.SerializeToString(), out, image_set, info, options,
                           {"clamped_extremes": clamped})


def export_uint8(proto: onnx.ModelProto, out: Path, image_set: ImageSet, info: ModelInfo,
                 options: VariantOptions) -> VariantReport:
    """The FP32 model taking ``(N, H, W, 1) uint8`` pixels and normalising them inside the graph (Cast, then
    Div by 255: exactly the runtime's dtype-range division), so a host feeds raw 8-bit tiles (a quarter of
    the bytes to copy to a GPU, no float conversion on the host); gated against FP32 like the others."""
    fed = uint8_input(proto)
    _copy_metadata(proto, fed, "fp32")
    fed.metadata_props.add(key="seg.input_dtype", value="uint8")
    return _gate_and_write("u8", proto, fed.SerializeToString(), out, image_set, info, options, {})


def uint8_input(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` whose first input takes uint8 (same name and shape), cast to float32 and divided by
    255 before the original graph."""
    fed = copy.deepcopy(proto)
    graph = fed.graph
    name = graph.input[0].name
    inner = f"{name}_float"
    for node in graph.node:
        node.input[:] = [inner if value == name else value for value in node.input]
    scale = onnx.helper.make_tensor(f"{name}_range", onnx.TensorProto.FLOAT, [], [255.0])
    graph.initializer.append(scale)
    normalise = [onnx.helper.make_node("Cast", [name], [f"{name}_cast"], to=onnx.TensorProto.FLOAT),
                 onnx.helper.make_node("Div", [f"{name}_cast", scale.name], [inner])]
    nodes = [*normalise, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UINT8
    onnx.checker.check_model(fed, full_check=True)
    return fed


def _to_float16(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A converted copy of ``proto`` and how many "will be truncated" warnings the conversion gave (each
    one tensor's extreme value clamped); its other warnings are passed on unchanged."""
    from onnxconverter_common import float16

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        half = float16.convert_float_to_float16(copy.deepcopy(proto), keep_io_types=True)
    clamped = [w for w in caught if "will be truncated" in str(w.message)]
    for w in caught:
        if w not in clamped:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return half, len(clamped)


def export_int8(proto: onnx.ModelProto, out: Path, image_set: ImageSet, calib: ImageSet, info: ModelInfo,
                options: VariantOptions) -> VariantReport:
    """Static INT8 QDQ, per-channel weights, MinMax calibration on ``calib``; U8S8 first, then
    ``reduce_range`` and U8U8 while the gate fails. The first recipe that passes is written (its
    ``settings["failed_recipes"]`` lists those before it); when none does, nothing is written and
    ``GateError`` names the last failure.

    Why U8S8 first: it is the layout onnxruntime's x86 int8 kernels take natively. With VNNI (``vpdpbusd``,
    u8 x s8 -> s32) it cannot saturate; without VNNI (AVX2 ``pmaddubsw``) its int16 intermediate can, which
    is what ``reduce_range`` (7-bit weights) and U8U8 fall back for. S8S8 is not tried: x86 kernels shift
    s8 activations to u8 at run time. Every operator onnxruntime can quantize is (no ``nodes_to_exclude``);
    docs/design.md has the measurements behind these choices. Whether INT8 is faster than FP32 depends on
    the model and the CPU, so it is measured at export:
    ``settings["cpu_speedup"]`` is FP32 ms / INT8 ms on this CPU and ``settings["recommended_on_this_cpu"]``
    whether it reaches ``RECOMMEND_SPEEDUP``; ``seg benchmark`` shows the per-operator profile behind it."""
    from onnxruntime.quantization import QuantType

    recipes = [{"activation": QuantType.QUInt8, "weight": QuantType.QInt8, "reduce_range": False},
               {"activation": QuantType.QUInt8, "weight": QuantType.QInt8, "reduce_range": True},
               {"activation": QuantType.QUInt8, "weight": QuantType.QUInt8, "reduce_range": False}]
    failures = []
    for recipe in recipes:
        settings = {"activation": recipe["activation"].name, "weight": recipe["weight"].name,
                    "reduce_range": recipe["reduce_range"],
                    "calibration": f"MinMax on {len(calib.images)} images from {calib.source}"}
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
    if kind == "int8":  # INT8 is made for speed; FP16 and u8 for size and input type
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
    """Pooled membrane F1 (in [0, 1]) of FP32 and of the variant, and the reference they were scored on:
    ``"labels"`` when every image has a label, ``"labels (k of n images)"`` when only k do (the others
    are left out of F1), else ``NO_LABELS`` (FP32's own masks: FP32 scores 1.0 by definition)."""
    labelled = [(ref, got, label) for (ref, got), label in zip(pairs, labels, strict=True) if label is not None]
    if labelled:
        ref, got, truth = (np.concatenate([item[i].ravel() for item in labelled]) for i in range(3))
        reference = "labels" if len(labelled) == len(pairs) else f"labels ({len(labelled)} of {len(pairs)} images)"
        return membrane_f1(ref, truth, threshold), membrane_f1(got, truth, threshold), reference
    ref = np.concatenate([r.ravel() for r, _ in pairs])
    got = np.concatenate([g.ravel() for _, g in pairs])
    return 1.0, membrane_f1(got, (ref >= threshold).astype(np.float32), threshold), NO_LABELS


def warn_if_unlabelled(image_set: ImageSet, out: Path) -> None:
    """One ``SegWarning`` when no gate image has a label: the variant gates then score F1 against FP32."""
    if all(label is None for label in image_set.labels):
        warnings.warn(f"{image_set.source}: no labels for the gate images, so the FP16/INT8 gates of {out.name} "
                      "score membrane F1 against the FP32 model's masks, not ground truth; give --data a dataset "
                      "with DIR/train/label", SegWarning, stacklevel=2)


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
        return (f"|Δ membrane F1| {report.delta_f1:.4f} > {report.max_delta_f1:g}, "
                f"F1 against {report.f1_reference}")
    return ""
