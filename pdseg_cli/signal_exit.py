"""How a command stopped by a signal ends: by that signal, as a shell expects.

Its status there is 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM, 129 for a
hang-up), and a shell script or loop that runs pdseg stops with it. An exit with status 130
looked to the shell as if pdseg had handled the Ctrl-C itself, and `for f in *.jpg; do pdseg
predict "$f"; done` went on to the next file at each Ctrl-C.

The console script registers :func:`at_exit` first, so that it runs last: after the other exit
handlers (worker pools, temporary files), with only the interpreter's own teardown left, which
the signal cuts short. This module imports nothing of pdseg's.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

_ending: list[int] = []  # the stop signal the process ends by, once a command was stopped by it


def end_by(signum: int) -> None:
    """Have the process end by ``signum`` once Python's exit handlers have run (see the module's
    docstring)."""
    _ending[:] = [signum]


def at_exit() -> None:
    """The console script's first exit handler: end by the signal :func:`end_by` named, if any."""
    if _ending:
        die_by(_ending[0])


def die_by(signum: int) -> NoReturn:
    """End the process now by ``signum``'s default action, its standard streams flushed first.
    Where a signal cannot end it so (Windows; a signal the platform will not deliver), it exits with
    the status a shell would show, 128 + the signal's number."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # lost or closed: nothing more to show
            pass
    if os.name != "nt":
        try:
            signal.signal(signum, signal.SIG_DFL)  # raises outside the main thread: then the exit
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
            os.kill(os.getpid(), signum)
        except (OSError, ValueError):
            pass
    os._exit(128 + int(signum))
