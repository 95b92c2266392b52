"""The run folder: what makes a folder a run, checking it before a run starts, and the files
beside the checkpoints (``results.csv``, ``config.json``, TensorBoard scalars)."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pdseg_cli import __version__
from pdseg_cli.data.atomic import atomic_path, sweep_folder
from pdseg_cli.data.dis5k import shown
from pdseg_cli.data.images import check_writable_folder
from pdseg_cli.engine.train_checkpoints import LAST_NAME, read_train_state, resume_parts
from pdseg_cli.engine.train_config import CONFIG, TRAJECTORY_FIELDS, TrainConfig
from pdseg_cli.engine.train_context import RunContext
from pdseg_cli.errors import InputError, counted

if TYPE_CHECKING:  # tensorboard is an optional package
    from torch.utils.tensorboard import SummaryWriter

LAST, BEST, RESULTS = LAST_NAME, "best.pt", "results.csv"
TENSORBOARD_DIR, CACHE_DIR = "tensorboard", "cache"
RUN_FILES = (LAST, BEST, RESULTS, CONFIG)  # the files of a run, removed when it starts again
# what makes a folder hold a run worth keeping: a start stopped before its first checkpoint (Ctrl-C
# during hours of teacher labelling) leaves only config.json, and a new start replaces it
CHECKPOINTS = (LAST, BEST)


def cache_root(cfg: TrainConfig) -> Path:
    """The disk cache of decoded samples (and validation's GT work): ``--cache-dir``, else in the run."""
    return cfg.cache_dir or cfg.out / CACHE_DIR


def prepare_run_folder(ctx: RunContext) -> dict[str, Any] | None:
    """Check the run folder against resume/overwrite; return the state to resume from, if any.

    An ``--overwrite``'s old run is not touched here: :func:`clear_old_run` removes it only when the
    new run is about to write its first file, so a refused or interrupted start leaves it whole.
    """
    cfg, out = ctx.cfg, ctx.cfg.out
    refuse_other_runs_cache(cfg)
    if not cfg.resume:  # before anything is written; a run that exists already is left to resume
        refuse_out_in_data(cfg)
    if cfg.resume:
        state = read_train_state(out / LAST)
        _check_same_experiment(ctx, state)
        if ctx.main:
            sweep_folder(out)  # what a killed run left half-written (a checkpoint's temporary)
        return state
    existing = [name for name in CHECKPOINTS if (out / name).exists()]
    refusal = None if cfg.overwrite else existing_run(out)
    if refusal is not None:
        raise refusal
    leftovers = [name for name in RUN_FILES if name not in CHECKPOINTS and (out / name).exists()]
    if leftovers and not existing and not cfg.overwrite:
        if not _is_run_config(out / CONFIG):  # another tool's config.json or results.csv: not ours to replace
            raise InputError(
                f"{out} holds {', '.join(leftovers)}, which are not a pdseg run's",
                hint="choose another --out, or pass --overwrite to replace them",
            )
        if ctx.main:
            ctx.notice(f"{out}: replacing {', '.join(leftovers)} of a start that saved no checkpoint")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder", hint="choose a folder for the run")
    if ctx.main:
        check_writable_folder(out, f"--out {out}")
        sweep_folder(out)
    return None


def existing_run(out: Path) -> InputError | None:
    """The refusal for a new run in ``out`` when it already holds one (a checkpoint), saying where
    that run stands and the whole command to go on (a fine-tune's ``--init`` and the other options
    left out, so that adding --resume to the refused command is not a second refusal); None when
    it holds none."""
    existing = [name for name in CHECKPOINTS if (out / name).exists()]
    if not existing:
        return None
    if not (out / LAST).is_file():  # best.pt alone: stopped after saving it, before its first last.pt
        return InputError(
            f"{out} holds {', '.join(existing)} but no {LAST} (the run stopped before its first "
            "resumable save), so it cannot be resumed",
            hint="--overwrite starts it again (keep the best.pt elsewhere first if you want it); "
            "or choose another --out",
        )
    parts = resume_parts(out / LAST)
    where, how = parts if parts is not None else (None, "pass --resume to continue it")
    return InputError(
        f"{out} already holds a training run ({', '.join(existing)})" + (f", {where}" if where else ""),
        hint=f"{how}; --overwrite starts it again; or choose another --out",
    )


def _is_run_config(path: Path) -> bool:
    """Whether ``path`` is the ``config.json`` a pdseg training run writes (its ``train`` options
    and the ``pdseg_version`` that wrote them)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("train"), dict) and "pdseg_version" in data


def clear_old_run(ctx: RunContext) -> None:
    """Remove the files of the run ``--overwrite`` replaces (rank 0), just before the new run
    writes its own; nothing to do for a new folder or a resume."""
    cfg, out = ctx.cfg, ctx.cfg.out
    if cfg.resume:
        return
    ctx.barrier()  # every rank has looked before rank 0 deletes
    if ctx.main:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / TENSORBOARD_DIR, ignore_errors=True)
    ctx.barrier()


def refuse_other_settings(cfg: TrainConfig, state: Mapping[str, Any]) -> None:
    """Refuse to resume the run whose training state is ``state`` with settings that change its
    trajectory, whether there is more to train or not (a finished run told "nothing to train"
    while a changed --lr was dropped in silence would read as accepted), or another validation
    folder than the one its best.pt was chosen on (best.pt would compare scores of two folders).

    Raises:
        InputError: a trajectory field (:data:`TRAJECTORY_FIELDS`, or an explicit ``--warmup`` or
            ``--freeze-bn/--no-freeze-bn``) or the validation folder differs; the values are shown
            as they are typed.
    """
    stored, now = state["config"], cfg.to_dict()
    # a field added after the run started is absent from its config: the run had the default
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    diffs = [
        _changed(name, stored.get(name, defaults[name]), now[name])
        for name in TRAJECTORY_FIELDS
        if stored.get(name, defaults[name]) != now[name]
    ]
    if cfg.warmup is not None and state["warmup"] != cfg.warmup:
        diffs.append(f"--warmup {state['warmup']} -> {cfg.warmup}")
    if cfg.freeze_bn is not None and frozen_bn(state) != cfg.freeze_bn:  # as resolved, as --warmup
        diffs.append(_changed("freeze_bn", frozen_bn(state), cfg.freeze_bn))
    before = validated_on(cfg.out, state)
    if cfg.val_dir is not None and before is not None and Path(before).resolve() != cfg.val_dir.resolve():
        diffs.append(f"--val {shown(before)} -> {shown(cfg.val_dir)}")
    if diffs:
        raise InputError(
            f"{cfg.out} was trained with other settings: {'; '.join(diffs)}",
            hint="resume with the run's own settings (leave those options out), or start a new --out",
        )


def frozen_bn(state: Mapping[str, Any]) -> bool:
    """Whether the run whose training state is ``state`` froze its encoder's BatchNorm statistics
    (as it resolved ``--freeze-bn``; a state from before the option trained them)."""
    return bool(state.get("freeze_bn", False))


def _changed(name: str, before: Any, now: Any) -> str:
    """``--variant pdseg-t -> pdseg-b``, ``--augment -> --no-augment``: a changed setting as typed."""
    flag = "--" + name.replace("_", "-")
    if isinstance(before, bool) and isinstance(now, bool):
        return f"{flag if before else '--no-' + flag[2:]} -> {flag if now else '--no-' + flag[2:]}"

    def typed(value: Any) -> str:
        return "(default)" if value is None else str(value)

    return f"{flag} {typed(before)} -> {typed(now)}"


def validated_on(out: Path, state: Mapping[str, Any]) -> str | None:
    """The folder the run in ``out`` has validated on, None when it has not validated on any.

    Each session's ``config.json`` record says the folder it resolved (DIS-VD under the data root
    when no --val was given), or null when it did not validate (``--val-every 0``, whatever --val
    said): the latest folder of any session is the one best.pt was chosen on. Without a readable
    record, the ``last.pt`` configuration's --val, unless it said ``--val-every 0``.
    """
    try:
        record = json.loads((out / CONFIG).read_text())
        sessions = [*record.get("earlier_sessions", []), record]
        folders = [session["resolved"]["val_dir"] for session in sessions]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # an older or damaged record
        stored = state["config"]
        found = None if stored.get("val_every") == 0 else stored.get("val_dir")
        return found if isinstance(found, str) else None
    return next((folder for folder in reversed(folders) if isinstance(folder, str)), None)


def refuse_out_in_data(cfg: TrainConfig) -> None:
    """Refuse a new run whose folder is a --train or --val folder or inside one: it would write its
    checkpoints, ``config.json``, ``tensorboard/`` and ``cache/`` among the data.

    Raises:
        InputError: naming the data folder.
    """
    if cfg.out.exists() and not cfg.out.is_dir():  # a file: prepare_run_folder says so, more plainly
        return
    out = cfg.out.resolve()
    given = [("--train", d) for d in cfg.train_dirs] + ([("--val", cfg.val_dir)] if cfg.val_dir else [])
    for option, folder in given:
        data = folder.resolve()
        if out == data or data in out.parents:
            where = "is" if out == data else "is inside"
            raise InputError(
                f"--out {shown(cfg.out)} {where} the {option} folder {shown(folder)}: the run would write "
                "its checkpoints, config.json and sample cache among the data",
                hint="choose a run folder outside the data, e.g. --out runs/NAME",
            )


def refuse_other_runs_cache(cfg: TrainConfig) -> None:
    """Refuse a ``--cache-dir`` that is another run's own ``cache/`` (or inside it): that run drops
    the samples it does not use each time it starts, and this run, reading them, stopped with a
    missing file.

    Raises:
        InputError: naming the run whose cache it is.
    """
    if cfg.cache_dir is None:
        return
    given = cfg.cache_dir.resolve()
    out = cfg.out.resolve()
    for folder in (given, *given.parents):
        run = folder.parent
        if folder.name == CACHE_DIR and run != out and _holds_run(run):
            raise InputError(
                f"--cache-dir {shown(cfg.cache_dir)} is the sample cache of the run {shown(run)}, which "
                "removes the samples it does not use each time it starts",
                hint="give a folder of its own, which runs share safely, e.g. --cache-dir "
                "~/.cache/pdseg/samples; or leave --cache-dir out (the run keeps its own)",
            )


def _holds_run(folder: Path) -> bool:
    """Whether ``folder`` is a training run's: a checkpoint, or the ``config.json`` a start writes."""
    return any((folder / name).is_file() for name in CHECKPOINTS) or _is_run_config(folder / CONFIG)


