"""Folder/file/glob/stack inference: outputs, resume, failures, name collisions, summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from seg.runtime.errors import InputError, SegWarning
from seg.runtime.folders import default_output, resolve_inputs, segment_paths
from seg.runtime.io import read_image, read_pages
from seg.runtime.preprocess import to_mask
from seg.runtime.segmenter import Segmenter


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    root.mkdir()
    for i, shape in enumerate([(64, 64), (50, 90), (100, 70)]):
        Image.fromarray(rng.integers(0, 255, shape).astype(np.uint8)).save(root / f"s{i}.png")
    return root


def test_folder_run_writes_masks_probs_and_overlays(folder: Path, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = segment_paths(folder, model, out, provider="cpu", save_prob=True, overlay=True)
    assert (summary.files, summary.images, summary.skipped, summary.failures) == (3, 3, 0, [])
    assert summary.provider == "cpu" and summary.compute_s > 0 and summary.images_per_s > 0
    seg = Segmenter(model, "cpu")
    for image_path in sorted(folder.iterdir()):
        image = read_image(image_path)
        prob = seg.predict(image)
        mask = read_image(out / image_path.name)
        np.testing.assert_array_equal(mask, to_mask(prob, 0.5))
        np.testing.assert_allclose(tifffile.imread(out / "prob" / f"{image_path.stem}.tif"), prob, atol=1e-6)
        overlay = np.asarray(Image.open(out / "overlay" / image_path.name))
        assert overlay.shape == (*image.shape, 3)
        membrane = mask == 0
        assert (overlay[..., 0][membrane] >= overlay[..., 1][membrane]).all()
    assert sorted(p.name for p in out.iterdir()) == [".seg-infer.json", "overlay", "prob", "s0.png", "s1.png", "s2.png"]
    assert set(summary.to_dict()) >= {"images_per_s", "compute_images_per_s", "provider"}


def test_a_calibrated_stack_gives_masks_probs_and_overlays_at_its_calibration(model: Path, tmp_path: Path) -> None:
    """A Fiji stack (ImageJ unit, spacing, pixel size) in: every output stack opens in Fiji at the same size."""
    pixels = np.random.default_rng(0).integers(0, 255, (3, 48, 48), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "em.tif", pixels, imagej=True, resolution=(250.0, 250.0),
                     metadata={"spacing": 0.05, "unit": "micron", "axes": "ZYX"})
    segment_paths(tmp_path / "em.tif", model, tmp_path / "out", provider="cpu", save_prob=True, overlay=True)
    for output in ("em.tif", "prob/em.tif", "overlay/em.tif"):
        with tifffile.TiffFile(tmp_path / "out" / output) as tif:
            assert tif.pages[0].tags["XResolution"].value == (250, 1), output
            assert (tif.imagej_metadata or {}).get("spacing") == 0.05, output
            assert (tif.imagej_metadata or {}).get("unit") == "micron", output
            assert len(tif.series[0].shape) >= 3, output


def test_resume_skips_complete_outputs_and_overwrite_redoes_them(folder: Path, model: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "out"
    segment_paths(folder, model, out, provider="cpu")
    (out / "s1.png").unlink()
    again = segment_paths(folder, model, out, provider="cpu")
    assert (again.images, again.skipped) == (1, 2)
    assert (out / "s1.png").is_file()
    more = segment_paths(folder, model, out, provider="cpu", save_prob=True)  # new output kind: not complete
    assert more.images == 3
    assert segment_paths(folder, model, out, provider="cpu", overwrite=True).images == 3


def test_bad_file_is_reported_and_the_run_goes_on(folder: Path, model: Path, tmp_path: Path) -> None:
    (folder / "bad.png").write_bytes(b"not a png")
    lines: list[str] = []
    summary = segment_paths(folder, model, tmp_path / "out", provider="cpu", on_error=lines.append)
    assert summary.images == 3
    assert summary.failures == lines == [f"{folder / 'bad.png'}: not a readable image (unknown or corrupt format)"]


def test_same_stem_twice_is_an_error_for_the_second(folder: Path, model: Path, tmp_path: Path) -> None:
    tifffile.imwrite(folder / "s0.tif", np.zeros((32, 32), np.uint8))
    summary = segment_paths(folder, model, tmp_path / "out", provider="cpu")
    assert summary.images == 3
    assert summary.failures == [
        f"{folder / 's0.tif'}: same name as {folder / 's0.png'}; its outputs would collide "
        "(rename one, or run them separately)"
    ]


def test_output_folder_equal_to_input_folder_is_refused(folder: Path, model: Path) -> None:
    with pytest.raises(InputError, match="is the input folder; masks would mix with the images"):
        segment_paths(folder, model, folder, provider="cpu")


def test_tiff_stack_in_stack_out(tmp_path: Path, model: Path) -> None:
    stack = np.random.default_rng(1).integers(0, 255, (5, 40, 60)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "vol.tif", stack)
    summary = segment_paths(tmp_path / "vol.tif", model, tmp_path / "out", provider="cpu", save_prob=True)
    assert (summary.files, summary.images) == (1, 5)
    masks = read_pages(tmp_path / "out" / "vol.tif")
    probs = read_pages(tmp_path / "out" / "prob" / "vol.tif")
    seg = Segmenter(model, "cpu")
    assert len(masks) == len(probs) == 5
    for page, mask in zip(stack, masks, strict=True):
        np.testing.assert_array_equal(mask, to_mask(seg.predict(page)))


def test_one_planar_rgb_tiff_page_is_not_a_stack(tmp_path: Path, model: Path) -> None:
    """A single colour page stored plane by plane (axes ``SYX``) is one image: a ``.png`` mask, not a stack."""
    rgb = np.random.default_rng(1).integers(0, 255, (3, 40, 60)).astype(np.uint8)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    with pytest.warns(SegWarning, match="3-channel image converted to gray"):
        segment_paths(tmp_path / "in", model, tmp_path / "out", provider="cpu", overlay=True)
    assert (tmp_path / "out" / "planar.png").is_file() and (tmp_path / "out" / "overlay" / "planar.png").is_file()


def test_resolve_inputs(folder: Path) -> None:
    assert [p.name for p in resolve_inputs(folder)] == ["s0.png", "s1.png", "s2.png"]
    assert resolve_inputs(folder / "s1.png") == [folder / "s1.png"]
    assert [p.name for p in resolve_inputs(f"{folder}/s[01].png")] == ["s0.png", "s1.png"]
    with pytest.raises(InputError, match=r"nope: no such file or folder"):
        resolve_inputs(folder / "nope")
    with pytest.raises(InputError, match=r"\*.jpg: the pattern matches no PNG/JPEG/TIFF image"):
        resolve_inputs(f"{folder}/*.jpg")


def test_default_output(folder: Path) -> None:
    assert default_output(folder) == Path("runs/infer/images")
    assert default_output(folder / "s1.png") == Path("runs/infer/s1")
    assert default_output(f"{folder}/*.png") == Path("runs/infer/images")


def test_missing_input_writes_nothing(tmp_path: Path, model: Path) -> None:
    with pytest.raises(InputError):
        segment_paths(tmp_path / "missing", model, tmp_path / "out", provider="cpu")
    assert not (tmp_path / "out").exists()


def test_seed_layout_image_folders_get_distinct_default_outputs(tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / split / "image").mkdir(parents=True)
    assert default_output(tmp_path / "test" / "image") == Path("runs/infer/test-image")
    assert default_output(tmp_path / "train" / "image") == Path("runs/infer/train-image")


def test_rerun_with_another_threshold_or_input_redoes_outputs(folder: Path, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = segment_paths(folder, model, out, provider="cpu")
    assert first.skipped == 0
    assert segment_paths(folder, model, out, provider="cpu").skipped == first.images  # same settings: resume
    with pytest.warns(SegWarning, match="earlier outputs were made with other threshold; redoing them all"):
        again = segment_paths(folder, model, out, provider="cpu", threshold=0.9)
    assert again.skipped == 0 and again.images == first.images
    with pytest.warns(SegWarning, match="other large_tile, small_step; redoing"):  # tiling changes outputs too
        tiled = segment_paths(folder, model, out, provider="cpu", threshold=0.9, tile_size=64)
    assert tiled.skipped == 0


def test_a_bad_wide_integer_page_fails_its_own_file_only(folder: Path, model: Path, tmp_path: Path) -> None:
    tifffile.imwrite(folder / "negative.tif", np.full((8, 8), -3, np.int32))
    failures: list[str] = []
    summary = segment_paths(folder, model, tmp_path / "out", provider="cpu", on_error=failures.append)
    assert len(failures) == 1 and "negative.tif" in failures[0] and "-3..-3" in failures[0]
    assert summary.images == len(list(folder.glob("*.png")))


@pytest.mark.parametrize("bad", [("", "out"), ("in", "")])
def test_empty_paths_are_refused(folder: Path, model: Path, bad: tuple[str, str]) -> None:
    inputs, output = (folder if bad[0] else "", bad[1])
    with pytest.raises(InputError, match="empty --input or --output path"):
        segment_paths(inputs, model, output, provider="cpu")


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_threshold_outside_unit_interval_is_refused(folder: Path, model: Path, tmp_path: Path,
                                                    threshold: float) -> None:
    with pytest.raises(InputError, match="is outside \\[0, 1\\]"):
        segment_paths(folder, model, tmp_path / "out", provider="cpu", threshold=threshold)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("cpus", "cuda_threads"), [(None, 2), (1, 2), (16, 8), (64, 8), (6, 3)])
def test_io_threads_widen_beside_cuda_only(monkeypatch: pytest.MonkeyPatch, cpus: int | None,
                                           cuda_threads: int) -> None:
    from seg.runtime import pipeline

    monkeypatch.setattr(pipeline, "usable_cpus", lambda: cpus or 2)
    assert pipeline.io_threads(["cpu"]) == (2, 1)  # the CPU provider's threads need the cores
    assert pipeline.io_threads(["cuda", "cpu"]) == (cuda_threads, cuda_threads)


def test_many_writers_finish_every_file_in_order(model: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With 4 readers and 4 writers (as beside CUDA) 24 files all get the mask of their own image."""
    from seg.runtime import pipeline

    rng = np.random.default_rng(3)
    images = tmp_path / "many"
    images.mkdir()
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (48 + i, 64)).astype(np.uint8)).save(images / f"m{i:02d}.png")
    monkeypatch.setattr(pipeline, "io_threads", lambda providers: (4, 4))
    done: list[int] = []
    summary = segment_paths(images, model, tmp_path / "out", provider="cpu", progress=lambda n, _total: done.append(n))
    assert (summary.images, summary.failures) == (24, [])
    assert done == sorted(done) and done[-1] == 24
    seg = Segmenter(model, "cpu")
    for path in sorted(images.iterdir()):
        expected = to_mask(seg.predict(read_image(path)), 0.5)
        np.testing.assert_array_equal(read_image(tmp_path / "out" / path.name), expected)


