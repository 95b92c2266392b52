"""pdseg-b against IS-Net (DIS, Qin et al., ECCV 2022) on the same machine, in one process.

Not a test. Issue #7 measures pdseg against IS-Net, the DIS baseline: the paper reports 287 ms for
PDSeg and 80.5 ms for IS-Net on its GPU, and on a 2-core AVX-512 CPU a plain pdseg-b took 1.8x as
long as IS-Net although it needs 20% fewer multiply-adds. This script measures that ratio here,
for the plain pdseg-b and for the inference form ``pdseg predict`` runs (``pdseg_cli.optimize``):

    python benchmarks/isnet_compare.py --sizes 1024 --threads 2
    python benchmarks/isnet_compare.py --sizes 512 1024 --threads 1 --runs 5 --keep-freed-memory
    python benchmarks/isnet_compare.py --device cuda --precision bf16 --runs 20 --warmup 5

IS-Net is written here from its published architecture (the segmentation network ``ISNetDIS``:
a stride-2 3x3 input conv, six residual U-blocks RSU7, RSU6, RSU5, RSU4, RSU4F, RSU4F from
stride 2 down to stride 32 with a max-pool between them, five RSU decoder blocks back up to
stride 2, and a 3x3 side output at each of the six scales, upsampled bilinearly to the input;
the reference code defines a max-pool after the input conv but does not apply it), for timing only: random
weights, eval mode. Its parameter and multiply-add counts are printed beside the times (44.0M
and 160 GMACs at 1024x1024 is what issue #7 quotes). Each setting is timed ``--runs`` times,
alternating between the models, after ``--warmup`` passes; medians are reported.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout, uninstalled

from pdseg_cli.engine.benchmark import cpu_name  # noqa: E402
from pdseg_cli.model import count_macs, count_params, create_model  # noqa: E402
from pdseg_cli.model.counting import MacCounter  # noqa: E402
from pdseg_cli.model.optimize import optimize  # noqa: E402
from pdseg_cli.runtime import autocast, keep_freed_memory  # noqa: E402

# ----------------------------------------------------------------------------------------------
# IS-Net


class ConvBNReLU(nn.Module):
    """3x3 conv (dilated by ``dilation``, same size), BatchNorm, ReLU: U2-Net's REBNCONV."""

    def __init__(self, cin: int, cout: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _up_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class RSU(nn.Module):
    """Residual U-block of height ``height`` (RSU7 ... RSU4): a small U-Net inside one block.

    An input conv (cin -> cout), ``height - 1`` encoder convs with a 2x max-pool between each
    (the last one dilated 2 instead of pooled), decoder convs on [upsampled deeper; skip], and the
    input conv's output added to the result.
    """

    def __init__(self, height: int, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.conv_in = ConvBNReLU(cin, cout)
        self.encoder = nn.ModuleList(
            [ConvBNReLU(cout, mid)] + [ConvBNReLU(mid, mid) for _ in range(height - 2)]
        )
        self.bottom = ConvBNReLU(mid, mid, dilation=2)
        self.decoder = nn.ModuleList(
            [ConvBNReLU(2 * mid, mid) for _ in range(height - 2)] + [ConvBNReLU(2 * mid, cout)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = self.conv_in(x)
        skips = []
        h = x_in
        for i, conv in enumerate(self.encoder):
            if i > 0:
                h = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
            h = conv(h)
            skips.append(h)
        h = self.bottom(h)
        for i, conv in enumerate(self.decoder):
            skip = skips[-1 - i]
            if i > 0:
                h = _up_to(h, skip)
            h = conv(torch.cat([h, skip], dim=1))
        return h + x_in


class RSU4F(nn.Module):
    """The residual U-block of the deepest stages: dilations 1, 2, 4, 8 instead of pooling."""

    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.conv_in = ConvBNReLU(cin, cout)
        self.encoder = nn.ModuleList(
            [ConvBNReLU(cout, mid, 1), ConvBNReLU(mid, mid, 2), ConvBNReLU(mid, mid, 4)]
        )
        self.bottom = ConvBNReLU(mid, mid, dilation=8)
        self.decoder = nn.ModuleList(
            [ConvBNReLU(2 * mid, mid, 4), ConvBNReLU(2 * mid, mid, 2), ConvBNReLU(2 * mid, cout, 1)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = self.conv_in(x)
        skips = []
        h = x_in
        for conv in self.encoder:
            h = conv(h)
            skips.append(h)
        h = self.bottom(h)
        for i, conv in enumerate(self.decoder):
            h = conv(torch.cat([h, skips[-1 - i]], dim=1))
        return h + x_in


class ISNet(nn.Module):
    """IS-Net's segmentation network (ISNetDIS); returns the six side maps' logits at input size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, 64, 3, stride=2, padding=1)
        self.stages = nn.ModuleList(
            [
                RSU(7, 64, 32, 64),
                RSU(6, 64, 32, 128),
                RSU(5, 128, 64, 256),
                RSU(4, 256, 128, 512),
                RSU4F(512, 256, 512),
                RSU4F(512, 256, 512),
            ]
        )
        self.decoders = nn.ModuleList(
            [
                RSU4F(1024, 256, 512),
                RSU(4, 1024, 128, 256),
                RSU(5, 512, 64, 128),
                RSU(6, 256, 32, 64),
                RSU(7, 128, 16, 64),
            ]
        )
        # side outputs of decoder stages 1..5 (finest first) and of encoder stage 6
        self.sides = nn.ModuleList(nn.Conv2d(c, 1, 3, padding=1) for c in (64, 64, 128, 256, 512, 512))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.conv_in(x)  # stage 1 works at stride 2: the reference defines pool_in but skips it
        feats = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                h = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
            h = stage(h)
            feats.append(h)
        outs = [h]  # coarsest first: stage 6, then decoder 5 ... 1
        for i, dec in enumerate(self.decoders):
            skip = feats[-2 - i]
            h = dec(torch.cat([_up_to(h, skip), skip], dim=1))
            outs.append(h)
        maps = [side(f) for side, f in zip(self.sides, outs[::-1], strict=True)]
        return [F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False) for m in maps]


def isnet_macs(size: int) -> int:
    """IS-Net's multiply-adds at SxS, counted as pdseg counts its own (``MacCounter``)."""
    with torch.device("meta"):
        net = ISNet().eval()
        x = torch.empty(1, 3, size, size)
    counter = MacCounter()
    with torch.no_grad(), counter:
        net(x)
    return counter.total


# ----------------------------------------------------------------------------------------------
# timing


def _time(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000.0


def compare(
    size: int, runs: int, warmup: int, device: str = "cpu", precision: str = "fp32"
) -> list[tuple[str, float, float, int, float]]:
    """(model, median ms, GMACs, parameters, effective GMAC/s) for the four models at SxS.

    ``precision`` bf16/fp16 runs IS-Net and the plain pdseg-b under autocast and builds the
    optimised pdseg-b with that precision (its NMF stays fp32), as ``pdseg predict`` does.
    """
    dev = torch.device(device)
    torch.manual_seed(0)
    isnet = ISNet().eval().to(dev)
    isnet_cl = ISNet().eval().to(dev, memory_format=torch.channels_last)
    isnet_cl.load_state_dict(isnet.state_dict())
    plain = create_model("pdseg-b").to(dev)
    fast = optimize(plain, precision=precision)
    x = torch.randn(1, 3, size, size).to(dev)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def run_autocast(model: nn.Module, inp: torch.Tensor) -> object:
        with autocast(dev, precision):  # what pdseg predict puts around a model
            return model(inp)

    models: dict[str, Callable[[], object]] = {
        f"IS-Net, plain {precision}": lambda: run_autocast(isnet, x),
        f"IS-Net, channels-last {precision}": lambda: run_autocast(isnet_cl, x_cl),
        f"pdseg-b, plain {precision}": lambda: run_autocast(plain, x),
        f"pdseg-b, optimised {precision} (pdseg predict)": lambda: fast(x),
    }
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for fn in models.values():
            for _ in range(warmup):
                fn()
        for _ in range(runs):
            for name, fn in models.items():
                times[name].append(_time(fn, dev))
    counts = {
        "IS-Net": (isnet_macs(size) / 1e9, sum(p.numel() for p in isnet.parameters())),
        "pdseg-b": (count_macs("pdseg-b", size) / 1e9, count_params("pdseg-b")),
    }
    rows = []
    for name, ts in times.items():
        gmacs, params = counts[name.split(",")[0]]
        median = statistics.median(ts)
        rows.append((name, median, gmacs, params, gmacs / (median / 1000.0)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024], help="square input sides")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per model (the median is shown)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per model first")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    parser.add_argument(
        "--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype (fp32: none)"
    )
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="apply the glibc malloc setting the pdseg command line uses (runtime.keep_freed_memory)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 1 or min(args.sizes) < 64:
        parser.error("--runs and --warmup must be at least 1, --sizes at least 64")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    allocator = "the C allocator's defaults"
    if args.keep_freed_memory:
        allocator = keep_freed_memory() or allocator
    if args.threads:
        torch.set_num_threads(args.threads)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = f"GPU: {torch.cuda.get_device_name(0)}; " if args.device == "cuda" else ""
    print(
        f"### {stamp}: pdseg-b against IS-Net\n\n{where}CPU: {cpu_name()}, "
        f"torch threads {torch.get_num_threads()}; "
        f"torch {torch.__version__}; allocator: {allocator}. Batch 1, random weights, eval mode, "
        f"median of {args.runs} alternating runs after {args.warmup} warm-up. Command: "
        f"`python benchmarks/isnet_compare.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n"
    )
    print("| input | model | params | GMACs | median ms | effective GMAC/s | time / IS-Net plain |")
    print("|--:|---|--:|--:|--:|--:|--:|")
    for size in args.sizes:
        rows = compare(size, args.runs, args.warmup, args.device, args.precision)
        base = rows[0][1]
        for name, median, gmacs, params, rate in rows:
            print(
                f"| {size}x{size} | {name} | {params / 1e6:.2f}M | {gmacs:.1f} | {median:,.0f} | "
                f"{rate:.1f} | {median / base:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
