"""Build models by variant name, and save or load self-describing checkpoints.

A pdseg checkpoint is a ``torch.save`` file holding plain values and tensors only, so it loads with
``torch.load(..., weights_only=True)``::

    {
        "format": "pdseg-checkpoint", "format_version": 1,
        "config": ModelConfig.to_dict(),       # the network is rebuilt from this, never unpickled
        "train_size": int | None,              # side of the square training images
        "normalization": {"color", "scale", "mean", "std"},
        "provenance": {...},                   # data, steps, ... as given to save_checkpoint
        "pdseg_version": str, "torch_version": str, "dtype": "float32" | "float16",
        "state_dict": {name: tensor},
    }

Every way a file can be wrong (missing, empty, truncated, not a torch file, a foreign torch file, a
newer format, keys that do not fit) raises one :class:`~pdseg_cli.errors.WeightsError` whose message
names the file.
"""

from __future__ import annotations

import errno
import numbers
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard, cast

import torch
from torch import nn

from pdseg_cli import __version__
from pdseg_cli.config import NORMALIZATION, VARIANTS, ModelConfig, get_config
from pdseg_cli.data.atomic import atomic_path
from pdseg_cli.errors import InputError, WeightsError, clip_words, first_line, listing
from pdseg_cli.model.mscan import MSCAN
from pdseg_cli.model.pdseg import PDSeg
from pdseg_cli.model.registry import check_decoder
from pdseg_cli.runtime.quiet_warnings import ignoring_warnings
from pdseg_cli.weights import SUFFIX_FORMATS, card_reference, check_weights_file

FORMAT_NAME = "pdseg-checkpoint"
FORMAT_VERSION = 1  # bump when the layout changes; loaders refuse newer versions
_MAX_KEYS_SHOWN = 6  # per category in a key-mismatch message
# wrapper prefixes added by DataParallel/DDP, torch.compile, and mmseg's segmentors
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class Checkpoint:
    """A loaded pdseg checkpoint.

    Attributes:
        path: the file it came from.
        config: the model config (``create_model(checkpoint.config)`` rebuilds the network).
        state_dict: parameter and buffer tensors, on the CPU, in the dtype they were saved in.
        train_size: side of the square training images, or None when unknown.
        normalization: the input normalisation the weights expect (form of ``NORMALIZATION``).
        provenance: what produced the weights (data, steps, ...), as given to :func:`save_checkpoint`.
        pdseg_version: the pdseg version that wrote the file.
        format_version: the checkpoint layout version.
    """

    path: Path
    config: ModelConfig
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    train_size: int | None
    normalization: dict[str, Any]
    provenance: dict[str, Any]
    pdseg_version: str
    format_version: int

    @property
    def variant(self) -> str:
        return self.config.name


def train_side(train_size: Any) -> int | None:
    """A checkpoint's training size (an int, or an (H, W) pair) as one side length: the larger."""
    if train_size is None:
        return None
    if isinstance(train_size, (tuple, list)):
        return int(max(train_size)) if train_size else None
    return int(train_size)


def weights_line(variant: str, train_size: int | None, provenance: Mapping[str, Any] | None) -> str:
    """One line on what weights are: ``"pdseg-t, trained at 512x512: <the model card's summary>"``,
    or ``"... on <data>"`` where the provenance has no summary. The rule of
    ``engine.predict.describe_model`` for a checkpoint, which an export of one follows too (the
    export's metadata carries the checkpoint's provenance), so that both start lines read alike."""
    text = variant
    if train_size:
        text += f", trained at {train_size}x{train_size}"
    provenance = provenance or {}
    # cut at a word: a start line, not a dump of whatever a caller stored (`pdseg info` shows it all)
    if provenance.get("summary"):  # the model card's one line, stored with the weights
        return f"{text}: {clip_words(card_reference(str(provenance['summary'])), _LINE_PART)}"
    if provenance.get("data"):
        return f"{text} on {clip_words(str(provenance['data']), _LINE_PART)}"
    return text


