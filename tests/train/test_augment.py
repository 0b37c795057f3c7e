from __future__ import annotations

import numpy as np
import pytest

from seg.train.augment import (
    N_DIHEDRAL,
    augmented_pair,
    dihedral,
    elastic,
    elastic_coordinates,
    jitter_intensity,
    random_crop,
    sample_batch,
)
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
def test_crop_and_dihedral_keep_image_label_and_weight_aligned(seed: int) -> None:
    item = _coded_slice()
    weight = 1.0 + 10.0 * item.image  # another function of the position
    image, label, crop_weight = augmented_pair(item, 32, np.random.default_rng(seed), use_elastic=False,
                                               use_intensity=False, weight=weight)
    assert image.shape == label.shape == crop_weight.shape == (32, 32)
    np.testing.assert_array_equal(label, _label_from_image(image))
    np.testing.assert_allclose(crop_weight, 1.0 + 10.0 * image, rtol=1e-6)


def _smooth_pair(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0:size, 0:size]
    image = (0.5 + 0.5 * np.sin(rows / 6.0) * np.sin(cols / 6.0)).astype(np.float32)
    return image, (image > 0.5).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_elastic_moves_image_label_and_weight_alike_and_label_stays_binary(seed: int) -> None:
    """A smooth image whose label is ``image > 0.5`` and weight ``1 + 4 * label``: after the same warp,
    thresholding the bilinear image or weight gives the nearest-neighbour label except on the contour."""
    image, label = _smooth_pair()
    warped_image, warped_label, warped_weight = elastic(image, label, np.random.default_rng(seed), 1.0 + 4.0 * label)
    assert warped_weight is not None
    assert warped_image.dtype == warped_label.dtype == warped_weight.dtype == np.float32
    assert set(np.unique(warped_label)) <= {0.0, 1.0}
    assert np.mean(warped_label != label) > 0.02  # it really deformed
    assert np.mean((warped_image > 0.5) == warped_label) > 0.97
    assert np.mean((warped_weight > 3.0) == warped_label) > 0.97
    assert warped_weight.min() >= 1.0 - 1e-6 and warped_weight.max() <= 5.0 + 1e-6


def test_elastic_displacements_are_smooth_and_of_the_asked_size() -> None:
    rng = np.random.default_rng(0)
    rows, cols = elastic_coordinates((256, 256), rng, std=10.0)
    grid_rows, grid_cols = np.mgrid[0:256, 0:256]
    shift = np.stack([rows - grid_rows, cols - grid_cols])
    assert 2.0 < float(np.abs(shift).mean()) < 20.0
    assert float(np.abs(np.diff(shift, axis=1)).max()) < 1.0  # neighbours move together: no tearing
    still_rows, still_cols = elastic_coordinates((64, 64), rng, std=0.0)
    np.testing.assert_allclose(still_rows, np.mgrid[0:64, 0:64][0], atol=1e-5)
    np.testing.assert_allclose(still_cols, np.mgrid[0:64, 0:64][1], atol=1e-5)


def test_full_augmentation_keeps_labels_binary_and_images_in_range() -> None:
    item = _coded_slice()
    for seed in range(10):
        image, label, weight = augmented_pair(item, 48, np.random.default_rng(seed), weight=1.0 + item.label)
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert set(np.unique(label)) <= {0.0, 1.0}
        assert weight.min() >= 1.0 - 1e-6 and weight.max() <= 2.0 + 1e-6
        assert np.mean(np.rint(weight) == 1.0 + label) > 0.85  # bilinear weight vs nearest label: edges differ


def test_intensity_jitter_changes_the_image_within_range() -> None:
    image, _ = _smooth_pair(32)
    jittered = jitter_intensity(image, np.random.default_rng(3), strength=0.3)
    assert jittered.dtype == np.float32 and jittered.min() >= 0.0 and jittered.max() <= 1.0
    assert not np.allclose(jittered, image)


def test_random_crop_too_big() -> None:
    item = _coded_slice(16)
    with pytest.raises(ValueError, match="crop 32 is larger than a 16x16 slice"):
        random_crop(item.image, item.label, 32, np.random.default_rng(0))


def test_sample_batch_shapes_ranges_and_determinism() -> None:
    slices = [_coded_slice()]
    x, y, w = sample_batch(slices, 4, 32, np.random.default_rng(7))
    assert x.shape == y.shape == (4, 32, 32, 1) and x.dtype == y.dtype == w.dtype == np.float32
    assert w.shape == (4, 32, 32) and np.all(w == 1.0)  # no weight maps: plain MSE
    assert x.min() >= 0.0 and x.max() <= 1.0
    x2, _, _ = sample_batch(slices, 4, 32, np.random.default_rng(7))
    np.testing.assert_array_equal(x, x2)
    _, y3, w3 = sample_batch(slices, 4, 32, np.random.default_rng(7), use_elastic=False,
                             weights=[3.0 - 2.0 * slices[0].label])
    np.testing.assert_array_equal(w3, 3.0 - 2.0 * y3[..., 0])
