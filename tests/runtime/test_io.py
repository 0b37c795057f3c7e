from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from seg.runtime.atomic import atomic_path, is_temporary
from seg.runtime.errors import InputError, SegWarning
from seg.runtime.io import list_images, read_calibrated, read_image, read_pages, write_image, write_pages
from seg.runtime.preprocess import binarize_label, normalize, scale_small_integers, to_mask


@pytest.mark.parametrize(
    ("suffix", "dtype"),
    [(".png", np.uint8), (".png", np.uint16), (".tif", np.uint8), (".tif", np.uint16), (".tif", np.float32),
     (".jpg", np.uint8)],
)
@pytest.mark.parametrize("shape", [(1, 1), (17, 31), (64, 48)])
def test_round_trip_keeps_dtype_and_pixels(tmp_path: Path, suffix: str, dtype: type, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    high = 1.0 if dtype == np.float32 else np.iinfo(dtype).max
    array = (rng.random(shape) * high).astype(dtype)
    path = tmp_path / f"img{suffix}"
    if suffix == ".jpg":
        Image.fromarray(array).save(path, quality=100)
    else:
        write_image(path, array)
    back = read_image(path)
    assert back.dtype == dtype and back.shape == shape
    if suffix != ".jpg":
        np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("channels", [3, 4])
def test_rgb_is_converted_to_gray_with_a_warning(tmp_path: Path, channels: int) -> None:
    rgb = np.zeros((8, 8, channels), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(path)
    with pytest.warns(SegWarning, match=f"rgb.png: {channels}-channel image converted to gray"):
        gray = read_image(path)
    assert gray.shape == (8, 8) and gray.dtype == np.uint8
    assert gray[0, 0] == round(0.299 * 100 + 0.587 * 200 + 0.114 * 50)


def test_multipage_stack_reads_every_page(tmp_path: Path) -> None:
    stack = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    pages = read_pages(tmp_path / "s.tif")
    assert len(pages) == 5
    np.testing.assert_array_equal(np.stack(pages), stack)
    with pytest.raises(InputError, match="a stack of 5 pages"):
        read_image(tmp_path / "s.tif")


def test_planar_rgb_tiff_is_gray_with_warning(tmp_path: Path) -> None:
    planar = np.zeros((3, 6, 7), np.uint8)
    planar[1] = 200
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    with pytest.warns(SegWarning, match="3-channel image converted to gray"):
        gray = read_image(tmp_path / "planar.tif")
    assert gray.shape == (6, 7) and gray[0, 0] == round(0.587 * 200)


def test_a_stack_of_planar_rgb_pages_is_one_gray_page_per_image(tmp_path: Path) -> None:
    """Planar colour (axes ``ZSYX``) reads as the same gray pages as contiguous colour (``ZYXS``), not as a
    page per colour plane; the page count known without reading pixels agrees."""
    from seg.runtime.io import tiff_page_count

    rgb = np.random.default_rng(0).integers(0, 255, (4, 3, 6, 7)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "contig.tif", np.moveaxis(rgb, 1, -1), photometric="rgb")
    tifffile.imwrite(tmp_path / "one.tif", rgb[0], photometric="rgb", planarconfig="separate")
    with pytest.warns(SegWarning, match="3-channel image converted to gray"):
        planar, contig = read_pages(tmp_path / "planar.tif"), read_pages(tmp_path / "contig.tif")
    assert len(planar) == len(contig) == 4 and all((a == b).all() for a, b in zip(planar, contig, strict=True))
    for name, pages in (("planar", 4), ("contig", 4), ("one", 1)):
        with tifffile.TiffFile(tmp_path / f"{name}.tif") as tif:
            assert tiff_page_count(tif) == pages, name


def test_stack_pages_of_different_sizes(tmp_path: Path) -> None:
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as writer:
        writer.write(np.zeros((4, 4), np.uint8))
        writer.write(np.ones((6, 3), np.uint8))
    assert [p.shape for p in read_pages(tmp_path / "mixed.tif")] == [(4, 4), (6, 3)]


def test_write_pages_as_a_stack(tmp_path: Path) -> None:
    pages = [np.full((4, 5), i, np.uint8) for i in range(3)]
    write_pages(tmp_path / "out.tif", pages)
    np.testing.assert_array_equal(np.stack(read_pages(tmp_path / "out.tif")), np.stack(pages))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), np.stack(pages))  # one series
    with pytest.raises(InputError, match="3 pages need a .tif/.tiff file"):
        write_pages(tmp_path / "out.png", pages)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty file (0 bytes)"), (b"not an image", "not a readable image"),
     (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01", "corrupt or truncated image")],
)
def test_bad_files_give_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert str(caught.value).startswith(f"{path}: {message}")
    assert "\n" not in str(caught.value)


