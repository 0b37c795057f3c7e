"""A TIFF's calibration: odd tags are left out (never a failure), ImageJ values are made writable, and only
pages ImageJ can read are written as an ImageJ stack."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tifffile

from seg.runtime.calibration import tiff_calibration, write_arguments
from seg.runtime.errors import InputError
from seg.runtime.folders import segment_paths
from seg.runtime.io import read_calibrated


def _tif(tags: dict[str, Any], imagej: dict[str, Any] | None = None) -> SimpleNamespace:
    """A stand-in for an open ``tifffile.TiffFile`` whose first page has ``tags`` (name -> value)."""
    page = SimpleNamespace(tags={name: SimpleNamespace(value=value) for name, value in tags.items()})
    return SimpleNamespace(pages=[page], imagej_metadata=imagej)


@pytest.mark.parametrize("tags", [
    {"XResolution": 72, "YResolution": 72},  # LONG, not RATIONAL
    {"XResolution": (72, 1, 3), "YResolution": (72, 1)},
    {"XResolution": (72, 0), "YResolution": (72, 1)},
    {"XResolution": (72, 1), "YResolution": (72, 1), "ResolutionUnit": (2, 3)},
    {"XResolution": (72, 1), "YResolution": (72, 1), "ResolutionUnit": 7},
    {"XResolution": (-72, 1), "YResolution": (72, 1)},
    {"YResolution": (72, 1)},
    {"XResolution": (1, 1), "YResolution": (1, 1), "ResolutionUnit": 1},
])
def test_odd_or_default_tags_give_no_calibration(tags: dict[str, Any]) -> None:
    assert tiff_calibration(_tif(tags)) == {}


def test_a_missing_resolution_unit_is_the_tiff_default_inch() -> None:
    assert tiff_calibration(_tif({"XResolution": (300, 1), "YResolution": (300, 1)})) == {
        "resolution": (300.0, 300.0), "resolutionunit": 2}


@pytest.mark.parametrize(("metadata", "expected"), [
    ({"unit": "\u00b5m", "spacing": 0.05}, {"unit": "um", "spacing": 0.05}),
    ({"unit": "\u00c5", "yunit": "nm", "xorigin": 3}, {"unit": "\\u00C5", "yunit": "nm", "xorigin": 3}),
    ({"unit": "nm", "spacing": 40.0, "zorigin": 2.0, "channels": 2, "slices": 3}, {"unit": "nm"}),
    ({"unit": "nm", "spacing": float("nan"), "frames": 1}, {"unit": "nm"}),
])
def test_imagej_values_are_made_writable(metadata: dict[str, Any], expected: dict[str, Any]) -> None:
    calibration = tiff_calibration(_tif({"XResolution": (4, 1), "YResolution": (4, 1), "ResolutionUnit": 1},
                                        metadata))
    assert calibration["imagej"] == expected


def test_only_pages_imagej_reads_are_written_as_imagej() -> None:
    calibration = {"resolution": (4.0, 4.0), "resolutionunit": 1, "imagej": {"unit": "nm"}}
    gray16 = [np.zeros((8, 8), np.uint16)] * 2
    rgb16 = [np.zeros((8, 8, 3), np.uint16)] * 2
    assert write_arguments(calibration, gray16, True)[1] is True
    assert write_arguments(calibration, gray16, False)[1] is False  # pages of different sizes
    assert write_arguments(calibration, rgb16, True) == ({"resolution": (4.0, 4.0), "resolutionunit": 1}, False)
    assert write_arguments({}, gray16, True) == ({}, False)


def test_a_utf8_micrometer_stack_is_segmented_and_its_outputs_say_um(model: Path, tmp_path: Path) -> None:
    """A description holding a raw "µm" (not ImageJ's escape) reads back as "µm", which tifffile cannot write
    into an ImageJ description: the outputs say "um", as ImageJ does."""
    description = "ImageJ=1.54f\nimages=2\nslices=2\nunit=\u00b5m\nspacing=0.05\n".encode()
    pixels = np.random.default_rng(0).integers(0, 255, (2, 32, 32), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "em.tif", pixels, description=description, metadata=None, resolution=(250, 250))
    summary = segment_paths(tmp_path / "em.tif", model, tmp_path / "out", provider="cpu", save_prob=True)
    assert summary.failures == []
    for output in ("em.tif", "prob/em.tif"):
        _, calibration = read_calibrated(tmp_path / "out" / output)
        assert calibration["imagej"] == {"unit": "um", "spacing": 0.05}, output
        assert calibration["resolution"] == (250.0, 250.0), output


def test_a_value_tifffile_refuses_fails_its_file_only(monkeypatch: pytest.MonkeyPatch, model: Path,
                                                      tmp_path: Path) -> None:
    from seg.runtime import pipeline

    def refuse(path: object, pages: object, calibration: object = None) -> None:
        raise ValueError("RESUNIT: invalid argument")

    tifffile.imwrite(tmp_path / "em.tif", np.zeros((2, 32, 32), np.uint8))
    monkeypatch.setattr(pipeline, "write_pages", refuse)
    tifffile.imwrite(tmp_path / "em2.tif", np.zeros((2, 32, 32), np.uint8))
    summary = segment_paths([tmp_path / "em.tif", tmp_path / "em2.tif"], model, tmp_path / "out", provider="cpu")
    assert summary.failures == [f"{tmp_path / name}: could not write outputs (RESUNIT: invalid argument)"
                                for name in ("em.tif", "em2.tif")]
    with pytest.raises(InputError, match=r"em\.tif: could not write outputs \(RESUNIT: invalid argument\)$"):
        segment_paths(tmp_path / "em.tif", model, tmp_path / "one", provider="cpu")  # one file: its error
