"""Segmenter: any size and dtype, tiled == whole-image, batching across images, TTA, metadata."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from seg.runtime import ModelInfo, SegWarning
from seg.runtime.errors import InputError
from seg.runtime.io import read_image
from seg.runtime.scores import mask_agreement
from seg.runtime.segmenter import Segmenter
from seg.runtime.tiling import recommended_halo
from tests.runtime.test_providers import tiny_model

META = ModelInfo(tile_size=64, halo=16, size_multiple=16, threshold=0.4).to_props()


def make(kind: str = "conv", **kwargs: object) -> Segmenter:
    return Segmenter(tiny_model(kind, metadata=META), provider="cpu", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(1, 1), (5, 200), (64, 64), (130, 77), (300, 301)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, bool])
def test_identity_model_returns_the_normalised_image(shape: tuple[int, int], dtype: type,
                                                     rng: np.random.Generator) -> None:
    if dtype is bool:
        image = rng.random(shape) > 0.5
    elif dtype is np.float32:
        image = rng.random(shape, dtype=np.float32)
    else:
        image = rng.integers(0, np.iinfo(dtype).max, shape).astype(dtype)
    expected = image.astype(np.float32) / (np.iinfo(dtype).max if dtype not in (bool, np.float32) else 1)
    prob = make("identity").predict(image)
    assert prob.shape == shape and prob.dtype == np.float32
    np.testing.assert_allclose(prob, expected, atol=3e-7)


def test_metadata_is_read_and_absence_warns() -> None:
    seg = make()
    assert (seg.tile_size, seg.halo, seg.info.threshold) == (64, 16, 0.4)
    with pytest.warns(SegWarning, match=r"model \(bytes\): no seg metadata; using defaults \(tile 512, halo 64"):
        bare = Segmenter(tiny_model(), provider="cpu")
    assert bare.info.from_defaults and (bare.tile_size, bare.halo) == (512, 64)
    assert bare.providers == ["cpu"]


@pytest.mark.parametrize("shape", [(64, 64), (100, 230), (257, 129)])
@pytest.mark.parametrize("blend", ["gaussian", "ramp"])
@pytest.mark.parametrize("tta", [False, True])
def test_tiled_agrees_with_whole_image(shape: tuple[int, int], blend: str, tta: bool,
                                       rng: np.random.Generator) -> None:
    image = rng.random(shape, dtype=np.float32)
    tiled = make(tile_size=64, halo=16, blend=blend, tta=tta, batch_size=3).predict(image)
    whole = make(tile_size=0, tta=tta).predict(image)
    assert np.abs(tiled - whole).max() < 1e-3


def test_without_halo_tiles_show_seams(rng: np.random.Generator) -> None:
    image = rng.random((200, 200), dtype=np.float32)
    assert np.abs(make(halo=0).predict(image) - make(tile_size=0).predict(image)).max() > 0.1


def wide_model(receptive_field: int, seed: int = 0) -> bytes:
    """``image -> sigmoid(conv)`` with one ``R x R`` kernel (R = ``receptive_field``, odd), seeded random weights
    of equal scale across the whole kernel (every input pixel within R/2 matters), zero padding like "same".
    Metadata: tile 128, multiple 16, receptive field R, halo = the recommended one."""
    from onnx import TensorProto, helper

    weights = np.random.default_rng(seed).standard_normal(receptive_field**2).astype(np.float32) / receptive_field
    pad = receptive_field // 2
    nodes = [
        helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["c"], pads=[pad] * 4),
        helper.make_node("Sigmoid", ["c"], ["s"]),
        helper.make_node("Transpose", ["s"], ["prob"], perm=[0, 2, 3, 1]),
    ]
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, None, None, 1]) for name in ("image", "prob")]
    kernel = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, receptive_field, receptive_field], weights)
    model = helper.make_model(helper.make_graph(nodes, "wide", io[:1], io[1:], [kernel]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in META.items():
        model.metadata_props.add(key=key, value=value)
    model.ir_version = 9
    info = ModelInfo(tile_size=128, size_multiple=16, receptive_field=receptive_field,
                     halo=recommended_halo(receptive_field, 128, 16))
    for key, value in info.to_props().items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


@pytest.mark.parametrize("blend", ["gaussian", "ramp"])
@pytest.mark.parametrize("halo", [0, 8])
def test_a_halo_below_half_the_receptive_field_shows_seams(blend: str, halo: int, rng: np.random.Generator) -> None:
    """R = 33: a pixel needs 16 pixels of context each way. Halos of 0 and 8 leave tile borders starved."""
    model, image = wide_model(33), rng.random((300, 300), dtype=np.float32)
    whole = Segmenter(model, "cpu", tile_size=0).predict(image)
    tiled = Segmenter(model, "cpu", tile_size=128, halo=halo, blend=blend).predict(image)
    assert np.abs(tiled - whole).max() > 1e-3


@pytest.mark.parametrize("blend", ["gaussian", "ramp"])
@pytest.mark.parametrize("receptive_field", [33, 63])
def test_the_recommended_halo_makes_tiles_equal_the_whole_image(receptive_field: int, blend: str,
                                                                rng: np.random.Generator) -> None:
    """The recommended halo (>= R/2, on the size multiple) with either window: only predictions that saw
    their whole R x R context carry weight, so tiled equals whole-image up to float rounding; on 128 tiles
    and on the automatic 256 ones."""
    model, image = wide_model(receptive_field), rng.random((300, 300), dtype=np.float32)
    whole = Segmenter(model, "cpu", tile_size=0).predict(image)
    explicit = Segmenter(model, "cpu", tile_size=128, blend=blend)
    automatic = Segmenter(model, "cpu", blend=blend)
    assert explicit.halo == automatic.halo == 32 >= receptive_field / 2 and automatic.large_tile == 256
    for segmenter in (explicit, automatic):
        tiled = segmenter.predict(image)
        assert segmenter.stats.tiles > 1
        assert np.abs(tiled - whole).max() < 1e-5


def test_tta_of_a_flip_equivariant_model_changes_nothing(rng: np.random.Generator) -> None:
    image = rng.random((90, 70), dtype=np.float32)
    np.testing.assert_allclose(make("identity", tta=True).predict(image), image, atol=2e-6)
    plain, tta = make().predict(image), make(tta=True).predict(image)
    assert np.abs(plain - tta).max() > 1e-3  # the asymmetric kernel is not flip-invariant: TTA did run


def _shifting_model(offset: tuple[float, float], metadata: dict[str, str]) -> bytes:
    """``prob[p] = image[p + offset]`` (bilinear, a 3x3 convolution) for offsets in [0, 1): what a model trained
    on labels that sit ``offset`` px from their images learns to draw."""
    from onnx import TensorProto, helper

    dy, dx = offset
    kernel = np.zeros((3, 3), np.float32)
    kernel[1:, 1:] = np.outer([1 - dy, dy], [1 - dx, dx])
    nodes = [helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["prob"], perm=[0, 2, 3, 1])]
    shape = [None, None, None, 1]
    graph = helper.make_graph(nodes, "shift", [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, shape)],
                              [helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 3, 3], kernel.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


@pytest.mark.parametrize("tile_size", [64, 0])  # tiled and whole-image
def test_tta_keeps_the_label_offset_the_model_learned(tile_size: int) -> None:
    rows, cols = np.mgrid[0:150, 0:130]
    image = (0.5 + 0.4 * np.sin(rows / 6.0) * np.cos(cols / 9.0)).astype(np.float32)
    offset = (0.5, 0.25)
    aware = ModelInfo(tile_size=64, halo=16, size_multiple=16, label_offset=offset).to_props()
    assert aware["seg.label_offset"] == "0.5,0.25"
    inner = (slice(4, -4), slice(4, -4))
    plain = Segmenter(_shifting_model(offset, aware), provider="cpu", tile_size=tile_size).predict(image)
    tta = Segmenter(_shifting_model(offset, aware), provider="cpu", tile_size=tile_size, tta=True).predict(image)
    np.testing.assert_allclose(tta[inner], plain[inner], atol=5e-3)
    unaware = Segmenter(_shifting_model(offset, META), provider="cpu", tile_size=tile_size, tta=True).predict(image)
    assert np.abs(unaware[inner] - plain[inner]).max() > 0.02  # without the offset, TTA blurs it away


@pytest.mark.parametrize(("offset", "reach"), [((0.75, 0.5), 2), ((1.0, 0.0), 2), ((0.6, 0.15), 2), ((0.4, 0.1), 1)])
def test_tiled_tta_equals_whole_image_tta_for_an_offset_model(offset: tuple[float, float], reach: int) -> None:
    """Mapping a half turn or a flip back resamples up to twice the offset's largest component, so the blend
    gives no weight that far further in from a tile's inner edge: tiled TTA still equals whole-image TTA."""
    rows, cols = np.mgrid[0:200, 0:170]
    image = (0.5 + 0.4 * np.sin(rows / 6.0) * np.cos(cols / 9.0)).astype(np.float32)
    props = ModelInfo(tile_size=64, halo=16, size_multiple=16, receptive_field=3, label_offset=offset).to_props()
    tiled = Segmenter(_shifting_model(offset, props), provider="cpu", tta=True)
    whole = Segmenter(_shifting_model(offset, props), provider="cpu", tile_size=0, tta=True).predict(image)
    assert tiled.plan.context == 1.5 + reach  # half the receptive field, plus the reach of the resampling
    np.testing.assert_allclose(tiled.predict(image), whole, atol=1e-5)
    assert tiled.stats.tiles > 8


