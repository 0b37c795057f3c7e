"""Figures: exact colour arrays for the error map and overlay, readable PNGs for every plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seg.runtime.errors import InputError
from seg.toolkit.evaluation import plots


def synthetic(shape: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image, label, prob)``: a noisy image, a grid-of-cells label and a slightly wrong prediction."""
    rng = np.random.default_rng(seed)
    label = np.ones(shape, np.float32)
    label[::16, :] = 0.0
    label[:, ::16] = 0.0
    image = np.clip(0.3 + 0.5 * label + rng.normal(0, 0.1, shape), 0, 1).astype(np.float32)
    prob = np.clip(label + rng.normal(0, 0.3, shape), 0, 1).astype(np.float32)
    return image, label, prob


def assert_png(path: Path, min_width: int, min_height: int) -> Image.Image:
    assert path.is_file()
    with Image.open(path) as img:
        img.load()
    assert img.format == "PNG"
    assert img.width >= min_width and img.height >= min_height
    assert not [p.name for p in path.parent.iterdir() if ".tmp-" in p.name]  # atomic write left nothing
    return img


# --- pure colour arrays ---------------------------------------------------------------------------


def test_error_map_colours_land_on_the_errors() -> None:
    # pixel:        correct interior, correct membrane, false membrane, missed membrane
    prob = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    label = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    rgb = plots.error_map_rgb(prob, label)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == plots.INTERIOR_RGB
    assert tuple(rgb[0, 1]) == plots.MEMBRANE_RGB
    assert tuple(rgb[1, 0]) == plots.FALSE_MEMBRANE_RGB
    assert tuple(rgb[1, 1]) == plots.MISSED_MEMBRANE_RGB


def test_error_map_follows_the_threshold() -> None:
    prob = np.array([[0.3]], np.float32)
    interior = np.array([[1.0]], np.float32)
    assert tuple(plots.error_map_rgb(prob, interior, threshold=0.5)[0, 0]) == plots.FALSE_MEMBRANE_RGB
    assert tuple(plots.error_map_rgb(prob, interior, threshold=0.2)[0, 0]) == plots.INTERIOR_RGB


@pytest.mark.parametrize("shape", [(5, 7), (32, 32)])
def test_error_map_counts_match_the_pixel_errors(shape: tuple[int, int]) -> None:
    _, label, prob = synthetic(shape)
    rgb = plots.error_map_rgb(prob, label)
    false_membrane = (prob < 0.5) & (label >= 0.5)
    missed_membrane = (prob >= 0.5) & (label < 0.5)
    np.testing.assert_array_equal(np.all(rgb == plots.FALSE_MEMBRANE_RGB, axis=2), false_membrane)
    np.testing.assert_array_equal(np.all(rgb == plots.MISSED_MEMBRANE_RGB, axis=2), missed_membrane)


def test_overlay_tints_only_predicted_membrane() -> None:
    image = np.array([[0.2, 0.6]], np.float32)
    prob = np.array([[0.1, 0.9]], np.float32)  # left pixel predicted membrane
    rgb = plots.overlay_rgb(image, prob, alpha=0.5)
    expected_left = np.rint(0.5 * 0.2 * 255 + 0.5 * np.array(plots.OVERLAY_RGB)).astype(np.uint8)
    np.testing.assert_array_equal(rgb[0, 0], expected_left)
    np.testing.assert_array_equal(rgb[0, 1], [153, 153, 153])  # 0.6 * 255 gray, untouched


# --- written figures -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 64), (48, 96)])
def test_image_panels_are_readable_pngs(tmp_path: Path, shape: tuple[int, int]) -> None:
    image, label, prob = synthetic(shape)
    written = {
        "pair": plots.plot_image_and_label(image, label, tmp_path / "pair.png", title="slice 0"),
        "predictions": plots.plot_predictions([image, image], [label, label], [prob, prob], tmp_path / "p.png"),
        "overlay": plots.plot_overlay(image, prob, tmp_path / "overlay.png"),
        "errors": plots.plot_error_map(prob, label, tmp_path / "errors.png"),
    }
    pair = assert_png(written["pair"], 800, 400)
    assert pair.width > 1.5 * pair.height  # two panels side by side
    predictions = assert_png(written["predictions"], 1600, 800)  # 2 rows of 4 panels
    assert predictions.width > 1.5 * predictions.height
    assert_png(written["overlay"], 400, 400)
    assert_png(written["errors"], 400, 400)
    assert written["pair"] == tmp_path / "pair.png"