_LINE_PART = 240  # characters of a summary or data in a weights line


def create_model(variant: str | ModelConfig) -> PDSeg:
    """A freshly initialised network (random weights) in eval mode; call ``.train()`` to train it.

    Args:
        variant: a name from ``pdseg_cli.config.VARIANTS`` (e.g. ``"pdseg-b"``) or a config.

    Raises:
        InputError: unknown variant name (with the closest names as a hint).
        TypeError: ``variant`` is neither a name nor a ModelConfig.
    """
    if not isinstance(variant, (str, ModelConfig)):
        raise TypeError(
            f"variant must be a variant name such as 'pdseg-t' or a ModelConfig, not {type(variant).__name__}"
        )
    config = variant if isinstance(variant, ModelConfig) else get_config(variant)
    return PDSeg(config).eval()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    for attr in ("_orig_mod", "module"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            model = inner
    return model


def _plain(value: Any, where: str) -> Any:
    """``value`` made of types a ``weights_only`` load accepts (Path -> str, tuple -> list)."""
    if value is None:
        return None
    for kind in (bool, int, float, str):  # exact types: subclasses (e.g. TorchVersion) would be pickled
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"{where} is a {type(value).__name__}; checkpoints hold plain values only")


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    half: bool = False,
    train_size: int | None = None,
    normalization: Mapping[str, Any] | None = None,
    **provenance: Any,
) -> Path:
    """Write ``model`` as a self-describing checkpoint, atomically (temporary file + rename).

    Args:
        model: a PDSeg network (also inside DDP or ``torch.compile``). Its weights are copied to the
            CPU; the model itself is not changed.
        path: the file to write (replaced if it exists; missing parent folders are created).
        half: store floating-point tensors as float16 (half the size; loaded back as float32).
        train_size: side of the square training images; defaults to ``model.train_size``.
        normalization: input normalisation; defaults to ``model.normalization``.
        **provenance: plain values describing the weights, e.g. ``data="DIS5K/DIS-TR"``,
            ``steps=60000``, ``seed=0``; they add to (or replace) the provenance of a model
            loaded with :func:`load_model` (``model.provenance``), which is kept.

    Returns:
        The written path.

    Raises:
        TypeError: ``model`` has no ModelConfig, or a provenance value is not a plain value.
        ValueError: a bad ``train_size`` or ``normalization``, or weights too large for float16.
        IsADirectoryError: ``path`` is a folder.
        OSError: the file cannot be written (permissions, a full disk); it names ``path``, not the
            temporary file, and what was at ``path`` is unchanged.
    """
    path = Path(path).expanduser()
    if path.is_dir():  # checked first: the rename at the end would fail on it, after the write
        raise IsADirectoryError(
            21, f"{path} is a folder; give the checkpoint's file name, e.g. {path / 'model.pt'}"
        )
    payload = checkpoint_payload(
        model, half=half, train_size=train_size, normalization=normalization, **provenance
    )
    write_payload(payload, path)
    return path


# torch's zip writer reports a full disk as a RuntimeError: "[enforce fail at
# inline_container.cc:...] unexpected pos ..." or "PytorchStreamWriter failed writing file ..."
_TORCH_WRITE_FAILURES = ("enforce fail", "unexpected pos", "PytorchStreamWriter", "write failed")


