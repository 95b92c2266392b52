"""`pdseg eval`: the DIS metric table (maxF, wF, MAE, S, E, HCE) for DIS5K splits or any folder."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pdseg_cli.commands._common import (
    BatchOpt,
    DataRootOpt,
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
    refuse_torchrun,
    torchrun_rank,
    use_threads,
    user_errors,
    write_report,
)
from pdseg_cli.config import DEFAULT_MAX_PIXELS
from pdseg_cli.errors import InputError, Interrupted, counted, listing

if TYPE_CHECKING:
    from pdseg_cli.engine.eval_pairs import PairPlan
    from pdseg_cli.engine.eval_report import EvalReport


def eval_(
    split: Annotated[
        list[str],
        typer.Option(
            "--split",
            "-s",
            metavar="SPLIT",
            help="DIS-VD, DIS-TE1..DIS-TE4, DIS-TE (the four test splits), or a folder holding gt/ "
            "(and im/). Repeat, or comma-separate, for several. When all four test splits are scored, a "
            "'DIS-TE (overall)' row is added: the mean of their four rows, as published DIS tables give it.",
            show_default=False,
        ),
    ],
    data_root: DataRootOpt = None,
    pred: Annotated[
        Path | None,
        typer.Option(
            "--pred",
            "-p",
            help="Score existing maps instead of running a model: <stem>.png per GT, in this folder "
            "or in <pred>/<split>/ (required with several splits; IS-Net's <pred>/DIS5K-TE1/ too).",
            show_default=False,
        ),
    ] = None,
    weights: WeightsOpt = None,
    onnx_spec: OnnxSpecOpt = None,
    save_preds: Annotated[
        Path | None,
        typer.Option(
            "--save-preds", help="Keep the model's maps in DIR/<split>/<stem>.png.", show_default=False
        ),
    ] = None,
    size: SizeOpt = None,
    tta: TtaOpt = False,
    scales: ScalesOpt = None,
    device: DeviceOpt[str] = "auto",
    precision: PrecisionOpt = "auto",
    batch: BatchOpt = 1,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    allow_missing: Annotated[
        bool,
        typer.Option(
            "--allow-missing",
            help="Score what can be scored instead of failing: GTs without a prediction (or without an "
            "image, with --weights) and pairs whose GT or map cannot be read are left out, and listed. "
            "Such a row is not comparable with published numbers.",
        ),
    ] = False,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            help="Worker processes for scoring: N >= 1, or 0 (the default): --threads if given, else the "
            "cores other work leaves idle (as for --threads); -1: all cores, -2: all but one. Other values "
            "are refused.",
        ),
    ] = 0,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Cache of GT-only data (skeletons etc.). "
            "Default: $PDSEG_CACHE_DIR, else $XDG_CACHE_HOME/pdseg, else ~/.cache/pdseg.",
            show_default=False,
        ),
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Neither read nor write the GT cache.")
    ] = False,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json",
            help="Write splits, per-image values, curves and settings as JSON to this file ('-': standard "
            "output).",
            show_default=False,
        ),
    ] = None,
    csv_out: Annotated[
        Path | None,
        typer.Option(
            "--csv",
            help="Write one CSV line per table row to this file ('-': standard output).",
            show_default=False,
        ),
    ] = None,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Score predictions with the DIS metrics, exactly as the reference tools compute them.

    Columns in the DIS paper's order: maxF, wF, MAE, S, E (mean E-measure), HCE.

    Predictions are matched to GTs by file stem; a map of another size is resized to its GT's size (bilinear).

    HCE is computed at GT resolution on the raw map bytes (> 128), as the DIS code does.

    GT-only work is cached on disk, so the second run over the same GTs is much faster.

    Examples:

      pdseg eval --split DIS-TE --weights runs/pdseg-b/best.pt --json te.json

      pdseg eval --split DIS-VD --pred preds/ --data-root ~/data/DIS5K

      pdseg eval --split DIS-TE --weights isnet.onnx  # any DIS ONNX model

      pdseg eval --split ./my-set --pred ./my-set-preds --csv scores.csv
    """
    report = ErrorReport()  # --json, once checked: where a refusal is written too
    with user_errors(rank=torchrun_rank(), report=report), _hint_on_interrupt() as stage:
        refuse_torchrun("eval")
        from pdseg_cli import ui
        from pdseg_cli.data import eval_splits
        from pdseg_cli.data.dis5k import MASK_DIR
        from pdseg_cli.engine import evaluate as ev
        from pdseg_cli.engine.eval_pairs import check_missing, plan_pairs
        from pdseg_cli.metrics.cache import usable_cache_root
        from pdseg_cli.ui import evaluation as view

        _check_outputs(json_out, csv_out)  # first: the error of any check below goes into --json
        report.path = json_out
        ev.check_jobs(jobs, "--jobs ", "--threads, else the idle cores")  # before any work
        check_batch(batch)
        use_threads(threads, quiet=pred is not None)  # the note is about the model's threads

        if pred is not None:
            model_only = {
                "--weights": weights is not None, "--save-preds": save_preds is not None, "--tta": tta,
                "--scales": scales is not None,
                "--size": size is not None, "--onnx-spec": onnx_spec is not None, "--batch": batch != 1,
                "--device": device != "auto", "--precision": precision != "auto",
                "--max-pixels": max_pixels != DEFAULT_MAX_PIXELS,
            }  # fmt: skip
            given = [name for name, used in model_only.items() if used]
            if given:
                raise InputError(
                    f"--pred scores existing maps, so {', '.join(given)} (for running a model) cannot apply",
                    hint=f"drop {', '.join(given)}, or drop --pred to run a model",
                )
        if (
            save_preds is not None
            and save_preds.expanduser().exists()
            and not save_preds.expanduser().is_dir()
        ):
            raise InputError(f"--save-preds {save_preds} is a file", hint="give a folder for the maps")
        if cache_dir is not None and not no_cache and cache_dir.exists() and not cache_dir.is_dir():
            # asked for by name, so say it (an unwritable default cache only costs speed)
            raise InputError(f"--cache-dir {cache_dir} is a file", hint="give a folder, or pass --no-cache")
        splits, pooled = eval_splits.resolve_splits(split, data_root)
        names = [name for name, _ in splits]

        with contextlib.ExitStack() as stack:
            if pred is not None:
                plans = [
                    plan_pairs(
                        eval_splits.prediction_folder(pred, name, len(splits) > 1, folder),
                        folder / MASK_DIR,
                        name=name,
                    )
                    for name, folder in splits
                ]
                settings: dict[str, Any] = {"predictions": f"maps read from {pred.expanduser().resolve()}"}
            else:
                plans, settings = _run_model(
                    stack,
                    splits,
                    weights,
                    save_preds,
                    size,
                    device,
                    precision,
                    batch,
                    allow_missing,
                    onnx_spec,
                    tta,
                    parse_scales(scales),
                    max_pixels,
                )
            # a DIS5K split of another size than the published one, and why DIS-TE1..4 folders get
            # no overall row
            notes = eval_splits.published_size_notes({p.name: len(p.pairs) + len(p.missing) for p in plans})
            for name, lines in eval_splits.overall_row_notes(splits, pooled).items():
                notes.setdefault(name, []).extend(lines)
            plans = [dataclasses.replace(plan, notes=notes.get(plan.name, [])) for plan in plans]
            check_missing(plans, allow_missing)  # before the start line: a refused run says only why
            # resolved once, so that the start line shows the count the run uses (the default
            # follows the load); --threads, the CPU the user gives the maths, sets the default
            n_jobs = ev.resolve_jobs(jobs or threads)
            n_images = sum(len(p.pairs) for p in plans)
            cache, cache_note = (None, None) if no_cache else usable_cache_root(cache_dir)
            if cache_note:
                ui.warn(cache_note)
            no_cache = cache is None
            if pred is not None:
                found = ev.split_folders(plans).get("pred_folders", {})
                view.maps_from(str(pred.expanduser().resolve()), found)
            # the processes that will run: no more than there are images
            view.start(n_images, names, max(1, min(n_jobs, n_images)), str(cache) if cache else None)
            stage.scoring(str(cache) if cache else None, kept=cache is not None and not cache_note)
            with view.progress("eval", n_images) as advance:
                scores = ev.evaluate_plans(
                    plans,
                    pooled=pooled,
                    jobs=n_jobs,
                    cache_dir=cache_dir,
                    use_cache=not no_cache,
                    allow_missing=allow_missing,
                    on_progress=advance,
                    settings=settings,
                )
        view.render(
            scores, table_on_stderr=any(out is not None and is_stdout(out) for out in (json_out, csv_out))
        )
        report.written = True
        _write_outputs(scores, json_out, csv_out)


