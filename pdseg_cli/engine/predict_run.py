"""Carrying out a :class:`~pdseg_cli.engine.predict_plan.PredictPlan`: read ahead, segment, write behind.

Files are decoded and preprocessed by a pool of reader threads ahead of the model, and their outputs
made and written by a pool of writer threads behind it, so the model does not wait on the disk.
Consecutive images of one working size share a forward pass (up to ``batch``). Every file is
written to a hidden temporary name and renamed into place. An unreadable file, a failed write or
a batch that runs out of memory is recorded and the run goes on; a write that every later image
would fail too (a full disk) stops it (:class:`~pdseg_cli.engine.predict_summary.OutputWriteStopped`).
"""

from __future__ import annotations

import collections
import errno
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, cast

import numpy as np
import torch

from pdseg_cli import runtime
from pdseg_cli.data import header
from pdseg_cli.data import images as imio
from pdseg_cli.data import transforms as T
from pdseg_cli.data.foreground import estimate_foreground
from pdseg_cli.data.icc import srgb_into_profile
from pdseg_cli.engine.made_with import MadeWith
from pdseg_cli.engine.onnx_backend import ModelRunError
from pdseg_cli.engine.output_kinds import HIGH_DEPTH_SUFFIX, OUTPUT_KINDS, output_path
from pdseg_cli.engine.predict_plan import InputFile, PredictPlan
from pdseg_cli.engine.predict_summary import (
    FileResult,
    OutputWriteStopped,
    PeakMemory,
    PredictInterrupted,
    PredictSummary,
    Stop,
    merge_summaries,
)
from pdseg_cli.errors import PdsegError, first_line

Size = int | Literal["full"]  # a working size: N (NxN) or the image's own
ProgressCallback = Callable[[FileResult], None]
STOP_NOTICE_S = 1.0  # writes a Ctrl-C waits for longer than this are said (_FolderRun.say_writes_left)

# Write errors of the output folder's file system, not of one image: every image after would be
# read and segmented only to fail the same way (hours of a GPU over a large folder), so the first
# one stops the run. What the user does about each, before going on where the run stopped.
_STOPS_THE_RUN = {
    errno.ENOSPC: "free some disk space",
    errno.EDQUOT: "free some of your disk quota",
    errno.EROFS: "the file system of --out is read-only: make it writable",
}
_GO_ON = (
    ", then run the same command again with --skip-existing to go on (the images whose outputs were all "
    "written are skipped), or run it with another --out"
)


class _WriteStopped(Exception):
    """Raised by a writer thread for a write error in :data:`_STOPS_THE_RUN`, to the main thread."""

    def __init__(self, stop: Stop) -> None:
        super().__init__(stop.result.error)
        self.stop = stop


def working_setting(size: Size, tta: bool, note: str = "") -> str:
    """How the run header and summary name the working size, e.g. ``448 (the checkpoint's training
    size), mirrored too (--tta)``."""
    return str(size) + (f" ({note})" if note else "") + (", mirrored too (--tta)" if tta else "")


class Predictor(Protocol):
    """What a folder run needs of :class:`pdseg_cli.engine.predict.Predictor` (named here, not
    imported: the Predictor's module imports this one to run its plans)."""

    device: torch.device
    precision: str
    size: Size
    tta: bool

    def prepare_array(self, x: np.ndarray) -> np.ndarray | list[np.ndarray]: ...

    def forward(self, arrays: Sequence[np.ndarray | list[np.ndarray]]) -> torch.Tensor: ...

    def to_map(self, logits: torch.Tensor, size: tuple[int, int], threshold: float | None) -> np.ndarray: ...

    @property
    def doubts(self) -> list[str]: ...


