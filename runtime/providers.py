"""onnxruntime sessions on CUDA or CPU, honest about which one really runs.

``make_session(model, provider)`` with ``provider`` one of:

- ``"cuda"``: strict. If the CUDA execution provider cannot load (libraries missing, no GPU), raise
  ``ProviderError`` naming what is missing and the fix; never fall back silently to the CPU.
- ``"auto"``: CUDA when it loads, otherwise CPU; logs which one it chose.
- ``"cpu"``: CPU only.

onnxruntime itself falls back to the CPU with nothing but a log line when CUDA cannot load, so the
providers a session really uses are read back with ``session_providers`` after creation.
onnxruntime's own knobs pass through: ``options`` (``SessionOptions``), ``provider_options`` (merged into
the running provider's options) and ``device_id`` (the CUDA device).
A seg model takes one input ``(N, H, W, 1) float32`` (interior probability out, same layout).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import onnxruntime as ort

from seg.runtime.errors import InputError, ProviderError, RunError, first_line

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "cuda", "cpu")
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
CUDA_FIX = 'pip install "seg-toolkit[cuda]" (on a machine with an NVIDIA GPU), or use provider "cpu"'
_ORT_WARNING = 2  # onnxruntime's default logger severity


def make_session(
    model: str | os.PathLike[str] | bytes,
    provider: str = "auto",
    threads: int | None = None,
    options: ort.SessionOptions | None = None,
    provider_options: Mapping[str, object] | None = None,
    device_id: int = 0,
) -> ort.InferenceSession:
    """An ``InferenceSession`` for a seg model (path or serialized bytes) on ``provider``.

    ``options`` replaces the default ``session_options(threads)`` (e.g. to enable onnxruntime's profiler);
    ``threads`` (CPU intra-op threads, default physical cores) still applies: given with ``options``, it
    is the session's ``intra_op_num_threads`` (the caller's ``options`` object is left unchanged).
    ``provider_options`` are merged into the options of the provider
    that runs: over seg's CUDA defaults on CUDA, or the CPU's (which ignores keys it does not know).
    ``device_id`` (int >= 0) is the CUDA device. Raises ``ProviderError`` for an unknown provider or an
    unloadable CUDA provider, ``InputError`` for an unusable model file, a bad ``device_id`` or a
    ``provider_options["device_id"]`` that contradicts ``device_id``.
    """
    provider = check_provider(provider)
    extra = _provider_extras(provider_options, device_id)
    name = _model_name(model)
    source = _model_source(model, name)
    with _with_threads(options, threads) as chosen:
        session = _open_on(provider, source, chosen, extra, device_id, name)
    check_model_io(session, name)
    log.info("%s: running on %s", name, ", ".join(session_providers(session)))
    return session


def check_device_id(device_id: object) -> int:
    """``device_id`` if it is an int >= 0 (a CUDA device index), else a one-line ``InputError``."""
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise InputError(f"device_id must be an int >= 0 (the CUDA device index, 0 = first GPU), got {device_id!r}")
    return device_id


def _provider_extras(provider_options: Mapping[str, object] | None, device_id: int) -> dict[str, str]:
    """``provider_options`` as onnxruntime's ``{str: str}``; ``InputError`` when its ``device_id`` contradicts
    ``device_id`` (the one ``Segmenter`` reports) or ``device_id`` is bad."""
    check_device_id(device_id)
    if provider_options is not None and not isinstance(provider_options, Mapping):
        raise InputError(f"provider_options must be a dict of onnxruntime provider options, got {provider_options!r}")
    extra = {str(key): str(value) for key, value in (provider_options or {}).items()}
    if extra.get("device_id", str(device_id)) != str(device_id):
        raise InputError(f"provider_options['device_id'] is {extra['device_id']!r} but device_id is {device_id}; "
                         f"pass the device once, as device_id={extra['device_id']}")
    extra.pop("device_id", None)
    return extra


def _open_on(provider: str, source: str | bytes, options: ort.SessionOptions, extra: dict[str, str],
             device_id: int, name: str) -> ort.InferenceSession:
    """The session on ``provider`` ("cpu", "cuda" strict, "auto": CUDA else the CPU, logged)."""
    if provider == "cpu":
        return _create(source, options, [(CPU_EP, extra)], name)
    problem = cuda_problem()
    if problem is None:
        cuda = {**_cuda_options(), "device_id": str(device_id), **extra}
        session = _create(source, options, [(CUDA_EP, cuda), CPU_EP], name)
        if CUDA_EP in session.get_providers():
            return session
        problem = f"onnxruntime fell back to the CPU (CUDA device {device_id}; is it a visible GPU?)"
    if provider == "cuda":
        raise ProviderError(f"{name}: CUDA provider cannot load: {problem}; fix: {CUDA_FIX}")
    log.info("CUDA unavailable (%s); running on CPU", problem)
    return _create(source, options, [(CPU_EP, extra)], name)


@contextlib.contextmanager
def _with_threads(options: ort.SessionOptions | None, threads: int | None) -> Iterator[ort.SessionOptions]:
    """seg's default options for ``threads``, or the caller's ``options`` with ``threads`` (when given) set on
    it while a session is made from it; the caller's object is left as it was given."""
    if options is None:
        yield session_options(threads)
        return
    given = options.intra_op_num_threads
    if threads:
        options.intra_op_num_threads = threads
    try:
        yield options
    finally:
        options.intra_op_num_threads = given


