"""Forward latency of the pdseg variants: median over timed runs after warm-up, per device and size.

Not a test. Needs only torch (and pdseg itself); prints a markdown table with the machine it ran on.

    python benchmarks/latency.py                                   # pdseg-t, pdseg-b at 512 and 1024
    python benchmarks/latency.py --variants pdseg-t pdseg-b --sizes 256 512 --device cpu
    python benchmarks/latency.py --device cuda --precision fp32 fp16 --sizes 1024 --runs 20
    python benchmarks/latency.py --out benchmarks/RESULTS.md        # also append the table there
    python benchmarks/latency.py --reference --variants pdseg-b --sizes 512 --threads 1
    python benchmarks/latency.py --reference --profile 15 --variants pdseg-b --sizes 512 --runs 1
    python benchmarks/latency.py --reference --keep-freed-memory ...  # the allocator setting of `pdseg`

Each measurement builds the model with random weights in eval mode (latency does not depend on the
values), runs ``--warmup`` untimed passes, then ``--runs`` timed passes of a 1x3xSxS input under
``torch.inference_mode()``. CUDA runs synchronise before reading the clock. ``fp16``/``bf16`` mean
autocast; the NMF inside stays float32 either way (docs/model.md, 'NMF precision').

``--reference`` times the plain model (fp32, as built) and its ``pdseg_cli.optimize`` form (in the
asked precision) in one process, alternating run by run so that load from other processes hits
both alike, and prints the speed-up of the medians, the CPU-time speed-up (robust to other
processes when run with ``--threads 1``) and the largest logit and probability differences to the
plain fp32 output. ``--profile N`` adds, for both paths, a breakdown of one pass by module (encoder
stage, decoder level, NMF) and the top N operators by self time (``torch.profiler``).

``--reference`` also measures the machine's floor for the network (see ``Floor``): the best rate
``torch.mm`` reaches on the network's own 1x1-convolution shapes, and the time all its
multiply-adds would take at that rate. ``plain / floor`` is the largest speed-up over the plain
path that any rewrite with the same arithmetic could reach on that machine; ``optimised / floor``
is how far the optimised path still is from it.

``--keep-freed-memory`` first applies the glibc malloc setting that the ``pdseg`` command line runs
with (``pdseg_cli.runtime.keep_freed_memory``); without it the process keeps glibc's defaults, as a
plain Python script has. The machine line of the output says which.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout, uninstalled

from pdseg_cli.config import VARIANTS  # noqa: E402
from pdseg_cli.engine.benchmark import cpu_name  # noqa: E402
from pdseg_cli.model import count_macs, count_params, create_model  # noqa: E402
from pdseg_cli.model.optimize import optimize  # noqa: E402
from pdseg_cli.runtime import keep_freed_memory  # noqa: E402

DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# what the C allocator does in this process (--keep-freed-memory changes it)
ALLOCATOR = "the C allocator's defaults"


@dataclass
class Result:
    variant: str
    size: int
    device: str
    precision: str
    params: int
    gmacs: float
    times_ms: list[float]
    peak_mib: float | None

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)


def machine_description(devices: list[str]) -> str:
    """One line naming the hardware and software the numbers came from."""
    parts = [
        f"CPU: {cpu_name()} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()})",
    ]
    if "cuda" in devices:
        props = torch.cuda.get_device_properties(0)
        parts.append(f"GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}")
    parts.append(f"torch {torch.__version__}, Python {platform.python_version()}, {platform.system()}")
    parts.append(f"allocator: {ALLOCATOR}")
    return "; ".join(parts)


def _autocast(device: str, precision: str) -> contextlib.AbstractContextManager[None]:
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _timer(device: str) -> Iterator[list[float]]:
    out: list[float] = []
    _sync(device)
    start = time.perf_counter()
    yield out
    _sync(device)
    out.append((time.perf_counter() - start) * 1000.0)


def measure(variant: str, size: int, device: str, precision: str, runs: int, warmup: int) -> Result:
    """Time ``runs`` forward passes of one variant on a 1x3xSxS input."""
    model = create_model(variant).to(device)
    x = torch.randn(1, 3, size, size, device=device)
    times: list[float] = []
    with torch.inference_mode(), _autocast(device, precision):
        for _ in range(warmup):
            model(x)
        if device == "cuda":  # after warm-up: cuDNN's algorithm search allocates large workspaces
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(runs):
            with _timer(device) as t:
                model(x)
            times.extend(t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    result = Result(
        variant=variant,
        size=size,
        device=device,
        precision=precision,
        params=count_params(variant),
        gmacs=count_macs(variant, size) / 1e9,
        times_ms=times,
        peak_mib=peak,
    )
    del model, x
    return result


def markdown_table(results: list[Result]) -> str:
    """The results as a markdown table (right-aligned numbers)."""
    lines = [
        "| variant | params | input | GMACs | device | precision "
        "| median ms | min ms | max ms | runs | peak MiB |",
        "|---|--:|--:|--:|---|---|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        peak = f"{r.peak_mib:,.0f}" if r.peak_mib is not None else "-"
        lines.append(
            f"| {r.variant} | {r.params / 1e6:.2f}M | {r.size}x{r.size} | {r.gmacs:.2f} | {r.device} | "
            f"{r.precision} | {r.median:,.1f} | {min(r.times_ms):,.1f} | {max(r.times_ms):,.1f} | "
            f"{len(r.times_ms)} | {peak} |"
        )
    return "\n".join(lines)


@dataclass
class Reference:
    """The plain fp32 model against its optimised form, timed alternately in one process."""

    variant: str
    size: int
    device: str
    precision: str
    plain_ms: list[float]
    fast_ms: list[float]
    plain_cpu_ms: list[float]
    fast_cpu_ms: list[float]
    max_dlogit: float
    max_dprob: float
    floor: Floor

    @property
    def speedup(self) -> float:
        return statistics.median(self.plain_ms) / statistics.median(self.fast_ms)

    @property
    def cpu_speedup(self) -> float:
        return statistics.median(self.plain_cpu_ms) / statistics.median(self.fast_cpu_ms)


@dataclass
class Floor:
    """What the network's multiply-adds alone would take at this machine's best GEMM rate.

    The rate is measured, not taken from a data sheet: ``torch.mm`` on each distinct shape of the
    network's own 1x1 convolutions at this input size (pixels x in x out), in the optimised path's
    dtype, with the threads of the run; the fastest shape sets it. No path can run every
    multiply-add faster than the best of its GEMMs, so ``floor_ms`` bounds the time from below, and
    ``plain / floor`` bounds the speed-up any rewrite with the same maths can reach on this machine.
    """

    gmacs: float  # the whole network's multiply-adds at this size
    rate_gmacs: float  # the best measured GEMM rate, GMAC/s
    shape: tuple[int, int, int]  # the (M, K, N) GEMM that reached it

    @property
    def floor_ms(self) -> float:
        return 1000.0 * self.gmacs / self.rate_gmacs


def gemm_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, int, int]]:
    """The distinct (pixels, in, out) GEMMs of ``model``'s ungrouped 1x1 convolutions on ``x``."""
    shapes: set[tuple[int, int, int]] = set()

    def hook(conv: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        b, c, h, w = args[0].shape
        shapes.add((b * h * w, c, conv.out_channels))

    handles = [
        m.register_forward_pre_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
    ]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return sorted(shapes)


def measure_floor(
    model: nn.Module, x: torch.Tensor, device: str, precision: str, gmacs: float, repeats: int = 5
) -> Floor:
    """Time ``torch.mm`` on ``model``'s 1x1-convolution shapes; the best rate gives the floor."""
    dtype = DTYPES[precision] or torch.float32
    best = (0.0, (0, 0, 0))
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.inference_mode():
        for m, k, n in gemm_shapes(model, x):
            a = torch.randn(m, k, device=device, generator=gen).to(dtype)
            b = torch.randn(k, n, device=device, generator=gen).to(dtype)
            torch.mm(a, b)
            times: list[float] = []
            for _ in range(repeats):
                with _timer(device) as t:
                    torch.mm(a, b)
                times.extend(t)
            rate = m * k * n / (statistics.median(times) / 1000.0) / 1e9
            if rate > best[0]:
                best = (rate, (m, k, n))
    return Floor(gmacs=gmacs, rate_gmacs=best[0], shape=best[1])


def measure_reference(
    variant: str, size: int, device: str, precision: str, runs: int, warmup: int, profile: int = 0
) -> Reference:
    """Time the plain fp32 model and ``optimize(model, precision=...)`` alternately on 1x3xSxS."""
    torch.manual_seed(0)
    plain = create_model(variant).to(device)
    fast = optimize(plain, precision=precision)
    x = torch.randn(1, 3, size, size, device=device)
    timings: dict[str, tuple[list[float], list[float]]] = {"plain": ([], []), "fast": ([], [])}
    paths: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"plain": plain, "fast": fast}
    with torch.inference_mode():
        for _ in range(warmup):
            ref = plain(x).float()
            out = fast(x).float()
        for _ in range(runs):
            for name, fn in paths.items():
                cpu = time.process_time()
                with _timer(device) as t:
                    fn(x)
                timings[name][0].extend(t)
                timings[name][1].append((time.process_time() - cpu) * 1000.0)
    result = Reference(
        variant=variant,
        size=size,
        device=device,
        precision=precision,
        plain_ms=timings["plain"][0],
        fast_ms=timings["fast"][0],
        plain_cpu_ms=timings["plain"][1],
        fast_cpu_ms=timings["fast"][1],
        max_dlogit=float((ref - out).abs().max()),
        max_dprob=float((ref.sigmoid() - out.sigmoid()).abs().max()),
        floor=measure_floor(plain, x, device, precision, count_macs(variant, size) / 1e9),
    )
    if profile:
        for name, model in (("plain fp32", plain), (f"optimised {precision}", fast)):
            print(f"\n#### Profile: {variant} {size}x{size} {device}, {name}\n", flush=True)
            print(profile_pass(model, x, device, profile))
    del plain, fast, x
    return result


