"""Reading masks and prediction maps exactly as the DIS evaluation tools do.

They read both files with ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)`` (``docs/metrics.md``, 'Reading files'):
a 16-bit file becomes its high byte (``v >> 8``), a colour file becomes its luminance
``0.299 R + 0.587 G + 0.114 B`` (alpha ignored). pdseg decodes the same way (``cv2.imdecode`` of the
file's bytes, which also reads non-ASCII paths) and says when a file took one of those roads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pdseg_cli.data import native_messages
from pdseg_cli.errors import InputError
from pdseg_cli.metrics.common import GT_THRESHOLD

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}  # 0 is plain gray


@dataclass(frozen=True)
class MaskFile:
    """One decoded 8-bit grayscale map.

    Attributes:
        path: the file.
        array: (H, W) uint8, as ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)`` reads it.
        sixteen_bit: the file holds 16-bit samples (the array holds the high bytes).
        colour: the file's colour kind when it is not plain gray ("RGB", "RGBA", "palette"...),
            read as luminance; None for gray files or when unknown.
        digest: sha256 of the file bytes (hex), or None when not asked for.
        decoder_said: what libjpeg/libpng printed while decoding it (a damaged file that still
            decoded), when the ``pdseg`` command routes those messages.
    """

    path: Path
    array: np.ndarray
    sixteen_bit: bool
    colour: str | None
    digest: str | None
    decoder_said: tuple[str, ...] = ()


def read_mask_file(path: str | os.PathLike[str], *, digest: bool = False) -> MaskFile:
    """Decode ``path`` as 8-bit grayscale with OpenCV's ``IMREAD_GRAYSCALE`` semantics.

    Args:
        path: an image file (PNG, JPEG, BMP, TIFF, WebP...).
        digest: also hash the file's bytes (for the GT cache).

    Raises:
        InputError: the file is missing, unreadable or not a decodable image.
    """
    path = Path(path)
    data = _mask_bytes(path)
    array: np.ndarray | None
    said: list[str]
    array, said = None, []
    if data:
        try:
            array, said = native_messages.decode(
                lambda: cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
            )
        except cv2.error:
            array = None
        if array is None:  # a copy cut short at its very end: every row is there (as predict reads it)
            from pdseg_cli.data.images import END_MARKER_NOTE, decode_lacking_end_marker

            array = decode_lacking_end_marker(data, cv2.IMREAD_GRAYSCALE)
            said = [END_MARKER_NOTE] if array is not None else said
    if array is None or array.ndim != 2 or array.size == 0:
        kind = path.suffix.lstrip(".").upper() or "image"
        unchanged = _decode_unchanged(data) if data else None
        if unchanged is not None and unchanged.dtype.kind == "f":
            raise InputError(  # OpenCV's grayscale read, the reference tools' too, refuses float maps
                f"{path}: a {unchanged.dtype.itemsize * 8}-bit float map, which the DIS metric tools "
                "do not read",
                hint="save 8-bit maps (byte = floor(255 p), as `pdseg predict` writes them)",
            )
        from pdseg_cli.data.header import HEAD_BYTES, other_format

        what = other_format(data[:HEAD_BYTES]) if data else None  # a web page or an LFS pointer, say so
        raise InputError(
            f"{path}: cannot decode ({what or f'empty, truncated, corrupt or not a {kind} file'})"
            + (f"; the decoder said: {said[0]}" if said else "")
        )
    sixteen_bit, colour = _sample_kind(data, path)
    return MaskFile(
        path=path,
        array=array,
        sixteen_bit=sixteen_bit,
        colour=colour,
        digest=hashlib.sha256(data).hexdigest() if digest else None,
        decoder_said=tuple(said),
    )


# A map or a GT is refused before it is read when its file or its header says it is far beyond any
# real mask (DIS5K's largest GTs have about 30 million pixels): a device, a 3 GB file, or a small
# file that decodes to gigabytes would take the memory of the whole run.
MAX_MASK_BYTES = 1 << 30
# OpenCV's own decoding limit (CV_IO_MAX_IMAGE_PIXELS): a map that `pdseg predict --max-pixels`
# was raised to write still scores, and a header beyond it is refused before anything is read
MAX_MASK_PIXELS = 1 << 30


@contextlib.contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """An operating-system error reading ``path`` as one InputError naming it."""
    try:
        yield
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _mask_bytes(path: Path) -> bytes:
    """The bytes of a mask file, refused before they are read when the file is no regular file or
    too big to be a mask, and before they are decoded when its header claims too many pixels (the
    header is read from the bytes, not from the file again).

    Raises:
        InputError: naming the file and why.
    """
    from pdseg_cli.data.header import image_size

    with _read_errors(path):
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: not a regular file (a device, a pipe or a folder), so not a mask")
        if st.st_size > MAX_MASK_BYTES:
            raise InputError(f"{path}: {st.st_size:,} bytes, far more than any mask file; not read")
        data = path.read_bytes()
    size = image_size(path, data) if data else None
    if size is not None and size[0] * size[1] > MAX_MASK_PIXELS:
        w, h = size
        raise InputError(
            f"{path}: {w}x{h} pixels, far more than any mask ({MAX_MASK_PIXELS:,} at most); not decoded"
        )
    return data


def read_gray_u8(path: str | os.PathLike[str]) -> np.ndarray:
    """``cv2.imread(path, cv2.IMREAD_GRAYSCALE)``, with an InputError naming the file on failure."""
    return read_mask_file(path).array


def _raw_samples(path: Path) -> np.ndarray | None:
    """The file's samples as stored, decoded from its bytes (so non-ASCII paths read everywhere and
    decoder messages are routed), or None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return _decode_unchanged(data) if data else None


