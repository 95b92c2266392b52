"""`pdseg predict`: segment files, folders and glob patterns into an output folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pdseg_cli import __version__
from pdseg_cli.commands._common import (
    EXIT_FAILED,
    BatchOpt,
    CompileOpt,
    DeviceOpt,
    ErrorReport,
    MaxPixelsOpt,
    OnnxSpecOpt,
    PrecisionOpt,
    QuietOpt,
    ScalesOpt,
    SizeOpt,
    ThreadsOpt,
    TtaOpt,
    WeightsOpt,
    check_batch,
    check_report_path,
    is_stdout,
    parse_scales,
    torchrun_rank,
    use_threads,
    user_errors,
    warn_unused,
    write_report,
)
from pdseg_cli.config import DEFAULT_MAX_PIXELS
from pdseg_cli.engine.output_kinds import files_help, kinds_that, save_help
from pdseg_cli.errors import InputError, PdsegError
from pdseg_cli.weights import MODEL_SUFFIXES, check_weights_file

# said under the model line when no --weights was given: a first run's masks are the demo model's
DEMO_NOTE = (
    "these are the bundled demo weights, whose masks are previews; for cut-outs to use, run a stronger "
    "model with --weights (README, 'Cut-outs to use today')"
)

if TYPE_CHECKING:
    from pdseg_cli.engine.predict_summary import PredictSummary
    from pdseg_cli.runtime.torchrun import Distributed

_OUTPUTS_HELP = save_help()


def predict(
    ctx: typer.Context,
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders or quoted glob patterns ('scans/**/*.tif').",
            metavar="IMAGES",
            show_default=False,
        ),
    ],
    out_text: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="Output folder (created if missing), apart from the inputs (an input's folder is refused).",
            show_default=False,
        ),
    ],
    weights: WeightsOpt = None,
    onnx_spec: OnnxSpecOpt = None,
    size: SizeOpt = None,
    tta: TtaOpt = False,
    scales: ScalesOpt = None,
    save: Annotated[list[str], typer.Option("--save", "-s", metavar="KINDS", help=_OUTPUTS_HELP)] = ["mask"],  # noqa: B006 (typer passes a new list)
    bg: Annotated[
        str,
        typer.Option(
            "--bg",
            help="Background of --save composite: a name, #rrggbb or r,g,b, in sRGB as on the web "
            "(converted into the image's own RGB ICC profile, if it has one).",
        ),
    ] = "white",
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    refine_foreground: Annotated[
        bool,
        typer.Option(
            "--refine-foreground/--no-refine-foreground",
            help="For alpha and composite: put the object's estimated own colour under soft edges and hair "
            "(blur-fusion), not the original pixels that carry the old background's colour. On by default.",
            show_default=False,  # Typer's "[default: refine-foreground]" is longer than the column
        ),
    ] = True,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            "-t",
            help="Binary maps: 255 where the probability is >= T (0 < T < 1), else 0; --save alpha "
            "and composite are cut with that hard edge too.",
        ),
    ] = None,
    recursive: Annotated[
        bool,
        typer.Option("--recursive", "-r", help="Descend into subfolders and mirror them under --out."),
    ] = False,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing",
            help="Skip images whose outputs all exist: resume a run, with its options. An image changed "
            "since its outputs were written is done again; outputs made with other weights, --size, --tta, "
            "--scales, --onnx-spec or --threshold (--bg and --refine-foreground for cut-outs) are refused, "
            "so a folder never mixes two runs' maps (--size as given: give it as the run did).",
        ),
    ] = False,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="At the end, write what happened to each input (done, skipped or failed, the outputs "
            "this run wrote for it, its error) and the counts as JSON to this file ('-': standard "
            "output), for scripts; also when Ctrl-C or a full disk stops a run of one process "
            "('stopped': why, the signal that stopped it, and the inputs not reached).",
            show_default=False,
        ),
    ] = None,
    batch: BatchOpt = 1,
    device: DeviceOpt[str] = "auto",
    precision: PrecisionOpt = "auto",
    compile_mode: CompileOpt = "off",
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Segment images: one 8-bit map per image, at the image's exact width and height.

    Map byte = floor(255 * sigmoid(logit)), logits resized bilinearly to the image first (as DIS does).

    A model that gives probabilities only (a foreign ONNX) has its probabilities resized instead.

    Outputs go to --out: @FILES@.

    Files are written under a temporary name and renamed: an interrupted run leaves no partial file.

    Unreadable files are named as they fail and make the exit status 1; all others are still written.

    A full disk stops the run at once (exit status 1): go on with --skip-existing once there is room.

    Several GPUs: torchrun --nproc-per-node N -m pdseg_cli predict ...

    Examples:

      pdseg predict ./photos --out ./masks

      pdseg predict 'scans/**/*.tif' -r --save mask,alpha -o cutouts

      pdseg predict big.tif -w runs/b/best.pt --size full -o masks  # 1024-trained

      pdseg predict ./photos --weights isnet.onnx --out ./isnet-masks
    """
    from pdseg_cli import runtime

    rank = torchrun_rank()
    report = ErrorReport()  # --json, once checked: where a refusal is written too
    with user_errors(rank=rank, report=report):
        # the options and the inputs, which every process checks and plans alike: rank 0 says
        # their errors once
        with runtime.alike_on_every_rank():
            from pdseg_cli.engine.output_kinds import parse_save
            from pdseg_cli.engine.predict_plan import plan_predict, unread_subfolders
            from pdseg_cli.engine.predict_summary import OutputWriteStopped, PredictInterrupted, nothing_left
            from pdseg_cli.ui import prediction

            out = Path(out_text)
            if json_out is not None:  # first: the error of any check below goes into it
                created = out if out_text.strip() else None  # --out is made before the report
                check_report_path("--json", json_out, created=created, example="run")
                report.path = json_out
            if not out_text.strip():
                raise InputError(
                    "--out is empty", hint="name a folder, e.g. --out masks (--out . for this one)"
                )
            demo = False  # the bundled demo weights, by default: the run says what their masks are
            if weights is None:
                from pdseg_cli.weights import default_weights, is_bundled

                weights = default_weights()  # a missing default is reported before anything is created
                demo = is_bundled(weights)
            kinds = parse_save(save)
            check_batch(batch)
            env = runtime.env_distributed()

            def torch_options() -> tuple[Any, tuple[int, ...]]:
                return _model_options(
                    ctx, kinds, env, threads=threads, size=size, bg=bg, threshold=threshold,
                    device=device, precision=precision, compile_mode=compile_mode,
                )  # fmt: skip

            # Options given are checked before the inputs (device and precision errors before any file
            # is touched). With their defaults, which cannot fail, the whole run is planned first: a
            # single process with nothing left to do (a folder polled with --skip-existing) then ends
            # without torch or the model. Under torchrun every process goes into the group as before,
            # so that a file arriving between two processes' plans cannot leave one waiting for the rest.
            checked = torch_options() if any(_given(ctx, name) for name in _TORCH_CHECKED) else None
            if _given(ctx, "weights"):  # a moved or mistyped -w is said even when nothing is left to do
                check_weights_file(Path(weights).expanduser(), "weights", MODEL_SUFFIXES)
            asked_scales = parse_scales(scales)
            made = None
            if skip_existing:  # which earlier outputs this run's model and settings made
                from pdseg_cli.data.colors import parse_color
                from pdseg_cli.engine.made_with import made_with_file

                asked_size, asked_bg = checked if checked is not None else (None, parse_color(bg))
                made = made_with_file(
                    Path(weights).expanduser(), size=asked_size, tta=tta, scales=asked_scales,
                    onnx_spec=onnx_spec, threshold=threshold, background=asked_bg,
                    refine_foreground=refine_foreground,
                )  # fmt: skip
            whole = plan_predict(
                sources,
                out,
                save=kinds,
                recursive=recursive,
                skip_existing=skip_existing,
                refine_foreground=refine_foreground,
                max_pixels=max_pixels,
                made=made,
            )
            if rank == 0:  # every process plans alike: said once
                prediction.named_not_read(sources, whole.not_images)
                prediction.subfolders_not_read(unread_subfolders(sources, out, recursive))
                prediction.own_outputs_left_out(whole.own_outputs)
                if not whole.otherwise_made:  # else a refusal follows, and no image is made again
                    prediction.unnamed_outputs_remade(whole.unnamed_outputs)
            on_stdout = json_out is not None and is_stdout(json_out)  # the table then goes to stderr
            settings = {
                "pdseg": __version__,
                "weights": str(weights),
                "out": str(whole.out_dir),
                "save": list(kinds),
                "threshold": threshold,
                # the rest of what an output's mark records (made_with), as given: what a resume
                # with --skip-existing must give again
                "size": size,
                "tta": tta,
                "scales": list(asked_scales) if asked_scales else None,
                "onnx_spec": onnx_spec,
                "bg": bg,
                "refine_foreground": refine_foreground,
                "skip_existing": skip_existing,
                # on a CPU the last grey level of a few pixels follows the thread count (its default
                # follows the load) and the batch: what gives the same bytes again
                "batch": batch,
                "threads": None,
                "weights_sha256": None,  # the file's content, hashed as loaded (None: no model ran)
            }
            if not whole.todo and not env.enabled and not (onnx_spec or tta or scales):  # checked on loading
                prediction.nothing_left(whole.out_dir, len(whole.skipped))
                prediction.left_in_out(whole.out_dir, whole.left_in_out)
                done = nothing_left(whole)
                prediction.summary(done, table_on_stderr=on_stdout)
                report.written = True
                _write_json(json_out, done, settings)
                return
            from pdseg_cli.engine.predict import Predictor

            work_size, background = checked if checked is not None else torch_options()
        with runtime.distributed() as dist:
            plan = whole.agreed(dist).share(dist)
            with runtime.alike_on_every_rank():  # the same file, and a device checked alike above
                predictor = Predictor(
                    weights,
                    device=device,
                    precision=precision,
                    size=work_size,
                    compile=compile_mode,
                    local_rank=dist.local_rank if dist.enabled else None,
                    onnx_spec=onnx_spec,
                    tta=tta,
                    scales=asked_scales,
                )
                # once the model has loaded: an option it refuses is said first, as the cause
                whole.refuse_otherwise_made()
            settings["weights"] = str(predictor.weights_path or weights)  # the file the model came from
            settings["weights_sha256"] = predictor.weights_sha256
            settings["threads"] = runtime.maps_threads(predictor.device)
            if dist.is_main:
                sharing = runtime.gpu_sharing_note(device, dist)  # processes may share a GPU: said once
                prediction.start(
                    predictor.device_reason,
                    predictor.precision,
                    predictor.describe_setting(),
                    len(plan.todo),
                    len(plan.skipped),
                    dist.world_size,
                    [*predictor.notes, *([sharing] if sharing else [])],
                    model=f"{predictor.weights_path or 'model'}: {predictor.description}",
                    model_note=DEMO_NOTE if demo else None,
                )
                prediction.left_in_out(plan.out_dir, plan.left_in_out)
            seen: list[Any] = []  # the results so far, for the counts after a Ctrl-C
            total = len(plan.todo) + len(plan.skipped)
            try:
                with prediction.progress(
                    total, enabled=dist.is_main, seen=seen, skipped=len(plan.skipped)
                ) as advance:
                    result = predictor.run_plan(
                        plan,
                        threshold=threshold,
                        background=background,
                        batch=batch,
                        on_progress=advance,
                        dist=dist,
                        on_stopping=prediction.finishing_writes if dist.is_main else None,
                    )
            except KeyboardInterrupt as exc:
                if dist.is_main:
                    # this process's share only, under torchrun: the others' images may be left
                    prediction.interrupted(skip_existing, seen, total, whole_run=not dist.enabled)
                    if isinstance(exc, PredictInterrupted):  # one process: what it did is known
                        report.written = True
                        _write_json_after_stop(json_out, exc.summary, whole, settings)
                raise
            except OutputWriteStopped as exc:  # a full disk: how far it got, then its error line
                if dist.is_main:
                    prediction.stopped(exc.summary, whole.total)
                    report.written = True
                    _write_json_after_stop(json_out, exc.summary, whole, settings)
                runtime.every_rank_meets(exc)  # raised after the gather, in every process alike
                raise
        if dist.is_main:
            prediction.summary(result, table_on_stderr=on_stdout)
            prediction.doubts(result.model_warnings)  # every process's, under torchrun
            report.written = True
            _write_json(json_out, result, settings)
    if result.failed:
        raise typer.Exit(EXIT_FAILED)


