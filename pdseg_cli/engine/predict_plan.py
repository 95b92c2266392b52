"""What a folder run of ``pdseg predict`` will do, decided before the model is loaded.

:func:`plan_predict` expands files, folders and glob patterns into images (:func:`collect_inputs`),
proves the output folder writable, refuses outputs that would overwrite an input or each other, or
whose names the output folder's file system cannot take, and takes this process's share under
torchrun. :func:`pdseg_cli.engine.predict_run.run_plan`
carries the plan out.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import sys
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from pdseg_cli import runtime
from pdseg_cli.data import header
from pdseg_cli.data import images as imio
from pdseg_cli.data.atomic import (
    folds_case,
    is_special,
    name_bytes,
    name_max,
    name_too_long,
    sweep_folder,
)
from pdseg_cli.engine.made_with import MadeWith, alike
from pdseg_cli.engine.output_kinds import (
    HIGH_DEPTH_SUFFIX,
    OUTPUT_KINDS,
    output_candidates,
    output_path,
    parse_save,
)
from pdseg_cli.errors import InputError, close_sibling, counted, listing, shell_quote

_GLOB_MAGIC = frozenset("*?[")


@dataclass(frozen=True)
class InputFile:
    """One image to segment.

    Attributes:
        path: the file.
        rel_dir: the folder under ``--out`` its outputs go to ("." unless --recursive mirrors one).
        index: its position in the whole run (results are reported in this order).
    """

    path: Path
    rel_dir: Path
    index: int = 0


def _unquoted(text: str) -> str:
    """``text`` without one pair of single quotes around it on Windows, whose cmd.exe passes them
    on: ``pdseg predict 'scans/*.tif'``, as the help and the README write a pattern for POSIX
    shells, which remove them. A file's own name never starts and ends with one there."""
    if os.name == "nt" and len(text) > 1 and text[0] == text[-1] == "'":
        return text[1:-1]
    return text


def collect_inputs(
    sources: Sequence[str | os.PathLike[str]], *, recursive: bool = False, exclude: Path | None = None
) -> tuple[list[InputFile], list[Path], bool]:
    """Expand files, folders and glob patterns into images, and list the other files met.

    Args:
        sources: files, folders, or glob patterns (``**`` matches subfolders).
        recursive: descend into subfolders of folders (and of a pattern's base folder); their
            relative folders are mirrored under ``--out``.
        exclude: a folder never listed (the output folder, so old outputs are not read as inputs).

    Returns:
        (images in a stable order, files that are not images (and the folder links a recursive walk
        did not follow, :func:`walk_folder`), whether a recursive walk met ``exclude`` and left it
        out). Hidden files are ignored.

    Raises:
        InputError: a source that is neither a file, a folder nor a pattern matching anything.
    """
    found: list[InputFile] = []
    not_images: list[Path] = []
    seen: set[Path] = set()
    exclude_r = exclude.resolve() if exclude is not None else None
    passed_exclude = False

    def add(path: Path, rel_dir: Path) -> None:
        # a broken link or a link loop; a named pipe (its first read waits for a writer, for good),
        # a device or a socket, or a link to one, of an image's name
        if _resolved(path) is None or is_special(path):
            not_images.append(path)
            return
        # one input per name: the same name given twice (a folder and a pattern in it) is segmented
        # once, while a link to another input is an input of its own name, as a hard link is (it
        # was dropped in silence); folders are read once each by walk_folder
        key = path.parent.resolve() / path.name
        if key in seen:
            return
        seen.add(key)
        if imio.is_image_file(path):
            found.append(InputFile(path, rel_dir, len(found)))
        else:
            not_images.append(path)

    def walk(root: Path, base: Path) -> None:
        nonlocal passed_exclude
        if recursive:
            tree = walk_folder(root, exclude_r)
            files = tree.files
            passed_exclude |= tree.passed_exclude
            # listed with the files not read, as broken links are (is_unfollowed_folder_link tells them apart)
            not_images.extend(link for link in tree.skipped_links if link not in not_images)
        else:
            # links that lead nowhere too, so that they are counted with the files not read
            files = sorted(
                p
                for p in root.iterdir()
                if p.is_file() or is_special(p) or (p.is_symlink() and not p.is_dir())
            )
        for p in files:
            if p.name.startswith("."):
                continue
            add(p, p.parent.relative_to(base) if recursive else Path("."))

    for source in sources:
        text = _unquoted(os.fspath(source))
        path = Path(text).expanduser()
        if path.is_dir():
            walk(path, path)
        elif path.is_file():
            add(path, Path("."))
        elif any(c in text for c in _GLOB_MAGIC):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            base = _glob_base(text)
            if not matches:
                # the pattern reached pdseg, so the shell left it alone: quoting is not the fix,
                # what is there instead is (often another suffix: *.jpeg for .jpg files)
                raise InputError(f"no file matches the pattern {text!r}", hint=_folder_contents(base))
            # links after the real paths, as a folder walk reads them: a file reached both ways
            # is kept under its own folder's name, not a link's that sorts first
            for p in sorted(map(Path, matches), key=lambda q: q.is_symlink()):
                if p.is_dir():  # a folder, or a link to one: walked as a folder given by name is
                    walk(p, p if not recursive else base)
                elif (p.is_file() or p.is_symlink() or is_special(p)) and not p.name.startswith("."):
                    add(
                        p,
                        p.parent.relative_to(base) if recursive and _is_under(p.parent, base) else Path("."),
                    )
        elif path.exists():
            raise InputError(
                f"{path} is neither a file nor a folder", hint="give image files, folders or quoted patterns"
            )
        else:
            if path.is_symlink():  # listed, but leads nowhere
                raise InputError(
                    f"{path} is a symbolic link that leads nowhere (its target is missing, or the links "
                    "form a loop)",
                    hint="check where it points"
                    + ("" if os.name == "nt" else f": ls -l {shell_quote(str(path))}"),
                )
            raise InputError(f"{path}: no such file, folder or pattern", hint=_missing_input_hint(path))
    return found, not_images, passed_exclude


