"""What a weights file holds, for ``pdseg info FILE``: a checkpoint's variant, training size,
normalisation and provenance (the chain of ``--init`` runs, the data, the teacher), or an exported
file's metadata."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdseg_cli.data.teacher import file_sha256
from pdseg_cli.engine.onnx_backend import (
    ExportMetadata,
    detect_format,
    load_exported,
    refuse_misnamed_torchscript,
    refuse_spec_for,
    torchscript_metadata,
)
from pdseg_cli.engine.train_checkpoints import resume_summary
from pdseg_cli.errors import WeightsError, clip_words
from pdseg_cli.model.build import load_checkpoint

_LONGEST = 400  # characters of one value shown; the rest is in the file
# one link of the --init chain: the file, its hash and what made it fit on two or three lines
_LINK_LONGEST = 240
_PART_LONGEST = 100  # of one value in a link (its data, say), so that the teacher after it still shows
_MAX_LINKS = 6  # of the --init chain shown; a longer one ends in a row that counts the rest
_HASH_SHOWN = 8  # hex digits of a link's sha256: enough to tell files apart, the rest is in the file
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
        rows += provenance_rows(ckpt.provenance)
        resume = resume_summary(path)
        if resume is not None:  # a run's last.pt: where it stands, and the command to go on
            rows.append(("training state", resume))
        return WeightsDescription(ckpt.variant, rows)
    if kind == "torchscript":  # read from the archive: loading TorchScript runs the code it holds
        refuse_misnamed_torchscript(path)
        metadata = torchscript_metadata(path)
        rows.append(("kind", f"TorchScript export ({metadata.precision})"))
        return WeightsDescription(metadata.variant, rows + _metadata_rows(metadata))
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
    rows.append(("kind", f"ONNX export ({metadata.precision})"))
    return WeightsDescription(metadata.variant, rows + _metadata_rows(metadata))


def _metadata_rows(metadata: ExportMetadata) -> list[tuple[str, str]]:
    """An export's metadata as rows, then its provenance as a checkpoint's (the export carries it)."""
    strings = metadata.to_strings()
    hidden = ("config", "pdseg_metadata_version", "provenance")  # the provenance: its own rows below
    # a field the file has no value for (a TorchScript export's opset) is no row rather than an empty one
    keys = [key for key in sorted(strings) if key not in hidden and strings[key] != ""]
    return [(key, _short(strings[key])) for key in keys] + provenance_rows(metadata.provenance)


def provenance_rows(provenance: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, value)`` rows for a checkpoint's provenance (or an export's copy of it): one per
    key, and the ``--init`` chain as one row per link, newest first (see :func:`_init_rows`)."""
    rows: list[tuple[str, str]] = []
    for key, value in provenance.items():
        if key == "init" and isinstance(value, Mapping):
            rows += _init_rows(value)
        elif key == "recipe" and isinstance(value, Mapping):  # one row a setting: a blob was cut short
            rows += [(f"provenance: recipe {name}", _short(setting)) for name, setting in value.items()]
        else:
            rows.append((f"provenance: {key}", _short(value)))
    return rows


def _init_rows(init: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``--init`` chain, one row per link, newest first: ``provenance: init`` is the file this
    one was fine-tuned from, ``init 2`` the file that one was fine-tuned from, and so on.

    ``pdseg train --init`` stores ``{"path": ..., "provenance": {"sha256": ..., <that file's own
    provenance, with its own "init">}}``; nested as it is, it was shown as one JSON blob cut off
    partway into the second link.
    """
    rows: list[tuple[str, str]] = []
    links = _links(init)
    for link, parent in links:
        label = "provenance: init" if not rows else f"provenance: init {len(rows) + 1}"
        if parent is None:  # written by hand ("from stage 3"): shown as it is
            rows.append((label, _short(link)))
            break
        if len(rows) == _MAX_LINKS:
            rest = 1 + sum(1 for _, earlier in links if earlier is not None)
            rows.append(("provenance: init …", f"{rest} earlier link(s), in the file"))
            break
        rows.append((label, _link_text(link, parent)))
    return rows


def _links(init: Any) -> Iterator[tuple[Any, Mapping[str, Any] | None]]:
    """The links of an ``--init`` chain, newest first: each with the provenance of the file it names
    (``{}`` where none is recorded), and a link that is no mapping, which ends the chain, with None."""
    link = init
    while link:
        if not isinstance(link, Mapping):
            yield link, None
            return
        parent = link.get("provenance")
        parent = parent if isinstance(parent, Mapping) else {}
        yield link, parent
        link = parent.get("init")


def _link_text(link: Mapping[str, Any], parent: Mapping[str, Any]) -> str:
    """``fine-tuned from PATH (sha256 44810223…): <what made PATH>``: the model card's summary
    when the file has one, else ``trained N steps at SIZE on DATA`` and its teacher, then any
    note or licence."""
    digest = str(parent.get("sha256") or "")
    digest = f" (sha256 {digest[:_HASH_SHOWN]}…)" if digest else ""
    head = f"fine-tuned from {link.get('path', '?')}{digest}"
    parts: list[str] = []
    if parent.get("summary"):  # the model card's line says it all, "research use only" included
        parts.append(str(parent["summary"]))
    else:
        run = "trained"  # PATH's own run, not the fine-tuning from it
        if parent.get("steps") is not None:
            run += f" {parent['steps']} steps"
            if parent.get("size"):
                run += f" at {parent['size']}"
        if parent.get("data"):
            run += f" on {clip_words(str(parent['data']), _PART_LONGEST)}"
        if run != "trained":
            parts.append(run)
        teacher = parent.get("teacher_model") or parent.get("teacher")
        if teacher:
            parts.append(f"teacher {clip_words(str(teacher), _PART_LONGEST)}")
        if parent.get("source"):  # a `pdseg export --out x.pt` of another file
            parts.append(f"exported from {parent['source']}")
    parts += [f"{key} {parent[key]}" for key in ("note", "notes", "licence", "license") if parent.get(key)]
    if not parts:
        parts.append("no provenance recorded")
    return clip_words(f"{head}: {'; '.join(parts)}", _LINK_LONGEST)


def _short(value: Any) -> str:
    """A value as one line of at most ``_LONGEST`` characters, clipped at a word with "…"; a value
    recorded as None reads "none", not JSON's null."""
    if value is None:
        return "none"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return clip_words(text, _LONGEST)
