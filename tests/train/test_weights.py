from __future__ import annotations

import numpy as np
import pytest

from seg.train.weights import border_weights, two_nearest_cell_distances


def _two_cells(gap: int, size: int = 64) -> np.ndarray:
    """Two cells (1.0) left and right of a vertical membrane (0.0) ``gap`` pixels wide, framed by membrane."""
    label = np.zeros((size, size), np.float32)
    left = (size - gap) // 2
    label[2:-2, 2:left] = 1.0
    label[2:-2, left + gap : size - 2] = 1.0
    return label


@pytest.mark.parametrize("gap", [1, 3, 5, 9])
def test_weight_in_the_middle_of_a_gap_follows_the_formula(gap: int) -> None:
    label = _two_cells(gap)
    left = (64 - gap) // 2
    middle = left + (gap - 1) // 2
    d1, d2 = middle - (left - 1), left + gap - middle  # distances to the two cells' edge pixels
    weights = border_weights(label, w0=10.0, sigma=5.0)
    expected = 1.0 + 10.0 * np.exp(-((d1 + d2) ** 2) / (2 * 5.0**2))
    assert weights[32, middle] == pytest.approx(expected, rel=1e-5)


def test_narrow_gaps_weigh_more_than_wide_ones_and_far_pixels_weigh_one() -> None:
    narrow, wide = border_weights(_two_cells(2)), border_weights(_two_cells(12))
    assert narrow.max() > wide.max() > 1.0
    assert narrow.dtype == np.float32 and narrow.min() >= 1.0
    single = np.zeros((64, 64), np.float32)
    single[10:50, 10:50] = 1.0
    np.testing.assert_array_equal(border_weights(single), 1.0)  # one cell: no border between two cells


def test_zero_w0_is_plain_mse_and_bad_values_are_refused() -> None:
    np.testing.assert_array_equal(border_weights(_two_cells(3), w0=0.0), 1.0)
    with pytest.raises(ValueError, match="w0 -1"):
        border_weights(_two_cells(3), w0=-1.0)


def test_two_nearest_distances_against_brute_force() -> None:
    rng = np.random.default_rng(1)
    interior = rng.random((24, 24)) > 0.6
    d1, d2 = two_nearest_cell_distances(interior, reach=100.0)
    from scipy import ndimage

    cells, count = ndimage.label(interior, structure=ndimage.generate_binary_structure(2, 1))
    maps = np.stack([ndimage.distance_transform_edt(cells != i) for i in range(1, count + 1)])
    maps.sort(axis=0)
    np.testing.assert_allclose(d1, maps[0])
    np.testing.assert_allclose(d2, maps[1])
