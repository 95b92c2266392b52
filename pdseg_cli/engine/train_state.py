"""The state of a training session, built once before the first step: the plan (steps, warmup, where
to start), the model and everything that optimises it, the loaders, and the counters the loop
advances. On resume, every part comes back from ``last.pt``'s training state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from pdseg_cli import runtime
from pdseg_cli.data import dis5k
from pdseg_cli.engine.ema import ModelEMA, default_ema_decay, default_ema_tau
from pdseg_cli.engine.train_config import CONFIG, default_freeze_bn
from pdseg_cli.engine.train_context import RunContext
from pdseg_cli.engine.train_data import TrainData, augment_record, load_data, make_loaders
from pdseg_cli.engine.train_folder import (
    RESULTS,
    cache_root,
    clear_old_run,
    frozen_bn,
    open_tensorboard,
    prepare_run_folder,
    read_rows,
    write_rows,
    write_run_config,
)
from pdseg_cli.engine.train_rng import seed_all, set_rng_state, stream_seed
from pdseg_cli.engine.train_schedule import default_warmup, make_optimizer, make_scheduler, restore_scheduler
from pdseg_cli.errors import InputError, Interrupted, PdsegError, counted
from pdseg_cli.model import PDSeg, create_model, load_backbone, load_checkpoint, load_model
from pdseg_cli.weights import load_hashed

if TYPE_CHECKING:  # tensorboard is an optional package
    from torch.utils.tensorboard import SummaryWriter


@dataclass
class EpochSums:
    """Running sums of one epoch (saved mid-epoch, so a resumed epoch reports the same means)."""

    loss: float = 0.0
    levels: list[float] = field(default_factory=list)
    count: int = 0
    time: float = 0.0
    lr: float | None = None  # the last step's (a resumed epoch whose last step was run reports it)

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


@dataclass(frozen=True)
class RunPlan:
    """How long the run is and where this session starts.

    Attributes:
        batches: this rank's batch order (the loader's sampler).
        total_steps: iterations of the whole run, over which the learning rate decays to 0.
        warmup: linear-warmup iterations.
        ema_decay: the weight EMA's final decay.
        ema_tau: iterations over which the weight EMA's decay ramps up.
        start_epoch: epochs complete when the session starts.
        start_step: steps already done in epoch ``start_epoch``.
        start_sums: that epoch's running sums so far (None: it starts afresh).
    """

    batches: dis5k.EpochBatches
    total_steps: int
    warmup: int
    ema_decay: float
    ema_tau: float
    start_epoch: int
    start_step: int
    start_sums: EpochSums | None

    @property
    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch


@dataclass
class Progress:
    """The counters the loop advances (and ``last.pt`` saves).

    Attributes:
        global_step: iterations done over the whole run.
        saved_step: the global step of the newest ``last.pt`` (None before the run wrote one).
        wall_time: training seconds over all sessions of the run.
        best_maxf: the best validation maxF so far (None without validation).
        best_epoch: the epoch of ``best.pt``.
        rows: every ``results.csv`` row so far.
        rows_unwritten: the last write of ``results.csv`` failed (a file another program locked):
            the rows are written again at the next epoch's end and when the session ends.
    """

    global_step: int
    saved_step: int | None
    wall_time: float
    best_maxf: float | None
    best_epoch: int | None
    rows: list[dict[str, Any]]
    rows_unwritten: bool = False


@dataclass(frozen=True)
class TrainRun:
    """Everything one training session works with; :func:`build_run` makes it.

    Attributes:
        ctx: the process (configuration, rank, device, precision, events).
        data: the decoded splits.
        plan: the schedule's numbers and where the session starts.
        model: the network being trained (unwrapped).
        net: what the step calls: ``model``, or its DDP wrapper under torchrun.
        ema: the weight average that is validated and saved.
        optimizer: AdamW over :func:`~pdseg_cli.engine.train_schedule.param_groups`.
        scheduler: warmup + poly, stepped per iteration.
        scaler: the fp16 gradient scaler (disabled in other precisions).
        normalization: the model's input normalisation.
        train_loader: this rank's training batches.
        val_loader: rank 0's validation batches (None without validation, and on other ranks).
        tensorboard: rank 0's ``SummaryWriter`` (None without tensorboard, and on other ranks).
        init_provenance: where ``--init``'s weights came from (None without ``--init``).
        backbone: ``--backbone-weights`` as loaded, ``{"path", "sha256"}`` (None without it).
        freeze_bn: the encoder's BatchNorm layers stay in eval mode while training
            (:func:`resolve_freeze_bn`; :func:`train_mode` applies it).
        progress: the counters the loop advances.
    """

    ctx: RunContext
    data: TrainData
    plan: RunPlan
    model: PDSeg
    net: nn.Module
    ema: ModelEMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    normalization: dict[str, Any]
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None
    tensorboard: SummaryWriter | None
    init_provenance: dict[str, Any] | None
    backbone: dict[str, Any] | None
    freeze_bn: bool
    progress: Progress

    def train_mode(self) -> None:
        """Put the network in training mode, the frozen BatchNorm layers excepted."""
        train_mode(self.net, self.model, self.freeze_bn)


def train_mode(net: nn.Module, model: PDSeg, freeze_bn: bool) -> None:
    """``net.train()``, then, with ``freeze_bn``, the encoder's BatchNorm layers (SyncBatchNorm under
    torchrun on GPUs) back in eval mode: they normalise with their running statistics and leave
    them as they are, while their affine weights still train. Every ``train()`` of the network goes
    through here, since ``train()`` alone puts them back in training mode."""
    net.train()
    if freeze_bn:
        for module in model.encoder.modules():
            if isinstance(module, nn.BatchNorm2d | nn.SyncBatchNorm):
                module.eval()


def _remove_if_empty(folder: Path) -> None:
    """Remove the empty folders under ``folder``, and ``folder`` itself if it ends empty, deepest
    first with ``os.rmdir``, which never removes a file: decoded samples, or another run's files
    written into a shared parent meanwhile, are kept with the folders that hold them."""
    for dirpath, _, _ in os.walk(folder, topdown=False):
        try:
            os.rmdir(dirpath)
        except OSError:  # not empty (or gone): kept
            pass


def start_run(ctx: RunContext) -> TrainRun:
    """Everything before the first step: the run folder, the data, the model and its state, then
    the ``start`` event.

    Raises:
        InputError: a run folder that exists (without resume/overwrite), or that holds another
            experiment or another data set, or an ``--epochs`` behind the resumed run.
        DataError: missing splits or bad pairs.
        WeightsError: unreadable ``--init``, ``--backbone-weights`` or ``last.pt``.
        Interrupted: a Ctrl-C before the first step (the stop flag that saves a checkpoint is not
            set yet); its hint says what was kept and how to start again.
    """
    cfg = ctx.cfg
    # the top folder this run will create (runs/ of runs/pdseg-b), if any
    created = next((d for d in reversed([cfg.out, *cfg.out.parents]) if not d.exists()), None)
    try:
        return _start_run(ctx)
    except PdsegError:
        if created is not None and ctx.main:  # a run that never started leaves no empty folder
            _remove_if_empty(created)
        raise
    except KeyboardInterrupt as stop:
        if created is not None and ctx.main and created.is_dir():
            _remove_if_empty(created)
        if isinstance(stop, Interrupted):  # the teacher's maps say themselves what they kept
            raise
        if cfg.resume:
            hint = f"no training step ran and the run in {cfg.out} is as it was: the same command resumes it"
        else:
            cache = cache_root(cfg)
            kept = cfg.cache == "disk" and cache.is_dir() and any(p.is_file() for p in cache.rglob("*"))
            done = f"no training step ran (the samples decoded so far are kept in {dis5k.shown(cache)})"
            if not kept:
                done = "nothing was saved (no training step ran)"
            hint = f"{done}: the same command starts the run again"
        raise Interrupted(hint) from None


def _start_run(ctx: RunContext) -> TrainRun:
    cfg = ctx.cfg
    resumed = prepare_run_folder(ctx)
    slow = runtime.emulated_precision_note(ctx.device, ctx.precision)
    if slow:
        ctx.notice(slow)
    data = load_data(ctx, resumed)
    plan = plan_run(ctx, data, resumed)
    if resumed is None and cfg.init is None and cfg.backbone_weights is None:
        _say_random_start(ctx, data.n_train)
    model, init_provenance, backbone_sha256 = initial_model(ctx, resumed)
    freeze_bn = resolve_freeze_bn(ctx, plan, resumed)
    run = build_run(ctx, data, plan, model, init_provenance, resumed, freeze_bn, backbone_sha256)
    ctx.emit(
        "start",
        values={
            "out": str(cfg.out),
            "variant": model.config.name,  # --init's variant when it gave one
            "device": ctx.device_reason,
            "precision": ctx.precision,
            "world_size": ctx.env.world_size,
            "n_train": data.n_train,
            "n_val": data.n_val,
            # as the user can open them from here (config.json and checkpoints keep them absolute)
            "train_dir": " + ".join(dis5k.shown(d) for d in data.train_dirs),
            "val_dir": None if data.val_dir is None else dis5k.shown(data.val_dir),
            "steps_per_epoch": plan.steps_per_epoch,
            "left_out": plan.batches.left_out,
            "batch": cfg.batch,
            "size": cfg.size,
            "lr": cfg.lr,
            "batch_used": min(cfg.batch, plan.batches.per_rank),  # fewer images than a batch: all of them
            "total_steps": plan.total_steps,
            "warmup": plan.warmup,
            "start_epoch": plan.start_epoch + 1,
            "start_step": plan.start_step,  # the steps of that epoch done before the resume
            "epochs": cfg.epochs,
            "resumed": resumed is not None,
            "global_step": run.progress.global_step,
        },
    )
    return run


# Fewer training images than this, from random weights, is most likely a fine-tune that forgot
# --init; DIS5K's 3,000 from scratch is the recipe
SMALL_TRAINING_SET = 1000


def _say_random_start(ctx: RunContext, n_train: int) -> None:
    """One line when a small training set starts from random weights, naming the bundled
    checkpoint to fine-tune instead (nothing when it cannot be found, or is no pdseg checkpoint),
    and the --variant to drop when it names another variant, which --init would refuse. Nothing
    with --teacher: distilling into a model from scratch is deliberate."""
    if n_train >= SMALL_TRAINING_SET or ctx.cfg.teacher is not None:
        return
    from pdseg_cli.weights import default_weights

    try:
        bundled = default_weights()
        if bundled.suffix != ".pt":  # $PDSEG_WEIGHTS may name an exported model, which --init does not take
            return
        variant = load_checkpoint(bundled).variant
    except PdsegError:
        return
    cfg = ctx.cfg
    which = ""
    if variant != cfg.model_variant:  # --init makes the run a fine-tune of the checkpoint's variant
        which = f" (a {variant}" + (f"; drop --variant {cfg.variant})" if cfg.variant is not None else ")")
    ctx.emit(
        "info",
        values={
            "message": f"{cfg.model_variant} from random weights: to fine-tune the bundled model, "
            f"pass --init {dis5k.shown(bundled)}{which}"
        },
    )


def plan_run(ctx: RunContext, data: TrainData, resumed: Mapping[str, Any] | None) -> RunPlan:
    """The run's length, warmup and starting point (a resumed run's from its state).

    Raises:
        InputError: ``--epochs`` is behind the epoch the resumed run is in.
    """
    cfg = ctx.cfg
    batches = dis5k.EpochBatches(data.n_train, cfg.batch, cfg.seed, ctx.env.rank, ctx.env.world_size)
    total_steps = cfg.epochs * batches.steps_per_epoch
    if resumed is None:
        warmup = cfg.warmup if cfg.warmup is not None else default_warmup(total_steps)
        decay = cfg.ema_decay if cfg.ema_decay is not None else default_ema_decay(total_steps)
        tau = cfg.ema_tau if cfg.ema_tau is not None else default_ema_tau(total_steps)
        _say_long_warmup(ctx, warmup, total_steps)
        return RunPlan(batches, total_steps, warmup, decay, tau, 0, 0, None)
    warmup = int(resumed["warmup"]) if cfg.warmup is None else cfg.warmup
    # the EMA carries on exactly as it was (its state holds decay and tau)
    decay, tau = float(resumed["ema"]["decay"]), float(resumed["ema"]["tau"])
    start_epoch, start_step = int(resumed["epoch"]), int(resumed["step_in_epoch"])
    sums = None if resumed["epoch_sums"] is None else EpochSums(**resumed["epoch_sums"])
    if start_step > 0 and start_epoch + 1 > cfg.epochs:  # stopped inside an epoch
        raise InputError(
            f"{cfg.out} stopped in epoch {start_epoch + 1}; --epochs {cfg.epochs} is behind it",
            hint=f"pass --epochs {start_epoch + 1} or more to continue",
        )
    if start_step == 0 and start_epoch > cfg.epochs:
        raise InputError(
            f"{cfg.out} has finished {start_epoch} epochs; --epochs {cfg.epochs} is behind it",
            hint=f"pass --epochs {start_epoch + 1} or more to train further",
        )
    if start_step == 0 and start_epoch == cfg.epochs:
        ctx.notice(
            f"{cfg.out} has finished its {start_epoch} epochs: nothing to train "
            f"(pass --epochs {start_epoch + 1} or more to go on)"
        )
    if resumed["total_steps"] != total_steps:
        # the warmup is the run's (a resume keeps it): a run shortened inside it never reaches --lr
        inside = f", inside the run's warmup of {warmup}: the learning rate never reaches --lr"
        ctx.notice(
            f"--epochs {cfg.epochs} (was {resumed['epochs']}): the learning rate now decays to 0 at "
            f"step {total_steps} instead of {resumed['total_steps']}{inside if warmup >= total_steps else ''}"
        )
    return RunPlan(batches, total_steps, warmup, decay, tau, start_epoch, start_step, sums)


def _say_long_warmup(ctx: RunContext, warmup: int, total_steps: int) -> None:
    """Warn when a new run's warmup lasts the whole run: the learning rate never reaches --lr (the
    poly decay brings it down while the ramp is still climbing), which a run would not otherwise
    show. (A resume keeps the run's warmup; a shorter --epochs then says so itself.)"""
    if warmup >= total_steps:
        ctx.notice(
            f"--warmup {warmup} is as long as the run's {total_steps} steps or longer: the learning rate "
            "never reaches --lr (a shorter --warmup, or leave it out for a tenth of the run)"
        )


def resolve_freeze_bn(ctx: RunContext, plan: RunPlan, resumed: Mapping[str, Any] | None) -> bool:
    """Whether the encoder's BatchNorm statistics stay frozen: the resumed run's own choice (a
    conflicting flag was refused), else ``--freeze-bn/--no-freeze-bn``, else the default
    (:func:`~pdseg_cli.engine.train_config.default_freeze_bn`), said when it freezes them."""
    cfg = ctx.cfg
    if resumed is not None:
        return frozen_bn(resumed)
    images = min(cfg.batch, plan.batches.per_rank)  # fewer images than a batch: all of them
    if ctx.env.enabled and ctx.device.type == "cuda":  # SyncBatchNorm: over every process's batch
        images *= ctx.env.world_size
    pretrained = cfg.init is not None or cfg.backbone_weights is not None
    frozen = default_freeze_bn(images, pretrained) if cfg.freeze_bn is None else cfg.freeze_bn
    # cfg.size: train() resolves it (_from_init) before the run
    if not frozen and images == 1 and cast(int, cfg.size) // 32 == 1:
        # the stride-32 features are 1x1: a BatchNorm that trains sees one value per channel, which
        # torch refuses mid-step with a traceback
        raise InputError(
            f"--size {cfg.size} with one image per step and process leaves the encoder's last BatchNorm "
            "one value per channel to train on",
            hint="use --size 64 or more, or --batch 2 or more"
            + (", or keep --init's statistics (drop --no-freeze-bn)" if pretrained else ""),
        )
    if cfg.freeze_bn is None:
        if frozen:
            start = "--init" if cfg.init is not None else "--backbone-weights"
            ctx.emit(
                "info",
                values={
                    "message": f"the encoder's BatchNorm statistics stay those of {start}: each BatchNorm "
                    f"sees {counted(images, 'image')} a step, too few to refit them (--no-freeze-bn "
                    "refits them anyway)"
                },
            )
        return frozen
    if cfg.freeze_bn and not pretrained:
        ctx.notice(
            "--freeze-bn from random weights: the encoder's BatchNorm statistics stay at their initial "
            "values (mean 0, variance 1) for the whole run"
        )
    return cfg.freeze_bn


def initial_model(
    ctx: RunContext, resumed: Mapping[str, Any] | None
) -> tuple[PDSeg, dict[str, Any] | None, str | None]:
    """The network before training: seeded random weights, or ``--init``'s, or an encoder from
    ``--backbone-weights`` (both ignored on resume, whose weights come from ``last.pt``).

    Returns:
        The model (on the CPU), where ``--init``'s weights came from (None without it), and the
        sha256 of the ``--backbone-weights`` loaded (None without them).
    """
    cfg = ctx.cfg
    seed_all(cfg.seed)  # the initial weights depend on the seed only
    model = create_model(cfg.model_variant)
    # a resumed fine-tune keeps its chain: last.pt carries it (older states do not)
    init_provenance = None if resumed is None else resumed.get("init_provenance")
    backbone_sha256 = None
    if cfg.init is not None and resumed is None:
        start, digest = load_hashed(Path(cfg.init), load_model)  # checked against the file's own config
        model.load_state_dict(start.state_dict())
        model.normalization = dict(start.normalization)
        init_provenance = {"sha256": digest, **start.provenance}
        message = f"weights from {cfg.init} ({start.config.name}); fresh optimiser and schedule"
        ctx.emit("info", values={"message": message})
    elif cfg.backbone_weights is not None and resumed is None:
        n, backbone_sha256 = load_hashed(
            Path(cfg.backbone_weights), lambda path: load_backbone(model, path), "--backbone-weights"
        )
        # a status line, as --init's: a confirmation, not a warning (notices survive -q)
        ctx.emit("info", values={"message": f"encoder initialised from {cfg.backbone_weights} ({n} tensors)"})
    return model, init_provenance, backbone_sha256


def build_run(
    ctx: RunContext,
    data: TrainData,
    plan: RunPlan,
    model: PDSeg,
    init_provenance: dict[str, Any] | None,
    resumed: Mapping[str, Any] | None,
    freeze_bn: bool,
    backbone_sha256: str | None,
) -> TrainRun:
    """The session's state: the model on its device with its EMA, DDP wrapper, optimiser, schedule
    and scaler, each restored from ``resumed`` if given, the RNGs, the counters, the loaders; rank 0
    also (re)writes ``results.csv`` and ``config.json`` and opens TensorBoard, after
    :func:`clear_old_run` has removed the run an ``--overwrite`` replaces."""
    cfg, device, rank = ctx.cfg, ctx.device, ctx.env.rank
    # channels-last layout: the same maths, faster steps on the CPU (oneDNN) and GPUs
    # (benchmarks/RESULTS.md, 'CPU training speed')
    model = model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]  # stub gap
    ema = ModelEMA(model, plan.ema_decay, plan.ema_tau)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        ema.load_state_dict(resumed["ema"])
    if ctx.env.enabled and device.type == "cuda":  # SyncBatchNorm runs on GPUs only
        model.encoder = nn.SyncBatchNorm.convert_sync_batchnorm(model.encoder)
    net: nn.Module = model
    if ctx.env.enabled:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    train_mode(net, model, freeze_bn)
    optimizer = make_optimizer(model, cfg.lr, cfg.decoder_lr_mult, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, plan.warmup, plan.total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=ctx.precision == "fp16")
    rng = None
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        restore_scheduler(scheduler, resumed["scheduler"])  # after the optimiser: its rates are reset
        # a session in bf16 or fp32 saved its disabled scaler as {}: an fp16 resume starts a fresh
        # one (said by _check_same_experiment), where loading it raised; an fp16 run resumed in
        # another precision has no use for its scale
        if scaler.is_enabled() and resumed["scaler"]:
            scaler.load_state_dict(resumed["scaler"])
        rngs = resumed["rng"]
        rng = rngs[rank] if rank < len(rngs) else None
    if rng is not None:
        set_rng_state(rng, device)
    else:
        torch.manual_seed(stream_seed(cfg.seed, rank))
    progress = _starting_progress(ctx, plan, resumed)
    # --overwrite: the old run goes only now, just before the new run's first file (config.json),
    # so that an interrupt (Ctrl-C, SIGTERM) at any point before leaves it whole
    clear_old_run(ctx)
    tensorboard = None
    if ctx.main:
        if resumed is not None:
            write_rows(cfg.out / RESULTS, progress.rows)
        write_run_config(
            cfg.out / CONFIG,
            cfg,
            _resolved_config(ctx, data, plan, model, init_provenance, freeze_bn),
            resumed=resumed is not None,
        )
        tensorboard = open_tensorboard(cfg.out, progress.global_step)
    train_loader, val_loader = make_loaders(ctx, data, plan.batches, plan.start_epoch, plan.start_step)
    return TrainRun(
        ctx=ctx,
        data=data,
        plan=plan,
        model=model,
        net=net,
        ema=ema,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        normalization=dict(model.normalization),
        train_loader=train_loader,
        val_loader=val_loader,
        tensorboard=tensorboard,
        init_provenance=init_provenance,
        backbone=_backbone_record(cfg.backbone_weights, resumed, backbone_sha256),
        freeze_bn=freeze_bn,
        progress=progress,
    )


