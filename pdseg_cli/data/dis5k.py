"""DIS5K-layout datasets: where the splits live, image/mask pairing, and the training sample cache.

A dataset folder holds ``im/`` (images) and ``gt/`` (masks) with the same file stems, as DIS5K
does (``DIS5K/DIS-TR/im/*.jpg``, ``DIS5K/DIS-TR/gt/*.png``). The DIS5K root is ``--data-root``,
else ``$PDSEG_DATA``, else ``./DIS5K`` (:func:`resolve_root`). This module holds the one copy of
that layout: training reads it here, and ``pdseg eval`` through :mod:`pdseg_cli.data.eval_splits`.

Training decodes every pair once, resizes it to the square training size, and keeps the result
(:class:`SampleStore`): in memory, as ``.npy`` files in a cache folder (memory-mapped on read, shared
by runs on the same data), or not at all. That first pass also proves every file readable, so bad
pairs are reported by name before any training step (:func:`prepare_samples`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from pdseg_cli.data import images as imio
from pdseg_cli.data.atomic import atomic_path, sweep_folder
from pdseg_cli.data.augment import AugmentConfig, augment, paste_object, paste_rng, sample_rng
from pdseg_cli.data.teacher import blend_targets, harden_map
from pdseg_cli.errors import DataError, PdsegError, RunFailed, close_sibling, counted, listing
from pdseg_cli.metrics.common import GT_THRESHOLD
from pdseg_cli.metrics.reading import (
    COLOUR_MASK,
    FAINT_MASK,
    MASK_IN_ALPHA,
    PICTURE_MASK,
    SIXTEEN_BIT_MASK,
    ZERO_ONE_MASK,
    read_mask_file,
    training_mask_problem,
)

DATA_ENV = "PDSEG_DATA"  # the DIS5K root when --data-root is not given
DEFAULT_ROOT = Path("DIS5K")  # relative to the working directory, last resort
TRAIN_SPLIT, VAL_SPLIT = "DIS-TR", "DIS-VD"
TEST_SPLITS = ("DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")
SPLITS = (TRAIN_SPLIT, VAL_SPLIT, *TEST_SPLITS)
IMAGE_DIR, MASK_DIR = "im", "gt"  # the subfolders of every split folder
IMAGE_EXT, MASK_EXT = ".jpg", ".png"  # how DIS5K stores them; any image type pdseg reads is accepted

CacheMode = Literal["disk", "ram", "off"]
CACHE_VERSION = 3  # bump when the cached array layout, the resize rule or the masks accepted change


# ----------------------------------------------------------------------------------------------
# locating splits


def resolve_root(data_root: str | os.PathLike[str] | None, layout: str | None = None) -> Path:
    """The DIS5K root: ``data_root``, else ``$PDSEG_DATA``, else ``./DIS5K``.

    Args:
        data_root: the --data-root option, or None.
        layout: text describing the expected layout, appended to the error's hint.

    Raises:
        DataError: the chosen folder does not exist (the message says which rule chose it).
    """
    if data_root is not None:
        root, source = Path(data_root).expanduser(), "--data-root"
    elif os.environ.get(DATA_ENV):
        root, source = Path(os.environ[DATA_ENV]).expanduser(), f"${DATA_ENV}"
    else:
        root, source = DEFAULT_ROOT, "the default ./DIS5K"
    if not root.is_dir():
        layout_note = f"; {layout}" if layout else ""
        if data_root is not None:  # said of the option the user typed, not "pass --data-root"
            what = "is a file, not the DIS5K folder" if root.exists() else "does not exist"
            close = None if root.exists() else close_sibling(root, folders_only=True)
            raise DataError(
                f"--data-root {data_root} {what}",
                hint=f"did you mean --data-root {close}?"
                if close is not None
                else f"give the folder that holds {TRAIN_SPLIT}/, DIS-VD/ and DIS-TE1/ .. DIS-TE4/ (DIS5K "
                f"unpacked){layout_note}",
            )
        raise DataError(
            f"DIS5K root {root} (from {source}) is not a folder",
            hint=f"pass --data-root DIR or set ${DATA_ENV} to the folder that holds {TRAIN_SPLIT}/ etc."
            + layout_note,
        )
    return root


def split_folder(root: Path, split: str, otherwise: str | None = None) -> Path:
    """``root / split``, checked to hold ``im/`` and ``gt/``.

    Args:
        root: the DIS5K root.
        split: e.g. ``DIS-TR``.
        otherwise: what else the user can do, added to the hint when the split is missing.

    Raises:
        DataError: the split folder or its ``im``/``gt`` subfolders are missing.
    """
    folder = root / split
    if not folder.is_dir():
        present = [s for s in SPLITS if (root / s).is_dir()]
        hint = nested_root_hint(root, split) or (
            f"the root holds {', '.join(present)}"
            if present
            # the layout the root should have, not a question: a user who knows where DIS5K lies
            # then sees which level to give
            else f"expected layout: <root>/{split}/{IMAGE_DIR}/<stem>{IMAGE_EXT} and "
            f"<root>/{split}/{MASK_DIR}/<stem>{MASK_EXT}, the root being the DIS5K folder that holds "
            f"{', '.join(SPLITS[:3])}..."
        )
        raise DataError(
            f"split {split} not found under {root}", hint=hint + (f"; {otherwise}" if otherwise else "")
        )
    return check_dataset_folder(folder)


def nested_root_hint(root: Path, split: str) -> str | None:
    """``did you mean --data-root ROOT/DIS5K?`` when a subfolder of ``root`` holds ``split``: the
    folder the archive unpacks into, given one level too high."""
    try:
        inner = sorted(d for d in root.iterdir() if (d / split).is_dir())
    except OSError:
        return None
    return f"did you mean --data-root {inner[0]}?" if inner else None


def shown(path: str | os.PathLike[str]) -> str:
    """``path`` as the user can open it from the working folder: relative to it when inside it
    (``L/suffix_mask/im/a.jpg``), else as it is (training resolves its folders to absolute paths)."""
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd())) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)


# Subfolder names other tools give what pdseg calls im/ and gt/ (compared in lower case).
_IMAGE_NAMES = ("images", "image", "imgs", "img", "photos", "jpegimages", "rgb", "input", "inputs")
_MASK_NAMES = (
    "masks", "mask", "labels", "label", "gts", "ground_truth", "groundtruth", "annotations",
    "segmentations", "segmentationclass", "mattes", "alpha", "targets",
)  # fmt: skip


def check_dataset_folder(
    folder: str | os.PathLike[str], *, masks_optional: bool = False, option: str | None = None
) -> Path:
    """``folder`` if it holds ``im/`` and ``gt/`` subfolders (``im/`` alone with ``masks_optional``).

    Args:
        folder: the dataset folder.
        masks_optional: ``gt/`` may be absent (training with a teacher).
        option: the option that named it (``--train``, ``--val``), for a hint that repeats it.

    Raises:
        DataError: naming what is missing, with the layout mistake behind it when one is plain (the
            ``im/`` folder itself given, ``images/`` + ``masks/``, a folder of dataset folders).
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        named = option or "dataset folder"  # "--val nothere does not exist": the option the user typed
        raise DataError(f"{named} {shown(folder)} {what}", hint=_missing_folder_hint(folder, option))
    if folder.name in (IMAGE_DIR, MASK_DIR) and (folder.parent / IMAGE_DIR).is_dir():
        # one wording for --train and --val, whether gt/ is needed or not
        raise DataError(
            f"{shown(folder)} is the {folder.name}/ folder of a dataset, not a dataset folder",
            hint=f"pass {shown(folder.parent)}, the folder that holds {IMAGE_DIR}/ and {MASK_DIR}/",
        )
    wanted = (IMAGE_DIR,) if masks_optional else (IMAGE_DIR, MASK_DIR)
    missing = [d for d in wanted if not (folder / d).is_dir()]
    if missing:
        raise DataError(
            f"dataset folder {shown(folder)} has no {' or '.join(m + '/' for m in missing)} subfolder",
            hint=_layout_hint(folder, missing, option),
        )
    return folder


