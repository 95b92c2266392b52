"""What ``pdseg train`` shows: sample decoding, a progress bar per epoch (loss, lr, it/s, ETA), one
line per finished epoch on stderr, and the epoch table on stdout at the end."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pdseg_cli import ui
from pdseg_cli.errors import counted

if TYPE_CHECKING:
    from pdseg_cli.engine.train_events import TrainEvent, TrainResult


class TrainingView:
    """Turns ``pdseg_cli.engine.train.TrainEvent`` objects into terminal output.

    Pass the instance as ``on_event``; call :meth:`close` when training returns or fails (it
    closes any open progress bar).
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._advance: Callable[..., None] | None = None
        self._bar: str | None = None  # what the open bar counts
        self._epochs = 0
        self._out = ""
        # this session's epochs as (seconds, steps run), for the time left; and where the open
        # epoch started (a resumed one runs only its remaining steps)
        self._paces: list[tuple[float, int]] = []
        self._epoch_first, self._steps_per_epoch = 0, 0
        self._epoch_clock = 0.0
        # the variant and size the run resolved (--init's, or the defaults), once it started: an
        # error after the start names them, not the options as typed
        self.started: tuple[str, int] | None = None
        # lines about settings the command chose, said once training starts: a run refused before
        # that (other data on --resume) says only why
        self.at_start: list[str] = []

    def __call__(self, event: TrainEvent) -> None:
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None:
            handler(event)

    def close(self) -> None:
        """Close the open progress bar, if any."""
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self._advance, self._bar = None, None

    def _open(
        self,
        key: str,
        description: str,
        total: int,
        unit: str,
        fields: tuple[str, ...] = (),
        already: int = 0,
    ) -> None:
        self.close()
        self._advance = self._stack.enter_context(
            ui.progress_bar(description, total, unit=unit, fields=fields, already=already)
        )
        self._bar = key

    # -- events ----------------------------------------------------------------------------------

    def _on_prepare(self, event: TrainEvent) -> None:
        v = event.values
        key = f"prepare-{v['split']}"
        if self._bar != key:
            self._open(key, f"reading {v['split']}", v["total"], unit="img")
        assert self._advance is not None
        self._advance()
        if v["done"] >= v["total"]:
            self.close()

    def _on_start(self, event: TrainEvent) -> None:
        v = event.values
        self._epochs, self._out = v["epochs"], v["out"]
        self.started = (v["variant"], v["size"])
        val = f", validating on {v['n_val']} ({v['val_dir']})" if v["val_dir"] else ", no validation"
        ui.info(f"{v['variant']}: training on {counted(v['n_train'], 'image')} ({v['train_dir']}){val}")
        procs = f" x {v['world_size']} processes" if v["world_size"] > 1 else ""
        ui.info(
            f"device {v['device']}{procs} · precision {v['precision']} · size {v['size']}, "
            f"batch {v['batch']}, lr {v['lr']:g} · {counted(v['steps_per_epoch'], 'step')}/epoch, "
            f"{v['total_steps']} in all, "
            f"warmup {v['warmup']} · run folder {v['out']}"
        )
        if v["left_out"]:
            # under torchrun a step takes --batch images in each process
            divides = "--batch" if v["world_size"] == 1 else f"--batch x {v['world_size']} processes"
            ui.info(
                f"each epoch leaves out {v['left_out']} of the {counted(v['n_train'], 'image')} (they do "
                "not fill a last batch); the order is reshuffled every epoch, so a different few each "
                f"time (a {divides} that divides the count keeps them all)"
            )
        if v["batch_used"] < v["batch"]:
            ui.info(
                f"--batch {v['batch']} is more than the {counted(v['batch_used'], 'image')} per process: "
                f"each step takes {'it' if v['batch_used'] == 1 else 'all ' + str(v['batch_used'])}"
            )
        if v["resumed"] and v["start_epoch"] <= v["epochs"]:  # a finished run said so already
            done = f"{v['global_step']} of {counted(v['total_steps'], 'step')} done"
            epoch = f"epoch {v['start_epoch']}/{v['epochs']}"
            if v["start_step"]:  # saved within an epoch (--save-every-steps, a Ctrl-C)
                where = f"in {epoch} after its step {v['start_step']} of {v['steps_per_epoch']}"
            else:
                where = f"at the start of {epoch}"
            ui.info(f"resuming {where} ({done})")
        for line in self.at_start:
            ui.info(line)

    def _on_epoch_start(self, event: TrainEvent) -> None:
        self._epoch_first, self._steps_per_epoch = event.step, event.total
        self._epoch_clock = time.monotonic()  # this session's part of the epoch (a resumed one's too)
        # a resumed epoch's steps done before: in the count, not in the rate
        description = f"epoch {event.epoch}/{self._epochs}"
        self._open("epoch", description, event.total, unit="it", fields=("loss", "lr"), already=event.step)

    def _on_step(self, event: TrainEvent) -> None:
        if self._advance is not None and self._bar == "epoch":
            self._advance(loss=event.values["loss"], lr=event.values["lr"])

    def _on_validate(self, event: TrainEvent) -> None:
        self.close()

    def _on_epoch_end(self, event: TrainEvent) -> None:
        self.close()
        v = event.values
        parts = [f"epoch {event.epoch}/{self._epochs}", f"loss {v['loss']:.4f}"]
        if v.get("val_maxf") is not None:
            parts.append(
                f"val maxF {v['val_maxf']:.4f} MAE {v['val_mae']:.4f}" + (" (best)" if v["best"] else "")
            )
        parts.append(ui.duration(v["epoch_time_s"]))
        # not epoch_time_s: a resumed epoch's counts its earlier session's seconds too
        seconds = time.monotonic() - self._epoch_clock
        self._paces.append((seconds, max(1, self._steps_per_epoch - self._epoch_first)))
        left = self._epochs - event.epoch
        if left > 0:
            parts.append(f"about {ui.duration(left * self._steps_per_epoch * self._step_seconds())} left")
        ui.info(" · ".join(parts))

    def _step_seconds(self) -> float:
        """Seconds per step at this session's pace: the median of its epochs' after the first,
        which also pays for starting (workers, the first decode into the cache, the allocator's
        first passes). Each epoch's validation and checkpoint writes count in its pace; with
        ``--val-every K`` above 1 the median follows the epochs that do not validate."""
        return statistics.median(seconds / steps for seconds, steps in self._paces[1:] or self._paces)

    def _on_notice(self, event: TrainEvent) -> None:
        ui.warn(event.values["message"])

    def _on_info(self, event: TrainEvent) -> None:
        ui.info(event.values["message"])

    def _on_stopped(self, event: TrainEvent) -> None:
        self.close()
        ui.info(f"saved {event.values['checkpoint']} at step {event.values['steps']}")


