"""Datasets on disk -> normalised numpy slices (numpy only; no TensorFlow).

Layouts:
- the seed layout ``DIR/train/image``, ``DIR/train/label``, ``DIR/test/image``, optional ``DIR/test/label``,
  images and labels paired by file stem;
- the original ISBI stacks ``DIR/train-volume.tif`` + ``DIR/train-labels.tif`` (multi-page TIFFs).
Every problem raises ``InputError`` with one line naming the file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg.runtime.errors import InputError, SegWarning
from seg.runtime.io import list_images, read_image, read_pages
from seg.runtime.preprocess import binarize_label, normalize

SPLITS = ("train", "test")
STACK_IMAGES, STACK_LABELS = "train-volume.tif", "train-labels.tif"


@dataclass(frozen=True)
class Slice:
    """One 2-D sample. ``image``: ``(H, W) float32 in [0, 1]``; ``label``: ``(H, W) float32`` with
    1.0 = interior, 0.0 = membrane, or None when the split has no labels."""

    name: str
    image: np.ndarray
    label: np.ndarray | None
    source: str


def load_split(root: str | Path, split: str = "train", require_labels: bool = True) -> list[Slice]:
    """Load every slice of ``split`` from a dataset folder in either layout, sorted by name."""
    root = Path(root)
    if split not in SPLITS:
        raise InputError(f"{root}: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found (expected DIR/train/image and DIR/train/label)")
    if split == "train" and (root / STACK_IMAGES).is_file():
        if (root / "train").is_dir():
            warnings.warn(f"{root}: holds both the ISBI stacks and a train/ folder; the stacks are used. Move one "
                          "of them out to choose", SegWarning, stacklevel=2)
        return _warn_if_inverted(_load_stacks(root / STACK_IMAGES, root / STACK_LABELS), root)
    image_dir, label_dir = root / split / "image", root / split / "label"
    if not image_dir.is_dir():
        raise InputError(f"{image_dir}: folder not found (dataset layout: DIR/{split}/image, DIR/{split}/label)")
    if not label_dir.is_dir():
        if require_labels:
            raise InputError(f"{label_dir}: folder not found; training needs labels paired with the images")
        return [_load_slice(path, None) for path in _by_stem(image_dir).values()]
    images, labels = _by_stem(image_dir), _by_stem(label_dir)
    _check_pairing(images, labels)
    return _warn_if_inverted([_load_slice(images[stem], labels[stem]) for stem in sorted(images)], label_dir)


MIN_INTERIOR = 0.5
"""Below this fraction of interior pixels over all labels, the labels probably mark membranes white."""


def _warn_if_inverted(slices: list[Slice], where: Path) -> list[Slice]:
    """``slices``, after a warning when under ``MIN_INTERIOR`` of their labelled pixels are interior: membranes
    are thin, so EM labels are mostly interior (ISBI 2012: about 78 %)."""
    labels = [s.label for s in slices if s.label is not None]
    pixels = sum(label.size for label in labels)
    interior = sum(float(label.sum()) for label in labels) / pixels if pixels else 1.0
    if interior < MIN_INTERIOR:
        warnings.warn(f"{where}: only {interior:.0%} of the labelled pixels are interior; seg reads white (255) as "
                      "cell interior and black (0) as membrane. If these labels mark membranes white, invert them",
                      SegWarning, stacklevel=3)
    return slices


def _by_stem(folder: Path) -> dict[str, Path]:
    by_stem: dict[str, Path] = {}
    for path in list_images(folder):
        if path.stem in by_stem:
            raise InputError(f"{path}: same name as {by_stem[path.stem].name}; keep one file per stem")
        by_stem[path.stem] = path
    return by_stem


def _check_pairing(images: dict[str, Path], labels: dict[str, Path]) -> None:
    for stem in sorted(images.keys() - labels.keys()):
        raise InputError(f"{images[stem]}: no label with the same name in {next(iter(labels.values())).parent}")
    for stem in sorted(labels.keys() - images.keys()):
        raise InputError(f"{labels[stem]}: label without an image in {next(iter(images.values())).parent}")


def _load_slice(image_path: Path, label_path: Path | None) -> Slice:
    image = normalize(read_image(image_path), name=str(image_path))
    label = None
    if label_path is not None:
        raw_label = read_image(label_path)
        if raw_label.shape != image.shape:
            raise InputError(
                f"{label_path}: label size {_size(raw_label)} does not match image {_size(image)} "
                f"of {image_path.name}"
            )
        label = binarize_label(raw_label, name=str(label_path))
    return Slice(image_path.stem, image, label, str(image_path.resolve()))


def _load_stacks(volume: Path, labels: Path) -> list[Slice]:
    if not labels.is_file():
        raise InputError(f"{labels}: not found; {volume.name} needs its label stack {STACK_LABELS}")
    image_pages, label_pages = read_pages(volume), read_pages(labels)
    if len(image_pages) != len(label_pages):
        raise InputError(f"{labels}: {len(label_pages)} pages but {volume.name} has {len(image_pages)}")
    slices = []
    for index, (image, label) in enumerate(zip(image_pages, label_pages, strict=True)):
        if image.shape != label.shape:
            raise InputError(f"{labels}: page {index} size {_size(label)} does not match image {_size(image)}")
        name = f"{index:02d}"
        slices.append(Slice(name, normalize(image, name=f"{volume}[{index}]"),
                            binarize_label(label, name=f"{labels}[{index}]"), f"{volume.resolve()}[{index}]"))
    return slices


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"


def split_by_slice(slices: list[Slice], val_fraction: float, seed: int) -> tuple[list[Slice], list[Slice]]:
    """Split whole slices (never pixels of one slice) into train and validation sets.

    At least one slice stays in training; with ``val_fraction > 0`` at least one goes to validation.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"--val {val_fraction}: must be in [0, 1), e.g. 0.2")
    n_val = 0 if val_fraction == 0 else max(1, round(len(slices) * val_fraction))
    if len(slices) - n_val < 1:
        source = slices[0].source if slices else ""
        where = f"{Path(source.rsplit('[', 1)[0] if source.endswith(']') else source).parent}: " if source else ""
        raise InputError(f"{where}only {len(slices)} labelled slice(s): too few to hold {n_val} out for validation; "
                         "add labelled slices, or hold none out")
    order = np.random.default_rng(seed).permutation(len(slices))
    val_idx = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(slices) if i not in val_idx]
    val = [s for i, s in enumerate(slices) if i in val_idx]
    return train, val


def dataset_summary(root: Path, train: list[Slice], val: list[Slice]) -> str:
    """One line describing the data a model was trained on (written into config.json and ONNX metadata)."""
    shapes = sorted({_size(s.image) for s in train + val})
    return f"{root.name}: {len(train)} train + {len(val)} val slices ({', '.join(shapes)})"
