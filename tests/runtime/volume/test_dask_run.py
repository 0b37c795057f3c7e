"""``segment_volume`` on Dask: the same answer as ``Segmenter.predict`` on whole slices whatever the block size and
worker count, one onnxruntime session per worker process, resume from done markers, up-front validation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from seg.runtime.errors import InputError
from seg.runtime.io import read_image
from seg.runtime.volume import worker
from seg.runtime.volume.blocks import plan_blocks
from seg.runtime.volume.dask_run import segment_volume
from seg.runtime.volume.store import MARKERS
from tests.runtime.volume.conftest import assert_matches, reference, spawned_workers, still_running, write_zarr

Synth = tuple[Path, np.ndarray]


def _sessions(client: object) -> dict[str, tuple[int, int]]:
    """Per worker: ``(sessions built, blocks served from the cache)`` since the last ``cache_clear``."""
    info = client.run(lambda: worker._cached_segmenter.cache_info())  # type: ignore[attr-defined]
    return {address: (stats.misses, stats.hits) for address, stats in info.items()}


@pytest.mark.parametrize("block", [512, 1024])
def test_blocks_on_two_workers_equal_whole_slice_predictions(block: int, dask_client: object, volume_model: Path,
                                                            synth_volume: Synth, tmp_path: Path) -> None:
    path, expected = synth_volume
    dask_client.run(worker._cached_segmenter.cache_clear)  # type: ignore[attr-defined]
    seen: list[tuple[int, int, int]] = []
    summary = segment_volume(path, volume_model, tmp_path / "out.zarr", client=dask_client, block=block,
                             prob_dtype="float32", progress=lambda *args: seen.append(args))
    blocks = plan_blocks(expected.shape, block, 0)
    assert (summary.blocks, summary.computed, summary.skipped) == (len(blocks), len(blocks), 0)
    assert summary.voxels == expected.size and summary.dashboard == ""
    assert seen[0] == (0, len(blocks), 0) and seen[-1] == (len(blocks), len(blocks), expected.size)
    assert_matches(tmp_path / "out.zarr", expected)
    sessions = _sessions(dask_client)
    assert all(built <= 1 for built, _ in sessions.values()), sessions  # one session per process, not per block
    assert sum(built + hits for built, hits in sessions.values()) == len(blocks)


def test_each_worker_gets_its_thread_count_and_its_own_gpu(dask_client: object) -> None:
    """Intra-op threads = the worker's thread count (1 here); with ``spread_gpus`` (seg's own cluster) worker i
    runs on ``device_id + i``, otherwise every worker on ``device_id``. No GPU is needed to check the plan."""
    addresses = list(dask_client.scheduler_info()["workers"])  # type: ignore[attr-defined]

    def placements(spec: worker.ModelSpec) -> list[tuple[int, int]]:  # as a task on each worker
        futures = [dask_client.submit(worker.placement, spec, workers=[address], pure=False)  # type: ignore
                   for address in addresses]
        return sorted(future.result() for future in futures)

    assert placements(worker.ModelSpec("m.onnx", "0", "cuda", 1)) == [(1, 1), (1, 1)]
    assert placements(worker.ModelSpec("m.onnx", "0", "cuda", 1, spread_gpus=True)) == [(1, 1), (2, 1)]
    assert worker.placement(worker.ModelSpec("m.onnx", "0", "cuda", 3, spread_gpus=True)) == (3, 1)  # no worker


def test_one_worker_of_its_own_cluster_gives_the_same_answer_and_leaves_no_process(
        volume_model: Path, synth_volume: Synth, tmp_path: Path) -> None:
    """seg starts (and shuts down) its own LocalCluster; the first slice only, to keep it quick."""
    path, expected = synth_volume
    import zarr

    one = write_zarr(tmp_path / "one.zarr", zarr.open_array(str(path), mode="r")[:1])
    before = {p.pid for p in spawned_workers()}
    lines: list[str] = []
    summary = segment_volume(one, volume_model, tmp_path / "out.zarr", workers=1, block=1024, prob_dtype="float32",
                             log=lines.append)
    assert summary.computed == 4 and summary.dashboard.startswith("http")
    assert any(summary.dashboard in line for line in lines)
    assert_matches(tmp_path / "out.zarr", expected[:1])
    assert not still_running([p for p in spawned_workers() if p.pid not in before])


def test_isbi_slices_stacked_into_a_zarr(dask_client: object, volume_model: Path, labelled_dir: Path,
                                        tmp_path: Path) -> None:
    """The ISBI 2012 training slices (all 25 of 512 x 512; synthetic stand-ins when the data is absent)."""
    files = sorted((labelled_dir / "train" / "image").iterdir())
    volume = np.stack([read_image(f) for f in files])
    path = write_zarr(tmp_path / "isbi.zarr", volume)
    summary = segment_volume(path, volume_model, tmp_path / "out.zarr", client=dask_client, block=512,
                             prob_dtype="float32")
    assert summary.computed == len(files)
    assert_matches(tmp_path / "out.zarr", reference(volume_model, volume))


def test_resume_redoes_only_unmarked_blocks_and_never_trusts_a_written_one(
        dask_client: object, volume_model: Path, synth_volume: Synth, tmp_path: Path) -> None:
    """A finished output loses 4 markers; those blocks also hold garbage (written, not marked done, as after a
    kill between ``write`` and ``mark_done``). The rerun computes exactly those 4 and fixes them."""
    import zarr

    path, expected = synth_volume
    out = tmp_path / "out.zarr"
    first = segment_volume(path, volume_model, out, client=dask_client, block=1024, prob_dtype="float32")
    undone = plan_blocks(expected.shape, 1024, 0)[1::5]
    prob, mask = zarr.open_array(str(out / "0"), mode="r+"), zarr.open_array(str(out / "labels/mask/0"), mode="r+")
    for block in undone:
        (out / MARKERS / block.key).unlink()
        prob[block.z, block.rows, block.cols] = 0.25
        mask[block.z, block.rows, block.cols] = 7
    lines: list[str] = []
    again = segment_volume(path, volume_model, out, client=dask_client, block=1024, prob_dtype="float32",
                           log=lines.append)
    assert (again.computed, again.skipped) == (len(undone), first.blocks - len(undone))
    assert again.voxels == sum(block.voxels for block in undone)
    assert f"{again.skipped} of {again.blocks} blocks already done, skipped; {len(undone)} to compute" in lines
    assert_matches(out, expected)
    done = segment_volume(path, volume_model, out, client=dask_client, block=1024, prob_dtype="float32")
    assert (done.computed, done.skipped) == (0, first.blocks)


def test_a_run_stopped_after_some_blocks_resumes(dask_client: object, volume_model: Path, synth_volume: Synth,
                                                tmp_path: Path) -> None:
    """KeyboardInterrupt from the progress callback after 3 blocks: the rest are cancelled; a rerun skips the
    blocks that were marked done and computes the others."""
    path, expected = synth_volume
    out = tmp_path / "out.zarr"

    def stop(done: int, total: int, voxels: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_volume(path, volume_model, out, client=dask_client, block=512, prob_dtype="float32", progress=stop)
    again = segment_volume(path, volume_model, out, client=dask_client, block=512, prob_dtype="float32")
    assert again.skipped >= 3 and again.computed == again.blocks - again.skipped > 0
    assert_matches(out, expected)


def test_resume_knows_the_volume_by_its_real_path_not_its_spelling(dask_client: object, volume_model: Path,
                                                                   synth_volume: Synth, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``./synth.zarr/`` from its folder resumes the output of ``/abs/synth.zarr``; a copy of the volume elsewhere,
    under the same name, does not (its blocks would mix two volumes)."""
    import shutil

    path, _ = synth_volume
    out = tmp_path / "out.zarr"
    first = segment_volume(path, volume_model, out, client=dask_client, block=1024, prob_dtype="float32")
    monkeypatch.chdir(path.parent)
    again = segment_volume(f"./{path.name}/", volume_model, out, client=dask_client, block=1024, prob_dtype="float32")
    assert (again.computed, again.skipped) == (0, first.blocks)
    copy = shutil.copytree(path, tmp_path / "elsewhere" / path.name)
    with pytest.raises(InputError, match=r"an existing seg output that differs \(source .* there, .*elsewhere"):
        segment_volume(copy, volume_model, out, client=dask_client, block=1024, prob_dtype="float32")


