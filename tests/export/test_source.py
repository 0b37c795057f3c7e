"""Fast unit tests: loading weights, graph receptive field, padding, image selection."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from seg.export.parity import _validation_first
from seg.export.source import (
    compute_dtypes,
    in_float32,
    load_keras,
    load_source,
    model_path,
    read_config,
    receptive_field,
)
from seg.runtime.errors import InputError


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize(("batch_norm", "stem"), [(True, 2), (False, 2), (True, 1), (False, 1)])
def test_unet_receptive_field_matches_model_spec(depth: int, batch_norm: bool, stem: int) -> None:
    from seg.train.models import ModelSpec, build_model

    spec = ModelSpec(width=2, depth=depth, batch_norm=batch_norm, stem=stem)
    assert receptive_field(build_model(spec)) == (spec.receptive_field, spec.size_multiple)


@pytest.mark.parametrize("depth", [1, 3])
def test_cnn_receptive_field_counts_every_3x3_conv(depth: int) -> None:
    from seg.train.models import ModelSpec, build_model

    # depth + 1 hidden 3x3 convs and a 3x3 output conv, each adding 2 pixels
    assert receptive_field(build_model(ModelSpec(kind="cnn", width=2, depth=depth))) == (1 + 2 * (depth + 2), 1)


def test_validation_slices_come_first(tmp_path: Path) -> None:
    paths = [tmp_path / f"{i:02d}.png" for i in range(5)]
    recorded = {"dir": str(tmp_path), "val_slices": [str(tmp_path / "03.png"), str(tmp_path / "01.png")]}
    assert [p.stem for p in _validation_first(paths, {"data": recorded}, tmp_path)] == ["01", "03", "00", "02", "04"]
    older = {"dir": str(tmp_path), "val_slices": ["03", "01"]}  # runs that recorded names
    assert [p.stem for p in _validation_first(paths, {"data": older}, tmp_path)] == ["01", "03", "00", "02", "04"]
    elsewhere = _validation_first(paths, {"data": recorded}, tmp_path / "other")
    assert [p.stem for p in elsewhere] == ["00", "01", "02", "03", "04"]


def test_the_isbi_stacks_are_refused_with_the_command_that_makes_slices(tmp_path: Path) -> None:
    from seg.export.parity import image_paths

    (tmp_path / "train-volume.tif").write_bytes(b"stack")
    with pytest.raises(InputError, match=r"holds the ISBI stacks \(train-volume.tif\), not slices; give --data a "
                                         r"folder of slices, e.g. from: seg data import .*train-volume.tif"):
        image_paths(tmp_path)


def test_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope.keras: no such weights file; give a run folder or a .keras model$"):
        model_path(tmp_path / "nope.keras")
    with pytest.raises(InputError, match=r"model.keras: no such file; the run folder holds no best model"):
        model_path(tmp_path)


def test_not_a_keras_model(tmp_path: Path) -> None:
    text = tmp_path / "model.keras"
    text.write_text("hello")
    with pytest.raises(InputError, match=r"model.keras: not a Keras model \(.keras files are zip archives\)"):
        load_source(text)
    archive = tmp_path / "junk.keras"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("readme.txt", "not a model")
    with pytest.raises(InputError, match=r"junk.keras: cannot load as a Keras model: "):
        load_source(archive)


def test_lambda_layer_refused_by_safe_mode(tmp_path: Path) -> None:
    import keras

    inputs = keras.Input((None, None, 1))
    keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs)).save(tmp_path / "model.keras")
    with pytest.raises(InputError, match=r"model.keras: cannot load as a Keras model: it contains a Lambda layer"):
        load_source(tmp_path)


def test_config_is_optional_but_must_be_json(tmp_path: Path) -> None:
    assert read_config(tmp_path / "config.json") == {}
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(InputError, match=r"config.json: unreadable or corrupt JSON"):
        read_config(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(InputError, match=r"config.json: expected a JSON object, got list"):
        read_config(tmp_path / "config.json")


@pytest.fixture
def mixed_bfloat16_policy() -> Any:
    """The global Keras policy set to ``mixed_bfloat16`` (as ``seg train --amp`` sets it on a bfloat16 CPU),
    float32 again afterwards."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_a_mixed_precision_model_loads_computing_in_float32(tmp_path: Path, mixed_bfloat16_policy: Any) -> None:
    import keras

    from seg.train.models import ModelSpec, build_model

    keras.utils.set_random_seed(0)
    mixed = build_model(ModelSpec(width=4, depth=1))
    mixed.save(tmp_path / "model.keras")
    keras.mixed_precision.set_global_policy("float32")
    loaded = load_keras(tmp_path / "model.keras")
    assert {layer.dtype_policy.name for layer in mixed.layers} == {"mixed_bfloat16", "float32"}
    assert {layer.dtype_policy.name for layer in loaded.layers} == {"float32"}
    for original, copied in zip(mixed.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(original, copied)
    image = np.random.default_rng(0).random((1, 32, 32, 1), np.float32)
    float32_twin = build_model(ModelSpec(width=4, depth=1))
    float32_twin.set_weights(mixed.get_weights())
    np.testing.assert_allclose(loaded(image), float32_twin(image), atol=1e-6)
    assert np.abs(np.asarray(mixed(image)) - np.asarray(float32_twin(image))).max() > 1e-4  # bfloat16 differs


def test_a_float32_model_is_returned_as_it_is(tmp_path: Path) -> None:
    import keras

    inputs = keras.Input((None, None, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 3, padding="same")(inputs))
    assert in_float32(model) is model


def test_a_model_nested_in_another_computes_in_float32_too(mixed_bfloat16_policy: Any) -> None:
    import keras

    from seg.train.models import ModelSpec, build_model

    inner = build_model(ModelSpec("cnn", 4, 1))
    inputs = keras.Input((None, None, 1))
    outer = keras.Model(inputs, inner(inputs))
    assert compute_dtypes(outer) == {"mixed_bfloat16", "float32"}
    rebuilt = in_float32(outer)
    assert compute_dtypes(rebuilt) == {"float32"}
    assert in_float32(rebuilt) is rebuilt


def test_a_layer_that_cannot_take_float32_is_a_one_line_error(tmp_path: Path, mixed_bfloat16_policy: Any) -> None:
    import keras

    @keras.saving.register_keras_serializable(package="seg_tests")
    class Doubler(keras.layers.Layer):  # its constructor takes no dtype
        def __init__(self, name: str | None = None) -> None:
            super().__init__(name=name)

        def call(self, x: Any) -> Any:
            return x * 2.0

        def get_config(self) -> dict[str, Any]:
            return {"name": self.name}

    inputs = keras.Input((None, None, 1))
    keras.Model(inputs, Doubler(name="double")(inputs)).save(tmp_path / "model.keras")
    with pytest.raises(InputError, match=r"model.keras: cannot rebuild it computing in float32: .*; save the model "
                                         r"under the float32 policy$"):
        load_keras(tmp_path / "model.keras")
