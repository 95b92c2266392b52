"""Everything the terminal shows. The only place that imports rich (ruff enforces it).

Engine code reports progress through plain callbacks; ``progress_bar`` turns them into a rich
bar on stderr, so stdout stays clean for tables and machine-readable output.
"""

from __future__ import annotations

import contextlib
import os
import time
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


class _Console(Console):
    def on_broken_pipe(self) -> None:
        self.quiet = True
        drop_stream(self.file)


# stdout for results (tables), stderr for progress, warnings and errors
console = _Console(highlight=False)
err_console = _Console(stderr=True, highlight=False)


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


# Control characters other than newline and tab: ESC starts terminal escape sequences (colours, a
# cleared screen, the window title, OSC 8 links), and file names, model metadata and provenance
# can hold them. Shown as \x1b and so on, they are seen, never obeyed.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0))}


def printable(text: str) -> str:
    """``text`` with its control characters (all but newline and tab) written out as ``\\x1b``."""
    return text.translate(_CONTROLS)


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
    they are (file names and provenance: no markup read into brackets, long values folded onto
    more lines rather than cut, so a hash can be copied whole). None under ``--quiet``."""
    if _quiet:
        return
    title = printable(title) if title else title
    t = Table(title=Text(title) if literal and title else title, caption=caption, title_justify="left")
    numeric = numeric or [False] * len(columns)
    for name, is_num in zip(columns, numeric, strict=True):
        t.add_column(name, justify="right" if is_num else "left", no_wrap=is_num and not literal)
    for row in rows:
        t.add_row(*(Text(printable(str(v)), overflow="fold") if literal else printable(str(v)) for v in row))
    (err_console if stderr else console).print(t)


def pin_terminal() -> None:
    """Keep stderr's terminal-ness as it is now. The console script calls this before
    ``data.native_messages.routed`` turns file descriptor 2 into a pipe (whose reader forwards to
    this same terminal): after that, stderr no longer looks like a terminal, and rich would draw
    no progress bar."""
    global err_console
    err_console = _Console(stderr=True, highlight=False, force_terminal=err_console.is_terminal)


@contextlib.contextmanager
def progress_bar(
    description: str, total: int | None, *, unit: str = "img", fields: Sequence[str] = ()
) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)`` that moves a transient progress bar on stderr.

    ``fields`` names extra text shown after the bar (for example loss and lr in training);
    pass their values as keyword arguments to ``advance``. The bar shows items per second.
    Where stderr is not a terminal, ``PDSEG_PROGRESS=1`` writes plain progress lines instead
    (``log_progress``). None under ``--quiet``.
    """
    if _quiet:
        yield lambda n=1, **values: None
        return
    if os.environ.get("PDSEG_PROGRESS") == "1" and not err_console.is_terminal:
        with log_progress(description, total, unit=unit, fields=fields) as advance:
            yield advance
        return
    extra = [TextColumn("{task.fields[extra]}")] if fields else []
    prog = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    with prog:
        # the description may hold a folder's name: no markup read in it, no control codes sent
        task = prog.add_task(_escape(description), total=total, rate="", extra="")

        def advance(n: int = 1, **values: Any) -> None:
            t = prog.tasks[task]
            elapsed = t.elapsed or 0.0
            rate = (t.completed + n) / elapsed if elapsed > 0 else 0.0
            prog.update(task, advance=n, rate=f"{rate:.2f} {unit}/s", extra=_field_text(values, fields))

        yield advance


LOG_EVERY_S = 30.0  # a line at most this often, and at each tenth of the work, for a log file


@contextlib.contextmanager
def log_progress(
    description: str, total: int | None, *, unit: str = "img", fields: Sequence[str] = ()
) -> Iterator[Callable[..., None]]:
    """``progress_bar`` for a log file or CI: plain lines, with no terminal escape codes or
    carriage returns (a redrawn bar fills a log with them), such as
    ``predict 40/400 (10%)  2.10 img/s  elapsed 0:00:19  left 0:02:51``, each tenth of the work
    and at most every ``LOG_EVERY_S`` seconds between, and one when it ends."""
    start = last = time.monotonic()
    done = shown = 0  # items done, and done when the last line was written
    values: dict[str, Any] = {}

    def line() -> None:
        nonlocal shown
        shown = done
        elapsed = time.monotonic() - start
        rate = done / elapsed if elapsed > 0 else 0.0
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


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
