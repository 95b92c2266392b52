"""Reading images of every common kind to RGB arrays, and writing outputs atomically.

Reading keeps the sample type: 8-bit files come back as uint8, 16-bit files as uint16 and
floating-point TIFFs as float32, always as (H, W, 3) RGB. What is normalised on the way:

* EXIF orientation is applied (JPEG, PNG, WebP: OpenCV does it when reading in colour), and so
  is a TIFF's Orientation tag.
* Grayscale is repeated into three channels; CMYK JPEGs and TIFFs are converted to RGB.
* An alpha channel is dropped: pdseg segments the colours, whatever the alpha says.
* TIFFs are read with tifffile (8/16/32-bit integer and float, gray/RGB/RGBA, planar or
  interleaved, BigTIFF, compressed). A multi-page TIFF gives its first page and a warning.
  A compression that tifffile cannot decode without ``imagecodecs`` (LZW, JPEG, PackBits...) is
  read through OpenCV's libtiff instead; its RGBA reader multiplies the colours of an
  unassociated-alpha image by alpha, which is undone (fully transparent pixels stay black).

Writing always goes through a temporary file in the target folder and ``os.replace``: a crash,
an exception or Ctrl-C leaves either the old file or the complete new one, never a partial file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pdseg_cli.config import DEFAULT_MAX_PIXELS
from pdseg_cli.data import native_messages
from pdseg_cli.errors import InputError

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
# the same formats by name, for messages (kept beside the suffixes they name)
IMAGE_KINDS = ("JPEG", "PNG", "TIFF", "BMP", "WebP", "PNM")

# colour, EXIF orientation applied, 16-bit kept, alpha dropped (IMREAD_UNCHANGED would skip EXIF)
_CV2_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
TEMP_SUFFIX = ".pdseg-tmp"  # temporary files start with "." and end with this


@dataclass
class LoadedImage:
    """One decoded image.

    Attributes:
        pixels: (H, W, 3) RGB; uint8, uint16, or float32 for floating-point TIFFs.
        path: where it was read from.
        warnings: things the user should know (e.g. "multi-page TIFF: first page used").
    """

    pixels: np.ndarray
    path: Path
    warnings: list[str] = field(default_factory=list)

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
    if max_pixels is not None:
        from pdseg_cli.data.header import image_size

        size = image_size(path)
        if size is not None and size[0] * size[1] > max_pixels:
            w, h = size
            raise InputError(
                f"{path}: {w}x{h} is {w * h:,} pixels, over the limit of {max_pixels:,} (--max-pixels); "
                "not decoded",
                hint="pass a larger --max-pixels if this machine has the memory for it",
            )
    warnings: list[str] = []
    if path.suffix.lower() in TIFF_SUFFIXES:
        array = _read_tiff(path, warnings)
    else:
        array = _read_cv2(path, warnings)
        if array.ndim == 3:
            array = array[..., ::-1]  # BGR -> RGB
    try:
        pixels = to_rgb(array)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise InputError(f"{path}: the image is empty ({pixels.shape[1]}x{pixels.shape[0]})")
    if pixels.dtype == np.float32:
        pixels = _finite(pixels, path, warnings)
    return LoadedImage(np.ascontiguousarray(pixels), path, warnings)


def _finite(pixels: np.ndarray, path: Path, warnings: list[str]) -> np.ndarray:
    """A float image with its NaN and infinite samples set to 0 (as ``transforms.to_float_rgb``
    treats them for the model), and a warning that counts them: left in the pixels, the foreground
    estimate of a cut-out spread them over most of the image."""
    bad = ~np.isfinite(pixels)
    if not bad.any():
        return pixels
    warnings.append(f"{path}: {int(bad.sum()):,} samples are NaN or infinite; read as 0")
    return np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0)


def _read_cv2(path: Path, warnings: list[str], flags: int = _CV2_FLAGS) -> np.ndarray:
    try:
        data = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode: non-ASCII paths work too
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        array, messages = native_messages.decode(lambda: cv2.imdecode(data, flags))
    except cv2.error as exc:  # e.g. OpenCV's own pixel limit: a multi-line assertion dump
        raise InputError(f"{path}: cannot decode (OpenCV: {_opencv_reason(exc)})") from None
    if array is None:
        raise InputError(
            f"{path}: cannot decode (corrupt, truncated or not a {path.suffix.lstrip('.').upper()} image)"
            + (f"; the decoder said: {messages[0]}" if messages else "")
        )
    warnings.extend(f"{path}: the decoder said: {m} (decoded anyway; parts may be damaged)" for m in messages)
    return array


def _opencv_reason(exc: BaseException) -> str:
    """One sentence from an OpenCV error: its ``error: (-N:Kind) message in function`` part."""
    text = " ".join(str(exc).split())
    if "error: (" in text:  # "OpenCV(4.x) file.cpp:77: error: (-215:Assertion failed) what in function 'f'"
        text = text.split("error: (", 1)[1].split(")", 1)[-1]
    text = text.split(" in function ")[0].strip(" :.'")
    return text[:200] or type(exc).__name__


def _read_tiff(path: Path, warnings: list[str]) -> np.ndarray:
    import tifffile

    extra_samples: tuple[int, ...] = ()
    orientation = 1
    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) > 1:
                warnings.append(f"{path}: multi-page TIFF ({len(tif.pages)} pages), the first page is used")
            page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
            extra = page.tags.get(_TAG_EXTRA_SAMPLES)
            extra_samples = tuple(np.atleast_1d(extra.value).tolist()) if extra is not None else ()
            tag = page.tags.get(_TAG_ORIENTATION)
            orientation = int(tag.value) if tag is not None else 1
            array = page.asarray()
            axes = page.axes
            photometric = int(page.photometric)
            colormap = getattr(page, "colormap", None)
    except tifffile.TiffFileError as exc:
        raise InputError(f"{path}: not a valid TIFF ({exc})") from None
    except (KeyError, ImportError, NotImplementedError, ValueError) as exc:
        # e.g. a compression tifffile decodes only with imagecodecs (LZW, JPEG, PackBits): OpenCV's
        # libtiff, which applies the Orientation tag itself
        unassociated = _UNASSOCIATED_ALPHA in extra_samples
        array = _read_cv2_or_none(path, warnings, cv2.IMREAD_UNCHANGED if unassociated else _CV2_FLAGS)
        if array is None:
            codec = "imagecodecs" in str(exc)
            raise InputError(
                f"{path}: cannot decode this TIFF ({exc})",
                hint="pip install imagecodecs adds the TIFF compressions tifffile lacks" if codec else None,
            ) from None
        if unassociated and array.ndim == 3 and array.shape[2] == 4:
            # read unchanged to keep alpha (OpenCV's TIFF reader applies the Orientation tag either
            # way); only libtiff's 8-bit RGBA reader premultiplies, and alpha is dropped for all
            if array.dtype == np.uint8:
                array = _unpremultiply(array, path, warnings)
            array = array[..., :3]
        return array[..., ::-1] if array.ndim == 3 else array
    except Exception as exc:  # tifffile raises many kinds (struct.error, OSError, ...)
        raise InputError(f"{path}: cannot read as TIFF ({type(exc).__name__}: {exc})") from None
    return orient(_tiff_to_hwc(array, axes, photometric, colormap, path), orientation)


def _unpremultiply(bgra: np.ndarray, path: Path, warnings: list[str]) -> np.ndarray:
    """Undo libtiff's RGBA reader, which multiplies the colours of an unassociated-alpha image by
    its alpha: the colours come back where alpha > 0; where alpha is 0 they are lost (black)."""
    alpha = bgra[..., 3:].astype(np.float32)
    scale = np.divide(255.0, alpha, out=np.zeros_like(alpha), where=alpha > 0)
    colour = np.clip(np.rint(bgra[..., :3] * scale), 0, 255).astype(bgra.dtype)
    lost = int((alpha == 0).sum())
    if lost:
        warnings.append(
            f"{path}: {lost:,} fully transparent pixels read as black (this compression is decoded by "
            "libtiff, which drops their colour; pip install imagecodecs reads them as stored)"
        )
    return np.concatenate([colour, bgra[..., 3:]], axis=2)


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` (H, W[, C]) as a viewer shows it, by the EXIF/TIFF Orientation value (1-8;
    others are left as stored): 2 mirrors, 3 turns 180 degrees, 6 turns 90 degrees clockwise, ..."""
    if orientation in (5, 6, 7, 8):
        array = np.swapaxes(array, 0, 1)  # transpose: 5 itself
        array = {5: array, 6: array[:, ::-1], 7: array[::-1, ::-1], 8: array[::-1]}[orientation]
    elif orientation in (2, 3, 4):
        array = {2: array[:, ::-1], 3: array[::-1, ::-1], 4: array[::-1]}[orientation]
    return np.ascontiguousarray(array)


