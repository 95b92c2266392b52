"""Training PDSeg on DIS5K-layout data: multi-scale supervision, EMA, exact resume, DDP.

The recipe follows ``docs/model.md``, 'Training recipe': BCE-with-logits + IoU on every decoder
level in float32 (:mod:`pdseg_cli.engine.losses`), AdamW with the decoder at 10x the encoder's
learning rate and no weight decay on norms, biases and layer scales, a linear warmup then poly
decay per iteration, gradient clipping, autocast (bf16, or fp16 with a gradient scaler; the model
keeps its NMF in fp32), and an EMA of the weights that is validated and saved.

A run folder holds ``config.json`` (the resolved configuration), ``results.csv`` (one row per
epoch), ``last.pt`` and ``best.pt``. Both ``.pt`` files are ordinary pdseg checkpoints of the EMA
weights (``pdseg predict --weights``, ``load_model``); ``last.pt`` also carries the whole training
state under ``"train_state"``: the raw weights, optimiser, scheduler, gradient scaler, EMA, every
RNG of every process, the epoch and the step. Resuming from it continues the very same trajectory:
on the CPU an interrupted run ends with weights bit-identical to an uninterrupted one.

Determinism: the data order is a function of ``(seed, epoch)`` and each sample's augmentation of
``(seed, epoch, index)``, never of worker scheduling; DataLoaders get their own generators so they
never draw from the global torch RNG, which only the model (dropout, drop-path, the NMF's random
bases) uses and which is saved with the state.

Under ``torchrun`` each process trains on its shard (:class:`~pdseg_cli.data.dis5k.EpochBatches`),
BatchNorm in the encoder becomes SyncBatchNorm on GPUs, and only rank 0 validates and writes files.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pdseg_cli import __version__, runtime
from pdseg_cli.config import get_config
from pdseg_cli.data import dis5k, transforms
from pdseg_cli.data.augment import AugmentConfig
from pdseg_cli.data.images import TEMP_SUFFIX, atomic_path, check_writable_folder
from pdseg_cli.engine import losses
from pdseg_cli.engine.ema import ModelEMA
from pdseg_cli.errors import DataError, InputError, PdsegError, WeightsError, first_line
from pdseg_cli.model import create_model, load_backbone, save_checkpoint
from pdseg_cli.model.build import load_checkpoint

LAST, BEST, RESULTS, CONFIG = "last.pt", "best.pt", "results.csv", "config.json"
TENSORBOARD_DIR, CACHE_DIR = "tensorboard", "cache"
RUN_FILES = (LAST, BEST, RESULTS, CONFIG)  # what makes a folder a run folder
STATE_VERSION = 1  # layout of last.pt's "train_state"
# validation columns of results.csv, from the DIS table's metrics (pdseg eval's keys)
_VAL_KEYS = ("maxF", "wF", "MAE", "S", "E", "HCE")
VAL_COLUMNS = tuple(f"val_{key.lower()}" for key in _VAL_KEYS)
WARMUP_ITERS = 1500  # SegNeXt's linear warmup; the default is min(this, a tenth of the run)
WARMUP_RATIO = 1e-6  # the warmup starts at this fraction of the learning rate (SegNeXt)
POLY_POWER = 1.0  # poly decay to 0 at the last iteration (SegNeXt)
CONFIDENT = 254.0 / 255.0  # a final map that cannot reach this probability never writes byte 254+

Supervision = losses.Supervision
Precision = Literal["auto", "fp32", "bf16", "fp16"]

# Fields that shape the trajectory: a resumed run must keep them, or it is another experiment.
_TRAJECTORY_FIELDS = (
    "variant",
    "size",
    "batch",
    "seed",
    "supervision",
    "lr",
    "decoder_lr_mult",
    "weight_decay",
    "clip_grad",
    "ema_decay",
    "ema_tau",
    "augment",
    "teacher_weight",
)
_PATH_FIELDS = ("out", "data_root", "val_dir", "backbone_weights", "cache_dir", "teacher", "init")
DEFAULT_VARIANT = "pdseg-b"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; ``config.json`` in the run folder stores it.

    Args:
        out: the run folder (``last.pt``, ``best.pt``, ``results.csv``, ``config.json``).
        epochs: train until this many epochs are complete (also when resuming).
        variant: the model, ``pdseg-t/s/b/l`` or ``segnext-b`` (the ablation's single head); None:
            ``init``'s variant, else ``pdseg-b``.
        size: square training side in pixels; a multiple of 32. DIS5K images are 1024^2 in the recipe.
        batch: images per step and process (the global batch is ``batch * world_size``).
        workers: DataLoader worker processes per training process (0 loads in the main process);
            None: :func:`default_workers`.
        seed: seeds the initial weights, the data order, the augmentation and the model's RNG.
        data_root: DIS5K root (default ``$PDSEG_DATA``, else ``./DIS5K``); unused when both
            ``train_dir`` and ``val_dir`` are given.
        train_dir: a folder with ``im/`` and ``gt/`` to train on, or several (a list); default
            ``<root>/DIS-TR``. With a ``teacher``, a folder may hold images without masks.
        val_dir: a folder to validate on; default ``<root>/DIS-VD`` when ``train_dir`` is not
            given, else no validation (and no ``best.pt``).
        supervision: ``multi`` (loss on every decoder level) or ``single`` (final map only).
        lr: the encoder's peak learning rate (SegNeXt: 6e-5).
        decoder_lr_mult: the decoder's learning rate is this times ``lr`` (SegNeXt: 10).
        weight_decay: AdamW weight decay, not applied to norms, biases and layer scales.
        warmup: linear-warmup iterations; None means ``min(1500, total_iterations // 10)``.
        clip_grad: clip the global gradient norm to this; 0 turns clipping off.
        precision: ``auto`` (bf16 on GPUs that have it, else fp32), ``fp32``, ``bf16`` or ``fp16``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        ema_decay: final decay of the weight EMA.
        ema_tau: iterations over which the EMA decay ramps up.
        val_every: validate every this many epochs (and after the last); 0 never validates.
        save_every_steps: also write ``last.pt`` every this many iterations; 0 only at epoch ends.
        backbone_weights: ImageNet MSCAN weights for the encoder (ignored when resuming).
        cache: keep decoded, resized samples on ``disk`` (``.npy``), in ``ram``, or ``off``.
        cache_dir: where the disk cache lives; default ``<out>/cache``. Share it between runs.
        augment: flip, rotation, crop-and-resize and colour jitter on training samples.
        resume: continue the run in ``out`` from its ``last.pt``.
        overwrite: replace a run already in ``out`` (its cache is kept).
        teacher: a model ``pdseg predict`` runs (``.pt``, ``.onnx``, ``.ts``, a foreign ONNX) whose
            maps are the targets of images without masks (distillation).
        teacher_weight: the teacher's share of the target where an image has a mask too (0..1).
        onnx_spec: ``--onnx-spec`` for a foreign ONNX teacher (see :mod:`pdseg_cli.engine.onnx_spec`).
        teacher_cache: where teacher maps are cached; default pdseg's cache root
            (``$PDSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/pdseg``), shared by runs.
        init: start from this pdseg checkpoint's weights (variant and normalisation from the file)
            with a fresh optimiser and schedule (fine-tuning; ignored when resuming).
    """

    out: Path
    epochs: int
    variant: str | None = None
    size: int = 1024
    batch: int = 8
    workers: int | None = None
    seed: int = 0
    data_root: Path | None = None
    train_dir: Path | None = None
    val_dir: Path | None = None
    supervision: Supervision = "multi"
    lr: float = 6e-5
    decoder_lr_mult: float = 10.0
    weight_decay: float = 0.01
    warmup: int | None = None
    clip_grad: float = 5.0
    precision: Precision = "auto"
    device: str = "auto"
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0
    val_every: int = 1
    save_every_steps: int = 0
    backbone_weights: Path | None = None
    cache: dis5k.CacheMode = "disk"
    cache_dir: Path | None = None
    augment: bool = True
    resume: bool = False
    overwrite: bool = False
    teacher: Path | None = None
    teacher_weight: float = 0.0
    onnx_spec: str | None = None
    teacher_cache: Path | None = None
    init: Path | None = None

    def __post_init__(self) -> None:
        for name in (*_PATH_FIELDS, "teacher_cache"):  # accept str paths from Python callers
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        folders = self.train_dir
        if isinstance(folders, (list, tuple)):  # several --train folders; one stays a plain path
            paths = tuple(Path(f) for f in folders)
            object.__setattr__(self, "train_dir", paths[0] if len(paths) == 1 else (paths or None))
        elif folders is not None and not isinstance(folders, Path):
            object.__setattr__(self, "train_dir", Path(folders))

    @property
    def train_dirs(self) -> list[Path]:
        """The training folders given (empty: DIS-TR under the data root)."""
        if self.train_dir is None:
            return []
        return list(self.train_dir) if isinstance(self.train_dir, tuple) else [self.train_dir]

    @property
    def model_variant(self) -> str:
        """The variant to build: the one given, else the default (``init`` sets it in :func:`train`)."""
        return self.variant or DEFAULT_VARIANT

    def check(self) -> None:
        """Reject values that cannot work, with the fix in the message.

        Raises:
            InputError: the first bad value.
        """
        get_config(self.model_variant)  # unknown names get a did-you-mean hint
        rules: list[tuple[bool, str, str | None]] = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}", None),
            (
                self.size >= 32 and self.size % 32 == 0,
                f"--size must be a multiple of 32 (the model's total stride), got {self.size}",
                "e.g. 1024 (the DIS recipe), 512 or 320",
            ),
            (self.batch >= 1, f"--batch must be at least 1, got {self.batch}", None),
            (
                self.workers is None or self.workers >= 0,
                f"--workers must be 0 or more, got {self.workers}",
                None,
            ),
            (self.seed >= 0, f"--seed must be 0 or more, got {self.seed}", None),
            (self.lr > 0, f"--lr must be positive, got {self.lr}", None),
            (
                self.decoder_lr_mult > 0,
                f"the decoder lr multiplier must be positive, got {self.decoder_lr_mult}",
                None,
            ),
            (self.weight_decay >= 0, f"weight decay must be 0 or more, got {self.weight_decay}", None),
            (self.warmup is None or self.warmup >= 0, f"--warmup must be 0 or more, got {self.warmup}", None),
            (self.clip_grad >= 0, f"--clip-grad must be 0 (off) or more, got {self.clip_grad}", None),
            (0.0 <= self.ema_decay < 1.0, f"--ema-decay must be in [0, 1), got {self.ema_decay}", None),
            (self.ema_tau > 0, f"EMA tau must be positive, got {self.ema_tau}", None),
            (self.val_every >= 0, f"--val-every must be 0 (never) or more, got {self.val_every}", None),
            (
                self.save_every_steps >= 0,
                f"--save-every-steps must be 0 or more, got {self.save_every_steps}",
                None,
            ),
            (
                self.supervision in ("multi", "single"),
                f"--supervision must be multi or single, got {self.supervision!r}",
                None,
            ),
            (
                self.precision in runtime.PRECISIONS,
                f"--precision must be one of {', '.join(runtime.PRECISIONS)}, got {self.precision!r}",
                None,
            ),
            (
                self.cache in ("disk", "ram", "off"),
                f"--cache must be disk, ram or off, got {self.cache!r}",
                None,
            ),
            (not (self.resume and self.overwrite), "--resume and --overwrite exclude each other", None),
            (
                0.0 <= self.teacher_weight <= 1.0,
                f"--teacher-weight must be in [0, 1], got {self.teacher_weight}",
                "0: the GT where an image has one; 1: the teacher everywhere",
            ),
            (
                self.teacher is not None or (self.teacher_weight == 0.0 and not self.onnx_spec),
                "--teacher-weight and --onnx-spec need --teacher",
                "pass --teacher MODEL (a .pt, .onnx or .ts file)",
            ),
        ]
        for ok, message, hint in rules:
            if not ok:
                raise InputError(message, hint=hint)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (paths as strings), for ``config.json``."""
        out = dataclasses.asdict(self)
        for name in (*_PATH_FIELDS, "teacher_cache"):
            if out[name] is not None:
                out[name] = str(out[name])
        dirs = self.train_dirs
        out["train_dir"] = None if not dirs else str(dirs[0]) if len(dirs) == 1 else [str(d) for d in dirs]
        out["variant"] = self.model_variant
        return out

    @classmethod
    def for_resume(cls, out: str | os.PathLike[str], **changes: Any) -> TrainConfig:
        """The configuration stored in ``out/config.json``, with ``changes`` applied, to resume.

        Raises:
            InputError: ``out`` holds no run to resume.
        """
        out = Path(out)
        path = out / CONFIG
        if not path.is_file():
            raise InputError(
                f"nothing to resume in {out}: {CONFIG} is missing",
                hint="check --out, or start the run without --resume",
            )
        try:
            stored = json.loads(path.read_text())["train"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path} is not a pdseg run configuration ({exc})") from None
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in stored.items() if k in names}
        if values.get("warmup") is None:  # keep the warmup the run resolved, not a new default
            resolved = json.loads(path.read_text()).get("resolved", {}).get("warmup")
            values["warmup"] = resolved
        values.update(changes)
        values.update(out=out, resume=True, overwrite=False)
        return cls(**values)


@dataclass(frozen=True)
class TrainEvent:
    """Progress reported to ``on_event`` (rank 0 only).

    ``kind`` is one of:

    - ``"prepare"``: decoding/caching samples; ``values``: ``split``, ``done``, ``total``.
    - ``"start"``: the run begins; ``values``: device, precision, world_size, n_train, n_val,
      steps_per_epoch, total_steps, warmup, start_epoch, resumed, out, and more.
    - ``"epoch_start"``: ``epoch`` (1-based), ``step`` (steps already done in it), ``total``.
    - ``"step"``: after each iteration; ``values``: ``loss`` (running mean over the epoch),
      ``lr`` (the encoder's, as used by the step).
    - ``"validate"``: validation begins; ``values``: ``images``.
    - ``"epoch_end"``: ``values`` is the epoch's ``results.csv`` row.
    - ``"notice"``: something the user should know (a warning); ``values``: ``message``.
    - ``"info"``: what the run uses (the teacher, the starting weights); ``values``: ``message``.
    - ``"stopped"``: interrupted; ``values``: ``checkpoint``, ``steps``.
    """

    kind: str
    epoch: int = 0
    step: int = 0
    total: int = 0
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    """What a run ended with.

    Attributes:
        out: the run folder.
        epochs: epochs complete.
        steps: iterations done.
        wall_time_s: training time over all sessions of the run, in seconds.
        interrupted: stopped by Ctrl-C/SIGTERM (``last.pt`` resumes it).
        best_maxf: the best validation maxF (None without validation).
        best_epoch: the epoch of ``best.pt``.
        last: path of ``last.pt``.
        best: path of ``best.pt`` (None when never written).
        rows: every ``results.csv`` row of the run so far.
    """

    out: Path
    epochs: int
    steps: int
    wall_time_s: float
    interrupted: bool
    best_maxf: float | None
    best_epoch: int | None
    last: Path
    best: Path | None
    rows: list[dict[str, Any]]


class TrainingDiverged(PdsegError):
    """The loss became NaN or infinite; the last good ``last.pt`` is kept."""


EventHandler = Callable[[TrainEvent], None]


# ----------------------------------------------------------------------------------------------
# schedule and parameter groups


def lr_factor(step: int, warmup: int, total: int) -> float:
    """The learning-rate multiplier for iteration ``step`` (0-based) of ``total``.

    Poly decay ``(1 - step / total) ** POLY_POWER`` to 0 at ``total``, multiplied during the first
    ``warmup`` iterations by a linear ramp from :data:`WARMUP_RATIO` to 1 (mmseg's linear warmup on
    top of the poly schedule).
    """
    poly = max(0.0, 1.0 - step / max(total, 1)) ** POLY_POWER
    if step < warmup:
        return poly * (WARMUP_RATIO + (1.0 - WARMUP_RATIO) * step / warmup)
    return poly


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(
    model: nn.Module, lr: float, decoder_lr_mult: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups: encoder at ``lr``, the rest (the decoder) at ``lr * decoder_lr_mult``; no weight
    decay on norm affines, biases (every 1-D tensor) and layer scales."""
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, _NORMS):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "encoder" if name.startswith("encoder.") else "decoder"
        decay = not (id(p) in no_decay or p.ndim <= 1 or "layer_scale" in name)
        groups.setdefault((part, decay), []).append(p)
    out = []
    for part in ("encoder", "decoder"):
        for decay in (True, False):
            params = groups.get((part, decay))
            if params:
                out.append(
                    {
                        "params": params,
                        "lr": lr * (decoder_lr_mult if part == "decoder" else 1.0),
                        "weight_decay": weight_decay if decay else 0.0,
                        "name": f"{part}{'' if decay else '_no_decay'}",
                    }
                )
    return out


