"""``seg data fetch isbi2012`` against a local HTTP server on 127.0.0.1 serving small generated stacks."""

from __future__ import annotations

import functools
import hashlib
import socket
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

import seg.toolkit.data.fetch as fetch_module
from seg.runtime.errors import InputError, SegWarning
from seg.runtime.io import read_image
from seg.toolkit.cli import app
from seg.toolkit.data.fetch import DEFAULT_MIRROR, LABELS, SHA256, VOLUME, expected_digests, fetch_isbi2012
from tests.helpers import assert_seed_layout

runner = CliRunner()


@dataclass
class Mirror:
    """A folder served over HTTP; ``requests`` records the paths asked for, ``truncate`` the file names
    whose body is cut in half while Content-Length still announces the full size."""

    folder: Path
    base: str = ""
    requests: list[str] = field(default_factory=list)
    truncate: set[str] = field(default_factory=set)
    volume: np.ndarray | None = None
    labels: np.ndarray | None = None

    def url(self, name: str) -> str:
        return self.base + name

    def sha(self, name: str) -> str:
        return hashlib.sha256((self.folder / name).read_bytes()).hexdigest()


class _Handler(SimpleHTTPRequestHandler):
    mirror: Mirror

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base class)
        pass

    def do_GET(self) -> None:
        self.mirror.requests.append(self.path)
        name = self.path.lstrip("/")
        if name in self.mirror.truncate:
            body = (self.mirror.folder / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            return
        super().do_GET()


def _write_stacks(folder: Path, n: int = 3, size: tuple[int, int] = (32, 32), n_labels: int | None = None,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``train-volume.tif``: (N, H, W) uint8 noise; ``train-labels.tif``: (N, H, W) uint8 in {0, 255}."""
    rng = np.random.default_rng(seed)
    volume = rng.integers(0, 256, (n, *size), dtype=np.uint8)
    labels = np.where(rng.random((n if n_labels is None else n_labels, *size)) < 0.2, 0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / VOLUME, volume, photometric="minisblack")
    tifffile.imwrite(folder / LABELS, labels, photometric="minisblack")
    return volume, labels


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    """A ThreadingHTTPServer on 127.0.0.1 (free port) serving ``tmp_path/mirror`` with 3 pages of 32x32."""
    served = Mirror(tmp_path / "mirror")
    served.volume, served.labels = _write_stacks(served.folder)
    handler = type("Handler", (_Handler,), {"mirror": served})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served.folder)))
    served.base = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """Parent of the dataset folder: after a failure it must stay empty (no dataset, no temporaries)."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def _pins(mirror: Mirror) -> dict[str, str]:
    return {VOLUME: mirror.sha(VOLUME), LABELS: mirror.sha(LABELS)}


def _fetch(mirror: Mirror, out: Path, **kwargs: object) -> Path:
    if "checksums" not in kwargs:
        kwargs["checksums"] = _pins(mirror)
    return fetch_isbi2012(out, mirror.base, progress=False, **kwargs)  # type: ignore[arg-type]


def _hint(out: Path) -> str:
    return (f"download {VOLUME} and {LABELS} by hand (e.g. from {DEFAULT_MIRROR}) and run: "
            f"seg data import {VOLUME} {LABELS} {out}")


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ") and "Traceback" not in output
    return lines[0].removeprefix("error: ")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- success -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "size"), [(1, (32, 32)), (3, (32, 32)), (4, (16, 24))])
def test_fetch_writes_the_seed_layout_pixel_for_pixel(mirror: Mirror, work: Path, n: int,
                                                      size: tuple[int, int]) -> None:
    volume, labels = _write_stacks(mirror.folder, n=n, size=size, seed=n)
    out = _fetch(mirror, work / "isbi")
    assert out == work / "isbi"
    assert_seed_layout(out, volume, labels)
    assert sorted(p.name for p in out.iterdir()) == ["train"]  # no raw/ unless asked
    assert [p.name for p in work.iterdir()] == ["isbi"]  # no temporaries left
    assert mirror.requests == [f"/{VOLUME}", f"/{LABELS}"]


def test_unpinned_digests_warn_with_the_computed_sha256(mirror: Mirror, work: Path) -> None:
    assert SHA256 == {VOLUME: None, LABELS: None}  # real digests not pinned yet: see the module docstring
    with pytest.warns(SegWarning) as record:
        _fetch(mirror, work / "isbi", checksums=None)
    assert [str(w.message) for w in record] == [
        f"{name}: no pinned SHA-256; downloaded {mirror.sha(name)} from {mirror.url(name)}; compare it with a "
        f"trusted copy and pin it with {option} {mirror.sha(name)}"
        for name, option in ((VOLUME, "--sha256-volume"), (LABELS, "--sha256-labels"))
    ]


