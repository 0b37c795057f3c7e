"""seg runtime: run an exported seg ONNX model on images of any size, on CUDA or CPU.

numpy + onnxruntime + pillow + tifffile only; never imports TensorFlow.
"""

from runtime.errors import GateError, InputError, ProviderError, SegError, SegWarning
from runtime.io import list_images, read_image, read_pages, write_image, write_pages
from runtime.metadata import ModelInfo
from runtime.preprocess import binarize_label, normalize, to_mask

__all__ = [
    "GateError",
    "InputError",
    "ModelInfo",
    "ProviderError",
    "SegError",
    "SegWarning",
    "binarize_label",
    "list_images",
    "normalize",
    "read_image",
    "read_pages",
    "to_mask",
    "write_image",
    "write_pages",
]
