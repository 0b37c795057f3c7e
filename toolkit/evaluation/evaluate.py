"""``evaluate``: score a Keras or ONNX model on a labelled split with the seed's MSE and the ISBI 2012 scores.

ONNX models run through ``seg.runtime.Segmenter`` (tiled, as deployed); Keras models through Keras (whole
images, reflect-padded to the size multiple). Both see the same normalised slices.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seg.runtime.errors import InputError, SegWarning
from seg.train import runs
from seg.train.data import Slice, load_split, split_by_slice

SPLITS = ("val", "test", "train")
SCORE_ROWS = (
    ("mse", "MSE (seed metric)"),
    ("threshold", "threshold (pixel scores)"),
    ("pixel_error", "pixel error (fraction of wrong pixels)"),
    ("membrane_f1", "membrane F1 (= Dice)"),
    ("membrane_iou", "membrane IoU"),
    ("v_rand", "V_rand (thinned, foreground-restricted)"),
    ("v_info", "V_info (thinned, foreground-restricted)"),
    ("v_rand_threshold", "best threshold for V_rand"),
)


@dataclass(frozen=True)
class EvalReport:
    """Scores (``seg.toolkit.evaluation.metrics.score_slices``) of ``model`` on ``split`` of ``data``."""

    model: str
    engine: str
    data: str
    split: str
    slice_names: list[str]
    scores: dict[str, Any]
    figures: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate(model: Path, data: Path, split: str = "val", *, figures: Path | None = None, provider: str = "cpu",
             val: float = 0.2, seed: int = 0, threshold: float | None = None, tta: bool = False,
             run: Path | None = None) -> EvalReport:
    """Score ``model`` (``.onnx`` or ``.keras``) on ``split``: ``val`` is the slices held out by training
    with ``--val``/``--seed`` (taken from the run's config.json when the model sits in a run folder).
    The pixel scores cut at ``threshold``, by default the model's own (ONNX metadata or the run's
    config.json, where training wrote the validation-chosen value; 0.5 when neither has one). ``tta``
    averages the 8 flips/rotations (8x the model runs). ``run``: the run folder an ``.onnx`` model was
    exported from, whose recorded slices and options then define the split (a ``.keras`` model in its run
    folder needs none)."""
    from seg.toolkit.evaluation import metrics

    model = runs.resolve_model(model)
    if figures is not None and Path(figures).exists() and not Path(figures).is_dir():
        raise InputError(f"--figures {figures}: is a file; give a folder for the figures")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise InputError(f"--threshold {threshold:g}: outside [0, 1]; it cuts the interior probability, e.g. 0.5")
    record = _run_record(model if run is None else Path(run) / runs.BEST_MODEL)
    if run is not None and record is None:
        raise InputError(f"run={run}: no {runs.CONFIG} there; give the folder of the training run")
    if record is not None:  # the run's own split options, whatever was given
        val, seed = float(record["train"]["val"]), int(record["train"]["seed"])
    slices = select_split(Path(data), split, val, seed, recorded=record)
    if split == "val" and record is None and model.suffix == ".onnx":
        warnings.warn(f"{model}: --split val rebuilds the held-out slices from --val {val:g} --seed {seed}; they "
                      "match training only if the run used the same values (evaluate its model.keras to be sure)",
                      SegWarning, stacklevel=2)
    probs, engine, own_threshold = predict_slices(model, [s.image for s in slices], provider, tta)
    threshold = own_threshold if threshold is None else threshold
    labels = [s.label for s in slices]
    scores = metrics.score_slices(probs, labels, threshold=threshold)
    written = _figures(figures, model, slices, probs, threshold) if figures else []
    return EvalReport(str(model), engine, str(data), split, [s.name for s in slices], scores, written)


def run_threshold(model: Path) -> float:
    """The threshold a ``.keras`` model's run chose on validation (its ``config.json``); else 0.5."""
    from seg.runtime.metadata import DEFAULT_THRESHOLD

    config = model.parent / runs.CONFIG
    if config.is_file():
        return float(runs.read_json(config).get("threshold", DEFAULT_THRESHOLD))
    return DEFAULT_THRESHOLD


def _run_record(model: Path) -> dict[str, Any] | None:
    """The ``config.json`` of the run a ``.keras`` model sits in, or None."""
    config = model.parent / runs.CONFIG
    if model.suffix != ".keras" or not config.is_file():
        return None
    record = runs.read_json(config)
    if not isinstance(record.get("train"), dict):
        raise InputError(f"{config}: not a seg run record (no 'train' section); move the model out of that "
                         "folder or restore its config.json")
    return record


def select_split(data: Path, split: str, val: float, seed: int, recorded: dict[str, Any] | None = None) -> list[Slice]:
    """The labelled slices of ``split``; a split without labels is an ``InputError`` that says so.

    ``recorded``: a run's ``config.json``. When ``data`` is the dataset it trained on, ``val`` and ``train`` are
    the very slices it recorded, even if the folder has gained slices since; on another dataset they are
    re-split by ``val`` and ``seed``, with a warning."""
    if split not in SPLITS:
        raise InputError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    if data.name in ("image", "label") and not (data / "train").is_dir():
        raise InputError(f"{data}: an image folder; give the dataset folder holding train/ and test/, "
                         f"e.g. {data.parent.parent}")
    if split == "test":
        slices = load_split(data, "test", require_labels=False)
        if any(s.label is None for s in slices):
            raise InputError(f"{data / 'test' / 'label'}: the test split has no labels, so it cannot be scored; "
                             "use --split val")
        return slices
    slices = load_split(data, "train")
    chosen = _recorded_slices(slices, split, recorded, data) if recorded else None
    if chosen is None:
        train_set, val_set = split_by_slice(slices, val, seed)
        chosen = val_set if split == "val" else train_set
    if not chosen:
        raise InputError(f"--split {split}: no slices (the validation fraction is 0); use --split train")
    return chosen


