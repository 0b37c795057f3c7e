"""Fixtures for the Dask volume tests: one small LocalCluster for the session, a tiny wide-conv model, synthetic
and real volumes stored as Zarr v3, and the reference answer (``Segmenter.predict`` on each whole slice).

The model is ``wide_model(17)`` (one 17x17 conv, receptive field 17, tile 128 metadata, so 256-pixel large
tiles on these slices): wide enough that a block's answer needs context from its neighbours, cheap enough that
every test runs in seconds on 2 cores.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from seg.runtime.preprocess import to_mask
from seg.runtime.segmenter import Segmenter
from tests.runtime.test_segmenter import wide_model

SYNTH_SHAPE = (3, 1100, 1300)  # (Z, Y, X): sides are not multiples of any block size
TOLERANCE = 1e-5


@pytest.fixture(scope="session")
def dask_client() -> Iterator[object]:
    """A ``distributed.Client`` of a LocalCluster with 2 worker processes of 1 thread each. Closed at the end
    of the session; the processes it started (workers, restarted ones included) must all be gone then."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client
        workers = spawned_workers()
    assert not still_running(workers), "the test cluster left worker processes behind"


def spawned_workers() -> list[psutil.Process]:
    """This process's descendants started by multiprocessing's spawn (Dask worker processes); not its
    resource tracker, which lives as long as the test process."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:  # it exited meanwhile
            continue
    return found


def still_running(processes: list[psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
    """Those of ``processes`` still running (zombies count as gone) after waiting up to ``timeout`` s."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    running = []
    for process in alive:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
        except psutil.Error:
            continue
    return running


@pytest.fixture(scope="session")
def volume_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "wide17.onnx"
    path.write_bytes(wide_model(17))
    return path


def write_zarr(path: Path, volume: np.ndarray, chunks: tuple[int, ...] | None = None) -> Path:
    """``volume`` as a Zarr v3 array at ``path`` (chunks: one slice by 256 x 256 unless given)."""
    import zarr

    chunks = chunks or (1,) * (volume.ndim - 2) + (256, 256)
    array = zarr.create_array(store=str(path), shape=volume.shape, chunks=chunks, dtype=volume.dtype,
                              zarr_format=3)
    array[...] = volume
    return path


def reference(model: Path, volume: np.ndarray) -> np.ndarray:
    """``Segmenter.predict`` on each whole ``(Y, X)`` slice: ``(Z, Y, X) float32 in [0, 1]``."""
    with Segmenter(model, "cpu", threads=1) as seg:
        return seg.predict_stack(volume)


def read_output(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Level 0 of a volume output: ``(probability as stored, mask uint8)``, both ``(Z, Y, X)``."""
    import zarr

    return zarr.open_array(str(path / "0"), mode="r")[...], zarr.open_array(str(path / "labels/mask/0"),
                                                                            mode="r")[...]


def assert_matches(path: Path, expected: np.ndarray, threshold: float = 0.5) -> None:
    """The float32 output at ``path`` equals ``expected`` within ``TOLERANCE``; masks are identical except where
    ``expected`` lies within ``TOLERANCE`` of ``threshold`` (either side is then a right answer)."""
    prob, mask = read_output(path)
    assert prob.dtype == np.float32 and prob.shape == expected.shape
    assert float(np.abs(prob - expected).max()) <= TOLERANCE
    differs = mask != to_mask(expected, threshold)
    assert not (differs & (np.abs(expected - threshold) > TOLERANCE)).any()


@pytest.fixture(scope="session")
def synth_volume(tmp_path_factory: pytest.TempPathFactory, volume_model: Path) -> tuple[Path, np.ndarray]:
    """``(zarr path, reference probability)`` of a seeded ``SYNTH_SHAPE`` uint8 volume: smooth blobs plus noise
    (so the probability crosses the threshold often)."""
    rng = np.random.default_rng(0)
    z, y, x = SYNTH_SHAPE
    yy, xx = np.mgrid[0:y, 0:x]
    base = 127 + 80 * np.sin(yy / 37.0)[None] * np.cos(xx / 23.0)[None] * np.arange(1, z + 1)[:, None, None] / z
    volume = np.clip(base + rng.normal(0, 30, SYNTH_SHAPE), 0, 255).astype(np.uint8)
    path = write_zarr(tmp_path_factory.mktemp("synth") / "synth.zarr", volume)
    return path, reference(volume_model, volume)
