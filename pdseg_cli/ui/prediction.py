"""What ``pdseg predict`` shows: the chosen device, a progress bar, each failed file as it fails,
and the end summary."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdseg_cli import ui
from pdseg_cli.data.atomic import is_special
from pdseg_cli.data.images import IMAGE_KINDS, convert_phone_photos
from pdseg_cli.engine.predict_plan import is_broken_link, is_unfollowed_folder_link
from pdseg_cli.errors import counted, listing

if TYPE_CHECKING:
    from pdseg_cli.engine.predict_summary import FileResult, PredictSummary


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
    model_note: str | None = None,
) -> None:
    """Status lines on stderr before the work starts (the model and what to know of it, then the
    set-up), then a warning line per note."""
    if model:
        ui.info(f"model {model}")
    if model_note:
        ui.info(model_note)
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


def nothing_left(out: Any, skipped: int) -> None:
    """The status line of a run with nothing left to do, which loads no model."""
    every = "the image has its" if skipped == 1 else f"all {skipped} images have their"
    ui.info(f"nothing to do: {every} outputs in {out} already (--skip-existing); no model loaded")


def interrupted(
    skipping: bool, seen: Sequence[FileResult] = (), total: int | None = None, *, whole_run: bool = True
) -> None:
    """How far Ctrl-C let the run get (``seen``: the file results so far; the failed ones were
    named as they failed) and how to go on: every file written so far is whole (atomic writes).
    ``whole_run``: ``seen`` and ``total`` are the whole run's (not one torchrun process's share)."""
    if seen:
        ui.info(_how_far(seen, total))
    all_done = whole_run and total is not None and len(seen) >= total
    if all_done and all(r.status != "failed" for r in seen):  # Ctrl-C as the last image was written
        ui.info("stopped after the last image: nothing is left to do", essential=True)
        return
    again = "run the same command again" + ("" if skipping else " with --skip-existing")
    ui.info(f"stopped: every file written so far is complete; {again} to do only the rest", essential=True)


def doubts(lines: Sequence[str]) -> None:
    """What the run showed about how the model is read (``Predictor.doubts``), after its table."""
    for line in lines:
        ui.warn(line)


def finishing_writes(n: int) -> None:
    """Said a second after a Ctrl-C that still waits for outputs being written (a large scan's
    take tens of seconds): the run is stopping, not ignoring the key."""
    ui.info(
        f"stopping: finishing the outputs of {counted(n, 'image')} being written (a file is written "
        "whole or not at all)"
    )


def stopped(result: PredictSummary, total: int) -> None:
    """How far a run got before a write that no other image could escape stopped it (a full disk);
    the error line and its hint come after, from the command's error handling.

    Args:
        result: a ``pdseg_cli.engine.predict_summary.PredictSummary``, up to the stop.
        total: the images of the whole run.
    """
    ui.info(_how_far(result.results, total))


def _how_far(seen: Sequence[FileResult], total: int | None) -> str:
    """``stopped after 8 of 40 images: 7 done, 1 failed``, from file results."""
    done = sum(r.status == "done" for r in seen)
    skipped = sum(r.status == "skipped" for r in seen)
    failed = sum(r.status == "failed" for r in seen)
    of = f" of {total}" if total is not None else ""
    counts = f"{done} done" + (f", {skipped} skipped" if skipped else "") + f", {failed} failed"
    return f"stopped after {len(seen)}{of} {'image' if (total or len(seen)) == 1 else 'images'}: {counts}"


@contextlib.contextmanager
def progress(
    total: int, *, enabled: bool = True, seen: list[Any] | None = None, skipped: int = 0
) -> Iterator[Callable[[Any], None]]:
    """Yield ``advance(result)``: a progress bar in images per second (none when not enabled),
    that also appends each result to ``seen`` when given (what :func:`interrupted` reports).
    ``skipped``: outputs that exist (``--skip-existing``), in the count but not in the rate.

    A failed file is named at once, in one ``error: <file>: <why>`` line above the bar (rich prints
    it there), or between the lines of ``PDSEG_PROGRESS=1``: a log followed with ``tail -f`` shows
    it then, and a run killed later has lost none. Not enabled (torchrun's processes other than
    rank 0), the process still names its own failures, each said by one process only.
    """

    def record(result: FileResult) -> None:
        if seen is not None:
            seen.append(result)
        if result.status == "failed":
            ui.error(_failure_line(result))

    if not enabled:
        yield record
        return
    with ui.progress_bar("predict", total=total, unit="img", already=skipped) as advance:

        def step(result: FileResult) -> None:
            record(result)
            if result.status != "skipped":  # counted from the start (``already``)
                advance()

        yield step


def own_outputs_left_out(paths: Sequence[Path]) -> None:
    """A warning naming pdseg's own outputs that a folder run left out of its inputs."""
    if paths:
        what = "is an output" if len(paths) == 1 else "are outputs"
        ui.warn(
            f"{counted(len(paths), 'file')} among the inputs {what} of pdseg (masks or cut-outs of an "
            f"earlier run), left out: {listing([str(p) for p in paths], 3)}; name one to segment it anyway"
        )