@dataclass
class FolderWalk:
    """What :func:`walk_folder` met.

    Attributes:
        files: every file (hidden ones too) and link that is not to a folder, in walk order.
        skipped_links: links to folders not followed: back to a folder of the walk or one above it
            (a loop), or to a folder the walk had read already (each listed once).
        passed_exclude: the walk met the excluded folder (itself or through a link) and left it out.
    """

    files: list[Path] = field(default_factory=list)
    skipped_links: list[Path] = field(default_factory=list)
    passed_exclude: bool = False


def walk_folder(root: Path, exclude: Path | None = None) -> FolderWalk:
    """Every file under ``root``, following links to folders, each folder read once.

    The folders under ``root`` itself are read first (sorted, hidden ones left out), then those its
    links lead to, in the order they were met (``os.walk`` alone passes over linked folders; told
    to follow them, it would loop on a link to a folder above). A linked folder's files keep the
    link's path (``root/link/x.jpg``), so --recursive mirrors them under the link's name. A link
    is not followed when its folder was read already (by another path), or holds ``root`` (a link
    back up, which would read the tree again).

    Args:
        root: the folder.
        exclude: a resolved folder never read (``--out``), reached directly or through a link.
    """
    walk = FolderWalk()
    root_real = root.resolve()
    # a folder under --out is left out too when reached through a link, unless the input itself
    # lies under --out (then only --out itself is: the rest is the input)
    guard = exclude if exclude is not None and not root_real.is_relative_to(exclude) else None
    visited = {root_real}
    pending = [root]  # the folders to read: the root, then the links met, in order
    for top in pending:  # the list grows while it is read: the links met are read in turn
        if top is not root:
            # checked now, not when met: a folder read since (by its own path) is not read again
            real = _resolved(top)
            if real is None or real in visited or root_real.is_relative_to(real):
                if top not in walk.skipped_links:
                    walk.skipped_links.append(top)
                continue
            visited.add(real)
        for dirpath, dirnames, filenames in os.walk(top):
            d = Path(dirpath)
            kept = []
            for name in sorted(dirnames):
                sub = d / name
                real = _resolved(sub)
                if name.startswith(".") or real is None:
                    continue
                if real == exclude or (guard is not None and real.is_relative_to(guard)):
                    walk.passed_exclude = True
                elif sub.is_symlink():
                    pending.append(sub)  # os.walk does not descend it; decided when its turn comes
                elif real not in visited:  # a folder a link led to earlier is read once
                    visited.add(real)
                    kept.append(name)
            dirnames[:] = kept
            walk.files.extend(d / n for n in sorted(filenames))
    return walk


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _glob_base(pattern: str) -> Path:
    """The folder part of a pattern before its first wildcard ('data/*/x.png' -> 'data')."""
    parts = Path(os.path.expanduser(pattern)).parts
    base: list[str] = []
    for part in parts:
        if any(c in part for c in _GLOB_MAGIC):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def _missing_input_hint(path: Path) -> str:
    """The fix for an input that does not exist: the closest name beside it (a typo, another
    suffix), else to check the path."""
    if str(path) == "-":  # `cat photo.jpg | pdseg predict - --out masks`
        return "pdseg reads image files, not standard input: save the image to a file and give its path"
    close = close_sibling(path)
    if close is not None:
        return f"did you mean {close}?"
    where = "" if path.parent.is_dir() else f" ({path.parent} does not exist)"
    return f"check the path{where}; pdseg takes image files, folders and quoted patterns"


def _folder_contents(folder: Path) -> str:
    """What ``folder`` holds, for a pattern that matched nothing: ``the folder data holds 4 .jpg
    files and 2 folders`` (hidden files left out, as the walk leaves them), or that it is missing."""
    name = "the current folder" if folder == Path(".") else f"the folder {folder}"
    if not folder.is_dir():
        return f"{name} does not exist" if not folder.exists() else f"{folder} is a file, not a folder"
    try:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError as exc:
        return f"{name} cannot be listed ({exc.strerror or exc})"
    suffixes = Counter(p.suffix.lower() for p in entries if not p.is_dir())
    parts = [
        counted(n, f"{suffix} file") if suffix else counted(n, "file") + " without an extension"
        for suffix, n in sorted(suffixes.items(), key=lambda item: (-item[1], item[0]))
    ]
    folders = sum(p.is_dir() for p in entries)
    if folders:
        parts.append(counted(folders, "folder"))
    if not parts:
        return f"{name} is empty"
    return f"{name} holds " + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0])


def _no_images_hint(sources: Sequence[Path], recursive: bool, others: Sequence[Path] = ()) -> str:
    """The hint of a run that found no images: the hidden images its folders hold (a folder run
    leaves them out), else the suffixes pdseg reads; to convert phone photos where ``others`` (the
    files that are not images) or the files named hold some; and --recursive only where a folder
    has subfolders to look in."""
    folders = [s for s in sources if s.is_dir()]
    convert = imio.convert_phone_photos([*others, *(s for s in sources if s.is_file())])
    parts = [convert] if convert else []
    parts += [
        f"the only images in {folder} are hidden ({listing([p.name for p in hidden], 3)}), which a "
        "folder run leaves out: name them directly to segment them"
        for folder in folders
        if (hidden := _hidden_images(folder, recursive))
    ]
    if not parts:
        parts.append("pdseg reads " + ", ".join(sorted(s.lstrip(".") for s in imio.IMAGE_SUFFIXES)))
    if not recursive and any(_subfolders(folder) for folder in folders):
        parts.append("add --recursive to look in subfolders")
    return "; ".join(parts)


def _hidden_images(folder: Path, recursive: bool) -> list[Path]:
    """The hidden image files (names starting with '.') a folder walk passes over in ``folder``."""
    try:
        files = walk_folder(folder).files if recursive else [p for p in folder.iterdir() if p.is_file()]
    except OSError:
        return []
    return [p for p in files if p.name.startswith(".") and imio.is_image_file(p)]


