"""An image's width and height from its file header, without decoding the pixels.

A small file can claim a huge image (a zlib-compressed TIFF or PNG of 33792x33792 is 3 MB on disk
and 3.4 GB decoded): :func:`image_size` lets the reader refuse it before any allocation. Formats:
PNG (IHDR), JPEG (the first SOFn marker), BMP (BITMAPINFOHEADER), WebP (VP8, VP8L, VP8X), TIFF
(tifffile reads the first page's tags only).
"""

from __future__ import annotations

import struct
from pathlib import Path

_READ = 1 << 16  # enough for the headers above, and for JPEG markers before the first SOF in most files


# The first bytes of every format pdseg's readers (OpenCV, tifffile) take: PNG, JPEG, BMP, WebP,
# TIFF and BigTIFF, PNM (P1-P7), GIF, JPEG 2000, OpenEXR, Radiance HDR
_SIGNATURES = (
    b"\x89PNG", b"\xff\xd8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+",
    *(b"P%d" % n for n in range(1, 8)), b"GIF8", b"\x00\x00\x00\x0cjP", b"\xffO\xffQ", b"v/1\x01", b"#?",
)  # fmt: skip


def looks_like_image(path: Path) -> bool:
    """Whether the file starts like an image of a format pdseg reads (not empty, not a text file
    given an image's name). Only the first bytes are read; a valid header says nothing of the rest."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return head.startswith(_SIGNATURES)


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header, or None when the format is not known or the header unclear."""
    try:
        with open(path, "rb") as f:
            head = f.read(_READ)
    except OSError:
        return None
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
        if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _tiff(path)
    except (struct.error, ValueError, IndexError):
        return None
    return None


def _jpeg(path: Path, head: bytes) -> tuple[int, int] | None:
    data = head
    i = 2
    with open(path, "rb") as f:
        f.seek(len(head))
        while True:
            if i + 9 > len(data):  # the SOF lies past what was read (large EXIF or ICC blocks)
                more = f.read(_READ)
                if not more:
                    return None
                data += more
                continue
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
                i += 2
                continue
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return w, h
            i += 2 + length


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


def _tiff(path: Path) -> tuple[int, int] | None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
            return int(page.imagewidth), int(page.imagelength)
    except Exception:  # a damaged file: the decoder names the problem
        return None