def mask_in_alpha(mask: MaskFile) -> bool:
    """Whether the file keeps its mask in the alpha channel, which is not read (:func:`alpha_use`)."""
    return alpha_use(mask) is not None


def alpha_use(mask: MaskFile, raw: np.ndarray | None = None) -> str | None:
    """How the file keeps its mask in the alpha channel, which is not read: ``"uniform"``, an alpha
    that varies under colours of one uniform value (an opaque blank map is just blank), or
    ``"cut-out"``, an alpha that varies under a picture (the photo in the colours, the mask in
    alpha, as background removers save them); None for a file whose colours read as its mask (a
    white object on transparent black, or on opaque black with a transparent margin).

    Args:
        mask: the file as read.
        raw: its samples as stored, where the caller has decoded them already; else decoded here,
            for files with alpha only.
    """
    if mask.colour not in ("RGBA", "gray+alpha"):
        return None
    if raw is None:
        raw = _raw_samples(mask.path)
    if raw is None or raw.ndim != 3 or raw.shape[2] not in (2, 4) or float(np.ptp(raw[..., -1])) == 0:
        return None
    if int(mask.array.min()) == int(mask.array.max()):
        return "uniform"
    if raw.dtype not in (np.uint8, np.uint16):  # a float TIFF: its colours are judged as read
        return None
    eight = raw if raw.dtype == np.uint8 else (raw >> 8).astype(np.uint8)
    # the colours as stored, as the alpha is (the gray reading may be turned by an EXIF tag)
    gray = eight[..., 0] if raw.shape[2] == 2 else cv2.cvtColor(eight[..., :3], cv2.COLOR_BGR2GRAY)
    opaque = eight[..., -1] > GT_THRESHOLD
    # a picture under the opaque part spreads over the gray levels; a mask there is 0 and 255
    return "cut-out" if _top_share(gray[opaque] if opaque.any() else gray) < _PICTURE_TOP_SHARE else None


# A picture's gray levels spread out: a mask (hard, soft at its edges, a palette of a few colours,
# JPEG-noisy) keeps most pixels in a few of 32 gray bins; a photo does not.
_PICTURE_BINS, _PICTURE_TOP_BINS, _PICTURE_TOP_SHARE = 32, 3, 0.5
_LABEL_COLOURS = 64  # a colour file with at most this many colours is a label map, however spread
_TINT = 2  # channels this far apart are still a gray file (a matte saved in colour), not a picture


def _top_share(gray: np.ndarray) -> float:
    """The share of ``gray``'s pixels (uint8) in its three commonest of 32 gray bins."""
    bins = np.bincount((gray >> 3).ravel(), minlength=_PICTURE_BINS)
    return float(np.sort(bins)[-_PICTURE_TOP_BINS:].sum()) / max(gray.size, 1)


