"""Reading ``(Z, Y, X)`` volumes lazily, one region of one slice at a time.

``open_volume(spec)`` checks a volume once (exists, 3-D, single channel, supported pixel type) and returns
a ``VolumeSource``: a small picklable description (spec, path, shape, dtype, voxel size) that opens its store lazily,
once per process, so Dask can ship it to every worker. Supported, on a local disk:

- Zarr v2 and v3 arrays: ``vol.zarr``, or an array inside a group: ``group.zarr/sub/path``;
- OME-Zarr images (NGFF v0.4 on Zarr v2, v0.5 on Zarr v3): the group; level 0 (the first dataset) is read.
  Axes must be ``z, y, x``, optionally after leading ``t``/``c`` axes of size 1 (squeezed away);
- multi-page TIFF stacks (``.tif``/``.tiff``), read through tifffile's Zarr store, page by page;
- HDF5 datasets: ``file.h5:/path/to/dataset`` (``.h5``, ``.hdf5``, ``.hdf``, ``.he5``).

Pixel types: uint8, uint16, int8, int16 and float (float16/32/64). Every refusal is an ``InputError``
with one line naming the input, the problem and the fix.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from seg.runtime.errors import InputError
from seg.runtime.volume.voxels import (
    PIXELS,
    VoxelSize,
    hdf5_voxel_size,
    imagej_voxel_size,
    ngff_attributes,
    ome_level_voxel_size,
    ome_voxel_size,
)

ZARR_SUFFIX = ".zarr"
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_METADATA = ("zarr.json", ".zarray", ".zgroup")
_HDF5_SPEC = re.compile(r"^(?P<file>.+\.(?:h5|hdf5|hdf|he5)):(?P<dataset>.+)$", re.IGNORECASE)
_DTYPE_FIX = "convert to uint8/uint16 or float32 in [0, 1]"


class VolumeSource:
    """A ``(Z, Y, X)`` volume on disk, opened lazily: pickling sends only the description, never a handle.

    ``spec`` is what the user gave; ``shape`` is ``(Z, Y, X)`` in pixels; ``dtype`` is the stored pixel type
    (uint8, uint16, int8, int16 or float). ``kind`` is ``"zarr"``, ``"tiff"`` or ``"hdf5"``; ``path`` is
    the array folder, TIFF file or HDF5 file (absolute, so workers in other folders find it); ``inner`` the
    HDF5 dataset path; ``lead`` how many leading size-1 axes (OME-Zarr ``t``/``c``) are indexed away; ``options``
    extra tifffile flags; ``voxel`` the physical voxel size its metadata records (``seg.runtime.volume.voxels``).
    Reads may come from several threads at once; each process opens its own handle.
    """

    def __init__(self, spec: str, kind: str, path: str, shape: tuple[int, int, int], dtype: np.dtype,
                 *, inner: str = "", lead: int = 0, options: dict[str, Any] | None = None,
                 voxel: VoxelSize = PIXELS) -> None:
        self.spec, self.kind, self.path, self.inner = spec, kind, os.path.abspath(path), inner
        self.voxel = voxel
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.lead = lead
        self.options = dict(options or {})
        self._handle: Any = None  # the opened array, per process; never pickled
        self._closer: Any = None
        self._pid = 0
        self._lock = threading.RLock()  # guards the lazy open, and TIFF/HDF5 reads (their file handles)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_handle", "_closer", "_lock"):
            state.pop(name)
        state["_pid"] = 0
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._handle = self._closer = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"VolumeSource({self.spec!r}, shape={self.shape}, dtype={self.dtype})"

    def read(self, z: int, rows: slice, cols: slice) -> np.ndarray:
        """Pixels ``[rows, cols]`` of slice ``z`` as a ``(len(rows), len(cols))`` array of ``self.dtype``.

        ``rows``/``cols`` are step-1 slices (ends clipped to the slice like numpy); only the chunks or
        pages they touch are read. ``IndexError`` for ``z`` outside ``0..Z-1``; ``InputError`` naming the
        spec when the store cannot be read (a missing or corrupt chunk file, a missing codec).
        """
        depth, height, width = self.shape
        if not 0 <= z < depth:
            raise IndexError(f"{self.spec}: slice z={z} outside 0..{depth - 1}")
        rows, cols = _step_one(rows, height), _step_one(cols, width)
        index = (0,) * self.lead + (z, rows, cols)
        try:
            with self._lock if self.kind != "zarr" else contextlib.nullcontext():
                region = np.asarray(self._opened()[index])
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise InputError(f"{self.spec}: cannot read slice z={z} rows {rows.start}:{rows.stop} cols "
                             f"{cols.start}:{cols.stop} ({type(exc).__name__}: {exc}); check the file") from None
        return region.reshape(rows.stop - rows.start, cols.stop - cols.start)

    def close(self) -> None:
        """Close this process's open handle (if any); the next ``read`` reopens it."""
        closer, self._handle, self._closer = self._closer, None, None
        if closer is not None:
            with contextlib.suppress(Exception):
                closer()

    def _opened(self) -> Any:
        with self._lock:
            if self._handle is None or self._pid != os.getpid():  # a forked child must not share a file handle
                self._handle, self._closer = _open_array(self.kind, self.path, self.inner, self.options)
                self._pid = os.getpid()
            return self._handle


