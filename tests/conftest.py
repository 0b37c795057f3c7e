"""Shared fixtures: the real ISBI 2012 slices (skipped with a reason when absent) and synthetic images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ISBI_DIR = Path(os.environ.get("SEG_ISBI_DIR", REPO.parent / "shared" / "data" / "isbi2012"))


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    """``../shared/data/isbi2012`` (or ``$SEG_ISBI_DIR``) in the seed layout; skips when absent."""
    if not (ISBI_DIR / "train" / "image").is_dir():
        pytest.skip(f"ISBI 2012 data not found at {ISBI_DIR} (set SEG_ISBI_DIR to its folder)")
    return ISBI_DIR


@pytest.fixture(scope="session")
def labelled_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Labelled slices in the seed layout (``DIR/train/{image,label}``, ``DIR/test/...``), never skipped:
    the ISBI folder when present, else 8 synthetic 512x512 slices (6 train, 2 test; seed 0) from
    ``seg.toolkit.data.synth``. For tests that need real-looking labelled data, not ISBI itself."""
    if (ISBI_DIR / "train" / "image").is_dir():
        return ISBI_DIR
    from seg.toolkit.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("synth") / "data", n=8, size=512, seed=0).root


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, isbi_dir: Path) -> Path:
    """A real ``seg.train.fit`` run on the ISBI slices: 8-wide depth-4 U-Net, ~30 steps (tens of seconds).

    Shared by the end-to-end tests (export parity, evaluate, infer, seams); use only from slow tests.
    """
    from seg import train
    from seg.train.models import ModelSpec

    config = train.TrainConfig(data=str(isbi_dir), model=ModelSpec("unet", 8, 4), epochs=3, steps_per_epoch=10,
                               batch=4, crop=128, lr=3e-3, runs_root=str(tmp_path_factory.mktemp("runs")),
                               name="e2e")
    return train.fit(config, progress=False).run_dir


@pytest.fixture(scope="session")
def exported_model(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``trained_run`` exported through the parity gate to ``model.onnx``."""
    from seg.export import to_onnx

    out = tmp_path_factory.mktemp("export") / "model.onnx"
    to_onnx(trained_run, out, max_images=3, timing_runs=1)
    return out
