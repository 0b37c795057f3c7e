"""``TilePlan``: how a ``Segmenter`` cuts images into tiles and batches, resolved once from the model.

The model's metadata (tile, halo, size multiple, receptive field), its input shape (a static tile or batch
fixes them) and the caller's options give one frozen plan; ``tile_for`` and ``batch_for`` then answer, per
image size, which tile side and how many tiles per onnxruntime call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from seg.runtime import tiling
from seg.runtime.errors import InputError
from seg.runtime.metadata import ModelInfo


@dataclass(frozen=True)
class TilePlan:
    """Tiling settings in pixels. ``tile_size`` 0 = whole images; ``large_tile`` = ``tile_size`` or twice it;
    ``small_step`` 0 = no smaller tiles; ``static_batch`` = the model's fixed batch dimension, or None."""

    tile_size: int
    halo: int
    batch_size: int
    large_tile: int
    small_step: int
    multiple: int
    blend: str
    static_batch: int | None
    context: float  # pixels of context a prediction needs at an inner tile edge (``tiling.blend_context``)

    @classmethod
    def resolve(cls, info: ModelInfo, input_shape: Sequence[object], name: str, tile_size: int | None,
                halo: int | None, batch_size: int, blend: str) -> TilePlan:
        """The plan for a model with ``info`` and ``(N, H, W, 1)`` ``input_shape`` (ints where static).

        ``tile_size``/``halo`` None = the metadata's (a halo too large for the tile falls back to
        ``tiling.recommended_halo``). Raises ``InputError`` for a tile off the size multiple or not the
        model's fixed tile, a halo outside ``0..(tile - multiple) // 2``, ``batch_size < 1`` or an unknown blend.
        """
        multiple = max(1, info.size_multiple)
        dim = input_shape[0]
        static_batch = dim if isinstance(dim, int) and dim > 0 else None
        fixed = isinstance(input_shape[1], int) or isinstance(input_shape[2], int) or static_batch is not None
        tile = _resolve_tile(info, input_shape, name, tile_size, multiple)
        halo = _resolve_halo(info, tile, halo, multiple)
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        batch = min(batch_size, static_batch) if static_batch else int(batch_size)
        if blend not in tiling.BLENDS:
            raise InputError(f"unknown blend {blend!r}; choose one of {', '.join(tiling.BLENDS)}")
        # 2x tiles (same pixels per call, half the halo overhead) and quarter-tile steps for small images only
        # for the metadata's tile on a shape-free model: an explicit tile is used as given, a fixed shape or
        # batch would pad them, and below 4 tiles per batch one large tile holds more pixels than a batch.
        auto = tile_size is None and not fixed and tile > 0
        large = 2 * tile if auto and batch >= 4 else tile
        small = max(multiple, tile // 4 // multiple * multiple) if auto else 0
        context = tiling.blend_context(info.receptive_field, halo, tiling.undo_reach(info.label_offset))
        return cls(tile, halo, batch, large, small, multiple, blend, static_batch, context)

    def tile_for(self, height: int, width: int) -> int:
        """The tile side used for an ``(height, width)`` image (0 = whole image): ``large_tile`` when the
        image is at least ``large_tile`` both ways and its grid of large tiles computes fewer pixels; the
        longer side rounded up to ``small_step`` when the image is smaller than ``tile_size`` both ways."""
        side = max(height, width)
        if self.small_step and side < self.tile_size:
            return min(self.tile_size, -(-side // self.small_step) * self.small_step)
        if self.large_tile == self.tile_size or min(height, width) < self.large_tile:
            return self.tile_size  # a large tile must not pad a side further than the tile would: same answer
        small, large = (self.grid_pixels(height, width, tile) for tile in (self.tile_size, self.large_tile))
        return self.large_tile if large < small else self.tile_size

    def grid_pixels(self, height: int, width: int, tile: int) -> int:
        """Pixels computed to cover ``(height, width)`` with ``tile``-pixel tiles overlapping by the halo."""
        counts = [len(self.windows(tiling.padded_length(length, tile, self.multiple), tile)) for length in
                  (height, width)]
        return counts[0] * counts[1] * tile * tile

    def windows(self, length: int, tile: int) -> list[tuple[int, np.ndarray]]:
        """``(start, (tile,) float32 window)`` of each ``tile``-pixel tile along a padded axis of ``length``."""
        return list(_axis_windows(length, tile, self.halo, self.blend, self.multiple, self.context))

    def batch_for(self, tile: int) -> int:
        """Tiles per onnxruntime call for ``tile``-pixel tiles: ``batch_size`` tiles' worth of pixels."""
        if tile <= self.tile_size:
            return self.batch_size
        return max(1, self.batch_size * self.tile_size**2 // tile**2)


@functools.lru_cache(maxsize=256)
def _axis_windows(length: int, tile: int, halo: int, blend: str, multiple: int,
                  context: float) -> tuple[tuple[int, np.ndarray], ...]:
    """``tiling.axis_windows``, made once per geometry (a folder of same-sized images asks again for every
    image); the windows are read-only, as they are shared."""
    windows = tiling.axis_windows(length, tile, halo, blend, multiple, context)
    for _, window in windows:
        window.flags.writeable = False
    return tuple(windows)


def _resolve_tile(info: ModelInfo, shape: Sequence[object], name: str, tile_size: int | None, multiple: int) -> int:
    fixed = [side for side in shape[1:3] if isinstance(side, int)]
    if fixed and (len(fixed) == 1 or fixed[0] != fixed[1]):
        raise InputError(f"{name}: model input is {list(shape)}; seg tiles with square tiles, so its height and "
                         "width must be dynamic or one fixed size (N, T, T, 1); re-export it so")
    static = fixed[0] if fixed else None
    tile = info.tile_size if tile_size is None else int(tile_size)
    if static is not None and tile_size is None:
        tile = static
    if static is not None and tile != static:
        raise InputError(f"{name}: model takes fixed {static}x{static} tiles; tile_size {tile} won't fit")
    if tile < 0 or tile % multiple:
        near = sorted({max(multiple, tile // multiple * multiple), (tile // multiple + 1) * multiple})
        raise InputError(f"{name}: tile size {tile} (tile_size, --tile) must be 0 (whole image) or a positive "
                         f"multiple of {multiple}, e.g. {' or '.join(map(str, near))}")
    return tile


def _resolve_halo(info: ModelInfo, tile: int, halo: int | None, multiple: int) -> int:
    if not tile:
        if halo:
            raise InputError(f"halo {halo} (halo, --halo): tiles overlap only when an image is tiled, and tile "
                             "size 0 runs each image whole; leave the halo out, or give a tile size")
        return 0
    largest = (tile - multiple) // 2
    if halo is None:
        halo = info.halo
        if halo > largest:
            halo = tiling.recommended_halo(info.receptive_field, tile, multiple)
    if not 0 <= halo <= largest:
        raise InputError(f"halo {halo} must be in 0..{largest} for {tile}-pixel tiles")
    return int(halo)