def test_pinned_digests_fetch_without_warnings(mirror: Mirror, work: Path) -> None:
    pins = {name: digest.upper() for name, digest in _pins(mirror).items()}  # hex case does not matter
    with warnings.catch_warnings():
        warnings.simplefilter("error", SegWarning)
        _fetch(mirror, work / "isbi", checksums=pins)
    assert len(list((work / "isbi/train/image").iterdir())) == 3


def test_keep_raw_keeps_the_downloaded_bytes(mirror: Mirror, work: Path) -> None:
    out = _fetch(mirror, work / "isbi", keep_raw=True)
    assert sorted(p.name for p in (out / "raw").iterdir()) == [LABELS, VOLUME]
    for name in (VOLUME, LABELS):
        assert (out / "raw" / name).read_bytes() == (mirror.folder / name).read_bytes()
    assert [p.name for p in work.iterdir()] == ["isbi"]


@pytest.mark.parametrize("suffix", ["", "/"])
def test_file_url_mirror_works_without_a_server(mirror: Mirror, work: Path, suffix: str) -> None:
    out = fetch_isbi2012(work / "isbi", mirror.folder.as_uri() + suffix, checksums=_pins(mirror), progress=False)
    assert np.array_equal(read_image(out / "train/image/02.png"), mirror.volume[2])
    assert mirror.requests == []


def test_overwrite_replaces_train_and_keeps_other_entries(mirror: Mirror, work: Path) -> None:
    out = work / "isbi"
    (out / "train/image").mkdir(parents=True)
    (out / "train/image/99.png").write_bytes(b"old")
    (out / "test").mkdir()
    _fetch(mirror, out, overwrite=True)
    assert sorted(p.name for p in (out / "train/image").iterdir()) == ["00.png", "01.png", "02.png"]
    assert sorted(p.name for p in out.iterdir()) == ["test", "train"]
    assert [p.name for p in work.iterdir()] == ["isbi"]


# --- failures: one line, nothing written -----------------------------------------------------------------------


def test_non_empty_dir_is_refused_before_downloading(mirror: Mirror, work: Path) -> None:
    out = work / "isbi"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError) as info:
        _fetch(mirror, out)
    assert str(info.value) == (
        f"{out}: folder is not empty; pass --overwrite to replace the dataset in it, or choose another folder"
    )
    assert mirror.requests == []
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("bad", [VOLUME, LABELS])
def test_checksum_mismatch_names_file_and_digests_and_writes_nothing(mirror: Mirror, work: Path, bad: str) -> None:
    pins = _pins(mirror)
    pins[bad] = "0" * 64
    out = work / "isbi"
    with pytest.raises(InputError) as info:
        _fetch(mirror, out, checksums=pins)
    assert str(info.value) == (
        f"{bad}: SHA-256 mismatch from {mirror.url(bad)} (expected {'0' * 64}, got {mirror.sha(bad)}); "
        f"nothing written; retry or pass another --mirror, or {_hint(out)}"
    )
    assert list(work.iterdir()) == []
    assert mirror.requests == [f"/{VOLUME}"] if bad == VOLUME else [f"/{VOLUME}", f"/{LABELS}"]


@pytest.mark.parametrize("missing", [VOLUME, LABELS])
def test_http_404_is_one_line_with_the_manual_fix(mirror: Mirror, work: Path, missing: str) -> None:
    (mirror.folder / missing).unlink()
    out = work / "isbi"
    with pytest.raises(InputError) as info:
        _fetch(mirror, out, checksums=None)
    assert str(info.value) == (
        f"{mirror.url(missing)}: HTTP 404 File not found; check the network or pass another --mirror, "
        f"or {_hint(out)}"
    )
    assert list(work.iterdir()) == []


def test_unreachable_server_is_one_line(work: Path) -> None:
    base = f"http://127.0.0.1:{_closed_port()}/"
    out = work / "isbi"
    with pytest.raises(InputError) as info:
        fetch_isbi2012(out, base, progress=False)
    message = str(info.value)
    assert message.startswith(f"{base}{VOLUME}: cannot connect (")
    assert "Connection refused" in message and message.endswith(_hint(out))
    assert list(work.iterdir()) == []


