"""What ``pdseg eval`` reports: per-image records, split and pooled rows, and their JSON and CSV.

:func:`pdseg_cli.engine.evaluate.evaluate` returns an :class:`EvalReport`; ``docs/metrics.md``
explains every value. The JSON and CSV key names are part of the CLI: they do not change.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdseg_cli.metrics.aggregate import DatasetScores
from pdseg_cli.metrics.image import ImageScores
from pdseg_cli.metrics.table import METRICS


@dataclass(frozen=True)
class ImageRecord:
    """One scored image.

    Attributes:
        stem: the file stem shared by prediction and GT.
        scores: every metric of the image.
        pred_size: (H, W) of the prediction before resizing.
        gt_size: (H, W) of the GT (the size the metrics ran at).
        cached: the GT-only data came from the cache.
        notes: (kind, file) for what the user should know about how a file was read (a key of
            ``pdseg_cli.engine.evaluate.NOTE_TEXT``: 16-bit file, colour file, a GT that reads as empty).
    """

    stem: str
    scores: ImageScores
    pred_size: tuple[int, int]
    gt_size: tuple[int, int]
    cached: bool = False
    notes: tuple[tuple[str, str], ...] = ()

    @property
    def resized(self) -> bool:
        return self.pred_size != self.gt_size

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.scores.as_dict())
        if self.resized:
            out["resized_from_hw"] = list(self.pred_size)
        return out


@dataclass
class SplitResult:
    """The scores of one split (one dataset folder).

    Attributes:
        name: the split's name (``DIS-TE1``, or the folder name for a folder).
        gt_dir: where the GTs are.
        pred_dir: where the predictions were read from.
        images: one record per scored image, sorted by stem.
        scores: the dataset values.
        missing: GT stems without a prediction (only with ``allow_missing``).
        unmatched: prediction stems without a GT (ignored).
        warnings: one line per thing the user should know.
        seconds: wall time of the scoring run that produced it (all its splits together).
    """

    name: str
    gt_dir: Path
    pred_dir: Path | None
    images: list[ImageRecord] = field(repr=False)  # one record per image: in to_json, not the repr
    scores: DatasetScores
    missing: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def resized(self) -> int:
        """How many predictions were resized to their GT's size."""
        return sum(r.resized for r in self.images)

    @property
    def cache_hits(self) -> int:
        return sum(r.cached for r in self.images)

    def row(self) -> dict[str, Any]:
        """The split's values under the report's key names (E = mean E), plus ``resized``."""
        return {**self.scores.as_dict(), "resized": self.resized}


@dataclass
class PooledResult:
    """A row over the images of several splits (each image weight 1), e.g. DIS-TE (overall)."""

    name: str
    members: list[str]
    scores: DatasetScores

    def row(self) -> dict[str, Any]:
        return {**self.scores.as_dict(), "pooled_from": list(self.members)}


@dataclass
class EvalReport:
    """What ``pdseg eval`` prints and writes.

    Attributes:
        splits: one result per split, in the order asked for.
        pooled: pooled rows (e.g. DIS-TE (overall)), after the splits.
        settings: how the numbers were computed (metric settings, versions, inputs).
    """

    splits: list[SplitResult]
    pooled: list[PooledResult] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> SplitResult:
        for s in self.splits:
            if s.name == name:
                return s
        raise KeyError(name)

    def missing_counts(self) -> dict[str, int]:
        """GT masks left out of each row (``--allow-missing``), pooled rows summing their members'."""
        missing = {split.name: len(split.missing) for split in self.splits}
        for pooled in self.pooled:
            missing[pooled.name] = sum(missing.get(m, 0) for m in pooled.members)
        return missing

    def rows(self) -> list[tuple[str, DatasetScores]]:
        """(name, scores) of every table row: the splits, then the pooled rows."""
        return [(s.name, s.scores) for s in self.splits] + [(p.name, p.scores) for p in self.pooled]

    def to_json(self) -> dict[str, Any]:
        """``{"splits": {NAME: {...}}, "images": {NAME: {STEM: {...}}}, "curves": ..., "settings": ...}``.

        Split and image values use the keys maxF, wF, MAE, S, E (mean E-measure, the DIS table's
        column), HCE, count (splits), then meanF, adpF, maxE, adpE (and the four HCE parts per
        image). Curves are 256 values in ascending threshold order.
        """
        splits: dict[str, Any] = {s.name: s.row() for s in self.splits}
        splits.update({p.name: p.row() for p in self.pooled})
        return {
            "splits": splits,
            "images": {s.name: {r.stem: r.as_dict() for r in s.images} for s in self.splits},
            "curves": {
                name: {"F": sc.f_curve.tolist(), "E": sc.e_curve.tolist()} for name, sc in self.rows()
            },
            "notes": {
                s.name: {"warnings": s.warnings, "missing": s.missing, "unmatched": s.unmatched}
                for s in self.splits
            },
            "settings": self.settings,
        }

    def to_csv(self) -> str:
        """One line per table row: split, count, the six table columns, the extras, then how many GT
        masks were left out of the row (``--allow-missing``; count + missing is the split's size)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        keys = [metric.key for metric in METRICS]
        writer.writerow(["split", "count", *keys, "missing"])
        missing = self.missing_counts()
        for name, sc in self.rows():
            values = sc.as_dict()
            writer.writerow([name, sc.count, *(repr(float(values[k])) for k in keys), missing.get(name, 0)])
        return buf.getvalue()
