"""Pure functions between decoded images, model inputs and 8-bit maps.

The map rule (the bytes ``pdseg predict`` writes and ``pdseg eval`` scores), following the DIS
pipeline (``docs/metrics.md``, 'Prediction maps'):

1. the logits are resized to the image's original (H, W), bilinear, ``align_corners=False``,
   in float32, before anything else (a model that gives probabilities only, such as a foreign
   ONNX, has its probabilities resized instead, as its own scripts do);
2. ``p = sigmoid(logits)``;
3. ``byte = floor(255 * p)`` (truncation, as DIS's ``astype(np.uint8)``).

Unlike DIS, pdseg does **not** stretch each map to its own min..max first: a photo with no clear
foreground would otherwise get a full-contrast mask made of noise, and a given byte would mean a
different probability in every file (so ``--threshold`` could not be used). The DIS metrics
min-max normalise every prediction anyway (docs/metrics.md, 'Normalisation'), so F, weighted F, MAE, S and E
differ from DIS-style stretched files only where the map does not already reach 0 and 255; HCE
thresholds the byte at > 128, i.e. ``p > 129/255``.

``--threshold T`` instead writes ``255`` where ``p >= T`` and ``0`` elsewhere.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import cv2
import numpy as np
import torch

from pdseg_cli.data.colors import parse_color as parse_color  # where it was before data.colors
from pdseg_cli.data.images import finite_pixels

# The full scale of a float image (its value of full intensity) is 1, 255 or 65535: the smallest
# whose headroom holds the image's 99.9th percentile, else that percentile itself. The percentile
# makes a few stray samples (hot pixels, one overshoot of a resampling filter) count for nothing,
# and the headroom keeps a linear or HDR scan a 0..1 image with highlights up to two stops over
# white (a 0..255 image with 99.9% of its samples under 4 is black anyway). Samples over the full
# scale are clipped for the model; cut-outs and composites keep them, at the same full scale.
_FLOAT_RANGES = (1.0, 255.0, 65535.0)
_FLOAT_HEADROOM = 4.0
_FLOAT_PERCENTILE = 99.9
_FLOAT_SAMPLES = 1 << 20  # the percentile is taken on a fixed random subsample of this many at most

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def to_float_rgb(image: np.ndarray) -> np.ndarray:
    """Any image array -> (H, W, 3) float32 RGB on the 0..255 scale the model's normalisation uses.

    Args:
        image: (H, W), (H, W, 1) gray, (H, W, 3) RGB or (H, W, 4) RGBA (alpha ignored); uint8
            (0..255), uint16 (0..65535, divided by 257), bool, or float and other integer types
            (by their values: :func:`float_range`, never 0..1 for integers; NaN and negatives
            become 0, values over the full scale 255).

        A PIL image is taken too: in a mode whose samples are gray, RGB or RGBA values, as they are;
            in any other (palette, CMYK, YCbCr, LA...) converted to RGB first. So is a torch tensor
            in the same (H, W[, C]) layout, on any device, bf16 included (its values, detached).

    Raises:
        ValueError: not an image shape, or a PIL mode Pillow cannot convert to RGB.
    """
    image = np.asarray(_from_tensor(_from_pil(image)))
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        image = image[..., :3]
    else:
        # a (3, H, W) array is the usual slip from torch's channels-first layout
        first = (
            " (channels first? image.transpose(1, 2, 0) puts them last)"
            if image.ndim == 3 and image.shape[0] in (1, 3, 4)
            else ""
        )
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {image.shape}{first}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"the image is empty: shape {image.shape}")
    if not image.dtype.isnative:  # big-endian 16-bit (PIL's "I;16B") is uint16 by its range too
        image = image.astype(image.dtype.newbyteorder("="))
    dtype = image.dtype
    if dtype == np.uint8:
        return image.astype(np.float32)
    if dtype == np.uint16:
        return image.astype(np.float32) / np.float32(257.0)  # 65535 -> 255 exactly
    if dtype == np.bool_:
        return image.astype(np.float32) * np.float32(255.0)
    whole = np.issubdtype(dtype, np.integer)
    if whole:  # int8..int64, uint32, uint64: by their values, as floats are (an int64 array holding
        # 0..255 is an 8-bit image, not a near-black one)
        image, dtype = image.astype(np.float32), np.dtype(np.float32)
    if np.issubdtype(dtype, np.floating):
        # whole numbers are never on the 0..1 scale: a dark 8-bit photo in an int64 array (values
        # up to 3, say) stays dark, as the same values in a uint8 array are
        scale = max(float_range(image), 255.0) if whole else float_range(image)
        x, bad = finite_pixels(image.astype(np.float32))
        if bad:  # said, as a file's are (images._finite): a NaN region would come out as black
            what = "pixel of the image is" if bad == 1 else "pixels of the image are"
            warnings.warn(f"{bad:,} {what} NaN or infinite; read as 0", RuntimeWarning, 2)
        x *= np.float32(255.0 / scale)
        np.clip(x, 0.0, 255.0, out=x)  # the few samples over the full scale (float_range)
        return x
    raise ValueError(f"unsupported image dtype {dtype}")


# PIL modes whose array is read right above: gray (1-bit, 8-bit, 16-bit in either byte order, 32-bit
# int and float) and RGB(A/X). Any other mode's array holds something else: palette indices ("P"),
# ink amounts ("CMYK": read as RGBA), another colour space ("YCbCr", "LAB", "HSV") or gray with
# alpha ("LA": two channels).
_PIL_MODES_AS_THEY_ARE = frozenset(
    {"1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F", "RGB", "RGBA", "RGBX"}
)


def _from_tensor(image: Any) -> Any:
    """``image`` itself, or a torch tensor's values as numpy: detached (one that requires grad cannot
    be read otherwise), on the CPU, and bf16 as float32 (numpy has no bf16). Looked for only among
    the modules already imported, as PIL is: a tensor cannot exist without torch."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(image, torch.Tensor):
        return image
    tensor = image.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _from_pil(image: Any) -> Any:
    """``image`` itself, or for a PIL image in a mode not read right as an array, its RGB conversion.

    PIL is not a dependency: it is looked for only among the modules already imported (a PIL image
    cannot exist without them).
    """
    pil = sys.modules.get("PIL.Image")
    if pil is None or not isinstance(image, pil.Image) or image.mode in _PIL_MODES_AS_THEY_ARE:
        return image
    try:
        return image.convert("RGB")
    except ValueError as exc:  # e.g. "LAB": Pillow converts it only through a colour profile
        raise ValueError(f"cannot read a PIL image in mode {image.mode!r} as RGB ({exc})") from None