def test_silent_server_times_out(work: Path) -> None:
    with socket.socket() as sock:  # accepts connections into its backlog but never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}/"
        with pytest.raises(InputError) as info:
            fetch_isbi2012(work / "isbi", base, timeout=0.3, progress=False)
    message = str(info.value)
    assert message.startswith(f"{base}{VOLUME}: ") and "timed out" in message
    assert message.endswith(_hint(work / "isbi"))
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("cut", [VOLUME, LABELS])
def test_truncated_body_is_detected(mirror: Mirror, work: Path, cut: str) -> None:
    mirror.truncate.add(cut)
    size = (mirror.folder / cut).stat().st_size
    with pytest.raises(InputError) as info:
        _fetch(mirror, work / "isbi")
    assert str(info.value).startswith(
        f"{mirror.url(cut)}: truncated download: got {size // 2} of {size} bytes; check the network"
    )
    assert list(work.iterdir()) == []


def test_corrupt_tiff_names_the_url(mirror: Mirror, work: Path) -> None:
    (mirror.folder / VOLUME).write_bytes(b"<html>not a tiff</html>")
    with pytest.raises(InputError) as info:
        _fetch(mirror, work / "isbi", checksums=None)
    message = str(info.value)
    assert message.startswith(f"{mirror.url(VOLUME)}: corrupt or unreadable TIFF (")
    assert message.endswith("(downloaded; not an ISBI 2012 stack pair — pass another --mirror)")
    assert ".tmp-fetch-" not in message
    assert list(work.iterdir()) == []


def test_unpaired_stacks_are_refused_naming_the_urls(mirror: Mirror, work: Path) -> None:
    _write_stacks(mirror.folder, n=3, n_labels=2)
    with pytest.raises(InputError) as info:
        _fetch(mirror, work / "isbi", checksums=None)
    assert str(info.value) == (
        f"{mirror.url(LABELS)}: 2 pages but {mirror.url(VOLUME)} has 3; the label stack needs one page per "
        "image slice (downloaded; not an ISBI 2012 stack pair — pass another --mirror)"
    )
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    ("checksums", "message"),
    [
        ({VOLUME: "abc"}, f"{VOLUME}: expected SHA-256 'abc' is not 64 hexadecimal digits"),
        ({LABELS: "g" * 64}, f"{LABELS}: expected SHA-256 '{'g' * 64}' is not 64 hexadecimal digits"),
        ({"test-volume.tif": "0" * 64},
         f"test-volume.tif: unknown file for a checksum; expected one of {VOLUME}, {LABELS}"),
    ],
)
def test_malformed_checksums_are_refused(work: Path, checksums: dict[str, str], message: str) -> None:
    with pytest.raises(InputError) as info:
        fetch_isbi2012(work / "isbi", "http://127.0.0.1:9/", checksums=checksums, progress=False)
    assert str(info.value) == message
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("mirror_url", ["ftp://example/data/", "127.0.0.1/data", "data/"])
def test_mirror_must_be_a_url(work: Path, mirror_url: str) -> None:
    with pytest.raises(InputError) as info:
        fetch_isbi2012(work / "isbi", mirror_url, progress=False)
    assert str(info.value) == f"{mirror_url}: not a usable --mirror; give an http://, https:// or file:// base URL"


def test_expected_digests_merge_overrides_over_the_pins() -> None:
    assert expected_digests(None) == SHA256
    assert expected_digests({LABELS: " " + "AB" * 32 + " "}) == {VOLUME: SHA256[VOLUME], LABELS: "ab" * 32}


# --- Ctrl-C: temporaries removed, DIR untouched ----------------------------------------------------------------