def _step_one(part: slice, size: int) -> slice:
    start, stop, step = part.indices(size)
    if step != 1:
        raise ValueError(f"read() takes step-1 slices, got {part}")
    return slice(start, max(start, stop))


def _open_array(kind: str, path: str, inner: str, options: dict[str, Any]) -> tuple[Any, Any]:
    """Open the array behind a source: ``(array-like supporting numpy indexing, close function or None)``."""
    if kind == "zarr":
        import zarr

        return zarr.open_array(store=path, mode="r"), None
    if kind == "tiff":
        import tifffile
        import zarr

        store = tifffile.imread(path, aszarr=True, series=0, level=0, **options)
        return zarr.open_array(store=store, mode="r"), store.close
    if kind == "hdf5":
        import h5py

        with contextlib.suppress(ImportError):
            import hdf5plugin  # noqa: F401  (registers Blosc, Zstd, LZ4... filters when installed)
        handle = h5py.File(path, "r")
        return handle[inner], handle.close
    raise ValueError(f"unknown volume kind {kind!r}")


def is_volume_spec(spec: str | os.PathLike[str]) -> bool:
    """True when ``spec`` names a volume store rather than image files: a ``*.zarr`` path (array, group or
    a path inside one), a folder holding Zarr metadata, or an HDF5 file (``file.h5`` or ``file.h5:/dataset``).

    Only the name (and, for a folder, its Zarr metadata files) is looked at. Plain images, folders of PNGs
    and TIFF stacks give False (``seg infer`` reads those), though ``open_volume`` also opens TIFF stacks.
    """
    text = os.fspath(spec)
    if _HDF5_SPEC.match(text) or Path(text).suffix.lower() in HDF5_SUFFIXES:
        return True
    return zarr_root(Path(text)) is not None


def zarr_root(path: Path) -> Path | None:
    """The outermost ``*.zarr`` component of ``path`` (or ``path`` itself when it holds Zarr metadata)."""
    for parent in (*reversed(path.parents), path):
        if parent.name.lower().endswith(ZARR_SUFFIX):
            return parent
    if path.is_dir() and any((path / name).is_file() for name in ZARR_METADATA):
        return path
    return None


def open_volume(spec: str | os.PathLike[str]) -> VolumeSource:
    """Check and describe the volume ``spec`` names (see the module docstring for what is supported).

    Returns a ``VolumeSource`` of shape ``(Z, Y, X)``. ``InputError`` with one line naming ``spec``: missing
    store, file or dataset; not 3-D (a 2-D image, a channel axis of size > 1); a pixel type other than
    8/16-bit integers or float; a Zarr group that is neither an array nor an OME-Zarr image.
    """
    text = os.fspath(spec)
    match = _HDF5_SPEC.match(text)
    if match or Path(text).suffix.lower() in HDF5_SUFFIXES:
        file, dataset = (match["file"], match["dataset"]) if match else (text, "")
        return _open_hdf5(text, file, dataset)
    path = Path(text)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _open_tiff(text, path)
    if zarr_root(path) is not None:
        return _open_zarr(text, path)
    if path.is_dir():
        raise InputError(f"{text}: a folder without Zarr metadata, not a volume store; give a .zarr array or "
                         "OME-Zarr image (images in a folder are segmented into a folder of masks: give an "
                         "--output that is not a .zarr)")
    if not path.exists():
        raise InputError(f"{text}: no such file or folder; check the path")
    raise InputError(f"{text}: not a volume store; give a .zarr array or OME-Zarr image, a multi-page "
                     ".tif stack or an HDF5 dataset as file.h5:/dataset")


def _checked(spec: str, kind: str, path: str, shape: tuple[int, ...], dtype: np.dtype, *, inner: str = "",
             lead: int = 0, options: dict[str, Any] | None = None, voxel: VoxelSize = PIXELS) -> VolumeSource:
    """A ``VolumeSource`` once the shape (after ``lead`` leading axes) and pixel type are acceptable."""
    shape = tuple(int(n) for n in shape)
    lead = lead or _plain_lead(shape)
    core = shape[lead:]
    if len(core) != 3:
        raise _rank_error(spec, core)
    if min(core) == 0:
        raise InputError(f"{spec}: an empty volume of shape {core}; give a volume with pixels")
    _check_dtype(spec, np.dtype(dtype))
    return VolumeSource(spec, kind, path, (core[0], core[1], core[2]), np.dtype(dtype), inner=inner,
                        lead=lead, options=options, voxel=voxel)


