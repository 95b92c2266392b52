"""CPU (or GPU) training throughput of ``pdseg train``'s step, in images per second, and its data path.

Not a test. For each variant, size and memory layout it runs the training step as ``pdseg train``
does (normalise, forward with every level, BCE + IoU on every level in float32, AdamW with the
engine's parameter groups, gradient clipping, EMA update) on random batches, and times the median
of ``--steps`` steps after ``--warmup``. The data column times what one DataLoader item costs
(augmenting a cached sample), to show whether loading can stall the step.

    python benchmarks/train_speed.py                                     # pdseg-t, 256/320/384, batch 8
    python benchmarks/train_speed.py --variants pdseg-t pdseg-s --threads 2 --layouts contiguous channels_last
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout, uninstalled


def _data_ms(size: int, n: int = 16) -> float:
    """Median milliseconds to produce one augmented training item from a cached sample."""
    import numpy as np

    from pdseg_cli.data import dis5k
    from pdseg_cli.data.augment import AugmentConfig

    rng = np.random.default_rng(0)

    class _Store(list):  # a SampleStore stand-in: cached (S, S, 4) uint8 samples
        pass

    store = _Store(rng.integers(0, 256, (size, size, 4), dtype=np.uint8) for _ in range(4))
    dataset = dis5k.SampleDataset(store, seed=0, augment=AugmentConfig())  # type: ignore[arg-type]
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        dataset[(0, i % 4)]
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _step_seconds(variant: str, size: int, batch: int, layout: str, steps: int, warmup: int) -> float:
    import torch
    from torch import nn

    from pdseg_cli.config import NORMALIZATION
    from pdseg_cli.engine import losses
    from pdseg_cli.engine.ema import ModelEMA
    from pdseg_cli.engine.train_schedule import param_groups
    from pdseg_cli.model import create_model

    torch.manual_seed(0)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = create_model(variant).train().to(memory_format=memory_format)
    ema = ModelEMA(model, 0.999)
    opt = torch.optim.AdamW(param_groups(model, 1e-4, 10.0, 0.01))
    mean = torch.tensor(NORMALIZATION["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(NORMALIZATION["std"]).view(1, 3, 1, 1)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    masks = (torch.rand(batch, 1, size, size) > 0.5).to(torch.uint8) * 255
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        x = ((images.float() - mean) / std).contiguous(memory_format=memory_format)
        y = masks.float() / 255.0
        loss, _ = losses.multi_level_loss(model(x, return_levels=True), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ema.update(model)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["pdseg-t"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 320, 384])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layouts", nargs="+", default=["contiguous", "channels_last"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, median of {args.steps} steps"
    )
    print("| variant | size | layout | s/step | img/s | data ms/img |")
    print("|---|--:|---|--:|--:|--:|")
    for variant in args.variants:
        for size in args.sizes:
            data = _data_ms(size)
            for layout in args.layouts:
                sec = _step_seconds(variant, size, args.batch, layout, args.steps, args.warmup)
                print(
                    f"| {variant} | {size} | {layout} | {sec:.2f} | {args.batch / sec:.2f} | {data:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