def write_payload(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save`` a checkpoint's payload to ``path`` atomically (a temporary file, fsync'd, then
    renamed), creating its folder. The one writer of checkpoint files: ``save_checkpoint``, the
    training checkpoints and ``pdseg export --out x.pt`` all come here.

    Raises:
        OSError: the file cannot be written (permissions, a full disk: torch's RuntimeError for a
            failed write becomes ENOSPC); it names ``path``, not the temporary file, and what was
            at ``path`` is unchanged.
    """
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, sweep=True) as tmp, open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    except RuntimeError as exc:
        if not any(s in str(exc) for s in _TORCH_WRITE_FAILURES):
            raise
        raise OSError(
            errno.ENOSPC, f"cannot write the checkpoint {path}: the disk is probably full", str(path)
        ) from None
    except OSError as exc:
        if exc.errno is None:
            raise
        # the same kind of error (PermissionError...), naming the file asked for, not the temporary
        raise OSError(exc.errno, f"cannot write the checkpoint {path}: {exc.strerror}", str(path)) from None


def checkpoint_payload(
    model: nn.Module,
    *,
    half: bool = False,
    train_size: int | None = None,
    normalization: Mapping[str, Any] | None = None,
    **provenance: Any,
) -> dict[str, Any]:
    """What :func:`save_checkpoint` writes, as a dict (training adds its state to it before the one
    write of ``last.pt``). Arguments as for :func:`save_checkpoint`.

    Raises:
        TypeError: ``model`` has no ModelConfig, ``train_size`` is not a whole number, or a
            provenance value is not a plain value.
        ValueError: ``normalization`` lacks 3 means and 3 non-zero stds.
    """
    net = unwrap_model(model)
    config = getattr(net, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"save_checkpoint needs a PDSeg model (with a ModelConfig), got {type(net).__name__}")
    if not isinstance(net, PDSeg):
        # e.g. optimize()'s inference form: folded weights whose keys no PDSeg could load back
        raise TypeError(
            f"save_checkpoint needs the PDSeg model itself, got {type(net).__name__}; "
            "save the model you passed to optimize()"
        )
    state = {}
    for key, tensor in net.state_dict().items():
        tensor = tensor.detach().to("cpu", copy=True)
        if half and tensor.is_floating_point():
            halved = tensor.half()
            if not bool(torch.isfinite(halved).all()) and bool(torch.isfinite(tensor).all()):
                # loading would refuse the file as non-finite: say why now, and write nothing
                raise ValueError(
                    f"{key} holds values beyond float16's range (±65504): save this model without half"
                )
            tensor = halved
        state[key] = tensor.contiguous()
    size = train_size if train_size is not None else getattr(net, "train_size", None)
    if size is not None and (isinstance(size, bool) or not isinstance(size, numbers.Integral)):
        # one side: a checkpoint's training images are square (a pair would be read back as None)
        raise TypeError(f"train_size must be one side length (an int), got {size!r}")
    if size is not None and size < 32:
        raise ValueError(f"train_size must be at least 32 (the model's stride), got {size}")
    norm = dict(normalization or cast(Mapping[str, Any], getattr(net, "normalization", NORMALIZATION)))
    problem = _normalization_problem(norm)
    if problem:  # every input would be normalised wrongly, so no file is written
        raise ValueError(f"normalization: {problem}")
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "train_size": None if size is None else int(size),
        "normalization": _plain(norm, "normalization"),
        # a loaded model keeps what its file said it came from (load_model sets .provenance);
        # values given here add to it or replace it
        "provenance": _plain({**dict(getattr(net, "provenance", None) or {}), **provenance}, "provenance"),
        "pdseg_version": __version__,
        "torch_version": str(torch.__version__),
        "dtype": "float16" if half else "float32",
        "state_dict": state,
    }
    return payload


def _torch_load(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with every failure as one WeightsError."""
    check_weights_file(path, what)
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(f"{what} {path} is empty (0 bytes)", hint="the download or copy was interrupted")
    try:
        with ignoring_warnings():  # e.g. "Detected pickle protocol 4": the error below says it
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc).lower()  # torch has said "Unsupported global: GLOBAL x" and "unsupported GLOBAL x"
        if "unsupported global" in text or "unsupported class" in text:
            name = re.search(r"GLOBAL (\S+)", str(exc), re.IGNORECASE)
            ours = name is not None and name.group(1).startswith("pdseg_cli.")  # torch.save(model)
            raise WeightsError(
                f"{what} {path} holds pickled Python objects"
                f"{f' ({name.group(1)})' if name else ''}, which a safe load refuses",
                hint="a whole pdseg model saved with torch.save: load it where you trust it and save it "
                "with pdseg_cli.save_checkpoint(model, 'model.pt', train_size=N)"
                if ours
                else "pdseg reads files of tensors and plain values only; re-save just the state_dict",
            ) from None
        raise WeightsError(f"{what} {path} is not a PyTorch file", hint=_not_torch_hint(path, what)) from None
    except Exception as exc:  # zip, pickle and EOF errors: the file is damaged or of another kind
        if "TorchScript" in str(exc):  # a TorchScript archive is a zip too, and whole
            raise WeightsError(
                f"{what} {path} is a TorchScript export, not a pdseg checkpoint",
                hint=_not_torch_hint(path, what, suffix=".ts"),
            ) from None
        if _starts_like_zip(path):
            raise WeightsError(
                f"{what} {path} is truncated or damaged ({first_line(exc)})",
                hint="download or copy it again",
            ) from None
        raise WeightsError(f"{what} {path} is not a PyTorch file", hint=_not_torch_hint(path, what)) from None