def _model_options(
    ctx: typer.Context,
    kinds: tuple[str, ...],
    env: Distributed,
    *,
    threads: int | None,
    size: str | None,
    bg: str,
    threshold: float | None,
    device: str,
    precision: str,
    compile_mode: str,
) -> tuple[Any, tuple[int, ...]]:
    """Check the options that torch's modules check (about 2 s to import): (working size,
    background). Says which given options do not apply to the ``--save`` kinds asked for."""
    from pdseg_cli import runtime
    from pdseg_cli.data.colors import parse_color
    from pdseg_cli.engine.predict import check_threshold, parse_size

    use_threads(threads, quiet=not env.is_main)
    work_size = parse_size(size)
    try:
        background = parse_color(bg)
    except ValueError as exc:
        raise InputError(f"--bg: {exc}", hint="e.g. --bg white, --bg '#00ff00' or --bg 0,255,0") from None
    check_threshold(threshold)
    # which kinds paint over --bg or use the image's colours: from the output-kind table
    painted, coloured = kinds_that("uses_background"), kinds_that("uses_image")
    warn_unused(
        ctx,
        {
            "bg": None
            if set(kinds) & set(painted)
            else f"--bg colours --save {' and '.join(painted)} only, which is not asked for",
            "refine_foreground": None
            if set(kinds) & set(coloured)
            else f"--refine-foreground/--no-refine-foreground apply to --save {' and '.join(coloured)} only",
        },
        enabled=env.is_main,
    )
    chosen = runtime.resolve_device(device, local_rank=env.local_rank if env.enabled else None)
    runtime.resolve_precision(precision, chosen.device)
    runtime.resolve_compile(compile_mode)
    return work_size, background


