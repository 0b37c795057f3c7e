"""What an app embedding seg.runtime relies on: the top-level names, the context manager and close, onnxruntime
options, (N, H, W) stacks, reporting bad images and going on, and thread safety."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import seg.runtime
from seg.runtime import InputError, SegError, Segmenter, SegWarning
from seg.runtime import segmenter as segmenter_module
from seg.runtime.metadata import ModelInfo
from tests.runtime.test_providers import tiny_model

META = ModelInfo(tile_size=64, halo=16, size_multiple=16).to_props()
MODEL = tiny_model("conv", metadata=META)


def make(**kwargs: Any) -> Segmenter:
    return Segmenter(MODEL, provider="cpu", **kwargs)


# -- namespace -------------------------------------------------------------------------------------------


def test_top_level_names_are_the_embedding_api() -> None:
    assert sorted(seg.runtime.__all__) == sorted([
        "GateError", "InferSummary", "InputError", "ModelInfo", "ProviderError", "RunError", "SegError", "SegWarning",
        "Segmenter", "read_image", "read_pages", "segment_paths", "to_mask", "write_image",
    ])
    assert all(hasattr(seg.runtime, name) for name in seg.runtime.__all__)
    for internal in ("make_session", "session_providers", "normalize", "binarize_label", "list_images",
                     "recommended_halo", "write_pages"):
        assert not hasattr(seg.runtime, internal), internal
    from seg.runtime.io import list_images, write_pages  # noqa: F401 -- still importable from their modules
    from seg.runtime.preprocess import binarize_label, normalize  # noqa: F401
    from seg.runtime.providers import make_session, session_providers  # noqa: F401
    from seg.runtime.tiling import recommended_halo  # noqa: F401


# -- lifetime ----------------------------------------------------------------------------------------------


def test_context_manager_closes_and_later_calls_say_closed(rng: np.random.Generator) -> None:
    image = rng.random((70, 50), dtype=np.float32)
    with make() as seg:
        prob = seg.predict(image)
        assert not seg.closed
    assert prob.shape == (70, 50) and seg.closed and "closed" in repr(seg)
    message = "model \\(bytes\\): this Segmenter is closed; make a new one to predict again"
    for call in (lambda: seg.predict(image), lambda: seg.predict_batch([image]), lambda: seg.predict_iter([image]),
                 lambda: seg.predict_stack(image[None]), lambda: seg.session):
        with pytest.raises(SegError, match=message) as info:
            call()
        assert not isinstance(info.value, InputError)  # an app can tell "closed" from a bad image
    seg.close()  # idempotent
    assert seg.stats.images == 1  # counters survive close


def test_close_while_a_generator_is_open_stops_its_next_batch(rng: np.random.Generator) -> None:
    seg = make(batch_size=1)
    stream = seg.predict_iter(rng.random((64, 64), dtype=np.float32) for _ in range(3))
    next(stream)
    seg.close()
    with pytest.raises(SegError, match="closed"):
        next(stream)


# -- onnxruntime options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True, None])
def test_bad_device_id_is_one_line_with_the_fix(bad: object) -> None:
    with pytest.raises(InputError) as info:
        make(device_id=bad)
    assert str(info.value) == f"device_id must be an int >= 0 (the CUDA device index, 0 = first GPU), got {bad!r}"


def test_session_options_pass_through_and_threads_still_apply() -> None:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    seg = make(session_options=options)
    used = seg.session.get_session_options()
    assert used.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert used.intra_op_num_threads == 1
    assert make(session_options=options, threads=2).session.get_session_options().intra_op_num_threads == 2
    assert make(threads=1).session.get_session_options().intra_op_num_threads == 1


def test_provider_options_and_device_id_reach_make_session(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}
    real = segmenter_module.make_session

    def spy(*args: object, **kwargs: object) -> object:
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(segmenter_module, "make_session", spy)
    seg = make(provider_options={"arena_extend_strategy": "kSameAsRequested"}, device_id=3)
    assert seen["provider_options"] == {"arena_extend_strategy": "kSameAsRequested"} and seen["device_id"] == 3
    assert seg.device_id == 3 and seg.providers == ["cpu"]  # the CPU ignores CUDA's device


# -- stacks --------------------------------------------------------------------------------------------------


def test_predict_of_an_n_h_w_stack_returns_n_h_w_and_shares_batches(rng: np.random.Generator) -> None:
    stack = rng.random((3, 64, 50), dtype=np.float32)  # last axis 50: not 1, 3 or 4 channels -> a stack
    seg = make(batch_size=4)
    probs = seg.predict(stack)
    assert probs.shape == (3, 64, 50) and probs.dtype == np.float32
    assert seg.stats.images == 3 and seg.stats.batches == 1  # three 64-pixel tiles in one onnxruntime call
    for image, prob in zip(stack, probs, strict=True):
        np.testing.assert_allclose(prob, make().predict(image), atol=1e-6)
    np.testing.assert_array_equal(make(batch_size=4).predict_stack(stack), probs)
    whole = make(tile_size=0)
    np.testing.assert_allclose(whole.predict(stack), probs, atol=1e-3)  # whole-image mode takes stacks too
    assert make().predict(np.zeros((0, 20, 30), np.uint8)).shape == (0, 20, 30)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_a_3d_array_whose_last_axis_is_1_3_or_4_is_one_image(channels: int, rng: np.random.Generator) -> None:
    """The other side of the rule: (H, W, C) with C in 1/3/4 is one image; predict_stack reads axis 0 as N."""
    array = rng.integers(0, 255, (5, 40, channels)).astype(np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        one = make().predict(array)
    assert one.shape == (5, 40)
    assert [str(w.message) for w in caught] == ([] if channels == 1 else
                                                 [f"image 0: {channels}-channel image converted to gray"])
    stack = make().predict_stack(array)  # the same array as 5 images of 40 x C pixels
    assert stack.shape == (5, 40, channels)
    np.testing.assert_allclose(stack[2], make().predict(array[2]), atol=1e-6)


def test_predict_stack_needs_3_or_4_dimensions() -> None:
    with pytest.raises(InputError, match=r"^expected an \(N, H, W\) stack of gray images, got shape \(8, 8\)$"):
        make().predict_stack(np.zeros((8, 8), np.float32))


# -- bad images: raise, skip or report -------------------------------------------------------------------


def _mixed(rng: np.random.Generator) -> list[np.ndarray]:
    """Good, NaN, good, wrong shape, good."""
    good = [rng.random((70, 90), dtype=np.float32) for _ in range(3)]
    return [good[0], np.full((8, 8), np.nan, np.float32), good[1], rng.random((2, 3, 4, 5)), good[2]]


@pytest.mark.parametrize("tile_size", [None, 0])
def test_on_error_raise_is_the_default(tile_size: int | None, rng: np.random.Generator) -> None:
    with pytest.raises(InputError, match="image 1: 64 NaN or infinite pixels"):
        list(make(tile_size=tile_size).predict_iter(_mixed(rng)))


@pytest.mark.parametrize("tile_size", [None, 0])
def test_on_error_skip_yields_none_in_place(tile_size: int | None, rng: np.random.Generator) -> None:
    images = _mixed(rng)
    seg = make(tile_size=tile_size, batch_size=2)
    with pytest.warns(SegWarning) as caught:
        probs = list(seg.predict_iter(images, on_error="skip"))
    assert [p is None for p in probs] == [False, True, False, True, False]
    assert [str(w.message).split(":")[:2] for w in caught] == [["skipped", " image 1"], ["skipped", " image 3"]]
    for index in (0, 2, 4):
        np.testing.assert_allclose(probs[index], make(tile_size=tile_size).predict(images[index]), atol=1e-6)
    assert seg.stats.images == 3


@pytest.mark.parametrize("tile_size", [None, 0])
def test_on_error_callback_gets_index_and_error(tile_size: int | None, rng: np.random.Generator) -> None:
    reported: list[tuple[int, str]] = []
    seg = make(tile_size=tile_size)
    probs = list(seg.predict_iter(_mixed(rng), on_error=lambda i, e: reported.append((i, str(e)))))
    assert [p is None for p in probs] == [False, True, False, True, False]
    assert reported == [(1, "image 1: 64 NaN or infinite pixels; replace them before segmenting"),
                        (3, "image 3: expected a (H, W) gray image, got shape (2, 3, 4, 5)")]


def test_on_error_bad_images_at_the_end_or_only_bad_images(rng: np.random.Generator) -> None:
    bad = np.full((4, 4), np.inf, np.float32)
    good = rng.random((64, 64), dtype=np.float32)
    assert [p is None for p in make().predict_iter([good, bad, bad], on_error="skip")] == [False, True, True]
    assert list(make().predict_iter([bad, bad], on_error="skip")) == [None, None]
    assert list(make().predict_iter([], on_error="skip")) == []


def test_on_error_callback_may_stop_the_run(rng: np.random.Generator) -> None:
    def stop(index: int, error: Exception) -> None:
        raise RuntimeError(f"stop at {index}")

    with pytest.raises(RuntimeError, match="stop at 1"):
        list(make().predict_iter(_mixed(rng), on_error=stop))


def test_on_error_skip_keeps_pulling_lazily(rng: np.random.Generator) -> None:
    pulled: list[int] = []

    def images() -> Iterator[np.ndarray]:
        for i in range(10):
            pulled.append(i)
            yield np.full((4, 4), np.nan) if i == 0 else rng.random((64, 64), dtype=np.float32)

    stream = make(batch_size=2).predict_iter(images(), on_error="skip")
    assert next(stream) is None
    assert len(pulled) <= 4


def test_unknown_on_error_lists_the_choices() -> None:
    message = r"^on_error must be 'raise', 'skip' or a callable\(index, error\), got 'ignore'$"
    with pytest.raises(InputError, match=message):
        make().predict_iter([], on_error="ignore")  # type: ignore[call-overload]


# -- threads --------------------------------------------------------------------------------------------------


def _threaded(seg: Segmenter, images: list[np.ndarray], threads: int = 4) -> list[np.ndarray]:
    start = threading.Barrier(threads)

    def work(chunk: list[np.ndarray]) -> list[np.ndarray]:
        start.wait()  # all threads predict at once
        return [seg.predict(image) for image in chunk]

    chunks = [images[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(work, chunks))
    out: list[np.ndarray] = [np.empty(0)] * len(images)
    for offset, chunk in enumerate(results):
        out[offset::threads] = chunk
    return out


def test_concurrent_predicts_equal_serial_ones_and_stats_add_up(rng: np.random.Generator) -> None:
    images = [rng.random((130, 100), dtype=np.float32) for _ in range(16)]
    serial_seg = make(batch_size=3)
    serial = [serial_seg.predict(image) for image in images]
    shared = make(batch_size=3)
    for got, want in zip(_threaded(shared, images), serial, strict=True):
        np.testing.assert_array_equal(got, want)
    assert (shared.stats.images, shared.stats.tiles, shared.stats.batches) == (
        serial_seg.stats.images, serial_seg.stats.tiles, serial_seg.stats.batches)
