"""Download the public ISBI 2012 training stacks and convert them to the seed layout.

The ISBI 2012 EM segmentation challenge (Arganda-Carreras et al., 2015; ssTEM of the Drosophila first
instar larva ventral nerve cord, Cardona et al., 2010) publishes ``train-volume.tif`` (30 slices of
512x512, 8-bit gray) and ``train-labels.tif`` (30 matching masks, 255 = interior, 0 = membrane). The
original site (http://brainiac2.mit.edu/isbi_challenge/) is no longer reliably up, so the default
mirror is the copy kept in the ``alexklibisz/isbi-2012`` GitHub repository::

    https://raw.githubusercontent.com/alexklibisz/isbi-2012/master/data/

Any base URL holding the two files works (``--mirror``; ``http://``, ``https://`` or ``file://``).
Fiji also hosts them inside https://downloads.imagej.net/ISBI-2012-challenge.zip; with the two TIFFs
at hand, ``seg data import train-volume.tif train-labels.tif DIR`` does the conversion offline.

Each file is streamed to a hidden temporary folder next to ``DIR`` (progress bar, timeout, truncation
check), its SHA-256 is compared with a pinned digest, and ``seg.toolkit.data.datasets.import_isbi_stacks``
writes ``DIR/train/{image,label}/NN.png`` through a staging folder. On any failure (Ctrl-C included)
the temporaries are removed and ``DIR`` is left as it was. The pinned digests in ``SHA256`` are not
known yet (``None``): a fetch then still checks that both files are TIFF stacks of matching pages and
warns with the computed digests so that they can be pinned (``--sha256-volume/--sha256-labels``).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from seg.runtime.errors import InputError, SegWarning
from seg.toolkit.cli.console import err_console
from seg.toolkit.data.datasets import check_target, import_isbi_stacks, temporary_folder_beside

DEFAULT_MIRROR = "https://raw.githubusercontent.com/alexklibisz/isbi-2012/master/data/"
VOLUME, LABELS = "train-volume.tif", "train-labels.tif"
FILES = (VOLUME, LABELS)
# Pinned SHA-256 of the ISBI 2012 training stacks, to be filled from a verified download.
# None = not pinned yet: the fetch then only checks that the files are matching TIFF stacks and warns.
SHA256: dict[str, str | None] = {VOLUME: None, LABELS: None}
TIMEOUT_S = 60.0
CHUNK = 1 << 16
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SCHEMES = ("http", "https", "file")


def expected_digests(checksums: Mapping[str, str | None] | None = None) -> dict[str, str | None]:
    """The SHA-256 to check per file: ``SHA256`` overridden by ``checksums`` (lower-case hex, or None).

    A digest that is not 64 hex digits raises ``InputError`` naming the file.
    """
    digests = dict(SHA256)
    for name, digest in (checksums or {}).items():
        if name not in FILES:
            raise InputError(f"{name}: unknown file for a checksum; expected one of {', '.join(FILES)}")
        if digest is not None:
            digest = digest.strip().lower()
            if not _HEX64.fullmatch(digest):
                raise InputError(f"{name}: expected SHA-256 {digest!r} is not 64 hexadecimal digits")
        digests[name] = digest
    return digests


def fetch_isbi2012(
    out: Path,
    mirror: str | None = None,
    *,
    checksums: Mapping[str, str | None] | None = None,
    overwrite: bool = False,
    keep_raw: bool = False,
    timeout: float = TIMEOUT_S,
    progress: bool = True,
) -> Path:
    """Download ``train-volume.tif`` and ``train-labels.tif`` from ``mirror`` and import them into ``out``.

    ``out`` gets ``train/image/NN.png`` (uint8 slices as stored) and ``train/label/NN.png`` (uint8,
    255 = interior, 0 = membrane); with ``keep_raw`` the two stacks are also kept in ``out/raw/``.
    ``mirror`` is a base URL (default ``DEFAULT_MIRROR``); ``checksums`` overrides ``SHA256`` per file
    name. Raises ``InputError`` (one line, nothing written) when ``out`` is a non-empty folder and not
    ``overwrite``, when the mirror cannot be reached, a file is truncated or its digest differs, or the
    stacks do not pair page by page. Unpinned digests give a ``SegWarning`` with the computed SHA-256.
    """
    out = Path(out)
    base = _base_url(mirror or DEFAULT_MIRROR)
    digests = expected_digests(checksums)
    check_target(out, overwrite)  # refuse before a long download, dataset_stage checks again
    with _download_folder(out) as folder:
        paths, actual = {}, {}
        for name in FILES:
            url = urllib.parse.urljoin(base, name)
            paths[name] = folder / name
            actual[name] = download(url, paths[name], out, timeout=timeout, progress=progress)
            _check_digest(name, url, digests[name], actual[name], out)
        _import(paths, base, out, overwrite)
        if keep_raw:
            _keep_raw(paths, out)
    for name in FILES:
        if digests[name] is None:
            _warn_unpinned(name, urllib.parse.urljoin(base, name), actual[name])
    return out


def download(url: str, dest: Path, out: Path, timeout: float = TIMEOUT_S, progress: bool = True) -> str:
    """Stream ``url`` into ``dest`` with a progress bar; return the SHA-256 (hex) of the bytes received.

    Network failures, HTTP errors, timeouts and bodies shorter than their Content-Length raise a
    one-line ``InputError`` that says how to place the files by hand into ``out``.
    """
    sha = hashlib.sha256()
    received = 0
    with _network_errors(url, out):
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (scheme checked in _base_url)
    with response, open(dest, "wb") as handle, _progress_bar(progress) as bar:
        total = _content_length(response)
        task = bar.add_task(Path(urllib.parse.urlparse(url).path).name, total=total)
        while True:
            with _network_errors(url, out):
                chunk = response.read(CHUNK)
            if not chunk:
                break
            handle.write(chunk)
            sha.update(chunk)
            received += len(chunk)
            bar.update(task, advance=len(chunk))
    if total is not None and received != total:
        raise InputError(_offline(url, out, f"truncated download: got {received} of {total} bytes"))
    if received == 0:
        raise InputError(_offline(url, out, "the server sent an empty file"))
    return sha.hexdigest()


def manual_hint(out: Path) -> str:
    """The one-sentence fix for a failed fetch: get the stacks another way and import them."""
    return (
        f"download {VOLUME} and {LABELS} by hand (e.g. from {DEFAULT_MIRROR}) and run: "
        f"seg data import {VOLUME} {LABELS} {out}"
    )


def _offline(url: str, out: Path, reason: str) -> str:
    return f"{url}: {reason}; check the network or pass another --mirror, or {manual_hint(out)}"


def _base_url(mirror: str) -> str:
    scheme = urllib.parse.urlparse(mirror).scheme.lower()
    if scheme not in _SCHEMES:
        raise InputError(f"{mirror}: not a usable --mirror; give an http://, https:// or file:// base URL")
    return mirror if mirror.endswith("/") else mirror + "/"


@contextlib.contextmanager
def _network_errors(url: str, out: Path) -> Iterator[None]:
    """Turn the ways a download fails on the wire into one-line ``InputError``s."""
    try:
        yield
    except urllib.error.HTTPError as exc:
        raise InputError(_offline(url, out, f"HTTP {exc.code} {exc.reason}")) from None
    except urllib.error.URLError as exc:
        reason = "timed out" if isinstance(exc.reason, TimeoutError) else str(exc.reason)
        raise InputError(_offline(url, out, f"cannot connect ({reason})")) from None
    except TimeoutError:
        raise InputError(_offline(url, out, "timed out waiting for data")) from None
    except http.client.IncompleteRead as exc:
        raise InputError(_offline(url, out, f"truncated download ({exc})")) from None
    except (http.client.HTTPException, OSError) as exc:
        raise InputError(_offline(url, out, f"connection failed ({type(exc).__name__}: {exc})")) from None


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    with contextlib.suppress(TypeError, ValueError):
        return int(value)
    return None


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=err_console, transient=True, disable=not enabled,
    )


def _check_digest(name: str, url: str, expected: str | None, actual: str, out: Path) -> None:
    if expected is not None and actual != expected:
        raise InputError(
            f"{name}: SHA-256 mismatch from {url} (expected {expected}, got {actual}); nothing written; "
            f"retry or pass another --mirror, or {manual_hint(out)}"
        )


def _warn_unpinned(name: str, url: str, actual: str) -> None:
    option = "--sha256-volume" if name == VOLUME else "--sha256-labels"
    warnings.warn(
        f"{name}: no pinned SHA-256; downloaded {actual} from {url}; compare it with a trusted copy "
        f"and pin it with {option} {actual}",
        SegWarning,
        stacklevel=3,
    )


def _import(paths: dict[str, Path], base: str, out: Path, overwrite: bool) -> None:
    """``import_isbi_stacks`` with errors about the temporary files re-worded to name the URLs."""
    try:
        import_isbi_stacks(paths[VOLUME], paths[LABELS], out, overwrite=overwrite)
    except InputError as exc:
        message = str(exc)
        for name, path in paths.items():
            message = message.replace(str(path), urllib.parse.urljoin(base, name))
        raise InputError(f"{message} (downloaded; not an ISBI 2012 stack pair — pass another --mirror)") from None


def _keep_raw(paths: dict[str, Path], out: Path) -> None:
    """Move the downloaded stacks into ``out/raw/`` (one rename each, same file system)."""
    raw = out / "raw"
    raw.mkdir(exist_ok=True)
    for name, path in paths.items():
        os.replace(path, raw / name)


def _download_folder(out: Path) -> contextlib.AbstractContextManager[Path]:
    """A hidden temporary folder next to ``out`` (``.OUT.tmp-fetch-XXXX``), removed on exit whatever happens."""
    return temporary_folder_beside(out, "fetch-", "--dir")
