from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from seg.runtime.errors import SegWarning
from seg.toolkit.cli import app
from seg.toolkit.evaluation.evaluate import SCORE_ROWS, evaluate, predict_slices, select_split
from tests.helpers import make_dataset

runner = CliRunner()


def test_select_split_val_matches_training_split(tmp_path: Path) -> None:
    from seg.train.data import load_split, split_by_slice

    make_dataset(tmp_path, n=10, size=16)
    expected = split_by_slice(load_split(tmp_path), 0.2, 0)[1]
    assert [s.name for s in select_split(tmp_path, "val", 0.2, 0)] == [s.name for s in expected]
    assert len(select_split(tmp_path, "train", 0.2, 0)) == 8


def test_a_runs_recorded_split_is_kept_when_its_dataset_gains_slices(tmp_path: Path) -> None:
    """Re-splitting 12 slices by the run's --val/--seed would hold out other slices than the 10 it trained
    on; evaluate picks the very slices the run recorded, and warns on another dataset."""
    from seg.runtime.errors import InputError
    from seg.train.data import load_split, split_by_slice

    make_dataset(tmp_path / "data", n=10, size=16)
    train_set, val_set = split_by_slice(load_split(tmp_path / "data"), 0.2, 0)
    record = {"train": {"val": 0.2, "seed": 0},
              "data": {"dir": str(tmp_path / "data"), "train_slices": [s.source for s in train_set],
                       "val_slices": [s.source for s in val_set]}}
    make_dataset(tmp_path / "data", n=12, size=16)  # two more slices since
    assert [s.name for s in select_split(tmp_path / "data", "val", 0.2, 0)] != [s.name for s in val_set]
    for split, expected in (("val", val_set), ("train", train_set)):
        chosen = select_split(tmp_path / "data", split, 0.2, 0, recorded=record)
        assert [s.name for s in chosen] == [s.name for s in expected]
    make_dataset(tmp_path / "copy", n=10, size=16)
    with pytest.warns(SegWarning, match="not the dataset this run trained on"):
        assert len(select_split(tmp_path / "copy", "val", 0.2, 0, recorded=record)) == 2
    for kind in ("image", "label"):
        next((tmp_path / "data" / "train" / kind).glob(f"{val_set[0].name}.*")).unlink()
    with pytest.raises(InputError, match=f"the run's val slice .*{val_set[0].name}.* is no longer there"):
        select_split(tmp_path / "data", "val", 0.2, 0, recorded=record)


def test_unlabelled_test_split_says_so(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=2, size=16, split="test")
    for path in (tmp_path / "test/label").iterdir():
        path.unlink()
    (tmp_path / "test/label").rmdir()
    make_dataset(tmp_path, n=2, size=16)
    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "test/image/00.png"), "--data",
                                 str(tmp_path), "--split", "test"])
    assert result.exit_code == 2
    assert "the test split has no labels, so it cannot be scored" in result.output


def test_missing_model_and_bad_split(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=2, size=16)
    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "m.onnx"), "--data", str(tmp_path)])
    assert result.exit_code == 2 and "m.onnx: no such model" in result.output
    (tmp_path / "m.onnx").write_bytes(b"x")
    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "m.onnx"), "--data", str(tmp_path),
                                 "--split", "dev"])
    assert result.exit_code == 2 and "--split 'dev': choose one of val, test, train" in result.output


@pytest.mark.slow
def test_keras_and_onnx_agree_and_figures_exist(trained_run: Path, exported_model: Path, isbi_dir: Path,
                                                tmp_path: Path) -> None:
    keras_report = evaluate(trained_run / "model.keras", isbi_dir, "val")
    with pytest.warns(SegWarning, match="--split val rebuilds the held-out slices"):
        onnx_report = evaluate(exported_model, isbi_dir, "val", figures=tmp_path / "fig")
    with warnings.catch_warnings():  # the run's recorded split: nothing to warn about
        warnings.simplefilter("error", SegWarning)
        assert evaluate(exported_model, isbi_dir, "val", run=trained_run).scores == onnx_report.scores
    assert keras_report.slice_names == onnx_report.slice_names and len(onnx_report.slice_names) == 5
    for key, _ in SCORE_ROWS:
        assert abs(keras_report.scores[key] - onnx_report.scores[key]) <= 1e-4, key
    assert 0.0 < onnx_report.scores["v_rand"] <= 1.0 and 0.0 < onnx_report.scores["membrane_f1"] <= 1.0
    for path in onnx_report.figures:
        with Image.open(path) as img:
            assert img.format == "PNG" and min(img.size) > 100


@pytest.mark.slow
def test_cli_prints_all_scores_and_json(exported_model: Path, isbi_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["evaluate", "--model", str(exported_model), "--data", str(isbi_dir),
                                 "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    for _, label in SCORE_ROWS:
        assert label[:20] in result.output
    scores = json.loads((tmp_path / "s.json").read_text())["scores"]
    assert len(scores["v_rand_curve"]) == 11 and scores["v_rand"] == max(scores["v_rand_curve"])
    # the JSON's pixel scores, recounted here from the model's own probabilities on the same slices
    from seg.runtime import Segmenter

    slices = select_split(isbi_dir, "val", 0.2, 0)
    with Segmenter(exported_model, provider="cpu") as seg:
        prob = np.concatenate([seg.predict(s.image).ravel() for s in slices])
        cut = seg.info.threshold  # the model's own, chosen on validation by training
    assert scores["threshold"] == cut
    truth_membrane = np.concatenate([s.label.ravel() for s in slices]) < 0.5
    said_membrane = prob < cut
    tp = np.sum(said_membrane & truth_membrane)
    f1 = 2 * tp / (2 * tp + np.sum(said_membrane & ~truth_membrane) + np.sum(~said_membrane & truth_membrane))
    assert scores["membrane_f1"] == pytest.approx(f1, abs=1e-9)
    assert scores["pixel_error"] == pytest.approx(np.mean(said_membrane != truth_membrane), abs=1e-9)
    assert f"{f1:.4f}" in result.output


def test_figures_given_a_file_fails_before_scoring(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=2, size=16)
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "f.png").write_bytes(b"x")
    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "m.onnx"), "--data", str(tmp_path),
                                 "--figures", str(tmp_path / "f.png")])
    assert result.exit_code == 2 and "f.png: is a file; give a folder for the figures" in result.output
    assert "rebuilds the held-out slices" not in result.output  # errors come before warnings


