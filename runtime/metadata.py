"""The ``seg.`` metadata carried inside an exported ONNX model (``metadata_props``, string values).

``export`` writes ``ModelInfo.to_props()``; ``Segmenter`` reads it back with ``ModelInfo.from_props``.
A model without seg metadata still runs, on the documented defaults below, with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

from seg.runtime.errors import InputError, SegWarning
from seg.runtime.preprocess import DTYPE_RANGE

PREFIX = "seg."
FORMAT_VERSION = 1
DEFAULT_TILE = 512
DEFAULT_HALO = 64
DEFAULT_THRESHOLD = 0.5
MAX_LABEL_OFFSET = 2.0
"""Largest ``seg.label_offset`` (px, either axis): more is misregistered labels, not a way of drawing them."""


@dataclass(frozen=True)
class ModelInfo:
    """What a host needs to run a seg model correctly. ``from_defaults`` is True when read from a
    model that carried no seg metadata."""

    format_version: int = FORMAT_VERSION
    model_kind: str = "unknown"
    width: int = 0
    depth: int = 0
    stem: int = 0
    input_layout: str = "NHWC"
    normalization: str = DTYPE_RANGE
    tile_size: int = DEFAULT_TILE
    halo: int = DEFAULT_HALO
    size_multiple: int = 16
    threshold: float = DEFAULT_THRESHOLD
    label_offset: tuple[float, float] = (0.0, 0.0)  # (dy, dx) px the training labels sat from their images
    receptive_field: int = 0
    training_data: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    from_defaults: bool = False

    def to_props(self) -> dict[str, str]:
        """All fields as ``{"seg.<name>": str}`` for ONNX ``metadata_props``."""
        props = {}
        for item in dataclasses.fields(self):
            if item.name == "from_defaults":
                continue
            value = getattr(self, item.name)
            props[PREFIX + item.name] = _text(value)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelInfo:
        """Parse ``metadata_props``; missing seg keys fall back to defaults (``from_defaults=True``)."""
        seg_props = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
        if not seg_props:
            return cls(from_defaults=True)
        values = {}
        for item in dataclasses.fields(cls):
            if item.name in seg_props:
                values[item.name] = _parse(item, seg_props[item.name], source)
        info = cls(**values)
        if info.format_version > FORMAT_VERSION:
            raise InputError(
                f"{source}: seg metadata format {info.format_version} is newer than this runtime "
                f"understands ({FORMAT_VERSION}); upgrade seg-toolkit"
            )
        return info


def _text(value: object) -> str:
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, tuple | list):
        return ",".join(f"{float(v):g}" for v in value)
    return str(value)


def _parse(item: dataclasses.Field, text: str, source: str) -> object:
    kind = {"format_version": int, "width": int, "depth": int, "stem": int, "tile_size": int, "halo": int,
            "size_multiple": int, "receptive_field": int, "threshold": float}.get(item.name)
    try:
        if item.name == "versions":
            return dict(json.loads(text))
        if item.name == "label_offset":
            return _label_offset(text)
        return kind(text) if kind else text
    except (ValueError, TypeError) as exc:
        raise InputError(f"{source}: bad metadata seg.{item.name}={text!r} ({exc})") from None


def _label_offset(text: str) -> tuple[float, float]:
    dy, dx = (float(part) for part in text.split(","))
    if not (abs(dy) <= MAX_LABEL_OFFSET and abs(dx) <= MAX_LABEL_OFFSET):  # NaN fails too
        raise ValueError(f"expected two finite numbers DY,DX within +-{MAX_LABEL_OFFSET:g} px")
    return dy, dx


def read_model_info(session: Any, name: str) -> ModelInfo:
    """The ``seg.`` metadata of an onnxruntime session's model; a model without any warns once
    (``SegWarning``, naming ``name``) and gets the documented defaults."""
    props = dict(session.get_modelmeta().custom_metadata_map)
    info = ModelInfo.from_props(props, source=name)
    if info.from_defaults:
        warnings.warn(
            f"{name}: no seg metadata; using defaults (tile {info.tile_size}, halo {info.halo}, "
            f"threshold {info.threshold}, {info.normalization} normalisation)",
            SegWarning,
            stacklevel=3,
        )
    return info
