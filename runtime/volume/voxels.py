"""Physical voxel size: read from a volume's own metadata, carried into the output's OME-Zarr metadata.

Read from:
- OME-Zarr images (NGFF v0.4, v0.5): level 0's ``scale`` and ``translation`` transformations, followed by the
  image's own (multiscale-level) ones, and the axes' units; for one level array (``image.zarr/1``), that level's;
- ImageJ TIFF stacks (as Fiji saves them): the ``unit``, the pixel width and height (XResolution, YResolution)
  and the slice ``spacing``;
- HDF5 datasets: an ``element_size_um`` attribute (z, y, x in micrometers, as Fiji's HDF5 plugin writes it),
  else a ``resolution`` attribute (z, y, x; its unit is not stated, so the output gets none) and its ``offset``.

Anything else is one unit per voxel, with no unit name. Metadata that is there but cannot be used (a
non-positive size, a transformation seg cannot follow) gets a ``SegWarning`` naming the input, and one unit per
voxel; it never stops a run. Units are written as NGFF names ("micrometer", "nanometer", ...); common spellings
("um", "µm", "micron", "nm") are translated, and a unit NGFF does not know is left out.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seg.runtime.calibration import tiff_calibration
from seg.runtime.errors import SegWarning

SPACE_UNITS = frozenset({
    "angstrom", "attometer", "centimeter", "decimeter", "exameter", "femtometer", "foot", "gigameter",
    "hectometer", "inch", "kilometer", "megameter", "meter", "micrometer", "mile", "millimeter", "nanometer",
    "parsec", "petameter", "picometer", "terameter", "yard", "yoctometer", "yottameter", "zeptometer",
    "zettameter"})
"""The space units NGFF allows (UDUNITS-2 names)."""
UNIT_ALIASES = {"um": "micrometer", "\u00b5m": "micrometer", "\u03bcm": "micrometer", "nm": "nanometer",
                "mm": "millimeter", "cm": "centimeter", "m": "meter", "pm": "picometer", "\u00c5": "angstrom",
                "\u212b": "angstrom", "micron": "micrometer", "microns": "micrometer", "Micron": "micrometer"}
"""Common spellings of units, after ``\\uXXXX`` escapes are decoded (ImageJ writes "\\u00B5m"). Case matters
("Mm" is not "mm"); full NGFF names are matched in any case ("Nanometer")."""
_UNICODE_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
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
        names = set(self.units)
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
    """The NGFF space unit ``value`` names (``"um"``, ``"\\u00B5m"`` -> ``"micrometer"``), or None for none or an
    unknown one."""
    if not isinstance(value, str):
        return None
    name = _UNICODE_ESCAPE.sub(lambda match: chr(int(match[1], 16)), value.strip())
    if name in UNIT_ALIASES:
        return UNIT_ALIASES[name]
    return name.lower() if name.lower() in SPACE_UNITS else None


def ngff_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The NGFF attributes of a Zarr group: under ``"ome"`` for v0.5 (Zarr v3), at the top level before."""
    attrs = dict(attrs)
    return dict(attrs["ome"]) if isinstance(attrs.get("ome"), Mapping) else attrs


def ome_voxel_size(spec: str, image: Mapping[str, Any], dataset: int = 0) -> VoxelSize:
    """The voxel size of dataset ``dataset`` (0: level 0) of an OME-Zarr multiscale ``image`` along its last
    three axes (z, y, x; leading t/c axes are dropped); ``PIXELS`` with a warning when its transformations
    cannot be used. Images without axes (NGFF before v0.3) are z, y, x."""
    try:
        axes = list(image.get("axes") or "zyx")
        scale, shift = _composed(image["datasets"][dataset].get("coordinateTransformations"), len(axes))
        scale, shift = _composed(image.get("coordinateTransformations"), len(axes), scale, shift)
        units = [ngff_unit(axis.get("unit")) if isinstance(axis, Mapping) else None for axis in axes]
        return _checked_size(scale[-3:], units[-3:], shift[-3:])
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        return _unusable(spec, "OME-Zarr coordinate transformations", exc)


def ome_level_voxel_size(spec: str, array: Path) -> VoxelSize:
    """The voxel size of a Zarr ``array`` that is a level of an OME-Zarr image (``image.zarr/0``): from the
    multiscales of the group that holds it; ``PIXELS`` for an array outside any OME-Zarr image."""
    import zarr

    try:
        group = zarr.open_group(str(array.parent), mode="r")
    except (OSError, ValueError, KeyError, TypeError):  # no group there: a plain array
        return PIXELS
    images = ngff_attributes(group.attrs).get("multiscales")
    for image in images if isinstance(images, list) else []:
        datasets = image.get("datasets") if isinstance(image, Mapping) else None
        for index, dataset in enumerate(datasets if isinstance(datasets, list) else []):
            if isinstance(dataset, Mapping) and str(dataset.get("path")) == array.name:
                return ome_voxel_size(spec, image, index)
    return PIXELS


