"""Real training on the ISBI slices, a few steps of a tiny U-Net (marked slow)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from seg import train
from seg.runtime.errors import InputError
from seg.runtime.scores import THRESHOLD_CANDIDATES
from seg.train.data import load_split
from seg.train.losses import LOSSES, PER_PIXEL_LOSSES
from seg.train.models import ModelSpec
from seg.train.offset import measure_label_offset
from seg.train.trainer import EMA_MOMENTUM
from seg.train.weights import BORDER_W0

pytestmark = pytest.mark.slow


def _config(isbi_dir: Path, tmp_path: Path, **overrides) -> train.TrainConfig:
    values = dict(data=str(isbi_dir), model=ModelSpec("unet", 4, 2), epochs=4, steps_per_epoch=6, batch=4,
                  crop=96, lr=1e-2, seed=0, runs_root=str(tmp_path / "runs"), name="t")
    values.update(overrides)
    return train.TrainConfig(**values)


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_loss_falls_and_run_folder_is_complete(isbi_dir: Path, tmp_path: Path) -> None:
    """The default recipe: elastic deformation and the border-weighted MSE."""
    result = train.fit(_config(isbi_dir, tmp_path), progress=False)
    rows = _history(result.run_dir)
    assert [int(float(r["epoch"])) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    for name in ("model.keras", "last.keras", "config.json", "history.csv", "state.json"):
        assert (result.run_dir / name).is_file(), name
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["model"]["receptive_field"] == ModelSpec("unet", 4, 2).receptive_field
    assert len(config["data"]["val_slices"]) == 5 and len(config["data"]["train_slices"]) == 20
    assert 0.0 <= result.val_f1 <= 1.0 and result.stopped == "epochs"
    for row in rows:  # with the MSE loss, the validation loss is the validation MSE
        assert float(row["val_loss"]) == pytest.approx(float(row["val_mse"]), rel=1e-4)
    best = max(float(r["val_f1"]) for r in rows)
    assert result.val_f1 == pytest.approx(best)
    best_row = next(r for r in rows if float(r["val_f1"]) == best)  # its threshold went into config.json
    assert config["threshold"] == pytest.approx(float(best_row["val_threshold"]))
    assert config["threshold"] in THRESHOLD_CANDIDATES and 0.0 <= float(best_row["val_pixel_error"]) <= 1.0
    assert config["train"]["elastic"] is True and config["train"]["border_weight"] == BORDER_W0
    assert config["train"]["ema"] == EMA_MOMENTUM and (result.run_dir / "average.npz").is_file()
    train_slices = [s for s in load_split(isbi_dir, "train") if s.source in config["data"]["train_slices"]]
    measured = measure_label_offset(train_slices)  # on the training slices only, recorded for resume and export
    assert config["train"]["label_offset"] == pytest.approx(list(measured)) and result.label_offset == measured


def test_old_run_records_resume_without_border_weighting_and_bad_weights_are_refused(tmp_path: Path) -> None:
    record = _config(Path("data"), tmp_path).to_dict()
    del record["border_weight"], record["ema"], record["label_offset"]
    old = train.TrainConfig.from_dict(record)
    assert old.border_weight == 0.0 and old.ema == 0.0 and old.label_offset == (0.0, 0.0)
    with pytest.raises(InputError, match="--border-weight -1"):
        _config(Path("data"), tmp_path, border_weight=-1.0).check()
    with pytest.raises(InputError, match="--patience 3 with --val 0: early stopping watches the validation F1"):
        _config(Path("data"), tmp_path, patience=3, val=0.0).check()
    with pytest.raises(InputError, match="--time-budget 0: must be a positive number of seconds"):
        _config(Path("data"), tmp_path, time_budget=0.0).check()


def test_a_run_whose_epochs_all_failed_to_score_says_it_diverged(tmp_path: Path) -> None:
    from seg.train.trainer import _fresh_state, _result

    state = {**_fresh_state(), "epoch": 3}
    with pytest.raises(InputError, match="3 epochs trained but none scored .*lower --lr"):
        _result(_config(Path("data"), tmp_path), tmp_path, state, None, 1.0, "cpu")
    with pytest.raises(InputError, match="before one epoch finished; raise --time-budget"):
        _result(_config(Path("data"), tmp_path), tmp_path, _fresh_state(), None, 1.0, "cpu")


def test_time_budget_stops_cleanly_and_resume_finishes(isbi_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(isbi_dir.parent)  # a relative --data: the run resumes from any working folder
    first = train.fit(_config(Path(isbi_dir.name), tmp_path, epochs=3, time_budget=0.01), progress=False)
    assert first.stopped == "time budget" and first.epochs == 1
    assert (first.run_dir / "model.keras").is_file()
    monkeypatch.chdir(tmp_path)
    resumed = train.resume(first.run_dir, progress=False, time_budget=3600)
    assert resumed.epochs == 3 and resumed.stopped == "epochs"
    assert json.loads((first.run_dir / "config.json").read_text())["train"]["time_budget"] == 3600  # for next time
    assert [int(float(r["epoch"])) for r in _history(resumed.run_dir)] == [1, 2, 3]


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_with_its_default_weighting(isbi_dir: Path, tmp_path: Path, loss: str) -> None:
    """Per-pixel losses take the border weights by default; the per-crop Dice losses train unweighted."""
    result = train.fit(_config(isbi_dir, tmp_path, loss=loss, epochs=1, steps_per_epoch=2), progress=False)
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["train"]["border_weight"] == (BORDER_W0 if loss in PER_PIXEL_LOSSES else 0.0)
    assert result.epochs == 1 and math.isfinite(float(_history(result.run_dir)[0]["loss"]))


@pytest.mark.parametrize("loss", sorted(set(LOSSES) - set(PER_PIXEL_LOSSES)))
def test_border_weights_with_a_per_crop_loss_are_refused(tmp_path: Path, loss: str) -> None:
    with pytest.raises(InputError, match=f"--border-weight 10 with --loss {loss}.*--border-weight 0"):
        _config(Path("data"), tmp_path, loss=loss, border_weight=10.0).check()
    _config(Path("data"), tmp_path, loss=loss, border_weight=0.0).check()


def test_seed_cnn_trains_one_epoch(isbi_dir: Path, tmp_path: Path) -> None:
    result = train.fit(_config(isbi_dir, tmp_path, model=ModelSpec("cnn", 8, 2), epochs=1), progress=False)
    assert result.epochs == 1 and (result.run_dir / "model.keras").is_file()


def test_validation_slices_of_any_size_are_padded_like_the_runtime_pads_them(tmp_path: Path) -> None:
    """100x100 slices are no multiple of this U-Net's 8 pixels: validation pads and crops back, as the runtime
    and export do, instead of failing at the first epoch's end."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for kind in ("image", "label"):
        (tmp_path / "data" / "train" / kind).mkdir(parents=True)
    for k in range(4):
        label = (rng.random((100, 100)) > 0.3).astype(np.uint8) * 255
        Image.fromarray(label).save(tmp_path / "data" / "train" / "label" / f"{k}.png")
        Image.fromarray(rng.integers(0, 255, (100, 100), dtype=np.uint8)).save(
            tmp_path / "data" / "train" / "image" / f"{k}.png")
    config = _config(tmp_path / "data", tmp_path, epochs=1, steps_per_epoch=2, batch=2, crop=32, val=0.5)
    assert config.model.size_multiple == 8
    result = train.fit(config, progress=False)
    assert result.epochs == 1 and 0.0 <= result.val_f1 <= 1.0 and result.val_mse > 0
