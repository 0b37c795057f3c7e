"""Voxel size: read from OME-Zarr, ImageJ TIFF and HDF5 metadata, written into the output's NGFF metadata at
every level, and carried from input to output by ``segment_volume``; unusable metadata warns, never stops."""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr.scale import Methods
from ome_zarr.writer import write_image

from seg.runtime.errors import SegWarning
from seg.runtime.volume.blocks import plan_blocks
from seg.runtime.volume.dask_run import segment_volume
from seg.runtime.volume.sources import open_volume
from seg.runtime.volume.store import VolumeOutput
from seg.runtime.volume.voxels import PIXELS, VoxelSize, ngff_unit
from tests.runtime.volume.conftest import write_zarr

EM = VoxelSize((50.0, 4.0, 4.0), ("nanometer",) * 3, (0.0, 0.0, 0.0))
AXES_NM = [{"name": axis, "type": "space", "unit": "nanometer"} for axis in "zyx"]
SETTINGS = {"model_sha256": "a" * 64, "threshold": 0.5, "block": 512, "tile": 512, "halo": 64, "source": "in"}


def _ome_image(path: Path, shape: tuple[int, int, int], zarr_format: int = 3, transforms: object = None) -> Path:
    """An OME-Zarr image of 2 levels written by ome_zarr at 50 x 4 x 4 nm, its level 0 transformations then
    replaced by ``transforms`` when given."""
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)  # type: ignore[arg-type]
    data = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    write_image(data, group, fmt=FormatV04() if zarr_format == 2 else FormatV05(), axes="zyx", scale_factors=(2,),
                method=Methods.NEAREST, scale={"z": 50.0, "y": 4.0, "x": 4.0},
                axes_units={axis: "nanometer" for axis in "zyx"}, storage_options={"chunks": (1, 64, 64)})
    if transforms is not None:
        _edit_multiscales(path, lambda image: image["datasets"][0].update(coordinateTransformations=transforms))
    return path


def _edit_multiscales(path: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    name = "zarr.json" if (path / "zarr.json").is_file() else ".zattrs"
    meta = json.loads((path / name).read_text())
    attributes = meta["attributes"] if name == "zarr.json" else meta
    edit((attributes.get("ome") or attributes)["multiscales"][0])
    (path / name).write_text(json.dumps(meta))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_scale_translation_and_units(tmp_path: Path, zarr_format: int) -> None:
    path = _ome_image(tmp_path / "em.ome.zarr", (2, 128, 128), zarr_format)
    assert open_volume(path).voxel == EM
    assert EM.describe() == "50 x 4 x 4 nanometer (z, y, x)"
    _ome_image(path, (2, 128, 128), zarr_format, [{"type": "scale", "scale": [50.0, 4.0, 4.0]},
                                                   {"type": "translation", "translation": [100.0, 8.0, 12.0]}])
    assert open_volume(path).voxel == VoxelSize((50.0, 4.0, 4.0), ("nanometer",) * 3, (100.0, 8.0, 12.0))


def test_the_images_own_transformations_follow_the_datasets(tmp_path: Path) -> None:
    """NGFF: multiscale-level transformations apply after level 0's: scale, then shift, then scale again."""
    path = _ome_image(tmp_path / "em.ome.zarr", (2, 64, 64), 3, [
        {"type": "scale", "scale": [1.0, 1.0, 1.0]}, {"type": "translation", "translation": [0.0, 1.0, 1.0]}])
    _edit_multiscales(path, lambda image: image.update(coordinateTransformations=[
        {"type": "scale", "scale": [50.0, 4.0, 4.0]}, {"type": "translation", "translation": [0.0, 0.0, 2.0]}]))
    voxel = open_volume(path).voxel
    assert voxel.scale == (50.0, 4.0, 4.0) and voxel.translation == (0.0, 4.0, 6.0)


def test_leading_time_and_channel_axes_are_dropped(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "em.ome.zarr"), mode="w", zarr_format=3)
    write_image(np.zeros((1, 1, 2, 64, 64), np.uint8), group, fmt=FormatV05(), axes="tczyx", scale_factors=(),
                scale={"t": 3.0, "c": 1.0, "z": 50.0, "y": 4.0, "x": 4.0},
                axes_units={"t": "second", **{axis: "nanometer" for axis in "zyx"}})
    assert open_volume(tmp_path / "em.ome.zarr").voxel == EM


def test_a_level_array_of_an_ome_zarr_image_has_that_levels_size(tmp_path: Path) -> None:
    path = _ome_image(tmp_path / "em.ome.zarr", (2, 128, 128))
    level = sorted(entry.name for entry in path.iterdir() if entry.is_dir())[1]  # ome_zarr names them s0, s1
    assert open_volume(path / level).voxel == VoxelSize((50.0, 8.0, 8.0), ("nanometer",) * 3, (0.0, 2.0, 2.0))