@dataclasses.dataclass
class _Stage:
    """How far a run got, for what the hint after a Ctrl-C may promise."""

    started_scoring: bool = False
    cache: str | None = None  # the GT cache the scoring reads
    cache_kept: bool = False  # and writes: what it prepared is there for the next run

    def scoring(self, cache: str | None, *, kept: bool) -> None:
        self.started_scoring, self.cache, self.cache_kept = True, cache, kept


@contextlib.contextmanager
def _hint_on_interrupt() -> Iterator[_Stage]:
    """A Ctrl-C ends the run with exit 130 and a hint on going on: the run writes its --json and
    --csv only at the end, maps and cache entries atomically, so running it again is safe."""
    from pdseg_cli.metrics.cache import GTCache
    from pdseg_cli.ui import evaluation as view

    stage = _Stage()
    try:
        yield stage
    except KeyboardInterrupt:  # user_errors prints it with the hint and exits 130
        # promised only when entries are there: a store that fails (disk full) is not an error
        kept = stage.cache_kept and stage.cache is not None and GTCache(Path(stage.cache)).holds_entries()
        raise Interrupted(view.interrupt_hint(stage.started_scoring, stage.cache, kept)) from None


def _run_model(
    stack: contextlib.ExitStack,
    splits: list[tuple[str, Path]],
    weights: Path | None,
    save_preds: Path | None,
    size: str | None,
    device: str,
    precision: str,
    batch: int,
    allow_missing: bool,
    onnx_spec: str | None = None,
    tta: bool = False,
    scales: tuple[float, ...] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[list[PairPlan], dict[str, Any]]:
    """Run the model on the splits' images into --save-preds (or a temporary folder, which ``stack``
    removes after the scoring); plan the pairs. The checks and the pass are the engine's
    (:mod:`pdseg_cli.engine.eval_model`); here, what the user sees."""
    from pdseg_cli import ui
    from pdseg_cli.engine import eval_model
    from pdseg_cli.engine.predict import Predictor, parse_size
    from pdseg_cli.ui import evaluation as view
    from pdseg_cli.ui import prediction

    eval_model.lock_save_preds(save_preds, stack)
    # refuses what would stop the run after the model pass
    n_gt, no_gt = eval_model.check_split_gts(splits, save_preds, allow_missing=allow_missing)
    for name, files in no_gt.items():
        ui.warn(
            f"{name}: {counted(len(files), 'image')} in im/ without a GT, not scored: {listing(files, 5)}"
        )
    predictor = Predictor(
        weights,
        device=device,
        precision=precision,
        size=parse_size(size),
        onnx_spec=onnx_spec,
        tta=tta,
        scales=scales,
    )
    prediction.start(
        predictor.device_reason,
        predictor.precision,
        predictor.describe_setting(),
        sum(n_gt.values()),
        0,
        1,
        predictor.notes,
        model=f"{predictor.weights_path or 'model'}: {predictor.description}",
    )
    done = eval_model.run_model(
        predictor,
        splits,
        save_preds,
        stack,
        no_gt=no_gt,
        batch=batch,
        max_pixels=max_pixels,
        allow_missing=allow_missing,
        progress=lambda name: view.progress(f"predict {name}", n_gt[name]),
    )
    for name, lines in done.no_prediction.items():
        ui.warn(f"{name}: {counted(len(lines), 'GT mask')} without a prediction: {listing(lines, 10)}")
    prediction.doubts(predictor.doubts)  # before the scores of such maps
    return done.plans, done.settings


def _check_outputs(json_out: Path | None, csv_out: Path | None) -> None:
    """Refuse output paths that cannot be written, or that would overwrite each other, before the
    (long) scoring starts."""
    if json_out is not None and csv_out is not None:
        if is_stdout(json_out) and is_stdout(csv_out):
            raise InputError(
                "--json - and --csv - both ask for standard output", hint="give one of them a file"
            )
        if json_out.expanduser().resolve() == csv_out.expanduser().resolve():
            raise InputError(
                f"--json and --csv both name {json_out}: the CSV would replace the JSON",
                hint="give each its own file",
            )
    for option, path in (("--json", json_out), ("--csv", csv_out)):
        if path is not None:
            check_report_path(option, path)


def _write_outputs(report: EvalReport, json_out: Path | None, csv_out: Path | None) -> None:
    for path, text in _outputs(report, json_out, csv_out):
        write_report(path, text, "JSON" if path == json_out else "CSV")


def _outputs(report: EvalReport, json_out: Path | None, csv_out: Path | None) -> Iterator[tuple[Path, str]]:
    if json_out is not None:
        yield json_out, json.dumps(report.to_json(), indent=2) + "\n"
    if csv_out is not None:
        yield csv_out, report.to_csv()
