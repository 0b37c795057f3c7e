from __future__ import annotations

import keras
import numpy as np
import pytest

from seg.train.models import ModelSpec, build_model, check_input_size


@pytest.mark.parametrize(
    ("spec", "shape"),
    [(ModelSpec("unet", 4, 2), (2, 32, 48)), (ModelSpec("unet", 2, 3, batch_norm=False), (1, 64, 16)),
     (ModelSpec("unet", 4, 2, stem=1), (2, 12, 20)), (ModelSpec("cnn", 4, 2), (3, 17, 23))],
)
def test_output_shape_and_range(spec: ModelSpec, shape: tuple[int, int, int]) -> None:
    model = build_model(spec)
    x = np.random.default_rng(0).random((*shape, 1), dtype=np.float32)
    y = np.asarray(model(x, training=False))
    assert y.shape == (*shape, 1)
    assert (y >= 0).all() and (y <= 1).all()
    assert model.input_shape == (None, None, None, 1)


# Width 4, seeded: with 2 channels per layer, about 1 random init in 10 leaves every ReLU path from the
# centre pixel dead, so nothing changes and the test measured the draw, not the receptive field.
@pytest.mark.parametrize("spec", [ModelSpec("unet", 4, 2, batch_norm=False),
                                  ModelSpec("unet", 4, 2, batch_norm=False, head=4),
                                  ModelSpec("unet", 4, 2, batch_norm=False, stem=1), ModelSpec("cnn", 4, 2)])
def test_receptive_field_bounds_the_influence_of_one_pixel(spec: ModelSpec) -> None:
    """Changing one input pixel changes outputs only within the claimed receptive field, and reaches
    close to its edge (so the number is neither too small nor wildly too large)."""
    keras.utils.set_random_seed(0)
    model = build_model(spec)
    size, centre = 128, 64
    x = np.random.default_rng(1).random((1, size, size, 1), dtype=np.float32)
    x2 = x.copy()
    x2[0, centre, centre, 0] += 1.0
    changed = np.argwhere(np.abs(np.asarray(model(x2)) - np.asarray(model(x)))[0, :, :, 0] > 0)
    reach = int(np.abs(changed - centre).max())
    radius = spec.receptive_field // 2
    assert reach <= radius
    assert reach >= radius - spec.size_multiple


def test_input_size_must_be_a_multiple() -> None:
    with pytest.raises(ValueError, match="size 100x96 is not a multiple of 16"):
        check_input_size(ModelSpec("unet", 4, 4, stem=1), 96, 100)
    with pytest.raises(ValueError, match="size 48x96 is not a multiple of 32 .*stem 2, depth 4"):
        check_input_size(ModelSpec("unet", 4, 4), 96, 48)
    check_input_size(ModelSpec("unet", 4, 4), 96, 64)
    check_input_size(ModelSpec("cnn", 4, 4), 97, 101)


def test_default_unet_has_a_stride_2_stem_and_a_full_resolution_output() -> None:
    spec = ModelSpec()
    model = build_model(spec)
    assert (spec.stem, spec.size_multiple, spec.head) == (2, 16, 0)
    stem, output = model.get_layer("stem_conv"), model.get_layer("prob")
    assert stem.strides == (2, 2) and type(output).__name__ == "Conv2DTranspose" and output.strides == (2, 2)
    assert model.get_layer("down0_conv1").output.shape[-1] == spec.width
    assert np.asarray(model(np.zeros((1, 48, 32, 1), np.float32))).shape == (1, 48, 32, 1)


def test_the_optional_full_resolution_head_sees_the_image() -> None:
    model = build_model(ModelSpec(head=8))
    upconv, concat = model.get_layer("head_upconv"), model.get_layer("head_concat")
    assert upconv.strides == (2, 2) and upconv.output.shape[-1] == 8
    assert concat.input[0].name == model.input.name and concat.output.shape[-1] == 1 + 8
    assert type(model.get_layer("prob")).__name__ == "Conv2D"
    assert ModelSpec(head=8).receptive_field == ModelSpec().receptive_field + 4
    assert np.asarray(model(np.zeros((1, 48, 32, 1), np.float32))).shape == (1, 48, 32, 1)


def test_spec_from_an_older_run_record_is_a_classic_unet() -> None:
    old = {"kind": "unet", "width": 8, "depth": 4, "batch_norm": True, "receptive_field": 215, "size_multiple": 16}
    spec = ModelSpec.from_dict(old)
    assert (spec.stem, spec.receptive_field, spec.size_multiple, spec.head) == (1, 215, 16, 0)
    assert ModelSpec.from_dict(ModelSpec().to_dict()) == ModelSpec()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"kind": "vgg"}, "unknown model kind 'vgg'"), ({"width": 0}, "width 0 out of range"),
     ({"depth": 9}, "depth 9 out of range"), ({"stem": 3}, "stem 3 out of range"),
     ({"stem": True}, "stem True out of range"), ({"kind": "cnn", "stem": 2}, "stem 2: the CNN has no stem"),
     ({"depth": 7}, "depth 7 with stem 2 makes inputs multiples of 256, .*choose depth <= 6"),
     ({"depth": 8, "stem": 1}, "choose depth <= 7"), ({"stem": 1, "head": 8}, "head 8: only a U-Net with stem 2"),
     ({"kind": "cnn", "head": 4}, "head 4: only"), ({"head": 65}, "head 65 out of range")],
)
def test_bad_spec(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSpec(**kwargs)
