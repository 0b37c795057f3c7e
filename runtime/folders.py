"""Segment a folder, a file, a glob or a TIFF stack: reading runs ahead, writing runs behind.

Outputs in ``output_dir`` (names keep the input's stem, so masks pair with images like ISBI labels):

- ``<stem>.png``: the mask, 8-bit, 255 = cell interior, 0 = membrane. A multi-page TIFF input gives a
  multi-page ``<stem>.tif`` mask stack instead (stack in, stack out).
- ``prob/<stem>.tif`` with ``save_prob``: the interior probability, uncompressed float32 TIFF (exact, one
  page per slice; 16-bit PNG would round to 1.5e-5 and compress no better on real maps).
- ``overlay/<stem>.png`` (``.tif`` for stacks) with ``overlay``: the image in gray, membranes in red.

Every file is written atomically, so an output that exists is complete: a rerun skips inputs whose
outputs all exist (resume after a crash or kill) unless ``overwrite``. A bad input file is reported and
skipped; the run goes on and lists the failures in its summary. Two inputs with the same stem (``a.png``
and ``a.tif``) would share outputs: the first (in sorted order) is segmented, the second is a failure.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from seg.runtime.atomic import remove_temporaries, write_json_atomic
from seg.runtime.errors import InputError, SegWarning
from seg.runtime.io import TIFF_SUFFIXES, is_image_file, list_images
from seg.runtime.pipeline import Item, OnError, Progress, run_pipeline
from seg.runtime.segmenter import Segmenter

_GLOB_CHARS = "*?["


@dataclass
class InferSummary:
    """What a run did. ``images`` counts slices segmented (a stack counts each page)."""

    output_dir: str
    files: int = 0
    images: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    seconds: float = 0.0
    compute_s: float = 0.0

    @property
    def provider(self) -> str:
        """The provider that really ran (first of the session's providers)."""
        return self.providers[0] if self.providers else "none"

    @property
    def images_per_s(self) -> float:
        """End-to-end throughput: read + infer + write, images per second of wall time."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def compute_images_per_s(self) -> float:
        """Compute-only throughput: images per second spent inside ``session.run``."""
        return self.images / self.compute_s if self.compute_s > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "provider": self.provider, "images_per_s": self.images_per_s,
                "compute_images_per_s": self.compute_images_per_s}


def segment_paths(
    inputs: str | os.PathLike[str],
    model: str | os.PathLike[str] | bytes = "model.onnx",
    output_dir: str | os.PathLike[str] | None = None,
    provider: str = "auto",
    threshold: float | None = None,
    save_prob: bool = False,
    overlay: bool = False,
    overwrite: bool = False,
    segmenter: Segmenter | None = None,
    progress: Progress | None = None,
    on_error: OnError | None = None,
    **segmenter_options: object,
) -> InferSummary:
    """Segment every image under ``inputs`` with ``model`` into ``output_dir`` (default: ``default_output``).

    ``threshold`` defaults to the model's; ``segmenter_options`` go to ``Segmenter`` (tile_size, halo,
    batch_size, blend, tta, threads). Raises ``InputError``/``ProviderError`` before writing anything when
    the input or the model is unusable; per-file problems land in ``summary.failures``.
    """
    if not str(inputs).strip() or (output_dir is not None and not str(output_dir).strip()):
        raise InputError("empty --input or --output path; give a folder, file or glob (an unset variable?)")
    files = resolve_inputs(inputs)
    single = Path(str(inputs)).is_file()  # one file is the main input: its failure is an InputError
    out_dir = Path(output_dir) if output_dir is not None else default_output(inputs)
    _check_output_dir(out_dir, files)
    seg = segmenter or Segmenter(model, provider=provider, **segmenter_options)  # type: ignore[arg-type]
    cut = seg.info.threshold if threshold is None else float(threshold)
    if not 0.0 <= cut <= 1.0:
        raise InputError(f"threshold {cut:g} is outside [0, 1]; masks cut the interior probability, e.g. 0.5")
    items, failures = plan_outputs(files, out_dir, save_prob, overlay)
    summary = InferSummary(str(out_dir), files=len(files), failures=failures, providers=list(seg.providers))
    settings = _settings(inputs, model, seg, cut)
    overwrite = overwrite or _settings_changed(out_dir, settings)
    todo = [item for item in items if overwrite or not item.complete()]
    summary.skipped = len(items) - len(todo)
    _prepare_folders(items, todo)
    write_json_atomic(out_dir / SETTINGS_FILE, settings)
    report = _reporter(summary, None if single else on_error)
    compute_before, start = seg.stats.compute_s, time.perf_counter()
    summary.images = run_pipeline(seg, todo, cut, report, progress)
    summary.seconds = time.perf_counter() - start
    summary.compute_s = seg.stats.compute_s - compute_before
    if single and summary.failures:
        raise InputError(summary.failures[0])
    return summary


def _check_output_dir(out_dir: Path, files: list[Path]) -> None:
    """``InputError`` when ``out_dir`` exists but is not a folder, or is the folder of an input (masks would
    mix with the images and be read as inputs next time); checked before any work is done."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder; give a folder for --output")
    if any(_real(f.parent) == _real(out_dir) for f in files):
        raise InputError(f"{out_dir}: is the input folder; masks would mix with the images, choose another --output")


SETTINGS_FILE = ".seg-infer.json"
"""What made the outputs in a folder (inputs, model digest, threshold, tiling). A rerun with other settings
redoes every output instead of skipping files that only look done."""


