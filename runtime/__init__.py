"""seg runtime: run an exported seg ONNX model on images of any size, on CUDA or CPU.

numpy + onnxruntime + pillow + tifffile only; never imports TensorFlow. Embedding it::

    import numpy as np
    from seg.runtime import Segmenter, read_image, to_mask

    with Segmenter("model.onnx", provider="auto") as segmenter:  # "cuda" is strict: ProviderError if no CUDA
        print(segmenter.providers)                   # what onnxruntime really uses, e.g. ["cpu"]
        image = read_image("slice.png")              # (H, W) uint8/uint16/float, any size
        prob = segmenter.predict(image)              # (H, W) float32 in [0, 1], 1.0 = cell interior
        mask = to_mask(prob, segmenter.info.threshold)  # (H, W) uint8, 255 = interior, 0 = membrane
        probs = segmenter.predict(np.stack([image, image[::-1]]))  # (N, H, W) -> (N, H, W) float32 in [0, 1]

One ``Segmenter`` may be shared by threads (see its docstring); every error is a ``SegError`` subclass.
Folders, globs and TIFF stacks: ``segment_paths(input, "model.onnx", "out/")`` (what ``seg infer`` runs).
Internals (sessions, normalisation, tiling) stay importable from their modules, e.g.
``seg.runtime.providers.make_session`` or ``seg.runtime.preprocess.normalize``.
"""

from seg.runtime.errors import GateError, InputError, ProviderError, RunError, SegError, SegWarning
from seg.runtime.folders import InferSummary, segment_paths
from seg.runtime.io import read_image, read_pages, write_image
from seg.runtime.metadata import ModelInfo
from seg.runtime.preprocess import to_mask
from seg.runtime.segmenter import Segmenter

__all__ = [
    "GateError",
    "InferSummary",
    "InputError",
    "ModelInfo",
    "ProviderError",
    "RunError",
    "SegError",
    "SegWarning",
    "Segmenter",
    "read_image",
    "read_pages",
    "segment_paths",
    "to_mask",
    "write_image",
]
