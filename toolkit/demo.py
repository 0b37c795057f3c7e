"""``run_demo``: the whole toolkit on one page — data, training, export with parity, tiled inference on a
large mosaic, the test slices as a volume on Dask, evaluation, figures and ``report.md`` — with no dataset
needed (it synthesises one).

Rerun into the same ``out``, it reuses the synthetic data and continues the training run (up to the new
budget); the later stages run again. ``out/demo.json`` records the data, seed and width it was made with, and
a rerun that asks for others is refused rather than mixing two demos.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg.runtime.atomic import write_json_atomic, write_text_atomic
from seg.runtime.errors import InputError
from seg.runtime.io import list_images, read_image, write_image
from seg.train import runs

Say = Callable[[str], None]
VOLUME_TOLERANCE = 1e-5
"""Largest |difference| between the volume run's float32 probability and ``Segmenter.predict``'s."""


@dataclass
class DemoReport:
    """Numbers from every stage, as written into ``report.md``."""

    out: Path
    data: Path
    numbers: dict[str, Any] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)


def run_demo(out: Path = Path("runs/demo"), data: Path | None = None, budget_s: float = 240.0, seed: int = 0,
             width: int = 16, say: Say = print, progress: bool = True, synth: tuple[int, int] = (30, 512),
             ) -> DemoReport:
    """Run every stage into ``out`` and return the report; ``budget_s`` bounds the training time.
    ``synth`` = (number of slices, size) of the synthetic data made when ``data`` is None.

    Raises ``InputError`` for a ``budget_s`` that is not positive, a ``data`` folder the demo cannot use, or an
    ``out`` that holds a demo made with other data, seed or width."""
    if not budget_s > 0:
        raise InputError(f"--budget {budget_s:g}: must be a positive number of seconds, e.g. 240")
    if data is not None:
        _check_dataset(data)
    _claim_out(out, data, seed, width)
    (out / "report.md").unlink(missing_ok=True)  # a rerun that fails leaves no report of the last one
    report = DemoReport(out, _data_stage(out, data, seed, say, synth))
    run_dir = _train_stage(report, budget_s, seed, width, say, progress)
    model = _export_stage(report, run_dir, say)
    _infer_stage(report, model, say)
    _volume_stage(report, model, say)
    _evaluate_stage(report, model, run_dir, say)
    write_text_atomic(out / "report.md", render_report(report))
    say(f"report: {out / 'report.md'}")
    return report


def _check_dataset(data: Path) -> None:
    """Refuse, before any work, a dataset the later stages cannot use: no such folder, or the ISBI stacks
    (training reads them, but export and inference take folders of slices)."""
    from seg.export.parity import image_paths

    image_paths(data)  # raises InputError naming the folder and the fix


def _claim_out(out: Path, data: Path | None, seed: int, width: int) -> None:
    """Record in ``out/demo.json`` what this demo is made of; refuse an ``out`` holding a demo made of
    something else, which a rerun would otherwise resume and mix with the new settings."""
    settings = {"data": str(data.resolve()) if data is not None else None, "seed": seed, "width": width}
    record = out / "demo.json"
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: is a file; give a folder for the demo")
    if record.is_file():
        before = runs.read_json(record)
        changed = [f"{key} {before.get(key)} -> {value}" for key, value in settings.items() if before.get(key) != value]
        if changed:
            raise InputError(f"--out {out}: holds a demo made with other settings ({'; '.join(changed)}); pass "
                             "another --out, or delete that folder to start over")
        return
    if (out / "runs" / "demo" / runs.CONFIG).is_file() or (out / "data").is_dir():
        raise InputError(f"--out {out}: holds an earlier demo whose settings were not recorded; pass another "
                         "--out, or delete that folder to start over")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, settings)


def _data_stage(out: Path, data: Path | None, seed: int, say: Say, synth: tuple[int, int]) -> Path:
    if data is not None:
        say(f"data: using {data}")
        return data
    target = out / "data"
    if (target / "train" / "image").is_dir():
        say(f"data: reusing synthetic slices in {target}")
        return target
    from seg.toolkit.data.synth import synthesize

    summary = synthesize(target, n=synth[0], size=synth[1], seed=seed)
    say(f"data: {summary.n_train} train + {summary.n_test} test synthetic slices in {target} "
        f"({summary.seconds:.1f}s)")
    return target


def _train_stage(report: DemoReport, budget_s: float, seed: int, width: int, say: Say, progress: bool) -> Path:
    from seg import train
    from seg.train.models import ModelSpec

    run_dir = report.out / "runs" / "demo"
    start = time.perf_counter()
    if (run_dir / runs.CONFIG).is_file():  # started before: resume (from scratch if no epoch finished)
        result = train.resume(run_dir, progress=progress, time_budget=budget_s)
    else:
        spec = ModelSpec(width=width)
        config = train.TrainConfig(data=str(report.data), model=spec, time_budget=budget_s, seed=seed,
                                   crop=_crop_for(report.data, spec.size_multiple), runs_root=str(run_dir.parent),
                                   name=run_dir.name)
        result = train.fit(config, progress=progress)
    seconds = time.perf_counter() - start
    from seg.toolkit.evaluation.figures import write_run_figures

    report.figures += write_run_figures(result.run_dir)
    report.numbers["train"] = {"epochs": result.epochs, "best_epoch": result.best_epoch, "device": result.device,
                               "val_mse": result.val_mse, "val_f1": result.val_f1, "crops_per_s": result.crops_per_s}
    say(f"train: {result.epochs} epochs on {result.device} in {seconds:.0f}s (budget {budget_s:g}s), "
        f"val membrane F1 {result.val_f1:.3f} (best epoch {result.best_epoch})")
    return result.run_dir


def _crop_for(data: Path, multiple: int, largest: int = 256) -> int:
    """The training crop: ``largest`` px, or less on smaller slices (a multiple of ``multiple``, the model's
    size multiple), so the demo runs on any dataset without a crop option of its own."""
    from PIL import Image

    smallest = largest
    for path in list_images(data / "train" / "image"):
        with Image.open(path) as image:
            smallest = min(smallest, *image.size)
    crop = smallest // multiple * multiple
    if crop < multiple:
        raise InputError(f"{data / 'train' / 'image'}: a slice of {smallest} px is smaller than the U-Net's "
                         f"{multiple}-px size multiple; give the demo slices of at least {multiple} px")
    return crop


def _export_stage(report: DemoReport, run_dir: Path, say: Say) -> Path:
    from seg.export import to_onnx

    model = report.out / "model.onnx"
    result = to_onnx(run_dir, model)
    parity = result.parity
    report.numbers["export"] = {"max_abs_diff": parity.max_abs_diff, "mean_abs_diff": parity.mean_abs_diff,
                                "mask_agreement": parity.mask_agreement, "passed": parity.passed,
                                "size_bytes": result.size_bytes}
    say(f"export: {model} ({result.size_bytes / 1e6:.1f} MB), parity passed: max |d| {parity.max_abs_diff:.1e}, "
        f"mask agreement {parity.mask_agreement:.4%}")
    return model


def make_mosaic(images: list[Path], grid: int = 3) -> np.ndarray:
    """A ``(grid*H, grid*W)`` uint8 mosaic of the first ``grid**2`` images (repeated when fewer); images of
    another size than the first are left out."""
    first = read_image(images[0])
    same = [first] + [image for image in map(read_image, images[1:grid * grid]) if image.shape == first.shape]
    tiles = [same[i % len(same)] for i in range(grid * grid)]
    rows = [np.concatenate(tiles[r * grid:(r + 1) * grid], axis=1) for r in range(grid)]
    return np.concatenate(rows, axis=0)


def _infer_stage(report: DemoReport, model: Path, say: Say) -> None:
    from seg.runtime.folders import segment_paths

    folder = report.data / "test" / "image"
    sources = list_images(folder if folder.is_dir() else report.data / "train" / "image")
    mosaic_dir = report.out / "mosaic"
    mosaic_dir.mkdir(exist_ok=True)
    write_image(mosaic_dir / "mosaic.png", make_mosaic(sources))
    summary = segment_paths(mosaic_dir / "mosaic.png", model, report.out / "masks", provider="auto",
                            overlay=True, overwrite=True)
    report.numbers["infer"] = {"images": summary.images, "provider": summary.provider,
                               "seconds": summary.seconds}
    report.figures += sorted((report.out / "masks" / "overlay").glob("*.png"))
    height, width = read_image(mosaic_dir / "mosaic.png").shape
    say(f"infer: {width}x{height} mosaic tiled on {summary.provider} in {summary.seconds:.1f}s "
        f"-> {report.out / 'masks'}")


def _volume_stage(report: DemoReport, model: Path, say: Say, workers: int = 2, limit: int = 16) -> None:
    """Up to ``limit`` test slices of one shape as a ``(N, H, W)`` Zarr, segmented by ``segment_volume`` on a
    ``workers``-process LocalCluster (CPU, 512-pixel blocks, float32 probability) and checked against
    ``Segmenter.predict`` on each whole slice (``max_abs_diff``; the same answer within ``VOLUME_TOLERANCE``).
    Skipped, saying so, without the ``[volume]`` extra (dask, zarr)."""
    import importlib.util

    if any(importlib.util.find_spec(name) is None for name in ("distributed", "zarr")):
        say('volume: skipped (needs dask and zarr: pip install -e ".[volume]")')
        return
    import zarr

    from seg.runtime.segmenter import Segmenter
    from seg.runtime.volume.dask_run import segment_volume

    kind = "test" if (report.data / "test" / "image").is_dir() else "train"
    images = [read_image(p) for p in list_images(report.data / kind / "image")]
    stack = np.stack([image for image in images if image.shape == images[0].shape][:limit])  # (N, H, W)
    (report.out / "volume").mkdir(exist_ok=True)
    source, output = report.out / "volume" / "slices.zarr", report.out / "volume" / "seg.zarr"
    array = zarr.create_array(store=str(source), shape=stack.shape, dtype=stack.dtype, zarr_format=3,
                              chunks=(1, *(min(512, side) for side in stack.shape[1:])), overwrite=True)
    array[...] = stack
    summary = segment_volume(source, model, output, workers=workers, threads_per_worker=1, block=512,
                             provider="cpu", prob_dtype="float32", overwrite=True)
    with Segmenter(model, provider="cpu") as seg:
        reference = seg.predict_stack(stack)  # (N, H, W) float32
    diff = float(np.abs(zarr.open_array(str(output / "0"), mode="r")[...] - reference).max())
    same = diff <= VOLUME_TOLERANCE
    report.numbers["volume"] = {"shape": " x ".join(map(str, stack.shape)), "workers": workers,
                                "blocks": summary.blocks, "seconds": summary.seconds,
                                "voxels_per_s": summary.voxels_per_s, "max_abs_diff": diff,
                                "same_as_segmenter_predict": same}
    say(f"volume: {len(stack)} {kind} slices as a {' x '.join(map(str, stack.shape))} Zarr, segment_volume on "
        f"{workers} CPU workers in {summary.seconds:.1f}s -> {output}; max |d| vs Segmenter.predict {diff:.1e} "
        f"({'the same answer' if same else 'DIFFERENT'})")


def _evaluate_stage(report: DemoReport, model: Path, run_dir: Path, say: Say) -> None:
    from seg.toolkit.evaluation.evaluate import evaluate

    has_test_labels = (report.data / "test" / "label").is_dir()
    split = "test" if has_test_labels else "val"
    result = evaluate(model, report.data, split, figures=report.out / "figures", run=run_dir)  # its held-out slices
    report.figures += [Path(p) for p in result.figures]
    report.numbers["evaluate"] = {"split": split, "slices": len(result.slice_names),
                                  **{k: result.scores[k] for k in ("mse", "pixel_error", "membrane_f1",
                                                                   "membrane_iou", "v_rand", "v_info")}}
    scores = result.scores
    say(f"evaluate ({split}, {len(result.slice_names)} held-out slices): membrane F1 {scores['membrane_f1']:.3f}, "
        f"V_rand {scores['v_rand']:.3f}, V_info {scores['v_info']:.3f}")


def render_report(report: DemoReport) -> str:
    """``report.md``: every number of every stage and links to the figures (relative to ``report.out``)."""
    lines = ["# seg demo report", "", f"Data: `{report.data}`", ""]
    for stage, numbers in report.numbers.items():
        lines += [f"## {stage}", "", "| quantity | value |", "|---|---|"]
        lines += [f"| {key} | {_fmt(value)} |" for key, value in numbers.items()]
        lines.append("")
    lines += ["## Figures", ""]
    for path in report.figures:
        relative = Path(path).resolve().relative_to(report.out.resolve())
        lines.append(f"![{relative.stem}]({relative.as_posix()})")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return str(value)