def unread_subfolders(
    sources: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], recursive: bool
) -> list[Path]:
    """The subfolders of the folders among ``sources`` that a run without --recursive does not
    read (not hidden ones, nor ``--out`` itself), for a line that says so: images in them were
    passed over without a word. Only the folders' own entries are listed, never their trees."""
    if recursive:
        return []
    out = Path(out_dir).expanduser().resolve()
    return [
        sub
        for source in sources
        for sub in _subfolders(Path(_unquoted(os.fspath(source))).expanduser())
        if sub.resolve() != out
    ]


def _subfolders(folder: Path) -> list[Path]:
    """The folders in ``folder`` a recursive walk reads (not hidden ones), sorted; none where
    ``folder`` is not a folder (a file or a pattern) or cannot be listed."""
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _is_under(path: Path, base: Path) -> bool:
    try:
        path.resolve().relative_to(base.resolve())
        return True
    except ValueError:
        return False


def _resolved(path: Path) -> Path | None:
    """The file ``path`` leads to, or None for a broken link or a link loop (RuntimeError before
    Python 3.13, OSError since)."""
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None


def is_broken_link(path: Path) -> bool:
    """A symbolic link that leads nowhere, or in a loop of links (counted apart from files of other
    kinds)."""
    return path.is_symlink() and _resolved(path) is None


def is_unfollowed_folder_link(path: Path) -> bool:
    """A link to a folder that a recursive walk did not follow (:func:`walk_folder`): one back up
    the tree, or to a folder read already by another path. Harmless (``latest -> 2024-05``), so it
    is said apart from broken links."""
    return path.is_symlink() and path.is_dir()


# the formats pdseg's outputs have, and so the only ones whose files can carry its mark
_MARKED_SUFFIXES = (".png", ".tif", ".tiff")


def split_own_outputs(
    sources: Sequence[str | os.PathLike[str]], inputs: list[InputFile]
) -> tuple[list[InputFile], list[Path]]:
    """(the inputs, renumbered, the files among them that pdseg wrote: masks and cut-outs of an
    earlier run, found in a folder or pattern). Such files are left out: an --out given as an
    input folder's parent put them among the photos, and the next run segmented the masks. A file
    named on its own is kept: segmenting a composite again may be meant. Only a PNG's or TIFF's
    first bytes are read (:func:`header.carries_output_mark`)."""
    files = [Path(_unquoted(os.fspath(s))).expanduser() for s in sources]
    named = {f.resolve() for f in files if f.is_file()}  # resolved only where a file is named
    own = [
        item.path
        for item in inputs
        if item.path.suffix.lower() in _MARKED_SUFFIXES
        and not (named and item.path.resolve() in named)
        and header.carries_output_mark(item.path)
    ]
    if not own:
        return inputs, []
    left_out = set(own)
    kept = [item for item in inputs if item.path not in left_out]
    return [replace(item, index=i) for i, item in enumerate(kept)], own


def images_left_in_out(out: Path, inputs: list[InputFile]) -> list[Path]:
    """Images in ``--out`` other than these inputs' outputs, for a run whose recursive walk met
    ``--out`` and left it out (so that outputs are not read as inputs next time): these go
    unsegmented, and the user is told (a photo put there, or an output of an input since removed)."""
    outputs = {
        p.resolve()
        for item in inputs
        for paths in output_candidates(out / item.rel_dir, item.path.stem, list(OUTPUT_KINDS)).values()
        for p in paths
    }
    left: list[Path] = []
    for d, dirs, names in os.walk(out):
        dirs[:] = sorted(n for n in dirs if not n.startswith("."))  # hidden folders, as the walk skips them
        for n in sorted(names):
            path = Path(d) / n
            if not n.startswith(".") and imio.is_image_file(path) and path.resolve() not in outputs:
                left.append(path)
    return left


# Names Windows keeps for devices, whatever the extension: an output CON.png is no file there
_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}


def _on_windows() -> bool:
    return sys.platform == "win32"


def _refuse_reserved(items: Sequence[InputFile]) -> None:
    """On Windows, refuse inputs whose outputs would take a device's name (``CON.jpg`` from a Linux
    share makes ``CON.png``, which Windows opens as the console), before anything is written.

    Raises:
        InputError: naming them.
    """
    if not _on_windows():
        return
    reserved = [item.path for item in items if item.path.stem.split(".")[0].rstrip(" .").upper() in _RESERVED]
    if reserved:
        raise InputError(
            f"{counted(len(reserved), 'input')} would make outputs with a name Windows keeps for a device: "
            f"{listing([str(p) for p in reserved], 5)}",
            hint=f"rename {'it' if len(reserved) == 1 else 'them'}, e.g. "
            f"{reserved[0].stem}_1{reserved[0].suffix}",
        )


