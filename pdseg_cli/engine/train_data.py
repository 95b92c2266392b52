"""The data of a training run: its folders, the teacher's maps for images without masks, the decoded
samples of each split, and the DataLoaders over them.

The data order is a function of ``(seed, epoch)`` and each sample's augmentation of
``(seed, epoch, index)``, never of worker scheduling (:class:`~pdseg_cli.data.dis5k.EpochBatches`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cv2
import torch

from pdseg_cli import runtime
from pdseg_cli.data import dis5k
from pdseg_cli.data.augment import AugmentConfig
from pdseg_cli.data.teacher import NO_OBJECT, UNSURE, map_doubt
from pdseg_cli.engine.teacher import TeacherInfo, TeacherMaps
from pdseg_cli.engine.train_config import TrainConfig
from pdseg_cli.engine.train_context import RunContext
from pdseg_cli.engine.train_folder import LAST, cache_root
from pdseg_cli.engine.train_signals import worker_init
from pdseg_cli.engine.train_workers import spawns, start_workers
from pdseg_cli.errors import DataError, InputError, PdsegError, counted
from pdseg_cli.metrics.cache import default_cache_root
from pdseg_cli.metrics.reading import read_gray_u8
from pdseg_cli.runtime.quiet_warnings import ignoring_warnings


@dataclass(frozen=True)
class TrainData:
    """The decoded splits of a run.

    Attributes:
        train_dirs: the training folders, resolved.
        val_dir: the validation folder, resolved (None: no validation).
        train: the training samples.
        val: the validation samples (None without validation).
        teacher: the teacher's identity (None without ``--teacher``).
        fingerprint: :func:`pairs_fingerprint` of the training pairs, as they were read.
    """

    train_dirs: tuple[Path, ...]
    val_dir: Path | None
    train: dis5k.SampleStore
    val: dis5k.SampleStore | None
    teacher: TeacherInfo | None
    fingerprint: str  # pairs_fingerprint of the training pairs, as they were read

    @property
    def train_label(self) -> str:
        """The training data as runs record it (``config.json``, ``last.pt``, checkpoints)."""
        return _label(self.train_dirs)

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_val(self) -> int:
        return 0 if self.val is None else len(self.val)

    def teacher_record(self) -> dict[str, Any]:
        """The teacher as runs record it (config.json, results.csv, checkpoints)."""
        if self.teacher is None:
            return {"teacher": None, "teacher_sha256": None}
        return {"teacher": str(self.teacher.path), "teacher_sha256": self.teacher.sha256}


def pairs_fingerprint(pairs: Sequence[dis5k.Pair]) -> str:
    """16 hex digits of the training pairs in their order: each image's and mask's name and byte
    size, what ``last.pt`` records for ``--resume`` to compare. Names and sizes, not paths or
    times: a data folder moved or copied elsewhere is the same data; a photo swapped for another of
    the same count, or a mask drawn again, is not (a re-saved file of the very same size is missed)."""
    digest = hashlib.sha256()
    for pair in pairs:
        for path in (pair.image, pair.mask):
            digest.update(f"{path.name}\t{path.stat().st_size}\n".encode() if path else b"-\n")
    return digest.hexdigest()[:16]


def _label(folders: tuple[Path, ...]) -> str:
    return " + ".join(str(d) for d in folders)


def load_data(ctx: RunContext, resumed: Mapping[str, Any] | None) -> TrainData:
    """Find, check and decode both splits before training (with a teacher, its maps first).

    Raises:
        InputError: a resumed run was trained on other folders.
        DataError: missing splits, or bad image/mask pairs (all named), on every rank alike.
        WeightsError: the teacher cannot be opened.
    """
    train_dirs, val_dir = _resolve_folders(ctx)
    teacher = None if ctx.cfg.teacher is None else _open_teacher(ctx, ctx.cfg.teacher)
    label = _label(train_dirs)
    if resumed is not None and resumed["train_dir"] != label:
        raise InputError(
            f"{ctx.cfg.out} was trained on {resumed['train_dir']}, not {label}",
            hint="resume with the run's own data (--train / --data-root), or start a new --out",
        )
    train = _load_split(ctx, "train", lambda: _scan_training(ctx, train_dirs, teacher))
    for i, folder in enumerate(train_dirs[1:], 1):  # a folder copied into another --train, in part
        copies = training_copies(folder, train_dirs[:i])
        if copies:
            ctx.notice(
                f"--train {dis5k.shown(folder)}: {len(copies)} of its images are copies of images of an "
                f"earlier --train folder (same name and bytes, e.g. {copies[0]}): each is drawn twice "
                "as often as the others"
            )
    # the epochs' batches are drawn from the image count: another count is another trajectory
    # (last.pt files older than this check do not record it)
    before = None if resumed is None else resumed.get("train_images")
    go_on = (
        "restore the data as it was to resume exactly, or go on in a new run: "
        f"--init {ctx.cfg.out / LAST} --out NEW_FOLDER"
    )
    if before is not None and before != len(train):
        raise InputError(
            f"{ctx.cfg.out} was trained on {before} images of {label}; those folders now give {len(train)}",
            hint=go_on,
        )
    fingerprint = pairs_fingerprint(train.pairs)
    # as many images, but others in their place (one swapped for another, a mask re-drawn): the
    # same count let such a resume go on in silence (last.pt files older than this do not record it)
    if resumed is not None and resumed.get("train_fingerprint", fingerprint) != fingerprint:
        raise InputError(
            f"{ctx.cfg.out} was trained on other files of {label}: as many images ({len(train)}), but "
            "with other names or sizes since",
            hint=go_on,
        )
    val = None
    if val_dir is not None:
        val = _load_split(ctx, "val", lambda: dis5k.scan_pairs(val_dir, option="--val"))
        if val_dir not in train_dirs:  # the same folder is said above
            copies = training_copies(val_dir, train_dirs)
            if copies:
                ctx.notice(
                    f"--val: {len(copies)} of its images are copies of training images (same name and "
                    f"bytes, e.g. {copies[0]}): the validation scores (and best.pt) measure images the "
                    "model trains on"
                )
    if val_dir is None and ctx.cfg.val_every != 0 and resumed is None:
        # after every refusal of the data, which matters more; not again on each resume of the run
        ctx.notice("no --val folder given: training runs without validation and writes no best.pt")
    own = cache_root(ctx.cfg)  # the run's own, not a link to a folder other runs may share
    if ctx.main and ctx.cfg.cache == "disk" and ctx.cfg.cache_dir is None and not own.is_symlink():
        _drop_stale_samples(train, val)
    return TrainData(train_dirs, val_dir, train, val, None if teacher is None else teacher[1], fingerprint)


def _drop_stale_samples(*stores: dis5k.SampleStore | None) -> None:
    """Remove the samples in the run's own cache folder that no pair of this run names: those of
    files since edited or removed, or of an older pdseg's cache layout (a resume after an upgrade
    doubled the folder; at 1024 a sample is 4 MB). Not in a --cache-dir, which other runs may share;
    the run folder's cache is this run's alone (its lock)."""
    kept = {path for store in stores if store is not None for path in store.paths}
    kept |= {path.with_suffix(dis5k.WARNINGS_SUFFIX) for path in kept}  # what their readers warned of
    for folder in {path.parent for path in kept if not path.parent.is_symlink()}:
        with contextlib.suppress(OSError):
            for entry in [*folder.glob("*.npy"), *folder.glob(f"*{dis5k.WARNINGS_SUFFIX}")]:
                if entry not in kept:
                    entry.unlink(missing_ok=True)


# the way out of a missing DIS5K root or DIS-TR split
_OWN_FOLDERS = "or train on your own folders with --train DIR"


def _resolve_folders(ctx: RunContext) -> tuple[tuple[Path, ...], Path | None]:
    """The training folders and the validation folder (None: no validation)."""
    cfg = ctx.cfg
    root = None
    if cfg.train_dirs:
        # images without masks are found by the scan, which names them with the fix
        train = [dis5k.check_dataset_folder(d, masks_optional=True, option="--train") for d in cfg.train_dirs]
    else:
        root = dis5k.resolve_root(cfg.data_root, layout=_OWN_FOLDERS)
        train = [dis5k.split_folder(root, dis5k.TRAIN_SPLIT, otherwise=_OWN_FOLDERS)]
    val: Path | None = None
    if cfg.val_every == 0:
        if cfg.val_dir is not None:
            ctx.notice(f"--val-every 0: {cfg.val_dir} is not used, and no best.pt is written")
    elif cfg.val_dir is not None:
        val = dis5k.check_dataset_folder(cfg.val_dir, option="--val")
    elif root is not None:
        val = dis5k.split_folder(
            root,
            dis5k.VAL_SPLIT,
            otherwise="or validate on another folder (--val DIR), or on none (--val-every 0)",
        )
    folders = tuple(t.resolve() for t in train)
    twice = sorted({str(d) for d in folders if folders.count(d) > 1})
    if twice:  # its images would be drawn twice as often as the others'
        raise InputError(f"--train {twice[0]} is given twice", hint="give each training folder once")
    if val is not None and val.resolve() in folders:
        ctx.notice(
            f"--val {val} is also a --train folder: the validation scores (and best.pt) measure "
            "images the model trains on"
        )
    return folders, None if val is None else val.resolve()


def training_copies(folder: Path, train_dirs: Sequence[Path]) -> list[Path]:
    """Images of ``folder`` (the validation folder, or a later training one) that are byte-identical
    copies of an image of the same name in ``train_dirs`` (a copied folder that a path comparison
    cannot see). Only files whose names and sizes match are read, so disjoint folders cost a
    directory listing."""
    images, _ = dis5k.images_by_stem(folder / dis5k.IMAGE_DIR)
    copies: dict[Path, None] = {}  # ordered, and a membership test that does not scan (20k pairs: 56 s)
    for other in train_dirs:
        train_images, _ = dis5k.images_by_stem(other / dis5k.IMAGE_DIR)
        for stem in sorted(images.keys() & train_images.keys()):
            a, b = images[stem], train_images[stem]
            if a not in copies and a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes():
                copies[a] = None
    return list(copies)


def _open_teacher(ctx: RunContext, teacher: Path) -> tuple[TeacherMaps, TeacherInfo]:
    """Open the teacher before any work, so a bad file or spec fails first (every rank checks)."""
    cfg = ctx.cfg
    error, opened = None, None
    try:
        device = "cpu" if ctx.device.type == "cpu" else str(ctx.device)
        maps = TeacherMaps(
            teacher, default_cache_root(cfg.teacher_cache), device=device, onnx_spec=cfg.onnx_spec
        )
        opened = maps, maps.info()
    except PdsegError as exc:
        error = exc
    ctx.agree(error)
    assert opened is not None  # agree raised otherwise
    return opened


def _scan_training(
    ctx: RunContext, folders: tuple[Path, ...], teacher: tuple[TeacherMaps, TeacherInfo] | None
) -> dis5k.PairScan:
    """Pair every training folder; with a teacher, give each image that needs one its map
    (computed once into the shared cache, by rank 0, with a progress bar)."""
    scans = [dis5k.scan_pairs(f, masks_optional=True, option="--train") for f in folders]
    if teacher is None:
        unlabelled = [p for s in scans for p in s.pairs if p.mask is None]
        if not unlabelled:
            return dis5k.merge_scans(scans)
        # a mask named otherwise than its image (cat_mask.png, CAT.png) claims that image: its name
        # is the fix, not --teacher; a stray mask that claims none is a problem of its own
        unmatched = [p for s in scans for p in s.problems if p.reason == dis5k.UNMATCHED]
        claimed = {p.partner for p in unmatched if p.partner is not None}
        lacking = [p for p in unlabelled if p.image not in claimed]
        no_masks = f"{len(lacking)} of {sum(len(s.pairs) for s in scans)} training images have no mask"
        fix = "pass --teacher MODEL to learn their targets from a model, or add masks named like them to gt/"
        # masks/ or GT/ beside im/: the masks are there, under a name pdseg does not read
        renames = [
            (s.folder, a)
            for s in scans
            if s.unlabelled and (a := dis5k.misnamed_folder(s.folder, dis5k.MASK_DIR))
        ]
        if renames:
            said = "; ".join(
                f"rename {dis5k.shown(alias)}/ to {dis5k.shown(folder / dis5k.MASK_DIR)}/"
                for folder, alias in renames
            )
            pairing = f" (pdseg pairs {dis5k.IMAGE_DIR}/NAME.jpg with {dis5k.MASK_DIR}/NAME.png)"
            every = len(renames) == sum(1 for s in scans if s.unlabelled)  # each folder lacking masks has one
            fix = (
                said + pairing + (", or pass --teacher MODEL" if every else f"; for the other folders, {fix}")
            )
        maskless = [s for s in scans if s.unlabelled == len(s.pairs)]
        unclaimed = [s for s in maskless if not any(p.image in claimed for p in s.pairs)]
        if unclaimed:
            # a folder without any mask, and none misnamed, needs --teacher whatever else is wrong:
            # said at once, without decoding every labelled image first, with an image of that
            # folder (and the stray masks, which are a fix of their own)
            message = f"{no_masks} (e.g. {dis5k.shown(unclaimed[0].pairs[0].image)})"
            if not unmatched:
                raise DataError(message, hint=fix)
            strays, stray_fix = dis5k.problems_message(unmatched)
            raise DataError(f"{message}; and {strays}", hint=f"{fix}; {stray_fix}")
        # the images without masks become named problems, listed with those decoding finds in the
        # others (a 0/1 mask, another size, an unreadable file), so one run names every fix
        merged = dataclasses.replace(
            dis5k.merge_scans([s.require_masks() for s in scans]), no_mask_hint=f"{no_masks}: {fix}"
        )
        if maskless:  # its masks are there but misnamed: said from the names, before any decoding
            merged.raise_problems()
        return merged
    maps, info = teacher
    scan = dis5k.merge_scans(scans)
    pairs = [
        dataclasses.replace(p, teacher_weight=ctx.cfg.teacher_weight, harden_teacher=ctx.cfg.harden_teacher)
        for p in scan.pairs
    ]
    needing = [i for i, p in enumerate(pairs) if p.needs_teacher()]
    if not needing and pairs and ctx.main:
        ctx.notice(
            "every training image has a mask and --teacher-weight is 0: the teacher is not used "
            "(pass --teacher-weight W to blend its maps into the masks)"
        )
    images = [pairs[i].image for i in needing]
    paths: list[Path] | None = None
    error: PdsegError | None = None
    if ctx.main and needing:
        # what the teacher is for in this run: the targets of the images without a mask, and a share
        # of the others' where --teacher-weight blends it in
        n_unlabelled = sum(p.mask is None for p in pairs)
        uses = [f"the targets of {counted(n_unlabelled, 'image')} without a mask"] if n_unlabelled else []
        if ctx.cfg.teacher_weight > 0 and len(needing) > n_unlabelled:
            blended = counted(len(needing) - n_unlabelled, "image")
            uses.append(f"blended into the masks of {blended} (--teacher-weight {ctx.cfg.teacher_weight:g})")
        ctx.emit("info", values={"message": f"teacher {info.description}: {' and '.join(uses)}"})

        def progress(done: int, total: int, computed: int) -> None:
            ctx.emit("prepare", values={"split": "teacher maps", "done": done, "total": total})

        try:
            paths = maps.ensure_all(images, progress)
        except PdsegError as exc:
            error = exc
        for line in maps.doubts():  # a teacher read wrongly gives grey targets: said before training
            ctx.notice(line)
    ctx.agree(error)  # every rank waits for rank 0's maps, and raises its error if it had one
    if paths is None:  # the other ranks: rank 0 made the maps, find them
        paths = [maps.map_path(image) for image in images]
    for i, path in zip(needing, paths, strict=True):
        pairs[i] = dataclasses.replace(pairs[i], teacher=path)
    if ctx.cfg.max_unsure is not None:
        pairs = _drop_doubtful(ctx, pairs, ctx.cfg.max_unsure)
    return dis5k.PairScan(scan.folder, pairs, scan.problems)


def _drop_doubtful(ctx: RunContext, pairs: list[dis5k.Pair], max_unsure: float) -> list[dis5k.Pair]:
    """The pairs less those whose only target is a doubtful teacher map (``--max-unsure``); every
    rank reads the same maps and keeps the same pairs.

    Raises:
        DataError: no training image is left.
    """
    kept: list[dis5k.Pair] = []
    doubts: Counter[str] = Counter()
    for pair in pairs:
        doubt = None
        if pair.mask is None and pair.teacher is not None:
            doubt = map_doubt(read_gray_u8(pair.teacher), max_unsure)
        if doubt is None:
            kept.append(pair)
        else:
            doubts[doubt] += 1
    why = (
        f"{doubts[NO_OBJECT]} where the teacher found no object, {doubts[UNSURE]} where over "
        f"{max_unsure:.0%} of its map is unsure"
    )
    if not kept:
        # raising --max-unsure helps only the unsure ones; a map without an object stays out
        ways = (["raise --max-unsure"] if doubts[UNSURE] else []) + ["add images with masks or other photos"]
        raise DataError(
            f"--max-unsure {max_unsure:g} leaves none of the {len(pairs)} training images ({why})",
            hint=", or ".join(ways),
        )
    without = sum(p.mask is None for p in pairs)
    if not doubts and without and ctx.main:  # said too, so that silence is not read as the option ignored
        ctx.emit(
            "info",
            values={
                "message": f"--max-unsure {max_unsure:g}: the teacher's maps of all {without} images "
                "without masks are confident; none left out"
            },
        )
    if doubts and ctx.main:
        ctx.notice(
            f"--max-unsure {max_unsure:g}: left out {sum(doubts.values())} of the {without} images without "
            f"masks ({why}); {len(kept)} training images"
        )
    return kept


def _load_split(ctx: RunContext, split: str, scan: Callable[[], dis5k.PairScan]) -> dis5k.SampleStore:
    """Scan and decode one split before training (rank 0 fills a disk cache; with ``ram``
    every rank decodes its own copy). Bad pairs fail every rank with one message."""
    cfg = ctx.cfg
    cache_dir = cache_root(cfg) / str(cfg.size)

    def progress(done: int, total: int) -> None:
        ctx.emit("prepare", values={"split": split, "done": done, "total": total})

    error, store = None, None
    size = cast(int, cfg.size)  # train() resolves it (_from_init) before the run
    try:
        pairs = scan()
        if ctx.main or cfg.cache == "ram":
            threads = max(1, ctx.workers)
            store = dis5k.prepare_samples(
                pairs, size, cfg.cache, cache_dir, threads=threads, on_progress=progress
            )
        else:
            store = dis5k.SampleStore(pairs.pairs, size, cfg.cache, cache_dir)
    except PdsegError as exc:
        if split == "val" and isinstance(exc, DataError) and not exc.message.startswith("--val"):
            # "12 masks in sets/a hold only 0 and 1": say it is the validation folder, not training data
            exc.message = f"--val: {exc.message}"
            exc.args = (exc.message,)
        error = exc
    ctx.agree(error)  # also waits for rank 0's cache
    assert store is not None
    if ctx.main and store.notes:
        # a 12-bit scan in a 16-bit file trains as a nearly black image: said, as predict says it
        for line in store.notes[:_NOTES_SHOWN]:
            ctx.notice(line)
        if len(store.notes) > _NOTES_SHOWN:
            more = len(store.notes) - _NOTES_SHOWN
            ctx.notice(f"and {more} more warnings of the images read before training")
    return store


_NOTES_SHOWN = 5  # of the image readers' warnings before training: the rest are counted


def augment_config(cfg: TrainConfig) -> AugmentConfig | None:
    """The run's training augmentation (None with ``augment`` off); ``config.json`` records it."""
    return AugmentConfig(zoom=cfg.zoom, paste=cfg.paste) if cfg.augment else None