@pytest.mark.parametrize("text", ["up", "0.5", "nan,0", "0,1e9"])
def test_bad_label_offset_metadata_names_the_key(text: str) -> None:
    props = {**META, "seg.label_offset": text}
    with pytest.raises(InputError, match=rf"bad metadata seg.label_offset='{text}'"):
        Segmenter(tiny_model(metadata=props), provider="cpu")
    assert ModelInfo(label_offset=[0.5, -0.25]).to_props()["seg.label_offset"] == "0.5,-0.25"  # type: ignore[arg-type]
    assert Segmenter(tiny_model(metadata=META), provider="cpu").info.label_offset == (0.0, 0.0)


def test_predict_batch_packs_tiles_of_several_images(rng: np.random.Generator) -> None:
    images = [rng.random((64, 64), dtype=np.float32) for _ in range(5)] + [rng.random((40, 90), dtype=np.float32)]
    seg = make(batch_size=4)
    probs = seg.predict_batch(images)
    assert [p.shape for p in probs] == [im.shape for im in images]
    assert seg.stats.images == 6 and seg.stats.tiles == 7 and seg.stats.batches == 2
    for image, prob in zip(images, probs, strict=True):
        np.testing.assert_allclose(prob, make().predict(image), atol=1e-6)
    assert seg.stats.compute_s > 0


