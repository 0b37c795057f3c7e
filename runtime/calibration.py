"""A TIFF's physical calibration, carried from an input to the TIFF outputs made from it (``seg.runtime.io``).

The calibration is a dict of tifffile write arguments:
- ``resolution``: ``(x, y)`` pixels per unit, both positive and finite;
- ``resolutionunit``: the TIFF unit (1 none, 2 inch, 3 centimeter; 4 and 5 millimeter and micrometer, as
  tifffile writes them);
- ``imagej`` (only for files ImageJ wrote): its unit, slice spacing and origins, each an ASCII string or a
  number, the spacing and z origin only when the stack's one axis is z (not channels or frames).

``{}`` when a file records nothing usable: tags missing or malformed, or the writer's default of one pixel per
unit with no ImageJ calibration. Reading never fails on odd tags; they are left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

IMAGEJ_CALIBRATION = ("unit", "yunit", "zunit", "spacing", "xorigin", "yorigin", "zorigin")
"""The ImageJ metadata keys that say where pixels are in space."""
IMAGEJ_Z_ONLY = ("spacing", "zorigin")
"""Keys that describe the z axis: wrong for a stack whose pages are also channels or frames."""
IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)
"""Gray pixel types ImageJ reads (RGB: uint8 only)."""
RESOLUTION_UNITS = range(1, 6)
MICRO_UNITS = ("\u00b5m", "\u03bcm")


def tiff_calibration(tif: Any) -> dict[str, Any]:
    """The calibration (module docstring) of an open ``tifffile.TiffFile``, read from its first page."""
    try:
        tags = tif.pages[0].tags
        resolution = tuple(_fraction(tags[name].value) for name in ("XResolution", "YResolution"))
        unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF's default: inch
        imagej = _imagej_calibration(tif.imagej_metadata or {})
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
        return {}
    if unit not in RESOLUTION_UNITS or not all(math.isfinite(value) and value > 0 for value in resolution):
        return {}
    if not imagej and resolution == (1.0, 1.0):
        return {}  # tifffile's and many writers' default: one pixel per unit, nothing measured
    found: dict[str, Any] = {"resolution": resolution, "resolutionunit": unit}
    return {**found, "imagej": imagej} if imagej else found


def write_arguments(calibration: Mapping[str, Any], pages: Sequence[np.ndarray],
                    one_series: bool) -> tuple[dict[str, Any], bool]:
    """``(tifffile write arguments, write as ImageJ)`` for ``calibration`` and the ``(H, W)`` or ``(H, W, 3)``
    pages to write: the resolution tags always; ImageJ metadata only for one series of a type ImageJ reads,
    its axes ZYX (YX for one page; S last for RGB)."""
    if not calibration:
        return {}, False
    tags = {"resolution": calibration["resolution"], "resolutionunit": calibration["resolutionunit"]}
    rgb = pages[0].ndim == 3
    readable = pages[0].dtype == np.uint8 if rgb else pages[0].dtype in IMAGEJ_DTYPES
    if not (calibration.get("imagej") and one_series and readable):
        return tags, False
    axes = ("ZYX" if len(pages) > 1 else "YX") + ("S" if rgb else "")
    return {**tags, "metadata": {**calibration["imagej"], "axes": axes}}, True


def _imagej_calibration(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The ``IMAGEJ_CALIBRATION`` entries of ImageJ ``metadata`` that can be written back: numbers, and strings
    made ASCII (a micrometer as ImageJ spells it, "um"; other characters as ImageJ's \\uXXXX escapes)."""
    stacked = any(int(metadata.get(name, 1) or 1) > 1 for name in ("channels", "frames"))
    found: dict[str, Any] = {}
    for key in IMAGEJ_CALIBRATION:
        value = metadata.get(key)
        if value is None or (stacked and key in IMAGEJ_Z_ONLY):
            continue
        if isinstance(value, str):
            found[key] = "um" if value in MICRO_UNITS else "".join(
                char if ord(char) < 128 else f"\\u{ord(char):04X}" for char in value)
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            found[key] = value
    return found


def _fraction(value: Any) -> float:
    """A TIFF RATIONAL ``(numerator, denominator)`` as a float; ``ValueError`` for anything else."""
    if not (isinstance(value, tuple) and len(value) == 2):
        raise ValueError(f"not a rational: {value!r}")
    numerator, denominator = value
    return numerator / denominator