def unnamed_outputs_remade(paths: Sequence[Path]) -> None:
    """A status line for earlier outputs that --skip-existing does not take as done, as their mark
    names no input (pdseg of 2026-12-06): their images are made again."""
    if paths:
        one = len(paths) == 1
        names, its, them = ("names", "its", "it") if one else ("name", "their", "them")
        ui.info(
            f"{counted(len(paths), 'earlier output')} ({listing([str(p) for p in paths], 3)}) {names} no "
            f"input in {its} mark (pdseg of 2026-12-06), so --skip-existing cannot tell {them} from "
            f"another input's of the same name: {its} images are made again"
        )


def subfolders_not_read(folders: Sequence[Path]) -> None:
    """A status line naming the subfolders a run without --recursive passes over."""
    if folders:
        names = listing([f"{p}{os.sep}" for p in folders], 3)
        ui.info(
            f"{counted(len(folders), 'subfolder')} not read ({names}): add --recursive (-r) to read "
            f"{'it' if len(folders) == 1 else 'them'} too"
        )


def named_not_read(sources: Sequence[str], not_images: Sequence[Path]) -> None:
    """Warn, under --quiet too, of files named one by one that pdseg does not read: the summary
    lists the files it skipped, but a quiet run would drop a file asked for by name in silence."""
    named = {Path(source).expanduser() for source in sources}
    # a named pipe or a device named one by one is refused before this (collect_inputs)
    files = [path for path in _sorted_out(not_images)[2] if Path(path) in named]
    if files:
        ui.warn(_not_read(files))


def _sorted_out(not_images: Sequence[Path]) -> tuple[list[str], list[str], list[str], list[str]]:
    """The files not read, as (broken links or link loops, links to folders not followed, files of
    a kind pdseg does not read, named pipes, devices and sockets)."""
    broken: list[str] = []
    folder_links: list[str] = []
    others: list[str] = []
    special: list[str] = []
    for path in not_images:
        if is_broken_link(path):
            broken.append(str(path))
        elif is_unfollowed_folder_link(path):
            folder_links.append(str(path))
        elif is_special(path):
            special.append(str(path))
        else:
            others.append(str(path))
    return broken, folder_links, others, special


def _not_read(files: Sequence[str]) -> str:
    line = f"skipped, not a kind pdseg reads ({', '.join(IMAGE_KINDS)}): {listing(files, 5)}"
    if convert := convert_phone_photos(map(Path, files)):  # what a folder of photos often holds
        line += f"; {convert}"
    return line


def _not_files(paths: Sequence[str]) -> str:
    return f"skipped, not files (a named pipe, a device or a socket, or a link to one): {listing(paths, 5)}"


def summary(result: PredictSummary, *, table_on_stderr: bool = False) -> None:
    """The end summary table (stdout), then the files not read, warnings, and the failed files'
    count with how to go on (stderr; :func:`progress` named each failed file as it failed).

    Args:
        result: a ``pdseg_cli.engine.predict_summary.PredictSummary``; one with no device is of a
            run that had nothing to do and loaded no model
            (:func:`pdseg_cli.engine.predict_summary.nothing_left`).
        table_on_stderr: stdout carries ``--json -``.
    """
    peak = max(result.peak_memory, key=lambda m: m.bytes)
    rows: list[tuple[str, str]] = [
        ("done", str(result.done)),
        ("skipped (outputs exist)", str(result.skipped)),
        ("failed", str(result.failed)),
        ("other files (not read)", str(len(result.not_images))),
        # a run with nothing left to do segmented nothing: no "0.0 s" and "0.00 images / s"
        *(
            [
                # first read to last write: start-up and the model's loading (seconds) come before
                ("time (model loaded)", ui.duration(result.wall_seconds)),
                ("images / s", f"{result.images_per_second:.2f}"),
            ]
            if result.device
            else []
        ),
        (
            f"peak memory ({peak.what})",
            _bytes(peak.bytes) + (f" (rank {peak.rank})" if result.world_size > 1 else ""),
        ),
    ]
    caption = (
        f"{result.device} · {result.precision} · size {result.size}" if result.device else "no model loaded"
    )
    if result.world_size > 1:  # the start line gave this process's share; these are everyone's
        caption += f" · {result.world_size} processes, counts of all"
    ui.table(
        "pdseg predict", ["", "value"], rows, numeric=[False, True], caption=caption, stderr=table_on_stderr
    )
    broken, folder_links, others, special = _sorted_out(result.not_images)
    if others:
        ui.info(_not_read(others))
    if special:
        ui.warn(_not_files(special))
    if folder_links:
        links = listing(folder_links, 5)
        ui.info(f"not followed, links to folders read already or back up the tree: {links}")
    if broken:
        ui.warn(f"skipped, broken links or link loops: {listing(broken, 5)}")
    warnings = [w for r in result.results for w in r.warnings]
    for w in dict.fromkeys(warnings):
        ui.warn(w)
    if not result.failed:
        return
    # not "a damaged file": the line may as well be --max-pixels's limit or an unwritable output
    fix = "each line says what went wrong and what to do; once that is done, run the same command again"
    if result.done:  # the rest were written: the rerun need only do these
        fix += " with --skip-existing to segment only these (the other images were written)"
    # named one by one as they failed, however many (a list here would repeat them, or be cut)
    lines = "the error line" if result.failed == 1 else "the error lines"
    ui.error(f"{counted(result.failed, 'image')} failed, named in {lines} above", hint=fix)


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _failure_line(r: Any) -> str:
    """A failed file's line: its path, then what went wrong (said once where the error names it)."""
    return str(r.error) if str(r.path) in (r.error or "") else f"{r.path}: {r.error}"
