"""open_volume: every supported store reads the same pixels as numpy, regions only, after pickling too;
bad inputs give one exact line."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.scale import Methods
from ome_zarr.writer import write_image

from seg.runtime.errors import InputError
from seg.runtime.volume.sources import VolumeSource, is_volume_spec, open_volume

SHAPE = (5, 70, 90)


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 65536, SHAPE, dtype=np.uint16)


def _zarr_array(path: Path, data: np.ndarray, zarr_format: int) -> None:
    chunks = (1,) * (data.ndim - 2) + (32, 32)
    array = zarr.create_array(store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                              zarr_format=zarr_format)  # type: ignore[arg-type]
    array[...] = data


def _zarr_v2(tmp: Path, data: np.ndarray) -> str:
    _zarr_array(tmp / "vol.zarr", data, 2)
    return str(tmp / "vol.zarr")


def _zarr_v3(tmp: Path, data: np.ndarray) -> str:
    _zarr_array(tmp / "vol.zarr", data, 3)
    return str(tmp / "vol.zarr")


def _inside_group(tmp: Path, data: np.ndarray) -> str:
    group = zarr.open_group(str(tmp / "group.zarr"), mode="w", zarr_format=2)
    group.create_group("sub").create_array("path", shape=data.shape, chunks=(1, 32, 32), dtype=data.dtype)[...] = data
    return str(tmp / "group.zarr" / "sub" / "path")


def _ome(tmp: Path, data: np.ndarray, zarr_format: int, axes: str = "zyx") -> str:
    group = zarr.open_group(str(tmp / "image.ome.zarr"), mode="w", zarr_format=zarr_format)  # type: ignore[arg-type]
    image = data.reshape((1,) * (len(axes) - 3) + data.shape)
    fmt = FormatV04() if zarr_format == 2 else FormatV05()
    write_image(image, group, fmt=fmt, axes=axes, scale_factors=(2,), method=Methods.NEAREST,
                storage_options={"chunks": (1,) * (len(axes) - 2) + (32, 32)})
    return str(tmp / "image.ome.zarr")


def _tiff(tmp: Path, data: np.ndarray) -> str:
    tifffile.imwrite(tmp / "stack.tif", data, compression="zlib")
    return str(tmp / "stack.tif")


def _tiff_pages(tmp: Path, data: np.ndarray) -> str:
    with tifffile.TiffWriter(tmp / "pages.tiff") as tif:
        for page in data:  # one shaped series per page
            tif.write(page)
    return str(tmp / "pages.tiff")


def _hdf5(tmp: Path, data: np.ndarray) -> str:
    with h5py.File(tmp / "vol.h5", "w") as handle:
        handle.create_dataset("em/raw", data=data, chunks=(1, 32, 32), compression="gzip")
    return f"{tmp / 'vol.h5'}:/em/raw"


WRITERS: dict[str, Callable[[Path, np.ndarray], str]] = {
    "zarr-v2": _zarr_v2,
    "zarr-v3": _zarr_v3,
    "zarr-inside-group": _inside_group,
    "ome-zarr-v0.4": lambda tmp, data: _ome(tmp, data, 2),
    "ome-zarr-v0.5-tczyx": lambda tmp, data: _ome(tmp, data, 3, "tczyx"),
    "ome-zarr-v0.4-czyx": lambda tmp, data: _ome(tmp, data, 2, "czyx"),
    "tiff": _tiff,
    "tiff-pages": _tiff_pages,
    "hdf5": _hdf5,
}


@pytest.mark.parametrize("kind", WRITERS)
def test_reads_what_numpy_holds(kind: str, tmp_path: Path, volume: np.ndarray) -> None:
    spec = WRITERS[kind](tmp_path, volume)
    source = open_volume(spec)
    assert (source.spec, source.shape, source.dtype) == (spec, SHAPE, np.dtype(np.uint16))
    for z in range(SHAPE[0]):
        np.testing.assert_array_equal(source.read(z, slice(0, 70), slice(0, 90)), volume[z])
    region = source.read(3, slice(10, 47), slice(33, 80))
    assert region.shape == (37, 47) and region.dtype == np.uint16
    np.testing.assert_array_equal(region, volume[3, 10:47, 33:80])
    np.testing.assert_array_equal(source.read(4, slice(60, 200), slice(85, None)), volume[4, 60:, 85:])


@pytest.mark.parametrize("kind", WRITERS)
def test_pickle_round_trip_then_read(kind: str, tmp_path: Path, volume: np.ndarray) -> None:
    source = open_volume(WRITERS[kind](tmp_path, volume))
    source.read(0, slice(0, 5), slice(0, 5))  # opens the handle in this process
    data = pickle.dumps(source)
    assert len(data) < 2000  # a description, not pixels or handles
    copy = pickle.loads(data)
    assert isinstance(copy, VolumeSource) and copy.shape == source.shape and copy.dtype == source.dtype
    np.testing.assert_array_equal(copy.read(2, slice(20, 64), slice(1, 89)), volume[2, 20:64, 1:89])
    copy.close()
    np.testing.assert_array_equal(copy.read(1, slice(0, 3), slice(0, 3)), volume[1, :3, :3])


def test_zarr_reads_only_the_chunks_of_the_region(tmp_path: Path, volume: np.ndarray) -> None:
    spec = _zarr_v3(tmp_path, volume)
    (Path(spec) / "c" / "2" / "2" / "2").write_bytes(b"not zstd")  # the chunk at z=2, y 64:70, x 64:90
    source = open_volume(spec)
    np.testing.assert_array_equal(source.read(2, slice(0, 64), slice(0, 90)), volume[2, :64])
    with pytest.raises(InputError, match=rf"^{spec}: cannot read slice z=2 rows 60:70 cols 0:90 \("):
        source.read(2, slice(60, 70), slice(0, 90))


def test_tiff_reads_one_page_at_a_time(tmp_path: Path, volume: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    source = open_volume(_tiff(tmp_path, volume))

    def whole_stack(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole stack was loaded")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", whole_stack)
    monkeypatch.setattr(tifffile, "imread", lambda *a, **k: whole_stack() if not k.get("aszarr") else _imread(*a, **k))
    np.testing.assert_array_equal(source.read(4, slice(5, 9), slice(0, 90)), volume[4, 5:9])


_imread = tifffile.imread


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_supported_pixel_types(tmp_path: Path, dtype: type) -> None:
    data = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(dtype)
    _zarr_array(tmp_path / "v.zarr", data, 3)
    source = open_volume(tmp_path / "v.zarr")
    assert source.dtype == np.dtype(dtype) and source.spec == str(tmp_path / "v.zarr")
    np.testing.assert_array_equal(source.read(1, slice(0, 3), slice(0, 4)), data[1])


@pytest.mark.parametrize(("spec", "expected"), [
    ("vol.zarr", True), ("data/image.ome.zarr/", True), ("group.zarr/sub/path", True), ("VOL.ZARR/0", True),
    ("cells.h5:/em/raw", True), ("cells.hdf5:raw", True), ("cells.h5", True),
    ("slice.png", False), ("stack.tif", False), ("images", False), ("vol.zarr.png", False),
])
def test_is_volume_spec(spec: str, expected: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert is_volume_spec(spec) is expected


def test_is_volume_spec_for_a_zarr_folder_without_the_suffix(tmp_path: Path, volume: np.ndarray) -> None:
    _zarr_array(tmp_path / "store", volume, 3)
    assert is_volume_spec(tmp_path / "store")
    assert not is_volume_spec(tmp_path)


def _error(spec: str | Path) -> str:
    with pytest.raises(InputError) as info:
        open_volume(spec)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_inputs(tmp_path: Path, volume: np.ndarray) -> None:
    assert _error(tmp_path / "gone.zarr") == f"{tmp_path / 'gone.zarr'}: no such file or folder; check the path"
    assert _error(tmp_path / "gone.tif") == f"{tmp_path / 'gone.tif'}: no such file; check the path"
    gone = tmp_path / "gone.h5"
    assert _error(f"{gone}:/raw") == f"{gone}:/raw: no such file {gone}; check the path"
    spec = _inside_group(tmp_path, volume)
    assert _error(spec + "x") == (f"{spec}x: no array or group 'sub/pathx' inside the Zarr store "
                                  f"{tmp_path / 'group.zarr'}; check the path inside the store")
    h5 = _hdf5(tmp_path, volume).split(":/")[0]
    assert _error(f"{h5}:/em/nope") == (f"{h5}:/em/nope: no dataset /em/nope; the file holds /em/raw: "
                                        f"give one as {h5}:/em/raw")
    assert _error(h5) == f"{h5}: an HDF5 file, not a dataset; the file holds /em/raw: give one as {h5}:/em/raw"
    assert _error(f"{h5}:/em") == (f"{h5}:/em: /em is a group, not a dataset; the file holds /em/raw: "
                                   f"give one as {h5}:/em/raw")


def test_a_folder_that_is_not_zarr(tmp_path: Path) -> None:
    (tmp_path / "empty.zarr").mkdir()
    assert _error(tmp_path / "empty.zarr") == (f"{tmp_path / 'empty.zarr'}: not a Zarr array or group (no zarr.json, "
                                               ".zarray or .zgroup); give a .zarr array or OME-Zarr image")
    (tmp_path / "pngs").mkdir()
    assert _error(tmp_path / "pngs") == (f"{tmp_path / 'pngs'}: a folder without Zarr metadata, not a volume store; "
                                         "give a .zarr array or OME-Zarr image (images in a folder are "
                                         "segmented into a folder of masks: give an --output that is not a .zarr)")
    (tmp_path / "broken.zarr").mkdir()
    (tmp_path / "broken.zarr" / "zarr.json").write_text("{")
    assert _error(tmp_path / "broken.zarr").startswith(f"{tmp_path / 'broken.zarr'}: unreadable Zarr metadata (")


TWO_D = "a 2-D image of shape (70, 90), not a (Z, Y, X) volume: use seg infer on image files"


def test_two_d_inputs(tmp_path: Path, volume: np.ndarray) -> None:
    _zarr_array(tmp_path / "slice.zarr", volume[0], 3)
    assert _error(tmp_path / "slice.zarr") == f"{tmp_path / 'slice.zarr'}: {TWO_D}"
    tifffile.imwrite(tmp_path / "one.tif", volume[0])
    assert _error(tmp_path / "one.tif") == f"{tmp_path / 'one.tif'}: {TWO_D}"
    group = zarr.open_group(str(tmp_path / "yx.ome.zarr"), mode="w", zarr_format=3)
    write_image(volume[0], group, fmt=FormatV05(), axes="yx", scale_factors=(), method=Methods.NEAREST)
    assert _error(tmp_path / "yx.ome.zarr") == f"{tmp_path / 'yx.ome.zarr'}: {TWO_D}"


def test_channel_axes(tmp_path: Path, volume: np.ndarray) -> None:
    group = zarr.open_group(str(tmp_path / "rgb.ome.zarr"), mode="w", zarr_format=2)
    write_image(np.stack([volume] * 3), group, fmt=FormatV04(), axes="czyx", scale_factors=(), method=Methods.NEAREST)
    assert _error(tmp_path / "rgb.ome.zarr") == (f"{tmp_path / 'rgb.ome.zarr'}: a channel axis of size 3: "
                                                 "give a single-channel volume")
    _zarr_array(tmp_path / "rgb.zarr", np.zeros((2, 8, 8, 3), np.uint8), 3)
    assert _error(tmp_path / "rgb.zarr") == (f"{tmp_path / 'rgb.zarr'}: shape (2, 8, 8, 3) has a channel axis of "
                                             "size 3: give a single-channel volume")
    _zarr_array(tmp_path / "gray4.zarr", np.zeros((2, 8, 8, 1), np.uint8), 3)
    assert _error(tmp_path / "gray4.zarr") == (f"{tmp_path / 'gray4.zarr'}: shape (2, 8, 8, 1) has a trailing "
                                               "channel axis of size 1; store the volume as (Z, Y, X)")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((2, 8, 8, 3), np.uint8), photometric="rgb")
    assert _error(tmp_path / "rgb.tif").endswith("not a gray stack; convert it to gray, one page per slice")
    for name, pixels, planar in (("one.tif", np.zeros((500, 600, 3), np.uint8), None),  # read as 500 slices before
                                 ("planar.tif", np.zeros((3, 50, 60), np.uint8), "separate")):  # as 3 slices
        tifffile.imwrite(tmp_path / name, pixels, photometric="rgb", planarconfig=planar)
        assert _error(tmp_path / name).startswith(f"{tmp_path / name}: an RGB TIFF (axes ")


def test_leading_size_one_axes_of_a_plain_array_are_squeezed(tmp_path: Path, volume: np.ndarray) -> None:
    _zarr_array(tmp_path / "v.zarr", volume[None, None], 2)
    source = open_volume(tmp_path / "v.zarr")
    assert source.shape == SHAPE
    np.testing.assert_array_equal(source.read(2, slice(3, 9), slice(4, 7)), volume[2, 3:9, 4:7])


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64, np.uint64, np.complex64, np.bool_])
def test_unsupported_pixel_types(tmp_path: Path, dtype: type) -> None:
    _zarr_array(tmp_path / "v.zarr", np.zeros((2, 4, 4), dtype), 3)
    assert _error(tmp_path / "v.zarr") == (f"{tmp_path / 'v.zarr'}: {np.dtype(dtype)} pixels are not supported: "
                                           "convert to uint8/uint16 or float32 in [0, 1]")


def test_unsupported_pixel_type_in_hdf5(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "v.h5", "w") as handle:
        handle["raw"] = np.zeros((2, 4, 4), np.int32)
    spec = f"{tmp_path / 'v.h5'}:/raw"
    assert _error(spec) == f"{spec}: int32 pixels are not supported: convert to uint8/uint16 or float32 in [0, 1]"


def test_group_that_holds_arrays(tmp_path: Path, volume: np.ndarray) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3)
    group.create_array("raw", shape=SHAPE, dtype="uint16")
    group.create_group("seg").create_array("cells", shape=(2, 3), dtype="uint8")
    spec = str(tmp_path / "g.zarr")
    assert _error(spec) == (f"{spec}: a Zarr group, neither an array nor an OME-Zarr image; it holds "
                            f"array raw (5, 70, 90), array seg/cells (2, 3): point at one, e.g. {spec}/raw")


def test_group_that_holds_images(tmp_path: Path, volume: np.ndarray) -> None:
    root = zarr.open_group(str(tmp_path / "plate.zarr"), mode="w", zarr_format=3)
    write_image(volume, root.create_group("0"), fmt=FormatV05(), axes="zyx", scale_factors=(2,),
                method=Methods.NEAREST)
    spec = str(tmp_path / "plate.zarr")
    assert _error(spec) == (f"{spec}: a Zarr group, neither an array nor an OME-Zarr image; it holds "
                            f"OME-Zarr image 0: point at one, e.g. {spec}/0")
    np.testing.assert_array_equal(open_volume(f"{spec}/0").read(1, slice(0, 70), slice(0, 90)), volume[1])


def test_group_without_arrays(tmp_path: Path) -> None:
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w", zarr_format=2).create_group("nothing")
    spec = str(tmp_path / "empty.zarr")
    assert _error(spec) == (f"{spec}: a Zarr group without arrays; give a Zarr array, an array inside a group "
                            "(group.zarr/sub/path) or an OME-Zarr image")


def test_not_a_volume(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    assert _error(tmp_path / "notes.txt") == (f"{tmp_path / 'notes.txt'}: not a volume store; give a .zarr array "
                                              "or OME-Zarr image, a multi-page .tif stack or an HDF5 dataset "
                                              "as file.h5:/dataset")


def test_a_relative_spec_reads_from_another_folder(tmp_path: Path, volume: np.ndarray,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "here").mkdir()
    _zarr_v3(tmp_path / "here", volume)
    monkeypatch.chdir(tmp_path / "here")
    source = open_volume("vol.zarr")
    assert source.spec == "vol.zarr"
    monkeypatch.chdir(tmp_path)  # a worker started elsewhere
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(source)).read(0, slice(0, 9), slice(0, 9)),
                                  volume[0, :9, :9])


@pytest.mark.parametrize("kind", ["tiff", "hdf5", "zarr-v3"])
def test_reads_from_several_threads(kind: str, tmp_path: Path, volume: np.ndarray) -> None:
    source = open_volume(WRITERS[kind](tmp_path, volume))
    regions = [(z, slice(y, y + 30), slice(x, x + 40)) for z in range(SHAPE[0]) for y in (0, 33) for x in (0, 41)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda region: source.read(*region), regions * 3))
    for (z, rows, cols), result in zip(regions * 3, results, strict=True):
        np.testing.assert_array_equal(result, volume[z, rows, cols])
