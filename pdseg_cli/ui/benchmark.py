"""What `pdseg benchmark` shows: one table of latency, throughput and peak memory per size (stdout)."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

from rich.cells import cell_len

from pdseg_cli import ui

if TYPE_CHECKING:
    from pdseg_cli.engine.benchmark import BenchmarkReport


def _mib(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "-"
    mib = n_bytes / 2**20
    return f"{mib:,.0f}" if mib >= 100 else f"{mib:.1f}"


def progress(message: str) -> None:
    """One status line on stderr (the engine's ``on_progress`` callback)."""
    ui.info(f"timing {message} ...")


def _layout_width(widths: list[int]) -> int:
    """Columns of these content widths in a table with the default box: one space of padding each
    side of a cell and a rule between and around the columns."""
    return sum(widths) + 3 * len(widths) + 1


def _widths(columns: list[str], rows: list[list[str]]) -> list[int]:
    return [
        max([cell_len(line) for line in column.split("\n")] + [cell_len(row[i]) for row in rows])
        for i, column in enumerate(columns)
    ]


def table(report: BenchmarkReport) -> None:
    """The report as a rich table: one row per size and model form, every figure in full in a
    terminal of 80 columns or more."""
    compare = any(r.speedup is not None for r in report.rows)
    columns = ["size", "model", "median ms", "min ms", "img/s", "peak MiB"]
    if compare:
        columns += ["speed-up", "max |dlogit|"]
    rows = []
    for r in report.rows:
        row = [
            str(r.size),
            r.path,
            f"{r.median_ms:,.1f}",
            f"{r.min_ms:,.1f}",
            f"{r.images_per_s:,.2f}",
            _mib(r.peak_bytes),
        ]
        if compare:
            row += [
                "" if r.speedup is None else f"{r.speedup:.2f}x",
                "" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}",
            ]
        rows.append(row)
    batches = sorted({r.batch for r in report.rows})
    title = f"{report.variant} on {report.device} ({report.device_name}), {report.precision}"
    if batches:  # inputs are B x 3 x size x size; one --batch for the whole run
        title += f", batch {', '.join(map(str, batches))}"
    if report.interrupted_after is not None:  # in the title: the caption is easy to miss
        title += f"; partial: interrupted after {report.interrupted_after} of {len(report.sizes)} sizes"
    weights = report.weights or "random weights"
    caption = "\n".join(
        [
            f"median of {report.runs} timed runs after {report.warmup} warm-up; {report.memory_note}",
            f"torch {report.torch_version}; CPU threads: {report.threads}; {weights}"
            + (f"; torch.compile {report.compile}" if report.compile else ""),
            *report.notes,
        ]
    )
    # the headers fold onto two lines (``median`` over ``ms``) where one line would make the table
    # wider than the terminal: rich would otherwise cut cells to fit (an 80-column terminal did)
    if _layout_width(_widths(columns, rows)) > ui.console.width:
        columns = [column.replace(" ", "\n", 1) for column in columns]
    ui.table(title, columns, rows, numeric=[False, False] + [True] * (len(columns) - 2), caption=caption)
    if report.out_of_memory:  # the caption is easy to miss: say it on stderr too
        sizes = ", ".join(str(size) for size in report.out_of_memory)
        ui.warn(f"out of memory at --size {sizes}: not timed (see the note under the table)")


def partial(report: BenchmarkReport, *, json_out: bool = False) -> None:
    """What a Ctrl-C left of the run: the sizes finished before it, as the table (marked partial)
    or as JSON (``interrupted_after`` set); nothing when no size was finished."""
    if not report.interrupted_after:
        return
    if json_out:
        as_json(report)
    else:
        table(report)


def as_json(report: BenchmarkReport) -> None:
    """The report as JSON on stdout (every timed run included): plain text, as eval's ``--json -``;
    ASCII, so that any stdout encoding carries its paths unchanged. (rich's ``print_json`` added
    colour codes under ``FORCE_COLOR`` and wrote a path as ``caf?.pt`` to an ASCII stdout.)"""
    ui.plain(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
