"""Keras -> ONNX with tf2onnx, the ``seg.`` metadata, the parity gate and atomic writes.

``to_onnx`` converts in memory, tidies and checks the graph (``seg.export.tidy``, ``onnx.checker`` + strict
shape inference), writes the metadata, runs the parity gate on the exact bytes it is about to write, and
only then writes ``out`` atomically. A failed gate leaves no file at ``out`` (its ``.parity.json`` report is
still written). TensorFlow, Keras and tf2onnx are imported inside functions only.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from seg.export import parity, portable, tidy, variants
from seg.export.source import Source, load_source, receptive_field
from seg.runtime.atomic import remove_temporaries, write_bytes_atomic, write_json_atomic
from seg.runtime.errors import GateError, InputError, SegWarning
from seg.runtime.metadata import DEFAULT_TILE, ModelInfo
from seg.runtime.tiling import recommended_halo

INPUT_NAME, OUTPUT_NAME = "image", "prob"
DYNAMIC_DIMS = ("N", "H", "W")
Transform = Callable[[onnx.ModelProto], None]


@dataclass
class ExportReport:
    """What ``to_onnx`` wrote: the model, its metadata, the FP32 parity report and any variants.

    ``cleanups`` is ``seg.export.tidy.tidy``'s count per clean-up (``identity_crops``, ``dead_nodes``, and
    ``reverted``: crops that were kept because removing them was not proven exact; 0 normally)."""

    out: Path
    size_bytes: int
    info: ModelInfo
    parity: parity.ParityReport
    parity_path: Path
    variants: list[variants.VariantReport] = field(default_factory=list)
    cleanups: dict[str, int] = field(default_factory=dict)
    package: Path | None = None  # the bioimage.io package (``bioimageio=True``), else None


def to_onnx(
    weights: str | Path,
    out: str | Path,
    *,
    data: str | Path | None = None,
    opset: int = 17,
    atol: float = 1e-4,
    min_agreement: float = 0.9999,
    fp16: bool = False,
    int8: bool = False,
    uint8: bool = False,
    calib: str | Path | None = None,
    variant_agreement: float = 0.99,
    max_delta_f1: float = 0.01,
    max_images: int = 8,
    timing_runs: int = 3,
    transform: Transform | None = None,
    bioimageio: bool = False,
) -> ExportReport:
    """Export a Keras run/model to ``out`` (``.onnx``) behind the parity gate; optional FP16/INT8 variants, and
    with ``uint8`` the ``OUT.u8.onnx`` variant that takes raw 8-bit pixels and normalises inside its graph.

    ``data``: dataset folder (``DIR/train/image`` layout) or image folder for the gate; default the run's
    ``config.json`` ``data.dir``. ``transform`` edits the converted model before the gate (a test seam that
    proves the gate gates). ``bioimageio``: also write ``OUT.bioimageio.zip`` (``seg.export.bioimageio``, needs the
    ``zoo`` extra) once the gate passed. Raises ``InputError`` (exit 2) for unusable input (checked before any file is
    written) and ``GateError`` (exit 1) when a gate fails, in which case the gated file is not written.
    Warns (``SegWarning``) when a tidy rewrite was undone, the variant gates have no labels to score on, or a
    variant or package beside ``out`` is an earlier export's.
    """
    out = _check_out(Path(out))
    use_tensorflow_backend()  # before tf2onnx (and Keras with it) is first imported
    _check_numbers(opset, atol, min_agreement)
    if calib is not None and not int8:
        raise InputError(f"--calib {calib}: calibration images are only for the INT8 variant; add --int8, or "
                         "drop --calib")
    if bioimageio:
        from seg.export import bioimageio as zoo

        zoo.check_available()
    source = load_source(weights)
    data_dir = _data_dir(data, source)
    image_set = parity.load_images(data_dir, source.config, max_images)
    calib_set = parity.load_calibration(calib, image_set, data_dir) if int8 else None
    if fp16 or int8:
        variants.warn_if_unlabelled(image_set, out)
    proto = convert_keras(source.model, opset)
    cleanups = tidy_checked(proto, str(source.weights))
    info = model_info(source, proto)
    attach_metadata(proto, info)
    if transform is not None:
        transform(proto)
    result = _gate_fp32(source, proto, out, image_set, info, atol, min_agreement)
    result.cleanups = cleanups
    package = out.with_name(out.stem + ".bioimageio.zip")
    try:
        if bioimageio:  # an earlier package holds other weights: gone, whether or not this one is written
            package.unlink(missing_ok=True)
            result.package = zoo.write_package(out, result, image_set, run_dir=source.weights.parent)
        options = variants.VariantOptions(variant_agreement, max_delta_f1, timing_runs)
        result.variants = _export_variants(proto, out, image_set, calib_set, info, options, fp16=fp16,
                                           uint8=uint8)
    except GateError as exc:
        raise GateError(f"{exc}; {out} itself passed its gate and was written") from None
    finally:
        if not bioimageio and package.exists():
            warnings.warn(f"{package}: left by an earlier export, not made from these weights; delete it or "
                          "export with --bioimageio", SegWarning, stacklevel=3)
    return result


def _export_variants(proto: onnx.ModelProto, out: Path, image_set: parity.ImageSet, calib_set: parity.ImageSet | None,
                     info: ModelInfo, options: variants.VariantOptions, *, fp16: bool,
                     uint8: bool) -> list[variants.VariantReport]:
    """The asked-for variants of the ``out`` just written, each behind its gate. An earlier export's file of a
    kind asked for is deleted first (it was made from other weights), so a failed gate leaves none behind;
    one of a kind not asked for is named in a ``SegWarning``, also when a gate fails. INT8 is asked for by
    its calibration images (``calib_set``)."""
    asked = {"fp16": fp16, "int8": calib_set is not None, "u8": uint8}
    for kind in (kind for kind, wanted in asked.items() if wanted):
        variants.variant_path(out, kind).unlink(missing_ok=True)
    made: list[variants.VariantReport] = []
    try:
        if fp16:
            made.append(variants.export_fp16(proto, out, image_set, info, options))
        if calib_set is not None:
            made.append(variants.export_int8(proto, out, image_set, calib_set, info, options))
        if uint8:
            made.append(variants.export_uint8(proto, out, image_set, info, options))
    finally:
        _warn_stale_variants(out, asked)
    return made


def _warn_stale_variants(out: Path, made: dict[str, bool]) -> None:
    """One ``SegWarning`` per variant file beside ``out`` that this export did not write (an earlier one's)."""
    for kind, written in made.items():
        path = variants.variant_path(out, kind)
        if not written and path.exists():
            flag = "uint8" if kind == "u8" else kind
            warnings.warn(f"{path}: left by an earlier export, not made from these weights; delete it or export "
                          f"with --{flag}", SegWarning, stacklevel=4)


def _gate_fp32(source: Source, proto: onnx.ModelProto, out: Path, image_set: parity.ImageSet,
               info: ModelInfo, atol: float, min_agreement: float) -> ExportReport:
    """The FP32 parity gate on the exact bytes of ``proto``; writes its report, then ``out`` if it passed."""
    model_bytes = proto.SerializeToString()
    report = parity.check(source.model, model_bytes, image_set, info.size_multiple, info.threshold, atol,
                          min_agreement)
    parity_path = parity.report_path(out)
    _make_folder(out)
    remove_temporaries(out.parent, _written_stems(out))  # left by an export that was killed
    write_json_atomic(parity_path, report.to_dict(out))
    if not report.passed:
        kept = (f" (the {out.name} there is an earlier export's, kept with its variants; the report is this "
                "export's)") if out.exists() else ""
        raise GateError(f"{out}: parity gate FAILED ({report.reason}); model not written{kept}, see {parity_path}")
    write_bytes_atomic(out, model_bytes)
    return ExportReport(out, len(model_bytes), info, report, parity_path)


def use_tensorflow_backend() -> None:
    """Make Keras load models on TensorFlow, the backend tf2onnx converts from, whatever ``KERAS_BACKEND``
    says (a model trained on JAX or PyTorch is the same ``.keras`` file). Raises ``InputError`` when this
    process already runs Keras on another backend (it cannot change once Keras is imported)."""
    import os
    import sys

    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"
        return
    import keras

    if keras.backend.backend() != "tensorflow":
        raise InputError(f"export converts with TensorFlow, but this process runs Keras on "
                         f"{keras.backend.backend()}; export in a new process (seg export does) with "
                         "KERAS_BACKEND=tensorflow or unset")


MIN_OPSET = 13  # Keras 3 graphs need opset 13 operators (Squeeze/Unsqueeze axes as inputs)


def _check_numbers(opset: int, atol: float, min_agreement: float) -> None:
    """``InputError`` (exit 2, before anything is loaded) for an opset tf2onnx cannot write or a gate that
    could never pass."""
    import tf2onnx.constants

    newest = max(tf2onnx.constants.OPSET_TO_IR_VERSION)
    if not MIN_OPSET <= opset <= newest:
        raise InputError(f"--opset {opset}: unsupported; use {MIN_OPSET} to {newest} (default 17)")
    if not atol >= 0:
        raise InputError(f"--atol {atol:g}: must be >= 0 (the largest allowed |Keras - ONNX|, default 1e-4)")
    if not 0.0 <= min_agreement <= 1.0:
        raise InputError(f"min_agreement {min_agreement:g}: must be in [0, 1] (a fraction of pixels)")


def _check_out(out: Path) -> Path:
    if out.suffix.lower() != ".onnx":
        raise InputError(f"{out}: the output must end in .onnx, e.g. model.onnx")
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give a file name such as {out / 'model.onnx'}")
    existing = next((parent for parent in out.parents if parent.exists()), None)  # the folder is made later
    if existing is not None and not existing.is_dir():
        raise InputError(f"{out}: {existing} is a file, not a folder; choose another path")
    return out


def _written_stems(out: Path) -> list[str]:
    """The stems of every file an export to ``out`` may write: the model, the variants, their reports and the
    package."""
    models = [out, *(variants.variant_path(out, kind) for kind in ("fp16", "int8", "u8"))]
    return [*(m.stem for m in models), *(parity.report_path(m).stem for m in models), f"{out.stem}.bioimageio"]


def _make_folder(out: Path) -> None:
    """Create ``out``'s folder when the first file is about to be written (not before the inputs are read)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create its folder ({exc.strerror or exc}); choose another path") from None


def _data_dir(data: str | Path | None, source: Source) -> Path:
    if data is not None:
        return Path(data)
    if source.data_dir is None:
        raise InputError(f"{source.weights}: no config.json with data.dir beside it; pass --data DIR for the gate")
    return source.data_dir


def convert_keras(model: Any, opset: int = 17) -> onnx.ModelProto:
    """tf2onnx conversion with input ``image`` ``(N, H, W, 1) float32`` and output ``prob`` ``(N, H, W, 1)``,
    N/H/W dynamic; ``onnx.checker`` (full) and strict shape inference must pass. Not yet tidied: see
    ``tidy_checked``. Raises ``InputError`` when tf2onnx cannot convert or the output is not 4-D."""
    import tensorflow as tf
    import tf2onnx

    signature = [tf.TensorSpec((None, None, None, 1), tf.float32, name=INPUT_NAME)]
    try:
        proto, _ = tf2onnx.convert.from_keras(_functional(model), input_signature=signature, opset=opset)
    except Exception as exc:  # tf2onnx raises many types for unsupported ops/opsets; re-raised, not hidden
        raise InputError(f"tf2onnx could not convert the model at opset {opset}: {exc}") from None
    graph = proto.graph
    tidy.squeeze_leading_unit_output(proto)
    _rename(graph, graph.input[0].name, INPUT_NAME)
    _rename(graph, graph.output[0].name, OUTPUT_NAME)
    for value in (graph.input[0], graph.output[0]):
        for dim, name in zip(value.type.tensor_type.shape.dim, DYNAMIC_DIMS, strict=False):
            dim.dim_param = name
    if len(graph.output[0].type.tensor_type.shape.dim) != 4:
        raise InputError(f"tf2onnx gave an output of shape {_dims(graph.output[0])}, not (N, H, W, 1): "
                         "the model must map (N, H, W, 1) images to (N, H, W, 1) probabilities")
    _check_graph(proto)
    return proto


def _functional(model: Any) -> Any:
    """``model`` as a functional Keras model sharing its layers and weights: tf2onnx cannot look up the
    output names of a Keras 3 ``Sequential`` model (the seed CNN), so one is rebuilt layer by layer."""
    import keras

    if not isinstance(model, keras.Sequential):
        return model
    inputs = keras.Input((None, None, 1), name=INPUT_NAME)
    outputs = inputs
    for layer in model.layers:
        outputs = layer(outputs)
    return keras.Model(inputs, outputs, name=model.name)


def tidy_checked(proto: onnx.ModelProto, name: str = "model") -> dict[str, int]:
    """``seg.export.tidy``'s exact clean-ups on ``proto`` in place (a rewrite it undoes warns, naming
    ``name``) and ``seg.export.portable.explicit_pads`` (``auto_pad`` written out, so every ONNX host reads
    the padding alike), then the same checks as ``convert_keras``; returns the clean-up counts."""
    counts = tidy.tidy(proto, name)
    counts["explicit_pads"] = portable.explicit_pads(proto.graph)
    _check_graph(proto)
    return counts


def _check_graph(proto: onnx.ModelProto) -> None:
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)


def _dims(value: onnx.ValueInfoProto) -> list[object]:
    return [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a value everywhere in ``graph`` (node inputs/outputs and graph inputs/outputs)."""
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.input, *graph.output):
        if value.name == old:
            value.name = new


