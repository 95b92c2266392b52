"""`pdseg benchmark`: forward latency, throughput and peak memory of a model on this machine."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from pdseg_cli.commands._common import EXIT_FAILED, compile_option, user_errors


class BenchmarkMode(str, Enum):
    optimized = "optimized"
    plain = "plain"
    compare = "compare"


def benchmark(
    variant: str | None = typer.Option(
        None,
        "--variant",
        "-v",
        help="Model variant (random weights). Default: pdseg-b, or the --weights one.",
    ),
    size: list[int] | None = typer.Option(
        None, "--size", "-s", min=32, help="Square input side; repeat for several. Default: 512 and 1024."
    ),
    batch: int = typer.Option(1, "--batch", "-b", min=1, help="Images per forward pass."),
    device: str = typer.Option("auto", "--device", "-d", help="auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option(
        "fp32", "--precision", "-p", help="fp32, bf16, fp16 or auto (autocast; the NMF stays fp32)."
    ),
    runs: int = typer.Option(5, "--runs", "-n", min=1, help="Timed runs per size; the median is shown."),
    warmup: int = typer.Option(1, "--warmup", min=1, help="Untimed runs before timing, per size."),
    weights: Path | None = typer.Option(
        None,
        "--weights",
        "-w",
        exists=True,
        dir_okay=False,
        readable=True,
        help="pdseg checkpoint to time instead of random weights (the speed is the same).",
    ),
    mode: BenchmarkMode = typer.Option(
        BenchmarkMode.optimized,
        "--mode",
        help="optimized: the fast inference form; plain: the model as built; compare: both, alternating.",
    ),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads (default: torch's)."),
    compile_mode: str = compile_option(),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON instead of a table."),
) -> None:
    """Time forward passes: median latency, images per second and peak memory per input size.

    The model is the fast inference form that predict uses (pdseg_cli.optimize), unless --mode says otherwise.

    --mode compare also times the plain model, alternating runs, and shows the speed-up and logit difference.

    Peak memory on a GPU: what PyTorch allocated (weights included).

    Peak memory on the CPU: how much the resident memory grows in one pass (an estimate, weights excluded).

    A size that runs out of memory is named under the table; the others are still timed; exit status 1.

    Examples:

      pdseg benchmark --size 1024

      pdseg benchmark -v pdseg-t -s 512 -s 1024 --mode compare --threads 2

      pdseg benchmark --device cuda --precision bf16 --batch 8 --size 1024

      pdseg benchmark -d cuda -p bf16 -b 8 -s 1024 --compile reduce-overhead
    """
    with user_errors():
        from pdseg_cli.engine.benchmark import run_benchmark
        from pdseg_cli.ui import benchmark as show

        report = run_benchmark(
            variant if variant is not None or weights is not None else "pdseg-b",
            size or [512, 1024],
            batch=batch,
            device=device,
            precision=precision,
            runs=runs,
            warmup=warmup,
            weights=weights,
            mode=mode.value,
            threads=threads,
            compile=compile_mode,
            on_progress=None if json_out else show.progress,
        )
        if json_out:
            show.as_json(report)
        else:
            show.table(report)
    if report.out_of_memory:
        raise typer.Exit(EXIT_FAILED)
