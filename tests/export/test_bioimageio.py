"""``seg export --bioimageio``: packages that bioimage.io's own test passes, and whose zoo prediction is seg's.

Models are small, seeded and untrained (``build_model``), exported through the parity gate on ``labelled_dir``:
the default U-Net (``ModelSpec()``) through ``to_onnx`` and a narrower seed CNN (width 8 instead of 32, same
depth 4, to keep the gate fast) through the ``seg export`` command.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from seg.runtime import InputError, ModelInfo, Segmenter, read_image
from seg.runtime.io import list_images, write_image
from seg.runtime.preprocess import normalize
from seg.toolkit.cli import app
from tests.export.conftest import save_run

CPU = ["CPUExecutionProvider"]  # bioimageio.core's ONNX devices: no CUDA/TensorRT attempts on CPU-only hosts
MOSAIC_TOL = 1e-6  # zoo blocks vs seg tiles, away from the border (see test_zoo_prediction_is_seg_infer)


def _run(folder: Path, data: Path, **spec: Any) -> Path:
    import keras

    from seg.train.models import ModelSpec, build_model

    keras.utils.set_random_seed(0)
    model_spec = ModelSpec(**spec)
    return save_run(folder, build_model(model_spec), data, model_spec.to_dict())


@pytest.fixture(scope="module")
def unet(tmp_path_factory: pytest.TempPathFactory, labelled_dir: Path) -> Any:
    """The default U-Net exported with ``to_onnx(..., bioimageio=True)``: its ``ExportReport``."""
    from seg.export import to_onnx

    root = tmp_path_factory.mktemp("unet")
    run = _run(root / "run", labelled_dir)
    return to_onnx(run, root / "model.onnx", max_images=2, timing_runs=1, bioimageio=True)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory, labelled_dir: Path) -> Path:
    """The seed CNN (width 8, depth 4) exported by ``seg export OUT --bioimageio``: the package's path."""
    root = tmp_path_factory.mktemp("cnn")
    run = _run(root / "run", labelled_dir, kind="cnn", width=8, depth=4)
    result = CliRunner().invoke(app, ["export", str(root / "model.onnx"), "--weights", str(run), "--bioimageio"])
    assert result.exit_code == 0, result.output
    assert "model.bioimageio.zip: bioimage.io model package" in result.output
    assert "model.bioimageio.zip" in result.output.splitlines()[-1]  # the "wrote ..." line
    return root / "model.bioimageio.zip"


def _rdf(package: Path) -> dict[str, Any]:
    with zipfile.ZipFile(package) as archive:
        return yaml.safe_load(archive.read("rdf.yaml"))


def _member(package: Path, name: str) -> bytes:
    with zipfile.ZipFile(package) as archive:
        return archive.read(name)


def _npy(package: Path, name: str, tmp_path: Path) -> np.ndarray:
    path = tmp_path / name
    path.write_bytes(_member(package, name))
    return np.load(path)


@pytest.mark.parametrize("which", ["unet", "cnn"])
def test_bioimageio_test_passes(which: str, request: pytest.FixtureRequest) -> None:
    from bioimageio.core import test_model

    fixture = request.getfixturevalue(which)
    package = fixture.package if which == "unet" else fixture
    summary = test_model(package, devices=CPU)
    details = {detail.name: detail.status for detail in summary.details}
    assert summary.status == "passed", summary.format()
    assert details["Reproduce test outputs from test inputs (onnx)"] == "passed"
    assert sum("Run onnx inference" in name for name in details) >= 2  # sizes min + n * step, batch 1 and 2
    assert "failed" not in details.values()


def test_package_holds_the_exported_model_and_a_real_slice(unet: Any, tmp_path: Path) -> None:
    package, info = unet.package, unet.info
    assert package == unet.out.with_name("model.bioimageio.zip") and package.is_file()
    rdf = _rdf(package)
    assert rdf["format_version"].startswith("0.5.") and rdf["type"] == "model"
    weights = _member(package, rdf["weights"]["onnx"]["source"])
    assert weights == unet.out.read_bytes()  # byte for byte: seg's metadata stay inside
    assert rdf["weights"]["onnx"]["sha256"] == hashlib.sha256(weights).hexdigest()
    assert Segmenter(package, provider="cpu").info == info
    test_input = _npy(package, "test_input.npy", tmp_path)
    test_output = _npy(package, "test_output.npy", tmp_path)
    assert test_input.dtype == np.uint8 and test_input.shape == (1, 512, 512, 1)
    first = unet.parity.images[0].name  # the first gate image: the run's first validation slice
    val_slice = read_image(next(p for p in list_images(Path(unet.parity.source) / "train" / "image")
                                if p.stem == first))
    assert np.array_equal(test_input[0, :, :, 0], val_slice)  # as read from the PNG
    whole = Segmenter(unet.out, provider="cpu", tile_size=0).predict(val_slice)
    assert test_output.dtype == np.float32 and np.abs(test_output[0, :, :, 0] - whole).max() < 1e-6