def test_corrupt_tiff_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage-garbage")
    with pytest.raises(InputError, match="bad.tif: corrupt or unreadable TIFF"):
        read_pages(tmp_path / "bad.tif")
    with pytest.raises(InputError, match="nope.png: no such file"):
        read_image(tmp_path / "nope.png")


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("L", (20000, 10000)).save(path)  # 200 M pixels > 2x Pillow's default limit
    with pytest.raises(InputError, match="bomb.png: refused as a possible decompression bomb"):
        read_image(path)


def test_list_images_skips_hidden_temporaries_and_other_files(tmp_path: Path) -> None:
    for name in ("b.png", "a.tif", ".hidden.png", ".x.tmp-123.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.tif", "b.png"]
    with pytest.raises(InputError, match="no images found"):
        list_images(_empty(tmp_path))
    with pytest.raises(InputError, match="missing: not a folder"):
        list_images(tmp_path / "missing")


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_atomic_path_leaves_old_file_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "mask.png"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert final.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]
    with atomic_path(final) as tmp:
        assert is_temporary(tmp) and tmp.suffix == ".png"
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"new" and len(os.listdir(tmp_path)) == 1


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[0, 255]], np.uint8), [[0.0, 1.0]]),
        (np.array([[0, 65535]], np.uint16), [[0.0, 1.0]]),
        (np.array([[0.25, 0.5]], np.float32), [[0.25, 0.5]]),
        (np.array([[True, False]]), [[1.0, 0.0]]),
        (np.array([[-128, 127]], np.int8), [[0.0, 1.0]]),
    ],
)
def test_normalize_by_dtype_range(array: np.ndarray, expected: list[list[float]]) -> None:
    out = normalize(array)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-7)


@pytest.mark.parametrize(("dtype", "values", "expected"), [(np.int64, [0, 255], [0.0, 1.0]),
                                                          (np.int32, [0, 65535], [0.0, 1.0])])
def test_wide_integers_are_read_by_value_with_a_warning(dtype: type, values: list[int], expected: list[float]) -> None:
    with pytest.warns(SegWarning, match=f"{np.dtype(dtype).name} pixels read as"):
        np.testing.assert_allclose(normalize(np.array([values], dtype)), [expected])


def test_wide_integers_out_of_16_bit_range_are_refused() -> None:
    with pytest.raises(InputError, match="int64 pixels span -1..5; give uint8/uint16 or float"):
        normalize(np.array([[-1, 5]], np.int64))


def test_8_bit_data_in_a_16_bit_image_warns() -> None:
    with pytest.warns(SegWarning, match="16-bit image whose pixels all lie in 0..255"):
        normalize(np.array([[0, 200]], np.uint16))


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
def test_unsigned_data_in_a_signed_image_warns(dtype: type) -> None:
    """12-bit camera data saved as int16 lands in [0.5, 0.56] by the int16 range: said, not silent."""
    with pytest.warns(SegWarning, match=f"{np.dtype(dtype).name} image with no negative pixel .*convert it to "
                                        f"u{np.dtype(dtype).name}"):
        assert normalize(np.array([[0, 100]], dtype)).min() >= 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normalize(np.array([[-5, 100]], dtype))  # signed data: silent


def test_normalize_rescales_out_of_range_floats_with_warning() -> None:
    with pytest.warns(SegWarning, match=r"span \[-2, 6\]"):
        out = normalize(np.array([[-2.0, 2.0, 6.0]], np.float64))
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0]])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_normalize_rejects_nan_and_inf(bad: float) -> None:
    with pytest.raises(InputError, match="x.tif: 1 NaN or infinite pixels"):
        normalize(np.array([[0.1, bad]], np.float32), name="x.tif")


def test_label_mask_and_prob_conversions() -> None:
    np.testing.assert_array_equal(binarize_label(np.array([[0, 127, 128, 255]], np.uint8)), [[0, 0, 1, 1]])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
@pytest.mark.parametrize("interior", [1, 255])
def test_a_two_valued_integer_label_is_membrane_at_0_and_interior_at_the_other_value(dtype, interior) -> None:
    """A 0/1 mask (as numpy and scikit-image save them) must not read as all membrane after / 255."""
    label = np.array([[0, interior], [interior, 0]], dtype)
    np.testing.assert_array_equal(binarize_label(label), [[0, 1], [1, 0]])
    assert binarize_label(np.full((2, 2), 1, np.uint8)).max() == 0  # one value: the half-range rule


@pytest.mark.parametrize("values", [(1, 2), (128, 255)])
def test_two_label_values_without_a_zero_are_low_membrane_high_interior_with_a_warning(values) -> None:
    label = np.array([[values[0], values[1]]], np.uint8)
    with pytest.warns(SegWarning, match=f"l.png: label has the two values {values[0]} and {values[1]}"):
        np.testing.assert_array_equal(binarize_label(label, name="l.png"), [[0, 1]])
    np.testing.assert_array_equal(to_mask(np.array([[0.2, 0.5, 0.9]], np.float32)), [[0, 255, 255]])


