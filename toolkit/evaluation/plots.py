"""Figures for training and evaluation: images with labels, loss curves, predictions, overlays, errors.

Every ``plot_*`` function takes numpy arrays and an output path, draws with matplotlib's Agg canvas
(no display, no global pyplot state, safe in threads and on servers), writes the file atomically
and returns its path. The file format follows the suffix (``.png`` unless another is given).

Array conventions (see ``seg.runtime``): images and interior probabilities are ``(H, W) float32 in [0, 1]``;
labels are ``(H, W) float32`` with 1.0 = interior (white) and 0.0 = membrane (black). A pixel is
*predicted membrane* when ``prob < threshold``, as in :mod:`seg.runtime.scores`.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seg.runtime.atomic import atomic_path
from seg.runtime.errors import InputError
from seg.runtime.preprocess import OVERLAY_RGB, overlay_rgb  # noqa: F401  (OVERLAY_RGB: public colour)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PathLike = str | os.PathLike[str]

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
FALSE_MEMBRANE_RGB = (213, 94, 0)  # vermillion: predicted membrane where the truth is interior
MISSED_MEMBRANE_RGB = (0, 114, 178)  # blue: true membrane predicted as interior
MEMBRANE_RGB = (0, 0, 0)  # correct membrane: black, as in the labels
INTERIOR_RGB = (255, 255, 255)  # correct interior: white, as in the labels
DPI = 100
PANEL = 5.4  # inches per image panel: 540 pixels at DPI


def error_map_rgb(prob: np.ndarray, label: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Error map ``(H, W, 3) uint8``: correct pixels black (membrane) / white (interior), false
    membrane in ``FALSE_MEMBRANE_RGB``, missed membrane in ``MISSED_MEMBRANE_RGB``."""
    _check_same_shape(prob=prob, label=label)
    predicted = np.asarray(prob) < threshold
    truth = np.asarray(label) < 0.5
    rgb = np.empty((*predicted.shape, 3), np.uint8)
    rgb[...] = INTERIOR_RGB
    rgb[predicted & truth] = MEMBRANE_RGB
    rgb[predicted & ~truth] = FALSE_MEMBRANE_RGB
    rgb[~predicted & truth] = MISSED_MEMBRANE_RGB
    return rgb


def plot_image_and_label(image: np.ndarray, label: np.ndarray, path: PathLike, title: str = "") -> Path:
    """The image beside its ground-truth mask (white = interior, black = membrane)."""
    _check_same_shape(image=image, label=label)
    fig, axes = _figure(1, 2, title)
    _show(axes[0, 0], image, "image")
    _show(axes[0, 1], label, "ground truth (black = membrane)")
    return _save(fig, path)


