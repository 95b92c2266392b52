"""An image's width and height from its file header, without decoding the pixels.

A small file can claim a huge image (a zlib-compressed TIFF or PNG of 33792x33792 is 3 MB on disk
and 3.4 GB decoded): :func:`image_size` lets the reader refuse it before any allocation. Formats:
PNG (IHDR), JPEG (the first SOFn marker), BMP (BITMAPINFOHEADER), WebP (VP8, VP8L, VP8X), TIFF
(tifffile reads the tags of the page the reader decodes only), PNM (P1-P6, :func:`pnm_header`).

The first bytes also say what a file is whatever its name (:func:`image_kind`): the reader picks
tifffile or OpenCV by them, and names the real format when a file cannot be decoded.

:func:`header_extras` reads what the reader keeps besides the pixels: the embedded ICC profile
(JPEG APP2, PNG iCCP, WebP ICCP; a TIFF's tag through :func:`tiff_icc_profile`), the pixel density
(:class:`Density`: JPEG JFIF or EXIF, PNG pHYs, WebP EXIF; a TIFF's tags through
:func:`tiff_density`), whether the file holds alpha, and a PNG's or WebP's EXIF orientation.

:func:`jpeg_scans_complete` tells a JPEG that lacks only its end marker from one cut inside its
image data, for the reader's retry of a JPEG OpenCV did not decode.

:func:`carries_output_mark` tells pdseg's own outputs from other files of the same layout (a GT
mask is an 8-bit gray PNG as pdseg's mask is): pdseg writes :data:`OUTPUT_MARK` into each, as a
PNG's tEXt ``Software`` or a TIFF's Software tag, followed by an id of the input it was made from
(:func:`output_mark`, read back by :func:`marked_source`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdseg_cli import __version__

_READ = 1 << 16  # enough for the headers above, and for JPEG markers before the first SOF in most files

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # TIFF and BigTIFF, both byte orders

# The first bytes of every format pdseg's readers (OpenCV, tifffile) take, by the format's name
_KINDS: tuple[tuple[str, tuple[bytes, ...]], ...] = (
    ("PNG", (b"\x89PNG",)),
    ("JPEG", (b"\xff\xd8",)),
    ("BMP", (b"BM",)),
    ("WebP", (b"RIFF",)),
    ("TIFF", TIFF_MAGICS),
    ("PNM", tuple(b"P%d" % n for n in range(1, 8))),
    ("GIF", (b"GIF8",)),
    ("JPEG 2000", (b"\x00\x00\x00\x0cjP", b"\xffO\xffQ")),
    ("OpenEXR", (b"v/1\x01",)),
    ("Radiance HDR", (b"#?",)),
)
_SIGNATURES = tuple(sig for _, sigs in _KINDS for sig in sigs)
# PNM magics -> how many numbers the header holds: width, height and (except the bitmaps) maxval
_PNM_NUMBERS = {b"P1": 2, b"P2": 3, b"P3": 3, b"P4": 2, b"P5": 3, b"P6": 3}


@dataclass(frozen=True)
class PnmHeader:
    """A PBM/PGM/PPM header.

    Attributes:
        magic: ``b"P1"`` to ``b"P6"``.
        width: pixels per row.
        height: rows.
        maxval: the sample value of full intensity (1 for the bitmaps P1 and P4).
    """

    magic: bytes
    width: int
    height: int
    maxval: int


def read_head(path: Path, size: int = _READ) -> bytes:
    """The file's first ``size`` bytes (fewer for a short file; empty when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def looks_like_image(path: Path) -> bool:
    """Whether the file starts like an image of a format pdseg reads (not empty, not a text file
    given an image's name). Only the first bytes are read; a valid header says nothing of the rest."""
    return read_head(path, 16).startswith(_SIGNATURES)


