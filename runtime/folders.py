"""Segment folders, files, globs or TIFF stacks (one or several): reading runs ahead, writing runs behind.

Outputs in ``output_dir`` (names keep the input's stem, so masks pair with images like ISBI labels):

- ``<stem>.png``: the mask, 8-bit, 255 = cell interior, 0 = membrane. A multi-page TIFF input gives a
  multi-page ``<stem>.tif`` mask stack instead (stack in, stack out).
- ``prob/<stem>.tif`` with ``save_prob``: the interior probability, uncompressed float32 TIFF (exact, one
  page per slice; 16-bit PNG would round to 1.5e-5 and compress no better on real maps).
- ``overlay/<stem>.png`` (``.tif`` for stacks) with ``overlay``: the image in gray, membranes in red.

TIFF outputs of a TIFF input keep its calibration (resolution tags; ImageJ's unit, slice spacing and origin):
``seg.runtime.io.read_calibrated``.

Several inputs (``["day1/", "day2/*.png", "x.tif"]``, or the paths a shell expands an unquoted glob into)
are segmented in the order given into one flat ``output_dir``: outputs are named by stem alone, whatever
folder the input came from (as for a recursive glob ``'in/**/*.png'``). One file named twice (a folder and a
file in it, overlapping globs) is segmented once. Two files with one stem would share outputs:

- in one folder (``a.png`` and ``a.tif``, most likely one image saved twice), the first in sorted order is
  segmented and the other is a failure in the summary;
- in different folders (``day1/00.png`` and ``day2/00.png``, different images), the run stops with an
  ``InputError`` before anything is written: rename them, or give each folder its own ``output_dir``.

Every file is written atomically, so an output that exists is complete: a rerun skips inputs whose
outputs all exist (resume after a crash or kill) unless ``overwrite``, or ``SETTINGS_FILE`` shows other
settings, or cannot be read (then every output is redone). Outputs about to be redone are deleted before the
run starts, so a run killed part-way leaves only outputs made with the settings its record names. A bad
input file is reported and skipped; the run goes on and lists the failures in its summary.
"""

from __future__ import annotations

import contextlib
import glob
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tifffile

from seg.runtime.atomic import remove_temporaries
from seg.runtime.errors import InputError
from seg.runtime.io import TIFF_SUFFIXES, is_image_file, list_images, tiff_page_count
from seg.runtime.pipeline import Item, OnError, Progress, overlay_path, prob_path, run_pipeline
from seg.runtime.preprocess import check_threshold
from seg.runtime.resume import GLOB_CHARS as _GLOB_CHARS
from seg.runtime.resume import SETTINGS_FILE, outputs_to_do, record_settings, start_record
from seg.runtime.segmenter import Segmenter

PathOrGlob = str | os.PathLike[str]
Inputs = PathOrGlob | Sequence[PathOrGlob]
"""One folder, image file, glob pattern or TIFF stack, or a sequence of them."""


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
    streams: int = 1

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
        """Compute-only throughput: images per second of the time onnxruntime was running (``RunStats.busy_s``:
        at least one ``session.run`` going, so overlapping streams are not counted twice)."""
        return self.images / self.compute_s if self.compute_s > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "provider": self.provider, "images_per_s": self.images_per_s,
                "compute_images_per_s": self.compute_images_per_s}


