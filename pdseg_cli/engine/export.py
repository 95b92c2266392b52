"""Export a PDSeg model to ONNX, TorchScript or a weights-only pdseg checkpoint, and prove the file
computes what PyTorch computes.

The exported graph takes what ``model(x)`` takes: float32 (B, 3, H, W), ``(rgb - mean) / std`` on
the 0-255 scale, with B, H and W all dynamic (H and W need not be multiples of 32; the model pads
and crops inside, and that arithmetic is traced on the input's shape). It returns
``probabilities`` (B, 1, H, W), the sigmoid of the final map, and, as a second output (ONNX) or
``.logits(x)`` method (TorchScript), the ``logits`` themselves. Inputs and outputs are float32 even
for ``half=True``; then the weights and activations are fp16 except the NMF, which the model runs
in fp32 (docs/model.md, 'NMF precision': the NMF's sums overflow fp16).

A checkpoint (``.pt``, ``.pth``) is what :func:`~pdseg_cli.model.build.save_checkpoint` writes: the
weights (fp16 storage with ``half=True``, loaded back as fp32, as the bundled file is), the config,
training size, normalisation and provenance, without the optimiser and training state a run's
``last.pt`` carries (several times the size). It is checked as the others are: loaded back with
``load_model`` and run against the source model.

Every format keeps the source checkpoint's provenance (data, teacher, the ``--init`` chain, the
model card's summary) and adds the source file's name and sha256 (``source``, ``source_sha256``):
ONNX and TorchScript files as metadata keys (the provenance as JSON under ``provenance``), a
checkpoint in its own provenance.

In eval mode the NMF uses fixed bases from a seeded generator (docs/model.md, 'NMF bases'), so the graph
has no random ops and two runs on one input give identical outputs.

The file is written under a temporary name next to ``out`` (:mod:`pdseg_cli.data.atomic`). It is
loaded back and run on a few shapes against the PyTorch model (fp32); only when every max
|probability difference| is within tolerance is it moved onto ``out`` with ``os.replace``. A failed
check leaves no file behind, and a temporary that a killed export left is removed by the next
export of that file.

The ONNX path uses the TorchScript-based exporter (``dynamo=False``): the default dynamo exporter
needs onnxscript (docs/model.md, 'ONNX export'). The NMF iterations unroll into plain MatMuls; there are no
Loop nodes.
"""

from __future__ import annotations

import copy
import errno
import inspect
import io
import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from pdseg_cli import __version__
from pdseg_cli.data.atomic import atomic_path, final_target, refuse_special
from pdseg_cli.data.images import IMAGE_SUFFIXES, check_writable_folder
from pdseg_cli.engine.onnx_backend import (
    ONNX_INSTALL_HINT,
    OUTPUT_LOGITS,
    OUTPUT_PROBABILITIES,
    TORCHSCRIPT_METADATA_FILE,
    ExportMetadata,
    OnnxModel,
    TorchScriptModel,
    require_onnxruntime,
)
from pdseg_cli.errors import (
    InputError,
    NotAvailableError,
    RunFailed,
    check_kind,
    refused_by_permissions,
)
from pdseg_cli.model.build import load_model, save_checkpoint, train_side
from pdseg_cli.runtime.precision import emulated_precision_note
from pdseg_cli.runtime.quiet_warnings import recording_warnings
from pdseg_cli.weights import CHECKPOINT_SUFFIXES, SUFFIX_FORMATS

