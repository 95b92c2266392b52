"""`pdseg benchmark`: forward latency, throughput and peak memory of a model on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pdseg_cli.commands._common import (
    EXIT_FAILED,
    BatchOpt,
    CompileOpt,
    DeviceOpt,
    QuietOpt,
    check_batch,
    checked_choice,
    user_errors,
    weights_option,
)


def benchmark(
    variant: Annotated[
        str | None,
        typer.Option(
            "--variant", "-v", help="Model variant (random weights). Default: pdseg-b, or the --weights one."
        ),
    ] = None,
    size: Annotated[
        list[int] | None,
        typer.Option(
            "--size",
            "-s",
            metavar="N",  # no min=32: a bad side gets pdseg's line from run_benchmark, as too large does
            help="Square input side; repeat for several. Default: 512 and 1024.",
        ),
    ] = None,
    batch: BatchOpt = 1,
    device: DeviceOpt[str] = "auto",
    precision: Annotated[
        str,
        typer.Option("--precision", "-p", help="fp32, bf16, fp16 or auto (autocast; the NMF stays fp32)."),
    ] = "fp32",
    runs: Annotated[
        int, typer.Option("--runs", "-n", min=1, help="Timed runs per size; the median is shown.")
    ] = 5,
    warmup: Annotated[int, typer.Option("--warmup", min=1, help="Untimed runs before timing, per size.")] = 1,
    weights: Annotated[
        Path | None,
        weights_option("pdseg checkpoint to time instead of random weights (the speed is the same)."),
    ] = None,
    mode: Annotated[
        str,  # not an Enum, whose bad values get click's usage box: checked below with a did-you-mean
        typer.Option(
            "--mode",
            metavar="<str>",
            help="optimized: the fast inference form; plain: the model as built; compare: both, alternating.",
        ),
    ] = "optimized",
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="CPU threads (default: torch's).")
    ] = None,
    compile_mode: CompileOpt = "off",
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the results as JSON instead of a table.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Time forward passes: median latency, images per second and peak memory per input size.

    The model is the fast inference form that predict uses (pdseg_cli.optimize), unless --mode says otherwise.

    --mode compare also times the plain model, alternating runs, and shows the speed-up and logit difference.

    Peak memory on a GPU: what PyTorch allocated (weights included).

    Peak memory on the CPU: how much the resident memory grows in one pass (an estimate, weights excluded).

    A size that runs out of memory is named under the table; the others are still timed; exit status 1.

    Ctrl-C prints the table of the sizes finished so far, marked partial; exit status 130.

    Examples:

      pdseg benchmark --size 1024

      pdseg benchmark -v pdseg-t -s 512 -s 1024 --mode compare --threads 2

      pdseg benchmark --device cuda --precision bf16 --batch 8 --size 1024

      pdseg benchmark -d cuda -p bf16 -b 8 -s 1024 --compile reduce-overhead
    """
    with user_errors():
        from pdseg_cli.engine.benchmark import MODES, BenchmarkInterrupted, run_benchmark
        from pdseg_cli.ui import benchmark as show

        # checked before the model is built
        check_batch(batch)
        wanted = checked_choice("--mode", mode, MODES, "a benchmark mode", "e.g. --mode compare")
        try:
            report = run_benchmark(
                variant,
                size or [512, 1024],
                batch=batch,
                device=device,
                precision=precision,
                runs=runs,
                warmup=warmup,
                weights=weights,
                mode=wanted,
                threads=threads,
                compile=compile_mode,
                on_progress=None if json_out else show.progress,
            )
        except BenchmarkInterrupted as stop:
            show.partial(stop.report, json_out=json_out)  # the sizes timed before Ctrl-C; exit 130
            raise
        if json_out:
            show.as_json(report)
        else:
            show.table(report)
    if report.out_of_memory:
        raise typer.Exit(EXIT_FAILED)
