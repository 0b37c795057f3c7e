"""FP16 and INT8 variants: written with their own parity reports, gated against FP32."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from seg.runtime.errors import GateError, SegWarning
from seg.runtime.metadata import ModelInfo
from seg.runtime.providers import make_session

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["fp16", "int8"])
def test_variant_written_and_gated(edge_export: Any, kind: str) -> None:
    assert edge_export.parity.passed
    report = {v.kind: v for v in edge_export.variants}[kind]
    assert report.passed, report.reason
    assert report.path == edge_export.out.with_name(f"model.{kind}.onnx") and report.path.is_file()
    assert report.mask_agreement >= 0.99 and report.delta_f1 <= 0.01
    assert report.f1_reference == "labels" and report.f1_fp32 > 0.5  # the detector really finds membranes
    assert report.ms_fp32 > 0 and report.ms_variant > 0
    if kind == "fp16":
        assert report.settings["clamped_extremes"] == 0  # no weight below 1e-7 or above 1e4 in magnitude
    assert ("recommended_on_this_cpu" in report.settings) == (kind == "int8")  # speed advice: INT8's only
    saved = json.loads(report.path.with_name(f"model.{kind}.parity.json").read_text())
    assert saved["passed"] is True and saved["kind"] == kind


@pytest.mark.parametrize(("kind", "marker_op"), [("fp16", "Cast"), ("int8", "QuantizeLinear")])
def test_variant_keeps_float_io_and_metadata(edge_export: Any, kind: str, marker_op: str) -> None:
    path = edge_export.out.with_name(f"model.{kind}.onnx")
    model = onnx.load(path)
    assert marker_op in {node.op_type for node in model.graph.node}
    props = {p.key: p.value for p in model.metadata_props}
    assert props["seg.precision"] == kind
    assert ModelInfo.from_props(props) == edge_export.info
    session = make_session(path, provider="cpu")
    image = np.random.default_rng(0).random((2, 64, 96, 1), dtype=np.float32)
    prob = session.run(None, {"image": image})[0]
    assert prob.shape == (2, 64, 96, 1) and prob.dtype == np.float32


def test_variant_gate_failure_writes_nothing(edge_export: Any, tmp_path: Path) -> None:
    from seg.export import parity, variants

    image_set = parity.load_images(Path(edge_export.parity.source), {}, max_images=1)
    strict = variants.VariantOptions(min_agreement=0.99, max_delta_f1=-1.0, timing_runs=1)
    out = tmp_path / "model.onnx"
    with pytest.raises(GateError, match=r"model.fp16.onnx: fp16 gate FAILED \(\|Δ membrane F1\| 0\.\d+ > -1, "
                                        r"F1 against labels\)"):
        variants.export_fp16(onnx.load(edge_export.out), out, image_set, edge_export.info, strict)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp16.parity.json"]


def test_without_labels_the_gate_says_it_scored_against_fp32(edge_run: Path, labelled_dir: Path,
                                                               tmp_path: Path) -> None:
    """An image folder with no labels: F1 is scored against the FP32 masks, and the warning, the report and
    its JSON all say so (FP32 is not ground truth)."""
    from seg.export import to_onnx
    from seg.export.variants import NO_LABELS

    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((labelled_dir / "train" / "image").glob("*.png"))[:2]:
        shutil.copy(path, images / path.name)
    out = tmp_path / "model.onnx"
    warning = (rf"^{re.escape(str(images))}: no labels for the gate images, so the FP16/INT8 gates of model.onnx "
               r"score membrane F1 against the FP32 model's masks, not ground truth")
    with pytest.warns(SegWarning, match=warning):
        report = to_onnx(edge_run, out, data=images, fp16=True, max_images=2, timing_runs=1)
    (variant,) = report.variants
    assert variant.passed and variant.f1_reference == NO_LABELS == "fp32 masks (no labels)"
    assert variant.f1_fp32 == 1.0 and variant.delta_f1 == 1.0 - variant.f1_variant
    saved = json.loads(out.with_name("model.fp16.parity.json").read_text())
    assert saved["f1_reference"] == NO_LABELS


def test_int8_is_at_most_a_third_of_fp32_for_the_default_unet(labelled_dir: Path) -> None:
    """Width 16, depth 4 (the `seg train` default): the INT8 file is <= 1/3 of FP32."""
    import keras

    from seg.export import parity, variants
    from seg.export.convert import convert_keras, tidy_checked
    from seg.train.models import ModelSpec, build_model

    keras.utils.set_random_seed(0)
    proto = convert_keras(build_model(ModelSpec()))
    tidy_checked(proto)
    calib = parity.load_images(labelled_dir, {}, max_images=1)
    int8 = variants.quantize_int8(proto, calib, 16, activation=_quant("QUInt8"), weight=_quant("QInt8"),
                                  reduce_range=False)
    assert len(int8.SerializeToString()) <= len(proto.SerializeToString()) / 3


def _quant(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return getattr(QuantType, name)


def test_a_variant_left_by_an_earlier_export_is_named(edge_run: Path, labelled_dir: Path, tmp_path: Path) -> None:
    from seg.export import to_onnx

    out = tmp_path / "model.onnx"
    (tmp_path / "model.int8.onnx").write_bytes(b"an earlier export's")
    with pytest.warns(SegWarning, match=r"model.int8.onnx: left by an earlier export, not made from these weights; "
                                        r"delete it or export with --int8"):
        to_onnx(edge_run, out, data=labelled_dir, max_images=1, timing_runs=1)
    assert (tmp_path / "model.int8.onnx").read_bytes() == b"an earlier export's"  # named, never deleted


def test_a_failed_variant_gate_leaves_no_earlier_variant_and_names_the_others(edge_run: Path, labelled_dir: Path,
                                                                             tmp_path: Path) -> None:
    """The FP32 model is replaced first; an earlier FP16 file (other weights) must not survive a failed FP16
    gate, and an earlier u8 file, not asked for, is named with the flag that remakes it."""
    from seg.export import to_onnx

    out = tmp_path / "model.onnx"
    for name in ("model.fp16.onnx", "model.u8.onnx"):
        (tmp_path / name).write_bytes(b"an earlier export's")
    with pytest.warns(SegWarning, match=r"model.u8.onnx: left by an earlier export, not made from these weights; "
                                        r"delete it or export with --uint8"), \
            pytest.raises(GateError, match=r"model.fp16.onnx: fp16 gate FAILED"):
        to_onnx(edge_run, out, data=labelled_dir, fp16=True, max_delta_f1=-1.0, max_images=1, timing_runs=1)
    assert out.is_file() and not (tmp_path / "model.fp16.onnx").exists()
    assert (tmp_path / "model.u8.onnx").read_bytes() == b"an earlier export's"


def test_the_u8_variant_takes_raw_pixels_and_gives_the_float_models_masks(edge_run: Path, labelled_dir: Path,
                                                                          tmp_path: Path) -> None:
    """``--uint8``: Cast and Div by 255 in front of the graph; fed uint8 tiles, it equals the float32 model fed
    normalised ones (the runtime's division, done in the graph), and it refuses images that are not 8-bit."""
    from seg.export import to_onnx
    from seg.runtime import InputError, Segmenter, read_image

    out = tmp_path / "model.onnx"
    report = to_onnx(edge_run, out, data=labelled_dir, uint8=True, max_images=2, timing_runs=1)
    (variant,) = report.variants
    assert variant.kind == "u8" and variant.passed and variant.mask_agreement == 1.0
    image = read_image(sorted((labelled_dir / "train" / "image").iterdir())[0])
    assert image.dtype == np.uint8
    with Segmenter(out, "cpu") as floats, Segmenter(tmp_path / "model.u8.onnx", "cpu") as raw:
        assert raw.uint8_input and not floats.uint8_input
        np.testing.assert_array_equal(raw.predict(image), floats.predict(image))
        with pytest.raises(InputError, match=r"model.u8.onnx takes 8-bit pixels, this image is uint16; convert it"):
            raw.predict(image.astype(np.uint16) * 257)
        with pytest.raises(InputError, match=r"takes 8-bit pixels, this image is float32"):
            raw.predict(image.astype(np.float32) / 255)
