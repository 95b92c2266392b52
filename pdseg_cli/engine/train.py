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
With few images per BatchNorm and trained starting weights, the encoder's BatchNorm statistics stay
frozen (``freeze_bn``, :func:`~pdseg_cli.engine.train_config.default_freeze_bn`).

The run is split by what each part holds: :mod:`~pdseg_cli.engine.train_config` (the options),
:mod:`~pdseg_cli.engine.train_context` (this process: rank, device, collectives, torchrun's process
group), :mod:`~pdseg_cli.engine.train_data` (folders, teacher maps, samples, loaders),
:mod:`~pdseg_cli.engine.train_schedule` (learning rate, parameter groups),
:mod:`~pdseg_cli.engine.train_state` (everything built before the first step),
:mod:`~pdseg_cli.engine.train_loop` (the epochs and steps), :mod:`~pdseg_cli.engine.train_validation`,
:mod:`~pdseg_cli.engine.train_checkpoints`, :mod:`~pdseg_cli.engine.train_folder` (the run folder's
other files), :mod:`~pdseg_cli.engine.train_rng` and :mod:`~pdseg_cli.engine.train_signals`. This
module resolves the device and precision and starts the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import torch

from pdseg_cli import runtime
from pdseg_cli.data.dis5k import shown
from pdseg_cli.data.folder_lock import folder_lock
from pdseg_cli.engine.train_config import DEFAULT_SIZE, TrainConfig, default_workers
from pdseg_cli.engine.train_context import RunContext
from pdseg_cli.engine.train_events import (
    CheckpointWriteError,
    EventHandler,
    TrainEvent,
    TrainingDiverged,
    TrainResult,
)
from pdseg_cli.engine.train_loop import run_training
from pdseg_cli.engine.train_rng import isolated_rng
from pdseg_cli.engine.train_schedule import lr_factor, param_groups
from pdseg_cli.engine.train_workers import refuse_in_a_starting_worker
from pdseg_cli.errors import InputError
from pdseg_cli.model.build import load_checkpoint, train_side
from pdseg_cli.weights import check_weights_file

__all__ = [
    "CheckpointWriteError",
    "EventHandler",
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "TrainingDiverged",
    "lr_factor",
    "param_groups",
    "train",
]


def train(cfg: TrainConfig, on_event: EventHandler | None = None) -> TrainResult:
    """Train (or resume) the run ``cfg.out``; see the module docstring for what it writes.

    To resume, ``TrainConfig.for_resume(out, epochs=N)`` (the run's settings, with the changes
    given), or ``TrainConfig(out=..., epochs=N, resume=True)``, whose fields left at their defaults
    follow the run (:meth:`TrainConfig.resumed`), so its variant, size and batch need not be
    repeated. Under ``torchrun`` every process calls this with the same ``cfg``; ``on_event`` is
    called on rank 0 only.

    Raises:
        InputError: a bad option, or a run folder that exists (without resume/overwrite) or holds
            a different experiment than ``cfg`` (with resume), or, under torchrun on GPUs, two
            processes on one GPU (:func:`~pdseg_cli.runtime.check_gpu_per_process`).
        DataError: missing splits, or bad image/mask pairs (all named) before any training step.
        WeightsError: unreadable ``--backbone-weights`` or ``last.pt``.
        TrainingDiverged: a NaN/inf loss; ``last.pt`` from the last save is kept.
    """
    refuse_in_a_starting_worker()
    env = runtime.env_distributed()
    with runtime.alike_on_every_rank():  # the same options and files in every process
        if cfg.resume and not cfg.from_record:  # TrainConfig.for_resume's are exact: taken as they are
            cfg = cfg.resumed()
        cfg.check()
        cfg = _from_init(cfg, on_event if env.rank == 0 else None)
        if cfg.backbone_weights is not None and not cfg.resume:
            # there before the samples are decoded into the run's cache (a refused run writes nothing);
            # read with the model, after them
            check_weights_file(Path(cfg.backbone_weights), "--backbone-weights")
    runtime.check_gpu_per_process(cfg.device, env)  # says itself which of its refusals are alike
    with runtime.alike_on_every_rank():  # one GPU per process is checked: the same answer everywhere
        choice = runtime.resolve_device(cfg.device, local_rank=env.local_rank if env.enabled else None)
        device = choice.device
        precision = runtime.resolve_precision(cfg.precision, device)
        if cfg.precision == "auto" and device.type == "cpu" and runtime.cpu_has_fast("bf16"):
            precision = "bf16"  # AVX512-BF16 or AMX: native bf16 matrix units (never chosen when emulated)
        if precision == "fp16" and device.type != "cuda":
            raise InputError("--precision fp16 needs a CUDA GPU", hint="use bf16 or fp32 on this device")
    ctx = RunContext(
        cfg=cfg,
        env=env,
        device=device,
        device_reason=choice.reason,
        precision=precision,
        workers=cfg.workers if cfg.workers is not None else default_workers(),
        on_event=on_event if env.rank == 0 else None,
    )
    # torchrun: NCCL on GPUs (gradients travel as GPU tensors), gloo on the CPU; the CUDA device
    # is pinned before the group starts
    backend = runtime.backend_for(device)
    with (
        runtime.distributed(backend=backend, device=device),
        isolated_rng(device),
        _cudnn_benchmark(device),
        _opencv_threads_kept(),
        _run_folder_held(ctx),
    ):
        return run_training(ctx)