def _write_json(path: Path | None, result: PredictSummary, settings: dict[str, Any]) -> None:
    if path is not None:
        write_report(path, json.dumps(result.to_json(settings), indent=2) + "\n", "JSON")


def _write_json_after_stop(
    path: Path | None, result: PredictSummary, whole: Any, settings: dict[str, Any]
) -> None:
    """The --json of a run that stopped early (Ctrl-C, a full disk), with the inputs it did not
    reach: a script that reads it learns what is done without parsing the messages. A report
    that cannot be written (on the disk that filled) is a warning: the stop's own error comes next."""
    from dataclasses import replace

    from pdseg_cli import ui
    from pdseg_cli.engine.predict_summary import not_reached

    if path is None:
        return
    result = replace(result, not_reached=not_reached(whole, result.results))
    try:
        _write_json(path, result, settings)
    except PdsegError as exc:
        ui.warn(f"--json not written: {exc.message}")


# the options whose checks import torch (torch_options), by parameter name
_TORCH_CHECKED = (
    "size",
    "bg",
    "threshold",
    "refine_foreground",
    "threads",
    "device",
    "precision",
    "compile_mode",
)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given (on the command line or by its environment variable)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"


# the file names come from the output-kind table, so a new kind shows up here by itself
if predict.__doc__:  # None under python -OO
    predict.__doc__ = predict.__doc__.replace("@FILES@", files_help())
