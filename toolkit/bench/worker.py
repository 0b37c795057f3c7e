"""One benchmark configuration, measured in a fresh process so that its peak RSS is its own.

``python -m seg.toolkit.bench.worker SPEC.json RESULT.json`` reads a ``Spec`` (as JSON), measures it and writes
a JSON dict: ``compute_ips`` / ``e2e_ips`` (images per second, median over repeats after one warm-up
pass; end-to-end over a folder of at least ``E2E_FILES`` files), ``latency_ms`` (p50/p95 of one image at
batch 1), ``peak_rss_mb`` (``ru_maxrss`` of this process:
interpreter, libraries, model and data included), ``providers`` (what really ran) and, for the large-image
run, ``seconds``. Any ``SegError`` becomes ``{"error": "<one line>", "error_kind": "ProviderError"|...}`` (the
parent prints it in the row).

Engines: ``onnx`` (``seg.runtime.Segmenter`` + ``segment_paths``), ``keras`` (``model.predict``, the baseline a
user would otherwise run), ``large`` (one ``size x size`` uint8 image through the tiled ``Segmenter``) and
``paired`` (FP32 against a variant, alternating in one process, for a speed-up that load drift cannot bend).
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg.runtime.errors import SegError


@dataclass
class Spec:
    """What to measure. ``images``: input files (all the same size); ``labelled``: files to predict and save
    as ``(N, H, W) float32`` probabilities in ``probs_out`` for scoring by the parent."""

    engine: str
    model: str
    provider: str = "cpu"
    batch: int = 1
    images: list[str] = field(default_factory=list)
    labelled: list[str] = field(default_factory=list)
    probs_out: str = ""
    repeats: int = 3
    latency_runs: int = 0
    threads: int | None = None
    size: int = 0
    other: str = ""
    streams: int | None = 1  # Segmenter(streams=...): None = one per core on the CPU, 2 on CUDA


def peak_rss_mb() -> float:
    """Peak resident set size of this process image in MiB.

    Linux's ``VmHWM`` (``/proc/self/status``) starts afresh at exec. ``ru_maxrss`` does not: it keeps the
    high-water mark of the process that forked this worker (a 2 GB pytest run made every worker look 2 GB),
    so it is only the fallback where ``/proc`` is missing (it is in KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median_rate(run: Any, images: int, repeats: int) -> float:
    """Images per second of ``run()`` (which processes ``images`` images): median of ``repeats`` after 1 warm-up."""
    run()
    return images / float(np.median([_seconds(run) for _ in range(max(1, repeats))]))


def measure_onnx(spec: Spec) -> dict[str, Any]:
    """Compute-only, end-to-end, latency and (optionally) probabilities of one ONNX model/provider/batch, all
    through ``Segmenter``: compute is the time its ``session.run`` calls take (``Segmenter.stats``) over the
    images held in memory, end-to-end is ``segment_paths`` from files to written masks."""
    from seg.runtime import Segmenter, read_image, segment_paths

    seg = Segmenter(spec.model, provider=spec.provider, batch_size=spec.batch, threads=spec.threads,
                    streams=spec.streams)
    images = [read_image(p) for p in spec.images]
    result: dict[str, Any] = {"providers": seg.providers, "tile": seg.tile_for(*images[0].shape),
                              "streams": seg.streams, "pixels_per_image": computed_pixels(seg, images)}
    result["compute_ips"] = compute_rate(seg, images, spec.repeats)
    with tempfile.TemporaryDirectory(prefix="seg-bench-") as folder:
        files = folder_of(spec.images)
        source = _linked_inputs(files, Path(folder) / "in")
        run = lambda: segment_paths(source, segmenter=seg, output_dir=Path(folder) / "out", overwrite=True)  # noqa: E731
        result["e2e_ips"] = median_rate(run, len(files), spec.repeats)
    result["peak_rss_mb"] = peak_rss_mb()  # this configuration's own: before latency and scoring add sessions
    if spec.latency_runs:
        single = Segmenter(spec.model, provider=spec.provider, batch_size=1, threads=spec.threads,
                           streams=spec.streams)
        result["latency_ms"] = latency(lambda: single.predict(images[0]), spec.latency_runs)
    if spec.labelled and spec.probs_out:
        probs = seg.predict_batch([read_image(p) for p in spec.labelled])
        np.save(spec.probs_out, np.stack(probs).astype(np.float32))
    return result


def computed_pixels(seg: Any, images: list[np.ndarray]) -> float:
    """Pixels the model computes per image, on average over ``images``, as ``seg`` (a ``Segmenter``) runs them:
    every tile of the grid it picks for each image's size (or the whole image padded to the size multiple),
    for each TTA transform. The network's FLOPs grow with exactly these pixels."""
    from seg.runtime.tiling import padded_length

    plan, total = seg.plan, 0
    for image in images:
        height, width = image.shape[:2]
        tile = seg.tile_for(height, width)
        total += (plan.grid_pixels(height, width, tile) if tile else
                  padded_length(height, 0, plan.multiple) * padded_length(width, 0, plan.multiple))
    return total * len(seg.transforms) / max(1, len(images))


def compute_seconds(seg: Any, images: list[np.ndarray]) -> float:
    """Seconds ``seg`` (a ``Segmenter``) spends inside onnxruntime to predict ``images`` (``(H, W)`` arrays):
    the time during which at least one of its ``session.run`` calls was going (its streams overlap)."""
    before = seg.stats.busy_s
    seg.predict_batch(images)
    return seg.stats.busy_s - before


def compute_rate(seg: Any, images: list[np.ndarray], repeats: int) -> float:
    """Images per second inside onnxruntime: median of ``repeats`` passes over ``images`` after one warm-up."""
    compute_seconds(seg, images)
    return len(images) / float(np.median([compute_seconds(seg, images) for _ in range(max(1, repeats))]))


def measure_paired(spec: Spec) -> dict[str, Any]:
    """FP32 (``model``) against a variant (``other``) in one process, compute-only at ``batch``, alternating
    pass by pass for ``repeats`` pairs: load that drifts during the run hits both alike, which separate
    processes minutes apart cannot promise. ``ratio`` is the median of the per-pair speed-ups of ``other``."""
    from seg.runtime import Segmenter, read_image

    images = [read_image(p) for p in spec.images]
    segmenters = [Segmenter(path, provider=spec.provider, batch_size=spec.batch, threads=spec.threads,
                            streams=spec.streams) for path in (spec.model, spec.other)]
    for seg in segmenters:
        compute_seconds(seg, images)  # warm-up
    pairs = [tuple(compute_seconds(seg, images) for seg in segmenters) for _ in range(max(3, spec.repeats))]
    base, other = (float(np.median(times)) for times in zip(*pairs, strict=True))
    return {"providers": segmenters[0].providers, "batch": spec.batch, "streams": segmenters[0].streams,
            "pairs": len(pairs),
            "fp32_ips": len(images) / base, "other_ips": len(images) / other,
            "ratio": float(np.median([b / o for b, o in pairs]))}


def _seconds(run: Any) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def latency(run: Any, runs: int) -> dict[str, float]:
    """``{"p50", "p95"}`` milliseconds of ``run()`` over ``runs`` calls after one warm-up call."""
    run()
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000.0)
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95))}


