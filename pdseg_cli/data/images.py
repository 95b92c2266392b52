"""Reading images of every common kind to RGB arrays, and writing outputs atomically.

Reading keeps the sample type: 8-bit files come back as uint8, 16-bit files as uint16 and
floating-point TIFFs as float32, always as (H, W, 3) RGB. What is normalised on the way:

* EXIF orientation is applied (JPEG, PNG, WebP: OpenCV does it when reading in colour), and so
  is a TIFF's Orientation tag.
* Grayscale is repeated into three channels; CMYK JPEGs and TIFFs, and CIELab TIFFs, are
  converted to RGB. A TIFF in a colour space pdseg does not convert is refused, not misread.
* An alpha channel is not segmented: pdseg segments the colours, whatever the alpha says. An 8- or
  16-bit alpha (PNG, WebP, TIFF), a float TIFF's alpha (as a 0..1 fraction) and a gray or RGB
  PNG's tRNS colour key (as 0 where a pixel is the key) are kept beside them
  (``LoadedImage.alpha``, oriented as the colours are) for cut-outs, which multiply it into their
  own; an opaque one is not kept. A TIFF's associated (premultiplied) alpha is divided out of
  its colours: the cut-outs store straight alpha.
* An embedded ICC profile (JPEG, PNG, WebP, TIFF) is kept as its bytes (``LoadedImage.icc_profile``)
  when it is whole and describes RGB, for the outputs made of the image's colours to carry; a
  damaged one is passed over silently (:func:`pdseg_cli.data.header.header_extras`).
* The pixel density (JPEG JFIF or EXIF, PNG pHYs, WebP EXIF, TIFF XResolution/YResolution) is kept
  (``LoadedImage.density``, turned with the pixels) for every output to carry: a 600 dpi scan's
  cut-out keeps its printed size. A nonsense one is passed over.
* A JPEG or PNG that lacks only its end marker (EOI, IEND), as copies cut short at the very end
  are, is read with a warning; one cut inside its image data is refused
  (:func:`decode_lacking_end_marker`).
* The reader is chosen by the file's first bytes, not its name (a PNG saved as ``.tif`` is a PNG).
* TIFFs are read with tifffile (8/16/32-bit integer and float, gray/RGB/RGBA, planar or
  interleaved, BigTIFF, compressed). A multi-page TIFF gives its first full-resolution page (a
  reduced-resolution preview before it is passed over) and a warning naming the page.
  A compression that tifffile cannot decode without ``imagecodecs`` (LZW, JPEG, PackBits...) is
  read through OpenCV's libtiff instead; its 8-bit RGBA reader multiplies the colours of an
  unassociated-alpha image by alpha, which is undone (fully transparent pixels stay black).
  OpenCV reads a gray page there as one channel: a gray TIFF's alpha is lost that way (read as
  opaque, 16 bits as 8), with a warning that says so; a 16-bit gray page with an extra sample
  that is not alpha is read at 8 bits, with a warning too, and one with several extra samples,
  which libtiff would mix into the gray, is refused. Extra samples that are not alpha are never
  colours: a gray page with them reads as gray.
  Uncompressed YCbCr TIFFs are read through libtiff too, which converts them.
* PGM/PPM samples are scaled by the file's own maxval (a 12-bit scan's 4095 is full intensity).

Writing always goes through a temporary file in the target folder and ``os.replace``: a crash,
an exception or Ctrl-C leaves either the old file or the complete new one, never a partial file.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pdseg_cli.config import DEFAULT_MAX_PIXELS
from pdseg_cli.data import native_messages
from pdseg_cli.data.atomic import atomic_path
from pdseg_cli.data.header import (
    HEAD_BYTES,
    ICC_PROFILE_TAG,
    TIFF_MAGICS,
    TIFF_RESOLUTION_UNIT,
    TIFF_X_RESOLUTION,
    TIFF_Y_RESOLUTION,
    Density,
    HeaderExtras,
    PnmHeader,
    header_extras,
    image_kind,
    jpeg_scans_complete,
    other_format,
    pnm_header,
    read_head,
    tiff_density,
    tiff_icc_profile,
    tifffile_messages,
)
from pdseg_cli.errors import InputError, first_line

JPEG_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif"})
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
# every suffix pdseg reads; anything else in a folder is skipped (and counted)
IMAGE_SUFFIXES = (
    JPEG_SUFFIXES
    | TIFF_SUFFIXES
    | frozenset(
        {".png", ".bmp", ".dib", ".webp", ".pbm", ".pgm", ".ppm", ".pnm"}  # PNM: what many scanners write
    )
)
# photos a phone saves that pdseg does not read (OpenCV has no HEIF or AVIF decoder), and what
# to do about them, for the messages that meet them
PHONE_SUFFIXES = frozenset({".heic", ".heif", ".hif", ".avif"})


def convert_phone_photos(paths: Iterable[Path]) -> str | None:
    """``convert HEIC photos to JPEG first (...)`` where ``paths`` hold phone photos pdseg does not
    read, else None."""
    kinds = sorted({p.suffix.lower() for p in paths} & PHONE_SUFFIXES)
    if not kinds:
        return None
    named = "/".join(k.lstrip(".").upper() for k in kinds)
    return f"convert {named} photos to JPEG first (e.g. `heif-convert IMG.heic IMG.jpg`)"


# the same formats by name, for messages (kept beside the suffixes they name)
IMAGE_KINDS = ("JPEG", "PNG", "TIFF", "BMP", "WebP", "PNM")
_SUFFIX_KINDS = {
    **dict.fromkeys(JPEG_SUFFIXES, "JPEG"),
    **dict.fromkeys(TIFF_SUFFIXES, "TIFF"),
    ".png": "PNG",
    ".bmp": "BMP",
    ".dib": "BMP",
    ".webp": "WebP",
    **dict.fromkeys((".pbm", ".pgm", ".ppm", ".pnm"), "PNM"),
}

# colour, EXIF orientation applied, 16-bit kept, alpha dropped (IMREAD_UNCHANGED would skip EXIF:
# a file with alpha is decoded unchanged and oriented by the reader itself, :func:`_read_cv2_image`)
_CV2_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


@dataclass
class LoadedImage:
    """One decoded image.

    Attributes:
        pixels: (H, W, 3) RGB; uint8, uint16, or float32 for floating-point TIFFs.
        path: where it was read from.
        warnings: things the user should know (e.g. "multi-page TIFF: first page used").
        alpha: the file's own alpha, (H, W), oriented as ``pixels``: of ``pixels``' dtype for
            uint8 and uint16 (0 transparent, the type's maximum opaque); float32 0..1 (the fraction
            opaque) for float images, whose full scale is not a type's maximum. None when the file
            has none or it is opaque everywhere.
        icc_profile: the file's embedded ICC profile (an RGB one), as its bytes; None when absent,
            damaged or not RGB.
        density: the file's pixel density, across and down as ``pixels`` are (swapped where the
            orientation turned them by 90 degrees); None when the file gives none, or nonsense.
    """

    pixels: np.ndarray
    path: Path
    warnings: list[str] = field(default_factory=list)
    alpha: np.ndarray | None = None
    icc_profile: bytes | None = None
    density: Density | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


def is_image_file(path: Path) -> bool:
    """True when the suffix is one pdseg reads (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode one image file to (H, W, 3) RGB at its own bit depth.

    Args:
        path: the file.
        max_pixels: refuse images whose header says more pixels than this (None: no limit).

    Raises:
        InputError: the file is missing, unreadable, corrupt, larger than ``max_pixels``, or not an
            image pdseg can read.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:  # every reader below would call it corrupt or not an image
        raise InputError(f"{path}: the file is empty")
    head = read_head(path)  # read once: the size check, the reader's choice and a PNM's maxval
    if max_pixels is not None:
        from pdseg_cli.data.header import image_size

        size = image_size(path, head)
        if size is not None and size[0] * size[1] > max_pixels:
            w, h = size
            raise InputError(
                f"{path}: {w}x{h} is {w * h:,} pixels, over the limit of {max_pixels:,}; not decoded",
                hint="pass a larger --max-pixels if this machine has the memory for it",
            )
    warnings: list[str] = []
    alpha: np.ndarray | None  # a view of the decoded array's alpha channel
    if head.startswith(TIFF_MAGICS):  # by the content: a TIFF named .jpg is a TIFF, a PNG named .tif a PNG
        array, alpha, icc, density = _read_tiff(path, warnings)
    else:
        extras = header_extras(path, head)
        if extras.frames > 1:  # as a multi-page TIFF is said (_pages_note)
            warnings.append(
                f"{path}: animated {image_kind(head)} ({extras.frames} frames), the first frame is used"
            )
        array, alpha = _read_cv2_image(path, extras, warnings)
        icc, density = extras.icc_profile, extras.density
        if image_kind(head) == "PNM":
            array = _pnm_full_scale(array, pnm_header(head))
    try:
        pixels = to_rgb(array)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise InputError(f"{path}: the image is empty ({pixels.shape[1]}x{pixels.shape[0]})")
    if pixels.dtype == np.float32:
        pixels = _finite(pixels, path, warnings)
    elif pixels.dtype == np.uint16:
        _note_few_bits(pixels, path, warnings, array.dtype)
    alpha = _kept_alpha(alpha, pixels.dtype)
    return LoadedImage(
        np.ascontiguousarray(pixels), path, warnings, alpha=alpha, icc_profile=icc, density=density
    )


def _read_cv2_image(
    path: Path, extras: HeaderExtras, warnings: list[str]
) -> tuple[np.ndarray, np.ndarray | None]:
    """A file OpenCV decodes -> (RGB array, a view of its alpha channel or None).

    A file whose header says it holds alpha is decoded unchanged (BGRA), which is the only way
    OpenCV keeps alpha, and skips the EXIF orientation it otherwise applies: the reader applies it
    to the whole array, so the colours end up as OpenCV would orient them and the alpha with them.
    """
    if not extras.has_alpha:
        colours, alpha = _split_bgra(_read_cv2(path, warnings))
    else:
        unchanged = _read_cv2(path, warnings, cv2.IMREAD_UNCHANGED)
        colours, alpha = _split_bgra(orient(unchanged, extras.orientation))
    if alpha is None and extras.colour_key is not None:
        # built from the decoded (already oriented) colours, so it is oriented with them
        alpha = _colour_key_alpha(colours, extras.colour_key, extras.bit_depth)
    return colours, alpha


def _colour_key_alpha(colours: np.ndarray, key: tuple[int, ...], bit_depth: int) -> np.ndarray | None:
    """A PNG tRNS colour key as alpha: 0 where a pixel of ``colours`` (gray or RGB, as decoded)
    is exactly ``key`` (at the file's ``bit_depth``), the type's maximum elsewhere. None when the
    decoded samples cannot hold the key's depth or count (then the file reads as opaque)."""
    samples = colours if colours.ndim == 3 else colours[..., None]
    if samples.dtype not in (np.uint8, np.uint16) or samples.shape[2] != len(key):
        return None
    if bit_depth > 8 * samples.dtype.itemsize:
        return None
    top = int(np.iinfo(samples.dtype).max)
    # libpng widens 1, 2 and 4-bit gray to 8 bits by repeating the bits (x 255, 85, 17): a key of
    # the file's depth is widened alike to meet the samples it stands for
    widen = top // ((1 << bit_depth) - 1) if bit_depth < 8 else 1
    target = np.asarray([value * widen for value in key], dtype=samples.dtype)
    transparent = np.all(samples == target, axis=2)
    return np.where(transparent, samples.dtype.type(0), samples.dtype.type(top))


def _split_bgra(array: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """OpenCV's gray, BGR or BGRA -> (gray or RGB, a view of the alpha channel or None)."""
    if array.ndim == 3 and array.shape[2] == 4:
        return array[..., 2::-1], array[..., 3]
    return (array[..., ::-1] if array.ndim == 3 else array), None


def _kept_alpha(alpha: np.ndarray | None, dtype: np.dtype[Any]) -> np.ndarray | None:
    """The alpha a :class:`LoadedImage` keeps: an 8- or 16-bit one of the colours' own sample type
    (as PNG and TIFF store them), or a float image's 0..1 fraction (:func:`_colours_and_alpha`),
    not opaque everywhere (a cut-out would be its map unchanged)."""
    if alpha is None or alpha.dtype != dtype:
        return None
    if dtype == np.float32:
        opaque = float(alpha.min()) >= 1.0
    elif dtype in (np.uint8, np.uint16):
        opaque = int(alpha.min()) == np.iinfo(dtype).max
    else:
        return None
    return None if opaque else np.ascontiguousarray(alpha)


def finite_pixels(pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """(``pixels`` with their NaN and infinite samples set to 0, how many pixels had one): the one
    rule for a file's float samples and an array's (``transforms.to_float_rgb``). Pixels, not
    samples, are counted, so a gray image counts the same as its RGB reading. ``pixels`` itself
    where every sample is finite."""
    bad = ~np.isfinite(pixels)
    if not bad.any():
        return pixels, 0
    count = int(np.count_nonzero(bad.any(axis=-1) if pixels.ndim == 3 else bad))
    return np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0), count


def _finite(pixels: np.ndarray, path: Path, warnings: list[str]) -> np.ndarray:
    """A float image with its NaN and infinite samples set to 0 (:func:`finite_pixels`), and a
    warning that counts them: left in the pixels, the foreground estimate of a cut-out spread them
    over most of the image."""
    pixels, bad = finite_pixels(pixels)
    if bad:
        warnings.append(
            f"{path}: {bad:,} {'pixel is' if bad == 1 else 'pixels are'} NaN or infinite; read as 0"
        )
    return pixels


def _note_few_bits(pixels: np.ndarray, path: Path, warnings: list[str], stored: np.dtype) -> None:
    """A warning for a 16-bit image whose samples all fit in 12 bits or fewer: a scanner's or
    camera's 12-bit data stored in a 16-bit file reads 16 times too dark (0..4095 of 65535), and
    the model, shown a black image, finds nothing (a map topping out at byte 23). The file has no
    tag that says so (TIFF's MaxSampleValue is for statistics only), so it is read as stored.
    ``stored`` is the file's own sample type, which the warning names: a 32-bit file read by its
    values as 16-bit data, or a signed 16-bit one, whose values :func:`to_rgb` doubles (white at
    32767), so that its 12-bit data reads 8 times too dark and is judged by its own values."""
    stored = np.dtype(stored)
    signed = stored.kind == "i" and stored.itemsize == 2  # big-endian ">i2" too
    top = int(pixels.max())
    value = round(top * 32767 / 65535) if signed else top  # the file's own largest sample
    if not 0 < value < 4096:
        return
    full = np.iinfo(stored).max if stored.kind in "iu" else 65535
    kind = f"{'signed ' if signed else ''}{stored.itemsize * 8}-bit"
    how = "read at twice its values (white at 32767)" if signed else "read as stored"
    warnings.append(
        f"{path}: a {kind} image whose samples stop at {value} of {full} ({value.bit_length()}-bit "
        f"data in a {kind} file?): {how}, nearly black, so its map may be empty; scale it to the full "
        f"{stored.itemsize * 8} bits (or save it as 8-bit) first"
    )


def _pnm_full_scale(array: np.ndarray, pnm: PnmHeader | None) -> np.ndarray:
    """A PGM/PPM's samples scaled from its maxval to the full 8 or 16 bits: OpenCV returns them as
    stored, so a 12-bit scan (maxval 4095) would read 16 times too dark as a 16-bit image."""
    if pnm is None or pnm.magic in (b"P1", b"P4"):  # bitmaps: OpenCV gives 0 and 255 already
        return array
    if pnm.magic in (b"P2", b"P3") and array.dtype == np.uint8:  # OpenCV scales 8-bit ASCII itself
        return array
    top = 255 if array.dtype == np.uint8 else 65535
    if pnm.maxval == top or array.dtype not in (np.uint8, np.uint16):
        return array
    # a table for every stored value (values over maxval, invalid, count as maxval)
    table = np.rint(np.arange(top + 1, dtype=np.float64).clip(0, pnm.maxval) * top / pnm.maxval)
    return table.astype(array.dtype)[array]


def _read_cv2(path: Path, warnings: list[str], flags: int = _CV2_FLAGS, page: int = 0) -> np.ndarray:
    """Decode with OpenCV (``page``: which page of a multi-page TIFF)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode: non-ASCII paths work too
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None

    def call() -> np.ndarray | None:
        if page == 0:
            return cv2.imdecode(data, flags)
        ok, mats = cv2.imdecodemulti(data, flags, range=(page, page + 1))
        return mats[0] if ok and mats else None

    try:
        array, messages = native_messages.decode(call)
    except cv2.error as exc:  # e.g. OpenCV's own pixel limit: a multi-line assertion dump
        raise InputError(f"{path}: cannot decode (OpenCV: {_opencv_reason(exc)})") from None
    if array is None and page == 0 and _unterminated_plain_pnm(data):
        # OpenCV reads a plain PNM's last sample only up to a whitespace it never meets; Netpbm
        # and PIL read it: the file is whole
        array, _ = native_messages.decode(lambda: cv2.imdecode(np.append(data, np.uint8(ord("\n"))), flags))
        if array is not None:
            warnings.append(f"{path}: {PNM_END_NOTE}")
            return array
    if array is None and page == 0:
        array = decode_lacking_end_marker(data.tobytes(), flags)
        if array is not None:
            warnings.append(f"{path}: {END_MARKER_NOTE}")
            return array
    if array is not None and messages and not array.any() and data[:4].tobytes() in TIFF_MAGICS:
        # libtiff complained and gave nothing but zeros: its answer to strips it cannot decode
        # (damaged LZW data), segmented as a black image in silence. Not other formats: a black
        # JPEG with a stray byte, an empty GT mask with libpng's sRGB-profile warning, are images
        raise InputError(f"{path}: cannot decode (every pixel came out 0); the decoder said: {messages[0]}")
    if array is None:
        raise InputError(
            f"{path}: cannot decode ({_what_it_is(path, data[:HEAD_BYTES].tobytes())})"
            + (f"; the decoder said: {messages[0]}" if messages else "")
        )
    warnings.extend(f"{path}: the decoder said: {m} (decoded anyway; parts may be damaged)" for m in messages)
    return array


def _unterminated_plain_pnm(data: np.ndarray) -> bool:
    """Whether ``data`` is a plain (ASCII) PNM whose last byte is a digit, with no whitespace after it."""
    return data[:2].tobytes() in (b"P1", b"P2", b"P3") and chr(data[-1]).isdigit()


PNM_END_NOTE = (
    "the file ends right after its last sample, with no whitespace after it; read as it is (in a "
    "file cut short, the last pixel would be wrong)"
)
END_MARKER_NOTE = "no end marker (the file ends early, but every row is there); decoded anyway"
# What a JPEG (EOI) and a PNG (an empty IEND chunk and its CRC) end with. OpenCV refuses a file
# without it, though every pixel is there: a copy or a recovery that stopped at the last bytes.
_END_MARKERS = {
    "JPEG": b"\xff\xd9",
    "PNG": struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")),
}
# bytes put before a JPEG's end marker to tell a whole scan from one cut short (no 0xFF: no
# marker): unlike bits, so that one of them decodes to something other than libjpeg's blank blocks
_JPEG_FILLERS = (b"\x55" * 256, b"\xaa" * 256, bytes((i * 167 + 89) % 255 for i in range(256)))


def decode_lacking_end_marker(data: bytes, flags: int) -> np.ndarray | None:
    """A JPEG or PNG that OpenCV could not decode, decoded with its end marker added back when that
    is all it lacks: every row is in the file, and the decode is clean. None otherwise (the caller
    refuses the file as it would have), e.g. for a file cut inside its image data.

    libpng stops with an error where the image data runs out ("Not enough image data"). libjpeg
    instead fills a scan cut short with blank blocks and only warns, which the ``pdseg`` command
    hears (:mod:`pdseg_cli.data.native_messages`) and the Python API does not; so a JPEG must also
    decode the same with each of a few runs of bytes put before its marker: libjpeg passes over
    bytes after a whole scan but decodes them as image data inside one cut short (rarely to the
    same blank blocks: the command's check, by the messages, is the sure one). A progressive JPEG
    cut between two scans decodes cleanly and blurred: :func:`pdseg_cli.data.header.jpeg_scans_complete`
    refuses it.
    """
    kind = image_kind(data[:16])
    end = _END_MARKERS.get(kind or "")
    if end is None or data.endswith(end):
        return None
    if kind == "JPEG":
        # a last 0xFF is the marker's first half or a fill byte, never image data (which stuffs a 0
        # after each 0xFF): the fillers below must not follow it
        data = data.rstrip(b"\xff")
        if not jpeg_scans_complete(data):
            return None
    if kind == "PNG":
        # the IEND chunk cut part way (its CRC, say): the part left goes, and the whole is put back;
        # tried after the file as it is, whose last bytes may only look like the chunk's start
        cuts = [k for k in range(len(end) - 1, 0, -1) if data.endswith(end[:k])]
        for tail in (data, *(data[:-k] for k in cuts)):
            array = _clean_decode(tail + end, flags)
            if array is not None:
                return array
        return None
    array = _clean_decode(data + end, flags)
    if array is None:
        return array
    for filler in _JPEG_FILLERS:
        again = _clean_decode(data + filler + end, flags, tolerate_messages=True)
        if again is None or not np.array_equal(array, again):
            return None
    return array


def _clean_decode(data: bytes, flags: int, *, tolerate_messages: bool = False) -> np.ndarray | None:
    """``cv2.imdecode``, or None where it fails, raises or (unless ``tolerate_messages``) the
    decoder warns of damage."""
    try:
        array, messages = native_messages.decode(lambda: cv2.imdecode(np.frombuffer(data, np.uint8), flags))
    except cv2.error:
        return None
    return None if messages and not tolerate_messages else array


def _what_it_is(path: Path, head: bytes) -> str:
    """Why a file may not decode, by what its first bytes say it is and what its name says."""
    kind, named = image_kind(head), _SUFFIX_KINDS.get(path.suffix.lower())
    if kind is None:
        return other_format(head) or "not an image"
    if named is not None and kind != named:
        return f"a {kind} file named {path.suffix}, corrupt or truncated"
    return f"corrupt or truncated {kind} file"


def _opencv_reason(exc: BaseException) -> str:
    """One sentence from an OpenCV error: its ``error: (-N:Kind) message in function`` part."""
    text = " ".join(str(exc).split())
    if "error: (" in text:  # "OpenCV(4.x) file.cpp:77: error: (-215:Assertion failed) what in function 'f'"
        text = text.split("error: (", 1)[1].split(")", 1)[-1]
    text = text.split(" in function ")[0].strip(" :.'")
    return text[:200] or type(exc).__name__


def _check_strips(page: Any, path: Path, warnings: list[str]) -> None:
    """Refuse a TIFF page whose strips or tiles run past the end of the file (a copy cut short) or
    none of which holds data (offsets and byte counts 0: a writer that failed after the header, or
    a crashed scan), and warn of one where some hold none.
    tifffile and libtiff fill such strips with 0 without a word: the image read as black and its
    map as empty, reported done. (A GDAL "sparse" file leaves empty tiles so on purpose; its
    tiles then do read as the fill value, which the warning says.)

    Raises:
        InputError: the page's data is cut short, or no strip or tile of it holds data.
    """
    counts = tuple(getattr(page, "databytecounts", ()) or ())
    offsets = tuple(getattr(page, "dataoffsets", ()) or ())
    pieces = "tiles" if getattr(page, "is_tiled", False) else "strips"
    ends = [offset + count for offset, count in zip(offsets, counts, strict=False) if count]
    size = int(page.parent.filehandle.size)  # the open file's, no second look at the disk
    if ends and max(ends) > size:  # said as such, not as a tile "cannot be reshaped"
        cut = sum(1 for end in ends if end > size)
        lie = "lies" if cut == 1 else "lie"
        raise InputError(
            f"{path}: a TIFF cut short: {cut} of its {len(counts)} {pieces} {lie} past the end of the file "
            f"({size:,} bytes, the image data runs to {max(ends):,})",
            hint="check that the file is complete (copy or download it again)",
        )
    empty = sum(1 for count in counts if not count)
    if not counts or not empty:
        return
    if empty == len(counts):
        raise InputError(
            f"{path}: a TIFF with no image data (all {len(counts)} of its {pieces} are empty: a write "
            "that stopped after the header?)",
            hint="check that the file is complete (export or copy it again)",
        )
    hold = "holds" if empty == 1 else "hold"
    warnings.append(
        f"{path}: {empty} of its {len(counts)} {pieces} {hold} no data (a write that stopped part-way?): "
        "read as 0 there"
    )


def _read_tiff(
    path: Path, warnings: list[str]
) -> tuple[np.ndarray, np.ndarray | None, bytes | None, Density | None]:
    """A TIFF's page -> (array, a view of its alpha channel or None, its ICC profile or None, its
    density turned as the array is, or None)."""
    import tifffile

    from pdseg_cli.data.header import full_resolution_page

    index, orientation, photometric, axes = 0, 1, _PHOTOMETRIC_RGB, ""
    bits = 0  # the page's bits per sample, for what libtiff's reading lost (0: not known)
    extra_samples: tuple[int, ...] = ()
    compression: str | None = None  # its name, for a missing codec's message
    colormap: np.ndarray | None = None
    icc: bytes | None = None
    density: Density | None = None
    array: np.ndarray | None = None
    failure: Exception | None = None  # why tifffile could not decode the page
    try:
        with tifffile_messages() as said, tifffile.TiffFile(path) as tif:
            if not len(tif.pages):  # the first page's offset points past the end: cut short
                raise InputError(
                    f"{path}: a TIFF whose first page cannot be found (truncated or damaged"
                    + (f"; tifffile said: {said[0]}" if said else "")
                    + ")",
                    hint="check that the file is complete (copy or download it again)",
                )
            index = full_resolution_page(tif.pages)
            if len(tif.pages) > 1:
                warnings.append(_pages_note(path, len(tif.pages), index))
            page = tif.pages[index]
            _check_strips(page, path, warnings)
            compression = getattr(page.compression, "name", str(page.compression))
            if not hasattr(page.compression, "name"):
                # a number no codec has: libtiff "decodes" its strips as zeros, with an error line
                raise InputError(
                    f"{path}: cannot decode this TIFF: its compression, {compression}, is one no "
                    "reader knows",
                    hint="if it opens in the program that made it, save it again with LZW, Deflate or "
                    "no compression",
                )
            photometric = int(page.photometric)
            bits = int(page.bitspersample)
            by_libtiff = _check_colour_space(page, photometric, path)
            extra = page.tags.get(_TAG_EXTRA_SAMPLES)
            extra_samples = tuple(np.atleast_1d(extra.value).tolist()) if extra is not None else ()
            tag = page.tags.get(_TAG_ORIENTATION)
            orientation = int(tag.value) if tag is not None else 1
            colormap = getattr(page, "colormap", None)
            axes = page.axes
            profile = page.tags.get(ICC_PROFILE_TAG)
            icc = tiff_icc_profile(profile.value) if profile is not None else None
            x, y, unit = (
                page.tags.get(tag) for tag in (TIFF_X_RESOLUTION, TIFF_Y_RESOLUTION, TIFF_RESOLUTION_UNIT)
            )
            found = tiff_density(*(tag.value if tag is not None else None for tag in (x, y, unit)))
            # tifffile's reading or libtiff's turns the pixels by the Orientation tag alike
            density = found.oriented(orientation) if found is not None else None
            if not by_libtiff:
                array = page.asarray()
    except InputError:
        raise
    except tifffile.TiffFileError as exc:
        raise InputError(f"{path}: not a valid TIFF ({exc})") from None
    except (KeyError, ImportError, NotImplementedError, ValueError) as exc:
        # e.g. a compression tifffile decodes only with imagecodecs (LZW, JPEG, PackBits; ZSTD's
        # ModuleNotFoundError): OpenCV's libtiff, below
        failure = exc
    except MemoryError:
        raise  # said as such by the caller (predict: "out of memory while decoding")
    except (ZeroDivisionError, IndexError, struct.error) as exc:
        # tifffile's own errors on tags that contradict each other (a tile width of 0: a
        # ZeroDivisionError; no samples per pixel: an IndexError), said as what they mean
        raise InputError(
            f"{path}: cannot read as TIFF: its tags are damaged or contradict each other "
            f"({type(exc).__name__}: {first_line(exc)})",
            hint="check that the file is complete (copy it again); if it opens elsewhere, save it again",
        ) from None
    except Exception as exc:  # tifffile raises many kinds (OSError on a failing disk, ...)
        raise InputError(f"{path}: cannot read as TIFF ({type(exc).__name__}: {exc})") from None
    warnings.extend(f"{path}: tifffile said: {m} (read anyway)" for m in said)
    if array is None:
        array, alpha = _read_tiff_libtiff(
            path, warnings, index, extra_samples, photometric, bits, compression, failure
        )
        return array, alpha, icc, density
    array = orient(_tiff_to_hwc(array, axes, photometric, colormap, path), orientation)
    colours = _tiff_alpha_index(array, photometric, extra_samples)
    if colours is None and array.ndim == 3 and photometric in _GRAY_PHOTOMETRICS:
        # gray and extra samples that are not alpha: the gray is the one colour (to_rgb would read
        # gray and two extra samples as red, green and blue)
        array = array[..., :1]
    white_is_zero = photometric == _PHOTOMETRIC_MINISWHITE and array.ndim == 3
    if colours is None:
        if white_is_zero:  # gray and extra samples that are not alpha: only the gray counts from white
            array = np.concatenate([_invert(array[..., :1]), array[..., 1:]], axis=-1)
        return array, None, icc, density
    premultiplied = extra_samples[0] == _ASSOCIATED_ALPHA
    array, alpha = _colours_and_alpha(array[..., : colours + 1], premultiplied)
    if white_is_zero:  # inverted once the alpha is divided out: associated alpha multiplies the ink
        array = _invert(array)
    return array, alpha, icc, density


def _tiff_alpha_index(array: np.ndarray, photometric: int, extra_samples: tuple[int, ...]) -> int | None:
    """Where a gray or RGB page's alpha channel is (the first extra sample, when ExtraSamples
    calls it associated or unassociated alpha): its index, which is also the count of colours;
    None for other pages."""
    colours = {_PHOTOMETRIC_MINISWHITE: 1, _PHOTOMETRIC_MINISBLACK: 1, _PHOTOMETRIC_RGB: 3}.get(photometric)
    if colours is None or not extra_samples or extra_samples[0] not in _ALPHA_SAMPLES:
        return None
    if array.ndim != 3 or array.shape[2] <= colours:
        return None
    return colours


def _colours_and_alpha(samples: np.ndarray, premultiplied: bool) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C + 1) colours then alpha, as a TIFF reader gives them -> (straight colours
    (H, W, C), alpha (H, W)).

    ``premultiplied``: the colours were multiplied by alpha (associated alpha, or libtiff's 8-bit
    RGBA reader); they are divided back, since cut-outs store straight alpha. Integer samples keep
    their type. Float samples come back as float32 with the alpha as a 0..1 fraction
    (:func:`_alpha_full_scale` says why and at what scale it is read).
    """
    if np.issubdtype(samples.dtype, np.floating):
        samples = samples.astype(np.float32, copy=False)  # float16 too: what to_rgb makes of it
    full = _alpha_full_scale(samples)
    # other integer types (uint32, int16) are read by their values, not their type's range, and
    # their alpha is not kept (_kept_alpha): their colours are left as stored
    if premultiplied and samples.dtype in (np.uint8, np.uint16, np.float32):
        samples = _unpremultiply(samples, full)
    colours, alpha = samples[..., :-1], samples[..., -1]
    if samples.dtype == np.float32:
        alpha = np.nan_to_num(alpha / np.float32(full), nan=0.0, posinf=1.0, neginf=0.0)
        alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32, copy=False)
    return colours, alpha


