"""The outputs ``pdseg predict --save`` can write: one entry per kind in ``OUTPUT_KINDS``.

An entry names the kind, gives its line of ``--save``'s help, the suffix its file adds to the input's
stem, whether it follows the input's bit depth, and how its array is made from the image and the map.
``--save``'s accepted names and help (:func:`parse_save`, :func:`save_help`), the output paths
(:func:`output_path`), what ``--skip-existing`` looks for (:func:`output_candidates`) and the writer
(:mod:`pdseg_cli.engine.predict_run`) all read the table, so a new kind is one more entry.

This module imports neither numpy nor torch: the command line builds ``--save``'s help from it on
every start.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pdseg_cli.config import FULL_SIZE_NAMES
from pdseg_cli.errors import InputError

if TYPE_CHECKING:
    import numpy as np


HIGH_DEPTH_SUFFIX, PNG_SUFFIX = ".tif", ".png"  # PNG holds 8 and 16 bits, not float: TIFF holds them all


@dataclass(frozen=True)
class OutputKind:
    """One kind of output file.

    Attributes:
        name: what ``--save`` calls it.
        help: its part of ``--save``'s help.
        suffix: what its file name adds to the input's stem (``<stem><suffix>.png``).
        uses_image: made from the image's colours as well as the map, so the reader keeps the
            decoded pixels for it (and ``--refine-foreground`` is in its marks' settings id,
            :mod:`pdseg_cli.engine.made_with`).
        follows_depth: written at the input's sample type: a ``.tif`` for 16-bit and float inputs,
            a ``.png`` for 8-bit ones. Otherwise always an 8-bit ``.png``.
        channels: the samples per pixel of its file (1 gray, 3 RGB, 4 RGBA): an existing file of
            another kind at its path is not an earlier output, and is not replaced.
        make: ``make(colour, byte_map, background)`` -> the array to write. ``colour`` is the
            image (H, W, 3) at its own sample type (the estimated foreground colour with
            --refine-foreground), or None for a kind that does not use the image; ``byte_map`` is
            the (H, W) uint8 map ``pdseg predict`` writes as the mask; ``background`` is --bg's RGB
            (0..255 a channel, floats: --bg's sRGB colour in the image's ICC profile for a kind
            that ``carries_profile``, :func:`pdseg_cli.data.icc.srgb_into_profile`).
            A kind that ``uses_input_alpha`` is given a fourth argument, ``input_alpha``.
        uses_input_alpha: made with the input's own alpha too (a cut-out keeps what the input
            made transparent): ``make`` gets it as a fourth argument, (H, W) of ``colour``'s
            sample type (uint8 or uint16), or None when the input has none (or an opaque one).
        carries_profile: written with the input's embedded ICC profile, when it has one: its
            samples are the image's colours, which the profile says how to show. A mask is data,
            not colours, and gets none.
        carries_density: written with the input's pixel density (dpi), when it has one: its pixels
            lie where the image's do, so a print or layout program sizes it as the image. A mask
            too: it is geometry like the image.
        uses_background: painted over ``--bg`` (``make``'s ``background``): ``predict`` warns that
            ``--bg`` does nothing when no such kind is asked for, and ``--bg`` is in its marks'
            settings id.
    """

    name: str
    help: str
    suffix: str
    uses_image: bool
    follows_depth: bool
    channels: int
    # (colour, byte_map, background[, input_alpha]) -> array; see the docstring
    make: Callable[..., np.ndarray]
    uses_input_alpha: bool = False
    carries_profile: bool = False
    carries_density: bool = True
    uses_background: bool = False


def _mask(colour: np.ndarray | None, byte_map: np.ndarray, background: tuple[float, ...]) -> np.ndarray:
    return byte_map


def _alpha(
    colour: np.ndarray | None,
    byte_map: np.ndarray,
    background: tuple[float, ...],
    input_alpha: np.ndarray | None = None,
) -> np.ndarray:
    from pdseg_cli.data.transforms import cutout  # imports torch: not on every command line start

    assert colour is not None  # uses_image: the writer passes the image
    return cutout(colour, byte_map, input_alpha)


def _composite(
    colour: np.ndarray | None,
    byte_map: np.ndarray,
    background: tuple[float, ...],
    input_alpha: np.ndarray | None = None,
) -> np.ndarray:
    from pdseg_cli.data.transforms import composite  # imports torch: not on every command line start

    assert colour is not None  # uses_image: the writer passes the image
    return composite(colour, byte_map, background, input_alpha)


OUTPUT_KINDS: dict[str, OutputKind] = {
    kind.name: kind
    for kind in (
        OutputKind(
            name="mask",
            help="the map as an 8-bit grayscale PNG",
            suffix="",
            uses_image=False,
            follows_depth=False,
            channels=1,
            make=_mask,
        ),
        OutputKind(
            name="alpha",
            help="the cut-out with the map as alpha: a PNG, or a TIFF at the input's bit depth for "
            "16-bit and float inputs",
            suffix="_alpha",
            uses_image=True,
            follows_depth=True,
            channels=4,
            make=_alpha,
            uses_input_alpha=True,
            carries_profile=True,
        ),
        OutputKind(
            name="composite",
            help="the cut-out over --bg: a PNG, or a TIFF likewise",
            suffix="_composite",
            uses_image=True,
            follows_depth=True,
            channels=3,
            make=_composite,
            uses_input_alpha=True,
            carries_profile=True,
            uses_background=True,
        ),
    )
}


def kinds_that(attribute: str) -> list[str]:
    """The names of the kinds whose ``attribute`` (``uses_image``, ``uses_background``) is set."""
    return [name for name, kind in OUTPUT_KINDS.items() if getattr(kind, attribute)]


def save_help() -> str:
    """``--save``'s help: every kind with its help, in table order."""
    kinds = ", ".join(f"{kind.name} ({kind.help})" for kind in OUTPUT_KINDS.values())
    return f"Outputs to write, comma-separated or repeated: {kinds}."


def files_help() -> str:
    """The file each kind writes, for ``pdseg predict``'s help: ``<stem>.png, <stem>_alpha.png|.tif, ...``."""
    names = [
        output_path(Path(), "<stem>", kind.name, False).name
        + (f"|{HIGH_DEPTH_SUFFIX}" if kind.follows_depth else "")
        for kind in OUTPUT_KINDS.values()
    ]
    return ", ".join(names) + f" ({HIGH_DEPTH_SUFFIX}: 16-bit/float)"


def parse_save(values: Iterable[str] | str | None) -> tuple[str, ...]:
    """``["mask,alpha", "composite"]`` -> ``("mask", "alpha", "composite")`` (order kept, no repeats).

    Raises:
        InputError: an unknown kind (with the closest name as a hint).
    """
    if values is None:
        return ("mask",)
    if isinstance(values, str):
        values = [values]
    names = tuple(OUTPUT_KINDS)
    kinds: list[str] = []
    for value in values:
        for part in value.split(","):
            kind = part.strip().lower()
            if not kind:
                continue
            if kind not in OUTPUT_KINDS:
                close = difflib.get_close_matches(kind, names, n=1)
                if kind in FULL_SIZE_NAMES or re.fullmatch(r"\d+(x\d+)?", kind):  # -s is benchmark's --size
                    side = kind.partition("x")[0]  # --size N works at NxN
                    hint = f"-s is --save here; the working size is --size {side} (no short form)"
                else:
                    hint = f"did you mean {close[0]}?" if close else "e.g. --save mask,alpha"
                raise InputError(
                    f"--save {part.strip()!r} is not an output kind (choose from {', '.join(names)})",
                    hint=hint,
                )
            if kind not in kinds:
                kinds.append(kind)
    return tuple(kinds) or ("mask",)


def output_path(folder: Path, stem: str, kind: str, high_depth: bool) -> Path:
    """Where output ``kind`` of the input named ``stem`` goes: ``<folder>/<stem><suffix>.png``, or
    ``.tif`` for a kind that follows the input's depth when the input is 16-bit or float
    (``high_depth``). ``folder`` is ``--out``, or its mirror of the input's folder with --recursive."""
    spec = OUTPUT_KINDS[kind]
    ext = HIGH_DEPTH_SUFFIX if high_depth and spec.follows_depth else PNG_SUFFIX
    return folder / f"{stem}{spec.suffix}{ext}"


def output_candidates(folder: Path, stem: str, save: Sequence[str]) -> dict[str, list[Path]]:
    """Every path each requested output of ``stem`` may take (before its bit depth is known)."""
    return {
        kind: sorted({output_path(folder, stem, kind, False), output_path(folder, stem, kind, True)})
        for kind in save
    }
