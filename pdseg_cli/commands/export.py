"""`pdseg export`: write an ONNX or TorchScript file and prove it matches PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pdseg_cli.commands._common import (
    DEFAULT_WEIGHTS_TEXT,
    EXIT_FAILED,
    checked_choice,
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
            "--out", "-o", metavar="FILE", help="File to write, e.g. pdseg.onnx (replaced if it exists)."
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
            metavar="<onnx|torchscript>",
            help="File format (default: from --out: .ts, .torchscript or .jit TorchScript, else ONNX).",
            show_default=False,
        ),
    ] = None,
    half: Annotated[
        bool,
        typer.Option(
            "--half",
            help="fp16 weights and activations (the NMF stays fp32); inputs/outputs stay fp32.",
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
) -> None:
    """Export to ONNX or TorchScript with dynamic batch, height and width, checked against PyTorch.

    Input: float32 (B, 3, H, W), any H and W, normalised as the file's metadata says (as model(x)).

    Output: foreground probabilities (B, 1, H, W); also the logits (ONNX output 2, TorchScript .logits).

    The file is kept only if its probabilities are within 1e-4 (fp32) or 3e-2 (--half) of PyTorch fp32.

    Examples:

      pdseg export --out pdseg.onnx

      pdseg export -w runs/pdseg-b/best.pt --half -o model.ts
    """
    with user_errors():
        from pdseg_cli.engine.export import (
            DEFAULT_CHECK_SHAPES,
            DEFAULT_OPSET,
            FORMATS,
            ExportCheckError,
            ExportWriteError,
            export_checkpoint,
            format_for,
            parse_shape,
        )
        from pdseg_cli.weights import default_weights

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
            raise InputError(f"--opset is for ONNX files; {out} is {chosen}", hint="drop --opset")
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
        except ExportWriteError as exc:
            from pdseg_cli.ui import error

            error(exc.message, exc.hint)
            raise typer.Exit(EXIT_FAILED) from None
    show.checks_table(report)
    show.done(report)
