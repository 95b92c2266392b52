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

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from pdseg_cli.data import images as imio
from pdseg_cli.data.atomic import atomic_path, sweep_folder
from pdseg_cli.data.augment import AugmentConfig, augment, paste_object, paste_rng, sample_rng
from pdseg_cli.data.teacher import blend_targets
from pdseg_cli.errors import DataError, PdsegError, listing
from pdseg_cli.metrics.reading import read_mask_file, training_mask_problem

DATA_ENV = "PDSEG_DATA"  # the DIS5K root when --data-root is not given
DEFAULT_ROOT = Path("DIS5K")  # relative to the working directory, last resort
TRAIN_SPLIT, VAL_SPLIT = "DIS-TR", "DIS-VD"
TEST_SPLITS = ("DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")
SPLITS = (TRAIN_SPLIT, VAL_SPLIT, *TEST_SPLITS)
IMAGE_DIR, MASK_DIR = "im", "gt"  # the subfolders of every split folder
IMAGE_EXT, MASK_EXT = ".jpg", ".png"  # how DIS5K stores them; any image type pdseg reads is accepted
_MAX_LISTED = 20  # problems named one by one in an error; the rest are counted

CacheMode = Literal["disk", "ram", "off"]
CACHE_VERSION = 2  # bump when the cached array layout, the resize rule or the masks accepted change


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
        raise DataError(
            f"DIS5K root {root} (from {source}) is not a folder",
            hint=f"pass --data-root DIR or set ${DATA_ENV} to the folder that holds {TRAIN_SPLIT}/ etc."
            + (f"; {layout}" if layout else ""),
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
            f"the root holds {', '.join(present)}" if present else "is this the DIS5K folder?"
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


def check_dataset_folder(folder: str | os.PathLike[str], *, masks_optional: bool = False) -> Path:
    """``folder`` if it holds ``im/`` and ``gt/`` subfolders (``im/`` alone with ``masks_optional``).

    Raises:
        DataError: naming what is missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist")
    wanted = (IMAGE_DIR,) if masks_optional else (IMAGE_DIR, MASK_DIR)
    missing = [d for d in wanted if not (folder / d).is_dir()]
    if missing:
        raise DataError(
            f"dataset folder {folder} has no {' or '.join(m + '/' for m in missing)} subfolder",
            hint="a dataset folder holds im/ (images) and gt/ (masks) with matching file names",
        )
    return folder


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

    def needs_teacher(self) -> bool:
        """Whether the target uses a teacher map: no mask, or a blend that gives the teacher a share."""
        return self.mask is None or self.teacher_weight > 0.0


@dataclass
class PairScan:
    """The pairs of a dataset folder and what is wrong with it.

    Attributes:
        folder: the dataset folder.
        pairs: complete pairs, sorted by stem.
        problems: one line per bad file (missing partner, duplicate stem, unreadable).
        hint: the fix :meth:`raise_problems` names (default: fix or remove the files).
    """

    folder: Path
    pairs: list[Pair]
    problems: list[str] = field(default_factory=list)
    hint: str = "fix or remove these files (every image in im/ needs a mask in gt/ with the same name)"

    @property
    def unlabelled(self) -> int:
        """How many images have no mask."""
        return sum(p.mask is None for p in self.pairs)

    def require_masks(self) -> PairScan:
        """This scan with each image without a mask moved from the pairs to the problems, named as
        :func:`scan_pairs` names it when masks are not optional."""
        missing = [_no_mask(p.image, p.stem) for p in self.pairs if p.mask is None]
        pairs = [p for p in self.pairs if p.mask is not None]
        return dataclasses.replace(self, pairs=pairs, problems=[*self.problems, *missing])

    def raise_problems(self) -> None:
        """Raise one :class:`DataError` naming every problem (the first few by name).

        Raises:
            DataError: when there is any problem.
        """
        if not self.problems:
            return
        raise DataError(
            f"{len(self.problems)} bad image/mask pair(s) in {self.folder}: "
            f"{listing(self.problems, _MAX_LISTED, sep='; ')}",
            hint=self.hint,
        )


def _no_mask(image: Path, stem: str) -> str:
    return f"{_in_folder(image)}: no mask {MASK_DIR}/{stem}{MASK_EXT}"


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


def scan_pairs(folder: str | os.PathLike[str], *, masks_optional: bool = False) -> PairScan:
    """Pair ``folder/im/*`` with ``folder/gt/*`` by file stem.

    Hidden files are ignored. A mask without an image and two files with one stem in the same
    subfolder (``a.jpg`` and ``a.png``) are problems, listed by name; so is an image without a mask,
    unless ``masks_optional`` (training with a teacher), where it becomes a pair whose ``mask`` is
    None and ``gt/`` may be absent altogether.

    Raises:
        DataError: the folder lacks ``im/`` or ``gt/``, or holds no images at all.
    """
    folder = check_dataset_folder(folder, masks_optional=masks_optional)
    problems: list[str] = []
    found: dict[str, dict[str, Path]] = {}
    for sub in (IMAGE_DIR, MASK_DIR):
        if not (folder / sub).is_dir():
            found[sub] = {}
            continue
        found[sub], clashes = images_by_stem(folder / sub)
        problems += [f"{sub}/{dup.name}: same name as {sub}/{kept.name}" for kept, dup in clashes]
    images, masks = found[IMAGE_DIR], found[MASK_DIR]
    if not images:
        raise DataError(f"no images in {folder / IMAGE_DIR}", hint="expected .jpg/.png/.tif files")
    if not masks_optional:
        problems += [_no_mask(images[stem], stem) for stem in sorted(images.keys() - masks.keys())]
    for stem in sorted(masks.keys() - images.keys()):
        problems.append(f"{MASK_DIR}/{masks[stem].name}: no image {IMAGE_DIR}/{stem}.*")
    stems = sorted(images.keys() if masks_optional else images.keys() & masks.keys())
    pairs = [Pair(stem, images[stem], masks.get(stem)) for stem in stems]
    return PairScan(folder, pairs, problems)


def merge_scans(scans: Sequence[PairScan]) -> PairScan:
    """Several training folders as one: pairs in folder order, problems named with their folder.

    Raises:
        ValueError: no scans.
    """
    if not scans:
        raise ValueError("no training folders")
    if len(scans) == 1:
        return scans[0]
    pairs = [pair for scan in scans for pair in scan.pairs]
    problems = [f"{scan.folder}: {problem}" for scan in scans for problem in scan.problems]
    return PairScan(scans[0].folder, pairs, problems)


# ----------------------------------------------------------------------------------------------
# decoding and caching


def load_sample(pair: Pair, size: int) -> np.ndarray:
    """Decode one pair and resize both to ``size`` x ``size`` (bilinear, as ``pdseg predict`` resizes).

    The target is the mask, the teacher's map, or their blend (:meth:`Pair.needs_teacher`).

    Returns:
        (size, size, 4) uint8: RGB in channels 0-2, the target (0..255, soft edges) in channel 3.

    Raises:
        PdsegError: a file cannot be decoded, or image and mask sizes differ (the message names them).
    """
    # transforms imports torch: not at module level, so that `pdseg eval` can read the layout without it
    from pdseg_cli.data.transforms import resize_image, to_float_rgb

    pixels = imio.read_image(pair.image).pixels
    targets: list[np.ndarray | None] = []
    for path in (pair.mask, pair.teacher if pair.needs_teacher() else None):
        if path is None:
            targets.append(None)
            continue
        read = read_mask_file(path)  # as pdseg eval reads GTs (cv2 grayscale semantics)
        target = read.array
        problem = training_mask_problem(read) if path == pair.mask else None
        if problem:
            raise DataError(f"{_in_folder(path)} {problem} (masks are 8-bit gray: store them as 0/255)")
        if target.shape[:2] != pixels.shape[:2]:
            (h, w), (mh, mw) = pixels.shape[:2], target.shape[:2]
            its = f"mask {_in_folder(path)}" if path == pair.mask else "teacher map"
            raise DataError(f"{_in_folder(pair.image)} is {w}x{h} but its {its} is {mw}x{mh}")
        targets.append(target)
    if pair.needs_teacher() and targets[1] is None:
        raise DataError(
            f"{_in_folder(pair.image)} has no mask and no teacher map", hint="pass --teacher MODEL"
        )
    mask = blend_targets(targets[0], targets[1], pair.teacher_weight)
    image = resize_image(to_float_rgb(pixels), (size, size))
    if mask.shape[:2] != (size, size):
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR)
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
    digest = hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]
    return f"{pair.stem[:80]}-{digest}.npy"


class CacheWriteError(DataError):
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

    def prepare_one(self, index: int) -> None:
        """Decode sample ``index`` (and store it), or check a cached file; raises on bad files."""
        if self.mode == "disk":
            path = self.paths[index]
            if path.is_file():
                return
            array = load_sample(self.pairs[index], self.size)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp, open(tmp, "wb") as f:
                    np.save(f, array)
            except OSError as exc:  # the cache folder's fault, not the pair's
                raise CacheWriteError(
                    f"cannot write the sample cache in {path.parent} ({exc.strerror or exc})",
                    hint="pass --cache-dir with a writable folder, or --cache ram",
                ) from None
        elif self.mode == "ram":
            if self.arrays[index] is None:
                self.arrays[index] = load_sample(self.pairs[index], self.size)
        else:
            load_sample(self.pairs[index], self.size)


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
    problems = list(scan.problems)

    def work(index: int) -> str | None:
        pair = store.pairs[index]
        # a pair of another training folder than the first is named with its folder, as
        # merge_scans names its pairing problems
        folder = pair.image.parent.parent
        prefix = "" if folder == scan.folder else f"{folder}: "
        try:
            store.prepare_one(index)
        except CacheWriteError:
            raise
        except PdsegError as exc:
            return prefix + _named_in_folder(exc.message, pair)
        except (OSError, ValueError, cv2.error) as exc:
            names = " and ".join(_in_folder(p) for p in (pair.image, pair.mask) if p is not None)
            return f"{prefix}{names}: {type(exc).__name__}: {_named_in_folder(str(exc), pair)}"
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
