"""Streams: several onnxruntime runs at once give exactly what one run at a time gives, in order."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from seg.runtime import segment_paths
from seg.runtime import streams as streams_module
from seg.runtime.errors import InputError, SegWarning
from seg.runtime.segmenter import Segmenter
from seg.runtime.stats import RunStats
from seg.runtime.streams import MAX_AUTO_STREAMS, SessionPool, ordered_runs, resolve_streams
from tests.helpers import write_png
from tests.runtime.test_providers import tiny_model
from tests.runtime.test_segmenter import META, make


@pytest.mark.parametrize(("cores", "threads"), [(1, [None]), (2, [1, 1]), (3, [1, 1, 1]), (6, [2, 2, 1, 1]),
                                                (8, [2, 2, 2, 2]), (16, [4, 4, 4, 4])])
def test_auto_streams_are_one_per_core_up_to_the_cap_and_use_every_core(monkeypatch: pytest.MonkeyPatch, cores: int,
                                                                        threads: list[int | None]) -> None:
    monkeypatch.setattr(streams_module, "physical_cores", lambda: cores)
    assert resolve_streams(None, None) == (min(cores, MAX_AUTO_STREAMS), threads)
    assert resolve_streams(1, None) == (1, [None])  # one stream keeps the session's own default: all cores
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SegWarning)  # 2 streams on 1 core (tested below)
        assert resolve_streams(2, 3) == (2, [3, 3])  # threads, when given, are per stream
    with pytest.warns(SegWarning, match=f"streams={cores + 2} on {cores} physical cores"):
        assert resolve_streams(cores + 2, None)[1] == [1] * (cores + 2)  # more streams than cores: one thread each


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_bad_stream_counts_raise_one_line(bad: object) -> None:
    with pytest.raises(InputError, match="streams must be an int >= 1") as info:
        resolve_streams(bad, None)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="streams"):
        make(streams=bad)


def test_ordered_runs_keep_input_order_and_run_streams_at_once() -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def run(item: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02 * (item % 3))  # later items often finish first
        with lock:
            running -= 1
        return item * item

    assert list(ordered_runs(range(12), run, 3)) == [(k, k * k) for k in range(12)]
    assert most == 3
    assert list(ordered_runs(range(4), run, 1)) == [(k, k * k) for k in range(4)]


def test_ordered_runs_hand_back_the_items_pulled_before_a_bad_one() -> None:
    def items() -> Iterator[int]:
        yield from range(5)
        raise InputError("image 5: bad")

    seen = []
    with pytest.raises(InputError, match="image 5"):
        for item, result in ordered_runs(items(), lambda k: k + 100, 3):
            seen.append((item, result))
    assert seen == [(k, k + 100) for k in range(5)]


def test_ordered_runs_raise_for_the_failing_item_and_cancel_the_rest() -> None:
    started: list[int] = []

    def run(item: int) -> int:
        started.append(item)
        if item == 2:
            raise ValueError("item 2 failed")
        time.sleep(0.01)
        return item

    results = ordered_runs(range(100), run, 2)
    assert [next(results), next(results)] == [(0, 0), (1, 1)]
    with pytest.raises(ValueError, match="item 2"):
        next(results)
    assert len(started) < 10  # the items after it were never pulled or were cancelled


def test_several_sessions_are_never_lent_twice_at_once() -> None:
    sessions = [object(), object()]
    pool = SessionPool(sessions)  # type: ignore[arg-type]
    holders: dict[int, int] = {}
    clash = threading.Event()

    def use(_: int) -> None:
        with pool.lend() as session:
            key = id(session)
            if holders.setdefault(key, 0) > 0:
                clash.set()
            holders[key] += 1
            time.sleep(0.005)
            holders[key] -= 1

    threads = [threading.Thread(target=lambda: [use(k) for k in range(20)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not clash.is_set()
    assert len(SessionPool(sessions[:1])) == 1


@pytest.mark.filterwarnings("ignore:streams=3 on")  # 3 streams on a 2-core machine: right, and beside the point
@pytest.mark.parametrize("options", [{}, {"tta": True}, {"tile_size": 0}, {"batch_size": 1}])
def test_streams_give_bit_identical_results(options: dict[str, object], rng: np.random.Generator) -> None:
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((64, 64), (200, 170), (40, 90), (300, 301))]
    serial = make(**options).predict_batch(images)
    with make(streams=3, **options) as parallel:
        assert parallel.streams == 3 and len(parallel._pool or []) == 3
        threads = [s.get_session_options().intra_op_num_threads for s in (parallel._pool or SessionPool([])).sessions]
        assert threads == resolve_streams(3, None)[1]
        for _ in range(2):  # tiles of one image spread over batches on different streams, blended in order
            assert all(np.array_equal(a, b) for a, b in zip(serial, parallel.predict_batch(images), strict=True))
        assert parallel.stats.images == 2 * len(images)


def test_streams_really_run_at_once_on_their_own_sessions(rng: np.random.Generator) -> None:
    """Each run holds its session for a while: batches must overlap, each on a session no other run holds."""
    segmenter = make(streams=2, batch_size=1)
    held: list[int] = []
    most, clash = 0, False
    lock = threading.Lock()
    for session in (segmenter._pool or SessionPool([])).sessions:
        real = session.run

        def slow_run(*args: object, _real: object = real, _id: int = id(session)) -> object:
            nonlocal most, clash
            with lock:
                clash |= _id in held
                held.append(_id)
                most = max(most, len(held))
            time.sleep(0.03)
            with lock:
                held.remove(_id)
            return _real(*args)  # type: ignore[operator]

        session.run = slow_run  # type: ignore[method-assign]
    images = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(6)]
    probs = segmenter.predict_batch(images)
    assert most == 2 and not clash
    assert all(np.array_equal(a, b) for a, b in zip(make(batch_size=1).predict_batch(images), probs, strict=True))
    assert segmenter.stats.busy_s < 0.8 * segmenter.stats.compute_s  # overlapping runs counted once


def test_busy_time_counts_overlapping_runs_once() -> None:
    stats = RunStats()

    def one_run() -> None:
        with stats.run():
            time.sleep(0.05)

    threads = [threading.Thread(target=one_run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stats.batches == 2 and stats.compute_s >= 0.1
    assert 0.05 <= stats.busy_s < 0.09
    one_run()
    assert 0.1 <= stats.busy_s < 0.14 and stats.compute_s >= 0.15


def test_a_bad_image_among_good_ones_on_streams_fails_alone(rng: np.random.Generator) -> None:
    images = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(5)]
    images[3] = np.full((64, 64), np.nan, np.float32)
    for options in ({}, {"tile_size": 0}):
        probs = list(make(streams=2, batch_size=1, **options).predict_iter(images, on_error=lambda *_: None))
        assert [p is None for p in probs] == [False, False, False, True, False]
        with pytest.raises(InputError, match="image 3"):
            list(make(streams=2, batch_size=1, **options).predict_iter(images))


def test_predict_region_on_streams_equals_one_stream(rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, (260, 250), dtype=np.uint8)
    rows, cols = slice(30, 200), slice(0, 250)

    def read(r: slice, c: slice) -> np.ndarray:
        return image[r, c]

    one = make(batch_size=1).predict_region(read, image.shape, rows, cols)
    several = make(batch_size=1, streams=2).predict_region(read, image.shape, rows, cols)
    assert np.array_equal(one, several)


def test_a_closed_segmenter_with_streams_refuses_to_predict(rng: np.random.Generator) -> None:
    segmenter = make(streams=2)
    segmenter.close()
    with pytest.raises(Exception, match="closed"):
        segmenter.predict(rng.integers(0, 256, (64, 64), dtype=np.uint8))


def test_segment_paths_runs_one_stream_per_core_unless_told(monkeypatch: pytest.MonkeyPatch, model: Path,
                                                            tmp_path: Path, rng: np.random.Generator) -> None:
    for k in range(3):
        write_png(tmp_path / "in" / f"{k}.png", rng.integers(0, 256, (64, 80), dtype=np.uint8))
    made: list[int] = []
    real = Segmenter

    def spy(*args: object, **kwargs: object) -> Segmenter:
        segmenter = real(*args, **kwargs)  # type: ignore[arg-type]
        made.append(segmenter.streams)
        return segmenter

    monkeypatch.setattr("seg.runtime.folders.Segmenter", spy)
    monkeypatch.setattr(streams_module, "physical_cores", lambda: 2)
    auto = segment_paths(tmp_path / "in", model, tmp_path / "auto", provider="cpu")
    one = segment_paths(tmp_path / "in", model, tmp_path / "one", provider="cpu", streams=1)
    assert made == [2, 1] and auto.images == one.images == 3
    for k in range(3):
        assert (tmp_path / "auto" / f"{k}.png").read_bytes() == (tmp_path / "one" / f"{k}.png").read_bytes()


class _FakeSession:
    def __init__(self, provider: str) -> None:
        self.provider = provider

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider" if self.provider == "cuda" else "CPUExecutionProvider"]


@pytest.mark.parametrize(("provider", "cuda_loads", "streams", "expected"), [
    ("cpu", True, None, [("cpu", 1), ("cpu", 1)]),
    ("auto", False, None, [("auto", 1), ("cpu", 1)]),
    # CUDA runs them: CUDA_AUTO_STREAMS sessions on the GPU, the CPU threads left as given
    ("auto", True, None, [("auto", None), ("cuda", None)]),
    ("cuda", True, None, [("cuda", None), ("cuda", None)]),
    ("cuda", True, 3, [("cuda", None), ("cuda", None), ("cuda", None)]),  # not capped by the CPU's cores
    ("cuda", True, 1, [("cuda", None)]),
])
def test_streams_open_where_the_model_runs(monkeypatch: pytest.MonkeyPatch, provider: str, cuda_loads: bool,
                                           streams: int | None, expected: list[tuple[str, int | None]]) -> None:
    monkeypatch.setattr(streams_module, "physical_cores", lambda: 2)
    monkeypatch.setattr(streams_module, "cuda_problem", lambda: None if cuda_loads else "no libcudart")
    opened: list[tuple[str, int | None]] = []

    def open_one(kind: str, threads: int | None) -> _FakeSession:
        opened.append((kind, threads))
        return _FakeSession("cuda" if kind in ("cuda", "auto") and cuda_loads else "cpu")

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the cores-per-stream warning is for the CPU only
        sessions = streams_module.open_sessions(open_one, provider, streams, None)  # type: ignore[arg-type]
    assert opened == expected and len(sessions) == len(expected)


def test_auto_that_lands_on_the_cpu_after_all_gets_the_cpu_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams_module, "physical_cores", lambda: 2)
    monkeypatch.setattr(streams_module, "cuda_problem", lambda: None)  # the libraries load, the session does not
    opened: list[tuple[str, int | None]] = []

    def open_one(kind: str, threads: int | None) -> _FakeSession:
        opened.append((kind, threads))
        return _FakeSession("cpu")

    sessions = streams_module.open_sessions(open_one, "auto", None, None)  # type: ignore[arg-type]
    assert opened == [("auto", None), ("cpu", 1), ("cpu", 1)] and len(sessions) == 2


def test_every_cuda_stream_gets_the_device_and_provider_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from seg.runtime import segmenter as segmenter_module

    calls: list[tuple[str, dict[str, object]]] = []
    real = segmenter_module.make_session

    def spy(model: object, kind: str, threads: int | None, **kwargs: object) -> object:
        calls.append((kind, kwargs))
        return real(model, "cpu", threads, **kwargs)  # a CPU session stands in for each GPU one

    monkeypatch.setattr(streams_module, "cuda_problem", lambda: None)
    monkeypatch.setattr(streams_module, "session_providers", lambda session: ["cuda", "cpu"])
    monkeypatch.setattr(segmenter_module, "session_providers", lambda session: ["cuda", "cpu"])
    monkeypatch.setattr(segmenter_module, "make_session", spy)
    options = {"arena_extend_strategy": "kSameAsRequested"}
    model = tiny_model("conv", metadata=META)
    with Segmenter(model, provider="cuda", streams=None, device_id=1, provider_options=options) as seg:
        assert seg.streams == streams_module.CUDA_AUTO_STREAMS == 2
        assert seg.providers[0] == "cuda"
    assert [kind for kind, _ in calls] == ["cuda", "cuda"]
    assert all(kw["device_id"] == 1 and kw["provider_options"] == options for _, kw in calls)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_streams_are_refused_on_every_provider(bad: object) -> None:
    for provider in ("cpu", "cuda", "auto"):
        with pytest.raises(InputError, match="streams must be an int >= 1"):
            streams_module.open_sessions(lambda kind, threads: None, provider, bad, None)  # type: ignore


def test_intra_op_threads_in_given_session_options_apply_to_each_stream() -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 3
    with make(streams=2, session_options=options) as segmenter:
        sessions = (segmenter._pool or SessionPool([])).sessions
        assert [s.get_session_options().intra_op_num_threads for s in sessions] == [3, 3]


def test_more_streams_than_cores_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams_module, "physical_cores", lambda: 2)
    with pytest.warns(SegWarning, match="streams=3 on 2 physical cores"):
        assert resolve_streams(3, None) == (3, [1, 1, 1])
