"""Training batches: a pure function of (seed, epoch, index), so threads may build them ahead in any order."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from seg.train import backend
from seg.train.models import ModelSpec
from seg.train.trainer import TrainConfig, _make_batches
from tests.train.test_augment import _coded_slice


def _batches(first_epoch: int = 0) -> Any:  # the keras.utils.PyDataset the trainer defines
    config = TrainConfig(data="unused", model=ModelSpec(width=4, depth=1), batch=2, crop=32, steps_per_epoch=4,
                         label_offset=(0.0, 0.0))
    return _make_batches([_coded_slice(), _coded_slice()], config, first_epoch)


def test_a_batch_is_the_same_whatever_order_the_batches_are_built_in() -> None:
    forward = [_batches()[i] for i in range(4)]
    dataset = _batches()
    backward = [dataset[i] for i in reversed(range(4))][::-1]
    for ours, theirs in zip(forward, backward, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(forward[0][0], forward[1][0])  # each index its own crops
    dataset.on_epoch_end()
    assert not np.array_equal(dataset[0][0], forward[0][0])  # and each epoch
    np.testing.assert_array_equal(dataset[0][0], _batches(first_epoch=1)[0][0])  # a resumed epoch: the same


@pytest.mark.parametrize(("name", "workers"), [("tensorflow", 1), ("jax", 2), ("torch", 2)])
def test_batches_are_built_ahead_where_keras_does_not_prefetch(monkeypatch: pytest.MonkeyPatch, name: str,
                                                               workers: int) -> None:
    monkeypatch.setattr(backend, "name", lambda: name)
    assert backend.batch_workers() == workers
    assert _batches().workers == workers