@dataclass
class _Prepared:
    """An image read and preprocessed by a reader thread."""

    item: InputFile
    # (h, w, 3) float32, normalised, at the working size; one per side with --scales
    array: np.ndarray | list[np.ndarray] | None
    orig_size: tuple[int, int]  # (H, W)
    pixels: np.ndarray | None  # the decoded image, kept only for outputs made from the image
    warnings: list[str]
    error: str | None = None
    high_depth: bool = False  # 16-bit or float samples: outputs that follow the depth are .tif
    alpha: np.ndarray | None = None  # the input's own alpha, kept (with pixels) for cut-outs
    icc_profile: bytes | None = None  # the input's ICC profile, kept (with pixels) for cut-outs
    density: imio.Density | None = None  # the input's dpi, kept for every output (the mask too)

    @property
    def work_size(self) -> tuple[int, int]:
        assert self.array is not None  # only images read without error are grouped
        array = self.array[-1] if isinstance(self.array, list) else self.array  # --scales: the largest
        return int(array.shape[0]), int(array.shape[1])


def run_plan(
    predictor: Predictor,
    plan: PredictPlan,
    *,
    made: MadeWith | None = None,
    threshold: float | None,
    background: tuple[int, ...],
    batch: int,
    on_progress: ProgressCallback | None,
    dist: runtime.Distributed,
    read_workers: int | None = None,
    write_workers: int | None = None,
    on_stopping: Callable[[int], None] | None = None,
) -> PredictSummary:
    """Segment the plan's images with ``predictor`` and write their outputs.

    The arguments are :meth:`pdseg_cli.engine.predict.Predictor.run_plan`'s, which checks them;
    ``made``, the model and settings the outputs' marks record (None: none recorded).

    Returns:
        The summary; under torchrun every process gets the merged one.
    """
    runtime.forget_stop()  # a stop noted by an earlier run in this process is not this run's
    results = [FileResult(i.path, "skipped", index=i.index) for i in plan.skipped]
    for r in results:
        _call(on_progress, r)
    runtime.reset_peak_memory(predictor.device)
    t0 = time.perf_counter()
    run = _FolderRun(
        predictor,
        plan,
        threshold,
        background,
        batch,
        on_progress,
        results,
        read_workers,
        write_workers,
        on_stopping=on_stopping,
        made=made,
    )
    stop: Stop | None = None
    interrupted = False
    try:
        run.run()
    except _WriteStopped as exc:
        # said once, by the error raised below, not through on_progress. Under torchrun the other
        # processes hear of it at the gather: they meet the same full disk and stop themselves, or
        # finish their share where their disk has room (nothing waits on a process that stopped)
        stop = exc.stop
        results.append(stop.result)
    except KeyboardInterrupt as exc:
        # a plain Ctrl-C (or SIGTERM/SIGHUP) of one process: what was done is reported, for the
        # --json a stopped run writes too. A subclass (a caller's own, or one carrying a hint) goes
        # on as it is; under torchrun every process got it, and no gather of what each did follows
        if dist.world_size > 1 or type(exc) is not KeyboardInterrupt:
            raise
        interrupted = True
    wall = time.perf_counter() - t0
    peak, what = runtime.peak_memory(predictor.device)
    local = PredictSummary(
        results=sorted(results, key=lambda r: r.index),
        not_images=plan.not_images,
        wall_seconds=wall,
        peak_memory=[PeakMemory(dist.rank, str(predictor.device), peak, what)],
        device=str(predictor.device),
        precision=predictor.precision,
        size=working_setting(predictor.size, predictor.tta),
        world_size=dist.world_size,
        left_in_out=plan.left_in_out,
        own_outputs=plan.own_outputs,
        stopped=stop,
        interrupted=interrupted,
        model_warnings=predictor.doubts,
        stop_signal=runtime.stop_name() if interrupted else None,
    )
    if interrupted:
        raise PredictInterrupted(local)
    summary = merge_summaries(dist.all_gather(local)) if dist.enabled else local
    if summary.stopped is not None:  # in every process alike, after the gather
        failed = summary.stopped.result
        raise OutputWriteStopped(
            f"{failed.path}: {failed.error}", _STOPS_THE_RUN[summary.stopped.errno] + _GO_ON, summary
        )
    return summary