def _missing_folder_hint(folder: Path, option: str | None = None) -> str:
    """How to find the folder meant: a close name beside it, or the first part of the path that is missing."""
    parent = folder.parent
    if not parent.is_dir():
        return f"{shown(parent)} does not exist either: check the path"
    close = close_sibling(folder, folders_only=True)
    if close is not None:
        return f"did you mean {option + ' ' if option else ''}{shown(close)}?"
    return f"check the path; a dataset folder holds {IMAGE_DIR}/ (images) and {MASK_DIR}/ (masks)"


def misnamed_folder(folder: Path, wanted: str) -> Path | None:
    """Where ``folder`` lacks ``wanted`` (``im`` or ``gt``), a subfolder that holds it under another
    name (``images/``, ``masks/``, or ``GT/``: the names are case-sensitive on Linux), else None."""
    if (folder / wanted).is_dir():
        return None
    aliases = (*(_IMAGE_NAMES if wanted == IMAGE_DIR else _MASK_NAMES), wanted)
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return None
    return next((c for c in children if c.is_dir() and c.name.lower() in aliases), None)


def _layout_hint(folder: Path, missing: Sequence[str], option: str | None) -> str:
    """The fix for a dataset folder without ``im/`` (or ``gt/``), by what it holds instead."""
    try:
        children = sorted(folder.iterdir())
    except OSError:
        children = []
    subfolders = [c for c in children if c.is_dir() and not c.name.startswith(".")]
    datasets = [c for c in subfolders if (c / IMAGE_DIR).is_dir()]
    if datasets and IMAGE_DIR in missing:
        if option == "--train":
            how = " ".join(f"--train {shown(d)}" for d in datasets[:4])
            return f"it holds dataset folders: pass each with its own --train, {how}" + (
                " ..." if len(datasets) > 4 else ""
            )
        flag = f"{option} " if option else ""
        names = listing([shown(d) for d in datasets], 4, sep=" or ")
        return f"it holds dataset folders: pass one of them, {flag}{names}"
    renames = []
    for wanted in (IMAGE_DIR, MASK_DIR):
        alias = misnamed_folder(folder, wanted)
        # gt/ too where only im/ is needed: masks under another name would be left unread
        if alias is not None:
            renames.append(f"{alias.name}/ to {wanted}/")
    if renames:
        return (
            f"rename {' and '.join(renames)}: pdseg pairs {IMAGE_DIR}/NAME.jpg with {MASK_DIR}/NAME.png "
            "in a dataset folder"
        )
    if IMAGE_DIR in missing and any(c.is_file() and imio.is_image_file(c) for c in children):
        # only --train may lack masks, given a teacher (--val and the DIS5K splits always need them)
        teacher_note = (
            " (with --teacher the masks are optional: the teacher's maps stand in for them)"
            if option == "--train"
            else ""
        )
        return (
            f"it holds images itself: move them into {shown(folder / IMAGE_DIR)}/ and their masks, "
            f"named as the images, into {shown(folder / MASK_DIR)}/{teacher_note}"
        )
    return f"a dataset folder holds {IMAGE_DIR}/ (images) and {MASK_DIR}/ (masks) with matching file names"


def images_by_stem(folder: Path) -> tuple[dict[str, Path], list[tuple[Path, Path]]]:
    """The image files of ``folder`` by file stem, and the files whose stem was already taken.

    Files are visited in name order; hidden files and files that are not images are skipped.

    Returns:
        (stem -> file, [(the file kept, a later file with the same stem), ...]).
    """
    by_stem: dict[str, Path] = {}
    clashes: list[tuple[Path, Path]] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or not imio.is_image_file(path):
            continue
        if path.stem in by_stem:
            clashes.append((by_stem[path.stem], path))
            continue
        by_stem[path.stem] = path
    return by_stem, clashes


# ----------------------------------------------------------------------------------------------
# pairing


