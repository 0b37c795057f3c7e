"""The preprocessing contract shared by training and serving.

``normalize`` turns any supported pixel array into ``(H, W) float32 in [0, 1]``; training calls the
same function, so a model is served exactly as it was trained. The recipe's name is written into the
ONNX metadata (``seg.normalization``) and ``Segmenter`` applies what the metadata names.
"""

from __future__ import annotations

import warnings

import numpy as np

from seg.runtime.errors import InputError, SegWarning

DTYPE_RANGE = "dtype-range"
"""Integers divide by their dtype's maximum (uint8 /255, uint16 /65535); floats in [0, 1] are kept,
other finite floats are min-max scaled to [0, 1] with a warning."""

NORMALIZATIONS = (DTYPE_RANGE,)


def normalize(image: np.ndarray, method: str = DTYPE_RANGE, name: str = "image") -> np.ndarray:
    """``(H, W)`` uint8/uint16/int/float/bool -> ``(H, W) float32 in [0, 1]``.

    ``name`` (usually the file path) is used in error messages. NaN or infinite pixels are an error.
    """
    if method not in NORMALIZATIONS:
        raise InputError(f"{name}: unknown normalization {method!r}; known: {', '.join(NORMALIZATIONS)}")
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"{name}: expected a (H, W) image, got shape {image.shape}")
    if image.dtype == bool:
        return image.astype(np.float32)
    if image.dtype.kind in "ui":
        return _normalize_integer(image, name)
    if image.dtype.kind == "f":
        return _normalize_float(image, name)
    raise InputError(f"{name}: unsupported pixel type {image.dtype}")


def _normalize_integer(image: np.ndarray, name: str) -> np.ndarray:
    """8- and 16-bit integers by their dtype's range. Wider integer types (int32, int64 from numpy or
    lists, ...) carry no meaningful range, so they are read as 8-bit or 16-bit by their values, with a warning."""
    if image.dtype.itemsize <= 2:
        warn_if_range_unused(image, name)
        return scale_small_integers(image)
    low, high = (int(image.min()), int(image.max())) if image.size else (0, 0)
    if low < 0 or high > 65535:
        raise InputError(f"{name}: {image.dtype} pixels span {low}..{high}; give uint8/uint16 or float in [0, 1]")
    scale = 255 if high <= 255 else 65535
    warnings.warn(f"{name}: {image.dtype} pixels read as {8 if scale == 255 else 16}-bit (divided by {scale}); "
                  "pass uint8/uint16 to say so explicitly", SegWarning, stacklevel=4)
    return image.astype(np.float32) / np.float32(scale)