def _alpha_full_scale(samples: np.ndarray) -> float:
    """The alpha of an opaque pixel: the type's maximum for integers. A float TIFF's alpha is read
    at the smallest of 1, 255 and 65535 that its largest finite alpha sample does not pass: from
    the alpha alone, as HDR colours pass 1 (even 4) while their alpha stays 0..1, and a float copy
    of an 8-bit image has 0..255 in both."""
    if np.issubdtype(samples.dtype, np.integer):
        return float(np.iinfo(samples.dtype).max)
    alpha = samples[..., -1]
    finite = alpha[np.isfinite(alpha)]
    top = float(finite.max()) if finite.size else 0.0
    return next((scale for scale in (1.0, 255.0, 65535.0) if top <= scale), top)


def _pages_note(path: Path, count: int, index: int) -> str:
    if index == 0:
        return f"{path}: multi-page TIFF ({count} pages), the first page is used"
    previews = "page 1 is a reduced-resolution preview" if index == 1 else f"pages 1-{index} are previews"
    first_full = f"page {index + 1} is used, the first at full resolution"
    return f"{path}: multi-page TIFF ({count} pages), {first_full} ({previews})"


def _check_colour_space(page: Any, photometric: int, path: Path) -> bool:
    """Refuse a TIFF whose colours pdseg cannot turn into RGB; True when libtiff must decode it.

    Gray, RGB, palette, CMYK and CIELab are converted here; YCbCr is left to libtiff (through
    OpenCV), which applies the file's coefficients and subsampling, unless JPEG compression
    decodes it to RGB already. Anything else (separated inks other than CMYK, ITU Lab, LogLuv,
    camera raw...) would be read as if RGB, with wrong colours, so it is refused.
    """
    if photometric in _PHOTOMETRIC_CONVERTED:
        if photometric != _PHOTOMETRIC_SEPARATED:
            return False
        inkset = page.tags.get(_TAG_INKSET)
        extra = page.tags.get(_TAG_EXTRA_SAMPLES)
        inks = int(page.samplesperpixel) - (len(np.atleast_1d(extra.value)) if extra is not None else 0)
        if inks == 4 and (inkset is None or int(inkset.value) == 1):  # InkSet 1: CMYK
            return False
        name = f"separated ({inks} inks, not CMYK)"
    elif photometric == _PHOTOMETRIC_YCBCR:
        return int(page.compression) not in _JPEG_COMPRESSIONS
    else:
        name = _photometric_name(photometric)
    raise InputError(
        f"{path}: a TIFF in the {name} colour space (photometric {photometric}), which pdseg does not "
        "convert: read as RGB its colours would be wrong",
        hint="convert it to RGB first, e.g. magick IN.tif -colorspace sRGB OUT.tif",
    )


