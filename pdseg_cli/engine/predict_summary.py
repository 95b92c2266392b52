"""What a folder run of ``pdseg predict`` reports: one :class:`FileResult` per input, and the summary.

Under torchrun every process reports its share and :func:`merge_summaries` makes one summary of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pdseg_cli import runtime
from pdseg_cli.errors import RunFailed

if TYPE_CHECKING:
    from pdseg_cli.engine.predict_plan import PredictPlan


@dataclass
class FileResult:
    """What happened to one input file.

    Attributes:
        path: the input.
        status: "done", "skipped" or "failed".
        outputs: the files written.
        error: why it failed (one line), or None.
        warnings: things to tell the user (e.g. multi-page TIFF).
        index: its position in the whole run.
    """

    path: Path
    status: Literal["done", "skipped", "failed"]
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    index: int = 0


@dataclass
class Stop:
    """The write that stopped a run (:class:`OutputWriteStopped`).

    Attributes:
        result: the file's result, failed (also among the run's results).
        errno: the write error's number (``errno.ENOSPC`` for a full disk).
    """

    result: FileResult
    errno: int


@dataclass
class PeakMemory:
    """One process's peak memory."""

    rank: int
    device: str
    bytes: int
    what: str


@dataclass
class PredictSummary:
    """The outcome of a folder run (merged over all torchrun processes).

    Attributes:
        results: one per image, in input order.
        not_images: files that are not images (skipped, counted).
        wall_seconds: from the first read to the last write (slowest process).
        peak_memory: one entry per process.
        device, precision, size: how the model ran ("size" is "full" or the side length).
        world_size: number of processes.
        left_in_out: images in ``--out`` that a recursive walk left out and that are not outputs of
            these inputs: not segmented (:func:`pdseg_cli.engine.predict_plan.images_left_in_out`).
        own_outputs: pdseg's own outputs found among a folder's or pattern's images: left out
            (:func:`pdseg_cli.engine.predict_plan.split_own_outputs`).
        stopped: the write that stopped the run (a full disk: :class:`OutputWriteStopped`), the
            first in input order under torchrun; None when the run went to the end.
        interrupted: a Ctrl-C or a stop signal ended the run before its end (one process);
            ``stop_signal`` names which (``SIGINT`` for a Ctrl-C, ``SIGTERM``, ``SIGHUP``).
        model_warnings: what the maps say against how the model is read (``Predictor.doubts``: a
            foreign ONNX output taken as a logit that gives probabilities), every process's.
    """

    results: list[FileResult]
    not_images: list[Path]
    wall_seconds: float
    peak_memory: list[PeakMemory]
    device: str
    precision: str
    size: str
    world_size: int = 1
    left_in_out: list[Path] = field(default_factory=list)
    own_outputs: list[Path] = field(default_factory=list)
    stopped: Stop | None = None
    interrupted: bool = False
    not_reached: list[Path] = field(default_factory=list)
    stop_signal: str | None = None
    model_warnings: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        # what a notebook shows for a run: the counts, not one FileResult per image
        stop = "interrupted" if self.interrupted else "write failed" if self.stopped else None
        return (
            f"PredictSummary(done={self.done}, skipped={self.skipped}, failed={self.failed}, "
            f"not_images={len(self.not_images)}, wall_seconds={self.wall_seconds:.1f}, "
            f"device={self.device!r}, size={self.size!r}, stopped={stop!r})"
        )

    def _count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def done(self) -> int:
        return self._count("done")

    @property
    def skipped(self) -> int:
        return self._count("skipped")

    @property
    def failed(self) -> int:
        return self._count("failed")

    @property
    def failures(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def images_per_second(self) -> float:
        return self.done / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_json(self, settings: dict[str, Any] | None = None) -> dict[str, Any]:
        """``pdseg predict --json``: the counts, then one entry per input in input order
        (``{"input", "status": done|skipped|failed, "outputs", "error", "warnings"}``), the files
        that are not images, ``settings`` (the weights, the options) with how the model ran, and
        ``stopped``: None for a run that went to the end, else why it stopped (``interrupted``, or
        the write error that stopped it), the signal that interrupted it (``SIGINT`` for a Ctrl-C,
        ``SIGTERM`` for a kill or a scheduler's time limit; None after a write error) and the
        inputs it did not reach."""
        why = "interrupted" if self.interrupted else self.stopped.result.error if self.stopped else None
        stop = (
            None
            if why is None
            else {
                "why": why,
                "signal": self.stop_signal if self.interrupted else None,
                "not_reached": [str(p) for p in self.not_reached],
            }
        )
        return {
            "counts": {
                "done": self.done,
                "skipped": self.skipped,
                "failed": self.failed,
                "not_images": len(self.not_images),
            },
            "files": [
                {
                    "input": str(r.path),
                    "status": r.status,
                    "outputs": [str(p) for p in r.outputs],
                    "error": r.error,
                    "warnings": r.warnings,
                }
                for r in self.results
            ],
            "not_images": [str(p) for p in self.not_images],
            "left_in_out": [str(p) for p in self.left_in_out],
            "own_outputs": [str(p) for p in self.own_outputs],
            "run": {
                "device": self.device or None,  # None: nothing to do, no model loaded
                "precision": self.precision or None,
                "size": self.size or None,
                "processes": self.world_size,
                "wall_seconds": round(self.wall_seconds, 3),
                "peak_memory_bytes": max((m.bytes for m in self.peak_memory), default=0),
                # for a script: the warning printed after the table, that the maps may be grey
                "model_warnings": self.model_warnings,
            },
            "settings": settings or {},
            "stopped": stop,
        }


def not_reached(plan: PredictPlan, results: Sequence[FileResult]) -> list[Path]:
    """The inputs of ``plan`` (the whole run's) with no result: what a stopped run left to do."""
    reached = {r.index for r in results}
    items = sorted([*plan.todo, *plan.skipped], key=lambda item: item.index)
    return [item.path for item in items if item.index not in reached]


def merge_summaries(parts: Sequence[PredictSummary]) -> PredictSummary:
    """One summary from every torchrun process's (results in input order, slowest wall time)."""
    first = parts[0]
    results = sorted((r for p in parts for r in p.results), key=lambda r: r.index)
    return PredictSummary(
        results=results,
        not_images=first.not_images,
        wall_seconds=max(p.wall_seconds for p in parts),
        peak_memory=[m for p in parts for m in p.peak_memory],
        device=", ".join(dict.fromkeys(p.device for p in parts)),
        precision=first.precision,
        size=first.size,
        world_size=len(parts),
        left_in_out=first.left_in_out,
        own_outputs=first.own_outputs,
        stopped=min((p.stopped for p in parts if p.stopped), key=lambda s: s.result.index, default=None),
        model_warnings=list(dict.fromkeys(w for p in parts for w in p.model_warnings)),
    )


def nothing_left(plan: PredictPlan, world_size: int = 1) -> PredictSummary:
    """The summary of a run whose every image has its outputs already (``--skip-existing``), made
    from the whole run's plan alone: no model is loaded and no device chosen for it, so device,
    precision and size are empty, and the memory is this process's own."""
    return PredictSummary(
        results=[FileResult(item.path, "skipped", index=item.index) for item in plan.skipped],
        not_images=plan.not_images,
        wall_seconds=0.0,
        peak_memory=[PeakMemory(0, "cpu", runtime.peak_rss(), "resident memory of the process")],
        device="",
        precision="",
        size="",
        world_size=world_size,
        left_in_out=plan.left_in_out,
        own_outputs=plan.own_outputs,
    )


class PredictInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM/SIGHUP) stopped a run of one process: a KeyboardInterrupt as any other,
    carrying what the run did up to it, for the ``--json`` a stopped run still writes.

    Attributes:
        summary: the results so far (``interrupted`` set).
    """

    def __init__(self, summary: PredictSummary) -> None:
        super().__init__()
        self.summary = summary


class OutputWriteStopped(RunFailed):
    """A write that no later image could escape (the disk or the quota full, the file system gone
    read-only) stopped the run at once, rather than every image left being decoded and segmented
    only to fail the same way. The outputs written before it are kept, each whole.

    Attributes:
        summary: what the run did up to the stop (merged over torchrun's processes); its
            ``stopped`` names the file whose write failed.
    """

    def __init__(self, message: str, hint: str, summary: PredictSummary) -> None:
        super().__init__(message, hint)
        self.summary = summary