def test_an_output_that_is_or_holds_the_input_is_refused(volume_model: Path, synth_volume: Synth) -> None:
    path, _ = synth_volume
    for output in (path, path.parent):  # --overwrite would delete the volume being read
        with pytest.raises(InputError, match=r"is, holds or sits inside the input .*synth.zarr; choose another"):
            segment_volume(path, volume_model, output, overwrite=True)
    assert (path / "zarr.json").is_file()


def test_an_output_inside_the_store_of_an_input_array_is_refused(volume_model: Path, tmp_path: Path) -> None:
    """``em.zarr/0`` names an array inside the store ``em.zarr``; an output inside that store would be deleted
    with it by --overwrite, or mixed into the raw data."""
    import zarr

    store = tmp_path / "em.zarr"
    zarr.open_group(str(store), mode="w").create_array("0", data=np.zeros((1, 64, 64), np.uint8))
    with pytest.raises(InputError, match=r"is, holds or sits inside the input .*em.zarr/0; choose another"):
        segment_volume(store / "0", volume_model, store / "seg.zarr", block=512)
    assert not (store / "seg.zarr").exists()


def test_a_missing_extra_is_named_before_a_finished_output_is_touched(
        dask_client: object, volume_model: Path, synth_volume: Synth, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    out = tmp_path / "out.zarr"
    segment_volume(synth_volume[0], volume_model, out, client=dask_client, block=1024)
    before = sorted(p.name for p in (out / MARKERS).iterdir())
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if dask[distributed] were not installed
    with pytest.raises(InputError, match=r"volumes need distributed, which this install lacks; .*\[volume\]"):
        segment_volume(synth_volume[0], volume_model, out, overwrite=True, block=1024)
    assert sorted(p.name for p in (out / MARKERS).iterdir()) == before and before


@pytest.mark.parametrize(("options", "message"), [
    ({"block": 1000}, "--block 1000: must be a positive multiple of 512"),
    ({"halo": 600, "tile_size": 1280, "block": 512}, "smaller than the model's halo (600 px)"),
    ({"prob_dtype": "int8"}, "--prob-dtype 'int8' is not one of uint8, float16, float32"),
    ({"threshold": 1.5}, "threshold 1.5 is outside [0, 1]"),
    ({"tile_size": 0}, "--tile 0 (whole images) is not supported"),
    ({"workers": 0}, "--workers must be an int >= 1, got 0"),
    ({"model": "missing.onnx"}, "missing.onnx: no such model file"),
    ({"input": "missing.zarr"}, "missing.zarr: no such file or folder"),
])
def test_bad_input_raises_one_line_before_writing_anything(options: dict[str, object], message: str,
                                                           volume_model: Path, synth_volume: Synth,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    arguments = {"input": synth_volume[0], "model": volume_model, "output": tmp_path / "out.zarr"}
    arguments.update({k: options.pop(k) for k in list(options) if k in arguments})
    with pytest.raises(InputError) as caught:
        segment_volume(**arguments, **options)  # type: ignore[arg-type]
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_an_hdf5_dataset_is_read_on_the_workers(dask_client: object, volume_model: Path, tmp_path: Path) -> None:
    """The source travels to the workers as a description and each worker opens the HDF5 file itself."""
    import h5py

    volume = np.random.default_rng(1).integers(0, 65536, (2, 600, 700), dtype=np.uint16)
    with h5py.File(tmp_path / "em.h5", "w") as handle:
        handle.create_dataset("raw/volume", data=volume, chunks=(1, 128, 128))
    summary = segment_volume(f"{tmp_path / 'em.h5'}:/raw/volume", volume_model, tmp_path / "out.zarr",
                             client=dask_client, block=512, prob_dtype="float32")
    assert summary.computed == 8
    assert_matches(tmp_path / "out.zarr", reference(volume_model, volume))


@pytest.mark.slow
def test_sixteen_slices_of_2048_give_the_whole_slice_answer_for_every_block_size(
        dask_client: object, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The acceptance case at full size: a 16 x 2048 x 2048 uint8 volume on 2 workers with blocks of 512, 1024
    and 2048 against ``predict`` on each whole slice (one worker: ``test_one_worker_of_its_own_cluster...``).
    A 9x9 convolution (receptive field 9) keeps it affordable on 2 cores; its context still crosses every
    block edge."""
    import shutil

    from tests.runtime.test_segmenter import wide_model

    root = tmp_path_factory.mktemp("big")
    model = root / "wide9.onnx"
    model.write_bytes(wide_model(9))
    volume = np.random.default_rng(16).integers(0, 256, (16, 2048, 2048), dtype=np.uint8)
    path = write_zarr(root / "big.zarr", volume, chunks=(1, 512, 512))
    expected = reference(model, volume)
    for block in (512, 1024, 2048):
        out = root / f"block-{block}.zarr"
        summary = segment_volume(path, model, out, client=dask_client, block=block, prob_dtype="float32")
        assert summary.computed == 16 * (2048 // block) ** 2
        assert_matches(out, expected)
        shutil.rmtree(out)


def test_unusable_pixels_in_a_later_slice_name_the_volume_and_the_slice(dask_client: object, volume_model: Path,
                                                                         tmp_path: Path) -> None:
    """Slice 0 passes the up-front check; slice 1 holds a float pixel outside [0, 1]. The error is one line with
    the volume and the slice, raised once (a block's unusable pixels are returned, not retried)."""
    volume = np.full((2, 512, 512), 0.5, np.float32)
    volume[1, 10, 10] = 3.0
    path = write_zarr(tmp_path / "floats.zarr", volume)
    with pytest.raises(InputError) as caught:
        segment_volume(path, volume_model, tmp_path / "out.zarr", client=dask_client, block=512)
    message = str(caught.value)
    assert message.startswith(f"{path}: slice 1, region 0:512, 0:512: float pixels outside [0, 1]"), message
    assert "\n" not in message