def test_rdf_states_seg_contract(unet: Any) -> None:
    rdf, info = _rdf(unet.package), unet.info
    (source,), (target,) = rdf["inputs"], rdf["outputs"]
    assert [axis.get("id", axis["type"]) for axis in source["axes"]] == ["batch", "y", "x", "channel"]
    assert source["axes"][1]["size"] == {"min": 240, "step": 16}  # 2 x halo 112 + step 16, a multiple of 16
    assert source["data"]["type"] == "uint8"
    assert [(step["id"], step.get("kwargs")) for step in source["preprocessing"]] == [
        ("ensure_dtype", {"dtype": "float64"}), ("scale_linear", {"gain": 1 / 255}),
        ("ensure_dtype", {"dtype": "float32"})]
    assert [axis.get("halo") for axis in target["axes"]] == [None, info.halo, info.halo, None] and info.halo == 112
    assert target["axes"][1]["size"] == {"tensor_id": "image", "axis_id": "y"}
    dois = {entry["doi"] for entry in rdf["cite"]}
    assert {"10.1371/journal.pbio.1000502", "10.1007/978-3-319-24574-4_28"} <= dois
    assert rdf["license"] == "CC-BY-NC-4.0" and "unet" in rdf["tags"] and "isbi2012" in rdf["tags"]
    assert rdf["config"]["seg"]["threshold"] == info.threshold


def test_readme_quotes_the_parity_and_says_how_to_run(unet: Any) -> None:
    rdf = _rdf(unet.package)
    readme = _member(unet.package, rdf["documentation"]["source"]).decode()
    assert "## Validation" in readme and "## Training data" in readme and "non-commercial" in readme
    assert f"max |Δ| {unet.parity.max_abs_diff:.2e}" in readme
    assert f"mask agreement {unet.parity.mask_agreement:.4%}" in readme
    assert "seg infer --model model.bioimageio.zip" in readme
    size = rdf["inputs"][0]["axes"][1]["size"]  # y: what bioimage.io tools accept
    assert f"Height and width: {size['min']} + n x {size['step']} px in bioimage.io tools" in readme
    dtype = rdf["inputs"][0]["data"]["type"]
    assert f"The test tensors are a real slice ({dtype}, as read from its file)" in readme
    cover = _member(unet.package, rdf["covers"][0]["source"])
    assert cover[:8] == b"\x89PNG\r\n\x1a\n" and len(cover) < 500_000


def test_cnn_package_cites_the_data_not_the_unet(cnn: Path) -> None:
    rdf = _rdf(cnn)
    dois = {entry["doi"] for entry in rdf["cite"]}
    assert "10.1371/journal.pbio.1000502" in dois and "10.1007/978-3-319-24574-4_28" not in dois
    assert rdf["inputs"][0]["axes"][1]["size"] == {"min": 64, "step": 1}  # any size; min 64 >= 2 x halo + 1
    assert rdf["outputs"][0]["axes"][1]["halo"] == Segmenter(cnn, provider="cpu").info.halo


def test_preprocessing_is_seg_normalisation_bit_for_bit(unet: Any) -> None:
    """bioimageio.core's own preprocessing of every uint8 value equals ``seg.runtime.preprocess.normalize``;
    the product is taken in float64 because in float32 (numpy's promotion of a float32 tensor times the gain)
    126 of the 256 values are one ulp off."""
    from bioimageio.core import create_prediction_pipeline, load_description
    from bioimageio.core.digest_spec import create_sample_for_model

    model = load_description(unet.package)
    values = np.tile(np.arange(256, dtype=np.uint8), (256, 1))[None, :, :, None]  # a valid size: 240 + 1 x 16
    with create_prediction_pipeline(model, devices=CPU) as pipeline:
        sample = create_sample_for_model(model, inputs={"image": values}, sample_id="ramp")
        pipeline.apply_preprocessing(sample)
    fed = sample.members["image"].data.to_numpy()
    expected = normalize(values[0, :, :, 0])
    assert fed.dtype == np.float32 and np.array_equal(fed[0, :, :, 0], expected)
    in_float32 = values[0, :, :, 0].astype(np.float32) * (1 / 255)  # what a float32-first recipe would feed
    assert in_float32.dtype == np.float32 and np.count_nonzero(in_float32[0] != expected[0]) == 126


