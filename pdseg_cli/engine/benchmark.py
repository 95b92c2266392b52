"""Forward-pass latency, throughput and peak memory of a pdseg model on this machine.

:func:`run_benchmark` is the code behind ``pdseg benchmark``; it returns plain dataclass rows and
prints nothing::

    from pdseg_cli.engine.benchmark import run_benchmark
    report = run_benchmark("pdseg-b", sizes=[512, 1024], device="cpu", mode="compare")
    for row in report.rows:
        print(row.size, row.path, row.median_ms, row.speedup)

How it measures:

* Random weights (seed 0) unless a checkpoint is given; eval mode; ``torch.inference_mode()``;
  a (B, 3, S, S) standard-normal input (seed 0). Latency does not depend on the weight values.
* ``warmup`` untimed passes, then ``runs`` timed passes; the median is the latency, ``batch /
  median`` the throughput. On a GPU (CUDA, MPS) the clock is read after the queued work is done.
* ``mode="compare"`` times the plain model and its :func:`~pdseg_cli.model.optimize.optimize` form
  in one process, alternating run by run (so load from other processes hits both alike), and
  reports the speed-up and the largest |logit difference| between the two.
* Peak memory, from one more pass per path after the timed ones. CUDA:
  ``torch.cuda.max_memory_allocated`` (tensors PyTorch allocated, weights and input included; not
  the CUDA context or the caching allocator's reserve). CPU: the process's resident memory,
  sampled every 2 ms during the pass, minus what was resident just before it: the activations and
  work buffers of a pass, weights excluded. Memory the C allocator keeps for reuse counts; peaks
  shorter than a sample or memory already resident before the pass do not; an estimate. Other
  devices: not measured.

Ctrl-C keeps what was measured: :class:`BenchmarkInterrupted` (a KeyboardInterrupt) carries the
report of the sizes finished before it, with ``interrupted_after`` set.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pdseg_cli import runtime
from pdseg_cli.errors import InputError, Interrupted, counted

Mode = Literal["optimized", "plain", "compare"]
MODES: tuple[str, ...] = ("optimized", "plain", "compare")
_SAMPLE_SECONDS = 0.002  # CPU resident-memory sampling period

CUDA_MEMORY_NOTE = "peak: torch.cuda.max_memory_allocated during one pass (weights and input included)"
# a CUDA graph's replay allocates nothing (its activations sit in the graph's memory pool, allocated
# when it was recorded), so one more pass would show only the weights and the input
CUDA_GRAPHS_MEMORY_NOTE = (
    "peak: torch.cuda.max_memory_allocated during one pass (weights and input included); for the "
    "CUDA-graph form, over its warm-up passes, which compile and record the graphs (a replay "
    "allocates nothing): an upper bound, as compiling may use some memory of its own"
)
CPU_MEMORY_NOTE = (
    "peak: resident memory of the process above its level before one pass, sampled every 2 ms "
    "(activations and buffers of a pass; weights excluded; an estimate)"
)


@dataclass(frozen=True)
class BenchmarkRow:
    """One model form at one input size.

    Attributes:
        size: the input side S (inputs are B x 3 x S x S).
        batch: B.
        path: ``optimized`` (the :func:`optimize` form) or ``plain`` (the model as built).
        times_ms: every timed pass, in milliseconds.
        median_ms: latency of one batch (median of ``times_ms``).
        min_ms: the fastest pass.
        images_per_s: throughput, ``batch / median``.
        peak_bytes: peak memory as :attr:`BenchmarkReport.memory_note` says, or None if unknown.
        speedup: plain median / optimized median (``compare`` mode, optimized rows only).
        max_abs_diff: largest |logit difference| to the plain path (``compare`` mode, optimized rows).
    """

    size: int
    batch: int
    path: str
    times_ms: tuple[float, ...]
    median_ms: float
    min_ms: float
    images_per_s: float
    peak_bytes: int | None
    speedup: float | None = None
    max_abs_diff: float | None = None


@dataclass(frozen=True)
class BenchmarkReport:
    """Everything one benchmark run measured, with the machine it ran on."""

    variant: str
    device: str
    device_name: str
    precision: str
    threads: int
    runs: int
    warmup: int
    weights: str | None
    memory_note: str
    torch_version: str
    rows: list[BenchmarkRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    out_of_memory: list[int] = field(default_factory=list)  # sizes that did not fit (no rows)
    compile: str | None = None  # the torch.compile mode of the optimised form, None when eager
    sizes: list[int] = field(default_factory=list)  # the sizes asked for, in order
    # Ctrl-C stopped the run after the first N of ``sizes`` (timed, or out of memory); None: it was not
    interrupted_after: int | None = None


class BenchmarkInterrupted(Interrupted):
    """Ctrl-C during :func:`run_benchmark`: still a KeyboardInterrupt (the CLI exits 130), carrying
    the report of the sizes finished before it (with ``interrupted_after`` set), so that what was
    measured is not lost.

    Args:
        report: the partial report.
    """

    def __init__(self, report: BenchmarkReport) -> None:
        done = report.interrupted_after or 0
        rest = " ".join(f"--size {size}" for size in report.sizes[done:])
        super().__init__(
            f"{done} of {counted(len(report.sizes), 'size')} finished before Ctrl-C; to time the rest: {rest}"
        )
        self.report = report


# ----------------------------------------------------------------------------------------------
# machine description


def cpu_name() -> str:
    """The CPU model name (Linux /proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: Any) -> str:
    """A one-line description of a torch device."""
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"{cpu_name()} ({os.cpu_count()} logical cores)"


