"""seg runtime: run an exported seg ONNX model on images of any size, on CUDA or CPU.

numpy + onnxruntime + pillow + tifffile only; never imports TensorFlow. Embedding it::

    from seg.runtime import Segmenter, read_image, to_mask

    seg = Segmenter("model.onnx", provider="auto")  # "cuda" is strict: raises ProviderError if CUDA can't load
    print(seg.providers)                            # what onnxruntime really uses, e.g. ["cpu"]
    image = read_image("slice.png")                 # (H, W) uint8/uint16/float, any size
    prob = seg.predict(image)                       # (H, W) float32 in [0, 1], 1.0 = cell interior
    mask = to_mask(prob, seg.info.threshold)        # (H, W) uint8, 255 = interior, 0 = membrane
    probs = seg.predict_batch([image, image.T])     # tiles of several images share onnxruntime batches

Folders, globs and TIFF stacks: ``seg.runtime.segment_paths(input, "model.onnx", "out/")`` (what ``seg infer`` runs).
"""

from seg.runtime.errors import GateError, InputError, ProviderError, SegError, SegWarning
from seg.runtime.folders import InferSummary, segment_paths
from seg.runtime.io import list_images, read_image, read_pages, write_image, write_pages
from seg.runtime.metadata import ModelInfo
from seg.runtime.preprocess import binarize_label, normalize, to_mask
from seg.runtime.providers import make_session, session_providers
from seg.runtime.segmenter import Segmenter
from seg.runtime.tiling import recommended_halo

__all__ = [
    "GateError",
    "InferSummary",
    "InputError",
    "ModelInfo",
    "ProviderError",
    "SegError",
    "Segmenter",
    "SegWarning",
    "binarize_label",
    "list_images",
    "make_session",
    "normalize",
    "read_image",
    "read_pages",
    "recommended_halo",
    "segment_paths",
    "session_providers",
    "to_mask",
    "write_image",
    "write_pages",
]
