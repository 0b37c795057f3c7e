"""Explicit pads instead of ``auto_pad``, and the exported models in a second ONNX host (OpenCV DNN)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from seg.export.portable import explicit_pads, second_host_diff
from seg.runtime.io import list_images, read_image
from seg.runtime.preprocess import normalize
from seg.runtime.providers import make_session

cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless) comes with the train extra")


def _conv_graph(mode: str, stride: int) -> onnx.ModelProto:
    """NCHW ``(1, 1, H, W)`` -> a 3x3 convolution with ``auto_pad=mode`` and ``stride`` (seeded weights)."""
    weights = np.random.default_rng(0).standard_normal(9).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=mode, strides=[stride, stride], kernel_shape=[3, 3])
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, None, None]) for name in ("x", "y")]
    graph = helper.make_graph([node], "conv", io[:1], io[1:], [helper.make_tensor("w", TensorProto.FLOAT,
                                                                                   [1, 1, 3, 3], weights)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The NCHW graph in plain onnxruntime (seg's sessions take (N, H, W, 1) models only)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize(("mode", "stride", "pads"), [("SAME_UPPER", 2, [0, 0, 1, 1]), ("SAME_UPPER", 1, [1, 1, 1, 1]),
                                                      ("SAME_LOWER", 2, [1, 1, 0, 0])])
def test_explicit_pads_mean_what_auto_pad_meant(mode: str, stride: int, pads: list[int]) -> None:
    original = _conv_graph(mode, stride)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(original)
    assert explicit_pads(rewritten.graph) == 1
    attrs = {a.name: helper.get_attribute_value(a) for a in rewritten.graph.node[0].attribute}
    assert "auto_pad" not in attrs and attrs["pads"] == pads
    x = np.random.default_rng(1).random((1, 1, 24, 40), dtype=np.float32)  # sides: multiples of the stride
    np.testing.assert_array_equal(_run(rewritten, x), _run(original, x))
    assert explicit_pads(rewritten.graph) == 0  # nothing left to rewrite


@pytest.fixture(scope="module")
def real_slices(labelled_dir: Path) -> list[np.ndarray]:
    paths = list_images(labelled_dir / "train" / "image")[:2]
    return [normalize(read_image(p)) for p in paths]


def _export(spec: Any) -> tuple[bytes, bytes, int]:
    """``(explicit-pads bytes, auto_pad bytes, size multiple)`` of a seeded, untrained model of ``spec``."""
    import keras

    from seg.export.convert import convert_keras, tidy_checked
    from seg.export.source import receptive_field
    from seg.train.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(spec)
    raw = convert_keras(model, 17)
    portable = onnx.ModelProto()
    portable.CopyFrom(raw)
    tidy_checked(portable)
    return portable.SerializeToString(), raw.SerializeToString(), receptive_field(model)[1]


def _onnxruntime(model_bytes: bytes, images: list[np.ndarray], multiple: int) -> list[np.ndarray]:
    from seg.runtime.tiling import pad_to_multiple

    session = make_session(model_bytes, "cpu")
    out = []
    for image in images:
        batch = pad_to_multiple(image, multiple)[None, :, :, None]
        out.append(session.run(None, {"image": batch})[0][0, : image.shape[0], : image.shape[1], 0])
    return out


@pytest.mark.parametrize("kind", ["unet", "cnn"])
def test_default_unet_and_seed_cnn_agree_in_opencv_and_onnxruntime(kind: str, real_slices: list[np.ndarray]) -> None:
    from seg.train.models import ModelSpec

    spec = ModelSpec() if kind == "unet" else ModelSpec(kind="cnn", width=32, depth=4)
    portable, raw, multiple = _export(spec)
    reference = _onnxruntime(portable, real_slices, multiple)
    np.testing.assert_allclose(np.concatenate(reference), np.concatenate(_onnxruntime(raw, real_slices, multiple)),
                               atol=1e-6)  # explicit pads: the same model for onnxruntime
    assert second_host_diff(portable, real_slices, multiple, reference) <= 1e-4
    if kind == "unet":  # the stem's stride-2 SAME_UPPER convolution is what OpenCV misreads
        assert second_host_diff(raw, real_slices, multiple, reference) > 1e-3


def test_the_parity_gate_reports_the_second_host(exported: Any) -> None:
    parity = exported.parity
    assert parity.second_host == f"OpenCV DNN {cv2.__version__}"
    assert parity.second_host_max_abs_diff is not None and parity.second_host_max_abs_diff <= parity.atol
    assert exported.cleanups["explicit_pads"] > 0
    written = onnx.load(str(exported.out))
    assert not [n for n in written.graph.node for a in n.attribute if a.name == "auto_pad" and a.s != b"NOTSET"]
