from __future__ import annotations

import numpy as np
import pytest

from seg.train.augment import N_DIHEDRAL, augmented_pair, dihedral, elastic, random_crop, sample_batch
from seg.train.data import Slice


def _coded_slice(size: int = 64) -> Slice:
    """Image pixels encode their own position; the label is a deterministic function of the image, so any
    transform that treats image and label alike keeps ``label == f(image)``."""
    rows, cols = np.mgrid[0:size, 0:size]
    image = ((rows * size + cols) / (size * size - 1)).astype(np.float32)
    label = (((rows // 4) + (cols // 4)) % 2).astype(np.float32)
    return Slice("coded", image, label, "coded")


def _label_from_image(image: np.ndarray, size: int = 64) -> np.ndarray:
    code = np.rint(image * (size * size - 1)).astype(int)
    rows, cols = code // size, code % size
    return (((rows // 4) + (cols // 4)) % 2).astype(np.float32)


def test_dihedral_group_is_eight_distinct_transforms() -> None:
    square = np.arange(16).reshape(4, 4)
    outputs = {dihedral(square, k).tobytes() for k in range(N_DIHEDRAL)}
    assert len(outputs) == 8


@pytest.mark.parametrize("seed", range(5))
def test_crop_and_dihedral_keep_image_and_label_aligned(seed: int) -> None:
    item = _coded_slice()
    image, label = augmented_pair(item, 32, np.random.default_rng(seed), use_intensity=False)
    assert image.shape == label.shape == (32, 32)
    np.testing.assert_array_equal(label, _label_from_image(image))


def test_elastic_keeps_alignment_and_label_binary() -> None:
    """A smooth image whose label is ``image > 0.5``: after the same warp, thresholding the bilinear image
    still gives the nearest-neighbour label almost everywhere (misses only on the 0.5 contour)."""
    rows, cols = np.mgrid[0:96, 0:96]
    image = (0.5 + 0.5 * np.sin(rows / 6.0) * np.sin(cols / 6.0)).astype(np.float32)
    label = (image > 0.5).astype(np.float32)
    warped_image, warped_label = elastic(image, label, np.random.default_rng(0), alpha=8.0, sigma=5.0)
    assert set(np.unique(warped_label)) <= {0.0, 1.0}
    assert np.mean(warped_label != label) > 0.02  # it really deformed
    assert np.mean((warped_image > 0.5) == warped_label) > 0.97


def test_random_crop_too_big() -> None:
    item = _coded_slice(16)
    with pytest.raises(ValueError, match="crop 32 is larger than a 16x16 slice"):
        random_crop(item.image, item.label, 32, np.random.default_rng(0))


def test_sample_batch_shapes_ranges_and_determinism() -> None:
    slices = [_coded_slice()]
    x, y = sample_batch(slices, 4, 32, np.random.default_rng(7))
    assert x.shape == y.shape == (4, 32, 32, 1) and x.dtype == y.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    x2, _ = sample_batch(slices, 4, 32, np.random.default_rng(7))
    np.testing.assert_array_equal(x, x2)
