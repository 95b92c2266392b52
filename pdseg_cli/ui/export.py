"""What `pdseg export` shows: the parity table on stdout, status and verdict lines on stderr."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pdseg_cli import ui
from pdseg_cli.errors import counted

if TYPE_CHECKING:
    from pdseg_cli.engine.export import ExportReport


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e5 else f"{n_bytes / 1e3:.0f} kB"


def step(message: str) -> None:
    """One status line on stderr (the engine's ``on_step`` callback)."""
    ui.info(f"{message} ...")


def checks_table(report: ExportReport) -> None:
    """The exported file against PyTorch, one row per checked input shape (stdout)."""
    if not report.checks:
        return
    rows = [
        (
            _shape(c.shape),
            f"{c.max_abs_diff:.2e}" if c.finite else "non-finite",
            f"{c.mean_abs_diff:.1e}" if c.finite else "",
            f"{c.tolerance:g}",
            f"{c.seconds * 1000:.0f}",
            "ok" if c.passed else "FAILED",
        )
        for c in report.checks
    ]
    ui.table(
        f"{report.format} ({_precision(report)}) vs PyTorch fp32",
        ["input", "max |dp|", "mean |dp|", "tolerance", "ms", "check"],
        rows,
        numeric=[False, True, True, True, True, False],
        caption="dp: difference of the foreground probabilities",
    )


def _precision(report: ExportReport) -> str:
    """``fp16`` for an export's graph; a checkpoint's precision is its storage only."""
    precision = str(report.metadata.precision)
    if report.format != "checkpoint":
        return precision
    return "fp16 storage, loaded as fp32" if precision == "fp16" else precision


def done(report: ExportReport) -> None:
    """The success line, naming the file and what it holds (stderr)."""
    meta = report.metadata
    n = len(report.checks)
    checked = (
        f"max |dp| {report.max_abs_diff:.2e} over {counted(n, 'shape')}" if n else "not checked: --no-check"
    )
    if report.format == "checkpoint":
        # what sets it apart from a run's last.pt
        what = f"{_precision(report)}; weights only (no training state), provenance and source kept"
    else:
        opset = f", opset {meta.opset}" if meta.opset is not None else ""
        what = f"{meta.precision}{opset}; dynamic batch/height/width; outputs {', '.join(meta.outputs)}"
    ui.info(f"wrote {report.path} ({_size(report.size_bytes)}, {meta.variant}, {what}; {checked})")
    if not report.checks:
        ui.warn("the exported file was not compared with PyTorch; run without --no-check to verify it")


def failed(report: ExportReport, message: str, hint: str | None) -> None:
    """The parity table and the error lines of a failed check."""
    checks_table(report)
    ui.error(message, hint)
    for warning in report.trace_warnings[1:4]:
        ui.warn(f"while tracing: {warning[:300]}")
