"""CPU latency of onnxruntime against PyTorch for one pdseg model, as a markdown table.

Exports the model with ``pdseg_cli.engine.export.export_model`` (checked against PyTorch at a small
shape) into a temporary folder, then times ``model(x)`` in PyTorch (``torch.inference_mode``) and
``session.run`` in onnxruntime on the same (B, 3, S, S) input. After ``--warmup`` untimed calls of
each, the two backends are timed alternately, one call each per round, so that load from other
processes hits both alike; the table gives the median and the minimum over ``--runs`` rounds.

Usage (from the repository root)::

    python benchmarks/onnx_latency.py                       # random-weight pdseg-b at 1024x1024
    python benchmarks/onnx_latency.py --variant pdseg-t --size 512 --runs 5
    python benchmarks/onnx_latency.py --weights runs/pdseg-b/best.pt --threads 8
    python benchmarks/onnx_latency.py --variant pdseg-t --size 512 --half   # + an fp16 (--half) export

Needs ``pip install "pdseg[onnx]"``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--variant", default="pdseg-b", help="random-weight variant (default pdseg-b)")
    source.add_argument("--weights", type=Path, help="a pdseg checkpoint instead of random weights")
    parser.add_argument("--size", type=int, default=1024, help="input side S (default 1024)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (>= 5 for a median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="for both backends")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--half", action="store_true", help="also time a `pdseg export --half` (fp16) file")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.size < 32:
        parser.error("need --runs >= 1, --warmup >= 0 and --size >= 32")

    from pdseg_cli.engine.benchmark import cpu_name
    from pdseg_cli.engine.export import export_model
    from pdseg_cli.engine.onnx_backend import OnnxModel
    from pdseg_cli.model import create_model, load_model

    torch.manual_seed(0)
    model = load_model(args.weights) if args.weights else create_model(args.variant)
    variant = model.config.name + ("" if args.weights else " (random weights)")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        side = min(args.size, 256)
        sessions = {}
        for name, half in (("onnxruntime", False), ("onnxruntime fp16", True))[: 2 if args.half else 1]:
            path = Path(tmp) / f"model{'-fp16' if half else ''}.onnx"
            export_model(
                model,
                path,
                "onnx",
                variant=model.config.name,
                config=model.config.to_dict(),
                normalization=dict(model.normalization),
                opset=args.opset,
                half=half,
                check_shapes=[(1, 3, side, side)],
            )
            sessions[name] = OnnxModel(path, threads=args.threads).session
        export_s = time.perf_counter() - start
        input_name = sessions["onnxruntime"].get_inputs()[0].name

        x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
        x_np = x.numpy()
        timings: dict[str, list[float]] = {"PyTorch": [], **{name: [] for name in sessions}}

        def run_torch() -> np.ndarray:
            with torch.inference_mode():
                return torch.sigmoid(model(x)).numpy()

        def ort_runner(name: str) -> Callable[[], np.ndarray]:
            return lambda: sessions[name].run(["probabilities"], {input_name: x_np})[0]

        runners = {"PyTorch": run_torch, **{name: ort_runner(name) for name in sessions}}
        for _ in range(args.warmup):
            for fn in runners.values():
                fn()
        for _ in range(args.runs):
            for name, fn in runners.items():
                start = time.perf_counter()
                fn()
                timings[name].append((time.perf_counter() - start) * 1000)
        reference = run_torch()
        diffs = {name: float(np.abs(reference - runners[name]()).max()) for name in sessions}

    import onnxruntime

    shape = f"{args.batch}x3x{args.size}x{args.size}"
    print(f"### {variant}, input {shape}, {args.threads} threads, CPU: {cpu_name()}\n")
    print("| backend | median ms | min ms | runs | vs PyTorch |")
    print("|---|---:|---:|---:|---:|")
    base = statistics.median(timings["PyTorch"])
    for name, values in timings.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.0f} | {min(values):.0f} | {len(values)} | {base / med:.2f}x |")
    print(
        f"\ntorch {torch.__version__}, onnxruntime {onnxruntime.__version__}, opset {args.opset}, "
        f"Python {platform.python_version()}; export took {export_s:.1f} s; max |dp| vs PyTorch at "
        f"{shape}: " + ", ".join(f"{name} {d:.2e}" for name, d in diffs.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