@dataclass(frozen=True)
class Pair:
    """One training example: an image and its mask, sharing ``stem``.

    ``mask`` is None for an image without one (a folder of unlabelled photos); ``teacher`` is the
    teacher's cached map of the image (:mod:`pdseg_cli.data.teacher`), blended with the mask by
    ``teacher_weight`` where both exist (:func:`pdseg_cli.data.teacher.blend_targets`).
    """

    stem: str
    image: Path
    mask: Path | None
    teacher: Path | None = None
    teacher_weight: float = 0.0
    harden_teacher: bool = False  # the teacher map's nearly sure pixels made sure (harden_map)

    def needs_teacher(self) -> bool:
        """Whether the target uses a teacher map: no mask, or a blend that gives the teacher a share."""
        return self.mask is None or self.teacher_weight > 0.0


@dataclass(frozen=True)
class _Reason:
    """How a group of problems with one cause is said, and its fix.

    Attributes:
        noun: what each file of the group is (``mask``, ``image``, ``file``).
        says: what is wrong with one file, and with several (``holds ...``, ``hold ...``).
        tag: how a hint that gives several groups' fixes names this one (``0/1 masks``).
        fix: the hint.
    """

    noun: str
    says: tuple[str, str]
    tag: str
    fix: str


# Problem reasons, in the order an error names them: pairing first (a misnamed mask explains the
# images without one), then what decoding finds.
UNMATCHED, NO_MASK, SAME_NAME, NO_TARGET = "unmatched", "no-mask", "same-name", "no-target"
SIZE, TURNED = "size", "turned"
# a mask that is no training target: the kinds training_mask_problem tells
ZERO_ONE, FAINT, COLOUR, ALPHA, SIXTEEN_BIT, PICTURE = (
    ZERO_ONE_MASK,
    FAINT_MASK,
    COLOUR_MASK,
    MASK_IN_ALPHA,
    SIXTEEN_BIT_MASK,
    PICTURE_MASK,
)
UNREADABLE, OTHER = "unreadable", "other"
_REASONS = {
    UNMATCHED: _Reason(
        "mask",
        ("matches no image name", "match no image name"),
        "masks without an image",
        f"name each mask as its image (im/cat.jpg -> {MASK_DIR}/cat.png), or remove the masks without "
        "an image",
    ),
    NO_MASK: _Reason(
        "image",
        (f"has no mask in {MASK_DIR}/", f"have no mask in {MASK_DIR}/"),
        "images without a mask",
        f"add each image's mask to {MASK_DIR}/ under the image's name (im/cat.jpg -> {MASK_DIR}/cat.png), "
        "or remove the image",
    ),
    SAME_NAME: _Reason(
        "file",
        (
            "shares its name with another file of its folder",
            "share their names with other files of their folders",
        ),
        "same names",
        "keep one file per name in im/ and in gt/ (rename or remove the others)",
    ),
    NO_TARGET: _Reason(
        "image",
        ("has no mask and no teacher map", "have no mask and no teacher map"),
        "no target",
        "pass --teacher MODEL",
    ),
    SIZE: _Reason(
        "mask",
        ("is not the size of its image", "are not the size of their images"),
        "sizes",
        "resize each mask to its image (nearest neighbour keeps it 0/255)",
    ),
    TURNED: _Reason(
        "mask",
        ("is its image turned by 90 degrees", "are their images turned by 90 degrees"),
        "turned",
        # OpenCV turns a photo upright by its EXIF orientation, as viewers do; a mask drawn on the
        # stored pixels (as tools that ignore the tag read them) is then sideways
        "turn the mask to match its image; where the image carries an EXIF orientation (pdseg "
        "turns it upright, as photo viewers do) and the mask was drawn on its stored pixels, save "
        "the image upright without the tag instead (e.g. exiftool -Orientation=1 -n, after turning "
        "its pixels)",
    ),
    ZERO_ONE: _Reason(
        "mask",
        (
            "holds only the values 0 and 1, which trains as an almost empty target",
            "hold only the values 0 and 1, which train as almost empty targets",
        ),
        "0/1 masks",
        "save them as 0/255 (multiply by 255)",
    ),
    FAINT: _Reason(
        "mask",
        (
            f"has no value above {GT_THRESHOLD}, which trains as a faint target",
            f"have no value above {GT_THRESHOLD}, which train as faint targets",
        ),
        "faint masks",
        "stretch them so the object is 255 and the background 0",
    ),
    COLOUR: _Reason(
        "mask",
        (
            "is a colour image whose object reads as a faint gray target",
            "are colour images whose objects read as faint gray targets",
        ),
        "colour masks",
        "save them as 8-bit gray masks: object 255, background 0",
    ),
    ALPHA: _Reason(
        "mask",
        (
            "keeps its mask in the alpha channel, which is not read",
            "keep their masks in the alpha channel, which is not read",
        ),
        "alpha masks",
        # cut-outs of background-removal tools too: the photo in the colours, the mask in alpha
        "save each alpha channel as an 8-bit gray mask (object 255, background 0)",
    ),
    PICTURE: _Reason(
        "mask",
        ("is a picture, not a mask", "are pictures, not masks"),
        "pictures",
        "put the masks in gt/ (8-bit gray, object 255, background 0) and the photos in im/",
    ),
    SIXTEEN_BIT: _Reason(
        "mask",
        (
            "is a 16-bit mask whose values read as 0 in 8 bits",
            "are 16-bit masks whose values read as 0 in 8 bits",
        ),
        "16-bit masks",
        "save them as 8-bit gray masks (0/255)",
    ),
    UNREADABLE: _Reason(
        "file",
        ("cannot be read", "cannot be read"),
        "unreadable files",
        "save them again or remove them",
    ),
    OTHER: _Reason(
        "file",
        ("cannot be used", "cannot be used"),
        "other files",
        "fix or remove these files (every image in im/ needs a mask in gt/ with the same name)",
    ),
}
_LISTED = 6  # files named per group in an error; the rest are counted


