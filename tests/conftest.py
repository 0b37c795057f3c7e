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


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
