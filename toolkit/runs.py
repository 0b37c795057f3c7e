"""Which trained model a command means: the newest run by default, or a run folder, run name or .keras file."""

from __future__ import annotations

from pathlib import Path

from seg.runtime.errors import InputError
from seg.train import runs

RUNS_ROOT = runs.RUNS_ROOT


def newest_run(root: str | Path = RUNS_ROOT) -> Path:
    """The newest run folder under ``root`` holding a best ``model.keras``; ``InputError`` when none."""
    return runs.newest_run(Path(root))


def resolve_weights(arg: str | Path | None = None, root: str | Path = RUNS_ROOT) -> Path:
    """The ``.keras`` file meant by ``arg``: a run folder, a run name under ``root`` or a model file;
    ``None`` means the newest run's best model. Missing -> ``InputError`` naming it (exit 2)."""
    root = Path(root)
    if arg is None:
        return newest_run(root) / runs.BEST_MODEL
    for candidate in (Path(arg), root / str(arg)):
        if candidate.is_file():
            return candidate
        if candidate.is_dir():
            model = candidate / runs.BEST_MODEL
            if not model.is_file():
                raise InputError(f"{model}: no such file; the run has no best model yet (finish `seg train`)")
            return model
    raise InputError(f"{arg}: no such weights; give a run folder, a run name under {root} or a .keras file")