# module-name pattern, label, offset added to the captured index: the plain model names its stages
# 1-4 (``block1``), the optimised form 0-3 (``stages.0``); both are shown as 1-4
_MODULE_LABELS = (
    (re.compile(r"^encoder\.patch_embed(\d)$"), "encoder stage {} downsample", 0),
    (re.compile(r"^encoder\.embeds\.(\d)\.\d$"), "encoder stage {} downsample", 1),
    (re.compile(r"^encoder\.block(\d)\.\d+$"), "encoder stage {} blocks", 0),
    (re.compile(r"^encoder\.stages\.(\d)\.\d+$"), "encoder stage {} blocks", 1),
    (re.compile(r"^encoder\.block\d\.\d+\.attn$"), "encoder attention (all blocks)", 0),
    (re.compile(r"^encoder\.block\d\.\d+\.mlp$"), "encoder MLP (all blocks)", 0),
    (re.compile(r"^decoder\.levels\.(\d)$"), "decoder level {}", 1),
    (re.compile(r"^decoder\.level$"), "decoder head", 0),
    (re.compile(r"\.(?:ham|nmf)$"), "NMF (all levels)", 0),
)


def _label(name: str) -> str | None:
    for pattern, label, offset in _MODULE_LABELS:
        m = pattern.search(name)
        if m:
            return label.format(*(int(g) + offset for g in m.groups()))
    return None