def segment_paths(
    inputs: Inputs,
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

    ``inputs``: one folder, file, glob or TIFF stack, or a sequence of them (see the module docstring for how
    outputs are named). ``threshold`` defaults to the model's; ``segmenter_options`` go to ``Segmenter``
    (tile_size, halo, batch_size, blend, tta, threads, streams; ``streams`` defaults to None here: one
    onnxruntime run per physical core on the CPU, two on CUDA, for images per second, see
    ``seg.runtime.streams``).
    Raises ``InputError``/``ProviderError`` before writing anything when an input, the output folder or the
    model is unusable, or when files from different folders share a stem; per-file problems land in
    ``summary.failures`` (when the only input is one file, its failure raises ``InputError`` instead).
    """
    texts = input_texts(inputs)
    if output_dir is not None and not str(output_dir).strip():
        raise InputError("empty --input or --output path; give a folder, file or glob (an unset variable?)")
    files = resolve_inputs(texts)
    single = len(texts) == 1 and Path(texts[0]).is_file()  # one file is the main input: its failure is an InputError
    out_dir = Path(output_dir) if output_dir is not None else default_output(texts)
    _check_output_dir(out_dir, files)
    with contextlib.ExitStack() as owned:  # a Segmenter made here is closed here
        seg = segmenter or owned.enter_context(
            Segmenter(model, provider=provider, **{"streams": None, **segmenter_options}))  # type: ignore[arg-type]
        cut = check_threshold(seg.info.threshold if threshold is None else threshold)
        items, failures = plan_outputs(files, out_dir, save_prob, overlay)
        summary = InferSummary(str(out_dir), files=len(files), failures=failures, providers=list(seg.providers),
                               streams=seg.streams)
        settings = record_settings(texts, model, seg, cut)
        todo, trusted = outputs_to_do(items, out_dir, settings, seg.name, overwrite)
        summary.skipped = len(items) - len(todo)
        new_folders = _prepare_folders(out_dir, items, todo)
        new_record = not (out_dir / SETTINGS_FILE).exists()
        inputs = {_real(path) for path in files}  # an input inside the output folder is never deleted
        stale = [path for item in todo for path in (item.outputs() if trusted else item.every_output())
                 if _real(path) not in inputs]
        start_record(out_dir, settings, stale)
        undo = (out_dir / SETTINGS_FILE if new_record else None, new_folders)
        _run_timed(seg, todo, cut, summary, _reporter(summary, None if single else on_error), progress, undo)
        if single and summary.failures:
            raise InputError(summary.failures[0])
        return summary


def _run_timed(seg: Segmenter, todo: list[Item], cut: float, summary: InferSummary, report: OnError,
               progress: Progress | None, undo: tuple[Path | None, list[Path]]) -> None:
    """``run_pipeline`` into ``summary`` (images, seconds, compute seconds); a run that wrote no output,
    finished or stopped by an exception, takes back the record and folders it created (``undo``)."""
    compute_before, start = seg.stats.busy_s, time.perf_counter()
    try:
        summary.images = run_pipeline(seg, todo, cut, report, progress)
    except BaseException:
        if summary.skipped == 0 and not any(p.exists() for item in todo for p in item.outputs()):
            _remove_new(*undo)
        raise
    summary.seconds = time.perf_counter() - start
    summary.compute_s = seg.stats.busy_s - compute_before
    if summary.images == 0 and summary.skipped == 0:
        _remove_new(*undo)


def input_texts(inputs: Inputs) -> list[str]:
    """``inputs`` (one path/glob or a sequence of them) as a list of strings, in the order given.

    Raises ``InputError`` when the sequence is empty or a path is blank (an unset shell variable).
    """
    texts = [str(inputs)] if isinstance(inputs, str | os.PathLike) else [str(item) for item in inputs]
    if not texts:
        raise InputError("no input given; give --input PATH (a folder, image file, glob or TIFF stack)")
    if any(not text.strip() for text in texts):
        raise InputError("empty --input or --output path; give a folder, file or glob (an unset variable?)")
    return texts


def _check_output_dir(out_dir: Path, files: list[Path]) -> None:
    """``InputError`` when ``out_dir`` exists but is not a folder, or is the folder of an input (masks would
    mix with the images and be read as inputs next time); checked before any work is done."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder; give a folder for --output")
    if any(_real(f.parent) == _real(out_dir) for f in files):
        raise InputError(f"{out_dir}: is the input folder; masks would mix with the images, choose another --output")


def _prepare_folders(out_dir: Path, items: list[Item], todo: list[Item]) -> list[Path]:
    """Create ``out_dir`` and the output folders of ``todo``; delete temporaries a killed earlier run left for
    ``items``. Returns the folders this call created, deepest first."""
    wanted = sorted({out_dir, *(p.parent for item in todo for p in item.outputs())}, key=lambda p: len(p.parts))
    created = [folder for folder in wanted if not folder.exists()]
    for folder in wanted:
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
    return created[::-1]


def _remove_new(record: Path | None, created: list[Path]) -> None:
    """Undo a run that wrote no output: the resume record it created (``record``; None when one was there
    before, describing earlier outputs) and the folders it created, where they are empty."""
    if record is not None:
        record.unlink(missing_ok=True)
    for folder in created:
        with contextlib.suppress(OSError):  # not empty: something else lives there, keep it
            folder.rmdir()