@pytest.mark.parametrize(("item_bytes", "budget", "files"),
                         [(1 << 20, 128 << 20, 64), (256 << 20, 128 << 20, 8), (2 << 20, 64 << 20, 32),
                          (16 << 20, 64 << 20, 8), (0, 64 << 20, 64)])
def test_queue_limit_holds_8_to_64_files_by_bytes(item_bytes: int, budget: int, files: int) -> None:
    from seg.runtime.pipeline import queue_limit

    assert queue_limit(item_bytes, budget) == files


@pytest.mark.parametrize(("first_side", "side", "most_ahead"), [(64, 64, 64), (4096, 4096, 8), (32, 4096, 10)])
def test_read_ahead_deepens_for_small_files_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, first_side: int,
                                                 side: int, most_ahead: int) -> None:
    """64x64 slices come to be read 64 ahead (enough for batches of 32); 4096x4096 images (16 MB each) stay
    at 8, also after a tiny first file (the depth grows by 2 files per file read, and shrinks at once)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from seg.runtime import pipeline

    class CountingPool(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
            self.submitted += 1
            return super().submit(*args, **kwargs)

    sizes = {tmp_path / f"{i}.png": first_side if i == 0 else side for i in range(100)}
    monkeypatch.setattr(pipeline, "_read", lambda path, method: ([np.zeros((sizes[path],) * 2, np.uint8)], {}))
    items = [pipeline.Item(path, path.with_suffix(".mask.png"), None, None) for path in sizes]
    ahead = []
    with CountingPool(2) as readers:
        pages = pipeline._pages(items, readers, "dtype-range", deque(), lambda line: None)
        for consumed, page in enumerate(pages, start=1):
            assert page.shape == (sizes[items[consumed - 1].source],) * 2
            ahead.append(readers.submitted - consumed)
    assert len(ahead) == 100 and max(ahead) == most_ahead - 1  # in flight beside the file being consumed


def test_a_run_that_writes_nothing_leaves_nothing_behind(model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    (bad / "b.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"a.png"):  # one file: its failure is the error
        segment_paths(bad / "a.png", model, tmp_path / "one", provider="cpu")
    summary = segment_paths(bad, model, tmp_path / "all", provider="cpu", save_prob=True)
    assert summary.images == 0 and len(summary.failures) == 2
    assert not (tmp_path / "one").exists() and not (tmp_path / "all").exists()
    kept = tmp_path / "kept"
    (kept / "mine").mkdir(parents=True)  # a folder that existed before the run stays, with what it holds
    segment_paths(bad, model, kept, provider="cpu")
    assert sorted(p.name for p in kept.iterdir()) == ["mine"]


def _uint8_input_model(tmp_path: Path) -> Path:
    """A model that takes raw uint8 pixels (like ``seg export --uint8``): prob = pixel / 255."""
    from onnx import TensorProto, helper

    from seg.runtime.metadata import ModelInfo

    x = helper.make_tensor_value_info("image", TensorProto.UINT8, [None, None, None, 1])
    y = helper.make_tensor_value_info("prob", TensorProto.FLOAT, [None, None, None, 1])
    scale = helper.make_tensor("k", TensorProto.FLOAT, [], [1 / 255])
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["f", "k"], ["prob"])]
    model = helper.make_model(helper.make_graph(nodes, "u8", [x], [y], [scale]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    for key, value in ModelInfo(tile_size=64, size_multiple=16, halo=0).to_props().items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "u8.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_a_page_the_model_refuses_fails_its_own_file_named(tmp_path: Path) -> None:
    """A 16-bit image for a uint8-input model passes reading but not the segmenter: that file is reported by
    name, the others are written, and the run goes on."""
    model = _uint8_input_model(tmp_path)
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(images / "a.png")
    tifffile.imwrite(images / "b.tif", rng.integers(0, 65535, (64, 64), dtype=np.uint16))
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(images / "c.png")
    failures: list[str] = []
    summary = segment_paths(images, model, tmp_path / "out", provider="cpu", on_error=failures.append)
    assert failures == [f"{images / 'b.tif'}: {model} takes 8-bit pixels, this image is uint16; convert it to "
                        "uint8 or use the float32 model"]
    assert summary.images == 2 and summary.failures == failures
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a.png", "c.png"]
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "c.png"), to_mask(read_image(images / "c.png") / 255))
