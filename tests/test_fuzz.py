"""Bounded property-based tests (hypothesis, a few seconds): image readers on garbage and round trips,
tiling on random geometry. Readers may only ever raise ``InputError``; tile -> stitch is the identity."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from seg.runtime import tiling
from seg.runtime.errors import InputError
from seg.runtime.io import read_pages, write_pages
from tests.reliability import files as f

EXAMPLES = int(os.environ.get("SEG_FUZZ_EXAMPLES", "120"))  # raise it for a longer hunt
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SUFFIXES = (".png", ".tif", ".tiff", ".jpg")
MAGIC = (b"", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"II+\x00", b"\xff\xd8\xff\xe0")
VALID = {
    ".png": f.png_bytes(f.gray((24, 20))),
    ".tif": None,  # filled lazily below (tifffile writes to a buffer)
}


def _valid_tiff() -> bytes:
    import io

    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.stack([f.gray((12, 10), np.uint16, seed=i) for i in range(3)]), compression="zlib",
                     photometric="minisblack")
    return buffer.getvalue()


VALID[".tif"] = _valid_tiff()


def _read(data: bytes, suffix: str) -> list[np.ndarray] | None:
    """``read_pages`` on ``data`` saved as ``x<suffix>``: pages, or None after an ``InputError``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"x{suffix}"
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                pages = read_pages(path)
            except InputError as exc:
                assert str(exc).startswith(str(path)) and "\n" not in str(exc)
                return None
    for page in pages:  # whatever it decodes is a valid (H, W) image of a supported dtype
        assert page.ndim == 2 and min(page.shape) >= 1 and page.dtype.kind in "uif"
    return pages


@FUZZ
@given(magic=st.sampled_from(MAGIC), body=st.binary(max_size=400), suffix=st.sampled_from(SUFFIXES))
def test_readers_raise_only_input_error_on_random_bytes(magic: bytes, body: bytes, suffix: str) -> None:
    _read(magic + body, suffix)


@FUZZ
@given(kind=st.sampled_from([".png", ".tif"]), data=st.data())
def test_readers_raise_only_input_error_on_damaged_files(kind: str, data: st.DataObject) -> None:
    blob = bytearray(VALID[kind])
    cut = data.draw(st.integers(1, len(blob)), label="keep")
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 255)), max_size=6))
    for index, value in flips:
        blob[index] = value
    _read(bytes(blob[:cut]), kind)


_DTYPES = st.sampled_from([np.uint8, np.uint16, np.float32])


@settings(max_examples=60, deadline=None)
@given(dtype=_DTYPES, pages=st.integers(1, 3), height=st.integers(1, 40), width=st.integers(1, 40),
       tiff=st.booleans(), seed=st.integers(0, 2**16))
def test_write_read_round_trip(dtype: type, pages: int, height: int, width: int, tiff: bool, seed: int) -> None:
    tiff = tiff or pages > 1 or dtype == np.float32  # PNG holds one 8/16-bit page
    arrays = [f.gray((height, width), dtype, seed + i) for i in range(pages)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("x.tif" if tiff else "x.png")
        write_pages(path, arrays)
        back = read_pages(path)
    assert len(back) == pages
    for array, page in zip(arrays, back, strict=True):
        assert page.dtype == array.dtype
        np.testing.assert_array_equal(page, array)


@st.composite
def _geometry(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    multiple = draw(st.sampled_from([1, 2, 4, 16]))
    tile = multiple * draw(st.integers(1, 8))
    halo = draw(st.integers(0, max(0, (tile - multiple) // 2)))
    assume((tile - 2 * halo) // multiple * multiple > 0)
    return draw(st.integers(1, 90)), draw(st.integers(1, 90)), tile, halo, multiple


@settings(max_examples=150, deadline=None)
@given(geometry=_geometry(), blend=st.sampled_from(tiling.BLENDS), seed=st.integers(0, 2**16))
def test_tile_then_stitch_is_the_identity_and_covers_every_pixel(
    geometry: tuple[int, int, int, int, int], blend: str, seed: int
) -> None:
    height, width, tile, halo, multiple = geometry
    image = np.random.default_rng(seed).random((height, width), dtype=np.float32)
    padded_h = tiling.padded_length(height, tile, multiple)
    padded_w = tiling.padded_length(width, tile, multiple)
    padded = tiling.reflect_pad(image, padded_h, padded_w)
    assert padded.shape == (padded_h, padded_w) and padded_h % multiple == padded_w % multiple == 0
    np.testing.assert_array_equal(padded[:height, :width], image)
    corners = tiling.tile_grid(padded_h, padded_w, tile, halo, multiple)
    assert all(y % multiple == x % multiple == 0 for y, x in corners)  # tiles start on the pooling grid
    covered = np.zeros(padded.shape, int)
    for y, x in corners:
        covered[y : y + tile, x : x + tile] += 1
    assert covered.min() >= 1
    for length in (padded_h, padded_w):
        weights = tiling.weight_sum_1d(length, tiling.axis_windows(length, tile, halo, blend, multiple))
        assert weights.min() > 0
    stitched = tiling.stitch(tiling.cut_tiles(padded, corners, tile), padded_h, padded_w, halo, blend, multiple)
    np.testing.assert_allclose(stitched, padded, rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(height=st.integers(1, 150), width=st.integers(1, 150), dtype=_DTYPES, halo=st.sampled_from([0, 8, 16, 24]),
       seed=st.integers(0, 2**16))
def test_segmenter_with_an_identity_model_returns_the_normalised_image(
    identity_model: bytes, height: int, width: int, dtype: type, halo: int, seed: int
) -> None:
    from seg.runtime import Segmenter
    from seg.runtime.preprocess import normalize

    image = f.gray((height, width), dtype, seed)
    seg = Segmenter(identity_model, provider="cpu", halo=halo, batch_size=3)
    np.testing.assert_allclose(seg.predict(image), normalize(image), atol=1e-6)


@pytest.fixture(scope="module")
def identity_model() -> bytes:
    from tests.runtime.test_providers import tiny_model

    return tiny_model("identity", metadata=f.META)
