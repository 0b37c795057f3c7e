"""A graph every ONNX host reads alike, and the check that one other host does.

tf2onnx writes Keras "same" convolutions with ``auto_pad=SAME_UPPER``. Hosts disagree on it: OpenCV DNN
reads a stride-2 ``SAME_UPPER`` convolution as ``SAME_LOWER`` (padding the top/left instead of the
bottom/right), which shifts the stem model's output. ``explicit_pads`` writes the same padding as explicit
``pads``: exact for inputs whose height and width are multiples of each stride, which every seg model's
input is (a multiple of its size multiple). ``second_host_diff`` runs the model in OpenCV DNN
(``opencv-python-headless``, part of the ``train`` extra) and compares it with onnxruntime.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from seg.runtime.errors import InputError
from seg.runtime.tiling import pad_to_multiple

SAME = ("SAME_UPPER", "SAME_LOWER")
PADDED_OPS = ("Conv", "MaxPool", "AveragePool", "LpPool")


def explicit_pads(graph: onnx.GraphProto) -> int:
    """Replace ``auto_pad=SAME_UPPER/SAME_LOWER`` on convolutions and poolings with the explicit ``pads``
    they mean for inputs that are multiples of the stride; returns how many nodes changed."""
    weights = {tensor.name: list(tensor.dims) for tensor in graph.initializer}
    changed = 0
    for node in graph.node:
        attrs = {attr.name: attr for attr in node.attribute}
        mode = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
        if node.op_type not in PADDED_OPS or mode not in SAME:
            continue
        kernel = _ints(attrs, "kernel_shape") or weights.get(node.input[1], [])[2:]
        if not kernel:
            raise InputError(f"{node.op_type} node {node.name!r}: auto_pad {mode} with an unknown kernel size")
        strides = _ints(attrs, "strides") or [1] * len(kernel)
        dilations = _ints(attrs, "dilations") or [1] * len(kernel)
        totals = [max((k - 1) * d + 1 - s, 0) for k, s, d in zip(kernel, strides, dilations, strict=True)]
        smaller, larger = [t // 2 for t in totals], [t - t // 2 for t in totals]
        begin, end = (smaller, larger) if mode == "SAME_UPPER" else (larger, smaller)
        node.attribute.remove(attrs["auto_pad"])
        node.attribute.append(helper.make_attribute("pads", begin + end))
        changed += 1
    return changed


def _ints(attrs: dict[str, onnx.AttributeProto], name: str) -> list[int]:
    return list(attrs[name].ints) if name in attrs else []


def opencv_version() -> str | None:
    """OpenCV's version, or None when ``cv2`` cannot be imported."""
    try:
        import cv2
    except ImportError:
        return None
    return str(cv2.__version__)


def second_host_diff(model_bytes: bytes, images: Sequence[np.ndarray], multiple: int,
                     reference: Sequence[np.ndarray]) -> float:
    """Max |OpenCV DNN - reference| over ``images`` (``(H, W) float32 in [0, 1]``, each padded to
    ``multiple`` like every engine pads, one at a time); ``reference`` holds onnxruntime's ``(H, W)``
    probabilities for the same images. Raises ``InputError`` when OpenCV cannot read the graph."""
    import cv2

    try:
        net = cv2.dnn.readNetFromONNX(np.frombuffer(model_bytes, np.uint8))
    except cv2.error as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(f"OpenCV DNN {cv2.__version__} cannot read the exported graph: {first}") from None
    worst = 0.0
    for image, expected in zip(images, reference, strict=True):
        padded = np.ascontiguousarray(pad_to_multiple(image, multiple)[None, :, :, None], np.float32)
        net.setInput(padded)
        got = np.asarray(net.forward(), np.float32).reshape(padded.shape)[0, : image.shape[0], : image.shape[1], 0]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst
