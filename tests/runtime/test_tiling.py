"""Pure tiling functions: padding, grids, windows, stitching round trips, dihedral TTA."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seg.runtime import tiling


@pytest.mark.parametrize(
    ("field", "tile", "expected"),
    [(215, 512, 112), (95, 512, 48), (0, 512, 64), (1000, 512, 128), (215, 128, 32), (215, 32, 0)],
)
def test_recommended_halo(field: int, tile: int, expected: int) -> None:
    assert tiling.recommended_halo(field, tile) == expected


@pytest.mark.parametrize(("length", "tile", "multiple", "expected"), [(100, 512, 16, 512), (1000, 512, 16, 1008),
                                                                        (1024, 512, 16, 1024), (33, 0, 16, 48)])
def test_padded_length(length: int, tile: int, multiple: int, expected: int) -> None:
    assert tiling.padded_length(length, tile, multiple) == expected


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 3), (40, 70)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_reflect_pad_keeps_the_image_and_mirrors_it(
    shape: tuple[int, int], dtype: type, rng: np.random.Generator
) -> None:
    image = (rng.random(shape) * 200).astype(dtype)
    padded = tiling.reflect_pad(image, 64, 80)
    assert padded.shape == (64, 80) and padded.dtype == image.dtype
    np.testing.assert_array_equal(padded[: shape[0], : shape[1]], image)
    if min(shape) > 1 and shape[1] + 1 < 80:
        np.testing.assert_array_equal(padded[: shape[0], shape[1]], image[:, shape[1] - 2])


def test_reflect_pad_without_padding_is_no_copy(rng: np.random.Generator) -> None:
    image = rng.random((16, 16))
    assert tiling.reflect_pad(image, 16, 16) is image
    with pytest.raises(ValueError, match="cannot pad"):
        tiling.reflect_pad(image, 8, 16)


@settings(max_examples=60, deadline=None)
@given(
    length_tiles=st.integers(1, 6),
    extra=st.integers(0, 15),
    tile_units=st.integers(2, 8),
    halo_units=st.integers(0, 3),
)
def test_tile_starts_cover_every_pixel_with_a_core(length_tiles: int, extra: int, tile_units: int,
                                                   halo_units: int) -> None:
    multiple = 16
    tile = tile_units * multiple
    halo = min(halo_units * 8, (tile - multiple) // 2)
    length = tile * length_tiles + extra * multiple
    starts = tiling.tile_starts(length, tile, halo, multiple)
    assert starts[0] == 0 and starts[-1] == length - tile
    assert all(s % multiple == 0 for s in starts)
    assert starts == sorted(set(starts))
    covered = np.zeros(length, bool)  # pixels >= halo inside a tile, or on the image border side
    for s in starts:
        lo = s if s == 0 else s + halo
        hi = s + tile if s + tile == length else s + tile - halo
        covered[lo:hi] = True
    assert covered.all()


def test_tile_starts_rejects_bad_geometry() -> None:
    with pytest.raises(ValueError, match="shorter than one tile"):
        tiling.tile_starts(100, 128, 16)
    with pytest.raises(ValueError, match="leaves no core"):
        tiling.tile_starts(512, 128, 64)
    assert tiling.tile_starts(48, 48, 112, 16) == [0]  # one tile covering the axis needs no halo
    assert (tiling.window_1d(48, 112, open_start=True, open_end=True) == 1).all()


@pytest.mark.parametrize("blend", tiling.BLENDS)
def test_window_shape(blend: str) -> None:
    window = tiling.window_1d(64, 16, blend)
    assert window.dtype == np.float32 and window.shape == (64,)
    assert (window >= 0).all() and (window <= 1).all()
    np.testing.assert_array_equal(window[16:48], 1.0)
    np.testing.assert_array_equal(window, window[::-1])
    assert window[0] < 1e-3 and np.all(np.diff(window[:16]) >= 0)
    opened = tiling.window_1d(64, 16, blend, open_start=True)
    np.testing.assert_array_equal(opened[:48], 1.0)
    np.testing.assert_array_equal(tiling.window_1d(64, 0, blend), 1.0)
    with pytest.raises(ValueError, match="unknown blend 'box'"):
        tiling.window_1d(64, 16, "box")


@pytest.mark.parametrize("shape", [(64, 64), (64, 200), (176, 96), (512, 288)])
@pytest.mark.parametrize(("tile", "halo"), [(64, 16), (64, 0), (32, 8)])
@pytest.mark.parametrize("blend", tiling.BLENDS)
def test_tile_then_stitch_with_identity_model_returns_the_input(
    shape: tuple[int, int], tile: int, halo: int, blend: str, rng: np.random.Generator
) -> None:
    image = rng.random(shape, dtype=np.float32)
    corners = tiling.tile_grid(*shape, tile, halo, 16)
    tiles = tiling.cut_tiles(image, corners, tile)
    assert tiles.shape == (len(corners), tile, tile)
    out = tiling.stitch(list(tiles), *shape, halo, blend, 16)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, image, rtol=2e-6, atol=0)


def test_weight_sums_are_positive_everywhere() -> None:
    for blend in tiling.BLENDS:
        windows = tiling.axis_windows(400, 64, 24, blend, 16)
        assert (tiling.weight_sum_1d(400, windows) > 0.5).all()


def test_normalize_weights_in_chunks(rng: np.random.Generator) -> None:
    out = rng.random((37, 11), dtype=np.float32)
    rows, cols = rng.random(37, dtype=np.float32) + 0.5, rng.random(11, dtype=np.float32) + 0.5
    expected = out / np.outer(rows, cols)
    tiling.normalize_weights(out, rows, cols, chunk=5)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_batched_packs_across_sources() -> None:
    assert list(tiling.batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(tiling.batched([], 3)) == []
    with pytest.raises(ValueError):
        list(tiling.batched(range(3), 0))


def test_batched_by_key_never_mixes_keys_and_sizes_per_key() -> None:
    """Items are (size, id); size-2 items come 4 per list, size-4 items 1 per list, in their order."""
    items = [(2, 0), (2, 1), (4, 2), (4, 3), (2, 4), (2, 5), (2, 6), (2, 7), (2, 8)]
    lists = list(tiling.batched(items, lambda item: 4 if item[0] == 2 else 1, key=lambda item: item[0]))
    assert [[i for _, i in batch] for batch in lists] == [[0, 1], [2], [3], [4, 5, 6, 7], [8]]


@pytest.mark.parametrize("axes", [(-2, -1), (1, 2)])
def test_dihedral_group_has_8_distinct_elements_with_inverses(axes: tuple[int, int], rng: np.random.Generator) -> None:
    array = rng.random((2, 5, 5, 1)) if axes == (1, 2) else rng.random((5, 5))
    images = [tiling.dihedral(array, k, axes) for k in tiling.DIHEDRAL]
    assert len({im.tobytes() for im in images}) == 8
    for k, image in zip(tiling.DIHEDRAL, images, strict=True):
        np.testing.assert_array_equal(tiling.dihedral_inverse(image, k, axes), array)


def test_dihedral_on_non_square_swaps_shape(rng: np.random.Generator) -> None:
    array = rng.random((3, 7))
    assert tiling.dihedral(array, 1).shape == (7, 3)
    np.testing.assert_array_equal(tiling.dihedral_inverse(tiling.dihedral(array, 5), 5), array)


@pytest.mark.parametrize(("shape", "multiple", "want"),
                         [((512, 512), 16, (512, 512)), ((500, 333), 16, (512, 336)), ((5, 7), 16, (16, 16)),
                          ((768, 1024), 4, (768, 1024)), ((1, 1), 1, (1, 1))])
def test_pad_to_multiple(shape: tuple[int, int], multiple: int, want: tuple[int, int]) -> None:
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    padded = tiling.pad_to_multiple(image, multiple)
    assert padded.shape == want and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[: shape[0], : shape[1]], image)


def test_vectors_move_like_a_pixel_under_each_transform_and_its_inverse() -> None:
    grid = np.zeros((9, 9))
    grid[4 - 2, 4 + 1] = 1.0  # a pixel at (-2, +1) from the centre
    for k in tiling.DIHEDRAL:
        row, col = np.argwhere(tiling.dihedral(grid, k))[0]
        assert tiling.dihedral_vector((-2.0, 1.0), k) == (row - 4, col - 4)
        row, col = np.argwhere(tiling.dihedral_inverse(grid, k))[0]
        assert tiling.dihedral_inverse_vector((-2.0, 1.0), k) == (row - 4, col - 4)


def test_resample_shifted_moves_content_by_whole_and_half_pixels(rng: np.random.Generator) -> None:
    array = rng.random((20, 30), dtype=np.float32)
    np.testing.assert_allclose(tiling.resample_shifted(array, (2.0, -1.0))[:-2, 1:], array[2:, :-1], atol=1e-6)
    half = tiling.resample_shifted(array, (0.5, 0.0))
    np.testing.assert_allclose(half[:-1], (array[:-1] + array[1:]) / 2, atol=1e-6)
    assert half.dtype == np.float32 and half.shape == array.shape
    np.testing.assert_allclose(half[-1], array[-1], atol=1e-6)  # clamped at the edge


def test_undo_dihedral_keeps_a_learned_label_offset_for_every_transform() -> None:
    """A "model" that draws its output ``offset`` px on from its input, in its own frame, as one trained on
    offset labels does: mapped back with the offset, every transform gives the untransformed prediction."""
    rows, cols = np.mgrid[0:64, 0:64]
    image = (np.sin(rows / 5.0) * np.cos(cols / 7.0)).astype(np.float32)  # smooth: bilinear is near exact
    offset = (0.6, -0.3)

    def model(array: np.ndarray) -> np.ndarray:
        return tiling.resample_shifted(array, offset)

    plain = model(image)
    inner = (slice(3, -3), slice(3, -3))
    for k in tiling.DIHEDRAL:
        back = tiling.undo_dihedral(model(np.ascontiguousarray(tiling.dihedral(image, k))), k, offset)
        np.testing.assert_allclose(back[inner], plain[inner], atol=0.01)
        if k in (2, 4):  # upside down or mirrored: mapped back without the offset, the prediction moves
            unaware = tiling.undo_dihedral(model(np.ascontiguousarray(tiling.dihedral(image, k))), k)
            assert np.abs(unaware[inner] - plain[inner]).max() > 0.05
    np.testing.assert_array_equal(tiling.undo_dihedral(plain, 0, offset), plain)  # identity: untouched