def _photometric_name(photometric: int) -> str:
    import tifffile

    try:
        return str(tifffile.PHOTOMETRIC(photometric).name)
    except ValueError:
        return "unknown"


def _missing_codec(exc: BaseException | None) -> bool:
    """Whether tifffile failed for want of a codec: ``imagecodecs`` (KeyError "<COMPRESSION.LZW:
    5> requires the 'imagecodecs' package") or a module it imports (ZSTD's ``compression``)."""
    return exc is not None and (isinstance(exc, ImportError) or "imagecodecs" in str(exc))


def _read_tiff_libtiff(
    path: Path,
    warnings: list[str],
    index: int,
    extra_samples: tuple[int, ...],
    photometric: int,
    bits: int,
    compression: str | None,
    failure: Exception | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The TIFF page tifffile did not decode (``failure``) or must not (YCbCr), through OpenCV's
    libtiff, which applies the Orientation tag itself -> (RGB array, its alpha or None).

    OpenCV keeps an RGB page's alpha, not a gray one's: its TIFF reader makes every gray page one
    channel (gray + alpha at 8 bits, even a 16-bit page), whatever the flags, so that alpha cannot be
    had here and :func:`_note_lost_alpha` says so. What it hands back: an 8-bit RGBA page goes
    through libtiff's RGBA reader, which multiplies unassociated colours by alpha and passes
    associated (already multiplied) ones as stored; 16-bit and float pages come as stored. So the
    colours are premultiplied, and divided back once, for associated alpha at any depth and for
    unassociated alpha at 8 bits.
    """
    alpha_kind = extra_samples[0] if extra_samples and extra_samples[0] in _ALPHA_SAMPLES else None
    flags = cv2.IMREAD_UNCHANGED if alpha_kind is not None else _CV2_FLAGS
    # Lab is converted from tifffile's samples only (libtiff's own conversion takes another white)
    lab = photometric in (_PHOTOMETRIC_CIELAB, _PHOTOMETRIC_ICCLAB)
    array = None if lab else _read_cv2_or_none(path, warnings, flags, page=index)
    if array is None:
        if _missing_codec(failure):
            codec = f"its {compression} compression" if compression else "its compression"
            raise InputError(
                f"{path}: cannot decode this TIFF: {codec} needs the optional imagecodecs package",
                hint="pip install imagecodecs",
            ) from None
        why = first_line(failure) if failure is not None else "libtiff could not decode its YCbCr data"
        raise InputError(
            f"{path}: cannot decode this TIFF ({why})",
            hint="check that the file is complete; if it opens elsewhere, save it as an RGB TIFF",
        ) from None
    gray_extras = len(extra_samples) if photometric in _GRAY_PHOTOMETRICS else 0
    if gray_extras >= 2 and bits == 16 and np.issubdtype(array.dtype, np.integer):
        _refuse_mixed_gray(gray_extras, bits, compression, failure, path)
    # read unchanged to keep alpha (OpenCV's TIFF reader applies the Orientation tag either way)
    if alpha_kind is None or array.ndim != 3 or array.shape[2] != 4:
        if alpha_kind is not None:  # the file has alpha that OpenCV did not hand over
            _note_lost_alpha(array, alpha_kind, photometric, bits, failure, path, warnings)
        elif gray_extras:  # an extra sample that is not alpha: nothing lost with it, but the depth
            _note_lost_depth(array, bits, failure, path, warnings)
        return _split_bgra(array)
    by_rgba_reader = array.dtype == np.uint8  # only libtiff's 8-bit RGBA reader premultiplies
    premultiplied = alpha_kind == _ASSOCIATED_ALPHA or by_rgba_reader
    if alpha_kind == _UNASSOCIATED_ALPHA and by_rgba_reader:
        _note_lost_colours(array[..., 3], path, warnings)
    return _colours_and_alpha(array[..., [2, 1, 0, 3]], premultiplied)


def _note_lost_colours(alpha: np.ndarray, path: Path, warnings: list[str]) -> None:
    """Warn that libtiff's RGBA reader, which multiplies the colours of an unassociated-alpha image
    by its alpha, lost the colour of every fully transparent pixel (black): the file has it."""
    lost = int((alpha == 0).sum())
    if lost:
        warnings.append(
            f"{path}: {lost:,} fully transparent pixels read as black (this compression is decoded by "
            "libtiff, which drops their colour; pip install imagecodecs reads them as stored)"
        )


def _note_lost_alpha(
    array: np.ndarray,
    alpha_kind: int,
    photometric: int,
    bits: int,
    failure: Exception | None,
    path: Path,
    warnings: list[str],
) -> None:
    """Warn that a page whose ExtraSamples says alpha came from libtiff without it (a gray page:
    OpenCV reads those as one channel), so it reads as opaque where tifffile would keep the alpha:
    a cut-out would not be transparent where the file is. What else went with it is named too: an
    associated alpha's colours stay multiplied by it (nothing to divide them by), and a 16-bit
    gray + alpha page comes back at 8 bits."""
    gray = photometric in (_PHOTOMETRIC_MINISBLACK, _PHOTOMETRIC_MINISWHITE)
    kind = "associated" if alpha_kind == _ASSOCIATED_ALPHA else "unassociated"
    how = ["read as opaque"]
    if alpha_kind == _ASSOCIATED_ALPHA:
        colours = "gray" if gray else "colours"
        how.append(f"its {colours} still multiplied by that alpha (darker where it is partly transparent)")
    got = 8 * array.dtype.itemsize
    if np.issubdtype(array.dtype, np.integer) and bits > got:
        how.append(f"at {got} bits instead of {bits}")
    why = "which reads gray with alpha as gray alone" if gray else "which handed over no alpha"
    hint = "; pip install imagecodecs reads it whole" if _missing_codec(failure) else ""
    warnings.append(
        f"{path}: its alpha ({kind}) is not read: {', '.join(how)} "
        f"(this TIFF is decoded by libtiff, {why}{hint})"
    )


def _note_lost_depth(
    array: np.ndarray, bits: int, failure: Exception | None, path: Path, warnings: list[str]
) -> None:
    """Warn that a gray page with an extra sample that is not alpha (ExtraSamples 0: unspecified)
    came from libtiff at fewer bits than it has: OpenCV reads gray with one extra sample through
    libtiff's 8-bit RGBA reader, so a 16-bit page loses its low byte (as a gray + alpha one does,
    :func:`_note_lost_alpha`). The extra sample itself is read by neither reader: it is no colour."""
    got = 8 * array.dtype.itemsize
    if not np.issubdtype(array.dtype, np.integer) or bits <= got:
        return
    hint = "; pip install imagecodecs reads it whole" if _missing_codec(failure) else ""
    warnings.append(
        f"{path}: its {bits}-bit gray is read at {got} bits (this TIFF is decoded by libtiff, which "
        f"reads gray with an extra sample at {got} bits{hint})"
    )


def _refuse_mixed_gray(
    extras: int, bits: int, compression: str | None, failure: Exception | None, path: Path
) -> None:
    """Refuse a 16-bit gray page with two or more extra samples that OpenCV's libtiff decoded: it
    reads the gray and the first two extra samples as red, green and blue and hands back their
    luminance, so every pixel would be a mix of the gray and samples that are no colour at all
    (8-bit and float pages are read right).

    Raises:
        InputError: always.
    """
    codec = f"its {compression} compression" if compression else "its compression"
    raise InputError(
        f"{path}: cannot read this {bits}-bit gray TIFF with {extras} extra samples: {codec} is decoded "
        "here by libtiff, which would mix the extra samples into the gray",
        hint="pip install imagecodecs"
        if _missing_codec(failure)
        else "save it as a gray TIFF without extra samples",
    )


def _unpremultiply(samples: np.ndarray, full: float) -> np.ndarray:
    """(H, W, C + 1) colours multiplied by the last channel (alpha, opaque at ``full``) -> the same
    with straight colours: ``colour * full / alpha``, rounded and clipped to the type for integers.
    Where alpha is 0 the colours stay as stored (0 in a premultiplied file: nothing to recover)."""
    alpha = samples[..., -1:].astype(np.float32)
    scale = np.divide(np.float32(full), alpha, out=np.ones_like(alpha), where=alpha > 0)
    colour = samples[..., :-1] * scale
    if np.issubdtype(samples.dtype, np.integer):
        colour = np.clip(np.rint(colour), 0, np.iinfo(samples.dtype).max)
    return np.concatenate([colour.astype(samples.dtype), samples[..., -1:]], axis=2)


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` (H, W[, C]) as a viewer shows it, by the EXIF/TIFF Orientation value (1-8;
    others are left as stored): 2 mirrors, 3 turns 180 degrees, 6 turns 90 degrees clockwise, ..."""
    if orientation in (5, 6, 7, 8):
        array = np.swapaxes(array, 0, 1)  # transpose: 5 itself
        array = {5: array, 6: array[:, ::-1], 7: array[::-1, ::-1], 8: array[::-1]}[orientation]
    elif orientation in (2, 3, 4):
        array = {2: array[:, ::-1], 3: array[::-1, ::-1], 4: array[::-1]}[orientation]
    return np.ascontiguousarray(array)


