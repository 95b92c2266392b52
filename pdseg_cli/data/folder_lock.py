"""One pdseg process at a time in a folder a run owns: a training run's ``--out``, eval's
``--save-preds``.

Two runs in one such folder spoil each other without a word: a second ``pdseg train`` into a live
run's ``--out`` (``--overwrite``, ``--resume``, or the same command twice) deleted or mixed its
files, and two ``pdseg eval --save-preds DIR`` scored each other's maps. The lock is an advisory
``flock`` on ``.pdseg-lock`` in the folder: the system drops it when its process ends in any way
(``kill -9`` included), so no stale lock ever needs clearing. Where ``flock`` is missing (Windows)
there is no lock. ``pdseg predict`` takes none: job arrays rightly write one ``--out`` from several
processes, each with its own inputs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from pdseg_cli.data.atomic import writer_token, written_by_dead
from pdseg_cli.errors import InputError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".pdseg-lock"

# the lock files this process holds open. A forked child (a DataLoader worker) shares each open
# file, and with it the flock: killed with -9, the run's lock outlived it until its workers had
# exited, and a scheduler's requeue was refused, naming a process that was gone. The child closes
# its copies at once; the parent's lock is untouched (flock goes with the last copy closed).
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_close_in_child)


@contextlib.contextmanager
def folder_lock(folder: Path, option: str) -> Iterator[None]:
    """Hold ``folder``'s lock for the block (the folder is made if missing, and what was made is
    removed again if the block leaves it empty).

    Args:
        folder: the folder the run writes.
        option: how the user named it, for the message (``--out runs/a``).

    Raises:
        InputError: another live pdseg process holds it, named by its process id and host.
    """
    # the folders this makes (``runs/`` too, for ``--out runs/a``), deepest first, to remove again
    made = [f for f in (folder, *folder.parents) if not f.exists()]
    try:
        if fcntl is None:
            raise OSError("no flock here")
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a file of that name, no permission...: the command's own checks say it better
        yield
        return
    path = folder / LOCK_NAME
    fd = None
    try:
        fd = _acquire(path, option)
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)  # ours: a process that opened it meanwhile finds it gone (see _acquire)
            _HELD.discard(fd)
            os.close(fd)
        for each in made:  # only while empty: a refused or interrupted start leaves nothing behind
            try:
                each.rmdir()
            except OSError:
                break


def _acquire(path: Path, option: str) -> int | None:
    """The open, locked lock file (None where the file system takes no ``flock``). A file unlinked
    by its holder as this process opened it would be locked in vain (the next one makes a new
    file): locked, it must still be the one at ``path``."""
    assert fcntl is not None
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder went with its last holder as this one looked: again
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                # a file system without flock (NFS without lockd: ENOLCK; Lustre: ENOSYS): no
                # lock there, as on Windows, rather than every run refused
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
                return None
            holder = _read_holder(fd)
            os.close(fd)
            raise InputError(
                f"{option} is in use by another pdseg process{holder}: two runs in one folder "
                "spoil each other's files",
                hint="wait for that run to end (or stop it), or choose another folder",
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            # the host's name to say; the writer token (pid, host and pid namespace) to tell whether
            # that process has ended (atomic.written_by_dead)
            os.write(fd, f"{os.getpid()} {socket.gethostname()} {writer_token()}\n".encode())
            _HELD.add(fd)
            return fd
        os.close(fd)
    raise InputError(f"{option}: its lock file {path} keeps changing", hint="run the command again")


def _read_holder(fd: int) -> str:
    """`` (process 123 on host)`` from the holder's lock file, or nothing when unreadable. A holder
    of this host (and pid namespace) that has ended is said so: a process it forked and that has
    not closed the file yet holds the lock a moment longer."""
    try:
        words = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        return ""
    if len(words) not in (2, 3):
        return ""
    pid, host = words[:2]
    if len(words) == 3 and written_by_dead(words[2]):
        return (
            f" (process {pid} on {host}, which has ended; a process it started still holds it: "
            "run again in a few seconds)"
        )
    return f" (process {pid} on {host})"
