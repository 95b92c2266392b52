"""Foreground colour estimation for cut-outs: the colour of the object alone where alpha is fractional.

A pixel on a hair or a soft edge is a mix ``I = a F + (1 - a) B`` of the object's colour F and the
background's B. Putting the original I under the new alpha keeps the old background's colour in
every such pixel (a green fringe on hair shot against grass), so ``--save alpha`` and
``composite`` use an estimate of F instead.

The estimator is Forte and Pitié's blur-fusion ("Approximate Fast Foreground Colour Estimation",
ICIP 2021; the one BiRefNet's ``refine_foreground`` uses): local means of the foreground and of the
background, weighted by alpha, taken with a large box blur and then a small one, and

    F = mean_F + a (I - a mean_F - (1 - a) mean_B)

which is exact where a = 1 (F = I) and only moves pixels where 0 < a < 1 (where a = 0 the pixel is
invisible). Box blurs cost the same per pixel at any radius, so it runs on full-resolution images.
It runs in bands of rows, each with the rows the two blurs reach beyond it: the passes hold about
eight float32 copies of what they work on, 10 GB for a whole 12000x9000 photo at once, and bands
without a fractional pixel are skipped.
"""

from __future__ import annotations

import cv2
import numpy as np

from pdseg_cli.data.transforms import full_scale

LARGE_RADIUS = 90  # the first pass: colour statistics of the neighbourhood (the paper's value)
SMALL_RADIUS = 6  # the second pass: local detail from the first estimate
_EPS = np.float32(1e-5)
BAND_PIXELS = 4_000_000  # pixels of one band of rows (its margins come on top)
# rows a band needs beyond its own: each pass's output reaches half its box width further, so
# this margin makes every band's result the whole image's
MARGIN = LARGE_RADIUS + SMALL_RADIUS


def _blur(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.blur(x, (r, r), borderType=cv2.BORDER_REFLECT)


def _fuse(
    image: np.ndarray, fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray, r: int
) -> tuple[np.ndarray, np.ndarray]:
    """One blur-fusion pass on float32 0..1 arrays: (H, W, 3) image/F/B, (H, W, 1) alpha."""
    mean_a = _blur(alpha, r)[..., None]
    mean_f = _blur(fg * alpha, r) / (mean_a + _EPS)
    mean_b = _blur(bg * (1.0 - alpha), r) / ((1.0 - mean_a) + _EPS)
    est = mean_f + alpha * (image - alpha * mean_f - (1.0 - alpha) * mean_b)
    np.clip(est, 0.0, 1.0, out=est)
    return est, mean_b


def estimate_foreground(
    pixels: np.ndarray, byte_map: np.ndarray, *, band_rows: int | None = None
) -> np.ndarray:
    """The object's own colour under a map, at the image's sample type.

    Args:
        pixels: (H, W, 3) RGB, uint8, uint16 or float (its own 0..max scale, kept).
        byte_map: (H, W) uint8 alpha (0..255).
        band_rows: rows computed at once (default: about ``BAND_PIXELS`` pixels' worth).

    Returns:
        (H, W, 3) of ``pixels``' dtype: the estimated foreground colour where the map is
        fractional, ``pixels`` unchanged where it is 255 (and where it is 0, a colour nobody sees).
    """
    dtype = pixels.dtype
    top = np.float32(full_scale(pixels))
    fractional = (byte_map > 0) & (byte_map < 255)
    if not fractional.any():
        return pixels
    height, width = byte_map.shape
    step = band_rows or max(MARGIN, BAND_PIXELS // max(width, 1))
    out = pixels.copy()
    for y0 in range(0, height, step):
        y1 = min(height, y0 + step)
        changed = fractional[y0:y1]
        if not changed.any():
            continue
        a0, a1 = max(0, y0 - MARGIN), min(height, y1 + MARGIN)
        image = pixels[a0:a1].astype(np.float32) / top
        alpha = (byte_map[a0:a1].astype(np.float32) / np.float32(255.0))[..., None]
        fg, bg = _fuse(image, image, image, alpha, LARGE_RADIUS)
        fg, _ = _fuse(image, fg, bg, alpha, SMALL_RADIUS)
        # only fractional pixels change: opaque ones stay bit-exact, transparent ones are invisible
        values = fg[y0 - a0 : y1 - a0][changed] * top
        band = out[y0:y1]
        band[changed] = values if dtype.kind == "f" else np.clip(np.rint(values), 0, top).astype(dtype)
    return out
