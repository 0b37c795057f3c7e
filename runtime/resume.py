"""The resume record of a folder run: what made the outputs in a folder, and which outputs to redo.

``SETTINGS_FILE`` in the output folder records the inputs, the model's SHA-256, the threshold and the
tiling. A rerun with other settings, or with a record that is unreadable, corrupt or incomplete (settings
unknown), redoes every output instead of skipping files that only look done, with one ``SegWarning``
naming the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from seg.runtime.atomic import write_json_atomic
from seg.runtime.errors import InputError, SegWarning
from seg.runtime.pipeline import Item
from seg.runtime.segmenter import Segmenter

GLOB_CHARS = "*?["
SETTINGS_FILE = ".seg-infer.json"
TILE_RULE = 2
"""Which images get the 2x tile (``TilePlan.tile_for``); recorded so outputs made under another rule are redone."""
REPLACING = "replacing"
"""The record's only key while a run deletes the outputs it will redo (``start_record``)."""


def record_settings(texts: list[str], model: object, seg: Segmenter, threshold: float) -> dict[str, object]:
    """The record of what makes the outputs. ``inputs`` is one string for one input (a resolved path, or the
    glob made absolute) and a sorted list of them for several."""
    digest = model_digest(bytes(model) if isinstance(model, bytes | bytearray) else Path(seg.name))
    named = sorted(os.path.abspath(text) if any(c in text for c in GLOB_CHARS) else str(Path(text).resolve())
                   for text in texts)  # a glob from another folder matches other files
    return {"inputs": named[0] if len(named) == 1 else named, "model_sha256": digest, "threshold": threshold,
            "tile": seg.tile_size, "halo": seg.halo, "tta": len(seg.transforms) > 1, "blend": seg.blend,
            "large_tile": seg.large_tile, "small_step": seg.small_step, "tile_rule": TILE_RULE}


def model_digest(model: bytes | Path) -> str:
    """SHA-256 of the model's bytes (the file the segmenter was made from); "" when it cannot be read (then
    ``_distrust`` redoes every output: a model that cannot be fingerprinted cannot be matched)."""
    if isinstance(model, bytes):
        return hashlib.sha256(model).hexdigest()
    try:
        return hashlib.sha256(model.read_bytes()).hexdigest()
    except OSError:
        return ""


def outputs_to_do(items: list[Item], out_dir: Path, settings: dict[str, object], model_name: str,
                  overwrite: bool) -> tuple[list[Item], bool]:
    """The items to segment, and whether the outputs already there are trusted. All items, untrusted, with
    ``overwrite``, or (with one ``SegWarning`` saying why) when ``_distrust`` says the outputs already there
    cannot be trusted; else those whose outputs are incomplete. Untrusted, every output of an item is stale,
    also the kinds not asked for this time."""
    if overwrite:
        return list(items), False
    present = any(path.exists() for item in items for path in item.every_output())
    reason = _distrust(out_dir, settings, model_name) if present else None
    if reason:
        warnings.warn(reason, SegWarning, stacklevel=3)
        return list(items), False
    return [item for item in items if not item.complete()], True


def _distrust(out_dir: Path, settings: dict[str, object], model_name: str) -> str | None:
    """Why the outputs already in ``out_dir`` cannot be reused (one line naming the file), or None when they
    can: ``SETTINGS_FILE`` is absent (a fresh folder), or holds every setting with the same values.

    A record that cannot be read, is not JSON, is not a JSON object or lacks a setting means "settings
    unknown": every output is redone, never trusted. So does a model whose bytes could not be read.
    """
    path = out_dir / SETTINGS_FILE
    redo = f"settings unknown, so every output in {out_dir} is redone"
    if not settings["model_sha256"]:
        return f"{model_name}: cannot read the model's bytes to fingerprint it; {redo}"
    try:
        previous = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path}: cannot read the resume record ({exc.strerror or exc}); {redo}"
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past the parser's depth
        return f"{path}: the resume record is corrupt (not JSON); {redo}"
    if not isinstance(previous, dict):
        return f"{path}: the resume record holds a JSON {type(previous).__name__}, not an object; {redo}"
    if previous.get(REPLACING):
        return f"{path}: an earlier run was stopped while it replaced its outputs; {redo}"
    missing = sorted(set(settings) - set(previous))
    if missing:
        return f"{path}: the resume record lacks {', '.join(missing)}; {redo}"
    changed = sorted(k for k in settings if previous[k] != settings[k])
    if changed:
        return f"{out_dir}: earlier outputs were made with other {', '.join(changed)}; redoing them all"
    return None


def start_record(out_dir: Path, settings: dict[str, object], outputs: list[Path]) -> None:
    """Record ``settings`` for a run about to write ``outputs``, deleting those already there first: made with
    other settings (or to be replaced with ``overwrite``), they must not outlive a run killed before it
    rewrote them. While they are deleted the record says ``REPLACING`` (never trusted), so no moment of a
    kill leaves old outputs under the new settings. ``InputError`` when the record or an output cannot be
    written or deleted; nothing is deleted when the record cannot be written."""
    earlier = [path for path in outputs if path.exists()]
    blocked = next((path for path in earlier if path.is_dir()), None)
    if blocked is not None:  # found before anything is deleted or recorded
        raise InputError(f"{blocked}: cannot replace this earlier output (a folder is in its place); remove it, or "
                         "choose another --output")
    if earlier:
        write_record(out_dir, {REPLACING: True})
        for path in earlier:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise InputError(f"{path}: cannot replace this earlier output ({exc.strerror or exc}); remove "
                                 "it, or choose another --output") from None
    write_record(out_dir, settings)


def write_record(out_dir: Path, settings: dict[str, object]) -> None:
    """Write ``SETTINGS_FILE`` atomically; ``InputError`` (one line, the fix) when it cannot be written."""
    path = out_dir / SETTINGS_FILE
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, settings)
    except OSError as exc:  # e.g. a folder in its place
        raise InputError(f"{path}: cannot write the resume record ({exc.strerror or exc}); remove whatever "
                         "is there, or choose another --output") from None
