"""bioimage.io model packages: ``model.onnx`` -> ``model.bioimageio.zip`` that passes ``bioimageio test``.

``write_package`` stages the ONNX weights byte for byte (seg's ``seg.`` metadata stays inside them), a test
input ``(1, H, W, 1)`` (uint8 as read from an 8-bit PNG) and the ONNX output for it ``(1, H, W, 1) float32``,
a cover, a README and the parity report, describes them in a bioimage.io 0.5 ``rdf.yaml`` built with
``bioimageio.spec`` and zips them atomically. The spec (the ``zoo`` extra) is imported only here, inside
functions. The README and cover come from ``seg.export.bioimageio_docs``.

How seg's contract is written in the spec's terms:

- input ``image``, axes ``batch, y, x, channel`` (seg's NHWC), sizes ``min + n * step`` with ``step`` the
  model's size multiple and ``min`` at least ``2 * halo + step`` (so a block keeps a core after its halo);
- preprocessing ``ensure_dtype float64 -> scale_linear gain 1/255 -> ensure_dtype float32`` for uint8
  (1/65535 for uint16): bit for bit seg's dtype-range normalisation ``x / 255`` in float32, for every value.
  The product must be taken in float64 and then rounded once to float32: bioimageio.core multiplies a float32
  tensor by the gain in float32 (numpy's promotion rules), and ``float32(x) * float32(1/255)`` misses the
  correctly rounded ``x / 255`` by one ulp for 126 of the 256 uint8 values;
- output ``prob`` with the metadata's halo declared on ``y`` and ``x``, so the zoo's block-wise prediction
  crops what lacks context instead of showing seams.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seg.runtime.atomic import atomic_path
from seg.runtime.errors import InputError, SegError
from seg.runtime.io import write_image
from seg.runtime.metadata import ModelInfo
from seg.runtime.preprocess import normalize

if TYPE_CHECKING:
    from seg.export.convert import ExportReport
    from seg.export.parity import ImageSet

SUFFIX = ".bioimageio.zip"
INPUT_ID, OUTPUT_ID = "image", "prob"
MIN_SIDE = 64  # smallest block side offered to zoo tools, when the halo allows less
ZOO_FIX = 'pip install "seg-toolkit[zoo]"'
PYDANTIC_BREAKS = (2, 14)  # bioimageio.spec 0.5.12 fails to validate valid packages from pydantic 2.14 on


@dataclass(frozen=True)
class Staged:
    """The files of a package before zipping (all in one folder) and the facts the rdf needs about them."""

    weights: Path
    test_input: Path  # (1, H, W, 1) uint8 | uint16 | float32
    test_output: Path  # (1, H, W, 1) float32 in [0, 1]
    sample_input: Path  # the same slice as an image file (PNG, or TIFF for float32), for people and viewers
    sample_output: Path  # (H, W) float32 TIFF
    cover: Path
    readme: Path
    parity: Path | None
    dtype: str  # the test input's dtype: what the package declares as its input type


def package_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.bioimageio.zip`` beside it."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.stem + SUFFIX)


def check_available() -> None:
    """``InputError`` (exit 2, before an export starts) when ``bioimageio.spec`` is missing or sits beside a
    pydantic it cannot validate with; says how to fix it."""
    if importlib.util.find_spec("bioimageio") is None or importlib.util.find_spec("bioimageio.spec") is None:
        raise InputError(f"--bioimageio needs bioimageio.spec; fix: {ZOO_FIX}")
    spec_version = importlib.metadata.version("bioimageio.spec")
    pydantic_version = importlib.metadata.version("pydantic")
    if spec_version.startswith("0.5.12") and _release(pydantic_version) >= PYDANTIC_BREAKS:
        raise InputError(f"--bioimageio: bioimageio.spec {spec_version} cannot validate packages with pydantic "
                         f"{pydantic_version}; fix: pip install \"pydantic<2.14\" (or {ZOO_FIX})")


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def write_package(onnx_path: str | Path, report: ExportReport | ModelInfo, image_set: ImageSet,
                  out: str | Path | None = None, *, run_dir: str | Path | None = None,
                  license: str | None = None, authors: Sequence[str] = ("seg-toolkit",)) -> Path:
    """Write a bioimage.io model package for the exported ``onnx_path`` and return its path.

    ``report``: ``to_onnx``'s ``ExportReport`` (its parity goes into the README and the package) or just the
    model's ``ModelInfo``. ``image_set``: the gate's images; the first, cropped to a valid size, becomes the
    test input. ``out``: default ``package_path(onnx_path)``. ``run_dir``: the training run folder, whose
    ``config.json`` (recipe) and ``state.json`` (validation scores) the README quotes when present.
    ``license``: an SPDX id; default ``CC-BY-NC-4.0`` for weights trained on ISBI 2012 (its data are for
    non-commercial use), else ``MIT``. The zip is written atomically and re-validated by ``bioimageio.spec``.
    Raises ``InputError`` when the spec is not installed or ``onnx_path`` is unreadable, ``SegError`` when the
    spec rejects the description.
    """
    from seg.export import bioimageio_docs as docs

    check_available()
    onnx_path = Path(onnx_path)
    out = package_path(onnx_path) if out is None else Path(out)
    info, parity = (report, None) if isinstance(report, ModelInfo) else (report.info, report.parity)
    parity_json = None if isinstance(report, ModelInfo) else report.parity_path
    license = license or default_license(info)
    try:
        weights = onnx_path.read_bytes()
    except OSError as exc:
        raise InputError(f"{onnx_path}: cannot read the exported model ({exc.strerror or exc})") from None
    readme = functools.partial(docs.readme, info, parity, image_set, run_dir, onnx_path.name, license)
    with tempfile.TemporaryDirectory(prefix="seg-bioimageio-") as folder:
        staged = _stage(Path(folder), onnx_path.name, weights, info, image_set.images[0], readme, parity_json)
        with _rejected_by_spec(out):
            _save(_describe(staged, info, license, authors, docs.zoo_config(info, run_dir)), out)
    return out


def default_license(info: ModelInfo) -> str:
    """``CC-BY-NC-4.0`` for weights trained on ISBI 2012 (data for non-commercial use), else ``MIT``."""
    from seg.export import bioimageio_docs as docs

    return "CC-BY-NC-4.0" if docs.trained_on_isbi(info) else "MIT"


def _stage(folder: Path, name: str, weights: bytes, info: ModelInfo, image: np.ndarray,
           readme: Callable[[str], str], parity_json: Path | None) -> Staged:
    """Write the package's files into ``folder``: the weights as ``name``, test tensors and samples from
    ``image`` (``(H, W) float32 in [0, 1]``, cropped to a valid size), cover, ``readme(input dtype)``, the
    parity report."""
    from seg.export import bioimageio_docs as docs

    size_min, step, _ = sizes(info)
    raw = raw_pixels(valid_crop(image, size_min, step, largest=max(size_min, info.tile_size)))  # as read
    prob = onnx_output(weights, normalize(raw))  # (H, W) float32
    sample = "sample_input.tif" if raw.dtype.kind == "f" else "sample_input.png"
    paths = {key: folder / file for key, file in (
        ("test_input", "test_input.npy"), ("test_output", "test_output.npy"), ("sample_input", sample),
        ("sample_output", "sample_output.tif"), ("cover", "cover.png"), ("readme", "README.md"))}
    (folder / name).write_bytes(weights)
    np.save(paths["test_input"], raw[None, :, :, None])
    np.save(paths["test_output"], prob[None, :, :, None])
    write_image(paths["sample_input"], raw)
    write_image(paths["sample_output"], prob)
    docs.cover(normalize(raw), prob, paths["cover"])
    paths["readme"].write_text(readme(str(raw.dtype)), encoding="utf-8")
    staged_parity = None
    if parity_json is not None and parity_json.is_file():
        staged_parity = folder / parity_json.name
        staged_parity.write_bytes(parity_json.read_bytes())
    return Staged(folder / name, paths["test_input"], paths["test_output"], paths["sample_input"],
                  paths["sample_output"], paths["cover"], paths["readme"], staged_parity, str(raw.dtype))


def sizes(info: ModelInfo) -> tuple[int, int, int]:
    """``(min, step, halo)`` of the package's input sizes ``min + n * step``: ``step`` = the size multiple,
    ``min`` = the smallest multiple of it that is at least ``2 * halo + step`` and ``MIN_SIDE``."""
    step = max(1, info.size_multiple)
    halo = max(0, info.halo)
    size_min = math.ceil(max(2 * halo + step, MIN_SIDE) / step) * step
    return size_min, step, halo


def valid_crop(image: np.ndarray, size_min: int, step: int, largest: int | None = None) -> np.ndarray:
    """``(H, W)`` -> the top-left crop whose sides are the largest valid sizes ``min + n * step`` that fit
    in the image and in ``largest`` (reflect-padded up to ``min`` where a side is shorter), so a huge gate
    image does not make a huge package."""
    sides = []
    for length in image.shape:
        length = length if largest is None else min(length, largest)
        sides.append(size_min + max(0, (length - size_min) // step) * step)
    padded = np.pad(image, [(0, max(0, s - n)) for s, n in zip(sides, image.shape, strict=True)], mode="symmetric")
    return np.ascontiguousarray(padded[: sides[0], : sides[1]])


def raw_pixels(image: np.ndarray) -> np.ndarray:
    """A gate image ``(H, W) float32 in [0, 1]`` back as the pixels it was read from: uint8 when
    ``normalize`` of the uint8 values gives it back bit for bit, else uint16, else the float32 itself."""
    for dtype in (np.uint8, np.uint16):
        top = np.iinfo(dtype).max
        candidate = np.rint(np.asarray(image, np.float64) * top).astype(dtype)
        if np.array_equal(normalize(candidate), image):
            return candidate
    return np.asarray(image, np.float32)


def onnx_output(weights: bytes, image: np.ndarray) -> np.ndarray:
    """``(H, W) float32`` normalised image through the ONNX model on the CPU -> ``(H, W) float32``."""
    from seg.runtime.providers import make_session

    session = make_session(weights, provider="cpu")
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(image, np.float32)[None, :, :, None]}
    return np.asarray(session.run(None, feed)[0], np.float32)[0, :, :, 0]


def preprocessing(dtype: str) -> list[Any]:
    """The spec's steps that turn ``dtype`` pixels into what seg feeds the model (see the module docstring)."""
    from bioimageio.spec.model import v0_5 as spec

    to_float32 = spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))
    if dtype == "float32":
        return [to_float32]
    to_float64 = spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float64"))
    gain = 1.0 / np.iinfo(np.dtype(dtype)).max
    return [to_float64, spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=gain)), to_float32]


