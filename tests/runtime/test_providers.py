"""Sessions and providers: strict CUDA, auto fallback reported honestly, model file checks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from seg.runtime import providers
from seg.runtime.errors import InputError, ProviderError
from seg.runtime.providers import check_provider, make_session, physical_cores, session_providers

CUDA_LOADS = providers.cuda_problem() is None


def tiny_model(
    kind: str = "conv",
    shape: tuple[int | str | None, ...] = (None, None, None, 1),
    metadata: dict[str, str] | None = None,
    dtype: int = TensorProto.FLOAT,
) -> bytes:
    """A serialized ONNX model ``image (N, H, W, 1) -> prob`` built with onnx.helper.

    ``"identity"``: prob = image. ``"conv"``: sigmoid of an asymmetric 3x3 convolution (receptive field 3,
    zero padding like Keras "same"), so tiling errors and wrong flips show up.
    """
    x = helper.make_tensor_value_info("image", dtype, list(shape))
    y = helper.make_tensor_value_info("prob", dtype, list(shape))
    inits = []
    if kind == "identity":
        nodes = [helper.make_node("Identity", ["image"], ["prob"])]
    else:
        weights = (np.arange(9, dtype=np.float32) - 4) / 2
        inits = [helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 3, 3], weights)]
        nodes = [
            helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2]),
            helper.make_node("Conv", ["t", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", ["c"], ["s"]),
            helper.make_node("Transpose", ["s"], ["prob"], perm=[0, 2, 3, 1]),
        ]
    graph = helper.make_graph(nodes, "tiny", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


@pytest.mark.parametrize(("given", "expected"), [("cpu", "cpu"), ("CUDA", "cuda"), (" Auto ", "auto")])
def test_check_provider_accepts_valid_names(given: str, expected: str) -> None:
    assert check_provider(given) == expected


def test_misspelt_provider_lists_valid_names() -> None:
    with pytest.raises(ProviderError) as info:
        make_session(tiny_model(), "cdua")
    assert str(info.value) == "unknown provider 'cdua'; choose one of: auto, cuda, cpu"


def test_cpu_session_uses_physical_cores_and_all_optimisations() -> None:
    session = make_session(tiny_model(), "cpu")
    assert session_providers(session) == ["cpu"]
    options = session.get_session_options()
    assert options.intra_op_num_threads == physical_cores()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_threads_override() -> None:
    assert make_session(tiny_model(), "cpu", threads=1).get_session_options().intra_op_num_threads == 1


def test_physical_cores_is_positive_and_at_most_cpu_count() -> None:
    import os

    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


@pytest.mark.skipif(CUDA_LOADS, reason="CUDA loads here; the failure path needs a machine without it")
def test_cuda_is_strict_and_says_what_is_missing_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(tiny_model())
    with pytest.raises(ProviderError) as info:
        make_session(path, "cuda")
    message = str(info.value)
    assert message.startswith(f"{path}: CUDA provider cannot load: ")
    assert message.endswith(f"; fix: {providers.CUDA_FIX}")
    assert 'or use provider "cpu"' in message
    assert providers.cuda_problem() in message  # onnxruntime's own words (the missing library)
    assert "\n" not in message


@pytest.mark.skipif(CUDA_LOADS, reason="CUDA loads here")
def test_cuda_detects_onnxruntime_silent_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even when the pre-check passes, a session that came up on the CPU is refused for "cuda"."""
    monkeypatch.setattr(providers, "cuda_problem", lambda: None)
    with pytest.raises(ProviderError, match="onnxruntime fell back to the CPU"):
        make_session(tiny_model(), "cuda")


@pytest.mark.skipif(CUDA_LOADS, reason="CUDA loads here")
def test_auto_falls_back_to_cpu_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="seg.runtime.providers"):
        session = make_session(tiny_model(), "auto")
    assert session_providers(session) == ["cpu"]
    assert "CUDA unavailable" in caplog.text
    assert "running on cpu" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA_LOADS, reason="CUDA provider cannot load here")
def test_cuda_session_really_runs_on_cuda() -> None:
    assert session_providers(make_session(tiny_model(), "cuda"))[0] == "cuda"


