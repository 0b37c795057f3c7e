"""The parity gate: the same normalised, padded images through Keras and through onnxruntime.

Images come from a dataset folder (``DIR/train/image`` + ``DIR/train/label``) or a plain image folder:
the run's validation slices first, then a few more, plus one odd-size ``768x1024`` mosaic of real slices.
Every array here is ``(H, W) float32 in [0, 1]`` unless stated otherwise.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg.export import portable
from seg.runtime.errors import InputError, SegWarning
from seg.runtime.io import list_images, read_image
from seg.runtime.preprocess import binarize_label, normalize
from seg.runtime.providers import make_session
from seg.runtime.scores import mask_agreement
from seg.runtime.tiling import pad_to_multiple

STACK_IMAGES, STACK_LABELS = "train-volume.tif", "train-labels.tif"
"""The ISBI 2012 stacks ``seg train`` also reads (``seg.train.data``); the gate reads slices, not stacks."""

ODD_SIZE = (768, 1024)
BATCH = 4
MAX_CALIB = 8


@dataclass(frozen=True)
class ImageSet:
    """Real images for a gate: ``images[i]`` ``(H, W) float32 in [0, 1]``, ``labels[i]`` ``(H, W) float32``
    (1.0 = interior) or None."""

    source: str
    names: list[str]
    images: list[np.ndarray]
    labels: list[np.ndarray | None]


@dataclass(frozen=True)
class ImageParity:
    name: str
    height: int
    width: int
    max_abs_diff: float
    mean_abs_diff: float
    mask_agreement: float


@dataclass
class ParityReport:
    """Keras vs onnxruntime on the same arrays. ``passed`` is False with a one-line ``reason`` otherwise."""

    atol: float
    min_agreement: float
    threshold: float
    max_abs_diff: float
    mean_abs_diff: float
    mask_agreement: float
    batch4_max_abs_diff: float
    images: list[ImageParity] = field(default_factory=list)
    source: str = ""
    second_host: str = ""  # e.g. "OpenCV DNN 5.0.0"; "" when no second host could be run
    second_host_max_abs_diff: float | None = None  # max |second host - onnxruntime| over the same images
    reason: str = ""

    @property
    def passed(self) -> bool:
        return not self.reason

    def to_dict(self, model: Path) -> dict[str, Any]:
        summary = {k: v for k, v in asdict(self).items() if k != "images"}
        return {"model": model.name, "kind": "fp32 keras-vs-onnx", "passed": self.passed, **summary,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "images": [asdict(item) for item in self.images]}


def report_path(out: Path) -> Path:
    """``model.onnx`` -> ``model.parity.json`` beside it."""
    return out.with_name(f"{out.stem}.parity.json")


def load_images(data: Path, config: dict[str, Any], max_images: int = 8) -> ImageSet:
    """The gate's images from ``data``: the run's ``val_slices`` first (when ``data`` is the run's
    dataset), then the others, ``max_images`` in all, plus one ``768x1024`` mosaic of real slices.
    Raises ``InputError`` when ``data`` is missing or holds no images, or a label's shape is not its image's."""
    paths, label_dir = image_paths(data)
    paths = _validation_first(paths, config, data)[:max(1, max_images)]
    image_set = _read(paths, label_dir, str(data))
    name, image, label = _mosaic(image_set)
    return ImageSet(image_set.source, [*image_set.names, name], [*image_set.images, image],
                    [*image_set.labels, label])


def load_calibration(calib: str | Path | None, gate: ImageSet, data: Path) -> ImageSet:
    """INT8 calibration images (labels are not read): up to ``MAX_CALIB`` from ``calib`` (default: the
    dataset ``data``), leaving out the files the gate scores, so the INT8 gate is not judged on its own
    calibration data. When every image is one of the gate's, it calibrates on those, with a ``SegWarning``
    and ``source`` saying so. Raises ``InputError`` when ``calib`` does not exist or holds no images."""
    source = data if calib is None else Path(calib)
    paths, _ = image_paths(source, flag="--data" if calib is None else "--calib")
    dataset = paths if calib is None else image_paths(data)[0]
    gated = {path.resolve() for path in dataset if path.stem in gate.names}
    unused = [path for path in paths if path.resolve() not in gated]
    if unused:
        return _read(unused[:MAX_CALIB], None, str(source))
    warnings.warn(f"{source}: every image is one of the parity gate's, so INT8 calibrates on the images it is "
                  "gated on; pass --calib DIR with other images of the same kind", SegWarning, stacklevel=2)
    return _read(paths[:MAX_CALIB], None, f"{source} (the gate's own images: no others)")


def image_paths(data: Path, flag: str = "--data") -> tuple[list[Path], Path | None]:
    """Image files of a dataset (``DIR/train/image``) or an image folder, and the label folder if any;
    ``flag`` is the option that named ``data``, for the errors."""
    if not data.exists():
        raise InputError(f"{data}: no such folder; give {flag} a dataset folder (DIR/train/image) or image folder")
    image_dir = data / "train" / "image" if (data / "train" / "image").is_dir() else data
    if image_dir == data and (data / STACK_IMAGES).is_file():
        raise InputError(f"{data}: holds the ISBI stacks ({STACK_IMAGES}), not slices; give {flag} a folder of "
                         f"slices, e.g. from: seg data import {data / STACK_IMAGES} {data / STACK_LABELS} DIR")
    label_dir = image_dir.parent / "label"
    return list_images(image_dir), label_dir if label_dir.is_dir() else None


def _validation_first(paths: list[Path], config: dict[str, Any], data: Path) -> list[Path]:
    """``paths`` with the run's validation slices first, when ``data`` is the run's dataset. Runs record each
    slice's source file (``/data/train/image/04.png``); older ones recorded its name (``04``) or index."""
    run_data = config.get("data", {})
    same = run_data.get("dir") and Path(run_data["dir"]).resolve() == data.resolve()
    wanted = {str(v) for v in run_data.get("val_slices", [])} if same else set()
    files = {str(Path(v).resolve()) for v in wanted if Path(v).suffix}
    val = [p for i, p in enumerate(paths) if str(p.resolve()) in files or p.stem in wanted or str(i) in wanted]
    return val + [p for p in paths if p not in val]