class _FolderRun:
    """The moving parts of one :func:`run_plan`: the reads in flight, the image group waiting for the
    model, and the writes in flight, each reported in input order as it finishes."""

    def __init__(
        self,
        predictor: Predictor,
        plan: PredictPlan,
        threshold: float | None,
        background: tuple[int, ...],
        batch: int,
        on_progress: ProgressCallback | None,
        results: list[FileResult],
        read_workers: int | None,
        write_workers: int | None,
        *,
        on_stopping: Callable[[int], None] | None = None,
        made: MadeWith | None = None,
    ) -> None:
        self.predictor, self.plan = predictor, plan
        # each kind's id of the model and settings, for its outputs' marks (made_with)
        self.made_ids = {kind: made.id_for(kind) if made else None for kind in plan.save}
        self.threshold, self.background, self.batch = threshold, background, batch
        self.on_progress, self.results = on_progress, results
        # the cores this process may run on (affinity-aware), so a pinned run does not oversubscribe
        cpus = runtime.usable_cores()
        n_read = read_workers or max(1, min(4, cpus))
        n_write = write_workers or max(1, min(4, cpus))
        self.keep_pixels = any(OUTPUT_KINDS[kind].uses_image for kind in plan.save)
        # full resolution images are big: read just enough ahead to fill the next batch
        self.read_ahead = batch if predictor.size == "full" else max(2 * batch, 2 * n_read)
        self.max_writes = 2 * n_write + batch
        self.readers = ThreadPoolExecutor(n_read, thread_name_prefix="pdseg-read")
        self.writers = ThreadPoolExecutor(n_write, thread_name_prefix="pdseg-write")
        self.reads: collections.deque[Future[_Prepared]] = collections.deque()
        self.writes: collections.deque[Future[FileResult]] = collections.deque()
        self.reported: Future[FileResult] | None = None  # the write last counted by collect_writes
        self.todo = iter(plan.todo)
        # told how many writes a Ctrl-C waits for, when they outlast STOP_NOTICE_S (see run)
        self.on_stopping = on_stopping

    def run(self) -> None:
        """Every image of the plan, read, segmented and written.

        Ctrl-C stops reading at once, lets the writes in progress finish (each one is atomic), drops
        the queued ones and re-raises KeyboardInterrupt; a write that stops the run (a full disk)
        ends it the same way, raising ``_WriteStopped``.
        """
        completed = False
        raised: BaseException | None = None
        try:
            self.segment_all()
            self.collect_writes(0)
            completed = True
        except BaseException as exc:
            raised = exc
            raise
        finally:
            if not completed:
                for read in self.reads:
                    read.cancel()
            pressed = False
            if isinstance(raised, KeyboardInterrupt):
                pressed = self.say_writes_left()
            pressed |= _wait_for(self.readers, cancel=True)
            pressed |= _wait_for(self.writers, cancel=not completed)
            if completed and pressed:  # a Ctrl-C while the last writes ended: not lost
                raise KeyboardInterrupt
            if not completed:  # the writes that finished after all count: Ctrl-C's report says so
                for f in self.writes:
                    if not f.done() or f.cancelled():
                        continue
                    error = f.exception()
                    if error is None:
                        if f is not self.reported:  # counted already, then its callback raised
                            self.finish(f.result())
                    elif isinstance(error, _WriteStopped) and isinstance(raised, KeyboardInterrupt):
                        # a stop met by a Ctrl-C: its failure is counted and named (a stop raised
                        # itself is counted by run_plan, as the run's one error)
                        self.finish(error.stop.result)
                    elif isinstance(error, _WriteStopped) and error is not raised:
                        # another write the full disk failed alongside the one raised: counted,
                        # with the outputs it did write, for --json; not named, as the run's one
                        # error line says why every write after it fails
                        self.results.append(error.stop.result)

    def say_writes_left(self) -> bool:
        """After a Ctrl-C, tell ``on_stopping`` how many writes are still being made, when they
        outlast :data:`STOP_NOTICE_S`: the outputs of a large scan take tens of seconds, and a
        Ctrl-C that seemed to do nothing for that long was pressed again. True when a Ctrl-C came
        meanwhile (the waits after go through it, as :func:`_wait_for` does)."""
        if self.on_stopping is None:
            return False
        for f in self.writes:  # the queued ones are dropped (as _wait_for would): not waited for
            f.cancel()
        running = [f for f in self.writes if not f.done()]
        if not running:
            return False
        try:
            _, pending = wait(running, timeout=STOP_NOTICE_S)
        except KeyboardInterrupt:
            return True
        if pending:
            self.on_stopping(len(pending))
        return False

    def segment_all(self) -> None:
        """Take the read images in order, in groups of one working size, to the model."""
        self.read_more()
        group: list[_Prepared] = []
        while self.reads:
            prepared = self.reads.popleft().result()
            self.read_more()
            if prepared.error is not None:
                self.finish(_failed(prepared.item, prepared.error, prepared.warnings))
                continue
            if group and group[0].work_size != prepared.work_size:
                self.segment(group)
                group = []
            group.append(prepared)
            if len(group) >= self.batch:
                self.segment(group)
                group = []
            self.collect_writes(self.max_writes)
        if group:
            self.segment(group)

    def read_more(self) -> None:
        """Keep ``read_ahead`` reads in flight while images are left."""
        while len(self.reads) < self.read_ahead:
            item = next(self.todo, None)
            if item is None:
                return
            self.reads.append(
                self.readers.submit(_read, self.predictor, item, self.keep_pixels, self.plan.max_pixels)
            )

    def segment(self, group: list[_Prepared], *, retry: bool = True) -> None:
        """One forward pass over ``group``, then its writes queued.

        Out of memory is tried once more after freeing what can be freed, a batch one image at a
        time (and the rest of the run too, as each batch would fail again); an image that runs out
        again fails, with a hint, and the run goes on.
        """
        predictor = self.predictor
        out_of_memory = False
        logits: torch.Tensor | None = None
        try:
            # only images read without error are grouped: their arrays are set
            logits = predictor.forward(cast("list[np.ndarray | list[np.ndarray]]", [g.array for g in group]))
            maps = [
                predictor.to_map(logits[k : k + 1], g.orig_size, self.threshold) for k, g in enumerate(group)
            ]
        except ModelRunError as exc:  # the graph failed on this input: the image fails, the run goes on
            if len(group) > 1:
                # a graph that takes one image at a time (a Reshape fixing the batch) fails a batch
                # of any image: each is tried alone, so only those it cannot run on fail, and the
                # rest of the run goes one image at a time (no failed batch pass per group)
                self.batch = 1
                for g in group:
                    self.segment([g])
                return
            self.finish(_failed(group[0].item, str(exc)))  # with the model's hint, if any
            return
        except Exception as exc:  # torch's, numpy's and ONNX Runtime's out-of-memory errors alike
            if not runtime.is_out_of_memory(exc):
                raise
            out_of_memory = True
        if out_of_memory:
            # out of the except block: the exception is gone, and with it its traceback, whose frames
            # held the failed pass's activations; only now can freeing give their memory back
            logits = None  # a pass whose maps ran out of memory: its logits go too
            self.free_memory()
            if retry:
                if len(group) > 1:
                    self.batch = 1
                for g in group:
                    self.segment([g], retry=False)
                return
            on_gpu = predictor.device.type == "cuda"
            why = "out of memory on " + str(predictor.device) + _oom_hint(predictor.size, on_gpu)
            for g in group:
                self.finish(_failed(g.item, why))
            return
        assert logits is not None
        # a NaN becomes 0 in the map: an overflowing model (fp16) gave black masks without a word
        for g, nan in zip(group, torch.isnan(logits).flatten(1).sum(1).tolist(), strict=True):
            if nan:
                g.warnings.append(_nan_note(g.item.path, int(nan), logits[0].numel(), predictor.precision))
        for g, m in zip(group, maps, strict=True):
            g.array = None  # free the model input before the write
            written = self.writers.submit(_write_outputs, self.plan, g, m, self.background, self.made_ids)
            self.writes.append(written)
        self.collect_writes(self.max_writes)

    def free_memory(self) -> None:
        """Give back what a pass that ran out of memory left: the writes in flight (each holds its
        image and its outputs' float copies) are waited for, and the GPU cache emptied."""
        self.collect_writes(0)
        runtime.empty_device_cache(self.predictor.device)

    def collect_writes(self, block_until: int) -> None:
        """Report the finished writes in order; wait while more than ``block_until`` are in flight.

        A write that stops the run (a full disk) is raised as soon as it is seen to have failed,
        without waiting for the writes queued ahead of it: the model starts no further image.
        """
        while self.writes:
            for f in self.writes:  # a stop behind a slow write is not kept waiting for it
                if f.done() and not f.cancelled() and isinstance(f.exception(), _WriteStopped):
                    f.result()
            head = self.writes[0]
            if not head.done():
                if len(self.writes) <= block_until:
                    return
                # the head, or a stop anywhere behind it (writers return a file's own failure;
                # only a stop raises)
                wait(self.writes, return_when=FIRST_EXCEPTION)
                continue
            # counted before it leaves the queue, so that a Ctrl-C in between loses nothing; marked,
            # so that run()'s clean-up does not count it again (its callback may have raised)
            self.reported = head
            self.finish(head.result())
            self.writes.popleft()

    def finish(self, result: FileResult) -> None:
        """Count ``result`` and report it to ``on_progress``. A callback that raises (or is stopped
        by a Ctrl-C) stops the run, and is called no more: not for this file again, nor for the
        writes that finish as the run winds down."""
        self.results.append(result)
        callback = self.on_progress
        if callback is None:
            return
        try:
            callback(result)
        except BaseException:
            self.on_progress = None
            raise


