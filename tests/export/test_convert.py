"""Conversion, metadata and the parity gate on a tiny U-Net and labelled slices (ISBI, else synthetic)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from seg.runtime.errors import GateError, InputError
from seg.runtime.io import read_image
from seg.runtime.metadata import ModelInfo
from seg.runtime.preprocess import normalize
from seg.runtime.providers import make_session

pytestmark = pytest.mark.slow


def test_io_names_dynamic_dims_and_checker(exported: Any) -> None:
    model = onnx.load(exported.out)
    onnx.checker.check_model(model, full_check=True)
    for value, name in ((model.graph.input[0], "image"), (model.graph.output[0], "prob")):
        assert value.name == name
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims == ["N", "H", "W", 1]
    assert len(model.graph.input) == 1 and len(model.graph.output) == 1
    assert exported.size_bytes == exported.out.stat().st_size


def test_up_convolutions_lose_their_identity_crops(exported: Any) -> None:
    """tf2onnx's Slice/Pad after each ConvTranspose (and its Shape arithmetic) is gone; the parity tests below
    prove the tidied graph still matches Keras on odd sizes and batches."""
    ops = [node.op_type for node in onnx.load(exported.out).graph.node]
    assert ops.count("ConvTranspose") == 3  # depth 2: two up-convolutions, and the stem model's output
    assert not {"Slice", "Pad", "Shape"} & set(ops)
    assert exported.cleanups["identity_crops"] == 3 and exported.cleanups["reverted"] == 0


def test_metadata_round_trips(exported: Any) -> None:
    from seg.train.models import ModelSpec

    model = onnx.load(exported.out)
    info = ModelInfo.from_props({p.key: p.value for p in model.metadata_props}, source=str(exported.out))
    session = make_session(exported.out, provider="cpu")
    from_ort = ModelInfo.from_props(session.get_modelmeta().custom_metadata_map)
    spec = ModelSpec(width=4, depth=2)
    assert info == exported.info == from_ort
    assert not info.from_defaults
    assert (info.model_kind, info.width, info.depth, info.stem, info.input_layout) == ("unet", 4, 2, 2, "NHWC")
    assert (info.receptive_field, info.size_multiple) == (spec.receptive_field, spec.size_multiple)
    assert (info.normalization, info.threshold, info.tile_size) == ("dtype-range", 0.5, 512)
    assert info.label_offset == (0.5, -0.25)  # the run's measured label offset, for TTA
    assert 0 < info.halo <= info.tile_size // 4
    assert info.training_data == "isbi2012: 2 train + 2 val slices (512x512)"
    assert {"tensorflow", "keras", "tf2onnx", "onnx", "opset"} <= info.versions.keys()
    assert info.versions["opset"] == "17" and info.created.startswith("20")


def test_parity_passes_on_labelled_slices(exported: Any) -> None:
    parity = exported.parity
    assert parity.passed, parity.reason
    assert parity.max_abs_diff <= 1e-5 and parity.batch4_max_abs_diff <= 1e-5
    assert parity.mask_agreement >= 0.9999
    assert [row.name for row in parity.images] == ["00", "01", "02", "mosaic-768x1024"]  # val slices first
    assert (parity.images[-1].height, parity.images[-1].width) == (768, 1024)
    saved = json.loads(exported.parity_path.read_text())
    assert exported.parity_path.name == "model.parity.json"
    assert saved["passed"] is True and saved["max_abs_diff"] == parity.max_abs_diff
    assert len(saved["images"]) == 4


def _slices(data: Path, count: int) -> np.ndarray:
    names = sorted((data / "train" / "image").glob("*.png"))[:count]
    return np.stack([normalize(read_image(p)) for p in names])


@pytest.mark.parametrize("shape", [(1, 512, 512), (1, 768, 1024), (4, 512, 512), (2, 64, 96)])
def test_runs_on_sizes_and_batches(exported: Any, unet_run: Path, labelled_dir: Path,
                                   shape: tuple[int, ...]) -> None:
    import keras

    count, height, width = shape
    tiles = np.tile(_slices(labelled_dir, count), (1, 2, 2))[:, :height, :width, None]
    session = make_session(exported.out, provider="cpu")
    got = session.run(None, {"image": tiles})[0]
    want = keras.models.load_model(unet_run / "model.keras", compile=False).predict(tiles, verbose=0)
    assert got.shape == (count, height, width, 1) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-5


def _bump_one_weight(model: onnx.ModelProto) -> None:
    """Add 0.05 to the kernel of the last convolution (one weight tensor after conversion)."""
    from onnx import numpy_helper

    last_conv = [node for node in model.graph.node if node.op_type == "Conv"][-1]
    target = next(t for t in model.graph.initializer if t.name == last_conv.input[1])
    array = numpy_helper.to_array(target).copy()
    array += 0.05
    target.CopyFrom(numpy_helper.from_array(array, target.name))


def test_gate_really_gates(unet_run: Path, tmp_path: Path) -> None:
    from seg.export import to_onnx

    out = tmp_path / "model.onnx"
    with pytest.raises(GateError, match=r"model.onnx: parity gate FAILED \(max \|Δ\| .* > atol 0.0001 on "):
        to_onnx(unet_run, out, max_images=2, transform=_bump_one_weight)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.parity.json"]
    assert json.loads((tmp_path / "model.parity.json").read_text())["passed"] is False
    out.write_bytes(b"an earlier export")  # a re-export that fails keeps it, and says so
    with pytest.raises(GateError, match=r"model not written \(the model.onnx there is an earlier export's, kept"):
        to_onnx(unet_run, out, max_images=2, transform=_bump_one_weight)
    assert out.read_bytes() == b"an earlier export"


def test_temporaries_of_a_killed_export_are_removed_and_others_kept(unet_run: Path, tmp_path: Path) -> None:
    from seg.export import to_onnx

    names = (".model.tmp-a1.onnx", ".model.fp16.tmp-b2.onnx", ".model.parity.tmp-c3.json")
    killed = [tmp_path / name for name in names]
    other = tmp_path / ".notes.tmp-d4.txt"  # another program's: not the export's to delete
    for path in (*killed, other):
        path.write_bytes(b"half")
    with pytest.raises(GateError):
        to_onnx(unet_run, tmp_path / "model.onnx", max_images=1, transform=_bump_one_weight)
    assert not any(path.exists() for path in killed) and other.exists()


def test_a_missing_input_leaves_no_output_folder(unet_run: Path, tmp_path: Path) -> None:
    from seg.export import to_onnx

    with pytest.raises(InputError, match="no such folder; give --data"):
        to_onnx(unet_run, tmp_path / "new" / "m.onnx", data=tmp_path / "nowhere")
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="file is a file, not a folder"):
        to_onnx(unet_run, tmp_path / "file" / "sub" / "m.onnx")


def test_missing_data_dir_is_an_input_error(unet_run: Path, tmp_path: Path) -> None:
    from seg.export import to_onnx

    with pytest.raises(InputError, match="no such folder; give --data"):
        to_onnx(unet_run, tmp_path / "m.onnx", data=tmp_path / "nowhere")
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(InputError, match=r"--calib .*calib: calibration images are only for the INT8 variant; "
                                         r"add --int8, or drop --calib"):
        to_onnx(unet_run, tmp_path / "m.onnx", calib=tmp_path / "calib")
    assert not (tmp_path / "m.onnx").exists()


def test_a_label_of_the_wrong_shape_is_an_input_error_before_anything_is_written(unet_run: Path,
                                                                                  tmp_path: Path) -> None:
    from seg.export import to_onnx
    from seg.runtime.io import write_image

    data = tmp_path / "data"
    for folder in ("image", "label"):
        (data / "train" / folder).mkdir(parents=True)
    write_image(data / "train" / "image" / "00.png", np.full((64, 96), 128, np.uint8))
    write_image(data / "train" / "label" / "00.png", np.full((64, 64), 255, np.uint8))
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(InputError) as error:
        to_onnx(unet_run, out, data=data, fp16=True, int8=True)
    assert str(error.value) == (f"{data / 'train' / 'label' / '00.png'}: label is 64x64 (HxW) but its image "
                                f"{data / 'train' / 'image' / '00.png'} is 64x96; give the label the image's "
                                "height and width, or remove it")
    assert not any(path.is_file() for path in (tmp_path / "out").rglob("*"))


def test_a_model_trained_in_mixed_precision_exports_in_float32(labelled_dir: Path, tmp_path: Path) -> None:
    """``seg train --amp`` saves bfloat16 (CPU) or float16 (GPU) layer policies; the ONNX graph must still
    compute in float32 throughout, and pass the gate."""
    import keras

    from seg.export import to_onnx
    from seg.train.models import ModelSpec, build_model
    from tests.export.conftest import save_run

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        spec = ModelSpec(width=4, depth=1)
        run = save_run(tmp_path / "amp", build_model(spec), labelled_dir, spec.to_dict())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    report = to_onnx(run, tmp_path / "model.onnx", max_images=2, timing_runs=1)
    graph = onnx.load(tmp_path / "model.onnx").graph
    half = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    assert not [tensor.name for tensor in graph.initializer if tensor.data_type in half]
    casts = [node for node in graph.node if node.op_type == "Cast"]
    assert not [node.name for node in casts if onnx.helper.get_node_attr_value(node, "to") in half]
    assert report.parity.passed
