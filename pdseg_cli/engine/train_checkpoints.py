"""Training checkpoints: ``last.pt`` and ``best.pt`` are ordinary pdseg checkpoints of the EMA weights
(``save_checkpoint``); ``last.pt`` also carries the whole training state under ``"train_state"``."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pdseg_cli.engine.train_events import CheckpointWriteError
from pdseg_cli.errors import (
    InputError,
    WeightsError,
    counted,
    first_line,
    refused_by_permissions,
    shell_quote,
)
from pdseg_cli.model import save_checkpoint
from pdseg_cli.model.build import checkpoint_payload, write_payload

STATE_VERSION = 1  # layout of last.pt's "train_state"
LAST_NAME = "last.pt"  # the resume point, which a failed write leaves as it was


def write_checkpoint(
    path: Path,
    model: nn.Module,
    train_size: int | None,
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
        # the checkpoint's own payload plus the state (which holds tensors, not plain values), in
        # one write and one rename
        payload = checkpoint_payload(model, train_size=train_size, **provenance)
        payload["train_state"] = train_state
        write_payload(payload, path)
    except OSError as exc:  # write_payload turns torch's full-disk RuntimeError into ENOSPC
        # the reason alone: exc's own message names the file, which the line below names already
        full = exc.errno == errno.ENOSPC  # torch's failed zip write is reported as ENOSPC too
        why = "the disk is probably full" if full else os.strerror(exc.errno) if exc.errno else None
        resume_point = path.with_name(LAST_NAME).is_file()
        raise CheckpointWriteError(
            f"cannot write {path} ({why or first_line(exc)}); "
            + (
                "the previous checkpoint is intact"
                if resume_point
                else "no resume point (last.pt) has been written yet"
            ),
            hint=("check the permissions of --out" if refused_by_permissions(exc) else "free some space")
            + " (or move --out elsewhere) and "
            + (
                "continue with --resume"
                if resume_point
                # a best.pt without last.pt makes a plain start refuse the folder (train_folder.existing_run)
                else "start the run again"
                + (" with --overwrite" if path.with_name("best.pt").is_file() else "")
            ),
        ) from None


def read_train_state(path: Path) -> dict[str, Any]:
    """``last.pt``'s training state (the layout :data:`STATE_VERSION` names).

    Raises:
        InputError: the file does not exist.
        WeightsError: the file is unreadable or holds no training state.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        best = path.with_name("best.pt")
        if best.is_file():  # stopped after saving best.pt, before its first last.pt
            raise InputError(
                f"nothing to resume: {path} does not exist, only {best} (the run stopped before its "
                "first resumable save)",
                hint="--overwrite starts it again (keep best.pt elsewhere first if you want it); or "
                "choose another --out",
            ) from None
        raise InputError(
            f"nothing to resume: {path} does not exist (the run saved no checkpoint yet)",
            hint="start it again without --resume: with no checkpoint saved, it begins at its first step",
        ) from None
    except Exception as exc:  # truncated zip, foreign pickle, ...
        if "unsupported global" in str(exc).lower():  # a pickle that would run code: not damage
            raise WeightsError(
                f"{path} holds pickled Python objects, which a safe load refuses: it is not a pdseg "
                "training state (pdseg never runs code from a checkpoint)",
                hint="resume only a last.pt that pdseg train wrote; or start the run again in another --out",
            ) from None
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


def resume_summary(path: Path) -> str | None:
    """Where the training state in ``path`` (a run's ``last.pt``) stands and how to go on, for
    ``pdseg info``; None for a checkpoint without one (``best.pt``, the bundled weights)."""
    parts = resume_parts(path)
    return None if parts is None else "; ".join(parts)


def saved_config(path: Path) -> dict[str, Any] | None:
    """The options of the session that wrote the training state in ``path`` (``last.pt``), or None
    where there is none. ``config.json`` is written as a session starts: one that stopped before
    its first save (a kill, a full disk) left there options that trained nothing."""
    state = _peek_state(path)
    config = None if state is None else state.get("config")
    return config if isinstance(config, dict) else None


def finished_state(path: Path) -> dict[str, Any] | None:
    """The training state of the run whose ``last.pt`` is ``path`` when it has finished all its
    epochs (a resume without a larger ``--epochs`` has nothing to train), else None."""
    state = _peek_state(path)
    if state is None or int(state["step_in_epoch"]) != 0 or int(state["epoch"]) < int(state["epochs"]):
        return None
    return state


def recorded_threads(path: Path, device: str | None = None) -> int | None:
    """The compute threads the run whose ``last.pt`` is ``path`` trained with, where it computes
    on the CPU (``device``: the one given for the resume, else the run's own); None where the
    file has no training state, predates the record (2026-12-06), or the run is on a GPU. On a
    CPU the order of the sums, so the weights a seed gives, follows the thread count: a resume
    keeps it to go on exactly."""
    from pdseg_cli import runtime

    state = _peek_state(path)
    if state is None:
        return None
    threads = state.get("threads")
    where = device or state.get("config", {}).get("device", "auto")
    if not isinstance(threads, int) or threads < 1 or runtime.resolve_device(where).device.type != "cpu":
        return None
    return threads


def _peek_state(path: Path) -> dict[str, Any] | None:
    """The training state in ``path``, memory-mapped (the optimiser state is not read into
    memory); None where there is none or it cannot be read (the caller reads the file itself)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    state = payload.get("train_state") if isinstance(payload, dict) else None
    return state if isinstance(state, dict) and state.get("version") == STATE_VERSION else None


def resume_command(folder: Path) -> str:
    """The command that goes on with the run in ``folder``, quoted for the shell (``--out 'my run'``)."""
    return f"pdseg train --resume --out {shell_quote(str(folder))}"


def resume_parts(path: Path) -> tuple[str, str] | None:
    """``(where it stands, the command to go on)`` for the training state in ``path``, e.g.
    ``("stopped in epoch 2 of 4, at step 300 of 518", "to go on: pdseg train --resume --out
    runs/x")``; None for a checkpoint without one."""
    state = _peek_state(path)
    if state is None:
        return None
    step, total = int(state["global_step"]), int(state["total_steps"])
    epoch, in_epoch, epochs = int(state["epoch"]), int(state["step_in_epoch"]), int(state["epochs"])
    folder = path.parent
    if in_epoch == 0 and epoch >= epochs:  # saved after the last epoch's end-of-epoch work
        return (
            f"finished: {counted(epochs, 'epoch')}, {counted(total, 'step')}",
            f"to train longer: {resume_command(folder)} --epochs N (N > {epochs})",
        )
    # "epoch" counts the epochs complete; a stop inside one also records its steps so far
    where = f"after epoch {epoch} of {epochs}" if in_epoch == 0 else f"in epoch {epoch + 1} of {epochs}"
    return f"stopped {where}, at step {step} of {total}", f"to go on: {resume_command(folder)}"