def _recorded_slices(slices: list[Slice], split: str, recorded: dict[str, Any], data: Path) -> list[Slice] | None:
    """The slices of ``split`` (val or train) that the run recorded, when ``data`` is its dataset; else None
    (with a warning when it is another dataset). Runs before slice paths were recorded give None."""
    run_data = recorded.get("data", {})
    trained_on = run_data.get("dir")
    if trained_on and Path(trained_on).resolve() != data.resolve():
        warnings.warn(f"{data}: not the dataset this run trained on ({trained_on}); --split {split} re-splits it "
                      "with the run's --val and --seed, which holds out the same slices only if it has the same "
                      "slices in the same order", SegWarning, stacklevel=3)
        return None
    wanted = [str(Path(v).resolve()) for v in run_data.get(f"{split}_slices", []) if Path(v).suffix]
    if not trained_on or not wanted:
        return None
    by_source = {str(Path(s.source).resolve()): s for s in slices}
    missing = [w for w in wanted if w not in by_source]
    if missing:
        raise InputError(f"{data}: the run's {split} slice {missing[0]} is no longer there ({len(missing)} of "
                         f"{len(wanted)} missing); restore it, or score another split")
    keep = set(wanted)
    return [s for s in slices if str(Path(s.source).resolve()) in keep]


def predict_slices(model: Path, images: list[np.ndarray], provider: str = "cpu",
                   tta: bool = False) -> tuple[list[np.ndarray], str, float]:
    """Probabilities ``(H, W) float32 in [0, 1]`` for each image, a label for the engine used and the
    model's own threshold (ONNX metadata, or the run's ``config.json`` for Keras; 0.5 when neither has
    one). ``tta`` averages the predictions of the 8 flips/rotations (``seg.runtime.tiling.dihedral``)."""
    suffix = " + TTA" if tta else ""
    if model.suffix == ".onnx":
        from seg.runtime import Segmenter

        with Segmenter(model, provider=provider, tta=tta, streams=None) as segmenter:  # many images: several streams
            engine = f"onnxruntime ({', '.join(segmenter.providers)}){suffix}"
            return segmenter.predict_batch(images), engine, segmenter.info.threshold
    if model.suffix == ".keras":
        return keras_predict_file(model, images, tta), f"keras{suffix}", run_threshold(model)
    raise InputError(f"{model}: unknown model type {model.suffix!r}; give a .onnx or .keras file")


def keras_predict_file(model_path: Path, images: list[np.ndarray], tta: bool = False) -> list[np.ndarray]:
    """Whole-image Keras predictions ``(H, W) float32 in [0, 1]`` of the ``.keras`` file at ``model_path``
    (loaded with ``safe_mode=True``; padding as the runtime's whole-image rule); ``tta``: the mean over the
    8 flips/rotations, each mapped back."""
    from seg.export import keras_predict as predict
    from seg.export import load_keras
    from seg.export.source import load_source
    from seg.runtime.tiling import DIHEDRAL, dihedral, undo_dihedral

    if not tta:
        return predict(load_keras(model_path), images)
    source = load_source(model_path)  # with its run's config.json: the label offset it was trained at
    if not source.config:
        warnings.warn(f"{model_path}: no config.json beside it, so TTA assumes labels drawn centred on the "
                      "membranes (label offset 0); keep it beside its run's config.json to use its offset", SegWarning,
                      stacklevel=2)
    total = [np.zeros(image.shape, np.float64) for image in images]
    for k in DIHEDRAL:
        for sum_, prob in zip(total, predict(source.model, [dihedral(image, k) for image in images]), strict=True):
            sum_ += undo_dihedral(prob, k, source.label_offset)
    return [(sum_ / len(DIHEDRAL)).astype(np.float32) for sum_ in total]


def _figures(folder: Path, model: Path, slices: list[Slice], probs: list[np.ndarray], threshold: float) -> list[str]:
    from seg.toolkit.evaluation import plots

    folder.mkdir(parents=True, exist_ok=True)
    first, prob = slices[0], probs[0]
    paths = [
        plots.plot_image_and_label(first.image, first.label, folder / "image_label.png", title=first.source),
        plots.plot_predictions([s.image for s in slices[:3]], [s.label for s in slices[:3]], probs[:3],
                               folder / "predictions.png", threshold=threshold, title=model.name),
        plots.plot_overlay(first.image, prob, folder / "overlay.png", threshold=threshold, title=first.source),
        plots.plot_error_map(prob, first.label, folder / "error_map.png", threshold=threshold, title=first.source),
    ]
    history = model.parent / runs.HISTORY
    if history.is_file():
        paths.append(plots.plot_loss_curve(history, folder / "loss.png", title=model.parent.name))
    return [str(p) for p in paths]