def _describe(staged: Staged, info: ModelInfo, license: str, authors: Sequence[str], zoo: dict[str, Any]) -> Any:
    """The ``bioimageio.spec`` ``ModelDescr`` of the staged files (sha256 of each file computed by the spec)."""
    from bioimageio.spec import ValidationContext
    from bioimageio.spec.model import v0_5 as spec

    from seg.export import bioimageio_docs as docs

    with ValidationContext(root=staged.weights.parent, perform_io_checks=True):
        return spec.ModelDescr(
            name=docs.title(info), description=docs.description(info), authors=[spec.Author(name=a) for a in authors],
            cite=[spec.CiteEntry(text=text, doi=spec.Doi(doi)) for text, doi in docs.citations(info)],
            license=spec.LicenseId(license), tags=docs.tags(info), covers=[spec.FileDescr(source=staged.cover)],
            documentation=spec.FileDescr(source=staged.readme),
            attachments=[spec.FileDescr(source=staged.parity)] if staged.parity else [],
            inputs=[_input(staged, info)], outputs=[_output(staged, info)],
            weights=spec.WeightsDescr(onnx=spec.OnnxWeightsDescr(
                source=staged.weights, opset_version=int(info.versions.get("opset", 17)),
                comment="exported by seg-toolkit behind its Keras-vs-ONNX parity gate; seg.* metadata inside")),
            timestamp=spec.Datetime(_created(info)),
            config=spec.Config(bioimageio=spec.BioimageioConfig(**zoo), seg=_seg_config(info)),
        )


