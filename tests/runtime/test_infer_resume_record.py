"""The resume record ``.seg-infer.json``: a corrupt, unreadable or incomplete one means "settings unknown",
so every output is redone (never trusted) with one warning that names the file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from seg.runtime import pipeline
from seg.runtime.errors import InputError, SegWarning
from seg.runtime.folders import segment_paths
from seg.runtime.io import read_image
from seg.runtime.preprocess import to_mask
from seg.runtime.resume import REPLACING, SETTINGS_FILE
from seg.runtime.segmenter import Segmenter
from tests.runtime.conftest import FOLDER_META
from tests.runtime.test_providers import tiny_model

SENTINEL = 7  # a pixel value no mask holds (masks are 0 or 255)


def _images_and_model(tmp_path: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """``(images, model, out)``: random 48x64 images with these names (PNG), the tiny folder model, and the
    output folder (not made)."""
    model = tmp_path / "model.onnx"
    model.write_bytes(tiny_model(metadata=FOLDER_META))
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (48, 64)).astype(np.uint8)).save(images / f"{name}.png")
    return images, model, out


@pytest.fixture
def done(tmp_path: Path) -> tuple[Path, Path, Path]:
    """``(images, model, out)``: two images already segmented into ``out``, each mask then replaced by a
    sentinel image (so a mask that is trusted instead of redone shows up)."""
    images, model, out = _images_and_model(tmp_path, ["a", "b"])
    segment_paths(images, model, out, provider="cpu", save_prob=True)
    for name in ("a", "b"):
        Image.fromarray(np.full((48, 64), SENTINEL, np.uint8)).save(out / f"{name}.png")
    return images, model, out


def _assert_all_redone(images: Path, model: Path, out: Path) -> None:
    seg = Segmenter(model, "cpu")
    for path in sorted(images.iterdir()):
        np.testing.assert_array_equal(read_image(out / path.name), to_mask(seg.predict(read_image(path))))


def _rerun(images: Path, model: Path, out: Path) -> tuple[int, list[str]]:
    """Rerun into ``out``; returns (files skipped, the SegWarning messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = segment_paths(images, model, out, provider="cpu", save_prob=True)
    return summary.skipped, [str(w.message) for w in caught if issubclass(w.category, SegWarning)]


def test_an_intact_record_resumes_and_trusts_the_outputs(done: tuple[Path, Path, Path]) -> None:
    images, model, out = done
    skipped, messages = _rerun(images, model, out)
    assert (skipped, messages) == (2, [])
    assert (read_image(out / "a.png") == SENTINEL).all()  # the control: trusted, so left alone


@pytest.mark.parametrize(("content", "why"), [
    (b"\x00\xff\xfe garbage \x89PNG", "is corrupt (not JSON)"),
    (b'{"inputs": "x", "thresh', "is corrupt (not JSON)"),
    (b"", "is corrupt (not JSON)"),
    (b"[1, 2, 3]", "holds a JSON list, not an object"),
    (b'"unchanged"', "holds a JSON str, not an object"),
    (b"null", "holds a JSON NoneType, not an object"),
    (b"[" * 100_000, "is corrupt (not JSON)"),
])
def test_a_corrupt_record_redoes_every_output_with_one_warning(done: tuple[Path, Path, Path], content: bytes,
                                                              why: str) -> None:
    images, model, out = done
    record = out / SETTINGS_FILE
    record.write_bytes(content)
    skipped, messages = _rerun(images, model, out)
    assert skipped == 0
    assert messages == [f"{record}: the resume record {why}; settings unknown, so every output in {out} is redone"]
    _assert_all_redone(images, model, out)
    assert json.loads(record.read_text())["threshold"] == 0.5  # rewritten whole: the next rerun resumes
    assert _rerun(images, model, out) == (2, [])


def test_a_record_missing_keys_redoes_every_output(done: tuple[Path, Path, Path]) -> None:
    images, model, out = done
    record = out / SETTINGS_FILE
    kept = json.loads(record.read_text())
    del kept["model_sha256"], kept["tile"]
    record.write_text(json.dumps(kept))
    skipped, messages = _rerun(images, model, out)
    assert skipped == 0
    assert messages == [f"{record}: the resume record lacks model_sha256, tile; settings unknown, so every output "
                        f"in {out} is redone"]
    _assert_all_redone(images, model, out)


def test_an_unreadable_record_redoes_every_output(done: tuple[Path, Path, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    images, model, out = done
    record = out / SETTINGS_FILE
    read_bytes = Path.read_bytes

    def denied(path: Path) -> bytes:  # chmod 0 would not stop root; this does
        if path.name == SETTINGS_FILE:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", denied)
    skipped, messages = _rerun(images, model, out)
    assert skipped == 0
    assert messages == [f"{record}: cannot read the resume record (Permission denied); settings unknown, so every "
                        f"output in {out} is redone"]
    _assert_all_redone(images, model, out)


def test_outputs_made_under_an_earlier_tile_rule_are_redone(done: tuple[Path, Path, Path]) -> None:
    """Records from before the 2x-tile rule changed lack ``tile_rule``: their outputs may differ at an edge."""
    images, model, out = done
    record = out / SETTINGS_FILE
    settings = json.loads(record.read_text())
    del settings["tile_rule"]
    record.write_text(json.dumps(settings))
    skipped, messages = _rerun(images, model, out)
    assert skipped == 0 and messages == [f"{record}: the resume record lacks tile_rule; settings unknown, so "
                                         f"every output in {out} is redone"]
    _assert_all_redone(images, model, out)


def test_a_folder_in_place_of_the_record_stops_the_run(done: tuple[Path, Path, Path]) -> None:
    images, model, out = done
    record = out / SETTINGS_FILE
    record.unlink()
    record.mkdir()
    with pytest.warns(SegWarning, match="cannot read the resume record"), \
            pytest.raises(InputError, match=r"seg-infer.json: cannot write the resume record \(Is a directory\)"):
        segment_paths(images, model, out, provider="cpu", save_prob=True)
    assert (read_image(out / "a.png") == SENTINEL).all()  # stopped before any output was written


def test_a_model_that_cannot_be_fingerprinted_is_not_trusted(done: tuple[Path, Path, Path]) -> None:
    """A ``Segmenter`` made from bytes, passed in without them: its model cannot be matched to the record."""
    images, model, out = done
    seg = Segmenter(model.read_bytes(), "cpu")
    assert segment_paths(images, model.read_bytes(), out, segmenter=seg, save_prob=True).skipped == 2  # bytes given
    with pytest.warns(SegWarning, match=r"model \(bytes\): cannot read the model's bytes to fingerprint it"):
        summary = segment_paths(images, segmenter=seg, output_dir=out, save_prob=True)
    assert summary.skipped == 0
    _assert_all_redone(images, model, out)



class _Killed(Exception):
    """Stands for a kill part-way through a run."""


def _die_after_one_write(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the next run write one input's outputs, then die (``_Killed``); returns that input's name."""
    write, written = pipeline._write, []

    def write_one_then_die(entry: Any, threshold: float) -> None:
        if written:
            raise _Killed
        write(entry, threshold)
        written.append(entry.item.source.name)

    monkeypatch.setattr(pipeline, "_write", write_one_then_die)
    return written


def test_a_run_killed_after_new_settings_leaves_no_output_of_the_old_ones(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun with another threshold records the new settings before it writes; killed after one file, the
    outputs it had not rewritten must not be left behind, or the next run would trust them as made with the
    new settings."""
    images, model, out = _images_and_model(tmp_path, [f"s{k}" for k in range(8)])
    segment_paths(images, model, out, provider="cpu", threshold=0.5)
    written = _die_after_one_write(monkeypatch)
    with pytest.warns(SegWarning, match="other threshold"), pytest.raises(_Killed):
        segment_paths(images, model, out, provider="cpu", threshold=0.9)
    monkeypatch.undo()
    seg = Segmenter(model, "cpu")
    assert [p.name for p in sorted(out.glob("*.png"))] == written  # the one file written at 0.9, no other
    resumed = segment_paths(images, model, out, provider="cpu", threshold=0.9)
    assert (resumed.skipped, resumed.images) == (1, 7)
    for path in sorted(images.iterdir()):
        np.testing.assert_array_equal(read_image(out / path.name), to_mask(seg.predict(read_image(path)), 0.9))


def test_overwrite_killed_part_way_leaves_no_output_it_meant_to_replace(done: tuple[Path, Path, Path],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``overwrite`` replaces every output; killed after one, the other (a sentinel) is gone, not kept."""
    images, model, out = done
    written = _die_after_one_write(monkeypatch)
    with pytest.raises(_Killed):
        segment_paths(images, model, out, provider="cpu", save_prob=True, overwrite=True)
    monkeypatch.undo()
    assert [p.name for p in sorted(out.glob("*.png"))] == written
    assert _rerun(images, model, out) == (1, [])
    _assert_all_redone(images, model, out)


def test_a_run_stopped_while_replacing_outputs_is_not_trusted(done: tuple[Path, Path, Path]) -> None:
    """The record a run leaves while it deletes the outputs it will redo: whatever survived is redone."""
    images, model, out = done
    record = out / SETTINGS_FILE
    record.write_text(json.dumps({REPLACING: True}))
    skipped, messages = _rerun(images, model, out)
    assert skipped == 0
    assert messages == [f"{record}: an earlier run was stopped while it replaced its outputs; settings unknown, "
                        f"so every output in {out} is redone"]
    _assert_all_redone(images, model, out)


def test_other_settings_redo_every_kind_of_output_not_only_the_asked_ones(tmp_path: Path) -> None:
    """Probability maps and overlays made under the old settings must not survive a rerun with new ones that
    does not ask for them, or a later run asking for them would trust them."""
    images, model, out = _images_and_model(tmp_path, ["a", "b"])
    segment_paths(images, model, out, provider="cpu", save_prob=True, overlay=True)
    with pytest.warns(SegWarning, match="other threshold; redoing them all"):
        segment_paths(images, model, out, provider="cpu", threshold=0.6)  # masks only
    assert not any(list((out / kind).glob("*")) for kind in ("prob", "overlay"))
    again = segment_paths(images, model, out, provider="cpu", threshold=0.6, save_prob=True, overlay=True)
    assert (again.images, again.skipped) == (2, 0)


def test_the_same_glob_typed_in_another_folder_is_other_inputs(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A glob is recorded as an absolute pattern: typed in another folder it matches other files, whose
    outputs are redone (with the warning), never taken for done."""
    images, model, out = _images_and_model(tmp_path, ["a", "b"])
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(other / "a.png")
    monkeypatch.chdir(images)
    segment_paths("*.png", model, out, provider="cpu")
    assert json.loads((out / SETTINGS_FILE).read_text())["inputs"] == str(images / "*.png")
    monkeypatch.chdir(other)
    with pytest.warns(SegWarning, match="earlier outputs were made with other inputs; redoing them all"):
        again = segment_paths("*.png", model, out, provider="cpu")
    assert (again.images, again.skipped) == (1, 0)
    np.testing.assert_array_equal(read_image(out / "a.png"), to_mask(Segmenter(model, "cpu").predict(
        read_image(other / "a.png"))))


def test_an_input_inside_the_output_folder_is_never_deleted_as_a_stale_output(tmp_path: Path) -> None:
    """Redoing every kind of output must not delete ``out/overlay/a.png`` when that file is the input."""
    images, model, out = _images_and_model(tmp_path, ["a"])
    (out / "overlay").mkdir(parents=True)
    source = out / "overlay" / "a.png"
    source.write_bytes((images / "a.png").read_bytes())
    summary = segment_paths(out / "overlay", model, out, provider="cpu", overwrite=True)
    assert (summary.images, summary.failures) == (1, []) and source.read_bytes() == (images / "a.png").read_bytes()


def test_a_folder_in_place_of_an_output_stops_the_run_before_anything_is_deleted(
        done: tuple[Path, Path, Path]) -> None:
    images, model, out = done
    record = (out / SETTINGS_FILE).read_bytes()
    (out / "prob" / "b.tif").unlink()
    (out / "prob" / "b.tif").mkdir()
    with pytest.raises(InputError, match=r"b.tif: cannot replace this earlier output \(a folder is in its place\)"):
        segment_paths(images, model, out, provider="cpu", save_prob=True, overwrite=True)
    assert (out / SETTINGS_FILE).read_bytes() == record and (out / "a.png").is_file()
