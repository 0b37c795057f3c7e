"""Tiling as small pure numpy functions: pad, cut into fixed-size overlapping tiles, blend, stitch.

Geometry (one axis; the grid is the product of the row and column axes):

- The image is reflect-padded at the bottom/right to at least one tile and to a multiple of the
  network's size multiple (stem x 2^depth), so that every tile starts on the pooling grid of the whole image.
- Tiles of ``tile`` pixels step by ``tile - 2*halo`` (rounded down to the size multiple); the last tile
  is shifted inward to end at the image edge, so every tile has the same shape (one static input shape).
- Every pixel lies at least ``halo`` pixels inside some tile (or on the image border itself). A tile's
  predictions within ``context`` (half the receptive field, at most ``halo``) of its own edges lack
  context, so the blending window is zero there (not at the image border, where whole-image inference has
  no more context either) and rises to 1 towards the core; windows are separable, so the total weight is an
  outer product of two 1-D sums and never needs a full-size weight image.

With ``halo >= receptive_field / 2`` every prediction that carries weight saw its whole receptive field, so
tiled and whole-image predictions agree (to float rounding); with a smaller halo the window still hides
the seams.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

BLENDS = ("gaussian", "ramp")

T = TypeVar("T")


def recommended_halo(receptive_field: int, tile: int, multiple: int = 16) -> int:
    """Halo for ``tile``-pixel tiles of a network whose receptive field is ``receptive_field`` pixels.

    Rule: half the receptive field (an output pixel depends on inputs at most that far away), rounded up
    to ``multiple`` so tile steps stay on the pooling grid, capped at a quarter of the tile (rounded down
    to ``multiple``) so the core (``tile - 2*halo``) keeps at least half the tile's width and tiling costs at
    most 4x the pixels. Unknown receptive field (``<= 0``): 64, capped the same way.
    """
    cap = max(0, (tile // 4) // multiple * multiple)
    wanted = 64 if receptive_field <= 0 else math.ceil(receptive_field / 2 / multiple) * multiple
    return min(wanted, cap)


def padded_length(length: int, tile: int, multiple: int = 1) -> int:
    """Length after padding: at least ``tile`` (0 = no tiling) and a multiple of ``multiple``."""
    return max(tile, math.ceil(length / multiple) * multiple)


def reflect_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad ``(H, W, ...)`` at the bottom/right to ``(height, width, ...)`` by reflection (no copy if no pad).

    Pads larger than the image reflect repeatedly; a 1-pixel axis repeats its pixel.
    """
    pad_h, pad_w = height - image.shape[0], width - image.shape[1]
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"cannot pad {image.shape[:2]} down to {(height, width)}")
    if pad_h == 0 and pad_w == 0:
        return image
    extra = [(0, 0)] * (image.ndim - 2)
    if min(image.shape[:2]) == 1:
        return np.pad(image, [(0, pad_h), (0, pad_w), *extra], mode="symmetric")
    return np.pad(image, [(0, pad_h), (0, pad_w), *extra], mode="reflect")


def pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """The whole-image padding rule, shared by every engine (onnxruntime, Keras, the parity gate):
    ``(H, W, ...)`` reflect-padded at the bottom/right to the next multiples of ``multiple``."""
    return reflect_pad(image, padded_length(image.shape[0], 0, multiple), padded_length(image.shape[1], 0, multiple))


def tile_starts(length: int, tile: int, halo: int, multiple: int = 1) -> list[int]:
    """Start offsets of ``tile``-pixel tiles covering ``length`` (>= tile) pixels, overlapping by >= 2*halo.

    Steps are ``tile - 2*halo`` rounded down to ``multiple``; the last tile ends exactly at ``length``.
    """
    if length < tile:
        raise ValueError(f"length {length} is shorter than one tile ({tile}); pad first")
    if length == tile:
        return [0]  # one tile: its window is open at both ends, so no halo is needed
    step = (tile - 2 * halo) // multiple * multiple
    if step <= 0:
        raise ValueError(f"halo {halo} leaves no core in a {tile}-pixel tile; use halo < {tile // 2}")
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def tile_grid(height: int, width: int, tile: int, halo: int, multiple: int = 1) -> list[tuple[int, int]]:
    """``(y, x)`` top-left corners of every tile over a padded ``height`` x ``width`` image, row-major."""
    rows, cols = tile_starts(height, tile, halo, multiple), tile_starts(width, tile, halo, multiple)
    return [(y, x) for y in rows for x in cols]