@dataclass(frozen=True)
class PairProblem:
    """One bad file of a dataset folder.

    Attributes:
        reason: why (``UNMATCHED``, ``SIZE``, ...): an error groups its problems by it, each group
            with its own fix.
        path: the file at fault, an image or a mask (a teacher map's problem is its image's).
        line: the problem said of this file alone, its files named relative to their dataset folder
            (``im/s02.jpg is 64x64 but its mask gt/s02.png is 48x32``).
        detail: what a listing of the group adds after the file's name (``48x32, image 64x64``), or "".
        partner: for a mask that matches no image name, the image it seems to be for, or None.
        differs: how the two names differ: ``case``, or ``+TEXT`` (the mask's name adds TEXT to the
            image's), ``TEXT+`` (adds TEXT before it), ``-TEXT`` (the image's name adds TEXT).
    """

    reason: str
    path: Path
    line: str
    detail: str = ""
    partner: Path | None = None
    differs: str | None = None

    @property
    def folder(self) -> Path:
        """The dataset folder of the file (``folder/im/a.jpg``)."""
        return self.path.parent.parent

    def __str__(self) -> str:
        return self.line


@dataclass
class PairScan:
    """The pairs of a dataset folder and what is wrong with it.

    Attributes:
        folder: the dataset folder.
        pairs: complete pairs, sorted by stem.
        problems: one per bad file (missing partner, duplicate stem, unreadable, ...).
        no_mask_hint: the fix of images without a mask when the caller knows a better one than
            adding masks (training: or pass --teacher); None: the usual one.
    """

    folder: Path
    pairs: list[Pair]
    problems: list[PairProblem] = field(default_factory=list)
    no_mask_hint: str | None = None

    @property
    def unlabelled(self) -> int:
        """How many images have no mask."""
        return sum(p.mask is None for p in self.pairs)

    def require_masks(self) -> PairScan:
        """This scan with each image without a mask moved from the pairs to the problems, named as
        :func:`scan_pairs` names it when masks are not optional."""
        claimed = {p.partner for p in self.problems if p.reason == UNMATCHED}  # said with their masks
        missing = [_no_mask(p.image, p.stem) for p in self.pairs if p.mask is None and p.image not in claimed]
        pairs = [p for p in self.pairs if p.mask is not None]
        return dataclasses.replace(self, pairs=pairs, problems=[*self.problems, *missing])

    def raise_problems(self) -> None:
        """Raise one :class:`DataError` naming every problem, grouped by reason: each reason said
        once with the files it concerns (the first few by name), and a hint with each reason's fix.

        Raises:
            DataError: when there is any problem.
        """
        if not self.problems:
            return
        message, hint = problems_message(self.problems, self.no_mask_hint)
        raise DataError(message, hint=hint)


def problems_message(problems: Sequence[PairProblem], no_mask_hint: str | None = None) -> tuple[str, str]:
    """(message, hint) of an error naming ``problems`` (at least one), grouped by reason."""
    groups: dict[str, list[PairProblem]] = {}
    for problem in problems:
        groups.setdefault(problem.reason, []).append(problem)
    order = list(_REASONS)
    reasons = sorted(groups, key=lambda r: order.index(r) if r in order else len(order))
    folders = list(dict.fromkeys(p.folder for p in problems))
    one_folder = len(folders) == 1
    where = f" in {shown(folders[0])}" if one_folder else ""

    def name(path: Path) -> str:  # files relative to the folder the message names, else as opened
        return _in_folder(path) if one_folder else shown(path)

    def line(problem: PairProblem) -> str:
        return problem.line if one_folder else f"{shown(problem.folder)}: {problem.line}"

    def fix(reason: str) -> str:
        if reason == NO_MASK and no_mask_hint:
            return no_mask_hint
        if reason == UNMATCHED:
            return _unmatched_fix(groups[reason], name)
        return _REASONS.get(reason, _REASONS[OTHER]).fix

    def said(reason: str, alone: bool) -> str:
        """The group: ``6 masks hold ...: gt/a.png, ...`` (``alone``: the error's only group)."""
        group = groups[reason]
        about = _REASONS.get(reason, _REASONS[OTHER])
        if len(group) == 1 and reason != UNMATCHED:
            return line(group[0])
        files = listing([name(p.path) + (f" ({p.detail})" if p.detail else "") for p in group], _LISTED)
        if reason in (UNREADABLE, OTHER):  # the decoder's words vary by file: the first as an example
            files += f", e.g. {line(group[0])}"
        head = f"{counted(len(group), about.noun)}{where if alone else ''} {about.says[len(group) > 1]}"
        if reason == UNMATCHED:
            return head + _unmatched_why(group, name, files)
        return f"{head}: {files}"

    if len(reasons) == 1 and (len(problems) > 1 or reasons[0] == UNMATCHED):
        return said(reasons[0], alone=True), fix(reasons[0])
    pairs = "pair" if len(problems) == 1 else "pair(s)"
    message = f"{len(problems)} bad image/mask {pairs}{where}: " + "; ".join(said(r, False) for r in reasons)
    if len(reasons) == 1:
        return message, fix(reasons[0])
    hint = "; ".join(
        fix(r) if r == NO_MASK and no_mask_hint else f"{_REASONS.get(r, _REASONS[OTHER]).tag}: {fix(r)}"
        for r in reasons
    )
    return message, hint


def _unmatched_example(group: Sequence[PairProblem]) -> tuple[PairProblem, Path, str, int] | None:
    """(a mask, its image, how their names differ, how many masks differ so) for the commonest
    difference among masks that match no image name; None when none seems to belong to an image."""
    kinds = Counter(p.differs for p in group if p.partner is not None and p.differs is not None)
    if not kinds:
        return None
    differs, count = kinds.most_common(1)[0]
    example = next(p for p in group if p.differs == differs)
    return (example, example.partner, differs, count) if example.partner is not None else None