def _backbone_record(
    path: Path | None, resumed: Mapping[str, Any] | None, sha256: str | None
) -> dict[str, Any] | None:
    """``--backbone-weights`` as the run loaded it: hashed once as it starts, and carried over in
    ``last.pt`` on resume, which does not read the file (it may have moved since: every save
    hashed it again, and a moved file stopped the run at its first save)."""
    if path is None:
        return None
    if resumed is not None:
        return resumed.get("backbone") or {"path": str(path.resolve()), "sha256": None}  # older state
    return {"path": str(path.resolve()), "sha256": sha256}  # of the bytes loaded (load_hashed)


def _starting_progress(ctx: RunContext, plan: RunPlan, resumed: Mapping[str, Any] | None) -> Progress:
    """Zero, or the resumed run's counters and its ``results.csv`` rows up to the checkpoint."""
    if resumed is None:
        return Progress(
            global_step=0, saved_step=None, wall_time=0.0, best_maxf=None, best_epoch=None, rows=[]
        )
    # rows of epochs after the checkpoint (written before a crash) are dropped
    rows = [r for r in read_rows(ctx.cfg.out / RESULTS) if r["epoch"] <= plan.start_epoch]
    step = int(resumed["global_step"])
    return Progress(
        global_step=step,
        saved_step=step,
        wall_time=float(resumed["wall_time_s"]),
        best_maxf=resumed["best_maxf"],
        best_epoch=resumed["best_epoch"],
        rows=rows,
    )


