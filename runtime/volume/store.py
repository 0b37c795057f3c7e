"""The output of a volume run: an OME-Zarr image (NGFF v0.5 on Zarr v3) written block by block.

Layout of ``path``::

    zarr.json            group: NGFF ``multiscales`` (axes z, y, x in the input's voxel size and units,
                         ``seg.runtime.volume.voxels``), the run's settings under "seg" and
                         the output's layout under "seg_output" (format, shape, prob_dtype, chunk, levels)
    0, 1, ...            probability of cell interior, level k = level 0 [:, ::2**k, ::2**k]
    labels/mask/0, ...   mask, uint8: 255 = cell interior (prob >= threshold), 0 = membrane
    .seg-blocks/<key>    one empty marker file per finished block (resume skips those)

Level k has chunks ``(1, CHUNK >> k, CHUNK >> k)``: a block (whole ``CHUNK`` squares, see ``blocks``) is
whole chunks at every level, so no two blocks ever write the same chunk and any number of processes can
write at once. The arrays and all metadata are made up front in a hidden temporary folder that is then
renamed onto ``path``, so a crash never leaves a half-made output that reads as valid.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from seg.runtime.atomic import TMP_MARK, is_temporary, write_bytes_atomic, write_json_atomic
from seg.runtime.errors import InputError, SegError
from seg.runtime.preprocess import to_mask
from seg.runtime.volume.blocks import CHUNK, Block, plan_blocks
from seg.runtime.volume.voxels import PIXELS, VoxelSize

PROB_DTYPES = ("uint8", "float16", "float32")
"""How the probability is stored: uint8 = round(prob * 255); float16/float32 = prob in [0, 1]."""
MAX_LEVELS = 4
MIN_LEVEL_CHUNK = 64
MARKERS = ".seg-blocks"
MASK = "labels/mask"
NGFF_VERSION = "0.5"
FORMAT = 1
"""Version of the "seg_output" layout; an output of another format is never resumed."""
MASK_COLORS = [{"label-value": 0, "rgba": [0, 0, 0, 255]}, {"label-value": 255, "rgba": [255, 255, 255, 255]}]
MASK_PROPERTIES = [{"label-value": 0, "class": "membrane"}, {"label-value": 255, "class": "cell interior"}]


def level_count(shape: tuple[int, int, int]) -> int:
    """Multiscale levels for a ``(Z, Y, X)`` volume: 1 to ``MAX_LEVELS``, while ``CHUNK >> k`` stays at least
    ``MIN_LEVEL_CHUNK`` and level k is more than one pixel in Y or X."""
    levels = 1
    while levels < MAX_LEVELS and CHUNK >> levels >= MIN_LEVEL_CHUNK and max(level_shape(shape, levels)[1:]) > 1:
        levels += 1
    return levels


def level_shape(shape: tuple[int, int, int], level: int) -> tuple[int, int, int]:
    """``(Z, ceil(Y / 2**level), ceil(X / 2**level))``: the shape of ``volume[:, ::2**level, ::2**level]``."""
    step = 1 << level
    return shape[0], -(-shape[1] // step), -(-shape[2] // step)


class VolumeOutput:
    """A seg output folder (see the module docstring), picklable: it holds the path and the layout and opens
    the arrays lazily, once per process.

    ``path``: the OME-Zarr folder (absolute); ``shape``: ``(Z, Y, X)`` of level 0 in pixels; ``levels``: multiscale
    levels; ``prob_dtype``: one of ``PROB_DTYPES``; ``threshold``: prob >= threshold is interior (mask 255);
    ``settings``: the run's settings as stored (JSON values); ``voxel``: the physical voxel size of level 0,
    written into the NGFF metadata.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int], prob_dtype: str, settings: dict[str, Any],
                 voxel: VoxelSize = PIXELS) -> None:
        self.path = Path(os.path.abspath(path))  # absolute: workers may run in other folders
        self.shape = shape
        self.voxel = voxel
        self.levels = level_count(shape)
        self.prob_dtype = prob_dtype
        self.settings = settings
        self.threshold = float(settings["threshold"])
        self._arrays: tuple[list[Any], list[Any]] | None = None  # (prob, mask) per level; never pickled

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def __repr__(self) -> str:
        return f"VolumeOutput({str(self.path)!r}, shape={self.shape}, levels={self.levels})"

    @classmethod
    def create_or_resume(cls, path: str | os.PathLike[str], shape: tuple[int, int, int], settings: dict[str, object],
                         *, prob_dtype: str = "uint8", overwrite: bool = False,
                         voxel: VoxelSize = PIXELS) -> VolumeOutput:
        """Create the output at ``path`` for a ``(Z, Y, X)`` volume, or resume the one already there.

        ``settings`` (JSON-able; ``settings["threshold"]`` in [0, 1] is required, ``settings["block"]`` lets
        ``finish()`` list the blocks) is stored as the group's "seg" attribute. An existing output of the
        same shape, settings and ``prob_dtype`` is resumed with its done markers. One that differs is an
        ``InputError`` naming what differs, unless ``overwrite``. ``overwrite=True`` always replaces an
        existing seg output (markers included) with a fresh one. A ``path`` that is not a seg output (other
        than an empty folder) is refused even with ``overwrite``: seg never deletes what it did not make.
        ``voxel`` (the input's voxel size) goes into the NGFF scale and units of every level; it is not part of
        what must match to resume, and ``finish()`` writes the one given now.
        """
        path = Path(path)
        shape, settings = _checked_args(shape, settings, prob_dtype)
        record = {"format": FORMAT, "shape": list(shape), "prob_dtype": prob_dtype, "chunk": CHUNK,
                  "levels": level_count(shape), "settings": settings}
        for _ in range(5):  # another process may create or replace the output between the steps below
            existing = _read_record(path)
            if existing is not None and overwrite:
                _remove_output(path)
                overwrite = False
                continue
            if existing is None:
                if _create(path, record, voxel):
                    return cls(path, shape, prob_dtype, settings, voxel)
                continue
            differences = _differences(existing, record)
            if differences:
                raise InputError(f"{path}: an existing seg output that differs ({'; '.join(differences)}); "
                                 "pass --overwrite to replace it or choose another --output")
            output = cls(path, shape, prob_dtype, settings, voxel)
            output._opened()  # checks that every array is there as made
            return output
        raise InputError(f"{path}: another process keeps creating or removing this output; run once at a time")

    def write(self, block: Block, prob: np.ndarray) -> None:
        """Write the probability and the mask of ``block``'s core at every level.

        ``prob``: ``(h, w)`` float in [0, 1] (``block.shape``), 1.0 = cell interior; values are clipped to
        [0, 1]. ``ValueError`` for another shape, NaN, a non-float array or a block not aligned to ``CHUNK``.
        """
        prob = self._checked_prob(block, prob)
        encoded = _encode(prob, self.prob_dtype)
        mask = to_mask(prob, self.threshold)
        probs, masks = self._opened()
        for level in range(self.levels):
            step = 1 << level
            rows = slice(block.rows.start // step, -(-block.rows.stop // step))
            cols = slice(block.cols.start // step, -(-block.cols.stop // step))
            probs[level][block.z, rows, cols] = encoded[::step, ::step]
            masks[level][block.z, rows, cols] = mask[::step, ::step]

    def mark_done(self, block: Block) -> None:
        """Record that ``block`` is written (call after ``write``): an atomic marker ``path/.seg-blocks/<key>``."""
        write_bytes_atomic(self.path / MARKERS / block.key, b"")

    def done_keys(self) -> set[str]:
        """Keys of the blocks marked done (an empty set when none are)."""
        folder = self.path / MARKERS
        if not folder.is_dir():
            return set()
        return {entry.name for entry in os.scandir(folder) if entry.is_file() and not is_temporary(Path(entry.name))}

    def finish(self, blocks: Iterable[Block] | None = None) -> None:
        """Check that every block is marked done, confirm (rewrite if damaged) the NGFF metadata and record
        the output as complete (``"complete": <blocks>`` under "seg_output"). Idempotent.

        ``blocks``: the run's blocks; None plans them from ``settings["block"]`` (``ValueError`` if absent).
        ``SegError`` naming the missing blocks when some are not done (running again resumes them).
        """
        if blocks is None:
            block = self.settings.get("block")
            if not isinstance(block, int):
                raise ValueError("finish() needs blocks= or an integer settings['block']")
            blocks = plan_blocks(self.shape, block, 0)
        expected = list(dict.fromkeys(item.key for item in blocks))  # in the plan's order
        done = self.done_keys()
        missing = [key for key in expected if key not in done]
        if missing:
            shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise SegError(f"{self.path}: {len(missing)} of {len(expected)} blocks not written ({shown}); "
                           "run the same command again to finish them")
        self._opened()
        for node, ome in _ngff_attributes(self.levels, self.voxel).items():
            _update_attributes(self.path / node, {"ome": ome})
        layout = {key: value for key, value in (_read_record(self.path) or {}).items() if key != "settings"}
        if layout.get("complete") != len(expected):
            _update_attributes(self.path, {"seg_output": {**layout, "complete": len(expected)}})

    def _checked_prob(self, block: Block, prob: np.ndarray) -> np.ndarray:
        prob = np.asarray(prob)
        if prob.shape != block.shape or prob.dtype.kind != "f":
            raise ValueError(f"block {block.key}: expected a {block.shape} float probability, got "
                             f"{prob.shape} {prob.dtype}")
        aligned = all(part.start % CHUNK == 0 and (part.stop % CHUNK == 0 or part.stop == size)
                      for part, size in ((block.rows, self.shape[1]), (block.cols, self.shape[2])))
        if not (aligned and 0 <= block.z < self.shape[0] and block.rows.stop <= self.shape[1]
                and block.cols.stop <= self.shape[2]):
            raise ValueError(f"block {block.key}: not whole {CHUNK}-pixel chunks inside {self.shape}")
        if np.isnan(prob).any():
            raise ValueError(f"block {block.key}: NaN in the probability")
        return np.clip(prob, 0.0, 1.0).astype(np.float32, copy=False)

    def _opened(self) -> tuple[list[Any], list[Any]]:
        """The level arrays ``(prob, mask)``, opened once per process; ``InputError`` if one is damaged."""
        if self._arrays is None:
            import zarr

            arrays: tuple[list[Any], list[Any]] = ([], [])
            for level in range(self.levels):
                for found, folder, dtype in ((arrays[0], str(level), self.prob_dtype),
                                             (arrays[1], f"{MASK}/{level}", "uint8")):
                    try:
                        array = zarr.open_array(store=str(self.path / folder), mode="r+", zarr_format=3)
                    except (OSError, ValueError, KeyError):
                        array = None
                    wanted = (level_shape(self.shape, level), (1, CHUNK >> level, CHUNK >> level), np.dtype(dtype))
                    if array is None or (array.shape, array.chunks, array.dtype) != wanted:
                        raise InputError(f"{self.path}: damaged seg output (array {folder} is missing or "
                                         "changed); pass --overwrite to make it afresh")
                    found.append(array)
            self._arrays = arrays
        return self._arrays


def _checked_args(shape: tuple[int, int, int], settings: dict[str, object],
                  prob_dtype: str) -> tuple[tuple[int, int, int], dict[str, Any]]:
    """``(shape, settings as JSON values)``; ``InputError``/``ValueError`` for bad values."""
    if prob_dtype not in PROB_DTYPES:
        raise InputError(f"probability dtype {prob_dtype!r}: not one of {', '.join(PROB_DTYPES)}")
    if len(shape) != 3 or any(isinstance(n, bool) or int(n) != n or n <= 0 for n in shape):
        raise ValueError(f"output shape must be three positive sizes (Z, Y, X), got {shape}")
    if "threshold" not in settings:
        raise ValueError("settings must hold 'threshold'")
    threshold = settings["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold {threshold!r}: must be a number in [0, 1]")
    stored = json.loads(json.dumps(settings, default=str))
    return (int(shape[0]), int(shape[1]), int(shape[2])), stored


def _encode(prob: np.ndarray, dtype: str) -> np.ndarray:
    """``(h, w) float32 in [0, 1]`` -> the stored probability (uint8: round(prob * 255))."""
    if dtype == "uint8":
        return np.rint(prob * np.float32(255.0)).astype(np.uint8)
    return prob.astype(dtype)


def _read_record(path: Path) -> dict[str, Any] | None:
    """The "seg_output" attributes of an existing output with its "seg" settings under "settings"; None when
    ``path`` is missing or an empty folder.

    ``InputError`` when ``path`` exists and is not a seg output.
    """
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return None
    try:
        attributes = json.loads((path / "zarr.json").read_text(encoding="utf-8"))["attributes"]
        record = {**attributes["seg_output"], "settings": dict(attributes["seg"])}
    except (OSError, ValueError, KeyError, TypeError):
        record = None
    if record is None or "format" not in record:
        raise InputError(f"{path}: exists and is not a seg volume output (no seg metadata in its zarr.json); "
                         "choose another --output (seg never deletes what it did not make)")
    return record


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two records (``_read_record``), as ``"name X there, Y now"`` phrases."""
    found = [f"{name} {_short(old.get(name))} there, {_short(new[name])} now"
             for name in ("format", "shape", "prob_dtype", "chunk", "levels") if old.get(name) != new[name]]
    before, after = old.get("settings") or {}, new["settings"]
    for name in sorted(set(before) | set(after), key=str):
        if before.get(name) != after.get(name) and not any(part.startswith(f"{name} ") for part in found):
            found.append(f"{name} {_short(before.get(name))} there, {_short(after.get(name))} now")
    return found


def _short(value: Any) -> str:
    """A setting's value, short: a digest by its start, a path by its end (where two paths differ)."""
    text = value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, str) and os.sep in value:
        return text if len(text) <= 60 else "..." + text[-57:]
    return text if len(text) <= 24 else text[:12] + "..."


def _create(path: Path, record: dict[str, Any], voxel: VoxelSize) -> bool:
    """Build the output in a hidden sibling folder and rename it onto ``path``.

    False when ``path`` was created by someone else meanwhile; ``InputError`` when it cannot be written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}{TMP_MARK}{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as exc:
        raise InputError(f"{path}: cannot create the output here ({exc.strerror or exc}); "
                         "choose another --output") from None
    try:
        _build(tmp, record, voxel)
        os.rename(tmp, path)  # atomic; replaces an empty folder, fails on anything else
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if path.exists():
            return False
        raise InputError(f"{path}: cannot create the output ({exc.strerror or exc}); choose another --output") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def _build(folder: Path, record: dict[str, Any], voxel: VoxelSize) -> None:
    """Make the empty arrays, the NGFF metadata and the marker folder; the seg attributes last."""
    import zarr

    shape, levels = tuple(record["shape"]), record["levels"]
    root = zarr.open_group(str(folder), mode="w", zarr_format=3)
    mask = root.create_group("labels").create_group("mask")
    for level in range(levels):
        side = CHUNK >> level
        for group, dtype in ((root, record["prob_dtype"]), (mask, "uint8")):
            group.create_array(str(level), shape=level_shape(shape, level), chunks=(1, side, side), dtype=dtype,
                               fill_value=0, dimension_names=("z", "y", "x"))
    (folder / MARKERS).mkdir()
    for node, ome in _ngff_attributes(levels, voxel).items():
        _update_attributes(folder / node, {"ome": ome})
    layout = {key: value for key, value in record.items() if key != "settings"}
    _update_attributes(folder, {"seg": record["settings"], "seg_output": layout})


def _ngff_attributes(levels: int, voxel: VoxelSize) -> dict[str, dict[str, Any]]:
    """The "ome" attributes of the image group, the labels group and the mask, by folder."""
    def multiscales(name: str) -> list[dict[str, Any]]:
        datasets = [{"path": str(level), "coordinateTransformations": voxel.transformations(level)}
                    for level in range(levels)]
        return [{"name": name, "axes": voxel.axes(), "datasets": datasets, "type": "nearest",
                 "metadata": {"description": "level k = level 0 [:, ::2**k, ::2**k]"}}]

    return {
        "": {"version": NGFF_VERSION, "multiscales": multiscales("probability")},
        "labels": {"version": NGFF_VERSION, "labels": ["mask"]},
        MASK: {"version": NGFF_VERSION, "multiscales": multiscales("mask"),
               "image-label": {"colors": MASK_COLORS, "properties": MASK_PROPERTIES, "source": {"image": "../../"}}},
    }


def _update_attributes(folder: Path, updates: dict[str, Any]) -> None:
    """Set attributes of the Zarr v3 node in ``folder`` by rewriting its zarr.json atomically (only if changed)."""
    meta_path = folder / "zarr.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    attributes = meta.setdefault("attributes", {})
    if all(attributes.get(name) == value for name, value in updates.items()):
        return
    attributes.update(updates)
    write_json_atomic(meta_path, meta)


def _remove_output(path: Path) -> None:
    """Delete a seg output (checked by the caller): renamed aside first, so ``path`` never holds half of one.
    Copies set aside by an earlier replacement that was killed while deleting go too (only this output's)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}{TMP_MARK}old-*"):
        shutil.rmtree(stale, ignore_errors=True)
    trash = path.parent / f".{path.name}{TMP_MARK}old-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return  # removed by another process meanwhile
    except OSError as exc:
        raise InputError(f"{path}: cannot replace the output ({exc.strerror or exc}); remove it or choose "
                         "another --output") from None
    shutil.rmtree(trash, ignore_errors=True)
