"""Starting the training data loader's worker processes, where processes may be spawned.

On Linux workers are forked: they start in milliseconds and share the parent's memory. On macOS
and Windows (and Linux from Python 3.14, whose default is forkserver) each starts a fresh
interpreter, imports torch (seconds), and runs the calling script's top level again before it
reads its dataset. What follows, each handled here:

- a Ctrl-C while they start must not land inside the loader's start-up, which it leaves
  half-built, with workers that nothing stops (:func:`start_workers`);
- a worker that ends as it starts leaves CPython's starting parent writing the rest of the
  worker's data into a pipe that the parent itself holds open, for ever: the start runs in a
  thread of its own, so that the command stays stoppable, and gives up after a while;
- a script that calls ``train()`` outside ``if __name__ == "__main__":`` would call it again in
  every worker (and so end it as it starts): refused before any worker starts
  (:func:`unguarded_main_call`), and in a worker as it starts (:func:`refuse_in_a_starting_worker`)
  where the first check cannot see the call.
"""

from __future__ import annotations

import ast
import atexit
import multiprocessing
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from pdseg_cli.errors import InputError, PdsegError, RunFailed, counted

_GUARD_HINT = (
    'put the code that calls train() under `if __name__ == "__main__":`, as multiprocessing needs '
    "where processes are spawned (macOS, Windows); or pass --workers 0 (TrainConfig.workers=0)"
)
# A spawned worker's start waits for it to import the calling script (torch with it): seconds each,
# a minute for several on a slow laptop. Far past that, a worker ended as it started.
START_TIMEOUT_S = 180.0
# After a stop, how long the start may go on so that it ends whole (its workers then stopped by the
# loader); past that, the workers are killed where they are. Under the 10 s `docker stop` (and
# systemd, Kubernetes) give before SIGKILL, so a stopped container still exits by its own hand.
STOP_GRACE_S = 8.0


def spawns() -> bool:
    """Whether worker processes start afresh (spawn or forkserver) rather than forked, without
    fixing the start method as ``multiprocessing.get_start_method()`` does."""
    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    return method != "fork"


def start_workers(loader: Any, workers: int, on_stopping: Callable[[int], None] | None = None) -> None:
    """Start ``loader``'s worker processes now (persistent: they serve every epoch).

    A Ctrl-C (or SIGTERM, SIGHUP) while they start must not break the loader's start-up off half
    way: that left workers, which ignore those signals (:func:`~pdseg_cli.engine.train_signals.worker_init`),
    that nothing stopped, and the process waited on them for ever at exit. Forked workers start in
    milliseconds, with the signals held (:func:`pdseg_cli.runtime.stop.signals_held`, as eval's
    pool). Spawned ones are started by a thread of its own, born with the signals blocked (the
    workers inherit that), while this thread waits and counts stop signals
    (:func:`pdseg_cli.runtime.stop.stops_counted`): a stop is acted on once the start has ended, or
    at a second stop, or :data:`STOP_GRACE_S` after the first; the workers started are killed
    (SIGKILL) where the stop raises, where the start fails or has no end within
    :data:`START_TIMEOUT_S`, and at exit should anything still hold them then. A stop handler of
    the caller's own that only notes the signal lets the start go on.

    Args:
        loader: a ``torch.utils.data.DataLoader`` with ``persistent_workers``.
        workers: its worker count (for the messages).
        on_stopping: called with the signal's number when a first stop comes while spawned workers
            start.

    Raises:
        InputError: workers would be spawned, and the ``__main__`` script calls ``train()`` outside
            ``if __name__ == "__main__":``.
        RunFailed: the workers could not be started.
        KeyboardInterrupt: a stop signal came meanwhile (under the ``pdseg`` command).
    """
    before = set(multiprocessing.active_children())
    named = counted(workers, "data-loading worker process", "data-loading worker processes")
    try:
        if not spawns():
            from pdseg_cli.runtime.stop import signals_held

            with signals_held():
                iter(loader)
        else:
            if where := unguarded_main_call():
                raise InputError(
                    f'{where} calls pdseg_cli.train outside `if __name__ == "__main__":`: each of the '
                    f"{named} would run it again as it starts",
                    hint=_GUARD_HINT,
                )
            _start_in_a_thread(loader, named, on_stopping, before)
    except (PdsegError, KeyboardInterrupt):
        raise
    except Exception as exc:
        _kill_workers(before)
        raise RunFailed(
            f"the {named} could not start ({type(exc).__name__}: {exc})",
            hint="--workers 0 loads in the training process",
        ) from exc
    finally:
        _kill_at_exit(_workers(before))