# A colour pixel whose gray reading (luminance) keeps less than this share of its brightest channel
# trains as a faint target (DAVIS's dark red 128,0,0 keeps 0.30, pure green 0.59); yellow (0.88),
# white and a gray mask whose channels differ by JPEG noise (about 1.0) train as they are.
_KEPT_SHARE = 0.8
_OBJECT_LEVEL = 64  # colour pixels at least this bright count (JPEG noise stays below)
_FAINT_PART = 0.1  # a mask is refused when more of its bright pixels than this are faint (an object
# outlined in a bright "void" colour, as VOC-style palettes do, is still caught)


# What is wrong with a mask as a training target (MaskProblem.kind); training groups its errors by it
MASK_IN_ALPHA, SIXTEEN_BIT_MASK, COLOUR_MASK, ZERO_ONE_MASK, FAINT_MASK, PICTURE_MASK = (
    "alpha",
    "16-bit",
    "colour",
    "0/1",
    "faint",
    "picture",
)


class MaskProblem(str):
    """Why a mask is no training target: the sentence itself (a ``str``), with its ``kind`` (one of
    the ``*_MASK`` names above) and ``detail``, what a listing of several such masks adds after a
    file's name (``RGB, at most 38``), so that a caller groups and lists them without reading the
    sentence back."""

    kind: str
    detail: str

    def __new__(cls, text: str, kind: str, detail: str = "") -> MaskProblem:
        problem = super().__new__(cls, text)
        problem.kind, problem.detail = kind, detail
        return problem


def training_mask_problem(mask: MaskFile) -> MaskProblem | None:
    """Why ``mask`` read as gray is not a training target, or None.

    The metrics read a colour GT as its luminance and a 16-bit one as its high byte (as the
    reference tools do). That is right for a gray mask stored as RGB, but it turns a palette or
    coloured mask (DAVIS's dark red object reads as 38) into a faint target and a 16-bit 0/255 mask
    into an empty one; training refuses those instead of learning a half-present object. The file
    is decoded a second time only when it is colour or 16-bit; the colour test works on that
    decode alone (its own gray), as the first one may be rotated by an EXIF tag.
    """
    array = mask.array
    top = int(array.max())
    raw = _raw_samples(mask.path) if mask.colour is not None or (mask.sixteen_bit and top == 0) else None
    use = alpha_use(mask, raw)
    if use is not None:
        under = "one uniform value" if use == "uniform" else "a picture: a cut-out"
        return MaskProblem(
            f"keeps its mask in the alpha channel, which is not read (its colours are {under})", MASK_IN_ALPHA
        )
    if raw is not None and raw.ndim == 3 and raw.shape[2] in (2, 4):
        raw = raw[..., :-1]  # alpha is not read
    if raw is not None and raw.dtype == np.uint16:
        if top == 0 and int(raw.max()) > 0:
            return MaskProblem(
                f"is a 16-bit mask whose values (at most {int(raw.max())}) read as 0 in 8 bits (its high "
                "byte, as the metrics read GTs)",
                SIXTEEN_BIT_MASK,
                f"at most {int(raw.max())}",
            )
        raw = (raw >> 8).astype(np.uint8)
    if raw is not None and raw.ndim == 3 and raw.shape[2] == 3 and not _channels_equal(raw, _TINT):
        # a photo copied into gt/: only colour files are judged (a gray matte, however soft, is
        # not), and not a label map of a few colours (its fix is the colour masks' one, below)
        top_share = _top_share(cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY))
        if top_share < _PICTURE_TOP_SHARE and not _few_colours(raw):
            return MaskProblem(
                f"is {_article(mask.colour)} {mask.colour} picture, not a mask: its gray levels spread out "
                f"(its three commonest of 32 hold {top_share:.0%} of its pixels; a mask's hold most)",
                PICTURE_MASK,
                f"{mask.colour} picture",
            )
    if raw is not None and raw.ndim == 3 and raw.shape[2] == 3:
        brightest = raw.max(axis=2)
        on = brightest >= _OBJECT_LEVEL
        if on.any():
            gray = cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY)
            faint = gray[on].astype(np.float32) < _KEPT_SHARE * brightest[on]
            if float(faint.mean()) > _FAINT_PART:
                brightest_object = int(gray[on][faint].max())
                return MaskProblem(
                    f"is {_article(mask.colour)} {mask.colour} image in colour, not a gray mask: read as "
                    f"gray (luminance, as the metrics read GTs) its object is at most {brightest_object} "
                    "of 255, a faint target",
                    COLOUR_MASK,
                    f"{mask.colour}, at most {brightest_object}",  # palette or RGB: their fixes differ
                )
    if top == 1:
        return MaskProblem(
            "holds only the values 0 and 1: it trains as an almost empty target and scores as an empty mask",
            ZERO_ONE_MASK,
        )
    if 0 < top <= GT_THRESHOLD:
        return MaskProblem(
            f"has no value above {GT_THRESHOLD} (at most {top}): it trains as a faint target and scores as "
            "an empty mask",
            FAINT_MASK,
            f"at most {top}",
        )
    return None


