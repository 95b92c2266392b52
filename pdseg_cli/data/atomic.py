"""Atomic file writes: a hidden temporary beside the target, renamed onto it when whole.

Masks, cut-outs, checkpoints, exports (checked before the rename), run files and the training and
GT caches are written through :func:`atomic_path`, so an interrupted write leaves the old file or
none, never half of one.

A temporary is named ``.<name>.<pid>-<host>-<4 random bytes>.pdseg-tmp``: the pid and a short hash
of the host (its name and, on Linux, its pid namespace) say who writes it. A process killed
outright (SIGKILL, the OOM killer, a power cut) cannot remove its temporary, so what dead processes
of this host left is removed later: by the next write of a checkpoint or an export, files as big
as the model (:func:`remove_stale_temporaries`), and by ``predict`` and ``train`` in their output
folder when they start (:func:`sweep_folder`). A temporary of a running process, or of another
host writing to a shared folder, is never touched; where a pid cannot be asked about (Windows),
nothing is removed.

A write goes through symbolic links: where the destination is a link (``best.pt -> runs/x/last.pt``),
the temporary is made beside the file the link points at and renamed onto that file, so the link
stays a link and what it points at is what changes (:func:`final_target`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

TEMP_SUFFIX = ".pdseg-tmp"  # temporary files start with "." and end with this
_PID_DIGITS = 10  # room kept for the pid where a long name is cut, so the cut is the same for any pid
# who wrote a file or folder: <pid>-<host> (:func:`writer_token`)
_WRITER = re.compile(rf"(\d{{1,{_PID_DIGITS}}})-([0-9a-f]{{6}})")
_TOKEN = re.compile(rf"\.{_WRITER.pattern}-[0-9a-f]{{8}}{re.escape(TEMP_SUFFIX)}")

_ANY_TARGET = re.compile(r"\..+" + _TOKEN.pattern)  # the temporary of any file: .<name><token>


def _host_token() -> str:
    """Six hex digits for where a pid means one process: the host name, and on Linux the pid
    namespace (two containers that share a host name do not share pids)."""
    where = socket.gethostname()
    with contextlib.suppress(OSError):
        where += f"/{os.stat('/proc/self/ns/pid').st_ino}"
    return hashlib.sha256(where.encode()).hexdigest()[:6]


_HOST = _host_token()


def name_max(folder: Path) -> int:
    """The longest file name, in bytes, that the file system ``folder`` is (or will be made) on
    takes: ``PC_NAME_MAX`` of the nearest folder that exists, 255 (Linux's NAME_MAX) when it will
    not say (Windows has no ``pathconf``)."""
    existing = _nearest_folder(folder)
    try:
        limit = int(os.pathconf(existing if existing is not None else ".", "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255
    return limit if limit > 0 else 255


def name_bytes(name: str) -> int:
    """The length of a file name as Linux counts it: bytes, not characters (é is 2, 日 3)."""
    return len(os.fsencode(name))


def name_too_long(folder: Path, name: str, limit: int) -> bool:
    """Whether ``name`` is too long for ``folder``'s file system: over ``limit`` bytes
    (:func:`name_max`), and refused by the file system itself when asked for it. Those that count
    characters (APFS, NTFS: 255 of them) take many more bytes of UTF-8, and must not be refused
    by Linux's rule."""
    if name_bytes(name) <= limit:
        return False
    existing = _nearest_folder(folder)
    if existing is None:
        return True
    try:
        os.lstat(existing / name)
    except OSError as exc:
        return exc.errno != errno.ENOENT  # ENAMETOOLONG: too long; ENOENT: the name could be made
    return False  # such a file exists: the name fits


def folds_case(folder: Path) -> bool:
    """Whether the file system ``folder`` is (or will be made) on takes names that differ only in
    case for one file (macOS, Windows, exFAT and FAT USB drives, SMB shares), where ``A.png`` and
    ``a.png`` would overwrite each other. Asked without writing anything: a folder of that file
    system whose name has letters is looked up with their case swapped. False when no such folder
    says (up to the mount point): case-sensitive, as Linux file systems are."""
    existing = _nearest_folder(Path(folder).absolute())  # "masks" is looked up from the working folder
    if existing is None:
        return False
    # A name is looked up in its parent folder, so a folder's name tells of the file system it sits
    # on: the one of `existing` up to its mount point, above which the names are another's
    for path in (existing, *existing.parents):
        if os.path.ismount(path):
            break
        answer = _twin_answer(path)
        if answer is not None:
            return answer
    try:  # `existing` is a mount point (a USB drive's root), or no name up to it has letters: its entries
        with os.scandir(existing) as entries:
            for entry, _ in zip(entries, range(100), strict=False):
                answer = _twin_answer(Path(entry.path))
                if answer is not None:
                    return answer
    except OSError:
        pass
    return False


def _twin_answer(path: Path) -> bool | None:
    """Whether ``path``'s name with its case swapped names the same file (True), another or none
    (False); None when swapping changes nothing or the length (``ß`` swaps to ``SS``)."""
    name = path.name
    twin_name = name.swapcase()
    if twin_name == name or len(twin_name) != len(name):
        return None
    try:
        return os.path.samefile(path, path.with_name(twin_name))  # a sibling of that name is another file
    except OSError:
        return False  # no such name: the file system told the two apart


def _nearest_folder(path: Path) -> Path | None:
    """``path`` when it is a folder, else its nearest parent that is (None: none of them)."""
    return next((p for p in (path, *path.parents) if _is_dir(p)), None)


def _is_dir(path: Path) -> bool:
    """``path.is_dir()``, False where the file system will not even look the name up (too long)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def _prefix(path: Path) -> str:
    """``.<name>``; where the temporary would be longer than the file system allows, the name cut
    to whole characters, then ``~`` and a hash of the whole name (two long names that start alike
    keep apart): a long output name would otherwise fail on its temporary, with the error naming
    the output. The cut keeps room for the longest pid, so it is the same in every process and a
    leftover is found by it."""
    prefix = f".{path.name}"
    longest = f".{'9' * _PID_DIGITS}-{_HOST}-{'0' * 8}{TEMP_SUFFIX}"
    size = name_bytes(prefix + longest)
    if size <= 128:  # under every file system's NAME_MAX: no need to ask
        return prefix
    room = name_max(path.parent) - name_bytes(longest)
    if name_bytes(prefix) <= room:
        return prefix
    mark = "~" + hashlib.sha256(os.fsencode(path.name)).hexdigest()[:6]
    room -= name_bytes(mark) + 1  # the leading "." stays: the temporary stays hidden
    kept: list[str] = []
    for char in path.name:  # whole characters only: the cut name stays valid UTF-8
        room -= name_bytes(char)
        if room < 0:
            break
        kept.append(char)
    return "." + "".join(kept) + mark


def temp_name(path: Path) -> str:
    """The name of a temporary file this process writes ``path`` through, in the same folder so that
    ``os.replace`` is atomic: ``.<name>.<pid>-<host>-<8 hex>.pdseg-tmp``, cut to fit (:func:`_prefix`)."""
    return f"{_prefix(path)}.{writer_token()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, sweep: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    Where ``path`` is a symbolic link (or a chain of them), the temporary is made beside, and renamed
    onto, the file it finally points at (:func:`final_target`): the link is kept.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is
    left as it was. ``sweep`` first removes what killed writers of ``path`` left
    (:func:`remove_stale_temporaries`): for the few large files (checkpoints, exports), not for each
    of a run's many masks, where it would list the folder once per file.
    """
    path = Path(path)
    if sweep:
        remove_stale_temporaries(path)
    # a rename onto a link replaces the link itself with a file and leaves what it pointed at stale
    target = final_target(path)
    refuse_special(target)
    tmp = target.with_name(temp_name(target))
    try:
        yield tmp
        _replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _mode(path: str | os.PathLike[str]) -> int | None:
    """``path``'s file type and mode, its links followed (None: not there, or not looked up)."""
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):
        return None