def _refuse_unnameable(out: Path, items: Sequence[InputFile], save: Sequence[str]) -> None:
    """Refuse a run in which an input's outputs (or a folder --recursive mirrors) would have a name
    longer than ``--out``'s file system takes: found here, the run is refused before the model
    loads and before anything is written, instead of writing the mask and failing at the longer
    ``<stem>_composite.png``. The temporary names of the atomic writes are bounded by the writer
    (:func:`pdseg_cli.data.atomic.temp_name`), so the final names are the ones to check.

    Raises:
        InputError: naming every input at fault, the name it would make, and how long a name fits.
    """
    limits: dict[Path, int] = {}  # per output folder: --recursive may mirror onto other mounts
    faults: list[str] = []
    fault_limits: set[int] = set()
    stem_room: list[int] = []  # the most bytes each faulty input's stem may have
    folder_limit: int | None = None  # set when a folder --recursive mirrors is at fault
    for item in items:
        folder = out / item.rel_dir
        if folder not in limits:
            limits[folder] = name_max(folder)
        limit = limits[folder]
        long_parts = [part for part in item.rel_dir.parts if name_too_long(folder, part, limit)]
        if long_parts:
            faults.append(f"{item.path} (its folder {long_parts[0]} is {name_bytes(long_parts[0])} bytes)")
            folder_limit = limit
            fault_limits.add(limit)
            continue
        stem = item.path.stem
        names = [p.name for paths in output_candidates(folder, stem, save).values() for p in paths]
        longest = max(names, key=name_bytes)
        if name_too_long(folder, longest, limit):
            # the input's own name is said once: the output's is named by its pattern
            pattern = "<stem>" + longest[len(stem) :]
            faults.append(f"{item.path} (its {pattern} would be {name_bytes(longest)} bytes)")
            stem_room.append(limit - (name_bytes(longest) - name_bytes(stem)))
            fault_limits.add(limit)
    if not faults:
        return
    fixes = []
    if stem_room:
        fixes.append(
            f"a name of at most {max(1, min(stem_room))} bytes before the extension fits "
            "(in UTF-8: é takes 2 bytes, 日 3)"
        )
    if folder_limit is not None:
        fixes.append(f"a folder name of at most {folder_limit} bytes fits")
    raise InputError(
        f"{counted(len(faults), 'input')} would make output names longer than the "
        f"{min(fault_limits)} bytes the file system of --out {out} takes: {listing(faults, 3, sep='; ')}",
        hint=f"rename {'it' if len(faults) == 1 else 'them'}: " + "; ".join(fixes),
    )


def _written_as_given(whole: Path, relative: bool) -> Path:
    """An absolute path, written as the user's paths were: relative to the working folder when they
    were (absolute still where there is no relative way, another drive on Windows)."""
    if not relative:
        return whole
    try:
        return Path(os.path.relpath(whole))
    except ValueError:
        return whole


def _common_folder(folders: Sequence[Path]) -> Path | None:
    """The folder that holds all of ``folders``, written as they were (relative to the working folder
    when they all were: ``dA``, ``dB`` -> ``.``; ``../dA``, ``dD`` -> ``..``); None when it is the
    file system's root, or there is none (two drives on Windows)."""
    try:
        whole = Path(os.path.commonpath([os.path.abspath(f) for f in folders]))
    except ValueError:
        return None
    if whole.parent == whole:
        return None
    return _written_as_given(whole, relative=not any(f.is_absolute() for f in folders))


def _sibling_folder(out: Path) -> str:
    """A folder beside ``out`` for its outputs (``photos`` -> ``photos-masks``; ``.`` inside
    ``photos`` -> ``../photos-masks``, not a ``photos-masks`` inside it), written as ``out`` was."""
    whole = out.resolve()
    sibling = whole.parent / f"{whole.name or 'images'}-masks"
    return str(_written_as_given(sibling, relative=not out.is_absolute()))


def _refuse_clashes(
    clashes: list[tuple[InputFile, InputFile, Path]],
    recursive: bool,
    folded: bool = False,
    out: Path | None = None,
    inputs: Sequence[InputFile] = (),
) -> None:
    """Refuse inputs that would write the same output files, naming every pair (``cat.jpg`` and
    ``cat.png`` both make ``cat.png``).

    Raises:
        InputError: always.
    """
    pairs = list(dict.fromkeys((a.path, b.path) for a, b, _ in clashes))
    named = [f"{a} and {b}" for a, b in pairs]
    # A.jpg and a.png make A.png and a.png: one file where --out folds case
    by_case = folded and any(a.stem != b.stem for a, b in pairs)
    case_note = "; --out is on a file system where names that differ only in case are one file"
    across_folders = any(a.parent != b.parent for a, b in pairs)
    hint = "rename one of each pair, or run them separately into separate --out folders"
    # a master TIFF beside its JPEG (IMG_0001.tif, IMG_0001.jpg), as archives keep them: one run per
    # kind of file, each into its own folder, with no file renamed; offered only where the run's
    # inputs are all in that one folder and of exactly two suffixes, so the two runs leave none out
    # (and .JPG beside .jpg, one kind whose two runs would share an --out, gets the plain hint)
    spelled = sorted({item.path.suffix for item in inputs})
    folders = {item.path.parent for item in inputs}
    if (
        out is not None
        and not by_case
        and not recursive
        and len(folders) == 1
        and len(spelled) == 2
        and len({s.lower() for s in spelled}) == 2
    ):
        (folder,) = folders
        runs = [
            f"pdseg predict {shell_quote(str(folder / ('*' + s)))} -o {shell_quote(f'{out}-{s[1:].lower()}')}"
            for s in spelled
        ]
        hint = f"rename one of each pair, or run each kind into its own --out: {runs[0]}, then {runs[1]}"
    elif across_folders and not recursive:
        # inputs named apart (dA dB) get the same output folder with -r too; their common folder
        # read with -r mirrors each one's subfolder under --out
        parent = _common_folder([a.parent for pair in pairs for a in pair])
        if parent is not None and out is not None:
            hint += (
                f", or segment their common folder with --recursive, which mirrors its subfolders "
                f"under --out (and reads every image under it): pdseg predict {shell_quote(str(parent))} "
                f"-r -o {shell_quote(str(out))}"
            )
    raise InputError(
        f"{counted(len(pairs), 'pair')} of inputs would write the same output files "
        f"(e.g. {clashes[0][2]}): {listing(named, 5, sep='; ')}" + (case_note if by_case else ""),
        hint=hint,
    )