def _article(colour: str | None) -> str:
    """The article before a colour kind: an RGB, an RGBA, a palette image."""
    return "an" if str(colour).startswith("R") else "a"


def _few_colours(raw: np.ndarray) -> bool:
    """Whether an (H, W, 3) uint8 decode holds at most ``_LABEL_COLOURS`` colours (a label map)."""
    packed = raw.astype(np.uint32)
    codes = (packed[..., 0] << 16) | (packed[..., 1] << 8) | packed[..., 2]
    return len(np.unique(codes)) <= _LABEL_COLOURS


def _channels_equal(raw: np.ndarray, tolerance: int = 0) -> bool:
    """Whether an (H, W, 3) decode holds one gray value per pixel (a gray mask stored as colour), its
    channels at most ``tolerance`` levels apart (a matte saved with a slight tint)."""
    if tolerance == 0:
        return np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(raw[..., 1], raw[..., 2])
    wide = raw.astype(np.int32)
    return bool(
        np.abs(wide[..., 0] - wide[..., 1]).max() <= tolerance
        and np.abs(wide[..., 1] - wide[..., 2]).max() <= tolerance
    )


def _sample_kind(data: bytes, path: Path) -> tuple[bool, str | None]:
    """(16-bit?, colour kind) from the PNG header, or by decoding unchanged for other formats.

    A file without alpha counts as colour only when its channels differ somewhere (a gray map saved
    as an RGB or palette PNG or as a three-channel JPEG is not: its luminance is that gray exactly),
    so a folder of photos passed as predictions is noticed, and a gray map in colour is not.
    """
    if data[:8] == _PNG_SIGNATURE and len(data) >= 26:
        kind = _PNG_COLOUR_TYPES.get(data[25])
        if kind in ("RGB", "palette"):  # decoded only for these: gray PNGs, the usual maps, are not
            raw = _decode_unchanged(data)
            if raw is not None and raw.ndim == 3 and raw.shape[2] == 3 and _channels_equal(raw):
                kind = None
        return data[24] == 16, kind
    raw = _decode_unchanged(data)  # what the decoder says was said by the first decode
    if raw is None:
        return False, None
    if path.suffix.lower() in (".tif", ".tiff"):
        if raw.ndim == 2 or raw.shape[2] == 1:
            colour = None
        elif raw.shape[2] == 4:
            colour = "RGBA"
        else:
            colour = None if _channels_equal(raw[..., :3]) else "RGB"
        return raw.dtype == np.uint16, colour
    if raw.ndim == 3 and raw.shape[2] == 4 and (np.ptp(raw[..., 3]) > 0 or not _channels_equal(raw[..., :3])):
        return raw.dtype == np.uint16, "RGBA"  # a WebP or BMP with alpha: judged as a PNG's would be
    if raw.ndim == 3 and raw.shape[2] >= 3 and not _channels_equal(raw[..., :3]):
        return raw.dtype == np.uint16, "RGB"
    return raw.dtype == np.uint16, None


def _decode_unchanged(data: bytes) -> np.ndarray | None:
    """The file's samples as stored (``IMREAD_UNCHANGED``), or None where OpenCV cannot decode it."""
    try:
        raw, _ = native_messages.decode(
            lambda: cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        )
    except cv2.error:
        return None
    return raw
