"""The on-disk cache of GT-only metric data (``GTPrep``), shared by runs and processes.

One file per GT, named by the sha256 of the GT file's bytes (so a changed GT is a new entry and
the old one ages out) under a folder named by the cache format version. Entries are written to
a temporary file and renamed into place, so concurrent runs never see a partial file; a damaged
or foreign entry is treated as a miss and rewritten. Each hit refreshes the file's modification
time, and ``prune`` deletes the least recently used entries beyond the size limit.

Where it lives: ``--cache-dir``, else ``$PDSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/pdseg``, else
``~/.cache/pdseg``; this cache uses the ``eval-gt`` subfolder there.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from pdseg_cli.data.atomic import TEMP_SUFFIX, atomic_path
from pdseg_cli.errors import InputError
from pdseg_cli.metrics.gtprep import FORMAT_VERSION, GTPrep

CACHE_ENV = "PDSEG_CACHE_DIR"
DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB; a 2500x3300 DIS GT takes about 0.1-0.3 MB
SUBDIR = "eval-gt"
_SUFFIX = ".npz"
_MAX_ENTRY_BYTES = 1 << 30  # far above any GT's entry (a 2500x3300 GT takes 0.1-0.3 MB)
# what pdseg writes under eval-gt/, entries of every format version (v<N>/.../<key>.npz): prune
# removes nothing else
_ENTRY = re.compile(r"v\d+/(?:[^/]+/)*[^/]+\.npz")


def default_cache_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """pdseg's cache root: ``explicit``, else ``$PDSEG_CACHE_DIR``, else the XDG cache folder."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = Path(os.environ.get("XDG_CACHE_HOME", "")).expanduser()
    if xdg.is_absolute():  # a relative one is to be ignored (XDG spec): it would follow the cwd
        return xdg / "pdseg"
    try:
        return Path.home() / ".cache" / "pdseg"
    except RuntimeError:  # $HOME unset and no user entry (a container's arbitrary uid)
        raise InputError(
            "no home folder to keep the cache in ($HOME is not set, nor the user's entry)",
            hint=f"set ${CACHE_ENV} to a folder for it",
        ) from None


def cache_root_origin(explicit: str | os.PathLike[str] | None = None) -> str:
    """Where :func:`default_cache_root` took its answer from, for messages about it."""
    if explicit is not None:
        return "given"
    if os.environ.get(CACHE_ENV):
        return f"${CACHE_ENV}"
    return "$XDG_CACHE_HOME" if Path(os.environ.get("XDG_CACHE_HOME", "")).is_absolute() else "the default"


def cache_root_problem(root: Path) -> str | None:
    """Why no cache folder can be made at ``root`` (a file on its path, a read-only folder), or None."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} cannot be written"
    return None


def usable_cache_root(explicit: str | os.PathLike[str] | None = None) -> tuple[Path | None, str | None]:
    """The GT cache root to use and what to tell the user about it: ``(root, None)`` when it can be
    used, ``(root, warning)`` for an existing read-only one (its hits still serve), ``(None,
    warning)`` when none can be made there (scoring goes on without a cache: it only costs speed)."""
    try:
        root = default_cache_root(explicit)
    except InputError as exc:
        return None, f"GT cache off: {exc.message}; set ${CACHE_ENV} or pass --cache-dir to keep one"
    problem = cache_root_problem(root)
    if problem is None:
        return root, None
    if root.is_dir():
        return root, f"GT cache {root} is read-only ({problem}): it is read, new entries are not kept"
    return None, f"GT cache off: {root} ({cache_root_origin(explicit)}) cannot be used: {problem}"


@dataclass(frozen=True)
class GTCache:
    """GT-only data on disk, keyed by content hash.

    Attributes:
        root: the cache root (``default_cache_root``); entries live under ``root/eval-gt/v<N>/``.
        max_bytes: ``prune`` keeps the folder below this size.
    """

    root: Path
    max_bytes: int = DEFAULT_MAX_BYTES

    @property
    def folder(self) -> Path:
        return self.root / SUBDIR / f"v{FORMAT_VERSION}"

    def path_for(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}{_SUFFIX}"

    def _linked(self) -> bool:
        """Whether a folder of the cache's own (``eval-gt``, ``v<N>``) is a symbolic link. pdseg
        makes none; in a shared cache folder someone else may have planted one, to have entries
        read from, written to or pruned in a folder of their choosing. Such a cache is not used.
        (The root itself may be a link: it is the user's own choice of folder.) The entries' own
        folders are checked by :meth:`_shard_linked`; prune walks without following links."""
        return any(p.is_symlink() for p in (self.root / SUBDIR, self.folder))

    def _shard_linked(self, key: str) -> bool:
        """Whether the entry's own folder (``v<N>/<key[:2]>/``) is a link, or a folder above it."""
        return self._linked() or self.path_for(key).parent.is_symlink()

    def load(self, key: str) -> GTPrep | None:
        """The entry for ``key``, or None when absent or unusable (it is then recomputed): a link,
        a device or a file too large to be an entry is unusable, never read."""
        path = self.path_for(key)
        try:
            st = path.lstat()
            if self._shard_linked(key) or not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_ENTRY_BYTES:
                return None
            data = path.read_bytes()
        except OSError:
            return None
        try:
            prep = GTPrep.from_bytes(data)
        except ValueError:
            return None
        try:
            os.utime(path)  # recently used: pruned last
        except OSError:
            pass
        return prep

    def holds_entries(self) -> bool:
        """Whether any entry is stored (a root that stores nothing, e.g. a full disk, holds none)."""
        return any(self.folder.glob(f"*/*{_SUFFIX}"))

    def store(self, key: str, prep: GTPrep) -> bool:
        """Write the entry atomically; False when the cache folder is not writable."""
        path = self.path_for(key)
        if self._shard_linked(key):
            return False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # a Ctrl-C mid-write too: atomic_path removes its temporary, so no partial entry is left
            with atomic_path(path) as tmp:
                tmp.write_bytes(prep.to_bytes())
        except OSError:
            return False
        return True

    def prune(self) -> int:
        """Delete the least recently used entries until the folder fits ``max_bytes``.

        Also removes entries of older format versions and stale temporary files. Only files pdseg
        names so are removed, never through a link: a file of another name, or a link planted in a
        shared cache folder, is left alone.

        Returns:
            Bytes freed.
        """
        base = self.root / SUBDIR
        if not base.is_dir() or self._linked():
            return 0
        freed = 0
        current = self.folder
        entries: list[tuple[float, int, Path]] = []
        for folder, _, names in os.walk(base):  # os.walk does not follow linked folders
            for name in names:
                path = Path(folder, name)
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):  # a link, a device: not pdseg's
                    continue
                # an hour old: a writer that died (".tmp": pdseg versions before atomic_path)
                stale_tmp = name.endswith((TEMP_SUFFIX, ".tmp")) and st.st_mtime < time.time() - 3600
                ours = _ENTRY.fullmatch(path.relative_to(base).as_posix()) is not None
                if stale_tmp or (ours and current not in path.parents):
                    freed += _unlink(path, st.st_size)
                elif ours:
                    entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            got = _unlink(path, size)
            freed += got
            total -= size
        return freed


def _unlink(path: Path, size: int) -> int:
    try:
        path.unlink()
    except OSError:
        return 0
    return size
