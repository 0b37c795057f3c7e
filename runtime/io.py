"""Reading and writing images: PNG, JPEG, TIFF (single page and multi-page stacks).

Readers return raw pixel arrays — ``(H, W)`` uint8, uint16 or float32 — converted to gray (with a
warning) when the file is RGB(A). Normalisation to [0, 1] is ``seg.runtime.preprocess``'s job. Every
failure raises ``InputError`` with one line naming the file and the problem. Writers are atomic.

A TIFF's physical calibration (``read_calibrated``: resolution tags, ImageJ's unit, slice spacing and origin)
can be handed to ``write_pages``, so masks and probability maps open in Fiji at the size of their input.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from seg.runtime.atomic import atomic_path, is_temporary
from seg.runtime.calibration import tiff_calibration, write_arguments
from seg.runtime.errors import InputError, SegWarning

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    """True for a visible, non-temporary file whose suffix is a supported image format."""
    return (
        path.suffix.lower() in IMAGE_SUFFIXES
        and not path.name.startswith(".")
        and not is_temporary(path)
    )


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Supported image files directly inside ``folder``, sorted by name.

    Raises ``InputError`` when ``folder`` is missing, not a folder or holds no image. Broken or looping
    symbolic links with an image suffix are listed (reading them names the problem); folders, FIFOs and
    other non-files are not.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (expected a folder of PNG/JPEG/TIFF images)")
    files = sorted(p for p in folder.iterdir() if (p.is_file() or _dangling(p)) and is_image_file(p))
    if not files:
        dataset = any((folder / split / "image").is_dir() for split in ("train", "test"))
        hint = "; this is a dataset folder: give its test/image or train/image" if dataset else ""
        raise InputError(f"{folder}: no images found (expected {', '.join(IMAGE_SUFFIXES)} files){hint}")
    return files


def read_pages(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """Every page of an image file as ``(H, W)`` arrays (uint8, uint16, float32 or bool as stored).

    PNG/JPEG give one page; a TIFF gives one page per IFD (a multi-page stack gives N).
    RGB(A) pages are converted to gray with a ``SegWarning``.
    """
    return read_calibrated(path)[0]


def read_calibrated(path: str | os.PathLike[str]) -> tuple[list[np.ndarray], dict[str, Any]]:
    """``read_pages(path)`` and the file's physical calibration (``seg.runtime.calibration``: a dict of
    resolution tags and ImageJ's unit, spacing and origin), read in one pass, for ``write_pages``; ``{}`` for
    other formats and for a TIFF that records none."""
    path = Path(path)
    _check_readable(path)
    is_tiff = path.suffix.lower() in TIFF_SUFFIXES
    raw_pages, calibration = _read_tiff_pages(path) if is_tiff else ([_read_pillow(path)], {})
    return [_to_gray(page, path) for page in raw_pages], calibration


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """One ``(H, W)`` image as stored (uint8, uint16, int8, int16 or float32). A multi-page stack is an error
    here."""
    pages = read_pages(path)
    if len(pages) != 1:
        raise InputError(f"{path}: a stack of {len(pages)} pages; read it with read_pages()")
    return pages[0]


def _dangling(path: Path) -> bool:
    """True for a symbolic link whose target is missing or that loops (``exists()`` follows it and fails)."""
    return path.is_symlink() and not path.exists()


def _check_readable(path: Path) -> None:
    if _dangling(path):
        raise InputError(f"{path}: broken symbolic link (missing target or a link loop); fix or remove the link")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file (a folder, FIFO or device); give an image file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied (not readable)")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")


def _read_pillow(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            return _pillow_to_array(img, path)
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: corrupt or truncated image ({exc})") from None


def _pillow_to_array(img: Image.Image, path: Path) -> np.ndarray:
    if img.mode in ("L", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img)
        return arr.astype(np.uint16) if arr.dtype.kind == "u" and arr.itemsize == 2 else arr
    if img.mode == "1":
        return np.asarray(img, dtype=np.uint8) * np.uint8(255)
    if img.mode == "I":
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise InputError(f"{path}: 32-bit integer image outside 0..65535; save it as 8/16-bit or float")
        return arr.astype(np.uint16)
    if img.mode in ("LA", "La"):
        return np.asarray(img.getchannel(0))
    return np.asarray(img.convert("RGBA" if "A" in img.mode or img.mode == "P" else "RGB"))


def _read_tiff_pages(path: Path) -> tuple[list[np.ndarray], dict[str, Any]]:
    try:
        with tifffile.TiffFile(path) as tif:
            _check_tiff_size(tif, path)
            series = tif.series
            if _one_stack_series(tif):
                stack = series[0].asarray()
                return _split_stack(stack, series[0].axes), tiff_calibration(tif)
            pages = [_page_array(page) for page in tif.pages]
            calibration = tiff_calibration(tif) if pages else {}
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise InputError(f"{path}: corrupt or unreadable TIFF ({type(exc).__name__}: {exc})") from None
    if not pages:
        raise InputError(f"{path}: corrupt or unreadable TIFF (no image pages found)")
    return pages, calibration


def _check_tiff_size(tif: tifffile.TiffFile, path: Path) -> None:
    """Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) applied to every TIFF page."""
    limit = Image.MAX_IMAGE_PIXELS
    for page in tif.pages:
        height, width = int(page.imagelength), int(page.imagewidth)
        if limit and height * width > 2 * limit:
            raise InputError(
                f"{path}: refused as a possible decompression bomb ({width}x{height} pixels, "
                f"over twice Pillow's limit of {limit}); split or downsample the image"
            )


def _page_array(page: tifffile.TiffPage) -> np.ndarray:
    """One TIFF page as ``(H, W)`` or ``(H, W, S)``; planar RGB (``SYX``) is moved to samples-last."""
    array = page.asarray()
    return np.moveaxis(array, 0, -1) if page.axes.startswith("S") and array.ndim == 3 else array


def _one_stack_series(tif: tifffile.TiffFile) -> bool:
    """True when the TIFF is read as one ``(N, H, W[, S])`` series (else page by page)."""
    series = tif.series
    return len(series) == 1 and series[0].ndim >= 3 and "S" not in series[0].axes[:1]


def tiff_page_count(tif: tifffile.TiffFile) -> int:
    """How many ``(H, W)`` pages ``read_pages`` gives for an open TIFF, without reading its pixels: a
    sample (colour) axis, wherever it sits, is not a page."""
    if _one_stack_series(tif):
        series = tif.series[0]
        planes = [n for n, axis in zip(series.shape, series.axes, strict=True) if axis != "S"]
        return int(np.prod(planes[:-2]))
    return len(tif.pages)


def _split_stack(stack: np.ndarray, axes: str) -> list[np.ndarray]:
    """Split a series into ``(H, W[, S])`` pages: the sample (colour) axis, wherever it sits (``ZYXS``, or
    ``ZSYX`` for planar colour), goes last; other leading axes are flattened."""
    if "S" in axes:
        stack = np.moveaxis(stack, axes.index("S"), -1)
        return list(stack.reshape((-1, *stack.shape[-3:])))
    return list(stack.reshape((-1, *stack.shape[-2:])))


def _to_gray(page: np.ndarray, path: Path) -> np.ndarray:
    page = np.asarray(page)
    if page.dtype == bool:
        page = page.astype(np.uint8) * np.uint8(255)
    if page.ndim == 2:
        return _check_dtype(page, path)
    if page.ndim == 3 and page.shape[-1] in (3, 4):
        warnings.warn(f"{path}: {page.shape[-1]}-channel image converted to gray", SegWarning, stacklevel=3)
        return _check_dtype(rgb_to_gray(page[..., :3]), path)
    if page.ndim == 3 and page.shape[-1] == 1:
        return _check_dtype(page[..., 0], path)
    raise InputError(f"{path}: unsupported image shape {page.shape}; expected (H, W) or (H, W, 3|4)")


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of ``(H, W, 3)``, keeping the input dtype (rounded for integers)."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float64)
    gray = rgb.astype(np.float64) @ weights
    if rgb.dtype.kind in "ui":
        return np.clip(np.rint(gray), 0, np.iinfo(rgb.dtype).max).astype(rgb.dtype)
    return gray.astype(np.float32)


def _check_dtype(page: np.ndarray, path: Path) -> np.ndarray:
    if page.dtype.kind not in "uif":
        raise InputError(f"{path}: unsupported pixel type {page.dtype}; expected integer or float pixels")
    if min(page.shape) < 1:
        raise InputError(f"{path}: empty image of shape {page.shape}")
    if page.dtype.kind == "f" and page.dtype != np.float32:
        page = page.astype(np.float32)
    return page


def write_image(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write one ``(H, W)`` image atomically: uint8/uint16 as PNG or TIFF, float32 as TIFF."""
    write_pages(path, [image])