def _bad_model(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.onnx"
    content = {
        "empty": b"",
        "text": b"this is not a model",
        "rank3": tiny_model("identity", shape=(None, None, 1)),
        "rgb": tiny_model("identity", shape=(None, None, None, 3)),
        "int": tiny_model("identity", dtype=TensorProto.INT32),
    }[kind]
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("empty", "{path}: empty file (0 bytes); not an ONNX model"),
        ("text", "{path}: not a loadable ONNX model ("),
        ("rank3", "{path}: model input 'image' has shape ["),
        ("rgb", "{path}: model input 'image' has shape [None, None, None, 3]; expected (N, H, W, 1)"),
        ("int", "{path}: model input 'image' is tensor(int32); expected float32 (N, H, W, 1)"),
    ],
)
def test_unusable_model_files_name_the_file(tmp_path: Path, kind: str, expected: str) -> None:
    path = _bad_model(tmp_path, kind)
    with pytest.raises(InputError) as info:
        make_session(path, "cpu")
    assert str(info.value).startswith(expected.format(path=path))


def test_wrong_channel_count_message(tmp_path: Path) -> None:
    path = tmp_path / "rgb.onnx"
    path.write_bytes(tiny_model("identity", shape=("n", "h", "w", 3)))
    with pytest.raises(InputError) as info:
        make_session(path, "cpu")
    assert str(info.value) == (
        f"{path}: model input 'image' has shape ['n', 'h', 'w', 3]; expected (N, H, W, 1) (one gray channel, NHWC)"
    )


def test_missing_model_file_says_how_to_get_one(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    with pytest.raises(InputError) as info:
        make_session(path)
    assert str(info.value) == f"{path}: no such model file; export one with `seg export model.onnx`"


def test_a_keras_file_given_as_model_says_to_export_it(tmp_path: Path) -> None:
    import zipfile

    from seg.runtime.providers import make_session

    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(InputError, match="a Keras model \\(zip archive\\), not ONNX; convert it first: seg export"):
        make_session(path, "cpu")


class _Created(Exception):
    """Raised by the spy in place of creating a session: the arguments were all the test wanted."""


def _spy_create(monkeypatch: pytest.MonkeyPatch) -> list[list[object]]:
    calls: list[list[object]] = []

    def create(source: object, options: object, chosen: list[object], name: str) -> None:
        calls.append(chosen)
        raise _Created

    monkeypatch.setattr(providers, "_create", create)
    return calls


def test_provider_options_merge_over_cuda_defaults_with_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(providers, "cuda_problem", lambda: None)
    calls = _spy_create(monkeypatch)
    with pytest.raises(_Created):
        make_session(tiny_model(), "cuda", provider_options={"cudnn_conv_algo_search": "HEURISTIC",
                                                             "gpu_mem_limit": 2**30}, device_id=1)
    assert calls == [[(providers.CUDA_EP, {"cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "1",
                                           "device_id": "1", "gpu_mem_limit": str(2**30)}), providers.CPU_EP]]


def test_provider_options_go_to_the_cpu_when_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_create(monkeypatch)
    with pytest.raises(_Created):
        make_session(tiny_model(), "cpu", provider_options={"some_option": 1}, device_id=2)
    assert calls == [[(providers.CPU_EP, {"some_option": "1"})]]


def test_a_contradicting_device_id_in_provider_options_says_how_to_pass_it() -> None:
    with pytest.raises(InputError) as info:
        make_session(tiny_model(), "cpu", provider_options={"device_id": 1})
    assert str(info.value) == ("provider_options['device_id'] is '1' but device_id is 0; "
                               "pass the device once, as device_id=1")
    make_session(tiny_model(), "cpu", provider_options={"device_id": "2"}, device_id=2)  # agreeing is fine


@pytest.mark.parametrize("bad", [-1, "1", 0.0])
def test_make_session_checks_device_id(bad: object) -> None:
    with pytest.raises(InputError, match=r"^device_id must be an int >= 0 \(the CUDA device index, 0 = first GPU\)"):
        make_session(tiny_model(), "cpu", device_id=bad)  # type: ignore[arg-type]


def test_threads_apply_to_given_session_options() -> None:
    options = ort.SessionOptions()
    options.enable_profiling = False
    assert make_session(tiny_model(), "cpu", threads=1, options=options).get_session_options().intra_op_num_threads == 1
    assert options.intra_op_num_threads == 0  # the caller's object as it was made
    untouched = ort.SessionOptions()
    untouched.intra_op_num_threads = 2
    assert make_session(tiny_model(), "cpu", options=untouched).get_session_options().intra_op_num_threads == 2