# ----------------------------------------------------------------------------------------------
# memory


def _rss_bytes() -> int | None:
    """Current resident set size (Linux /proc/self/statm), or None where unavailable."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@contextlib.contextmanager
def _rss_peak() -> Iterator[list[int]]:
    """Yield a list that holds, on exit, the peak RSS growth in bytes over the block (empty: unknown)."""
    base = _rss_bytes()
    out: list[int] = []
    if base is None:
        yield out
        return
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss = _rss_bytes()
            if rss is not None and rss > peak[0]:
                peak[0] = rss
            stop.wait(_SAMPLE_SECONDS)

    thread = threading.Thread(target=sample, name="pdseg-rss-sampler", daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        rss = _rss_bytes()
        if rss is not None:
            peak[0] = max(peak[0], rss)
        out.append(max(0, peak[0] - base))


# ----------------------------------------------------------------------------------------------
# timing


# fn: called with no arguments; Callable[..., Any], as mypy infers no type for a lambda that binds a
# loop variable by a default argument
def _time_once(fn: Callable[..., Any], device: Any) -> tuple[float, Any]:
    runtime.synchronize(device)
    start = time.perf_counter()
    out = fn()
    runtime.synchronize(device)
    return (time.perf_counter() - start) * 1000.0, out


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    import torch

    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cpu_busy_note(threads: int | None, mode: str) -> str | None:
    """A warning when other processes already keep the CPU busy (Unix load average above the
    cores), with the settings that steady the figures that this run does not use already."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = os.cpu_count() or 1
    if load <= cores:
        return None
    steadier = [
        o for o, used in (("--threads 1", threads == 1), ("--mode compare", mode == "compare")) if not used
    ]
    return (
        f"load average {load:.1f} on {cores} logical cores: other processes compete for the CPU and "
        "timings vary"
        + (
            f"; {' and '.join(steadier)} give{'s' if len(steadier) == 1 else ''} steadier figures"
            if steadier
            else ""
        )
    )