def _resolved_config(
    ctx: RunContext,
    data: TrainData,
    plan: RunPlan,
    model: PDSeg,
    init_provenance: Mapping[str, Any] | None,
    freeze_bn: bool,
) -> dict[str, Any]:
    """``config.json``'s ``resolved``: what the run made of its configuration."""
    cfg = ctx.cfg
    init = None
    if cfg.init is not None and init_provenance is not None:  # the file, not the path as typed
        init = {"path": str(Path(cfg.init).resolve()), "sha256": init_provenance["sha256"]}
    return {
        "init": init,
        "device": str(ctx.device),
        "precision": ctx.precision,
        "world_size": ctx.env.world_size,
        "global_batch": cfg.batch * ctx.env.world_size,
        "train_dir": data.train_label,
        "val_dir": None if data.val_dir is None else str(data.val_dir),
        **data.teacher_record(),
        "train_images": data.n_train,
        "val_images": data.n_val,
        "steps_per_epoch": plan.steps_per_epoch,
        "total_steps": plan.total_steps,
        "warmup": plan.warmup,
        "ema_decay": plan.ema_decay,
        "ema_tau": plan.ema_tau,
        "threads": torch.get_num_threads(),  # a CPU run's weights depend on it (the order of float sums)
        "cache_dir": str(cache_root(cfg)) if cfg.cache == "disk" else None,
        "augment": augment_record(cfg),
        "freeze_bn": freeze_bn,
        "model": model.config.to_dict(),
    }
