"""Termination signals: SIGTERM (``kill``, a job scheduler's time limit) and SIGHUP (the terminal
closed) stop a command the way Ctrl-C does, so its clean-up runs: temporary files of unfinished
atomic writes are removed, and a training run saves a resumable ``last.pt``. Worker processes
leave these signals to the main process, which stops them: they start with them blocked
(:func:`signals_held`) and ignore them from their first act on (:func:`ignore_stop_signals`)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

# set once a command is being stopped (Ctrl-C, or a pool torn down after a failure): a background
# thread that fails as its work is cut short is then not reported (the command line's thread hook)
stopping = threading.Event()

# the signal that stopped the command, where a handler of pdseg's noted it (note_stop); none for a
# Ctrl-C that raised Python's own KeyboardInterrupt
_stopped_by: list[int] = []


def stop_signals() -> tuple[signal.Signals, ...]:
    """SIGTERM, and SIGHUP where the platform has it and the process does not ignore it (``nohup``
    ignores it on purpose: a run started so must outlive its terminal); on Windows SIGBREAK too,
    which Ctrl-Break and a closed console window send."""
    found = [signal.SIGTERM]
    for name in ("SIGHUP", "SIGBREAK"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
            found.append(sig)
    return tuple(found)


def set_stop_handlers(handler: Callable[[int, Any], None]) -> dict[int, Any]:
    """``handler`` for Ctrl-C and :func:`stop_signals`, in the main thread (the only one that may
    set them); the handlers it replaced, to put back. A signal the process ignores stays ignored: a
    ``cmd &`` in a script starts with SIGINT ignored, so that a Ctrl-C meant for the script's
    foreground command does not stop its background jobs too."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, *stop_signals()):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, handler)
    return previous


def note_stop(signum: int) -> None:
    """Note the signal a handler is stopping the command for (:func:`stopped_by`)."""
    _stopped_by[:] = [signum]


def forget_stop() -> None:
    """Forget the signal noted before (:func:`note_stop`): a long-lived process (a notebook, a
    service using the Python API) starts each run anew, so that a Ctrl-C after an earlier run's
    SIGTERM is not named as that SIGTERM."""
    _stopped_by.clear()


def stopped_by() -> int:
    """The signal that stopped the command, the one the process ends by (``signal_exit.end_by``): the
    last one noted by :func:`note_stop`, else SIGINT (a Ctrl-C)."""
    return _stopped_by[0] if _stopped_by else int(signal.SIGINT)


def stop_name() -> str:
    """The name of the signal that stopped the command (:func:`stopped_by`): ``SIGINT`` for a Ctrl-C,
    ``SIGTERM``, ``SIGHUP``."""
    try:
        return signal.Signals(stopped_by()).name
    except ValueError:  # a number the platform has no name for
        return f"signal {stopped_by()}"


def interrupted_line() -> str:
    """The error line of a stopped command: "interrupted" after a Ctrl-C, else with the signal that
    stopped it ("interrupted (SIGTERM)": a kill, or a job scheduler's time limit), so that a log
    tells a person's Ctrl-C from a scheduler's stop."""
    name = stop_name()
    return "interrupted" if name == "SIGINT" else f"interrupted ({name})"


def _interrupt(signum: int, frame: Any) -> None:
    note_stop(signum)
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


def group_signals() -> list[signal.Signals]:
    """The signals sent to every process of a group or job: Ctrl-C and a terminal's hang-up (the
    terminal's foreground process group), SIGTERM (a job scheduler's time limit, ``kill -- -PGID``),
    and on Windows Ctrl-Break and a closed console window (SIGBREAK), which reach every process
    attached to the console."""
    names = ("SIGINT", "SIGHUP", "SIGTERM", "SIGBREAK")
    return [getattr(signal, name) for name in names if hasattr(signal, name)]