@pytest.mark.parametrize("multiscales", [5, [{"datasets": 5}], [{"datasets": [{"path": "raw"}], "axes": 7}]])
def test_an_array_in_a_group_with_broken_multiscales_still_opens(tmp_path: Path, multiscales: object) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3)
    group.create_array("raw", shape=(2, 32, 32), dtype=np.uint8)
    group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        source = open_volume(tmp_path / "g.zarr" / "raw")
    assert source.shape == (2, 32, 32) and source.voxel == PIXELS


def test_the_voxel_size_travels_with_a_pickled_source(tmp_path: Path) -> None:
    source = open_volume(_ome_image(tmp_path / "em.ome.zarr", (2, 64, 64)))
    assert pickle.loads(pickle.dumps(source)).voxel == EM


def test_images_without_axes_are_pixels_without_a_warning(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    path = _ome_image(tmp_path / "em.ome.zarr", (2, 64, 64), 2, [])
    _edit_multiscales(path, lambda image: image.pop("axes"))
    assert open_volume(path).voxel == PIXELS
    assert not [w for w in recwarn if issubclass(w.category, SegWarning)]


@pytest.mark.parametrize("bad", [
    [{"type": "scale", "scale": [0.0, 4.0, 4.0]}],
    [{"type": "scale", "scale": [50.0, 4.0]}],
    [{"type": "scale", "path": "scale.bin"}],
    [{"type": "affine", "affine": [[1, 0, 0, 0]] * 3}],
    {"type": "scale", "scale": [50.0, 4.0, 4.0]},
    ["scale"],
])
def test_unusable_transformations_warn_and_give_pixels(tmp_path: Path, bad: object) -> None:
    path = _ome_image(tmp_path / "em.ome.zarr", (2, 64, 64), 3, bad)
    with pytest.warns(SegWarning, match=r"em\.ome\.zarr: unusable OME-Zarr coordinate transformations \("):
        source = open_volume(path)
    assert source.voxel == PIXELS and source.shape == (2, 64, 64)


def test_imagej_tiff_stack(tmp_path: Path) -> None:
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((3, 32, 32), np.uint8), imagej=True, resolution=(1 / 0.004, 1 / 0.005),
                     metadata={"spacing": 0.05, "unit": "\\u00B5m", "axes": "ZYX"})
    voxel = open_volume(path).voxel
    assert voxel.units == ("micrometer",) * 3 and voxel.translation == (0.0, 0.0, 0.0)
    np.testing.assert_allclose(voxel.scale, (0.05, 0.005, 0.004), rtol=1e-6)


def test_imagej_per_axis_units_and_origin(tmp_path: Path) -> None:
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((3, 32, 32), np.uint8), imagej=True, resolution=(0.25, 0.25),
                     metadata={"spacing": 0.05, "unit": "nm", "zunit": "micron", "axes": "ZYX",
                               "xorigin": 10.0, "yorigin": 0.0, "zorigin": 2.0})
    voxel = open_volume(path).voxel
    assert voxel.units == ("micrometer", "nanometer", "nanometer")
    np.testing.assert_allclose(voxel.scale, (0.05, 4.0, 4.0))
    np.testing.assert_allclose(voxel.translation, (-0.1, 0.0, -40.0))


def test_an_uncalibrated_imagej_stack_is_pixels(tmp_path: Path) -> None:
    """ImageJ writes a unit only for a calibrated image; a resolution without one is not a voxel size."""
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 32, 32), np.uint8), imagej=True, resolution=(72, 72))
    assert open_volume(tmp_path / "stack.tif").voxel == PIXELS


def test_plain_tiff_and_plain_zarr_are_pixels(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 32, 32), np.uint8), photometric="minisblack",
                     resolution=(72, 72))
    zarr.create_array(store=str(tmp_path / "vol.zarr"), shape=(2, 32, 32), dtype=np.uint8)
    assert open_volume(tmp_path / "stack.tif").voxel == PIXELS
    assert open_volume(tmp_path / "vol.zarr").voxel == PIXELS


@pytest.mark.parametrize(("attributes", "shape", "expected"), [
    ({"element_size_um": np.float32([0.05, 0.004, 0.004])}, (2, 16, 16),
     VoxelSize((0.05, 0.004, 0.004), ("micrometer",) * 3)),
    ({"element_size_um": [1.0, 0.05, 0.004, 0.004]}, (1, 2, 16, 16),
     VoxelSize((0.05, 0.004, 0.004), ("micrometer",) * 3)),
    ({"resolution": [40, 4, 4], "offset": [80, 0, 8]}, (2, 16, 16),
     VoxelSize((40.0, 4.0, 4.0), translation=(80.0, 0.0, 8.0))),
    ({"resolution": 8.0}, (2, 16, 16), VoxelSize((8.0, 8.0, 8.0))),
])
def test_hdf5_attributes(tmp_path: Path, attributes: dict[str, object], shape: tuple[int, ...],
                         expected: VoxelSize) -> None:
    with h5py.File(tmp_path / "em.h5", "w") as handle:
        dataset = handle.create_dataset("raw", data=np.zeros(shape, np.uint8))
        dataset.attrs.update(attributes)
    assert open_volume(f"{tmp_path / 'em.h5'}:/raw").voxel == expected