@contextlib.contextmanager
def _run_folder_held(ctx: RunContext) -> Iterator[None]:
    """Hold ``--out``'s lock for the run (rank 0 takes it, every rank stops if it cannot): a second
    run into a live run's folder (``--overwrite``, ``--resume``, the same command twice) deleted or
    mixed its files. The lock goes with the process, however it ends."""
    error, held = None, contextlib.ExitStack()
    with held:
        if ctx.main:
            try:
                held.enter_context(folder_lock(ctx.cfg.out, f"--out {shown(ctx.cfg.out)}"))
            except InputError as exc:
                error = exc
        ctx.agree(error)
        yield


def _from_init(cfg: TrainConfig, on_event: EventHandler | None) -> TrainConfig:
    """``cfg`` with the variant of its ``--init`` checkpoint (a conflicting ``--variant`` is an
    error) and, where ``size`` is None, the size the checkpoint was trained at (the nearest multiple
    of 32, said to ``on_event``), else :data:`DEFAULT_SIZE`: fine-tuning keeps the weights' size.

    Raises:
        InputError: ``--variant`` names another variant than the checkpoint's.
        WeightsError: the checkpoint cannot be read.
    """
    if cfg.init is None or cfg.resume:  # a resumed run's size is its own (TrainConfig.resumed)
        return cfg if cfg.size is not None else dataclasses.replace(cfg, size=DEFAULT_SIZE)
    ckpt = load_checkpoint(cfg.init)
    if cfg.variant is not None and cfg.variant != ckpt.variant:
        raise InputError(
            f"--variant {cfg.variant} conflicts with --init {cfg.init}, a {ckpt.variant} checkpoint",
            hint="drop --variant: fine-tuning keeps the checkpoint's variant",
        )
    size = cfg.size
    if size is None:
        side = train_side(ckpt.train_size)
        size = DEFAULT_SIZE if side is None else max(32, round(side / 32) * 32)
        if side is not None and side != size and on_event is not None:
            message = (
                f"--init {cfg.init} was trained at {side}; training at {size}, the nearest multiple of 32 "
                "(--size chooses another)"
            )
            on_event(TrainEvent("info", values={"message": message}))
    return dataclasses.replace(cfg, variant=ckpt.variant, size=size)


@contextlib.contextmanager
def _opencv_threads_kept() -> Iterator[None]:
    """OpenCV's thread count as the caller had it afterwards: the data loaders set it to 1 before
    forking their workers (train_data._make_loader), for the run only."""
    import cv2

    before = cv2.getNumThreads()
    try:
        yield
    finally:
        cv2.setNumThreads(before)


@contextlib.contextmanager
def _cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """cuDNN autotuning for the fixed training size, restored afterwards."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda" or before
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
