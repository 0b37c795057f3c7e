"""Error types shared by every package.

Each error carries a one-line message that names the file and the problem and, where there is one,
the fix. The CLI prints ``error: <message>`` and exits with ``exit_code``; no traceback unless ``--debug``.
"""

from __future__ import annotations


class SegError(Exception):
    """Base class for errors a user can act on. ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class InputError(SegError):
    """The main input of a command is unusable (missing, unreadable, wrong shape or type). Exit 2."""

    exit_code = 2


class ProviderError(SegError):
    """An execution provider that was asked for cannot load (e.g. CUDA libraries missing). Exit 2."""

    exit_code = 2


class RunError(SegError):
    """onnxruntime failed while running a model on valid input (e.g. out of GPU memory). Exit 1."""

    exit_code = 1


class GateError(SegError):
    """A quality gate failed (e.g. ONNX/Keras parity). Exit 1; the gated output is not written."""

    exit_code = 1


class SegWarning(UserWarning):
    """Something was converted or assumed on the user's behalf (RGB to gray, missing metadata)."""


def first_line(error: BaseException | str) -> str:
    """The first non-blank line of an error's text (its type name when it has none): for one-line messages."""
    text = str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines:
        return lines[0]
    return type(error).__name__ if isinstance(error, BaseException) else "unknown error"