def _plain_lead(shape: tuple[int, ...]) -> int:
    """How many leading size-1 axes to drop to leave three (0 when there are none to drop)."""
    lead = 0
    while len(shape) - lead > 3 and shape[lead] == 1:
        lead += 1
    return lead


def _rank_error(spec: str, shape: tuple[int, ...]) -> InputError:
    if len(shape) == 2:
        return InputError(f"{spec}: a 2-D image of shape {shape}, not a (Z, Y, X) volume: "
                          "use seg infer on image files")
    if len(shape) > 3:
        channels = shape[-1] if shape[-1] <= 4 else shape[0]
        if channels == 1:  # a trailing (Z, Y, X, 1): one channel already, but stored as a fourth axis
            return InputError(f"{spec}: shape {shape} has a trailing channel axis of size 1; store the volume "
                              "as (Z, Y, X)")
        return InputError(f"{spec}: shape {shape} has a channel axis of size {channels}: "
                          "give a single-channel volume")
    return InputError(f"{spec}: a {len(shape)}-D array of shape {shape}, not a (Z, Y, X) volume; "
                      "give a 3-D volume")


def _check_dtype(spec: str, dtype: np.dtype) -> None:
    small_integer = dtype.kind in "ui" and dtype.itemsize <= 2
    if not (small_integer or dtype.kind == "f"):
        raise InputError(f"{spec}: {dtype} pixels are not supported: {_DTYPE_FIX}")


def _open_zarr(spec: str, path: Path) -> VolumeSource:
    """A Zarr array, an array inside a group, or an OME-Zarr image group (level 0)."""
    import zarr

    if not path.exists():
        raise _missing_zarr(spec, path)
    try:
        node = zarr.open(store=str(path), mode="r")
    except FileNotFoundError:
        raise InputError(f"{spec}: not a Zarr array or group (no zarr.json, .zarray or .zgroup); "
                         "give a .zarr array or OME-Zarr image") from None
    except (ValueError, KeyError) as exc:
        raise InputError(f"{spec}: unreadable Zarr metadata ({type(exc).__name__}: {exc}); "
                         "give a .zarr array or OME-Zarr image") from None
    if isinstance(node, zarr.Array):
        return _checked(spec, "zarr", str(path), node.shape, node.dtype, voxel=ome_level_voxel_size(spec, path))
    multiscales = ngff_attributes(node.attrs).get("multiscales")
    if multiscales:
        return _open_ome(spec, path, node, multiscales)
    raise _group_error(spec, node)


def _missing_zarr(spec: str, path: Path) -> InputError:
    root = zarr_root(path)
    if root is not None and root != path and root.is_dir():
        inside = path.relative_to(root).as_posix()
        return InputError(f"{spec}: no array or group {inside!r} inside the Zarr store {root}; "
                          "check the path inside the store")
    return InputError(f"{spec}: no such file or folder; check the path")


def _open_ome(spec: str, path: Path, group: Any, multiscales: list[dict[str, Any]]) -> VolumeSource:
    """Level 0 (the first dataset) of the first multiscale image, with its axes checked."""
    import zarr

    try:
        image = multiscales[0]
        level_path = str(image["datasets"][0]["path"])
        axes = [axis["name"] if isinstance(axis, dict) else str(axis) for axis in image.get("axes", "zyx")]
        level = group[level_path]
    except (KeyError, IndexError, TypeError) as exc:
        raise InputError(f"{spec}: broken OME-Zarr multiscales metadata ({type(exc).__name__}: {exc}); "
                         "point at a level array instead, e.g. image.zarr/0") from None
    if not isinstance(level, zarr.Array):
        raise InputError(f"{spec}: OME-Zarr level {level_path!r} is not an array; point at a level array")
    lead = _ome_lead(spec, axes, tuple(level.shape))
    return _checked(spec, "zarr", str(path / level_path), level.shape, level.dtype, lead=lead,
                    voxel=ome_voxel_size(spec, image))