def _not_torch_hint(path: Path, what: str, suffix: str | None = None) -> str:
    """What to do with a file torch cannot read: an exported model is the usual mix-up (known by
    its name, or as ``suffix`` where its content said which export it is)."""
    suffix = suffix or path.suffix.lower()
    from pdseg_cli.data.header import looks_like_image

    if looks_like_image(path):  # a photo given where the model goes: say so, not "needs a .pt"
        return (
            "it is an image, not a model: give the weights file (a .pt checkpoint, or .onnx / .ts "
            "where the option takes one)"
        )
    if what == "checkpoint" and (suffix in SUFFIX_FORMATS or starts_like_onnx(path)):
        # an ONNX file named .pt is known by its first byte: predict and eval run it by content too
        kind = f"a {suffix} file" if suffix in SUFFIX_FORMATS else f"an ONNX model (named {path.name})"
        return (
            f"{kind} runs only where a model is run (`pdseg predict`, `pdseg eval`, `train --teacher`; "
            "Predictor in Python); this needs a pdseg checkpoint (.pt: the bundled weights, or a "
            "run's last.pt / best.pt)"
        )
    if what == "checkpoint":  # predict, eval and --teacher take exports too; --init and export do not
        what = "a model file (a pdseg .pt checkpoint, or an .onnx / .ts export where the option takes one)"
    return f"check the path: this needs {what}"


# the ModelProto fields that may follow ir_version, as their tag bytes: producer_name (2),
# producer_version (3), domain (4), model_version (5), doc_string (6), graph (7), opset_import (8),
# metadata_props (14), training_info (20), functions (25)
_ONNX_SECOND_TAGS = frozenset(b"\x12\x1a\x22\x28\x32\x3a\x42\x72\xa2\xca")


def starts_like_onnx(path: Path) -> bool:
    """Whether the file starts as an ONNX protobuf does: field 1 (``ir_version``, a small varint:
    byte 0x08, then 1-127), then another ModelProto field. A pickle starts with 0x80 and a zip with
    ``PK``; three bytes keep a damaged file that happens to start with 0x08 from passing for ONNX."""
    with open(path, "rb") as f:
        head = f.read(3)
    return len(head) == 3 and head[0] == 0x08 and 1 <= head[1] <= 127 and head[2] in _ONNX_SECOND_TAGS