def test_image_folder_as_data_and_bad_threshold_are_explained(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=2, size=16)
    (tmp_path / "m.onnx").write_bytes(b"x")
    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "m.onnx"), "--data",
                                 str(tmp_path / "train" / "image")])
    assert result.exit_code == 2
    assert "an image folder; give the dataset folder holding train/ and test/" in result.output
    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "m.onnx"), "--data", str(tmp_path),
                                 "--threshold", "1.5"])
    assert result.exit_code == 2 and "--threshold 1.5: outside [0, 1]" in result.output


def test_pixel_scores_cut_at_the_models_own_threshold_unless_one_is_given(tmp_path: Path) -> None:
    """An identity model (probability = normalised image) whose metadata carries threshold 0.75: the
    default report cuts there, ``threshold=0.3`` overrides it, and the pixel errors differ accordingly."""
    from seg.runtime.metadata import ModelInfo
    from tests.runtime.test_providers import tiny_model

    make_dataset(tmp_path / "data", n=2, size=32)
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_model("identity", metadata=ModelInfo(threshold=0.75, size_multiple=1).to_props()))
    slices = select_split(tmp_path / "data", "train", 0.2, 0)  # what evaluate scores
    probs, _, _ = predict_slices(model, [s.image for s in slices])
    image = np.concatenate([p.ravel() for p in probs])
    interior = np.concatenate([s.label.ravel() for s in slices]) >= 0.5
    for given, cut in ((None, 0.75), (0.3, 0.3)):
        report = evaluate(model, tmp_path / "data", "train", threshold=given)
        assert report.scores["threshold"] == cut
        assert report.scores["pixel_error"] == pytest.approx(np.mean((image >= cut) != interior))
    assert np.mean((image >= 0.75) != interior) > np.mean((image >= 0.3) != interior)  # the cut mattered


@pytest.mark.slow
def test_keras_tta_output_turns_with_its_input(tmp_path: Path) -> None:
    """Averaged over the 8 flips/rotations, the prediction of a turned image is the turned prediction
    (each transform is mapped back correctly), which a plain untrained U-Net's is not."""
    import keras

    from seg.runtime.tiling import dihedral
    from seg.toolkit.evaluation.evaluate import keras_predict_file
    from seg.train.models import ModelSpec, build_model

    keras.utils.set_random_seed(0)
    build_model(ModelSpec("unet", 4, 2)).save(tmp_path / "m.keras")
    image = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    turned = dihedral(image, 5)
    plain, plain_turned = keras_predict_file(tmp_path / "m.keras", [image, turned])
    with pytest.warns(SegWarning, match=r"m.keras: no config.json beside it, so TTA assumes .*\(label offset 0\)"):
        tta, tta_turned = keras_predict_file(tmp_path / "m.keras", [image, turned], tta=True)
    np.testing.assert_allclose(tta_turned, dihedral(tta, 5), atol=1e-5)
    assert np.abs(plain_turned - dihedral(plain, 5)).max() > 1e-3
    (tmp_path / "config.json").write_text(json.dumps({"train": {"label_offset": [0.5, 0.0]}}), encoding="utf-8")
    (with_offset,) = keras_predict_file(tmp_path / "m.keras", [image], tta=True)  # the run's offset is used
    assert np.abs(with_offset - tta).max() > 1e-4


def test_onnx_tta_is_reported_and_changes_an_asymmetric_models_scores(tmp_path: Path) -> None:
    from seg.runtime.metadata import ModelInfo
    from tests.runtime.test_providers import tiny_model

    make_dataset(tmp_path / "data", n=2, size=32)
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_model("conv", metadata=ModelInfo(size_multiple=1, halo=0, tile_size=32).to_props()))
    plain = evaluate(model, tmp_path / "data", "train")
    tta = evaluate(model, tmp_path / "data", "train", tta=True)
    assert tta.engine.endswith("+ TTA") and not plain.engine.endswith("+ TTA")
    assert tta.scores["mse"] != pytest.approx(plain.scores["mse"])


def test_recorded_slices_are_found_from_any_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run trained on a relative --data records absolute slice paths, so evaluate and the run's
    samples.png find its validation slices wherever they are called from."""
    from seg.toolkit.evaluation.figures import _validation_samples
    from seg.train.data import load_split, split_by_slice

    make_dataset(tmp_path / "data", n=10, size=16)
    monkeypatch.chdir(tmp_path)
    slices = load_split(Path("data"))
    assert all(Path(s.source).is_absolute() for s in slices)
    train_set, val_set = split_by_slice(slices, 0.2, 0)
    record = {"train": {"val": 0.2, "seed": 0},
              "data": {"dir": str(Path("data").resolve()), "train_slices": [s.source for s in train_set],
                       "val_slices": [s.source for s in val_set]}}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path / "data")
    chosen = select_split(Path("."), "val", 0.5, 3, recorded=record)
    assert [s.name for s in chosen] == [s.name for s in val_set]
    assert [s.name for s in _validation_samples(tmp_path / "run", 1)] == [val_set[0].name]
