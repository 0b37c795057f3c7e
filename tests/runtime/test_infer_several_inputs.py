"""``segment_paths`` with several inputs: order, files named twice, stem clashes, default output, record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from seg.runtime.errors import InputError
from seg.runtime.folders import default_output, resolve_inputs, segment_paths
from seg.runtime.io import read_image
from seg.runtime.preprocess import to_mask
from seg.runtime.resume import SETTINGS_FILE
from seg.runtime.segmenter import Segmenter


def _images(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    """Random uint8 (40, 56) PNGs ``folder/<name>`` (TIFF for ``.tif`` names); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        pixels = rng.integers(0, 255, (40, 56)).astype(np.uint8)
        path = folder / name
        if path.suffix == ".tif":
            tifffile.imwrite(path, pixels)
        else:
            Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def test_explicit_files_as_a_shell_expands_a_glob(model: Path, tmp_path: Path) -> None:
    files = _images(tmp_path / "in", ["a.png", "b.png", "c.tif"])
    out = tmp_path / "out"
    summary = segment_paths([str(p) for p in files], model, out, provider="cpu")
    assert (summary.files, summary.images, summary.failures) == (3, 3, [])
    seg = Segmenter(model, "cpu")
    for path in files:
        np.testing.assert_array_equal(read_image(out / f"{path.stem}.png"), to_mask(seg.predict(read_image(path))))
    record = json.loads((out / SETTINGS_FILE).read_text())
    assert record["inputs"] == sorted(str(p.resolve()) for p in files)
    assert segment_paths(files, model, out, provider="cpu").skipped == 3  # same list again: resume


def test_several_folders_go_into_one_flat_output(model: Path, tmp_path: Path) -> None:
    _images(tmp_path / "day1", ["a.png", "b.png"])
    _images(tmp_path / "day2", ["c.png"], seed=1)
    out = tmp_path / "out"
    summary = segment_paths([tmp_path / "day1", tmp_path / "day2"], model, out, provider="cpu")
    assert (summary.images, summary.failures) == (3, [])
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png", "c.png"]


def test_a_file_named_twice_is_segmented_once(model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _images(folder, ["a.png", "b.png"])
    inputs = [folder, folder / "a.png", f"{folder}/../in/a.png", f"{folder}/*.png"]
    assert resolve_inputs(inputs) == [folder / "a.png", folder / "b.png"]
    summary = segment_paths(inputs, model, tmp_path / "out", provider="cpu")
    assert (summary.files, summary.images, summary.failures) == (2, 2, [])


def test_one_stem_in_two_folders_is_refused_before_anything_is_written(model: Path, tmp_path: Path) -> None:
    _images(tmp_path / "day1", ["00.png", "01.png"])
    _images(tmp_path / "day2", ["00.png", "01.png"], seed=1)
    out = tmp_path / "out"
    with pytest.raises(InputError) as error:
        segment_paths([tmp_path / "day1", tmp_path / "day2"], model, out, provider="cpu")
    message = str(error.value)
    assert message == (f"{tmp_path / 'day2' / '00.png'}: same name as {tmp_path / 'day1' / '00.png'} in another "
                       f"folder; both would write {out / '00.png'} (2 files clash in all); rename one, or give each "
                       "folder its own --output")
    assert "\n" not in message and not out.exists()


def test_one_stem_in_one_folder_fails_the_later_file_only(model: Path, tmp_path: Path) -> None:
    png, tif = _images(tmp_path / "in", ["a.png", "a.tif"])
    summary = segment_paths([png, tif], model, tmp_path / "out", provider="cpu")
    assert summary.images == 1
    assert summary.failures == [f"{tif}: same name as {png}; its outputs would collide "
                                "(rename one, or run them separately)"]


def test_recursive_glob_with_one_stem_in_two_folders_is_refused(model: Path, tmp_path: Path) -> None:
    _images(tmp_path / "in" / "a", ["x.png"])
    _images(tmp_path / "in" / "b", ["x.png"], seed=1)
    with pytest.raises(InputError, match="x.png in another folder"):
        segment_paths(f"{tmp_path}/in/**/*.png", model, tmp_path / "out", provider="cpu")
    assert not (tmp_path / "out").exists()


def test_a_bad_input_among_several_stops_the_run_before_writing(model: Path, tmp_path: Path) -> None:
    (good,) = _images(tmp_path / "in", ["a.png"])
    with pytest.raises(InputError, match=r"nope.png: no such file or folder"):
        segment_paths([good, tmp_path / "nope.png"], model, tmp_path / "out", provider="cpu")
    assert not (tmp_path / "out").exists()


def test_a_corrupt_file_among_several_is_a_failure_not_an_error(model: Path, tmp_path: Path) -> None:
    (good,) = _images(tmp_path / "in", ["a.png"])
    (tmp_path / "in" / "bad.png").write_bytes(b"not a png")
    summary = segment_paths([good, tmp_path / "in" / "bad.png"], model, tmp_path / "out", provider="cpu")
    assert summary.images == 1 and len(summary.failures) == 1 and "bad.png: not a readable image" in summary.failures[0]


@pytest.mark.parametrize("inputs", [[], [""], ["  "]])
def test_no_input_or_a_blank_one_is_refused(model: Path, tmp_path: Path, inputs: list[str]) -> None:
    with pytest.raises(InputError, match="no input given|empty --input"):
        segment_paths(inputs, model, tmp_path / "out", provider="cpu")


def test_default_output_for_several_inputs(tmp_path: Path) -> None:
    files = _images(tmp_path / "data" / "test" / "image", ["a.png", "b.png"])
    _images(tmp_path / "data" / "train" / "image", ["c.png"])
    assert default_output(files) == Path("runs/infer/test-image")  # quoted or shell-expanded glob: one name
    assert default_output(f"{files[0].parent}/*.png") == Path("runs/infer/test-image")
    assert default_output([files[0]]) == Path("runs/infer/a")  # one file: its stem, as before
    both = [tmp_path / "data" / "test" / "image", tmp_path / "data" / "train" / "image"]
    assert default_output(both) == Path("runs/infer/data")
    assert default_output([files[0], f"{tmp_path}/data/train/*/*.png"]) == Path("runs/infer/data")


def test_a_link_under_another_name_is_its_own_input_but_a_folder_loop_is_not(model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (source,) = _images(folder, ["a.png"])
    (folder / "b.png").symlink_to(source.name)  # another name: its own outputs, by folder or by glob
    (folder / "loop").symlink_to(".")  # in/loop/a.png is in/a.png again
    by_glob = resolve_inputs(f"{folder}/**/*.png")
    assert [p.relative_to(folder) for p in by_glob] == [Path("a.png"), Path("b.png")]
    assert resolve_inputs(folder) == by_glob
    summary = segment_paths(f"{folder}/**/*.png", model, tmp_path / "out", provider="cpu")
    assert (summary.images, summary.failures) == (2, [])