@contextlib.contextmanager
def run_errors(name: str, provider: str, shape: tuple[int, ...]) -> Iterator[None]:
    """Around a ``session.run`` of model ``name`` on a ``(B, H, W, 1)`` batch of ``shape``: onnxruntime's own
    errors (its pybind types, e.g. ``Fail``) become one-line ``RunError``s naming the model, the batch, the
    provider, onnxruntime's reason and what to try; other exceptions pass unchanged."""
    try:
        yield
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        batch, height, width = shape[:3]
        raise RunError(f"{name}: onnxruntime failed on a batch of {batch} x {width}x{height} on {provider.upper()} "
                       f"({first_line(exc)}); if it ran out of memory, lower the batch size or the tile size") from exc


def session_providers(session: ort.InferenceSession) -> list[str]:
    """The providers ``session`` really uses, as short names in priority order (e.g. ``["cuda", "cpu"]``)."""
    short = {CUDA_EP: "cuda", CPU_EP: "cpu", "TensorrtExecutionProvider": "tensorrt"}
    return [short.get(p, p) for p in session.get_providers()]


def check_provider(provider: str) -> str:
    """Lower-cased ``provider`` if valid, else ``ProviderError`` listing the valid names."""
    key = str(provider).strip().lower()
    if key not in PROVIDERS:
        raise ProviderError(f"unknown provider {provider!r}; choose one of: {', '.join(PROVIDERS)}")
    return key


