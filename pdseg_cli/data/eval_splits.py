"""Which splits ``pdseg eval`` scores: ``--split`` values to folders, the overall row, ``--pred`` folders.

The folder layout is :mod:`pdseg_cli.data.dis5k`'s (the one training reads): a split folder holds
``gt/`` masks, and ``im/`` images when a model is run on it. Scoring needs only ``gt/``, so a split
is accepted here without ``im/``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pdseg_cli.data.dis5k import (
    IMAGE_DIR,
    IMAGE_EXT,
    MASK_DIR,
    MASK_EXT,
    TEST_SPLITS,
    TRAIN_SPLIT,
    VAL_SPLIT,
    nested_root_hint,
    resolve_root,
)
from pdseg_cli.errors import DataError, counted

EVAL_SPLITS = (VAL_SPLIT, *TEST_SPLITS)  # the DIS5K splits with published scores (not the training split)
TEST_GROUP = "DIS-TE"  # the four test splits, plus the overall row
OVERALL_NAME = "DIS-TE (overall)"  # the mean of the four test split rows (docs/metrics.md, 'DIS-TE overall')

SPLIT_LAYOUT = (
    f"expected layout: <root>/<split>/{MASK_DIR}/<stem>{MASK_EXT} (and <root>/<split>/{IMAGE_DIR}/<stem>"
    f"{IMAGE_EXT} to run a model), with <split> one of " + ", ".join(EVAL_SPLITS)
)


def _no_masks_hint(key: str, folder: Path) -> str:
    """The fix for a ``--split`` folder of one's own without ``gt/``, by what it holds: masks to
    add beside its ``im/``, or a folder of plain photos (not the DIS5K layout to read about)."""
    from pdseg_cli.data import images as imio

    if (folder / IMAGE_DIR).is_dir():
        return f"add {key}/{MASK_DIR}/ with one mask per image of {key}/{IMAGE_DIR}/ (<stem>{MASK_EXT})"
    try:
        loose = any(p.is_file() and imio.is_image_file(p) for p in folder.iterdir())
    except OSError:
        loose = False
    if loose:
        return (
            f"add {key}/{MASK_DIR}/ with one mask per image (<stem>{MASK_EXT}), and move the images "
            f"into {key}/{IMAGE_DIR}/ to run a model on them"
        )
    return SPLIT_LAYOUT


def resolve_splits(
    values: Sequence[str], data_root: str | os.PathLike[str] | None
) -> tuple[list[tuple[str, Path]], dict[str, list[str]]]:
    """Turn ``--split`` values into (name, split folder) and the overall rows to add.

    ``DIS-VD`` and ``DIS-TE1``..``DIS-TE4`` are folders under the DIS5K root (``data_root``, else
    ``$PDSEG_DATA``, else ``./DIS5K``); ``DIS-TE`` is the four test splits; anything else must be
    a folder holding ``gt/``. Whenever all four test splits are scored (``DIS-TE``, or the four
    named), the ``DIS-TE (overall)`` row, the mean of their four rows, is added; never for fewer,
    since published overall numbers are over DIS-TE1..4, nor over DIS-VD or other folders.

    Raises:
        DataError: an unknown name, a missing root or split folder (the message shows the layout).
    """
    names_upper = {n.upper(): n for n in (*EVAL_SPLITS, TEST_GROUP)}
    out: list[tuple[str, Path]] = []
    pooled: dict[str, list[str]] = {}
    root: Path | None = None

    def dis_root() -> Path:
        # looked up only when a DIS5K name is given: a folder of one's own needs no DIS5K root
        nonlocal root
        if root is None:
            root = resolve_root(data_root, layout=SPLIT_LAYOUT)
        return root

    def add(name: str, folder: Path) -> None:
        for seen_name, seen_folder in out:
            if seen_name == name:
                if seen_folder.resolve() != folder.resolve():
                    raise DataError(
                        f"two splits are named {name}: {seen_folder} and {folder}",
                        hint="splits are named after their folder; rename one of them",
                    )
                return  # asked twice
        out.append((name, folder))

    named: set[str] = set()  # the DIS5K splits asked for by name (a folder of one's own is not one)
    for key in _split_values(values):
        canonical = names_upper.get(key.upper())
        if canonical == TEST_GROUP:
            for member in TEST_SPLITS:
                add(member, scored_split_folder(dis_root(), member))
            named.update(TEST_SPLITS)
        elif canonical is not None:
            add(canonical, scored_split_folder(dis_root(), canonical))
            named.add(canonical)
        else:
            folder = Path(key).expanduser()
            if key.upper() == TRAIN_SPLIT and not folder.is_dir():
                try:
                    where = dis_root() / TRAIN_SPLIT
                except DataError:  # no DIS5K root here: the folder as the layout names it
                    where = Path("DIS5K") / TRAIN_SPLIT
                raise DataError(
                    f"--split {key}: the training split has no published scores, so it is not one of "
                    f"the names ({', '.join((*EVAL_SPLITS, TEST_GROUP))})",
                    hint=f"to score it anyway (how well a model fits what it trained on), give its "
                    f"folder: --split {where}",
                )
            if not folder.is_dir():
                close = difflib.get_close_matches(key.upper(), list(names_upper), n=1, cutoff=0.6)
                raise DataError(
                    f"--split {key}: not a DIS5K split name nor a folder",
                    hint=(f"did you mean {names_upper[close[0]]}? " if close else "")
                    + f"names: {', '.join((*EVAL_SPLITS, TEST_GROUP))}; or give a folder that holds "
                    f"{MASK_DIR}/",
                )
            if not (folder / MASK_DIR).is_dir():
                raise DataError(
                    f"--split {key}: the folder has no {MASK_DIR}/ subfolder",
                    hint=_no_masks_hint(key, folder),
                )
            add(folder.resolve().name, folder)
    # the same four splits give the same table however they were asked for by name; folders of
    # one's own that happen to be called DIS-TE1..4 are not DIS5K's, so they get no such row
    if named.issuperset(TEST_SPLITS):
        pooled[OVERALL_NAME] = list(TEST_SPLITS)
    return out, pooled


def overall_row_notes(
    splits: Sequence[tuple[str, Path]], pooled: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """Why there is no ``DIS-TE (overall)`` row when the scored folders are called DIS-TE1..4 but
    were given as paths (:func:`resolve_splits` adds the row only for the splits named): one note,
    on the last of the four, so that the table's notes and the JSON say it once; else ``{}``.

    Args:
        splits: (name, split folder), as :func:`resolve_splits` returns them.
        pooled: the overall rows it returns.
    """
    if OVERALL_NAME in pooled:
        return {}
    test = {name.upper(): (name, folder) for name, folder in splits if name.upper() in TEST_SPLITS}
    if len(test) < len(TEST_SPLITS):
        return {}
    parents = {folder.expanduser().resolve().parent for _, folder in test.values()}
    # the command that gives the row, when the four folders sit side by side as in a DIS5K root and
    # under the names it looks up (a folder matched here as dis-te1 would not be found)
    root = parents.pop() if len(parents) == 1 else None
    instead = (
        f"; if these are DIS5K's: --split {TEST_GROUP} --data-root {root}"
        if root is not None and all((root / name).is_dir() for name in TEST_SPLITS)
        else ""
    )
    note = (
        f"no {OVERALL_NAME} row: it is given only when the four test splits are named (--split "
        f"{TEST_SPLITS[0]} ... {TEST_SPLITS[-1]} --data-root ROOT, or --split {TEST_GROUP} --data-root "
        f"ROOT), not given as folders{instead}"
    )
    last = [name for name, _ in splits if name.upper() in TEST_SPLITS][-1]
    return {last: [note]}


# How many GT masks each DIS5K split has as published (Qin et al., ECCV 2022): a row over another
# count is not the row published tables give (a partial download, or a subset scored on purpose)
PUBLISHED_SIZES = {VAL_SPLIT: 470, **{name: 500 for name in TEST_SPLITS}}


def published_size_notes(gt_counts: Mapping[str, int]) -> dict[str, list[str]]:
    """A note for each DIS5K split whose GT count ({split: GTs found}) is not the published one,
    so that its row (and the overall row over it) is not taken for the published figure; else {}."""
    return {
        name: [
            f"{name}: {counted(n, 'GT mask')} here, {published} in DIS5K's {name}: its row is not "
            "comparable with published tables (a partial copy of the split?)"
        ]
        for name, n in gt_counts.items()
        if (published := PUBLISHED_SIZES.get(name)) is not None and n != published
    }


def _split_values(values: Sequence[str]) -> list[str]:
    """``--split`` values, a comma list split up (``DIS-TE1,DIS-TE2``, as ``--save`` takes them)
    unless the whole value is a folder."""
    out: list[str] = []
    for value in values:
        if Path(value.strip()).expanduser().is_dir():
            out.append(value.strip())
        else:
            out += [part.strip() for part in value.split(",") if part.strip()]
    return out


def scored_split_folder(root: Path, name: str) -> Path:
    """``root / name``, checked to hold ``gt/`` (all that scoring needs).

    Raises:
        DataError: the split folder or its ``gt/`` is missing (naming the splits the root holds).
    """
    folder = root / name
    if not (folder / MASK_DIR).is_dir():
        present = [s for s in EVAL_SPLITS if (root / s / MASK_DIR).is_dir()]
        what = "not found" if not folder.is_dir() else f"has no {MASK_DIR}/ subfolder"
        nested = nested_root_hint(root, name) if not folder.is_dir() else None
        raise DataError(
            f"split {name} {what} under the DIS5K root {root}",
            hint=nested or ((f"the root holds {', '.join(present)}; " if present else "") + SPLIT_LAYOUT),
        )
    return folder


def prediction_folder(pred_root: Path, name: str, several: bool, split_dir: Path | None = None) -> Path:
    """Where ``--pred`` keeps a split's maps: ``pred_root/<name>/`` if it exists (or, for a DIS5K
    split, ``pred_root/DIS5K-TE1/`` as IS-Net's inference names it), else ``pred_root``.

    With several splits, each must have its own subfolder. The split's own ``im/`` (``split_dir``)
    is refused: its photos, read as gray maps, gave a table of plausible-looking low scores.

    Raises:
        DataError: the folder is missing, or is the split's image folder.
    """
    for sub in _prediction_subfolders(pred_root, name):
        if sub.is_dir():
            return _not_the_images(sub, pred_root, name, split_dir)
    if several:
        raise DataError(
            f"--pred {pred_root}: no subfolder {name}/ for split {name}",
            hint="with several splits, keep each split's maps in <pred>/<split>/<stem>.png",
        )
    if not pred_root.is_dir():
        what = "is a file" if pred_root.exists() else "does not exist"
        raise DataError(
            f"--pred {pred_root} {what}: it takes the folder of prediction maps",
            hint="give the folder that holds <stem>.png per GT (or <split>/<stem>.png per split)",
        )
    return _not_the_images(pred_root, pred_root, name, split_dir)


def _not_the_images(found: Path, pred_root: Path, name: str, split_dir: Path | None) -> Path:
    """``found``, unless it is the split's own image folder (see :func:`prediction_folder`)."""
    images = split_dir / IMAGE_DIR if split_dir is not None else None
    if images is not None and images.is_dir() and os.path.samefile(found, images):
        raise DataError(
            f"--pred {pred_root} is {name}'s image folder ({images}): --pred takes a model's maps of "
            "those images, not the images",
            hint="drop --pred to run a model on them (--weights FILE, default the bundled weights), or "
            "give the folder of saved maps (pdseg predict IMAGES -o MAPS writes them)",
        )
    return found


def _prediction_subfolders(pred_root: Path, name: str) -> list[Path]:
    """The subfolders that may hold a split's maps: its own name, and for DIS5K splits IS-Net's
    ``DIS5K-<suffix>`` (``DIS-TE1`` -> ``DIS5K-TE1``)."""
    names = [name]
    if name in EVAL_SPLITS:
        names.append("DIS5K-" + name.removeprefix("DIS-"))
    return [pred_root / n for n in names]
