"""The moving average of the weights: its arithmetic, the swap around validation, and resuming it."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from seg import train
from seg.runtime.errors import InputError
from seg.train.averaging import AVERAGE_FILE, WeightAverage
from seg.train.models import ModelSpec


def _tiny_model() -> keras.Model:
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(2, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.Conv2D(1, 1)(x))


def _averager(tmp_path: Path, model: keras.Model, momentum: float, resuming: bool = False) -> WeightAverage:
    average = WeightAverage(momentum, tmp_path, resuming=resuming)
    average.set_model(model)
    average.on_train_begin()
    return average


def _fill(model: keras.Model, value: float) -> None:
    model.set_weights([np.full_like(w, value) for w in model.get_weights()])


def test_average_follows_the_weights_with_the_warm_up_momentum(tmp_path: Path) -> None:
    model = _tiny_model()
    _fill(model, 0.0)
    average = _averager(tmp_path, model, momentum=0.9)
    expected = 0.0
    for step in range(30):
        _fill(model, float(step % 7))
        average.on_train_batch_end(step)
        m = min(0.9, (1 + step) / (10 + step))
        expected = m * expected + (1 - m) * (step % 7)
    for avg in average.average:
        np.testing.assert_allclose(avg, expected, rtol=1e-12)


def test_swap_in_validates_the_average_and_swap_out_restores_the_raw_weights_exactly(tmp_path: Path) -> None:
    model = _tiny_model()
    _fill(model, 0.0)
    average = _averager(tmp_path, model, momentum=0.5)
    raw = [np.random.default_rng(i).random(w.shape).astype(w.dtype) for i, w in enumerate(model.get_weights())]
    model.set_weights(raw)
    average.on_train_batch_end(0)
    average.swap_in()
    held = model.get_weights()
    for w, r in zip(held, raw, strict=True):
        np.testing.assert_allclose(w, 0.9 * r, rtol=1e-6)  # first step: m = 1/10, so 0.1 * 0 + 0.9 * w
    with average.raw():
        for w, r in zip(model.get_weights(), raw, strict=True):
            np.testing.assert_array_equal(w, r)
    for w, h in zip(model.get_weights(), held, strict=True):
        np.testing.assert_array_equal(w, h)
    average.swap_out()
    for w, r in zip(model.get_weights(), raw, strict=True):
        np.testing.assert_array_equal(w, r)
    resumed = _averager(tmp_path, model, momentum=0.5, resuming=True)
    assert resumed.updates == 1
    for a, b in zip(resumed.average, average.average, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_momentum_is_refused_with_the_fix(tmp_path: Path) -> None:
    config = train.TrainConfig(data="d", ema=1.0, runs_root=str(tmp_path))
    with pytest.raises(InputError, match=r"--ema 1.0: use 0 \(off\) or a momentum in \[0.5, 1\)"):
        config.check()


@pytest.mark.slow
def test_best_checkpoint_holds_the_average_and_the_resume_point_the_raw_weights(isbi_dir: Path,
                                                                              tmp_path: Path) -> None:
    config = train.TrainConfig(data=str(isbi_dir), model=ModelSpec("unet", 4, 2), epochs=2, steps_per_epoch=4,
                               batch=2, crop=96, lr=1e-2, ema=0.9, runs_root=str(tmp_path / "runs"), name="t")
    result = train.fit(config, progress=False)
    best = keras.models.load_model(result.run_dir / "model.keras").get_weights()
    last = keras.models.load_model(result.run_dir / "last.keras").get_weights()
    assert any(not np.array_equal(b, raw) for b, raw in zip(best, last, strict=True))
    with np.load(result.run_dir / AVERAGE_FILE) as saved:
        assert int(saved["updates"]) == 8
        if result.best_epoch == 2:
            for i, b in enumerate(best):
                np.testing.assert_allclose(b, saved[f"w{i}"].astype(b.dtype), rtol=1e-6)
    resumed = train.resume(result.run_dir, progress=False, time_budget=3600)
    assert resumed.epochs == 2  # already finished: resuming is a no-op, not an error