# ----------------------------------------------------------------------------------------------
# RNG state (every generator the run touches, as plain values for a weights_only load)


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def _isolated_rng(device: torch.device) -> Iterator[None]:
    """Leave the caller's global RNGs as they were, whatever the run does with them."""
    saved = _rng_state(device)
    try:
        yield
    finally:
        _set_rng_state(saved, device)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _stream_seed(seed: int, rank: int) -> int:
    """The seed of the model's random stream (dropout, drop-path, NMF bases) on ``rank``."""
    return int(np.random.SeedSequence([seed, rank], spawn_key=(2,)).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------
# files


class CheckpointWriteError(PdsegError):
    """A checkpoint could not be written during training (a full disk); the previous one is intact."""


def _write_checkpoint(
    path: Path,
    model: nn.Module,
    train_size: int,
    provenance: Mapping[str, Any],
    train_state: dict[str, Any] | None,
) -> None:
    """A pdseg checkpoint of ``model`` (via ``save_checkpoint``), plus ``train_state``, atomically.

    Raises:
        CheckpointWriteError: the file cannot be written (the previous one is left as it was).
    """
    try:
        if train_state is None:
            save_checkpoint(model, path, train_size=train_size, **provenance)
            return
        # save_checkpoint takes plain provenance values only, so write its file, add the state, and
        # replace the target in one rename.
        part = path.with_name(f".{path.name}.weights{TEMP_SUFFIX}")
        try:
            save_checkpoint(model, part, train_size=train_size, **provenance)
            payload = torch.load(part, map_location="cpu", weights_only=True)
        finally:
            part.unlink(missing_ok=True)
        payload["train_state"] = train_state
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as RuntimeError ("unexpected pos")
        if isinstance(exc, RuntimeError) and "unexpected pos" not in str(exc) and "write" not in str(exc):
            raise
        raise CheckpointWriteError(
            f"cannot write {path} ({getattr(exc, 'strerror', None) or first_line(exc)}); the previous "
            "checkpoint is intact",
            hint="free some space (or move --out elsewhere) and continue with --resume",
        ) from None


def _read_train_state(path: Path) -> dict[str, Any]:
    """``last.pt``'s training state.

    Raises:
        WeightsError: the file is unreadable or holds no training state.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(
            f"nothing to resume: {path} does not exist (the run saved no checkpoint yet)",
            hint="start it again with --overwrite instead of --resume",
        ) from None
    except Exception as exc:  # truncated zip, foreign pickle, ...
        raise WeightsError(
            f"{path} cannot be read to resume ({str(exc).splitlines()[0][:160]})",
            hint="the file is damaged; start again with --overwrite",
        ) from None
    state = payload.get("train_state") if isinstance(payload, dict) else None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise WeightsError(
            f"{path} holds no pdseg training state (version {STATE_VERSION}) to resume from",
            hint="only the last.pt of a pdseg training run can be resumed",
        )
    return state


def _plain_number(value: Any) -> Any:
    return float(f"{value:.6g}") if isinstance(value, float) else value  # 6 significant digits


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """``results.csv`` rows with numbers as numbers and empty cells as None."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse_cell(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``results.csv`` atomically (columns from the union of the rows, in order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else _plain_number(row.get(k)) for k in columns})


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# the run


def train(cfg: TrainConfig, on_event: EventHandler | None = None) -> TrainResult:
    """Train (or resume) the run ``cfg.out``; see the module docstring for what it writes.

    Under ``torchrun`` every process calls this with the same ``cfg``; ``on_event`` is called on
    rank 0 only.

    Raises:
        InputError: a bad option, or a run folder that exists (without resume/overwrite) or holds
            a different experiment than ``cfg`` (with resume).
        DataError: missing splits, or bad image/mask pairs (all named) before any training step.
        WeightsError: unreadable ``--backbone-weights`` or ``last.pt``.
        TrainingDiverged: a NaN/inf loss; ``last.pt`` from the last save is kept.
    """
    cfg.check()
    cfg = _variant_from_init(cfg)
    env = runtime.env_distributed()
    choice = runtime.resolve_device(cfg.device, local_rank=env.local_rank if env.enabled else None)
    device = choice.device
    precision = runtime.resolve_precision(cfg.precision, device)
    if cfg.precision == "auto" and device.type == "cpu" and runtime.cpu_has_fast("bf16"):
        precision = "bf16"  # AVX512-BF16 or AMX: native bf16 matrix units (never chosen when emulated)
    if precision == "fp16" and device.type != "cuda":
        raise InputError("--precision fp16 needs a CUDA GPU", hint="use bf16 or fp32 on this device")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    started_group = False
    if env.enabled and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            world_size=env.world_size,
            rank=env.rank,
            timeout=datetime.timedelta(hours=2),  # rank 0 may spend long filling the cache
        )
        started_group = True
    try:
        with _isolated_rng(device), _cudnn_benchmark(device):
            return _Run(cfg, env, device, choice.reason, precision, on_event).run()
    finally:
        if started_group and dist.is_initialized():
            dist.destroy_process_group()


