"""Matching prediction maps with GT masks by file stem, and refusing GTs left without a prediction.

``docs/metrics.md`` says how the matched pairs are scored (:mod:`pdseg_cli.engine.evaluate`).
"""

from __future__ import annotations

import os
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from pdseg_cli import errors
from pdseg_cli.data.dis5k import images_by_stem
from pdseg_cli.data.header import looks_like_image
from pdseg_cli.errors import DataError

MAX_LISTED = 20  # files named one by one in a message; the rest are counted


@dataclass(frozen=True)
class PairPlan:
    """The files of one split to score.

    Attributes:
        name: the split's name.
        gt_dir, pred_dir: the folders.
        pairs: (stem, prediction file, GT file), sorted by stem.
        missing: GT stems without a prediction.
        unmatched: prediction stems without a GT.
        no_gt: image files in ``im/`` without a GT, which a ``--weights`` run neither predicts nor
            scores (warned about before the model runs, and kept for the JSON's notes).
        sources: the image each map was made from, by stem, when the model ran on the split
            (``--weights``): a map then has its image's size, so a size unlike the GT's is the
            image's, and the notes name the image. Empty for maps given as ``--pred``.
        notes: lines for the split's warnings (its JSON ``notes``) about how the splits were asked
            for, e.g. why there is no overall row.
    """

    name: str
    gt_dir: Path
    pred_dir: Path | None
    pairs: list[tuple[str, Path, Path]]
    missing: list[str]
    unmatched: list[str]
    no_gt: list[str] = field(default_factory=list)
    sources: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def without(self, stems: Iterable[str]) -> PairPlan:
        """This plan with ``stems`` moved from the pairs to the missing GTs: e.g. the images the
        model could not read this time, whose maps in a reused folder are from an earlier run."""
        drop = set(stems)
        pairs = [pair for pair in self.pairs if pair[0] not in drop]
        missing = sorted({*self.missing, *(stem for stem, _, _ in self.pairs if stem in drop)})
        return replace(self, pairs=pairs, missing=missing)


def list_maps(folder: Path, what: str) -> dict[str, Path]:
    """Image files of ``folder`` by stem (hidden files and non-images skipped).

    Raises:
        DataError: the folder is missing, or two files share a stem (``a.png`` and ``a.jpg``).
    """
    if not folder.is_dir():
        raise DataError(
            f"{what} folder {folder} does not exist"
            if not folder.exists()
            else f"{what} {folder} is not a folder"
        )
    by_stem, clashes = images_by_stem(folder)
    if clashes:
        names = [f"{kept.name} and {dup.name}" for kept, dup in clashes]
        raise DataError(
            f"{what} folder {folder} has several files per name: {listing(names)}",
            hint="keep one file per stem (pdseg matches predictions and GTs by file name without extension)",
        )
    return by_stem


def list_gts(gt_dir: Path) -> dict[str, Path]:
    """The GT masks of ``gt_dir`` by stem (:func:`list_maps`).

    Raises:
        DataError: as :func:`list_maps`, or the folder holds no mask.
    """
    gts = list_maps(gt_dir, "GT")
    if not gts:
        raise DataError(
            f"no GT masks in {gt_dir}", hint="expected .png (or .jpg/.bmp/.tif) masks named like the images"
        )
    return gts


def unreadable_masks(paths: Iterable[Path]) -> list[str]:
    """One line per mask that its first bytes already show cannot be read (an empty file, a text
    file named ``.png``): the check ``eval`` makes before a model pass that a bad GT would throw
    away. A damaged body behind a valid start still fails later, when the mask is scored.
    """
    bad = []
    for path in paths:
        if path.stat().st_size == 0:
            bad.append(f"{path}: the file is empty")
        elif not looks_like_image(path):
            bad.append(f"{path}: not an image (its first bytes are no image format's)")
    return bad