def float_range(image: np.ndarray) -> float:
    """The full-scale value of a float (or wide integer) image: 1, 255 or 65535, the smallest that
    the 99.9th percentile of its finite samples (leaving out at least the largest one) stays
    within 4 times of, else that percentile.

    The one rule for every reading of a float image's range (the model input, cut-outs,
    composites, the foreground estimate): see the module's ``_FLOAT_RANGES`` note. Integer
    arrays given to :func:`to_float_rgb` take at least 255 of it (whole numbers are never 0..1).
    """
    image = np.asarray(image)
    if not image.size:
        return 1.0
    pixels = image.reshape(image.shape[0], image.shape[1], -1) if image.ndim >= 2 else image.reshape(1, -1, 1)
    height, width = pixels.shape[:2]
    count = height * width
    if count * pixels.shape[2] > _FLOAT_SAMPLES:
        # whole pixels (every channel) at random positions, the same ones every time: a regular
        # stride can fall on one channel only, or on the same columns of every row
        size = max(1, _FLOAT_SAMPLES // pixels.shape[2])
        index = np.random.default_rng(0).integers(0, count, size=size)
        pixels = pixels[index // width, index % width]
    sample = pixels.reshape(-1)
    sample = sample[np.isfinite(sample)]
    if not sample.size:
        return 1.0
    # the 99.9th percentile, but never the largest sample itself: on a thumbnail the percentile
    # would be the maximum, and one stray sample would set the scale
    drop = min(sample.size - 1, max(1, int(sample.size * (100.0 - _FLOAT_PERCENTILE) / 100.0)))
    top = float(np.partition(sample, sample.size - 1 - drop)[sample.size - 1 - drop])
    scale = next((r for r in _FLOAT_RANGES if top <= r * _FLOAT_HEADROOM), top)
    return scale if scale > 0 else 1.0


def full_scale(pixels: np.ndarray) -> float:
    """The value of full intensity in ``pixels``: 255 (uint8), 65535 (uint16), else :func:`float_range`.

    Alpha channels and composite backgrounds are made at this scale, so they match the image's own
    range (a 0..1 scan with a few samples over 1.0 gets a 0..1 alpha).
    """
    if pixels.dtype == np.uint8:
        return 255.0
    if pixels.dtype == np.uint16:
        return 65535.0
    return float_range(pixels)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W[, C]) image or mask to ``size`` = (h, w): area averaging along an axis that
    shrinks (cv2.INTER_AREA), bilinear along one that grows (cv2.INTER_LINEAR).

    Why not bilinear throughout: bilinear reads the 2x2 source pixels nearest each output pixel, so a
    4000-px photo brought to 512 keeps about one pixel in eight and the model sees moire, with hair
    and wires broken into dashes. Averaging every source pixel an output pixel covers keeps them as
    thin grey lines. cv2 averages only where both axes shrink (a mixed resize, 854x480 to 512x512,
    would use its nearest-like enlarging rule on the shrinking axis too), so the shrinking axes go
    first and the growing ones second. The same resize makes training's square inputs and targets.
    """
    h, w = size
    height, width = image.shape[:2]
    if (height, width) == (h, w):
        return image
    shrunk = (min(h, height), min(w, width))
    if shrunk != (height, width):
        image = cv2.resize(image, (shrunk[1], shrunk[0]), interpolation=cv2.INTER_AREA)
    if shrunk != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    return image


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W[, C]) image to ``size`` = (h, w) bilinearly throughout (cv2.INTER_LINEAR).

    How foreign models' own scripts (IS-Net, U2-Net, BiRefNet) feed them, shrinking included: pdseg
    feeds them so too, so that their published numbers reproduce. pdseg's own models take
    :func:`resize_image`.
    """
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)