# Files that are not images pdseg reads but often carry an image's name or sit among the photos:
# what their first bytes say they are, and how to get an image from them. HEIF/AVIF and videos
# are ISO boxes ("ftyp" at byte 4, then the brand).
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")
_UNREAD = "which pdseg does not read: convert it to PNG or JPEG first"
_OTHER_FORMATS: tuple[tuple[str, tuple[bytes, ...]], ...] = (
    (
        "a HEIC/HEIF photo, the iPhone's format, which pdseg does not read: convert it to JPEG first, "
        "e.g. `heif-convert IMG.heic IMG.jpg`",
        tuple(b"ftyp" + brand for brand in _HEIF_BRANDS),
    ),
    (f"an AVIF image, {_UNREAD}", (b"ftypavif", b"ftypavis")),
    (
        "a video (MP4/MOV): extract its frames first, e.g. `ffmpeg -i VIDEO frames/%05d.png`",
        (b"ftypisom", b"ftypmp41", b"ftypmp42", b"ftypqt  ", b"ftypM4V "),
    ),
    (f"a JPEG XL image, {_UNREAD}", (b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")),
    ("a PDF document: export its pages as PNG first", (b"%PDF",)),
    ("a Photoshop document: export it as PNG or TIFF first", (b"8BPS",)),
    (
        "a Git LFS pointer, not the file itself: fetch the real files with `git lfs pull`",
        (b"version https://git-lfs",),
    ),
)
_WEB_PAGE = "a web page (HTML), not an image: download the image itself again"
_SVG = "an SVG drawing: export it as PNG first"


def other_format(head: bytes) -> str | None:
    """What a file that is not an image pdseg reads is, with what to do, from its first bytes
    (:data:`HEAD_BYTES` of them): ``"a PDF document: export its pages as PNG first"``, else a plain
    description (a text file, or its first bytes in hex). None where the bytes announce a format
    pdseg reads."""
    if image_kind(head) is not None:
        return None
    if head[4:8] == b"ftyp" and b"avif" in head[8:40]:  # an AVIF may name the HEIF brand first
        return f"an AVIF image, {_UNREAD}"
    boxed = head[4:12] if head[4:8] == b"ftyp" else b""
    for what, signatures in _OTHER_FORMATS:
        if any(s == boxed or head.startswith(s) for s in signatures):
            return what
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()  # a BOM or blank lines may come first
    if text.startswith(b"<"):  # markup: an XML declaration or a comment may come before the root
        if b"<svg" in text:
            return _SVG
        if b"<html" in text or b"<!doctype html" in text:
            return _WEB_PAGE
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        shown = head[:24].decode("ascii").split("\n")[0]
        return f"a text file, not an image: it starts {shown!r}"
    return f"not an image: it starts like no format pdseg reads (bytes {head[:8].hex(' ')})"


HEAD_BYTES = 512  # enough for an SVG's or a saved web page's declaration and comments


def not_an_image(path: Path) -> str | None:
    """Why ``path`` cannot be an image pdseg reads, from its first bytes alone (empty, unreadable,
    another format), or None where they announce one (its data may still be damaged)."""
    head = read_head(path, HEAD_BYTES)
    if not head:
        return "empty or unreadable"
    return other_format(head)


def image_kind(head: bytes) -> str | None:
    """The format a file's first bytes announce ('PNG', 'JPEG', 'TIFF', 'PNM', ...), or None."""
    return next((name for name, sigs in _KINDS if head.startswith(sigs)), None)


def image_size(path: Path, head: bytes | None = None) -> tuple[int, int] | None:
    """(width, height) from the header, or None when the format is not known or the header unclear.
    ``head``: the file's first bytes (:func:`read_head`), where the caller has read them already."""
    head = read_head(path) if head is None else head
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head.startswith(b"\xff\xd8"):
            return _jpeg(path, head)
        if head.startswith(b"BM") and len(head) >= 26:
            w, h = struct.unpack("<ii", head[18:26])
            return abs(w), abs(h)
        if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
            return _webp(head)
        if head.startswith(TIFF_MAGICS):
            return _tiff(path)
        pnm = pnm_header(head)
        if pnm is not None:
            return pnm.width, pnm.height
    except (struct.error, ValueError, IndexError):
        return None
    return None


# PNG colour types -> samples per pixel (palette: the RGB it stands for)
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def sample_layout(path: Path, head: bytes | None = None) -> tuple[str, int, int] | None:
    """(format, samples per pixel, bits per sample) of a PNG or TIFF from its header, e.g.
    ``("PNG", 1, 8)`` for an 8-bit gray PNG; None for another format or an unclear header.
    ``head``: the file's first bytes (at least 32), where the caller has read them already."""
    head = read_head(path, 32) if head is None else head
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 26:
        samples = _PNG_CHANNELS.get(head[25])
        return None if samples is None else ("PNG", samples, head[24])
    if head.startswith(TIFF_MAGICS):
        try:
            return _tiff_layout(path, head)
        except (OSError, struct.error, ValueError):  # a damaged file: not one pdseg wrote
            return None
    return None


def eight_bit_input(path: Path) -> bool | None:
    """Whether an input image decodes to 8 bits (True), to 16-bit or float (False), as far as its
    header tells; None where only the samples can (a TIFF of wider integers may hold 0..255)."""
    head = read_head(path)
    kind = image_kind(head)
    if kind in ("JPEG", "BMP", "WebP"):
        return True
    if kind == "PNG" and len(head) >= 25:
        return head[24] <= 8
    if kind == "PNM":
        pnm = pnm_header(head)
        return None if pnm is None else pnm.maxval <= 255
    if kind == "TIFF":
        layout = sample_layout(path, head)
        return True if layout is not None and layout[2] <= 8 else None
    return None


_TAG_BITS_PER_SAMPLE, _TAG_SAMPLES_PER_PIXEL, _TAG_SOFTWARE = 258, 277, 305
# TIFF field types -> bytes per value (BYTE, ASCII, SHORT, LONG, SBYTE, UNDEFINED, SSHORT, SLONG, LONG8)
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 6: 1, 7: 1, 8: 2, 9: 4, 16: 8}
_MAX_TAG_READ = 256  # of one tag's value: the numbers and the start of Software are all that is read


def _tiff_first_ifd(path: Path, head: bytes, tags: frozenset[int]) -> dict[int, tuple[int, bytes]]:
    """``{tag: (field type, value bytes)}`` of those of ``tags`` in a TIFF's first directory, read
    with ``struct`` (tifffile would parse the whole file's structure: a rerun over thousands of
    outputs checks each one). A value is read up to :data:`_MAX_TAG_READ` bytes, from the entry
    itself or from where it points. Empty for a directory no real file has (over 4096 tags).

    Raises:
        OSError, struct.error, ValueError: a file cut short or damaged (the callers' to catch).
    """
    order = _tiff_order(head)
    big = head[2:4] in (b"+\x00", b"\x00+")  # BigTIFF: 8-byte offsets and counts
    count_fmt, offset_fmt, entry_size = ("Q", "Q", 20) if big else ("H", "I", 12)
    found: dict[int, tuple[int, bytes]] = {}
    with open(path, "rb") as f:
        (ifd,) = struct.unpack(order + offset_fmt, head[8:16] if big else head[4:8])
        f.seek(ifd)
        (entries,) = struct.unpack(order + count_fmt, f.read(struct.calcsize(count_fmt)))
        if entries > 4096:  # no real first directory has this many tags
            return found
        table = f.read(entries * entry_size)
        for i in range(entries):
            entry = table[i * entry_size : (i + 1) * entry_size]
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag not in tags:
                continue
            (count,) = struct.unpack(order + offset_fmt, entry[4:12] if big else entry[4:8])
            value = entry[12:] if big else entry[8:]
            whole = count * _TIFF_TYPE_SIZES.get(kind, 4)
            if whole > len(value):  # stored elsewhere: the offset is in the entry
                (where,) = struct.unpack(order + offset_fmt, value)
                f.seek(where)
                value = f.read(min(whole, _MAX_TAG_READ))
            found[tag] = (kind, value[: min(whole, _MAX_TAG_READ)])
    return found


def _tiff_order(head: bytes) -> str:
    """``struct``'s byte order for a TIFF by its first two bytes (``II`` little-endian, ``MM`` big)."""
    return "<" if head[:2] == b"II" else ">"


def _tiff_number(order: str, kind: int, value: bytes, default: int) -> int:
    """The first number of a SHORT (type 3) or, otherwise, LONG tag's value; ``default`` when absent."""
    if not value:
        return default
    size = 2 if kind == 3 else 4
    (number,) = struct.unpack(order + ("H" if size == 2 else "I"), value[:size])
    return int(number)


def _tiff_layout(path: Path, head: bytes) -> tuple[str, int, int]:
    """SamplesPerPixel and the first BitsPerSample of a TIFF's first page (:func:`_tiff_first_ifd`)."""
    return _layout_of(_tiff_first_ifd(path, head, _LAYOUT_TAGS), _tiff_order(head))


_LAYOUT_TAGS = frozenset({_TAG_SAMPLES_PER_PIXEL, _TAG_BITS_PER_SAMPLE})


def _layout_of(found: dict[int, tuple[int, bytes]], order: str) -> tuple[str, int, int]:
    """``("TIFF", samples per pixel, bits per sample)`` from a first directory's tags; the TIFF
    defaults (1 and 1) where a tag is absent."""
    samples = _tiff_number(order, *found.get(_TAG_SAMPLES_PER_PIXEL, (4, b"")), default=1)
    bits = _tiff_number(order, *found.get(_TAG_BITS_PER_SAMPLE, (4, b"")), default=1)
    return "TIFF", samples, bits


# ----------------------------------------------------------------------------------------------
# pdseg's mark on its outputs: which files in --out an earlier run wrote

OUTPUT_MARK = f"pdseg {__version__}"  # a PNG's tEXt "Software", a TIFF's Software tag (305)
_MARK_PREFIX = b"pdseg"  # what a mark starts with, whichever version wrote it
_SOFTWARE_KEYWORD = b"Software"  # the PNG keyword for the program that made the file (PNG spec 11.3.4.2)
_MAX_TEXT = 1024  # a tEXt chunk longer than this is no mark of pdseg's: not read


def carries_output_mark(path: Path, head: bytes | None = None) -> bool:
    """Whether a PNG or TIFF carries the mark pdseg puts on its outputs (:data:`OUTPUT_MARK`): a
    PNG tEXt chunk ``Software`` before the image data, or a TIFF's first-directory Software tag,
    whose text starts with ``pdseg``. Its layout alone cannot tell (a GT mask is an 8-bit gray PNG
    too). Only the chunks before IDAT, or the first directory, are read. A damaged, truncated or
    unreadable file, or another format, reads as unmarked: it never raises.

    ``head``: the file's first bytes, where the caller has read them already.
    """
    return _software_text(path, head).startswith(_MARK_PREFIX)


def source_id(source: Path) -> str:
    """16 hex digits that name an input file in the marks of its outputs (:func:`output_mark`): a
    hash of its resolved absolute path. Not the path itself, so that an output sent to someone
    else does not carry the folder names of the machine it was made on."""
    return hashlib.sha256(os.fsencode(Path(source).resolve())).hexdigest()[:16]


def content_id(source: Path) -> str | None:
    """16 hex digits of an input's content (a sha256 of the whole file), so that a folder of
    inputs moved or copied elsewhere (another mount point, a renamed project) is still known as
    the same inputs. Whole, not sampled: uncompressed scans (BMP, PNM, TIFF) of one size differ
    in their middle rows only. A rerun reads it only for outputs whose input path differs
    (``predict_plan.other_inputs_outputs``), and a writer reads a file it has just read (from the page cache).
    None where the file cannot be read. Never raises."""
    from pdseg_cli.data.teacher import file_sha256  # the one file hash (weights, teachers, inputs)

    try:
        return file_sha256(source)[:16]
    except OSError:
        return None


def output_mark(source: Path) -> str:
    """The mark of an output made from the input ``source``: :data:`OUTPUT_MARK`, then the input's
    :func:`source_id` and :func:`content_id` (``pdseg 0.1.0 (input 3f9a1c2b7d4e5f60
    0b1c2d3e4f5a6b7c)``), so that a later run into the same ``--out`` can tell an output of
    another input of the same name (``IMG_0001.JPG`` of another card) from one of its own, also
    when its folder has moved since (:func:`marked_source`)."""
    return mark_of(input_ids(source))


def input_ids(source: Path) -> MarkedSource:
    """The ids an output of the input ``source`` is marked with (:func:`output_mark`)."""
    return MarkedSource(source_id(source), content_id(source))


def mark_of(ids: MarkedSource, made: str | None = None) -> str:
    """:func:`output_mark` of an input whose :func:`input_ids` are known; ``made``, the id of the
    model and settings the output is made with (:meth:`pdseg_cli.engine.made_with.MadeWith.id_for`),
    follows them (``pdseg 0.1.0 (input 3f9a1c2b7d4e5f60 0b1c2d3e4f5a6b7c; made 9e8d7c6b5a4f3e2d)``)."""
    content = f" {ids.content_id}" if ids.content_id else ""
    return f"{OUTPUT_MARK} (input {ids.path_id}{content}{f'; made {made}' if made else ''})"


def made_from_another(found: MarkedSource | None, path_id: str, content: Callable[[], str | None]) -> bool:
    """Whether an output whose mark names ``found`` (:func:`marked_source`) was made from another
    input than the one whose :func:`source_id` is ``path_id``: another path, and other content or
    none recorded. ``content`` gives that input's :func:`content_id`, called only where the paths
    differ (it reads the whole file). An output without an input in its mark (not pdseg's, or an
    earlier pdseg's) is nobody else's."""
    if found is None or found.path_id == path_id:
        return False
    return found.content_id is None or found.content_id != content()


# the input's ids, then fields "; <key> <value>": "made" (the model and settings), and whatever
# a later pdseg adds, passed over, so that its outputs still name their input here (a version
# that read only the mark it wrote took its successor's "; made ..." for no mark at all)
_SOURCE_IN_MARK = re.compile(rb"pdseg \S+ \(input ([0-9a-f]{16})(?: ([0-9a-f]{16}))?((?:; [^;()]*)*)\)\x00*")


@dataclass(frozen=True)
class MarkedSource:
    """The input an output's mark names: :func:`source_id` and, in marks since 2026-12-07,
    :func:`content_id` (None in older ones); and ``made``, the id of the model and settings the
    output was made with (:func:`mark_of`), where the mark records one (None in marks before it did)."""

    path_id: str
    content_id: str | None
    made: str | None = None


def marked_source(path: Path, head: bytes | None = None) -> MarkedSource | None:
    """The input named in pdseg's mark on an output (:func:`output_mark`); None for a file without
    one naming an input: not pdseg's, damaged, an output of a pdseg before 2026-12-06 (no mark),
    or one of 2026-12-06, whose mark names no input.
    Never raises."""
    found = _SOURCE_IN_MARK.fullmatch(_software_text(path, head))
    if not found:
        return None
    content = found.group(2)
    fields = dict(f.partition(b" ")[::2] for f in found.group(3).split(b"; ") if f)
    # a "made" of a form this version does not know is another model's or settings' id, not none
    made = fields.get(b"made")
    return MarkedSource(
        found.group(1).decode(),
        content.decode() if content else None,
        made.decode("ascii", "replace") if made is not None else None,
    )


def layout_and_mark(path: Path, head: bytes) -> tuple[tuple[str, int, int] | None, bool]:
    """:func:`sample_layout` and :func:`carries_output_mark` of one file, a TIFF's first directory
    read once for both (a rerun over thousands of outputs checks each one). Never raises.

    ``head``: the file's first bytes (:func:`read_head`; 128 hold a pdseg PNG's IHDR and mark).
    """
    if not head.startswith(TIFF_MAGICS):
        return sample_layout(path, head), carries_output_mark(path, head)
    try:
        found = _tiff_first_ifd(path, head, _LAYOUT_TAGS | {_TAG_SOFTWARE})
    except (OSError, struct.error, ValueError, IndexError):  # a damaged file: not one pdseg wrote
        return None, False
    return _layout_of(found, _tiff_order(head)), _tiff_marked(found)


def _tiff_marked(found: dict[int, tuple[int, bytes]]) -> bool:
    """Whether a first directory's Software tag is pdseg's mark."""
    return _tiff_software(found).startswith(_MARK_PREFIX)


def _tiff_software(found: dict[int, tuple[int, bytes]]) -> bytes:
    """A first directory's Software tag (ASCII, type 2) as read; empty when it has none."""
    kind, value = found.get(_TAG_SOFTWARE, (0, b""))
    return value if kind == 2 else b""


def _software_text(path: Path, head: bytes | None) -> bytes:
    """The Software text of a PNG (its first whole tEXt ``Software`` chunk before IDAT) or a TIFF
    (its first directory's tag), where pdseg's mark is; empty for none, another format, or a file
    damaged or unreadable. Never raises."""
    head = read_head(path, 128) if head is None else head
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            with _FileBytes(path, head) as data:
                return _png_software(data)
        if head.startswith(TIFF_MAGICS):
            return _tiff_software(_tiff_first_ifd(path, head, frozenset({_TAG_SOFTWARE})))
    except (OSError, struct.error, ValueError, IndexError):
        pass
    return b""


def _png_software(data: _FileBytes) -> bytes:
    """The text of a PNG's first whole tEXt ``Software`` chunk before IDAT (its CRC right: a
    chunk cut short or damaged is passed over); empty when there is none."""
    for offset, length, name in _png_chunks(data):
        if name == b"IDAT":
            break
        if name == b"tEXt" and length <= _MAX_TEXT:
            body = data.read(offset + 8, length + 4)
            text, crc = body[:length], body[length:]
            if len(crc) == 4 and zlib.crc32(b"tEXt" + text) == struct.unpack(">I", crc)[0]:
                keyword, _, value = text.partition(b"\x00")
                if keyword == _SOFTWARE_KEYWORD:
                    return value
    return b""


def _png_chunks(data: _FileBytes) -> Iterator[tuple[int, int, bytes]]:
    """(offset, data length, type) of each chunk of a PNG, from the first after the signature up to
    IEND (not included); it stops early at a header cut short or a length no chunk has."""
    offset = 8
    while True:
        chunk = data.read(offset, 8)
        if len(chunk) < 8:
            return
        length, name = struct.unpack(">I", chunk[:4])[0], chunk[4:8]
        if length > 2**31 - 1 or name == b"IEND":
            return
        yield offset, length, name
        offset += 12 + length


def pnm_header(head: bytes) -> PnmHeader | None:
    """The header of a P1-P6 file from its first bytes, or None when it is not one or is unclear.

    The numbers are separated by whitespace, and ``#`` starts a comment that runs to the end of
    its line (scanners and GIMP write one after the magic).
    """
    count = _PNM_NUMBERS.get(head[:2])
    if count is None or not head[2:3].isspace():
        return None
    numbers: list[int] = []
    i = 2
    while len(numbers) < count:
        while head[i : i + 1].isspace():
            i += 1
        if i >= len(head):
            return None
        if head[i : i + 1] == b"#":
            ends = [j for j in (head.find(b"\n", i), head.find(b"\r", i)) if j >= 0]
            if not ends:
                return None
            i = min(ends) + 1
            continue
        j = i
        while head[j : j + 1].isdigit():
            j += 1
        if j == i or j - i > 9:  # not a number, or one no image has (int() refuses 4300+ digits)
            return None
        numbers.append(int(head[i:j]))
        i = j
    width, height = numbers[0], numbers[1]
    maxval = numbers[2] if count == 3 else 1
    if width < 1 or height < 1 or not 1 <= maxval <= 65535:
        return None
    return PnmHeader(head[:2], width, height, maxval)


def full_resolution_page(pages: Iterable[Any]) -> int:
    """The index of the page a multi-page TIFF is read from: the first that is not a
    reduced-resolution preview (NewSubfileType bit 0, which scanners and RAW converters set on a
    thumbnail they put first); 0 when every page is one.

    Args:
        pages: tifffile's ``TiffFile.pages`` (read lazily: the pages after the one found are not).
    """
    for index, page in enumerate(pages):
        if not getattr(page, "is_reduced", False):
            return index
    return 0


def _jpeg(path: Path, head: bytes) -> tuple[int, int] | None:
    """A JPEG's (width, height) from its SOF segment, which may lie past ``head`` (large EXIF or
    ICC blocks come first)."""
    with _FileBytes(path, head) as data:
        for code, offset, _length in _jpeg_segments(data):
            if 0xC0 <= code <= 0xCF and code not in (0xC4, 0xC8, 0xCC):  # a start of frame
                size = data.read(offset + 5, 4)
                if len(size) < 4:
                    return None
                h, w = struct.unpack(">HH", size)
                return w, h
    return None


def _jpeg_segments(data: _FileBytes) -> Iterator[tuple[int, int, int]]:
    """``(marker, offset, length)`` of each segment of a JPEG's header that has a length, in file
    order, up to the start of scan (the image data) or the first byte that is not a marker."""
    offset = 2
    while True:
        marker = data.read(offset, 4)
        if len(marker) < 2 or marker[0] != 0xFF:
            return
        code = marker[1]
        if code == 0xFF:  # fill byte
            offset += 1
            continue
        if code in (0xD8, 0x01) or 0xD0 <= code <= 0xD7:  # no length
            offset += 2
            continue
        if code in (0xD9, 0xDA) or len(marker) < 4:  # end of image, start of scan: no more headers
            return
        (length,) = struct.unpack(">H", marker[2:4])
        if length < 2:
            return
        yield code, offset, length
        offset += 2 + length


def _webp(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(head[24:27], "little") + 1
        h = int.from_bytes(head[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


# ----------------------------------------------------------------------------------------------
# what the reader keeps besides the pixels: the colour profile, whether there is alpha, orientation

ICC_PROFILE_TAG = 34675  # TIFF InterColorProfile
TIFF_X_RESOLUTION, TIFF_Y_RESOLUTION, TIFF_RESOLUTION_UNIT = 282, 283, 296  # EXIF's IFD0 too
_MAX_ICC = 1 << 25  # 32 MiB: larger than any real profile; a "profile" over it is damage, not colour
_JPEG_ICC = b"ICC_PROFILE\x00"


MAX_DPI = 100_000  # denser than any scanner or printer: a "density" over it is damage, not size
_CM_PER_INCH = 2.54
_RESOLUTION_UNITS = {2: "inch", 3: "cm"}  # TIFF/EXIF ResolutionUnit; 1 (none) says no size at all


@dataclass(frozen=True)
class Density:
    """How many pixels fill a length of paper, which print and layout programs size an image by (a
    600 dpi scan shown at 72 dpi is 8 times its size): ``x`` across and ``y`` down per ``unit``,
    ``"inch"`` or ``"cm"``. Kept in the file's own unit, so that it is written back exactly
    (600 dpi as 600/1 inch in a TIFF; a PNG's 23622 pixels per metre as 23622 again).
    Made by :func:`density` only, which refuses nonsense values."""

    x: float
    y: float
    unit: str = "inch"

    def per_metre(self) -> tuple[int, int]:
        """(x, y) in pixels per metre, rounded: a PNG pHYs chunk's numbers."""
        scale = 100.0 if self.unit == "cm" else 100.0 / _CM_PER_INCH
        return max(1, round(self.x * scale)), max(1, round(self.y * scale))

    def oriented(self, orientation: int) -> Density:
        """The density of the image shown by the EXIF/TIFF ``orientation`` (1-8): 5-8 turn it by 90
        degrees, so the file's across is the shown image's down."""
        return Density(self.y, self.x, self.unit) if orientation in (5, 6, 7, 8) else self


def density(x: float, y: float, unit: str | None) -> Density | None:
    """A :class:`Density` of ``x`` and ``y`` pixels per ``unit`` (``"inch"``, ``"cm"``), or None
    when there is no unit or a value is no size (0, negative, NaN, over :data:`MAX_DPI`)."""
    if unit not in ("inch", "cm"):
        return None
    per_inch = _CM_PER_INCH if unit == "cm" else 1.0
    for value in (x, y):
        if not (math.isfinite(value) and 0 < value * per_inch <= MAX_DPI):
            return None
    return Density(float(x), float(y), unit)


def tiff_density(x: Any, y: Any, unit: Any) -> Density | None:
    """A TIFF's XResolution and YResolution (tifffile gives (numerator, denominator); None when
    absent) and ResolutionUnit (None when absent: inch, the TIFF default) as a density."""
    try:
        return density(_ratio(x), _ratio(y), _RESOLUTION_UNITS.get(2 if unit is None else int(unit)))
    except (TypeError, ValueError, IndexError):
        return None


def _ratio(value: Any) -> float:
    """A TIFF RATIONAL, (numerator, denominator), as a number; NaN when there is none."""
    if value is None:
        return math.nan
    numerator, denominator = (value, 1) if isinstance(value, int | float) else tuple(value)[:2]
    return numerator / denominator if denominator else math.nan


@dataclass(frozen=True)
class HeaderExtras:
    """What a PNG, JPEG or WebP header says beyond the size (:func:`header_extras`).

    Attributes:
        icc_profile: the embedded ICC profile, when it is whole and describes RGB (a gray or CMYK
            profile does not describe the RGB pdseg makes of such a file); None otherwise.
        has_alpha: the file stores an alpha channel (PNG gray+alpha or RGBA, a palette with
            transparency; WebP with alpha). OpenCV drops it unless asked to decode unchanged.
        orientation: the EXIF Orientation of a PNG or WebP (1-8; 1 when absent), read as OpenCV
            reads it: a decode that keeps alpha must apply it itself (OpenCV skips it then).
        colour_key: a gray or RGB PNG's tRNS colour (one sample or three, at the file's own bit
            depth): pixels of exactly that value are transparent, the rest opaque. OpenCV gives
            no alpha for a gray one, so the reader builds the alpha from the key (for RGB too: one
            rule for both); None when the file has no key.
        bit_depth: a PNG's bits per sample (1-16), which ``colour_key`` is written at.
        frames: the frames of an animated PNG (its acTL chunk) or WebP (its ANMF chunks); 1 for a
            still image. OpenCV decodes one picture of it (the still image), so the reader warns.
        density: the pixel density (a JPEG's JFIF density or else its EXIF resolution, a PNG's
            pHYs, a WebP's EXIF resolution), turned as the EXIF orientation turns the pixels;
            None when the file says none, or nonsense.
    """

    icc_profile: bytes | None = None
    has_alpha: bool = False
    orientation: int = 1
    colour_key: tuple[int, ...] | None = None
    bit_depth: int = 8
    frames: int = 1
    density: Density | None = None


def header_extras(path: Path, head: bytes) -> HeaderExtras:
    """The ICC profile, density, alpha and EXIF orientation of a JPEG, PNG or WebP file, parsed from its
    chunks or segments with ``struct`` and ``zlib``. ``head``: its first bytes (:func:`read_head`);
    the file is read further only where a chunk lies past them. A damaged or absent part reads as
    absent (no profile, no alpha, orientation 1): it never raises. TIFFs: see :func:`tiff_icc_profile`."""
    try:
        with _FileBytes(path, head) as data:
            if head.startswith(b"\x89PNG\r\n\x1a\n"):
                return _png_extras(data)
            if head.startswith(b"\xff\xd8"):
                return HeaderExtras(icc_profile=_jpeg_icc(data), density=_jpeg_density(data))
            if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
                return _webp_extras(data)
    except (OSError, struct.error, ValueError, IndexError, zlib.error):
        pass
    return HeaderExtras()


def tiff_icc_profile(value: Any) -> bytes | None:
    """A TIFF's InterColorProfile tag value (tifffile gives bytes; some writers a BYTE array) as a
    profile, under :func:`header_extras`'s rules; None when it is not one."""
    try:
        profile = value if isinstance(value, bytes) else bytes(bytearray(value))
    except (TypeError, ValueError):
        return None
    return _rgb_profile(profile)


def _rgb_profile(profile: bytes | None) -> bytes | None:
    """``profile`` when it looks whole (its header's size is not past its end, the ``acsp``
    signature is in place) and its data colour space is RGB; else None."""
    if profile is None or not 128 <= len(profile) <= _MAX_ICC:
        return None
    (size,) = struct.unpack(">I", profile[:4])
    if size > len(profile) or profile[36:40] != b"acsp" or profile[16:20] != b"RGB ":
        return None
    return profile


class _FileBytes:
    """A file's bytes by offset: from the head already read where it holds them, else from the file
    (opened on the first such read)."""

    def __init__(self, path: Path, head: bytes) -> None:
        self.path, self.head = path, head
        self.file: Any = None

    def __enter__(self) -> _FileBytes:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at the end of the file)."""
        if offset + size <= len(self.head):
            return self.head[offset : offset + size]
        if self.file is None:
            self.file = open(self.path, "rb")  # closed by __exit__
        self.file.seek(offset)
        return bytes(self.file.read(size))


def _png_extras(data: _FileBytes) -> HeaderExtras:
    """Walk a PNG's chunks: iCCP, tRNS and pHYs before IDAT (where they must be), eXIf anywhere
    (OpenCV reads it after the image data too; looked for only when alpha, or a density that differs
    across and down, makes it needed)."""
    ihdr = data.read(8, 25)
    if ihdr[4:8] != b"IHDR":
        return HeaderExtras()
    bit_depth, colour_type = ihdr[16], ihdr[17]
    alpha = colour_type in (4, 6)
    key: tuple[int, ...] | None = None
    icc: bytes | None = None
    orientation, exif_seen, image_seen = 1, False, False
    frames = 1
    found: Density | None = None
    for offset, length, name in _png_chunks(data):
        if name == b"acTL" and not image_seen and length >= 8:  # APNG: before the image data
            frames = max(1, struct.unpack(">I", data.read(offset + 8, 4))[0])
        elif name == b"IDAT":
            image_seen = True
            # no alpha: the orientation is OpenCV's to apply, and needed here only to turn a density
            if not alpha and (found is None or found.x == found.y):
                break
        elif name == b"pHYs" and not image_seen and length == 9:
            x, y, unit = struct.unpack(">IIB", data.read(offset + 8, 9))
            found = density(x / 100, y / 100, "cm" if unit == 1 else None)  # unit 1: per metre
        elif name == b"iCCP" and not image_seen and icc is None:
            icc = _png_iccp(data.read(offset + 8, length + 4), length)
        elif name == b"tRNS" and not image_seen and colour_type == 3:
            alpha = True
        elif name == b"tRNS" and not image_seen and colour_type in (0, 2):
            key = _png_colour_key(data.read(offset + 8, length), colour_type, bit_depth)
        elif name == b"eXIf" and not exif_seen:
            exif_seen = True
            orientation = exif_orientation(data.read(offset + 8, length))
        if image_seen and exif_seen:
            break
    return HeaderExtras(
        icc_profile=icc,
        has_alpha=alpha,
        orientation=orientation,
        colour_key=key,
        bit_depth=bit_depth,
        frames=frames,
        density=found.oriented(orientation) if found is not None else None,
    )


def _png_colour_key(body: bytes, colour_type: int, bit_depth: int) -> tuple[int, ...] | None:
    """A gray (type 0) or RGB (type 2) PNG's tRNS data -> its colour key at the file's bit depth.

    The chunk stores each sample as 16 bits whatever the depth; below 16 only the low bits count
    (the PNG spec: "the least significant bits are used"), as libpng reads them. None when the
    chunk is too short to hold the key (a damaged file: read as opaque, as libpng does).
    """
    samples = 1 if colour_type == 0 else 3
    if len(body) < 2 * samples or not 1 <= bit_depth <= 16:
        return None
    mask = (1 << bit_depth) - 1
    return tuple(value & mask for value in struct.unpack(f">{samples}H", body[: 2 * samples]))


def _png_iccp(body: bytes, length: int) -> bytes | None:
    """The profile in an iCCP chunk's data (``body``: the data and its CRC): a name of 1-79
    bytes, a NUL, the compression method (0: zlib) and the compressed profile."""
    chunk, crc = body[:length], body[length : length + 4]
    if len(crc) < 4 or zlib.crc32(b"iCCP" + chunk) != struct.unpack(">I", crc)[0]:
        return None
    end = chunk.find(b"\x00", 0, 80)
    if end < 1 or chunk[end + 1 : end + 2] != b"\x00":
        return None
    inflate = zlib.decompressobj()
    profile = inflate.decompress(chunk[end + 2 :], _MAX_ICC + 1)
    if not inflate.eof:  # cut short, or a "profile" larger than any real one
        return None
    return _rgb_profile(profile)


def _jpeg_icc(data: _FileBytes) -> bytes | None:
    """The ICC profile of a JPEG: the APP2 segments that start ``ICC_PROFILE\\0``, each with its
    sequence number and the count (1-based), joined in sequence order. A missing, repeated or
    inconsistent part means no profile."""
    parts: dict[int, bytes] = {}
    count = 0
    for code, offset, length in _jpeg_segments(data):
        if code == 0xE2 and length >= 2 + len(_JPEG_ICC) + 2:
            body = data.read(offset + 4, length - 2)
            if body.startswith(_JPEG_ICC):
                seq, total = body[12], body[13]
                if seq < 1 or seq > total or seq in parts or (count and total != count):
                    return None
                count = total
                parts[seq] = body[14:]
    if not parts or len(parts) != count:
        return None
    return _rgb_profile(b"".join(parts[seq] for seq in range(1, count + 1)))


_JFIF = b"JFIF\x00"
_EXIF = b"Exif\x00\x00"
_JFIF_UNITS = {1: "inch", 2: "cm"}  # 0: the numbers are an aspect ratio only


def _jpeg_density(data: _FileBytes) -> Density | None:
    """A JPEG's density, turned by its EXIF orientation as OpenCV turns the pixels: the JFIF
    segment's (APP0) when it gives units, else the EXIF resolution (APP1)."""
    jfif: Density | None = None
    exif = b""
    for code, offset, length in _jpeg_segments(data):
        if code == 0xE0 and jfif is None and length >= 2 + 12:
            body = data.read(offset + 4, 12)
            if body.startswith(_JFIF):
                x, y = struct.unpack(">HH", body[8:12])
                jfif = density(x, y, _JFIF_UNITS.get(body[7]))
        elif code == 0xE1 and not exif:
            body = data.read(offset + 4, length - 2)
            exif = body[len(_EXIF) :] if body.startswith(_EXIF) else b""
    found = jfif if jfif is not None else exif_density(exif)
    return found.oriented(exif_orientation(exif)) if found is not None and exif else found


def _webp_extras(data: _FileBytes) -> HeaderExtras:
    """Walk a WebP's RIFF chunks: ICCP, EXIF, and alpha from the VP8X flags or a lossless
    bitstream's header (a lossy one without VP8X has none)."""
    (riff_size,) = struct.unpack("<I", data.read(4, 4))
    end = 8 + riff_size
    icc: bytes | None = None
    alpha, orientation, frames = False, 1, 0
    found: Density | None = None
    offset = 12
    while offset + 8 <= end:
        header = data.read(offset, 8)
        if len(header) < 8:
            break
        name, (size,) = header[:4], struct.unpack("<I", header[4:8])
        if name == b"VP8X":
            alpha = bool(data.read(offset + 8, 1)[0] & 0x10)
        elif name == b"VP8L" and offset == 12:  # a simple lossless file: alpha_is_used in its header
            bits = int.from_bytes(data.read(offset + 9, 4), "little")
            alpha = bool((bits >> 28) & 1)
        elif name == b"ICCP" and icc is None:
            icc = _rgb_profile(data.read(offset + 8, size)) if size <= _MAX_ICC else None
        elif name == b"EXIF":
            exif = data.read(offset + 8, size)
            orientation, found = exif_orientation(exif), exif_density(exif)
        elif name == b"ANMF":  # one frame of an animation (each holds its own bitstream)
            frames += 1
        offset += 8 + size + (size & 1)  # chunks are padded to an even size
    return HeaderExtras(
        icc_profile=icc,
        has_alpha=alpha,
        orientation=orientation,
        frames=max(frames, 1),
        density=found.oriented(orientation) if found is not None else None,
    )


def _exif_first_directory(exif: bytes) -> tuple[str, Iterator[tuple[int, int, bytes]]] | None:
    """The byte order of an EXIF block (a TIFF header, then directories; no ``Exif\\0\\0`` prefix)
    and the entries of its first directory, each (tag, field type, its 4-byte value field), read
    as they are iterated: a damaged entry raises ``struct.error`` where it is met, so a tag found
    before it is still found. None without a TIFF header.

    Raises:
        struct.error: the header is cut short (the callers' to catch).
    """
    order = {b"II": "<", b"MM": ">"}.get(exif[:2])
    if order is None:
        return None
    magic, first = struct.unpack(order + "HI", exif[2:8])
    if magic != 42:
        return None
    (count,) = struct.unpack(order + "H", exif[first : first + 2])

    def entries() -> Iterator[tuple[int, int, bytes]]:
        for i in range(count):
            tag, kind, _count, value = struct.unpack(
                order + "HHI4s", exif[first + 2 + 12 * i : first + 14 + 12 * i]
            )
            yield tag, kind, value

    return order, entries()


def exif_orientation(exif: bytes) -> int:
    """The Orientation (tag 274) in the first directory of an EXIF block (a TIFF header, then
    directories), as OpenCV reads a PNG's or WebP's: no ``Exif\\0\\0`` prefix, the first 16 bits
    of the value field. 1 when absent, damaged or out of 1-8."""
    try:
        directory = _exif_first_directory(exif)
        if directory is None:
            return 1
        order, entries = directory
        for tag, _kind, value in entries:
            if tag == 274:
                (orientation,) = struct.unpack(order + "H", value[:2])
                return orientation if 1 <= orientation <= 8 else 1
    except struct.error:
        return 1
    return 1


def exif_density(exif: bytes) -> Density | None:
    """The XResolution, YResolution and ResolutionUnit (inch when absent) in the first directory
    of an EXIF block (as :func:`exif_orientation` reads it; an ``Exif\\0\\0`` prefix is passed
    over), as stored: not turned. None when absent, damaged or nonsense."""
    if exif.startswith(_EXIF):
        exif = exif[len(_EXIF) :]
    try:
        directory = _exif_first_directory(exif)
        if directory is None:
            return None
        order, entries = directory
        # no real first directory has more than 4096 tags
        fields = {tag: (kind, value) for tag, kind, value in itertools.islice(entries, 4096)}
        x, y = (
            _exif_rational(exif, order, fields.get(tag)) for tag in (TIFF_X_RESOLUTION, TIFF_Y_RESOLUTION)
        )
        kind, value = fields.get(TIFF_RESOLUTION_UNIT, (3, struct.pack(order + "HH", 2, 0)))
        unit = struct.unpack(order + "H", value[:2])[0] if kind == 3 else 0  # SHORT
    except struct.error:
        return None
    return density(x, y, _RESOLUTION_UNITS.get(unit))


def _exif_rational(exif: bytes, order: str, field: tuple[int, bytes] | None) -> float:
    """An EXIF RATIONAL (type 5: two LONGs where the entry points) as a number; NaN when absent."""
    if field is None or field[0] != 5:
        return math.nan
    (where,) = struct.unpack(order + "I", field[1])
    return _ratio(struct.unpack(order + "II", exif[where : where + 8]))


# ----------------------------------------------------------------------------------------------
# a JPEG cut short: whether every scan it needs is in it

_SOF_CODES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC share the range
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
# a marker: 0xFF, then a code that is not a stuffed 0, a fill 0xFF or a restart (RST0-7), which
# the entropy-coded data holds
_MARKER = re.compile(rb"\xff(?=[\x01-\xcf\xd8-\xfe])")


def jpeg_scans_complete(data: bytes) -> bool:
    """Whether a JPEG holds every scan its frame needs: each component in a scan, and in a
    progressive file each of its 64 coefficients brought to full precision (a scan with Al 0).

    A progressive JPEG cut between two scans decodes without a word from libjpeg, blurred: this is
    how the reader tells it from one that lacks only its end marker. Whether the last scan's data
    is whole is the decoder's to say. False for a file whose headers are cut or damaged.
    """
    components: tuple[int, ...] = ()
    progressive = False
    finished: dict[int, set[int]] = {}
    pos = 2
    try:
        while (match := _MARKER.search(data, pos)) is not None:
            at = match.start()
            code = data[at + 1]
            if code == 0xD9:  # EOI
                break
            (length,) = struct.unpack(">H", data[at + 2 : at + 4])
            body = data[at + 4 : at + 2 + length]
            if length < 2 or len(body) < length - 2:  # a header cut short
                return False
            if code in _SOF_CODES and not components:
                progressive = code in _PROGRESSIVE_SOF
                components = tuple(body[6 + 3 * i] for i in range(body[5]))
            elif code == 0xDA:  # SOS: components, then Ss, Se, Ah/Al
                count = body[0]
                first, last, al = body[1 + 2 * count], body[2 + 2 * count], body[3 + 2 * count] & 0x0F
                coefficients = range(first, min(last, 63) + 1) if progressive else range(64)
                for component in body[1 : 1 + 2 * count : 2]:
                    if not progressive or al == 0:
                        finished.setdefault(component, set()).update(coefficients)
            pos = at + 2 + length
    except (IndexError, struct.error):
        return False
    return bool(components) and all(len(finished.get(c, ())) == 64 for c in components)


_capture = threading.local()  # the list this thread's tifffile messages go to, while it reads a file


class _CaptureTifffile(logging.Filter):
    """On the ``tifffile`` logger: a record logged by a thread inside :func:`tifffile_messages`
    goes to that thread's list instead of on to the handlers; the rest pass as usual."""

    def filter(self, record: logging.LogRecord) -> bool:
        messages = getattr(_capture, "messages", None)
        if messages is None:
            return True
        # "<tifffile.TiffPages @86> invalid offset ...": the object's repr says nothing to a user
        messages.append(re.sub(r"<tifffile\.[^>]*> ?", "", record.getMessage()))
        return False


_FILTER = _CaptureTifffile()


@contextlib.contextmanager
def tifffile_messages() -> Iterator[list[str]]:
    """Collect what tifffile logs while this thread reads a file ("invalid offset to first page"
    for a truncated TIFF), which Python's last-resort handler would print bare on stderr: the
    reader reports it under the file's name. Other threads' records are not touched."""
    logger = logging.getLogger("tifffile")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    outer = getattr(_capture, "messages", None)
    messages: list[str] = []
    _capture.messages = messages
    try:
        yield messages
    finally:
        _capture.messages = outer


def _tiff(path: Path) -> tuple[int, int] | None:
    import tifffile

    try:
        with tifffile_messages(), tifffile.TiffFile(path) as tif:
            page = tif.pages[full_resolution_page(tif.pages)]  # the page the reader decodes
            return int(page.imagewidth), int(page.imagelength)
    except Exception:  # a damaged file: the decoder names the problem
        return None
