"""User-facing errors: one line that names the file and the fix; the CLI prints it and exits 2 for
a mistake the user can fix before running again, 1 for work that started and could not finish
(:class:`RunFailed`)."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence
from pathlib import Path


class PdsegError(Exception):
    """A mistake the user can fix (bad path, wrong file, bad option).

    Args:
        message: what is wrong, naming the file or value.
        hint: how to fix it, or None.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        # one line where the hint has no line of its own (a file's failure in a run, a Python
        # caller's exception); "; ", not brackets: messages often end in a bracket of their own
        return self.message if not self.hint else f"{self.message}; {self.hint}"


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C that knows how the user goes on: still a KeyboardInterrupt (the CLI exits 130 and
    every ``except KeyboardInterrupt`` clean-up still runs), carrying the hint the CLI prints.

    Args:
        hint: what was kept and how to go on.
    """

    def __init__(self, hint: str) -> None:
        super().__init__(hint)
        self.hint = hint


class RunFailed(PdsegError):
    """Work that started and could not finish (a full disk, a diverged loss, an export that does not
    match PyTorch): said in one line like any PdsegError, but the CLI exits 1, not 2, which means a
    usage mistake."""


class InputError(PdsegError):
    """An input image, folder or option cannot be used."""


class WeightsError(PdsegError):
    """A checkpoint or exported model file is missing, truncated or of the wrong kind."""


class DataError(PdsegError):
    """A dataset split, GT or prediction folder is missing or malformed."""


class NotAvailableError(PdsegError):
    """A feature needs something that is not installed or not present (e.g. onnxruntime, CUDA)."""


_KIND_WORDS = {int: "a whole number", float: "a number", bool: "True or False"}


def check_kind(owner: str, name: str, value: object, kind: type) -> None:
    """Refuse a Python caller's value of the wrong kind for a number or switch option in one line
    (``batch="2"``, ``opset=17.5``, ``check=1``), before a comparison or torch fails on it deep down.

    ``kind`` is ``int``, ``float`` (a whole number is a number too) or ``bool``. True is an int to
    Python but never a count; only plain Python and numpy numbers pass, not strings.

    Raises:
        InputError: ``<owner> <name>=<value>: give a whole number`` (or a number, or True or False).
    """
    import numbers

    # numpy's bool (np.bool_, named "bool" since numpy 2) is no Python bool, nor an Integral
    numpy_bool = type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_")
    if kind is bool:
        ok = isinstance(value, bool) or numpy_bool
    else:
        wanted = numbers.Integral if kind is int else numbers.Real
        ok = isinstance(value, wanted) and not isinstance(value, bool) and not numpy_bool
    if not ok:
        raise InputError(f"{owner} {name}={value!r}: give {_KIND_WORDS[kind]}")


def close_sibling(path: Path, *, folders_only: bool = False) -> Path | None:
    """The entry beside ``path`` (a folder with ``folders_only``) whose name is closest to ``path``'s,
    for a "did you mean" hint where ``path`` does not exist (a typo, another suffix); None when none
    is close, or the folder above cannot be listed. Hidden names are not suggested."""
    import difflib

    try:
        names = sorted(
            p.name
            for p in path.parent.iterdir()
            if not p.name.startswith(".") and p.name != path.name and (not folders_only or p.is_dir())
        )
    except OSError:
        return None
    by_lower = {name.lower(): name for name in reversed(names)}  # ROCKET.JPG finds rocket.jpg
    stem = Path(path.name).stem.lower()
    for lower in difflib.get_close_matches(path.name.lower(), list(by_lower), n=3, cutoff=0.6):
        # a shared suffix alone made names alike: nonexist.jpg offered rocket.jpg
        other = Path(lower).stem
        if other == stem or difflib.SequenceMatcher(None, stem, other).ratio() >= 0.6:
            return path.parent / by_lower[lower]
    return None


def shell_quote(text: str) -> str:
    """``text`` quoted for a command line the user can paste: POSIX shell quoting, or cmd.exe's
    double quotes on Windows (where single quotes are passed on as part of the text)."""
    if os.name == "nt":
        import subprocess

        return subprocess.list2cmdline([text])
    import shlex

    return shlex.quote(text)


def clip_words(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut to at most ``limit`` characters at a word boundary, with an
    ellipsis where cut (a message quoted in ours, or a long provenance, must not stop mid-word)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:.") + "…"


def listing(items: Sequence[str], limit: int, sep: str = ", ") -> str:
    """``a, b, c and 7 more``: the first ``limit`` items named, the rest counted (messages stay
    one readable line however many files are at fault)."""
    shown = sep.join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 image``, ``2 images``; ``counted(2, "process", "processes")``."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (its type's name if empty), for a one-line error."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return lines[0].split(". ")[0].rstrip(".")[:160]


# What to do about the operating-system errors a long command meets most (pdseg train --resume
# goes on from the last checkpoint, which is written atomically, so it survives any of them).
_OS_HINTS = {
    errno.ENOSPC: "free some disk space, then run the same command again (a training run: add --resume)",
    errno.EDQUOT: "free some of your quota, then run the same command again (a training run: add --resume)",
    errno.EACCES: "check the permissions of that folder, or choose another --out",
    errno.EPERM: "check the permissions of that folder, or choose another --out",
    errno.EROFS: "the file system is read-only: choose another --out",
    errno.ENOENT: "a file or folder was moved or deleted while pdseg was running: restore it and run the "
    "same command again (a training run: add --resume; a cached sample is made again)",
    errno.ENAMETOOLONG: "a name in the path is too long (most file systems take 255 bytes), or the whole "
    "path is (4096 bytes on Linux): shorten it",
    errno.ELOOP: "check the symbolic links on that path: they go round a loop",
}


def refused_by_permissions(exc: BaseException) -> bool:
    """Whether ``exc`` is a write the file system refused (permissions, an immutable file, a
    read-only mount), for which "free some space", the usual fix of a failed write, is wrong."""
    return isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


def os_error_line(exc: OSError) -> tuple[str, str | None]:
    """One line for an operating-system error that stopped a command (disk full, no permission, a
    file deleted under a running command), naming the file, and a hint; never a traceback.

    A DataLoader worker's error comes back as the exception's type with the worker's traceback as
    its text, whose last line is the original ``Error: message 'file'``: that line is the one kept.
    """
    if exc.strerror and exc.filename is not None:
        what = f"{exc.strerror}: {os.fsdecode(exc.filename)}"
    else:
        last = (str(exc).strip().splitlines() or [""])[-1].strip()
        what = re.sub(r"^(\w+Error: )?(\[Errno \d+\] )?", "", last) or type(exc).__name__
    return what[:240], _OS_HINTS.get(exc.errno) if exc.errno is not None else _hint_from_text(str(exc))


def _hint_from_text(text: str) -> str | None:
    """The hint for an error whose errno was lost on the way (a worker's re-raised exception)."""
    for code, hint in _OS_HINTS.items():
        if f"[Errno {code}]" in text:
            return hint
    return None