def _input(staged: Staged, info: ModelInfo) -> Any:
    from bioimageio.spec.model import v0_5 as spec

    size_min, step, _ = sizes(info)
    size = spec.ParameterizedSize(min=size_min, step=step)
    return spec.InputTensorDescr(
        id=spec.TensorId(INPUT_ID), description=f"gray EM image, {staged.dtype} (2-D, one channel)",
        axes=[spec.BatchAxis(), spec.SpaceInputAxis(id=spec.AxisId("y"), size=size),
              spec.SpaceInputAxis(id=spec.AxisId("x"), size=size),
              spec.ChannelAxis(channel_names=[spec.Identifier("gray")])],
        test_tensor=spec.FileDescr(source=staged.test_input), sample_tensor=spec.FileDescr(source=staged.sample_input),
        data=spec.IntervalOrRatioDataDescr(type=staged.dtype, range=(0.0, 1.0) if staged.dtype == "float32"
                                           else (None, None)),
        preprocessing=preprocessing(staged.dtype), pad=spec.ReflectPadding(mode="reflect"))


def _output(staged: Staged, info: ModelInfo) -> Any:
    from bioimageio.spec.model import v0_5 as spec

    _, _, halo = sizes(info)

    def space(axis: str) -> Any:
        ref = spec.SizeReference(tensor_id=spec.TensorId(INPUT_ID), axis_id=spec.AxisId(axis))
        if halo:
            return spec.SpaceOutputAxisWithHalo(id=spec.AxisId(axis), halo=halo, size=ref)
        return spec.SpaceOutputAxis(id=spec.AxisId(axis), size=ref)

    return spec.OutputTensorDescr(
        id=spec.TensorId(OUTPUT_ID), description="cell-interior probability: 1 = interior, 0 = membrane",
        axes=[spec.BatchAxis(), space("y"), space("x"), spec.ChannelAxis(channel_names=[spec.Identifier("interior")])],
        test_tensor=spec.FileDescr(source=staged.test_output),
        sample_tensor=spec.FileDescr(source=staged.sample_output),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))