def _read(paths: list[Path], label_dir: Path | None, source: str) -> ImageSet:
    """Images (and, with ``label_dir``, the label of the same stem or None) as an ``ImageSet``.

    Raises ``InputError`` for a label whose shape is not its image's."""
    images = [normalize(read_image(p), name=str(p)) for p in paths]
    labels = [_label_for(path, image, label_dir) for path, image in zip(paths, images, strict=True)]
    return ImageSet(source, [p.stem for p in paths], images, labels)


def _label_for(path: Path, image: np.ndarray, label_dir: Path | None) -> np.ndarray | None:
    """The ``(H, W) float32`` label of ``path`` (1.0 = interior) from ``label_dir``, or None if it has none."""
    matches = sorted(label_dir.glob(f"{path.stem}.*")) if label_dir else []
    if not matches:
        return None
    label = binarize_label(read_image(matches[0]), name=str(matches[0]))
    if label.shape != image.shape:
        raise InputError(f"{matches[0]}: label is {_size(label.shape)} (HxW) but its image {path} is "
                         f"{_size(image.shape)}; give the label the image's height and width, or remove it")
    return label


def _size(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def _mosaic(image_set: ImageSet) -> tuple[str, np.ndarray, np.ndarray | None]:
    """A ``768x1024`` image (and label) from a 2x2 mosaic of real slices, mirrored where too small."""
    pick = [i % len(image_set.images) for i in range(4)]
    shapes = {image_set.images[i].shape for i in pick}
    pick = pick if len(shapes) == 1 else [0, 0, 0, 0]

    def tile(arrays: list[np.ndarray]) -> np.ndarray:
        canvas = np.block([[arrays[0], arrays[1]], [arrays[2], arrays[3]]])
        extra = [(0, max(0, want - have)) for want, have in zip(ODD_SIZE, canvas.shape, strict=True)]
        return np.pad(canvas, extra, mode="symmetric")[: ODD_SIZE[0], : ODD_SIZE[1]].astype(np.float32)

    labels = [image_set.labels[i] for i in pick]
    label = tile(labels) if all(lab is not None for lab in labels) else None
    return f"mosaic-{ODD_SIZE[0]}x{ODD_SIZE[1]}", tile([image_set.images[i] for i in pick]), label


def run_onnx(session: Any, batch: np.ndarray) -> np.ndarray:
    """``(N, H, W, 1) float32`` in [0, 1] through an onnxruntime session -> ``(N, H, W, 1) float32``. A model
    that takes uint8 pixels (the ``u8`` variant) gets ``round(batch * 255)``: exact for 8-bit images."""
    first = session.get_inputs()[0]
    if first.type == "tensor(uint8)":
        batch = np.rint(np.asarray(batch, np.float32) * 255.0).astype(np.uint8)
    return np.asarray(session.run(None, {first.name: np.ascontiguousarray(batch)})[0], np.float32)


def predict_pairs(reference: Any, candidate: Any, images: list[np.ndarray], multiple: int
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(reference, candidate)`` probabilities ``(H, W)`` per image, cropped back to the image size.

    ``reference`` and ``candidate`` are callables taking ``(1, H', W', 1)`` padded arrays."""
    pairs = []
    for image in images:
        batch = pad_to_multiple(image, multiple)[None, :, :, None]
        height, width = image.shape
        pairs.append((reference(batch)[0, :height, :width, 0], candidate(batch)[0, :height, :width, 0]))
    return pairs


def check(model: Any, model_bytes: bytes, image_set: ImageSet, multiple: int, threshold: float,
          atol: float, min_agreement: float) -> ParityReport:
    """Compare Keras ``model.predict`` with onnxruntime (CPU) on ``model_bytes`` for every image and a
    batch of 4; the report's ``reason`` names the first failed criterion."""
    session = make_session(model_bytes, provider="cpu")
    keras_fn = lambda batch: model.predict(batch, verbose=0)  # noqa: E731
    pairs = predict_pairs(keras_fn, lambda batch: run_onnx(session, batch), image_set.images, multiple)
    rows = [_row(name, ref, got, threshold) for name, (ref, got) in zip(image_set.names, pairs, strict=True)]
    diffs = np.concatenate([np.abs(ref - got).ravel() for ref, got in pairs])
    agreement = float(np.mean(np.concatenate([((r >= threshold) == (g >= threshold)).ravel() for r, g in pairs])))
    report = ParityReport(atol, min_agreement, threshold, float(diffs.max()), float(diffs.mean()), agreement,
                          _batch_diff(model, session, image_set.images, multiple), rows, image_set.source)
    _second_host(report, model_bytes, image_set.images, multiple, [got for _, got in pairs])
    report.reason = _reason(report)
    return report


def _second_host(report: ParityReport, model_bytes: bytes, images: list[np.ndarray], multiple: int,
                 onnxruntime_probs: list[np.ndarray]) -> None:
    """Run the model in OpenCV DNN too (the same gate: max |Δ| against onnxruntime <= atol); without OpenCV
    installed, one ``SegWarning`` says the check did not run."""
    version = portable.opencv_version()
    if version is None:
        warnings.warn("second ONNX host not checked: OpenCV is not installed (pip install opencv-python-headless)",
                      SegWarning, stacklevel=3)
        return
    report.second_host = f"OpenCV DNN {version}"
    report.second_host_max_abs_diff = portable.second_host_diff(model_bytes, images, multiple, onnxruntime_probs)


def _row(name: str, ref: np.ndarray, got: np.ndarray, threshold: float) -> ImageParity:
    diff = np.abs(ref - got)
    return ImageParity(name, ref.shape[0], ref.shape[1], float(diff.max()), float(diff.mean()),
                       mask_agreement(ref, got, threshold))


def _batch_diff(model: Any, session: Any, images: list[np.ndarray], multiple: int) -> float:
    """Max |Δ| between Keras and onnxruntime on one batch of 4 same-size images."""
    padded = [pad_to_multiple(image, multiple) for image in images]
    same = [image for image in padded if image.shape == padded[0].shape]
    batch = np.stack([same[i % len(same)] for i in range(BATCH)])[..., None]
    if len(same) < BATCH:  # make the repeated items differ so batch mixing would show
        batch = batch * np.linspace(1.0, 0.7, BATCH, dtype=np.float32)[:, None, None, None]
    return float(np.abs(model.predict(batch, verbose=0) - run_onnx(session, batch)).max())


def _reason(report: ParityReport) -> str:
    worst = max(report.images, key=lambda row: row.max_abs_diff)
    if report.max_abs_diff > report.atol:
        return f"max |Δ| {report.max_abs_diff:.3g} > atol {report.atol:g} on {worst.name}"
    if report.mask_agreement < report.min_agreement:
        return f"mask agreement {report.mask_agreement:.4%} < {report.min_agreement:.2%}"
    if report.batch4_max_abs_diff > report.atol:
        return f"batch-4 max |Δ| {report.batch4_max_abs_diff:.3g} > atol {report.atol:g}"
    second = report.second_host_max_abs_diff
    if second is not None and second > report.atol:
        return f"{report.second_host} differs from onnxruntime by max |Δ| {second:.3g} > atol {report.atol:g}"
    return ""