def _start_in_a_thread(
    loader: Any, named: str, on_stopping: Callable[[int], None] | None, before: set[Any]
) -> None:
    from pdseg_cli.runtime.stop import act_on_stop, blocked_stop_signals, group_signals, stops_counted

    group = group_signals()
    masks = hasattr(signal, "pthread_sigmask")
    done, given_up = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def start() -> None:
        try:
            if os.name == "posix":
                from multiprocessing import resource_tracker

                resource_tracker.ensure_running()
                if masks:  # the tracker's start unblocks SIGINT and SIGTERM (Python 3.11)
                    signal.pthread_sigmask(signal.SIG_BLOCK, group)
            iter(loader)
        except BaseException as exc:
            failed.append(exc)
        finally:
            done.set()
            if given_up.is_set():  # workers it started after the command stopped waiting for it
                _kill_workers(before)

    thread = threading.Thread(target=start, name="pdseg-start-workers", daemon=True)
    with stops_counted(on_first=on_stopping) as stops:
        with blocked_stop_signals():
            thread.start()  # born with the signals blocked: so is every worker it starts
        deadline = time.monotonic() + START_TIMEOUT_S
        first_stop: float | None = None
        while not done.wait(0.2):
            now = time.monotonic()
            if stops and first_stop is None:
                first_stop = now
            if (
                len(stops) > 1
                or (first_stop is not None and now - first_stop > STOP_GRACE_S)
                or now > deadline
            ):
                given_up.set()  # the start thread, stuck writing to a worker that ended, stays so
                break

    def give_up() -> None:
        given_up.set()
        _kill_workers(before)

    if stops:
        try:
            act_on_stop(stops[0])  # a KeyboardInterrupt under the pdseg command
        except BaseException:
            give_up()
            raise
        # a handler of the caller's own that only noted it (a flag): the start goes on as it is
    if failed:
        give_up()
        raise failed[0]
    if given_up.is_set():
        give_up()
        within = "" if stops else f" within {START_TIMEOUT_S:.0f} s"
        raise RunFailed(
            f"the {named} did not start{within}: one ended as it started (its error is above, if any)",
            hint="--workers 0 loads in the training process",
        )


def _workers(before: set[Any]) -> set[Any]:
    """This process's children started since ``before``: the loader's workers. (A process that a
    caller's own thread starts in those seconds is among them: started processes keep nothing that
    tells whose they are, multiprocessing drops their target.)"""
    return set(multiprocessing.active_children()) - before


def _kill_workers(before: set[Any]) -> None:
    for worker in _workers(before):
        worker.kill()


_AT_EXIT: weakref.WeakSet[Any] = weakref.WeakSet()
_AT_EXIT_REGISTERED = threading.Event()


def _kill_at_exit(started: set[Any]) -> None:
    """Kill these workers at exit if they still run then. They ignore SIGTERM, which is all that
    multiprocessing's own exit handler sends its daemon processes before it waits on them, for
    ever; the loader's shutdown normally ends them first, but not while anything (an exception's
    traceback, a notebook's last error) still holds the loader. Registered (once) after
    multiprocessing's handler, this one runs before it."""
    if started and not _AT_EXIT_REGISTERED.is_set():
        _AT_EXIT_REGISTERED.set()
        atexit.register(_kill_left)
    _AT_EXIT.update(started)


def _kill_left() -> None:
    for worker in list(_AT_EXIT):
        if worker.is_alive():
            worker.kill()


def refuse_in_a_starting_worker() -> None:
    """Refuse ``train()`` in a worker process that is starting up: it runs the calling script's top
    level again, and a call there met the first call's lock on ``--out``, saying that another
    process used the folder, while the first call waited on the worker.

    Raises:
        InputError: this process is a worker starting up.
    """
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise InputError(
            "pdseg_cli.train was called again by a data-loading worker process as it started: the "
            "script calls it at its top level",
            hint=_GUARD_HINT,
        )


def unguarded_main_call() -> str | None:
    """``script:line`` of the call that led here from the top level of the ``__main__`` script,
    where that line is outside every ``if`` on ``__name__``; else None: the pdseg command (guarded),
    a package's ``__main__.py`` (``python -m pkg``, which spawned workers do not run again), a
    notebook or ``python -c`` (no file), a guarded call, or a script that cannot be read."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec = getattr(main, "__spec__", None)
    if main is None or not path:
        return None
    if spec is not None and (spec.name == "__main__" or spec.name.endswith(".__main__")):
        return None
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and not (frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:
        return None
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None
    line = frame.f_lineno
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _tests_the_name(node.test):
            if node.lineno <= line <= (node.end_lineno or node.lineno):
                return None
    return f"{path}:{line}"


def _tests_the_name(test: ast.expr) -> bool:
    """An ``if`` whose test reads ``__name__`` (``== "__main__"``, ``!=`` with the call under its
    ``else``, ``and`` more conditions): taken as a guard; a wrong one is refused in the worker."""
    return any(isinstance(node, ast.Name) and node.id == "__name__" for node in ast.walk(test))