def _unmatched_why(group: Sequence[PairProblem], name: Callable[[Path], str], files: str) -> str:
    """What follows ``6 masks match no image name``: an example mask beside the image it seems
    to be for and how their names differ, or the masks themselves when no image is close."""
    found = _unmatched_example(group)
    if found is None:
        return f": {files}"
    example, image, differs, count = found
    if differs == "case":
        how = ("differs from its image's name only in upper or lower case",
               "differ from their images' names only in upper or lower case")  # fmt: skip
    elif differs.startswith("+"):
        how = (f'adds "{differs[1:]}" to its image\'s name', f'add "{differs[1:]}" to their images\' names')
    elif differs.endswith("+"):
        how = (
            f'adds "{differs[:-1]}" before its image\'s name',
            f'add "{differs[:-1]}" before their images\' names',
        )
    else:
        how = (
            f'lacks the "{differs[1:]}" its image\'s name adds',
            f'lack the "{differs[1:]}" their images\' names add',
        )
    if len(group) == 1 or count == 1:  # one mask differs so: said of it alone
        lead = ": " if len(group) == 1 else ", e.g. "
        return f"{lead}{name(example.path)} beside {name(image)} {how[0]}"
    which = "all" if count == len(group) else f"{count} of them"
    return f", e.g. {name(example.path)} beside {name(image)}: {which} {how[1]}"


def _unmatched_fix(group: Sequence[PairProblem], name: Callable[[Path], str]) -> str:
    """Rename each mask as its image, shown on the example the message gives."""
    found = _unmatched_example(group)
    if found is None:
        return _REASONS[UNMATCHED].fix
    example, image = found[0], found[1]
    renamed = example.path.with_name(image.stem + example.path.suffix)
    return f"name each mask as its image ({name(example.path)} -> {name(renamed)}, in any image format)"


def misnamed_masks(masks: Mapping[str, Path], images: Mapping[str, Path]) -> tuple[str, str] | None:
    """For a folder's masks and images ({stem: path} each), when masks whose names match no image
    seem to be for one of the images without a mask: what follows ``4 masks match no image name``
    (``, e.g. gt/cat_mask.png beside im/cat.jpg: all add "_mask" to their images' names``) and the
    rename that fixes them, as :func:`scan_pairs`'s error says them; None when no such mask's name
    is close to an image's. ``eval`` says a misnamed GT folder with it, as ``train`` does."""
    lonely = {stem: masks[stem] for stem in sorted(masks.keys() - images.keys())}
    close = _close_names(lonely, {stem: images[stem] for stem in images.keys() - masks.keys()})
    if not close:
        return None
    group = [
        PairProblem(UNMATCHED, mask, "", partner=close[stem][0], differs=close[stem][1])
        if stem in close
        else PairProblem(UNMATCHED, mask, "")
        for stem, mask in lonely.items()
    ]
    return _unmatched_why(group, _in_folder, ""), _unmatched_fix(group, _in_folder)


def _no_mask(image: Path, stem: str) -> PairProblem:
    return PairProblem(NO_MASK, image, f"{_in_folder(image)}: no mask {MASK_DIR}/{stem}{MASK_EXT}")


def _in_folder(path: Path) -> str:
    """A file of a dataset folder as problems name it, relative to that folder: ``im/cat.jpg``,
    ``gt/cat.png`` (one way for every problem, whichever check found it)."""
    return f"{path.parent.name}/{path.name}"


def _named_in_folder(text: str, pair: Pair) -> str:
    """``text`` (a reader's message, which names files by their full paths) with the pair's files
    named as :func:`_in_folder` names them, and its teacher map as that of its image."""
    for path, name in (
        (pair.image, _in_folder(pair.image)),
        (pair.mask, None if pair.mask is None else _in_folder(pair.mask)),
        (pair.teacher, f"the teacher's map of {_in_folder(pair.image)}"),
    ):
        if path is not None and name is not None:
            text = text.replace(str(path), name)
    return text


_SEPARATORS = "_-. "  # where a mask's name may add a word to its image's (cat_mask, cat-gt, cat.seg)