def _build_model(variant: str | None, weights: str | os.PathLike[str] | None) -> Any:
    import torch

    from pdseg_cli.config import DEFAULT_VARIANT, get_config
    from pdseg_cli.model.build import create_model, load_model

    if weights is not None:
        model = load_model(weights)
        if variant is not None and get_config(variant).name != model.config.name:
            raise InputError(
                f"--variant {variant} does not match {weights}, which holds {model.config.name}",
                hint="leave out --variant with --weights: the checkpoint names its variant",
            )
        return model
    config = get_config(variant or DEFAULT_VARIANT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_model(config)


def run_benchmark(
    variant: str | None = None,
    sizes: Sequence[int] = (512,),
    *,
    batch: int = 1,
    device: str = "auto",
    precision: str = "fp32",
    runs: int = 5,
    warmup: int = 1,
    weights: str | os.PathLike[str] | None = None,
    mode: str = "optimized",
    channels_last: bool = True,
    threads: int | None = None,
    compile: str | bool | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> BenchmarkReport:
    """Time forward passes of one model at each size.

    Args:
        variant: a variant name (random weights); None takes the checkpoint's with ``weights``,
            else pdseg-b.
        sizes: square input sides.
        batch: images per forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (autocast; the NMF stays fp32).
        runs: timed passes per size and path (the median is reported).
        warmup: untimed passes before timing, per size and path (at least 1: the first pass of a
            size pays one-off costs such as oneDNN primitive creation and cuDNN algorithm search).
        weights: a pdseg checkpoint to load instead of random weights.
        mode: ``optimized`` (the :func:`optimize` form), ``plain`` (the model as built) or
            ``compare`` (both, alternating, with speed-up and logit difference).
        channels_last: passed to :func:`optimize`.
        threads: CPU threads for the run (restored afterwards); None keeps torch's setting.
        compile: a torch.compile mode for the optimised form (``off``/None: eager); the warm-up
            passes compile, so give ``warmup`` >= 2 with ``reduce-overhead`` (CUDA graphs record on
            the second call).
        on_progress: called with a short status line before each size.

    A size that runs out of memory gets no rows: it is listed in ``out_of_memory`` and explained in
    ``notes``, and the other sizes are still measured.

    Raises:
        BenchmarkInterrupted: Ctrl-C while a size was measured; it carries the finished sizes' rows
            (a Ctrl-C while the model is built is a plain KeyboardInterrupt: nothing was measured).
        InputError: bad sizes, counts or mode, or a variant that contradicts the checkpoint.
        NotAvailableError: the device or precision is not available.
        WeightsError: the checkpoint cannot be used.
    """
    import torch

    from pdseg_cli.model.optimize import optimize

    if mode not in MODES:
        raise InputError(f"unknown benchmark mode {mode!r}", hint=f"use one of {', '.join(MODES)}")
    from pdseg_cli.engine.predict import MAX_SIDE  # the largest working side predict takes

    if not sizes:
        raise InputError("no input size given", hint="e.g. --size 1024, or several: --size 512 --size 2048")
    for size in sizes:
        if size < 32:
            raise InputError(
                f"--size {size} is too small: at least 32 (the model's stride)",
                hint="e.g. --size 1024, or several: --size 512 --size 2048",
            )
        if size > MAX_SIDE:
            raise InputError(
                f"--size {size} is too large: at most {MAX_SIDE}, the largest side predict takes",
                hint=f"e.g. --size 1024, or several: --size 512 --size 2048 (up to --size {MAX_SIDE})",
            )
    if batch < 1 or runs < 1 or warmup < 1:
        raise InputError(f"need batch >= 1, runs >= 1 and warmup >= 1 (got {batch}, {runs}, {warmup})")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    compile_mode = runtime.resolve_compile(compile)
    if compile_mode and mode == "plain":
        raise InputError("--compile applies to the optimized form", hint="use --mode optimized or compare")
    choice = runtime.resolve_device(device)
    dev = choice.device
    prec = runtime.resolve_precision(precision, dev)
    model = _build_model(variant, weights).to(dev).eval()
    notes: list[str] = []
    busy = _cpu_busy_note(threads, mode)
    if busy:
        notes.append(busy)
    slow = runtime.emulated_precision_note(dev, prec)
    if slow:
        notes.append(slow)
    forms: dict[str, Callable[[Any], Any]] = {}
    if mode in ("plain", "compare"):

        def run_plain(x: Any) -> Any:
            with runtime.autocast(dev, prec):
                return model(x)

        forms["plain"] = run_plain
    if mode in ("optimized", "compare"):
        fast = optimize(model, precision=prec, channels_last=channels_last, compile=compile_mode)
        forms["optimized"] = fast
    report = BenchmarkReport(
        variant=model.config.name,
        device=str(dev),
        device_name=device_name(dev),
        precision=prec,
        threads=threads or torch.get_num_threads(),
        runs=runs,
        warmup=warmup,
        weights=None if weights is None else str(weights),
        memory_note=memory_note(dev, compile_mode),
        torch_version=str(torch.__version__),
        notes=notes,
        compile=compile_mode,
        sizes=list(sizes),
    )
    gen = torch.Generator().manual_seed(0)
    x: torch.Tensor | None  # freed after each size
    with _threads(threads), torch.inference_mode():
        for done, size in enumerate(sizes):
            if on_progress is not None:
                on_progress(f"{report.variant} {batch}x3x{size}x{size} on {dev}, {prec}")
            try:
                x = torch.randn(batch, 3, size, size, generator=gen).to(dev)
                report.rows.extend(_measure_size(forms, x, dev, size, runs, warmup))
            except KeyboardInterrupt:
                # the sizes already timed are results: hand them on rather than drop them
                raise BenchmarkInterrupted(replace(report, interrupted_after=done)) from None
            except RuntimeError as exc:  # torch.cuda.OutOfMemoryError included
                if not runtime.is_out_of_memory(exc):
                    raise
                # a size that does not fit is a result too: say so and go on with the others
                report.out_of_memory.append(size)
                report.notes.append(
                    f"{batch}x3x{size}x{size}: out of memory on {dev}; "
                    + ("try a smaller --batch or --size" if batch > 1 else "try a smaller --size")
                )
            x = None  # free the input (and, with the exception gone, every activation) before the next size
            runtime.empty_device_cache(dev)
    return report


def _peak_memory(fn: Callable[[Any], Any], x: Any, dev: Any) -> int | None:
    """Peak memory of one more pass of ``fn(x)``, as the report's memory note says."""
    import torch

    if dev.type == "cuda":
        runtime.synchronize(dev)
        runtime.empty_device_cache(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        fn(x)
        runtime.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev))
    if dev.type != "cpu":
        return None
    runtime.release_freed_memory()  # else buffers kept from the last pass hide this pass's needs
    with _rss_peak() as grown:
        fn(x)
    return grown[0] if grown else None


def memory_note(dev: Any, compile_mode: str | None) -> str:
    """What the report's peak memory figures measure on ``dev`` with this torch.compile mode."""
    if dev.type != "cuda":
        return CPU_MEMORY_NOTE
    return CUDA_GRAPHS_MEMORY_NOTE if _cuda_graph_mode(compile_mode) else CUDA_MEMORY_NOTE


def _cuda_graph_mode(compile_mode: str | None) -> bool:
    from pdseg_cli.engine.predict import CUDA_GRAPH_MODES

    return compile_mode in CUDA_GRAPH_MODES


def _measure_size(
    forms: dict[str, Callable[[Any], Any]], x: Any, dev: Any, size: int, runs: int, warmup: int
) -> list[BenchmarkRow]:
    """Warm up, time ``runs`` alternating passes per form, then one pass each for peak memory.

    A form compiled with CUDA graphs (its ``mode``, on a GPU) allocates nothing when it replays them:
    its peak is taken over its warm-up passes instead, which compile and record the graphs.
    """
    import torch

    outputs: dict[str, Any] = {}
    recorded: dict[str, int] = {}
    for name, fn in forms.items():
        graphs = dev.type == "cuda" and _cuda_graph_mode(getattr(fn, "mode", None))
        if graphs:
            runtime.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(warmup):
            outputs[name] = fn(x)
        if graphs:
            runtime.synchronize(dev)
            recorded[name] = int(torch.cuda.max_memory_allocated(dev))
    diff = None
    if len(outputs) == 2:
        diff = float((outputs["plain"].float() - outputs["optimized"].float()).abs().max())
    outputs.clear()
    times: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(runs):
        for name, fn in forms.items():  # alternate: load from other processes hits every path alike
            ms, out = _time_once(lambda fn=fn: fn(x), dev)
            times[name].append(ms)
            del out
    peaks = {name: recorded.get(name) or _peak_memory(fn, x, dev) for name, fn in forms.items()}
    rows = []
    batch = int(x.shape[0])
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        median = medians[name]
        is_fast = name == "optimized" and "plain" in medians
        rows.append(
            BenchmarkRow(
                size=size,
                batch=batch,
                path=name,
                times_ms=tuple(ts),
                median_ms=median,
                min_ms=min(ts),
                images_per_s=batch / (median / 1000.0) if median > 0 else float("inf"),
                peak_bytes=peaks.get(name),
                speedup=medians["plain"] / median if is_fast and median > 0 else None,
                max_abs_diff=diff if is_fast else None,
            )
        )
    return rows
