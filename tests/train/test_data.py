from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from seg.runtime.errors import InputError, SegWarning
from seg.train.data import load_split, split_by_slice
from tests.helpers import make_dataset, write_png


def test_pairs_by_stem_and_normalises(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=3, size=32)
    slices = load_split(tmp_path, "train")
    assert [s.name for s in slices] == ["00", "01", "02"]
    for item in slices:
        assert item.image.dtype == np.float32 and item.image.shape == (32, 32)
        assert item.image.min() >= 0.0 and item.image.max() <= 1.0
        assert set(np.unique(item.label)) == {0.0, 1.0}
        assert item.label[0, 5] == 0.0 and item.label[5, 5] == 1.0  # membrane line at row 0


def test_label_binarised_at_half_range(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=1, size=16)
    write_png(tmp_path / "train/label/00.png", np.array([[127, 128, 255, 0] * 4] * 16, np.uint8))
    with pytest.warns(SegWarning, match="label is not binary"):
        label = load_split(tmp_path)[0].label
    np.testing.assert_array_equal(label[0, :4], [0.0, 1.0, 1.0, 0.0])


def test_unlabelled_test_split_loads_without_labels(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=2, size=16, split="test")
    (tmp_path / "test/label/00.png").unlink()
    (tmp_path / "test/label/01.png").unlink()
    (tmp_path / "test/label").rmdir()
    slices = load_split(tmp_path, "test", require_labels=False)
    assert len(slices) == 2 and all(s.label is None for s in slices)


def test_isbi_stacks_layout(tmp_path: Path) -> None:
    volume = np.random.default_rng(0).integers(0, 255, (4, 32, 32), dtype=np.uint8)
    labels = np.where(volume > 127, 255, 0).astype(np.uint8)
    tifffile.imwrite(tmp_path / "train-volume.tif", volume, photometric="minisblack")
    tifffile.imwrite(tmp_path / "train-labels.tif", labels, photometric="minisblack")
    slices = load_split(tmp_path, "train")
    assert len(slices) == 4
    np.testing.assert_array_equal(slices[2].label, (volume[2] > 127).astype(np.float32))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: [p.unlink() for p in (root / "train/image").iterdir()], "train/image: no images found"),
        (lambda root: (root / "train/label/01.png").unlink(), "train/image/01.png: no label with the same name"),
        (lambda root: (root / "train/image/02.png").unlink(), "train/label/02.png: label without an image"),
        (lambda root: write_png(root / "train/label/01.png", np.zeros((8, 8), np.uint8)),
         "train/label/01.png: label size 8x8 does not match image 32x32"),
        (lambda root: (root / "train/image/01.png").write_bytes(b""), "train/image/01.png: empty file (0 bytes)"),
        (lambda root: (root / "train/image/01.png").write_bytes((root / "train/image/00.png").read_bytes()[:60]),
         "train/image/01.png: corrupt or truncated image"),
        (lambda root: (root / "train/image/01.png").write_text("hello"), "train/image/01.png: not a readable image"),
        (lambda root: write_png(root / "train/image/00.tif", np.zeros((32, 32), np.uint8)),
         "train/image/00.tif: same name as 00.png"),
    ],
    ids=["empty-folder", "missing-label", "label-without-image", "size-mismatch", "zero-byte", "truncated-png",
         "text-as-png", "duplicate-stem"],
)
def test_bad_data_names_the_file(tmp_path: Path, damage, message: str) -> None:
    make_dataset(tmp_path, n=3, size=32)
    damage(tmp_path)
    with pytest.raises(InputError) as caught:
        load_split(tmp_path, "train")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dataset folder not found"):
        load_split(tmp_path / "nope")


@pytest.mark.parametrize(("n", "fraction", "n_val"), [(25, 0.2, 5), (3, 0.2, 1), (4, 0.0, 0), (2, 0.5, 1)])
def test_split_by_slice_is_disjoint_and_seeded(tmp_path: Path, n: int, fraction: float, n_val: int) -> None:
    make_dataset(tmp_path, n=n, size=16)
    slices = load_split(tmp_path)
    train, val = split_by_slice(slices, fraction, seed=3)
    assert len(val) == n_val and len(train) == n - n_val
    assert not {s.name for s in train} & {s.name for s in val}
    assert [s.name for s in split_by_slice(slices, fraction, seed=3)[1]] == [s.name for s in val]


def test_split_needs_a_training_slice(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=1, size=16)
    folder = (tmp_path / "train" / "image").resolve()
    with pytest.raises(InputError, match=f"^{re.escape(str(folder))}: only 1 labelled slice.*too few.*hold none out$"):
        split_by_slice(load_split(tmp_path), 0.5, seed=0)


def test_labels_that_mark_membranes_white_warn(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=2, size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the seed layout's labels are mostly interior: silent
        load_split(tmp_path)
    for path in (tmp_path / "train/label").iterdir():
        write_png(path, 255 - np.asarray(Image.open(path)))
    with pytest.warns(SegWarning, match=r"train/label: only \d+% of the labelled pixels are interior.*invert them"):
        load_split(tmp_path)


def test_stacks_beside_a_train_folder_say_which_is_used(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=2, size=32)
    volume = np.full((2, 32, 32), 200, np.uint8)
    tifffile.imwrite(tmp_path / "train-volume.tif", volume, photometric="minisblack")
    tifffile.imwrite(tmp_path / "train-labels.tif", np.full_like(volume, 255), photometric="minisblack")
    with pytest.warns(SegWarning, match="holds both the ISBI stacks and a train/ folder; the stacks are used"):
        assert load_split(tmp_path)[0].source.endswith("train-volume.tif[0]")