def test_describe() -> None:
    micrometers = VoxelSize((0.05, 0.004, 0.004), ("micrometer",) * 3)
    assert micrometers.describe() == "0.05 x 0.004 x 0.004 micrometer (z, y, x)"
    assert VoxelSize((40.0, 4.0, 4.0)).describe() == "40 x 4 x 4 (no unit) (z, y, x)"
    assert PIXELS.describe() == "1 x 1 x 1 pixel (z, y, x)"
    assert VoxelSize((1.0, 2.0, 2.0), ("micrometer", None, None)).describe() == "1 x 2 x 2 micrometer x ? x ? (z, y, x)"


@pytest.mark.parametrize(("value", "problem"), [
    ([40, -4, 4], r"voxel size \[40\.0, -4\.0, 4\.0\] is not positive"),
    ("444", r"'444' is not a list of numbers"),
    ([40, 4], r"2 spatial axes"),
])
def test_hdf5_bad_attribute_warns(tmp_path: Path, value: object, problem: str) -> None:
    with h5py.File(tmp_path / "em.h5", "w") as handle:
        handle.create_dataset("raw", data=np.zeros((2, 16, 16), np.uint8)).attrs["resolution"] = value
    with pytest.warns(SegWarning, match=rf"em\.h5:/raw: unusable resolution attribute \({problem}\)"):
        assert open_volume(f"{tmp_path / 'em.h5'}:/raw").voxel == PIXELS


@pytest.mark.parametrize(("given", "expected"), [
    ("um", "micrometer"), ("\u00b5m", "micrometer"), ("\u03bcm", "micrometer"), ("micron", "micrometer"),
    ("\\u00B5m", "micrometer"), ("\\u03BCm", "micrometer"), ("\\u00C5", "angstrom"), ("\u212b", "angstrom"),
    ("nm", "nanometer"), ("Nanometer", "nanometer"), ("Å", "angstrom"), ("Mm", None), ("a", None), ("pixel", None),
    ("", None), (None, None),
])
def test_unit_names(given: object, expected: str | None) -> None:
    assert ngff_unit(given) == expected


def test_output_levels_carry_the_voxel_size(tmp_path: Path) -> None:
    """Level k is level 0 [:, ::2**k, ::2**k]: y and x grow 2**k, z and the origin stay (ome_zarr reads it)."""
    voxel = VoxelSize((50.0, 4.0, 4.0), ("nanometer",) * 3, (100.0, 0.0, 0.0))
    output = VolumeOutput.create_or_resume(tmp_path / "out.zarr", (1, 600, 600), SETTINGS, voxel=voxel)
    block = plan_blocks((1, 600, 600), 512, 64)
    for item in block:
        output.write(item, np.zeros(item.shape, np.float32))
        output.mark_done(item)
    output.finish(block)
    image, _, mask = Reader(parse_url(str(tmp_path / "out.zarr")))()
    for node in (image, mask):
        assert node.metadata["coordinateTransformations"] == [
            [{"type": "scale", "scale": [50.0, 4.0 * 2**k, 4.0 * 2**k]},
             {"type": "translation", "translation": [100.0, 0.0, 0.0]}] for k in range(output.levels)]
        assert [axis.get("unit") for axis in node.metadata["axes"]] == ["nanometer"] * 3
    assert open_volume(tmp_path / "out.zarr").voxel == voxel  # seg reads its own output back at the same size


def test_segment_volume_carries_the_input_voxel_size(dask_client: object, volume_model: Path, tmp_path: Path) -> None:
    path = _ome_image(tmp_path / "em.ome.zarr", (2, 300, 300))
    lines: list[str] = []
    segment_volume(path, volume_model, tmp_path / "out.zarr", client=dask_client, block=512, log=lines.append)
    assert "voxel size 50 x 4 x 4 nanometer (z, y, x) (the input's)" in lines
    array = write_zarr(tmp_path / "plain.zarr", np.zeros((1, 300, 300), np.uint8))
    segment_volume(array, volume_model, tmp_path / "plain-out.zarr", client=dask_client, block=512, log=lines.append)
    assert "voxel size: the input records no usable one; the output is in pixels" in lines
    assert open_volume(tmp_path / "plain-out.zarr").voxel == PIXELS
    assert open_volume(tmp_path / "out.zarr").voxel == EM
    ome = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["ome"]
    assert ome["multiscales"][0]["axes"] == AXES_NM