def _starts_like_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _is_state_dict(obj: Any) -> TypeGuard[dict[str, torch.Tensor]]:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a pdseg checkpoint (on the CPU, ``weights_only=True``) without building the model.

    Raises:
        WeightsError: the file is missing, empty, truncated, not a torch file, not a pdseg
            checkpoint, from a newer pdseg, or malformed; the message names the file.
    """
    path = Path(path).expanduser()
    obj = _torch_load(path, "checkpoint")
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a pdseg checkpoint")
    if "format" not in obj:
        if _is_state_dict(obj):
            state: dict[str, torch.Tensor] | None  # the name is reused below for the checkpoint's own
            state = _strip_prefixes(obj)  # DDP's module., torch.compile's _orig_mod.
            whole = any(k.startswith("encoder.") for k in state) and any(
                k.startswith("decoder.") for k in state
            )
            if whole:  # a pdseg model's own state_dict(), saved with torch.save: no config to build it
                variant = _variant_of(state) or "VARIANT"
                strip = (
                    "" if state.keys() == obj.keys() else " (its keys without the module./_orig_mod. prefix)"
                )
                hint = (
                    f"load it into its model and save that: m = pdseg_cli.create_model({variant!r}); "
                    f"m.load_state_dict(torch.load({str(path)!r})){strip}; "
                    "pdseg_cli.save_checkpoint(m, 'model.pt', train_size=N)"
                )
            else:
                hint = (
                    "MSCAN ImageNet weights start a training run: pdseg train --backbone-weights FILE "
                    "(Python: load_backbone); a pdseg checkpoint is what pdseg train writes (Python: "
                    "save_checkpoint)"
                )
            raise WeightsError(
                f"{path} is a bare state_dict, not a pdseg checkpoint (no model config inside)", hint=hint
            )
        keys = ", ".join(sorted(map(str, obj))[:_MAX_KEYS_SHOWN])
        raise WeightsError(
            f"{path} is not a pdseg checkpoint (no 'format' entry; top-level keys: {keys})",
            hint="pdseg checkpoints come from save_checkpoint or `pdseg train`",
        )
    if obj["format"] != FORMAT_NAME:
        raise WeightsError(f"{path} is a {obj['format']!r} file, not a {FORMAT_NAME!r}")
    version = obj.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise WeightsError(f"{path} has an invalid checkpoint format version {version!r}")
    if version > FORMAT_VERSION:
        raise WeightsError(
            f"{path} was written by a newer pdseg (checkpoint format {version}, "
            f"pdseg {obj.get('pdseg_version', '?')}); this pdseg {__version__} reads format {FORMAT_VERSION}",
            hint="upgrade pdseg: pip install -U pdseg",
        )
    try:
        config = ModelConfig.from_dict(obj.get("config"))  # type: ignore[arg-type]
        check_decoder(config)
    except (ValueError, InputError) as exc:
        raise WeightsError(f"{path} has an invalid model config: {exc}") from None
    state = obj.get("state_dict")
    if not _is_state_dict(state):
        raise WeightsError(f"{path} has no state_dict of tensors")
    train_size = obj.get("train_size")
    whole = isinstance(train_size, numbers.Integral) or (
        isinstance(train_size, float) and train_size.is_integer()
    )
    if train_size is not None and (isinstance(train_size, bool) or not whole or train_size < 32):
        raise WeightsError(
            f"{path} records an unusable training size {train_size!r} (a side of at least 32, or none)",
            hint="the file was edited or damaged: save it again with save_checkpoint(..., train_size=N)",
        )
    broken = [key for key, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:  # every map would come out nan (written as 0): a blank mask for every image
        halved = obj.get("dtype") == "float16" and not any(bool(torch.isnan(state[k]).any()) for k in broken)
        raise WeightsError(
            f"{path} holds weights that are not finite (nan or inf) in {len(broken)} tensor(s), "
            f"e.g. {broken[0]}",
            hint="it was saved with half=True from values beyond float16's range (±65504): save the model "
            "again without half"
            if halved
            else "the training that wrote it diverged, or the file was damaged: use an earlier checkpoint",
        )
    normalization = dict(obj.get("normalization") or NORMALIZATION)
    problem = _normalization_problem(normalization)
    if problem:
        raise WeightsError(
            f"{path} has an unusable input normalisation: {problem}",
            hint="save it again with a normalization of 3 means and 3 non-zero stds",
        )
    return Checkpoint(
        path=path,
        config=config,
        state_dict=state,
        train_size=None if train_size is None else int(train_size),  # a whole number by the check above
        normalization=normalization,
        provenance=dict(obj.get("provenance") or {}),
        pdseg_version=str(obj.get("pdseg_version", "?")),
        format_version=version,
    )


def _normalization_problem(norm: Mapping[str, Any]) -> str | None:
    """What is wrong with a checkpoint's normalisation (every input would come out wrong), or None."""
    try:
        mean = [float(v) for v in norm["mean"]]
        std = [float(v) for v in norm["std"]]
    except (KeyError, TypeError, ValueError):
        return f"mean and std must be lists of numbers, got {dict(norm)!r}"[:200]
    if len(mean) != 3 or len(std) != 3:
        return f"{len(mean)} means and {len(std)} stds for 3 channels"
    if any(s == 0 for s in std):
        return f"a std of 0 ({std})"
    return None


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def _shape_text(shape: torch.Size | tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _mismatch_message(
    model_state: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    ignore_missing: tuple[str, ...] = (),
) -> str | None:
    """Names the missing, unexpected and mis-shaped keys, or None when ``state`` fits ``model_state``."""
    missing = [k for k in model_state if k not in state and not k.endswith(ignore_missing)]
    unexpected = [k for k in state if k not in model_state]
    shaped = [
        f"{k} {_shape_text(state[k].shape)} vs {_shape_text(model_state[k].shape)}"
        for k in model_state
        if k in state and state[k].shape != model_state[k].shape
    ]
    parts = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("with another shape (file vs model)", shaped),
    ):
        if items:
            parts.append(f"{len(items)} {label}: {listing(items, _MAX_KEYS_SHOWN)}")
    return "; ".join(parts) or None


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> PDSeg:
    """Rebuild the network a checkpoint describes and load its weights strictly.

    The model is returned in eval mode, in float32, with ``normalization`` and ``train_size`` set
    from the checkpoint.

    Args:
        path: a file written by :func:`save_checkpoint`.
        device: where to put the model: a torch device, or ``auto|cpu|cuda|cuda:N|mps`` as
            ``Predictor`` takes them.

    Raises:
        WeightsError: the file is not a valid pdseg checkpoint, or its tensors do not fit its config.
        NotAvailableError: CUDA (or MPS) was asked for and is not there (checked before loading).
        InputError: not a device name.
    """
    from pdseg_cli.runtime import resolve_device

    # a torch.device too: torch.device("cuda") on a machine without one is refused here, with the
    # fix, not by .to() after the file was read; a torch.device is then used as given (an index-less
    # "cuda" stays the current device, as torchrun's set_device makes it)
    checked = resolve_device(device.type if isinstance(device, torch.device) else device).device
    device = device if isinstance(device, torch.device) else checked
    ckpt = load_checkpoint(path)
    with torch.random.fork_rng(devices=[]):  # the random init the file overwrites: the caller's RNG stays
        model = PDSeg(ckpt.config)
    state = _strip_prefixes(ckpt.state_dict)
    problem = _mismatch_message(model.state_dict(), state)
    if problem:
        raise WeightsError(
            f"{ckpt.path} does not fit its own config {ckpt.config.name!r}: {problem}",
            hint="the file was edited or written by an incompatible pdseg",
        )
    model.load_state_dict(state, strict=True)  # copies, casting float16 storage to float32
    model.normalization = ckpt.normalization
    model.train_size = ckpt.train_size
    model.provenance = dict(ckpt.provenance)  # what the weights came from, for run headers
    return model.to(device).eval()


