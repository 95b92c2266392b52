"""Atomic file writes: a hidden temporary beside the target, renamed onto it when whole.

Every file pdseg writes (masks, cut-outs, checkpoints, exports, run files) goes through
:func:`atomic_path`, so an interrupted write leaves the old file or none, never half of one.

A temporary is named ``.<name>.<pid>-<host>-<4 random bytes>.pdseg-tmp``: the pid and a short hash
of the host name say who writes it. A process killed outright (SIGKILL, the OOM killer, a power
cut) cannot remove its temporary, so the next write of a checkpoint or an export (files as big as
the model) removes the ones of that file that this host's dead processes left
(:func:`remove_stale_temporaries`); a temporary of a running process, or of another host writing
to a shared folder, is never touched. A killed ``predict`` leaves at most one small hidden
temporary per output being written; those are not looked for on every mask.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

TEMP_SUFFIX = ".pdseg-tmp"  # temporary files start with "." and end with this
_PID_DIGITS = 10  # room kept for the pid where a long name is cut, so the cut is the same for any pid
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_TOKEN = re.compile(rf"\.(\d{{1,{_PID_DIGITS}}})-([0-9a-f]{{6}})-[0-9a-f]{{8}}{re.escape(TEMP_SUFFIX)}")


def name_max(folder: Path) -> int:
    """The longest file name, in bytes, that the file system ``folder`` is (or will be made) on
    takes: ``PC_NAME_MAX`` of the nearest folder that exists, 255 (Linux's NAME_MAX) when it will
    not say (Windows has no ``pathconf``)."""
    existing = next((p for p in (folder, *folder.parents) if _is_dir(p)), None)
    try:
        limit = int(os.pathconf(existing if existing is not None else ".", "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255
    return limit if limit > 0 else 255


def _is_dir(path: Path) -> bool:
    """``path.is_dir()``, False where the file system will not even look the name up (too long)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _prefix(path: Path) -> str:
    """``.<name>``, cut to whole characters and marked ``~`` where the temporary would be longer
    than the file system allows: a long output name would otherwise fail on its temporary, with the
    error naming the output. The cut keeps room for the longest pid, so it is the same in every
    process and a leftover is found by it."""
    prefix = f".{path.name}"
    longest = f".{'9' * _PID_DIGITS}-{_HOST}-{'0' * 8}{TEMP_SUFFIX}"
    size = len(os.fsencode(prefix + longest))
    if size <= 128:  # under every file system's NAME_MAX: no need to ask
        return prefix
    room = name_max(path.parent) - len(os.fsencode(longest))
    if len(os.fsencode(prefix)) <= room:
        return prefix
    kept: list[str] = []
    room -= 1  # the ~
    for char in prefix:  # whole characters only: the cut name stays valid UTF-8
        room -= len(os.fsencode(char))
        if room < 0:
            break
        kept.append(char)
    return "".join(kept) + "~"


def temp_name(path: Path) -> str:
    """The name of a temporary file this process writes ``path`` through, in the same folder so that
    ``os.replace`` is atomic: ``.<name>.<pid>-<host>-<8 hex>.pdseg-tmp``, cut to fit (:func:`_prefix`)."""
    return f"{_prefix(path)}.{os.getpid()}-{_HOST}-{secrets.token_hex(4)}{TEMP_SUFFIX}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, sweep: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is
    left as it was. ``sweep`` first removes what killed writers of ``path`` left
    (:func:`remove_stale_temporaries`): for the few large files (checkpoints, exports), not for each
    of a run's many masks, where it would list the folder once per file.
    """
    path = Path(path)
    if sweep:
        remove_stale_temporaries(path)
    tmp = path.with_name(temp_name(path))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` that killed writers left: named as :func:`temp_name` names
    them, written on this host, by a process that no longer runs.

    Nothing else is touched: other names, folders, links, a running process's temporary, another
    host's. A file that cannot be removed is left.

    Returns:
        The files removed.
    """
    prefix = _prefix(path)
    removed: list[Path] = []
    try:
        with os.scandir(path.parent) as listing:
            entries = [e for e in listing if e.name.startswith(prefix) and e.name.endswith(TEMP_SUFFIX)]
    except OSError:
        return removed
    for entry in entries:
        match = _TOKEN.fullmatch(entry.name, len(prefix))
        if match is None or match.group(2) != _HOST or _process_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host; True when that cannot be told (its file is kept)."""
    if pid <= 0 or pid == os.getpid():
        return True  # 0 and negatives name process groups; this process's own files are in use
    if os.name != "posix":
        return True  # os.kill on Windows terminates the process instead of asking about it
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only whether the process exists
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: another user's process, alive
        return True
    return True
