"""The images of one benchmark run: files to time, labelled files to score, and their labels.

``data`` is a dataset (``DIR/train/image`` + ``DIR/train/label``: the first ``count`` slices are timed, the
validation slices of ``seg train``'s default split (20 %, seed 0) are scored), an image folder (timed, not
scored) or None (synthetic slices from ``seg.toolkit.data.synth``, timed and scored against their own labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg.runtime.errors import InputError
from seg.runtime.io import list_images


@dataclass(frozen=True)
class BenchImages:
    """Files to time (``timing``), files to score (``labelled``) and their ``(H, W) float32`` 0/1 labels."""

    timing: list[Path]
    labelled: list[Path]
    labels: list[np.ndarray]
    source: str


def bench_images(data: str | Path | None, count: int, work: Path) -> BenchImages:
    """The images of one benchmark run (see the module docstring); synthetic slices are written under ``work``."""
    if data is None:
        return _synthetic(count, work / "synthetic")
    root = Path(data).resolve()
    if (root / "train" / "image").is_dir():
        return _dataset(root, count)
    if root.is_dir():
        files = list_images(root)
        if not files:
            raise InputError(f"{root}: no PNG/JPEG/TIFF images; pass --data with a dataset or image folder")
        return BenchImages(_cycle(files, count), [], [], str(root))
    raise InputError(f"{root}: no such folder; pass --data with a dataset (DIR/train/image) or an image folder")


def _dataset(root: Path, count: int) -> BenchImages:
    from seg.train.data import load_split, split_by_slice

    timing = _cycle(list_images(root / "train" / "image"), count)
    if not (root / "train" / "label").is_dir():
        return BenchImages(timing, [], [], str(root))
    _, val = split_by_slice(load_split(root, "train"), 0.2, 0)
    scored = [s for s in val if s.label is not None and Path(s.source).is_file()]
    return BenchImages(timing, [Path(s.source) for s in scored], [s.label for s in scored], str(root))  # type: ignore[misc]


def _synthetic(count: int, folder: Path) -> BenchImages:
    from seg.runtime.io import write_image
    from seg.runtime.preprocess import binarize_label
    from seg.toolkit.data.synth import synth_slice

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files, labels = [], []
    for index in range(count):
        image, label = synth_slice(rng, 512)
        write_image(folder / f"{index:02d}.png", image)
        files.append(folder / f"{index:02d}.png")
        labels.append(binarize_label(label))
    scored = min(count, 4)
    return BenchImages(files, files[:scored], labels[:scored], "synthetic (seg.toolkit.data.synth, seed 0)")


def _cycle(files: list[Path], count: int) -> list[Path]:
    return [files[i % len(files)] for i in range(count)]
