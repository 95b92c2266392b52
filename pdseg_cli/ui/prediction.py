"""What ``pdseg predict`` shows: the chosen device, a progress bar, and the end summary."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pdseg_cli import ui
from pdseg_cli.data.images import IMAGE_KINDS
from pdseg_cli.engine.predict_plan import is_broken_link, is_unfollowed_folder_link
from pdseg_cli.errors import counted, listing

# photos a phone saves that pdseg does not read (OpenCV has no HEIF or AVIF decoder)
_PHONE_SUFFIXES = frozenset({".heic", ".heif", ".hif", ".avif"})

_MAX_LISTED = 20  # failed files listed one per line; the rest are counted


def left_in_out(out: Any, paths: list[Any]) -> None:
    """The images a recursive walk left out because they are in ``--out`` (not outputs of these inputs)."""
    if paths:
        ui.warn(
            f"--out {out} is inside a folder --recursive reads and is left out of it: "
            f"{counted(len(paths), 'image')} there {'is' if len(paths) == 1 else 'are'} not segmented "
            f"(put there, or outputs of inputs since removed): {listing([str(p) for p in paths], 5)}"
        )


def start(
    device_reason: str,
    precision: str,
    size: str,
    todo: int,
    skipped: int,
    world_size: int,
    notes: list[str] | None = None,
    model: str | None = None,
) -> None:
    """Status lines on stderr before the work starts (the model, then the set-up), then a warning line
    per note."""
    if model:
        ui.info(f"model {model}")
    parts = [f"device {device_reason}", f"precision {precision}", f"size {size}"]
    files = f"{counted(todo, 'image')} to do"
    if skipped:
        files += f", {skipped} skipped (outputs exist)"
    parts.append(files)
    if world_size > 1:
        parts.append(f"{world_size} processes (counts are this process's share)")
    ui.info(" · ".join(parts))
    for note in notes or []:
        ui.warn(note)


def interrupted(skipping: bool, seen: Sequence[Any] = (), total: int | None = None) -> None:
    """How far Ctrl-C let the run get (``seen``: the file results so far), the files that failed
    before it, and how to go on: every file written so far is whole (atomic writes)."""
    if seen:
        done = sum(r.status == "done" for r in seen)
        skipped = sum(r.status == "skipped" for r in seen)
        failed = [r for r in seen if r.status == "failed"]
        of = f" of {total}" if total is not None else ""
        counts = f"{done} done" + (f", {skipped} skipped" if skipped else "") + f", {len(failed)} failed"
        ui.info(
            f"stopped after {len(seen)}{of} {'image' if (total or len(seen)) == 1 else 'images'}: {counts}"
        )
        for r in failed[:_MAX_LISTED]:
            ui.warn(f"failed: {_failure_line(r)}")
        if len(failed) > _MAX_LISTED:
            ui.warn(f"... and {len(failed) - _MAX_LISTED} more failed")
    again = "run the same command again" + ("" if skipping else " with --skip-existing")
    ui.info(f"stopped: every file written so far is complete; {again} to do only the rest")


@contextlib.contextmanager
def progress(
    total: int, *, enabled: bool = True, seen: list[Any] | None = None
) -> Iterator[Callable[[Any], None]]:
    """Yield ``advance(result)``: a progress bar in images per second (a no-op when not enabled),
    that also appends each result to ``seen`` when given (what :func:`interrupted` reports)."""

    def record(result: Any) -> None:
        if seen is not None:
            seen.append(result)

    if not enabled:
        yield record
        return
    with ui.progress_bar("predict", total=total, unit="img") as advance:

        def step(result: Any) -> None:
            record(result)
            advance()

        yield step


def summary(result: Any) -> None:
    """The end summary table (stdout), then failed files and warnings (stderr).

    Args:
        result: a ``pdseg_cli.engine.predict_summary.PredictSummary``.
    """
    peak = max(result.peak_memory, key=lambda m: m.bytes)
    rows: list[tuple[str, str]] = [
        ("done", str(result.done)),
        ("skipped (outputs exist)", str(result.skipped)),
        ("failed", str(result.failed)),
        ("other files (not read)", str(len(result.not_images))),
        ("wall time", _seconds(result.wall_seconds)),
        ("images / s", f"{result.images_per_second:.2f}"),
        (
            f"peak memory ({peak.what})",
            _bytes(peak.bytes) + (f" (rank {peak.rank})" if result.world_size > 1 else ""),
        ),
    ]
    caption = f"{result.device} · {result.precision} · size {result.size}"
    if result.world_size > 1:
        caption += f" · {result.world_size} processes"
    ui.table("pdseg predict", ["", "value"], rows, numeric=[False, True], caption=caption)
    broken: list[str] = []
    folder_links: list[str] = []
    others: list[str] = []
    for path in result.not_images:
        if is_broken_link(path):
            broken.append(str(path))
        elif is_unfollowed_folder_link(path):
            folder_links.append(str(path))
        else:
            others.append(str(path))
    if others:
        line = f"skipped, not a kind pdseg reads ({', '.join(IMAGE_KINDS)}): {listing(others, 5)}"
        phone = sorted({Path(p).suffix.lower() for p in others} & _PHONE_SUFFIXES)
        if phone:  # the one kind a folder of photos often holds: say how to get JPEGs from it
            kinds = "/".join(s.lstrip(".").upper() for s in phone)
            line += f"; convert {kinds} photos to JPEG first (e.g. `heif-convert IMG.heic IMG.jpg`)"
        ui.info(line)
    if folder_links:
        links = listing(folder_links, 5)
        ui.info(f"not followed, links to folders read already or back up the tree: {links}")
    if broken:
        ui.warn(f"skipped, broken links or link loops: {listing(broken, 5)}")
    warnings = [w for r in result.results for w in r.warnings]
    for w in dict.fromkeys(warnings):
        ui.warn(w)
    failures = result.failures
    lines = [_failure_line(r) for r in failures]
    if len(lines) > _MAX_LISTED:
        lines[_MAX_LISTED:] = [f"... and {len(failures) - _MAX_LISTED} more failed files"]
    fix = (
        "each line says what went wrong; once it is put right (a damaged file re-copied or moved away), "
        "run the same command again"
    )
    if result.done:  # the rest were written: the rerun need only do these
        fix += " with --skip-existing to segment only these (the other images were written)"
    for i, line in enumerate(lines):  # the fix once, under the last line
        ui.error(line, hint=fix if i == len(lines) - 1 else None)


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _failure_line(r: Any) -> str:
    """A failed file's line: its path, then what went wrong (said once where the error names it)."""
    return str(r.error) if str(r.path) in (r.error or "") else f"{r.path}: {r.error}"