def blend_context(receptive_field: int, halo: int, reach: float = 0.0) -> float:
    """Pixels of context a prediction needs at a tile's inner edge to equal the whole-image prediction: half
    the receptive field, plus ``reach`` (how far ``undo_dihedral`` resamples), at most the halo; the halo
    itself when the receptive field is unknown (``<= 0``)."""
    return float(halo) if receptive_field <= 0 else min(float(halo), receptive_field / 2 + reach)


def window_1d(tile: int, halo: int, blend: str = "gaussian", open_start: bool = False, open_end: bool = False,
              context: float | None = None) -> np.ndarray:
    """``(tile,) float32 in [0, 1]``: 0 where a prediction lacks context, rising to 1 towards the core.

    A pixel closer than ``context`` (default: ``halo``) to a tile edge inside the image lacks part of its
    receptive field, so it gets weight 0; the window rises from there to 1 at ``2*halo - context``, where the
    neighbouring tile (overlapping by at least ``2*halo``) starts to lack context. So with
    ``context >= receptive_field / 2`` every blended prediction saw its whole receptive field and tiled output
    equals whole-image output, while the rise keeps seams invisible when the halo is too small for that.
    ``"ramp"`` rises linearly, ``"gaussian"`` along a Gaussian tail (sigma a third of the rise). An ``open``
    end lies on the image border, where the tile sees what the whole image sees: no fall-off there.
    ``halo == 0`` gives all ones.
    """
    if blend not in BLENDS:
        raise ValueError(f"unknown blend {blend!r}; choose one of {', '.join(BLENDS)}")
    if halo <= 0:
        return np.ones(tile, np.float32)
    context = float(halo) if context is None else min(float(context), float(halo))
    index = np.arange(tile)
    to_start = np.full(tile, np.inf) if open_start else index + 0.5  # distance of pixel centres to the edge
    to_end = np.full(tile, np.inf) if open_end else tile - index - 0.5
    edge = np.minimum(to_start, to_end)
    rise = 2 * halo - 2 * context + 1  # pixel centres sit at half-integers: >= 1 keeps a step a step
    if blend == "ramp":
        profile = (edge - context + 0.5) / rise
    else:
        profile = np.exp(-0.5 * (np.maximum(2 * halo - context + 0.5 - edge, 0.0) / (rise / 3)) ** 2)
    return np.where(edge < context, 0.0, np.clip(profile, 0.0, 1.0)).astype(np.float32)


def axis_windows(length: int, tile: int, halo: int, blend: str = "gaussian", multiple: int = 1,
                 context: float | None = None) -> list[tuple[int, np.ndarray]]:
    """``(start, (tile,) float32 window)`` for each tile along an axis of ``length`` pixels.

    The first tile's window is open at the start and the last tile's at the end (the image border).
    """
    starts = tile_starts(length, tile, halo, multiple)
    return [
        (start, window_1d(tile, halo, blend, open_start=start == 0, open_end=start + tile == length, context=context))
        for start in starts
    ]


def weight_sum_1d(length: int, windows: Sequence[tuple[int, np.ndarray]]) -> np.ndarray:
    """``(length,) float32``: sum of the 1-D windows of all tiles along an axis (> 0 everywhere)."""
    total = np.zeros(length, np.float32)
    for start, profile in windows:
        total[start : start + profile.size] += profile
    return total


def accumulate(out: np.ndarray, pred: np.ndarray, y: int, x: int, window: np.ndarray) -> None:
    """Add ``pred * window`` (both ``(T, T)`` float32) into ``out`` ``(H, W) float32`` at ``(y, x)``, in place."""
    t_h, t_w = pred.shape
    out[y : y + t_h, x : x + t_w] += pred * window


