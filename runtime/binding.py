"""CUDA IO binding for ``Segmenter``: device buffers bound once per tile shape and refilled per batch.

``CudaRunner`` is what a ``Segmenter`` on CUDA runs its batches through. It is safe to share between
threads (one batch at a time runs through its buffers, under a lock) and never fails silently: when the
buffers cannot be made (an onnxruntime build without device ``OrtValue`` support, say) it warns once with a
``SegWarning`` naming the model and the reason, and from then on answers None, so the caller uses plain
``session.run`` for every later batch without retrying the binding.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import numpy as np

from seg.runtime.errors import SegError, SegWarning


class CudaBinding:
    """Device buffers for one ``(B, T, T, 1)`` input shape and dtype (float32, or uint8 for a model that
    normalises in its graph) on CUDA device ``device_id``, bound once; the output is float32.

    Not thread-safe on its own (its buffers are shared by every ``run``): ``CudaRunner`` serialises it.
    Raises whatever onnxruntime raises when device ``OrtValue`` s or IO binding are unavailable.
    """

    def __init__(self, session: Any, input_name: str, output_name: str, shape: tuple[int, ...],
                 device_id: int = 0, dtype: type = np.float32) -> None:
        import onnxruntime as ort

        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.session = session
        self.input = ort.OrtValue.ortvalue_from_shape_and_type(shape, self.dtype.type, "cuda", device_id)
        self.output = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cuda", device_id)
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(input_name, self.input)
        self.binding.bind_ortvalue_output(output_name, self.output)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """``(B, T, T, 1)`` host pixels -> device -> model -> a new host ``(B, T, T, 1) float32`` array."""
        self.input.update_inplace(np.ascontiguousarray(inputs, self.dtype))
        self.session.run_with_iobinding(self.binding)
        return self.output.numpy()


class CudaRunner:
    """Runs batches through one ``CudaBinding`` at a time (rebuilt when the batch shape changes).

    Thread-safe: every ``run`` holds a lock while it fills, runs and reads back the shared buffers.
    ``name`` (the model) is used in the one-time fallback warning.
    """

    def __init__(self, session: Any, input_name: str, output_name: str, device_id: int, name: str) -> None:
        self.session = session
        self.input_name = input_name
        self.output_name = output_name
        self.device_id = device_id
        self.name = name
        self.failed: str | None = None  # why the binding could not be made; set once, never retried
        self._binding: CudaBinding | None = None
        self._closed = False
        self._lock = threading.Lock()

    def run(self, inputs: np.ndarray) -> np.ndarray | None:
        """``(B, T, T, 1) float32`` -> ``(B, T, T, 1) float32`` through device buffers, or None when IO
        binding is unavailable (warned once; the caller then runs ``session.run``). ``SegError`` after
        ``close``."""
        if self.failed is not None:
            return None
        with self._lock:
            if self._closed:
                raise SegError(f"{self.name}: this Segmenter is closed; make a new one to predict again")
            if self.failed is not None:
                return None
            binding = self._binding
            if binding is None or binding.shape != inputs.shape or binding.dtype != inputs.dtype:
                self._binding = None  # release the old buffers before allocating new ones
                try:
                    self._binding = CudaBinding(self.session, self.input_name, self.output_name,
                                                tuple(inputs.shape), self.device_id, inputs.dtype.type)
                except Exception as exc:  # onnxruntime raises its own types; plain session.run still works
                    self._give_up(exc)
                    return None
            return self._binding.run(inputs)

    def close(self) -> None:
        """Free the device buffers (waits for a batch in flight); later ``run`` calls raise ``SegError``."""
        with self._lock:
            self._closed = True
            self._binding = None
            self.session = None

    def _give_up(self, exc: Exception) -> None:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        reason = lines[0] if lines else type(exc).__name__
        self.failed = reason
        warnings.warn(
            f"{self.name}: CUDA IO binding unavailable ({reason}); running every batch with session.run instead",
            SegWarning,
            stacklevel=2,
        )