def _normalization_constants(normalization: Mapping[str, Any]) -> tuple[float, np.ndarray, np.ndarray, bool]:
    """``(factor, mean, std, bgr)``: the one reading of a checkpoint's ``{"color", "scale", "mean", "std"}``.

    A model input is ``(x * factor - mean) / std`` for x on 0..255 (channels reversed first when
    ``bgr``), ``factor = scale / 255``: mean and std are on the 0..scale range. Scaling first, then
    mean and std, is the order the exported graphs and earlier releases computed (byte-identical
    maps); the array path (:func:`normalize`) and the tensor path (:func:`normalize_tensor`) share it.
    """
    factor = float(normalization.get("scale", 255.0)) / 255.0
    mean = np.asarray(normalization["mean"], dtype=np.float32).reshape(3)
    std = np.asarray(normalization["std"], dtype=np.float32).reshape(3)
    return factor, mean, std, str(normalization.get("color", "RGB")).upper() == "BGR"


def normalize(image: np.ndarray, normalization: Mapping[str, Any]) -> np.ndarray:
    """(H, W, 3) float32 RGB on 0..255 -> (H, W, 3) float32 ``(x - mean) / std``, in place where it can.

    ``normalization`` is a checkpoint's ``{"color", "scale", "mean", "std"}``; mean and std are on
    the 0..scale range. The result stays channels-last (H, W, C): the engine turns a stack of them
    into a channels_last (B, C, H, W) tensor without copying. It may share memory with ``image``.
    """
    factor, mean, std, bgr = _normalization_constants(normalization)
    x = image if image.dtype == np.float32 and image.flags.writeable else image.astype(np.float32)
    if bgr:
        x = np.ascontiguousarray(x[..., ::-1])
    if factor != 1.0:
        x *= np.float32(factor)
    x -= mean
    x /= std
    return x


