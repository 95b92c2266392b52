"""Termination signals: SIGTERM (``kill``, a job scheduler's time limit) and SIGHUP (the terminal
closed) stop a command the way Ctrl-C does, so its clean-up runs: temporary files of unfinished
atomic writes are removed, and a training run saves a resumable ``last.pt``. Worker processes are
started with the terminal's signals ignored (:func:`terminal_signals_ignored`), so that the main
process alone stops them."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
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


@contextlib.contextmanager
def terminal_signals_ignored() -> Iterator[None]:
    """SIGINT and SIGHUP, the signals a terminal sends its whole process group, ignored for the
    duration (in the main thread; elsewhere signals cannot be set). Worker processes started
    meanwhile inherit the ignored disposition and keep it (Python leaves an inherited SIG_IGN as
    it is), so a Ctrl-C reaches the main process only, which stops them. SIGHUP too, for the
    helper process multiprocessing starts with a pool's queues: it blocks SIGINT and SIGTERM
    itself, but a hang-up killed it and its relaunch printed tracebacks."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    group = [signal.SIGINT, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in group}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