def _settings(inputs: str | os.PathLike[str], model: object, seg: Segmenter, threshold: float) -> dict[str, object]:
    digest = _model_digest(model if isinstance(model, bytes) else Path(seg.name))
    return {"inputs": str(Path(str(inputs)).resolve()) if not any(c in str(inputs) for c in _GLOB_CHARS)
            else str(inputs), "model_sha256": digest, "threshold": threshold, "tile": seg.tile_size,
            "halo": seg.halo, "tta": len(seg.transforms) > 1, "blend": seg.blend, "large_tile": seg.large_tile,
            "small_step": seg.small_step}


def _model_digest(model: bytes | Path) -> str:
    """SHA-256 of the model's bytes (the file the segmenter was made from); "" when it cannot be read."""
    if isinstance(model, bytes):
        return hashlib.sha256(model).hexdigest()
    try:
        return hashlib.sha256(model.read_bytes()).hexdigest()
    except OSError:
        return ""


def _settings_changed(out_dir: Path, settings: dict[str, object]) -> bool:
    """True when ``out_dir`` holds outputs made with other settings (they are redone, with a warning)."""
    path = out_dir / SETTINGS_FILE
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    changed = sorted(k for k in settings if previous.get(k) != settings[k])
    if changed:
        warnings.warn(f"{out_dir}: earlier outputs were made with other {', '.join(changed)}; redoing them all",
                      SegWarning, stacklevel=3)
    return bool(changed)


def _prepare_folders(items: list[Item], todo: list[Item]) -> None:
    """Create the output folders of ``todo`` and delete temporaries a killed earlier run left for ``items``."""
    for folder in {p.parent for item in todo for p in item.outputs()}:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{folder}: cannot create the output folder ({exc.strerror or exc}); "
                             "choose another --output") from None
    stems: dict[Path, set[str]] = {}
    for item in items:
        for path in item.outputs():
            stems.setdefault(path.parent, set()).add(path.stem)
    for folder, names in stems.items():
        remove_temporaries(folder, names)


def resolve_inputs(inputs: str | os.PathLike[str]) -> list[Path]:
    """Image files named by ``inputs``: a folder (its images), a file, or a glob pattern; sorted."""
    text = str(inputs)
    path = Path(text)
    if path.is_dir():
        return list_images(path)
    if path.is_file():
        return [path]
    if any(char in text for char in _GLOB_CHARS):
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
        files, seen = [], set()
        for match in matches:  # a symlinked folder (or a link loop) can reach one file by many paths
            if match.is_file() and is_image_file(match) and _real(match) not in seen:
                seen.add(_real(match))
                files.append(match)
        if not files:
            raise InputError(f"{text}: the pattern matches no PNG/JPEG/TIFF image")
        return files
    if path.exists() or path.is_symlink():
        raise InputError(f"{text}: not a regular file or folder (a FIFO, device or broken link); give images")
    raise InputError(f"{text}: no such file or folder")


def default_output(inputs: str | os.PathLike[str]) -> Path:
    """``runs/infer/<name>``: the input folder's name, the file's stem, or the glob's parent folder name."""
    text = str(inputs)
    path = Path(text)
    if any(char in text for char in _GLOB_CHARS) and not path.exists():
        path = next((p for p in path.parents if not any(c in str(p) for c in _GLOB_CHARS)), Path("."))
    if path.is_dir():
        resolved = path.resolve()  # "test/image" -> "test-image": dataset folders are all called "image"
        name = f"{resolved.parent.name}-{resolved.name}" if resolved.name == "image" else resolved.name
    else:
        name = path.stem
    return Path("runs") / "infer" / (name or "input")


def plan_outputs(
    files: list[Path], out_dir: Path, save_prob: bool, overlay: bool
) -> tuple[list[Item], list[str]]:
    """One ``Item`` per input whose output names are free; failures (one line each) for the rest."""
    inputs = {_real(f) for f in files}
    items, failures, owner = [], [], {}
    for source in files:
        stack = _is_stack(source)
        mask_suffix = ".tif" if stack else ".png"
        item = Item(
            source,
            out_dir / f"{source.stem}{mask_suffix}",
            out_dir / "prob" / f"{source.stem}.tif" if save_prob else None,
            out_dir / "overlay" / f"{source.stem}{mask_suffix}" if overlay else None,
        )
        problem = _name_problem(item, out_dir, inputs, owner)
        if problem:
            failures.append(f"{source}: {problem}")
            continue
        owner.update({_real(p): source for p in item.outputs()})
        owner[_real(out_dir) / source.stem] = source
        items.append(item)
    return items, failures


def _name_problem(item: Item, out_dir: Path, inputs: set[Path], owner: dict[Path, Path]) -> str | None:
    root = _real(out_dir)
    taken = owner.get(root / item.source.stem)
    if taken is not None:
        return f"same name as {taken}; its outputs would collide (rename one, or run them separately)"
    for path in item.outputs():
        resolved = _real(path)
        if not resolved.is_relative_to(root):
            return f"output {path} would land outside {out_dir}"
        if resolved in inputs:
            raise InputError(f"{out_dir}: output {path} would overwrite an input; choose another --output")
    return None


def _real(path: Path) -> Path:
    """``path`` with symbolic links resolved; a link loop resolves as far as it can instead of raising."""
    return Path(os.path.realpath(path))


def _is_stack(path: Path) -> bool:
    """True for a TIFF holding several gray pages (read as a stack by ``seg.runtime.io.read_pages``)."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.series) > 1:
                return True
            series = tif.series[0]
            planes = series.ndim - (1 if series.axes.endswith("S") else 0)
            return planes > 2 and int(np.prod(series.shape[: planes - 2])) > 1
    except Exception:  # unreadable: reported when it is read
        return False


def _reporter(summary: InferSummary, on_error: OnError | None) -> OnError:
    for line in summary.failures:
        if on_error:
            on_error(line)

    def report(line: str) -> None:
        summary.failures.append(line)
        if on_error:
            on_error(line)

    return report
