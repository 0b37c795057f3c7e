"""Builders for bad (and borderline) input files, all generated at test time: no binary fixtures.

Each builder writes one file and returns its path. Models are tiny: onnx.helper graphs, or a width-4,
depth-2 Keras U-Net built lazily (TensorFlow loads only when a case asks for a Keras model).
"""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from seg.runtime.metadata import ModelInfo
from tests.helpers import make_dataset
from tests.runtime.test_providers import tiny_model

META = ModelInfo(tile_size=64, halo=16, size_multiple=16).to_props()


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(_parent(path))
    return path


def gray(shape: tuple[int, ...] = (64, 80), dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    """Seeded noise ``shape`` of ``dtype`` over its full range (floats in [0, 1])."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.random(shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def good(folder: Path, name: str = "good.png") -> Path:
    return png(folder / name, gray())


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def raw(path: Path, data: bytes) -> Path:
    _parent(path).write_bytes(data)
    return path


def truncated_png(path: Path) -> Path:
    data = png_bytes(gray((128, 128)))
    return raw(path, data[: len(data) // 2])


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A valid PNG header declaring ``width`` x ``height`` 8-bit gray pixels, with one tiny IDAT (~70 bytes)."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    body = _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    return raw(path, b"\x89PNG\r\n\x1a\n" + header + body)


def tiff_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """An 8x8 TIFF whose size tags are rewritten to ``width`` x ``height`` (a few hundred bytes on disk)."""
    tifffile.imwrite(_parent(path), np.zeros((8, 8), np.uint8))
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(width)
        tif.pages[0].tags["ImageLength"].overwrite(height)
    return path


def float_tiff(path: Path, bad: float) -> Path:
    array = gray((32, 40), np.float32)
    array[3, 4] = bad
    tifffile.imwrite(_parent(path), array)
    return path


def ragged_stack(path: Path, shapes: tuple[tuple[int, int], ...] = ((64, 64), (32, 48))) -> Path:
    with tifffile.TiffWriter(_parent(path)) as writer:
        for i, shape in enumerate(shapes):
            writer.write(gray(shape, seed=i))
    return path


def stack(path: Path, pages: list[np.ndarray]) -> Path:
    tifffile.imwrite(_parent(path), np.stack(pages), photometric="minisblack")
    return path


def symlink_loop(path: Path) -> Path:
    _parent(path)
    os.symlink(path.name, path)
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(_parent(path))
    return path


def dataset(root: Path, n: int = 3, size: int = 64) -> Path:
    return make_dataset(root, n=n, size=size)


def onnx_file(path: Path, **kwargs: object) -> Path:
    """``tests.runtime.test_providers.tiny_model(**kwargs)`` (default: 3x3 conv, 64-px tiles) on disk."""
    kwargs.setdefault("metadata", META)
    return raw(path, tiny_model(**kwargs))  # type: ignore[arg-type]


@functools.cache
def keras_bytes(kind: str = "unet") -> bytes:
    """A saved ``.keras`` archive: ``"unet"`` = ModelSpec(width=4, depth=2); ``"lambda"`` = a Lambda layer."""
    import tempfile

    import keras

    if kind == "lambda":
        model = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Lambda(lambda x: x * 0.5)])
    else:
        from seg.train.models import ModelSpec, build_model

        model = build_model(ModelSpec(width=4, depth=2))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        return path.read_bytes()


def keras_file(path: Path, kind: str = "unet", keep: float = 1.0) -> Path:
    """``keras_bytes(kind)`` on disk; ``keep < 1`` truncates the archive to that fraction."""
    data = keras_bytes(kind)
    return raw(path, data[: int(len(data) * keep)])
