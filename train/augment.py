"""Training augmentation in numpy: random crops, the 8 flips/rotations, optional elastic deformation and
mild intensity jitter. Geometric transforms are applied identically to image and label.

Arrays: image ``(H, W) float32 in [0, 1]``; label ``(H, W) float32`` in {0, 1}.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seg.runtime.tiling import dihedral  # the same 8 transforms serve test-time augmentation
from seg.train.data import Slice

N_DIHEDRAL = 8
__all__ = ["N_DIHEDRAL", "augmented_pair", "dihedral", "elastic", "jitter_intensity", "random_crop",
           "sample_batch"]


def random_crop(
    image: np.ndarray, label: np.ndarray, crop: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The same random ``(crop, crop)`` window of ``image`` and ``label``."""
    height, width = image.shape
    if crop > min(height, width):
        raise ValueError(f"crop {crop} is larger than a {width}x{height} slice; use --crop {min(height, width)}")
    top = int(rng.integers(0, height - crop + 1))
    left = int(rng.integers(0, width - crop + 1))
    window = (slice(top, top + crop), slice(left, left + crop))
    return image[window], label[window]


def elastic(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, alpha: float = 30.0, sigma: float = 6.0
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random displacement (Simard et al. 2003): ``alpha`` px amplitude, ``sigma`` px smoothness.

    The image is resampled bilinearly, the label with nearest neighbour so it stays binary.
    """
    from scipy.ndimage import gaussian_filter, map_coordinates

    shape = image.shape
    shifts = [gaussian_filter(rng.uniform(-1, 1, shape), sigma) for _ in range(2)]
    scale = alpha / max(float(np.abs(shifts[0]).max()), float(np.abs(shifts[1]).max()), 1e-6)
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    coords = [rows + shifts[0] * scale, cols + shifts[1] * scale]
    warped_image = map_coordinates(image, coords, order=1, mode="reflect").astype(np.float32)
    warped_label = map_coordinates(label, coords, order=0, mode="reflect").astype(np.float32)
    return warped_image, warped_label


def jitter_intensity(image: np.ndarray, rng: np.random.Generator, strength: float = 0.1) -> np.ndarray:
    """Random contrast, brightness and gamma of about ``strength``; result clipped to [0, 1]."""
    contrast = 1.0 + rng.uniform(-strength, strength)
    brightness = rng.uniform(-strength, strength) / 2
    gamma = float(np.exp(rng.uniform(-strength, strength)))
    mean = float(image.mean())
    out = (image - mean) * contrast + mean + brightness
    return np.clip(out, 0.0, 1.0, dtype=np.float32) ** np.float32(gamma)


def augmented_pair(
    item: Slice, crop: int, rng: np.random.Generator, use_elastic: bool = False, use_intensity: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented ``(crop, crop)`` image/label pair from ``item``."""
    assert item.label is not None, f"{item.source}: training needs a label"
    image, label = random_crop(item.image, item.label, crop, rng)
    k = int(rng.integers(N_DIHEDRAL))
    image, label = dihedral(image, k), dihedral(label, k)
    if use_elastic:
        image, label = elastic(image, label, rng)
    if use_intensity:
        image = jitter_intensity(image, rng)
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(label, np.float32)


def sample_batch(
    slices: Sequence[Slice], batch: int, crop: int, rng: np.random.Generator, use_elastic: bool = False,
    use_intensity: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """A training batch: ``x`` ``(batch, crop, crop, 1) float32 in [0, 1]`` and ``y`` the same shape in {0, 1}."""
    pairs = [
        augmented_pair(slices[int(rng.integers(len(slices)))], crop, rng, use_elastic, use_intensity)
        for _ in range(batch)
    ]
    x = np.stack([p[0] for p in pairs])[..., None]
    y = np.stack([p[1] for p in pairs])[..., None]
    return x, y
