"""`pdseg train`: train or resume a run (one process, or every process of a torchrun job)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from pdseg_cli.commands._common import (
    EXIT_INTERRUPTED,
    DataRootOpt,
    DeviceOpt,
    OnnxSpecOpt,
    QuietOpt,
    ThreadsOpt,
    square_side,
    torchrun_rank,
    use_threads,
    user_errors,
)
from pdseg_cli.config import DEFAULT_VARIANT, VARIANTS
from pdseg_cli.errors import InputError, RunFailed


def _variant_help() -> str:
    """``--variant``'s help, from the registry (``config.VARIANTS``): a new variant is named at once."""
    single = [name for name, cfg in VARIANTS.items() if cfg.decoder != "progressive"]
    tiny = [name for name in VARIANTS if name.endswith("-tiny")]
    notes = []
    if single:
        notes.append(f"{' / '.join(single)}: a single head, the ablation's baseline")
    if tiny:
        notes.append(f"{' / '.join(tiny)}: for smoke runs")
    return (
        f"{', '.join(VARIANTS)}" + (f" ({'; '.join(notes)})" if notes else "") + " (default: "
        f"{DEFAULT_VARIANT}, or the --init checkpoint's)."
    )


def train(
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            "-e",
            help="Train until this many epochs are complete. Needed for a new run; --resume keeps the "
            "run's own unless given: a larger one extends the run, a smaller one (not behind the epochs "
            "done) shortens it, and the learning rate then decays to 0 at the new last step.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Run folder (default: runs/<variant>, --init's variant with --init).",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out from its last.pt, exactly (on a CPU with the run's own "
            "thread count, unless --threads is given).",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start again in an --out that holds a run.")
    ] = False,
    variant: Annotated[
        str | None,
        typer.Option(
            "--variant",
            help=_variant_help(),
        ),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="Start from this pdseg checkpoint's weights (variant and normalisation from the file) "
            "with a fresh optimiser and schedule: fine-tuning, or a long run continued in a new one.",
            show_default=False,
        ),
    ] = None,
    size_text: Annotated[
        str | None,  # not int: `--size full` (predict's) gets pdseg's line, not click's usage box
        typer.Option(
            "--size",
            metavar="<int>",
            help="Square training side, a multiple of 32 (default: 1024, or --init's training size).",
            show_default=False,
        ),
    ] = None,
    batch: Annotated[
        int | None, typer.Option("--batch", "-b", help="Images per step and process (default: 8).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",  # no -w: that is --weights in the other commands (train's is --init)
            help="DataLoader workers per process (default: 0 on 2 cores or fewer, else up to 4).",
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of weights, data order and augmentation (default: 0).")
    ] = None,
    data_root: DataRootOpt = None,
    train_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--train",
            metavar="DIR",
            help="Train on this folder of im/ and gt/ instead of DIS-TR; repeat it to mix folders. With "
            "--teacher a folder may hold images without masks (im/ alone).",
            show_default=False,
        ),
    ] = None,
    teacher: Annotated[
        Path | None,
        typer.Option(
            "--teacher",
            help="Distil this model (.pt, .onnx, .ts, or a foreign DIS/SOD ONNX): its maps are the targets "
            "of images without masks, computed once and cached.",
            show_default=False,
        ),
    ] = None,
    teacher_weight: Annotated[
        float | None,
        typer.Option(
            "--teacher-weight",
            help="The teacher's share of the target where an image has a mask too, 0..1 "
            "(default: 0, the mask).",
        ),
    ] = None,
    max_unsure: Annotated[
        float | None,
        typer.Option(
            "--max-unsure",
            help="Leave out images without masks whose teacher map is doubtful: no object (under 1% "
            "foreground) or more than this share of its pixels unsure (26..229 of 255), e.g. 0.35 "
            "(default: keep all).",
            show_default=False,
        ),
    ] = None,
    harden_teacher: Annotated[
        bool | None,
        typer.Option(
            "--harden-teacher/--no-harden-teacher",
            # 25 and 230 are data.teacher.UNSURE_LOW/HIGH, written out as in --max-unsure's help
            help="Train on the teacher's maps with their nearly sure pixels made sure: 0..25 become 0 "
            "and 230..255 become 255; the edges between stay soft. For a teacher whose maps are faintly "
            "grey over whole backgrounds (default: soft, as the teacher gives them).",
            show_default=False,
        ),
    ] = None,
    onnx_spec: OnnxSpecOpt = None,
    val_dir: Annotated[
        Path | None,
        typer.Option(
            "--val", help="Validate on this folder instead of DIS-VD (none by default with --train)."
        ),
    ] = None,
    supervision: Annotated[
        str | None,
        typer.Option(
            "--supervision",
            help="multi: loss on every decoder level; single: final map only (default: multi).",
        ),
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(
            "--loss",
            help="bce-iou: BCE + IoU, the paper's; structure: both weighted per pixel, up to 6x near the "
            "mask's edges and on thin parts (F3Net's) (default: bce-iou).",
        ),
    ] = None,
    backbone_weights: Annotated[
        Path | None,
        typer.Option("--backbone-weights", help="ImageNet MSCAN weights (mscan_b.pth) for the encoder."),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option("--lr", help="Encoder learning rate; the decoder gets 10x (default: 6e-5)."),
    ] = None,
    warmup: Annotated[
        int | None,
        typer.Option("--warmup", help="Linear-warmup iterations (default: min(1500, a tenth of the run))."),
    ] = None,
    clip_grad: Annotated[
        float | None, typer.Option("--clip-grad", help="Max gradient norm, 0 = off (default: 5).")
    ] = None,
    ema_decay: Annotated[
        float | None,
        typer.Option(
            "--ema-decay",
            help="Weight EMA decay (default: 0.9999, or 1 - 10/steps in a shorter run, so the saved "
            "average spans at most a tenth of it).",
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision",
            help="auto (bf16 where the GPU or CPU computes it natively, else fp32), fp32, bf16 or fp16 "
            "(default: auto).",
        ),
    ] = None,
    device: DeviceOpt[str | None] = None,
    val_every: Annotated[
        int | None,
        typer.Option(
            "--val-every",
            help="Validate every K epochs and after the last; 0 = never (default: 1). Validation "
            "scores at the training size, to choose best.pt; pdseg eval scores at each mask's size.",
        ),
    ] = None,
    save_every_steps: Annotated[
        int | None,
        typer.Option(
            "--save-every-steps", help="Also write last.pt every N iterations (default: epoch ends only)."
        ),
    ] = None,
    cache: Annotated[
        str | None,
        typer.Option(
            "--cache", help="Keep decoded, resized samples on disk (.npy), in ram, or off (default: disk)."
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="Disk cache folder, shareable by runs (default: <out>/cache)."),
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment",
            help="Flip, rotation, crop and colour jitter (default: on).",
        ),
    ] = None,
    zoom: Annotated[
        float | None,
        typer.Option(
            "--zoom",
            help="Probability of also zooming an augmented sample in or out by up to 1.6x, 0..1 "
            "(default: 0, off).",
            show_default=False,
        ),
    ] = None,
    paste: Annotated[
        float | None,
        typer.Option(
            "--paste",
            help="Probability of putting an augmented sample's object on another training image's "
            "background, whose own object is filled in; the target stays the object's, 0..1 "
            "(default: 0, off).",
            show_default=False,
        ),
    ] = None,
    freeze_bn: Annotated[
        bool | None,
        typer.Option(
            "--freeze-bn/--no-freeze-bn",
            # 4 is train_config.FREEZE_BN_BATCH, written out: that module imports torch, which
            # `pdseg --help` must not wait for (a test keeps the two equal)
            help="Keep the encoder's BatchNorm statistics as the starting weights have them (their "
            "scales and shifts still train). Use it to fine-tune --init or --backbone-weights with a "
            "small batch: statistics refitted on a few images a step are noisy. Default: frozen when "
            "a BatchNorm sees at most 4 images a step (--batch, or the global batch "
            "under torchrun on GPUs) and the encoder starts from trained weights; never from random "
            "weights. A resumed run keeps its own.",
            show_default=False,
        ),
    ] = None,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train PDSeg on DIS5K (or any im/ + gt/ folders) with multi-scale supervision.

    Run folder (--out): last.pt (EMA weights + state), best.pt (best val maxF, if validating), results.csv.

    Also there: config.json, cache/ (decoded samples; --cache-dir moves it), tensorboard/ (if installed).

    Ctrl-C saves last.pt; --resume continues the run from it, exactly.

    Another --epochs with --resume re-plans the run: the learning rate decays over the new length.

    Several GPUs: torchrun --nproc-per-node N -m pdseg_cli train ... (--batch is per GPU).

    Examples:

      pdseg train --epochs 100 --data-root ~/DIS5K --device cuda --precision bf16

      pdseg train --resume --out runs/pdseg-b  # after Ctrl-C; --epochs N extends

      pdseg train -e 10 --init runs/a/last.pt --train my-photos --out runs/b

      pdseg train -e 20 -o runs/c --teacher isnet.onnx --train lab --train photos
    """
    from pdseg_cli import ui
    from pdseg_cli.engine.train import TrainConfig
    from pdseg_cli.engine.train import train as run_training
    from pdseg_cli.engine.train_checkpoints import LAST_NAME, finished_state, recorded_threads, resume_command
    from pdseg_cli.engine.train_config import default_run_folder, init_variant
    from pdseg_cli.engine.train_folder import existing_run, refuse_other_settings
    from pdseg_cli.errors import counted, first_line
    from pdseg_cli.runtime import alike_on_every_rank, env_distributed, is_out_of_memory, usable_cores
    from pdseg_cli.ui.training import TrainingView, summary

    # every process checks the options alike, and rank 0 says what is wrong with them once
    rank = torchrun_rank()
    main = rank == 0
    with user_errors(rank=rank), alike_on_every_rank():  # the value itself, before --init is read
        size = square_side(size_text, "train")
        if resume and overwrite:
            raise InputError(
                "--resume and --overwrite contradict each other (resume goes on with the run in --out; "
                "overwrite starts it again)",
                hint="drop --overwrite to go on with the run, or drop --resume to start it again",
            )
    options = dict(
        variant=variant, size=size, batch=batch, workers=workers, seed=seed, data_root=data_root,
        train_dir=train_dir, val_dir=val_dir, supervision=supervision, loss=loss,
        backbone_weights=backbone_weights, lr=lr, warmup=warmup, clip_grad=clip_grad, ema_decay=ema_decay,
        precision=precision, device=device,
        val_every=val_every, save_every_steps=save_every_steps, cache=cache, cache_dir=cache_dir,
        augment=augment, zoom=zoom, paste=paste, freeze_bn=freeze_bn, init=init, teacher=teacher,
        teacher_weight=teacher_weight, max_unsure=max_unsure, harden_teacher=harden_teacher,
        onnx_spec=onnx_spec,
    )  # fmt: skip
    # on --resume: what changed
    given: dict[str, Any] = {k: v for k, v in options.items() if v is not None and v != []}
    if out is None:  # runs/<variant>, of the weights being fine-tuned (their size: the engine's)
        with user_errors(rank=rank), alike_on_every_rank():  # an --init path the system refuses is one line
            out = default_run_folder(variant or init_variant(None if resume else init))
    view = TrainingView()
    with user_errors(rank=rank):
        with alike_on_every_rank():
            env_distributed()  # torchrun variables that make no sense are said here, once
            if resume and threads is None and not os.environ.get("OMP_NUM_THREADS"):
                # the run's own count, or the default follows the load and the sums' order changes
                kept = recorded_threads(out.expanduser() / LAST_NAME, given.get("device"))
                if kept is not None and kept <= usable_cores():
                    threads = kept
                    view.at_start.append(
                        f"{counted(kept, 'compute thread')}, as the run had (--threads sets others)"
                    )
            use_threads(threads, quiet=not main)
            if resume:
                length = {} if epochs is None else {"epochs": epochs}
                cfg = TrainConfig.for_resume(out, overwrite=overwrite, **length, **given)
                finished = finished_state(cfg.out / LAST_NAME)
                done = None if finished is None else int(finished["epochs"])
                if finished is not None and done == cfg.epochs:  # said before the data are loaded for nothing
                    refuse_other_settings(cfg, finished)  # as a resume with more to train does
                    if main:
                        ui.info(
                            f"{out} has finished its {counted(done, 'epoch')}: nothing to train; to train "
                            f"longer: {resume_command(out)} --epochs N (N > {done})"
                        )
                    return
            elif epochs is None:
                refusal = None if overwrite else existing_run(out.expanduser())  # a run there: how to go on
                if refusal is not None:
                    raise refusal
                raise InputError(
                    "--epochs is needed to start a run",
                    hint="add e.g. --epochs 20; or, to go on with the run in --out, --resume",
                )
            else:
                cfg = TrainConfig(out=out, epochs=epochs, overwrite=overwrite, **given)
        try:
            result = run_training(cfg, on_event=view)
        except RuntimeError as exc:  # CUDA OOM is a RuntimeError too
            if not is_out_of_memory(exc):
                raise
            view.close()
            # a resumed run keeps its batch and size, so the way out is a new run; each process runs
            # out of its own GPU's memory, so user_errors has each say its own
            where = "" if cfg.device == "auto" else f" on {cfg.device}"
            # as the run resolved them (--init's variant and size), else as given
            ran_variant, ran_size = view.started or (cfg.model_variant, cfg.size)
            size_said = f" at --size {ran_size}" if ran_size is not None else ""
            raise RunFailed(
                f"out of memory training {ran_variant}{size_said} with --batch {cfg.batch} "
                f"per process{where} ({first_line(exc)})",
                hint="start the run again with a smaller --batch or --size (another --out, or --overwrite)",
            ) from None
        finally:
            view.close()
    if main:
        summary(result, resume_command(out))
    if result.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
