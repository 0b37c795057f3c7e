"""Which tiles of an image's own tile grid reach into a box of it, for predicting the box alone.

A ``Segmenter`` predicts an ``(H, W)`` image on one tile grid (``TilePlan.tile_for`` and ``windows`` over
the padded image). ``region_tiles`` picks the tiles of that same grid whose windows reach into a box
``rows x cols`` of the image, so blending just those tiles gives, inside the box, exactly what predicting
the whole image gives: the volume path cuts slices into blocks this way and the answer cannot depend on
the block size. Coordinates are pixels of the image (padded coordinates agree with them inside it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seg.runtime import tiling
from seg.runtime.errors import InputError
from seg.runtime.plan import TilePlan

Windows = list[tuple[int, np.ndarray]]  # (start, (T,) float32 window) along one axis


@dataclass(frozen=True)
class RegionTiles:
    """The tiles reaching into a box, relative to ``origin`` (the top-left of the tiles' bounding box).

    ``read_rows``/``read_cols``: the image pixels to read (the bounding box clipped to the image, starting
    ``read_offset`` pixels before it where the image's bottom/right reflection needs more rows or columns than
    the box holds); ``size``: the bounding box's ``(h, w)``, reached by reflect-padding the read pixels at the
    bottom/right exactly as the whole padded image is; ``rows``/``cols``: the selected windows, starts relative
    to ``origin``; ``core_rows``/``core_cols``: the box within the bounding box."""

    tile: int
    origin: tuple[int, int]
    size: tuple[int, int]
    read_rows: slice
    read_cols: slice
    rows: Windows
    cols: Windows
    core_rows: slice
    core_cols: slice
    read_offset: tuple[int, int]


def region_tiles(plan: TilePlan, shape: tuple[int, int], rows: slice, cols: slice) -> RegionTiles:
    """The tiles of the ``(H, W) = shape`` image's grid under ``plan`` reaching into ``rows x cols``.

    Raises ``InputError`` for an empty box or one outside the image, or a plan without tiles."""
    height, width = shape
    if not plan.tile_size:
        raise InputError("a region needs tiled prediction; this Segmenter runs whole images (tile_size=0)")
    rows, cols = _box(rows, height, "rows"), _box(cols, width, "cols")
    tile = plan.tile_for(height, width)
    padded = (tiling.padded_length(height, tile, plan.multiple), tiling.padded_length(width, tile, plan.multiple))
    row_windows = _reaching(plan.windows(padded[0], tile), tile, rows)
    col_windows = _reaching(plan.windows(padded[1], tile), tile, cols)
    top, left = row_windows[0][0], col_windows[0][0]
    size = (row_windows[-1][0] + tile - top, col_windows[-1][0] + tile - left)
    read_top, read_left = (_read_start(start, extent, length, full) for start, extent, length, full in
                           ((top, size[0], height, padded[0]), (left, size[1], width, padded[1])))
    return RegionTiles(
        tile, (top, left), size, slice(read_top, min(top + size[0], height)),
        slice(read_left, min(left + size[1], width)),
        [(start - top, window) for start, window in row_windows], [(start - left, window) for start, window in
                                                                  col_windows],
        slice(rows.start - top, rows.stop - top), slice(cols.start - left, cols.stop - left),
        (top - read_top, left - read_left))


def _box(box: slice, length: int, name: str) -> slice:
    """``box`` with its ``None`` ends resolved; ``InputError`` unless it is a non-empty step-1 run inside
    ``0:length``."""
    start, stop, step = box.indices(length)
    if step != 1 or not 0 <= start < stop <= length or (box.stop is not None and box.stop > length):
        raise InputError(f"region {name} {box.start}:{box.stop} must lie inside 0:{length} and not be empty")
    return slice(start, stop)


def _read_start(start: int, extent: int, length: int, padded: int) -> int:
    """Where to start reading along an axis so that reflect-padding the read pixels up to ``padded`` mirrors
    the image's own last ``padded - length`` pixels (the whole image is padded that way): the box's start, or
    earlier when the box ends past the image and holds fewer than ``pad + 1`` of its pixels."""
    pad = padded - length
    if start + extent <= length or pad <= 0:
        return start
    return min(start, max(0, length - 1 - pad))


def _reaching(windows: Windows, tile: int, box: slice) -> Windows:
    """The windows whose non-zero weights reach into ``box`` (in order)."""
    chosen = []
    for start, window in windows:
        inside = window[max(0, box.start - start) : max(0, box.stop - start)]
        if start < box.stop and start + tile > box.start and inside.any():
            chosen.append((start, window))
    return chosen