def _read_cv2_or_none(
    path: Path, warnings: list[str], flags: int = _CV2_FLAGS, page: int = 0
) -> np.ndarray | None:
    try:
        return _read_cv2(path, warnings, flags, page)
    except InputError:
        return None


_TAG_ORIENTATION = 274
_TAG_INKSET = 332
_TAG_EXTRA_SAMPLES = 338
_ASSOCIATED_ALPHA = 1  # ExtraSamples value: colours stored multiplied by alpha (premultiplied)
_UNASSOCIATED_ALPHA = 2  # ExtraSamples value: alpha not multiplied into the colours
_ALPHA_SAMPLES = frozenset({_ASSOCIATED_ALPHA, _UNASSOCIATED_ALPHA})
_PHOTOMETRIC_MINISWHITE = 0
_PHOTOMETRIC_MINISBLACK = 1
_PHOTOMETRIC_RGB = 2
_GRAY_PHOTOMETRICS = frozenset({_PHOTOMETRIC_MINISWHITE, _PHOTOMETRIC_MINISBLACK})
_PHOTOMETRIC_PALETTE = 3
_PHOTOMETRIC_SEPARATED = 5  # CMYK when InkSet is 1 (or absent) and there are 4 inks
_PHOTOMETRIC_YCBCR = 6
_PHOTOMETRIC_CIELAB = 8  # L 0..max for 0..100, a and b signed
_PHOTOMETRIC_ICCLAB = 9  # the same, a and b unsigned with 128 (x 256 at 16 bits) for 0
# what _tiff_to_hwc turns into RGB (MINISBLACK 1 and RGB 2 are read as they are)
_PHOTOMETRIC_CONVERTED = frozenset({0, 1, 2, 3, 5, 8, 9})
_JPEG_COMPRESSIONS = frozenset({6, 7})  # old-style and new-style JPEG: the codec returns RGB