def model_info(source: Source, proto: onnx.ModelProto) -> ModelInfo:
    """The ``seg.`` metadata for ``source``: contract, tile, halo (from the receptive field), versions."""
    field_px, multiple = receptive_field(source.model)
    spec = source.config.get("model", {})
    tile = int(source.config.get("tile", DEFAULT_TILE))
    return ModelInfo(
        model_kind=str(spec.get("kind", source.model.name)),
        width=int(spec.get("width", 0)),
        depth=int(spec.get("depth", 0)),
        stem=int(spec.get("stem", 1 if spec else 0)),  # runs recorded before stems existed: classic U-Net
        input_layout="NHWC",
        normalization=str(source.config.get("normalization", "dtype-range")),
        tile_size=tile,
        halo=recommended_halo(field_px, tile, multiple),
        size_multiple=multiple,
        threshold=source.threshold,
        label_offset=source.label_offset,
        receptive_field=field_px,
        training_data=str(source.config.get("data", {}).get("summary", "")),
        versions=_versions(proto),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def _versions(proto: onnx.ModelProto) -> dict[str, str]:
    """The opset and each package's version; ``"unknown"`` for one whose version cannot be found."""
    opsets = [entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")]
    versions = {"opset": str(opsets[0]) if opsets else "unknown"}
    modules = {"seg-toolkit": "seg"}  # import names that differ from the distribution's
    for package in ("seg-toolkit", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:  # e.g. onnxruntime-gpu, or run from a source tree
            module = importlib.import_module(modules.get(package, package))
            versions[package] = str(getattr(module, "__version__", "unknown"))
    return versions


def attach_metadata(proto: onnx.ModelProto, info: ModelInfo) -> None:
    """Write ``info.to_props()`` into ``proto.metadata_props`` (replacing earlier ``seg.`` keys)."""
    props = info.to_props()
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    for key, value in [*keep, *props.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "seg-toolkit (tf2onnx)"