# mmsegmentation 1.x renamed the MLP's depth-wise conv; map its names onto the official ones
_MMSEG_RENAMES = ((re.compile(r"^(block\d+\.\d+\.mlp\.dwconv)\.(weight|bias)$"), r"\1.dwconv.\2"),)


def _backbone_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The MSCAN tensors in a loaded file (a segmentor's head and the ImageNet classifier left out)."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME and _is_state_dict(obj.get("state_dict")):
        obj = {k[len("encoder.") :]: v for k, v in obj["state_dict"].items() if k.startswith("encoder.")}
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and not _is_state_dict(obj) and _is_state_dict(obj.get(wrapper)):
            obj = obj[wrapper]
            break
    if not _is_state_dict(obj):
        raise WeightsError(
            f"{path} holds no state_dict of tensors (top-level: {type(obj).__name__})",
            hint="give an MSCAN ImageNet file such as mscan_b.pth",
        )
    state = _strip_prefixes(obj)
    if any(k.startswith("backbone.") for k in state):  # a whole SegNeXt segmentor: keep its backbone
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    out = {}
    for key, value in state.items():
        if key.startswith("head."):  # the ImageNet classifier of the pretraining model
            continue
        for pattern, repl in _MMSEG_RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def _variant_of(state: Mapping[str, torch.Tensor]) -> str | None:
    """The variant whose whole model has exactly ``state``'s keys and shapes, if any: the encoder's
    dims and depths narrow it down (pdseg-t and segnext-t share one), the decoder decides."""
    encoder = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    guess = _guess_mscan(encoder)
    if guess is None:
        return None
    mscan = VARIANTS[guess]
    for name, cfg in VARIANTS.items():
        if (cfg.embed_dims, cfg.depths) != (mscan.embed_dims, mscan.depths):
            continue
        shapes = {k: v.shape for k, v in create_model(cfg).state_dict().items()}
        if shapes == {k: v.shape for k, v in state.items()}:
            return name
    return None


def _guess_mscan(state: Mapping[str, torch.Tensor]) -> str | None:
    """'pdseg-x' whose encoder has the dims and depths found in ``state``, if any."""
    try:
        dims = tuple(int(state[f"norm{i}.weight"].shape[0]) for i in range(1, 5))
    except KeyError:
        return None
    depths = []
    for i in range(1, 5):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"block{i}\.(\d+)\.", k))}
        depths.append(max(blocks) + 1 if blocks else 0)
    for name, cfg in VARIANTS.items():
        if name.startswith("pdseg-") and cfg.embed_dims == dims and cfg.depths == tuple(depths):
            return name
    return None


