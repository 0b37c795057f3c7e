"""The bad-input corpus: a table of cases (command, expected exit code, expected message fragment).

Each case builds its files in its own folder ``d`` and returns either CLI arguments for ``seg`` or a
thunk calling the ``Segmenter`` API. ``{d}`` in an expected fragment stands for that folder.
Rules checked for every case: the exit code, the fragment on one line, no traceback; exit 2 prints
exactly one ``error:`` line; ``check`` (when given) inspects what was (not) written.

``python -m tests.reliability.corpus`` runs every case and prints the markdown table case -> what the user sees.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg.runtime.errors import SegError
from tests.reliability import files as f

Target = list[str] | Callable[[], object]


@dataclass(frozen=True)
class Case:
    id: str
    surface: str
    what: str
    build: Callable[[Path], Target]
    exit: int
    expect: str
    check: Callable[[Path], None] | None = None
    slow: bool = False


@dataclass(frozen=True)
class Outcome:
    exit: int
    output: str


def _exists(*names: str) -> Callable[[Path], None]:
    def check(d: Path) -> None:
        for name in names:
            present = not name.startswith("!")
            path = d / name.lstrip("!")
            assert path.exists() == present, f"{path} should {'' if present else 'not '}exist"
    return check


# -- seg infer ------------------------------------------------------------------------------------


def _infer(d: Path, *extra: str, bad: Callable[[Path], object] | None = None, model: Path | None = None,
           out: str = "out") -> list[str]:
    """A folder ``in/`` holding ``good.png`` (plus ``bad(in/)``), the tiny ONNX model, output ``out``."""
    f.good(d / "in")
    if bad is not None:
        bad(d / "in")
    model = model or f.onnx_file(d / "model.onnx")
    return ["infer", "-i", str(d / "in"), "-m", str(model), "-o", str(d / out), "-p", "cpu", *extra]


def _infer_one(d: Path, build: Callable[[Path], Path], *extra: str) -> list[str]:
    """Infer on the single file ``build(d)`` (the command's main input)."""
    source = build(d)
    return ["infer", "-i", str(source), "-m", str(f.onnx_file(d / "model.onnx")), "-o", str(d / "out"), "-p", "cpu",
            *extra]


def _model(d: Path, **kwargs: object) -> list[str]:
    return _infer(d, model=f.onnx_file(d / "m.onnx", **kwargs))


def _model_is_folder(d: Path) -> list[str]:
    (d / "m.onnx").mkdir(parents=True)
    return _infer(d, model=d / "m.onnx")


def _glob_loop(d: Path) -> list[str]:
    args = _infer(d, bad=lambda i: os.symlink(".", i / "sub"))
    args[2] = f"{d}/in/**/*.png"
    return args


def _output_is_input(d: Path) -> list[str]:
    args = _infer(d)
    args[6] = str(d / "in")
    return args


INFER = [
    Case("zero-byte-file", "seg infer", "a 0-byte .png in the folder",
         lambda d: _infer(d, bad=lambda i: f.raw(i / "empty.png", b"")), 1,
         "{d}/in/empty.png: empty file (0 bytes)", _exists("out/good.png", "!out/empty.png")),
    Case("truncated-png", "seg infer", "a PNG cut in half",
         lambda d: _infer(d, bad=lambda i: f.truncated_png(i / "cut.png")), 1,
         "{d}/in/cut.png: corrupt or truncated image", _exists("out/good.png", "!out/cut.png")),
    Case("text-named-png", "seg infer", "a text file named .png",
         lambda d: _infer(d, bad=lambda i: f.raw(i / "notes.png", b"hello, world\n")), 1,
         "{d}/in/notes.png: not a readable image (unknown or corrupt format)", _exists("out/good.png")),
    Case("png-bomb", "seg infer", "PNG header declaring 100000x100000 pixels (70 bytes)",
         lambda d: _infer(d, bad=lambda i: f.png_bomb(i / "bomb.png")), 1,
         "{d}/in/bomb.png: refused as a possible decompression bomb", _exists("out/good.png")),
    Case("tiff-bomb", "seg infer", "TIFF tags declaring 100000x100000 pixels",
         lambda d: _infer(d, bad=lambda i: f.tiff_bomb(i / "bomb.tif")), 1,
         "{d}/in/bomb.tif: refused as a possible decompression bomb (100000x100000 pixels", _exists("out/good.png")),
    Case("image-1x1", "seg infer", "a 1x1 image",
         lambda d: _infer_one(d, lambda d: f.png(d / "dot.png", np.full((1, 1), 200, np.uint8))), 0,
         "1 image -> {d}/out", _exists("out/dot.png")),
    Case("rgb", "seg infer", "an RGB PNG",
         lambda d: _infer(d, bad=lambda i: f.png(i / "rgb.png", f.gray((40, 40, 3)))), 0,
         "warning: {d}/in/rgb.png: 3-channel image converted to gray", _exists("out/rgb.png")),
    Case("rgba", "seg infer", "an RGBA PNG",
         lambda d: _infer(d, bad=lambda i: f.png(i / "rgba.png", f.gray((40, 40, 4)))), 0,
         "warning: {d}/in/rgba.png: 4-channel image converted to gray", _exists("out/rgba.png")),
    Case("16-bit", "seg infer", "a 16-bit PNG",
         lambda d: _infer(d, bad=lambda i: f.png(i / "deep.png", f.gray((40, 40), np.uint16))), 0,
         "2 images -> {d}/out", _exists("out/deep.png")),
    Case("float-nan", "seg infer", "float32 TIFF with a NaN",
         lambda d: _infer(d, bad=lambda i: f.float_tiff(i / "nan.tif", np.nan)), 1,
         "{d}/in/nan.tif: 1 NaN or infinite pixels; replace them before segmenting", _exists("!out/nan.png")),
    Case("float-inf", "seg infer", "float32 TIFF with +inf",
         lambda d: _infer(d, bad=lambda i: f.float_tiff(i / "inf.tif", np.inf)), 1,
         "{d}/in/inf.tif: 1 NaN or infinite pixels", _exists("out/good.png")),
    Case("ragged-stack", "seg infer", "multi-page TIFF, pages 64x64 and 32x48",
         lambda d: _infer_one(d, lambda d: f.ragged_stack(d / "ragged.tif")), 0,
         "2 images -> {d}/out", _exists("out/ragged.tif")),
    Case("unicode-space-path", "seg infer", "non-ASCII names with spaces",
         lambda d: ["infer", "-i", str(f.good(d / "dätä ïn", "slice 1 µm.png").parent), "-m",
                    str(f.onnx_file(d / "mödel 1.onnx")), "-o", str(d / "öut put"), "-p", "cpu"], 0,
         "1 image -> {d}/öut put", _exists("öut put/slice 1 µm.png")),
    Case("symlink-loop", "seg infer", "a symlink loop loop.png -> loop.png in the folder",
         lambda d: _infer(d, bad=lambda i: f.symlink_loop(i / "loop.png")), 1,
         "{d}/in/loop.png: broken symbolic link (missing target or a link loop)", _exists("out/good.png")),
    Case("glob-through-dir-loop", "seg infer", "glob in/**/*.png with a link in/sub -> in",
         _glob_loop, 0, "1 image -> {d}/out", _exists("out/good.png")),
    Case("same-stem", "seg infer", "a.png and a.tif in one folder",
         lambda d: _infer(d, bad=lambda i: (f.png(i / "a.png", f.gray()), f.stack(i / "a.tif", [f.gray()]))), 1,
         "{d}/in/a.tif: same name as {d}/in/a.png; its outputs would collide", _exists("out/a.png")),
    Case("input-is-fifo", "seg infer", "input is a FIFO named x.png", lambda d: _infer_one(d, lambda d: f.fifo(
        d / "x.png")), 2, "{d}/x.png: not a regular file or folder", _exists("!out")),
    Case("main-input-corrupt", "seg infer", "the one input file is corrupt",
         lambda d: _infer_one(d, lambda d: f.truncated_png(d / "cut.png")), 2,
         "{d}/cut.png: corrupt or truncated image", _exists("!out/cut.png")),
    Case("no-images", "seg infer", "a folder without images",
         lambda d: _infer_one(d, lambda d: f.raw(d / "in" / "readme.txt", b"x").parent), 2,
         "{d}/in: no images found"),
    Case("output-under-file", "seg infer", "--output below a regular file (not writable)",
         lambda d: _infer(d, out=f.raw(d / "file.txt", b"x").name + "/out"), 2,
         "{d}/file.txt/out: cannot create the output folder (Not a directory)"),
    Case("output-is-file", "seg infer", "--output is an existing file",
         lambda d: _infer(d, out=f.raw(d / "taken.png", b"x").name), 2,
         "{d}/taken.png: exists and is not a folder; give a folder for --output"),
    Case("output-is-input", "seg infer", "--output is the input folder",
         _output_is_input, 2, "is the input folder; masks would mix with the images, choose another --output"),
    Case("not-onnx", "seg infer", "model is a text file", lambda d: _infer(d, model=f.raw(d / "m.onnx", b"hi")), 2,
         "{d}/m.onnx: not a loadable ONNX model", _exists("!out")),
    Case("empty-model", "seg infer", "model is 0 bytes", lambda d: _infer(d, model=f.raw(d / "m.onnx", b"")), 2,
         "{d}/m.onnx: empty file (0 bytes); not an ONNX model"),
    Case("model-is-folder", "seg infer", "model path is a folder",
         _model_is_folder, 2, "{d}/m.onnx: not a file (expected an .onnx model)"),
    Case("onnx-rank-3", "seg infer", "ONNX input (N, H, W) (rank 3)",
         lambda d: _model(d, kind="identity", shape=(None, None, None)), 2,
         "{d}/m.onnx: model input 'image' has shape [None, None, None]; expected (N, H, W, 1)"),
    Case("onnx-3-channels", "seg infer", "ONNX input (N, H, W, 3)",
         lambda d: _model(d, kind="identity", shape=(None, None, None, 3)), 2,
         "{d}/m.onnx: model input 'image' has shape [None, None, None, 3]; expected (N, H, W, 1)"),
    Case("onnx-int-input", "seg infer", "ONNX input int64",
         lambda d: _model(d, kind="identity", dtype=7), 2, "is tensor(int64); expected float32 (N, H, W, 1)"),
    Case("provider-misspelt", "seg infer", "--provider cdua",
         lambda d: [*_infer(d)[:-2], "-p", "cdua"], 2, "unknown provider 'cdua'; choose one of: auto, cuda, cpu",
         _exists("!out")),
]


# -- seg train / seg evaluate ----------------------------------------------------------------------


def _train(d: Path, damage: Callable[[Path], object] | None = None, *extra: str) -> list[str]:
    data = f.dataset(d / "data")
    if damage is not None:
        damage(data)
    return ["train", "--data", str(data), "--width", "4", "--depth", "2", "--crop", "32", "--quiet", *extra]


def _stacks(d: Path, labels: list[np.ndarray]) -> list[str]:
    f.stack(d / "data" / "train-volume.tif", [f.gray((64, 64), seed=i) for i in range(3)])
    f.stack(d / "data" / "train-labels.tif", labels) if len({p.shape for p in labels}) == 1 else \
        f.ragged_stack(d / "data" / "train-labels.tif", tuple(p.shape for p in labels))
    return ["train", "--data", str(d / "data"), "--quiet"]


def _broken_run(d: Path) -> list[str]:
    run = d / "runs" / "train" / "r"
    f.raw(run / "config.json", b'{"train": {"data": "x", "model": {"kind": "unet"}}}')
    f.raw(run / "last.keras", b"PK")
    f.raw(run / "state.json", b'{"epoch": 2, "best_')  # what a torn, non-atomic write would leave
    return ["train", "--resume", "r", "--quiet"]


def _evaluate(d: Path, damage: Callable[[Path], object] | None = None, *extra: str) -> list[str]:
    data = f.dataset(d / "data")
    if damage is not None:
        damage(data)
    return ["evaluate", "--model", str(f.onnx_file(d / "model.onnx")), "--data", str(data), *extra]


def _soft_labels(data: Path) -> None:
    for label in (data / "train" / "label").iterdir():
        f.png(label, np.tile(np.array([0, 90, 170, 255], np.uint8), (64, 16)))


TRAIN_EVAL = [
    Case("train-nan-image", "seg train", "a float TIFF image with NaN in train/image",
         lambda d: _train(d, lambda data: ((data / "train/image/01.png").unlink(),
                                           f.float_tiff(data / "train/image/01.tif", np.nan))), 2,
         "{d}/data/train/image/01.tif: 1 NaN or infinite pixels", _exists("!runs")),
    Case("train-label-size", "seg train", "label 32x32 for a 64x64 image",
         lambda d: _train(d, lambda data: f.png(data / "train/label/02.png", np.zeros((32, 32), np.uint8))), 2,
         "{d}/data/train/label/02.png: label size 32x32 does not match image 64x64 of 02.png", _exists("!runs")),
    Case("train-ragged-label-stack", "seg train", "ISBI stacks, label page 1 is 32x32",
         lambda d: _stacks(d, [np.zeros((64, 64), np.uint8), np.zeros((32, 32), np.uint8),
                               np.zeros((64, 64), np.uint8)]), 2,
         "{d}/data/train-labels.tif: page 1 size 32x32 does not match image 64x64"),
    Case("train-stack-pages", "seg train", "ISBI stacks, 2 label pages for 3 slices",
         lambda d: _stacks(d, [np.zeros((64, 64), np.uint8)] * 2), 2,
         "{d}/data/train-labels.tif: 2 pages but train-volume.tif has 3"),
    Case("train-same-stem", "seg train", "train/image/00.png and 00.tif",
         lambda d: _train(d, lambda data: f.stack(data / "train/image/00.tif", [f.gray((64, 64))])), 2,
         "{d}/data/train/image/00.tif: same name as 00.png; keep one file per stem"),
    Case("train-symlink-loop", "seg train", "a looping symlink in train/label",
         lambda d: _train(d, lambda data: ((data / "train/label/01.png").unlink(),
                                           f.symlink_loop(data / "train/label/01.png"))), 2,
         "{d}/data/train/label/01.png: broken symbolic link"),
    Case("train-data-is-file", "seg train", "--data is a file",
         lambda d: ["train", "--data", str(f.raw(d / "data.zip", b"PK")), "--quiet"], 2,
         "{d}/data.zip: dataset folder not found"),
    Case("train-resume-unknown", "seg train", "--resume a run that does not exist",
         lambda d: ["train", "--resume", "nope", "--quiet"], 2, "nope: not a run folder (no config.json)"),
    Case("train-resume-torn-state", "seg train", "--resume with a torn state.json",
         _broken_run, 2, "runs/train/r/state.json: unreadable or corrupt JSON"),
    Case("train-bad-name", "seg train", "--name ../x", lambda d: _train(d, None, "--name", "../x"), 2,
         "--name '../x': use a plain folder name without '/'", _exists("!runs")),
    Case("eval-label-not-binary", "seg evaluate", "labels with 4 gray levels",
         lambda d: _evaluate(d, _soft_labels), 0,
         "warning: {d}/data/train/label/01.png: label is not binary (4+ distinct values); binarized at half range"),
    Case("eval-label-size", "seg evaluate", "label 32x32 for a 64x64 image",
         lambda d: _evaluate(d, lambda data: f.png(data / "train/label/00.png", np.zeros((32, 32), np.uint8))), 2,
         "{d}/data/train/label/00.png: label size 32x32 does not match image 64x64"),
    Case("eval-16bit-rgb", "seg evaluate", "16-bit image and RGB label",
         lambda d: _evaluate(d, lambda data: (f.png(data / "train/image/00.png", f.gray((64, 64), np.uint16)),
                                              f.png(data / "train/label/00.png", np.full((64, 64, 3), 255,
                                                                                         np.uint8)))), 0,
         "warning: {d}/data/train/label/00.png: 3-channel image converted to gray"),
    Case("eval-test-no-labels", "seg evaluate", "--split test without test labels",
         lambda d: _evaluate(d, lambda data: f.good(data / "test" / "image", "00.png"), "--split", "test"), 2,
         "{d}/data/test/label: the test split has no labels"),
    Case("eval-json-under-file", "seg evaluate", "--json below a regular file",
         lambda d: _evaluate(d, None, "--json", str(f.raw(d / "f.txt", b"x") / "s.json")), 2,
         "{d}/f.txt/s.json: cannot write here (Not a directory); choose another path"),
    Case("eval-model-type", "seg evaluate", "--model is a .txt",
         lambda d: ["evaluate", "--model", str(f.raw(d / "m.txt", b"x")), "--data", str(f.dataset(d / "data"))], 2,
         "{d}/m.txt: unknown model type '.txt'; give a .onnx or .keras file"),
]


# -- seg export ------------------------------------------------------------------------------------


def _export(d: Path, weights: Path | None, out: str = "model.onnx", data: bool = True) -> list[str]:
    args = ["export", str(d / out), "--weights", str(weights or d / "missing.keras")]
    return [*args, "--data", str(f.dataset(d / "data"))] if data else args


EXPORT = [
    Case("keras-truncated", "seg export", "a .keras archive cut at 60 %",
         lambda d: _export(d, f.keras_file(d / "cut.keras", keep=0.6)), 2,
         "{d}/cut.keras: not a Keras model (.keras files are zip archives)", _exists("!model.onnx")),
    Case("keras-text", "seg export", "a text file named .keras",
         lambda d: _export(d, f.raw(d / "t.keras", b"weights")), 2, "{d}/t.keras: not a Keras model"),
    Case("keras-lambda", "seg export", "a Keras model with a Lambda layer",
         lambda d: _export(d, f.keras_file(d / "lam.keras", "lambda")), 2,
         "{d}/lam.keras: cannot load as a Keras model: it contains a Lambda layer (arbitrary code), refused with "
         "safe_mode=True", _exists("!model.onnx")),
    Case("keras-missing", "seg export", "--weights does not exist", lambda d: _export(d, None), 2,
         "{d}/missing.keras: no such model"),
    Case("export-not-onnx-name", "seg export", "OUT is model.txt",
         lambda d: _export(d, f.keras_file(d / "k.keras"), "model.txt"), 2,
         "{d}/model.txt: the output must end in .onnx"),
    Case("export-out-is-folder", "seg export", "OUT is a folder named x.onnx",
         lambda d: _export(d, f.keras_file(d / "k.keras"), (d / "x.onnx").mkdir() or "x.onnx"), 2,
         "{d}/x.onnx: is a folder"),
    Case("export-out-under-file", "seg export", "OUT below a regular file",
         lambda d: _export(d, f.keras_file(d / "k.keras"), f.raw(d / "f.txt", b"x").name + "/m.onnx"), 2,
         "{d}/f.txt/m.onnx: {d}/f.txt is a file, not a folder; choose another path"),
    Case("export-no-data", "seg export", "a bare .keras without config.json and no --data",
         lambda d: _export(d, f.keras_file(d / "k.keras"), data=False), 2,
         "{d}/k.keras: no config.json with data.dir beside it; pass --data DIR"),
    Case("export-unicode-path", "seg export", "weights and OUT in non-ASCII folders with spaces",
         lambda d: _export(d, f.keras_file(d / "wëights 1" / "k.keras"), "öut 1/m 1.onnx"), 0,
         "wrote m 1.onnx, m 1.parity.json in {d}/öut 1", _exists("öut 1/m 1.onnx"), slow=True),
]


# -- Segmenter API ---------------------------------------------------------------------------------


def _api(image: object, **options: object) -> Callable[[Path], Target]:
    def build(d: Path) -> Target:
        from seg.runtime import Segmenter

        model = f.onnx_file(d / "model.onnx")
        return lambda: Segmenter(model, provider="cpu", **options).predict(image).shape  # type: ignore[arg-type]
    return build


def _api_model(model: bytes, provider: str = "cpu") -> Callable[[Path], Target]:
    from seg.runtime import Segmenter

    return lambda d: lambda: Segmenter(model, provider=provider)


API = [
    Case("api-provider-misspelt", "Segmenter", 'provider="gpu"',
         lambda d: _api_model(f.tiny_model(metadata=f.META), "gpu")(d), 2, "unknown provider 'gpu'"),
    Case("api-not-onnx-bytes", "Segmenter", "model bytes that are not ONNX", _api_model(b"\x00garbage"), 2,
         "model (bytes): not a loadable ONNX model"),
    Case("api-empty-image", "Segmenter", "predict on a (0, 5) array", _api(np.zeros((0, 5), np.uint8)), 2,
         "image 0: expected a (H, W) gray image, got shape (0, 5)"),
    Case("api-4d-image", "Segmenter", "predict on (2, 8, 8, 1)", _api(np.zeros((2, 8, 8, 1), np.float32)), 2,
         "image 0: expected a (H, W) gray image, got shape (2, 8, 8, 1)"),
    Case("api-nan-image", "Segmenter", "predict on float32 with NaN",
         _api(np.array([[0.1, np.nan], [0.2, 0.3]], np.float32)), 2, "image 0: 1 NaN or infinite pixels"),
    Case("api-complex-image", "Segmenter", "predict on complex64", _api(np.zeros((4, 4), np.complex64)), 2,
         "image 0: unsupported pixel type complex64"),
    Case("api-1x1", "Segmenter", "predict on a 1x1 image", _api(np.ones((1, 1), np.uint8)), 0, "ok: (1, 1)"),
    Case("api-rgb", "Segmenter", "predict on (20, 30, 3) uint8", _api(f.gray((20, 30, 3))), 0,
         "warning: image 0: 3-channel image converted to gray"),
    Case("api-tile-size", "Segmenter", "tile_size=50 for a size multiple of 16", _api(f.gray(), tile_size=50), 2,
         "{d}/model.onnx: tile size 50 (tile_size, --tile) must be 0 (whole image) or a positive multiple of 16, "
         "e.g. 48 or 64"),
    Case("api-halo", "Segmenter", "halo=40 for 64-px tiles", _api(f.gray(), halo=40), 2,
         "halo 40 must be in 0..24 for 64-pixel tiles"),
]

CASES = INFER + TRAIN_EVAL + EXPORT + API


def run(case: Case, d: Path) -> Outcome:
    """Build ``case`` in the empty folder ``d`` and run it there (cwd = ``d``)."""
    from typer.testing import CliRunner

    from seg.toolkit.cli import app

    d.mkdir(parents=True, exist_ok=True)
    previous = Path.cwd()
    os.chdir(d)
    try:
        target = case.build(d)
        if isinstance(target, list):
            result = CliRunner().invoke(app, target)
            return Outcome(result.exit_code, result.output)
        return _call(target)
    finally:
        os.chdir(previous)


def _call(thunk: Callable[[], object]) -> Outcome:
    """An API call as a user sees it: ``warning:``/``error:`` lines, ``ok: <result>``; exit = the error's code."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = thunk()
            code, last = 0, f"ok: {result}"
        except SegError as exc:
            code, last = exc.exit_code, f"error: {exc}"
        except Exception as exc:  # a non-SegError is a bug: shown so the test fails with it
            code, last = 99, f"{type(exc).__name__}: {exc}"
    lines = [f"warning: {w.message}" for w in caught if "Seg" in w.category.__name__]
    return Outcome(code, "\n".join([*lines, last]) + "\n")


def seen(case: Case, outcome: Outcome, d: Path) -> str:
    """The line a user sees for ``case``: the one holding the expected fragment, with ``d`` shortened."""
    expect = case.expect.format(d=d)
    line = next((line for line in outcome.output.splitlines() if expect in line), outcome.output.strip()[:200])
    return line.replace(str(d), "DIR").replace("|", "\\|")


def markdown_table(rows: list[tuple[Case, Outcome, str]]) -> str:
    lines = ["| case | input | command | exit | what the user sees |", "|---|---|---|---|---|"]
    lines += [f"| {case.id} | {case.what} | `{case.surface}` | {outcome.exit} | `{line}` |"
              for case, outcome, line in rows]
    return "\n".join(lines)


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as root, contextlib.redirect_stderr(open(os.devnull, "w")):  # noqa: SIM115
        for case in CASES:
            d = Path(root) / case.id
            outcome = run(case, d)
            rows.append((case, outcome, seen(case, outcome, d)))
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
