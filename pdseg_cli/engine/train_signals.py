"""Signals during training: Ctrl-C/SIGTERM/SIGHUP stop the run at a step boundary with a resumable
``last.pt``, and DataLoader workers leave them to the main process."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

from pdseg_cli.runtime.stop import ignore_stop_signals, note_stop, set_stop_handlers


class StopFlag:
    """Set by SIGINT/SIGTERM/SIGHUP; training stops at the next step boundary and saves ``last.pt``.

    Args:
        notify: says the stop to the user.
        echo_seconds: a second SIGINT this soon after the first is not taken as a second Ctrl-C. Under
            torchrun (``ECHO_SECONDS``) each worker gets the terminal's SIGINT and then torchrun's
            forwarded copy of it; a process of its own gets one per press, so 0 there: a quick
            double press aborts, as the notice promises.
    """

    ECHO_SECONDS = 2.0

    def __init__(self, notify: Callable[[str], None], echo_seconds: float = 0.0) -> None:
        self.requested = False
        self.echo_seconds = echo_seconds
        self._first = 0.0
        self._notify = notify
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            if signum == signal.SIGINT and time.monotonic() - self._first > self.echo_seconds:
                note_stop(signum)
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
            return
        note_stop(signum)
        self.requested, self._first = True, time.monotonic()
        # a second Ctrl-C aborts; a job scheduler's SIGTERM has no "again" to offer
        wait = f", {self.echo_seconds:g} s or more after the first," if self.echo_seconds else ""
        again = f" (Ctrl-C again{wait} aborts)" if signum == signal.SIGINT else ""
        self._notify(f"stopping after this step to save a resumable checkpoint{again}")

    def __enter__(self) -> StopFlag:
        self._previous = set_stop_handlers(self._handle)  # one ignored (nohup, `cmd &`) stays so
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def worker_init(worker_id: int) -> None:
    """DataLoader workers: Ctrl-C, SIGTERM and SIGHUP are left to the main process (which saves);
    a job scheduler's SIGTERM or a closed terminal reaches the whole group, and killed workers made
    the main process fail with a traceback instead of saving.

    OpenCV's thread count is set in the parent before the fork (``make_loader``): calling
    ``cv2.setNumThreads`` inside a forked child waits for pool threads that did not survive the
    fork and hangs the worker for ever. A spawned worker (macOS and Windows start workers so)
    inherits nothing, and would use every core for OpenCV beside the training step: it sets one
    thread itself, safely, in its fresh process. torch already runs each worker on one thread.
    """
    ignore_stop_signals()
    import multiprocessing

    if multiprocessing.get_start_method(allow_none=True) in ("spawn", "forkserver"):
        import cv2

        cv2.setNumThreads(1)
