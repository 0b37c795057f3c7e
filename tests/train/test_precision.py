"""``--amp``: which mixed-precision policy a machine gets, and a run trained in bfloat16 on the CPU."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from seg import train
from seg.runtime.errors import SegWarning
from seg.train import backend
from seg.train.models import ModelSpec
from seg.train.trainer import _setup_device

ZEN4_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 vaes\n"
SKYLAKE_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
SAPPHIRE_RAPIDS_FLAGS = "flags\t\t: avx512f amx_bf16 amx_tile amx_int8\n"


@pytest.fixture
def float32_after() -> Iterator[None]:
    """Whatever a test sets, the global Keras policy is float32 again afterwards."""
    import keras

    yield
    keras.mixed_precision.set_global_policy("float32")


def test_bfloat16_cpus_are_told_by_their_flags() -> None:
    assert backend.cpu_has_bfloat16(ZEN4_FLAGS)
    assert backend.cpu_has_bfloat16(SAPPHIRE_RAPIDS_FLAGS)
    assert not backend.cpu_has_bfloat16(SKYLAKE_FLAGS)
    assert not backend.cpu_has_bfloat16("model name\t: avx512_bf16 in a name, not a flag\n")


def test_float16_on_a_gpu_bfloat16_on_a_bfloat16_cpu_else_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "cpu_has_bfloat16", lambda: True)
    assert backend.mixed_policy(["/physical_device:GPU:0"]) == "mixed_float16"
    assert backend.mixed_policy([]) == "mixed_bfloat16"
    monkeypatch.setattr(backend, "cpu_has_bfloat16", lambda: False)
    assert backend.mixed_policy([]) is None


def test_amp_without_a_fast_precision_warns_and_trains_in_float32(monkeypatch: pytest.MonkeyPatch,
                                                                  float32_after: None) -> None:
    import keras

    monkeypatch.setattr(backend, "accelerators", lambda: [])
    monkeypatch.setattr(backend, "cpu_has_bfloat16", lambda: False)
    with pytest.warns(SegWarning, match=r"--amp needs a GPU, or TensorFlow on a CPU with bfloat16 instructions"):
        device, on_gpu = _setup_device(train.TrainConfig(data="unused", amp=True))
    assert (device, on_gpu) == ("CPU (tensorflow)", False)
    assert keras.mixed_precision.global_policy().name == "float32"


def test_a_run_without_amp_is_float32_after_one_with_it(monkeypatch: pytest.MonkeyPatch, float32_after: None) -> None:
    import keras

    monkeypatch.setattr(backend, "accelerators", lambda: [])
    monkeypatch.setattr(backend, "cpu_has_bfloat16", lambda: True)
    assert _setup_device(train.TrainConfig(data="unused", amp=True)) == ("CPU (tensorflow)", False)
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _setup_device(train.TrainConfig(data="unused"))[0] == "CPU (tensorflow)"
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow
def test_a_bfloat16_run_trains_saves_its_policy_and_resumes_in_it(isbi_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   float32_after: None) -> None:
    import keras
    import numpy as np

    monkeypatch.setattr(backend, "cpu_has_bfloat16", lambda: True)  # emulated where the CPU lacks it: slower only
    config = train.TrainConfig(data=str(isbi_dir), model=ModelSpec("unet", 4, 1), epochs=2, steps_per_epoch=3,
                               batch=2, crop=64, runs_root=str(tmp_path / "runs"), name="amp", amp=True)
    result = train.fit(config, progress=False)
    assert result.device.endswith("mixed bfloat16") and np.isfinite(result.val_mse)
    assert keras.mixed_precision.global_policy().name == "float32"  # the caller's policy is back
    model = keras.models.load_model(result.run_dir / "model.keras")
    assert model.get_layer("stem_conv").dtype_policy.name == "mixed_bfloat16"
    assert model.get_layer("prob").dtype_policy.name == "float32"  # the sigmoid output stays float32

    monkeypatch.setattr(backend, "cpu_has_bfloat16", lambda: False)  # resumed on a machine without bfloat16
    with pytest.warns(SegWarning, match=r"amp: resumed in mixed_bfloat16, the precision it was saved in \(this "
                                        r"machine would train it in float32\)"):
        resumed = train.resume(result.run_dir, progress=False)
    assert resumed.device.endswith("mixed bfloat16")
