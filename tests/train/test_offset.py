from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from seg.runtime.errors import SegWarning
from seg.runtime.tiling import dihedral_vector
from seg.train.augment import N_DIHEDRAL, augmented_pair, dihedral
from seg.train.data import Slice
from seg.train.offset import measure_label_offset, offset_correction


def _membranes(field: np.ndarray) -> np.ndarray:
    """Thin dark lines along the zero crossings of a smooth random field: ``(H, W) float32 in [0, 1]``."""
    return np.clip(np.abs(field) / (0.5 * field.std()), 0.0, 1.0).astype(np.float32)


def _offset_slices(offset: tuple[float, float], count: int = 5, size: int = 192) -> list[Slice]:
    """Images of cell-like membranes whose binary labels trace the same membranes ``offset`` ``(dy, dx)`` px on:
    ``label(q)`` is drawn from the field at ``q + offset``."""
    rng = np.random.default_rng(3)
    slices = []
    for index in range(count):
        field = ndimage.gaussian_filter(rng.normal(size=(size, size)), 4.0)
        traced = ndimage.shift(field, (-offset[0], -offset[1]), order=3, mode="reflect")
        label = (_membranes(traced) > 0.5).astype(np.float32)
        slices.append(Slice(f"s{index}", _membranes(field), label, f"s{index}"))
    return slices


@pytest.mark.parametrize("offset", [(0.6, 0.15), (-0.4, 0.3), (0.0, 0.0)])
def test_measured_offset_is_the_one_the_labels_were_drawn_with(offset: tuple[float, float]) -> None:
    dy, dx = measure_label_offset(_offset_slices(offset))
    assert dy == pytest.approx(offset[0], abs=0.1) and dx == pytest.approx(offset[1], abs=0.1)


def test_an_offset_over_two_pixels_is_misregistration_and_is_not_corrected() -> None:
    with pytest.warns(SegWarning, match=r"more than 2 px: not corrected; check that labels and images"):
        assert measure_label_offset(_offset_slices((3.0, 0.0))) == (0.0, 0.0)


def test_offsets_move_like_a_pixel_under_each_flip_and_rotation() -> None:
    grid = np.zeros((9, 9))
    grid[4 - 2, 4 + 1] = 1.0  # a pixel at (-2, +1) from the centre
    for k in range(N_DIHEDRAL):
        row, col = np.argwhere(dihedral(grid, k))[0]
        assert dihedral_vector((-2.0, 1.0), k) == (row - 4, col - 4)
        assert offset_correction((-2.0, 1.0), k) == (-2.0 - (row - 4), 1.0 - (col - 4))
    assert offset_correction((0.6, 0.15), 0) == (0.0, 0.0)


@pytest.mark.parametrize("use_elastic", [True, False])
def test_augmented_labels_keep_their_offset_under_every_flip_and_stay_binary(use_elastic: bool) -> None:
    """With or without elastic deformation, each of the 8 transforms gives pairs whose labels sit where the
    originals sat; uncorrected, a vertical flip would reverse the offset."""
    offset = (0.6, 0.15)
    slices = _offset_slices(offset, count=4)

    def pairs_for(k: int, corrected: bool) -> list[Slice]:
        out = []
        for index, item in enumerate(slices):
            rng = _ForcedDihedral(k, seed=index)
            image, label, _ = augmented_pair(item, 160, rng, use_elastic=use_elastic, use_intensity=False,
                                             label_offset=offset if corrected else (0.0, 0.0))
            assert set(np.unique(label)) <= {0.0, 1.0}
            out.append(Slice(item.name, image, label, item.source))
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for k in range(N_DIHEDRAL):
            dy, dx = measure_label_offset(pairs_for(k, corrected=True))
            assert (dy, dx) == (pytest.approx(0.6, abs=0.15), pytest.approx(0.15, abs=0.15)), k
        flipped = measure_label_offset(pairs_for(2, corrected=False))  # k = 2: turned upside down
    assert flipped[0] == pytest.approx(-0.6, abs=0.2)


class _ForcedDihedral:
    """A numpy Generator that always draws transform ``k`` from ``integers(8)`` and is random otherwise."""

    def __init__(self, k: int, seed: int) -> None:
        self.k, self.rng = k, np.random.default_rng(seed)

    def integers(self, high: int, *args: object) -> int:
        return self.k if high == N_DIHEDRAL else int(self.rng.integers(high, *args))

    def __getattr__(self, name: str) -> object:
        return getattr(self.rng, name)