def _check_same_experiment(ctx: RunContext, state: Mapping[str, Any]) -> None:
    """:func:`refuse_other_settings`, then warn when only the number of processes or the precision
    changed (the run continues, but differently), and say where best.pt starts when validation
    is added to a run that had none."""
    refuse_other_settings(ctx.cfg, state)
    _refuse_other_world_size(ctx, int(state["world_size"]))
    soft = []
    if state["precision"] != ctx.precision:
        change = f"precision {state['precision']} -> {ctx.precision}"
        if ctx.precision == "fp16" and not state.get("scaler"):  # no scale of the run's to go on from
            change += " (a fresh fp16 gradient scaler)"
        elif state["precision"] == "fp16":
            change += " (the fp16 gradient scaler is set aside)"
        soft.append(change)
    threads, now = state.get("threads"), torch.get_num_threads()  # recorded since 2026-12-06
    if threads is not None and threads != now and ctx.device.type == "cpu":
        soft.append(f"{threads} -> {now} compute threads (pass --threads {threads} to keep them)")
    if soft:
        ctx.notice(f"resuming with {'; '.join(soft)}: the result will differ from an uninterrupted run")
    cfg = ctx.cfg
    if cfg.val_dir is not None and cfg.val_every != 0 and validated_on(cfg.out, state) is None:
        # every score best.pt is chosen by comes from this one folder: honest, but only from here on
        ctx.notice(
            f"--val {shown(cfg.val_dir)}: the run has not validated before, so best.pt is chosen among "
            f"the epochs from {int(state['epoch']) + 1} on"
        )