@contextlib.contextmanager
def signals_held() -> Iterator[Callable[[], None]]:
    """Start worker processes inside this block, and give each :func:`ignore_stop_signals` as its
    first act (a pool's initializer), so that a Ctrl-C stops the main process alone, which stops them.
    The block gets a function that blocks the signals again, for after code that unblocks them
    (Python 3.11's multiprocessing, as it starts its resource tracker, unblocks SIGINT and SIGTERM).

    * In this process, a Ctrl-C, SIGHUP or SIGTERM that comes meanwhile is held, and acted on as the
      block ends by the handler set before (Ctrl-C: KeyboardInterrupt): not lost, as it was with the
      signals ignored, and not raised half-way through the pool library's start-up.
    * The calling thread blocks them, and processes it starts inherit that mask through fork and
      exec: one cannot be stopped by them (its interpreter printing a KeyboardInterrupt traceback)
      before it ignores them. Threads started meanwhile keep them blocked, and so do their processes
      (a pool's replacement workers); multiprocessing's helper process (the resource tracker) unblocks
      SIGINT and SIGTERM once it ignores them, and a hang-up stays blocked there.

    Handlers are set in the main thread only (elsewhere signals cannot be set); a signal the process
    ignores (a ``cmd &`` in a script ignores SIGINT) stays ignored.
    """
    group = group_signals()
    if not hasattr(signal, "pthread_sigmask"):  # no signal masks: a Ctrl-C meanwhile is lost
        with terminal_signals_ignored():
            yield lambda: None
        return

    def block() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, group)

    held: list[int] = []
    try:
        # counted, not acted on; blocked in this thread, so that the processes it starts inherit
        # them blocked. As the block ends, one that came is delivered, and counted, before the
        # handlers are set back
        with stops_counted() as held, blocked_stop_signals():
            yield block
    finally:
        if held:  # as if it came now: Ctrl-C raises KeyboardInterrupt here, an unhandled SIGTERM ends
            act_on_stop(held[0])


@contextlib.contextmanager
def stops_counted(on_first: Callable[[int], None] | None = None) -> Iterator[list[int]]:
    """Count the stop signals (Ctrl-C, SIGHUP, SIGTERM) that come during the block instead of acting
    on them: the block gets the list they are added to, and decides. For waiting on work that must
    not be broken off at an arbitrary line, where a Ctrl-C raised as an exception could land
    anywhere, even before the wait (in the main thread; elsewhere handlers cannot be set). A
    signal the process ignores stays ignored.

    Args:
        on_first: called (in the main thread, from the handler) with the first signal's number.
    """
    came: list[int] = []

    def count(signum: int, frame: Any) -> None:
        came.append(signum)
        if len(came) == 1 and on_first is not None:
            on_first(signum)

    main = threading.current_thread() is threading.main_thread()
    # one that comes between two of the handlers' changes waits, then finds them all set
    with blocked_stop_signals():
        previous = {sig: signal.signal(sig, count) for sig in group_signals() if main and _restorable(sig)}
    try:
        yield came
    finally:
        with blocked_stop_signals():
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@contextlib.contextmanager
def blocked_stop_signals() -> Iterator[None]:
    """The stop signals (:func:`group_signals`) blocked in this thread for the block, where the
    platform has signal masks; a thread started meanwhile is born with them blocked."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, group_signals())
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def act_on_stop(signum: int) -> None:
    """Act on a stop signal counted earlier as if it came now: under the ``pdseg`` command a
    KeyboardInterrupt (with the signal noted for the error line and the exit status); elsewhere what
    the process's handler for it does."""
    note_stop(signum)
    signal.raise_signal(signum)


def _restorable(sig: signal.Signals) -> bool:
    """Whether ``sig``'s disposition can be set back: Python's own handler or the default (not one
    set from C, which reads as None, nor SIG_IGN, which stays as it is)."""
    handler = signal.getsignal(sig)
    return handler is signal.SIG_DFL or callable(handler)


def ignore_stop_signals() -> None:
    """In a worker process, as its first act: ignore Ctrl-C, SIGHUP and SIGTERM for the rest of its
    life (one that came while it started, held by :func:`signals_held`, is dropped), and unblock
    them. The main process acts on them and stops its workers (the pools pdseg uses kill them with
    SIGKILL, which cannot be ignored)."""
    group = group_signals()
    for sig in group:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, group)
