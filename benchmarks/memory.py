"""Peak memory of ``--size full`` inference at large square sizes, each size in a fresh process.

Not a test. Builds the variant with random weights (memory does not depend on the values), makes a
random S x S RGB uint8 image, and runs ``Predictor(size="full").predict(image)`` once: the same code
path as ``pdseg predict --size full`` (normalise, model, resize, sigmoid, 8-bit map), with the same
C allocator setting (``runtime.keep_freed_memory``).

    python benchmarks/memory.py                                    # pdseg-b, CPU, 2048 4096 8192
    python benchmarks/memory.py --sizes 2048 --device cpu cuda
    python benchmarks/memory.py --sizes 4096 --trace               # which module reaches the peak

What is measured, per size, in a child process that does nothing else:

* CPU: the child's peak resident memory (``getrusage`` ru_maxrss), which includes Python, torch's
  libraries and the input image; ``base`` is the peak before the prediction starts.
* CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, not the CUDA context or cache).

``--trace`` adds forward hooks on the model's modules and prints, for the modules during which the
peak grew the most, how much it grew: the stage to compute in chunks if the peak is too high.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout, uninstalled

GB = 10**9  # decimal, as the goals are stated
GOALS_CPU = {4096: 8 * GB, 8192: 24 * GB}  # issue 4: 4096^2 in <= 8 GB, 8192^2 in <= 24 GB on CPU


def _child(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from pdseg_cli import create_model
    from pdseg_cli.engine.predict import Predictor
    from pdseg_cli.runtime import keep_freed_memory, peak_rss

    keep_freed_memory()  # as the pdseg command line does
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    predictor = Predictor(
        create_model(args.variant), device=args.device[0], precision=args.precision, size="full"
    )
    device = predictor.device
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    trace: list[tuple[str, int]] = []
    if args.trace:
        trace = _install_trace(predictor.model, device)
    if device.type == "cuda":
        predictor.predict(np.zeros((256, 256, 3), np.uint8))  # CUDA context and kernels, not counted
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = peak_rss()
    t0 = time.perf_counter()
    out = predictor.predict(image)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else peak_rss()
    assert out.shape == (args.size, args.size)
    growth = sorted(trace, key=lambda t: -t[1])[:8]
    print(
        json.dumps(
            {
                "peak": peak,
                "base": base,
                "seconds": seconds,
                "device": str(device),
                "precision": predictor.precision,
                "trace": growth,
            }
        )
    )


def _install_trace(model: object, device: object) -> list[tuple[str, int]]:
    """Record, for every leaf-ish module, how much the peak grew while it ran."""
    import torch

    from pdseg_cli.runtime import peak_rss

    def peak() -> int:
        if getattr(device, "type", "cpu") == "cuda":
            return int(torch.cuda.max_memory_allocated(device))
        return peak_rss()

    out: list[tuple[str, int]] = []
    start: dict[str, int] = {}
    for name, module in model.named_modules():  # type: ignore[attr-defined]
        if not name or name.count(".") > 3:
            continue

        def pre(_m: object, _i: object, name: str = name) -> None:
            start[name] = peak()

        def post(_m: object, _i: object, _o: object, name: str = name) -> None:
            grew = peak() - start.get(name, 0)
            if grew > 0:
                out.append((name, grew))

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)
    return out


def _run_size(args: argparse.Namespace, size: int, device: str) -> dict:
    cmd = [
        sys.executable, __file__, "--child", "--size", str(size), "--device", device,
        "--variant", args.variant, "--precision", args.precision, "--threads", str(args.threads),
    ]  # fmt: skip
    if args.trace:
        cmd.append("--trace")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout > {args.timeout:.0f} s"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
        status = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"failed: {tail}"
        return {"status": status, "wall": wall}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["status"] = "ok"
    result["wall"] = wall
    return result


def _gb(n: int | None) -> str:
    return "-" if n is None else f"{n / GB:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--device", nargs="+", default=["cpu"], help="cpu and/or cuda (cuda:N)")
    parser.add_argument("--variant", default="pdseg-b")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per size")
    parser.add_argument("--trace", action="store_true", help="print the modules during which the peak grew")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    import torch

    print(
        f"# pdseg {args.variant}, --size full, random weights; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")
    )
    print()
    print("| size | device | precision | peak (GB) | before predict (GB) | predict (s) | goal | status |")
    print("| ---: | --- | --- | ---: | ---: | ---: | --- | --- |")
    for device in args.device:
        for size in args.sizes:
            r = _run_size(args, size, device)
            goal = GOALS_CPU.get(size) if device == "cpu" else None
            verdict = (
                "-" if goal is None or r.get("peak") is None else ("met" if r["peak"] <= goal else "MISSED")
            )
            goal_text = "-" if goal is None else f"<= {goal // GB} GB {verdict}"
            seconds = f"{r['seconds']:.1f}" if "seconds" in r else "-"
            print(
                f"| {size}x{size} | {r.get('device', device)} | {r.get('precision', args.precision)} | "
                f"{_gb(r.get('peak'))} | {_gb(r.get('base'))} | {seconds} | {goal_text} | {r['status']} |",
                flush=True,
            )
            for name, grew in r.get("trace", []):
                print(f"|   | peak grew {grew / GB:.2f} GB in `{name}` | | | | | | |", flush=True)


if __name__ == "__main__":
    main()
