"""The moving average of the weights: its arithmetic, the swap around validation, and resuming it."""

from __future__ import annotations

import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from seg import train
from seg.runtime.errors import InputError, SegWarning
from seg.train.averaging import AVERAGE_FILE, WeightAverage
from seg.train.models import ModelSpec


def _tiny_model() -> keras.Model:
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(2, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.Conv2D(1, 1)(x))


def _averager(tmp_path: Path, model: keras.Model, momentum: float, resume_steps: int | None = None) -> WeightAverage:
    average = WeightAverage(momentum, tmp_path, resume_steps=resume_steps)
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


def test_resume_takes_the_saved_average_only_when_it_belongs_to_the_resume_point(tmp_path: Path) -> None:
    model = _tiny_model()
    _fill(model, 0.0)
    average = _averager(tmp_path, model, momentum=0.5)
    _fill(model, 1.0)
    average.on_train_batch_end(0)
    average.save()
    resumed = _averager(tmp_path, model, momentum=0.5, resume_steps=1)
    assert resumed.updates == 1
    for a, b in zip(resumed.average, average.average, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.warns(SegWarning, match=r"average.npz: weight average from step 1, the resume point is step 5"):
        stale = _averager(tmp_path, model, momentum=0.5, resume_steps=5)
    assert stale.updates == 0 and all((a == 1.0).all() for a in stale.average)  # starts again from the weights


def test_bad_momentum_is_refused_with_the_fix(tmp_path: Path) -> None:
    config = train.TrainConfig(data="d", ema=1.0, runs_root=str(tmp_path))
    with pytest.raises(InputError, match=r"--ema 1.0: use 0 \(off\) or a momentum in \[0.5, 1\)"):
        config.check()


@pytest.mark.slow
def test_best_checkpoint_holds_the_average_and_resume_continues_it(isbi_dir: Path, tmp_path: Path) -> None:
    config = train.TrainConfig(data=str(isbi_dir), model=ModelSpec("unet", 4, 2), epochs=2, steps_per_epoch=4,
                               batch=2, crop=96, lr=1e-2, ema=0.9, time_budget=0.01, runs_root=str(tmp_path / "runs"),
                               name="t")
    first = train.fit(config, progress=False)  # the budget stops epoch 1 after its first step
    assert first.epochs == 1 and first.best_epoch == 1
    best = keras.models.load_model(first.run_dir / "model.keras").get_weights()
    last = keras.models.load_model(first.run_dir / "last.keras").get_weights()
    with np.load(first.run_dir / AVERAGE_FILE) as saved:
        assert int(saved["updates"]) == 1
        for i, b in enumerate(best):
            np.testing.assert_allclose(b, saved[f"w{i}"].astype(b.dtype), rtol=1e-6)
    assert any(not np.array_equal(b, raw) for b, raw in zip(best, last, strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SegWarning)  # a stale or missing average would warn
        resumed = train.resume(first.run_dir, progress=False, time_budget=3600)
    assert resumed.epochs == 2
    with np.load(first.run_dir / AVERAGE_FILE) as saved:
        assert int(saved["updates"]) == 1 + 4