def imagej_voxel_size(spec: str, tif: Any) -> VoxelSize:
    """The voxel size an ImageJ TIFF stack records (an open ``tifffile.TiffFile``), from its calibration as
    ``seg.runtime.calibration`` reads it: ``unit`` (``yunit`` and ``zunit`` where they differ), pixel width and
    height from XResolution/YResolution, ``spacing`` between slices and the ``xorigin``/``yorigin``/``zorigin``
    (in pixels). ``PIXELS`` for a TIFF without an ImageJ calibration (no unit, or "pixel")."""
    calibration = tiff_calibration(tif)
    meta = calibration.get("imagej", {})
    unit = ngff_unit(meta.get("unit"))
    if unit is None:
        return PIXELS
    try:
        width, height = (1.0 / value for value in calibration["resolution"])
        size = [float(meta.get("spacing", 1.0)), height, width]
        units = [ngff_unit(meta.get(f"{axis}unit", unit)) or unit for axis in "zy"] + [unit]
        origin = [-float(meta.get(f"{axis}origin", 0.0)) * step for axis, step in zip("zyx", size, strict=True)]
        return _checked_size(size, units, [value + 0.0 for value in origin])  # + 0.0: no -0.0
    except (TypeError, ValueError) as exc:
        return _unusable(spec, "ImageJ calibration", exc)


def hdf5_voxel_size(spec: str, attrs: Mapping[str, Any], ndim: int) -> VoxelSize:
    """The voxel size in the attributes of an HDF5 dataset of ``ndim`` axes: ``element_size_um`` (z, y, x in
    micrometers, as Fiji's HDF5 plugin writes it), else ``resolution`` (z, y, x, no unit stated) with an
    ``offset`` (the same unit) as the origin. One value per axis or one for all; with one per axis of a
    dataset with leading axes, the last three count."""
    for name, unit in (("element_size_um", "micrometer"), ("resolution", None)):
        if name in attrs:
            try:
                size = _hdf5_triple(attrs[name], ndim)
                shift = _hdf5_triple(attrs["offset"], ndim) if unit is None and "offset" in attrs else [0.0] * 3
                return _checked_size(size, [unit] * 3, shift)
            except (OSError, TypeError, ValueError) as exc:  # OSError: an attribute h5py cannot decode
                return _unusable(spec, f"{name} attribute", exc)
    return PIXELS


def _hdf5_triple(value: object, ndim: int) -> list[float]:
    """Three numbers (z, y, x) from an HDF5 attribute; float32 values as they were written (0.05, not 0.0500000007)."""
    values = np.atleast_1d(np.asarray(value))
    if values.ndim != 1 or values.dtype.kind not in "iuf":
        raise ValueError(f"{value!r} is not a list of numbers")
    if len(values) == 1:
        values = np.repeat(values, 3)
    elif len(values) == ndim > 3:
        values = values[-3:]
    if values.dtype == np.float32:
        return [float(np.format_float_positional(item, unique=True)) for item in values]
    return [float(item) for item in values]


def _composed(items: object, count: int, scale: Sequence[float] | None = None,
              shift: Sequence[float] | None = None) -> tuple[list[float], list[float]]:
    """``(scale, translation)`` after applying the NGFF transformations ``items`` to ``scale``/``shift`` (one
    value per axis; identity when None); ``ValueError`` for a transformation seg cannot follow."""
    scale, shift = list(scale or [1.0] * count), list(shift or [0.0] * count)
    if not isinstance(items, list | tuple | type(None)):
        raise ValueError(f"coordinateTransformations {items!r} is not a list")
    for item in items or []:
        kind = item.get("type") if isinstance(item, Mapping) else None
        if kind == "identity":
            continue
        if kind not in ("scale", "translation") or kind not in item:
            stored = " stored in a file" if isinstance(item, Mapping) and "path" in item else ""
            raise ValueError(f"a {kind!r} transformation{stored}")
        values = [float(value) for value in item[kind]]
        if len(values) != count:
            raise ValueError(f"{len(values)} {kind} values for {count} axes")
        if kind == "scale":
            scale = [a * b for a, b in zip(scale, values, strict=True)]
            shift = [a * b for a, b in zip(shift, values, strict=True)]
        else:
            shift = [a + b for a, b in zip(shift, values, strict=True)]
    return scale, shift


def _checked_size(scale: Sequence[float], units: Sequence[str | None], shift: Sequence[float]) -> VoxelSize:
    """A ``VoxelSize`` from three sizes, units and shifts (z, y, x); ``ValueError`` for non-positive or
    non-finite sizes, non-finite shifts, or not three axes."""
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
