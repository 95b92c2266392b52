"""What a folder run of ``pdseg predict`` reports: one :class:`FileResult` per input, and the summary.

Under torchrun every process reports its share and :func:`merge_summaries` makes one summary of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


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
    )
