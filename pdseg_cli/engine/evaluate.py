"""Scoring prediction maps against GT masks: the DIS table (maxF, wF, MAE, S, E, HCE) and more.

:func:`evaluate` is the one code path behind ``pdseg eval`` and Python users::

    from pdseg_cli import evaluate
    report = evaluate("preds/DIS-TE1", "DIS5K/DIS-TE1/gt")
    report.splits[0].scores.max_f          # dataset maxF
    report.to_json()                        # the layout `pdseg eval --json` writes

Training validation scores in-memory maps with :func:`evaluate_arrays` (no files needed).

How a pair is scored (``docs/metrics.md`` has every detail and reason):

* Both files are read as 8-bit grayscale with OpenCV's ``IMREAD_GRAYSCALE`` semantics (16-bit:
  high byte; colour: luminance), matched by file stem.
* A prediction of another size is resized to the GT size (``cv2.resize``, INTER_LINEAR); the GT
  is never resized. Every metric, HCE included, is computed at the GT's resolution.
* F, wF, MAE, S and E equal pysodmetrics 1.6.2 (min-max normalised prediction, GT ``> 128``);
  an image in the S-measure NaN case counts as 0. HCE follows the official DIS procedure (raw
  prediction bytes ``> 128``, relax 5, epsilon 2).
* Dataset values weigh every image 1; F and E curves are averaged over images before their max
  or mean is taken. An overall row (``DIS-TE (overall)``) is the unweighted mean of its split
  rows, metric by metric, as published DIS tables form theirs.

Speed: GT-only work (skeleton, nearest-foreground choice, counts) is cached on disk per GT file
content (:mod:`pdseg_cli.metrics.cache`), and images are scored in parallel worker processes.

Files are matched in :mod:`pdseg_cli.engine.eval_pairs`, the report's types and its JSON and CSV
live in :mod:`pdseg_cli.engine.eval_report`, ``--split`` names in :mod:`pdseg_cli.data.eval_splits`, and
a model's maps of the splits (``pdseg eval --weights``) in :mod:`pdseg_cli.engine.eval_model`, and
what the report says of the files beside the numbers in :mod:`pdseg_cli.engine.eval_notes`.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import multiprocessing
import numbers
import os
import platform
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pdseg_cli import __version__
from pdseg_cli.data import native_messages
from pdseg_cli.engine.eval_notes import file_notes, split_warnings
from pdseg_cli.engine.eval_pairs import (
    PairPlan,
    check_missing,
    listing,
    plan_pairs,
)
from pdseg_cli.engine.eval_report import OVERALL_RULE, EvalReport, ImageRecord, PooledResult, SplitResult
from pdseg_cli.errors import DataError, InputError, check_kind
from pdseg_cli.metrics.aggregate import aggregate
from pdseg_cli.metrics.cache import DEFAULT_MAX_BYTES, GTCache, default_cache_root, usable_cache_root
from pdseg_cli.metrics.fmeasure import BETA2_F
from pdseg_cli.metrics.gtprep import GTPrep
from pdseg_cli.metrics.hce import EPSILON, RELAX
from pdseg_cli.metrics.image import score_pair
from pdseg_cli.metrics.reading import read_mask_file
from pdseg_cli.metrics.smeasure import ALPHA_S
from pdseg_cli.metrics.wfmeasure import BETA2_WF
from pdseg_cli.runtime.compute import idle_cores, usable_cores
from pdseg_cli.runtime.stop import ignore_stop_signals, signals_held, stopping

POOLING_NOTE = (
    f"{OVERALL_RULE} (each split weight 1, as the DIS paper's 'Overall DIS-TE (1-4)'); count, missing "
    "and resized are the splits' sums"
)

ProgressCallback = Callable[[str, str], None]  # (split name, image stem) after each image


# ----------------------------------------------------------------------------------------------
# scoring one pair (runs in worker processes)


@dataclass(frozen=True)
class _Failure:
    """A pair that could not be scored (unreadable file), with the reason naming the file."""

    stem: str
    message: str


def _prep_for(gt: np.ndarray, key: str | None, cache: GTCache | None) -> tuple[GTPrep, bool]:
    """The GT-only data of ``gt``: from the cache under ``key`` when there, else computed and stored.

    Returns:
        (the data, whether it came from the cache).
    """
    if cache is not None and key is not None:
        prep = cache.load(key)
        if prep is not None and prep.shape == gt.shape:
            return prep, True
    prep = GTPrep.from_gt(gt)
    if cache is not None and key is not None:
        cache.store(key, prep)
    return prep, False


def _score_files(
    stem: str, pred_path: Path, gt_path: Path, cache_root: Path | None, worker: bool
) -> ImageRecord | _Failure:
    if worker:
        cv2.setNumThreads(1)  # one image per process: no oversubscription
        native_messages.route_worker()  # a damaged file's decoder messages come back as its note
    cache = GTCache(cache_root) if cache_root is not None else None
    try:
        gt = read_mask_file(gt_path, digest=cache is not None)
    except InputError as exc:
        return _Failure(stem, f"GT {exc}")
    try:
        pred = read_mask_file(pred_path)
    except InputError as exc:
        return _Failure(stem, f"prediction {exc}")
    notes = [(k, str(gt_path)) for k in file_notes(gt, "GT")]
    notes += [(k, str(pred_path)) for k in file_notes(pred, "prediction")]
    prep, cached = _prep_for(gt.array, gt.digest, cache)
    return _score_arrays(stem, pred.array, gt.array, prep, cached, tuple(notes))


def _score_arrays(
    stem: str,
    pred: np.ndarray,
    gt: np.ndarray,
    prep: GTPrep,
    cached: bool,
    notes: tuple[tuple[str, str], ...],
) -> ImageRecord:
    pred_size = (int(pred.shape[0]), int(pred.shape[1]))
    gt_size = (int(gt.shape[0]), int(gt.shape[1]))
    if pred_size != gt_size:
        pred = cv2.resize(pred, (gt_size[1], gt_size[0]), interpolation=cv2.INTER_LINEAR)
    return ImageRecord(stem, score_pair(pred, gt, prep), pred_size, gt_size, cached, notes)


def _score_memory(
    stem: str, pred: np.ndarray, gt: np.ndarray, cache_root: Path | None, worker: bool
) -> ImageRecord:
    if worker:
        cv2.setNumThreads(1)
    cache = GTCache(cache_root) if cache_root is not None else None
    key = None
    if cache is not None:  # keyed by the array's content, apart from file digests
        digest = hashlib.sha256(np.ascontiguousarray(gt).tobytes() + str(gt.shape).encode()).hexdigest()
        key = f"array-{digest}"
    prep, cached = _prep_for(gt, key, cache)
    return _score_arrays(stem, pred, gt, prep, cached, ())


def _run_parallel(
    tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]], jobs: int
) -> Generator[Any, None, None]:
    """Run ``fn(*args, worker)`` for each task, in order, in ``jobs`` processes (1: in this process).

    Use it inside ``contextlib.closing``: an exception in the caller's loop (a Ctrl-C in its
    progress display) then stops the workers in the caller's frame, not when the generator is
    collected, where an exception in that clean-up (a second Ctrl-C) printed "Exception ignored in"
    and a traceback."""
    if jobs <= 1 or len(tasks) <= 1:
        for fn, args in tasks:
            yield fn(*args, False)
        return
    from joblib.externals.loky import get_reusable_executor

    # loky's workers, as joblib's, need no `if __name__ == "__main__":` guard in a calling script
    # (multiprocessing's spawn would run the script again in each worker). Ctrl-C reaches the whole
    # process group (SIGTERM too, from a job scheduler): the workers leave it to this process, which
    # stops them. They start with it blocked and ignore it from their first act on; one that comes
    # while the pool starts is held, and raised here once the tasks are handed over (signals_held).
    stopping.clear()  # a failure of an earlier call in this process is over
    executor = None
    futures: list[Any] = []
    completed = False
    try:
        with signals_held() as block_again:
            _start_resource_trackers()  # they start with the signals blocked too (a hang-up killed one)
            block_again()  # multiprocessing's tracker start unblocked SIGINT and SIGTERM (Python 3.11)
            executor = get_reusable_executor(
                max_workers=min(jobs, len(tasks)), initializer=ignore_stop_signals
            )
            futures = [executor.submit(fn, *args, True) for fn, args in tasks]
        for future in futures:
            yield future.result()
        completed = True
    finally:
        if executor is not None and completed:  # the workers end now, not at exit: a process
            executor.shutdown(wait=True)  # stopped then left them orphaned
        elif executor is not None:  # interrupted, or a worker failed: no new image is started
            stopping.set()  # a background thread failing from now on is the stop's: not news
            # The images not started are cancelled and the workers end after the one each is on.
            # Not kill_workers=True: loky's manager thread then failed on the cancelled images'
            # queued ids (a KeyError traceback on the caller's stderr) and the killed workers left
            # semaphores behind (the resource tracker's "leaked semlock" warning at exit).
            for future in futures:
                future.cancel()
            executor.shutdown(wait=False)


def _start_resource_trackers() -> None:
    """Start loky's and multiprocessing's resource-tracker processes (POSIX), if not running yet.

    loky starts them as it starts its first worker: multiprocessing's then unblocks SIGINT and
    SIGTERM in this thread (Python 3.11 unblocks them rather than restoring the mask), so the
    workers started after it took a Ctrl-C while importing and printed its traceback. Started
    first, and the signals blocked again, the workers start with them blocked.
    """
    if os.name != "posix":
        return
    from multiprocessing import resource_tracker

    from joblib.externals.loky.backend import resource_tracker as loky_resource_tracker

    resource_tracker.ensure_running()
    loky_resource_tracker.ensure_running()


def all_cores() -> int:
    """All cores this process may use (cgroup and affinity limits respected)."""
    return usable_cores()


def default_jobs(cores: int | None = None, busy: float | None = None) -> int:
    """Worker processes when none are asked for: the cores other work leaves idle, the rule of the
    default ``--threads`` (:func:`pdseg_cli.runtime.compute.default_threads`).

    So a busy machine is not slowed further, as the README promises of the defaults: a worker per
    core would take cores another job is using. (The workers share no barrier as torch's threads
    do, so this is about the other job more than about the scoring's own speed; that was not
    measured.) Unlike the threads, ``OMP_NUM_THREADS`` does not count here: it sets the threads
    inside a process, and each worker runs one thread anyway.

    Args:
        cores: the cores to share (default: :func:`all_cores`).
        busy: other runnable tasks now (default: measured, as for the threads; where it cannot be
            measured, off Linux, every core is taken).
    """
    cores = all_cores() if cores is None else cores
    idle = idle_cores(cores, busy)
    return cores if idle is None else idle


def check_jobs(jobs: int, spelled: str, default: str = "the idle cores") -> None:
    """Refuse a count of scoring processes below -2: joblib's -3 (all but two) and on are not
    taken, as a mistyped count would silently mean another. ``spelled`` is how the caller names
    it (``--jobs `` or ``jobs=``), ``default`` what its 0 means.

    Raises:
        InputError: ``jobs`` is below -2.
    """
    if jobs < -2:
        raise InputError(
            f"{spelled}{jobs} is not a number of processes",
            hint=f"give N >= 1, 0 (the default: {default}), -1 (all cores) or -2 (all but one)",
        )


def resolve_jobs(jobs: int | None) -> int:
    """Worker processes for ``jobs``: None or 0 the idle cores (:func:`default_jobs`), -1 all cores,
    -2 all but one, N as given; 1 (in this process) in a daemonic process, which cannot start any.

    Raises:
        TypeError: ``jobs`` is not None or an int.
        InputError: ``jobs`` is below -2 (joblib's -3 for all but two, and so on, is not taken:
            a mistyped count would silently mean another).
    """
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, numbers.Integral)):
        raise TypeError(f"jobs must be an int or None, not {jobs!r}")
    if jobs is not None and jobs != 0:
        check_jobs(jobs, "jobs=")
    if multiprocessing.current_process().daemon:
        # a multiprocessing.Pool worker may start no processes of its own (multiprocessing
        # asserts "daemonic processes are not allowed to have children"): it scores in-process
        return 1
    if jobs is None or jobs == 0:
        return default_jobs()
    if jobs < 0:  # -1 all cores, -2 all but one (asked for, so not load-aware)
        return max(1, all_cores() + 1 + jobs)
    return int(jobs)


def _cache_for(cache_dir: str | os.PathLike[str] | None, use_cache: bool, max_bytes: int) -> GTCache | None:
    if not use_cache:
        return None
    return GTCache(default_cache_root(cache_dir), max_bytes)


# ----------------------------------------------------------------------------------------------
# the public API


def evaluate(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    jobs: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    cache_max_bytes: int = DEFAULT_MAX_BYTES,
    allow_missing: bool = False,
    on_progress: ProgressCallback | None = None,
) -> EvalReport:
    """Score the maps in ``pred_dir`` against the masks in ``gt_dir`` (matched by file stem).

    Args:
        pred_dir: prediction maps, one per GT, any size (resized to the GT's).
        gt_dir: GT masks.
        name: the split's name in the report (default: the GT folder's parent's name).
        jobs: worker processes (default: the cores other work leaves idle, see
            :func:`default_jobs`; 1 scores in this process).
        cache_dir: the cache root (default: ``$PDSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/pdseg``, else
            ``~/.cache/pdseg``).
        use_cache: read and write the GT cache.
        cache_max_bytes: the cache is pruned to this size after the run.
        allow_missing: score the pairs that can be scored instead of failing: GTs without a
            prediction, and pairs with a file that cannot be read, are left out and listed.
        on_progress: called with (split name, stem) after each image.

    Returns:
        The report with one split.

    Raises:
        DataError: missing folders, no files, missing predictions, unreadable files (all named).
        InputError: a bad ``jobs`` (see :func:`resolve_jobs`: N >= 1, 0 for the idle cores, -1
            for all, -2 for all but one), a negative ``cache_max_bytes``, or an option of the
            wrong kind (``allow_missing="no"``, which Python would take as true).

    A cache folder that cannot be used is said in the split's ``warnings``: a read-only one is
    read, and where none can be made the scores are computed without one (only slower).
    """
    for option, value, kind in (
        ("use_cache", use_cache, bool),
        ("allow_missing", allow_missing, bool),
        ("cache_max_bytes", cache_max_bytes, int),
        ("jobs", jobs, int),
    ):
        if not (option == "jobs" and value is None):  # jobs=None: the idle cores
            check_kind("evaluate", option, value, kind)
    if isinstance(name, os.PathLike):  # a folder's path as its name, as the default takes one
        name = os.fspath(name)
    if name is not None and not isinstance(name, str):  # it heads the report's rows and keys
        raise InputError(f"evaluate name={name!r}: give the split's name as a string, or None")
    if on_progress is not None and not callable(on_progress):  # not a TypeError after scoring began
        raise InputError(f"evaluate on_progress={on_progress!r}: give a function of one record, or None")
    if cache_max_bytes < 0:
        raise InputError(f"cache_max_bytes={cache_max_bytes} must be 0 or more (0 keeps nothing)")
    root, note = usable_cache_root(cache_dir) if use_cache else (None, None)
    plan = plan_pairs(pred_dir, gt_dir, name=name)
    report = evaluate_plans(
        [plan],
        jobs=jobs,
        cache_dir=root,
        use_cache=root is not None,
        cache_max_bytes=cache_max_bytes,
        allow_missing=allow_missing,
        on_progress=on_progress,
    )
    if note:
        report.splits[0].warnings.insert(0, note)
    return report


def evaluate_plans(
    plans: Sequence[PairPlan],
    *,
    pooled: Mapping[str, Sequence[str]] | None = None,
    jobs: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    cache_max_bytes: int = DEFAULT_MAX_BYTES,
    allow_missing: bool = False,
    on_progress: ProgressCallback | None = None,
    settings: Mapping[str, Any] | None = None,
) -> EvalReport:
    """Score several splits in one pool of workers (see :func:`evaluate` for the arguments).

    Args:
        plans: from :func:`plan_pairs`, one per split.
        pooled: overall rows to add, each the unweighted mean of its split rows, e.g.
            ``{"DIS-TE (overall)": ["DIS-TE1", ..., "DIS-TE4"]}``.
        settings: extra entries for the report's settings (e.g. how predictions were made).
    """
    names = [plan.name for plan in plans]
    for pooled_name, members in (pooled or {}).items():
        unknown = [m for m in members if m not in names]
        if unknown:
            raise InputError(f"overall row {pooled_name}: no split named {', '.join(unknown)} is scored")
    check_missing(plans, allow_missing)
    n_jobs = resolve_jobs(jobs)
    cache = _cache_for(cache_dir, use_cache, cache_max_bytes)
    cache_root = cache.root if cache is not None else None

    tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
    owners: list[int] = []
    for i, plan in enumerate(plans):
        for stem, pred_path, gt_path in plan.pairs:
            tasks.append((_score_files, (stem, pred_path, gt_path, cache_root)))
            owners.append(i)
    t0 = time.perf_counter()
    records: list[list[ImageRecord]] = [[] for _ in plans]
    failures: list[list[_Failure]] = [[] for _ in plans]
    with contextlib.closing(_run_parallel(tasks, n_jobs)) as outputs:
        for i, out in zip(owners, outputs, strict=True):
            (failures[i] if isinstance(out, _Failure) else records[i]).append(out)
            if on_progress is not None:
                on_progress(plans[i].name, out.stem)
    seconds = time.perf_counter() - t0

    if cache is not None:
        cache.prune()
    # a damaged GT too: it stopped the run after an hour's model pass with no way but to mend it
    bad = [] if allow_missing else [f for fs in failures for f in fs]
    if bad:
        raise DataError(
            f"{len(bad)} file(s) could not be read: {listing([f.message for f in bad], 5)}",
            hint="replace them, or pass --allow-missing to score the others"
            + ("" if cache is None else " (GT data computed so far is cached)"),
        )
    results = []
    for plan, recs, fails in zip(plans, records, failures, strict=True):
        if not recs:
            raise DataError(f"{plan.name}: no image could be scored")
        warnings = split_warnings(plan.name, recs, plan.sources)
        warnings += [f"not scored (--allow-missing): {f.message}" for f in fails]
        warnings += plan.notes
        results.append(
            SplitResult(
                name=plan.name,
                gt_dir=plan.gt_dir,
                pred_dir=plan.pred_dir,
                images=recs,
                scores=aggregate([r.scores for r in recs]),
                missing=sorted([*plan.missing, *(f.stem for f in fails)]),
                unmatched=list(plan.unmatched),
                no_gt=list(plan.no_gt),
                warnings=warnings,
                seconds=seconds,
                sources=dict(plan.sources),
            )
        )
    report = EvalReport(
        results, settings=report_settings(n_jobs, cache, {**split_folders(plans), **(settings or {})})
    )
    by_name = {r.name: r for r in results}
    for pooled_name, members in (pooled or {}).items():
        report.pooled.append(PooledResult.mean_of(pooled_name, [by_name[m] for m in members]))
    return report


def evaluate_arrays(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    names: Sequence[str] | None = None,
    name: str = "arrays",
    jobs: int = 1,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = False,
) -> EvalReport:
    """Score in-memory (prediction, GT) uint8 pairs, e.g. for validation during training.

    Predictions of another size are resized to their GT's size, as for files.

    Args:
        pairs: (H, W) uint8 prediction and (H', W') uint8 GT per image.
        names: one stem per pair (default: "0", "1", ...).
        name: the split's name in the report.
        jobs: worker processes (default 1: in this process, no copies of the arrays).
        cache_dir: cache root for the GT-only data (keyed by the GT array's content).
        use_cache: off by default; worth it when the same GTs are scored again (every epoch).

    Raises:
        InputError: a pair that is not two 2D uint8 arrays.
    """
    items = list(pairs)
    if not items:
        raise InputError("evaluate_arrays: no pairs given")
    stems = list(names) if names is not None else [str(i) for i in range(len(items))]
    if len(stems) != len(items):
        raise InputError(f"evaluate_arrays: {len(stems)} names for {len(items)} pairs")
    for stem, (pred, gt) in zip(stems, items, strict=True):
        for role, arr in (("prediction", pred), ("GT", gt)):
            if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 2:
                got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise InputError(f"evaluate_arrays: {role} of {stem!r} must be a 2D uint8 array, got {got}")
    n_jobs = resolve_jobs(jobs)
    cache = _cache_for(cache_dir, use_cache, DEFAULT_MAX_BYTES)
    cache_root = cache.root if cache is not None else None
    tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
        (_score_memory, (stem, pred, gt, cache_root)) for stem, (pred, gt) in zip(stems, items, strict=True)
    ]
    t0 = time.perf_counter()
    with contextlib.closing(_run_parallel(tasks, n_jobs)) as outputs:
        records = list(outputs)
    if cache is not None:
        cache.prune()
    result = SplitResult(
        name=name,
        gt_dir=Path("."),
        pred_dir=None,
        images=records,
        scores=aggregate([r.scores for r in records]),
        warnings=split_warnings(name, records),
        seconds=time.perf_counter() - t0,
    )
    return EvalReport([result], settings=report_settings(n_jobs, cache, {"predictions": "in-memory arrays"}))


def split_folders(plans: Sequence[PairPlan]) -> dict[str, Any]:
    """The folders each split was read from: its GTs, and its maps where they were given (not where
    a model made them, whose settings say how, under ``predictions``). The same keys come from
    ``evaluate()`` as from ``pdseg eval --json``."""
    found: dict[str, Any] = {"gt_folders": {plan.name: str(plan.gt_dir.resolve()) for plan in plans}}
    given = {plan.name: str(plan.pred_dir.resolve()) for plan in plans if plan.pred_dir and not plan.sources}
    if given:
        found["pred_folders"] = given
    return found


def report_settings(
    jobs: int, cache: GTCache | None, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """How the numbers were computed, for the report's ``settings``."""
    settings: dict[str, Any] = {
        "reference": "F, wF, MAE, S, E as pysodmetrics 1.6.2; HCE as the official DIS "
        "hce_metric_main.py (xuebinqin/DIS); see docs/metrics.md",
        "reading": "cv2.IMREAD_GRAYSCALE semantics: 16-bit files read as the high byte, colour as luminance",
        "resize": "a prediction of another size is resized to the GT size (cv2.resize, INTER_LINEAR)",
        "gt": "foreground is gt > 128",
        "normalisation": "per-image min-max of the prediction to [0, 1] for F, wF, MAE, S, E (not for HCE)",
        "F": {"beta2": BETA2_F, "thresholds": "256 on the truncated map, q >= t for t = 0..255"},
        "adaptive": "binary map x >= min(2 * mean(x), 1)",
        "wF": {"beta2": BETA2_WF},
        "S": {
            "alpha": ALPHA_S,
            "nan_case": "an image whose S is NaN (GT centroid on the last row/column) counts as 0",
        },
        "E": "mean over the 256 thresholds of the image-averaged E curve (E^m_phi, the DIS table's E)",
        "HCE": {
            "relax": RELAX,
            "epsilon": EPSILON,
            "binarisation": "raw prediction byte > 128 (no normalisation), at GT resolution",
            "dataset": "mean over images (tables print it rounded to an integer)",
        },
        "aggregation": "every image weight 1; F and E curves averaged over images, then max / mean",
        "pooled_rows": POOLING_NOTE,
        "curves": "256 values, ascending threshold order",
        "jobs": jobs,
        "cache": str(cache.folder) if cache is not None else None,
        "versions": {
            "pdseg": __version__,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "python": platform.python_version(),
        },
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    settings.update(extra or {})
    return settings
