"""Where a training process stands: its configuration, rank, device and precision, the event sink,
the collectives every rank must call together, and torchrun's process group for the run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pdseg_cli import runtime
from pdseg_cli.engine.train_config import TrainConfig
from pdseg_cli.engine.train_events import CheckpointWriteError, EventHandler, TrainEvent, TrainingDiverged
from pdseg_cli.errors import DataError, InputError, PdsegError, RunFailed, WeightsError

# what agree() rebuilds from another rank's error (by class name); anything else arrives as DataError
_ERRORS: dict[str, type[PdsegError]] = {
    cls.__name__: cls
    for cls in (
        PdsegError,
        InputError,
        DataError,
        WeightsError,
        RunFailed,
        TrainingDiverged,
        CheckpointWriteError,
    )
}


@dataclass(frozen=True)
class RunContext:
    """One training process's place in the run.

    Attributes:
        cfg: the run's configuration (its variant resolved).
        env: the torchrun job (world size 1 without torchrun).
        device: where this process trains.
        device_reason: how the device was chosen, for the start message.
        precision: ``fp32``, ``bf16`` or ``fp16``, resolved.
        workers: DataLoader worker processes, resolved.
        on_event: the event handler; None on every rank but 0.
    """

    cfg: TrainConfig
    env: runtime.Distributed
    device: torch.device
    device_reason: str
    precision: str
    workers: int
    on_event: EventHandler | None

    @property
    def main(self) -> bool:
        """Rank 0: the process that validates, writes files and reports."""
        return self.env.rank == 0

    def emit(self, kind: str, **kw: Any) -> None:
        if self.on_event is not None:
            self.on_event(TrainEvent(kind, **kw))

    def notice(self, message: str) -> None:
        self.emit("notice", values={"message": message})

    def barrier(self) -> None:
        self.env.barrier()

    def agree(self, error: PdsegError | None) -> None:
        """Raise on every rank if any rank had an error (ranks must fail together, not hang)."""
        message = None if error is None else (type(error).__name__, error.message, error.hint)
        errors: list[Any] = [error]
        if self.env.enabled:
            gathered = self.env.all_gather(message)
            errors = [None if e is None else _ERRORS.get(e[0], DataError)(e[1], e[2]) for e in gathered]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise runtime.every_rank_meets(first)  # rank 0 says it, whichever rank had it
