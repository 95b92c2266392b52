"""What ``pdseg eval`` reports: per-image records, split and overall rows, and their JSON and CSV.

:func:`pdseg_cli.engine.evaluate.evaluate` returns an :class:`EvalReport`; ``docs/metrics.md``
explains every value. The JSON and CSV key names are part of the CLI: they do not change.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

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
            ``pdseg_cli.engine.eval_notes.NOTE_TEXT``: 16-bit file, colour file, a GT that reads as empty).
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
        if self.notes:  # the split's warning lines name five files; every file's own are here
            out["notes"] = [kind for kind, _ in self.notes]
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
        no_gt: image files in ``im/`` without a GT, not predicted (``--weights`` runs).
        warnings: one line per thing the user should know.
        seconds: wall time of the scoring run that produced it (all its splits together).
        sources: the image each map was made from, by stem, when the model ran on the split
            (``--weights``; empty for ``--pred``): a resized map's size is then its image's.
    """

    name: str
    gt_dir: Path
    pred_dir: Path | None
    images: list[ImageRecord] = field(repr=False)  # one record per image: in to_json, not the repr
    scores: DatasetScores
    missing: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    no_gt: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sources: dict[str, Path] = field(default_factory=dict, repr=False)

    @property
    def resized(self) -> int:
        """How many predictions were resized to their GT's size."""
        return sum(r.resized for r in self.images)

    @property
    def cache_hits(self) -> int:
        return sum(r.cached for r in self.images)

    def row(self) -> dict[str, Any]:
        """The split's values under the report's key names (E = mean E), then how many predictions
        were ``resized`` and how many GT masks are ``missing`` from the row (``--allow-missing``)."""
        return {**self.scores.as_dict(), "resized": self.resized, "missing": len(self.missing)}


OVERALL_RULE = "unweighted mean of its split rows, metric by metric"  # the JSON row's "combined" value


@dataclass
class PooledResult:
    """A row combining several split rows, e.g. DIS-TE (overall): every value is the unweighted
    mean of the split rows' values, as published DIS tables form "Overall DIS-TE (1-4)"
    (``docs/metrics.md``, 'DIS-TE overall'). The class keeps its old name (it once pooled the
    images), since Python users may import it.

    Attributes:
        name: the row's name.
        members: the splits it combines, in order.
        scores: the mean of the members' values; ``count`` is their total of scored images, and the
            curves are the mean of theirs (so ``max_f`` is not the maximum of ``f_curve``).
        resized: predictions resized in all members together.
        missing: GT masks left out of all members together (``--allow-missing``).
    """

    name: str
    members: list[str]
    scores: DatasetScores
    resized: int = 0
    missing: int = 0

    @classmethod
    def mean_of(cls, name: str, splits: Sequence[SplitResult]) -> PooledResult:
        """The row whose values are the unweighted mean of ``splits``' values.

        Raises:
            ValueError: no splits.
        """
        if not splits:
            raise ValueError(f"{name}: no split rows to average")
        values: dict[str, Any] = {}
        for f in fields(DatasetScores):
            if f.name == "count":
                continue
            # every split weighs 1, whatever its size: a published overall row is the mean of its
            # split rows (maxF too, which pooling all images would put below that mean)
            mean = np.mean(np.array([getattr(s.scores, f.name) for s in splits], dtype=np.float64), axis=0)
            values[f.name] = float(mean) if mean.ndim == 0 else mean
        scores = DatasetScores(count=sum(s.scores.count for s in splits), **values)
        return cls(
            name,
            [s.name for s in splits],
            scores,
            resized=sum(s.resized for s in splits),
            missing=sum(len(s.missing) for s in splits),
        )

    def row(self) -> dict[str, Any]:
        """The values under the split rows' keys (``count``, ``resized`` and ``missing`` summed over
        the members), then ``pooled_from`` (the members; the key predates the mean) and ``combined``."""
        return {
            **self.scores.as_dict(),
            "resized": self.resized,
            "missing": self.missing,
            "pooled_from": list(self.members),
            "combined": OVERALL_RULE,
        }


@dataclass
class EvalReport:
    """What ``pdseg eval`` prints and writes.

    Attributes:
        splits: one result per split, in the order asked for.
        pooled: overall rows (e.g. DIS-TE (overall), the mean of its split rows), after the splits.
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
        """GT masks left out of each row (``--allow-missing``), overall rows summing their members'."""
        missing = {split.name: len(split.missing) for split in self.splits}
        missing.update({pooled.name: pooled.missing for pooled in self.pooled})
        return missing

    def resized_counts(self) -> dict[str, int]:
        """Predictions resized to their GT's size in each row, overall rows summing their members'."""
        resized = {split.name: split.resized for split in self.splits}
        resized.update({pooled.name: pooled.resized for pooled in self.pooled})
        return resized

    def rows(self) -> list[tuple[str, DatasetScores]]:
        """(name, scores) of every table row: the splits, then the overall rows."""
        return [(s.name, s.scores) for s in self.splits] + [(p.name, p.scores) for p in self.pooled]

    def to_json(self) -> dict[str, Any]:
        """``{"splits": {NAME: {...}}, "images": {NAME: {STEM: {...}}}, "curves": ..., "settings": ...}``.

        Split and image values use the keys maxF, wF, MAE, S, E (mean E-measure, the DIS table's
        column), HCE, count (splits), then meanF, adpF, maxE, adpE (and the four HCE parts per
        image; an image whose map had another size adds ``resized_from_hw``, and one with a file
        read in a way to know about adds ``notes``, the kinds of ``eval_notes.NOTE_TEXT``). Every row
        of ``splits`` then has ``resized`` and ``missing``, as the CSV does; an overall row adds
        ``pooled_from`` and ``combined``. Curves are 256 values in ascending
        threshold order (an overall row's: the mean of its splits' curves). ``notes`` holds every
        warning the run printed about a split.
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
                s.name: {
                    "warnings": s.warnings,
                    "missing": s.missing,
                    "unmatched": s.unmatched,
                    "no_gt": s.no_gt,
                }
                for s in self.splits
            },
            "settings": self.settings,
        }

    def to_csv(self) -> str:
        """One line per table row: split, count, the six table columns, the extras, then how many GT
        masks were left out of the row (``--allow-missing``; count + missing is the split's size) and
        how many predictions were resized: the same counts as the JSON rows. ``resized`` comes last
        so that readers of the older columns by position still read them."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        keys = [metric.key for metric in METRICS]
        writer.writerow(["split", "count", *keys, "missing", "resized"])
        missing, resized = self.missing_counts(), self.resized_counts()
        for name, sc in self.rows():
            values = sc.as_dict()
            scores = [repr(float(values[k])) for k in keys]
            writer.writerow([name, sc.count, *scores, missing.get(name, 0), resized.get(name, 0)])
        return buf.getvalue()
