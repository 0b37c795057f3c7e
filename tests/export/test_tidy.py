"""``seg.export.tidy``: the tf2onnx crop-after-up-convolution pattern is removed exactly, and only where exact."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from seg.export import tidy
from seg.runtime.errors import SegWarning


def _upconv_graph(kernel: int, stride: int, pad_fill: float = 0.0, crop: int = 0) -> onnx.ModelProto:
    """``x (1, 2, H, W)`` -> ConvTranspose(k, s) -> Slice to ``(s*H, s*W)`` -> Pad by what is missing, both from
    ``Shape`` ops as tf2onnx writes them -> Concat with a nearest up-sampled copy of x -> ``y``."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((2, 3, kernel, kernel)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "hw_axes"),
             numpy_helper.from_array(np.array([0, 0], np.int64), "zeros"),
             numpy_helper.from_array(np.array([stride, stride], np.int64), "stride"),
             numpy_helper.from_array(np.array(pad_fill, np.float32), "fill"),
             numpy_helper.from_array(np.array([1, 1, stride, stride], np.float32), "scales"),
             numpy_helper.from_array(np.array([crop, crop], np.int64), "crop")]
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w", "b"], ["up"], kernel_shape=[kernel, kernel],
                         strides=[stride, stride]),
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Gather", ["x_shape", "hw_axes"], ["x_hw"]),
        helper.make_node("Mul", ["x_hw", "stride"], ["want_hw"]),
        helper.make_node("Sub", ["want_hw", "crop"], ["end_hw"]),  # crop > 0: a real crop, padded back
        helper.make_node("Slice", ["up", "zeros", "end_hw", "hw_axes"], ["cropped"]),
        helper.make_node("Shape", ["cropped"], ["got_shape"]),
        helper.make_node("Gather", ["got_shape", "hw_axes"], ["got_hw"]),
        helper.make_node("Sub", ["want_hw", "got_hw"], ["missing"]),
        # pads = (N, C, H, W) begins, then ends: zeros except what is missing at the bottom/right
        helper.make_node("Concat", ["zeros", "zeros", "zeros", "missing"], ["pads"], axis=0),
        helper.make_node("Neg", ["missing"], ["unused"]),  # dead: nothing reads it
        helper.make_node("Pad", ["cropped", "pads", "fill"], ["padded"], mode="constant"),
        helper.make_node("Resize", ["x", "", "scales"], ["x_up"], mode="nearest"),
        helper.make_node("Concat", ["padded", "x_up"], ["y"], axis=1),
    ]
    graph = helper.make_graph(nodes, "upconv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, None, None])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> Any:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


@pytest.mark.parametrize("shape", [(1, 2, 5, 7), (1, 2, 16, 16)])
def test_identity_crop_is_removed_and_output_unchanged(shape: tuple[int, ...]) -> None:
    model = _upconv_graph(kernel=2, stride=2)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    before = _run(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SegWarning)  # a proven rewrite is silent
        counts = tidy.tidy(model)
    onnx.checker.check_model(model, full_check=True)
    assert counts == {"identity_crops": 1, "reverted": 0, "dead_nodes": 11}
    assert "Slice" not in _ops(model) and "Pad" not in _ops(model) and "Shape" not in _ops(model)
    assert _ops(model).count("ConvTranspose") == 1
    np.testing.assert_array_equal(_run(model, x), before)


def test_overlapping_kernel_keeps_its_crop() -> None:
    """kernel 3, stride 2: ConvTranspose gives 2H+1 rows, so the Slice really crops; nothing may change."""
    model = _upconv_graph(kernel=3, stride=2)
    x = np.random.default_rng(2).standard_normal((1, 2, 6, 4)).astype(np.float32)
    before = _run(model, x)
    assert tidy.drop_identity_crops(model.graph) == 0
    assert {"Slice", "Pad"} <= set(_ops(model))
    np.testing.assert_array_equal(_run(model, x), before)


def test_a_crop_that_is_not_the_identity_is_undone_with_a_warning() -> None:
    """Slice drops the last row/column and Pad puts zeros back: same shape, same pattern, other values.
    The pattern match cannot see the computed amounts; tidy's trial run does, reverts and says so."""
    model = _upconv_graph(kernel=2, stride=2, crop=1)
    x = np.random.default_rng(3).standard_normal((1, 2, 6, 5)).astype(np.float32)
    before = _run(model, x)
    with pytest.warns(SegWarning) as record:
        counts = tidy.tidy(model, name="runs/train/a/model.keras")
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith("runs/train/a/model.keras: kept tf2onnx's Slice/Pad crop after ConvTranspose 'up' "
                              "(output 'y' changed by up to ")
    assert "on a (1, 2, 128, 256) trial input); the model is still exact" in message and "\n" not in message
    assert counts == {"identity_crops": 0, "reverted": 1, "dead_nodes": 1}  # the rewrite undone, the dead Neg gone
    assert {"Slice", "Pad", "ConvTranspose"} <= set(_ops(model)) and "Neg" not in _ops(model)
    np.testing.assert_array_equal(_run(model, x), before)


def test_a_rewrite_that_cannot_be_run_is_unproven() -> None:
    """A trial that cannot run proves nothing: ``output_difference`` gives a reason, never "" (same)."""
    good = _upconv_graph(kernel=2, stride=2).SerializeToString()
    assert tidy.output_difference(good, good) == ""
    reason = tidy.output_difference(good, b"not an onnx model")
    assert reason.startswith("the trial run failed, so the rewrite is unproven: ") and "\n" not in reason


def test_a_pad_that_is_a_graph_output_is_kept() -> None:
    model = _upconv_graph(kernel=2, stride=2)
    model.graph.output.append(helper.make_tensor_value_info("padded", TensorProto.FLOAT, [1, 3, None, None]))
    assert tidy.drop_identity_crops(model.graph) == 0


def test_nonzero_pad_fill_is_not_an_identity() -> None:
    model = _upconv_graph(kernel=2, stride=2, pad_fill=1.0)
    assert tidy.drop_identity_crops(model.graph) == 0


def test_prune_removes_dead_nodes_and_their_initializers() -> None:
    model = _upconv_graph(kernel=2, stride=2)
    model.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "orphan"))
    model.graph.node.append(helper.make_node("Relu", ["orphan"], ["orphan_relu"]))
    removed = tidy.prune_dead_nodes(model.graph)
    assert removed == 2  # the unused Neg and the orphan Relu
    names = {init.name for init in model.graph.initializer}
    assert "orphan" not in names and {"w", "b", "scales"} <= names
    assert "unused" not in {out for node in model.graph.node for out in node.output}


