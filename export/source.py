"""What is being exported: a Keras model file, the run config next to it, and facts read off the graph.

``load_source(weights)`` accepts a run folder (holding ``model.keras`` + ``config.json``) or a ``.keras``
file (its folder's ``config.json`` is used when present). The Keras model is loaded with
``safe_mode=True``: a model with a ``Lambda`` layer (arbitrary code) is refused, not executed.
TensorFlow/Keras are imported inside functions only.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg.runtime.errors import InputError
from seg.runtime.tiling import pad_to_multiple

BEST_MODEL = "model.keras"
CONFIG = "config.json"


@dataclass(frozen=True)
class Source:
    """A loaded Keras model and its run config (``{}`` when the model has no ``config.json`` beside it)."""

    weights: Path
    model: Any
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path | None:
        """The dataset folder the run was trained on, from ``config.json`` (``data.dir``)."""
        folder = self.config.get("data", {}).get("dir")
        return Path(folder) if folder else None

    @property
    def threshold(self) -> float:
        return float(self.config.get("threshold", 0.5))

    @property
    def label_offset(self) -> tuple[float, float]:
        """``(dy, dx)`` px the training labels sat from their images (``seg.train.offset``); 0 for older runs."""
        train = self.config.get("train")
        dy, dx = (train.get("label_offset") if isinstance(train, dict) else None) or (0.0, 0.0)
        return float(dy), float(dx)


def model_path(weights: str | Path) -> Path:
    """The ``.keras`` file for a run folder or a model path; ``InputError`` when there is none."""
    weights = Path(weights)
    if weights.is_dir():
        weights = weights / BEST_MODEL
        if not weights.is_file():
            raise InputError(f"{weights}: no such file; the run folder holds no best model (train it first)")
    if not weights.exists():
        raise InputError(f"{weights}: no such weights file; give a run folder or a .keras model")
    if not weights.is_file():
        raise InputError(f"{weights}: not a file; give a run folder or a .keras model")
    return weights


def load_source(weights: str | Path) -> Source:
    """Load the Keras model (``safe_mode=True``) and the ``config.json`` beside it."""
    path = model_path(weights)
    return Source(path, load_keras(path), read_config(path.parent / CONFIG))


def read_config(path: Path) -> dict[str, Any]:
    """A run's ``config.json`` as a dict; ``{}`` when absent, ``InputError`` when corrupt."""
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable or corrupt JSON ({exc}); fix or delete it") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def load_keras(path: Path) -> Any:
    """``keras.models.load_model(path, compile=False, safe_mode=True)`` with one-line errors, computing in
    float32 (``in_float32``)."""
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a Keras model (.keras files are zip archives); give a model.keras")
    import keras

    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError/TypeError/OSError/... for bad archives
        raise InputError(f"{path}: cannot load as a Keras model: {_first_line(exc)}") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise InputError(f"{path}: expected one input and one output, got {len(model.inputs)}/{len(model.outputs)}")
    try:
        return in_float32(model)
    except Exception as exc:  # a custom layer that cannot be rebuilt from its config with another dtype
        raise InputError(f"{path}: cannot rebuild it computing in float32: {_first_line(exc)}; save the model "
                         "under the float32 policy") from None


def in_float32(model: Any) -> Any:
    """``model`` with every layer, nested models' included, computing in float32. A model trained with
    ``--amp`` keeps its mixed-precision policy in the file, and converted as it is its ONNX graph would compute
    in float16 or bfloat16. The weights are copied (a mixed policy keeps them in float32 already; a model
    stored in pure float16 or bfloat16 has them converted). A float32 model is returned as it is."""
    if compute_dtypes(model) == {"float32"}:
        return model
    import keras

    def float32_layer(layer: Any) -> Any:
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    clone = keras.models.clone_model(model, clone_function=float32_layer, recursive=True)
    clone.set_weights(model.get_weights())
    return clone


def compute_dtypes(model: Any) -> set[str]:
    """The dtype policies (``"float32"``, ``"mixed_bfloat16"``, ...) the layers of ``model`` compute in, nested
    models' layers included; input layers, which compute nothing, are left out."""
    import keras

    policies: set[str] = set()
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            policies |= compute_dtypes(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            policies.add(layer.dtype_policy.name)
    return policies


def keras_predict(model: Any, images: list[np.ndarray]) -> list[np.ndarray]:
    """Whole-image Keras predictions: each ``(H, W) float32 in [0, 1]`` image, padded by the runtime's one
    whole-image rule (``seg.runtime.tiling.pad_to_multiple`` to the graph's size multiple), run through
    ``model`` (a loaded Keras model) and cropped back -> ``(H, W) float32 in [0, 1]``."""
    multiple = receptive_field(model)[1]
    out = []
    for image in images:
        padded = pad_to_multiple(np.asarray(image, np.float32), multiple)
        prob = np.asarray(model(padded[None, :, :, None], training=False), np.float32)
        out.append(prob[0, : image.shape[0], : image.shape[1], 0])
    return out


def _first_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    if "safe_mode" in text or "Lambda" in text:
        return "it contains a Lambda layer (arbitrary code), refused with safe_mode=True; rebuild it without Lambda"
    return (text[:200] + "...") if len(text) > 200 else text or type(exc).__name__


def receptive_field(model: Any) -> tuple[int, int]:
    """``(receptive_field, size_multiple)`` in pixels, read off the Keras graph config.

    Convolutions add ``(k - 1) * dilation * jump``, poolings ``(p - 1) * jump``, a transposed convolution
    divides the jump by its stride and adds ``(k - 1) * jump``; merges take the widest input.
    ``size_multiple`` is the largest jump (product of downsampling strides).
    """
    layers = model.get_config()["layers"]
    state: dict[str, tuple[float, float]] = {}
    previous = (1.0, 1.0)
    widest_jump = 1.0
    for layer in layers:
        parents = _parent_names(layer.get("inbound_nodes"))
        inputs = [state[p] for p in parents if p in state] or [previous]
        field_px, jump = max(inputs)
        field_px, jump = _grow(layer["class_name"], layer["config"], field_px, jump)
        widest_jump = max(widest_jump, jump)
        previous = state[layer.get("name", layer["config"].get("name"))] = (field_px, jump)
    return math.ceil(previous[0]), int(round(widest_jump))


def _grow(kind: str, config: dict[str, Any], field_px: float, jump: float) -> tuple[float, float]:
    if "kernel_size" in config:
        kernel, stride = config["kernel_size"][0], config.get("strides", [1])[0]
        if "Transpose" in kind:
            jump /= stride
            return field_px + (kernel - 1) * jump, jump
        dilation = config.get("dilation_rate", [1])[0]
        return field_px + (kernel - 1) * dilation * jump, jump * stride
    if "pool_size" in config:
        pool = config["pool_size"][0]
        stride = (config.get("strides") or config["pool_size"])[0]
        return field_px + (pool - 1) * jump, jump * stride
    if kind == "UpSampling2D":
        return field_px, jump / config["size"][0]
    return field_px, jump


def _parent_names(nodes: Any) -> list[str]:
    """Names of the layers feeding a functional-model layer (``keras_history`` entries), in order."""
    names: list[str] = []
    if isinstance(nodes, dict):
        if nodes.get("class_name") == "__keras_tensor__":
            return [nodes["config"]["keras_history"][0]]
        nodes = list(nodes.values())
    if isinstance(nodes, list):
        for item in nodes:
            names.extend(_parent_names(item))
    return names