def test_zoo_prediction_is_seg_infer(unet: Any, isbi_dir: Path, tmp_path: Path) -> None:
    """bioimageio.core's block-wise prediction (its default blocksize parameter n = 10: 400-pixel blocks, halo
    112 cropped) of a 1536x1536 mosaic of 9 real slices equals ``seg infer``'s probabilities (1024-pixel tiles,
    blended) to ``MOSAIC_TOL`` wherever both saw the whole receptive field: at least the halo from the border.
    Both then equal whole-image inference up to float32 rounding (1.2e-7 found: convolutions summed in another
    order); within the halo of the border they differ by up to 1e-2 (found), as the zoo pads the image by
    reflection while whole-image and seg's inference see the convolutions' zero padding there."""
    from bioimageio.core import create_prediction_pipeline, load_description, predict

    slices = [read_image(path) for path in list_images(isbi_dir / "train" / "image")[:9]]
    mosaic = np.block([[slices[3 * row + col] for col in range(3)] for row in range(3)])  # (1536, 1536) uint8
    write_image(tmp_path / "mosaic.png", mosaic)
    result = CliRunner().invoke(app, ["infer", "--input", str(tmp_path / "mosaic.png"), "--model", str(unet.package),
                                      "--output", str(tmp_path / "out"), "--save-prob", "--provider", "cpu"])
    assert result.exit_code == 0, result.output
    seg_prob = read_image(tmp_path / "out" / "prob" / "mosaic.tif")
    model = load_description(unet.package)
    pipeline = create_prediction_pipeline(model, devices=CPU)  # predict() enters and leaves it (no `with` here)
    sample = predict(model=pipeline, inputs=mosaic[None, :, :, None], blocksize_parameter=10)
    zoo = sample.members["prob"].data.to_numpy()[0, :, :, 0]
    assert zoo.shape == seg_prob.shape == (1536, 1536)
    inner = (slice(unet.info.halo, -unet.info.halo),) * 2
    assert np.abs(zoo - seg_prob)[inner].max() <= MOSAIC_TOL
    assert np.abs(zoo - seg_prob).max() > 10 * MOSAIC_TOL  # the border is excluded for a reason: padding differs


def test_without_the_zoo_extra_export_stops_before_writing(unet: Any, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from seg.export import to_onnx

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("bioimageio") else
                        real(name, *a))
    with pytest.raises(InputError, match=r"--bioimageio needs bioimageio.spec; fix: pip install"):
        to_onnx(unet.out.parent / "run", tmp_path / "model.onnx", bioimageio=True)
    assert list(tmp_path.iterdir()) == []


def test_write_package_from_model_info_alone(unet: Any, tmp_path: Path, labelled_dir: Path) -> None:
    """The Python API without an ``ExportReport``: parity is then said to be unmeasured."""
    from seg.export.bioimageio import write_package
    from seg.export.parity import load_images

    out = write_package(unet.out, unet.info, load_images(labelled_dir, {}, 1), tmp_path / "x.bioimageio.zip")
    assert isinstance(unet.info, ModelInfo) and out == tmp_path / "x.bioimageio.zip"
    readme = _member(out, "README.md").decode()
    assert "parity: not measured" in readme and [p.name for p in tmp_path.iterdir()] == ["x.bioimageio.zip"]


def test_training_epochs_are_the_epochs_trained(tmp_path: Path) -> None:
    """``epochs`` in config.json is a maximum; the zoo metadata quote what ``state.json`` says was trained."""
    import json

    from seg.export.bioimageio_docs import zoo_config

    (tmp_path / "config.json").write_text(json.dumps({"train": {"epochs": 1000, "batch": 8}}))
    info = ModelInfo()
    assert "training_epochs" not in zoo_config(info, tmp_path)["training"]
    (tmp_path / "state.json").write_text(json.dumps({"epoch": 105, "best_epoch": 72}))
    assert zoo_config(info, tmp_path)["training"]["training_epochs"] == 105


def test_a_failed_variant_leaves_the_new_package_not_an_earlier_one(unet: Any, tmp_path: Path) -> None:
    """The package is written right after the FP32 gate: a variant that then fails cannot leave an earlier
    export's package (other weights) beside the new model."""
    from seg.export import to_onnx
    from seg.runtime.errors import GateError

    out = tmp_path / "model.onnx"
    out.with_name("model.bioimageio.zip").write_bytes(b"an earlier export's")
    with pytest.raises(GateError, match=r"fp16 gate FAILED .*; .*model.onnx itself passed its gate and was written"):
        to_onnx(unet.out.parent / "run", out, max_images=1, timing_runs=1, bioimageio=True, fp16=True,
                max_delta_f1=-1.0)
    weights = _member(out.with_name("model.bioimageio.zip"), "model.onnx")
    assert hashlib.sha256(weights).digest() == hashlib.sha256(out.read_bytes()).digest()


def test_the_test_tensor_is_at_most_one_tile() -> None:
    """A huge first gate image must not make a huge package: the test input is cropped to a tile."""
    from seg.export.bioimageio import valid_crop

    image = np.zeros((2000, 1000), np.float32)
    assert valid_crop(image, 240, 16, largest=512).shape == (512, 512)
    assert valid_crop(image, 240, 16).shape == (2000, 992)
    assert valid_crop(np.zeros((100, 300), np.float32), 240, 16, largest=512).shape == (240, 288)