def _close_names(masks: dict[str, Path], images: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    """For masks whose names match no image, the image each seems to be for and how the names
    differ (:attr:`PairProblem.differs`): only in case, or by a word added at a separator
    (``cat_mask``, ``mask_cat``), on the mask's side or the image's (``cat_rgb``).

    A mask may fit several images (``dog_2_mask``: ``dog_2`` adding ``_mask``, or ``dog`` adding
    ``_2_mask``). The closest wins: a case difference, then the difference most masks share, then
    the shortest (the longest image name). No image goes to two masks: where two masks fit one image
    equally (``cat_mask`` and ``cat_edge`` for ``cat``), or a mask two images, neither is paired.
    Near linear: each name is cut at its separators only.
    """
    lower = {stem.lower(): stem for stem in images}
    image_cut: dict[str, list[tuple[str, str]]] = {}  # an image name's start -> [(image stem, the rest)]
    for stem in images:
        for k, char in enumerate(stem):
            if char in _SEPARATORS and k:
                image_cut.setdefault(stem[:k].lower(), []).append((stem, stem[k:]))
    fits: list[tuple[str, str, str]] = []  # (mask stem, image stem, how they differ)
    for stem in masks:
        low = stem.lower()
        if low in lower:
            fits.append((stem, lower[low], "case"))
            continue
        for k, char in enumerate(stem):
            if char not in _SEPARATORS or not k:
                continue
            if low[:k] in lower:  # cat_mask: the mask's name adds "_mask"
                fits.append((stem, lower[low[:k]], "+" + stem[k:]))
            if low[k + 1 :] in lower:  # mask_cat: it adds "mask_" before
                fits.append((stem, lower[low[k + 1 :]], stem[: k + 1] + "+"))
        # cat.png for cat_rgb.jpg: the image's name adds "_rgb"
        fits += [(stem, image, "-" + rest) for image, rest in image_cut.get(low, [])]
    shared = Counter(differs for _, differs in {(mask, differs) for mask, _, differs in fits})

    def rank(fit: tuple[str, str, str]) -> tuple[bool, int, int]:
        return fit[2] != "case", -shared[fit[2]], len(fit[2])

    found: dict[str, tuple[Path, str]] = {}
    settled: set[str] = set()  # masks paired, or as close to two images
    taken: set[str] = set()  # images paired, or as close to two masks
    for _, tied in itertools.groupby(sorted(fits, key=rank), key=rank):
        open_fits = [f for f in tied if f[0] not in settled and f[1] not in taken]
        per_mask = Counter(mask for mask, _, _ in open_fits)
        per_image = Counter(image for _, image, _ in open_fits)
        for mask, image, differs in open_fits:
            if per_mask[mask] == 1 and per_image[image] == 1:
                found[mask] = (images[image], differs)
                taken.add(image)
        settled.update(per_mask)  # a mask not paired here was as close to another mask's image
        taken.update(image for image, n in per_image.items() if n > 1)
    return found


def _no_images_message(images_dir: Path) -> tuple[str, str]:
    """Why ``images_dir`` gave no image, naming its subfolders that hold images (pdseg reads
    ``im/`` itself, not below it), and the fix."""
    holding = []
    try:
        for sub in sorted(d for d in images_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
            n = sum(1 for f in sub.rglob("*") if f.is_file() and imio.is_image_file(f))
            if n:
                holding.append(f"{sub.name}/ ({n})")
    except OSError:
        pass
    if not holding:
        return f"no images in {shown(images_dir)}", "expected .jpg/.png/.tif files"
    return (
        f"no images in {shown(images_dir)} itself; its subfolders hold them: {listing(holding, _LISTED)}",
        f"pdseg reads the images directly in {IMAGE_DIR}/, not its subfolders: move them into "
        f"{IMAGE_DIR}/ (and their masks into {MASK_DIR}/, named as the images)",
    )


def scan_pairs(
    folder: str | os.PathLike[str], *, masks_optional: bool = False, option: str | None = None
) -> PairScan:
    """Pair ``folder/im/*`` with ``folder/gt/*`` by file stem.

    Hidden files are ignored. A mask without an image and two files with one stem in the same
    subfolder (``a.jpg`` and ``a.png``) are problems, listed by name; so is an image without a mask,
    unless ``masks_optional`` (training with a teacher), where it becomes a pair whose ``mask`` is
    None and ``gt/`` may be absent altogether. A mask without an image carries the image its name
    seems to belong to, if any (``cat_mask.png`` for ``cat.jpg``).

    Args:
        option: the option that named the folder, for the hints (see :func:`check_dataset_folder`).

    Raises:
        DataError: the folder lacks ``im/`` or ``gt/``, or holds no images at all.
    """
    folder = check_dataset_folder(folder, masks_optional=masks_optional, option=option)
    problems: list[PairProblem] = []
    found: dict[str, dict[str, Path]] = {}
    for sub in (IMAGE_DIR, MASK_DIR):
        if not (folder / sub).is_dir():
            found[sub] = {}
            continue
        found[sub], clashes = images_by_stem(folder / sub)
        problems += [
            PairProblem(
                SAME_NAME, dup, f"{sub}/{dup.name}: same name as {sub}/{kept.name}", f"as {kept.name}"
            )
            for kept, dup in clashes
        ]
    images, masks = found[IMAGE_DIR], found[MASK_DIR]
    if not images:
        message, hint = _no_images_message(folder / IMAGE_DIR)
        raise DataError(message, hint=hint)
    lonely = {stem: masks[stem] for stem in sorted(masks.keys() - images.keys())}
    close = _close_names(lonely, {stem: images[stem] for stem in images.keys() - masks.keys()})
    if not masks_optional:  # an image whose mask is misnamed is said with that mask
        claimed = {partner for partner, _ in close.values()}
        problems += [
            _no_mask(images[stem], stem)
            for stem in sorted(images.keys() - masks.keys())
            if images[stem] not in claimed
        ]
    for stem, mask in lonely.items():
        partner, differs = close.get(stem, (None, None))
        line = f"{MASK_DIR}/{mask.name}: no image {IMAGE_DIR}/{stem}.*"
        if partner is not None:
            line += f" (is it {_in_folder(partner)}'s?)"
        problems.append(PairProblem(UNMATCHED, mask, line, partner=partner, differs=differs))
    stems = sorted(images.keys() if masks_optional else images.keys() & masks.keys())
    pairs = [Pair(stem, images[stem], masks.get(stem)) for stem in stems]
    return PairScan(folder, pairs, problems)


def merge_scans(scans: Sequence[PairScan]) -> PairScan:
    """Several training folders as one: pairs and problems in folder order (each problem knows
    its folder, which an error names when they differ).

    Raises:
        ValueError: no scans.
    """
    if not scans:
        raise ValueError("no training folders")
    if len(scans) == 1:
        return scans[0]
    pairs = [pair for scan in scans for pair in scan.pairs]
    problems = [problem for scan in scans for problem in scan.problems]
    return PairScan(scans[0].folder, pairs, problems, scans[0].no_mask_hint)


# ----------------------------------------------------------------------------------------------
# decoding and caching


class PairError(DataError):
    """A pair that decodes but cannot train, with the reason an error groups it by.

    Args:
        message: the problem, its files named relative to their dataset folder.
        reason: :attr:`PairProblem.reason`.
        path: the file at fault.
        detail: :attr:`PairProblem.detail`.
    """

    def __init__(self, message: str, reason: str, path: Path, detail: str = "") -> None:
        super().__init__(message, hint=_REASONS[reason].fix)
        self.reason, self.path, self.detail = reason, path, detail


def load_sample(pair: Pair, size: int, notes: list[str] | None = None) -> np.ndarray:
    """Decode one pair and resize both to ``size`` x ``size`` (bilinear, as ``pdseg predict`` resizes).

    The target is the mask, the teacher's map, or their blend (:meth:`Pair.needs_teacher`).
    ``notes`` receives what the image's reader warns of (12-bit data in a 16-bit file, a TIFF's
    other pages, a damaged file decoded anyway), each line naming the file.

    Returns:
        (size, size, 4) uint8: RGB in channels 0-2, the target (0..255, soft edges) in channel 3.

    Raises:
        PairError: the mask is no training target, or image and mask sizes differ (the message
            names them, the hint says the fix).
        PdsegError: a file cannot be decoded.
    """
    # transforms imports torch: not at module level, so that `pdseg eval` can read the layout without it
    from pdseg_cli.data.transforms import resize_image, to_float_rgb

    loaded = imio.read_image(pair.image)
    pixels = loaded.pixels
    if notes is not None:
        notes.extend(loaded.warnings)
    targets: list[np.ndarray | None] = []
    for path in (pair.mask, pair.teacher if pair.needs_teacher() else None):
        if path is None:
            targets.append(None)
            continue
        read = read_mask_file(path)  # as pdseg eval reads GTs (cv2 grayscale semantics)
        target = read.array
        problem = training_mask_problem(read) if path == pair.mask else None
        if problem:
            raise PairError(f"{_in_folder(path)} {problem}", problem.kind, path, problem.detail)
        if target.shape[:2] != pixels.shape[:2]:
            (h, w), (mh, mw) = pixels.shape[:2], target.shape[:2]
            if path == pair.mask:
                raise PairError(
                    f"{_in_folder(pair.image)} is {w}x{h} but its mask {_in_folder(path)} is {mw}x{mh}",
                    TURNED if (mh, mw) == (w, h) else SIZE,
                    path,
                    f"{mw}x{mh} for {w}x{h}",
                )
            raise PairError(
                f"{_in_folder(pair.image)} is {w}x{h} but its teacher map is {mw}x{mh}", OTHER, pair.image
            )
        if path != pair.mask and pair.harden_teacher:
            target = harden_map(target)
        targets.append(target)
    if pair.needs_teacher() and targets[1] is None:
        raise PairError(f"{_in_folder(pair.image)} has no mask and no teacher map", NO_TARGET, pair.image)
    mask = blend_targets(targets[0], targets[1], pair.teacher_weight)
    image = resize_image(to_float_rgb(pixels), (size, size))
    mask = resize_image(mask, (size, size))  # a thin wire's pixels averaged, not dropped
    out = np.empty((size, size, 4), dtype=np.uint8)
    out[..., :3] = np.clip(np.rint(image), 0, 255)
    out[..., 3] = mask
    return out


def _cache_name(pair: Pair, size: int) -> str:
    """A file name that changes when either file or the size changes."""
    parts = [str(CACHE_VERSION), str(size)]
    sources = [pair.image, pair.mask] + ([pair.teacher] if pair.needs_teacher() else [])
    for path in sources:
        if path is None:
            parts.append("-")
            continue
        st = path.stat()
        parts += [str(path.resolve()), str(st.st_size), str(st.st_mtime_ns)]
    if pair.mask is not None and pair.needs_teacher():
        parts.append(f"{pair.teacher_weight:.6g}")
    if pair.needs_teacher() and pair.harden_teacher:
        parts.append("hard")
    digest = hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]
    return f"{pair.stem[:80]}-{digest}.npy"


WARNINGS_SUFFIX = ".warnings.txt"  # beside a cached sample: what its image's reader warned of


class CacheWriteError(RunFailed):
    """The disk cache cannot be written: one error for the run, not one per pair."""


class SampleStore:
    """Decoded, resized samples by index: ``store[i]`` is (size, size, 4) uint8 (RGB + mask).

    Args:
        pairs: the pairs, in index order.
        size: the square side.
        mode: ``"ram"`` keeps arrays in memory, ``"disk"`` reads ``.npy`` files from ``cache_dir``
            (memory-mapped), ``"off"`` decodes the files on every access.
        cache_dir: where ``"disk"`` files live.
    """

    def __init__(
        self, pairs: Sequence[Pair], size: int, mode: CacheMode, cache_dir: Path | None = None
    ) -> None:
        if mode == "disk" and cache_dir is None:
            raise ValueError("disk caching needs a cache_dir")
        self.pairs = list(pairs)
        self.size = size
        self.mode = mode
        self.cache_dir = cache_dir
        self.arrays: list[np.ndarray | None] = [None] * len(self.pairs)
        # what the readers warned of as :func:`prepare_samples` decoded or found the samples
        self.notes: list[str] = []
        # named once: a source file edited during training does not move its sample
        self.paths = (
            [cache_dir / _cache_name(p, size) for p in self.pairs] if cache_dir and mode == "disk" else []
        )
        for folder in {path.parent for path in self.paths}:
            sweep_folder(folder)  # what a killed run left half-written (a sample's temporary)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> np.ndarray:
        if self.mode == "ram":
            array = self.arrays[index]
            if array is None:
                array = self.arrays[index] = load_sample(self.pairs[index], self.size)
            return array
        if self.mode == "disk":
            return np.load(self.paths[index], mmap_mode="r")
        return load_sample(self.pairs[index], self.size)

    def prepare_one(self, index: int) -> list[str]:
        """Decode sample ``index`` (and store it), or check a cached file; raises on bad files.
        Returns what the image's reader warned of (for a sample found in the cache, as it was kept)."""
        notes: list[str] = []
        if self.mode == "disk":
            path = self.paths[index]
            # what the reader warned of, kept beside the sample: said again by every run that uses it
            said = path.with_suffix(WARNINGS_SUFFIX)
            if path.is_file():
                with contextlib.suppress(OSError):
                    notes = said.read_text(encoding="utf-8").splitlines()
                return notes
            array = load_sample(self.pairs[index], self.size, notes)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if notes:  # before the sample, whose presence says the pair was read
                    with atomic_path(said) as tmp:
                        tmp.write_text("\n".join(notes) + "\n", encoding="utf-8")
                with atomic_path(path) as tmp, open(tmp, "wb") as f:
                    np.save(f, array)
            except OSError as exc:  # the cache folder's fault, not the pair's
                raise CacheWriteError(
                    f"cannot write the sample cache in {path.parent} ({exc.strerror or exc})",
                    hint="pass --cache-dir with a writable folder, or --cache ram",
                ) from None
        elif self.mode == "ram":
            if self.arrays[index] is None:
                self.arrays[index] = load_sample(self.pairs[index], self.size, notes)
        else:
            load_sample(self.pairs[index], self.size, notes)
        return notes


def prepare_samples(
    scan: PairScan,
    size: int,
    mode: CacheMode,
    cache_dir: Path | None,
    *,
    threads: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
) -> SampleStore:
    """Decode (or find in the cache) every pair once, then report every bad pair together.
    What the image readers warned of is kept in the store's ``notes``, in pair order.

    Args:
        scan: the folder's pairs and pairing problems.
        size: the square training side.
        mode: see :class:`SampleStore`.
        cache_dir: the cache folder for ``"disk"``.
        threads: decoding threads (OpenCV releases the GIL).
        on_progress: called as ``on_progress(done, total)``.

    Raises:
        DataError: any pairing problem or unreadable file, all named in one message.
    """
    store = SampleStore(scan.pairs, size, mode, cache_dir)
    total = len(store)
    problems: list[PairProblem] = list(scan.problems)

    notes: list[list[str]] = [[] for _ in range(total)]

    def work(index: int) -> PairProblem | None:
        pair = store.pairs[index]
        try:
            notes[index] = store.prepare_one(index)
        except CacheWriteError:
            raise
        except PairError as exc:
            return PairProblem(exc.reason, exc.path, _named_in_folder(exc.message, pair), exc.detail)
        except PdsegError as exc:  # a reader's: it names the file it could not read first
            text = exc.message
            mask_first = pair.mask is not None and text.startswith(str(pair.mask))
            culprit = pair.mask if mask_first and pair.mask is not None else pair.image
            return PairProblem(UNREADABLE, culprit, _named_in_folder(text, pair))
        except (OSError, ValueError, cv2.error) as exc:
            names = " and ".join(_in_folder(p) for p in (pair.image, pair.mask) if p is not None)
            line = f"{names}: {type(exc).__name__}: {_named_in_folder(str(exc), pair)}"
            return PairProblem(UNREADABLE, pair.image, line)
        return None

    done = 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for problem in pool.map(work, range(total)):
            done += 1
            if problem:
                problems.append(problem)
            if on_progress is not None:
                on_progress(done, total)
    dataclasses.replace(scan, problems=problems).raise_problems()
    store.notes = [line for lines in notes for line in lines]
    return store


# ----------------------------------------------------------------------------------------------
# what the DataLoader sees


def _shuffle_rng(seed: int, epoch: int) -> np.random.Generator:
    # spawn key (0,) keeps this stream apart from the per-sample ones (augment.sample_rng uses (1, i))
    return np.random.default_rng(np.random.SeedSequence([seed, epoch], spawn_key=(0,)))


class SampleDataset:
    """Map-style dataset over a :class:`SampleStore`, augmenting reproducibly.

    ``dataset[(epoch, index)]`` (training) augments with :func:`~pdseg_cli.data.augment.sample_rng`
    ``(seed, epoch, index)``; ``dataset[index]`` returns the sample as cached.

    Returns per item ``(image, mask)``: (3, S, S) uint8 RGB and (1, S, S) uint8 tensors.

    Args:
        store: the decoded samples.
        seed: the run's seed.
        augment: what augmentation to apply, or None for none.
    """

    def __init__(self, store: SampleStore, seed: int = 0, augment: AugmentConfig | None = None) -> None:
        self.store = store
        self.seed = seed
        self.augment = augment

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, Any]:
        import torch

        epoch, index = key if isinstance(key, tuple) else (None, key)
        sample = self.store[index]
        image, mask = sample[..., :3], sample[..., 3]
        if self.augment is not None and epoch is not None:
            if self.augment.paste > 0.0:
                image = self._paste(image, mask, epoch, index)
            image, mask = augment(image, mask, sample_rng(self.seed, epoch, index), self.augment)
        # (S, S, 3) -> (3, S, S); (S, S) -> (1, S, S)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        mask_t = torch.from_numpy(np.ascontiguousarray(mask)[None])
        return image_t, mask_t

    def _paste(self, image: np.ndarray, mask: np.ndarray, epoch: int, index: int) -> np.ndarray:
        """With probability ``augment.paste``, the sample's object on another sample's background
        (:func:`~pdseg_cli.data.augment.paste_object`), that background mirrored half the time;
        otherwise the image as it is. The target does not change."""
        assert self.augment is not None
        rng = paste_rng(self.seed, epoch, index)
        u = rng.random(2)  # drawn in a fixed order whatever is applied, as in augment()
        other = int(rng.integers(max(len(self.store) - 1, 1)))
        if u[0] >= self.augment.paste or len(self.store) < 2:
            return image
        other += other >= index  # any sample but this one
        background = self.store[other]
        if u[1] < 0.5:
            background = background[:, ::-1]
        return paste_object(image, mask, background[..., :3], background[..., 3])