def _read_cv2_or_none(path: Path, warnings: list[str], flags: int = _CV2_FLAGS) -> np.ndarray | None:
    try:
        return _read_cv2(path, warnings, flags)
    except InputError:
        return None


_TAG_ORIENTATION = 274
_TAG_EXTRA_SAMPLES = 338
_UNASSOCIATED_ALPHA = 2  # ExtraSamples value: alpha not multiplied into the colours
_PHOTOMETRIC_MINISWHITE = 0
_PHOTOMETRIC_PALETTE = 3
_PHOTOMETRIC_SEPARATED = 5  # CMYK


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
        array = _invert(array)
    elif photometric == _PHOTOMETRIC_SEPARATED and array.ndim == 3 and array.shape[2] >= 4:
        array = _cmyk_to_rgb(array[..., :4])
    return array


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

    The sample type is normalised to uint8, uint16 or float32: other integer types whose values
    fit 0..255 or 0..65535 become uint8 or uint16 as they are; the rest are scaled to uint16 by
    their type's range (int8/int16/int32 shifted to unsigned first); float64 becomes float32.

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
        return array.astype(np.float32)
    if np.issubdtype(dtype, np.integer) and array.size and int(array.min()) >= 0:
        top = int(array.max())  # values that fit 8 or 16 bits are such an image, whatever the type
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is
    left as it was. The temporary name is hidden (starts with ".") and ends in ``.pdseg-tmp``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def check_writable_folder(folder: Path, label: str) -> None:
    """Create ``folder`` (and its parents) and prove a file can be written in it, before any work.

    Args:
        folder: the folder.
        label: what to call it in the message, e.g. ``"--out runs/a"``.

    Raises:
        InputError: it cannot be created or written (read-only file system, permissions, /proc).
    """
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
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


def encode_png(pixels: np.ndarray, *, compression: int = 3) -> bytes:
    """(H, W) gray or (H, W, 3|4) RGB(A), uint8 or uint16 -> PNG bytes.

    ``compression`` is zlib's level (OpenCV's default is 1; 3 is ~15% smaller and still fast).
    """
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG holds uint8 or uint16, got {pixels.dtype}")
    bgr = _rgb_to_bgr(pixels)
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise OSError("OpenCV could not encode the PNG")
    return buf.tobytes()


def write_png(path: str | os.PathLike[str], pixels: np.ndarray) -> None:
    """Write a PNG atomically (see :func:`encode_png` for what ``pixels`` may be)."""
    write_bytes_atomic(path, encode_png(pixels))


def write_tiff(path: str | os.PathLike[str], pixels: np.ndarray) -> None:
    """Write (H, W, 3|4) RGB(A) or (H, W) gray as a deflate-compressed TIFF, atomically.

    The sample type is kept (uint8, uint16 or float32). A 4th channel is stored as unassociated
    alpha; files over 2 GB become BigTIFF.
    """
    import tifffile

    kwargs: dict[str, object] = {"compression": "zlib", "compressionargs": {"level": 6}}
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
