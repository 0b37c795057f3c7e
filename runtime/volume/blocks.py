"""Cutting a volume into blocks: the unit of work that one Dask task computes and writes.

A block is one Z slice by a square of whole output chunks in Y and X (``CHUNK`` pixels a side, the
last ones clipped to the volume). Because blocks are whole chunks, no two blocks ever write the same
chunk of the output, so any number of processes can write concurrently without locks. The halo (the
model's context read around a block) is not part of a block: it only limits how small a block may be.
"""

from __future__ import annotations

from dataclasses import dataclass

from seg.runtime.errors import InputError

CHUNK = 512
"""Output chunk side in Y and X, in pixels; output chunks are ``(1, CHUNK, CHUNK)``."""


@dataclass(frozen=True)
class Block:
    """The core region one task computes and writes: slice ``z``, pixels ``[rows, cols]`` of that slice.

    ``rows`` and ``cols`` are ``slice(start, stop)`` with ``0 <= start < stop`` in pixels (step 1);
    starts are multiples of ``CHUNK``.
    """

    z: int
    rows: slice
    cols: slice

    def __hash__(self) -> int:  # slices are unhashable before Python 3.12
        return hash((self.z, self.rows.start, self.rows.stop, self.cols.start, self.cols.stop))

    @property
    def key(self) -> str:
        """Unique, filename-safe name from the block's origin, e.g. ``"z12_y1024_x0"``."""
        return f"z{self.z}_y{self.rows.start}_x{self.cols.start}"

    @property
    def shape(self) -> tuple[int, int]:
        """``(h, w)`` of the core in pixels."""
        return self.rows.stop - self.rows.start, self.cols.stop - self.cols.start

    @property
    def voxels(self) -> int:
        """Number of voxels in the core (``h * w``, one slice)."""
        height, width = self.shape
        return height * width


def check_block_size(block: int, halo: int, name: str = "--block") -> None:
    """Raise ``InputError`` unless ``block`` is a positive multiple of ``CHUNK`` and at least ``halo``.

    ``name`` is how the user gave the value (a CLI flag), used in the message; ``halo`` is in pixels.
    """
    if isinstance(block, bool) or not isinstance(block, int) or block <= 0 or block % CHUNK:
        raise InputError(f"{name} {block}: must be a positive multiple of {CHUNK} (output chunk side); "
                         f"use {_nearest_valid(block)}")
    if block < halo:
        smallest = -(-halo // CHUNK) * CHUNK
        raise InputError(f"{name} {block}: a block smaller than the model's halo ({halo} px) reads mostly "
                         f"context; use {name} {smallest} or larger")


def _nearest_valid(block: object) -> str:
    """The one or two multiples of ``CHUNK`` nearest to ``block`` as text, e.g. ``"512 or 1024"``."""
    try:
        value = float(block)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(CHUNK)
    below = int(value // CHUNK) * CHUNK
    if below <= 0:
        return str(CHUNK)
    return f"{below} or {below + CHUNK}" if value != below else str(below)


def plan_blocks(shape: tuple[int, int, int], block: int, halo: int, name: str = "--block") -> list[Block]:
    """Every block of a ``(Z, Y, X)`` volume, row-major (z, then y, then x).

    ``block`` is the block side in pixels (a positive multiple of ``CHUNK``); ``halo`` is the model's
    context in pixels (``block >= halo``). Blocks at the far Y/X edges are clipped to the volume, so
    together the blocks cover every voxel exactly once. ``InputError`` (naming ``name``) for a bad
    ``block``; ``ValueError`` for a shape that is not three positive sizes or a negative halo.
    """
    if len(shape) != 3 or any(isinstance(n, bool) or int(n) != n or n <= 0 for n in shape):
        raise ValueError(f"volume shape must be three positive sizes (Z, Y, X), got {shape}")
    if halo < 0:
        raise ValueError(f"halo must be >= 0 pixels, got {halo}")
    check_block_size(block, halo, name)
    depth, height, width = (int(n) for n in shape)
    return [
        Block(z, slice(y, min(y + block, height)), slice(x, min(x + block, width)))
        for z in range(depth)
        for y in range(0, height, block)
        for x in range(0, width, block)
    ]
