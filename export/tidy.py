"""Exact clean-ups of the tf2onnx graph that onnxruntime cannot do itself (its shapes are dynamic).

tf2onnx turns each Keras ``Conv2DTranspose(kernel=s, strides=s, padding="valid")`` into a ``ConvTranspose``
followed by a ``Slice`` to TensorFlow's output size and a ``Pad`` by what is missing, both computed at run
time from ``Shape`` ops. For kernel == stride and no padding the ONNX output is already exactly
``(s*H, s*W)``, so the Slice/Pad pair is the identity, yet it copies the up-sampled map twice, keeps the
``Shape`` arithmetic that computes the amounts alive and breaks onnxruntime's blocked-layout (NCHWc) chain.
``drop_identity_crops`` bypasses those pairs; ``prune_dead_nodes`` then removes what no output needs.
The crop amounts are computed at run time, so the pattern match alone cannot prove them zero: ``tidy``
also runs the graph before and after on two random inputs of other sizes and keeps the rewrite only if the
outputs are identical; otherwise it undoes it with a ``SegWarning`` (and ``seg export``'s parity gate
checks the result against Keras anyway).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

import onnx

from seg.runtime.errors import SegWarning

if TYPE_CHECKING:
    import numpy as np

TRIAL_SHAPES = ((1, 128, 256), (2, 384, 128))
"""(batch, then sizes for the other dynamic dims): multiples of 128, the largest size multiple a model may
have (``seg.train.models.MAX_SIZE_MULTIPLE``), so every model runs at both."""


def tidy(proto: onnx.ModelProto, name: str = "model") -> dict[str, int]:
    """Apply every clean-up to ``proto`` in place; returns how many places each one changed.

    Keys: ``identity_crops`` (Slice/Pad pairs bypassed), ``dead_nodes`` (nodes removed) and ``reverted``
    (identity-crop rewrites undone). The crop rewrites are kept only if every output is bit-identical on
    ``TRIAL_SHAPES`` random inputs; otherwise (outputs differ, or the graph cannot run at those sizes) all
    of them are undone, ``reverted`` counts them and one ``SegWarning`` names ``name``, the ConvTranspose
    nodes whose crops were kept and why. The model stays exact either way, only slower on the CPU."""
    before = proto.SerializeToString()
    upconvs = [_node_name(upconv) for _, upconv in identity_crops(proto.graph)]
    counts = {"identity_crops": drop_identity_crops(proto.graph), "reverted": 0}
    counts["dead_nodes"] = prune_dead_nodes(proto.graph)
    why = output_difference(before, proto.SerializeToString()) if counts["identity_crops"] else ""
    if why:
        proto.ParseFromString(before)
        counts = {"identity_crops": 0, "reverted": len(upconvs), "dead_nodes": prune_dead_nodes(proto.graph)}
        warnings.warn(f"{name}: kept tf2onnx's Slice/Pad crop after ConvTranspose {', '.join(upconvs)} "
                      f"({why}); the model is still exact, only slower on the CPU", SegWarning, stacklevel=2)
    return counts


def output_difference(reference: bytes, candidate: bytes) -> str:
    """``""`` when both models give bit-identical outputs on random float32 inputs in [0, 1) of
    ``TRIAL_SHAPES``; otherwise a one-line reason: the first output that differs, by how much and at which
    input shape, or why the trial could not run (that too counts as a difference: nothing is proved)."""
    import numpy as np
    import onnxruntime as ort

    try:
        sessions = [ort.InferenceSession(model, providers=["CPUExecutionProvider"])
                    for model in (reference, candidate)]
        names = [value.name for value in sessions[0].get_outputs()]
        rng = np.random.default_rng(0)
        for trial in TRIAL_SHAPES:
            feeds = {value.name: rng.random(_trial_shape(value.shape, trial), dtype=np.float32)
                     for value in sessions[0].get_inputs()}
            outputs = [session.run(None, feeds) for session in sessions]
            for name, a, b in zip(names, *outputs, strict=True):
                if a.shape != b.shape or not np.array_equal(a, b):
                    return _difference(name, a, b, next(iter(feeds.values())).shape)
    except Exception as exc:  # onnxruntime raises its own types for graphs it cannot load or run
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        return f"the trial run failed, so the rewrite is unproven: {type(exc).__name__}: {first_line}"
    return ""


def _difference(name: str, a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> str:
    """One line: how output ``name`` differs between ``a`` and ``b`` on a trial input of ``shape``."""
    import numpy as np

    if a.shape != b.shape:
        return f"output {name!r} changed shape from {a.shape} to {b.shape} on a {shape} trial input"
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return f"output {name!r} changed by up to {np.nanmax(diff):.3g} on a {shape} trial input"


def _trial_shape(shape: list[object], trial: tuple[int, ...]) -> tuple[int, ...]:
    sizes = iter(trial[1:] * len(shape))
    return tuple(dim if isinstance(dim, int) else (trial[0] if index == 0 else next(sizes))
                 for index, dim in enumerate(shape))


def drop_identity_crops(graph: onnx.GraphProto) -> int:
    """Rewire consumers of ``Pad(Slice(ConvTranspose(x)))`` to the ConvTranspose output where the crop is
    provably the identity (kernel == stride, no pads, output_padding or output_shape, dilation 1); returns
    how many were rewired. The Slice/Pad nodes stay until ``prune_dead_nodes``."""
    found = identity_crops(graph)
    for pad, upconv in found:
        _rename_uses(graph, pad.output[0], upconv.output[0])
    return len(found)


def identity_crops(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """The ``(Pad, ConvTranspose)`` node pairs that ``drop_identity_crops`` would rewire, in graph order."""
    producers = {output: node for node in graph.node for output in node.output}
    outputs = {value.name for value in graph.output}
    found = []
    for pad in [node for node in graph.node if node.op_type == "Pad" and node.output[0] not in outputs]:
        crop = producers.get(pad.input[0])
        if crop is None or crop.op_type != "Slice" or not _pad_is_zero_constant(pad, graph) or _has_steps(crop, graph):
            continue
        upconv = producers.get(crop.input[0])
        if upconv is None or upconv.op_type != "ConvTranspose" or not _fills_its_output(upconv):
            continue
        found.append((pad, upconv))
    return found


def _node_name(node: onnx.NodeProto) -> str:
    return repr(node.name or node.output[0])


def prune_dead_nodes(graph: onnx.GraphProto) -> int:
    """Remove nodes (and initializers) that no graph output depends on; returns the number of nodes removed.
    Graphs with subgraphs (If/Loop/Scan bodies may read outer names) are left alone."""
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in graph.node for attr in node.attribute):
        return 0
    producers = {output: index for index, node in enumerate(graph.node) for output in node.output}
    live: set[int] = set()
    stack = [value.name for value in graph.output]
    while stack:
        index = producers.get(stack.pop())
        if index is None or index in live:
            continue
        live.add(index)
        stack.extend(name for name in graph.node[index].input if name)
    kept = [node for index, node in enumerate(graph.node) if index in live]
    removed = len(graph.node) - len(kept)
    used = {name for node in kept for name in node.input} | {value.name for value in graph.input}
    initializers = [init for init in graph.initializer if init.name in used]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return removed


def _fills_its_output(node: onnx.NodeProto) -> bool:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    kernel, strides = list(attrs.get("kernel_shape", [])), list(attrs.get("strides", []))
    if not kernel or kernel != strides:
        return False
    if any(attrs.get("pads", [])) or any(attrs.get("output_padding", [])) or attrs.get("output_shape"):
        return False
    if any(d != 1 for d in attrs.get("dilations", [])):
        return False
    return attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID")


def _pad_is_zero_constant(pad: onnx.NodeProto, graph: onnx.GraphProto) -> bool:
    """A constant-mode Pad whose fill value (if any) is a zero initializer (pads may be computed)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pad.attribute}
    if attrs.get("mode", b"constant") != b"constant" or attrs.get("value", 0.0) != 0.0:  # opset < 11: value attr
        return False
    if len(pad.input) < 3 or not pad.input[2]:
        return True
    values = {init.name: init for init in graph.initializer}
    fill = values.get(pad.input[2])
    return fill is not None and not onnx.numpy_helper.to_array(fill).any()