def is_special(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (its links followed) is there and is neither a regular file nor a folder: a
    device (``/dev/null``, a terminal, a disk), a named pipe or a socket."""
    mode = _mode(path)
    return mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def is_stream(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a character device or a named pipe (``/dev/null``, a terminal, a FIFO a
    script reads): text can be written into it as it is. A disk (a block device) and a socket
    cannot take a report."""
    mode = _mode(path)
    return mode is not None and (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode))


def refuse_special(target: Path) -> None:
    """Refuse to rename a file onto a device, a pipe or a socket: the rename would put a regular
    file in its place (run as root, ``--json /dev/null`` replaced the system's /dev/null).

    Raises:
        OSError: EINVAL, naming ``target``.
    """
    if is_special(target):
        raise OSError(
            errno.EINVAL,
            "not a regular file (a device or a pipe), which writing a file there would replace",
            str(target),
        )


_WINDOWS_RETRIES = 20  # about 2 s in all: long enough for a virus scanner or an indexer to let go


def _replace(tmp: Path, target: Path) -> None:
    """``os.replace``; on Windows, retried for a while where the target is open in another program
    (a virus scanner, a search indexer or a sync client holds files for a moment after they
    change; a viewer may hold one longer), which Windows refuses with a PermissionError where a
    POSIX rename would just go ahead."""
    for attempt in range(_WINDOWS_RETRIES if sys.platform == "win32" else 0):
        try:
            os.replace(tmp, target)
            return
        except PermissionError:
            time.sleep(0.02 * (attempt + 1) ** 0.5)
    os.replace(tmp, target)