def _seg_config(info: ModelInfo) -> dict[str, Any]:
    """seg's own facts under ``config.seg`` (the ONNX metadata stays the source of truth for seg itself)."""
    return {"threshold": info.threshold, "tile_size": info.tile_size, "halo": info.halo,
            "size_multiple": info.size_multiple, "receptive_field": info.receptive_field,
            "normalization": info.normalization, "model_kind": info.model_kind}


def _created(info: ModelInfo) -> Any:
    import datetime as dt

    with contextlib.suppress(ValueError):
        return dt.datetime.fromisoformat(info.created)
    return dt.datetime.now(dt.UTC)


def _save(descr: Any, out: Path) -> None:
    """Zip ``descr`` and its files to ``out`` atomically; the spec re-validates the zip it wrote."""
    from bioimageio.spec import save_bioimageio_package

    with atomic_path(out) as tmp:
        save_bioimageio_package(descr, output_path=tmp)


@contextlib.contextmanager
def _rejected_by_spec(out: Path) -> Iterator[None]:
    """The spec's validation errors (pydantic's ``ValidationError`` is a ``ValueError``) as one ``SegError``."""
    try:
        yield
    except ValueError as exc:
        text = " ".join(str(exc).split("\n")[:3])
        raise SegError(f"{out}: bioimage.io package rejected by bioimageio.spec: {text[:400]}") from None
