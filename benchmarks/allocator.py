"""What the C allocator setting of the ``pdseg`` command does to speed, page faults and memory.

Not a test. Each measurement runs in a fresh process (the setting is process-wide and cannot be
undone), with glibc's default malloc ("default") or with ``runtime.keep_freed_memory()``
("kept"), alternating the two, ``--rounds`` times; the table gives the median over rounds of each
process's median pass time, the minor page faults per pass and the peak resident memory.

    python benchmarks/allocator.py                                  # pdseg-b at 512, 1 thread
    python benchmarks/allocator.py --sizes 512 1024 --paths optimised plain train --rounds 3

Paths: ``optimised`` (``pdseg_cli.optimize``, what ``predict`` runs), ``plain`` (the model in eval
mode) and ``train`` (one AdamW step of pdseg-t, batch 4, BCE loss, at the size).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout, uninstalled

MODES = ("default", "kept")
PATHS = ("optimised", "plain", "train")


def _child(args: argparse.Namespace) -> None:
    import torch

    from pdseg_cli import create_model, optimize, runtime

    applied = runtime.keep_freed_memory() if args.mode == "kept" else None
    if args.mode == "kept" and applied is None:
        raise SystemExit("keep_freed_memory did not apply here (not glibc, or MALLOC_* is set)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = args.size
    if args.path == "train":
        model = create_model("pdseg-t").train()
        opt = torch.optim.AdamW(model.parameters(), 1e-4)
        x = torch.randn(4, 3, size, size)
        y = (torch.rand(4, 1, size, size) > 0.5).float()

        def step() -> None:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    else:
        net = create_model(args.variant).eval()
        if args.path == "optimised":
            net = optimize(net)
        x = torch.randn(1, 3, size, size)

        def step() -> None:
            with torch.inference_mode():
                net(x)

    step()  # warm-up: one-time allocations, oneDNN primitive caches
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = []
    for _ in range(args.passes):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "ms": statistics.median(times) * 1e3,
                "faults": (after.ru_minflt - before.ru_minflt) / args.passes,
                "peak_mib": after.ru_maxrss / 1024,  # Linux: KiB
            }
        )
    )


def _run(args: argparse.Namespace, path: str, size: int, mode: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--path",
        path,
        "--mode",
        mode,
        "--size",
        str(size),
        "--variant",
        args.variant,
        "--passes",
        str(args.passes),
        "--threads",
        str(args.threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="pdseg-b", help="variant of the inference paths")
    parser.add_argument("--sizes", nargs="+", type=int, default=[512], help="square input sides")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=["optimised", "plain"])
    parser.add_argument("--rounds", type=int, default=3, help="processes per path, size and mode")
    parser.add_argument("--passes", type=int, default=3, help="timed passes per process")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    from pdseg_cli.runtime import has_glibc_malloc

    if not has_glibc_malloc():
        raise SystemExit("the setting exists only with glibc on Linux")
    rows = []
    for size in args.sizes:
        for path in args.paths:
            got: dict[str, list[dict]] = {m: [] for m in MODES}
            for _ in range(args.rounds):
                for mode in MODES:  # alternate, so that drifting load hits both alike
                    got[mode].append(_run(args, path, size, mode))
            med = {
                m: {k: statistics.median(r[k] for r in got[m]) for k in ("ms", "faults", "peak_mib")}
                for m in MODES
            }
            what = "pdseg-t train step, batch 4" if path == "train" else f"{args.variant} {path}"
            d, k = med["default"], med["kept"]
            rows.append(
                f"| {what} | {size} | {d['ms']:,.0f} ms | {k['ms']:,.0f} ms | {d['ms'] / k['ms']:.2f}x | "
                f"{d['faults']:,.0f} / {k['faults']:,.0f} | {d['peak_mib']:,.0f} / {k['peak_mib']:,.0f} |"
            )
            print(rows[-1], file=sys.stderr, flush=True)
    print(
        f"\nThreads {args.threads}; {args.rounds} processes per cell, alternating; median of "
        f"{args.passes} passes after one warm-up in each; medians over processes.\n\n"
        "| path | size | default | kept | speed-up | page faults per pass (default / kept) "
        "| peak RSS MiB (default / kept) |\n|---|--:|--:|--:|--:|--:|--:|\n" + "\n".join(rows)
    )


if __name__ == "__main__":
    main()