@contextlib.contextmanager
def _module_ranges(model: nn.Module) -> Iterator[list[str]]:
    """Wrap the labelled modules' forward passes in profiler ranges named ``[module] <label>``."""
    handles = []
    labels: list[str] = []
    for name, module in model.named_modules():
        label = _label(name)
        if label is None:
            continue
        key = f"[module] {label}"
        labels.append(key)
        stack: list[torch.profiler.record_function] = []

        def pre(_m: nn.Module, _args: object, key: str = key, stack: list = stack) -> None:
            rf = torch.profiler.record_function(key)
            rf.__enter__()
            stack.append(rf)

        def post(_m: nn.Module, _args: object, _out: object, stack: list = stack) -> None:
            stack.pop().__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield labels
    finally:
        for h in handles:
            h.remove()


def profile_pass(model: nn.Module, x: torch.Tensor, device: str, top: int) -> str:
    """One profiled pass: time per labelled module, then the top operators by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with _module_ranges(model) as labels, torch.inference_mode():
        with profile(activities=activities) as prof:
            _sync(device)
            start = time.perf_counter()
            model(x)
            _sync(device)
            wall_ms = (time.perf_counter() - start) * 1000.0
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    found = {e.key: e for e in events}
    order = list(dict.fromkeys(labels))  # model order: encoder stages, then decoder levels
    by_module = [(key, found[key].cpu_time_total, found[key].count) for key in order if key in found]
    lines = ["| module | calls | CPU total ms | share |", "|---|--:|--:|--:|"]
    for key, us, count in by_module:
        share = 100.0 * us / total_us if total_us else 0.0
        lines.append(f"| {key.removeprefix('[module] ')} | {count} | {us / 1000:,.1f} | {share:.0f}% |")
    lines.append(f"| (whole pass, self CPU) | 1 | {total_us / 1000:,.1f} | 100% |")
    ops = [e for e in events if not e.key.startswith("[module]")]
    sort_key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    ops.sort(key=lambda e: getattr(e, sort_key, 0.0), reverse=True)
    if device != "cuda":
        lines += ["", "| operator | calls | self CPU ms | share |", "|---|--:|--:|--:|"]
        for e in ops[:top]:
            share = 100.0 * e.self_cpu_time_total / total_us if total_us else 0.0
            lines.append(f"| {e.key} | {e.count} | {e.self_cpu_time_total / 1000:,.1f} | {share:.0f}% |")
        return "\n".join(lines)
    return "\n".join(lines + gpu_operator_table(ops, top, wall_ms))


def gpu_operator_table(ops: list[Any], top: int, wall_ms: float) -> list[str]:
    """Profiler events (sorted by GPU time) -> table lines and the kernel-time floor of the pass."""
    # on a GPU the kernels' own time is the floor of this pass without launch and host overhead
    sort_key = "self_device_time_total"
    gpu_us = sum(getattr(e, sort_key, 0.0) for e in ops)
    lines: list[str] = []
    lines += ["", "| operator | calls | self GPU ms | share of GPU time | self CPU ms |"]
    lines.append("|---|--:|--:|--:|--:|")
    for e in ops[:top]:
        dev_us = getattr(e, sort_key, 0.0)
        share = 100.0 * dev_us / gpu_us if gpu_us else 0.0
        cpu_ms = e.self_cpu_time_total / 1000
        lines.append(f"| {e.key} | {e.count} | {dev_us / 1000:,.2f} | {share:.0f}% | {cpu_ms:,.2f} |")
    busy = 100.0 * gpu_us / 1000.0 / wall_ms if wall_ms else 0.0
    lines.append(
        f"\nGPU kernel time {gpu_us / 1000:,.2f} ms in a {wall_ms:,.2f} ms profiled pass ({busy:.0f}% busy): "
        "the kernels alone are the floor of this pass; well under 100% busy, the GPU waits on the host "
        "(kernel launches: batch more images, or --compile reduce-overhead for CUDA graphs)."
    )
    return lines


def reference_table(results: list[Reference]) -> str:
    """The plain-vs-optimised results as a markdown table."""
    lines = [
        "| variant | input | device | optimised precision | plain fp32 median ms | optimised median ms "
        "| speed-up | CPU-time speed-up | max abs dlogit | max abs dprob | runs "
        "| GEMM peak GMAC/s | floor ms | plain / floor | optimised / floor |",
        "|---|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        plain_ms, fast_ms = statistics.median(r.plain_ms), statistics.median(r.fast_ms)
        floor_ms = r.floor.floor_ms
        lines.append(
            f"| {r.variant} | {r.size}x{r.size} | {r.device} | {r.precision} | "
            f"{plain_ms:,.1f} | {fast_ms:,.1f} | "
            f"{r.speedup:.2f}x | {r.cpu_speedup:.2f}x | {r.max_dlogit:.1e} | {r.max_dprob:.1e} | "
            f"{len(r.plain_ms)} | {r.floor.rate_gmacs:.1f} | {floor_ms:,.1f} | "
            f"{plain_ms / floor_ms:.2f}x | {fast_ms / floor_ms:.2f}x |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["pdseg-t", "pdseg-b"],
        choices=sorted(VARIANTS),
        help="variants to time",
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024], help="square input sides")
    parser.add_argument(
        "--device",
        nargs="+",
        default=["auto"],
        choices=["auto", "cpu", "cuda"],
        help="auto = cpu, plus cuda when available",
    )
    parser.add_argument(
        "--precision", nargs="+", default=["fp32"], choices=list(DTYPES), help="autocast dtype"
    )
    parser.add_argument(
        "--runs", type=int, default=5, help="timed runs per setting (>= 5; the median is reported)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument(
        "--out", type=Path, default=None, help="also append the markdown section to this file"
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="time the plain fp32 model against its optimised form, alternating, in one process",
    )
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="apply the glibc malloc setting the pdseg command line uses (runtime.keep_freed_memory)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="with --reference: per-module breakdown and top N operators of one pass of each path",
    )
    args = parser.parse_args(argv)
    if args.profile and not args.reference:
        parser.error("--profile needs --reference")
    if args.runs < (1 if args.reference else 5):
        parser.error("--runs must be at least 5 (1 with --reference)")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1")
    if min(args.sizes) < 1:
        parser.error("--sizes must be positive")
    devices: list[str] = []
    for d in args.device:
        wanted = ["cpu", "cuda"] if d == "auto" else [d]
        for w in wanted:
            if w == "cuda" and not torch.cuda.is_available():
                if d == "cuda":
                    parser.error("--device cuda: CUDA is not available")
                continue
            if w not in devices:
                devices.append(w)
    args.devices = devices
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global ALLOCATOR
    if args.keep_freed_memory:
        ALLOCATOR = keep_freed_memory() or "the C allocator's defaults (keep_freed_memory did not apply)"
    if args.threads:
        torch.set_num_threads(args.threads)
    if "cuda" in args.devices:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    if args.reference:
        return main_reference(args)
    results = []
    for device in args.devices:
        for precision in args.precision:
            for variant in args.variants:
                for size in args.sizes:
                    r = measure(variant, size, device, precision, args.runs, args.warmup)
                    print(
                        f"{variant} {size}x{size} {device} {precision}: median {r.median:.1f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
                    results.append(r)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"### {stamp}\n\n{machine_description(args.devices)}\n\n"
        f"Batch 1, random weights, eval mode, median of {args.runs} runs after {args.warmup} warm-up.\n\n"
        f"{markdown_table(results)}\n"
    )
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


def main_reference(args: argparse.Namespace) -> int:
    refs = []
    for device in args.devices:
        for precision in args.precision:
            for variant in args.variants:
                for size in args.sizes:
                    r = measure_reference(
                        variant, size, device, precision, args.runs, args.warmup, args.profile
                    )
                    plain_ms, fast_ms = statistics.median(r.plain_ms), statistics.median(r.fast_ms)
                    print(
                        f"{variant} {size}x{size} {device} {precision}: plain fp32 {plain_ms:.1f} ms, "
                        f"optimised {fast_ms:.1f} ms, {r.speedup:.2f}x (CPU time {r.cpu_speedup:.2f}x), "
                        f"max |dlogit| {r.max_dlogit:.1e}; GEMM floor {r.floor.floor_ms:.1f} ms "
                        f"({r.floor.rate_gmacs:.1f} GMAC/s on {'x'.join(map(str, r.floor.shape))})",
                        file=sys.stderr,
                        flush=True,
                    )
                    refs.append(r)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"### {stamp}: plain vs optimised\n\n{machine_description(args.devices)}\n\n"
        f"Batch 1, random weights (seed 0), eval mode; plain fp32 and optimised runs alternate in one "
        f"process; median of {args.runs} runs after {args.warmup} warm-up. Command: "
        f"`python benchmarks/latency.py {' '.join(sys.argv[1:])}`\n\n{reference_table(refs)}\n"
    )
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
