"""Everything the terminal shows. The only place that imports rich (ruff enforces it).

Engine code reports progress through plain callbacks; ``progress_bar`` turns them into a rich
bar on stderr, so stdout stays clean for tables and machine-readable output.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text


def drop_stream(stream: Any) -> None:
    """The reader of ``stream`` (standard output, as a rule) has gone, as in `pdseg ... | head`:
    what is left to print there goes to the null device, and the work goes on to its own exit
    status. (rich's default ends the process with status 1, the status of images that failed.)"""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (a test's capture): nothing to redirect
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


# what a write meets when the disk or device standard output goes to takes no more
_WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)


def stdout_lost(exc: OSError, *, known: bool = False) -> tuple[str, str] | None:
    """The error line and hint for ``exc`` when it is standard output's own write failing (`pdseg
    info > /dev/full`, a log on a full disk), else None. Said so, it names standard output (not
    "No space left on device" alone, with "a training run: add --resume" for any command); what is
    left to print there is dropped, so that the exit does not fail on it again.

    ``known``: the caller wrote only to standard output (the help, ``--version``, the flush at
    exit); else it is told by where the error was raised: in a write of pdseg's report
    (:func:`plain`) or of a rich console printing to standard output, not a checkpoint's or a
    cache's write on the same full disk.
    """
    if exc.filename is not None or exc.errno not in _WRITE_FAILURES:
        return None
    if not known and not _raised_writing_stdout(exc):
        return None
    drop_stream(sys.stdout)
    return (
        f"cannot write to standard output ({exc.strerror or exc})",
        "free some space where the output goes, or send it elsewhere",
    )


def _raised_writing_stdout(exc: BaseException) -> bool:
    """Whether ``exc`` was raised in :func:`plain` or in a rich console's write to stdout."""
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code is plain.__code__:
            return True
        owner = frame.f_locals.get("self")
        if isinstance(owner, Console) and owner.file is sys.stdout:
            return True
        tb = tb.tb_next
    return False


class _Console(Console):
    def on_broken_pipe(self) -> None:
        self.quiet = True
        drop_stream(self.file)


# stdout for results (tables), stderr for progress, warnings and errors. No emoji: a file named
# `shot:100:.jpg` was shown as `shot💯.jpg` (pdseg's own text uses no shortcodes)
console = _Console(highlight=False, emoji=False)
err_console = _Console(stderr=True, highlight=False, emoji=False)


def plain(text: str) -> None:
    """Write ``text`` (a JSON or CSV report) to stdout as it is: no markup, colour (``FORCE_COLOR``)
    or wrapping, every character kept, as UTF-8 bytes whatever the stream's encoding (the bytes a
    report written to a file has). A reader that has gone (`| head -1`) took what it wanted: the
    rest goes nowhere, and the status is the run's."""
    # as UTF-8 bytes, as the same report written to a file: the terminal's encoding (LC_ALL=C,
    # PYTHONIOENCODING=ascii) made an "é" in a split's name "?" in `--csv -`, which is data
    buffer = getattr(sys.stdout, "buffer", None)
    try:
        if buffer is None:  # a stream of text alone (replaced by a caller)
            sys.stdout.write(text)
        else:
            sys.stdout.flush()  # what was written as text first stays first
            buffer.write(text.encode("utf-8", "surrogateescape"))
        sys.stdout.flush()  # here, where a reader that has gone is met, not at exit
    except BrokenPipeError:
        drop_stream(sys.stdout)


def error(message: str, hint: str | None = None) -> None:
    """Print one red error line (and a hint line) on stderr."""
    # soft_wrap: a long path stays on one line when stderr is a file or a pipe
    err_console.print(f"[bold red]error:[/] {_escape(message)}", soft_wrap=True)
    if hint:
        err_console.print(f"[dim]hint:[/] {_escape(hint)}", soft_wrap=True)


def warn(message: str) -> None:
    """Print one yellow warning line on stderr."""
    err_console.print(f"[yellow]warning:[/] {_escape(message)}", soft_wrap=True)


def info(message: str, *, essential: bool = False) -> None:
    """Print one plain status line on stderr (none under ``--quiet``, unless ``essential``: how to
    go on after a stop, which a quiet cron job needs most)."""
    if essential or not _quiet:
        err_console.print(_escape(message), soft_wrap=True)