def cuda_problem() -> str | None:
    """Why the CUDA provider cannot load here (one line), or None when its libraries load.

    Calls ``onnxruntime.preload_dlls()`` first (CUDA/cuDNN from the ``nvidia-*`` pip wheels), then loads
    the CUDA provider library the way onnxruntime would, which names the first missing library.
    """
    if CUDA_EP not in ort.get_available_providers():
        return f"this onnxruntime build ({_ort_build()}) has no {CUDA_EP}"
    _preload_dlls()
    library = _cuda_library()
    if library is None:
        return f"{_ort_build()} ships no CUDA provider library"
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return f"{first_line(str(exc))} ({_ort_build()} needs CUDA {_cuda_version()} and cuDNN 9)"
    return None


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-threads not counted); ``os.cpu_count`` fallback."""
    try:
        cpus = os.sched_getaffinity(0)
        cores = set()
        for cpu in cpus:
            topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add(((topo / "physical_package_id").read_text(), (topo / "core_id").read_text()))
        return max(1, len(cores))
    except (AttributeError, OSError, ValueError):
        return max(1, os.cpu_count() or 1)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, which containers narrow), else ``os.cpu_count()`` (1 if
    unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_model_io(session: ort.InferenceSession, name: str) -> None:
    """``InputError`` unless the model has one input ``(N, H, W, 1)`` float32 (or uint8: the ``u8`` variant,
    which normalises inside the graph) and a matching float32 output."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise InputError(f"{name}: expected a model with 1 input, got {len(inputs)}; not a seg model")
    for kind, arg in (("input", inputs[0]), ("output", outputs[0])):
        shape = list(arg.shape)
        allowed = ("tensor(float)", "tensor(uint8)") if kind == "input" else ("tensor(float)",)
        if arg.type not in allowed:
            raise InputError(f"{name}: model {kind} {arg.name!r} is {arg.type}; expected float32 (N, H, W, 1)")
        channels_ok = shape[-1] == 1 or not isinstance(shape[-1], int) if shape else False
        channels_first = len(shape) == 4 and shape[1] == 1 and shape[-1] != 1
        if len(shape) != 4 or not channels_ok or channels_first:
            raise InputError(
                f"{name}: model {kind} {arg.name!r} has shape {shape}; expected (N, H, W, 1) "
                "(one gray channel, NHWC)"
            )


def _create(
    source: str | bytes, options: ort.SessionOptions, providers: list[Any], name: str
) -> ort.InferenceSession:
    ort.set_default_logger_severity(3)  # failed CUDA loads are reported by us, in one line
    try:
        return ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise InputError(f"{name}: not a loadable ONNX model ({first_line(str(exc))})") from None
    finally:
        ort.set_default_logger_severity(_ORT_WARNING)


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """The session options seg uses: all graph optimisations, ``threads`` (default physical cores) intra-op."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads if threads else physical_cores()
    options.log_severity_level = 3
    return options


def _cuda_options() -> dict[str, str]:
    """Fixed tile shapes: search cuDNN convolution algorithms exhaustively once, reuse the winner."""
    return {"cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": "1"}


def _model_name(model: str | os.PathLike[str] | bytes) -> str:
    return "model (bytes)" if isinstance(model, bytes | bytearray) else str(model)


def _model_source(model: str | os.PathLike[str] | bytes, name: str) -> str | bytes:
    if isinstance(model, bytes | bytearray):
        return bytes(model)
    path = Path(model)
    if not path.exists():
        raise InputError(f"{path}: no such model file; export one with `seg export {path.name}`")
    if not path.is_file():
        raise InputError(f"{path}: not a file (expected an .onnx model)")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes); not an ONNX model")
    with open(path, "rb") as handle:
        if handle.read(4) == b"PK\x03\x04":  # a zip: .keras models are zip archives
            raise InputError(f"{path}: a Keras model (zip archive), not ONNX; convert it first: "
                             f"seg export model.onnx --weights {path}")
    return str(path)


def _preload_dlls() -> None:
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        try:
            preload()
        except Exception as exc:  # a failed preload is diagnosed by the library load below
            log.debug("onnxruntime.preload_dlls failed: %s", exc)
    if printed.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", printed.getvalue().strip())


def _cuda_library() -> Path | None:
    folder = Path(ort.__file__).parent / "capi"
    name = "onnxruntime_providers_cuda.dll" if sys.platform == "win32" else "libonnxruntime_providers_cuda.so"
    return folder / name if (folder / name).exists() else None


def _ort_build() -> str:
    try:
        from onnxruntime.capi import build_and_package_info as info

        return f"{info.package_name} {info.__version__}"
    except ImportError:
        return f"onnxruntime {ort.__version__}"


def _cuda_version() -> str:
    try:
        from onnxruntime.capi.build_and_package_info import cuda_version

        return re.sub(r"\..*", ".x", str(cuda_version))
    except ImportError:
        return "12.x or newer"
