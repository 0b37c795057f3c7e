"""``Segmenter``: an exported seg ONNX model applied to gray images of any size, tiled and batched.

>>> with Segmenter("model.onnx", provider="auto") as seg:
...     prob = seg.predict(image)   # (H, W) any dtype -> (H, W) float32 in [0, 1], 1.0 = cell interior
...     probs = seg.predict(stack)  # (N, H, W) -> (N, H, W) float32 in [0, 1]

Tiles of ``tile_size`` pixels overlapping by ``halo`` are streamed through onnxruntime ``batch_size`` at a
time (tiles of consecutive images share batches) and blended into one float32 output per image, so
memory stays at the image, its output and a few batches of tiles, whatever the image size.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from seg.runtime import tiling
from seg.runtime.errors import InputError, RunError, SegError
from seg.runtime.inputs import OnError, Report, as_array, is_stack, prepare_image, reporter
from seg.runtime.metadata import read_model_info
from seg.runtime.package import is_package, open_package
from seg.runtime.plan import TilePlan
from seg.runtime.preprocess import scale_small_integers
from seg.runtime.providers import check_device_id, make_session, run_errors, session_providers
from seg.runtime.region import region_tiles
from seg.runtime.stats import RunStats
from seg.runtime.streams import SessionPool, open_sessions, ordered_runs
from seg.runtime.tiling import Tile, TiledImage

if TYPE_CHECKING:
    import onnxruntime as ort

class Segmenter:
    """Run a seg ONNX model (``(N, H, W, 1) float32`` in and out) on images of any size.

    ``provider``: ``"auto"`` | ``"cuda"`` (strict: ``ProviderError`` if CUDA cannot load) | ``"cpu"``;
    ``providers`` lists what onnxruntime really uses. ``device_id``: the CUDA device (int >= 0).
    ``threads``: CPU intra-op threads of each stream (default: physical cores, split between CPU streams).
    ``streams``: onnxruntime runs at once, each on its own session (``seg.runtime.streams``): 1 (default) gives
    one image the lowest latency, several give more images per second over many images or tiles. None: one per
    physical core (at most 4) on the CPU, with bit-identical results; two on CUDA, whose copies then overlap
    kernels, each session with its own GPU memory and its own cuDNN algorithm choice (results equal to
    floating-point rounding).
    ``session_options`` (an onnxruntime ``SessionOptions``; ``threads``, or each stream's share of the cores,
    still sets the sessions' intra-op threads, the object itself is left unchanged) and
    ``provider_options`` (merged into the running provider's options) pass through to onnxruntime.

    ``tile_size``/``halo``: from the model's metadata when None; ``tile_size=0`` runs each image whole
    (reflect-padded to the size multiple). With the metadata's tile, an image at least twice it in both
    dimensions is cut into tiles of twice that side (``large_tile``) where that computes fewer pixels,
    ``batch_size / 4`` at a time: the same
    pixels per onnxruntime call, so the same memory, and half the halo overhead. An image smaller than the
    tile both ways runs as one smaller square tile (``small_step`` multiples; few distinct shapes, so batches
    and CUDA's per-shape algorithm search stay shared). An explicit ``tile_size`` is used as given.
    ``blend``: ``"gaussian"`` | ``"ramp"``. ``tta``: average the 8 flips/rotations (8 model runs per tile).

    Thread safety: one Segmenter may be shared by threads. Concurrent ``predict``/``predict_stack``/
    ``predict_batch`` calls, and separate ``predict_iter`` generators, give what serial calls give (bit for
    bit, except that two CUDA streams may round differently):
    onnxruntime runs one session from several threads (with several streams, each run takes a free stream's
    session) and ``stats`` is updated under a lock. One ``predict_iter`` generator must not be
    advanced from two threads at once (no Python generator may). ``close`` (or leaving a ``with`` block)
    releases the sessions (and their GPU memory); any later call, including batches still to come in other
    threads, raises ``SegError`` ("closed").
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
        streams: int | None = 1,
        device_id: int = 0,
        session_options: ort.SessionOptions | None = None,
        provider_options: Mapping[str, object] | None = None,
    ) -> None:
        self.name = "model (bytes)" if isinstance(model, bytes | bytearray) else str(model)
        self.device_id = check_device_id(device_id)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral)
                                    or threads < 1):
            raise InputError(f"threads {threads!r}: give a whole number of CPU threads >= 1, or None (the "
                             "physical cores)")
        package = open_package(model) if is_package(model) else None  # a bioimage.io zip: its checked ONNX
        options: dict[str, Any] = dict(options=session_options, provider_options=provider_options, device_id=device_id)
        threads = threads or (session_options.intra_op_num_threads if session_options else 0) or None  # per stream
        sessions = open_sessions(
            lambda kind, count: make_session(model, kind, count, **options) if package is None
            else package.session(kind, count, **options), provider, streams, threads)
        self._pool: SessionPool | None = SessionPool(sessions)
        session = sessions[0]
        self.streams = len(sessions)
        self.info = read_model_info(session, self.name) if package is None else package.model_info(session)
        self.providers: list[str] = session_providers(session)
        self._input = session.get_inputs()[0].name
        self.uint8_input = session.get_inputs()[0].type == "tensor(uint8)"  # normalises in its graph
        self._output = session.get_outputs()[0].name
        shape = list(session.get_inputs()[0].shape)
        self.plan = TilePlan.resolve(self.info, shape, self.name, tile_size, halo, batch_size, blend)
        plan = self.plan  # its settings, copied as read-only attributes:
        self.tile_size, self.halo, self.batch_size, self.blend = plan.tile_size, plan.halo, plan.batch_size, blend
        self.large_tile, self.small_step, self.multiple = plan.large_tile, plan.small_step, plan.multiple
        self.transforms = tiling.DIHEDRAL if tta else (0,)
        self.stats = RunStats()

    def __repr__(self) -> str:
        state = ", closed" if self.closed else ""
        return (
            f"Segmenter({self.name!r}, providers={self.providers}, tile_size={self.tile_size}, "
            f"large_tile={self.large_tile}, small_step={self.small_step}, "
            f"halo={self.halo}, batch_size={self.batch_size}, streams={self.streams}, "
            f"tta={len(self.transforms) > 1}{state})"
        )

    # -- lifetime ---------------------------------------------------------------------------------

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the onnxruntime sessions (idempotent). Later calls raise ``SegError``."""
        self._pool = None

    @property
    def closed(self) -> bool:
        """True once ``close`` ran."""
        return self._pool is None

    @property
    def session(self) -> ort.InferenceSession:
        """The (first stream's) onnxruntime ``InferenceSession``; ``SegError`` once the Segmenter is closed."""
        return self._open_pool().sessions[0]

    def _open_pool(self) -> SessionPool:
        pool = self._pool
        if pool is None:
            raise SegError(f"{self.name}: this Segmenter is closed; make a new one to predict again")
        return pool

    # -- public predictions -----------------------------------------------------------------------

    def predict(self, image: np.ndarray) -> np.ndarray:
        """One image -> ``(H, W) float32 in [0, 1]`` (1.0 = cell interior), or a stack -> ``(N, H, W)``.

        ``image``: ``(H, W)`` uint8/uint16/other integers/float/bool, or ``(H, W, C)`` with C = 1, or 3/4
        (made gray with a ``SegWarning``). A 3-D array is one image with channels when its last axis is 1, 3
        or 4, and otherwise an ``(N, H, W)`` stack, predicted as ``predict_stack`` does (``(N, H, W) float32
        in [0, 1]``): a stack of images 1, 3 or 4 pixels wide must go through ``predict_stack``.
        Raises ``InputError`` (bad shape, NaN/inf pixels, unsupported dtype), ``SegError`` once closed.
        """
        image = as_array(image)
        if is_stack(image):
            return self.predict_stack(image)
        return next(self.predict_iter([image]))

    def predict_stack(self, stack: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` (or ``(N, H, W, C)``, C = 1/3/4) -> ``(N, H, W) float32 in [0, 1]``; axis 0 is always
        the image axis. Tiles of all N images share batches. ``InputError`` for other ranks or a bad image."""
        stack = as_array(stack)
        if stack.ndim not in (3, 4):
            raise InputError(f"expected an (N, H, W) stack of gray images, got shape {stack.shape}")
        out = np.empty(stack.shape[:3], np.float32)
        for index, prob in enumerate(self.predict_iter(stack)):
            out[index] = prob
        return out

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each ``(H, W)`` image -> ``(H, W) float32 in [0, 1]``, in order; tiles of all images share batches."""
        return list(self.predict_iter(images))

    @overload
    def predict_iter(self, images: Iterable[np.ndarray], on_error: Literal["raise"] = ...) -> Iterator[np.ndarray]:
        ...

    @overload
    def predict_iter(self, images: Iterable[np.ndarray], on_error: OnError) -> Iterator[np.ndarray | None]:
        ...

    def predict_iter(self, images: Iterable[np.ndarray], on_error: OnError = "raise") -> Iterator[Any]:
        """Lazily yield one ``(H, W) float32 in [0, 1]`` map per image, in order; pulls images only as
        batches need them (with ``streams`` > 1, enough for one batch per stream and one more).

        ``on_error`` decides what an image that fails preparation (``InputError``: wrong shape, NaN/inf
        pixels, unsupported dtype) does: ``"raise"`` (default) raises it; ``"skip"`` logs it and yields None
        in its place; a callable ``on_error(index, error)`` is called, then None is yielded in its place (the
        callable may raise to stop). Outputs stay aligned with inputs either way. ``SegError`` once closed.
        """
        report = reporter(on_error)
        self._open_pool()  # a closed Segmenter raises here, not at the first next()
        if not self.plan.tile_size:
            return self._iter_whole(images, report)
        return self._iter_tiled(images, report)

    def predict_region(self, read: Callable[[slice, slice], np.ndarray], shape: tuple[int, int], rows: slice,
                       cols: slice) -> np.ndarray:
        """``rows x cols`` of what ``predict`` returns for an ``(H, W) = shape`` image, computing only the
        tiles of that image's own grid that reach into the box: ``(len(rows), len(cols)) float32 in [0, 1]``,
        the same whatever box the image is cut into.

        ``read(row_slice, col_slice)`` returns those pixels of the image (``(h, w)`` 8/16-bit integers or
        float in [0, 1]: other floats and wider integers are scaled by their values, which would depend on the
        box, so they raise ``InputError``). Needs tiled mode (``tile_size`` > 0). ``SegError`` once closed."""
        self._open_pool()
        region = region_tiles(self.plan, shape, rows, cols)
        name = f"region {rows.start}:{rows.stop}, {cols.start}:{cols.stop}"
        pixels = np.asarray(read(region.read_rows, region.read_cols))
        wanted = (region.read_rows.stop - region.read_rows.start, region.read_cols.stop - region.read_cols.start)
        if pixels.shape[:2] != wanted:
            raise InputError(f"{name}: read() returned {pixels.shape[:2]} pixels for {wanted}; it must return "
                             "image[row_slice, col_slice]")
        if pixels.dtype.kind in "iu" and pixels.dtype.itemsize > 2:
            raise InputError(f"{name}: {pixels.dtype} pixels; a wide integer's scale is read from its values, "
                             "which differ from box to box: give uint8/uint16 or float in [0, 1]")
        if pixels.dtype.kind == "f" and pixels.size and not 0.0 <= float(np.nanmin(pixels)) <= float(
                np.nanmax(pixels)) <= 1.0:
            raise InputError(f"{name}: float pixels outside [0, 1]; scale the image to [0, 1] (or give integers) "
                             "so that every region is normalised alike")
        pixels, lazy = self._prepared(pixels, name)
        (down, right), (height, width) = region.read_offset, region.size
        padded = tiling.reflect_pad(pixels, down + height, right + width)[down:, right:]
        job = TiledImage(height, width, padded, lazy, region.tile, region.rows, region.cols, len(self.transforms))
        for _ in self._run_batches(tiling.batched(self._job_tiles(job), self.batch_for(job.tile))):
            pass
        out = job.blended(region.core_rows, region.core_cols)  # a view: clipped in place below
        self.stats.add(images=1)
        np.clip(out, 0.0, 1.0, out=out)
        return np.ascontiguousarray(out)

    # -- tiled mode -------------------------------------------------------------------------------

    def _iter_tiled(self, images: Iterable[np.ndarray], report: Report) -> Iterator[np.ndarray | None]:
        jobs: list[TiledImage | None] = []  # None: an image that failed preparation and was reported
        tiles = self._tile_stream(images, jobs, report)
        batches = tiling.batched(tiles, lambda tile: self.batch_for(tile[0].tile), key=lambda tile: tile[0].tile)
        for _ in self._run_batches(batches):
            yield from self._ready(jobs)
        yield from self._ready(jobs)

    def _run_batches(self, batches: Iterable[list[Tile]]) -> Iterator[None]:
        """Run ``batches`` on the streams; each one's predictions are added to its images in batch order (as
        serial runs would), after which this yields once."""
        gathered = ((batch, self._gather(batch)) for batch in batches)
        for (batch, _), preds in ordered_runs(gathered, lambda pair: self._run(pair[1]), self.streams):
            self._scatter(batch, preds)
            yield

    def _ready(self, jobs: list[TiledImage | None]) -> Iterator[np.ndarray | None]:
        """Pop and finish the leading jobs that are complete (or failed: None), in input order."""
        while jobs and (jobs[0] is None or jobs[0].pending == 0):
            job = jobs.pop(0)
            yield None if job is None else self._finish(job)

    def _tile_stream(self, images: Iterable[np.ndarray], jobs: list[TiledImage | None],
                     report: Report) -> Iterator[Tile]:
        for index, image in enumerate(images):
            prepared = self._prepare(image, index, report)
            job = None if prepared is None else self._start(*prepared)
            jobs.append(job)
            if job is not None:
                yield from self._job_tiles(job)

    def _job_tiles(self, job: TiledImage) -> Iterator[Tile]:
        for row in job.rows:
            for col in job.cols:
                for k in self.transforms:
                    yield job, row, col, k

    def _prepare(self, image: np.ndarray, index: int, report: Report) -> tuple[np.ndarray, bool] | None:
        """``prepare_image``'d pixels of image ``index``, or None after ``report`` took its ``InputError``."""
        try:
            return self._prepared(image, f"image {index}")
        except InputError as exc:
            if report is None:
                raise
            report(index, exc)
            return None

    def _prepared(self, image: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
        """``prepare_image``; a model that takes uint8 pixels (``uint8_input``) accepts 8-bit images only."""
        pixels, lazy = prepare_image(image, self.info.normalization, name)
        if self.uint8_input and not (lazy and pixels.dtype == np.uint8):
            raise InputError(f"{name}: {self.name} takes 8-bit pixels, this image is {np.asarray(image).dtype}; "
                             "convert it to uint8 or use the float32 model")
        return pixels, lazy

    def tile_for(self, height: int, width: int) -> int:
        """The tile side used for an ``(height, width)`` image (0 = whole image); see ``TilePlan.tile_for``."""
        return self.plan.tile_for(height, width)

    def batch_for(self, tile: int) -> int:
        """Tiles per onnxruntime call for ``tile``-pixel tiles; see ``TilePlan.batch_for``."""
        return self.plan.batch_for(tile)

    def _start(self, pixels: np.ndarray, lazy: bool) -> TiledImage:
        height, width = pixels.shape
        tile = self.tile_for(height, width)
        padded_h = tiling.padded_length(height, tile, self.plan.multiple)
        padded_w = tiling.padded_length(width, tile, self.plan.multiple)
        pixels = tiling.reflect_pad(pixels, padded_h, padded_w)
        rows = self.plan.windows(padded_h, tile)
        cols = self.plan.windows(padded_w, tile)
        return TiledImage(height, width, pixels, lazy, tile, rows, cols, len(self.transforms))

    def _gather(self, batch: list[Tile]) -> np.ndarray:
        """The model input of ``batch``: ``(B, T, T, 1)`` raw uint8, or float32 in [0, 1]."""
        tile = batch[0][0].tile
        feed = np.uint8 if self.uint8_input else np.float32  # (B, T, T, 1) raw uint8, or float32 in [0, 1]
        inputs = np.empty((len(batch), tile, tile, 1), feed)
        for i, (job, (y, _), (x, _), k) in enumerate(batch):
            crop = job.pixels[y : y + tile, x : x + tile]
            scale = job.lazy and not self.uint8_input
            if scale and k == 0:
                scale_small_integers(crop, out=inputs[i, :, :, 0])  # normalised straight into the feed
            else:
                inputs[i, :, :, 0] = tiling.dihedral(scale_small_integers(crop) if scale else crop, k)
        return inputs

    def _scatter(self, batch: list[Tile], preds: np.ndarray) -> None:
        """Add ``preds`` (``(B, T, T) float32 in [0, 1]``, one per tile of ``batch``) to their images."""
        scale = np.float32(1.0 / len(self.transforms))
        for (job, (y, wy), (x, wx), k), pred in zip(batch, preds, strict=True):
            back = tiling.undo_dihedral(pred, k, self.info.label_offset)
            if job.single:  # its one window is all ones (open at every edge): no blending
                job.out = back.copy()
            else:
                tiling.accumulate(job.out, back, y, x, np.outer(wy * scale, wx))
            job.pending -= 1
        self.stats.add(tiles=len(batch))

    def _finish(self, job: TiledImage) -> np.ndarray:
        out = job.blended()
        job.pixels = job.out = np.empty((0, 0), np.float32)  # drop references early
        self.stats.add(images=1)
        return _crop_clip(out, job.height, job.width)

    # -- whole-image mode -------------------------------------------------------------------------

    def _iter_whole(self, images: Iterable[np.ndarray], report: Report) -> Iterator[np.ndarray | None]:
        prepared = (self._prepare(image, index, report) for index, image in enumerate(images))

        def run(pixels: tuple[np.ndarray, bool] | None) -> np.ndarray | None:
            return None if pixels is None else self._predict_whole(*pixels)

        for _, prob in ordered_runs(prepared, run, self.streams):
            yield prob

    def _predict_whole(self, pixels: np.ndarray, lazy: bool) -> np.ndarray:
        height, width = pixels.shape
        if lazy and not self.uint8_input:
            pixels = scale_small_integers(pixels)
        padded = tiling.pad_to_multiple(pixels, self.plan.multiple)
        out = np.zeros(padded.shape, np.float32)
        for k in self.transforms:
            pred = self._run(np.ascontiguousarray(tiling.dihedral(padded, k))[None, :, :, None])[0]
            out += tiling.undo_dihedral(pred, k, self.info.label_offset)
        out /= np.float32(len(self.transforms))
        self.stats.add(images=1, tiles=len(self.transforms))
        return _crop_clip(out, height, width)

    # -- session ----------------------------------------------------------------------------------

    def _run(self, inputs: np.ndarray) -> np.ndarray:
        """``(B, H, W, 1) float32`` -> ``(B, H, W) float32``; pads B up to a static batch dimension.

        A plain ``session.run`` on every provider, CUDA included (docs/design.md says why no IO binding).
        ``SegError`` once closed."""
        pool = self._open_pool()
        count = inputs.shape[0]
        fixed = self.plan.static_batch
        if fixed and count < fixed:
            inputs = np.concatenate([inputs, np.zeros((fixed - count, *inputs.shape[1:]), inputs.dtype)])
        with pool.lend() as session:
            self._open_pool()  # closed while this run waited for a free stream
            with self.stats.run(), run_errors(self.name, self.providers[0], inputs.shape):
                (outputs,) = session.run([self._output], {self._input: inputs})
        if outputs.shape != inputs.shape:
            raise RunError(f"{self.name}: the model gave {outputs.shape} for an input of {inputs.shape}; seg needs "
                           "a probability map the size of its input (N, H, W, 1): not a seg model")
        return np.asarray(outputs, np.float32)[:count, :, :, 0]


def _crop_clip(out: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(PH, PW)`` accumulator -> ``(height, width) float32 in [0, 1]`` (a copy only when it was padded)."""
    if out.shape != (height, width):
        out = np.ascontiguousarray(out[:height, :width])
    np.clip(out, 0.0, 1.0, out=out)
    return out
