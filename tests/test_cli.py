"""The CLI shell: help, version, `pdseg info`, and user errors without tracebacks."""

from __future__ import annotations

import inspect
import subprocess
import sys

from typer.testing import CliRunner

from pdseg_cli import __version__
from pdseg_cli.cli import app

runner = CliRunner()


def test_help_lists_every_subcommand() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("info", "predict", "eval", "train", "export", "benchmark"):
        assert name in result.output


def test_help_texts_wrap_as_paragraphs() -> None:
    # Typer's rich help keeps a docstring's line breaks, so a paragraph broken over lines comes out
    # ragged in a terminal: every paragraph is one line, and examples fit 80 columns
    for command in app.registered_commands:
        doc = inspect.cleandoc(command.callback.__doc__ or "")
        assert doc, command.name
        for paragraph in doc.split("\n\n"):
            assert "\n" not in paragraph.strip(), (command.name, paragraph)
            if paragraph.startswith("  "):  # an example command line
                assert len(paragraph) <= 78, (command.name, paragraph)


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"pdseg {__version__}"


def test_python_dash_m_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pdseg_cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"pdseg {__version__}"


def test_info_one_variant_counts() -> None:
    result = runner.invoke(app, ["info", "pdseg-tiny", "--size", "64"])
    assert result.exit_code == 0, result.output
    assert "pdseg-tiny" in result.output
    assert "GMACs" in result.output


def test_info_unknown_variant_is_one_line_error() -> None:
    result = runner.invoke(app, ["info", "pdseg-bb"])
    assert result.exit_code == 2
    assert "unknown model variant 'pdseg-bb'" in result.output
    assert "did you mean pdseg-b" in result.output
    assert "Traceback" not in result.output


def test_import_is_light() -> None:
    # `import pdseg_cli` must not pull in torch (fast --help, fast metrics-only use).
    code = "import sys, pdseg_cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