def plot_loss_curve(history_csv: PathLike, path: PathLike, title: str = "Training loss") -> Path:
    """Training and validation loss per epoch from a Keras ``history.csv`` (``epoch,loss[,val_loss,...]``)."""
    from matplotlib.ticker import MaxNLocator

    columns = _read_history(Path(history_csv))
    fig = _new_figure(6.4, 4.0, title)
    ax = fig.add_subplot()
    epochs = columns["epoch"]
    ax.plot(epochs, columns["loss"], marker="o", markersize=3, label="train")
    if "val_loss" in columns and not np.isnan(columns["val_loss"]).all():
        val = columns["val_loss"]
        ax.plot(epochs, val, marker="o", markersize=3, label="validation")
        best = int(np.nanargmin(val))
        ax.scatter(
            [epochs[best]],
            [val[best]],
            s=60,
            facecolors="none",
            edgecolors="black",
            zorder=3,
            label=f"best validation ({val[best]:.4g}, epoch {epochs[best]:g})",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_predictions(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    probs: Sequence[np.ndarray],
    path: PathLike,
    threshold: float = 0.5,
    title: str = "",
) -> Path:
    """One row per slice: image, ground truth, predicted probability, predicted mask at ``threshold``."""
    if not len(images) == len(labels) == len(probs) or len(images) == 0:
        raise InputError(
            f"plot_predictions: got {len(images)} images, {len(labels)} labels and {len(probs)} "
            "probability maps; pass the same number (at least one) of each"
        )
    fig, axes = _figure(len(images), 4, title)
    for row, (image, label, prob) in enumerate(zip(images, labels, probs, strict=True)):
        _check_same_shape(image=image, label=label, prob=prob)
        _show(axes[row, 0], image, "image")
        _show(axes[row, 1], label, "ground truth")
        _show(axes[row, 2], prob, "predicted interior probability")
        _show(axes[row, 3], (np.asarray(prob) >= threshold).astype(np.float32), f"predicted mask (t={threshold:g})")
    return _save(fig, path)


def plot_overlay(image: np.ndarray, prob: np.ndarray, path: PathLike, threshold: float = 0.5, title: str = "") -> Path:
    """Predicted membrane (``prob < threshold``) drawn in red over the gray image."""
    _check_same_shape(image=image, prob=prob)
    fig, axes = _figure(1, 1, title)
    _show(axes[0, 0], overlay_rgb(image, prob, threshold), f"predicted membrane (red, t={threshold:g})")
    return _save(fig, path)


def plot_error_map(
    prob: np.ndarray, label: np.ndarray, path: PathLike, threshold: float = 0.5, title: str = ""
) -> Path:
    """Error map (see :func:`error_map_rgb`) with a legend giving each kind of error's pixel share."""
    from matplotlib.patches import Patch

    rgb = error_map_rgb(prob, label, threshold)
    fig, axes = _figure(1, 1, title, legend=True)
    _show(axes[0, 0], rgb, f"errors at threshold {threshold:g}")
    total = rgb.shape[0] * rgb.shape[1]

    def share(color: tuple[int, int, int]) -> str:
        return f"{np.all(rgb == color, axis=2).sum() / total:.2%}"

    handles = [
        Patch(color=np.divide(FALSE_MEMBRANE_RGB, 255), label=f"false membrane ({share(FALSE_MEMBRANE_RGB)})"),
        Patch(color=np.divide(MISSED_MEMBRANE_RGB, 255), label=f"missed membrane ({share(MISSED_MEMBRANE_RGB)})"),
        Patch(facecolor="black", edgecolor="gray", label="correct membrane"),
        Patch(facecolor="white", edgecolor="gray", label="correct interior"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    return _save(fig, path)


# --- helpers ---------------------------------------------------------------------------------------


def _new_figure(width: float, height: float, title: str) -> Figure:
    """A figure on an explicit Agg canvas (never touches pyplot's global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title)
    return fig


def _figure(rows: int, cols: int, title: str, legend: bool = False) -> tuple[Figure, np.ndarray]:
    """A grid of image panels, ``PANEL`` inches each -> ``(figure, (rows, cols) array of Axes)``.

    A 512-pixel slice fills a panel at about its native resolution; ``legend`` leaves room below.
    """
    fig = _new_figure(PANEL * cols + 0.4, PANEL * rows + (1.2 if legend else 0.5), title)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _show(ax: Axes, picture: np.ndarray, caption: str) -> None:
    """Gray ``(H, W)`` in [0, 1] or RGB ``(H, W, 3) uint8`` without axes, pixels not smoothed."""
    picture = np.asarray(picture)
    if picture.ndim == 2:
        ax.imshow(picture, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(picture, interpolation="nearest")
    ax.set_title(caption, fontsize=10)
    ax.set_axis_off()


def _save(fig: Figure, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", dpi=DPI)
    return path


def _check_same_shape(**arrays: np.ndarray) -> None:
    shapes = {name: np.shape(array) for name, array in arrays.items()}
    for name, shape in shapes.items():
        if len(shape) != 2:
            raise InputError(f"{name}: expected a (H, W) array, got shape {shape}")
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise InputError(f"arrays differ in size: {listed}; pass arrays of the same (H, W)")


def _read_history(path: Path) -> dict[str, np.ndarray]:
    """``history.csv`` -> float columns by name; ``epoch`` defaults to 1, 2, ... when absent."""
    if not path.is_file():
        raise InputError(f"{path}: no such file; pass the history.csv that training wrote into its run")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "loss" not in rows[0]:
        raise InputError(f"{path}: expected a CSV with a header 'epoch,loss,val_loss,...' and one row per epoch")
    columns = {name: np.array([_number(row[name], path) for row in rows]) for name in rows[0] if name}
    columns.setdefault("epoch", np.arange(1, len(rows) + 1, dtype=np.float64))
    return columns


def _number(text: str | None, path: Path) -> float:
    if text is None or text.strip() == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{path}: {text!r} is not a number; history.csv must hold numbers only") from None
