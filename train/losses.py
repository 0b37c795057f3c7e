"""Losses over interior probabilities ``(N, H, W, 1)`` in [0, 1] against 0/1 labels (1 = interior).

``mse`` is the seed's (and default) loss. ``dice`` is the soft Dice loss of the membrane class, the
minority class that the scores are about. ``mse`` and ``bce`` give one value per pixel, so per-pixel loss
weights (``seg.train.weights``) apply to them; ``dice`` and ``bce-dice`` give one value per crop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LOSSES = ("mse", "bce", "dice", "bce-dice")
PER_PIXEL_LOSSES = ("mse", "bce")
"""The losses that per-pixel weights (border weights) can weight."""


def _serializable(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Register ``fn`` with Keras so saved models that use it reload (for ``--resume``)."""
    import keras

    return keras.saving.register_keras_serializable(package="seg")(fn)


def get_loss(name: str) -> Callable[[Any, Any], Any] | str:
    """A Keras loss for ``name`` (one of ``LOSSES``)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    if name == "mse":
        return "mean_squared_error"
    if name == "bce":
        return "binary_crossentropy"
    return membrane_dice_loss if name == "dice" else bce_dice_loss


@_serializable
def membrane_dice_loss(y_true: Any, y_pred: Any) -> Any:
    """``1 - soft Dice`` of the membrane class (``1 - y``), per sample."""
    from keras import ops

    membrane_true = 1.0 - ops.cast(y_true, y_pred.dtype)
    membrane_pred = 1.0 - y_pred
    axes = (1, 2, 3)
    overlap = ops.sum(membrane_true * membrane_pred, axis=axes)
    total = ops.sum(membrane_true, axis=axes) + ops.sum(membrane_pred, axis=axes)
    return 1.0 - (2.0 * overlap + 1.0) / (total + 1.0)


@_serializable
def bce_dice_loss(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy plus membrane Dice loss, per sample."""
    from keras import losses, ops

    bce = ops.mean(losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))
    return bce + membrane_dice_loss(y_true, y_pred)
