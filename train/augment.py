"""Training augmentation in numpy (OpenCV for the warps): random crops, the 8 flips/rotations, elastic deformation and
mild intensity jitter. Geometric transforms are applied identically to image and label; after a flip or rotation
the label is moved back to the offset the labels were drawn with (``seg.train.offset``).

Arrays: image ``(H, W) float32 in [0, 1]``; label ``(H, W) float32`` in {0, 1}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from seg.runtime.tiling import dihedral  # the same 8 transforms serve test-time augmentation
from seg.train.data import Slice
from seg.train.offset import Offset, offset_correction

N_DIHEDRAL = 8
ELASTIC_GRID = 3
"""Control points per side of the elastic deformation's coarse lattice (the U-Net paper's 3 x 3)."""
ELASTIC_STD = 10.0
"""Standard deviation in pixels of the control points' random displacements (the U-Net paper's 10)."""
__all__ = ["N_DIHEDRAL", "augmented_pair", "dihedral", "elastic", "elastic_coordinates", "jitter_intensity",
           "random_crop", "sample_batch"]


def random_crop(
    image: np.ndarray, label: np.ndarray, crop: int, rng: np.random.Generator, *others: np.ndarray
) -> tuple[np.ndarray, ...]:
    """The same random ``(crop, crop)`` window of ``image``, ``label`` and each of ``others``."""
    height, width = image.shape
    if crop > min(height, width):
        raise ValueError(f"crop {crop} is larger than a {width}x{height} slice; use a --crop of at most "
                         f"{min(height, width)} (a multiple of the model's size multiple)")
    top = int(rng.integers(0, height - crop + 1))
    left = int(rng.integers(0, width - crop + 1))
    window = (slice(top, top + crop), slice(left, left + crop))
    return tuple(a[window] for a in (image, label, *others))


def elastic_coordinates(shape: tuple[int, int], rng: np.random.Generator, grid: int = ELASTIC_GRID,
                        std: float = ELASTIC_STD) -> tuple[np.ndarray, np.ndarray]:
    """Source ``(rows, cols)``, each ``(H, W) float32``, of a smooth random deformation (the U-Net paper's):
    random displacements drawn from N(0, ``std`` px) on a coarse ``grid`` x ``grid`` lattice over the array,
    interpolated bicubically to every pixel."""
    import cv2

    height, width = shape
    coarse = rng.normal(0.0, std, (grid, grid, 2)).astype(np.float32)
    shifts = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    return rows + shifts[..., 0], cols + shifts[..., 1]


def elastic(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, weight: np.ndarray | None = None,
    std: float = ELASTIC_STD, label_shift: Offset = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Warp ``image``, ``label`` (and ``weight``) with one smooth random deformation (``elastic_coordinates``).

    The image and the weights are resampled bilinearly, the label with nearest neighbour so it stays
    in {0, 1}; outside the array the content is mirrored. The label and the weights (which follow the
    label) are sampled ``label_shift`` ``(dy, dx)`` px further on (``offset_correction``). Returns float32
    arrays of the input shape.
    """
    rows, cols = elastic_coordinates(image.shape, rng, std=std)
    return _warp_pair(image, label, weight, rows, cols, label_shift)


def shift_image(image: np.ndarray, shift: Offset) -> np.ndarray:
    """``image`` ``(H, W)`` sampled bilinearly ``shift`` ``(dy, dx)`` px on (mirrored outside), nothing else moved.

    Without elastic deformation the image moves instead of the label: a binary label sampled by nearest
    neighbour can only move by whole pixels, the image by any fraction of one."""
    rows, cols = np.mgrid[0:image.shape[0], 0:image.shape[1]].astype(np.float32)
    moved, _, _ = _warp_pair(image, None, None, rows + np.float32(shift[0]), cols + np.float32(shift[1]), (0.0, 0.0))
    return moved


def _warp_pair(image: np.ndarray | None, label: np.ndarray | None, weight: np.ndarray | None, rows: np.ndarray,
               cols: np.ndarray, label_shift: Offset) -> tuple[Any, Any, np.ndarray | None]:
    import cv2

    def warp(array: np.ndarray, interpolation: int, shift: Offset = (0.0, 0.0)) -> np.ndarray:
        source = np.ascontiguousarray(array, np.float32)
        return cv2.remap(source, cols + np.float32(shift[1]), rows + np.float32(shift[0]), interpolation,
                         borderMode=cv2.BORDER_REFLECT_101)

    warped_weight = None if weight is None else warp(weight, cv2.INTER_LINEAR, label_shift)
    warped_image = None if image is None else warp(image, cv2.INTER_LINEAR)
    warped_label = None if label is None else warp(label, cv2.INTER_NEAREST, label_shift)
    return warped_image, warped_label, warped_weight


def jitter_intensity(image: np.ndarray, rng: np.random.Generator, strength: float = 0.1) -> np.ndarray:
    """Random contrast, brightness and gamma of about ``strength``; result clipped to [0, 1]."""
    contrast = 1.0 + rng.uniform(-strength, strength)
    brightness = rng.uniform(-strength, strength) / 2
    gamma = float(np.exp(rng.uniform(-strength, strength)))
    mean = float(image.mean())
    out = (image - mean) * contrast + mean + brightness
    return np.clip(out, 0.0, 1.0, dtype=np.float32) ** np.float32(gamma)


def augmented_pair(
    item: Slice, crop: int, rng: np.random.Generator, use_elastic: bool = True, use_intensity: bool = True,
    weight: np.ndarray | None = None, label_offset: Offset = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented ``(crop, crop)`` triple from ``item``: image, label and loss weight (``weight`` is the
    slice's ``(H, W)`` weight map, ones when None). Every geometric transform moves all three alike; the
    label (and weight) then keeps ``label_offset``, the labels' own offset from their images
    (``seg.train.offset``), whichever of the 8 flips/rotations was drawn."""
    assert item.label is not None, f"{item.source}: training needs a label"
    full_weight = np.ones_like(item.label) if weight is None else weight
    image, label, crop_weight = random_crop(item.image, item.label, crop, rng, full_weight)
    k = int(rng.integers(N_DIHEDRAL))
    image, label, crop_weight = dihedral(image, k), dihedral(label, k), dihedral(crop_weight, k)
    correction = offset_correction(label_offset, k)
    if use_elastic:
        image, label, crop_weight = elastic(image, label, rng, crop_weight, label_shift=correction)
    elif correction != (0.0, 0.0):  # the image moves the other way: the label keeps its pixels
        image = shift_image(image, (-correction[0], -correction[1]))
    if use_intensity:
        image = jitter_intensity(image, rng)
    return tuple(np.ascontiguousarray(a, np.float32) for a in (image, label, crop_weight))  # type: ignore[return-value]


def sample_batch(
    slices: Sequence[Slice], batch: int, crop: int, rng: np.random.Generator, use_elastic: bool = True,
    use_intensity: bool = True, weights: Sequence[np.ndarray] | None = None, label_offset: Offset = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A training batch: ``x`` ``(batch, crop, crop, 1) float32 in [0, 1]``, ``y`` the same shape in {0, 1}
    and per-pixel loss weights ``(batch, crop, crop) float32`` (ones unless ``weights``, one map per slice)."""
    triples = []
    for _ in range(batch):
        index = int(rng.integers(len(slices)))
        weight = None if weights is None else weights[index]
        triples.append(augmented_pair(slices[index], crop, rng, use_elastic, use_intensity, weight, label_offset))
    x, y, w = (np.stack([t[i] for t in triples]) for i in range(3))
    return x[..., None], y[..., None], w
