"""`pdseg train`: train or resume a run (one process, or every process of a torchrun job)."""

from __future__ import annotations

from pathlib import Path

import typer

from pdseg_cli.commands._common import EXIT_FAILED, EXIT_INTERRUPTED, threads_option, user_errors


def train(
    epochs: int = typer.Option(..., "--epochs", "-e", help="Train until this many epochs are complete."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run folder (default: runs/<variant>).", show_default=False
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last.pt, exactly."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start again in an --out that holds a run."),
    variant: str | None = typer.Option(
        None,
        "--variant",
        help="pdseg-t, pdseg-s, pdseg-b, pdseg-l, or segnext-t / segnext-b (single head, the ablation's "
        "baseline) (default: pdseg-b, or the --init checkpoint's).",
    ),
    init: Path | None = typer.Option(
        None,
        "--init",
        help="Start from this pdseg checkpoint's weights (variant and normalisation from the file) with a "
        "fresh optimiser and schedule: fine-tuning, or a long run continued in a new one.",
        show_default=False,
    ),
    size: int | None = typer.Option(
        None, "--size", help="Square training side, a multiple of 32 (default: 1024)."
    ),
    batch: int | None = typer.Option(None, "--batch", "-b", help="Images per step and process (default: 8)."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        "-w",
        help="DataLoader workers per process (default: 0 on 2 cores or fewer, else up to 4).",
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of weights, data order and augmentation (default: 0)."
    ),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="DIS5K root with DIS-TR and DIS-VD (default: $PDSEG_DATA, else ./DIS5K)."
    ),
    train_dir: list[Path] | None = typer.Option(
        None,
        "--train",
        help="Train on this folder of im/ and gt/ instead of DIS-TR; repeat it to mix folders. With "
        "--teacher a folder may hold images without masks (im/ alone).",
        show_default=False,
    ),
    teacher: Path | None = typer.Option(
        None,
        "--teacher",
        help="Distil this model (.pt, .onnx, .ts, or a foreign DIS/SOD ONNX): its maps are the targets of "
        "images without masks, computed once and cached.",
        show_default=False,
    ),
    teacher_weight: float | None = typer.Option(
        None,
        "--teacher-weight",
        help="The teacher's share of the target where an image has a mask too, 0..1 (default: 0, the mask).",
    ),
    onnx_spec: str | None = typer.Option(
        None,
        "--onnx-spec",
        help="How to run a foreign ONNX teacher that pdseg does not recognise: size=N,mean=..,std=..,"
        "scale=255|1,color=rgb|bgr,output=NAME,kind=probability|logit.",
        show_default=False,
    ),
    val_dir: Path | None = typer.Option(
        None, "--val", help="Validate on this folder instead of DIS-VD (none by default with --train)."
    ),
    supervision: str | None = typer.Option(
        None,
        "--supervision",
        help="multi: loss on every decoder level; single: final map only (default: multi).",
    ),
    backbone_weights: Path | None = typer.Option(
        None, "--backbone-weights", help="ImageNet MSCAN weights (mscan_b.pth) for the encoder."
    ),
    lr: float | None = typer.Option(
        None, "--lr", help="Encoder learning rate; the decoder gets 10x (default: 6e-5)."
    ),
    warmup: int | None = typer.Option(
        None, "--warmup", help="Linear-warmup iterations (default: min(1500, a tenth of the run))."
    ),
    clip_grad: float | None = typer.Option(
        None, "--clip-grad", help="Max gradient norm, 0 = off (default: 5)."
    ),
    ema_decay: float | None = typer.Option(None, "--ema-decay", help="Weight EMA decay (default: 0.9999)."),
    precision: str | None = typer.Option(
        None,
        "--precision",
        help="auto (bf16 on GPUs that have it, else fp32), fp32, bf16 or fp16 (default: auto).",
    ),
    device: str | None = typer.Option(
        None, "--device", "-d", help="auto, cpu, cuda, cuda:N or mps (default: auto)."
    ),
    val_every: int | None = typer.Option(
        None, "--val-every", help="Validate every K epochs and after the last; 0 = never (default: 1)."
    ),
    save_every_steps: int | None = typer.Option(
        None, "--save-every-steps", help="Also write last.pt every N iterations (default: epoch ends only)."
    ),
    cache: str | None = typer.Option(
        None, "--cache", help="Keep decoded, resized samples on disk (.npy), in ram, or off (default: disk)."
    ),
    cache_dir: Path | None = typer.Option(
        None, "--cache-dir", help="Disk cache folder, shareable by runs (default: <out>/cache)."
    ),
    augment: bool | None = typer.Option(
        None, "--augment/--no-augment", help="Flip, rotation, crop and colour jitter (default: on)."
    ),
    threads: int | None = threads_option(),
) -> None:
    """Train PDSeg on DIS5K (or any im/ + gt/ folders) with multi-scale supervision.

    Run folder (--out): last.pt (EMA weights + training state), best.pt (best val maxF), results.csv.

    Ctrl-C saves last.pt; --resume continues the run from it, exactly.

    Several GPUs: torchrun --nproc-per-node N -m pdseg_cli train ... (--batch is per GPU).

    Examples:

      pdseg train --epochs 100 --data-root ~/DIS5K --device cuda --precision bf16

      pdseg train --epochs 150 --out runs/pdseg-b --resume

      pdseg train -e 10 --init runs/a/last.pt --train my-photos --out runs/b

      pdseg train -e 20 -o runs/c --teacher isnet.onnx --train lab --train photos
    """
    from pdseg_cli.engine.train import CheckpointWriteError, TrainConfig, TrainingDiverged
    from pdseg_cli.engine.train import train as run_training
    from pdseg_cli.errors import first_line
    from pdseg_cli.runtime import env_distributed, is_out_of_memory
    from pdseg_cli.ui import error
    from pdseg_cli.ui.training import TrainingView, summary

    options = dict(
        variant=variant, size=size, batch=batch, workers=workers, seed=seed, data_root=data_root,
        train_dir=train_dir, val_dir=val_dir, supervision=supervision, backbone_weights=backbone_weights,
        lr=lr, warmup=warmup, clip_grad=clip_grad, ema_decay=ema_decay, precision=precision, device=device,
        val_every=val_every, save_every_steps=save_every_steps, cache=cache, cache_dir=cache_dir,
        augment=augment, init=init, teacher=teacher, teacher_weight=teacher_weight, onnx_spec=onnx_spec,
    )  # fmt: skip
    given = {k: v for k, v in options.items() if v is not None and v != []}  # on --resume: what changed
    out = out or Path("runs") / (variant or "pdseg-b")
    view = TrainingView()
    with user_errors():
        from pdseg_cli.runtime import set_compute_threads

        set_compute_threads(threads)
        main = env_distributed().rank == 0
        if resume:
            cfg = TrainConfig.for_resume(out, epochs=epochs, **given)
        else:
            cfg = TrainConfig(out=out, epochs=epochs, overwrite=overwrite, **given)
        try:
            result = run_training(cfg, on_event=view)
        except (TrainingDiverged, CheckpointWriteError) as exc:
            view.close()
            error(exc.message, exc.hint)
            raise typer.Exit(EXIT_FAILED) from None
        except RuntimeError as exc:  # CUDA OOM is a RuntimeError too
            if not is_out_of_memory(exc):
                raise
            view.close()
            # a resumed run keeps its batch and size, so the way out is a new run
            where = "" if cfg.device == "auto" else f" on {cfg.device}"
            error(
                f"out of memory training {cfg.model_variant} at --size {cfg.size} with --batch {cfg.batch} "
                f"per process{where} ({first_line(exc)})",
                "start the run again with a smaller --batch or --size (another --out, or --overwrite)",
            )
            raise typer.Exit(EXIT_FAILED) from None
        finally:
            view.close()
    if main:
        summary(result, f"pdseg train --resume --out {out} --epochs {epochs}")
    if result.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
