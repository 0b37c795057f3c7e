"""``Segmenter``: an exported seg ONNX model applied to gray images of any size, tiled and batched.

>>> seg = Segmenter("model.onnx", provider="auto")
>>> prob = seg.predict(image)   # (H, W) any dtype -> (H, W) float32 in [0, 1], 1.0 = cell interior

Tiles of ``tile_size`` pixels overlapping by ``halo`` are streamed through onnxruntime ``batch_size`` at a
time (tiles of consecutive images share batches) and blended into one float32 output per image, so
memory stays at the image, its output and a few batches of tiles, whatever the image size.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from seg.runtime import tiling
from seg.runtime.errors import InputError, SegWarning
from seg.runtime.io import rgb_to_gray
from seg.runtime.metadata import ModelInfo
from seg.runtime.preprocess import DTYPE_RANGE, normalize, scale_small_integers, warn_if_8_bit_in_16_bit
from seg.runtime.providers import make_session, session_providers

log = logging.getLogger(__name__)
_Window = tuple[int, np.ndarray]  # (start, (T,) float32 window) along one axis


@dataclass
class RunStats:
    """Counters since the Segmenter was made: images and tiles done, seconds inside ``session.run``."""

    images: int = 0
    tiles: int = 0
    batches: int = 0
    compute_s: float = 0.0


@dataclass
class _Job:
    """One image in flight: its padded pixels, float32 accumulator and the tiles still to come."""

    height: int
    width: int
    pixels: np.ndarray  # (PH, PW) raw integers (normalised per tile) or float32 in [0, 1]
    lazy: bool
    tile: int  # this image's tile side: tile_size, or large_tile for an image larger than it both ways
    rows: list[tuple[int, np.ndarray]]  # (start, (T,) window) per tile row, from tiling.axis_windows
    cols: list[tuple[int, np.ndarray]]
    transforms: int = 1  # dihedral transforms per tile (8 with TTA)
    out: np.ndarray = field(init=False)
    pending: int = field(init=False)
    single: bool = field(init=False)  # one prediction covers the image: it is the output, nothing to blend

    def __post_init__(self) -> None:
        self.pending = len(self.rows) * len(self.cols) * self.transforms
        self.single = self.pending == 1
        self.out = np.empty((0, 0), np.float32) if self.single else np.zeros(self.pixels.shape, np.float32)


_Tile = tuple[_Job, _Window, _Window, int]  # job, row window, column window, dihedral transform


class Segmenter:
    """Run a seg ONNX model (``(N, H, W, 1) float32`` in and out) on images of any size.

    ``provider``: ``"auto"`` | ``"cuda"`` (strict) | ``"cpu"``. ``tile_size``/``halo``: from the model's
    metadata when None; ``tile_size=0`` runs each image whole (reflect-padded to the size multiple). With
    the metadata's tile, an image larger than it in both dimensions is cut into tiles of twice that side
    (``large_tile``), ``batch_size / 4`` at a time: the same pixels per onnxruntime call, so the same memory,
    but half the halo overhead (1024 tiles with a 112 halo compute 1.6x the pixels they keep, 512 tiles 3.2x):
    1.65x faster on a 4096x4096 image on a 2-core CPU (2048 tiles were slower again: they fall out of cache).
    An image smaller than the tile both ways runs as one smaller square tile (``small_step`` multiples:
    a 128x128 image computes 128x128, not 512x512; few distinct shapes, so batches and CUDA's per-shape
    algorithm search stay shared). An explicit ``tile_size`` is used as given.
    ``blend``: ``"gaussian"`` | ``"ramp"``. ``tta``: average the 8 flips/rotations (8x slower).
    ``threads``: CPU threads (default: physical cores).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        provider: str = "auto",
        tile_size: int | None = None,
        halo: int | None = None,
        batch_size: int = 4,
        blend: str = "gaussian",
        tta: bool = False,
        threads: int | None = None,
    ) -> None:
        self.name = "model (bytes)" if isinstance(model, bytes | bytearray) else str(model)
        self.session = make_session(model, provider, threads)
        self.info = _read_info(self.session, self.name)
        self.providers: list[str] = session_providers(self.session)
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name
        self.multiple = max(1, self.info.size_multiple)
        self.tile_size = self._resolve_tile(tile_size)
        self.halo = self._resolve_halo(halo)
        self.batch_size = self._resolve_batch(batch_size)
        self.large_tile = self._resolve_large_tile(tile_size)
        self.small_step = self._resolve_small_step(tile_size)
        if blend not in tiling.BLENDS:
            raise InputError(f"unknown blend {blend!r}; choose one of {', '.join(tiling.BLENDS)}")
        self.blend = blend
        self.transforms = tiling.DIHEDRAL if tta else (0,)
        self.stats = RunStats()
        self._binding: _CudaBinding | None = None

    def __repr__(self) -> str:
        return (
            f"Segmenter({self.name!r}, providers={self.providers}, tile_size={self.tile_size}, "
            f"large_tile={self.large_tile}, small_step={self.small_step}, "
            f"halo={self.halo}, batch_size={self.batch_size}, tta={len(self.transforms) > 1})"
        )

    def predict(self, image: np.ndarray) -> np.ndarray:
        """``(H, W)`` uint8/uint16/float (or RGB, made gray with a warning) -> ``(H, W) float32 in [0, 1]``."""
        return next(self.predict_iter([image]))

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each ``(H, W)`` image -> ``(H, W) float32 in [0, 1]``; tiles of all images share batches."""
        return list(self.predict_iter(images))

    def predict_iter(self, images: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Lazily yield one probability map per image, in order; pulls images only as batches need them."""
        if not self.tile_size:
            for image in images:
                yield self._predict_whole(image)
            return
        done: list[_Job] = []
        tiles = self._tile_stream(images, done)
        for batch in tiling.batched(tiles, lambda tile: self.batch_for(tile[0].tile), key=lambda tile: tile[0].tile):
            self._run_tiles(batch)
            while done and done[0].pending == 0:
                yield self._finish(done.pop(0))

    # -- tiled mode -------------------------------------------------------------------------------

    def _tile_stream(self, images: Iterable[np.ndarray], jobs: list[_Job]) -> Iterator[_Tile]:
        for index, image in enumerate(images):
            job = self._start(image, f"image {index}")
            jobs.append(job)
            for row in job.rows:
                for col in job.cols:
                    for k in self.transforms:
                        yield job, row, col, k

    def tile_for(self, height: int, width: int) -> int:
        """The tile side used for an ``(height, width)`` image (0 = whole image): ``large_tile`` when the
        image is larger than ``tile_size`` both ways and its grid of large tiles computes fewer pixels; the
        longer side rounded up to ``small_step`` when the image is smaller than ``tile_size`` both ways."""
        side = max(height, width)
        if self.small_step and side < self.tile_size:
            return min(self.tile_size, -(-side // self.small_step) * self.small_step)
        if self.large_tile == self.tile_size or min(height, width) <= self.tile_size:
            return self.tile_size
        small, large = (self._grid_pixels(height, width, tile) for tile in (self.tile_size, self.large_tile))
        return self.large_tile if large < small else self.tile_size

    def _grid_pixels(self, height: int, width: int, tile: int) -> int:
        """Pixels computed to cover ``(height, width)`` with ``tile``-pixel tiles overlapping by the halo."""
        counts = [len(tiling.axis_windows(tiling.padded_length(length, tile, self.multiple), tile, self.halo,
                                          self.blend, self.multiple)) for length in (height, width)]
        return counts[0] * counts[1] * tile * tile

    def batch_for(self, tile: int) -> int:
        """Tiles per onnxruntime call for ``tile``-pixel tiles: ``batch_size`` tiles' worth of pixels."""
        if tile <= self.tile_size:
            return self.batch_size
        return max(1, self.batch_size * self.tile_size**2 // tile**2)

    def _start(self, image: np.ndarray, name: str) -> _Job:
        pixels, lazy = _prepare(image, self.info.normalization, name)
        height, width = pixels.shape
        tile = self.tile_for(height, width)
        padded_h = tiling.padded_length(height, tile, self.multiple)
        padded_w = tiling.padded_length(width, tile, self.multiple)
        pixels = tiling.reflect_pad(pixels, padded_h, padded_w)
        rows = tiling.axis_windows(padded_h, tile, self.halo, self.blend, self.multiple)
        cols = tiling.axis_windows(padded_w, tile, self.halo, self.blend, self.multiple)
        return _Job(height, width, pixels, lazy, tile, rows, cols, len(self.transforms))

    def _run_tiles(self, batch: list[_Tile]) -> None:
        tile = batch[0][0].tile
        inputs = np.empty((len(batch), tile, tile, 1), np.float32)  # (B, T, T, 1) float32 in [0, 1]
        for i, (job, (y, _), (x, _), k) in enumerate(batch):
            crop = job.pixels[y : y + tile, x : x + tile]
            crop = scale_small_integers(crop) if job.lazy else crop
            inputs[i, :, :, 0] = tiling.dihedral(crop, k)
        preds = self._run(inputs)  # (B, T, T) float32 in [0, 1]
        scale = np.float32(1.0 / len(self.transforms))
        for (job, (y, wy), (x, wx), k), pred in zip(batch, preds, strict=True):
            if job.single:  # its one window is all ones (open at every edge): no blending
                job.out = tiling.dihedral_inverse(pred, k).copy()
            else:
                tiling.accumulate(job.out, tiling.dihedral_inverse(pred, k), y, x, np.outer(wy * scale, wx))
            job.pending -= 1
        self.stats.tiles += len(batch)

    def _finish(self, job: _Job) -> np.ndarray:
        out = job.out
        if len(job.rows) * len(job.cols) > 1:
            row_weight = tiling.weight_sum_1d(out.shape[0], job.rows)
            col_weight = tiling.weight_sum_1d(out.shape[1], job.cols)
            tiling.normalize_weights(out, row_weight, col_weight)
        job.pixels = job.out = np.empty((0, 0), np.float32)  # drop references early
        self.stats.images += 1
        return _crop_clip(out, job.height, job.width)

    # -- whole-image mode -------------------------------------------------------------------------

    def _predict_whole(self, image: np.ndarray) -> np.ndarray:
        pixels, lazy = _prepare(image, self.info.normalization, "image")
        height, width = pixels.shape
        if lazy:
            pixels = scale_small_integers(pixels)
        padded = tiling.pad_to_multiple(pixels, self.multiple)
        out = np.zeros(padded.shape, np.float32)
        for k in self.transforms:
            pred = self._run(np.ascontiguousarray(tiling.dihedral(padded, k))[None, :, :, None])[0]
            out += tiling.dihedral_inverse(pred, k)
        out /= np.float32(len(self.transforms))
        self.stats.images += 1
        self.stats.tiles += len(self.transforms)
        return _crop_clip(out, height, width)

    # -- session ----------------------------------------------------------------------------------

    def _run(self, inputs: np.ndarray) -> np.ndarray:
        """``(B, H, W, 1) float32`` -> ``(B, H, W) float32``; pads B up to a static batch dimension."""
        count = inputs.shape[0]
        fixed = self._static_batch()
        if fixed and count < fixed:
            inputs = np.concatenate([inputs, np.zeros((fixed - count, *inputs.shape[1:]), np.float32)])
        start = time.perf_counter()
        outputs = self._run_cuda(inputs) if self.providers[0] == "cuda" else None
        if outputs is None:
            (outputs,) = self.session.run([self._output], {self._input: inputs})
        self.stats.compute_s += time.perf_counter() - start
        self.stats.batches += 1
        return np.asarray(outputs, np.float32)[:count, :, :, 0]

    def _run_cuda(self, inputs: np.ndarray) -> np.ndarray | None:
        """IO binding on CUDA: tiles share one shape, so device input/output buffers are allocated once
        and reused (no per-batch allocation or output re-binding). None = use plain ``run``."""
        if self._binding is None or self._binding.shape != inputs.shape:
            try:
                self._binding = _CudaBinding(self.session, self._input, self._output, inputs.shape)
            except Exception as exc:  # an onnxruntime build without device OrtValues: plain run works
                log.debug("IO binding unavailable (%s); using session.run", exc)
                return None
        return self._binding.run(inputs)

    def _fixed_shape(self) -> bool:
        """True when the model's input has a static height, width or batch dimension."""
        shape = self.session.get_inputs()[0].shape
        return isinstance(shape[1], int) or isinstance(shape[2], int) or self._static_batch() is not None

    def _static_batch(self) -> int | None:
        dim = self.session.get_inputs()[0].shape[0]
        return dim if isinstance(dim, int) and dim > 0 else None

    def _resolve_tile(self, tile_size: int | None) -> int:
        shape = self.session.get_inputs()[0].shape
        static = shape[1] if isinstance(shape[1], int) and shape[1] == shape[2] else None
        tile = self.info.tile_size if tile_size is None else int(tile_size)
        if static is not None and tile_size is None:
            tile = static
        if static is not None and tile != static:
            raise InputError(f"{self.name}: model takes fixed {static}x{static} tiles; tile_size {tile} won't fit")
        if tile < 0 or tile % self.multiple:
            raise InputError(
                f"{self.name}: tile size {tile} must be 0 (whole image) or a positive multiple of {self.multiple}"
            )
        return tile

    def _resolve_halo(self, halo: int | None) -> int:
        if not self.tile_size:
            return 0
        largest = (self.tile_size - self.multiple) // 2
        if halo is None:
            halo = self.info.halo
            if halo > largest:
                halo = tiling.recommended_halo(self.info.receptive_field, self.tile_size, self.multiple)
        if not 0 <= halo <= largest:
            raise InputError(f"halo {halo} must be in 0..{largest} for {self.tile_size}-pixel tiles")
        return int(halo)

    def _resolve_large_tile(self, tile_size: int | None) -> int:
        """``2 * tile_size`` for the metadata's tile, except where it would cost memory or padding: an explicit
        tile, a fixed input shape or batch, or ``batch_size`` < 4 (a large tile alone would then hold more
        pixels than a batch of small ones)."""
        if tile_size is not None or self._fixed_shape() or not self.tile_size or self.batch_size < 4:
            return self.tile_size
        return 2 * self.tile_size

    def _resolve_small_step(self, tile_size: int | None) -> int:
        """Side step of the small tiles (a quarter of the tile, on the size multiple); 0 = none, for an
        explicit tile or a fixed input shape or batch (padding small tiles to a fixed batch costs more than
        the full tile saves when sizes alternate)."""
        if tile_size is not None or not self.tile_size or self._fixed_shape():
            return 0
        return max(self.multiple, self.tile_size // 4 // self.multiple * self.multiple)

    def _resolve_batch(self, batch_size: int) -> int:
        fixed = self._static_batch()
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        return min(batch_size, fixed) if fixed else int(batch_size)


class _CudaBinding:
    """Device buffers for one ``(B, T, T, 1)`` input shape, bound once, refilled per batch."""

    def __init__(self, session: object, input_name: str, output_name: str, shape: tuple[int, ...]) -> None:
        import onnxruntime as ort

        self.shape = shape
        self.session = session
        self.input = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cuda", 0)
        self.output = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cuda", 0)
        self.binding = session.io_binding()  # type: ignore[attr-defined]
        self.binding.bind_ortvalue_input(input_name, self.input)
        self.binding.bind_ortvalue_output(output_name, self.output)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """``(B, T, T, 1) float32`` host -> device -> model -> host ``(B, T, T, 1) float32``."""
        self.input.update_inplace(np.ascontiguousarray(inputs))
        self.session.run_with_iobinding(self.binding)  # type: ignore[attr-defined]
        return self.output.numpy()


def _read_info(session: object, name: str) -> ModelInfo:
    props = dict(session.get_modelmeta().custom_metadata_map)  # type: ignore[attr-defined]
    info = ModelInfo.from_props(props, source=name)
    if info.from_defaults:
        warnings.warn(
            f"{name}: no seg metadata; using defaults (tile {info.tile_size}, halo {info.halo}, "
            f"threshold {info.threshold}, {info.normalization} normalisation)",
            SegWarning,
            stacklevel=3,
        )
    return info


def _prepare(image: np.ndarray, method: str, name: str) -> tuple[np.ndarray, bool]:
    """``(H, W[, 1|3|4])`` pixels -> ``((H, W) pixels, lazy)``; lazy = integer pixels normalised per tile."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[-1] in (3, 4):
        warnings.warn(f"{name}: {image.shape[-1]}-channel image converted to gray", SegWarning, stacklevel=4)
        image = rgb_to_gray(image[..., :3])
    if image.ndim != 2 or min(image.shape) < 1:
        raise InputError(f"{name}: expected a (H, W) gray image, got shape {image.shape}")
    if image.dtype.kind in "ui" and image.dtype.itemsize <= 2 and method == DTYPE_RANGE:
        warn_if_8_bit_in_16_bit(image, name)
        return image, True  # per-pixel recipe: normalising each tile equals normalising the image
    return normalize(image, method, name), False


def _crop_clip(out: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(PH, PW)`` accumulator -> ``(height, width) float32 in [0, 1]`` (a copy only when it was padded)."""
    if out.shape != (height, width):
        out = np.ascontiguousarray(out[:height, :width])
    np.clip(out, 0.0, 1.0, out=out)
    return out
