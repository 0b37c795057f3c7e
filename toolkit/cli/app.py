"""The ``seg`` command line. Each command lives in its own module beside this one and calls one
public function; nothing here imports TensorFlow (``seg --help`` stays fast)."""

from __future__ import annotations

import typer

from seg.toolkit.cli.console import set_debug

app = typer.Typer(
    name="seg",
    help="Segment EM membrane images: train a Keras CNN, export it to ONNX with proven parity, run it anywhere.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"seg {version('seg-toolkit')}")
        except PackageNotFoundError:
            typer.echo("seg (not installed)")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    set_debug(debug)


def _register() -> None:
    """Attach every command module's commands to ``app``."""
    from seg.toolkit.cli import benchmark as cmd_benchmark
    from seg.toolkit.cli import data as cmd_data
    from seg.toolkit.cli import demo as cmd_demo
    from seg.toolkit.cli import evaluate as cmd_evaluate
    from seg.toolkit.cli import export as cmd_export
    from seg.toolkit.cli import infer as cmd_infer
    from seg.toolkit.cli import train as cmd_train

    for module in (cmd_train, cmd_export, cmd_infer, cmd_evaluate, cmd_data, cmd_demo, cmd_benchmark):
        module.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    app()