def resolve_inputs(inputs: Inputs) -> list[Path]:
    """Image files named by ``inputs``: each a folder (its images, sorted), a file, or a glob pattern (its
    image matches, sorted), in the order given. A file named twice (the same name in the same real folder,
    however spelt: ``in/a.png``, ``in/../in/a.png``, through a link to ``in``) is listed once; a link named
    ``b.png`` to ``a.png`` is another input, with its own outputs. Raises ``InputError`` for the first input
    that is missing, empty or not a file/folder."""
    files, seen = [], set()
    for text in input_texts(inputs):
        for path in _resolve_one(text):
            key = (_real(path.parent), path.name)
            if key not in seen:
                seen.add(key)
                files.append(path)
    return files


def _resolve_one(text: str) -> list[Path]:
    """Image files named by one path or glob ``text``; see ``resolve_inputs``."""
    path = Path(text)
    if path.is_dir():
        return list_images(path)
    if path.is_file():
        return [path]
    if any(char in text for char in _GLOB_CHARS):  # a link to a folder (or a loop) can reach one file many
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True))  # ways: resolve_inputs keeps one
        files = [match for match in matches if match.is_file() and is_image_file(match)]
        if not files:
            raise InputError(f"{text}: the pattern matches no PNG/JPEG/TIFF image")
        return files
    if path.exists() or path.is_symlink():
        raise InputError(f"{text}: not a regular file or folder (a FIFO, device or broken link); give images")
    raise InputError(f"{text}: no such file or folder")


def default_output(inputs: Inputs) -> Path:
    """``runs/infer/<name>``: the input folder's name, the file's stem, or the glob's parent folder name.

    Several inputs: the name of the folder holding them all (the one folder of a shell-expanded glob, so
    ``dir/*.png`` quoted or not gives ``runs/infer/dir``; the nearest common folder otherwise)."""
    texts = input_texts(inputs)
    if len(texts) == 1:
        path = _glob_root(texts[0])
    else:
        roots = [_glob_root(text) for text in texts]
        path = Path(os.path.commonpath([(root if root.is_dir() else root.parent).resolve() for root in roots]))
    if path.is_dir():
        resolved = path.resolve()  # "test/image" -> "test-image": dataset folders are all called "image"
        name = f"{resolved.parent.name}-{resolved.name}" if resolved.name == "image" else resolved.name
    else:
        name = path.stem
    return Path("runs") / "infer" / (name or "input")


def _glob_root(text: str) -> Path:
    """``text`` as a path; for a glob that names no file, its last parent folder without glob characters."""
    path = Path(text)
    if any(char in text for char in _GLOB_CHARS) and not path.exists():
        path = next((p for p in path.parents if not any(c in str(p) for c in _GLOB_CHARS)), Path("."))
    return path


def plan_outputs(
    files: list[Path], out_dir: Path, save_prob: bool, overlay: bool
) -> tuple[list[Item], list[str]]:
    """One ``Item`` per input whose output names are free; failures (one line each) for the rest. Raises
    ``InputError`` when an output would overwrite an input, or files in different folders share a stem (see
    the module docstring); a stem shared within one folder (``a.png``, ``a.tif``) fails the later file only."""
    inputs = {_real(f) for f in files}
    items, failures, owner, clashes = [], [], {}, []
    for source in files:
        mask_suffix = ".tif" if _is_stack(source) else ".png"
        mask = out_dir / f"{source.stem}{mask_suffix}"
        item = Item(source, mask, prob_path(mask) if save_prob else None, overlay_path(mask) if overlay else None)
        taken = owner.get(_real(out_dir) / source.stem)
        if taken is not None and _real(taken.parent) != _real(source.parent):
            clashes.append((item, taken))
            continue
        problem = _name_problem(item, out_dir, inputs, taken)
        if problem:
            failures.append(f"{source}: {problem}")
            continue
        owner.update({_real(p): source for p in item.outputs()})
        owner[_real(out_dir) / source.stem] = source
        items.append(item)
    if clashes:
        first, taken = clashes[0]
        more = f" ({len(clashes)} files clash in all)" if len(clashes) > 1 else ""
        raise InputError(f"{first.source}: same name as {taken} in another folder; both would write {first.mask}"
                         f"{more}; rename one, or give each folder its own --output")
    return items, failures


def _name_problem(item: Item, out_dir: Path, inputs: set[Path], taken: Path | None) -> str | None:
    """Why ``item`` cannot be written (a failure line), given ``taken``: the earlier input of its stem."""
    root = _real(out_dir)
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
            return tiff_page_count(tif) > 1
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