def augment_record(cfg: TrainConfig) -> dict[str, Any] | None:
    """:func:`augment_config` as a plain dict, as ``config.json`` and a checkpoint's recipe keep it."""
    augment = augment_config(cfg)
    return None if augment is None else dataclasses.asdict(augment)


def make_loaders(
    ctx: RunContext, data: TrainData, batches: dis5k.EpochBatches, start_epoch: int, start_step: int
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader | None]:
    """The training loader (its workers forked now) and rank 0's validation loader (None without
    validation, and on the other ranks)."""
    cfg = ctx.cfg
    augment = augment_config(cfg)
    cores = runtime.usable_cores()
    if ctx.workers > cores:  # said once, here, instead of torch's warning at creation and at iter()
        ctx.notice(
            f"--workers {ctx.workers} on {cores} usable cores: the worker processes compete with the "
            "training step for them (--workers 0 loads in the training process)"
        )
    with ignoring_warnings(UserWarning, message="This DataLoader will create"):
        dataset = dis5k.SampleDataset(data.train, cfg.seed, augment)
        train_loader = _make_loader(ctx, dataset, batches, ctx.workers)
        if ctx.workers > 0:  # fork the workers now, while no progress-bar thread runs in this process
            if cfg.cache == "ram" and spawns():  # forked workers share the parent's pages, spawned ones not
                held = sum(a.nbytes for a in data.train.arrays if a is not None)
                ctx.notice(
                    f"--cache ram with {counted(ctx.workers, 'worker')} started afresh (not forked): each "
                    f"holds its own copy of the decoded samples ({held / 2**20:.1f} MB); --cache disk shares "
                    "one through the page cache"
                )
            batches.set_epoch(start_epoch, start_step)
            start_workers(train_loader, ctx.workers, on_stopping=lambda signum: _stopping(ctx, signum))
    val_loader = None
    if data.val is not None and ctx.main:
        n, b = len(data.val), cfg.batch
        val_batches = [list(range(i, min(i + b, n))) for i in range(0, n, b)]
        # in this process: the samples are decoded already, and forking more workers while the
        # training workers and their queue threads live can deadlock the new processes
        val_loader = _make_loader(ctx, dis5k.SampleDataset(data.val), val_batches, 0)
    return train_loader, val_loader


def _stopping(ctx: RunContext, signum: int) -> None:
    """Said when a stop comes while spawned workers start: the run stops once they have."""
    import signal

    again = " (Ctrl-C again stops now)" if signum == signal.SIGINT else ""
    ctx.notice(f"stopping once the data-loading workers have started{again}")


def _make_loader(
    ctx: RunContext, dataset: Any, batch_sampler: Any, workers: int
) -> torch.utils.data.DataLoader:
    if workers > 0:
        # One OpenCV thread before forking: the workers inherit a pool-less OpenCV (see
        # worker_init), and parallel workers gain nothing from nested threads.
        cv2.setNumThreads(1)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=workers > 0,  # forked once, before any other thread or loader exists
        worker_init_fn=worker_init if workers > 0 else None,
        # its own generator: making an iterator never draws from the global torch RNG
        generator=torch.Generator().manual_seed(ctx.cfg.seed),
    )