class EpochBatches:
    """Batches of ``(epoch, index)`` keys for one process: shuffled per epoch, sharded per rank.

    Like ``DistributedSampler`` + ``BatchSampler``, but the order is a pure function of
    ``(seed, epoch)``, and an epoch can start at any batch (exact mid-epoch resume). The permutation
    is padded by wrapping to a multiple of ``world_size``, each rank takes every ``world_size``-th
    index, and incomplete last batches are dropped (unless a rank has fewer samples than one
    batch; it then gets one short batch).

    Args:
        n: dataset size.
        batch: samples per batch and process.
        seed: the run's seed.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, n: int, batch: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if n < 1 or batch < 1:
            raise ValueError(f"need n >= 1 and batch >= 1, got n={n}, batch={batch}")
        self.n, self.batch, self.seed = n, batch, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0

    @property
    def per_rank(self) -> int:
        return -(-self.n // self.world_size)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.per_rank // self.batch)

    @property
    def left_out(self) -> int:
        """Images each epoch leaves out (a different few each time, as the order is reshuffled):
        the remainder that does not fill a last batch."""
        used = self.steps_per_epoch * min(self.batch, self.per_rank) * self.world_size
        return max(0, self.n - used)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate ``epoch`` next, from its batch number ``start``."""
        self.epoch, self.start = epoch, start

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """Every batch of ``epoch`` for this rank."""
        order = _shuffle_rng(self.seed, epoch).permutation(self.n)
        total = self.per_rank * self.world_size
        order = np.resize(order, total)  # wraps around: pads like DistributedSampler
        mine = order[self.rank :: self.world_size].tolist()
        size = min(self.batch, len(mine))
        return [[(epoch, i) for i in mine[k * size : (k + 1) * size]] for k in range(self.steps_per_epoch)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches(self.epoch)[self.start :])

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start
