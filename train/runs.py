"""Run folders: ``runs/train/<name>/`` holding model.keras (best), last.keras + average.npz + state.json (resume),
config.json, history.csv and figures. Later commands default to the newest run."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from seg.runtime.atomic import is_temporary
from seg.runtime.errors import InputError

RUNS_ROOT = Path("runs/train")
BEST_MODEL, LAST_MODEL = "model.keras", "last.keras"
CONFIG, STATE, HISTORY = "config.json", "state.json", "history.csv"


def new_run_dir(root: Path, name: str | None) -> Path:
    """Create and return a fresh run folder; ``name`` defaults to the local time ``YYYYmmdd-HHMMSS``."""
    base = name or time.strftime("%Y%m%d-%H%M%S")
    if "/" in base or base in ("", ".", ".."):
        raise InputError(f"--name {base!r}: use a plain folder name without '/'")
    candidate, suffix = root / base, 1
    if name and _abandoned(candidate):  # killed between creating the folder and writing its config
        shutil.rmtree(candidate)
    while candidate.exists():
        if name:
            raise InputError(f"{candidate}: run already exists; pick another --name or --resume it")
        suffix += 1
        candidate = root / f"{base}-{suffix}"
    candidate.mkdir(parents=True)
    return candidate


def _abandoned(folder: Path) -> bool:
    """A run folder without ``config.json`` that holds nothing but temporaries of atomic writes."""
    return folder.is_dir() and not (folder / CONFIG).exists() and all(is_temporary(p) for p in folder.iterdir())


def newest_run(root: Path = RUNS_ROOT) -> Path:
    """The most recently modified run folder under ``root`` that holds a best model."""
    runs = [p.parent for p in root.glob(f"*/{BEST_MODEL}")] if root.is_dir() else []
    if not runs:
        raise InputError(f"{root}: no finished training run found; run `seg train --data DIR` first")
    return max(runs, key=lambda p: (p / BEST_MODEL).stat().st_mtime)


def resolve_run(arg: str | Path, root: Path = RUNS_ROOT) -> Path:
    """A run folder from a path or a run name under ``root``."""
    for candidate in (Path(arg), root / str(arg)):
        if (candidate / CONFIG).is_file():
            return candidate
    raise InputError(f"{arg}: not a run folder (no {CONFIG}); give a folder under {root} or its name")


def resolve_model(arg: str | Path | None = None, root: Path = RUNS_ROOT) -> Path:
    """The model file a command means: ``None`` = the newest run's best ``model.keras``; an existing file
    (``.keras`` or ``.onnx``) = itself; a run folder, or a run name under ``root`` = its best ``model.keras``.
    Anything else, or a run without a best model yet: ``InputError`` naming it (exit 2)."""
    root = Path(root)
    if arg is None:
        return newest_run(root) / BEST_MODEL
    for candidate in (Path(arg), root / str(arg)):
        if candidate.is_file():
            return candidate
        if candidate.is_dir():
            model = candidate / BEST_MODEL
            if not model.is_file():
                raise InputError(f"{model}: no such file; the run has no best model yet (finish `seg train`)")
            return model
    raise InputError(f"{arg}: no such model; give a .keras or .onnx file, a run folder or a run name under {root}")


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON file; missing or corrupt -> InputError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable or corrupt JSON ({exc})") from None
