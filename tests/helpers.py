"""Small builders for test data (no binary fixtures in the repo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_dataset(root: Path, n: int = 3, size: int = 64, seed: int = 0, split: str = "train") -> Path:
    """A seed-layout dataset: images are noise, labels a grid of 2-px membranes (0) on interior (255)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        label = np.full((size, size), 255, np.uint8)
        label[:: 16, :] = 0
        label[:, :: 16] = 0
        image = np.where(label > 0, 180, 40).astype(np.int16) + rng.integers(-20, 20, (size, size))
        write_png(root / split / "image" / f"{i:02d}.png", np.clip(image, 0, 255).astype(np.uint8))
        write_png(root / split / "label" / f"{i:02d}.png", label)
    return root


def assert_seed_layout(out: Path, volume: np.ndarray, labels: np.ndarray, dtype: type = np.uint8) -> None:
    """``out/train/{image,label}/NN.png`` hold exactly the pages of ``volume`` and ``labels`` ((N, H, W)),
    images in ``dtype``, pixel for pixel."""
    from seg.runtime.io import read_image

    names = [f"{i:02d}.png" for i in range(len(volume))]
    assert sorted(p.name for p in (out / "train/image").iterdir()) == names
    assert sorted(p.name for p in (out / "train/label").iterdir()) == names
    for i, name in enumerate(names):
        image = read_image(out / "train/image" / name)
        assert image.dtype == dtype and np.array_equal(image, volume[i])
        assert np.array_equal(read_image(out / "train/label" / name), labels[i])