def scale_small_integers(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """8/16-bit integers (signed types shifted to start at 0) -> float32 in [0, 1] by the dtype's range:
    ``(x - min) / (max - min)`` in float32, written into ``out`` (same shape, float32) when given. Per pixel,
    so normalising tiles one by one equals normalising the whole image. Every 8/16-bit value is exact in
    float32 and the division is correctly rounded, so this equals the float64 formula rounded to float32."""
    info = np.iinfo(image.dtype)
    if info.min == 0:
        return np.divide(image, np.float32(info.max), out=out, dtype=np.float32)
    shifted = np.subtract(image, np.float32(info.min), out=out, dtype=np.float32)
    return np.divide(shifted, np.float32(info.max - info.min), out=shifted)


def warn_if_range_unused(image: np.ndarray, name: str) -> None:
    """Warn when an 8/16-bit image's values miss most of its dtype's range, so the contract's scaling
    squeezes it into a narrow band: a uint16 image in 0..255 (8-bit data in a 16-bit file) looks almost
    black, a signed image with no negative pixel (unsigned data in a signed type) sits in [0.5, 1]."""
    if not image.size:
        return
    if image.dtype == np.uint16 and int(image.max()) <= 255:
        warnings.warn(f"{name}: 16-bit image whose pixels all lie in 0..255 (8-bit data in a 16-bit file?); "
                      "normalised by 65535 as the contract says, so it looks almost black to the model",
                      SegWarning, stacklevel=4)
    elif image.dtype.kind == "i" and int(image.min()) >= 0:
        warnings.warn(f"{name}: {image.dtype} image with no negative pixel (unsigned data in a signed type?); "
                      f"normalised by the {image.dtype} range as the contract says, so it lies in [0.5, 1]; "
                      f"convert it to u{image.dtype}", SegWarning, stacklevel=4)


def _normalize_float(image: np.ndarray, name: str) -> np.ndarray:
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        bad = int(np.size(image) - np.isfinite(image).sum())
        raise InputError(f"{name}: {bad} NaN or infinite pixels; replace them before segmenting")
    low, high = float(image.min()), float(image.max())
    if low >= 0.0 and high <= 1.0:
        return image
    warnings.warn(
        f"{name}: float pixels span [{low:g}, {high:g}], outside [0, 1]; min-max scaled to [0, 1]",
        SegWarning,
        stacklevel=3,
    )
    if high == low:
        return np.zeros_like(image)
    return ((image - low) / np.float32(high - low)).astype(np.float32)


def binarize_label(label: np.ndarray, name: str = "label") -> np.ndarray:
    """Label ``(H, W)`` of any dtype -> ``(H, W) float32`` with 1.0 = interior, 0.0 = membrane.

    An integer label of exactly two values is low = membrane, high = interior: 0/255 as in ISBI, 0/1 as
    numpy and scikit-image save masks (two values without a 0, such as 1/2, warn once per file). Otherwise
    pixels at or above half of the normalised range count as interior; a label with more than two
    distinct values (a soft, JPEG or instance-id label) warns once per file.
    """
    mask = np.asarray(label)
    two = _two_values(mask) if mask.ndim == 2 and mask.dtype.kind in "ui" else None
    if two is not None:
        if two[0] != 0:
            warnings.warn(f"{name}: label has the two values {two[0]} and {two[1]}; read as {two[0]} = membrane, "
                          f"{two[1]} = interior", SegWarning, stacklevel=2)
        return (mask == two[1]).astype(np.float32)
    values = normalize(mask, name=name)
    distinct = np.unique(values[:: max(1, values.shape[0] // 256), :: max(1, values.shape[1] // 256)]).size
    if distinct > 2:
        warnings.warn(
            f"{name}: label is not binary ({distinct}+ distinct values); binarized at half range "
            "(>= 0.5 = interior); save labels as 0 (membrane) / 255 (interior)",
            SegWarning,
            stacklevel=2,
        )
    return (values >= 0.5).astype(np.float32)


def _two_values(mask: np.ndarray) -> tuple[int, int] | None:
    """``(low, high)`` when the integer ``mask`` holds exactly two values, else None."""
    if not mask.size:
        return None
    low, high = int(mask.min()), int(mask.max())
    if low == high or np.any((mask != low) & (mask != high)):
        return None
    return low, high


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float; ``InputError`` unless it is in [0, 1] (it cuts the interior probability)."""
    cut = float(threshold)
    if not 0.0 <= cut <= 1.0:
        raise InputError(f"threshold {cut:g} is outside [0, 1]; masks cut the interior probability, e.g. 0.5")
    return cut


def to_mask(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Interior probability ``(H, W) float32 in [0, 1]`` -> ``(H, W) uint8`` mask, 255 = interior."""
    return (np.asarray(prob) >= threshold).view(np.uint8) * np.uint8(255)


OVERLAY_RGB = (230, 30, 30)
"""Colour of predicted membrane drawn over an image."""


def overlay_rgb(image: np.ndarray, prob: np.ndarray, threshold: float = 0.5, alpha: float = 0.5) -> np.ndarray:
    """Gray ``image`` ``(H, W) float32 in [0, 1]`` with predicted membrane (``prob < threshold``) tinted
    ``OVERLAY_RGB`` at opacity ``alpha`` -> ``(H, W, 3) uint8``."""
    if np.shape(image) != np.shape(prob) or np.ndim(image) != 2:
        raise InputError(f"overlay: image {np.shape(image)} and prob {np.shape(prob)} must be the same (H, W)")
    gray = np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0
    rgb = np.repeat(gray[..., None], 3, axis=2)
    membrane = np.asarray(prob) < threshold
    rgb[membrane] = (1.0 - alpha) * rgb[membrane] + alpha * np.array(OVERLAY_RGB, np.float32)
    return np.rint(rgb).astype(np.uint8)