E2E_FILES = 32
"""End-to-end rates are timed over a folder of at least this many files (the timed images, repeated)."""


def folder_of(paths: list[str]) -> list[str]:
    """``paths`` repeated in order to at least ``E2E_FILES`` files. A run over a folder has a fixed cost
    (the first file is read before the model can start, the last written after it stops); over a folder of
    a few files that cost would be counted as a per-image cost no real folder of slices pays."""
    repeats = -(-E2E_FILES // max(1, len(paths)))
    return (list(paths) * repeats)[: max(E2E_FILES, len(paths))]


def _linked_inputs(paths: list[str], folder: Path) -> Path:
    """A folder of symlinks to ``paths`` (so ``segment_paths`` reads exactly these files, nothing copied); each
    link is numbered, since ``paths`` repeats files when more images are timed than the data set holds."""
    folder.mkdir(parents=True)
    for index, path in enumerate(paths):
        (folder / f"{index:04d}-{Path(path).name}").symlink_to(Path(path).resolve())
    return folder


def keras_on_cpu() -> None:
    """Hide any GPU from TensorFlow and JAX in this worker (before either is imported): Keras rows are CPU rows,
    scored against the CPU's peak and compared with onnxruntime on the CPU."""
    import os

    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    os.environ["JAX_PLATFORMS"] = "cpu"


def measure_keras(spec: Spec) -> dict[str, Any]:
    """Keras ``model.predict``: compute-only on prepared batches, end-to-end read -> predict -> write masks."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras_on_cpu()
    from seg.export import load_keras
    from seg.runtime import read_image, to_mask, write_image
    from seg.runtime.preprocess import normalize

    model = load_keras(Path(spec.model))
    stack = np.stack([normalize(read_image(p)) for p in spec.images])[..., None]  # (N, H, W, 1) float32
    result: dict[str, Any] = {"providers": ["keras"], "pixels_per_image": float(stack.shape[1] * stack.shape[2])}
    result["compute_ips"] = median_rate(lambda: model.predict(stack, batch_size=spec.batch, verbose=0),
                                        len(spec.images), spec.repeats)
    with tempfile.TemporaryDirectory(prefix="seg-bench-keras-") as folder:

        files = folder_of(spec.images)

        def end_to_end() -> None:
            pixels = np.stack([normalize(read_image(p)) for p in files])[..., None]
            probs = model.predict(pixels, batch_size=spec.batch, verbose=0)[..., 0]
            for index, (path, prob) in enumerate(zip(files, probs, strict=True)):
                write_image(Path(folder) / f"{index:04d}-{Path(path).stem}.png", to_mask(prob, 0.5))

        result["e2e_ips"] = median_rate(end_to_end, len(files), spec.repeats)
    if spec.labelled and spec.probs_out:
        pixels = np.stack([normalize(read_image(p)) for p in spec.labelled])[..., None]
        np.save(spec.probs_out, model.predict(pixels, batch_size=spec.batch, verbose=0)[..., 0].astype(np.float32))
    return result


def measure_large(spec: Spec) -> dict[str, Any]:
    """One ``size x size`` uint8 image (a real slice tiled) through the tiled ``Segmenter``, then to a mask."""
    from seg.runtime import Segmenter, read_image, to_mask

    seg = Segmenter(spec.model, provider=spec.provider, batch_size=spec.batch, threads=spec.threads)
    before = peak_rss_mb()
    slice_ = np.asarray(read_image(spec.images[0]))
    slice_ = slice_ if slice_.dtype == np.uint8 else (slice_ / max(1, slice_.max()) * 255).astype(np.uint8)
    reps = (-(-spec.size // slice_.shape[0]), -(-spec.size // slice_.shape[1]))
    image = np.ascontiguousarray(np.tile(slice_, reps)[: spec.size, : spec.size])  # (S, S) uint8
    start = time.perf_counter()
    mask = to_mask(seg.predict(image), seg.info.threshold)
    seconds = time.perf_counter() - start
    return {"providers": seg.providers, "seconds": seconds, "size": spec.size, "tiles": seg.stats.tiles,
            "mask_shape": list(mask.shape), "rss_before_mb": before, "tile": seg.tile_for(*image.shape),
            "batch": seg.batch_for(seg.tile_for(*image.shape)), "halo": seg.halo}


ENGINES = {"onnx": measure_onnx, "keras": measure_keras, "large": measure_large, "paired": measure_paired}


def main(argv: list[str]) -> int:
    """Measure the spec in ``argv[0]`` and write the result to ``argv[1]``; 0 even for reported errors."""
    spec = Spec(**json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    try:
        result = ENGINES[spec.engine](spec)
    except SegError as exc:
        result = {"error": str(exc), "error_kind": type(exc).__name__}
    result.setdefault("peak_rss_mb", peak_rss_mb())
    from seg.runtime.atomic import write_json_atomic

    write_json_atomic(argv[1], result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