def load_backbone(model: PDSeg | MSCAN, path: str | os.PathLike[str]) -> int:
    """Load ImageNet-pretrained MSCAN weights (the official ``mscan_t/s/b/l.pth``) into the encoder.

    Accepts a bare state_dict or one wrapped in ``{"state_dict": ...}`` / ``{"model": ...}``, with
    ``module.`` prefixes, a SegNeXt segmentation checkpoint (its ``backbone.*`` part), mmseg 1.x's
    renamed keys, or another pdseg checkpoint (its encoder). The ImageNet classifier (``head.*``) is
    ignored. Everything else must match exactly: the load is strict. BatchNorm's
    ``num_batches_tracked`` counters may be absent.

    Args:
        model: a PDSeg network (its ``encoder`` is loaded) or an MSCAN encoder.
        path: the weights file.

    Returns:
        The number of tensors loaded.

    Raises:
        WeightsError: the file cannot be read, or its keys or shapes do not fit the encoder; the
            message names the missing, unexpected and mis-shaped keys.
    """
    path = Path(path).expanduser()
    encoder = model.encoder if isinstance(model, PDSeg) else model
    if not isinstance(encoder, MSCAN):
        raise TypeError(f"load_backbone needs a PDSeg model or an MSCAN encoder, got {type(model).__name__}")
    state = _backbone_state(_torch_load(path, "backbone weights"), path)
    problem = _mismatch_message(encoder.state_dict(), state, ignore_missing=("num_batches_tracked",))
    if problem:
        guess = _guess_mscan(state)
        variant = getattr(getattr(model, "config", None), "name", None)
        hint = f"the file looks like the encoder of {guess}" if guess and guess != variant else None
        raise WeightsError(
            f"{path} does not fit the MSCAN encoder{f' of {variant}' if variant else ''}: {problem}",
            hint=hint,
        )
    encoder.load_state_dict(state, strict=True)
    return len(state)
