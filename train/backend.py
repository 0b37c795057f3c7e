"""What Keras 3 runs on: the backend (TensorFlow by default, JAX or PyTorch by ``KERAS_BACKEND``), the
accelerators it really sees, and the package versions a run records.

Everything else in ``seg.train`` uses Keras 3 APIs only, so the same recipe trains on whichever backend the
machine has. Each function imports its backend lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BACKENDS = ("tensorflow", "jax", "torch")


def name() -> str:
    """The Keras backend in use: ``"tensorflow"`` | ``"jax"`` | ``"torch"`` (``KERAS_BACKEND``, read at import)."""
    import keras

    return str(keras.backend.backend())


def accelerators() -> list[str]:
    """The GPUs the backend really uses, e.g. ``["cuda:0 NVIDIA H100 80GB HBM3"]``; ``[]`` on a CPU."""
    backend = name()
    if backend == "jax":
        import jax

        return [f"{d.platform}:{d.id} {getattr(d, 'device_kind', '')}".strip() for d in jax.devices()
                if d.platform != "cpu"]
    if backend == "torch":
        import torch

        return [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    return [gpu.name for gpu in gpus]


def cpu_has_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bfloat16 arithmetic (x86 AVX512-BF16 or AMX-BF16), read from ``/proc/cpuinfo``
    (or the given text of it); False where that file does not exist. TensorFlow's oneDNN kernels use these
    instructions for a ``mixed_bfloat16`` policy and emulate them, slower than float32, on CPUs without."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def mixed_policy(gpus: list[str]) -> str | None:
    """The Keras mixed-precision policy ``--amp`` uses here: ``"mixed_float16"`` on a GPU,
    ``"mixed_bfloat16"`` on TensorFlow with a bfloat16 CPU (``cpu_has_bfloat16``), None where neither."""
    if gpus:
        return "mixed_float16"
    if name() == "tensorflow" and cpu_has_bfloat16():
        return "mixed_bfloat16"
    return None


def device_label(gpus: list[str]) -> str:
    """``"GPU x1 (jax: cuda:0 ...)"`` or ``"CPU (tensorflow)"``: what a run reports it trained on."""
    backend = name()
    return f"GPU x{len(gpus)} ({backend}: {', '.join(gpus)})" if gpus else f"CPU ({backend})"


def jit_compile(on_gpu: bool) -> bool:
    """Whether ``model.fit`` compiles the step: always on JAX (eager JAX is very slow), never on PyTorch
    (``torch.compile`` costs more than it saves for short runs), on TensorFlow only on a GPU (its oneDNN CPU
    kernels beat XLA's)."""
    backend = name()
    return backend == "jax" or (backend == "tensorflow" and on_gpu)


def batch_workers() -> int:
    """Threads that build training batches ahead of the step: 1 on TensorFlow, whose ``tf.data`` pipeline
    already runs the batch generator in a background thread and prefetches, 2 on JAX and PyTorch, where Keras
    calls the generator inside the training loop, so on a GPU every step would wait for the host's
    augmentation. Batches depend only on (seed, epoch, index), so the thread count never changes them."""
    return 1 if name() == "tensorflow" else 2


def versions() -> dict[str, str]:
    """``{"keras", "backend", <backend package>, "numpy"}`` versions, for a run's ``config.json``."""
    import keras
    import numpy as np

    backend = name()
    module: Any = __import__(backend)
    return {"keras": keras.__version__, "backend": backend, backend: str(module.__version__),
            "numpy": np.__version__}