def test_a_dataset_root_given_as_image_folder_gets_a_hint(tmp_path: Path) -> None:
    (tmp_path / "test" / "image").mkdir(parents=True)
    with pytest.raises(InputError, match="this is a dataset folder: give its test/image or train/image"):
        list_images(tmp_path)


def test_concurrent_atomic_writes_keep_the_umask_and_usual_permissions(tmp_path: Path) -> None:
    """Eight writer threads (as beside CUDA) write 400 files; none may leave the process umask at 0."""
    import os
    import stat
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from seg.runtime.atomic import write_bytes_atomic

    mask = os.umask(0)
    os.umask(mask)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to provoke the race
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: write_bytes_atomic(tmp_path / f"f{i}.bin", b"x"), range(400)))
    finally:
        sys.setswitchinterval(interval)
    now = os.umask(mask)
    assert now == mask
    modes = {stat.S_IMODE((tmp_path / f"f{i}.bin").stat().st_mode) for i in range(400)}
    assert modes == {0o666 & ~mask}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int8, np.int16])
def test_every_small_integer_scales_to_the_float64_formula_rounded_to_float32(dtype: type) -> None:
    info = np.iinfo(dtype)
    values = np.arange(info.min, info.max + 1).astype(dtype)
    expected = ((values.astype(np.float64) - info.min) / (info.max - info.min)).astype(np.float32)
    np.testing.assert_array_equal(scale_small_integers(values), expected)  # bit-exact, every value
    out = np.full((1, values.size, 1), np.nan, np.float32)
    assert scale_small_integers(values[None, :], out=out[:, :, 0]).base is out  # written in place
    np.testing.assert_array_equal(out[0, :, 0], expected)


def _imagej_stack(path: Path, pages: int = 3) -> Path:
    tifffile.imwrite(path, np.zeros((pages, 32, 32), np.uint8), imagej=True, resolution=(250.0, 200.0),
                     metadata={"spacing": 0.05, "unit": "micron", "zorigin": 2.0, "axes": "ZYX" if pages > 1 else "YX"})
    return path


def _calibration_of(path: Path) -> tuple[tuple[float, float], dict[str, object]]:
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        resolution = tuple(num / den for num, den in (tags["XResolution"].value, tags["YResolution"].value))
        return resolution, dict(tif.imagej_metadata or {})  # type: ignore[return-value]


def test_read_calibrated_gives_the_pages_and_the_calibration(tmp_path: Path) -> None:
    pages, calibration = read_calibrated(_imagej_stack(tmp_path / "stack.tif"))
    assert len(pages) == 3 and pages[0].shape == (32, 32)
    assert calibration["resolution"] == (250.0, 200.0)
    assert calibration["imagej"] == {"spacing": 0.05, "unit": "micron", "zorigin": 2.0}
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((8, 8), np.uint8))  # tifffile's default: 1 pixel per unit
    tifffile.imwrite(tmp_path / "dpi.tif", np.zeros((8, 8), np.uint8), resolution=(300, 300), resolutionunit="INCH")
    assert read_calibrated(tmp_path / "dpi.tif")[1] == {"resolution": (300.0, 300.0), "resolutionunit": 2}
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    for name in ("plain.tif", "a.png"):
        assert read_calibrated(tmp_path / name)[1] == {}, name


@pytest.mark.parametrize(("pages", "dtype", "rgb"), [(3, np.uint8, False), (3, np.float32, False), (1, np.uint8, False),
                                                     (3, np.uint8, True)])
def test_write_pages_carries_the_calibration_into_a_tiff(tmp_path: Path, pages: int, dtype: type, rgb: bool) -> None:
    calibration = read_calibrated(_imagej_stack(tmp_path / "in.tif"))[1]
    shape = (32, 32, 3) if rgb else (32, 32)
    written = [np.full(shape, i, dtype) for i in range(pages)]
    write_pages(tmp_path / "out.tif", written, calibration)
    resolution, imagej = _calibration_of(tmp_path / "out.tif")
    assert resolution == (250.0, 200.0)
    assert {key: imagej.get(key) for key in ("spacing", "unit", "zorigin")} == calibration["imagej"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), np.stack(written) if pages > 1 else written[0])


def test_write_pages_of_different_sizes_keeps_the_resolution_only(tmp_path: Path) -> None:
    calibration = read_calibrated(_imagej_stack(tmp_path / "in.tif"))[1]
    write_pages(tmp_path / "out.tif", [np.zeros((32, 32), np.uint8), np.zeros((16, 8), np.uint8)], calibration)
    resolution, imagej = _calibration_of(tmp_path / "out.tif")
    assert resolution == (250.0, 200.0) and imagej == {}
    assert [page.shape for page in read_pages(tmp_path / "out.tif")] == [(32, 32), (16, 8)]
    write_pages(tmp_path / "out.png", [np.zeros((8, 8), np.uint8)], calibration)  # PNG: ignored, still written
    assert read_image(tmp_path / "out.png").shape == (8, 8)
