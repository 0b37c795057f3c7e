"""The words and the picture of a bioimage.io package: name, description, tags, citations, README, cover.

Used by ``seg.export.bioimageio``; plain strings and a matplotlib figure, no bioimageio import here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seg.runtime.metadata import ModelInfo

if TYPE_CHECKING:
    from seg.export.parity import ImageSet, ParityReport

CARDONA = ("Cardona A. et al. (2010). An integrated micro- and macroarchitectural analysis of the Drosophila "
           "brain by computer-assisted serial section electron microscopy. PLoS Biol 8(10): e1000502 "
           "(the ISBI 2012 data)", "10.1371/journal.pbio.1000502")
ISBI = ("Arganda-Carreras I. et al. (2015). Crowdsourcing the creation of image segmentation algorithms for "
        "connectomics. Front. Neuroanat. 9:142 (the ISBI 2012 challenge)", "10.3389/fnana.2015.00142")
UNET = ("Ronneberger O., Fischer P., Brox T. (2015). U-Net: Convolutional Networks for Biomedical Image "
        "Segmentation. MICCAI 2015, LNCS 9351: 234-241", "10.1007/978-3-319-24574-4_28")
ISBI_TERMS = ("The ISBI 2012 data (serial-section TEM of the Drosophila first-instar larva ventral nerve cord, "
              "Cardona et al. 2010) are free to use for generating or testing non-commercial image segmentation "
              "software; publications that use them cite TrakEM2 and Cardona et al. (2010).")


def _is_unet(info: ModelInfo) -> bool:
    return info.model_kind.lower() == "unet"


def trained_on_isbi(info: ModelInfo) -> bool:
    """True when the training-data summary names ISBI 2012 (a dataset folder called ``isbi2012``)."""
    return "isbi" in info.training_data.lower()


def architecture(info: ModelInfo) -> str:
    """One line, e.g. ``2D U-Net, width 16, depth 3, stem 2``."""
    name = "2D U-Net" if _is_unet(info) else f"2D {info.model_kind.upper()}"
    parts = [f"width {info.width}" if info.width else "", f"depth {info.depth}" if info.depth else "",
             f"stem {info.stem}" if _is_unet(info) and info.stem else ""]
    return ", ".join([name, *[p for p in parts if p]])


def title(info: ModelInfo) -> str:
    """The package's name (letters, digits, ``_+- ()`` and spaces only, 5 to 64 characters)."""
    kind = "U-Net" if _is_unet(info) else info.model_kind.upper()
    data = " (ISBI 2012)" if trained_on_isbi(info) else ""
    return f"seg {kind} EM membrane segmentation{data}"[:64]


def description(info: ModelInfo) -> str:
    """Two sentences for the zoo's card (under 512 characters)."""
    return (f"{architecture(info)} that predicts the cell-interior probability (1 = interior, 0 = membrane) of "
            f"2-D electron-microscopy slices; trained with seg-toolkit on {info.training_data or 'unrecorded data'}"
            " and exported to ONNX behind a Keras-vs-ONNX parity gate.")[:512]


def tags(info: ModelInfo) -> list[str]:
    """Zoo tags: modality, task, dimensionality, architecture, framework, data."""
    found = ["electron-microscopy", "membrane-segmentation", "semantic-segmentation", "2d", "onnx",
             "unet" if _is_unet(info) else info.model_kind.lower(), "seg-toolkit"]
    return found + (["isbi2012", "drosophila", "connectomics"] if trained_on_isbi(info) else [])


def citations(info: ModelInfo) -> list[tuple[str, str]]:
    """``(text, doi)`` pairs: the data (ISBI 2012, Cardona et al. 2010) and the U-Net, where they apply."""
    return ([CARDONA, ISBI] if trained_on_isbi(info) else []) + ([UNET] if _is_unet(info) else [])


def zoo_config(info: ModelInfo, run_dir: str | Path | None) -> dict[str, Any]:
    """Keyword arguments for the spec's ``BioimageioConfig``: what the model is for and, when the run's
    ``config.json`` says, how it was trained (``training_epochs``: the epochs it trained, from ``state.json``;
    left out when that is missing)."""
    config, state = _run_files(run_dir)
    train = config.get("train")
    training = {"training_epochs": state.get("epoch"), "training_batch_size": train.get("batch"),
                "initial_learning_rate": train.get("lr"), "loss_function": train.get("loss"),
                "optimizer": "keras.optimizers.Adam"} if isinstance(train, dict) else {}
    return {"architecture_type": architecture(info).split(",")[0], "architecture_description": architecture(info),
            "modality": "electron microscopy", "target_structure": ["cell membranes"],
            "task": "semantic segmentation", "training": {k: v for k, v in training.items() if v is not None}}


