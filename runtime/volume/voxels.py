"""Physical voxel size: read from a volume's own metadata, carried into the output's OME-Zarr metadata.

Read from:
- OME-Zarr images (NGFF v0.4, v0.5): level 0's ``scale`` and ``translation`` transformations, followed by the
  image's own (multiscale-level) ones, and the axes' units;
- ImageJ TIFF stacks (as Fiji saves them): the ``unit``, the pixel width and height (XResolution, YResolution)
  and the slice ``spacing``;
- HDF5 datasets: an ``element_size_um`` attribute (z, y, x in micrometers, as ilastik and Fiji write it), else
  a ``resolution`` attribute (z, y, x; its unit is not stated, so the output gets none).

Anything else is one unit per voxel, with no unit name. Metadata that is there but cannot be used (a
non-positive size, a transformation seg cannot follow) gets a ``SegWarning`` naming the input, and one unit per
voxel; it never stops a run. Units are written as NGFF names ("micrometer", "nanometer", ...); common spellings
("um", "µm", "micron", "nm") are translated, and a unit NGFF does not know is left out.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from seg.runtime.errors import SegWarning

NGFF_VERSION = "0.5"
SPACE_UNITS = frozenset({
    "angstrom", "attometer", "centimeter", "decimeter", "exameter", "femtometer", "foot", "gigameter",
    "hectometer", "inch", "kilometer", "megameter", "meter", "micrometer", "mile", "millimeter", "nanometer",
    "parsec", "petameter", "picometer", "terameter", "yard", "yoctometer", "yottameter", "zeptometer",
    "zettameter"})
"""The space units NGFF allows (UDUNITS-2 names)."""
UNIT_ALIASES = {"um": "micrometer", "µm": "micrometer", "μm": "micrometer", "micron": "micrometer",
                "microns": "micrometer", "\\u00b5m": "micrometer", "nm": "nanometer", "mm": "millimeter",
                "cm": "centimeter", "m": "meter", "a": "angstrom", "å": "angstrom", "pm": "picometer"}
Triple = tuple[float, float, float]
Units = tuple[str | None, str | None, str | None]


@dataclass(frozen=True)
class VoxelSize:
    """The physical size of one voxel along ``(z, y, x)``: ``scale`` (positive, finite), ``units`` (NGFF unit
    names, None where unknown) and ``translation`` (the physical position of voxel (0, 0, 0))."""

    scale: Triple = (1.0, 1.0, 1.0)
    units: Units = (None, None, None)
    translation: Triple = (0.0, 0.0, 0.0)

    @property
    def is_pixels(self) -> bool:
        """True when nothing is known: one unit per voxel, no unit names, no translation."""
        return self == PIXELS

    def describe(self) -> str:
        """E.g. ``"50 x 4 x 4 nanometer (z, y, x)"``; ``"1 x 1 x 1 pixel (z, y, x)"`` when nothing is known."""
        sizes = " x ".join(f"{value:g}" for value in self.scale)
        names = {unit for unit in self.units}
        if names == {None}:
            return f"{sizes} {'pixel' if self.is_pixels else '(no unit)'} (z, y, x)"
        if len(names) == 1:
            return f"{sizes} {self.units[0]} (z, y, x)"
        return f"{sizes} {' x '.join(unit or '?' for unit in self.units)} (z, y, x)"

    def transformations(self, level: int) -> list[dict[str, Any]]:
        """NGFF ``coordinateTransformations`` of output level ``level`` (level 0 ``[:, ::2**level, ::2**level]``):
        a sample of level k is level 0's voxel ``2**k`` times further along y and x, at the same origin."""
        step = float(1 << level)
        scale = [self.scale[0], self.scale[1] * step, self.scale[2] * step]
        found: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
        if any(self.translation):
            found.append({"type": "translation", "translation": list(self.translation)})
        return found

    def axes(self) -> list[dict[str, str]]:
        """NGFF ``axes`` z, y, x (type "space"), each with its unit where known."""
        return [{"name": name, "type": "space", **({"unit": unit} if unit else {})}
                for name, unit in zip("zyx", self.units, strict=True)]


PIXELS = VoxelSize()


def ngff_unit(value: object) -> str | None:
    """The NGFF space unit ``value`` names (``"um"`` -> ``"micrometer"``), or None for none or an unknown one."""
    if not isinstance(value, str):
        return None
    name = value.strip()
    name = UNIT_ALIASES.get(name.lower(), UNIT_ALIASES.get(name, name.lower()))
    return name if name in SPACE_UNITS else None


