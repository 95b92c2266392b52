"""What `pdseg benchmark` shows: one table of latency, throughput and peak memory per size (stdout)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pdseg_cli import ui


def _mib(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "-"
    mib = n_bytes / 2**20
    return f"{mib:,.0f}" if mib >= 100 else f"{mib:.1f}"


def progress(message: str) -> None:
    """One status line on stderr (the engine's ``on_progress`` callback)."""
    ui.info(f"timing {message} ...")


def table(report: Any) -> None:
    """The report as a rich table: one row per size and model form."""
    compare = any(r.speedup is not None for r in report.rows)
    columns = ["input", "model", "median ms", "min ms", "img/s", "peak MiB"]
    if compare:
        columns += ["speed-up", "max |dlogit|"]
    rows = []
    for r in report.rows:
        row = [
            f"{r.batch}x3x{r.size}x{r.size}",
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
    weights = report.weights or "random weights"
    caption = [
        f"median of {report.runs} timed runs after {report.warmup} warm-up; {report.memory_note}",
        f"torch {report.torch_version}; CPU threads: {report.threads}; {weights}"
        + (f"; torch.compile {report.compile}" if report.compile else ""),
        *report.notes,
    ]
    ui.table(
        f"{report.variant} on {report.device} ({report.device_name}), {report.precision}",
        columns,
        rows,
        numeric=[False, False, True, True, True, True] + ([True, True] if compare else []),
        caption="\n".join(caption),
    )
    if report.out_of_memory:  # the caption is easy to miss: say it on stderr too
        sizes = ", ".join(str(size) for size in report.out_of_memory)
        ui.warn(f"out of memory at --size {sizes}: not timed (see the note under the table)")


def as_json(report: Any) -> None:
    """The report as JSON on stdout (every timed run included)."""
    ui.console.print_json(json.dumps(dataclasses.asdict(report)))
