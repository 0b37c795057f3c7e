"""Fast unit tests of the gates: label shapes, calibration images, the F1 reference, FP16 clamping."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from seg.export import parity, variants
from seg.runtime.errors import InputError, SegWarning
from seg.runtime.io import write_image


def _dataset(root: Path, names: list[str], image_shape: tuple[int, int] = (32, 48),
             label_shape: tuple[int, int] | None = (32, 48)) -> Path:
    """``root/train/image/<name>.png`` (uint8 ramp) and, unless ``label_shape`` is None, labels of that shape."""
    for folder in ("image", "label"):
        (root / "train" / folder).mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        image = (np.arange(image_shape[0] * image_shape[1]).reshape(image_shape) * (index + 1) % 256).astype(np.uint8)
        write_image(root / "train" / "image" / f"{name}.png", image)
        if label_shape is not None:
            label = np.full(label_shape, 255, np.uint8)
            label[::4] = 0
            write_image(root / "train" / "label" / f"{name}.png", label)
    return root


def test_labels_are_read_beside_their_images(tmp_path: Path) -> None:
    image_set = parity.load_images(_dataset(tmp_path, ["00", "01"]), {}, max_images=2)
    assert image_set.names == ["00", "01", "mosaic-768x1024"]
    for image, label in zip(image_set.images, image_set.labels, strict=True):
        assert label is not None and label.shape == image.shape and label.dtype == np.float32
        assert set(np.unique(label)) <= {0.0, 1.0}


def test_a_label_of_another_shape_is_an_input_error(tmp_path: Path) -> None:
    data = _dataset(tmp_path, ["00"], label_shape=(48, 32))
    label, image = data / "train" / "label" / "00.png", data / "train" / "image" / "00.png"
    message = (f"{label}: label is 48x32 (HxW) but its image {image} is 32x48; "
               "give the label the image's height and width, or remove it")
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        parity.load_images(data, {}, max_images=2)


def test_calibration_reads_no_labels_and_prefers_images_the_gate_does_not_use(tmp_path: Path) -> None:
    data = _dataset(tmp_path, ["00", "01", "02"], label_shape=(8, 8))  # labels unusable, but never read
    gate = parity.ImageSet(str(data), ["00"], [], [])
    calib = parity.load_calibration(None, gate, data)
    assert calib.names == ["01", "02"] and calib.labels == [None, None] and calib.source == str(data)
    other = _dataset(tmp_path / "other", ["00", "05"])  # same names, other files: all calibrate
    assert parity.load_calibration(other, gate, data).names == ["00", "05"]


def test_calib_leaves_out_the_gates_own_files_and_names_its_flag(tmp_path: Path) -> None:
    """``--calib`` given the dataset itself must not calibrate on the images the INT8 gate is judged on."""
    data = _dataset(tmp_path, ["00", "01", "02"])
    gate = parity.ImageSet(str(data), ["00", "01", "mosaic-768x1024"], [], [])
    for calib in (data, data / "train" / "image"):
        assert parity.load_calibration(calib, gate, data).names == ["02"]
    with pytest.raises(InputError, match="no such folder; give --calib a dataset folder"):
        parity.load_calibration(tmp_path / "nowhere", gate, data)


def test_calibrating_on_the_gate_images_is_a_warning(tmp_path: Path) -> None:
    data = _dataset(tmp_path, ["00", "01"])
    gate = parity.ImageSet(str(data), ["00", "01", "mosaic-768x1024"], [], [])
    with pytest.warns(SegWarning, match=r"every image is one of the parity gate's, so INT8 calibrates on the "):
        calib = parity.load_calibration(None, gate, data)
    assert calib.names == ["00", "01"] and calib.source == f"{data} (the gate's own images: no others)"


def _pairs() -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    """Two images: FP32 right on both; the variant flips half of the first image's membrane pixels."""
    truth = np.ones((8, 8), np.float32)
    truth[::2] = 0.0
    ref = np.where(truth > 0, 0.9, 0.1).astype(np.float32)
    got = ref.copy()
    got[0] = 0.9  # one membrane row of four read as interior
    return [(ref, got), (ref, ref.copy())], [truth, truth]


def test_f1_is_scored_against_labels_when_every_image_has_one() -> None:
    pairs, labels = _pairs()
    f1_fp32, f1_variant, reference = variants._f1_pair(pairs, labels, 0.5)
    assert reference == "labels" and f1_fp32 == pytest.approx(1.0) and f1_variant < 1.0


def test_f1_leaves_out_unlabelled_images_and_says_how_many_had_labels() -> None:
    pairs, labels = _pairs()
    f1_fp32, f1_variant, reference = variants._f1_pair(pairs, [labels[0], None], 0.5)
    assert reference == "labels (1 of 2 images)"
    assert f1_fp32 == pytest.approx(1.0)
    assert f1_variant == pytest.approx(variants._f1_pair(pairs[:1], labels[:1], 0.5)[1])


def test_without_any_label_f1_is_against_fp32_and_named_so() -> None:
    pairs, _ = _pairs()
    f1_fp32, f1_variant, reference = variants._f1_pair(pairs, [None, None], 0.5)
    assert reference == variants.NO_LABELS and f1_fp32 == 1.0 and f1_variant < 1.0
    image_set = parity.ImageSet("some/folder", ["a", "b"], [pairs[0][0]] * 2, [None, None])
    with pytest.warns(SegWarning, match=r"^some/folder: no labels for the gate images, so the FP16/INT8 gates "
                                        r"of model.onnx score membrane F1 against the FP32 model's masks"):
        variants.warn_if_unlabelled(image_set, Path("out/model.onnx"))


def test_a_failed_f1_gate_names_its_reference() -> None:
    report = variants.VariantReport("fp16", Path("m.fp16.onnx"), 1, 0.5, 1.0, 1.0, 0.9, 0.1, variants.NO_LABELS,
                                    1.0, 1.0, 0.99, 0.01)
    assert variants._reason(report) == "|Δ membrane F1| 0.1000 > 0.01, F1 against fp32 masks (no labels)"


def test_fp16_conversion_counts_the_extremes_it_clamps() -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.array([1e-9, 0.5, 3e4], np.float32), "w")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "mul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    half, clamped = variants._to_float16(proto)
    assert clamped == 2  # 1e-9 up to 1e-7 and 3e4 down to 1e4
    onnx.checker.check_model(half)
