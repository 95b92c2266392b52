"""The ``pdseg`` console script: a Ctrl-C before the command line is even read is one line too.

Importing the CLI (typer, rich, every command's options) takes a few tenths of a second; a Ctrl-C
then printed an import traceback. This module imports nothing heavy itself.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Import the CLI and run it; a Ctrl-C while importing ends with one line and status 130."""
    try:
        from pdseg_cli import cli
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None
    cli.main()