def not_an_output(path: Path, kind: str) -> str | None:
    """What ``path`` is, when it is a file but not one an earlier run wrote as a ``kind`` output
    (``an 8-bit PNG with 3 channels; pdseg's mask has 1``); None when it is no file, or is such an
    output. Told by its header (read once): the kind's samples per pixel, in an 8-bit PNG or a
    16/32-bit TIFF (the only files pdseg writes), and pdseg's mark
    (:func:`pdseg_cli.data.header.carries_output_mark`). The layout alone is not enough: a GT mask
    is an 8-bit gray PNG as pdseg's mask is, and ``predict --out gt/`` would replace it."""
    if not path.is_file():
        return None
    spec = OUTPUT_KINDS[kind]
    head = header.read_head(path, 128)  # IHDR and the mark right after it, in a pdseg PNG
    layout, marked = header.layout_and_mark(path, head)
    if layout is None:
        written = "TIFF" if path.suffix.lower() == HIGH_DEPTH_SUFFIX else "PNG"
        ours = f"the {spec.channels}-channel {written} pdseg writes as {_a(kind)}"
        other = header.image_kind(head)  # the format its first bytes announce
        return f"{_a(other)}, not {ours}" if other is not None else f"not an image, nor {ours}"
    fmt, samples, bits = layout
    if samples == spec.channels and (bits == 8 if fmt == "PNG" else bits >= 16):
        if marked:
            return None
        return f"{_a(f'{bits}-bit')} {_LAYOUT_NAMES[samples]} {fmt} {_UNMARKED}"
    what = f"{_a(f'{bits}-bit')} {fmt} with {counted(samples, 'channel')}"
    if samples != spec.channels:
        return f"{what}; pdseg's {kind} has {spec.channels}"
    return f"{what}; pdseg's {kind} {fmt} is " + ("8-bit" if fmt == "PNG" else "16- or 32-bit")


# the samples per pixel of pdseg's output kinds, as a file of that layout is described
_LAYOUT_NAMES = {1: "gray", 3: "RGB", 4: "RGBA"}
# why a file of an output's layout is not taken for one, said since nothing else is wrong with it
# (often a GT mask); an older pdseg's output cannot be told from it, which the refusal's hint covers
_UNMARKED = 'without the "Software: pdseg" mark of pdseg\'s outputs; pdseg before 2026-12-06 marked none'
# the end of a refusal's hint where such files are among those refused
OLDER_OUTPUTS_HINT = (
    ", which carry its mark (outputs of a pdseg that marked none: delete them to write them again)"
)


def unmarked_among(described: Sequence[str]) -> bool:
    """Whether a refusal's file descriptions (:func:`not_an_output`) include a file of an output's
    layout that lacks only the mark: maybe an older pdseg's output, whose fix the hint then says."""
    return any(_UNMARKED in line for line in described)


def _a(word: str) -> str:
    """``word`` after 'a' or 'an' as it is said: an 8-bit, an 11-bit, an alpha; a 16-bit, a PNG, a JPEG."""
    digits = word[: len(word) - len(word.lstrip("0123456789"))]
    vowel = (digits[:1] == "8" or digits in ("11", "18")) if digits else word[:1].lower() in "aeio"
    return f"{'an' if vowel else 'a'} {word}"


def _earlier_output(path: Path, kind: str) -> bool:
    """Whether ``path`` is a file that an earlier run wrote as a ``kind`` output (:func:`not_an_output`)."""
    return path.is_file() and not_an_output(path, kind) is None


@dataclass(frozen=True, order=True)
class OtherwiseMade:
    """An earlier output whose mark records other weights or settings than the run's
    (:mod:`pdseg_cli.engine.made_with`): its path and kind, and which of the two were the run's."""

    path: Path
    kind: str
    same_weights: bool
    same_settings: bool


class _Resume:
    """--skip-existing's look at earlier outputs: which show their image done, and the outputs that
    do not for a reason the user is told (:attr:`PredictPlan.unnamed_outputs`, and
    :attr:`PredictPlan.otherwise_made`, which :meth:`PredictPlan.refuse_otherwise_made` refuses).

    ``made``: this run's model and settings (:class:`MadeWith`); None takes an output made with
    any as done (a caller that does not say them)."""

    def __init__(self, made: MadeWith | None) -> None:
        self.made = made
        self.changed = _ChangedInputs()
        self.unnamed: list[Path] = []
        self.otherwise_made: list[OtherwiseMade] = []
        self._ids: dict[str, str] = {}  # made.id_for(kind), worked out once per kind

    def image_done(self, out: Path, item: InputFile, save: Sequence[str]) -> bool:
        """Whether every ``save`` kind of ``item`` has an earlier output that shows it done. The
        outputs not taken are noted only for an image left to do: where a kind has two candidate
        paths (a .png and a .tif, the input's depth unknown), a stale one beside the one that shows
        the image done says nothing against it."""
        unnamed, otherwise = len(self.unnamed), len(self.otherwise_made)
        # lists, not generators: every output is looked at, so that each one not taken is counted
        done = all(
            [
                any([self.done_by(p, kind, item.path) for p in paths])
                for kind, paths in output_candidates(out / item.rel_dir, item.path.stem, save).items()
            ]
        )
        if done:
            del self.unnamed[unnamed:], self.otherwise_made[otherwise:]
        return done

    def done_by(self, output: Path, kind: str, source: Path) -> bool:
        """Whether ``output``, an earlier ``kind`` output, shows ``source``'s image done: made from
        it (its mark names it), with this run's model and settings where its mark records them, and
        not from an earlier state of it.

        A pdseg of 2026-12-06 marked its outputs without naming their input: such an output may be
        another input's of the same name (the last camera card's IMG_0001.JPG), so the image is made
        again, and the output noted in ``unnamed``. One made with other weights or settings is
        noted in ``otherwise_made``; marks before the settings were recorded in them say nothing
        about them, and are taken as they were."""
        if not _earlier_output(output, kind):
            return False
        marked = header.marked_source(output)
        if marked is None:
            self.unnamed.append(output)
            return False
        if self.made is not None and marked.made is not None:
            if kind not in self._ids:
                self._ids[kind] = self.made.id_for(kind)
            if marked.made != self._ids[kind]:
                same_weights, same_settings = alike(marked.made, self._ids[kind])
                self.otherwise_made.append(OtherwiseMade(output, kind, same_weights, same_settings))
                return False
        return not self.changed.since(output, source, marked)