def test_prune_leaves_graphs_with_subgraphs_alone() -> None:
    """An If body may read outer names that no top-level node input shows; pruning must not guess."""
    model = _upconv_graph(kernel=2, stride=2)
    branch = helper.make_graph([helper.make_node("Identity", ["b"], ["branch_out"])], "branch", [],
                               [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [3])])
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["if_out"], then_branch=branch, else_branch=branch))
    nodes = len(model.graph.node)
    assert tidy.prune_dead_nodes(model.graph) == 0 and len(model.graph.node) == nodes


def _unit_axis_graph(opset: int, leading: int = 1) -> onnx.ModelProto:
    """image (N, H, W, 1) -> 2 * image with a leading unit axis: (1, N, H, W, 1), as tf2onnx sometimes leaves it."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    unsqueeze = (helper.make_node("Unsqueeze", ["doubled", "axes"], ["prob"]) if opset >= 13
                 else helper.make_node("Unsqueeze", ["doubled"], ["prob"], axes=[0]))
    nodes = [helper.make_node("Add", ["image", "image"], ["doubled"]), unsqueeze]
    graph = helper.make_graph(
        nodes, "unit", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", "H", "W", 1])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [leading, "N", "H", "W", 1])],
        [axes] if opset >= 13 else [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("opset", [11, 17])
def test_a_leading_unit_axis_on_the_output_is_squeezed_away(opset: int) -> None:
    proto = _unit_axis_graph(opset)
    assert tidy.squeeze_leading_unit_output(proto)
    onnx.checker.check_model(proto, full_check=True)
    assert [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == ["N", "H", "W", 1]
    image = np.random.default_rng(0).random((2, 8, 6, 1), dtype=np.float32)
    (prob,) = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"image": image})
    np.testing.assert_array_equal(prob, 2 * image)
    assert not tidy.squeeze_leading_unit_output(proto)  # already 4-D: nothing to do
    assert not tidy.squeeze_leading_unit_output(_unit_axis_graph(17, leading=3))  # not a unit axis: left alone


def test_a_model_with_the_largest_size_multiple_is_tidied() -> None:
    """A U-Net whose inputs must be multiples of 128 (depth 6, stem 2) runs at the trial shapes, so its
    identity crops are removed, not all undone as unproven."""
    import keras

    from seg.export.convert import convert_keras, tidy_checked
    from seg.train.models import MAX_SIZE_MULTIPLE, ModelSpec, build_model

    spec = ModelSpec(width=1, depth=6)
    assert spec.size_multiple == MAX_SIZE_MULTIPLE
    keras.utils.set_random_seed(0)
    proto = convert_keras(build_model(spec))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SegWarning)
        cleanups = tidy_checked(proto, "deep")
    assert cleanups["reverted"] == 0 and cleanups["identity_crops"] > 0
