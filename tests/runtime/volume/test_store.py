"""VolumeOutput: blocks written by several processes read back through independent readers (ome_zarr and plain
zarr) at every level; resume, refusals and overwrite; never a half-made output."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader

from seg.runtime.errors import InputError, SegError
from seg.runtime.volume import store
from seg.runtime.volume.blocks import Block, plan_blocks
from seg.runtime.volume.store import VolumeOutput, level_count, level_shape

SHAPE = (3, 700, 1100)
SETTINGS = {"model_sha256": "a" * 64, "threshold": 0.5, "block": 512, "tile": 512, "halo": 64, "source": "in.zarr"}


def _prob(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    prob = np.random.default_rng(3).random(shape, dtype=np.float32)
    prob[0, :5, :5] = (0.0, 1.0, 0.5, 0.49999, 0.002)  # the range's ends and the threshold
    return prob


def _encoded(prob: np.ndarray, dtype: str) -> np.ndarray:
    return np.rint(prob * 255).astype(np.uint8) if dtype == "uint8" else prob.astype(dtype)


def _write_all(output: VolumeOutput, prob: np.ndarray, block: int = 512) -> list[Block]:
    blocks = plan_blocks(output.shape, block, 64)
    for item in blocks:
        output.write(item, prob[item.z, item.rows, item.cols])
        output.mark_done(item)
    return blocks


@pytest.mark.parametrize("prob_dtype", ["uint8", "float16", "float32"])
def test_independent_readers_see_what_was_written(tmp_path: Path, prob_dtype: str) -> None:
    path = tmp_path / "out.zarr"
    prob = _prob()
    output = VolumeOutput.create_or_resume(path, SHAPE, {**SETTINGS, "block": 1024}, prob_dtype=prob_dtype)
    assert output.levels == 4
    output.finish(_write_all(output, prob, 1024))
    expected_prob, expected_mask = _encoded(prob, prob_dtype), np.where(prob >= 0.5, 255, 0).astype(np.uint8)

    image, labels, mask = Reader(parse_url(str(path)))()
    assert any(isinstance(spec, Multiscales) for spec in image.specs)
    assert [axis["name"] for axis in image.metadata["axes"]] == ["z", "y", "x"]
    assert image.metadata["coordinateTransformations"] == [
        [{"type": "scale", "scale": [1.0, 2.0**k, 2.0**k]}] for k in range(4)]
    assert any(isinstance(spec, Label) for spec in mask.specs)
    assert set(mask.metadata["color"]) == {0, 255}
    for k in range(4):
        step = 2**k
        np.testing.assert_array_equal(np.asarray(image.data[k]), expected_prob[:, ::step, ::step])
        np.testing.assert_array_equal(np.asarray(mask.data[k]), expected_mask[:, ::step, ::step])


def test_plain_zarr_levels_are_level_zero_subsampled(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    output = VolumeOutput.create_or_resume(path, SHAPE, SETTINGS)
    output.finish(_write_all(output, _prob()))
    root = zarr.open_group(str(path), mode="r")
    for group in (root, root["labels/mask"]):
        level0 = group["0"][...]
        for k in range(1, 4):
            level = group[str(k)]
            assert level.chunks == (1, 512 >> k, 512 >> k) and level.shape == level_shape(SHAPE, k)
            np.testing.assert_array_equal(level[...], level0[:, :: 2**k, :: 2**k])
    ome = root.attrs["ome"]
    assert ome["version"] == "0.5" and [d["path"] for d in ome["multiscales"][0]["datasets"]] == ["0", "1", "2", "3"]
    assert root["labels"].attrs["ome"]["labels"] == ["mask"]
    colors = root["labels/mask"].attrs["ome"]["image-label"]["colors"]
    assert [color["label-value"] for color in colors] == [0, 255]
    assert root.attrs["seg"] == SETTINGS
    assert root.attrs["seg_output"] == {"format": 1, "shape": list(SHAPE), "prob_dtype": "uint8", "chunk": 512,
                                        "levels": 4, "complete": 18}


def _write_in_process(output: VolumeOutput, item: Block, prob: np.ndarray) -> str:
    output.write(item, prob)
    output.mark_done(item)
    return item.key


def test_blocks_written_by_several_processes(tmp_path: Path) -> None:
    shape = (2, 1030, 600)
    prob = _prob(shape)
    output = VolumeOutput.create_or_resume(tmp_path / "out.zarr", shape, SETTINGS)
    blocks = plan_blocks(shape, 512, 64)
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        keys = list(pool.map(_write_in_process, [output] * len(blocks), blocks,
                             [prob[b.z, b.rows, b.cols] for b in blocks]))
    assert set(keys) == output.done_keys() == {b.key for b in blocks}
    output.finish()
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    np.testing.assert_array_equal(root["0"][...], _encoded(prob, "uint8"))
    np.testing.assert_array_equal(root["labels/mask/2"][...], np.where(prob >= 0.5, 255, 0)[:, ::4, ::4])


@pytest.mark.parametrize(("shape", "levels"), [
    ((1, 1, 1), 1), ((2, 2, 2), 1), ((2, 3, 1), 2), ((1, 4, 4), 2), ((1, 5, 5), 3), ((1, 100, 9), 4), ((9, 4096, 1), 4),
])
def test_level_count(shape: tuple[int, int, int], levels: int) -> None:
    assert level_count(shape) == levels


def test_resume_keeps_the_markers(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    output = VolumeOutput.create_or_resume(path, SHAPE, SETTINGS)
    prob = _prob()
    first, second = plan_blocks(SHAPE, 512, 64)[:2]
    output.write(first, prob[first.z, first.rows, first.cols])
    output.mark_done(first)
    output.write(second, prob[second.z, second.rows, second.cols])  # written, killed before its marker
    resumed = VolumeOutput.create_or_resume(path, SHAPE, dict(SETTINGS))
    assert resumed.done_keys() == {first.key}
    with pytest.raises(SegError) as info:
        resumed.finish()
    assert str(info.value) == (f"{path}: 17 of 18 blocks not written (z0_y0_x512, z0_y0_x1024, z0_y512_x0 ...); "
                               "run the same command again to finish them")
    root = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(root["0"][0, :512, :512], _encoded(prob[0, :512, :512], "uint8"))


def test_overwrite_also_removes_copies_a_killed_replacement_left(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    VolumeOutput.create_or_resume(path, SHAPE, SETTINGS)
    left = tmp_path / ".out.zarr.tmp-old-0badc0de"  # set aside by a replacement killed while deleting it
    (left / "0").mkdir(parents=True)
    other = tmp_path / ".other.zarr.tmp-old-12345678"  # another output's: not this run's to delete
    other.mkdir()
    VolumeOutput.create_or_resume(path, SHAPE, SETTINGS, overwrite=True)
    assert not left.exists() and other.exists() and (path / "zarr.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.zarr")] == []


def test_pickle_round_trip(tmp_path: Path) -> None:
    output = VolumeOutput.create_or_resume(tmp_path / "out.zarr", SHAPE, SETTINGS)
    item = Block(1, slice(512, 700), slice(1024, 1100))
    output.write(item, np.full(item.shape, 0.75, np.float32))  # opens the arrays in this process
    data = pickle.dumps(output)
    assert len(data) < 2000
    copy = pickle.loads(data)
    assert (copy.path, copy.shape, copy.levels, copy.threshold) == (output.path, SHAPE, 4, 0.5)
    copy.write(item, np.full(item.shape, 0.25, np.float32))
    copy.mark_done(item)
    assert output.done_keys() == {"z1_y512_x1024"}
    assert zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")[1, 600, 1050] == 64


def test_other_shape_or_settings_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    VolumeOutput.create_or_resume(path, SHAPE, SETTINGS)
    with pytest.raises(InputError) as info:
        VolumeOutput.create_or_resume(path, (4, 700, 1100), SETTINGS)
    assert str(info.value) == (f"{path}: an existing seg output that differs (shape [3, 700, 1100] there, "
                               "[4, 700, 1100] now); pass --overwrite to replace it or choose another --output")
    with pytest.raises(InputError) as info:
        VolumeOutput.create_or_resume(path, SHAPE, {**SETTINGS, "model_sha256": "b" * 64, "threshold": 0.6})
    assert str(info.value) == (f"{path}: an existing seg output that differs (model_sha256 aaaaaaaaaaaa... there, "
                               "bbbbbbbbbbbb... now; threshold 0.5 there, 0.6 now); pass --overwrite to replace it "
                               "or choose another --output")
    with pytest.raises(InputError, match=r"\(prob_dtype uint8 there, float32 now\); pass --overwrite"):
        VolumeOutput.create_or_resume(path, SHAPE, SETTINGS, prob_dtype="float32")
    with pytest.raises(InputError, match=r"\(prob_dtype uint8 there, float32 now\); pass --overwrite"):
        VolumeOutput.create_or_resume(path, SHAPE, {**SETTINGS, "prob_dtype": "float32"}, prob_dtype="float32")


def test_overwrite_replaces(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    output = VolumeOutput.create_or_resume(path, SHAPE, SETTINGS)
    item = plan_blocks(SHAPE, 512, 64)[0]
    output.write(item, np.ones(item.shape, np.float32))
    output.mark_done(item)
    fresh = VolumeOutput.create_or_resume(path, (1, 6, 5), {**SETTINGS, "threshold": 0.9}, overwrite=True)
    assert fresh.done_keys() == set() and fresh.levels == 3
    root = zarr.open_group(str(path), mode="r")
    assert root.attrs["seg"]["threshold"] == 0.9 and root["0"].shape == (1, 6, 5)
    assert root["0"][0, 0, 0] == 0  # the old pixels are gone
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]


def test_a_folder_seg_did_not_make_is_never_touched(tmp_path: Path) -> None:
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3).create_array("0", shape=(1,), dtype="u1")
    (tmp_path / "file.zarr").write_text("x")
    for path in (folder, tmp_path / "other.zarr", tmp_path / "file.zarr"):
        for overwrite in (False, True):
            with pytest.raises(InputError) as info:
                VolumeOutput.create_or_resume(path, SHAPE, SETTINGS, overwrite=overwrite)
            assert str(info.value) == (f"{path}: exists and is not a seg volume output (no seg metadata in its "
                                       "zarr.json); choose another --output (seg never deletes what it did not make)")
    assert (folder / "thesis.txt").read_text() == "years of work"
    assert (tmp_path / "other.zarr" / "0" / "zarr.json").is_file()


def test_an_empty_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "out.zarr").mkdir()
    output = VolumeOutput.create_or_resume(tmp_path / "nested" / "out.zarr", SHAPE, SETTINGS)
    assert output.path.is_dir()
    assert VolumeOutput.create_or_resume(tmp_path / "out.zarr", SHAPE, SETTINGS).done_keys() == set()


def test_a_crash_while_creating_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = store._update_attributes

    def crash_on_seg(folder: Path, updates: dict[str, object]) -> None:
        if "seg" in updates:
            raise KeyboardInterrupt  # killed before the last metadata write
        real(folder, updates)

    monkeypatch.setattr(store, "_update_attributes", crash_on_seg)
    with pytest.raises(KeyboardInterrupt):
        VolumeOutput.create_or_resume(tmp_path / "out.zarr", SHAPE, SETTINGS)
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_output_is_not_resumed(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    VolumeOutput.create_or_resume(path, SHAPE, SETTINGS)
    meta = json.loads((path / "labels" / "mask" / "2" / "zarr.json").read_text())
    (path / "labels" / "mask" / "2" / "zarr.json").write_text(json.dumps({**meta, "shape": [1, 1, 1]}))
    with pytest.raises(InputError) as info:
        VolumeOutput.create_or_resume(path, SHAPE, SETTINGS)
    assert str(info.value) == (f"{path}: damaged seg output (array labels/mask/2 is missing or changed); "
                               "pass --overwrite to make it afresh")


def test_finish_is_idempotent_and_repairs_metadata(tmp_path: Path) -> None:
    path = tmp_path / "out.zarr"
    output = VolumeOutput.create_or_resume(path, (1, 600, 600), SETTINGS)
    blocks = _write_all(output, _prob((1, 600, 600)))
    output.finish()
    meta = json.loads((path / "labels" / "zarr.json").read_text())
    meta["attributes"] = {}
    (path / "labels" / "zarr.json").write_text(json.dumps(meta))
    output.finish(blocks)
    output.finish(blocks)
    assert zarr.open_group(str(path), mode="r")["labels"].attrs["ome"]["labels"] == ["mask"]
    assert VolumeOutput.create_or_resume(path, (1, 600, 600), SETTINGS).done_keys() == {b.key for b in blocks}


def test_bad_writes(tmp_path: Path) -> None:
    output = VolumeOutput.create_or_resume(tmp_path / "out.zarr", SHAPE, SETTINGS)
    item = Block(0, slice(0, 512), slice(0, 512))
    with pytest.raises(ValueError, match=r"expected a \(512, 512\) float probability"):
        output.write(item, np.zeros((512, 511), np.float32))
    with pytest.raises(ValueError, match="float probability"):
        output.write(item, np.zeros((512, 512), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        output.write(item, np.full((512, 512), np.nan, np.float32))
    for bad in (Block(0, slice(256, 768), slice(0, 512)), Block(0, slice(0, 300), slice(0, 512)),
                Block(3, slice(0, 512), slice(0, 512))):
        with pytest.raises(ValueError, match="not whole 512-pixel chunks"):
            output.write(bad, np.zeros(bad.shape, np.float32))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prob_dtype": "uint16"}, "probability dtype 'uint16': not one of uint8, float16, float32"),
    ({"settings": {**SETTINGS, "threshold": 1.5}}, "threshold 1.5: must be a number in [0, 1]"),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"settings": SETTINGS, **kwargs}
    with pytest.raises(InputError) as info:
        VolumeOutput.create_or_resume(tmp_path / "out.zarr", SHAPE, **arguments)  # type: ignore[arg-type]
    assert str(info.value) == message
    assert not (tmp_path / "out.zarr").exists()


def test_importing_the_volume_package_loads_no_heavy_library() -> None:
    code = ("import sys, seg.runtime.volume; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'dask', 'zarr', 'h5py', 'ome_zarr', 'numcodecs'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