def normalize_tensor(x: torch.Tensor, normalization: Mapping[str, Any]) -> torch.Tensor:
    """(B, 3, H, W) float RGB on 0..255 -> ``(x - mean) / std`` (training's batches, on any device)."""
    factor, mean, std, bgr = _normalization_constants(normalization)
    if bgr:
        x = x.flip(1)
    if factor != 1.0:
        x = x * factor
    mean_t = torch.from_numpy(mean).to(x.device, x.dtype).view(1, 3, 1, 1)
    std_t = torch.from_numpy(std).to(x.device, x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def quantize(prob: ArrayOrTensor, *, inplace: bool = False) -> ArrayOrTensor:
    """Probabilities in [0, 1] -> uint8 ``floor(255 p)`` (the DIS truncation): the one map rule.

    Arrays and tensors alike (a tensor stays on its device); ``inplace`` lets a tensor's buffer be
    reused for the product, which matters for full-resolution maps.
    """
    if isinstance(prob, torch.Tensor):
        scaled = prob.mul_(255.0) if inplace else prob * 255.0
        return scaled.to(torch.uint8)  # truncation toward zero = floor for p >= 0
    return (prob * np.float32(255.0)).astype(np.uint8)


def binarize(prob: ArrayOrTensor, threshold: float) -> ArrayOrTensor:
    """Probabilities -> uint8 255 where ``p >= threshold``, else 0 (``--threshold``)."""
    if isinstance(prob, torch.Tensor):
        return (prob >= threshold).to(torch.uint8).mul_(255)
    return np.where(prob >= np.float32(threshold), np.uint8(255), np.uint8(0))


def alpha_at_depth(byte_map: np.ndarray, dtype: np.dtype[Any] | type) -> np.ndarray:
    """An 8-bit map as an alpha channel of ``dtype``: uint8 as is, uint16 x 257, float32 / 255 (0..1)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return byte_map
    if dtype == np.uint16:
        return byte_map.astype(np.uint16) * np.uint16(257)
    return byte_map.astype(np.float32) / np.float32(255.0)


def with_input_alpha(alpha: np.ndarray, input_alpha: np.ndarray) -> np.ndarray:
    """A cut-out's alpha times the input's own: ``floor(alpha * input_alpha / max)``, exactly, in
    the integer scale both share (``max`` 255 for uint8, 65535 for uint16). Input alpha 0 gives
    0, a full one leaves ``alpha`` unchanged. float32: ``alpha * input_alpha``, the input's alpha
    being a 0..1 fraction (a float image's full scale is no type's maximum), ``alpha`` at any scale.

    Args:
        alpha: (H, W) uint8, uint16 or float32, the map at the image's depth (:func:`alpha_at_depth`,
            for float32 at any scale).
        input_alpha: (H, W) of the same dtype, the image's own alpha (``LoadedImage.alpha``).

    Raises:
        ValueError: the two differ in shape or dtype, or are not uint8, uint16 or float32.
    """
    if alpha.dtype != input_alpha.dtype or alpha.dtype not in (np.uint8, np.uint16, np.float32):
        raise ValueError(
            f"alpha of {alpha.dtype} and input alpha of {input_alpha.dtype}: expected one of uint8, "
            "uint16, float32"
        )
    if alpha.shape != input_alpha.shape:
        raise ValueError(f"alpha of shape {alpha.shape} and input alpha of shape {input_alpha.shape}")
    if alpha.dtype == np.float32:
        return alpha * input_alpha
    top = np.uint32(np.iinfo(alpha.dtype).max)
    out = np.empty_like(alpha)
    rows = max(1, (1 << 22) // max(1, alpha.shape[1]))  # ~4M pixels a chunk bounds the uint32 temporaries
    for r0 in range(0, alpha.shape[0], rows):
        product = alpha[r0 : r0 + rows].astype(np.uint32) * input_alpha[r0 : r0 + rows]  # < 2**32
        out[r0 : r0 + rows] = product // top
    return out


def cutout(pixels: np.ndarray, byte_map: np.ndarray, input_alpha: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) RGB + (H, W) map -> (H, W, 4) RGBA at the image's sample type (alpha = the map).

    ``input_alpha``: the image's own alpha (of ``pixels``' dtype: uint8, uint16, or float32 0..1),
    multiplied in (:func:`with_input_alpha`): what was transparent in the input stays transparent.
    """
    alpha = alpha_at_depth(byte_map, pixels.dtype)
    if alpha.dtype == np.float32:
        alpha *= np.float32(full_scale(pixels))  # float images keep their own full scale
    if input_alpha is not None:
        alpha = with_input_alpha(alpha, input_alpha)
    return np.concatenate([pixels, alpha[..., None]], axis=2)


def composite(
    pixels: np.ndarray,
    byte_map: np.ndarray,
    background: Sequence[float],
    input_alpha: np.ndarray | None = None,
) -> np.ndarray:
    """Blend the image over a plain colour: ``rgb * a + bg * (1 - a)`` with ``a = map / 255``.

    Args:
        pixels: (H, W, 3) RGB, uint8, uint16 or float32 (at its own :func:`full_scale`; samples
            over it are blended as they are).
        byte_map: (H, W) uint8 map.
        background: (r, g, b) in 0..255 (floats too: the colour in an ICC profile, unrounded).
        input_alpha: the image's own alpha (of ``pixels``' dtype: uint8, uint16, or float32 0..1):
            ``a`` is then :func:`cutout`'s alpha over its maximum, ``with_input_alpha(map at depth,
            input_alpha) / max`` (for float32 the map's 0..1 times the input's 0..1).

    Returns:
        (H, W, 3) RGB of the same sample type as ``pixels``.
    """
    dtype = pixels.dtype
    top = full_scale(pixels)
    bg = np.asarray(background, dtype=np.float32) * np.float32(top / 255.0)
    out = np.empty(pixels.shape, dtype=dtype)
    rows = max(1, (1 << 22) // max(1, pixels.shape[1]))  # ~4M pixels a chunk bounds the float temporaries
    for r0 in range(0, pixels.shape[0], rows):
        if input_alpha is None:
            a = byte_map[r0 : r0 + rows, :, None].astype(np.float32) / np.float32(255.0)
        else:
            chunk = alpha_at_depth(byte_map[r0 : r0 + rows], dtype)
            chunk = with_input_alpha(chunk, input_alpha[r0 : r0 + rows])
            a = chunk[..., None].astype(np.float32)
            if dtype != np.float32:  # float32's map at depth is 0..1 already (alpha_at_depth)
                a /= np.float32(top)
        blend = pixels[r0 : r0 + rows].astype(np.float32) * a + bg * (np.float32(1.0) - a)
        if dtype == np.float32:
            out[r0 : r0 + rows] = blend
        else:
            out[r0 : r0 + rows] = np.clip(np.rint(blend), 0, top).astype(dtype)
    return out