def test_images_larger_than_the_tile_both_ways_use_double_tiles(rng: np.random.Generator) -> None:
    seg = make(batch_size=4)
    assert (seg.tile_size, seg.large_tile) == (64, 128)
    # 65x65: one 128 tile or four 64 tiles compute the same pixels, so the small tiles stay
    assert [seg.tile_for(*shape) for shape in [(64, 500), (65, 65), (500, 64), (150, 200)]] == [64, 64, 64, 128]
    assert (seg.batch_for(64), seg.batch_for(128)) == (4, 1)  # the same pixels per call
    image = rng.random((150, 200), dtype=np.float32)
    prob = seg.predict(image)
    assert seg.stats.tiles == 2 * 2  # 128-pixel tiles over (160, 208) padded; 64-pixel tiles would take 24
    assert np.abs(prob - make(tile_size=0).predict(image)).max() < 1e-3
    explicit = make(tile_size=64)
    assert explicit.large_tile == 64 and explicit.tile_for(150, 200) == 64
    assert make(batch_size=2).large_tile == 64  # one large tile would hold more pixels than a batch of 2
    fixed_batch = Segmenter(tiny_model("identity", shape=(4, None, None, 1), metadata=META), provider="cpu")
    assert fixed_batch.large_tile == 64  # one large tile would be padded to a batch of 4