def _wait_for(pool: ThreadPoolExecutor, *, cancel: bool) -> bool:
    """Shut ``pool`` down and wait for its threads, through further Ctrl-Cs: a thread still inside
    an encoder as the interpreter exits aborts the process (C++ ``std::terminate``), which a second
    Ctrl-C during the wait did. The writes in flight are short and atomic. True when a Ctrl-C came."""
    pool.shutdown(wait=False, cancel_futures=cancel)
    pressed = False
    while True:
        try:
            pool.shutdown(wait=True)
            return pressed
        except KeyboardInterrupt:
            pressed = True


def _read(predictor: Predictor, item: InputFile, keep_pixels: bool, max_pixels: int | None) -> _Prepared:
    """Reader thread: decode and preprocess one file; failures are returned, not raised."""
    try:
        loaded = imio.read_image(item.path, max_pixels)
        x = T.to_float_rgb(loaded.pixels)
        array = predictor.prepare_array(x)
        del x
        pixels = loaded.pixels if keep_pixels else None
        high_depth = loaded.pixels.dtype != np.uint8
        return _Prepared(
            item,
            array,
            loaded.size,
            pixels,
            loaded.warnings,
            high_depth=high_depth,
            alpha=loaded.alpha if keep_pixels else None,
            icc_profile=loaded.icc_profile if keep_pixels else None,
            density=loaded.density,
        )
    except PdsegError as exc:  # its hint too (e.g. --max-pixels for an oversized file): the fix
        return _Prepared(item, None, (0, 0), None, [], error=str(exc))
    except MemoryError:
        return _Prepared(item, None, (0, 0), None, [], error=f"{item.path}: out of memory while decoding")
    except Exception as exc:  # a decoder bug or an odd file must not stop the run; named as the rest are
        why = f"{item.path}: cannot read ({type(exc).__name__}: {first_line(exc)})"
        return _Prepared(item, None, (0, 0), None, [], error=why)


