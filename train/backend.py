"""What Keras 3 runs on: the backend (TensorFlow by default, JAX or PyTorch by ``KERAS_BACKEND``), the
accelerators it really sees, and the package versions a run records.

Everything else in ``seg.train`` uses Keras 3 APIs only, so the same recipe trains on whichever backend the
machine has. Each function imports its backend lazily.
"""

from __future__ import annotations

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


def versions() -> dict[str, str]:
    """``{"keras", "backend", <backend package>, "numpy"}`` versions, for a run's ``config.json``."""
    import keras
    import numpy as np

    backend = name()
    module: Any = __import__(backend)
    return {"keras": keras.__version__, "backend": backend, backend: str(module.__version__),
            "numpy": np.__version__}
