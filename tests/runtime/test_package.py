"""``Segmenter("x.bioimageio.zip")`` / ``seg infer --model x.bioimageio.zip``: packages run directly.

A seg package comes from a small seeded untrained U-Net exported with ``to_onnx(..., bioimageio=True)``; a
foreign one is written here by hand (an rdf.yaml and an onnx.helper model without seg metadata), the way a
zoo package made by other tools looks, and checked with bioimageio.spec and bioimageio.core.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from seg.runtime import InputError, Segmenter, read_image
from seg.runtime.io import list_images, write_image
from seg.toolkit.cli import app
from tests.runtime.test_providers import tiny_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, labelled_dir: Path) -> Any:
    """An untrained seeded U-Net (width 4, depth 2) exported with its bioimage.io package."""
    import keras

    from seg.export import to_onnx
    from seg.train.models import ModelSpec, build_model
    from tests.export.conftest import save_run

    keras.utils.set_random_seed(0)
    spec = ModelSpec(width=4, depth=2)
    root = tmp_path_factory.mktemp("pkg")
    run = save_run(root / "run", build_model(spec), labelled_dir, spec.to_dict())
    return to_onnx(run, root / "model.onnx", max_images=2, timing_runs=1, bioimageio=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, labelled_dir: Path) -> Path:
    """Three real slices (ISBI when present) and an odd-size 700x900 crop of a mosaic of them."""
    folder = tmp_path_factory.mktemp("images")
    slices = [read_image(path) for path in list_images(labelled_dir / "train" / "image")[:3]]
    for i, image in enumerate(slices):
        write_image(folder / f"{i:02d}.png", image)
    write_image(folder / "odd.png", np.block([[slices[0], slices[1]], [slices[2], slices[0]]])[:700, :900])
    return folder


def _infer(model: Path, images: Path, out: Path) -> Any:
    return CliRunner().invoke(app, ["infer", "--input", str(images), "--model", str(model), "--output", str(out),
                                    "--save-prob", "--provider", "cpu"])


def test_infer_on_the_package_equals_infer_on_the_onnx(exported: Any, images: Path, tmp_path: Path) -> None:
    results = [_infer(model, images, tmp_path / name) for model, name in ((exported.out, "onnx"),
                                                                            (exported.package, "zip"))]
    assert [r.exit_code for r in results] == [0, 0], results[1].output
    names = sorted(p.name for p in (tmp_path / "onnx").glob("*.png"))
    assert names == ["00.png", "01.png", "02.png", "odd.png"]
    for name in names:
        assert np.array_equal(read_image(tmp_path / "onnx" / name), read_image(tmp_path / "zip" / name))
        prob = Path("prob") / (Path(name).stem + ".tif")
        assert np.array_equal(read_image(tmp_path / "onnx" / prob), read_image(tmp_path / "zip" / prob))


def test_segmenter_takes_the_seg_metadata_from_the_packaged_onnx(exported: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no seg metadata" warning: the package's ONNX carries it
        with Segmenter(exported.package, provider="cpu") as segmenter:
            assert segmenter.info == exported.info and segmenter.name == str(exported.package)


# -- broken packages: one line, exit 2, nothing written -------------------------------------------------


def _rewrite(package: Path, out: Path, edit: dict[str, bytes | None]) -> Path:
    """A copy of ``package`` with members replaced (bytes) or left out (None)."""
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            data = edit.get(name, source.read(name))
            if data is not None:
                target.writestr(name, data)
    return out


def _broken(kind: str, package: Path, folder: Path) -> Path:
    rdf = yaml.safe_load(zipfile.ZipFile(package).read("rdf.yaml"))
    if kind == "broken rdf.yaml":
        return _rewrite(package, folder / "x.bioimageio.zip", {"rdf.yaml": b"type: model\ninputs: [\n  - {id: x\n"})
    if kind == "a number that is not one":
        rdf["outputs"][0]["axes"][1]["halo"] = "wide"
        return _rewrite(package, folder / "x.bioimageio.zip", {"rdf.yaml": yaml.safe_dump(rdf).encode()})
    if kind == "missing weights":
        return _rewrite(package, folder / "x.bioimageio.zip", {rdf["weights"]["onnx"]["source"]: None})
    weights = bytearray(zipfile.ZipFile(package).read(rdf["weights"]["onnx"]["source"]))
    weights[-1] ^= 1  # one flipped bit
    return _rewrite(package, folder / "x.bioimageio.zip", {rdf["weights"]["onnx"]["source"]: bytes(weights)})


@pytest.mark.parametrize(("kind", "message"), [
    ("broken rdf.yaml", r"x.bioimageio.zip: rdf.yaml is not valid YAML at line \d+"),
    ("missing weights", r"x.bioimageio.zip: weights model.onnx named in rdf.yaml are missing from the package"),
    ("a number that is not one", r"x.bioimageio.zip: rdf.yaml has a field seg cannot read \(ValueError: "),
    ("bad checksum", r"x.bioimageio.zip: weights model.onnx have sha256 [0-9a-f]{12}\.\.\., rdf.yaml says "
                     r"[0-9a-f]{12}\.\.\.: the package is corrupt or was edited"),
])
def test_broken_package_exits_2_with_one_line(kind: str, message: str, exported: Any, images: Path,
                                              tmp_path: Path) -> None:
    bad = _broken(kind, exported.package, tmp_path)
    result = _infer(bad, images, tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), lines
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match=message):
        Segmenter(bad, provider="cpu")


# -- foreign packages -----------------------------------------------------------------------------------


def _axes(halo: int | None = None, sizes: Any = None) -> list[dict[str, Any]]:
    space = [{"type": "space", "id": axis, "size": sizes if sizes is not None else
              {"tensor_id": "raw", "axis_id": axis}, **({"halo": halo} if halo else {})} for axis in ("y", "x")]
    return [{"type": "batch"}, *space, {"type": "channel", "channel_names": ["c0"]}]


def _foreign_rdf(onnx: bytes, **changes: Any) -> dict[str, Any]:
    """A 0.5 rdf of a 2-D one-channel NHWC model (uint8 in, scaled by 1/255; binarized at 0.3)."""
    rdf = {
        "format_version": "0.5.4", "type": "model", "name": "foreign membrane model",
        "description": "made by another tool", "authors": [{"name": "Someone Else"}],
        "cite": [{"text": "a paper", "doi": "10.1000/xyz123"}], "license": "MIT", "documentation": "README.md",
        "inputs": [{"id": "raw", "axes": _axes(sizes={"min": 32, "step": 16}), "data": {"type": "uint8"},
                    "test_tensor": {"source": "in.npy"},
                    "preprocessing": [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
                                      {"id": "scale_linear", "kwargs": {"gain": 1 / 255, "offset": 0.0}},
                                      {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]}],
        "outputs": [{"id": "mask", "axes": _axes(halo=8), "data": {"type": "float32"},
                     "test_tensor": {"source": "out.npy"},
                     "postprocessing": [{"id": "binarize", "kwargs": {"threshold": 0.3}}]}],
        "weights": {"onnx": {"source": "weights.onnx", "sha256": hashlib.sha256(onnx).hexdigest(),
                             "opset_version": 17}},
    }
    for path, value in changes.items():  # "inputs.0.preprocessing" -> value
        *parents, last = path.split(".")
        node: Any = rdf
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    return rdf


def _foreign(folder: Path, rdf: dict[str, Any], weights: bytes) -> Path:
    import io

    from seg.runtime.providers import make_session

    image = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 1), dtype=np.uint8)
    session = make_session(weights, "cpu")
    prob = session.run(None, {"image": image.astype(np.float32) / np.float32(255)})[0]
    arrays = {}
    for name, array in (("in.npy", image), ("out.npy", (prob >= 0.3).astype(np.float32))):
        buffer = io.BytesIO()
        np.save(buffer, array)
        arrays[name] = buffer.getvalue()
    path = folder / "foreign.bioimageio.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("rdf.yaml", yaml.safe_dump(rdf, sort_keys=False))
        archive.writestr("weights.onnx", weights)
        archive.writestr("README.md", "# Foreign\n\n## Validation\n\nNone.\n")
        for name, data in arrays.items():
            archive.writestr(name, data)
    return path


def test_a_foreign_package_runs_with_its_rdf_settings_and_agrees_with_bioimageio(tmp_path: Path) -> None:
    from bioimageio.core import create_prediction_pipeline, predict
    from bioimageio.spec import InvalidDescr, load_description

    weights = tiny_model()  # sigmoid of a 3x3 convolution, no seg metadata
    package = _foreign(tmp_path, _foreign_rdf(weights), weights)
    model = load_description(package, perform_io_checks=True)
    assert not isinstance(model, InvalidDescr), model.validation_summary.format()  # a valid zoo package
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        segmenter = Segmenter(package, provider="cpu")
    info = segmenter.info
    assert (info.tile_size, info.size_multiple, info.halo, info.threshold) == (512, 16, 8, 0.3)
    assert info.model_kind == "bioimage.io: foreign membrane model" and not info.from_defaults
    image = np.random.default_rng(1).integers(0, 256, (208, 304), dtype=np.uint8)  # 32 + n x 16, for the zoo
    prob = segmenter.predict(image)
    pipeline = create_prediction_pipeline(model, devices=["CPUExecutionProvider"])  # predict() enters it
    zoo = predict(model=pipeline, inputs=image[None, :, :, None], blocksize_parameter=2).members["mask"]
    zoo_mask = zoo.data.to_numpy()[0, :, :, 0]
    assert np.array_equal((prob >= info.threshold)[1:-1, 1:-1], zoo_mask[1:-1, 1:-1].astype(bool))


NCHW = [{"type": "batch"}, {"type": "channel", "channel_names": ["c0"]},
        {"type": "space", "id": "y", "size": 64}, {"type": "space", "id": "x", "size": 64}]


@pytest.mark.parametrize(("changes", "reason"), [
    ({"inputs.0.axes": NCHW}, r"input axes batch:batch,channel:channel,space:y,space:x; seg runs 2-D one-channel "
                              r"models laid out batch,y,x,channel \(NHWC\)"),
    ({"outputs.0.postprocessing": [{"id": "sigmoid"}]},
     r"output postprocessing step sigmoid cannot be applied by seg \(the model gives logits"),
    ({"inputs.0.preprocessing": [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"]}}]},
     r"input preprocessing step zero_mean_unit_variance\(axes=\['y', 'x'\]\) is not a fixed scaling"),
    ({"inputs.0.preprocessing": [{"id": "scale_linear", "kwargs": {"gain": 2 / 255, "offset": -1.0}},
                                 {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]},
     r"input preprocessing maps uint8 x to 0.00784314 x \+ -1; seg feeds x / 255"),
    ({"inputs.0.preprocessing": [{"id": "scale_linear", "kwargs": {"gain": 1 / 255}}]},
     r"input preprocessing hands the model uint8 \(a step list not ending in ensure_dtype float32 is cast back"),
    ({"weights": {"torchscript": {"source": "w.pt", "sha256": "0" * 64}}},
     r"no ONNX weights \(it has: torchscript\); seg runs ONNX weights only"),
    ({"format_version": "0.4.10"}, r"rdf.yaml is format 0.4.10; seg reads 0.5.x"),
])
def test_a_foreign_package_seg_cannot_express_is_refused(changes: dict[str, Any], reason: str,
                                                         tmp_path: Path) -> None:
    weights = tiny_model()
    package = _foreign(tmp_path, _foreign_rdf(weights, **changes), weights)
    with pytest.raises(InputError) as caught:
        Segmenter(package, provider="cpu")
    assert str(caught.value).startswith(f"{package}: ") and "\n" not in str(caught.value)
    assert re.search(reason, str(caught.value)), str(caught.value)


def test_import_runtime_loads_no_yaml_bioimageio_dask_or_zarr() -> None:
    code = ("import sys, seg.runtime; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('yaml', 'bioimageio', 'dask', 'zarr')]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_damaged_zip_member_is_refused_in_one_line(tmp_path: Path) -> None:
    """Compressed weights with damaged deflate data (zlib.error inside zipfile): one line naming the package."""
    weights = tiny_model()
    package = tmp_path / "packed.bioimageio.zip"
    with zipfile.ZipFile(package, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("rdf.yaml", yaml.safe_dump(_foreign_rdf(weights), sort_keys=False))
        archive.writestr("weights.onnx", weights + bytes(4096))
    with zipfile.ZipFile(package) as archive:
        info = archive.getinfo("weights.onnx")
    raw = bytearray(package.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)  # the compressed data
    raw[start:start + 8] = b"\xff" * 8
    package.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"packed.bioimageio.zip: weights weights.onnx cannot be read \("):
        Segmenter(package, provider="cpu")