def test_interrupt_during_download_leaves_nothing(mirror: Mirror, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fetch_module.download

    def interrupted(url: str, dest: Path, *args: object, **kwargs: object) -> str:
        if url.endswith(LABELS):
            dest.write_bytes(b"partial")
            raise KeyboardInterrupt
        return real(url, dest, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fetch_module, "download", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _fetch(mirror, work / "isbi")
    assert list(work.iterdir()) == []


def test_interrupt_during_conversion_leaves_nothing(mirror: Mirror, work: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(volume: Path, labels: Path, out: Path, overwrite: bool = False) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch_module, "import_isbi_stacks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _fetch(mirror, work / "isbi", keep_raw=True)
    assert list(work.iterdir()) == []


# --- CLI --------------------------------------------------------------------------------------------------------


def _cli(mirror: Mirror, out: Path, *extra: str) -> list[str]:
    return ["data", "fetch", "isbi2012", "--dir", str(out), "--mirror", mirror.base, *extra]


def test_cli_fetch_with_pinned_digests(mirror: Mirror, work: Path) -> None:
    out = work / "isbi"
    pins = _pins(mirror)
    result = runner.invoke(app, _cli(mirror, out, "--sha256-volume", pins[VOLUME], "--sha256-labels", pins[LABELS],
                                     "--keep-raw"))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"wrote 3 train slices with labels to {out} from {mirror.base} (SHA-256 verified; stacks kept in {out / 'raw'})"
    )
    assert (out / "raw" / VOLUME).is_file()


def test_cli_fetch_unpinned_prints_the_digests_to_pin(mirror: Mirror, work: Path) -> None:
    out = work / "isbi"
    result = runner.invoke(app, _cli(mirror, out))
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(f"warning: {VOLUME}: no pinned SHA-256; downloaded {mirror.sha(VOLUME)} ")
    assert lines[1].startswith(f"warning: {LABELS}: no pinned SHA-256; downloaded {mirror.sha(LABELS)} ")
    assert lines[2] == (
        f"wrote 3 train slices with labels to {out} from {mirror.base} (SHA-256 not pinned; see the warnings)"
    )
    assert len(lines) == 3


def test_cli_checksum_mismatch_exits_2_with_one_line(mirror: Mirror, work: Path) -> None:
    result = runner.invoke(app, _cli(mirror, work / "isbi", "--sha256-labels", "f" * 64))
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert line.startswith(f"{LABELS}: SHA-256 mismatch from {mirror.url(LABELS)} (expected {'f' * 64}, got ")
    assert list(work.iterdir()) == []


def test_cli_404_and_unreachable_exit_2_with_one_line(mirror: Mirror, work: Path) -> None:
    (mirror.folder / VOLUME).unlink()
    result = runner.invoke(app, _cli(mirror, work / "isbi"))
    assert result.exit_code == 2
    assert _one_error_line(result.output).startswith(f"{mirror.url(VOLUME)}: HTTP 404 File not found; ")
    base = f"http://127.0.0.1:{_closed_port()}/"
    result = runner.invoke(app, ["data", "fetch", "isbi2012", "--dir", str(work / "isbi"), "--mirror", base])
    assert result.exit_code == 2
    assert _one_error_line(result.output).endswith(f"seg data import {VOLUME} {LABELS} {work / 'isbi'}")
    assert list(work.iterdir()) == []


def test_cli_refuses_non_empty_dir_and_bad_digest(mirror: Mirror, work: Path) -> None:
    (work / "isbi").mkdir()
    (work / "isbi" / "x").write_text("x")
    result = runner.invoke(app, _cli(mirror, work / "isbi"))
    assert result.exit_code == 2 and "folder is not empty; pass --overwrite" in _one_error_line(result.output)
    result = runner.invoke(app, _cli(mirror, work / "new", "--sha256-volume", "xyz"))
    assert result.exit_code == 2
    assert _one_error_line(result.output) == f"{VOLUME}: expected SHA-256 'xyz' is not 64 hexadecimal digits"
    assert mirror.requests == []


def test_cli_interrupt_exits_130(mirror: Mirror, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch_module, "import_isbi_stacks", interrupted)
    result = runner.invoke(app, _cli(mirror, work / "isbi"))
    assert result.exit_code == 130
    assert _one_error_line(result.output) == (
        "interrupted; nothing half-written was left (rerun the same command to continue)"
    )
    assert list(work.iterdir()) == []


def test_cli_unknown_dataset_and_help(work: Path) -> None:
    result = runner.invoke(app, ["data", "fetch", "cremi", "--dir", str(work / "x")])
    assert result.exit_code == 2 and "isbi2012" in result.output
    result = runner.invoke(app, ["data", "fetch", "--help"])
    assert result.exit_code == 0
    flat = " ".join(result.output.split())
    assert "raw.githubusercontent.com/alexklibisz/isbi-2012/master/data/" in flat.replace(" ", "")
    for option in ("--mirror", "--sha256-volume", "--sha256-labels", "--keep-raw", "--overwrite", "--timeout"):
        assert option in result.output
    assert "fetch" in runner.invoke(app, ["data", "--help"]).output
