"""`pdseg info`: the model variants with their parameter and multiply-add counts, or what a weights
file holds."""

from __future__ import annotations

from typing import Annotated, cast

import typer

from pdseg_cli.commands._common import OnnxSpecOpt, QuietOpt, square_side, user_errors
from pdseg_cli.config import VARIANTS


def info(
    variant: Annotated[
        str | None,
        typer.Argument(
            help=f"One variant to show ({', '.join(VARIANTS)}), or a weights file (.pt, .onnx, .ts) to "
            "describe: its variant, training size, normalisation and where it came from.",
            metavar="VARIANT|FILE",
        ),
    ] = None,
    size_text: Annotated[
        str,  # not int: `--size full` (predict's) and `--size abc` get pdseg's line, not click's box
        typer.Option(
            "--size", metavar="<int>", help="Input side N for the multiply-add count (an NxN image)."
        ),
    ] = "1024",
    onnx_spec: OnnxSpecOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Show the model variants (widths, depths, parameters, GMACs at --size), or describe a weights file.

    GMACs: multiply-adds of one eval-mode forward pass at batch 1, counted as the SegNeXt and PDSeg papers do.

    That is convolutions and the NMF's matrix products, with norms, element-wise products and upsampling.

    The paper's model is pdseg-b.

    Examples: pdseg info pdseg-b --size 2048 · pdseg info runs/mine/last.pt
    """
    from pathlib import Path

    from pdseg_cli import ui
    from pdseg_cli.config import get_config
    from pdseg_cli.errors import InputError
    from pdseg_cli.model.counting import count_macs, count_params
    from pdseg_cli.model.registry import decoder_entry

    with user_errors():
        size = square_side(size_text, "info")
        if size is None or size < 32:
            raise InputError(
                f"--size {size} is too small: at least 32 (the model's stride)", hint="e.g. --size 1024"
            )
        path = Path(variant).expanduser() if variant is not None and variant not in VARIANTS else None
        if onnx_spec and path is None:  # was ignored in silence
            raise InputError(
                "--onnx-spec describes a foreign ONNX file; "
                + (f"{variant} is a variant" if variant else "no file given"),
                hint="pdseg info MODEL.onnx --onnx-spec ..., or drop --onnx-spec",
            )
        if path is not None and path.is_file():
            from pdseg_cli.engine.weights_info import describe_weights

            description = describe_weights(path, onnx_spec)
            ui.table(variant, ["", "value"], description.rows, literal=True)
            if description.variant not in VARIANTS:  # a foreign model: no pdseg variant to count
                return
            variant = description.variant
        elif path is not None and (path.exists() or path.is_symlink()):  # a folder, a pipe, a bad link
            from pdseg_cli.weights import MODEL_SUFFIXES, check_weights_file

            check_weights_file(path, "weights", MODEL_SUFFIXES)
        # a path is made of a variant (cast: mypy does not follow that)
        elif path is not None and ("/" in cast(str, variant) or "." in cast(str, variant)):
            from pdseg_cli.weights import BUNDLED_NAME, missing_weights_hint

            hint = f"give a weights file, or a variant: {', '.join(VARIANTS)}"
            if path.name == BUNDLED_NAME:  # its name from outside the clone, or with a wheel: where it is
                hint = missing_weights_hint(path)
            raise InputError(f"{variant}: no such file", hint=hint)
        configs = [get_config(variant)] if variant else list(VARIANTS.values())
        rows = []
        for cfg in configs:
            rows.append(
                (
                    cfg.name,
                    decoder_entry(cfg.decoder).label,
                    ",".join(map(str, cfg.embed_dims)),
                    ",".join(map(str, cfg.depths)),
                    f"{count_params(cfg) / 1e6:.2f}M",
                    gmacs(count_macs(cfg, size) / 1e9),
                )
            )
        ui.table(
            f"pdseg model variants at {size}x{size}",
            ["variant", "decoder", "widths", "depths", "params", "GMACs"],
            rows,
            numeric=[False, False, False, False, True, True],
            caption="pdseg-tiny is a miniature for tests and smoke runs, not a paper model"
            if any(cfg.name == "pdseg-tiny" for cfg in configs)
            else None,
        )


def gmacs(value: float) -> str:
    """A GMACs count with a tenth's precision from 10 on, and three significant digits below it
    (pdseg-tiny at --size 64 is 0.0985, not 0.0)."""
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"
