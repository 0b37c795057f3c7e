"""The synthetic EM generator: determinism, labels that match the drawn membranes, the seed layout on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from seg.runtime.errors import InputError
from seg.runtime.io import read_image
from seg.toolkit.data import synth
from seg.toolkit.data.synth import synth_slice, synthesize


def _files(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root``."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return yy**2 + xx**2 <= radius**2


@pytest.mark.parametrize("size", [16, 64, 100, 128])
def test_slice_shapes_dtypes_and_binary_label(size: int) -> None:
    image, label = synth_slice(np.random.default_rng(3), size)
    assert image.shape == label.shape == (size, size)
    assert image.dtype == label.dtype == np.uint8
    assert set(np.unique(label)) <= {0, 255}


@pytest.mark.parametrize("size", [64, 128])
def test_slice_is_deterministic_for_a_seed(size: int) -> None:
    first = synth_slice(np.random.default_rng([7, 1]), size)
    again = synth_slice(np.random.default_rng([7, 1]), size)
    other = synth_slice(np.random.default_rng([8, 1]), size)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("seed", range(4))
def test_label_membrane_is_the_dark_drawn_membrane(seed: int) -> None:
    image, label = synth_slice(np.random.default_rng(seed), 128)
    membrane = label == 0
    assert 0.08 < membrane.mean() < 0.4
    interior_mean, membrane_mean = image[~membrane].mean(), image[membrane].mean()
    assert interior_mean - membrane_mean > 40  # grey levels, after blur and noise
    assert (image[membrane] < np.median(image[~membrane])).mean() > 0.95
    assert ndi.label(~membrane)[1] >= 4  # 4-connected interiors: cells of 30-50 px in 128 px


@pytest.mark.parametrize("seed", range(3))
def test_membrane_widths_are_2_to_6_px(seed: int) -> None:
    membrane = synth_slice(np.random.default_rng(seed), 128)[1] == 0
    at_least_2 = ndi.binary_opening(membrane, np.ones((2, 2), bool))  # drops 1-px-thin runs
    wider_than_8 = ndi.binary_opening(membrane, _disk(4))  # keeps only 9-px-wide patches (junctions)
    assert at_least_2.sum() >= 0.99 * membrane.sum()
    assert wider_than_8.sum() <= 0.10 * membrane.sum()
    half_widths = ndi.distance_transform_edt(membrane)
    assert np.median(half_widths[membrane]) <= 3.0


def test_full_size_slice_looks_like_isbi() -> None:
    """512x512 like ISBI 2012: ~100-200 cells, membranes ~15-25 %, dark organelles inside cells."""
    image, label = synth_slice(np.random.default_rng(0), 512)
    membrane = label == 0
    assert 60 <= ndi.label(~membrane)[1] <= 300
    assert 0.1 < membrane.mean() < 0.3
    deep_inside = ndi.binary_erosion(~membrane, _disk(3))  # >= 3 px from any membrane
    dark = deep_inside & (image < image[membrane].mean() + 10)
    blobs = ndi.label(ndi.binary_opening(dark, _disk(1)))[1]
    assert blobs >= 5  # organelles: as dark as membrane, labelled interior


def test_too_small_slice_is_refused() -> None:
    with pytest.raises(ValueError, match="size must be at least 16 px, got 8"):
        synth_slice(np.random.default_rng(0), 8)


def test_synthesize_writes_the_seed_layout(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    summary = synthesize(out, n=5, size=64, seed=2)
    assert (summary.root, summary.n_train, summary.n_test, summary.size, summary.seed) == (out, 4, 1, 64, 2)
    assert sorted(_files(out)) == [
        *[f"test/{kind}/00.png" for kind in ("image", "label")],
        *[f"train/image/{i:02d}.png" for i in range(4)],
        *[f"train/label/{i:02d}.png" for i in range(4)],
    ]
    image, label = synth_slice(np.random.default_rng([2, 4]), 64)  # slice 4 is test/00
    assert np.array_equal(read_image(out / "test/image/00.png"), image)
    assert np.array_equal(read_image(out / "test/label/00.png"), label)
    labels = [read_image(p) for p in sorted(out.rglob("label/*.png"))]
    assert summary.membrane_fraction == pytest.approx(np.mean([(lb == 0).mean() for lb in labels]))
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no staging folder left behind


def test_synthesize_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a, b, c = (_files(synthesize(tmp_path / name, n=3, size=48, seed=seed).root)
               for name, seed in (("a", 1), ("b", 1), ("c", 2)))
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


@pytest.mark.parametrize(("n", "fraction", "n_train", "n_test"), [(1, 0.2, 1, 0), (2, 0.2, 1, 1), (10, 0.0, 10, 0),
                                                                  (10, 0.5, 5, 5), (101, 0.2, 81, 20)])
def test_split_sizes_and_names(tmp_path: Path, n: int, fraction: float, n_train: int, n_test: int) -> None:
    if n > 10:  # many names, not many pixels
        summary = synthesize(tmp_path / "d", n=n, size=16, test_fraction=fraction)
    else:
        summary = synthesize(tmp_path / "d", n=n, size=32, test_fraction=fraction)
    assert (summary.n_train, summary.n_test) == (n_train, n_test)
    names = sorted(p.name for p in (tmp_path / "d/train/image").iterdir())
    assert names[0] == ("000.png" if n > 100 else "00.png") and len(names) == n_train
    assert (tmp_path / "d/test").exists() == (n_test > 0)


def test_non_empty_folder_is_refused_and_untouched(tmp_path: Path) -> None:
    out = tmp_path / "data"
    (out / "train/image").mkdir(parents=True)
    (out / "train/image/mine.png").write_bytes(b"precious")
    with pytest.raises(InputError) as info:
        synthesize(out, n=2, size=32)
    assert str(info.value) == (
        f"{out}: folder is not empty; pass --overwrite to replace the dataset in it, or choose another folder"
    )
    assert _files(out) == {"train/image/mine.png": hashlib.sha256(b"precious").hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_overwrite_replaces_train_and_test_but_keeps_other_files(tmp_path: Path) -> None:
    out = tmp_path / "data"
    synthesize(out, n=6, size=32, seed=0)
    (out / "README.txt").write_text("notes")
    synthesize(out, n=3, size=32, seed=5, overwrite=True)
    assert sorted(_files(out)) == ["README.txt", "test/image/00.png", "test/label/00.png",
                                   "train/image/00.png", "train/image/01.png",
                                   "train/label/00.png", "train/label/01.png"]
    assert np.array_equal(read_image(out / "train/image/00.png"), synth_slice(np.random.default_rng([5, 0]), 32)[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    synthesize(out, n=1, size=32, seed=7, overwrite=True)  # no test split this time: the old one goes too
    assert sorted(_files(out)) == ["README.txt", "train/image/00.png", "train/label/00.png"]


def test_empty_existing_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    assert synthesize(tmp_path / "data", n=2, size=32).n_train == 1


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("x")
    with pytest.raises(InputError, match=r"data: exists and is not a folder; choose another output folder$"):
        synthesize(tmp_path / "data", n=2, size=32, overwrite=True)


def test_failure_midway_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synth.synth_slice
    calls = []

    def flaky(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append(size)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(rng, size)

    monkeypatch.setattr(synth, "synth_slice", flaky)
    out = tmp_path / "data"
    with pytest.raises(RuntimeError, match="disk on fire"):
        synthesize(out, n=5, size=32)
    assert list(tmp_path.iterdir()) == []  # neither OUT nor a staging folder


def test_failed_overwrite_keeps_the_old_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "data"
    synthesize(out, n=3, size=32)
    before = _files(out)
    monkeypatch.setattr(synth, "synth_slice", lambda rng, size: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        synthesize(out, n=3, size=32, seed=9, overwrite=True)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize(("kwargs", "message"), [({"n": 0}, "n >= 1"), ({"size": 8}, "size >= 16"),
                                                 ({"test_fraction": 1.0}, "test_fraction < 1")])
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synthesize(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()
