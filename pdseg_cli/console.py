"""The ``pdseg`` console script: a Ctrl-C before the command line is even read is one line too.

Importing the CLI (typer, rich, every command's options) takes a few tenths of a second; a Ctrl-C
then printed an import traceback. This module imports nothing heavy itself.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Import the CLI and run it; a Ctrl-C while importing ends with one line and status 130."""
    _fill_closed_streams()
    _replace_what_cannot_be_shown()
    try:
        from pdseg_cli import cli
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None
    cli.main()


def _fill_closed_streams() -> None:
    """Give a standard stream the process was started without (`pdseg ... >&- 2>&-`, as some
    daemons and cron lines run commands) the null device. Python leaves ``sys.stdout`` None then,
    and pdseg stopped at its first line with exit 1 and nothing done; worse, the next file opened
    would take the free descriptor and receive what pdseg prints."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:  # the lowest free descriptor: fd itself, unless a lower one is closed too
            os.dup2(null, fd)
            os.close(null)
        errors = "backslashreplace" if name == "stderr" else "strict"
        setattr(sys, name, open(fd, mode, closefd=False, errors=errors))  # noqa: SIM115


def _replace_what_cannot_be_shown() -> None:
    """Let a terminal or file whose encoding lacks a character pdseg prints (the "·" between
    settings, "→", a table's box lines; ``PYTHONIOENCODING=ascii``, a legacy Windows code page)
    show "?" for it: the command stopped with a UnicodeEncodeError, after its work, before saying
    what it did."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # absent on a replaced stream
        # only a stream that would raise: stderr's backslashreplace, or surrogateescape, says more
        strict = getattr(stream, "errors", None) == "strict"
        if (
            reconfigure is not None
            and strict
            and "utf" not in (getattr(stream, "encoding", "") or "").lower()
        ):
            try:
                reconfigure(errors="replace")
            except (ValueError, OSError):
                pass
