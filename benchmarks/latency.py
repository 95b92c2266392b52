"""Forward latency of the pdseg variants: median over timed runs after warm-up, per device and size.

Not a test. Needs only torch (and pdseg itself); prints a markdown table with the machine it ran on.

    python benchmarks/latency.py                                   # pdseg-t, pdseg-b at 512 and 1024
    python benchmarks/latency.py --variants pdseg-t pdseg-b --sizes 256 512 --device cpu
    python benchmarks/latency.py --device cuda --precision fp32 fp16 --sizes 1024 --runs 20
    python benchmarks/latency.py --out benchmarks/RESULTS.md        # also append the table there

Each measurement builds the model with random weights in eval mode (latency does not depend on the
values), runs ``--warmup`` untimed passes, then ``--runs`` timed passes of a 1x3xSxS input under
``torch.inference_mode()``. CUDA runs synchronise before reading the clock. ``fp16``/``bf16`` mean
autocast; the NMF inside stays float32 either way (model.md section 5.1).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout, uninstalled

from pdseg_cli.config import VARIANTS  # noqa: E402
from pdseg_cli.model import count_macs, count_params, create_model  # noqa: E402

DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


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


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(devices: list[str]) -> str:
    """One line naming the hardware and software the numbers came from."""
    parts = [
        f"CPU: {_cpu_name()} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()})",
    ]
    if "cuda" in devices:
        props = torch.cuda.get_device_properties(0)
        parts.append(f"GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}")
    parts.append(f"torch {torch.__version__}, Python {platform.python_version()}, {platform.system()}")
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
    args = parser.parse_args(argv)
    if args.runs < 5:
        parser.error("--runs must be at least 5")
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
    if args.threads:
        torch.set_num_threads(args.threads)
    if "cuda" in args.devices:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
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


if __name__ == "__main__":
    raise SystemExit(main())