def _has_steps(crop: onnx.NodeProto, graph: onnx.GraphProto) -> bool:
    """A Slice with steps other than a constant all-ones tensor (a strided crop is never the identity)."""
    if len(crop.input) < 5 or not crop.input[4]:
        return False
    steps = next((init for init in graph.initializer if init.name == crop.input[4]), None)
    return steps is None or bool((onnx.numpy_helper.to_array(steps) != 1).any())


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Point every node input (and graph output) named ``old`` at ``new``."""
    for node in graph.node:
        node.input[:] = _swap(node.input, old, new)
    for value in graph.output:
        if value.name == old:
            value.name = new


def _swap(names: Iterable[str], old: str, new: str) -> list[str]:
    return [new if name == old else name for name in names]


def squeeze_leading_unit_output(proto: onnx.ModelProto) -> bool:
    """Make a ``(1, N, H, W, C)`` graph output ``(N, H, W, C)`` again; True when it did.

    Keras 3 runs convolutions through a 5-D reshape, and tf2onnx 1.17 sometimes drops the final Squeeze
    that undoes it: which optimiser pass wins depends on Python's string-hash order, so the same model
    converts either way from one process to the next. The values are right, only the leading unit axis
    is extra; the parity gate still compares the result with Keras."""
    graph = proto.graph
    dims = graph.output[0].type.tensor_type.shape.dim
    if len(dims) != 5 or dims[0].dim_value != 1:
        return False
    name = graph.output[0].name
    inner = f"{name}__with_unit_axis"
    for node in graph.node:
        node.output[:] = _swap(node.output, name, inner)
        node.input[:] = _swap(node.input, name, inner)
    opset = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), 17)
    if opset >= 13:
        axes = f"{name}__unit_axis"
        graph.initializer.append(onnx.helper.make_tensor(axes, onnx.TensorProto.INT64, [1], [0]))
        graph.node.append(onnx.helper.make_node("Squeeze", [inner, axes], [name], name=f"{name}__squeeze"))
    else:
        graph.node.append(onnx.helper.make_node("Squeeze", [inner], [name], name=f"{name}__squeeze", axes=[0]))
    del dims[0]
    return True
