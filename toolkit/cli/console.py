"""Shared CLI plumbing: one rich console, one-line errors with exit codes, ``--debug`` tracebacks."""

from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from seg.runtime.errors import SegError, SegWarning

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def quiet_tensorflow() -> None:
    """Import TensorFlow (and probe its GPUs) with the native stderr silenced: TensorFlow's C++ start-up
    lines (oneDNN notes, CUDA probing on machines without a GPU) ignore TF_CPP_MIN_LOG_LEVEL and would
    drown the progress bar. Kept when ``--debug`` is on; a failing import still raises normally. Nothing to
    do when Keras runs on another backend (``KERAS_BACKEND=jax`` or ``torch``)."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if _state["debug"] or "tensorflow" in sys.modules or backend != "tensorflow":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def plural(count: int, noun: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def set_debug(enabled: bool) -> None:
    _state["debug"] = enabled
    logging.basicConfig(level=logging.DEBUG if enabled else logging.WARNING)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on stderr and return the ``typer.Exit`` to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    return typer.Exit(code)


def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)


def command(fn: F) -> F:
    """Decorate a CLI command: ``SegError`` -> one line + its exit code; other errors -> one line + exit 1
    (full traceback with ``--debug``). SegWarnings print as one yellow line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = warnings.showwarning
        warnings.showwarning = _show_warning
        warnings.simplefilter("always", SegWarning)
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except SegError as exc:
            if _state["debug"]:
                traceback.print_exc()  # the traceback, and still the exit code the error means
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted; nothing half-written was left (rerun the same command to continue)", 130) from None
        except Exception as exc:
            if _state["debug"]:
                raise
            raise fail(f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1) from None
        finally:
            warnings.showwarning = previous

    return wrapper  # type: ignore[return-value]


def typed_options(context: typer.Context, besides: set[str]) -> list[str]:
    """The options typed on the command line (not defaults), as written (``--batch``), other than the
    parameters named in ``besides``."""

    def typed(name: str | None) -> bool:
        source = context.get_parameter_source(name or "")
        return source is not None and source.name == "COMMANDLINE"

    return [param.opts[0] for param in context.command.params if param.name not in besides and typed(param.name)]
