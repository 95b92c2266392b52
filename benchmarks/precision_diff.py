"""How much bf16 (or fp16) inference changes pdseg's maps and scores, against fp32, as markdown.

Runs one checkpoint (the bundled demo weights by default) over a folder of ``im/`` + ``gt/`` pairs
once per precision through :class:`pdseg_cli.Predictor` (the optimised inference form, autocast
around it, the NMF in fp32), and reports for each reduced precision:

* per-pixel probability differences to fp32 (max and mean of |dp| over all pixels, and the share
  of pixels whose 8-bit map byte changes);
* the six DIS metrics of both sets of 8-bit maps, scored by :func:`pdseg_cli.evaluate`;
* the median forward time per image of each precision, which only means something where the CPU
  has bf16 arithmetic (AVX512-BF16 or AMX; the header says whether it does): elsewhere PyTorch
  emulates bf16 and it is slower than fp32.

Usage (from the repository root)::

    python benchmarks/precision_diff.py                                 # bundled weights, davis16-eval
    python benchmarks/precision_diff.py --weights runs/x/best.pt --data DIS5K/DIS-VD --size 1024
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from pdseg_cli import Predictor, evaluate
from pdseg_cli.data.dis5k import scan_pairs
from pdseg_cli.data.images import read_image, write_png
from pdseg_cli.data.transforms import quantize
from pdseg_cli.engine.benchmark import cpu_name, device_name
from pdseg_cli.metrics.aggregate import TABLE_KEYS
from pdseg_cli.runtime import cpu_has_fast

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "davis16-eval"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="a pdseg checkpoint (default: the bundled weights)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder with im/ and gt/")
    parser.add_argument("--size", default=None, help="working size N or 'full' (default: the checkpoint's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    parser.add_argument(
        "--precisions", nargs="+", default=["bf16"], choices=["bf16", "fp16"], help="compared with fp32"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--jobs", type=int, default=1, help="scoring processes (default 1)")
    parser.add_argument("--out", type=Path, help="also append the markdown to this file")
    return parser.parse_args(argv)


def run_precision(
    predictor: Predictor, images: list[np.ndarray], device: torch.device
) -> tuple[list[np.ndarray], list[float]]:
    """Probability maps of every image, and the seconds each took (forward, resize and sigmoid)."""
    probs, seconds = [], []
    predictor.predict_prob(images[0])  # warm-up: first-call set-up is not part of the timing
    for image in images:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        probs.append(predictor.predict_prob(image))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return probs, seconds


def score(
    probs: list[np.ndarray], stems: list[str], gt_dir: Path, folder: Path, jobs: int
) -> dict[str, float]:
    """Write the 8-bit maps ``pdseg predict`` would write and score them."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, prob in zip(stems, probs, strict=True):
        write_png(folder / f"{stem}.png", quantize(prob))
    scores = evaluate(folder, gt_dir, jobs=jobs, use_cache=False).splits[0].scores.as_dict()
    return {k: float(scores[k]) for k in TABLE_KEYS}


def fmt(metric: str, value: float, sign: str = "") -> str:
    """HCE as a whole number, the others with four decimals."""
    return f"{value:{sign}.0f}" if metric == "HCE" else f"{value:{sign}.4f}"


def machine(dev: torch.device) -> str:
    """The device's name; for a CPU, whether it has bf16 arithmetic."""
    if dev.type != "cpu":
        return device_name(dev)
    return f"{cpu_name()} (bf16 arithmetic: {'yes' if cpu_has_fast('bf16') else 'no, emulated'})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scan = scan_pairs(args.data)
    if not scan.pairs:
        print(f"{args.data}: no im/ + gt/ pairs", file=sys.stderr)
        return 1
    stems = [p.stem for p in scan.pairs]
    images = [read_image(p.image).pixels for p in scan.pairs]
    gt_dir = args.data / "gt"

    results: dict[str, tuple[list[np.ndarray], list[float], dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="pdseg-precision-") as tmp:
        for precision in ["fp32", *args.precisions]:
            predictor = Predictor(args.weights, device=args.device, precision=precision, size=args.size)
            probs, seconds = run_precision(predictor, images, predictor.device)
            scores = score(probs, stems, gt_dir, Path(tmp) / precision, args.jobs)
            results[precision] = (probs, seconds, scores)
            print(f"{precision}: done", file=sys.stderr)

    ref_probs, _, ref_scores = results["fp32"]
    weights = predictor.weights_path
    dev = predictor.device
    lines = [
        f"### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: reduced precision against fp32",
        "",
        f"Machine: {machine(dev)}, torch threads {torch.get_num_threads()}; torch {torch.__version__}, "
        f"Python {platform.python_version()}",
        "",
        f"Weights `{weights}`, {len(images)} images of `{args.data}`, working size {predictor.size}, "
        f"device {dev}. Command: `python benchmarks/precision_diff.py {' '.join(argv or sys.argv[1:])}`",
        "",
        "| precision | max abs dp | mean abs dp | bytes changed | "
        + " | ".join(TABLE_KEYS)
        + " | median ms per image |",
        "|---|--:|--:|--:|" + "--:|" * len(TABLE_KEYS) + "--:|",
    ]
    for precision, (probs, seconds, scores) in results.items():
        diffs = [np.abs(p - r) for p, r in zip(probs, ref_probs, strict=True)]
        changed = sum(
            int(np.count_nonzero(quantize(p) != quantize(r))) for p, r in zip(probs, ref_probs, strict=True)
        )
        pixels = sum(p.size for p in probs)
        cells = [
            precision,
            f"{max(float(d.max()) for d in diffs):.2e}" if precision != "fp32" else "-",
            f"{sum(float(d.sum()) for d in diffs) / pixels:.2e}" if precision != "fp32" else "-",
            f"{100 * changed / pixels:.3f}%" if precision != "fp32" else "-",
            *(fmt(k, scores[k]) for k in TABLE_KEYS),
            f"{1e3 * statistics.median(seconds):,.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for precision in args.precisions:
        delta = results[precision][2]
        lines.append("")
        changes = ", ".join(f"{k} {fmt(k, delta[k] - ref_scores[k], '+')}" for k in TABLE_KEYS)
        lines.append(f"{precision} - fp32: {changes}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
