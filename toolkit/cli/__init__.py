"""The ``seg`` command line: ``app`` (typer) and one module per command, each a thin layer over one public
function of ``seg.runtime``, ``seg.train``, ``seg.export`` or ``seg.toolkit``."""

from seg.toolkit.cli.app import app, main

__all__ = ["app", "main"]