def _refuse_other_world_size(ctx: RunContext, before: int) -> None:
    """Refuse to resume with another number of processes. A step is one batch per process, so the
    run's step count, its learning-rate schedule (decaying to 0 at the planned last step) and its
    place in the interrupted epoch are all counted at the old rate: resumed 2 -> 1, the run ended
    with the learning rate at a third of its peak; 1 -> 2, it trained its last epoch at 0.

    Raises:
        InputError: naming both counts, with the two ways on.
    """
    now = ctx.env.world_size
    if before == now:
        return
    last = shown(ctx.cfg.out / LAST_NAME)
    same = f"with {before} processes (torchrun --nproc-per-node {before})"
    if before == 1:
        same = "without torchrun"
    raise InputError(
        f"{shown(ctx.cfg.out)} was trained with {counted(before, 'process', 'processes')}, and this "
        f"resume has {now}: its learning-rate schedule and its place in the epoch count steps of "
        f"{counted(before, 'process', 'processes')}",
        hint=f"resume {same}, or start a new run from its weights: --init {last} --out another folder",
    )


def _plain_number(value: Any) -> Any:
    return float(f"{value:.6g}") if isinstance(value, float) else value  # 6 significant digits


def read_rows(path: Path) -> list[dict[str, Any]]:
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


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``results.csv`` atomically (columns from the union of the rows, in order)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else _plain_number(row.get(k)) for k in columns})


def write_run_config(
    path: Path, cfg: TrainConfig, resolved: Mapping[str, Any], *, resumed: bool = False
) -> None:
    """``config.json``, atomically: the versions, the configuration as given
    (:meth:`TrainConfig.to_dict`), and what the run resolved from it (device, data, schedule, model).

    A resumed session keeps the earlier sessions' records under ``earlier_sessions`` (oldest
    first): a resume with a larger ``--epochs`` stretches the schedule from its checkpoint on, so
    the run is reproduced only by replaying every session.
    """
    earlier: list[Any] = []
    if resumed and path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):  # unreadable: the new record still describes this session
            previous = None
        if isinstance(previous, dict):
            earlier = [*previous.pop("earlier_sessions", []), previous]
    resolved = dict(resolved)
    if resumed and earlier and resolved.get("init") is None:  # the run's starting weights, still
        resolved["init"] = (earlier[-1].get("resolved") or {}).get("init")
    data = {
        "pdseg_version": __version__,
        "torch_version": str(torch.__version__),
        "train": cfg.to_dict(),
        "resolved": resolved,
        **({"earlier_sessions": earlier} if earlier else {}),
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def open_tensorboard(out: Path, global_step: int) -> SummaryWriter | None:
    """A TensorBoard ``SummaryWriter`` in the run folder, or None without the optional package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    # scalars are logged at the step count after each step, so a resume at step N logs N + 1 first:
    # anything at or after N + 1 comes from the interrupted run past its checkpoint and is hidden
    purge = global_step + 1 if global_step else None
    return SummaryWriter(str(out / TENSORBOARD_DIR), purge_step=purge)
