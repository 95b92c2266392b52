"""What every subcommand shares: turning user errors into one line and an exit status."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import typer

from pdseg_cli import ui
from pdseg_cli.errors import PdsegError

EXIT_USAGE = 2  # a user mistake: bad path, wrong file, bad option
EXIT_FAILED = 1  # the run went on but some items failed
EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a PdsegError as one red line (no traceback) and exit 2; Ctrl-C exits 130."""
    try:
        yield
    except PdsegError as exc:
        ui.error(exc.message, exc.hint)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        ui.error("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None


DEFAULT_WEIGHTS_TEXT = "Default: $PDSEG_WEIGHTS, else the bundled demo weights."


def threads_option() -> Any:
    """``--threads``: CPU threads for the maths (torch, OpenCV, onnxruntime)."""
    return typer.Option(
        None,
        "--threads",
        min=1,
        help="CPU threads for the maths: torch, OpenCV and onnxruntime (default: all cores, or "
        "$OMP_NUM_THREADS). On a machine busy with other work, fewer can be faster.",
        show_default=False,
    )


def onnx_spec_option() -> Any:
    """``--onnx-spec``: how to run a foreign ONNX model that pdseg does not recognise."""
    return typer.Option(
        None,
        "--onnx-spec",
        help="For a foreign DIS/SOD ONNX model that pdseg does not recognise (IS-Net, U2-Net and BiRefNet "
        "exports are): size=N|dynamic, mean=M|R:G:B, std=S|R:G:B, scale=255|1 (the range mean/std are on), "
        "color=rgb|bgr, output=NAME|INDEX, kind=probability|logit. "
        "Example: size=1024,mean=0.5,std=1,scale=1,output=0,kind=probability",
        show_default=False,
    )


def weights_option(help_text: str) -> Any:
    """The ``--weights/-w`` option every model-running command shares (an existing file)."""
    return typer.Option(
        None,
        "--weights",
        "-w",
        exists=True,
        dir_okay=False,
        readable=True,
        help=f"{help_text} {DEFAULT_WEIGHTS_TEXT}",
        show_default=False,
    )


def compile_option() -> Any:
    """The ``--compile`` option of the commands that run the model (a torch.compile mode, or off)."""
    return typer.Option(
        "off",
        "--compile",
        help="torch.compile the model: off, default, reduce-overhead (CUDA graphs on a GPU) or "
        "max-autotune. The first batch of each input size compiles (a minute or more); it pays off "
        "on a GPU over many images of one size. Optional: without it the maps are the same up to float "
        "rounding (a grey level on a few pixels).",
    )
