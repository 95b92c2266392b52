"""Weighted F-measure F^w_beta (Margolin, Zelnik-Manor, Tal, "How to Evaluate Foreground Maps?",
CVPR 2014), with beta^2 = 1, as pysodmetrics 1.6.2 ``WeightedFmeasure`` computes it.

Per image, on the min-max normalised map ``x`` and the binary GT ``G`` (``docs/metrics.md``, 'Weighted F'):
``E = |x - G|``; ``Et`` is ``E`` with every background pixel given the error of its nearest
foreground pixel (scipy's ``distance_transform_edt`` choice); ``EA`` is ``Et`` filtered by a 7x7
Gaussian of sigma 5 with zero padding; ``MIN = EA`` where ``G`` and ``EA < E``, else ``E``; the
background weights are ``B = 2 - exp(ln(0.5) / 5 * D)`` with ``D`` the distance to the nearest
foreground pixel. An empty GT scores 0.

Two facts keep this fast without changing the numbers:

* ``EA`` is only read on foreground pixels, so ``Et`` only matters on the background pixels
  within 3 pixels (Chebyshev) of the foreground: the *band*. Their nearest foreground pixel lies
  within a radius of sqrt(18), so it is found by a local search in a fixed order that reproduces
  scipy's choice among equally near pixels (smallest column, then smallest row). That choice is
  GT-only and cached (``nearest_codes``).
* ``D`` comes from OpenCV's exact L2 transform (float32); squared and rounded it gives the exact
  integer squared distance, from which ``B`` is computed in float64 as the reference does. Beyond
  ``D = 256`` the weight is 2 to within 4e-16, so squared distances are clamped there.
"""

from __future__ import annotations

import cv2
import numpy as np

from pdseg_cli.metrics.common import EPS, check_pair, foreground, normalized_map

BETA2_WF = 1.0  # beta^2 of the weighted F-measure (pysodmetrics' ``beta``)

# Candidate offsets (dy, dx) of the nearest foreground pixel of a band pixel, in the order that
# reproduces scipy's choice: nearest first, then smallest column, then smallest row.
_R2_MAX = 18  # a band pixel is at most (3, 3) away from a foreground pixel
_OFFSETS = np.array(
    sorted(
        ((dy, dx) for dy in range(-4, 5) for dx in range(-4, 5) if 0 < dy * dy + dx * dx <= _R2_MAX),
        key=lambda o: (o[0] * o[0] + o[1] * o[1], o[1], o[0]),
    ),
    dtype=np.int64,
)
_PAD = 4
_D2_CLAMP = 65535  # 256^2 - 1: B = 2 - 2^(-D/5) is 2 to within 4e-16 beyond


def _gaussian_1d() -> np.ndarray:
    """1D factor of MATLAB's ``fspecial('gaussian', 7, 5)`` (the 2D kernel is its outer product).

    No entry falls below eps * max, so MATLAB's cut-off removes nothing and the 2D kernel is
    exactly separable up to rounding (about 1e-17 per entry).
    """
    r = np.arange(-3, 4, dtype=np.float64)
    g = np.exp(-(r * r) / (2 * 5.0 * 5.0))
    return g / g.sum()


def _weight_table() -> np.ndarray:
    """``2 - exp(ln(0.5) / 5 * sqrt(d2))`` for every clamped integer squared distance d2."""
    d = np.sqrt(np.arange(_D2_CLAMP + 1, dtype=np.float64))
    return 2 - np.exp(np.log(0.5) / 5 * d)


_GAUSS = _gaussian_1d()
_B_TABLE = _weight_table()  # (65536,) float64: the background weight B of each squared distance


