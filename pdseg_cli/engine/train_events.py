"""What a training run reports: progress events, the result, and the errors only training raises."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdseg_cli.errors import RunFailed


@dataclass(frozen=True)
class TrainEvent:
    """Progress reported to ``on_event`` (rank 0 only).

    ``kind`` is one of:

    - ``"prepare"``: decoding/caching samples; ``values``: ``split``, ``done``, ``total``.
    - ``"start"``: the run begins; ``values``: device, precision, world_size, n_train, n_val,
      steps_per_epoch, total_steps, warmup, start_epoch, resumed, out, and more.
    - ``"epoch_start"``: ``epoch`` (1-based), ``step`` (steps already done in it), ``total``.
    - ``"step"``: after each iteration; ``values``: ``loss`` (running mean over the epoch),
      ``lr`` (the encoder's, as used by the step).
    - ``"validate"``: validation begins; ``values``: ``images``.
    - ``"epoch_end"``: ``values`` is the epoch's ``results.csv`` row.
    - ``"notice"``: something the user should know (a warning); ``values``: ``message``.
    - ``"info"``: what the run uses (the teacher, the starting weights); ``values``: ``message``.
    - ``"stopped"``: interrupted; ``values``: ``checkpoint``, ``steps``.
    """

    kind: str
    epoch: int = 0
    step: int = 0
    total: int = 0
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    """What a run ended with.

    Attributes:
        out: the run folder.
        epochs: epochs complete.
        steps: iterations done.
        wall_time_s: training time over all sessions of the run, in seconds.
        interrupted: stopped by Ctrl-C/SIGTERM (``last.pt`` resumes it).
        best_maxf: the best validation maxF (None without validation).
        best_epoch: the epoch of ``best.pt``.
        last: path of ``last.pt``.
        best: path of ``best.pt`` (None when never written).
        rows: every ``results.csv`` row of the run so far.
    """

    out: Path
    epochs: int
    steps: int
    wall_time_s: float
    interrupted: bool
    best_maxf: float | None
    best_epoch: int | None
    last: Path
    best: Path | None
    rows: list[dict[str, Any]]


class TrainingDiverged(RunFailed):
    """The loss became NaN or infinite; the last good ``last.pt`` is kept."""


EventHandler = Callable[[TrainEvent], None]


class CheckpointWriteError(RunFailed):
    """A checkpoint could not be written during training (a full disk); the previous one is intact."""
