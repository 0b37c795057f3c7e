"""``seg data synth`` / ``seg data import`` and the ISBI stack conversion behind the latter."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from seg.runtime.errors import InputError
from seg.runtime.io import read_image
from seg.toolkit.cli import app
from seg.toolkit.data.datasets import import_isbi_stacks
from tests.helpers import assert_seed_layout

runner = CliRunner()


def _stacks(
    folder: Path, n: int = 3, size: tuple[int, int] = (32, 48), n_labels: int | None = None,
    dtype: type = np.uint8, label_size: tuple[int, int] | None = None, seed: int = 0,
) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """Write ``train-volume.tif`` (N, H, W) and ``train-labels.tif`` (0/255) like the ISBI originals."""
    rng = np.random.default_rng(seed)
    high = np.iinfo(dtype).max if np.dtype(dtype).kind == "u" else 1.0
    volume = (rng.random((n, *size)) * high).astype(dtype)
    labels = np.where(rng.random((n if n_labels is None else n_labels, *(label_size or size))) < 0.2, 0, 255)
    labels = labels.astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "train-volume.tif", volume, photometric="minisblack")
    tifffile.imwrite(folder / "train-labels.tif", labels, photometric="minisblack")
    return folder / "train-volume.tif", folder / "train-labels.tif", volume, labels


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ") and "Traceback" not in output
    return lines[0]


# --- import_isbi_stacks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("n", [1, 3, 12])
def test_import_writes_every_page_as_a_pair(tmp_path: Path, n: int, dtype: type) -> None:
    volume_tif, labels_tif, volume, labels = _stacks(tmp_path / "in", n=n, dtype=dtype)
    out = import_isbi_stacks(volume_tif, labels_tif, tmp_path / "isbi")
    assert out == tmp_path / "isbi"
    assert_seed_layout(out, volume, labels, dtype)
    assert not (out / "test").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "isbi"]  # no staging folder left


def test_import_names_pad_to_the_page_count(tmp_path: Path) -> None:
    volume_tif, labels_tif, *_ = _stacks(tmp_path, n=101, size=(8, 8))
    out = import_isbi_stacks(volume_tif, labels_tif, tmp_path / "isbi")
    names = sorted(p.name for p in (out / "train/image").iterdir())
    assert names[0] == "000.png" and names[-1] == "100.png"


def test_import_binarizes_labels_at_half_range(tmp_path: Path) -> None:
    labels = np.array([[[0, 127, 128, 255]]], np.uint8)
    tifffile.imwrite(tmp_path / "v.tif", np.zeros((1, 1, 4), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "l.tif", labels, photometric="minisblack")
    out = import_isbi_stacks(tmp_path / "v.tif", tmp_path / "l.tif", tmp_path / "isbi")
    assert read_image(out / "train/label/00.png").tolist() == [[0, 0, 255, 255]]


def test_import_warns_once_for_a_label_stack_not_once_per_page(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "v.tif", np.zeros((6, 1, 4), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "l.tif", np.tile(np.array([0, 90, 200, 255], np.uint8), (6, 1, 1)),
                     photometric="minisblack")  # four values: not a binary label, on every page
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        import_isbi_stacks(tmp_path / "v.tif", tmp_path / "l.tif", tmp_path / "isbi")
    assert len(said) == 1 and "l.tif" in str(said[0].message)


def test_import_page_count_mismatch_names_the_labels_file(tmp_path: Path) -> None:
    volume_tif, labels_tif, *_ = _stacks(tmp_path, n=3, n_labels=2)
    with pytest.raises(InputError) as info:
        import_isbi_stacks(volume_tif, labels_tif, tmp_path / "isbi")
    assert str(info.value) == (
        f"{labels_tif}: 2 pages but {volume_tif} has 3; the label stack needs one page per image slice"
    )
    assert not (tmp_path / "isbi").exists()


def test_import_size_mismatch_names_the_page(tmp_path: Path) -> None:
    volume_tif, labels_tif, *_ = _stacks(tmp_path, n=2, size=(32, 48), label_size=(32, 32))
    with pytest.raises(InputError) as info:
        import_isbi_stacks(volume_tif, labels_tif, tmp_path / "isbi")
    assert str(info.value) == (
        f"{labels_tif}: page 0 has shape (32, 32) but {volume_tif} page 0 has (32, 48); "
        "each label page must match its image slice"
    )
    assert not (tmp_path / "isbi").exists()


def test_import_float_volume_is_refused(tmp_path: Path) -> None:
    volume_tif, labels_tif, *_ = _stacks(tmp_path, n=2, dtype=np.float32)
    with pytest.raises(InputError, match=r"train-volume.tif: page 0 has float32 pixels; convert the stack to 8- or"):
        import_isbi_stacks(volume_tif, labels_tif, tmp_path / "isbi")
    assert not (tmp_path / "isbi").exists()


def test_import_overwrite_replaces_train_and_keeps_test(tmp_path: Path) -> None:
    volume_tif, labels_tif, volume, _ = _stacks(tmp_path / "in", n=2)
    out = tmp_path / "isbi"
    (out / "train/image").mkdir(parents=True)
    (out / "train/image/99.png").write_bytes(b"old")
    (out / "test/image").mkdir(parents=True)
    (out / "test/image/00.png").write_bytes(b"challenge slice")
    with pytest.raises(InputError, match="folder is not empty; pass --overwrite"):
        import_isbi_stacks(volume_tif, labels_tif, out)
    import_isbi_stacks(volume_tif, labels_tif, out, overwrite=True)
    assert sorted(p.name for p in (out / "train/image").iterdir()) == ["00.png", "01.png"]
    assert (out / "test/image/00.png").read_bytes() == b"challenge slice"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "isbi"]


# --- CLI ------------------------------------------------------------------------------------------------------


def test_data_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["data", "--help"])
    assert result.exit_code == 0
    assert "synth" in result.output and "import" in result.output


def test_cli_synth_writes_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    result = runner.invoke(app, ["data", "synth", str(out), "--n", "3", "--size", "64", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert f"wrote 2 train + 1 test synthetic 64x64 slices to {out} (seed 4, membrane " in result.output
    assert read_image(out / "train/image/01.png").shape == (64, 64)
    assert sorted(p.name for p in (out / "test/label").iterdir()) == ["00.png"]


def test_cli_synth_refuses_a_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    assert runner.invoke(app, ["data", "synth", str(out), "--n", "2", "--size", "32"]).exit_code == 0
    before = (out / "train/image/00.png").read_bytes()
    result = runner.invoke(app, ["data", "synth", str(out), "--n", "2", "--size", "32", "--seed", "1"])
    assert result.exit_code == 2
    assert _one_error_line(result.output) == (
        f"error: {out}: folder is not empty; pass --overwrite to replace the dataset in it, or choose another folder"
    )
    assert (out / "train/image/00.png").read_bytes() == before
    args = ["data", "synth", str(out), "--n", "2", "--size", "32", "--seed", "1", "--overwrite"]
    assert runner.invoke(app, args).exit_code == 0
    assert (out / "train/image/00.png").read_bytes() != before


@pytest.mark.parametrize(("option", "value"), [("--n", "0"), ("--size", "8"), ("--seed", "x")])
def test_cli_synth_rejects_bad_options(tmp_path: Path, option: str, value: str) -> None:
    result = runner.invoke(app, ["data", "synth", str(tmp_path / "syn"), option, value])
    assert result.exit_code == 2
    assert not (tmp_path / "syn").exists()


def test_cli_import_converts_stacks(tmp_path: Path) -> None:
    volume_tif, labels_tif, volume, _ = _stacks(tmp_path / "in", n=4)
    out = tmp_path / "isbi"
    result = runner.invoke(app, ["data", "import", str(volume_tif), str(labels_tif), str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote 4 train slices with labels to {out}" in result.output
    assert np.array_equal(read_image(out / "train/image/03.png"), volume[3])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda v, lab: v.unlink(), "train-volume.tif: no such file"),
        (lambda v, lab: lab.write_bytes(b""), "train-labels.tif: empty file (0 bytes)"),
        (lambda v, lab: lab.write_bytes(b"II*\x00garbage"), "train-labels.tif: corrupt or unreadable TIFF"),
        (lambda v, lab: _stacks(v.parent, n=3, n_labels=2), "train-labels.tif: 2 pages but"),
    ],
    ids=["missing", "empty", "corrupt", "page-count"],
)
def test_cli_import_bad_stacks_exit_2_with_one_line(tmp_path: Path, damage, message: str) -> None:
    volume_tif, labels_tif, *_ = _stacks(tmp_path / "in", n=3)
    damage(volume_tif, labels_tif)
    result = runner.invoke(app, ["data", "import", str(volume_tif), str(labels_tif), str(tmp_path / "isbi")])
    assert result.exit_code == 2
    assert message in _one_error_line(result.output)
    assert not (tmp_path / "isbi").exists()


def test_failed_swap_puts_the_old_split_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    volume_tif, labels_tif, *_ = _stacks(tmp_path / "in", n=2)
    out = tmp_path / "isbi"
    (out / "train/image").mkdir(parents=True)
    (out / "train/image/00.png").write_bytes(b"old")
    real_replace = os.replace

    def fail_on_new_split(src: Path, dst: Path) -> None:
        if Path(src).name == "train" and Path(src).parent != out:
            raise OSError("simulated rename failure")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_new_split)
    with pytest.raises(OSError, match="simulated rename failure"):
        import_isbi_stacks(volume_tif, labels_tif, out, overwrite=True)
    assert (out / "train/image/00.png").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "isbi"]
