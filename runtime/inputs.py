"""How arrays handed to a ``Segmenter`` are read: one image or a stack, channels, dtype, and bad images.

- A 2-D array is one ``(H, W)`` gray image. A 3-D array is one image with channels when its last axis is
  1, 3 or 4 (``(H, W, 1)``, RGB, RGBA: made gray, colour with a ``SegWarning``), and otherwise an
  ``(N, H, W)`` stack of gray images (``is_stack``). A stack of images 1, 3 or 4 pixels wide is therefore
  read as one colour image; ``Segmenter.predict_stack`` always reads axis 0 as the image axis.
- ``on_error`` (``Segmenter.predict_iter``): ``"raise"``, ``"skip"`` or a callable ``(index, error)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import numpy as np

from seg.runtime.errors import InputError, SegWarning
from seg.runtime.io import rgb_to_gray
from seg.runtime.preprocess import DTYPE_RANGE, normalize, warn_if_range_unused

CHANNELS = (1, 3, 4)  # a 3-D array whose last axis is one of these is one image with channels, not a stack
OnError = Literal["raise", "skip"] | Callable[[int, Exception], None]
Report = Callable[[int, Exception], None] | None  # None = raise


def is_stack(array: np.ndarray) -> bool:
    """True for an ``(N, H, W)`` stack: 3-D with a last axis that is not 1, 3 or 4 channels."""
    return array.ndim == 3 and array.shape[-1] not in CHANNELS


def reporter(on_error: OnError) -> Report:
    """``on_error`` as a report function (None = raise); ``InputError`` naming the choices if unknown."""
    if isinstance(on_error, str) and on_error in ("raise", "skip"):
        return None if on_error == "raise" else _log_skip
    if callable(on_error):
        return on_error
    raise InputError(f"on_error must be 'raise', 'skip' or a callable(index, error), got {on_error!r}")


def _log_skip(index: int, error: Exception) -> None:
    """``on_error="skip"``: one ``SegWarning`` per skipped image (the error names the image)."""
    warnings.warn(f"skipped: {error}", SegWarning, stacklevel=4)


def as_array(images: object) -> np.ndarray:
    """``np.asarray``; a list of images of different sizes is an ``InputError`` that names the fix."""
    try:
        return np.asarray(images)
    except ValueError:  # numpy: "inhomogeneous shape"
        raise InputError("images of different sizes cannot form one array; pass them as a list to "
                         "predict_batch (one array each)") from None


def prepare_image(image: np.ndarray, method: str, name: str) -> tuple[np.ndarray, bool]:
    """``(H, W[, 1|3|4])`` pixels -> ``((H, W) pixels, lazy)``: lazy = uint8/uint16-range integers kept raw
    (normalised per tile, which the per-pixel dtype-range recipe allows), else float32 in [0, 1].

    Raises ``InputError`` (naming ``name``) for another shape, an empty image, NaN/inf or unsupported dtypes.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[-1] in (3, 4):
        warnings.warn(f"{name}: {image.shape[-1]}-channel image converted to gray", SegWarning, stacklevel=5)
        image = rgb_to_gray(image[..., :3])
    if image.ndim != 2 or min(image.shape) < 1:
        raise InputError(f"{name}: expected a (H, W) gray image, got shape {image.shape}")
    if image.dtype.kind in "ui" and image.dtype.itemsize <= 2 and method == DTYPE_RANGE:
        warn_if_range_unused(image, name)
        return image, True
    return normalize(image, method, name), False