FORMATS = ("onnx", "torchscript", "checkpoint")
# what a file of each format is, in messages ("--opset is for ONNX files; m.pt is a pdseg checkpoint")
FORMAT_NAMES = {
    "onnx": "an ONNX file",
    "torchscript": "a TorchScript file",
    "checkpoint": "a pdseg checkpoint",
}
MIN_OPSET = 17  # LayerNormalization is a native op from 17 on
DEFAULT_OPSET = 18  # docs/model.md, 'ONNX export': exported and checked with torch 2.13
# fp32: the exported graph does the same float maths in another order; measured differences are
# ~1e-6, so 1e-4 (1/40 of a grey level) catches any real divergence.
FP32_TOLERANCE = 1e-4
# fp16: weights and activations carry 11-bit mantissas (relative error 2^-11 ~ 4.9e-4 per op)
# through ~40 layers, against the fp32 PyTorch model. Measured on pdseg-b (random weights, the
# classifiers re-drawn so logits span -20..+8): worst pixel 7e-3..1.1e-2 (ONNX Runtime) and
# 1.1e-2..1.3e-2 (TorchScript on the CPU), mean 4e-4..7e-4, at most 3 grey levels apart. 3e-2 (7.7
# grey levels on the worst pixel) leaves room for trained weights; a broken graph is off by ~0.1-1,
# and an fp16 overflow gives non-finite values, which fail regardless.
FP16_TOLERANCE = 3e-2
# One square shape and one batch-2 shape whose sides are not multiples of 32 (400 % 32 = 16,
# 600 % 32 = 24), so the check covers dynamic batch, dynamic H/W and the pad-and-crop path.
DEFAULT_CHECK_SHAPES: tuple[tuple[int, int, int, int], ...] = ((1, 3, 512, 512), (2, 3, 400, 600))
# Tracing runs at a shape that also needs padding (200 % 32 = 8, 264 % 32 = 8) and differs from
# every check shape, so a size baked into the graph shows up as a failed check.
TRACE_SHAPE = (1, 3, 200, 264)
CHECK_SEED = 0


