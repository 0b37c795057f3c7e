"""Every bad input gets one clear line and the right exit code; nothing escapes the output folder.

The corpus itself (cases, expected exit codes and messages) lives in ``tests/reliability/corpus.py``;
``python -m tests.reliability.corpus`` prints it as a markdown table (case -> what the user sees).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from seg.runtime.errors import InputError
from seg.runtime.folders import plan_outputs, segment_paths
from seg.runtime.io import read_image
from seg.toolkit.cli import app
from tests.reliability import files as f
from tests.reliability.corpus import CASES, Case, run

REPO = Path(__file__).resolve().parents[1]


def _param(case: Case) -> object:
    return pytest.param(case, id=case.id, marks=[pytest.mark.slow] if case.slow else [])


def test_the_corpus_is_large_and_covers_every_surface() -> None:
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)
    assert {c.surface for c in CASES} == {"seg infer", "seg train", "seg evaluate", "seg export", "Segmenter"}
    assert {c.exit for c in CASES} == {0, 1, 2}


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    d = tmp_path / "cäse dir"  # every case also runs under a non-ASCII, space-containing path
    outcome = run(case, d)
    expect = case.expect.format(d=d)
    assert outcome.exit == case.exit, outcome.output
    assert any(expect in line for line in outcome.output.splitlines()), outcome.output
    assert "Traceback" not in outcome.output
    errors = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    assert len(errors) == (1 if case.exit == 2 else 0), outcome.output
    if case.exit == 1:  # a folder run: the failures are listed at the end, one line each
        assert re.search(r"\d+ failed", outcome.output) and outcome.output.rstrip().splitlines()[-1].startswith("  -")
    if case.check is not None:
        case.check(d)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--debug", "infer", "-i", str(tmp_path / "none"), "-m", "x.onnx"])
    assert result.exit_code == 2  # unusable input: the same exit code as without --debug
    assert "Traceback" in result.output and "InputError" in result.output


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    path = f.good(tmp_path, "locked.png")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop reading (FIFO/folder cases cover 'not a file')")
        with pytest.raises(InputError, match=r"locked.png: permission denied \(not readable\)"):
            read_image(path)
    finally:
        path.chmod(0o644)


# -- outputs stay inside the output folder -----------------------------------------------------------


@pytest.mark.parametrize("name", ["...png", "..a.png", "a..png", "-rf.png", "x y.png", "~.png", "*.png", "[a].png"])
def test_odd_names_map_to_outputs_inside_the_folder(tmp_path: Path, name: str) -> None:
    source = f.raw(tmp_path / "in" / name, f.png_bytes(f.gray((8, 8))))
    items, failures = plan_outputs([source], tmp_path / "out", save_prob=True, overlay=True)
    assert failures == []
    root = (tmp_path / "out").resolve()
    for path in items[0].outputs():
        assert path.resolve().parent in (root, root / "prob", root / "overlay")


def test_output_subfolder_linked_outside_is_refused(tmp_path: Path) -> None:
    outside, out = tmp_path / "elsewhere", tmp_path / "out"
    outside.mkdir()
    out.mkdir()
    os.symlink(outside, out / "prob")
    source = f.good(tmp_path / "in")
    items, failures = plan_outputs([source], out, save_prob=True, overlay=False)
    assert items == [] and failures == [f"{source}: output {out / 'prob' / 'good.tif'} would land outside {out}"]


def test_absolute_glob_writes_only_into_the_output_folder(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        f.png(tmp_path / "in" / sub / f"{sub}1.png", f.gray((16, 16)))
    model = f.onnx_file(tmp_path / "model.onnx")
    out = tmp_path / "out"
    summary = segment_paths(f"{tmp_path}/in/**/*.png", model, out, provider="cpu")
    assert summary.images == 2
    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"model.onnx", "in/a/a1.png", "in/b/b1.png", "out/a1.png", "out/b1.png", "out/.seg-infer.json"}


# -- safe_mode and the decompression-bomb guard ------------------------------------------------------


def test_every_keras_load_uses_safe_mode() -> None:
    calls = []
    for folder in ("runtime", "train", "export", "toolkit"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            calls += [(path.name, m.group(0)) for m in re.finditer(r"load_model\([^)]*\)", text)]
    assert calls, "expected Keras loads to check"
    assert all("safe_mode=True" in call for _, call in calls), calls


def test_pillow_decompression_bomb_guard_stays_on() -> None:
    code = ("import seg.runtime, seg.train.trainer, seg.export.convert, seg.toolkit.cli.app\n"
            "import seg.toolkit.evaluation.evaluate\n"
            "from PIL import Image; print(Image.MAX_IMAGE_PIXELS)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO.parent, check=True)
    assert int(out.stdout.split()[-1]) >= 89_478_485  # Pillow's default (0.25 GB of 32-bit pixels)


def test_a_large_but_allowed_image_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((2, 40_000), np.uint8)).save(path)
    assert read_image(path).shape == (2, 40_000)