_quiet = False  # --quiet: warnings and errors only


def set_quiet(quiet: bool) -> None:
    """``--quiet``: from now on, show warnings and errors only. Status lines, progress and result
    tables are left out; what a command writes to a file or asks for on stdout (``--json -``)
    is written all the same."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(printable(text))


# What a name is shown with escaped: control characters (ESC starts terminal escape sequences:
# colours, a cleared screen, the window title, OSC 8 links; a newline or tab split an error line, and
# `grep '^error:'` missed the file), format characters (a right-to-left override reverses what
# follows, a zero-width space cannot be seen), line and paragraph separators, and surrogates.
# File names, model metadata and provenance can hold them. Shown as \x1b, \n, \u202e, they are
# seen, never obeyed.
_HIDDEN = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def printable(text: str) -> str:
    """``text`` on one line with nothing hidden: control and format characters written out
    (``\\x1b``, ``\\n``, ``\\t``, ``\\u202e``), and a byte of a name that is not UTF-8 (a lone
    surrogate, ``\\udce9``) as the byte ``\\xe9``."""
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(_escaped(c) if unicodedata.category(c) in _HIDDEN else c for c in text)


def _escaped(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # Python's surrogateescape of the byte 0x80-0xff
        return f"\\x{ord(char) - 0xDC00:02x}"
    return char.encode("unicode_escape").decode("ascii")


def table(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    numeric: Sequence[bool] | None = None,
    caption: str | None = None,
    literal: bool = False,
    stderr: bool = False,
) -> None:
    """Print a table on stdout (``stderr``: on standard error, when stdout carries a report such as
    ``--json -``); numeric columns are right-justified. ``literal`` cells are shown as
    they are (file names and provenance: long values folded onto more lines rather than cut, so a
    hash can be copied whole). No markup is read in the title, caption or cells: they hold paths,
    where `[red]` vanished and `[/]` stopped the command after its work. A caption's lines are
    its ``\\n``-separated parts. None under ``--quiet``."""
    if _quiet:
        return
    t = Table(
        title=Text(printable(title)) if title else None,
        caption=Text("\n".join(map(printable, caption.split("\n")))) if caption else None,
        title_justify="left",
    )
    numeric = numeric or [False] * len(columns)
    for name, is_num in zip(columns, numeric, strict=True):
        # folded, never cut: on a narrow terminal every variant name read "p…", and a list of
        # widths lost its last values
        t.add_column(
            name, justify="right" if is_num else "left", no_wrap=is_num and not literal, overflow="fold"
        )
    for row in rows:
        t.add_row(*(Text(printable(str(v)), overflow="fold") for v in row))
    (err_console if stderr else console).print(t)


def pin_terminal() -> None:
    """Keep stderr's terminal-ness as it is now. The console script calls this before
    ``data.native_messages.routed`` turns file descriptor 2 into a pipe (whose reader forwards to
    this same terminal): after that, stderr no longer looks like a terminal, and rich would draw
    no progress bar."""
    global err_console, _stderr_is_terminal
    _stderr_is_terminal = _is_terminal(sys.stderr)
    err_console = _Console(stderr=True, highlight=False, emoji=False, force_terminal=err_console.is_terminal)


_stderr_is_terminal: bool | None = None  # as pin_terminal found it, before fd 2 became a pipe


def _stderr_terminal() -> bool:
    """Whether stderr really is a terminal. Not rich's ``is_terminal``: ``FORCE_COLOR`` makes that
    true for a log file too, which then got some ten frames a second, and ``PDSEG_PROGRESS=1`` was
    ignored. (Colour still follows ``FORCE_COLOR``.)"""
    return _is_terminal(err_console.file) if _stderr_is_terminal is None else _stderr_is_terminal


def _dumb_terminal() -> bool:
    """Whether ``TERM`` names a terminal that cannot redraw a line (``dumb``: an Emacs shell buffer,
    some CI wrappers), where rich draws no bar at all: plain progress lines are written there."""
    return os.environ.get("TERM", "").lower() in ("dumb", "unknown")


def _is_terminal(stream: Any) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        return False


@contextlib.contextmanager
def progress_bar(
    description: str,
    total: int | None,
    *,
    unit: str = "img",
    fields: Sequence[str] = (),
    already: int = 0,
) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)`` that moves a transient progress bar on stderr.

    ``fields`` names extra text shown after the bar (for example loss and lr in training);
    pass their values as keyword arguments to ``advance``. The bar shows items per second.
    ``already``: items done before (outputs a resume skips, the steps of a resumed epoch), counted
    in the bar but not in the rate or the time left, which they made read thousands per second.
    Where stderr is not a terminal, ``PDSEG_PROGRESS=1`` writes plain progress lines instead
    (``log_progress``), as a ``TERM=dumb`` terminal gets by default. None under ``--quiet``.
    """
    if _quiet:
        yield lambda n=1, **values: None
        return
    terminal = _stderr_terminal()
    live = terminal and not _dumb_terminal()  # a bar redrawn in place
    if not live and (os.environ.get("PDSEG_PROGRESS") == "1" or terminal):  # a dumb terminal's lines
        with log_progress(description, total, unit=unit, fields=fields, already=already) as advance:
            yield advance
        return
    extra = [TextColumn("{task.fields[extra]}")] if fields else []
    prog = Progress(
        SpinnerColumn(),
        # the description may hold a folder's name: no markup or emoji read in it
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not live,
    )
    try:
        with prog:
            # started at ``already``: rich's speed (and time left) is taken from the advances only
            task = prog.add_task(printable(description), total=total, completed=already, rate="", extra="")

            def advance(n: int = 1, **values: Any) -> None:
                t = prog.tasks[task]
                elapsed = t.elapsed or 0.0
                rate = (t.completed - already + n) / elapsed if elapsed > 0 else 0.0
                prog.update(task, advance=n, rate=f"{rate:.2f} {unit}/s", extra=_field_text(values, fields))

            yield advance
    finally:
        if live:
            # the bar's last frame and its clearing pass through native_messages' pipe; a table
            # printed straight to stdout next overtook them, and a stale frame stayed on its title
            from pdseg_cli.data import native_messages

            native_messages.drain()