def _ome_lead(spec: str, axes: list[str], shape: tuple[int, ...]) -> int:
    """Number of leading ``t``/``c`` axes of size 1 before ``z, y, x``; ``InputError`` for anything else."""
    if len(axes) != len(shape):
        raise InputError(f"{spec}: OME-Zarr axes {','.join(axes)} do not match the level's shape {shape}; "
                         "fix the multiscales metadata")
    lead = 0
    while lead < len(axes) and axes[lead].lower() in ("t", "c"):
        if shape[lead] != 1 and axes[lead].lower() == "c":
            raise InputError(f"{spec}: a channel axis of size {shape[lead]}: give a single-channel volume")
        if shape[lead] != 1:
            raise InputError(f"{spec}: a time axis of size {shape[lead]}: give a single time point")
        lead += 1
    spatial = [axis.lower() for axis in axes[lead:]]
    if spatial == ["y", "x"]:
        raise InputError(f"{spec}: a 2-D image of shape {shape[lead:]}, not a (Z, Y, X) volume: "
                         "use seg infer on image files")
    if spatial != ["z", "y", "x"]:
        raise InputError(f"{spec}: OME-Zarr axes {','.join(axes)}; expected z,y,x (after t/c axes of size 1)")
    return lead


def _group_error(spec: str, group: Any) -> InputError:
    """A Zarr group that is not an image: name the arrays and images it holds and how to point at one."""
    import zarr

    images, arrays = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # folders that are not Zarr nodes (e.g. markers) are skipped
        members = sorted(group.members(max_depth=None), key=lambda item: item[0])
    for name, node in members:
        if any(name.startswith(f"{image}/") for image in images):
            continue
        if isinstance(node, zarr.Array):
            arrays.append(f"{name} {tuple(node.shape)}")
        elif ngff_attributes(node.attrs).get("multiscales"):
            images.append(name)
    found = [f"OME-Zarr image {name}" for name in images] + [f"array {name}" for name in arrays]
    if not found:
        return InputError(f"{spec}: a Zarr group without arrays; give a Zarr array, an array inside a group "
                          "(group.zarr/sub/path) or an OME-Zarr image")
    first = (images or [arrays[0].split(" ")[0]])[0]
    listed = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
    return InputError(f"{spec}: a Zarr group, neither an array nor an OME-Zarr image; it holds {listed}: "
                      f"point at one, e.g. {spec.rstrip('/')}/{first}")


def _open_tiff(spec: str, path: Path) -> VolumeSource:
    """A multi-page TIFF stack; pages written one by one (one series each) are read as one stack."""
    import tifffile

    if not path.is_file():
        raise InputError(f"{spec}: no such file; check the path")
    options: dict[str, Any] = {}
    try:
        with tifffile.TiffFile(path) as tif:
            series, voxel = tif.series[0], imagej_voxel_size(spec, tif)
            if len(tif.series) > 1 and series.ndim == 2:
                options = {"is_shaped": False}
        if options:
            with tifffile.TiffFile(path, **options) as tif:
                series = tif.series[0]
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
        raise InputError(f"{spec}: corrupt or unreadable TIFF ({type(exc).__name__}: {exc})") from None
    if "S" in series.axes:  # samples per pixel: an RGB(A) image, not slices
        raise InputError(f"{spec}: an RGB TIFF (axes {series.axes}), not a gray stack; convert it to gray, one "
                         "page per slice")
    return _checked(spec, "tiff", str(path), tuple(series.shape), series.dtype, options=options, voxel=voxel)


def _open_hdf5(spec: str, file: str, dataset: str) -> VolumeSource:
    """An HDF5 dataset named as ``file.h5:/path/to/dataset``."""
    import h5py

    if not Path(file).is_file():
        raise InputError(f"{spec}: no such file {file}; check the path")
    try:
        with h5py.File(file, "r") as handle:
            if not dataset:
                raise _hdf5_listing(spec, file, handle, "an HDF5 file, not a dataset")
            node = handle.get(dataset)
            if not isinstance(node, h5py.Dataset):
                problem = f"no dataset {dataset}" if node is None else f"{dataset} is a group, not a dataset"
                raise _hdf5_listing(spec, file, handle, problem)
            shape, dtype, name = tuple(node.shape), node.dtype, node.name
            voxel = hdf5_voxel_size(spec, node.attrs, node.ndim)
    except OSError as exc:
        raise InputError(f"{spec}: not a readable HDF5 file ({exc})") from None
    return _checked(spec, "hdf5", file, shape, dtype, inner=name, voxel=voxel)


def _hdf5_listing(spec: str, file: str, handle: Any, problem: str) -> InputError:
    import h5py

    names: list[str] = []
    handle.visititems(lambda name, node: names.append(f"/{name}") if isinstance(node, h5py.Dataset) else None)
    if not names:
        return InputError(f"{spec}: {problem}, and the file holds no datasets; give an HDF5 file with a volume")
    listed = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return InputError(f"{spec}: {problem}; the file holds {listed}: give one as {file}:{names[0]}")
