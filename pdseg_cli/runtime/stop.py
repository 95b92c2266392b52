"""Termination signals: SIGTERM (``kill``, a job scheduler's time limit) and SIGHUP (the terminal
closed) stop a command the way Ctrl-C does, so its clean-up runs: temporary files of unfinished
atomic writes are removed, and a training run saves a resumable ``last.pt``."""

from __future__ import annotations

import signal
import threading
from typing import Any

# set once a command is being stopped (Ctrl-C, or a pool torn down after a failure): a background
# thread that fails as its work is cut short is then not reported (the command line's thread hook)
stopping = threading.Event()


def stop_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM, and SIGHUP where the platform has it and the process does not ignore it (``nohup``
    ignores it on purpose: a run started so must outlive its terminal)."""
    found = [signal.SIGTERM]
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
        found.append(hangup)
    return tuple(found)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def interrupt_on_stop_signals() -> None:
    """Raise KeyboardInterrupt in the main thread on :func:`stop_signals` that still have their
    default action (kill at once). Call from the main thread (the console script's entry)."""
    for sig in stop_signals():
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _interrupt)