@pytest.mark.parametrize("shape", [(65, 176), (100, 400), (472, 65)])
def test_the_automatic_large_tile_never_changes_the_answer(shape: tuple[int, int], rng: np.random.Generator) -> None:
    """A side shorter than the large tile would be padded further than the tile pads it, changing its edge:
    the large tile is used only where it gives the tile's answer, bit for bit."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, None, None, 1])
    y = helper.make_tensor_value_info("prob", TensorProto.FLOAT, [None, None, None, 1])
    weights = rng.standard_normal(33 * 33).astype(np.float32) / 33  # receptive field 33: sees 16 px past an edge
    nodes = [helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"], pads=[16, 16, 16, 16]),
             helper.make_node("Sigmoid", ["c"], ["s"]),
             helper.make_node("Transpose", ["s"], ["prob"], perm=[0, 2, 3, 1])]
    graph = helper.make_graph(nodes, "wide", [x], [y], [helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 33, 33],
                                                                           weights)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    info = ModelInfo(tile_size=64, halo=24, size_multiple=16, receptive_field=33)
    for key, value in info.to_props().items():
        model.metadata_props.add(key=key, value=value)
    image = rng.random(shape, dtype=np.float32)
    auto, explicit = (Segmenter(model.SerializeToString(), provider="cpu", tile_size=tile) for tile in (None, 64))
    assert auto.large_tile == 128
    np.testing.assert_array_equal(auto.predict(image), explicit.predict(image))


def test_single_tile_images_skip_blending_and_own_their_output(rng: np.random.Generator) -> None:
    images = [rng.random((64, 64), dtype=np.float32) for _ in range(3)]
    seg = make(batch_size=4)
    probs = seg.predict_batch(images)
    assert seg.stats.batches == 1 and seg.stats.tiles == 3
    assert not any(np.shares_memory(a, b) for i, a in enumerate(probs) for b in probs[i + 1 :])
    for image, prob in zip(images, probs, strict=True):
        np.testing.assert_array_equal(prob, make(tile_size=0).predict(image))  # bit-identical, nothing blended
        assert prob.flags.owndata  # not a view that keeps the whole batch output alive


def test_images_smaller_than_the_tile_run_as_one_smaller_tile(rng: np.random.Generator) -> None:
    seg = make()
    assert seg.small_step == 16  # a quarter of the 64 tile
    assert [seg.tile_for(*shape) for shape in [(40, 40), (40, 63), (5, 200), (64, 64), (1, 1)]] == [48, 64, 64, 64, 16]
    shapes: list[tuple[int, ...]] = []
    run = seg._run
    seg._run = lambda inputs: (shapes.append(inputs.shape), run(inputs))[1]  # type: ignore[method-assign]
    image = rng.random((40, 33), dtype=np.float32)
    prob = seg.predict(image)
    assert shapes == [(1, 48, 48, 1)]  # not (1, 64, 64, 1): no compute spent on padding to the full tile
    np.testing.assert_allclose(prob, make(tile_size=0).predict(image), atol=1e-6)  # what whole-image mode gives
    assert make(tile_size=64).small_step == 0 and make(tile_size=64).tile_for(40, 40) == 64  # explicit tile
    fixed = Segmenter(tiny_model("identity", shape=(None, 64, 64, 1), metadata=META), provider="cpu")
    assert fixed.small_step == 0 and fixed.tile_for(40, 40) == 64
    fixed_batch = Segmenter(tiny_model("identity", shape=(4, None, None, 1), metadata=META), provider="cpu")
    assert fixed_batch.small_step == 0  # alternating small sizes would each be padded to a batch of 4
    with pytest.warns(SegWarning):
        bare = Segmenter(tiny_model(), provider="cpu")  # tile 512, multiple 16: steps of 128
    assert [bare.tile_for(*shape) for shape in [(100, 100), (300, 200), (500, 500)]] == [128, 384, 512]


def test_tiles_of_different_sizes_never_share_a_batch(rng: np.random.Generator) -> None:
    shapes = [(50, 50), (250, 250), (60, 70), (240, 260), (40, 40)]
    images = [rng.random(shape, dtype=np.float32) for shape in shapes]
    seg = make(batch_size=8)
    batch_shapes: list[tuple[int, ...]] = []
    run = seg._run
    seg._run = lambda inputs: (batch_shapes.append(inputs.shape), run(inputs))[1]  # type: ignore[method-assign]
    probs = seg.predict_batch(images)
    assert {shape[1:3] for shape in batch_shapes} == {(48, 48), (64, 64), (128, 128)}  # 40x40: a small tile
    assert all(shape[0] <= (2 if shape[1] == 128 else 8) for shape in batch_shapes)
    for image, prob in zip(images, probs, strict=True):
        np.testing.assert_allclose(prob, make().predict(image), atol=1e-6)


def test_predict_iter_pulls_images_lazily(rng: np.random.Generator) -> None:
    pulled: list[int] = []

    def images() -> Iterator[np.ndarray]:
        for i in range(10):
            pulled.append(i)
            yield rng.random((64, 64), dtype=np.float32)

    stream = make(batch_size=2).predict_iter(images())
    next(stream)
    assert len(pulled) <= 3


def test_rgb_input_becomes_gray_with_a_warning(rng: np.random.Generator) -> None:
    rgb = rng.integers(0, 255, (32, 48, 3)).astype(np.uint8)
    with pytest.warns(SegWarning, match="3-channel image converted to gray"):
        assert make().predict(rgb).shape == (32, 48)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"tile_size": 40}, "tile size 40 (tile_size, --tile) must be 0 (whole image) or a positive multiple of 16, "
                         "e.g. 32 or 48"),
     ({"halo": 40}, "halo 40 must be in 0..24 for 64-pixel tiles"),
     ({"tile_size": 0, "halo": 8}, "halo 8 (halo, --halo): tiles overlap only when an image is tiled, and tile size "
                                   "0 runs each image whole; leave the halo out, or give a tile size"),
     ({"blend": "box"}, "unknown blend 'box'; choose one of gaussian, ramp"),
     ({"batch_size": 0}, "batch size must be >= 1, got 0"),
     ({"threads": 0}, "threads 0: give a whole number of CPU threads >= 1"),
     ({"threads": 1.5}, "threads 1.5: give a whole number of CPU threads >= 1")],
)
def test_bad_options(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make(**kwargs)


def test_models_that_are_not_seg_models_are_refused_with_the_reason(rng: np.random.Generator) -> None:
    from onnx import TensorProto, helper

    from seg.runtime.errors import RunError

    for shape, message in (((None, 1, None, None), r"has shape \[None, 1, None, None\]; expected \(N, H, W, 1\)"),
                           ((1, 64, 32, 1), r"seg tiles with square tiles"),
                           ((None, 64, None, 1), r"seg tiles with square tiles")):
        with pytest.raises(InputError, match=message):
            Segmenter(tiny_model("identity", shape=shape, metadata=META), provider="cpu")
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, None, None, 1])
    y = helper.make_tensor_value_info("prob", TensorProto.FLOAT, [None, None, None, 1])
    crop = helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["prob"])  # 2 px off each side
    inits = [helper.make_tensor(name, TensorProto.INT64, [2], values)
             for name, values in (("starts", [2, 2]), ("ends", [-2, -2]), ("axes", [1, 2]))]
    model = helper.make_model(helper.make_graph([crop], "crop", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in META.items():
        model.metadata_props.add(key=key, value=value)
    for tile_size in (None, 0, 32):
        seg = Segmenter(model.SerializeToString(), provider="cpu", tile_size=tile_size)
        with pytest.raises(RunError, match=r"the model gave \(1, 60, 60, 1\) for an input of \(1, 64, 64, 1\)|"
                                           r"the model gave .* seg needs a probability map the size of its input"):
            seg.predict(rng.random((64, 64), dtype=np.float32))


def test_threads_may_be_any_whole_number_type() -> None:
    assert make(threads=np.int64(1)).streams == 1  # e.g. from a numpy array or a config file


def test_bad_images(rng: np.random.Generator) -> None:
    ragged = [rng.random((8, 8), dtype=np.float32), rng.random((8, 9), dtype=np.float32)]
    for call in (make().predict, make().predict_stack):
        with pytest.raises(InputError, match="images of different sizes cannot form one array; .*predict_batch"):
            call(ragged)  # type: ignore[arg-type]
    assert [p.shape for p in make().predict_batch(ragged)] == [(8, 8), (8, 9)]
    with pytest.raises(InputError, match=r"image 0: expected a \(H, W\) gray image, got shape \(2, 3, 4, 5\)"):
        make().predict(rng.random((2, 3, 4, 5)))
    with pytest.raises(InputError, match="NaN or infinite"):
        make().predict(np.full((8, 8), np.nan, np.float32))


def test_static_shape_model_fixes_tile_and_batch(rng: np.random.Generator) -> None:
    seg = Segmenter(tiny_model("identity", shape=(1, 64, 64, 1), metadata=META), provider="cpu", batch_size=4)
    assert (seg.tile_size, seg.large_tile, seg.batch_size) == (64, 64, 1)
    image = rng.random((100, 70), dtype=np.float32)
    np.testing.assert_allclose(seg.predict(image), image, atol=3e-7)


@pytest.mark.slow
def test_memory_stays_bounded_for_8192_squared() -> None:
    """numpy allocations beyond the image and its float32 output stay under 200 MB (tracemalloc sees numpy)."""
    image = np.random.default_rng(0).integers(0, 255, (8192, 8192), dtype=np.uint8)
    seg = Segmenter(tiny_model(metadata=META), provider="cpu", tile_size=512, halo=64, batch_size=4)
    tracemalloc.start()
    prob = seg.predict(image)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert prob.shape == image.shape
    assert peak - prob.nbytes < 200 * 2**20


# -- acceptance: seam-free tiling on real ISBI slices with a (briefly) trained U-Net ---------------------


@pytest.mark.slow
def test_tiled_prediction_is_seam_free_on_a_real_mosaic(isbi_dir: Path, exported_model: Path) -> None:
    """The model from ``seg train`` + ``seg export`` (tests/conftest.py), its default tile (512) and halo."""
    slices = [read_image(p) for p in sorted((isbi_dir / "train" / "image").glob("*.png"))[:9]]
    mosaic = np.block([[slices[3 * r + c] for c in range(3)] for r in range(3)])  # (1536, 1536) uint8
    segmenter = Segmenter(exported_model, "cpu")
    assert segmenter.tile_size == 512 and segmenter.halo == recommended_halo(segmenter.info.receptive_field, 512)
    tiled = segmenter.predict(mosaic)
    whole = Segmenter(exported_model, "cpu", tile_size=0).predict(mosaic)
    seams = Segmenter(exported_model, "cpu", tile_size=512, halo=0).predict(mosaic)
    membrane = float(np.mean(whole < 0.5))
    assert 0.05 < membrane < 0.6, f"degenerate test model: {membrane:.1%} membrane"
    inner = (slice(32, -32), slice(32, -32))
    assert mask_agreement(tiled, whole) >= 0.999
    assert np.abs(tiled - whole)[inner].max() <= 0.02
    assert np.abs(seams - whole)[inner].max() > 0.02  # the check can fail: without a halo, seams show


def test_import_runtime_loads_no_tensorflow_and_nothing_above_it() -> None:
    import subprocess
    import sys

    code = (
        "import sys, runtime, seg.runtime.folders, runtime.segmenter; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx', 'onnx', 'train', "
        "'export', 'toolkit')]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stdout + result.stderr


def test_wide_integer_images_match_uint8_and_warn_once() -> None:
    """int64 pixels in 0..255 (e.g. from a Python list) give the uint8 result, not a near-black image."""
    seg = make(tile_size=32, halo=8)
    image = np.random.default_rng(0).integers(0, 256, (80, 70)).astype(np.uint8)
    expected = seg.predict(image)
    with pytest.warns(SegWarning, match="int64 pixels read as 8-bit") as caught:
        got = seg.predict(image.astype(np.int64))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert len([w for w in caught if "int64" in str(w.message)]) == 1


def _model_failing_at_run_time() -> bytes:
    """A valid graph that onnxruntime loads but cannot run on most inputs: it reshapes every batch to 1x64x64."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, None, None, 1])
    y = helper.make_tensor_value_info("prob", TensorProto.FLOAT, [None, None, None, 1])
    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [1, 64, 64, 1])
    graph = helper.make_graph([helper.make_node("Reshape", ["image", "shape"], ["prob"])], "bad", [x], [y], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


@pytest.mark.parametrize("streams", [1, 2])
def test_an_onnxruntime_failure_is_a_run_error_naming_the_batch(streams: int) -> None:
    from seg.runtime.errors import RunError, SegError

    with pytest.warns(SegWarning), Segmenter(_model_failing_at_run_time(), "cpu", tile_size=0,
                                             streams=streams) as seg:
        with pytest.raises(RunError, match=r"onnxruntime failed on a batch of 1 x 48x32 on CPU \(.*Reshape"):
            seg.predict(np.zeros((32, 48), np.uint8))
        assert issubclass(RunError, SegError) and RunError.exit_code == 1
