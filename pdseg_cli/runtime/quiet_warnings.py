"""pdseg's own warning filters, set for a block and taken away again without touching the host's.

``warnings.catch_warnings`` copies the process-wide filter list as a block starts and puts the copy
back as it ends. Two threads in such blocks at once put back each other's copies: the one that ends
last restores a list holding the other's filter, for good (models loaded on several threads at once
left an "ignore every warning" filter behind, silencing the host application's warnings). Every
such block of pdseg's goes through here, under one lock, so that they nest and never interleave.

The filters still apply to the whole process while a block runs (Python has no per-thread filters
before 3.14): another thread's warning is ignored (or shown each time) meanwhile, as before. What a
block records is the calling thread's own: other threads' warnings go where they would have gone.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import TextIO

# re-entrant: a block inside another on the same thread (a checkpoint loaded while an export
# records its warnings) must not wait for itself
_LOCK = threading.RLock()


@contextlib.contextmanager
def ignoring_warnings(category: type[Warning] = Warning, message: str = "") -> Iterator[None]:
    """Ignore warnings of ``category`` whose text starts with ``message`` (a regular expression,
    as :func:`warnings.filterwarnings` takes it) for the block; the filter list is as before after it.
    """
    with _LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=message, category=category)
        yield


@contextlib.contextmanager
def recording_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record every warning the calling thread raises in the block, each time it is raised (the
    action ``always``), in the list the block gets, instead of showing it.

    A warning raised meanwhile on another thread is shown as it would have been (through the
    ``warnings.showwarning`` in place before), not swallowed into the list.
    """
    caught: list[warnings.WarningMessage] = []
    owner = threading.get_ident()
    with _LOCK, warnings.catch_warnings():  # restores showwarning as well as the filters
        shown = warnings.showwarning

        def show(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: TextIO | None = None,
            line: str | None = None,
        ) -> None:
            if threading.get_ident() == owner:
                caught.append(warnings.WarningMessage(message, category, filename, lineno, file, line))
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        warnings.simplefilter("always")
        yield caught