def test_error_map_figure_shows_the_error_colours(tmp_path: Path) -> None:
    label = np.ones((64, 64), np.float32)
    label[:, 32:] = 0.0
    clean = plots.plot_error_map(label, label, tmp_path / "clean.png")
    wrong = label.copy()
    wrong[:32, :] = 1.0 - wrong[:32, :]  # top half: false membrane left, missed membrane right
    errors = plots.plot_error_map(wrong, label, tmp_path / "errors.png")

    def count(path: Path, colour: tuple[int, int, int]) -> int:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        return int(np.all(rgb == colour, axis=2).sum())

    for colour in (plots.FALSE_MEMBRANE_RGB, plots.MISSED_MEMBRANE_RGB):
        # Only the legend patch carries the colour in the clean map; the error map adds a large block.
        assert count(errors, colour) > count(clean, colour) + 10_000


def test_plots_create_missing_folders(tmp_path: Path) -> None:
    image, label, _ = synthetic((32, 32))
    path = plots.plot_image_and_label(image, label, tmp_path / "figures" / "nested" / "pair.png")
    assert_png(path, 100, 100)


def test_loss_curve_from_history_csv(tmp_path: Path) -> None:
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,val_loss,val_f1\n0,0.30,0.35,0.5\n1,0.20,0.25,0.6\n2,0.15,0.27,0.7\n")
    path = plots.plot_loss_curve(history, tmp_path / "loss.png")
    img = assert_png(path, 400, 250)
    assert img.width > img.height


def test_loss_curve_without_validation_column(tmp_path: Path) -> None:
    history = tmp_path / "history.csv"
    history.write_text("loss\n0.3\n0.2\n")
    assert_png(plots.plot_loss_curve(history, tmp_path / "loss.png"), 400, 250)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "{path}: no such file; pass the history.csv that training wrote into its run"),
        ("", "{path}: expected a CSV with a header 'epoch,loss,val_loss,...' and one row per epoch"),
        ("epoch,acc\n0,0.5\n", "{path}: expected a CSV with a header 'epoch,loss,val_loss,...' and one row per epoch"),
        ("epoch,loss\n0,abc\n", "{path}: 'abc' is not a number; history.csv must hold numbers only"),
    ],
)
def test_loss_curve_errors(tmp_path: Path, content: str | None, message: str) -> None:
    history = tmp_path / "history.csv"
    if content is not None:
        history.write_text(content)
    with pytest.raises(InputError) as caught:
        plots.plot_loss_curve(history, tmp_path / "loss.png")
    assert str(caught.value) == message.format(path=history)
    assert not (tmp_path / "loss.png").exists()


def test_mismatched_arrays_are_refused_before_writing(tmp_path: Path) -> None:
    image, label, prob = synthetic((32, 32))
    with pytest.raises(InputError) as caught:
        plots.plot_overlay(image, prob[:16], tmp_path / "overlay.png")
    assert str(caught.value) == "arrays differ in size: image (32, 32), prob (16, 32); pass arrays of the same (H, W)"
    with pytest.raises(InputError) as caught:
        plots.plot_predictions([image], [label], [], tmp_path / "p.png")
    assert str(caught.value) == (
        "plot_predictions: got 1 images, 1 labels and 0 probability maps; pass the same number (at least one) of each"
    )
    with pytest.raises(InputError) as caught:
        plots.error_map_rgb(prob[None], label[None])
    assert str(caught.value) == "prob: expected a (H, W) array, got shape (1, 32, 32)"
    assert list(tmp_path.iterdir()) == []
