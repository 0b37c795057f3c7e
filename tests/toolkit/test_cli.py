from __future__ import annotations

from typer.testing import CliRunner

from seg.toolkit.cli import app

runner = CliRunner()


def test_version_and_short_help() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("seg ")
    result = runner.invoke(app, ["-h"])
    assert result.exit_code == 0
    for command in ("train", "export", "infer", "evaluate", "benchmark", "data", "demo"):
        assert command in result.output


def test_unknown_model_kind_exits_2_with_one_line() -> None:
    result = runner.invoke(app, ["train", "--data", ".", "--model", "resnet"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --model 'resnet': choose unet or cnn"
