"""plan_blocks: every voxel exactly once, whole output chunks, row-major order, and bad block sizes refused."""

from __future__ import annotations

import numpy as np
import pytest

from seg.runtime.errors import InputError
from seg.runtime.volume.blocks import CHUNK, Block, plan_blocks


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 513, 1025), (3, 1000, 700), (1, 512, 512), (2, 1536, 1030)])
@pytest.mark.parametrize("block", [CHUNK, 2 * CHUNK])
def test_plan_covers_every_voxel_once(shape: tuple[int, int, int], block: int) -> None:
    blocks = plan_blocks(shape, block, halo=64)
    counts = np.zeros(shape, np.int32)
    for item in blocks:
        counts[item.z, item.rows, item.cols] += 1
        assert item.rows.start % CHUNK == 0 and item.cols.start % CHUNK == 0
        assert item.rows.stop - item.rows.start <= block and item.cols.stop - item.cols.start <= block
        assert item.voxels == (item.rows.stop - item.rows.start) * (item.cols.stop - item.cols.start)
    assert (counts == 1).all()
    assert sum(item.voxels for item in blocks) == counts.size
    keys = [item.key for item in blocks]
    assert len(set(keys)) == len(keys)
    assert blocks == sorted(blocks, key=lambda item: (item.z, item.rows.start, item.cols.start))


def test_block_key_shape_and_hash() -> None:
    item = Block(12, slice(1024, 1536), slice(0, 300))
    assert item.key == "z12_y1024_x0"
    assert item.shape == (512, 300)
    assert item.voxels == 512 * 300
    assert {item, Block(12, slice(1024, 1536), slice(0, 300))} == {item}


def test_plan_edges_are_clipped() -> None:
    blocks = plan_blocks((1, 600, 1100), 512, 0)
    assert [(b.rows, b.cols) for b in blocks] == [
        (slice(0, 512), slice(0, 512)), (slice(0, 512), slice(512, 1024)), (slice(0, 512), slice(1024, 1100)),
        (slice(512, 600), slice(0, 512)), (slice(512, 600), slice(512, 1024)), (slice(512, 600), slice(1024, 1100)),
    ]


@pytest.mark.parametrize(("block", "fix"), [
    (700, "512 or 1024"), (1000, "512 or 1024"), (100, "512"), (0, "512"), (-512, "512"), (1600, "1536 or 2048"),
])
def test_bad_block_sizes(block: int, fix: str) -> None:
    with pytest.raises(InputError) as info:
        plan_blocks((1, 100, 100), block, 0)
    assert str(info.value) == f"--block {block}: must be a positive multiple of 512 (output chunk side); use {fix}"


def test_block_names_the_flag_given() -> None:
    with pytest.raises(InputError, match=r"^volume\.block 513: must be a positive multiple of 512"):
        plan_blocks((1, 100, 100), 513, 0, name="volume.block")


def test_block_smaller_than_halo() -> None:
    with pytest.raises(InputError) as info:
        plan_blocks((1, 100, 100), 512, 600)
    assert str(info.value) == ("--block 512: a block smaller than the model's halo (600 px) reads mostly context; "
                               "use --block 1024 or larger")


@pytest.mark.parametrize("shape", [(0, 10, 10), (1, 10), (1, -1, 5), (1, 2, 3, 4)])
def test_bad_shapes_are_programming_errors(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="three positive sizes"):
        plan_blocks(shape, 512, 0)  # type: ignore[arg-type]