def write_pages(path: str | os.PathLike[str], pages: Sequence[np.ndarray],
                calibration: Mapping[str, Any] | None = None) -> None:
    """Write ``(H, W)`` (or ``(H, W, 3)`` RGB) pages atomically; several pages need a TIFF (written as a
    multi-page stack). ``calibration`` (``read_calibrated``'s) goes into a TIFF: the resolution tags, and the
    ImageJ unit, spacing and origin as an ImageJ stack when the pages are one series ImageJ reads (gray uint8,
    uint16 or float32; RGB uint8); other formats ignore it.

    Tuned for throughput: PNG at zlib level 1 with the run-length strategy (faster than the default
    strategy and, for masks and EM slices alike, smaller); float32 TIFF uncompressed
    (probabilities barely compress, and zlib would cost more than inference), integer TIFF zlib.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        compression = None if pages[0].dtype.kind == "f" else "zlib"
        one_series = len({(p.shape, p.dtype) for p in pages}) == 1  # tifffile.imread gives (N, H, W[, 3])
        tags, imagej = write_arguments(calibration or {}, pages, one_series)
        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, imagej=imagej) as writer:
            if one_series:
                stack = np.stack(pages) if len(pages) > 1 else np.ascontiguousarray(pages[0])
                photometric = "rgb" if pages[0].ndim == 3 else "minisblack"
                writer.write(stack, compression=compression, photometric=photometric, **tags)
            else:  # pages of different sizes can only be separate series
                for page in pages:
                    writer.write(np.ascontiguousarray(page), compression=compression, **tags)
        return
    if len(pages) != 1:
        raise InputError(f"{path}: {len(pages)} pages need a .tif/.tiff file, not {suffix}")
    if pages[0].dtype not in (np.uint8, np.uint16):
        raise InputError(f"{path}: {pages[0].dtype} pixels need a .tif/.tiff file; PNG/JPEG hold 8/16-bit")
    with atomic_path(path) as tmp:
        if suffix == ".png":
            Image.fromarray(pages[0]).save(tmp, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
        else:
            Image.fromarray(pages[0]).save(tmp)