def summary(result: TrainResult, resume_command: str) -> None:
    """The epoch table (stdout) and where the weights are (stderr).

    Args:
        result: a ``pdseg_cli.engine.train.TrainResult``.
        resume_command: the command that continues the run, shown when it was interrupted.
    """
    if result.rows:  # per-level losses are in results.csv
        # the validation columns only where some epoch was validated: empty columns say nothing
        validated = any(_num(row.get("val_maxf")) for row in result.rows)
        columns = ["epoch", "loss", "lr", *(["val maxF", "val MAE"] if validated else []), "time"]
        rows = [
            [
                row["epoch"],
                _num(row["loss"]),
                _num(row["lr"], ".3g"),
                *([_num(row.get("val_maxf")), _num(row.get("val_mae"))] if validated else []),
                ui.duration(row["epoch_time_s"]),
            ]
            for row in result.rows
        ]
        ui.table(f"pdseg train · {result.out}", columns, rows, numeric=[True] * len(columns))
    if result.interrupted:
        ui.info(f"interrupted; continue with: {resume_command}", essential=True)
        return
    if result.best is not None:
        ui.info(f"best val maxF {result.best_maxf:.4f} at epoch {result.best_epoch}: {result.best}")
    ui.info(
        f"{counted(result.epochs, 'epoch')}, {counted(result.steps, 'step')}, "
        f"{ui.duration(result.wall_time_s)} of training and validation; last: {result.last}"
    )


def _num(value: Any, spec: str = ".4f") -> str:
    return "" if value is None or value == "" else format(float(value), spec)
