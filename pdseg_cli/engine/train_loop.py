"""The training loop: epochs of steps, validation and checkpoints at epoch ends, a stop at a step
boundary on a signal, and ``last.pt``'s training state (``docs/model.md``, 'Training recipe')."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pdseg_cli import runtime
from pdseg_cli.data import transforms
from pdseg_cli.engine import losses
from pdseg_cli.engine.train_checkpoints import STATE_VERSION, write_checkpoint
from pdseg_cli.engine.train_context import RunContext
from pdseg_cli.engine.train_data import augment_record
from pdseg_cli.engine.train_events import TrainingDiverged, TrainResult
from pdseg_cli.engine.train_folder import BEST, LAST, RESULTS, write_rows
from pdseg_cli.engine.train_rng import rng_state
from pdseg_cli.engine.train_signals import StopFlag
from pdseg_cli.engine.train_state import EpochSums, TrainRun, start_run
from pdseg_cli.engine.train_validation import VAL_COLUMNS, check_final_map, validate
from pdseg_cli.errors import os_error_line
from pdseg_cli.runtime.quiet_warnings import ignoring_warnings


def run_training(ctx: RunContext) -> TrainResult:
    """Set the run up, then train from where it starts to ``--epochs`` or a signal."""
    with runtime.alike_on_every_rank():  # options, run folder and data: rank 0 says their errors
        run = start_run(ctx)
    plan, progress, out = run.plan, run.progress, ctx.cfg.out
    interrupted = False
    try:
        with StopFlag(ctx.notice, StopFlag.ECHO_SECONDS if ctx.env.enabled else 0.0) as stop:
            for epoch in range(plan.start_epoch, ctx.cfg.epochs):
                first = plan.start_step if epoch == plan.start_epoch else 0
                sums = EpochSums()
                if epoch == plan.start_epoch and plan.start_sums is not None:
                    sums = plan.start_sums  # the interrupted epoch's sums so far
                if not _train_epoch(run, epoch, first, sums, stop):
                    interrupted = True
                    break
    finally:
        if run.tensorboard is not None:
            _close_tensorboard(run)
    if ctx.main and progress.rows_unwritten:
        # an epoch's write met a locked results.csv: once more now, and a failure now stops with
        # its one line (exit 1), rather than a run that ends with rows missing in silence
        write_rows(out / RESULTS, progress.rows)
    return TrainResult(
        out=out,
        epochs=len(progress.rows),
        steps=progress.global_step,
        wall_time_s=progress.wall_time,
        interrupted=interrupted,
        best_maxf=progress.best_maxf,
        best_epoch=progress.best_epoch,
        last=out / LAST,
        best=out / BEST if (out / BEST).exists() else None,
        rows=list(progress.rows),
    )


def _close_tensorboard(run: TrainRun) -> None:
    """Close the TensorBoard writer. Its logs are a view of ``results.csv``, so a writer that failed
    (disk full, the run folder deleted under it) is a notice, and never hides the error that
    stopped the training (which a raise from a ``finally`` would)."""
    assert run.tensorboard is not None
    try:
        run.tensorboard.close()
    except OSError as exc:
        run.ctx.notice(f"TensorBoard logs not written: {os_error_line(exc)[0]}")


def _train_epoch(run: TrainRun, epoch: int, first: int, sums: EpochSums, stop: StopFlag) -> bool:
    """Epoch ``epoch`` (0-based) from its step ``first``; False when a signal stopped it."""
    ctx, plan, progress, tb = run.ctx, run.plan, run.progress, run.tensorboard
    cfg, out = ctx.cfg, ctx.cfg.out
    plan.batches.set_epoch(epoch, first)
    ctx.emit("epoch_start", epoch=epoch + 1, step=first, total=plan.steps_per_epoch)
    run.train_mode()  # not net.train(), which would put frozen BatchNorm layers back in training
    runtime.reset_peak_memory(ctx.device)
    tick = time.perf_counter()

    def clock() -> None:
        nonlocal tick
        now = time.perf_counter()
        sums.time += now - tick
        progress.wall_time += now - tick
        tick = now

    step = first
    for images, masks in run.train_loader:
        lr = sums.lr = run.optimizer.param_groups[0]["lr"]  # the encoder's, as this step uses it
        values, agreed_stop = _train_step(run, images, masks, stop.requested, epoch, step)
        step += 1
        progress.global_step += 1
        sums.add(values)
        ctx.emit(
            "step",
            epoch=epoch + 1,
            step=step,
            total=plan.steps_per_epoch,
            values={"loss": sums.loss / sums.count, "lr": lr},
        )
        if tb is not None:
            tb.add_scalar("train/loss", values[0], progress.global_step)
            tb.add_scalar("train/lr", lr, progress.global_step)
        # one process stops right after the step in flight; ranks stop where they agreed
        stop_now = agreed_stop or (stop.requested and not ctx.env.enabled)
        periodic = cfg.save_every_steps > 0 and progress.global_step % cfg.save_every_steps == 0
        if stop_now or (periodic and step < plan.steps_per_epoch):
            clock()
            _save_last(run, epoch, step, sums)
            tick = time.perf_counter()  # the save is not training time, as the epoch-end writes are not
            if stop_now:
                ctx.emit("stopped", values={"checkpoint": str(out / LAST), "steps": progress.global_step})
                return False
    clock()
    row: dict[str, Any] = {"epoch": epoch + 1, "steps": progress.global_step, **sums.row()}
    if run.data.teacher is not None:
        row.update(run.data.teacher_record())
    # what the epoch's last step used (the scheduler has moved on since: 0 at the end), also when
    # that step ran before a resume
    row["lr"] = sums.lr if sums.lr is not None else run.optimizer.param_groups[0]["lr"]
    last_epoch = epoch + 1 == cfg.epochs
    scores = dict.fromkeys(VAL_COLUMNS)
    if run.data.val_dir is not None and ((epoch + 1) % cfg.val_every == 0 or last_epoch):
        scores.update(validate(ctx, run.ema.module, run.val_loader, run.data.n_val, run.normalization, epoch))
        clock()
    maxf = scores["val_maxf"]
    row.update(scores, epoch_time_s=sums.time, wall_time_s=progress.wall_time)
    if ctx.device.type == "cuda":
        row["gpu_mem_gib"] = runtime.peak_memory(ctx.device)[0] / 2**30
    improved = maxf is not None and (progress.best_maxf is None or maxf > progress.best_maxf)
    if improved:
        progress.best_maxf, progress.best_epoch = maxf, epoch + 1
    progress.rows.append(row)
    check_final_map(ctx, run.ema.module, epoch + 1)
    if ctx.main:
        # best.pt and results.csv before last.pt: last.pt records this epoch's best score, so a
        # stop between the writes must leave the resume point behind them, never ahead (a resume
        # redoes the epoch, rewrites best.pt, and drops results rows past its checkpoint)
        if improved:
            write_checkpoint(out / BEST, run.ema.module, cfg.size, _provenance(run, epoch + 1), None)
        try:
            write_rows(out / RESULTS, progress.rows)
            progress.rows_unwritten = False
        except PermissionError:  # Windows: open in a spreadsheet, which locks it
            progress.rows_unwritten = True
            ctx.notice(
                f"{out / RESULTS} could not be replaced (open in another program?): close it; every row is "
                "written again at the next epoch's end and when the run ends"
            )
    _save_last(run, epoch + 1, 0, None)
    if ctx.main:
        if tb is not None:
            for key in ("loss", *VAL_COLUMNS):
                if row[key] is not None:
                    # at the step count, so that every tag shares TensorBoard's x axis (and a
                    # resume's purge_step applies to them all alike)
                    tb.add_scalar(f"epoch/{key}", row[key], progress.global_step)
            tb.flush()
    ctx.emit("epoch_end", epoch=epoch + 1, values={**row, "best": improved})
    if not last_epoch and _agreed(ctx, stop.requested):
        # a Ctrl-C during the epoch's end (validation, the writes): last.pt is that end. Going on
        # started the next epoch's loader for one step and a second save before stopping
        ctx.emit("stopped", values={"checkpoint": str(out / LAST), "steps": progress.global_step})
        return False
    return True


def _agreed(ctx: RunContext, requested: bool) -> bool:
    """Whether any process was asked to stop; under torchrun every process reaches this at the
    same point (an epoch's end) and stops alike, or none does."""
    if not ctx.env.enabled:
        return requested
    flag = torch.tensor([1.0 if requested else 0.0], device=ctx.device)
    dist.all_reduce(flag)
    return bool(flag.item() > 0)


def _train_step(
    run: TrainRun, images: torch.Tensor, masks: torch.Tensor, stop_requested: bool, epoch: int, step: int
) -> tuple[list[float], bool]:
    """One iteration; returns the losses (mean over ranks: total, then per level) and whether
    every rank stops after it (any rank got a signal).

    Raises:
        TrainingDiverged: the loss is NaN or infinite (on every rank alike).
    """
    ctx = run.ctx
    cfg, device = ctx.cfg, ctx.device
    # (B, 3, S, S) uint8 -> normalised float32; (B, 1, S, S) uint8 -> [0, 1]
    x = transforms.normalize_tensor(images.to(device, non_blocking=True).float(), run.normalization)
    x = x.contiguous(memory_format=torch.channels_last)
    y = masks.to(device, non_blocking=True).float() / 255.0
    with runtime.autocast(device, ctx.precision):
        levels = run.net(x, return_levels=True)
    loss, per_level = losses.multi_level_loss(levels, y, cfg.supervision, cfg.loss)
    flag = torch.tensor([1.0 if stop_requested else 0.0], device=device)
    stats = torch.cat([loss.detach().reshape(1), torch.stack(per_level), flag])
    if ctx.env.enabled:
        dist.all_reduce(stats)  # one small message per step: the losses and the stop flag
        stats[:-1] /= ctx.env.world_size
    values = stats.tolist()
    if not all(math.isfinite(v) for v in values[:-1]):
        raise runtime.every_rank_meets(_diverged(run, values[:-1], epoch, step))  # the losses are shared
    run.optimizer.zero_grad(set_to_none=True)
    first = epoch == run.plan.start_epoch and step == run.plan.start_step  # the session's first step
    with _quiet_bucket_strides(ctx) if first else contextlib.nullcontext():
        run.scaler.scale(loss).backward()
    if cfg.clip_grad > 0:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    # fp16: the scaler skips a step whose gradients overflow, as the first often do at its starting
    # scale; torch then warns, once, into the progress bar, that the schedule stepped before the
    # optimizer. Moving on by one step of the schedule is what is meant.
    with _quiet_schedule_before_optimizer() if first else contextlib.nullcontext():
        run.scheduler.step()
    run.ema.update(run.model)
    return values[:-1], values[-1] > 0


def _quiet_bucket_strides(ctx: RunContext) -> contextlib.AbstractContextManager[None]:
    """Under DDP, its "Grad strides do not match bucket view strides" warning ignored: raised once
    per process at the first backward, in every process, into the progress bar (so only that
    backward is wrapped: the filter's lock is not held, nor "once" warnings reset, every step). The
    channels-last strip convolutions' weights (out, 1, 1, k) and their gradients differ only in the
    strides of size-1 dimensions, which is the same memory order."""
    if not ctx.env.enabled:
        return contextlib.nullcontext()
    return ignoring_warnings(UserWarning, "Grad strides do not match bucket view strides")


def _quiet_schedule_before_optimizer() -> contextlib.AbstractContextManager[None]:
    """torch's "lr_scheduler.step() before optimizer.step()" warning ignored: it is checked at the
    schedule's first step of a session only (so only that step is wrapped)."""
    return ignoring_warnings(UserWarning, r"Detected call of `lr_scheduler.step\(\)` before")


def _diverged(run: TrainRun, values: list[float], epoch: int, step: int) -> TrainingDiverged:
    saved = run.progress.saved_step
    last = run.ctx.cfg.out / LAST
    kept = f"{last} (step {saved}) is kept" if saved is not None else "no checkpoint had been written yet"
    levels = ", ".join(f"{v:.4g}" for v in values[1:])
    # --resume keeps the run's settings, so the way on with another --lr is a new run from last.pt
    start = f"--init {last} --out NEW_FOLDER" if saved is not None else "--overwrite"
    return TrainingDiverged(
        f"the loss became {values[0]} at epoch {epoch + 1}, step {step + 1} (levels: {levels}); {kept}",
        hint=f"train again with a lower --lr or a longer --warmup ({start}), or with --precision fp32 "
        "or bf16",
    )


def _provenance(run: TrainRun, epochs: int) -> dict[str, Any]:
    """What the saved weights came from (stored in the checkpoint)."""
    ctx, data, progress = run.ctx, run.data, run.progress
    cfg = ctx.cfg
    last = progress.rows[-1] if progress.rows else {}
    chain = {}
    if cfg.init is not None:  # fine-tuned: keep where the starting weights came from
        # absolute, as config.json's paths: the chain is followed from other folders
        chain = {"init": {"path": str(cfg.init.resolve()), "provenance": run.init_provenance}}
    teacher = {}
    if data.teacher is not None:
        teacher = {
            **data.teacher_record(),
            "teacher_weight": cfg.teacher_weight,
            "harden_teacher": cfg.harden_teacher,
            "teacher_model": data.teacher.description,
        }
    return {
        **chain,
        **teacher,
        "data": data.train_label,
        "train_images": data.n_train,
        "val_data": None if data.val_dir is None else str(data.val_dir),
        "val_images": data.n_val,
        "epochs": epochs,
        "steps": progress.global_step,
        "wall_time_s": round(progress.wall_time, 1),
        "size": cfg.size,
        "global_batch": cfg.batch * ctx.env.world_size,
        "seed": cfg.seed,
        "supervision": cfg.supervision,
        "loss": cfg.loss,
        "precision": ctx.precision,
        "weights": "ema",
        "recipe": _recipe(run),
        **{column: last.get(column) for column in VAL_COLUMNS},  # at the training size
    }


def _recipe(run: TrainRun) -> dict[str, Any]:
    """The settings besides data, size, batch and seed that change the weights a run makes: two
    runs that differ only in these (say --lr or --zoom) had the same provenance. The compute
    threads too: on a CPU the same seed gives the same weights only with the same thread count
    (the order of float sums), and the default follows the machine's load."""
    cfg, plan = run.ctx.cfg, run.plan
    return {
        "lr": cfg.lr,
        "decoder_lr_mult": cfg.decoder_lr_mult,
        "weight_decay": cfg.weight_decay,
        "warmup": plan.warmup,
        "planned_epochs": cfg.epochs,
        "total_steps": plan.total_steps,
        "ema_decay": plan.ema_decay,
        "ema_tau": plan.ema_tau,
        "clip_grad": cfg.clip_grad,
        "augment": augment_record(cfg),
        "freeze_bn": run.freeze_bn,
        "max_unsure": cfg.max_unsure,
        "backbone_weights": run.backbone,
        "threads": torch.get_num_threads(),
    }


def _save_last(run: TrainRun, epoch: int, step_in_epoch: int, sums: EpochSums | None) -> None:
    """Write ``last.pt`` after ``epoch`` complete epochs and ``step_in_epoch`` more steps
    (rank 0 writes; every rank sends its RNG state)."""
    ctx, plan, progress = run.ctx, run.plan, run.progress
    rng = ctx.env.all_gather(rng_state(ctx.device))
    if not ctx.main:
        return
    cfg = ctx.cfg
    state = {
        "version": STATE_VERSION,
        "config": cfg.to_dict(),
        "train_dir": run.data.train_label,
        "train_images": run.data.n_train,  # --resume refuses folders that gained or lost images
        "train_fingerprint": run.data.fingerprint,  # ...or hold others in their place
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "global_step": progress.global_step,
        "epochs": cfg.epochs,
        "total_steps": plan.total_steps,
        "warmup": plan.warmup,
        "world_size": ctx.env.world_size,
        "precision": ctx.precision,
        "freeze_bn": run.freeze_bn,  # what --freeze-bn resolved to: a resume keeps it
        "threads": torch.get_num_threads(),  # --resume says when it changes (the sums' order)
        # what the run started from, for the provenance of the sessions that resume it
        "init_provenance": run.init_provenance,
        "backbone": run.backbone,
        "model": run.model.state_dict(),
        "ema": run.ema.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": [{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in r.items()} for r in rng],
        "epoch_sums": None if sums is None else dataclasses.asdict(sums),
        "wall_time_s": progress.wall_time,
        "best_maxf": progress.best_maxf,
        "best_epoch": progress.best_epoch,
    }
    write_checkpoint(cfg.out / LAST, run.ema.module, cfg.size, _provenance(run, epoch), state)
    progress.saved_step = progress.global_step