def ome_voxel_size(spec: str, image: Mapping[str, Any], lead: int) -> VoxelSize:
    """The voxel size of an OME-Zarr multiscale ``image`` (its first dataset) along its last three axes
    (after ``lead`` leading t/c axes); ``PIXELS`` with a warning when its transformations cannot be used."""
    try:
        axes = list(image.get("axes") or [])
        count = len(axes)
        scale, shift = _composed(image["datasets"][0].get("coordinateTransformations"), count)
        scale, shift = _composed(image.get("coordinateTransformations"), count, scale, shift)
        units = [ngff_unit(axis.get("unit")) if isinstance(axis, Mapping) else None for axis in axes]
        return _checked_size(scale[lead:], units[lead:], shift[lead:])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        return _unusable(spec, "OME-Zarr coordinate transformations", exc)


def imagej_voxel_size(spec: str, tif: Any) -> VoxelSize:
    """The voxel size an ImageJ TIFF stack records (an open ``tifffile.TiffFile``); ``PIXELS`` for other TIFFs."""
    meta = tif.imagej_metadata
    if not meta:
        return PIXELS
    try:
        tags = tif.pages[0].tags
        width, height = (_pixel_size(tags.get(name)) for name in ("XResolution", "YResolution"))
        unit = ngff_unit(meta.get("unit"))
        spacing = float(meta.get("spacing", 1.0))
        return _checked_size([spacing, height, width], [unit] * 3, [0.0, 0.0, 0.0])
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        return _unusable(spec, "ImageJ voxel size", exc)


def hdf5_voxel_size(spec: str, attrs: Mapping[str, Any]) -> VoxelSize:
    """The voxel size in an HDF5 dataset's ``element_size_um`` or ``resolution`` attribute (z, y, x)."""
    for name, unit in (("element_size_um", "micrometer"), ("resolution", None)):
        if name in attrs:
            try:
                values = [float(value) for value in attrs[name]]
                return _checked_size(values, [unit] * 3, [0.0, 0.0, 0.0])
            except (TypeError, ValueError) as exc:
                return _unusable(spec, f"{name} attribute", exc)
    return PIXELS


def _composed(items: object, count: int, scale: Sequence[float] | None = None,
              shift: Sequence[float] | None = None) -> tuple[list[float], list[float]]:
    """``(scale, translation)`` after applying NGFF ``items`` to ``scale``/``shift`` (one value per axis)."""
    scale, shift = list(scale or [1.0] * count), list(shift or [0.0] * count)
    for item in items or []:  # type: ignore[attr-defined]
        kind = item.get("type")
        if kind == "identity":
            continue
        if kind not in ("scale", "translation") or kind not in item:
            raise ValueError(f"a {kind!r} transformation{' stored in a file' if 'path' in item else ''}")
        values = [float(value) for value in item[kind]]
        if len(values) != count:
            raise ValueError(f"{len(values)} {kind} values for {count} axes")
        if kind == "scale":
            scale = [a * b for a, b in zip(scale, values, strict=True)]
            shift = [a * b for a, b in zip(shift, values, strict=True)]
        else:
            shift = [a + b for a, b in zip(shift, values, strict=True)]
    return scale, shift


def _pixel_size(tag: Any) -> float:
    """The pixel size a TIFF resolution tag (pixels per unit, a fraction) gives; 1.0 when absent."""
    if tag is None:
        return 1.0
    numerator, denominator = tag.value
    return denominator / numerator


def _checked_size(scale: Sequence[float], units: Sequence[str | None], shift: Sequence[float]) -> VoxelSize:
    if len(scale) != 3:
        raise ValueError(f"{len(scale)} spatial axes")
    if not all(math.isfinite(value) and value > 0 for value in scale):
        raise ValueError(f"voxel size {list(scale)} is not positive")
    if not all(math.isfinite(value) for value in shift):
        raise ValueError(f"translation {list(shift)} is not finite")
    return VoxelSize((scale[0], scale[1], scale[2]), (units[0], units[1], units[2]), (shift[0], shift[1], shift[2]))


def _unusable(spec: str, what: str, problem: Exception) -> VoxelSize:
    warnings.warn(f"{spec}: unusable {what} ({problem}); the output's voxel size is written as 1 x 1 x 1 "
                  "pixel: fix the input's metadata to carry it", SegWarning, stacklevel=3)
    return PIXELS