class _ChangedInputs:
    """Which earlier outputs were made from an earlier state of their input (--skip-existing makes
    them again: kept, a turned photo's mask stayed sideways, and a retouched one its old mask).

    An input counts as changed since an output when its file was modified or replaced after the
    output was written (its mtime, or its ctime, which a move or a copy that keeps the old date
    sets) and its bytes are not those the output's mark records: a copy of the same bytes with a
    new date is no change. The input is hashed only where its times are later than the output's,
    once per input whatever the outputs; an output found unchanged gets the present time, so the
    next resume does not hash its input again.
    """

    def __init__(self) -> None:
        self._content: dict[Path, str | None] = {}

    def since(self, output: Path, source: Path, marked: header.MarkedSource) -> bool:
        """Whether ``output``, whose mark names ``marked``, was made from an earlier state of
        ``source``. Never raises."""
        try:
            info = source.stat()
            if max(info.st_mtime_ns, info.st_ctime_ns) <= output.stat().st_mtime_ns:
                return False
        except OSError:
            return False
        if marked.content_id is None:  # a mark that records no content: made again
            return True
        if source not in self._content:
            self._content[source] = header.content_id(source)
        if marked.content_id != self._content[source]:
            return True
        with contextlib.suppress(OSError):  # a read-only --out: hashed again next time, no more
            os.utime(output)
        return False


def _written_paths(out: Path, item: InputFile, kind: str) -> list[Path]:
    """The paths output ``kind`` of ``item`` may be written to: the 8-bit one or the 16-bit/float
    one where the input's header says which, else both."""
    folder, stem = out / item.rel_dir, item.path.stem
    if not OUTPUT_KINDS[kind].follows_depth:
        return [output_path(folder, stem, kind, False)]
    eight = header.eight_bit_input(item.path)
    if eight is None:
        return [output_path(folder, stem, kind, False), output_path(folder, stem, kind, True)]
    return [output_path(folder, stem, kind, not eight)]


def _refuse_foreign_files(out: Path, items: Sequence[InputFile], save: Sequence[str]) -> None:
    """Refuse a run that would replace files in ``--out`` that are not earlier outputs of their
    kind (a colour photo ``album/cat.png``, or a GT mask ``gt/cat.png``, where the mask of ``cat.jpg``
    goes): pdseg replaces its own outputs on a rerun, and nothing else. An earlier output is told
    by its header and pdseg's mark in it (:func:`not_an_output`).

    Raises:
        InputError: naming the files and what each is.
    """
    foreign: list[str] = []
    for item in items:
        for kind, paths in output_candidates(out / item.rel_dir, item.path.stem, save).items():
            found = {p: what for p in paths if (what := not_an_output(p, kind)) is not None}
            if not found:
                continue  # the usual case, without reading the input's header
            for p in _written_paths(out, item, kind):
                if p in found:
                    foreign.append(f"{p} ({found[p]})")
    if foreign:
        # files of an output's layout without the mark may be an older pdseg's outputs: say the way
        raise InputError(
            # "did not write" was false of an older pdseg's outputs, which carry no mark
            f"--out {out} holds {counted(len(foreign), 'file')} that pdseg would replace and cannot "
            f"take for its own outputs: {listing(foreign, 5, sep='; ')}",
            hint="move them, or choose another --out; pdseg replaces only its own earlier outputs"
            + (OLDER_OUTPUTS_HINT if unmarked_among(foreign) else ""),
        )


def other_inputs_outputs(out: Path, items: Sequence[InputFile], save: Sequence[str]) -> list[str]:
    """The earlier outputs in ``out`` that a run of ``items`` would replace, or take as done with
    --skip-existing, although another input made them: ``IMG_0001.JPG`` of one card, then of the
    next, into one ``--out``. Told by the input named in pdseg's mark (:func:`header.marked_source`:
    the same path, or the same content at another path, as after the folder was moved); outputs
    of an earlier pdseg, which recorded none, are taken as they were. Each line names the output
    and this run's input."""
    found: list[str] = []
    for item in items:
        path_id: str | None = None  # this input's ids, worked out once, where an output exists
        content = functools.cache(lambda path=item.path: header.content_id(path))  # the whole file: once
        for paths in output_candidates(out / item.rel_dir, item.path.stem, save).values():
            for p in paths:
                source = header.marked_source(p) if p.is_file() else None
                if source is None:
                    continue
                path_id = path_id or header.source_id(item.path)
                if header.made_from_another(source, path_id, content):
                    found.append(f"{p} (made from another input than {item.path})")
    return found


def _refuse_other_inputs_outputs(
    out: Path, items: Sequence[InputFile], save: Sequence[str], skip_existing: bool
) -> None:
    """Refuse a run that would replace, or with --skip-existing leave in place as its own, earlier
    outputs made from other inputs of the same names (:func:`other_inputs_outputs`): in silence
    the first card's masks would be lost, or the second card's photos never segmented.

    Raises:
        InputError: naming the outputs and the inputs.
    """
    found = other_inputs_outputs(out, items, save)
    if not found:
        return
    what = "take as done" if skip_existing else "replace"
    whose = "another input of the same name" if len(found) == 1 else "other inputs of the same names"
    raise InputError(
        f"--out {out} holds {counted(len(found), 'output')} of {whose}, which this run would {what}: "
        f"{listing(found, 5, sep='; ')}",
        hint="give these inputs an --out of their own, or delete those outputs to make them again from "
        "these inputs",
    )


def _refuse_outside_link(out: Path, path: Path) -> None:
    """Refuse an output name in ``--out`` that is a link to a file outside it (or a loop of links):
    writes go through links (:func:`pdseg_cli.data.atomic.final_target`), and a mask written
    through a link to, say, a GT folder would overwrite that file in silence.

    Raises:
        InputError: ``path`` leads outside ``out``, or round in a loop.
    """
    hint = "remove the link (pdseg then writes a file of its own there), or choose another --out"
    try:
        target = path.resolve()
    except (RuntimeError, OSError):  # a loop: RuntimeError before Python 3.13, OSError (ELOOP) after
        raise InputError(f"--out {out}: the output {path} is a link in a loop", hint=hint) from None
    if not target.is_relative_to(out.resolve()):
        raise InputError(
            f"--out {out}: the output {path} is a link to {target}, outside --out; writing it would "
            "change that file",
            hint=hint,
        )


