"""Fixtures shared by the runtime's folder-run tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from seg.runtime.metadata import ModelInfo
from tests.runtime.test_providers import tiny_model

FOLDER_META = ModelInfo(tile_size=64, halo=16, size_multiple=16).to_props()
"""Metadata of the tiny folder-run model: 64-pixel tiles, a 16-pixel halo."""


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """``model.onnx``: the tiny conv model of ``test_providers`` with ``FOLDER_META``."""
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny_model(metadata=FOLDER_META))
    return path
