"""Structure measure S_alpha with alpha = 0.5 (Fan, Cheng, Liu, Li, Borji, "Structure-measure: A New
Way to Evaluate Foreground Maps", ICCV 2017), as pysodmetrics 1.6.2 ``Smeasure`` computes it
(``docs/metrics.md``, 'S-measure'), with one deliberate difference:

**The NaN case gives 0.** When the rounded foreground centroid falls on the last column (or row),
the right (bottom) blocks of the region term are empty; their score is NaN with weight 0, and
pysodmetrics >= 1.6.1 returns NaN for the image (and for the dataset mean). SOCToolbox, the
toolbox behind the published DIS numbers, and pysodmetrics <= 1.6.0 return 0 there
(``max(0, nan)`` in Python). pdseg returns 0, as the published numbers do.

Every sum runs over the per-block histograms of the prediction bytes split by GT class, so no
float map is needed; the values agree with pysodmetrics to rounding (about 1e-15).
"""

from __future__ import annotations

import numpy as np

from pdseg_cli.metrics.common import EPS
from pdseg_cli.metrics.stats import PairStats

ALPHA_S = 0.5  # weight of the object term


def _s_object(counts: np.ndarray, values: np.ndarray) -> float:
    """``2 m / (m^2 + 1 + std + eps)`` of the pixel values described by a byte histogram."""
    n = int(counts.sum())
    mean = float(np.dot(counts, values)) / n
    std = float(np.sqrt(np.dot(counts, (values - mean) ** 2) / (n - 1))) if n > 1 else 0.0
    return 2 * mean / (mean**2 + 1 + std + EPS)


def _ssim(
    bg_counts: np.ndarray, fg_counts: np.ndarray, values: np.ndarray, block_mean: float | None = None
) -> float:
    """The SSIM-like score of one block, from its byte histograms per GT class.

    ``block_mean`` overrides the block's mean prediction: for a block of one constant value the
    reference's score is 1 or 0 depending on whether numpy's mean of the block rounds back to
    that value exactly (``docs/metrics.md``, 'S-measure'), so the caller passes numpy's mean there.
    """
    n_bg, n_fg = int(bg_counts.sum()), int(fg_counts.sum())
    n = n_bg + n_fg
    if n == 0:
        return float("nan")  # an empty block (the NaN case), handled by the caller
    counts = bg_counts + fg_counts
    x = float(np.dot(counts, values)) / n if block_mean is None else block_mean
    y = n_fg / n
    dx = values - x
    sigma_x = float(np.dot(counts, dx * dx)) / (n - 1 + EPS)
    sigma_y = (n_fg * (1 - y) ** 2 + n_bg * (0 - y) ** 2) / (n - 1 + EPS)
    sigma_xy = float(np.dot(fg_counts, dx) * (1 - y) + np.dot(bg_counts, dx) * (0 - y)) / (n - 1 + EPS)
    alpha = 4 * x * y * sigma_xy
    beta = (x**2 + y**2) * (sigma_x + sigma_y)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def s_measure_from(stats: PairStats) -> float:
    """S-measure from a pair's histogram statistics (NaN case: 0, see the module docstring).

    The object term reads the byte histograms over the GT foreground and background; the region
    term the histograms of the four blocks split at ``stats.split``, and numpy's block means where
    the prediction is constant (see ``_ssim``).
    """
    hist, values, block_means = stats.hist, stats.values, stats.block_means
    h, w = stats.shape
    area = h * w
    fg_hist = stats.fg_hist
    bg_hist = stats.bg_hist
    n_fg = int(fg_hist.sum())
    y = n_fg / area
    if y == 0:
        return float(1 - np.dot(bg_hist, values) / area)
    if y == 1:
        return float(np.dot(fg_hist, values) / area)
    obj = _s_object(fg_hist, values) * y + _s_object(bg_hist, 1 - values) * (1 - y)
    cy, cx = stats.split
    w_lt = cx * cy / area
    w_rt = cy * (w - cx) / area
    w_lb = (h - cy) * cx / area
    w_rb = 1 - w_lt - w_rt - w_lb
    scores = [_ssim(hist[b, 0], hist[b, 1], values, block_means[b]) for b in range(4)]
    region = scores[0] * w_lt + scores[1] * w_rt + scores[2] * w_lb + scores[3] * w_rb
    s = obj * ALPHA_S + region * (1 - ALPHA_S)
    if np.isnan(s):
        return 0.0  # the NaN case: 0, as SOCToolbox and the published numbers (module docstring)
    return max(0.0, float(s))


def smeasure(pred: np.ndarray, gt: np.ndarray) -> float:
    """S-measure of one uint8 pair (NaN case: 0, see the module docstring)."""
    return s_measure_from(PairStats.compute(pred, gt))