def band_pixels(fg: np.ndarray) -> np.ndarray:
    """Flat indices (C order) of the background pixels within 3 pixels (Chebyshev) of the foreground."""
    fg_u8 = fg.view(np.uint8) if fg.dtype == bool else (fg != 0).astype(np.uint8)
    near = cv2.dilate(fg_u8, np.ones((7, 7), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return np.flatnonzero(near > fg_u8)


def nearest_codes(fg: np.ndarray, band: np.ndarray) -> np.ndarray:
    """For each band pixel, the index into the candidate offsets of its nearest foreground pixel.

    Args:
        fg: (H, W) bool GT foreground.
        band: flat indices from ``band_pixels(fg)``.

    Returns:
        uint8 array, one code per band pixel.
    """
    h, w = fg.shape
    stride = w + 2 * _PAD
    padded = np.zeros((h + 2 * _PAD, stride), dtype=bool)
    padded[_PAD:-_PAD, _PAD:-_PAD] = fg
    flat = padded.reshape(-1)
    rows, cols = np.divmod(band, w)
    where = (rows + _PAD) * stride + (cols + _PAD)
    codes = np.full(band.size, 255, dtype=np.uint8)
    todo = np.arange(band.size)
    for k, (dy, dx) in enumerate(_OFFSETS):
        hit = flat[where[todo] + (dy * stride + dx)]
        codes[todo[hit]] = k
        todo = todo[~hit]
        if todo.size == 0:
            break
    if todo.size:  # cannot happen for a band computed from the same mask
        raise ValueError("band pixel without a foreground pixel within 3 pixels")
    return codes


def nearest_index(band: np.ndarray, codes: np.ndarray, width: int) -> np.ndarray:
    """Flat index of the nearest foreground pixel of each band pixel."""
    return band + (_OFFSETS[:, 0] * width + _OFFSETS[:, 1])[codes]


def squared_distances(fg: np.ndarray) -> np.ndarray:
    """Exact squared distance of every pixel to the nearest foreground pixel, clamped at 65535.

    OpenCV's precise L2 transform returns float32 distances within half an ulp of the exact
    ``sqrt(n)``; below the clamp, squaring in float32 and rounding recovers the integer ``n``
    (the tests compare with scipy's transform).

    Returns:
        (H, W) uint16; 0 on the foreground (and only there).
    """
    dist = cv2.distanceTransform((~fg).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    # the product rounded to the nearest integer and saturated at 65535, in one pass
    return cv2.multiply(dist, dist, dtype=cv2.CV_16U)


def weighted_fmeasure_from(
    x: np.ndarray,
    fg_index: np.ndarray,
    band: np.ndarray,
    nearest: np.ndarray,
    d2: np.ndarray,
) -> float:
    """Weighted F-measure from prepared GT data.

    Args:
        x: (H, W) float64 normalised prediction.
        fg_index: flat indices of the foreground pixels, C order (not empty).
        band: flat indices of the band pixels (see ``band_pixels``).
        nearest: flat index of the nearest foreground pixel of each band pixel.
        d2: (H, W) uint16 clamped squared distances (see ``squared_distances``).
    """
    xf = x.reshape(-1)
    err_fg = 1.0 - xf[fg_index]  # E on the foreground (x <= 1)
    # Et: E everywhere, except band pixels that take their nearest foreground pixel's error.
    # Background pixels outside the band only reach EA off the foreground, which is never read.
    et = x.copy()
    etf = et.reshape(-1)
    etf[fg_index] = err_fg
    etf[band] = etf[nearest]
    ea = cv2.sepFilter2D(et, cv2.CV_64F, _GAUSS, _GAUSS, borderType=cv2.BORDER_CONSTANT).reshape(-1)[fg_index]
    min_fg = np.where(ea < err_fg, ea, err_fg)  # Ew on the foreground (B = 1 there)

    # FPw = sum over the background of x * B(D): sum x per squared distance, then weight each
    # distance once (d2 = 0 is exactly the foreground)
    x_per_d2 = np.bincount(d2.reshape(-1), weights=xf, minlength=_D2_CLAMP + 1)
    # not np.dot: a dot product this long goes to OpenBLAS's threads, which then spin on a second
    # core for a while after each image (eval --threads 1 used two cores' CPU time)
    fpw = float(np.sum(x_per_d2[1:] * _B_TABLE[1:]))

    n_fg = fg_index.size
    tpw = n_fg - np.sum(min_fg)
    recall = 1 - np.mean(min_fg)
    precision = tpw / (tpw + fpw + EPS)
    return float((1 + BETA2_WF) * recall * precision / (recall + BETA2_WF * precision + EPS))


def weighted_fmeasure(pred: np.ndarray, gt: np.ndarray) -> float:
    """Weighted F-measure of one uint8 pair (0 for an empty GT)."""
    check_pair(pred, gt)
    fg = foreground(gt)
    if not fg.any():
        return 0.0
    band = band_pixels(fg)
    x = normalized_map(pred)
    nearest = nearest_index(band, nearest_codes(fg, band), gt.shape[1])
    return weighted_fmeasure_from(x, np.flatnonzero(fg), band, nearest, squared_distances(fg))
