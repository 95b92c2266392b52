"""Training augmentation: flip, rotation, crop-and-resize, zoom, paste and mild colour jitter, reproducibly.

Every random number comes from a generator seeded by ``(seed, epoch, index)`` (:func:`sample_rng`),
never from a global RNG, so a sample looks the same whatever DataLoader worker builds it, and a
resumed run sees exactly the samples an uninterrupted one would. The numbers are always drawn in
the same order, whichever transforms end up applied.

Geometry (flip, crop, zoom, rotation) is one affine warp, so the image and the mask are
interpolated once. Borders are reflected in both, so the mask stays consistent with the image;
a zoom-out instead frames the image in its own mean colour with mask 0, since reflecting would
put mirrored copies of the object around it (DIS has one object per image).

Paste (:func:`paste_object`) puts a sample's object, with its own soft target as alpha, on the
background of another sample whose object has been filled in, so the object is seen against new
surroundings and the target stays exact; the dataset draws the other sample
(:class:`pdseg_cli.data.dis5k.SampleDataset`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# ITU-R BT.601 luma weights, for the grey image used by contrast and saturation (RGB order)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the training augmentation (docs/model.md, 'Training recipe':
    flip + crop + rotation + mild colour jitter)."""

    hflip: float = 0.5  # probability of a horizontal flip (IS-Net and BiRefNet use 0.5)
    rotate: float = 0.3  # probability of a rotation (BiRefNet: 0.2)
    max_degrees: float = 15.0  # rotation angle uniform in [-max, max] (BiRefNet: 15)
    crop: float = 0.5  # probability of a random crop resized back to full size
    min_crop: float = 0.75  # a crop keeps this fraction or more of each side (BiRefNet: 0.9)
    # Zoom: the (cropped) window's sides are scaled by z, log-uniform in [1/max_zoom, max_zoom], so
    # the object is seen up to max_zoom times larger or smaller, for a model whose scores swung with
    # the working size (benchmarks/RESULTS.md, stage 9). Off by default, as the bundled stages trained.
    zoom: float = 0.0  # probability of a zoom (pdseg train --zoom)
    max_zoom: float = 1.6
    # Paste: the sample's object on another sample's background (paste_object). Off by default, as
    # the bundled stages trained; it draws from its own stream (paste_rng), so the others are unchanged.
    paste: float = 0.0  # probability of a paste (pdseg train --paste)
    jitter: float = 0.8  # probability of colour jitter
    brightness: float = 0.2  # factors uniform in [1 - x, 1 + x]: "mild" (BiRefNet: 0.5..1.5)
    contrast: float = 0.2
    saturation: float = 0.2

    def __post_init__(self) -> None:
        for name in ("hflip", "rotate", "crop", "jitter", "zoom", "paste"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation probability {name} must be in [0, 1], got {value}")
        if not 0.0 < self.min_crop <= 1.0:
            raise ValueError(f"min_crop must be in (0, 1], got {self.min_crop}")
        if self.max_zoom < 1.0:
            raise ValueError(f"max_zoom must be >= 1, got {self.max_zoom}")


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample in one epoch: a pure function of its three arguments.

    The sample index goes into the spawn key, so it never collides with other streams drawn from
    ``(seed, epoch)`` (numpy treats entropy ``[a, b]`` and ``[a, b, 0]`` alike).
    """
    return np.random.default_rng(np.random.SeedSequence([seed, epoch], spawn_key=(1, index)))


def paste_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's paste in one epoch (whether, which background, mirrored):
    its own stream (spawn key 2), so turning paste on leaves every other random number as it was."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch], spawn_key=(2, index)))


# The filled-in background is computed on a grid this many pixels across: the fill is a blur far
# wider than any detail, so a coarse grid gives the same picture at a fraction of the cost.
_FILL_GRID = 64


def fill_object(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``image`` with its object (``mask``) replaced by a smooth fill from the surrounding background.

    A normalised convolution: the background pixels (weight ``1 - mask / 255``) and their weights
    are blurred with one wide Gaussian and divided, so each object pixel gets the mean colour of
    the background nearest to it. Where the object leaves no background at all, the image's mean
    colour is used. Background pixels keep their values (soft edges blend the two).

    Args:
        image: (H, W, 3) uint8.
        mask: (H, W) uint8, 0..255.

    Returns:
        (H, W, 3) uint8, a new array.
    """
    h, w = mask.shape
    keep = 1.0 - mask.astype(np.float32) / 255.0
    grid = (_FILL_GRID, _FILL_GRID)
    small_keep = cv2.resize(keep, grid, interpolation=cv2.INTER_AREA)
    small = cv2.resize(image.astype(np.float32) * keep[..., None], grid, interpolation=cv2.INTER_AREA)
    sigma = _FILL_GRID / 8.0
    weight = cv2.GaussianBlur(small_keep, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    colour = cv2.GaussianBlur(small, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    fallback = np.array(cv2.mean(image)[:3], dtype=np.float32)
    filled = np.where(weight[..., None] > 1e-3, colour / np.maximum(weight, 1e-3)[..., None], fallback)
    filled = cv2.resize(filled.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    out = keep[..., None] * image.astype(np.float32) + (1.0 - keep[..., None]) * filled
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def paste_object(
    image: np.ndarray, mask: np.ndarray, background: np.ndarray, background_mask: np.ndarray
) -> np.ndarray:
    """The object of ``image`` (alpha = its target ``mask``) over ``background`` with the
    background's own object filled in (:func:`fill_object`).

    The target of the result is ``mask`` unchanged: the pasted object is the one object, and the
    other sample's object, which would otherwise be an unlabelled second object, is gone.

    Args:
        image, mask: the sample, (H, W, 3) and (H, W) uint8.
        background, background_mask: another sample of the same size.

    Returns:
        (H, W, 3) uint8, a new array.
    """
    if background.shape != image.shape or background_mask.shape != mask.shape:
        raise ValueError(f"paste needs samples of one size, got {image.shape} and {background.shape}")
    alpha = mask.astype(np.float32)[..., None] / 255.0
    scene = fill_object(background, background_mask).astype(np.float32)
    out = alpha * image.astype(np.float32) + (1.0 - alpha) * scene
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def augment(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly transform one image/mask pair; the output has the input's size.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) uint8, 0..255 (soft edges allowed).
        rng: the sample's generator (:func:`sample_rng`).
        cfg: what to apply and how strongly.

    Returns:
        ``(image, mask)``: (H, W, 3) uint8 and (H, W) uint8, C-contiguous, new arrays.
    """
    h, w = mask.shape
    # Draw every number first, in a fixed order, so the stream never depends on the branches
    # (u[13:] came with zoom; the first 13 are what they were before it).
    u = rng.random(15)
    flip = u[0] < cfg.hflip
    crop = u[1] < cfg.crop
    rotate = u[2] < cfg.rotate
    jitter = u[3] < cfg.jitter
    crop_w = cfg.min_crop + (1.0 - cfg.min_crop) * u[4]  # fractions of the sides kept
    crop_h = cfg.min_crop + (1.0 - cfg.min_crop) * u[5]
    crop_x, crop_y = u[6], u[7]  # where the crop sits in the free margin
    degrees = (2.0 * u[8] - 1.0) * cfg.max_degrees
    factors = 1.0 + (2.0 * u[9:12] - 1.0) * np.array([cfg.brightness, cfg.contrast, cfg.saturation])
    jitter_order = u[12]  # brightness/contrast before or after saturation
    zoom = u[13] < cfg.zoom
    z = math.exp((2.0 * u[14] - 1.0) * math.log(cfg.max_zoom))

    if flip or crop or rotate or zoom:
        window = (crop_w, crop_h, crop_x, crop_y) if crop else (1.0, 1.0, 0.5, 0.5)
        if zoom:
            window = (window[0] * z, window[1] * z, window[2], window[3])
        matrix = _inverse_affine(
            w,
            h,
            flip=flip,
            crop=window if crop or zoom else None,
            degrees=degrees if rotate else 0.0,
        )
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        fills: tuple[Sequence[float] | float, int]  # the image's and the mask's border values
        if max(window[0], window[1]) > 1.0:  # zoomed out: frame the image, the frame is background
            border, fills = cv2.BORDER_CONSTANT, (cv2.mean(image)[:3], 0)
        else:
            border, fills = cv2.BORDER_REFLECT_101, (0, 0)
        image = cv2.warpAffine(image, matrix, (w, h), flags=flags, borderMode=border, borderValue=fills[0])
        mask = cv2.warpAffine(mask, matrix, (w, h), flags=flags, borderMode=border, borderValue=fills[1])
    else:
        image, mask = image.copy(), mask.copy()
    if jitter:
        image = _color_jitter(image, *factors, saturation_first=jitter_order < 0.5)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def _inverse_affine(
    w: int, h: int, *, flip: bool, crop: tuple[float, float, float, float] | None, degrees: float
) -> np.ndarray:
    """The 2x3 matrix mapping output pixel coordinates to input coordinates (WARP_INVERSE_MAP).

    Output pixel (u, v) is first mirrored (flip), then placed in the crop window (a scaled,
    shifted copy of the output grid, pixel centres at +0.5), then rotated about the window's
    centre. A window side over 1 (zoom-out) gives a negative origin: the image sits inside it.
    """
    m = np.eye(3)
    if flip:  # u -> w - 1 - u
        m = np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ m
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    if crop is not None:
        fw, fh, fx, fy = crop
        x0, y0 = fx * w * (1.0 - fw), fy * h * (1.0 - fh)  # window origin, in input pixels
        # x_in + 0.5 = x0 + (u + 0.5) * fw
        m = np.array([[fw, 0.0, x0 + 0.5 * fw - 0.5], [0.0, fh, y0 + 0.5 * fh - 0.5], [0.0, 0.0, 1.0]]) @ m
        cx, cy = x0 + w * fw / 2.0 - 0.5, y0 + h * fh / 2.0 - 0.5
    if degrees:
        a = math.radians(degrees)
        c, s = math.cos(a), math.sin(a)
        # p -> centre + R (p - centre)
        rot = np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0.0, 0.0, 1.0]])
        m = rot @ m
    return m[:2].astype(np.float64)


def _color_jitter(
    image: np.ndarray, brightness: float, contrast: float, saturation: float, *, saturation_first: bool
) -> np.ndarray:
    """Scale brightness, contrast (about the mean grey) and saturation (about each pixel's grey).

    All three are linear in the pixel, so they compose into one 3x4 affine colour map applied by
    ``cv2.transform`` (rounded and clipped to uint8). Saturation keeps each pixel's grey, so the
    mean grey used by contrast is the same in either order.
    """
    mean = brightness * float(np.dot(cv2.mean(image)[:3], _LUMA))
    # x -> contrast * (brightness * x) + (1 - contrast) * mean
    bc = np.eye(3) * (brightness * contrast)
    bc_offset = np.full(3, (1.0 - contrast) * mean)
    # x -> saturation * x + (1 - saturation) * grey(x)
    sat = saturation * np.eye(3) + (1.0 - saturation) * np.outer(np.ones(3), _LUMA)
    if saturation_first:
        linear, offset = bc @ sat, bc_offset
    else:
        linear, offset = sat @ bc, sat @ bc_offset
    matrix = np.concatenate([linear, offset[:, None]], axis=1)
    return cv2.transform(image, matrix)