_MAX_LINKS = 40  # Linux's limit on the links one path lookup follows (MAXSYMLINKS)


def final_target(path: Path) -> Path:
    """``path`` with every symbolic link it names followed, a chain of them included: the file a
    write to ``path`` changes. A link to a file that does not exist (yet) gives that file's path.
    ``path`` itself when it is no link (the folders above it are left as they are: a rename
    within a linked folder already lands in the folder it points at).

    Raises:
        FileNotFoundError: ``path`` is a link to a file in a folder that does not exist; the rename
            would fail there, with the temporary's name in the message instead of the link's.
        OSError: ELOOP, the links go round in a loop (or there are more than 40 of them).
    """
    target = path
    for _ in range(_MAX_LINKS + 1):  # the last readlink finds no link: the target of 40 links
        try:
            link = Path(os.readlink(target))
        except OSError:  # EINVAL: not a link; ENOENT: nothing there yet, a new file
            break
        # a relative link is read from the folder holding it; the OS resolves any ".." in it
        target = link if link.is_absolute() else target.parent / link
    else:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
    if target != path and not _is_dir(target.parent):
        raise FileNotFoundError(
            errno.ENOENT, f"it is a link to {target}, whose folder does not exist", str(path)
        )
    return target


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` that killed writers left: named as :func:`temp_name` names
    them, written on this host, by a process that no longer runs.

    Nothing else is touched: other names, folders, links, a running process's temporary, another
    host's. A file that cannot be removed is left.

    Where ``path`` is a link, the folder of the file it points at is swept too: that is where
    :func:`atomic_path` makes the temporary.

    Returns:
        The files removed.
    """
    removed = _remove_dead(path.parent, {_prefix(path)})[0]
    with contextlib.suppress(OSError):  # a link in a loop, or into a missing folder: nothing made there
        target = final_target(path)
        if target != path:
            removed += _remove_dead(target.parent, {_prefix(target)})[0]
    return removed


def sweep_folder(folder: Path) -> list[Path]:
    """Remove what dead processes of this host left in ``folder`` while writing any file there
    (not in its subfolders): :func:`remove_stale_temporaries` for every target at once, the
    targets of the links in ``folder`` included (their temporaries are made beside what they
    point at, which may be in another folder).

    Returns:
        The files removed.
    """
    removed, links = _remove_dead(folder, None)
    elsewhere: dict[Path, set[str]] = {}  # each other folder listed once, however many links lead there
    for link in links:
        with contextlib.suppress(OSError):  # a link in a loop, or into a missing folder: nothing made there
            target = final_target(link)
            if target.parent != folder:  # in ``folder`` itself: already swept
                elsewhere.setdefault(target.parent, set()).add(_prefix(target))
    for other, prefixes in elsewhere.items():
        removed += _remove_dead(other, prefixes)[0]
    return removed


def _remove_dead(folder: Path, prefixes: set[str] | None) -> tuple[list[Path], list[Path]]:
    """Remove the temporaries in ``folder`` (of the targets whose :func:`_prefix` is in ``prefixes``,
    or of any target) whose writer ran on this host and no longer runs.

    Returns:
        The files removed, and (for any target: ``prefixes`` None) the links found in ``folder``,
        read from the same listing (``is_symlink`` needs no extra call on most file systems).
    """
    removed: list[Path] = []
    try:
        with os.scandir(folder) as listing:
            found = list(listing)
    except OSError:
        return removed, []
    entries = [e for e in found if e.name.startswith(".") and e.name.endswith(TEMP_SUFFIX)]
    links = [Path(e.path) for e in found if prefixes is None and _is_link(e)]
    for entry in entries:
        match = _ANY_TARGET.fullmatch(entry.name)
        if match is None:
            continue
        # the name before the token (the pid's group starts one past its dot): one set lookup
        if prefixes is not None and entry.name[: match.start(1) - 1] not in prefixes:
            continue
        if not _dead_writer(match.group(1), match.group(2)):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed, links


def writer_token() -> str:
    """``<pid>-<host>``: what names a file or folder this process writes, so that a later process
    can tell whether its writer has died (:func:`written_by_dead`)."""
    return f"{os.getpid()}-{_HOST}"


def written_by_dead(token: str) -> bool:
    """Whether ``token`` (a :func:`writer_token`) names a process of this host that no longer runs."""
    match = _WRITER.fullmatch(token)
    return match is not None and _dead_writer(match.group(1), match.group(2))


def _dead_writer(pid: str, host: str) -> bool:
    """Whether process ``pid`` of ``host`` (a :func:`writer_token`'s parts) ran here and has ended."""
    return host == _HOST and not _process_alive(int(pid))


def _is_link(entry: os.DirEntry[str]) -> bool:
    """``entry.is_symlink()``, False where it cannot be told (the file went away meanwhile)."""
    try:
        return entry.is_symlink()
    except OSError:
        return False


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