def normalize_weights(out: np.ndarray, row_weight: np.ndarray, col_weight: np.ndarray, chunk: int = 512) -> None:
    """Divide ``out`` ``(H, W)`` in place by ``outer(row_weight, col_weight)``, ``chunk`` rows at a time."""
    for start in range(0, out.shape[0], chunk):
        rows = slice(start, start + chunk)
        out[rows] /= row_weight[rows, None] * col_weight[None, :]


def stitch(
    preds: Iterable[np.ndarray],
    height: int,
    width: int,
    halo: int,
    blend: str = "gaussian",
    multiple: int = 1,
    context: float | None = None,
) -> np.ndarray:
    """Blend ``(T, T)`` tile predictions, in ``tile_grid`` order, into ``(height, width) float32``."""
    preds = [np.asarray(pred, np.float32) for pred in preds]
    tile = preds[0].shape[0]
    rows = axis_windows(height, tile, halo, blend, multiple, context)
    cols = axis_windows(width, tile, halo, blend, multiple, context)
    corners = [(row, col) for row in rows for col in cols]
    out = np.zeros((height, width), np.float32)
    for pred, ((y, wy), (x, wx)) in zip(preds, corners, strict=True):
        accumulate(out, pred, y, x, np.outer(wy, wx))
    normalize_weights(out, weight_sum_1d(height, rows), weight_sum_1d(width, cols))
    return out


def cut_tiles(image: np.ndarray, corners: Sequence[tuple[int, int]], tile: int) -> np.ndarray:
    """``(N, tile, tile)`` copies of ``image`` ``(H, W)`` at ``corners`` (same dtype)."""
    return np.stack([image[y : y + tile, x : x + tile] for y, x in corners])


