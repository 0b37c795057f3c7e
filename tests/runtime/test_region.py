"""``Segmenter.predict_region``: a box computed from the image's own tile grid equals that box of ``predict``."""

from __future__ import annotations

import numpy as np
import pytest

from seg.runtime.errors import InputError
from seg.runtime.region import region_tiles
from seg.runtime.segmenter import Segmenter
from tests.runtime.test_segmenter import wide_model


def _blocks(length: int, block: int) -> list[slice]:
    return [slice(start, min(start + block, length)) for start in range(0, length, block)]


def _by_blocks(seg: Segmenter, image: np.ndarray, block: int) -> np.ndarray:
    out = np.full(image.shape, np.nan, np.float32)
    read = lambda rows, cols: image[rows, cols]  # noqa: E731
    for rows in _blocks(image.shape[0], block):
        for cols in _blocks(image.shape[1], block):
            out[rows, cols] = seg.predict_region(read, image.shape, rows, cols)
    return out


@pytest.mark.parametrize(("shape", "block"), [((300, 300), 64), ((700, 530), 256), ((700, 530), 96),
                                              ((1000, 260), 128), ((90, 400), 96)])
def test_any_block_size_gives_the_whole_image_prediction(shape: tuple[int, int], block: int,
                                                         rng: np.random.Generator) -> None:
    """A 33-pixel receptive field, uint8 pixels, blocks that do not divide the image: every block size
    reassembles what ``predict`` gives for the whole image (large 256 tiles on the larger images)."""
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    seg = Segmenter(wide_model(33), "cpu", batch_size=4)
    whole = seg.predict(image)
    assert np.abs(_by_blocks(seg, image, block) - whole).max() < 1e-6


def test_tta_and_the_ramp_blend_hold_too(rng: np.random.Generator) -> None:
    image = rng.random((200, 170), dtype=np.float32)
    seg = Segmenter(wide_model(33), "cpu", blend="ramp", tta=True, tile_size=128)
    assert np.abs(_by_blocks(seg, image, 100) - seg.predict(image)).max() < 1e-6


def test_a_block_reads_only_the_tiles_that_reach_into_it() -> None:
    seg = Segmenter(wide_model(33), "cpu", tile_size=128)
    region = region_tiles(seg.plan, (2000, 2000), slice(1000, 1064), slice(0, 64))
    assert region.read_cols.start == 0 and region.read_cols.stop <= 128
    assert region.read_rows.start >= 1000 - 128 and region.read_rows.stop <= 1064 + 128  # not the whole slice
    assert region.core_rows.stop - region.core_rows.start == 64


def test_bad_regions_and_floats_outside_the_unit_range_are_refused(rng: np.random.Generator) -> None:
    seg = Segmenter(wide_model(33), "cpu")
    image = rng.random((200, 200), dtype=np.float32)
    read = lambda rows, cols: image[rows, cols]  # noqa: E731
    with pytest.raises(InputError, match=r"region rows 150:250 must lie inside 0:200"):
        seg.predict_region(read, image.shape, slice(150, 250), slice(0, 10))
    with pytest.raises(InputError, match=r"float pixels outside \[0, 1\]; scale the image"):
        seg.predict_region(lambda rows, cols: 3 * image[rows, cols], image.shape, slice(0, 10), slice(0, 10))
    with pytest.raises(InputError, match=r"int32 pixels; a wide integer's scale is read from its values"):
        seg.predict_region(lambda rows, cols: (image[rows, cols] * 300).astype(np.int32), image.shape, slice(0, 10),
                           slice(0, 10))
    with pytest.raises(InputError, match=r"a region needs tiled prediction"):
        Segmenter(wide_model(33), "cpu", tile_size=0).predict_region(read, image.shape, slice(0, 9), slice(0, 9))


@pytest.mark.parametrize("width", [22, 23, 36, 37, 41])
def test_blocks_at_the_right_edge_mirror_the_images_own_pixels(width: int, rng: np.random.Generator) -> None:
    """Tiles as small as the size multiple (halo 0): the last block may hold fewer columns than the image's
    right-edge reflection needs; it reads further back so the padding is the whole image's."""
    image = rng.integers(0, 256, (30, width), dtype=np.uint8)
    seg = Segmenter(wide_model(9), "cpu", tile_size=16, halo=0)
    np.testing.assert_array_equal(_by_blocks(seg, image, 16), seg.predict(image))


def test_open_ended_slices_and_a_wrong_read_are_handled(rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, (200, 150), dtype=np.uint8)
    seg = Segmenter(wide_model(33), "cpu")
    whole = seg.predict(image)
    np.testing.assert_allclose(seg.predict_region(lambda r, c: image[r, c], image.shape, slice(100, None),
                                                  slice(None, 64)), whole[100:, :64], atol=1e-6)
    with pytest.raises(InputError, match=r"read\(\) returned \(10, 10\) pixels for"):
        seg.predict_region(lambda r, c: image[:10, :10], image.shape, slice(0, 50), slice(0, 50))