@dataclass(frozen=True)
class ShapeCheck:
    """The exported file against PyTorch on one input shape.

    Attributes:
        shape: input shape (B, 3, H, W).
        max_abs_diff: max |p_exported - p_torch| over all pixels, p the foreground probability.
        mean_abs_diff: the mean of the same (shown, not checked).
        tolerance: the largest difference accepted.
        finite: whether every exported output value was finite.
        seconds: wall time of the exported file's run (the first call).
    """

    shape: tuple[int, int, int, int]
    max_abs_diff: float
    mean_abs_diff: float
    tolerance: float
    finite: bool
    seconds: float

    @property
    def passed(self) -> bool:
        return self.finite and self.max_abs_diff <= self.tolerance


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` did.

    Attributes:
        path: the written file (the final name; the file exists only if ``ok``).
        format: ``"onnx"``, ``"torchscript"`` or ``"checkpoint"``.
        metadata: what the file says about itself (for a checkpoint: what it holds, as the
            metadata of an export would say it; ``precision`` is its storage).
        checks: one entry per checked shape; empty when the check was skipped.
        export_seconds: time spent tracing/exporting.
        size_bytes: file size.
        trace_warnings: distinct warnings torch raised while tracing (a baked-in shape shows here),
            less those every trace of a pdseg model gives (``_expected_trace_warning``).
    """

    path: Path
    format: str
    metadata: ExportMetadata
    checks: tuple[ShapeCheck, ...]
    export_seconds: float
    size_bytes: int
    trace_warnings: tuple[str, ...] = field(default_factory=tuple)

    def __repr__(self) -> str:
        # what a notebook shows: the file and the verdict, not the metadata's whole provenance
        return (
            f"ExportReport(path={str(self.path)!r}, format={self.format!r}, ok={self.ok}, "
            f"checks={len(self.checks)}, size_bytes={self.size_bytes}, "
            f"export_seconds={self.export_seconds:.1f})"
        )

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.checks), default=float("nan"))


class ExportCheckError(RunFailed):
    """The exported file does not match PyTorch; it was not written. ``report`` says by how much."""

    def __init__(self, message: str, report: ExportReport, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.report = report


class ExportWriteError(RunFailed):
    """The file could not be written during the export (a full disk, a vanished folder); nothing
    was left behind and an existing file at ``--out`` is untouched."""


class _ExportGraph(nn.Module):
    """What gets traced: ``model(x)`` plus the sigmoid, fp32 in and out.

    Args:
        model: a PDSeg network in eval mode (its ``forward(x)`` returns logits (B, 1, H, W)).
        half: run the network in fp16 (the input is cast to fp16, the logits back to fp32).
    """

    def __init__(self, model: nn.Module, half: bool) -> None:
        super().__init__()
        self.model = model
        # not ``half``: that would hide nn.Module.half()
        self.use_fp16 = half
        # torch.onnx.export restores the wrapper's train/eval mode afterwards, recursively: a wrapper
        # left in training mode would switch the model to random NMF bases and dropout.
        self.eval()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 -> logits (B, 1, H, W) float32."""
        if self.use_fp16:
            x = x.half()
        out = self.model(x)
        if isinstance(out, (list, tuple)):  # a model that returns every level: the finest is last
            out = out[-1]
        return out.float()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) float32 -> (probabilities, logits), both (B, 1, H, W) float32."""
        logits = self.logits(x)
        return torch.sigmoid(logits), logits


class _TorchScriptGraph(_ExportGraph):
    """TorchScript flavour: ``forward`` returns the probabilities only; ``logits`` is a method."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(B, 3, H, W) float32 -> probabilities (B, 1, H, W) float32."""
        return torch.sigmoid(self.logits(x))


def max_onnx_opset() -> int:
    """The newest opset the TorchScript-based exporter of the installed torch can write."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):  # private constant; 20 for torch 2.4-2.13
        return 20


def require_onnx(check: bool = True) -> tuple[Any, Any]:
    """Import onnx, and onnxruntime when the export is to be checked, or say exactly what to install.

    Returns:
        (onnx, onnxruntime or None without ``check``).

    Raises:
        NotAvailableError: a package the export needs is missing, named.
    """
    try:
        import onnx
    except ImportError:
        raise NotAvailableError(
            "ONNX export needs the onnx package, which is not installed", hint=ONNX_INSTALL_HINT
        ) from None
    if not check:
        return onnx, None
    try:
        return onnx, require_onnxruntime()
    except NotAvailableError:
        raise NotAvailableError(
            "checking the exported file runs it with onnxruntime, which is not installed",
            hint=f"{ONNX_INSTALL_HINT}, or pass --no-check to export without the check",
        ) from None


MAX_CHECK_PIXELS = 2 * 2048 * 2048  # batch x height x width of one check shape (about 4 GB on the CPU)


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``"2x3x384x640"`` -> (2, 3, 384, 640).

    Raises:
        InputError: not four positive integers with 3 channels, or more than
            ``MAX_CHECK_PIXELS`` pixels.
    """
    parts = text.lower().replace("*", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 4:
        raise InputError(f"bad check shape {text!r}", hint="write BxCxHxW with C = 3, e.g. 2x3x384x640")
    # the form is right: name the one number that is not, rather than repeat the form
    for name, value in zip(("batch", "height", "width"), (shape[0], shape[2], shape[3]), strict=True):
        if value < 1:
            raise InputError(
                f"check shape {text}: the {name} is {value}; batch, height and width must be at least 1",
                hint="e.g. 1x3x64x64",
            )
    if shape[1] != 3:
        raise InputError(
            f"check shape {text}: {shape[1]} channels; the model takes 3 (RGB)",
            hint=f"write {shape[0]}x3x{shape[2]}x{shape[3]}",
        )
    if shape[0] * shape[2] * shape[3] > MAX_CHECK_PIXELS:
        # the check runs PyTorch and the file on it: 1x3x20000x20000 took 24 GB and the OOM killer
        raise InputError(
            f"check shape {text} is larger than the check needs ({shape[0] * shape[2] * shape[3]:,} pixels; "
            f"at most {MAX_CHECK_PIXELS:,})",
            hint="the file takes any size; a shape or two up to 2048x2048 check it, e.g. 1x3x2048x2048",
        )
    return shape


# names of files an export must not take: a slip of the shell (`-o photo.jpg`) would replace them
_NOT_MODEL_SUFFIXES = IMAGE_SUFFIXES | {
    ".json",
    ".csv",
    ".txt",
    ".md",
    ".py",
    ".yaml",
    ".yml",
    ".npy",
    ".npz",
}


# the extension each format is written under, in hints ("name the file .pt")
_EXTENSIONS = {"onnx": ".onnx", "torchscript": ".ts", "checkpoint": ".pt"}
_KIND_OF_NAME = {"onnx": "an ONNX", "torchscript": "a TorchScript", "checkpoint": "a PyTorch checkpoint"}


def format_for(out: str | Path, fmt: str | None) -> str:
    """The export format: ``fmt`` if given, else the one ``out``'s extension names (ONNX by default).

    ``.pt``, ``.pth`` and ``.ckpt`` name a weights-only pdseg checkpoint; ``.ts``, ``.torchscript``
    and ``.jit`` TorchScript; ``.onnx`` and any other name ONNX.

    Raises:
        InputError: ``out`` is a folder (or ends in a slash), ``fmt`` contradicts the extension
            (an ONNX file named ``.ts`` would be run as TorchScript by whoever reads the name), or
            the name is an image's or a data file's (``.jpg``, ``.json``).
    """
    # a str keeps the trailing slash that Path drops: `--out exports/` for a folder not made yet
    if str(out).endswith(("/", os.sep)) or Path(out).expanduser().is_dir():
        name = "pdseg" + _EXTENSIONS.get(str(fmt), ".onnx")
        raise InputError(
            f"--out {out} is a folder, and export writes one file",
            hint=f"give the file's name, e.g. --out {Path(out).expanduser() / name}",
        )
    suffix = Path(out).suffix.lower()
    stem = Path(out).stem
    if suffix in _NOT_MODEL_SUFFIXES:
        raise InputError(
            f"--out {out}: {suffix} names an image or data file, and export writes a model file",
            hint=f"name it {stem}.onnx, {stem}.ts or {stem}.pt",
        )
    # any other name is ONNX unless --format says otherwise
    named = "checkpoint" if suffix in CHECKPOINT_SUFFIXES else SUFFIX_FORMATS.get(suffix)
    if fmt is None:
        return named or "onnx"
    fmt = fmt.lower()
    if named is not None and named != fmt:
        raise InputError(
            f"--format {fmt}, but --out {out} ends in {suffix}, {_KIND_OF_NAME[named]} name",
            hint=f"drop --format (the extension decides), or name the file {_EXTENSIONS.get(fmt, '.onnx')}",
        )
    if fmt == "torchscript" and named is None:  # pdseg runs a program's code only when its name says so
        raise InputError(
            f"--format torchscript, but --out {out} has no TorchScript name: pdseg would refuse to run it",
            hint=f"name it {stem}.ts (or .torchscript, .jit)",
        )
    return fmt


def build_metadata(
    *,
    variant: str,
    config: dict[str, Any],
    train_size: int | None,
    normalization: dict[str, Any],
    fmt: str,
    half: bool,
    opset: int | None,
    source: Mapping[str, str] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> ExportMetadata:
    """The metadata written into an exported file (``source``: the file the weights came from;
    ``provenance``: what produced them, as that checkpoint recorded it)."""
    return ExportMetadata(
        variant=variant,
        config=config,
        train_size=train_side(train_size),
        mean=tuple(float(v) for v in normalization["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in normalization["std"]),  # type: ignore[arg-type]
        color=str(normalization.get("color", "RGB")).upper(),
        scale=float(normalization.get("scale", 255.0)),
        output=OUTPUT_PROBABILITIES,
        outputs=(OUTPUT_PROBABILITIES, OUTPUT_LOGITS),
        precision="fp16" if half else "fp32",
        pdseg_version=__version__,
        torch_version=str(torch.__version__),
        opset=opset if fmt == "onnx" else None,
        provenance=dict(provenance or {}),
        extra=dict(source or {}),
    )


def export_model(
    model: nn.Module,
    out: str | Path,
    fmt: str = "onnx",
    *,
    variant: str,
    config: dict[str, Any],
    normalization: dict[str, Any],
    train_size: int | None = None,
    half: bool = False,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    check_shapes: Sequence[Sequence[int]] = DEFAULT_CHECK_SHAPES,
    tolerance: float | None = None,
    on_step: Callable[[str], None] | None = None,
    source: Mapping[str, str] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> ExportReport:
    """Export ``model`` to ``out`` and check the file against the model.

    Args:
        model: a PDSeg network; it is not modified (a copy is put in eval mode, and made fp16 for
            ``half``). A checkpoint needs the PDSeg model itself, not ``optimize()``'s form.
        out: the file to write; replaced atomically, and only after the check passes.
        fmt: ``"onnx"``, ``"torchscript"`` or ``"checkpoint"`` (weights only, as
            :func:`~pdseg_cli.model.build.save_checkpoint` writes them).
        variant, config, normalization, train_size: written into the metadata (a checkpoint
            takes its normalisation and training size from these too).
        half: fp16 weights and activations (the NMF stays fp32; inputs/outputs stay fp32); for a
            checkpoint, fp16 storage, loaded back as fp32.
        opset: ONNX opset (17 to :func:`max_onnx_opset`); ignored for TorchScript and checkpoints.
        check: load the file back and compare it with PyTorch (strongly recommended).
        check_shapes: input shapes (B, 3, H, W) for the check.
        tolerance: max |probability difference| accepted; default FP32_TOLERANCE or FP16_TOLERANCE.
        on_step: called with a short description before each slow step (for a status line).
        source: where the weights came from (file name and sha256), written into the metadata
            (a checkpoint's provenance).
        provenance: what produced the weights (data, teacher, the ``--init`` chain); None takes
            the model's own (``model.provenance``, which :func:`load_model` sets). A checkpoint
            keeps the model's own in any case, with these added, as ``save_checkpoint`` does.

    Returns:
        The report; ``report.checks`` holds the measured differences.

    Raises:
        InputError: bad format, opset or shapes.
        NotAvailableError: ONNX export without onnx/onnxruntime installed.
        ExportCheckError: the exported file differs from PyTorch by more than the tolerance (the
            file is not written).
    """
    fmt = _checked_options(fmt, half=half, check=check, opset=opset, tolerance=tolerance)
    if provenance is None:
        provenance = dict(getattr(model, "provenance", None) or {})
    if fmt == "onnx":
        top = max_onnx_opset()
        if not MIN_OPSET <= opset <= top:
            raise InputError(
                f"opset {opset} is not supported",
                hint=f"choose {MIN_OPSET} to {top} (default {DEFAULT_OPSET})",
            )
        onnx, _ = require_onnx(check)
    shapes = [tuple(int(v) for v in s) for s in check_shapes]
    for s in shapes:
        if len(s) != 4 or s[1] != 3 or min(s) < 1:
            raise InputError(f"bad check shape {s}", hint="give (B, 3, H, W)")
    tol = tolerance if tolerance is not None else (FP16_TOLERANCE if half else FP32_TOLERANCE)
    step = on_step or (lambda _msg: None)
    out = Path(out).expanduser()
    if out.is_dir():
        raise InputError(f"--out {out} is a folder", hint="give a file name, e.g. model.onnx")
    check_writable_folder(out.parent, f"--out {out}")  # created if missing, as predict and train do

    # on the CPU, where the trace and check inputs are made: a model an API caller has on a GPU
    reference = _clone(model).float().cpu().eval()
    # a checkpoint is written from the fp32 copy (save_checkpoint halves its storage itself)
    graph_model = _clone(reference).half() if half and fmt != "checkpoint" else reference
    metadata = build_metadata(
        variant=variant,
        config=config,
        train_size=train_size,
        normalization=normalization,
        fmt=fmt,
        half=half,
        opset=opset,
        source=source,
        provenance=provenance,
    )
    try:
        # a link into a missing folder, a loop, a device: said alone, before any work
        refuse_special(final_target(out))
    except OSError as exc:
        raise ExportWriteError(
            f"cannot write {out} ({exc.strerror or exc}); nothing was written",
            hint="give the name of a file to write" if exc.errno == errno.EINVAL else None,
        ) from None
    try:
        # sweep: what a killed export of this file left (as big as the model); an --out that is a
        # link replaces the file it points at; renamed onto it only once the checks pass
        with atomic_path(out, sweep=True) as tmp:
            start = time.perf_counter()
            if fmt == "checkpoint":
                step(f"writing {variant} as a weights-only checkpoint{' (fp16 storage)' if half else ''}")
                trace_warnings = _write_checkpoint(reference, tmp, metadata, half)
            elif fmt == "onnx":
                step(f"exporting {variant} to onnx{' (fp16)' if half else ''}")
                graph: nn.Module = _ExportGraph(graph_model, half)
                trace_warnings = _export_onnx(onnx, graph.eval(), tmp, metadata, opset)
            else:
                step(f"exporting {variant} to torchscript{' (fp16)' if half else ''}")
                graph = _TorchScriptGraph(graph_model, half)
                trace_warnings = _export_torchscript(graph.eval(), tmp, metadata)
            export_seconds = time.perf_counter() - start
            checks: list[ShapeCheck] = []
            if check:
                loaded = _load_written(tmp, fmt)
                # an fp16 graph checked on a CPU without fp16 units runs emulated: say why it is
                # slow (a checkpoint is loaded back as fp32, and runs at full speed)
                slow = (
                    half
                    and fmt != "checkpoint"
                    and emulated_precision_note(torch.device("cpu"), "fp16") is not None
                )
                for shape in shapes:
                    step(
                        f"checking {'the checkpoint' if fmt == 'checkpoint' else fmt} against PyTorch at "
                        f"{'x'.join(map(str, shape))}"
                        + (" (fp16 runs emulated on this CPU: slower than fp32)" if slow else "")
                    )
                    checks.append(_check_shape(loaded, reference, shape, tol))
                del loaded  # release the file (Windows) before the rename
            report = ExportReport(
                path=out,
                format=fmt,
                metadata=metadata,
                checks=tuple(checks),
                export_seconds=export_seconds,
                size_bytes=tmp.stat().st_size,
                trace_warnings=trace_warnings,
            )
            if not report.ok:
                worst = max(checks, key=lambda c: (not c.finite, c.max_abs_diff))
                what = (
                    "non-finite values"
                    if not worst.finite
                    else f"max |dp| {worst.max_abs_diff:.3g} > {tol:g}"
                )
                raise ExportCheckError(
                    f"the exported {'checkpoint' if fmt == 'checkpoint' else f'{fmt} file'} does not "
                    "match PyTorch at "
                    f"{'x'.join(map(str, worst.shape))} ({what}); {out} was not written",
                    report,
                    hint=_failure_hint(trace_warnings),
                )
        return report
    except OSError as exc:  # e.g. the disk filled up while the graph was written
        raise ExportWriteError(
            f"cannot write {out} ({exc.strerror or exc}); nothing was written",
            hint=(
                "check the permissions of that file and folder"
                if refused_by_permissions(exc)
                else "free some space"
            )
            + " or choose another --out",
        ) from None


def _checked_options(fmt: object, **options: Any) -> str:
    """The format, lower-cased, once it and the scalar options are of the right kind (a Python
    caller's ``opset="18"`` or ``half="no"`` is one line, not a TypeError deep in the exporter)."""
    if not isinstance(fmt, str):
        raise InputError(f"export format {fmt!r}: give one of {', '.join(FORMATS)}")
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}", hint=f"choose from {', '.join(FORMATS)}")
    kinds = {"half": bool, "check": bool, "opset": int, "tolerance": float}
    for name, value in options.items():
        if name in kinds and value is not None:
            check_kind("export", name, value, kinds[name])
    return fmt


# export_model's keywords that export_checkpoint passes on: all but what it takes from the checkpoint
EXPORT_OPTIONS = tuple(
    name
    for name in inspect.signature(export_model).parameters
    if name not in ("model", "out", "fmt", "variant", "config", "normalization", "train_size", "source")
)


def export_checkpoint(
    weights: str | Path,
    out: str | Path,
    fmt: str | None = None,
    **options: Any,
) -> ExportReport:
    """Export a pdseg checkpoint (see :func:`export_model` for what is raised).

    ``export_checkpoint("runs/mine/last.pt", "mine.pt", half=True)`` writes the weights alone (no
    optimiser or training state), fp16, checked against ``last.pt``.

    Args:
        weights: the pdseg checkpoint to export.
        out: the file to write.
        fmt: ``"onnx"``, ``"torchscript"`` or ``"checkpoint"``; None lets ``out``'s name decide
            as ``pdseg export`` does (:func:`format_for`: ``.pt``/``.pth`` a checkpoint, ``.ts``
            TorchScript, anything else ONNX).
        options: :func:`export_model`'s ``half``, ``opset``, ``check``, ``check_shapes``,
            ``tolerance``, ``on_step`` and ``provenance`` (:data:`EXPORT_OPTIONS`).

    The variant, training size, normalisation and provenance written into the file come from the
    checkpoint, and ``weights``' name and sha256 are added (``source``, ``source_sha256``).

    Raises:
        WeightsError: ``weights`` is not a pdseg checkpoint.
        InputError: ``out`` is ``weights`` itself, a folder or an image's name, or a name of
            another format than ``fmt`` (the loaders go by it, as ``pdseg export`` refuses it).
    """
    from pdseg_cli.weights import load_hashed

    weights, out = Path(weights).expanduser(), Path(out).expanduser()
    unknown = sorted(set(options) - set(EXPORT_OPTIONS))
    if unknown:  # not "export_model() got an unexpected keyword argument", a function not called
        raise InputError(
            f"export_checkpoint: no option {', '.join(map(repr, unknown))}",
            hint=f"its options: {', '.join(EXPORT_OPTIONS)}",
        )
    if fmt is not None:
        fmt = _checked_options(fmt)  # a format pdseg knows, before the name is judged against it
    if out.exists() and weights.exists() and out.resolve() == weights.resolve():
        raise InputError(f"--out {out} is the checkpoint itself", hint="give another file name")
    # the name decides, or must agree, as for `pdseg export --out`: the loaders go by it
    fmt = _checked_options(format_for(out, fmt), **options)  # before the (slow) model load
    if fmt == "onnx":
        require_onnx(bool(options.get("check", True)))  # before the (slow) model load
    if out.is_file():
        from pdseg_cli.engine.train_checkpoints import resume_summary

        # a run's last.pt holds what --resume needs (optimiser, schedule, random state): an export
        # written over it, say from the run's best.pt, would lose that for good
        if resume_summary(out) is not None:
            raise InputError(
                f"--out {out} holds a training run's state (pdseg train --resume needs it); export would "
                "replace it with weights alone",
                hint="give another file name, e.g. " + str(out.with_name(f"{out.stem}-weights{out.suffix}")),
            )
    model, digest = load_hashed(weights, load_model)  # float32, eval mode, on the CPU
    return export_model(
        model,
        out,
        fmt,
        variant=model.config.name,
        config=model.config.to_dict(),
        normalization=dict(model.normalization),
        train_size=train_side(getattr(model, "train_size", None)),
        source={"source": weights.name, "source_sha256": digest},
        **options,  # provenance: the model's own (load_model sets model.provenance)
    )


def _clone(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that shares read-only mappings (``MappingProxyType`` cannot be pickled)."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, MappingProxyType):
                memo[id(value)] = value
    return copy.deepcopy(model, memo)


def _failure_hint(trace_warnings: Sequence[str]) -> str:
    if trace_warnings:
        return (
            f"torch's tracer warned {len(trace_warnings)} way(s), e.g. (a possible cause): "
            f"{trace_warnings[0][:300]}"
        )
    return "please report this with the command line and `pdseg --version`"


def _check_input(shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(CHECK_SEED)
    return torch.randn(shape, generator=generator)


@torch.inference_mode()
def _check_shape(
    loaded: OnnxModel | TorchScriptModel | _LoadedCheckpoint,
    reference: nn.Module,
    shape: tuple[int, ...],
    tol: float,
) -> ShapeCheck:
    x = _check_input(shape)
    reference.eval()  # the fixed NMF bases, no dropout
    expected = torch.sigmoid(_ExportGraph(reference, half=False).logits(x))
    start = time.perf_counter()
    got, logits = loaded.outputs(x)
    seconds = time.perf_counter() - start
    finite = bool(torch.isfinite(got).all()) and bool(torch.isfinite(logits).all())
    if got.shape != expected.shape or not finite:
        diff = mean = float("inf")
    else:
        delta = (got - expected).abs()
        diff, mean = float(delta.max()), float(delta.mean())
    return ShapeCheck(
        shape=tuple(shape),  # type: ignore[arg-type]
        max_abs_diff=diff,
        mean_abs_diff=mean,
        tolerance=tol,
        finite=finite,
        seconds=seconds,
    )


def _trace_input() -> torch.Tensor:
    return torch.randn(TRACE_SHAPE, generator=torch.Generator().manual_seed(CHECK_SEED + 1))


# Every trace of a pdseg model warns "Converting a tensor to a Python boolean", a successful one
# too: pdseg's own shape tests (resize_to's same-size test, pad_to_multiple's pad test, the NMF's
# channel check, mscan's CPU-only strip workaround) and GroupNorm's batch check inside torch. A
# branch one of them fixes at the trace shape shows as a failed check at the check shapes, which
# differ from it, so quoting them as "a possible cause" of a failed check pointed at a red herring.
_MODEL_CODE = "/pdseg_cli/model/"
_TORCH_FUNCTIONAL = "torch/nn/functional.py"


def _expected_trace_warning(category: str, text: str, filename: str) -> bool:
    """Whether a warning is one that every trace of a pdseg model gives (see ``_MODEL_CODE``)."""
    where = Path(filename).as_posix()
    return (
        category == "TracerWarning"
        and text.startswith("Converting a tensor to a Python boolean")
        and (_MODEL_CODE in where or where.endswith(_TORCH_FUNCTIONAL))
    )


def _collect(caught: Sequence[warnings.WarningMessage]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for w in caught:
        if issubclass(w.category, DeprecationWarning):
            continue  # "legacy TorchScript-based exporter": chosen on purpose (module docstring)
        text = str(w.message).strip()
        if _expected_trace_warning(w.category.__name__, text, w.filename):
            continue
        seen.setdefault(f"{w.category.__name__}: {(text.splitlines() or [''])[0]}", None)
    return tuple(seen)


def _export_onnx(
    onnx: Any, graph: nn.Module, path: Path, metadata: ExportMetadata, opset: int
) -> tuple[str, ...]:
    buffer = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    with recording_warnings() as caught, torch.no_grad():
        torch.onnx.export(
            graph,
            (_trace_input(),),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to a file object too
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=[OUTPUT_PROBABILITIES, OUTPUT_LOGITS],
            dynamic_axes={"input": axes, OUTPUT_PROBABILITIES: axes, OUTPUT_LOGITS: axes},
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.producer_name = "pdseg"
    proto.producer_version = metadata.pdseg_version
    proto.doc_string = (
        f"pdseg {metadata.variant}: input {metadata.input_note()}; outputs probabilities and logits (B,1,H,W)"
    )
    for output in proto.graph.output:  # the tracer names the channel axis symbolically: it is 1
        dims = output.type.tensor_type.shape.dim
        if len(dims) == 4:
            dims[1].ClearField("dim_param")
            dims[1].dim_value = 1
    del proto.metadata_props[:]
    for key, value in metadata.to_strings().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return _collect(caught)


class _LoadedCheckpoint:
    """A written checkpoint loaded back with :func:`load_model`, with the ``outputs`` of a loaded
    export, so that :func:`_check_shape` runs it as it runs them."""

    def __init__(self, path: Path) -> None:
        self.model = load_model(path)  # fp32 (fp16 storage cast back), eval mode, on the CPU

    @torch.inference_mode()
    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, logits), each (B, 1, H, W) float32."""
        logits = _ExportGraph(self.model, half=False).logits(x)
        return torch.sigmoid(logits), logits


def _load_written(path: Path, fmt: str) -> OnnxModel | TorchScriptModel | _LoadedCheckpoint:
    """The file just written, opened as a user would open it."""
    if fmt == "onnx":
        return OnnxModel(path)
    if fmt == "torchscript":
        return TorchScriptModel(path, written_here=True)
    return _LoadedCheckpoint(path)


def _write_checkpoint(model: nn.Module, path: Path, metadata: ExportMetadata, half: bool) -> tuple[str, ...]:
    """``save_checkpoint`` of ``model`` to ``path``: the weights, with the training size,
    normalisation and provenance of ``metadata`` (the source's provenance and its name and sha256).

    Returns:
        No warnings (nothing is traced), for the report.

    Raises:
        InputError: ``model`` is not a PDSeg network (``optimize()``'s form), or ``half`` and its
            weights exceed float16's range.
    """
    # save_checkpoint keeps model.provenance and adds what it is given: only what differs is
    # passed (the source's name and sha256, say), so a recorded key never meets a parameter's name
    kept = dict(getattr(model, "provenance", None) or {})
    wanted = {**metadata.provenance, **metadata.extra}
    added = {key: value for key, value in wanted.items() if key not in kept or kept[key] != value}
    try:
        save_checkpoint(
            model,
            path,
            half=half,
            train_size=metadata.train_size,
            normalization=metadata.normalization,
            **added,
        )
    except (TypeError, ValueError) as exc:  # both name the problem and its fix
        raise InputError(f"cannot write a checkpoint: {exc}") from None
    except OSError as exc:
        if exc.errno is None:
            raise
        # save_checkpoint's message names the temporary file: export_model names --out instead
        raise OSError(exc.errno, os.strerror(exc.errno)) from None
    return ()


def _export_torchscript(graph: nn.Module, path: Path, metadata: ExportMetadata) -> tuple[str, ...]:
    x = _trace_input()
    with recording_warnings() as caught, torch.no_grad():
        traced = torch.jit.trace_module(
            graph, {"forward": (x,), OUTPUT_LOGITS: (x,)}, check_trace=False, _store_inputs=False
        )
        # an inference file: a plain call must not build an autograd graph (1024x1024 took 2.8 GB
        # instead of 0.7 GB, and .numpy() on its output failed)
        for param in traced.parameters():
            param.requires_grad_(False)
        # torch 2.13 deprecates torch.jit.save/load in favour of torch.export; they still work.
        # Saved to memory, then written by Python: torch's own file writer aborts the process
        # (SIGABRT, no message, its temporary left filling the disk) when a write fails
        buffer = io.BytesIO()
        torch.jit.save(
            traced, buffer, _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(metadata.to_strings())}
        )
    path.write_bytes(buffer.getbuffer())
    return _collect(caught)
