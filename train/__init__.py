"""seg training: datasets, augmentation, Keras models and the fit loop.

``import seg.train`` is cheap: TensorFlow loads only when a model is built or trained.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines drown the progress bar

__all__ = ["TrainConfig", "TrainResult", "fit", "resume"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from seg.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'seg.train' has no attribute {name!r}")
