"""seg export: Keras -> ONNX with tf2onnx, ``seg.`` metadata inside the model, and a parity gate.

``to_onnx``, ``write_package`` (a bioimage.io model package for an exported model, ``seg.export.bioimageio``)
and the report types load lazily, so ``import seg.export`` stays cheap (no onnx, no TensorFlow).
``load_keras`` and ``keras_predict`` are the one way the toolkit loads and runs a Keras model (evaluation,
figures, the benchmark's Keras baseline), with the runtime's whole-image padding rule; a model trained
in mixed precision (``seg train --amp``) is loaded computing in float32, as it is exported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from seg.export.bioimageio import write_package
    from seg.export.convert import ExportReport, to_onnx
    from seg.export.parity import ParityReport
    from seg.export.source import keras_predict, load_keras
    from seg.export.variants import VariantReport

__all__ = ["ExportReport", "ParityReport", "VariantReport", "keras_predict", "load_keras", "to_onnx", "write_package"]

_HOMES = {"to_onnx": "seg.export.convert", "ExportReport": "seg.export.convert", "ParityReport": "seg.export.parity",
          "VariantReport": "seg.export.variants", "load_keras": "seg.export.source",
          "keras_predict": "seg.export.source", "write_package": "seg.export.bioimageio"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'seg.export' has no attribute {name!r}")
