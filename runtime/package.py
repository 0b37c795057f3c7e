"""bioimage.io model packages (``*.bioimageio.zip``) run by ``Segmenter`` directly, with no bioimageio code.

``open_package(path)`` reads the zip's ``rdf.yaml`` (format 0.5; PyYAML, imported only here), takes the ONNX
weights it names and checks them against the sha256 the rdf gives, and reads what seg needs to run them:

- a package written by ``seg export --bioimageio`` carries seg's ``seg.`` metadata inside its ONNX, which
  ``Package.model_info`` prefers (tile, halo, threshold exactly as exported);
- a foreign package runs when its model is 2-D, one channel in and out, laid out ``batch, y, x, channel``
  (NHWC), its preprocessing is a fixed scaling that equals seg's dtype-range normalisation for its input type
  (``ensure_dtype``, ``scale_linear``, ``fixed_zero_mean_unit_variance``, ``clip`` that clips nothing) and its
  postprocessing needs nothing seg does not do (``ensure_dtype``, ``clip`` to [0, 1], ``binarize``, whose
  threshold becomes the mask threshold). Tile and size multiple come from the input's ``min + n * step``
  sizes, the halo from the output's. Its output channel is used as it is: seg cannot tell whether a foreign
  model's 1.0 means interior or membrane.

Anything else is refused with one ``InputError`` line naming the package and the reason.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seg.runtime.errors import InputError, SegError
from seg.runtime.metadata import DEFAULT_THRESHOLD, DEFAULT_TILE, ModelInfo
from seg.runtime.preprocess import DTYPE_RANGE
from seg.runtime.providers import make_session
from seg.runtime.tiling import recommended_halo

if TYPE_CHECKING:
    import onnxruntime as ort

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, OSError)
"""What reading a zip member raises when the archive is damaged (a bad CRC, corrupt deflate data, a cut file)
or needs a password."""
SCALES = {"uint8": 255.0, "uint16": 65535.0}  # input dtype -> what seg divides by (dtype-range); floats: 1
FLOATS = ("float32", "float64")
AXES = (("batch", "batch"), ("space", "y"), ("space", "x"), ("channel", "channel"))  # (type, id): NHWC


class Refused(Exception):
    """Why a package cannot run (one line, no path): ``open_package`` turns it into an ``InputError``."""


@dataclass(frozen=True)
class Package:
    """An opened package: ``onnx`` the verified weights, ``rdf_info`` what the rdf says seg needs."""

    path: Path
    onnx: bytes
    rdf_info: ModelInfo

    def session(self, provider: str = "auto", threads: int | None = None, **options: Any) -> ort.InferenceSession:
        """``make_session`` on the ONNX weights; errors name the package instead of ``model (bytes)``."""
        try:
            return make_session(self.onnx, provider, threads, **options)
        except SegError as exc:
            raise type(exc)(str(exc).replace("model (bytes)", f"{self.path} (its ONNX weights)", 1)) from None

    def model_info(self, session: ort.InferenceSession) -> ModelInfo:
        """The seg metadata inside the ONNX weights (a seg package), else ``rdf_info`` (a foreign one)."""
        props = dict(session.get_modelmeta().custom_metadata_map)
        info = ModelInfo.from_props(props, source=str(self.path))
        return self.rdf_info if info.from_defaults else info


def is_package(model: object) -> bool:
    """True for a path (not bytes) whose name ends in ``.zip``: what ``Segmenter`` opens as a package."""
    return isinstance(model, str | os.PathLike) and str(model).lower().endswith(".zip")


def open_package(path: str | os.PathLike[str]) -> Package:
    """Read and check the package at ``path``; ``InputError`` (one line: the package and the reason) when it
    is not a zip, has no or a broken ``rdf.yaml``, lacks its ONNX weights, their sha256 does not match, or
    seg cannot run the model it describes (see the module docstring)."""
    path = Path(path)
    try:
        with _open_zip(path) as archive:
            rdf = _read_rdf(archive)
            onnx = _read_weights(archive, rdf)
        return Package(path, onnx, rdf_model_info(rdf))
    except Refused as exc:
        raise InputError(f"{path}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a field of the wrong type or form
        raise InputError(f"{path}: rdf.yaml has a field seg cannot read ({type(exc).__name__}: {exc}); fix the "
                         "package's rdf.yaml") from None


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise Refused("no such file" if not path.exists() else "not a file (expected a .bioimageio.zip package)")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise Refused(f"not a readable zip archive ({exc}); expected a bioimage.io model package") from None


def _read_rdf(archive: zipfile.ZipFile) -> dict[str, Any]:
    """The package's ``rdf.yaml`` (or ``bioimageio.yaml``) as a dict: a 0.5 model description."""
    import yaml

    name = next((n for n in RDF_NAMES if n in archive.namelist()), None)
    if name is None:
        raise Refused(f"no {' or '.join(RDF_NAMES)} inside: not a bioimage.io package")
    try:
        rdf = yaml.safe_load(archive.read(name).decode("utf-8"))
    except UNREADABLE as exc:
        raise Refused(f"{name} cannot be read ({exc})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise Refused(f"{name} is not valid YAML{line} ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(rdf, dict):
        raise Refused(f"{name} holds no description (a {type(rdf).__name__}, not a mapping)")
    if rdf.get("type") != "model":
        raise Refused(f"{name} describes a {rdf.get('type')!r}, not a model")
    version = str(rdf.get("format_version", ""))
    if not version.startswith("0.5."):
        raise Refused(f"{name} is format {version or 'unknown'}; seg reads 0.5.x (update it with "
                      "`bioimageio update-format`)")
    return rdf


def _read_weights(archive: zipfile.ZipFile, rdf: dict[str, Any]) -> bytes:
    """The ONNX weights named by the rdf, after checking their sha256 against it."""
    weights = rdf.get("weights") if isinstance(rdf.get("weights"), dict) else {}
    onnx = weights.get("onnx")
    if not isinstance(onnx, dict) or not onnx.get("source"):
        formats = ", ".join(sorted(weights)) or "none"
        raise Refused(f"no ONNX weights (it has: {formats}); seg runs ONNX weights only")
    if onnx.get("external_data"):
        raise Refused("ONNX weights with external data: seg loads single-file ONNX weights only")
    source = str(onnx["source"])
    try:
        data = archive.read(source)
    except KeyError:
        raise Refused(f"weights {source} named in rdf.yaml are missing from the package") from None
    except UNREADABLE as exc:
        raise Refused(f"weights {source} cannot be read ({exc})") from None
    expected = str(onnx.get("sha256") or "").lower()
    actual = hashlib.sha256(data).hexdigest()
    if not expected:
        raise Refused(f"weights {source} have no sha256 in rdf.yaml, so they cannot be checked")
    if actual != expected:
        raise Refused(f"weights {source} have sha256 {actual[:12]}..., rdf.yaml says {expected[:12]}...: the "
                      "package is corrupt or was edited; download or export it again")
    return data


def rdf_model_info(rdf: dict[str, Any]) -> ModelInfo:
    """What seg needs to run the model an rdf describes (see the module docstring); ``Refused`` otherwise."""
    inputs, outputs = rdf.get("inputs"), rdf.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != 1 or len(outputs) != 1:
        raise Refused(f"{_count(inputs)} inputs and {_count(outputs)} outputs; seg runs one image in, one map out")
    source, target = inputs[0], outputs[0]
    _check_axes(source, "input")
    _check_axes(target, "output")
    _check_preprocessing(source)
    threshold = _postprocessing_threshold(target)
    tile, multiple = _input_sizes(source)
    halo = _output_halo(target, source, tile, multiple)
    return ModelInfo(
        model_kind=f"bioimage.io: {str(rdf.get('name', 'unnamed'))[:64]}", input_layout="NHWC",
        normalization=DTYPE_RANGE, tile_size=tile, halo=halo, size_multiple=multiple, threshold=threshold,
        training_data=str(rdf.get("description", ""))[:200],
        versions={"bioimageio_format": str(rdf.get("format_version")),
                  "opset": str(rdf["weights"]["onnx"].get("opset_version", "unknown"))},
        created=str(rdf.get("timestamp", "")))


def _count(value: object) -> int:
    return len(value) if isinstance(value, list) else 0


def _check_axes(tensor: dict[str, Any], role: str) -> None:
    axes = tensor.get("axes") if isinstance(tensor, dict) else None
    if not isinstance(axes, list) or not all(isinstance(axis, dict) for axis in axes):
        raise Refused(f"{role} has no axes list")
    found = tuple((str(a.get("type")), str(a.get("id", a.get("type")))) for a in axes)
    channels = axes[-1].get("channel_names") if axes else None
    if found != AXES or not isinstance(channels, list) or len(channels) != 1:
        names = ",".join(f"{kind}:{name}" for kind, name in found)
        raise Refused(f"{role} axes {names}{'' if found != AXES else f' with {_count(channels)} channels'}; seg "
                      "runs 2-D one-channel models laid out batch,y,x,channel (NHWC)")


def _data_type(tensor: dict[str, Any]) -> tuple[str, tuple[Any, Any]]:
    data = tensor.get("data") or {}
    data = data[0] if isinstance(data, list) and data else data
    data = data if isinstance(data, dict) else {}
    limits = data.get("range") if isinstance(data.get("range"), list | tuple) else (None, None)
    return str(data.get("type", "float32")), (limits[0], limits[1]) if len(limits) == 2 else (None, None)


def _check_preprocessing(tensor: dict[str, Any]) -> None:
    """``Refused`` unless the steps, applied to the input's dtype, are exactly seg's dtype-range scaling."""
    dtype, (low, high) = _data_type(tensor)
    if dtype not in SCALES and dtype not in FLOATS:
        raise Refused(f"input type {dtype}; seg feeds uint8, uint16 or float images")
    if dtype in FLOATS and not (low is not None and high is not None and 0 <= float(low) <= float(high) <= 1):
        raise Refused(f"{dtype} input without a range inside [0, 1]; seg feeds floats in [0, 1]")
    gain, offset, current = 1.0, 0.0, dtype
    top = SCALES.get(dtype, 1.0)
    steps = [_step(step) for step in tensor.get("preprocessing") or []]
    for kind, kwargs in steps:
        unscaled = gain == 1.0 and offset == 0.0
        if kind == "ensure_dtype" and (kwargs.get("dtype") in FLOATS or (unscaled and kwargs.get("dtype") == dtype)):
            current = str(kwargs["dtype"])
            continue
        if kind == "scale_linear":
            scale, shift = _scalar(kwargs, "gain", 1.0), _scalar(kwargs, "offset", 0.0)
            gain, offset = scale * gain, scale * offset + shift
        elif kind == "fixed_zero_mean_unit_variance":
            mean, std = _scalar(kwargs, "mean", 0.0), _scalar(kwargs, "std", 1.0)
            gain, offset = gain / std, (offset - mean) / std
        elif kind == "clip" and _scalar(kwargs, "min", -math.inf) <= min(offset, gain * top + offset) and \
                _scalar(kwargs, "max", math.inf) >= max(offset, gain * top + offset):
            continue  # clips nothing of the scaled range
        else:
            raise Refused(f"input preprocessing step {_describe(kind, kwargs)} is not a fixed scaling seg can "
                          "reproduce (seg feeds the image scaled by its dtype's range)")
    if not steps or steps[-1][0] not in ("ensure_dtype", "binarize"):
        current = dtype  # the spec ends such preprocessing with a cast back to the input's type
    if current != "float32":
        raise Refused(f"input preprocessing hands the model {current} (a step list not ending in ensure_dtype "
                      "float32 is cast back to the input's type); seg feeds float32")
    if not (math.isclose(gain * top, 1.0, rel_tol=1e-6) and abs(offset) <= 1e-9):
        raise Refused(f"input preprocessing maps {dtype} x to {gain:.6g} x + {offset:.6g}; seg feeds "
                      f"x / {top:g} (the dtype's range)")


def _postprocessing_threshold(tensor: dict[str, Any]) -> float:
    """The mask threshold: a ``binarize`` step's, else the default; ``Refused`` for steps seg cannot do."""
    threshold, binarized = DEFAULT_THRESHOLD, False
    for step in tensor.get("postprocessing") or []:
        kind, kwargs = _step(step)
        if kind == "ensure_dtype" and (kwargs.get("dtype") in FLOATS or binarized):
            continue
        if kind == "clip" and _scalar(kwargs, "min", -math.inf) <= 0 and _scalar(kwargs, "max", math.inf) >= 1:
            continue
        if kind == "binarize":
            threshold, binarized = _scalar(kwargs, "threshold", DEFAULT_THRESHOLD), True
            continue
        reason = " (the model gives logits; seg needs probabilities from the ONNX model)" if kind == "sigmoid" else ""
        raise Refused(f"output postprocessing step {_describe(kind, kwargs)} cannot be applied by seg{reason}")
    dtype, _ = _data_type(tensor)
    if dtype not in FLOATS and not binarized:
        raise Refused(f"output type {dtype}; seg expects a float probability map")
    if not 0.0 <= threshold <= 1.0:
        raise Refused(f"binarize threshold {threshold:g} is outside [0, 1]; seg thresholds probabilities")
    return threshold


def _step(step: object) -> tuple[str, dict[str, Any]]:
    if not isinstance(step, dict):
        raise Refused(f"processing step {step!r} is not a mapping with an id")
    kwargs = step.get("kwargs") if isinstance(step.get("kwargs"), dict) else {}
    return str(step.get("id")), kwargs


def _scalar(kwargs: dict[str, Any], key: str, default: float) -> float:
    """``kwargs[key]`` as one float (a one-element list along the channel axis counts); ``Refused`` else."""
    value = kwargs.get(key, default)
    value = value[0] if isinstance(value, list) and len(value) == 1 else value
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        raise Refused(f"{key} {value!r} is not one number") from None


def _describe(kind: str, kwargs: dict[str, Any]) -> str:
    shown = ", ".join(f"{key}={value}" for key, value in kwargs.items())
    return f"{kind}({shown})" if shown else kind


def _input_sizes(tensor: dict[str, Any]) -> tuple[int, int]:
    """``(tile, size multiple)`` from the input's y/x sizes: a fixed size, or ``min + n * step`` whose ``min``
    is a multiple of ``step`` (the tile is the smallest valid size of at least 512, or ``min``)."""
    y_size, x_size = (tensor["axes"][i].get("size") for i in (1, 2))
    if y_size != x_size:
        raise Refused(f"input sizes y {y_size} and x {x_size} differ; seg tiles with square tiles")
    if isinstance(y_size, int) and y_size > 0:
        return y_size, y_size
    if not isinstance(y_size, dict) or "min" not in y_size or "step" not in y_size:
        raise Refused(f"input size {y_size!r} is neither fixed nor min + n * step")
    low, step = int(y_size["min"]), int(y_size["step"])
    if low <= 0 or step <= 0 or low % step:
        raise Refused(f"input sizes {low} + n * {step}: seg's tiling needs sizes that are multiples of the step")
    return max(low, math.ceil(DEFAULT_TILE / step) * step), step


def _output_halo(target: dict[str, Any], source: dict[str, Any], tile: int, multiple: int) -> int:
    """The output's halo (the larger of y and x); seg's default halo for the tile when none is declared."""
    halos = []
    for axis, reference in zip(target["axes"][1:3], source["axes"][1:3], strict=True):
        size = axis.get("size")
        same = isinstance(size, dict) and size.get("tensor_id") == source.get("id", "input") and \
            size.get("axis_id") == reference.get("id") and int(size.get("offset", 0)) == 0
        if not same and size != reference.get("size"):
            raise Refused(f"output size {size!r} along {axis.get('id')} is not the input's; seg needs same-size maps")
        halos.append(int(axis.get("halo", 0) or 0))
    return max(halos) if max(halos) > 0 else recommended_halo(0, tile, multiple)