def check_out_dir(out_dir: Path) -> None:
    """Prove a file can be written in ``out_dir`` (in the folder it will be made in, when it does
    not exist yet), before any work. It is made by the first write, so a run that ends before
    writing anything (Ctrl-C while the model loads, weights that fail) leaves no empty folder.

    Raises:
        InputError: it is a file, cannot be created, or is not writable.
    """
    if out_dir.exists() and not out_dir.is_dir():
        # a device (/dev/null, to throw the maps away) is no file to name a folder after
        special = is_special(out_dir)
        example = "masks" if special else out_dir.parent / (out_dir.stem + "-masks")
        what = "a device or pipe" if special else "a file"
        raise InputError(
            f"--out {out_dir} is {what}, not a folder",
            hint=f"give a folder for the maps (pdseg writes one file per image in it), e.g. --out {example}",
        )
    if not out_dir.exists() and out_dir.suffix.lower() in imio.IMAGE_SUFFIXES:
        # `--out mask.png` for one image would make a folder mask.png/ with the mask inside it
        raise InputError(
            f"--out {out_dir} names a file, and --out is the folder the maps go to (named after the images)",
            hint=f"give a folder, e.g. --out {out_dir.parent / out_dir.stem}",
        )
    imio.check_writable_folder(out_dir, f"--out {out_dir}", create=False)


@dataclass
class PredictPlan:
    """What a folder run will do; made before the model is loaded.

    Attributes:
        out_dir: the output folder.
        save: the output kinds (names in :data:`pdseg_cli.engine.output_kinds.OUTPUT_KINDS`).
        todo: this process's images still to segment (the whole run's in a plan not yet
            :meth:`share`-d).
        skipped: this process's images whose outputs all exist (with --skip-existing), likewise.
        not_images: files met that are not images (the same list in every process).
        total: images in the whole run, all processes together.
        max_pixels: images whose header says more pixels are refused before decoding.
        refine_foreground: outputs made from the image (alpha, composite) put the estimated colour
            of the object (:func:`pdseg_cli.data.foreground.estimate_foreground`) under fractional
            alpha instead of the original pixels, which carry the old background's colour.
        left_in_out: images in ``--out`` that a recursive folder walk leaves out and that are not
            outputs of these inputs (:func:`images_left_in_out`): not segmented, and said.
        own_outputs: pdseg's own outputs found among the inputs of a folder or pattern
            (:func:`split_own_outputs`): not segmented, and said.
        unnamed_outputs: earlier outputs that --skip-existing does not take as done, as their mark
            names no input (:meth:`_Resume.done_by`): their images are made again, and said.
        otherwise_made: earlier outputs whose mark records other weights or settings than the
            run's (:class:`OtherwiseMade`): :meth:`refuse_otherwise_made` refuses them.
    """

    out_dir: Path
    save: tuple[str, ...]
    todo: list[InputFile]
    skipped: list[InputFile]
    not_images: list[Path]
    total: int
    refine_foreground: bool = True
    max_pixels: int | None = imio.DEFAULT_MAX_PIXELS
    left_in_out: list[Path] = field(default_factory=list)
    own_outputs: list[Path] = field(default_factory=list)
    unnamed_outputs: list[Path] = field(default_factory=list)
    otherwise_made: list[OtherwiseMade] = field(default_factory=list)

    def refuse_otherwise_made(self) -> None:
        """Refuse a --skip-existing run into an ``out_dir`` whose earlier outputs were made with
        other weights or settings (:attr:`otherwise_made`). Going on would leave a folder of two
        runs' maps, or make every image again where an option was only forgotten (a resume
        without the ``--size 1024`` the run had: hours of maps replaced); which of the two is meant
        is the user's to say. Called once the model has loaded, so that an option the model
        refuses (``--onnx-spec`` for a checkpoint) is said first, as the cause.

        Raises:
            InputError: there are such outputs.
        """
        outputs = self.otherwise_made
        if not outputs:
            return
        weights = not all(o.same_weights for o in outputs)
        settings = not all(o.same_settings for o in outputs)
        what = (
            "other weights and other settings"
            if weights and settings
            else "other weights"
            if weights
            else "the same weights but other settings"
        )
        options = ["--weights"] if weights else []
        if settings:
            options += ["--size", "--tta", "--scales", "--onnx-spec", "--threshold"]
            if any(
                OUTPUT_KINDS[o.kind].uses_image or OUTPUT_KINDS[o.kind].uses_background
                for o in outputs
                if not o.same_settings
            ):
                options += ["--bg", "--refine-foreground"]
        given = options[0] if len(options) == 1 else f"{', '.join(options[:-1])} and {options[-1]}"
        was = "was" if len(outputs) == 1 else "were"
        names = listing([str(o.path) for o in outputs], 3)
        raise InputError(
            f"{counted(len(outputs), 'earlier output')} in {self.out_dir} ({names}) {was} made with {what} "
            "than this run: --skip-existing goes on only with the options a run was started with",
            hint=f"give the same {given} as the earlier run (its --json report lists "
            f"{'it' if len(options) == 1 else 'them'} under settings), or delete those outputs to make only "
            "them again, or drop --skip-existing to make every image again",
        )

    def share(self, dist: runtime.Distributed) -> PredictPlan:
        """This process's share of a plan for the whole run, as :func:`plan_predict` with ``dist``
        takes it: every world_size-th image to do, and likewise every world_size-th image done, in
        input order, so that a folder gone on with --skip-existing keeps every process busy however
        its done images lie. A command plans the whole run first, so that it can find nothing left
        to do before it starts torch and the process group, and then takes :meth:`agreed` plan's
        share; the plan itself when not under torchrun."""
        if not dist.enabled:
            return self
        return replace(self, todo=dist.shard(self.todo), skipped=dist.shard(self.skipped))

    def agreed(self, dist: runtime.Distributed) -> PredictPlan:
        """Rank 0's images to do and done, in every process of a started process group. Every
        process plans alone before the group starts; an image another program wrote outputs for
        between two processes' plans would be done in one plan and to do in the other, and sharing
        two such lists could miss it in both."""
        if not dist.enabled:
            return self
        todo, skipped = dist.broadcast((self.todo, self.skipped))
        return replace(self, todo=todo, skipped=skipped)


