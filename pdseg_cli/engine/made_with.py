"""What an output's pixels depend on besides its input, as the short id pdseg's mark carries.

``--skip-existing`` takes an earlier output as done only when its mark names this input
(:func:`pdseg_cli.data.header.marked_source`) and, where the mark records one, the id of the
model and settings it was made with equals this run's: a folder resumed with other weights, another
``--size`` or ``--threshold`` gets those images made again instead of holding the maps of two models
in silence.

What is in the id: the weights file's content (sha256, so a renamed or moved copy is the same
model), ``--size`` as asked (None: the size the weights record), ``--tta``, ``--scales``,
``--onnx-spec`` and ``--threshold``; for the kinds made from the image's colours (alpha, composite)
``--refine-foreground`` too, and for those painted over ``--bg`` (composite) its colour. What is
not: the device, precision, threads, batch and ``--compile``, which change float rounding only
(bf16 the most: it moves 6-10% of the bytes, under a grey level on average and up to 59 at the
worst pixel of 46 frames; benchmarks/RESULTS.md, 'bf16 against fp32'; ``pdseg predict --json``
records them), so that a run started on a GPU (bf16) goes on on a CPU (fp32).

This module imports neither numpy nor torch: a ``--skip-existing`` poll with nothing left to do
plans without them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdseg_cli.engine.onnx_spec import parse_spec
from pdseg_cli.engine.output_kinds import OUTPUT_KINDS

ID_DIGITS = 16  # hex digits of the id in a mark: 64 bits, as the input's ids (header.source_id)


@dataclass(frozen=True)
class MadeWith:
    """The model and settings of one ``predict`` run, as far as they decide its outputs' pixels.

    Attributes:
        weights_sha256: the sha256 of the weights file (its content: a copy elsewhere is the same).
        size: the working size as asked: an int, ``"full"``, or None for the weights' own.
        tta, scales, onnx_spec, threshold: as :class:`pdseg_cli.engine.predict.Predictor` and
            ``run_plan`` take them (``scales`` None or empty: one pass).
        background: ``--bg`` as bytes (r, g, b); only the kinds painted over it depend on it.
        refine_foreground: ``--refine-foreground``; only the kinds made from the image's colours
            depend on it.
    """

    weights_sha256: str
    size: int | str | None = None
    tta: bool = False
    scales: tuple[float, ...] | None = None
    onnx_spec: str | None = None
    threshold: float | None = None
    background: tuple[int, ...] = (255, 255, 255)
    refine_foreground: bool = True

    def id_for(self, kind: str) -> str:
        """The id an output of ``kind`` (a ``--save`` name) is marked with: 16 hex digits, the first
        8 of the weights' sha256 (:func:`alike` tells by them whether the weights or the settings
        differ), then 8 of a sha256 of the settings that decide that kind's pixels, so that
        a mask made before with another ``--bg`` is still this run's mask."""
        output = OUTPUT_KINDS[kind]
        settings: dict[str, Any] = {
            "size": self.size,
            "tta": bool(self.tta),
            # one pass whichever way it is asked for; otherwise the scales as a set, in order
            "scales": sorted({float(s) for s in self.scales}) if self.scales else None,
            # the spec's meaning, not its spelling: "size=1024,mean=0.5" is "mean=0.5, size=1024"
            "onnx_spec": sorted(parse_spec(self.onnx_spec).items()) if self.onnx_spec else None,
            "threshold": None if self.threshold is None else float(self.threshold),
        }
        if output.uses_image:
            settings["refine_foreground"] = bool(self.refine_foreground)
        if output.uses_background:
            settings["background"] = [int(c) for c in self.background]
        text = json.dumps(settings, sort_keys=True, default=repr)
        half = ID_DIGITS // 2
        return self.weights_sha256[:half] + hashlib.sha256(text.encode()).hexdigest()[:half]


def alike(made_id: str, own_id: str) -> tuple[bool, bool]:
    """Whether an output marked ``made_id`` was made with the weights, and with the settings, of
    the output this run marks ``own_id`` (:meth:`MadeWith.id_for` of the same kind): the two halves
    of the id compared apart, so that a refusal can say which of the two differ."""
    half = ID_DIGITS // 2
    return made_id[:half] == own_id[:half], made_id[half:] == own_id[half:]


def made_with_file(
    weights: Path,
    *,
    size: int | str | None,
    tta: bool,
    scales: tuple[float, ...] | None,
    onnx_spec: str | None,
    threshold: float | None,
    background: tuple[int, ...],
    refine_foreground: bool,
) -> MadeWith | None:
    """:class:`MadeWith` of a run of the weights file ``weights`` with these settings, before the
    model is loaded (a command plans first, so that a ``--skip-existing`` poll with nothing left to
    do ends without torch). None where the file cannot be read: loading it says why."""
    from pdseg_cli.data.teacher import file_sha256  # the one file hash (weights, teachers, inputs)

    try:
        digest = file_sha256(weights)
    except OSError:
        return None
    return MadeWith(
        digest,
        size=size,
        tta=tta,
        scales=scales,
        onnx_spec=onnx_spec,
        threshold=threshold,
        background=background,
        refine_foreground=refine_foreground,
    )
