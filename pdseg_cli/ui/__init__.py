"""Everything the terminal shows. The only place that imports rich (ruff enforces it).

Engine code reports progress through plain callbacks; ``progress_bar`` turns them into a rich
bar on stderr, so stdout stays clean for tables and machine-readable output.
"""

from __future__ import annotations

import contextlib
import os
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

# stdout for results (tables), stderr for progress, warnings and errors
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def error(message: str, hint: str | None = None) -> None:
    """Print one red error line (and a hint line) on stderr."""
    # soft_wrap: a long path stays on one line when stderr is a file or a pipe
    err_console.print(f"[bold red]error:[/] {_escape(message)}", soft_wrap=True)
    if hint:
        err_console.print(f"[dim]hint:[/] {_escape(hint)}", soft_wrap=True)


def warn(message: str) -> None:
    """Print one yellow warning line on stderr."""
    err_console.print(f"[yellow]warning:[/] {_escape(message)}", soft_wrap=True)


def info(message: str) -> None:
    """Print one plain status line on stderr."""
    err_console.print(_escape(message), soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def table(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    numeric: Sequence[bool] | None = None,
    caption: str | None = None,
    literal: bool = False,
) -> None:
    """Print a table on stdout; numeric columns are right-justified. ``literal`` cells are shown as
    they are (file names and provenance: no markup read into brackets, long values folded onto
    more lines rather than cut, so a hash can be copied whole)."""
    t = Table(title=Text(title) if literal and title else title, caption=caption, title_justify="left")
    numeric = numeric or [False] * len(columns)
    for name, is_num in zip(columns, numeric, strict=True):
        t.add_column(name, justify="right" if is_num else "left", no_wrap=is_num and not literal)
    for row in rows:
        t.add_row(*(Text(str(v), overflow="fold") if literal else str(v) for v in row))
    console.print(t)


def pin_terminal() -> None:
    """Keep stderr's terminal-ness as it is now. The console script calls this before
    ``data.native_messages.routed`` turns file descriptor 2 into a pipe (whose reader forwards to
    this same terminal): after that, stderr no longer looks like a terminal, and rich would draw
    no progress bar."""
    global err_console
    err_console = Console(stderr=True, highlight=False, force_terminal=err_console.is_terminal)


@contextlib.contextmanager
def progress_bar(
    description: str, total: int | None, *, unit: str = "img", fields: Sequence[str] = ()
) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)`` that moves a transient progress bar on stderr.

    ``fields`` names extra text shown after the bar (for example loss and lr in training);
    pass their values as keyword arguments to ``advance``. The bar shows items per second.
    """
    extra = [TextColumn("{task.fields[extra]}")] if fields else []
    # PDSEG_PROGRESS=1 draws the bar where stderr is not a terminal (a log file, CI)
    forced = os.environ.get("PDSEG_PROGRESS") == "1" and not err_console.is_terminal
    bar_console = Console(stderr=True, highlight=False, force_terminal=True) if forced else err_console
    prog = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=bar_console,
        transient=True,
        disable=not bar_console.is_terminal,
    )
    with prog:
        task = prog.add_task(description, total=total, rate="", extra="")

        def advance(n: int = 1, **values: Any) -> None:
            t = prog.tasks[task]
            elapsed = t.elapsed or 0.0
            rate = (t.completed + n) / elapsed if elapsed > 0 else 0.0
            text = "  ".join(f"{k} {_fmt(v)}" for k, v in values.items() if k in fields)
            prog.update(task, advance=n, rate=f"{rate:.2f} {unit}/s", extra=text)

        yield advance


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