def plan_pairs(
    pred_dir: str | os.PathLike[str], gt_dir: str | os.PathLike[str], *, name: str | None = None
) -> PairPlan:
    """Match ``pred_dir/<stem>.*`` with ``gt_dir/<stem>.*``.

    Raises:
        DataError: a folder is missing or holds no image files, or the two are one folder.
    """
    pred_dir, gt_dir = Path(pred_dir).expanduser(), Path(gt_dir).expanduser()
    if pred_dir.resolve() == gt_dir.resolve():  # every metric would say "perfect"
        raise DataError(
            f"the predictions folder {pred_dir} is the GT folder: the masks would be scored against "
            "themselves",
            hint="give the folder of the maps a model wrote (--pred)",
        )
    gts = list_gts(gt_dir)
    preds = list_maps(pred_dir, "prediction")
    if not preds:
        raise DataError(
            f"no prediction maps in {pred_dir}",
            hint="expected one 8-bit map per GT, named like the GT (<stem>.png, as `pdseg predict` writes)",
        )
    matched = _match_stems(gts, preds)
    pairs = [(stem, preds[matched[stem]], gts[stem]) for stem in sorted(matched)]
    used = set(matched.values())
    missing = sorted(stem for stem in gts if stem not in matched)
    unmatched = sorted(stem for stem in preds if stem not in used)
    return PairPlan(name or split_name(gt_dir), gt_dir, pred_dir, pairs, missing, unmatched)


def split_name(gt_dir: Path) -> str:
    """The default name of the split whose masks are in ``gt_dir``: its parent folder's (``DIS-TE1``
    for ``DIS5K/DIS-TE1/gt``), however the path is spelled (``gt`` run from that folder, ``gt/``,
    ``./gt``, ``..``). Made absolute without following links: a masks folder linked in from
    elsewhere keeps the name of the folder it was given in."""
    folder = Path(os.path.abspath(gt_dir))
    return folder.parent.name or folder.name


def _match_stems(gts: Mapping[str, Path], preds: Mapping[str, Path]) -> dict[str, str]:
    """GT stem -> prediction stem: the same stem, else the one of the same Unicode composed form
    ("café" typed on Linux, é, and written by macOS, e + a combining accent, look the same and are
    one name to the user). Only a form that one GT and one prediction have is matched so: two
    names of one form on a side stay apart, matched exactly or not at all, never one map twice."""

    def by_form(stems: Iterable[str]) -> dict[str, str]:
        forms = Counter(_composed(stem) for stem in stems)
        return {_composed(stem): stem for stem in stems if forms[_composed(stem)] == 1}

    exact = gts.keys() & preds.keys()
    matched = {stem: stem for stem in exact}
    gt_forms, pred_forms = by_form(gts), by_form(preds)
    for form, stem in gt_forms.items():
        other = pred_forms.get(form)
        if stem not in matched and other is not None and other not in exact:
            matched[stem] = other
    return matched


def _composed(stem: str) -> str:
    return unicodedata.normalize("NFC", stem)


def check_missing(plans: Sequence[PairPlan], allow_missing: bool) -> None:
    """Refuse GTs without a prediction (unless allowed) and splits with nothing to score.

    Raises:
        DataError: naming the missing predictions (up to ``MAX_LISTED``) and their folder.
    """
    for plan in plans:
        where = plan.pred_dir if plan.pred_dir is not None else "the predictions"
        if plan.missing and not plan.pairs:  # nothing matches: a wrong folder, not a few missing maps
            unmatched = f"; its maps are named like {listing(plan.unmatched, 3)}" if plan.unmatched else ""
            raise DataError(
                f"{plan.name}: no prediction in {where} matches a GT by file stem{unmatched}",
                hint=f"is --pred the right folder? GT names look like {listing(plan.missing, 3)}",
            )
        if plan.missing and not allow_missing:
            raise DataError(
                f"{plan.name}: {len(plan.missing)} of {len(plan.missing) + len(plan.pairs)} GT masks have no "
                f"prediction in {where}: {listing(plan.missing)}",
                hint="add the missing maps, or pass --allow-missing to score only the "
                f"{errors.counted(len(plan.pairs), 'image')} that have one (not comparable to "
                "full-split numbers)",
            )


def listing(items: Sequence[str], limit: int = MAX_LISTED, sep: str = ", ") -> str:
    """``a, b, c and 7 more``, at most ``MAX_LISTED`` named by default."""
    return errors.listing(items, limit, sep)