def batched(items: Iterable[T], size: int | Callable[[T], int], key: Callable[[T], object] | None = None
            ) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items (the last may be shorter); packs tiles of several images.

    With ``key``, a list never mixes items of different keys (tiles of different sizes cannot share an
    onnxruntime batch); ``size`` may then be a function of the list's first item.
    """
    limit = size if callable(size) else (lambda _item: size)
    batch: list[T] = []
    for item in items:
        if batch and key is not None and key(item) != key(batch[0]):
            yield batch
            batch = []
        batch.append(item)
        wanted = limit(batch[0])
        if wanted < 1:
            raise ValueError(f"batch size must be >= 1, got {wanted}")
        if len(batch) >= wanted:
            yield batch
            batch = []
    if batch:
        yield batch


# Test-time augmentation over the dihedral group D4: k in 0..7 = (k // 4 flips) then (k % 4 quarter turns).
DIHEDRAL = tuple(range(8))


def dihedral(array: np.ndarray, k: int, axes: tuple[int, int] = (-2, -1)) -> np.ndarray:
    """Element ``k`` (0..7) of the 8 flips/rotations applied to the ``axes`` plane of ``array``."""
    if k // 4:
        array = np.flip(array, axis=axes[1])
    return np.rot90(array, k % 4, axes=axes)


def dihedral_inverse(array: np.ndarray, k: int, axes: tuple[int, int] = (-2, -1)) -> np.ndarray:
    """Undo ``dihedral(., k, axes)``: ``dihedral_inverse(dihedral(a, k), k) == a``."""
    array = np.rot90(array, -(k % 4), axes=axes)
    if k // 4:
        array = np.flip(array, axis=axes[1])
    return array


Offset = tuple[float, float]  # (dy, dx) in pixels


def dihedral_vector(vector: Offset, k: int) -> Offset:
    """Where ``dihedral(., k)`` moves a displacement ``(dy, dx)``."""
    dy, dx = vector
    if k // 4:
        dx = -dx
    for _ in range(k % 4):
        dy, dx = -dx, dy
    return dy, dx


def dihedral_inverse_vector(vector: Offset, k: int) -> Offset:
    """Where ``dihedral_inverse(., k)`` moves a displacement ``(dy, dx)``: ``dihedral_vector`` of the inverse
    element (the opposite turn for a rotation; a flip is its own inverse)."""
    return dihedral_vector(vector, k if k // 4 else -k % 4)


def offset_turn(offset: Offset, moved: Offset) -> Offset:
    """``offset - moved``: the shift that brings an offset a transform ``moved`` back to ``offset``."""
    return offset[0] - moved[0], offset[1] - moved[1]


def undo_dihedral(pred: np.ndarray, k: int, label_offset: Offset = (0.0, 0.0)) -> np.ndarray:
    """A prediction ``(H, W) float32`` made on ``dihedral(image, k)``, mapped back onto the image.

    A model trained on labels that sit ``label_offset`` px from their images (``seg.label_offset``) draws
    that offset in its own input's frame; mapped back, the offset has turned with the transform. The map
    is then resampled ``label_offset - dihedral_inverse_vector(label_offset, k)`` px on, so all 8
    transforms agree with the untransformed prediction (bilinear; edges clamped).
    """
    back = dihedral_inverse(pred, k)
    shift = offset_turn(label_offset, dihedral_inverse_vector(label_offset, k))
    return back if shift == (0.0, 0.0) else resample_shifted(back, shift)


def undo_reach(label_offset: Offset) -> float:
    """The farthest, in px along either axis, ``undo_dihedral`` resamples for ``label_offset``: the largest
    component of its shift over the 8 transforms (up to twice the offset's, for a half turn or a flip),
    rounded up to whole pixels (bilinear reads the next one)."""
    shifts = (offset_turn(label_offset, dihedral_inverse_vector(label_offset, k)) for k in range(8))
    return float(math.ceil(max(max(abs(dy), abs(dx)) for dy, dx in shifts)))


def resample_shifted(array: np.ndarray, shift: Offset) -> np.ndarray:
    """``out[p] = array[p + shift]`` for ``(H, W)`` float32, bilinear, with positions clamped to the edges."""

    def along(length: int, offset: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.arange(length, dtype=np.float64) + offset
        low = np.floor(position)
        fraction = (position - low).astype(np.float32)
        low = low.astype(np.intp)
        return np.clip(low, 0, length - 1), np.clip(low + 1, 0, length - 1), fraction

    top, bottom, fy = along(array.shape[0], shift[0])
    left, right, fx = along(array.shape[1], shift[1])
    rows = array[top] * (1 - fy)[:, None] + array[bottom] * fy[:, None]
    return (rows[:, left] * (1 - fx) + rows[:, right] * fx).astype(np.float32, copy=False)


Window = tuple[int, np.ndarray]  # (start, (T,) float32 window) along one axis


@dataclass
class TiledImage:
    """One image in flight through a ``Segmenter``: its padded pixels, float32 accumulator and the tiles
    still to come."""

    height: int
    width: int
    pixels: np.ndarray  # (PH, PW) raw integers (normalised per tile) or float32 in [0, 1]
    lazy: bool
    tile: int  # this image's tile side: tile_size, or large_tile for an image at least that large both ways
    rows: list[tuple[int, np.ndarray]]  # (start, (T,) window) per tile row, from axis_windows
    cols: list[tuple[int, np.ndarray]]
    transforms: int = 1  # dihedral transforms per tile (8 with TTA)
    out: np.ndarray = field(init=False)
    pending: int = field(init=False)
    single: bool = field(init=False)  # one prediction covers the image: it is the output, nothing to blend

    def __post_init__(self) -> None:
        self.pending = len(self.rows) * len(self.cols) * self.transforms
        self.single = self.pending == 1
        self.out = np.empty((0, 0), np.float32) if self.single else np.zeros(self.pixels.shape, np.float32)

    def blended(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """``out[rows, cols]`` (``out`` itself for the whole image, else a view) divided in place by the
        summed weights of the tiles: the blend of their predictions, ``float32``. One tile covering the image
        needs no division."""
        whole = rows == slice(None) and cols == slice(None)
        out = self.out if whole else self.out[rows, cols]  # the whole accumulator is returned as itself
        if len(self.rows) * len(self.cols) > 1:
            row_weight = weight_sum_1d(self.out.shape[0], self.rows)[rows]
            col_weight = weight_sum_1d(self.out.shape[1], self.cols)[cols]
            normalize_weights(out, row_weight, col_weight)
        return out


Tile = tuple[TiledImage, Window, Window, int]  # job, row window, column window, dihedral transform
