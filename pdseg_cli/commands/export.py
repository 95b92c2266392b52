"""`pdseg export`: write an ONNX, TorchScript or weights-only checkpoint file and prove it matches
PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pdseg_cli.commands._common import (
    DEFAULT_WEIGHTS_TEXT,
    EXIT_FAILED,
    QuietOpt,
    ThreadsOpt,
    checked_choice,
    refuse_torchrun,
    torchrun_rank,
    use_threads,
    user_errors,
    warn_unused,
    weights_option,
)
from pdseg_cli.errors import InputError
from pdseg_cli.ui import export as show


def export(
    ctx: typer.Context,
    out: Annotated[
        str,  # not Path, which drops the trailing slash of a folder's name (format_for refuses it)
        typer.Option(
            "--out",
            "-o",
            metavar="FILE",
            help="File to write: pdseg.onnx (ONNX), pdseg.ts (TorchScript) or mine.pt / .pth (weights-only "
            "checkpoint); replaced if it exists.",
        ),
    ],
    weights: Annotated[
        Path | None, weights_option(f"pdseg checkpoint (.pt) to export. {DEFAULT_WEIGHTS_TEXT}")
    ] = None,
    fmt: Annotated[
        str | None,  # not an Enum, whose bad values get click's usage box: checked below with a did-you-mean
        typer.Option(
            "--format",
            "-f",
            metavar="<str>",  # the three names would squeeze the help column of an 80-column terminal
            help="onnx, torchscript or checkpoint (default: from --out: .pt or .pth a checkpoint; .ts, "
            ".torchscript or .jit TorchScript; else ONNX).",
            show_default=False,
        ),
    ] = None,
    half: Annotated[
        bool,
        typer.Option(
            "--half",
            help="fp16 weights and activations (the NMF stays fp32); inputs/outputs stay fp32. A "
            "checkpoint stores fp16 weights, loaded back as fp32.",
        ),
    ] = False,
    opset: Annotated[
        int | None, typer.Option("--opset", help="ONNX opset, 17 to 20 (default: 18).", show_default=False)
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Load the file back and compare it with PyTorch before keeping it.",
        ),
    ] = True,
    check_shape: Annotated[
        list[str] | None,
        typer.Option(
            "--check-shape",
            metavar="BxCxHxW",
            help="Input shape for the check; repeat for several. Default: 1x3x512x512 and 2x3x400x600.",
        ),
    ] = None,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Export to ONNX, TorchScript or a weights-only .pt checkpoint, checked against PyTorch.

    Input: float32 (B, 3, H, W), any batch, H and W, normalised as the file's metadata says (as model(x)).

    Output: foreground probabilities (B, 1, H, W); also the logits (ONNX output 2, TorchScript .logits).

    A .pt or .pth --out is a pdseg checkpoint of the weights alone (no optimiser or training state).

    Every format keeps the checkpoint's provenance (data, teacher, --init chain) and names its source.

    The file is kept only if its probabilities are within 1e-4 (fp32) or 3e-2 (--half) of PyTorch fp32.

    Examples:

      pdseg export --out pdseg.onnx

      pdseg export -w runs/pdseg-b/best.pt --half -o model.ts

      pdseg export -w runs/mine/last.pt --half -o mine.pt
    """
    with user_errors(rank=torchrun_rank()):
        refuse_torchrun("export")
        from pdseg_cli.engine.export import (
            DEFAULT_CHECK_SHAPES,
            DEFAULT_OPSET,
            FORMAT_NAMES,
            FORMATS,
            ExportCheckError,
            export_checkpoint,
            format_for,
            parse_shape,
        )
        from pdseg_cli.weights import default_weights

        use_threads(threads, quiet=quiet)  # the trace and the check run on the CPU
        shapes = [parse_shape(s) for s in check_shape] if check_shape else list(DEFAULT_CHECK_SHAPES)
        warn_unused(ctx, {"check_shape": None if check else "--check-shape has no effect with --no-check"})
        wanted = (  # checked before the checkpoint is read
            None
            if fmt is None
            else checked_choice(
                "--format", fmt, FORMATS, "an export format", "leave --format out: --out's extension decides"
            )
        )
        chosen = format_for(out, wanted)
        if opset is not None and chosen != "onnx":
            what = FORMAT_NAMES[chosen]
            raise InputError(f"--opset is for ONNX files; {out} is {what}", hint="drop --opset")
        try:
            report = export_checkpoint(
                weights if weights is not None else default_weights(),
                Path(out).expanduser(),
                chosen,
                half=half,
                opset=DEFAULT_OPSET if opset is None else opset,
                check=check,
                check_shapes=shapes,
                on_step=show.step,
            )
        except ExportCheckError as exc:
            show.failed(exc.report, exc.message, exc.hint)
            raise typer.Exit(EXIT_FAILED) from None
    show.checks_table(report)
    show.done(report)
