"""The ``pdseg`` console script: a Ctrl-C before the command line is even read is one line too.

Importing the CLI (typer, rich, every command's options) takes a few tenths of a second; a Ctrl-C
then printed an import traceback. This module imports nothing heavy itself.

A command stopped by a signal ends by that signal (:mod:`pdseg_cli.signal_exit`).
"""

from __future__ import annotations

import atexit
import codecs
import os
import signal
import sys

from pdseg_cli import signal_exit


def main() -> None:
    """Import the CLI and run it; a Ctrl-C while importing ends with one line, by SIGINT."""
    _fill_closed_streams()
    _replace_what_cannot_be_shown()
    _drop_unusable_sizes()
    _refuse_a_lost_folder()
    # registered first, so it runs last: after the other exit handlers (worker pools, temporary
    # files), with only the interpreter's own teardown left, which the signal cuts short
    atexit.register(signal_exit.at_exit)
    try:
        from pdseg_cli import cli
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        signal_exit.end_by(signal.SIGINT)
        raise SystemExit(128 + signal.SIGINT) from None
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


_SHOWN = "pdseg-shown"  # the error handler below, for streams pdseg prints to


def _shown(exc: UnicodeError) -> tuple[str | bytes, int]:
    """What a stream writes for a character its encoding cannot: a name's byte that is not UTF-8
    (read from the file system as a lone surrogate, ``\\udce9``) as that byte again, as ``ls`` writes
    it into a pipe, so `--csv -` gives back the folder's own name; any other character as "?"."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    char = exc.object[exc.start]
    if "\udc80" <= char <= "\udcff":
        return bytes([ord(char) - 0xDC00]), exc.start + 1
    return "?", exc.start + 1


codecs.register_error(_SHOWN, _shown)


def _replace_what_cannot_be_shown() -> None:
    """Let a terminal or file whose encoding lacks a character pdseg prints (the "·" between
    settings, "→", a table's box lines; ``PYTHONIOENCODING=ascii``, ``LC_ALL=C``, a legacy Windows
    code page) show "?" for it, and a name that is not UTF-8 its own bytes (:func:`_shown`): the
    command stopped with a UnicodeEncodeError, after its work, before saying what it did. Python's
    strict UTF-8 stdout (``PYTHONIOENCODING=utf-8``, a UTF-8 locale) raised on such a name, and its
    surrogateescape (the C locale) on the "·"."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # absent on a replaced stream
        # stderr's backslashreplace never raises, and says more than a "?"
        if reconfigure is not None and getattr(stream, "errors", None) in ("strict", "surrogateescape"):
            try:
                reconfigure(errors=_SHOWN)
            except (ValueError, OSError):
                pass


def _refuse_a_lost_folder() -> None:
    """Say so when the current folder has been deleted (a cron job's, a shell left in a removed
    folder): torch's math library cannot then load, and exits the process with status 2 and its
    message lost, so that every command but the help ended at once, silently."""
    try:
        os.getcwd()
        return
    except OSError:
        pass
    if any(arg in ("-h", "--help", "--version") for arg in sys.argv[1:]):
        return  # these need no torch, and work
    where = os.environ.get("PWD", "")
    if where and os.path.isdir(where):  # inherited from a parent that did not cd (cron, a script)
        where = ""
    sys.stderr.write(
        f"error: the current folder{' ' + where if where else ''} no longer exists (deleted or moved)\n"
        "hint: cd to a folder that exists, then run the command again\n"
    )
    raise SystemExit(1)


def _drop_unusable_sizes() -> None:
    """Forget a terminal size in the environment that is not a positive number (``COLUMNS=0``):
    rich, typer's help among it, drew everything 0 columns wide, and printed nothing at all, error
    lines included. Without it, the terminal's own size applies, or 80 columns where there is none."""
    for name in ("COLUMNS", "LINES", "TERMINAL_WIDTH"):  # TERMINAL_WIDTH: typer's help width
        value = os.environ.get(name)
        if value is not None and not (value.isascii() and value.isdigit() and int(value) > 0):
            del os.environ[name]