def plan_predict(
    sources: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    save: Sequence[str] | str = ("mask",),
    recursive: bool = False,
    skip_existing: bool = False,
    dist: runtime.Distributed | None = None,
    refine_foreground: bool = True,
    max_pixels: int | None = imio.DEFAULT_MAX_PIXELS,
    made: MadeWith | None = None,
) -> PredictPlan:
    """Find the inputs, check ``out_dir``, refuse clashes, and take this process's share.

    ``made``: the model and settings the run will make its outputs with; --skip-existing notes
    earlier outputs whose marks record others in the plan's ``otherwise_made``, which
    :meth:`PredictPlan.refuse_otherwise_made` (and ``Predictor.run_plan``) refuses (None: outputs
    made with any are done).

    Raises:
        InputError: no images found, ``out_dir`` unusable, an output that would overwrite an
            input, two inputs that would write the same output file, an output name longer
            than ``out_dir``'s file system takes.
    """
    if isinstance(sources, (str, os.PathLike)):  # one folder or file, not its characters
        sources = [sources]
    dist = dist or runtime.Distributed()
    out = Path(out_dir).expanduser()
    save = parse_save(save)  # "mask,alpha" or ["mask", "alpha"], as the CLI takes them
    inputs, not_images, passed_out = collect_inputs(sources, recursive=recursive, exclude=out)
    inputs, own_outputs = split_own_outputs(sources, inputs)
    if not inputs and own_outputs:
        raise InputError(
            f"the images in {', '.join(os.fspath(s) for s in sources)} are all outputs of pdseg (masks or "
            f"cut-outs of an earlier run, e.g. {own_outputs[0]}), which folder and pattern runs leave out",
            hint="give the folder of the photos, or name an output file to segment it anyway",
        )
    if not inputs:
        paths = [Path(s).expanduser() for s in sources]
        if paths and all(p.is_file() for p in paths):  # files named one by one, none of them an image
            named = listing(
                [f"{os.fspath(s)}: {p.suffix or '(no suffix)'}" for s, p in zip(sources, paths, strict=True)],
                3,
            )
            # "not an image" would be untrue of a GIF or a HEIC: not a kind pdseg reads
            kinds = (
                "is not a kind of image pdseg reads"
                if len(paths) == 1
                else "are not kinds of image pdseg reads"
            )
            raise InputError(f"{named} {kinds}", hint=_no_images_hint(paths, recursive, not_images))
        extra = f" ({counted(len(not_images), 'other file')} skipped)" if not_images else ""
        raise InputError(
            f"no images found in {', '.join(os.fspath(s) for s in sources) or '(nothing given)'}{extra}",
            hint=_no_images_hint(paths, recursive, not_images),
        )
    for item in inputs:
        # outputs among their inputs would be read as inputs by the next run (a rerun, or
        # --skip-existing after Ctrl-C) and refused as overwrites: refuse the first run instead
        if (out / item.rel_dir).resolve() == item.path.parent.resolve():
            raise InputError(
                f"--out {out} is the folder of the input {item.path}: outputs written there would be "
                "read as inputs next time",
                hint=f"choose an --out folder apart from the inputs, e.g. {_sibling_folder(out)}",
            )
    # before any output path is looked at: the file system refuses to even look a too long name up
    _refuse_unnameable(out, inputs, save)
    _refuse_reserved(inputs)
    input_keys = {item.path.resolve(): item for item in inputs}
    input_ids = {_file_id(item.path): item for item in inputs}  # also catches case-insensitive file systems
    owner: dict[Path, InputFile] = {}
    # on a file system that folds case (macOS, Windows, exFAT drives) A.png and a.png are one file
    folded = folds_case(out)
    clashes: list[tuple[InputFile, InputFile, Path]] = []
    for item in inputs:
        for paths in output_candidates(out / item.rel_dir, item.path.stem, save).values():
            for p in paths:
                if p.is_symlink():
                    _refuse_outside_link(out, p)
                key = p.resolve()
                same = input_keys.get(key) or (input_ids.get(_file_id(p)) if p.exists() else None)
                if same is not None:
                    raise InputError(
                        f"--out {out} would overwrite the input {same.path} (with the output of {item.path})",
                        hint="choose an --out folder apart from the inputs",
                    )
                if folded:  # and one of é and e + a combining accent: macOS's name rule
                    key = Path(unicodedata.normalize("NFC", str(key)).casefold())
                other = owner.get(key)
                if other is not None and other is not item:
                    clashes.append((other, item, p))
                owner[key] = item
    if clashes:
        _refuse_clashes(clashes, recursive, folded, out, inputs)
    _refuse_other_inputs_outputs(out, inputs, save, skip_existing)
    resume = _Resume(made)
    done = {item.path for item in inputs if skip_existing and resume.image_done(out, item, save)}
    # over every process's inputs, so that all of them refuse together
    _refuse_foreign_files(out, [item for item in inputs if item.path not in done], save)
    check_out_dir(out)  # only now: a refused run leaves no empty --out behind
    for folder in {out / item.rel_dir for item in inputs}:
        sweep_folder(folder)  # what a killed run left half-written (hidden temporaries)
    todo = [item for item in inputs if item.path not in done]
    skipped = [item for item in inputs if item.path in done]
    left = images_left_in_out(out, inputs) if passed_out else []
    whole = PredictPlan(
        out, save, todo, skipped, not_images, len(inputs), refine_foreground, max_pixels, left, own_outputs,
        sorted(set(resume.unnamed)), sorted(set(resume.otherwise_made)),
    )  # fmt: skip
    return whole.share(dist)