def default_workers(cores: int | None = None) -> int:
    """DataLoader workers when ``--workers`` is not given: none on 2 cores or fewer, else up to 4.

    An augmented item costs 1-2 ms against 150-800 ms of step per image on a CPU
    (benchmarks/train_speed.py), so on a small machine worker processes only take cores from the
    step; on a GPU machine they keep decoding and augmentation off the step's thread.
    """
    cores = (
        cores
        if cores is not None
        else len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else (os.cpu_count() or 1)
    )
    return 0 if cores <= 2 else min(4, cores - 1)


def _variant_from_init(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the variant of its ``--init`` checkpoint (a conflicting ``--variant`` is an error).

    Raises:
        InputError: ``--variant`` names another variant than the checkpoint's.
        WeightsError: the checkpoint cannot be read.
    """
    if cfg.init is None or cfg.resume:
        return cfg
    ckpt = load_checkpoint(cfg.init)
    if cfg.variant is not None and cfg.variant != ckpt.variant:
        raise InputError(
            f"--variant {cfg.variant} conflicts with --init {cfg.init}, a {ckpt.variant} checkpoint",
            hint="drop --variant: fine-tuning keeps the checkpoint's variant",
        )
    return dataclasses.replace(cfg, variant=ckpt.variant)


@contextlib.contextmanager
def _cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """cuDNN autotuning for the fixed training size, restored afterwards."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda" or before
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


class _StopFlag:
    """Set by SIGINT/SIGTERM; training stops at the next step boundary and saves ``last.pt``."""

    # torchrun forwards the terminal's SIGINT to its workers, which got it from the terminal too:
    # a repeat this soon after the first is that echo, not a second Ctrl-C
    ECHO_SECONDS = 2.0

    def __init__(self, notify: Callable[[str], None]) -> None:
        self.requested = False
        self._first = 0.0
        self._notify = notify
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            if signum == signal.SIGINT and time.monotonic() - self._first > self.ECHO_SECONDS:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
            return
        self.requested, self._first = True, time.monotonic()
        self._notify("stopping after this step to save a resumable checkpoint (Ctrl-C again aborts)")

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _worker_init(worker_id: int) -> None:
    """DataLoader workers: Ctrl-C is left to the main process (which saves).

    OpenCV's thread count is set in the parent before the fork (``make_loader``): calling
    ``cv2.setNumThreads`` inside a forked child waits for pool threads that did not survive the
    fork and hangs the worker for ever. torch already runs each worker on one thread.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class _EpochSums:
    """Running sums of one epoch (saved mid-epoch, so a resumed epoch reports the same means)."""

    loss: float = 0.0
    levels: list[float] = field(default_factory=list)
    count: int = 0
    time: float = 0.0

    def add(self, values: list[float]) -> None:
        self.loss += values[0]
        self.levels = [
            a + v for a, v in zip(self.levels or [0.0] * (len(values) - 1), values[1:], strict=True)
        ]
        self.count += 1

    def row(self) -> dict[str, Any]:
        n = max(self.count, 1)
        row: dict[str, Any] = {"loss": self.loss / n}
        row.update({f"loss_l{k}": total / n for k, total in enumerate(self.levels, start=1)})
        return row


class _Run:
    """One training session: setup, the epoch loop, validation and checkpoints."""

    def __init__(
        self,
        cfg: TrainConfig,
        env: runtime.Distributed,
        device: torch.device,
        device_reason: str,
        precision: str,
        on_event: EventHandler | None,
    ) -> None:
        self.cfg = cfg
        self.env = env
        self.main = env.rank == 0
        self.device = device
        self.device_reason = device_reason
        self.precision = precision
        self.on_event = on_event if self.main else None
        self.out = cfg.out
        self.paths = {name: cfg.out / name for name in RUN_FILES}
        self.workers = cfg.workers if cfg.workers is not None else default_workers()
        self.tb: Any = None

    # -- events and collectives ------------------------------------------------------------------

    def emit(self, kind: str, **kw: Any) -> None:
        if self.on_event is not None:
            self.on_event(TrainEvent(kind, **kw))

    def notice(self, message: str) -> None:
        self.emit("notice", values={"message": message})

    def barrier(self) -> None:
        if self.env.enabled:
            dist.barrier()

    def agree(self, error: PdsegError | None) -> None:
        """Raise on every rank if any rank had an error (ranks must fail together, not hang)."""
        errors: list[Any] = [error]
        if self.env.enabled:
            errors = [None] * self.env.world_size
            message = None if error is None else (type(error).__name__, error.message, error.hint)
            dist.all_gather_object(errors, message)
            errors = [None if e is None else _ERRORS.get(e[0], DataError)(e[1], e[2]) for e in errors]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    # -- setup -----------------------------------------------------------------------------------

    def prepare_folder(self) -> dict[str, Any] | None:
        """Check the run folder against resume/overwrite; return the state to resume from, if any."""
        cfg, out = self.cfg, self.out
        if cfg.resume:
            state = _read_train_state(self.paths[LAST])
            self.check_same_experiment(state)
            return state
        existing = [name for name in RUN_FILES if (out / name).exists()]
        if existing and not cfg.overwrite:
            raise InputError(
                f"{out} already holds a training run ({', '.join(existing)})",
                hint="pass --resume to continue it, --overwrite to start it again, or choose another --out",
            )
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} is a file, not a folder", hint="choose a folder for the run")
        self.barrier()  # every rank has looked before rank 0 deletes
        if self.main:
            check_writable_folder(out, f"--out {out}")
            for name in existing:
                (out / name).unlink()
            shutil.rmtree(out / TENSORBOARD_DIR, ignore_errors=True)
        self.barrier()
        return None

    def check_same_experiment(self, state: Mapping[str, Any]) -> None:
        stored, now = state["config"], self.cfg.to_dict()
        diffs = [
            f"--{name.replace('_', '-')} {stored.get(name)!r} -> {now[name]!r}"
            for name in _TRAJECTORY_FIELDS
            if stored.get(name) != now[name]
        ]
        if self.cfg.warmup is not None and state["warmup"] != self.cfg.warmup:
            diffs.append(f"--warmup {state['warmup']} -> {self.cfg.warmup}")
        if diffs:
            raise InputError(
                f"{self.out} was trained with other settings: {'; '.join(diffs)}",
                hint="resume with the run's own settings (leave those options out), or start a new --out",
            )
        soft = []
        if state["world_size"] != self.env.world_size:
            soft.append(f"{state['world_size']} -> {self.env.world_size} processes")
        if state["precision"] != self.precision:
            soft.append(f"precision {state['precision']} -> {self.precision}")
        if soft:
            self.notice(f"resuming with {', '.join(soft)}: the result will differ from an uninterrupted run")

    def resolve_data(self) -> tuple[list[Path], Path | None]:
        """The training folders and the validation folder (None: no validation)."""
        cfg = self.cfg
        root = None
        if cfg.train_dirs:
            # images without masks are found by the scan, which names them with the fix
            train = [dis5k.check_dataset_folder(d, masks_optional=True) for d in cfg.train_dirs]
        else:
            root = dis5k.resolve_root(cfg.data_root)
            train = [dis5k.split_folder(root, dis5k.TRAIN_SPLIT)]
        val: Path | None = None
        if cfg.val_every == 0:
            pass
        elif cfg.val_dir is not None:
            val = dis5k.check_dataset_folder(cfg.val_dir)
        elif root is not None:
            val = dis5k.split_folder(root, dis5k.VAL_SPLIT)
        else:
            self.notice("no --val folder given: training runs without validation and writes no best.pt")
        return [t.resolve() for t in train], None if val is None else val.resolve()

    def scan_training(self, folders: list[Path]) -> dis5k.PairScan:
        """Pair every training folder; with a teacher, give each image that needs one its map
        (computed once into the shared cache, by rank 0, with a progress bar)."""
        cfg = self.cfg
        scans = [dis5k.scan_pairs(f, masks_optional=True) for f in folders]
        if cfg.teacher is None:
            unlabelled = [p for s in scans for p in s.pairs if p.mask is None]
            if unlabelled and not any(s.problems for s in scans):
                first = unlabelled[0].image
                raise DataError(
                    f"{len(unlabelled)} of {sum(len(s.pairs) for s in scans)} training images have no "
                    f"mask (e.g. {first.parent.parent.name}/{first.parent.name}/{first.name})",
                    hint="pass --teacher MODEL to learn their targets from a model, or add masks with "
                    "the same names to gt/",
                )
            # with other problems too, they are all named together (after decoding finds the rest)
            scans = [dis5k.scan_pairs(f) if s.unlabelled else s for f, s in zip(folders, scans, strict=True)]
            return dis5k.merge_scans(scans)
        scan = dis5k.merge_scans(scans)
        pairs = [dataclasses.replace(p, teacher_weight=cfg.teacher_weight) for p in scan.pairs]
        needing = [i for i, p in enumerate(pairs) if p.needs_teacher()]
        maps = self.teacher_maps
        images = [pairs[i].image for i in needing]
        paths: list[Path] | None = None
        if self.main and needing:
            self.emit("info", values={"message": f"teacher {self.teacher_info.description}"})

            def progress(done: int, total: int, computed: int) -> None:
                self.emit("prepare", values={"split": "teacher maps", "done": done, "total": total})

            paths = maps.ensure_all(images, progress)
        self.barrier()
        if paths is None:  # the other ranks: rank 0 made the maps, find them
            paths = [maps.map_path(image) for image in images]
        for i, path in zip(needing, paths, strict=True):
            pairs[i] = dataclasses.replace(pairs[i], teacher=path)
        return dis5k.PairScan(scan.folder, pairs, scan.problems)

    def load_split(self, folder: Path | list[Path], split: str) -> dis5k.SampleStore:
        """Scan and decode one split before training (rank 0 fills a disk cache; with ``ram``
        every rank decodes its own copy). Bad pairs fail every rank with one message."""
        cfg = self.cfg
        cache_dir = (cfg.cache_dir or self.out / CACHE_DIR) / str(cfg.size)

        def progress(done: int, total: int) -> None:
            self.emit("prepare", values={"split": split, "done": done, "total": total})

        error, store = None, None
        try:
            if isinstance(folder, list):
                scan = self.scan_training(folder)
            else:
                scan = dis5k.scan_pairs(folder)
            if self.main or cfg.cache == "ram":
                threads = max(1, self.workers)
                store = dis5k.prepare_samples(
                    scan, cfg.size, cfg.cache, cache_dir, threads=threads, on_progress=progress
                )
            else:
                store = dis5k.SampleStore(scan.pairs, cfg.size, cfg.cache, cache_dir)
        except PdsegError as exc:
            error = exc
        self.agree(error)  # also waits for rank 0's cache
        assert store is not None
        return store

    def build(self, state: Mapping[str, Any] | None) -> None:
        """Model, EMA, DDP wrapper, optimiser, schedule and scaler, restored from ``state`` if given."""
        cfg = self.cfg
        _seed_all(cfg.seed)  # the initial weights depend on the seed only
        model = create_model(cfg.model_variant)
        if cfg.init is not None and state is None:
            from pdseg_cli.data.teacher import file_sha256
            from pdseg_cli.model.build import load_model

            start = load_model(cfg.init)  # checks the tensors against the file's own config
            model.load_state_dict(start.state_dict())
            model.normalization = dict(start.normalization)
            self.init_provenance = {"sha256": file_sha256(cfg.init), **start.provenance}
            message = f"weights from {cfg.init} ({start.config.name}); fresh optimiser and schedule"
            self.emit("info", values={"message": message})
        elif cfg.backbone_weights is not None and state is None:
            n = load_backbone(model, cfg.backbone_weights)
            self.notice(f"encoder initialised from {cfg.backbone_weights} ({n} tensors)")
        # channels-last layout: the same maths, 1.2-1.75x faster steps on the CPU (oneDNN) and GPUs
        model = model.to(self.device, memory_format=torch.channels_last).train()
        self.ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau)
        if state is not None:
            model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
        if self.env.enabled and self.device.type == "cuda":  # SyncBatchNorm runs on GPUs only
            model.encoder = nn.SyncBatchNorm.convert_sync_batchnorm(model.encoder)
        self.model = model
        self.net: nn.Module = model
        if self.env.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        groups = param_groups(model, cfg.lr, cfg.decoder_lr_mult, cfg.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999))
        warmup, total = self.warmup, self.total_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, warmup, total)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        rng = None
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            rngs = state["rng"]
            rng = rngs[self.env.rank] if self.env.rank < len(rngs) else None
        if rng is not None:
            _set_rng_state(rng, self.device)
        else:
            torch.manual_seed(_stream_seed(cfg.seed, self.env.rank))
        self.normalization = dict(model.normalization)

    def make_loader(self, dataset: Any, batch_sampler: Any, workers: int) -> torch.utils.data.DataLoader:
        if workers > 0:
            import cv2

            # One OpenCV thread before forking: the workers inherit a pool-less OpenCV (see
            # _worker_init), and parallel workers gain nothing from nested threads.
            cv2.setNumThreads(1)
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,  # forked once, before any other thread or loader exists
            worker_init_fn=_worker_init if workers > 0 else None,
            # its own generator: making an iterator never draws from the global torch RNG
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    def setup(self) -> tuple[int, int, _EpochSums | None]:
        """Everything before the first step; returns where to start (epoch, step, sums so far)."""
        cfg = self.cfg
        state = self.prepare_folder()
        slow = runtime.emulated_precision_note(self.device, self.precision)
        if slow:
            self.notice(slow)
        self.train_dirs, self.val_dir = self.resolve_data()
        self.train_dir = " + ".join(str(d) for d in self.train_dirs)  # how runs record their data
        self.init_provenance: dict[str, Any] | None = None
        self.teacher_info: Any = None
        if cfg.teacher is not None:
            self.open_teacher()
        if state is not None and state["train_dir"] != str(self.train_dir):
            raise InputError(
                f"{self.out} was trained on {state['train_dir']}, not {self.train_dir}",
                hint="resume with the run's own data (--train / --data-root), or start a new --out",
            )
        train_store = self.load_split(self.train_dirs, "train")
        val_store = self.load_split(self.val_dir, "val") if self.val_dir is not None else None
        self.n_train, self.n_val = len(train_store), 0 if val_store is None else len(val_store)
        world = self.env.world_size
        self.batches = dis5k.EpochBatches(self.n_train, cfg.batch, cfg.seed, self.env.rank, world)
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.total_steps = cfg.epochs * self.steps_per_epoch
        start_epoch, start_step, sums = 0, 0, None
        if state is None:
            self.warmup = cfg.warmup if cfg.warmup is not None else min(WARMUP_ITERS, self.total_steps // 10)
        else:
            self.warmup = int(state["warmup"]) if cfg.warmup is None else cfg.warmup
            start_epoch, start_step = int(state["epoch"]), int(state["step_in_epoch"])
            if state["epoch_sums"] is not None:
                sums = _EpochSums(**state["epoch_sums"])
            reached = start_epoch + (start_step > 0)  # the epoch in progress counts
            if reached > cfg.epochs:
                raise InputError(
                    f"{self.out} is already in epoch {reached}; --epochs {cfg.epochs} is behind it",
                    hint=f"pass --epochs {reached} or more to continue",
                )
            if state["total_steps"] != self.total_steps:
                self.notice(
                    f"--epochs {cfg.epochs} (was {state['epochs']}): the learning rate now decays to 0 at "
                    f"step {self.total_steps} instead of {state['total_steps']}"
                )
        self.build(state)
        self.global_step = int(state["global_step"]) if state else 0
        self.saved_step: int | None = self.global_step if state else None
        self.wall_time = float(state["wall_time_s"]) if state else 0.0
        self.best_maxf: float | None = state["best_maxf"] if state else None
        self.best_epoch: int | None = state["best_epoch"] if state else None
        # on resume, rows of epochs after the checkpoint (written before a crash) are dropped
        self.rows = [r for r in _read_rows(self.paths[RESULTS]) if r["epoch"] <= start_epoch] if state else []
        if self.main:
            if state is not None:
                _write_rows(self.paths[RESULTS], self.rows)
            self.write_config()
            self.open_tensorboard()
        augment = AugmentConfig() if cfg.augment else None
        self.train_loader = self.make_loader(
            dis5k.SampleDataset(train_store, cfg.seed, augment), self.batches, self.workers
        )
        if self.workers > 0:  # fork the workers now, while no progress-bar thread runs in this process
            self.batches.set_epoch(start_epoch, start_step)
            iter(self.train_loader)
        self.val_loader = None
        if val_store is not None and self.main:
            n, b = len(val_store), cfg.batch
            val_batches = [list(range(i, min(i + b, n))) for i in range(0, n, b)]
            # in this process: the samples are decoded already, and forking more workers while the
            # training workers and their queue threads live can deadlock the new processes
            self.val_loader = self.make_loader(dis5k.SampleDataset(val_store), val_batches, 0)
        self.emit(
            "start",
            values={
                "out": str(self.out),
                "variant": cfg.variant,
                "device": self.device_reason,
                "precision": self.precision,
                "world_size": world,
                "n_train": self.n_train,
                "n_val": self.n_val,
                "train_dir": str(self.train_dir),
                "val_dir": None if self.val_dir is None else str(self.val_dir),
                "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps,
                "warmup": self.warmup,
                "start_epoch": start_epoch + 1,
                "epochs": cfg.epochs,
                "resumed": state is not None,
                "global_step": self.global_step,
            },
        )
        return start_epoch, start_step, sums

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        start_epoch, start_step, sums = self.setup()
        interrupted = False
        try:
            with _StopFlag(self.notice) as stop:
                for epoch in range(start_epoch, self.cfg.epochs):
                    first = start_step if epoch == start_epoch else 0
                    epoch_sums = sums if epoch == start_epoch and sums is not None else _EpochSums()
                    if not self.train_epoch(epoch, first, epoch_sums, stop):
                        interrupted = True
                        break
        finally:
            if self.tb is not None:
                self.tb.close()
        return TrainResult(
            out=self.out,
            epochs=len(self.rows),
            steps=self.global_step,
            wall_time_s=self.wall_time,
            interrupted=interrupted,
            best_maxf=self.best_maxf,
            best_epoch=self.best_epoch,
            last=self.paths[LAST],
            best=self.paths[BEST] if self.paths[BEST].exists() else None,
            rows=list(self.rows),
        )

    def train_epoch(self, epoch: int, first: int, sums: _EpochSums, stop: _StopFlag) -> bool:
        """Epoch ``epoch`` (0-based) from its step ``first``; False when a signal stopped it."""
        cfg = self.cfg
        self.batches.set_epoch(epoch, first)
        self.emit("epoch_start", epoch=epoch + 1, step=first, total=self.steps_per_epoch)
        self.net.train()
        runtime.reset_peak_memory(self.device)
        tick = time.perf_counter()

        def clock() -> None:
            nonlocal tick
            now = time.perf_counter()
            sums.time += now - tick
            self.wall_time += now - tick
            tick = now

        step = first
        for images, masks in self.train_loader:
            lr = self.optimizer.param_groups[0]["lr"]  # the encoder's, as this step uses it
            values, agreed_stop = self.train_step(images, masks, stop.requested, epoch, step)
            step += 1
            self.global_step += 1
            sums.add(values)
            self.emit(
                "step",
                epoch=epoch + 1,
                step=step,
                total=self.steps_per_epoch,
                values={"loss": sums.loss / sums.count, "lr": lr},
            )
            if self.tb is not None:
                self.tb.add_scalar("train/loss", values[0], self.global_step)
                self.tb.add_scalar("train/lr", lr, self.global_step)
            # one process stops right after the step in flight; ranks stop where they agreed
            stop_now = agreed_stop or (stop.requested and not self.env.enabled)
            periodic = cfg.save_every_steps > 0 and self.global_step % cfg.save_every_steps == 0
            if stop_now or (periodic and step < self.steps_per_epoch):
                clock()
                self.save_last(epoch, step, sums)
                if stop_now:
                    self.emit(
                        "stopped", values={"checkpoint": str(self.paths[LAST]), "steps": self.global_step}
                    )
                    return False
        clock()
        row: dict[str, Any] = {"epoch": epoch + 1, "steps": self.global_step, **sums.row()}
        if self.teacher_info is not None:
            row.update(self.teacher_record())
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        last_epoch = epoch + 1 == cfg.epochs
        scores = dict.fromkeys(VAL_COLUMNS)
        if self.val_dir is not None and ((epoch + 1) % cfg.val_every == 0 or last_epoch):
            scores.update(self.validate(epoch))
            clock()
        maxf = scores["val_maxf"]
        row.update(scores, epoch_time_s=sums.time, wall_time_s=self.wall_time)
        if self.device.type == "cuda":
            row["gpu_mem_gib"] = runtime.peak_memory(self.device)[0] / 2**30
        improved = maxf is not None and (self.best_maxf is None or maxf > self.best_maxf)
        if improved:
            self.best_maxf, self.best_epoch = maxf, epoch + 1
        self.rows.append(row)
        self.check_final_map(epoch + 1)
        self.save_last(epoch + 1, 0, None)
        if self.main:
            if improved:
                _write_checkpoint(
                    self.paths[BEST], self.ema.module, cfg.size, self.provenance(epoch + 1), None
                )
            _write_rows(self.paths[RESULTS], self.rows)
            if self.tb is not None:
                for key in ("loss", *VAL_COLUMNS):
                    if row[key] is not None:
                        # at the step count, so that every tag shares TensorBoard's x axis (and a
                        # resume's purge_step applies to them all alike)
                        self.tb.add_scalar(f"epoch/{key}", row[key], self.global_step)
                self.tb.flush()
        self.emit("epoch_end", epoch=epoch + 1, values={**row, "best": improved})
        return True

    def train_step(
        self, images: torch.Tensor, masks: torch.Tensor, stop_requested: bool, epoch: int, step: int
    ) -> tuple[list[float], bool]:
        """One iteration; returns the losses (mean over ranks: total, then per level) and whether
        every rank stops after it (any rank got a signal)."""
        cfg, device = self.cfg, self.device
        # (B, 3, S, S) uint8 -> normalised float32; (B, 1, S, S) uint8 -> [0, 1]
        x = transforms.normalize_tensor(images.to(device, non_blocking=True).float(), self.normalization)
        x = x.contiguous(memory_format=torch.channels_last)
        y = masks.to(device, non_blocking=True).float() / 255.0
        with runtime.autocast(device, self.precision):
            levels = self.net(x, return_levels=True)
        loss, per_level = losses.multi_level_loss(levels, y, cfg.supervision)
        flag = torch.tensor([1.0 if stop_requested else 0.0], device=device)
        stats = torch.cat([loss.detach().reshape(1), torch.stack(per_level), flag])
        if self.env.enabled:
            dist.all_reduce(stats)  # one small message per step: the losses and the stop flag
            stats[:-1] /= self.env.world_size
        values = stats.tolist()
        if not all(math.isfinite(v) for v in values[:-1]):
            self.diverged(values[:-1], epoch, step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.ema.update(self.model)
        return values[:-1], values[-1] > 0

    def diverged(self, values: list[float], epoch: int, step: int) -> None:
        kept = (
            f"{self.paths[LAST]} (step {self.saved_step}) is kept"
            if self.saved_step is not None
            else "no checkpoint had been written yet"
        )
        levels = ", ".join(f"{v:.4g}" for v in values[1:])
        raise TrainingDiverged(
            f"the loss became {values[0]} at epoch {epoch + 1}, step {step + 1} (levels: {levels}); {kept}",
            hint="resume with a lower --lr or a longer --warmup, or use --precision fp32 or bf16",
        )

    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, float]:
        """The DIS metrics of the EMA weights on the validation set, at the training size, scored by
        ``pdseg eval``'s code on the bytes ``pdseg predict`` writes (rank 0; the other ranks wait
        and get an empty dict)."""
        scores: dict[str, float] = {}
        if self.main and self.val_loader is not None:
            from pdseg_cli.engine.evaluate import evaluate_arrays

            self.emit("validate", epoch=epoch + 1, values={"images": self.n_val})
            model = self.ema.module.eval()
            pairs: list[tuple[np.ndarray, np.ndarray]] = []
            for images, masks in self.val_loader:
                x = transforms.normalize_tensor(images.to(self.device).float(), self.normalization)
                with runtime.autocast(self.device, self.precision):
                    logits = model(x)
                # (B, 1, S, S) logits -> (B, S, S) uint8 floor(255 p)
                pred = transforms.quantize(torch.sigmoid(logits.float())[:, 0]).cpu().numpy()
                pairs += zip(pred, masks[:, 0].numpy(), strict=True)
            report = evaluate_arrays(
                pairs,
                name="val",
                jobs=max(1, self.workers),
                cache_dir=(self.cfg.cache_dir or self.out / CACHE_DIR) / "eval",
                use_cache=True,  # the GT-only work (skeletons, distances) is the same every epoch
            )
            values = report.splits[0].scores.as_dict()
            scores = {column: float(values[key]) for column, key in zip(VAL_COLUMNS, _VAL_KEYS, strict=True)}
        self.barrier()
        return scores

    # -- files -----------------------------------------------------------------------------------

    def check_final_map(self, epoch: int) -> None:
        """Warn at every epoch end while the final map cannot reach a confident foreground."""
        from pdseg_cli.model.pdseg import final_map_ceiling

        ceiling = final_map_ceiling(self.ema.module)
        if ceiling is not None and ceiling < CONFIDENT:
            self.notice(
                f"epoch {epoch}: the final map cannot exceed p = {ceiling:.2f} (byte {int(255 * ceiling)}): "
                "every weight of the last level's classifier is negative, so that level only marks "
                "background; train longer or from other weights, and check the maps before using them"
            )

    def open_teacher(self) -> None:
        """Open the teacher before any work, so a bad file or spec fails first (every rank checks)."""
        from pdseg_cli.data.teacher import TeacherMaps
        from pdseg_cli.metrics.cache import default_cache_root

        cfg = self.cfg
        error = None
        try:
            assert cfg.teacher is not None
            device = "cpu" if self.device.type == "cpu" else str(self.device)
            self.teacher_maps = TeacherMaps(
                cfg.teacher, default_cache_root(cfg.teacher_cache), device=device, onnx_spec=cfg.onnx_spec
            )
            self.teacher_info = self.teacher_maps.info()
        except PdsegError as exc:
            error = exc
        self.agree(error)

    def teacher_record(self) -> dict[str, Any]:
        """The teacher as runs record it (config.json, results.csv, checkpoints)."""
        info = self.teacher_info
        if info is None:
            return {"teacher": None, "teacher_sha256": None}
        return {"teacher": str(info.path), "teacher_sha256": info.sha256}

    def provenance(self, epochs: int) -> dict[str, Any]:
        """What the saved weights came from (stored in the checkpoint)."""
        cfg = self.cfg
        last = self.rows[-1] if self.rows else {}
        chain = {}
        if cfg.init is not None:  # fine-tuned: keep where the starting weights came from
            chain = {"init": {"path": str(cfg.init), "provenance": self.init_provenance}}
        teacher = {}
        if self.teacher_info is not None:
            teacher = {**self.teacher_record(), "teacher_weight": cfg.teacher_weight,
                       "teacher_model": self.teacher_info.description}  # fmt: skip
        return {
            **chain,
            **teacher,
            "data": str(self.train_dir),
            "train_images": self.n_train,
            "val_data": None if self.val_dir is None else str(self.val_dir),
            "val_images": self.n_val,
            "epochs": epochs,
            "steps": self.global_step,
            "wall_time_s": round(self.wall_time, 1),
            "size": cfg.size,
            "global_batch": cfg.batch * self.env.world_size,
            "seed": cfg.seed,
            "supervision": cfg.supervision,
            "precision": self.precision,
            "weights": "ema",
            **{column: last.get(column) for column in VAL_COLUMNS},  # at the training size
        }

    def save_last(self, epoch: int, step_in_epoch: int, sums: _EpochSums | None) -> None:
        """Write ``last.pt`` after ``epoch`` complete epochs and ``step_in_epoch`` more steps
        (rank 0 writes; every rank sends its RNG state)."""
        rng: list[Any] = [_rng_state(self.device)]
        if self.env.enabled:
            rng = [None] * self.env.world_size
            dist.all_gather_object(rng, _rng_state(self.device))
        if not self.main:
            return
        cfg = self.cfg
        state = {
            "version": STATE_VERSION,
            "config": cfg.to_dict(),
            "train_dir": str(self.train_dir),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": self.global_step,
            "epochs": cfg.epochs,
            "total_steps": self.total_steps,
            "warmup": self.warmup,
            "world_size": self.env.world_size,
            "precision": self.precision,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": [{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in r.items()} for r in rng],
            "epoch_sums": None if sums is None else dataclasses.asdict(sums),
            "wall_time_s": self.wall_time,
            "best_maxf": self.best_maxf,
            "best_epoch": self.best_epoch,
        }
        _write_checkpoint(self.paths[LAST], self.ema.module, cfg.size, self.provenance(epoch), state)
        self.saved_step = self.global_step

    def write_config(self) -> None:
        cfg = self.cfg
        resolved = {
            "device": str(self.device),
            "precision": self.precision,
            "world_size": self.env.world_size,
            "global_batch": cfg.batch * self.env.world_size,
            "train_dir": str(self.train_dir),
            "val_dir": None if self.val_dir is None else str(self.val_dir),
            **self.teacher_record(),
            "train_images": self.n_train,
            "val_images": self.n_val,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "warmup": self.warmup,
            "cache_dir": str(cfg.cache_dir or self.out / CACHE_DIR) if cfg.cache == "disk" else None,
            "model": self.model.config.to_dict(),
        }
        _write_json(
            self.paths[CONFIG],
            {
                "pdseg_version": __version__,
                "torch_version": str(torch.__version__),
                "train": cfg.to_dict(),
                "resolved": resolved,
            },
        )

    def open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        # scalars are logged at the step count after each step, so a resume at step N logs N + 1 first:
        # anything at or after N + 1 comes from the interrupted run past its checkpoint and is hidden
        purge = self.global_step + 1 if self.global_step else None
        self.tb = SummaryWriter(str(self.out / TENSORBOARD_DIR), purge_step=purge)


_ERRORS: dict[str, type[PdsegError]] = {
    cls.__name__: cls for cls in (PdsegError, InputError, DataError, WeightsError, TrainingDiverged)
}
