"""Fake training runs for the export tests: tiny models saved as ``runs/train/<name>/`` folders.

Their data is ``labelled_dir``: the ISBI slices when present, else synthetic ones, so the gate tests
always run. Conversions are session-scoped: each runs tf2onnx.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

VAL_SLICES = ["00", "01"]


def save_run(folder: Path, model: Any, data_dir: Path, spec: dict[str, Any]) -> Path:
    """Write ``folder/model.keras`` and a ``config.json`` like ``seg train`` does."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    config = {"model": spec, "normalization": "dtype-range", "threshold": 0.5, "train": {"label_offset": [0.5, -0.25]},
              "data": {"dir": str(data_dir), "train_slices": ["02", "03"], "val_slices": VAL_SLICES,
                       "summary": "isbi2012: 2 train + 2 val slices (512x512)"}}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def unet_run(tmp_path_factory: pytest.TempPathFactory, labelled_dir: Path) -> Path:
    """An untrained, seeded U-Net (width 4, depth 2, batch norm) as a run folder."""
    import keras

    from seg.train.models import ModelSpec, build_model

    keras.utils.set_random_seed(0)
    spec = ModelSpec(width=4, depth=2)
    return save_run(tmp_path_factory.mktemp("runs") / "unet", build_model(spec), labelled_dir, spec.to_dict())


@pytest.fixture(scope="session")
def exported(unet_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``to_onnx`` of ``unet_run`` (one conversion shared by the conversion/metadata/parity tests)."""
    from seg.export import to_onnx

    return to_onnx(unet_run, tmp_path_factory.mktemp("onnx") / "model.onnx", max_images=3, timing_runs=1)


def membrane_detector() -> Any:
    """A hand-set 2-layer CNN that really finds membranes (dark pixels): prob = sigmoid(40 (mean3x3 - 0.42)),
    ``(N, H, W, 1) float32`` in [0, 1] -> the same shape in (0, 1). On ISBI and synthetic slices it leaves
    realistic near-threshold pixels for the FP16/INT8 gates (``test_variants`` asserts F1 > 0.5).
    """
    import keras
    from keras import layers

    inputs = keras.Input((None, None, 1), name="image")
    x = layers.Conv2D(2, 3, padding="same", activation="relu", name="mean")(inputs)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="prob")(x)
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((3, 3, 1, 2), np.float32)
    kernel[..., 0, 0], kernel[..., 0, 1] = 1 / 9, -1 / 9  # relu(m) - relu(-m) = m
    model.get_layer("mean").set_weights([kernel, np.zeros(2, np.float32)])
    model.get_layer("prob").set_weights([np.array([[[[40.0], [-40.0]]]], np.float32), np.array([-16.8], np.float32)])
    return model


@pytest.fixture(scope="session")
def edge_run(tmp_path_factory: pytest.TempPathFactory, labelled_dir: Path) -> Path:
    """The membrane detector as a run folder whose ``data.dir`` is ``labelled_dir``."""
    return save_run(tmp_path_factory.mktemp("runs") / "edge", membrane_detector(), labelled_dir,
                    {"kind": "cnn", "width": 2, "depth": 0, "batch_norm": False})


@pytest.fixture(scope="session")
def edge_export(tmp_path_factory: pytest.TempPathFactory, edge_run: Path) -> Any:
    """``to_onnx`` of the membrane detector with both edge variants."""
    from seg.export import to_onnx

    out = tmp_path_factory.mktemp("edge") / "model.onnx"
    return to_onnx(edge_run, out, fp16=True, int8=True, max_images=3, timing_runs=1)