LOG_EVERY_S = 30.0  # a line at most this often, and at each tenth of the work, for a log file


@contextlib.contextmanager
def log_progress(
    description: str,
    total: int | None,
    *,
    unit: str = "img",
    fields: Sequence[str] = (),
    already: int = 0,
) -> Iterator[Callable[..., None]]:
    """``progress_bar`` for a log file or CI: plain lines, with no terminal escape codes or
    carriage returns (a redrawn bar fills a log with them), such as
    ``predict 40/400 (10%)  2.10 img/s  elapsed 0:00:19  left 0:02:51``, each tenth of the work
    and at most every ``LOG_EVERY_S`` seconds between, and one when it ends. ``already``: as for
    :func:`progress_bar`, counted but not in the rate."""
    start = last = time.monotonic()
    done = shown = already  # items done, and done when the last line was written
    values: dict[str, Any] = {}

    def line() -> None:
        nonlocal shown
        shown = done
        elapsed = time.monotonic() - start
        rate = (done - already) / elapsed if elapsed > 0 else 0.0
        head = f"{description} {done}/{total}" + (f" ({100 * done // total}%)" if total else "")
        parts = [head if total else f"{description} {done}", f"{rate:.2f} {unit}/s"]
        if extra := _field_text(values, fields):
            parts.append(extra)
        parts.append(f"elapsed {_clock(elapsed)}")
        if total and rate > 0 and done < total:
            parts.append(f"left {_clock((total - done) / rate)}")
        err_console.print(Text(printable("  ".join(parts))), soft_wrap=True)

    def advance(n: int = 1, **new_values: Any) -> None:
        nonlocal done, last
        done += n
        values.update(new_values)
        now = time.monotonic()
        if (total and done * 10 // total > shown * 10 // total) or now - last >= LOG_EVERY_S:
            last = now
            line()

    try:
        yield advance
    finally:
        if done != shown:  # where it ended or stopped, unless the last line said it
            line()


def _field_text(values: dict[str, Any], fields: Sequence[str]) -> str:
    return "  ".join(f"{k} {_fmt(v)}" for k, v in values.items() if k in fields)


def duration(seconds: float) -> str:
    """A wall time as people read it: ``12.3 s`` under a minute, else ``4:05`` or ``1:02:03``."""
    if round(seconds, 1) < 60:  # 59.97 s reads "1:00", not "60.0 s"
        return f"{seconds:.1f} s"
    m, sec = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
