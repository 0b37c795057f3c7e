"""Datasets on disk in the seed layout, and converting the original ISBI 2012 stacks into it.

Seed layout: ``DIR/train/image/NN.png``, ``DIR/train/label/NN.png``, ``DIR/test/image/NN.png`` and
optionally ``DIR/test/label/NN.png``; images and labels pair by file stem, labels are uint8 with
255 = interior and 0 = membrane.

Writers never leave a half-written dataset: they fill a hidden staging folder next to ``DIR``
(``.DIR.tmp-XXXX``) and move its split folders into place only when every file is written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from seg.runtime.atomic import TMP_MARK
from seg.runtime.errors import InputError
from seg.runtime.io import read_pages, write_image
from seg.runtime.preprocess import binarize_label, to_mask

SPLITS = ("train", "test")


def slice_name(index: int, width: int = 2) -> str:
    """File name of slice ``index`` in the seed layout: ``07.png`` (zero-padded to ``width`` digits)."""
    return f"{index:0{width}d}.png"


@contextlib.contextmanager
def dataset_stage(out: Path, overwrite: bool = False, splits: Sequence[str] = SPLITS) -> Iterator[Path]:
    """Yield an empty staging folder holding ``<split>/image`` and ``<split>/label`` for each split.

    On success the staged split folders replace ``out``'s (other entries of ``out`` are left alone);
    on any error the stage is removed and ``out`` is untouched. An existing non-empty ``out`` is
    refused with ``InputError`` unless ``overwrite``.
    """
    out = Path(out)
    check_target(out, overwrite)
    with temporary_folder_beside(out, "", "OUT") as stage:
        for split in splits:
            for kind in ("image", "label"):
                (stage / split / kind).mkdir(parents=True)
        yield stage
        _commit(stage, out)


@contextlib.contextmanager
def temporary_folder_beside(out: Path, tag: str, option: str) -> Iterator[Path]:
    """A hidden folder ``.OUT.tmp-<tag>XXXX`` next to ``out`` (same file system, so renames are atomic),
    removed on exit whatever happens. ``option`` names the CLI option to change when it cannot be made."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{out.name}{TMP_MARK}{tag}", dir=out.parent))
    except OSError as exc:
        raise InputError(f"{out.parent}: cannot create a folder there ({exc.strerror}); choose another {option}") \
            from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(
            f"{out}: folder is not empty; pass --overwrite to replace the dataset in it, or choose another folder"
        )


def _commit(stage: Path, out: Path) -> None:
    """Move the staged splits into ``out``; replaced splits go into ``stage`` (removed afterwards).

    Each split is swapped by two renames; if the second fails the old split is put back first.
    """
    out.mkdir(exist_ok=True)
    for split in SPLITS:
        new, old, backup = stage / split, out / split, stage / f".old-{split}"
        if not new.is_dir():
            continue
        if old.exists():
            os.replace(old, backup)
        try:
            os.replace(new, old)
        except OSError:
            if backup.exists():
                os.replace(backup, old)
            raise


def import_isbi_stacks(
    volume_tif: Path, labels_tif: Path, out: Path, overwrite: bool = False
) -> Path:
    """Convert the ISBI 2012 training stacks into ``out/train/{image,label}/NN.png``; return ``out``.

    ``volume_tif``: multi-page TIFF of N ``(H, W)`` uint8/uint16 slices. ``labels_tif``: N pages of the
    same sizes, written as uint8 masks (255 = interior, 0 = membrane; pixels at or above half range
    count as interior). Page counts or sizes that differ raise ``InputError`` naming the file.
    """
    volume_tif, labels_tif = Path(volume_tif), Path(labels_tif)
    images = read_pages(volume_tif)
    labels = read_pages(labels_tif)
    _check_pairs(images, labels, volume_tif, labels_tif)
    width = max(2, len(str(len(images) - 1)))
    with dataset_stage(Path(out), overwrite, splits=("train",)) as stage, warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            name = slice_name(index, width)
            write_image(stage / "train" / "image" / name, image)
            write_image(stage / "train" / "label" / name, to_mask(binarize_label(label, str(labels_tif))))
    for message, category in dict.fromkeys((str(w.message), w.category) for w in said):  # once, not per page
        warnings.warn(message, category, stacklevel=2)
    return Path(out)


def _check_pairs(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], volume_tif: Path, labels_tif: Path
) -> None:
    """One-line ``InputError`` unless the stacks pair page by page and the slices fit in a PNG."""
    if len(images) != len(labels):
        raise InputError(
            f"{labels_tif}: {len(labels)} pages but {volume_tif} has {len(images)}; "
            "the label stack needs one page per image slice"
        )
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        if image.shape != label.shape:
            raise InputError(
                f"{labels_tif}: page {index} has shape {label.shape} but {volume_tif} page {index} has {image.shape}; "
                "each label page must match its image slice"
            )
        if image.dtype not in (np.uint8, np.uint16):
            raise InputError(
                f"{volume_tif}: page {index} has {image.dtype} pixels; convert the stack to 8- or 16-bit"
            )
