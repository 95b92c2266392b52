"""Starting the training data loader's worker processes, where processes may be spawned.

On Linux workers are forked: they start in milliseconds and share the parent's memory. On macOS
and Windows they are spawned: each starts a fresh interpreter, imports torch (seconds), and runs
the calling script's top level again before it unpickles its dataset. Three things follow, each
handled here:

- a Ctrl-C while they start must not land inside the loader's start-up (:func:`start_workers`);
- a script that calls ``train()`` outside ``if __name__ == "__main__":`` would call it again in
  every worker: refused before any worker starts (:func:`unguarded_main_call`), and in a worker
  as it starts (:func:`refuse_in_a_starting_worker`) where the first check cannot see the call;
- a worker that dies as it starts leaves CPython's spawning parent writing the rest of the
  worker's data into a pipe that the parent itself holds open, for ever: hence the first check.
"""

from __future__ import annotations

import ast
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

from pdseg_cli.errors import InputError, PdsegError, RunFailed

_GUARD_HINT = (
    'put the code that calls train() under `if __name__ == "__main__":`, as multiprocessing needs '
    "where processes are spawned (macOS, Windows); or pass --workers 0 (TrainConfig.workers=0)"
)


def spawns() -> bool:
    """Whether worker processes start by spawn or forkserver (a fresh interpreter each) here."""
    return multiprocessing.get_start_method() != "fork"


def start_workers(loader: Any, workers: int) -> None:
    """Start ``loader``'s worker processes now (persistent: they serve every epoch).

    With the stop signals held, as eval starts its pool (:func:`pdseg_cli.runtime.stop.signals_held`):
    where workers are spawned, starting them takes seconds, and a Ctrl-C then, raised inside the
    loader's start-up, left it half-built: its workers, which ignore SIGTERM
    (:func:`~pdseg_cli.engine.train_signals.worker_init`), were never told to stop, and the process
    waited on them for ever at exit. Held, the Ctrl-C is acted on once the loader holds its
    workers, and its shutdown ends them. Any other failure there kills the workers started so far
    (SIGKILL, which they cannot ignore).

    Args:
        loader: a ``torch.utils.data.DataLoader`` with ``persistent_workers``.
        workers: its worker count (for the messages).

    Raises:
        InputError: workers would be spawned, and the ``__main__`` script calls ``train()`` outside
            ``if __name__ == "__main__":``.
        RunFailed: a worker could not be started.
    """
    from pdseg_cli.runtime.stop import signals_held

    if spawns() and (where := unguarded_main_call()):
        raise InputError(
            f'{where} calls pdseg_cli.train outside `if __name__ == "__main__":`: each of the {workers} '
            "data-loading worker processes would run it again as it starts",
            hint=_GUARD_HINT,
        )
    before = set(multiprocessing.active_children())
    try:
        with signals_held() as block_again:
            if os.name == "posix" and spawns():
                from multiprocessing import resource_tracker

                resource_tracker.ensure_running()  # its start unblocks SIGINT and SIGTERM (Python 3.11)
                block_again()
            iter(loader)
    except Exception as exc:
        for child in multiprocessing.active_children():
            if child not in before:
                child.kill()
        if isinstance(exc, PdsegError):
            raise
        raise RunFailed(
            f"the {workers} data-loading worker processes could not start ({type(exc).__name__}: {exc})",
            hint="--workers 0 loads in the training process",
        ) from exc


def refuse_in_a_starting_worker() -> None:
    """Refuse ``train()`` in a worker process that is starting up: it runs the calling script's top
    level again, and a call there met the first call's lock on ``--out``, saying that another
    process used the folder, while the first call waited for ever on the worker.

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
    """``script.py:line`` of the call that led here from the top level of the ``__main__`` script,
    where that line is outside every ``if __name__ == "__main__":`` block; else None (the pdseg
    command, ``python -m``, a notebook, a guarded call, or a script that cannot be read)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path or not str(path).endswith(".py"):
        return None
    frame = sys._getframe(1)
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
        if isinstance(node, ast.If) and _is_main_test(node.test):
            if node.lineno <= line <= (node.end_lineno or node.lineno):
                return None
    return f"{path}:{line}"


def _is_main_test(test: ast.expr) -> bool:
    """``__name__ == "__main__"``, either way round."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    values = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and values == ["__main__"]
