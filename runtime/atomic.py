"""Atomic file writes: write to a temporary sibling, then ``os.replace`` it onto the final name.

A reader never sees a half-written file: after a crash (even SIGKILL) the final path either holds
the previous complete file or the new complete file. Stray temporaries start with ``.`` and contain
``.tmp-`` so they are easy to recognise and are ignored by the dataset and input listings.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from seg.runtime.errors import InputError

TMP_MARK = ".tmp-"


def is_temporary(path: Path) -> bool:
    """True for the temporaries this module creates (``.name.tmp-XXXX.ext``)."""
    return path.name.startswith(".") and TMP_MARK in path.name


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in ``final``'s folder; on success move it onto ``final``.

    The temporary keeps ``final``'s suffix so that writers which dispatch on the extension
    (Pillow, tifffile, Keras) behave as for the real name. On any exception it is removed and
    ``final`` is untouched.
    """
    final = Path(final)
    folder = final.parent if str(final.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}{TMP_MARK}", suffix=final.suffix, dir=folder)
    except OSError as exc:  # missing folder, a file where a folder should be, read-only, disk full
        raise InputError(f"{final}: cannot write here ({exc.strerror or exc}); choose another path") from None
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual permissions
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def remove_temporaries(folder: str | os.PathLike[str], stems: Iterable[str] | None = None) -> list[Path]:
    """Delete the stray temporaries a killed writer left directly in ``folder``; return what was removed.

    ``stems``: only temporaries of these final names' stems (``.{stem}.tmp-*``), so that a run cleans up
    after itself without touching files another live process may be writing. None: every temporary.
    """
    folder = Path(folder)
    prefixes = None if stems is None else tuple(f".{stem}{TMP_MARK}" for stem in stems)
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            path = Path(entry.path)
            if is_temporary(path) and entry.is_file(follow_symlinks=False) and (
                prefixes is None or path.name.startswith(prefixes)
            ):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


_UMASK_LOCK = threading.Lock()
_UMASK: list[int] = []


def _umask() -> int:
    """The process umask, read once: reading it means setting it, and two writer threads doing that at once
    could leave the umask at 0 for good (world-writable outputs)."""
    with _UMASK_LOCK:
        if not _UMASK:
            mask = os.umask(0)
            os.umask(mask)
            _UMASK.append(mask)
        return _UMASK[0]


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def write_bytes_atomic(final: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(final: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``final`` atomically."""
    write_bytes_atomic(final, text.encode("utf-8"))


def write_json_atomic(final: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``final`` atomically."""
    write_text_atomic(final, json.dumps(obj, indent=2, sort_keys=False) + "\n")