def readme(info: ModelInfo, parity: ParityReport | None, image_set: ImageSet, run_dir: str | Path | None,
           weights: str, license: str, input_dtype: str = "uint8") -> str:
    """The package's README.md: model, training data and its terms, recipe, validation, parity, how to run,
    licence. ``input_dtype``: the test input's dtype, the type the package declares."""
    from seg.export.bioimageio import sizes

    config, state = _run_files(run_dir)
    size_min, step, _ = sizes(info)
    lines = [f"# {title(info)}", "", description(info), "", "## Model", "",
             f"- Architecture: {architecture(info)}; receptive field {info.receptive_field} px.",
             "- Input: a 2-D gray image, axes batch, y, x, channel (NHWC); integers are scaled by their dtype's "
             "range (uint8 / 255), as seg-toolkit does. Height and width: "
             f"{size_min} + n x {step} px in bioimage.io tools (seg-toolkit tiles any size).",
             f"- Output: the cell-interior probability in [0, 1]; masks at threshold {info.threshold:g}.",
             f"- Tiling: tiles of {info.tile_size} px overlapping by a halo of {info.halo} px (declared on the "
             "output, so block-wise prediction crops it).",
             f"- Weights: `{weights}` (ONNX opset {info.versions.get('opset', '?')}), exported by seg-toolkit "
             f"{info.versions.get('seg-toolkit', '?')} with tf2onnx {info.versions.get('tf2onnx', '?')} from "
             f"Keras {info.versions.get('keras', '?')} (TensorFlow {info.versions.get('tensorflow', '?')}) on "
             f"{info.created or 'an unrecorded date'}; seg's `seg.*` metadata are inside the ONNX file.",
             "", "## Training data", "", f"- {info.training_data or 'Not recorded.'}"]
    lines += ["", ISBI_TERMS] if trained_on_isbi(info) else []
    lines += ["", "## Training recipe", "", *_recipe(config)]
    lines += ["", "## Validation", "", *_scores(state), *_parity(parity, image_set, input_dtype)]
    lines += ["", "## How to run it", "", "With seg-toolkit (`pip install seg-toolkit`), on CPU or CUDA, tiled:",
              "", "```console", f"seg infer --model {weights.rsplit('.', 1)[0]}.bioimageio.zip --input images/",
              "```", "", "```python", "from seg.runtime import Segmenter", "",
              f'with Segmenter("{weights.rsplit(".", 1)[0]}.bioimageio.zip") as segmenter:',
              "    prob = segmenter.predict(image)  # (H, W) uint8 -> (H, W) float32 in [0, 1]", "```", "",
              "With bioimage.io tools: `bioimageio predict` (bioimageio.core), or any consumer of ONNX weights.", "",
              "## Licence", "", f"{license}" + (" (the ISBI 2012 data are for non-commercial use)."
                                                if trained_on_isbi(info) and "NC" in license else "."), ""]
    return "\n".join(lines)


def _run_files(run_dir: str | Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's ``config.json`` and ``state.json`` as dicts (``{}`` when absent or unreadable)."""
    found = []
    for name in ("config.json", "state.json"):
        path = Path(run_dir) / name if run_dir else None
        try:
            value = json.loads(path.read_text(encoding="utf-8")) if path and path.is_file() else {}
        except (OSError, ValueError):
            value = {}
        found.append(value if isinstance(value, dict) else {})
    return found[0], found[1]


def _recipe(config: dict[str, Any]) -> list[str]:
    train = config.get("train")
    if not isinstance(train, dict):
        return ["- Not recorded with these weights."]
    keys = ("loss", "epochs", "steps_per_epoch", "batch", "crop", "lr", "val", "seed", "time_budget", "patience",
            "elastic", "border_weight", "ema", "label_offset", "amp")
    settings = ", ".join(f"{key} {train[key]}" for key in keys if train.get(key) is not None)
    return [f"- `seg train` with {settings}.",
            "- Adam; random crops, each in one of the 8 flips/rotations, with mild intensity jitter (and elastic "
            "deformation when `elastic` is true; the loss weighted per pixel to stress thin borders between cells "
            "when `border_weight`, the U-Net weight map's w0, is above 0; each label kept at `label_offset` "
            "(dy, dx) px from its image, where the labels were drawn, whatever the flip); the checkpoint kept is "
            "the epoch with the best validation membrane F1 (of the weights' moving average with momentum `ema` "
            "when it is above 0), and the threshold is the one with the fewest wrong validation pixels."]


def _scores(state: dict[str, Any]) -> list[str]:
    best = state.get("best_logs")
    if not isinstance(best, dict) or "val_f1" not in best:
        return ["- Validation scores: not recorded with these weights."]
    return [f"- Best epoch {state.get('best_epoch', '?')} on the run's validation slices: membrane F1 "
            f"{float(best['val_f1']):.4f}, MSE {float(best.get('val_mse', float('nan'))):.4f}."]


def _parity(parity: ParityReport | None, image_set: ImageSet, input_dtype: str) -> list[str]:
    if parity is None:
        return ["- Keras-vs-ONNX parity: not measured for this package."]
    second = (f" A second ONNX host ({parity.second_host}) agreed with onnxruntime to "
              f"{parity.second_host_max_abs_diff:.2e}." if parity.second_host and
              parity.second_host_max_abs_diff is not None else "")
    return [f"- Keras-vs-ONNX parity (seg's export gate, {len(parity.images)} images from {parity.source}, "
            f"including a {image_set.images[-1].shape[0]}x{image_set.images[-1].shape[1]} mosaic): "
            f"max |Δ| {parity.max_abs_diff:.2e} (allowed {parity.atol:g}), mean |Δ| {parity.mean_abs_diff:.2e}, "
            f"mask agreement {parity.mask_agreement:.4%}, batch-of-4 max |Δ| {parity.batch4_max_abs_diff:.2e}."
            + second,
            f"- The test tensors are a real slice ({input_dtype}, as read from its file) and the ONNX model's "
            "output for it."]


def cover(image: np.ndarray, prob: np.ndarray, path: Path) -> None:
    """A 2:1 PNG: the slice ``(H, W) float32 in [0, 1]`` and the membrane probability (``1 - prob``) in red
    over it (opacity 0.65 x probability); 640x320 pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.2), dpi=100)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    red = np.zeros((*prob.shape, 4), np.float32)
    red[..., 0] = 0.9
    red[..., 3] = np.clip(1.0 - prob, 0.0, 1.0) * 0.65
    for axis, label in ((left, "EM slice"), (right, "membrane probability")):
        axis.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="lanczos")
        axis.set_title(label, fontsize=11)
        axis.set_axis_off()
    right.imshow(red, interpolation="lanczos")
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92, wspace=0.02)
    figure.savefig(path, format="png")