def _tiff_to_hwc(
    array: np.ndarray, axes: str, photometric: int, colormap: np.ndarray | None, path: Path
) -> np.ndarray:
    """A TIFF page's array (axes like 'YX', 'YXS', 'SYX') -> (H, W) or (H, W, C)."""
    # drop leading length-1 axes that are neither Y, X nor S (e.g. 'Q', 'I')
    keep = [i for i, a in enumerate(axes) if a in "YXS" or array.shape[i] != 1]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if sorted(axes) not in (["X", "Y"], ["S", "X", "Y"]):
        raise InputError(f"{path}: unsupported TIFF layout {axes} {array.shape}")
    if "S" in axes:
        array = np.transpose(array, [axes.index("Y"), axes.index("X"), axes.index("S")])
    else:
        array = np.transpose(array, [axes.index("Y"), axes.index("X")])
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if photometric == _PHOTOMETRIC_PALETTE and colormap is not None and array.ndim == 2:
        # colormap (3, 2**bits): 16-bit colours by the TIFF spec, but an 8-bit palette image is an
        # 8-bit picture (readers take the high byte), and some writers store 0..255 values as is
        cmap = np.asarray(colormap)
        if array.dtype == np.uint8:
            cmap = (cmap if cmap.max() < 256 else cmap >> 8).astype(np.uint8)
        array = np.moveaxis(cmap[:, array], 0, -1)
    elif photometric == _PHOTOMETRIC_MINISWHITE and array.ndim == 2:
        array = _invert(array)  # with extra samples, after the alpha is taken out (_read_tiff)
    elif photometric == _PHOTOMETRIC_SEPARATED and array.ndim == 3 and array.shape[2] >= 4:
        array = _cmyk_to_rgb(array[..., :4])
    elif photometric in (_PHOTOMETRIC_CIELAB, _PHOTOMETRIC_ICCLAB) and array.ndim == 3 and array.shape[2] > 2:
        array = _lab_to_rgb(array[..., :3], photometric == _PHOTOMETRIC_ICCLAB, path)
    return array