def _write_outputs(
    plan: PredictPlan,
    prepared: _Prepared,
    byte_map: np.ndarray,
    background: tuple[int, ...],
    made_ids: Mapping[str, str | None],
) -> FileResult:
    """Writer thread: make and write every requested output of one image, each atomically, each
    marked with its input and ``made_ids[kind]`` (the model and settings it is made with)."""
    item = prepared.item
    written: list[Path] = []
    path = plan.out_dir
    pixels = prepared.pixels
    colour: np.ndarray | None = None  # made once, for every output made from the image
    ids = header.input_ids(item.path)
    paths = {
        name: output_path(plan.out_dir / item.rel_dir, item.path.stem, name, prepared.high_depth)
        for name in plan.save
    }
    for taken in paths.values():
        if taken.is_file() and header.made_from_another(
            header.marked_source(taken), ids.path_id, lambda: ids.content_id
        ):
            # the plan refused such outputs; this one came since, from a run beside this one started
            # at the same moment (a job array into one --out): the first written stays, and none of
            # this image's is written beside it (a mask of one photo, the alpha of the other). Only
            # the encoding's few milliseconds are left between this look and the rename.
            why = (
                f"{taken} was written meanwhile from another input of the same name, by another "
                "pdseg run into the same --out; it is kept (give each folder of inputs an --out "
                "of its own)"
            )
            return FileResult(item.path, "failed", [], why, prepared.warnings, item.index)
    try:
        for name in plan.save:
            kind = OUTPUT_KINDS[name]
            path = paths[name]
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind.uses_image and colour is None:
                assert pixels is not None  # the reader keeps them when a kind uses the image
                colour = estimate_foreground(pixels, byte_map) if plan.refine_foreground else pixels
            icc = prepared.icc_profile if kind.carries_profile else None
            # --bg is an sRGB colour; the pixels of an output that carries the image's profile are
            # in that profile's colours: the colour asked for, not a more saturated one
            painted = srgb_into_profile(background, icc) if icc and kind.uses_background else background
            if kind.uses_input_alpha:
                data = kind.make(colour, byte_map, painted, prepared.alpha)
            else:
                data = kind.make(colour, byte_map, painted)
            density = prepared.density if kind.carries_density else None
            mark = header.mark_of(ids, made_ids[name])
            # the mark is how a later run tells its own earlier outputs (replaced) from the user's
            # files of the same layout, such as GT masks (refused: predict_plan.not_an_output), and
            # outputs of another input of the same name (refused: predict_plan, other_inputs_outputs,
            # and above for one written since the plan)
            if path.suffix == HIGH_DEPTH_SUFFIX:
                imio.write_tiff(path, data, icc_profile=icc, software=mark, density=density)
            else:
                imio.write_png(path, data, icc_profile=icc, software=mark, density=density)
            written.append(path)
    except OSError as exc:
        why = f"cannot write {path} ({exc.strerror or exc})"
        failed = FileResult(item.path, "failed", written, why, prepared.warnings, item.index)
        if exc.errno in _STOPS_THE_RUN:
            raise _WriteStopped(Stop(failed, exc.errno)) from exc
        return failed
    except Exception as exc:  # an encoder error must not stop the run
        if runtime.is_out_of_memory(exc):
            refine = plan.refine_foreground and any(OUTPUT_KINDS[name].uses_image for name in plan.save)
            why = f"out of memory making {path.name}" + (
                " (the foreground colour estimate holds several float copies of the image: "
                "--no-refine-foreground needs far less)"
                if refine
                else ""
            )
        else:
            why = f"cannot write {path} ({type(exc).__name__}: {first_line(exc)})"
        return FileResult(item.path, "failed", written, why, prepared.warnings, item.index)
    return FileResult(item.path, "done", written, None, prepared.warnings, item.index)


def _nan_note(path: Path, nan: int, values: int, precision: str) -> str:
    """The warning for an image whose map held NaN, which the map reads as 0 (background)."""
    fix = " (--precision fp32 may keep it finite)" if precision in ("fp16", "bf16") else ""
    return f"{path}: the model's map had {nan:,} of {values:,} values NaN, written as 0 (background){fix}"


def _failed(item: InputFile, error: str, warnings: list[str] | None = None) -> FileResult:
    return FileResult(item.path, "failed", [], error, list(warnings or []), item.index)


def _oom_hint(size: Size, on_gpu: bool) -> str:
    """The fix for an image that ran out of memory on its own (a batch is retried one by one first)."""
    if size == "full":
        elsewhere = ", or --device cpu" if on_gpu else ""
        return f" (try --size 2048{elsewhere}; README lists the memory each size needs)"
    return " (try a smaller --size)"


def _call(callback: ProgressCallback | None, result: FileResult) -> None:
    if callback is not None:
        callback(result)
