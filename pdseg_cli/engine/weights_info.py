"""What a weights file holds, for ``pdseg info FILE``: a checkpoint's variant, training size,
normalisation and provenance (the chain of ``--init`` runs, the data, the teacher), or an exported
file's metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdseg_cli.data.teacher import file_sha256
from pdseg_cli.engine.onnx_backend import detect_format, load_exported, refuse_spec_for
from pdseg_cli.engine.train_checkpoints import resume_summary
from pdseg_cli.errors import WeightsError
from pdseg_cli.model.build import load_checkpoint

_LONGEST = 400  # characters of one value shown; the rest is in the file
_READS = "a pdseg checkpoint (.pt), an export or DIS/SOD model (.onnx, .ts), or a variant name"


@dataclass(frozen=True)
class WeightsDescription:
    """Attributes:
    variant: the model variant the file holds.
    rows: (field, value) pairs, in the order to show them.
    """

    variant: str
    rows: list[tuple[str, str]]


def describe_weights(path: Path, onnx_spec: str | None = None) -> WeightsDescription:
    """The fields a user asks of a weights file: what it is, how to feed it, where it came from.

    ``onnx_spec``: how to run a foreign ONNX model pdseg does not recognise (``--onnx-spec``).

    Raises:
        WeightsError: the file is neither a pdseg checkpoint nor an exported pdseg model.
    """
    kind = detect_format(path)
    refuse_spec_for(kind, onnx_spec, path)
    rows: list[tuple[str, str]] = [("file", str(path)), ("sha256", file_sha256(path))]
    if kind == "checkpoint":
        try:
            ckpt = load_checkpoint(path)
        except WeightsError as exc:
            if not (exc.hint or "").startswith("check the path"):
                raise
            raise WeightsError(exc.message, hint=f"check the path: pdseg info reads {_READS}") from None
        rows += [
            ("kind", f"pdseg checkpoint (format {ckpt.format_version}, pdseg {ckpt.pdseg_version or '?'})"),
            ("variant", ckpt.variant),
            ("training size", str(ckpt.train_size) if ckpt.train_size else "not recorded"),
            ("normalisation", _short(ckpt.normalization)),
        ]
        rows += [(f"provenance: {key}", _short(value)) for key, value in ckpt.provenance.items()]
        resume = resume_summary(path)
        if resume is not None:  # a run's last.pt: where it stands, and the command to go on
            rows.append(("training state", resume))
        return WeightsDescription(ckpt.variant, rows)
    model = load_exported(path, onnx_spec=onnx_spec)
    metadata = model.metadata
    if not metadata.pdseg_version:  # recognised by its signature (or --onnx-spec): how pdseg runs it
        rows.append(("kind", "ONNX model without pdseg metadata"))
        # the spec itself (size, colour order, scale, mean/std, output, map, kind): the export
        # metadata's fields would show pdseg's own defaults where the spec says otherwise
        rows.append(("run as", model.spec.describe()))  # type: ignore[union-attr]
        if metadata.train_size is None:  # e.g. a pdseg export whose metadata was stripped
            from pdseg_cli.engine.predict import DEFAULT_SIZE

            rows.append(("training size", f"not recorded: predict assumes {DEFAULT_SIZE}, pass --size"))
        return WeightsDescription(metadata.variant, rows)
    rows.append(("kind", f"{'ONNX' if kind == 'onnx' else 'TorchScript'} export ({metadata.precision})"))
    strings = metadata.to_strings()
    keys = [key for key in sorted(strings) if key not in ("config", "pdseg_metadata_version")]
    rows += [(key, _short(strings[key])) for key in keys]
    return WeightsDescription(metadata.variant, rows)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= _LONGEST else text[: _LONGEST - 1] + "…"