def _lab_to_rgb(lab: np.ndarray, icc: bool, path: Path) -> np.ndarray:
    """(H, W, 3) CIELab (or ICCLab) samples as a TIFF stores them -> sRGB at the same depth.

    Integer L runs 0..2**bits - 1 for L* 0..100; a* and b* are signed (CIELab) or offset by 128
    (ICCLab), in units of 1/256 at 16 bits. Float samples are L*, a*, b* themselves. OpenCV's
    conversion takes the D65 white point.
    """
    dtype = lab.dtype
    if np.issubdtype(dtype, np.floating):
        lab_f, top = lab.astype(np.float32), None
    elif dtype.itemsize in (1, 2):
        lab = np.ascontiguousarray(lab)
        bits = 8 * dtype.itemsize
        top = np.uint8 if bits == 8 else np.uint16
        unsigned = lab.view(np.dtype(f"u{dtype.itemsize}")).astype(np.float32)
        signed = lab.view(np.dtype(f"i{dtype.itemsize}")).astype(np.float32)
        step = np.float32(1 << (bits - 8))  # a*/b* units: 1 at 8 bits, 1/256 at 16
        ab = unsigned[..., 1:] / step - np.float32(128) if icc else signed[..., 1:] / step
        lab_f = np.concatenate([unsigned[..., :1] * np.float32(100 / (2**bits - 1)), ab], axis=2)
    else:
        raise InputError(
            f"{path}: a {8 * dtype.itemsize}-bit integer CIELab TIFF, which pdseg does not convert",
            hint="convert it to RGB first, e.g. magick IN.tif -colorspace sRGB OUT.tif",
        )
    rgb = cv2.cvtColor(lab_f, cv2.COLOR_Lab2RGB)  # float32 in: L* 0..100, a*/b* signed -> RGB 0..1
    np.clip(rgb, 0.0, 1.0, out=rgb)
    if top is None:
        return rgb
    return np.rint(rgb * np.float32(np.iinfo(top).max)).astype(top)


def _invert(array: np.ndarray) -> np.ndarray:
    if np.issubdtype(array.dtype, np.integer):
        return np.iinfo(array.dtype).max - array
    return 1.0 - array


def _cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """Naive CMYK -> RGB: R = (1 - C)(1 - K), as libjpeg and most viewers without ICC do."""
    dtype = cmyk.dtype
    top = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
    x = cmyk.astype(np.float32) / top
    rgb = (1.0 - x[..., :3]) * (1.0 - x[..., 3:4]) * top
    return np.rint(rgb).astype(dtype) if np.issubdtype(dtype, np.integer) else rgb.astype(dtype)


def to_rgb(array: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1|2|3|4) -> (H, W, 3): gray repeated, alpha dropped.

    The sample type is normalised to uint8, uint16 or float32: int8, and int16 whose values do
    not fit 0..255, are scaled from their positive range (0..127, 0..32767) to uint8 and uint16,
    negatives clipped to 0; other integer types whose values fit 0..255 or 0..65535 (int16 among
    them) become uint8 or uint16 as they are; the rest
    are scaled to uint16 by their type's range (int32 shifted to unsigned first); float64 becomes
    float32.

    Raises:
        ValueError: a shape that is not an image.
    """
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 2:  # gray + alpha
        array = np.repeat(array[..., :1], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] >= 3:
        array = array[..., :3]  # RGB(A): alpha and extra samples dropped
    else:
        raise ValueError(f"not an image: array of shape {array.shape}")
    return _normalise_dtype(array)


def _normalise_dtype(array: np.ndarray) -> np.ndarray:
    dtype = array.dtype
    if dtype in (np.uint8, np.uint16, np.float32):
        return array
    if dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(dtype, np.floating):
        # float64 beyond float32's range: finite in the file, so finite here, and in their ratios
        # (the cast made them infinite, with numpy's overflow warning and its source line printed)
        top = float(np.max(np.abs(array), where=np.isfinite(array), initial=0.0))
        if top > float(np.finfo(np.float32).max):
            array = array / top
        return array.astype(np.float32)
    # the value range, once, for the integer rules below
    bounds = (int(array.min()), int(array.max())) if array.size and np.issubdtype(dtype, np.integer) else None
    fits_8_bits = bounds is not None and bounds[0] >= 0 and bounds[1] <= 255
    if dtype == np.int8 or (dtype == np.int16 and not fits_8_bits):
        # a signed 8/16-bit image (as scientific cameras and converters write) is full at 127 /
        # 32767: read as unsigned it would be half as bright; below 0 is below black. int16 values
        # that fit 0..255 are 8-bit data in a wider type, as for every wider integer type below.
        wide = np.uint8 if dtype == np.int8 else np.uint16
        factor = np.float32(np.iinfo(wide).max / np.iinfo(dtype).max)
        return np.rint(np.clip(array, 0, None).astype(np.float32) * factor).astype(wide)
    if bounds is not None and bounds[0] >= 0:
        top = bounds[1]  # values that fit 8 or 16 bits are such an image, whatever the type
        if top <= 255:
            return array.astype(np.uint8)
        if top <= 65535:
            return array.astype(np.uint16)
    if np.issubdtype(dtype, np.signedinteger):
        info = np.iinfo(dtype)
        shifted = array.astype(np.float64) - info.min  # int8/16/32 -> 0..2**bits - 1
        return np.rint(shifted / (info.max - info.min) * 65535).astype(np.uint16)
    if np.issubdtype(dtype, np.unsignedinteger):  # uint32, uint64
        return np.rint(array.astype(np.float64) / np.iinfo(dtype).max * 65535).astype(np.uint16)
    raise ValueError(f"unsupported sample type {dtype}")


# ----------------------------------------------------------------------------------------------
# writing


def check_writable_folder(folder: Path, label: str, *, create: bool = True) -> None:
    """Create ``folder`` (and its parents) and prove a file can be written in it, before any work.

    Args:
        folder: the folder.
        label: what to call it in the message, e.g. ``"--out runs/a"``.
        create: False proves it for the nearest folder that exists instead (``folder`` itself, or
            the one it would be made in) and creates nothing, for a check whose run may still be
            refused for another reason.

    Raises:
        InputError: it cannot be created or written (read-only file system, permissions, /proc).
    """
    import tempfile

    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = next(p for p in (folder, *folder.parents) if p.exists())
            if not folder.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(folder))
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".pdseg-write-check-", delete=True):
            pass
    except OSError as exc:
        raise InputError(
            f"{label} cannot be written ({exc.strerror or exc})",
            hint="choose a folder you can write to, or fix its permissions",
        ) from None


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def encode_png(
    pixels: np.ndarray,
    *,
    compression: int = 3,
    icc_profile: bytes | None = None,
    software: str | None = None,
    density: Density | None = None,
) -> bytes:
    """(H, W) gray or (H, W, 3|4) RGB(A), uint8 or uint16 -> PNG bytes.

    ``compression`` is zlib's level (OpenCV's default is 1; 3 is ~15% smaller and still fast).
    ``icc_profile``: an ICC profile to embed (an iCCP chunk, :func:`png_with_icc_profile`).
    ``density``: the pixel density to record (a pHYs chunk, :func:`png_with_density`).
    ``software``: a tEXt ``Software`` chunk to add (:func:`png_with_software`), e.g. pdseg's mark
    on its outputs (:data:`pdseg_cli.data.header.OUTPUT_MARK`).
    """
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG holds uint8 or uint16, got {pixels.dtype}")
    bgr = _rgb_to_bgr(pixels)
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise OSError("OpenCV could not encode the PNG")
    png = buf.tobytes()
    if density is not None:  # each chunk goes right after IHDR: pHYs ends up last, before IDAT
        png = png_with_density(png, density)
    if icc_profile is not None:
        png = png_with_icc_profile(png, icc_profile)
    if software is not None:  # inserted last: it ends up right after IHDR, before the iCCP chunk
        png = png_with_software(png, software)
    return png


PNG_ICC_NAME = b"icc"  # the iCCP chunk's profile name (1-79 Latin-1 characters; readers ignore it)
_IHDR_END = 8 + 8 + 13 + 4  # signature, IHDR's length and type, its 13 bytes, its CRC


def png_with_chunk(png: bytes, name: bytes, data: bytes) -> bytes:
    """``png`` with a chunk ``name`` holding ``data`` (its length, type, data and CRC) right after
    IHDR: the one place before PLTE and IDAT that every PNG has, where iCCP must be and any text
    may be.

    Raises:
        ValueError: ``png`` does not start with a PNG signature and IHDR.
    """
    if png[12:16] != b"IHDR":
        raise ValueError("not a PNG starting with IHDR")
    chunk = struct.pack(">I", len(data)) + name + data + struct.pack(">I", zlib.crc32(name + data))
    return png[:_IHDR_END] + chunk + png[_IHDR_END:]


def png_with_icc_profile(png: bytes, profile: bytes) -> bytes:
    """``png`` with an iCCP chunk holding ``profile`` right after IHDR (where the PNG specification
    wants it: before PLTE and IDAT): the name, a NUL, compression method 0 and the zlib-compressed
    profile. ``png`` must have no iCCP, sRGB or gAMA chunk (OpenCV writes none)."""
    compressed = zlib.compress(profile, 9)
    if len(PNG_ICC_NAME) + 2 + len(compressed) < 92:
        # libpng drops an iCCP chunk under 92 bytes as "too short" (it reads 81, then wants a whole
        # zlib stream): a tiny or very regular profile is stored uncompressed instead
        compressed = zlib.compress(profile, 0)
    return png_with_chunk(png, b"iCCP", PNG_ICC_NAME + b"\x00\x00" + compressed)


def png_with_density(png: bytes, density: Density) -> bytes:
    """``png`` with a pHYs chunk right after IHDR (the PNG specification wants it before IDAT):
    ``density`` in pixels per metre (unit 1), rounded. ``png`` must have none (OpenCV writes none)."""
    return png_with_chunk(png, b"pHYs", struct.pack(">IIB", *density.per_metre(), 1))


def png_with_software(png: bytes, software: str) -> bytes:
    """``png`` with a tEXt chunk ``Software`` = ``software`` right after IHDR, where a reader that
    stops at the image data (:func:`pdseg_cli.data.header.carries_output_mark`) finds it soon.
    tEXt holds Latin-1 text; a character outside it is replaced."""
    return png_with_chunk(png, b"tEXt", b"Software\x00" + software.encode("latin-1", "replace"))


def write_png(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    icc_profile: bytes | None = None,
    software: str | None = None,
    density: Density | None = None,
) -> None:
    """Write a PNG atomically (see :func:`encode_png` for what the arguments may be)."""
    write_bytes_atomic(path, encode_png(pixels, icc_profile=icc_profile, software=software, density=density))


def write_tiff(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    icc_profile: bytes | None = None,
    software: str | None = None,
    density: Density | None = None,
) -> None:
    """Write (H, W, 3|4) RGB(A) or (H, W) gray as a deflate-compressed TIFF, atomically.

    The sample type is kept (uint8, uint16 or float32). A 4th channel is stored as unassociated
    alpha; files over 2 GB become BigTIFF. ``icc_profile``: an ICC profile to embed (tag 34675,
    InterColorProfile). ``software``: the Software tag (305; tifffile's own name without it), e.g.
    pdseg's mark on its outputs (:data:`pdseg_cli.data.header.OUTPUT_MARK`). ``density``: the
    pixel density, as XResolution, YResolution and ResolutionUnit in its own unit (tifffile
    writes 1/1 with no unit without it).
    """
    import tifffile

    kwargs: dict[str, Any] = {"compression": "zlib", "compressionargs": {"level": 6}}
    if icc_profile is not None:
        kwargs["iccprofile"] = icc_profile
    if density is not None:
        kwargs["resolution"] = (density.x, density.y)
        kwargs["resolutionunit"] = "CENTIMETER" if density.unit == "cm" else "INCH"
    if software is not None:
        kwargs["software"] = software
    if pixels.ndim == 3:
        kwargs["photometric"] = "rgb"
        if pixels.shape[2] == 4:
            kwargs["extrasamples"] = ["unassalpha"]
    else:
        kwargs["photometric"] = "minisblack"
    bigtiff = pixels.nbytes > 2**31 - 2**25
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, pixels, bigtiff=bigtiff, **kwargs)


def _rgb_to_bgr(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        return pixels
    if pixels.shape[2] == 3:
        return np.ascontiguousarray(pixels[..., ::-1])
    if pixels.shape[2] == 4:
        return np.ascontiguousarray(pixels[..., [2, 1, 0, 3]])
    raise ValueError(f"expected 1, 3 or 4 channels, got shape {pixels.shape}")
