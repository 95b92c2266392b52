"""Enhanced-alignment measure E_phi: the 256-threshold curve (meanE, maxE) and the adaptive value.

Fan, Gong, Cao, Ren, Cheng, Borji, "Enhanced-alignment Measure for Binary Foreground Map
Evaluation", IJCAI 2018. As pysodmetrics 1.6.2 ``Emeasure`` computes it (``docs/metrics.md``, 'E-measure'):
a binary map and the GT only have four pixel kinds (TP, FP, FN, TN), so the sum of the enhanced
alignment matrix is a sum of four terms; it is divided by ``N - 1 + eps``, so a perfect map
scores about ``1 + 1/N``. The DIS table's E column is the mean over thresholds (meanE).
"""

from __future__ import annotations

from typing import overload

import numpy as np

from pdseg_cli.metrics.common import EPS
from pdseg_cli.metrics.stats import PairStats


@overload
def _enhanced(phi_pred: np.ndarray, phi_gt: float) -> np.ndarray: ...


@overload
def _enhanced(phi_pred: float, phi_gt: float) -> float: ...


def _enhanced(phi_pred: np.ndarray | float, phi_gt: float) -> np.ndarray | float:
    align = 2 * (phi_pred * phi_gt) / (phi_pred**2 + phi_gt**2 + EPS)
    return (align + 1) ** 2 / 4


def e_from_counts(tp: np.ndarray, pred_pos: np.ndarray, n_fg: int, n: int) -> np.ndarray:
    """E-measure for each binary map given its TP and predicted-positive counts.

    Args:
        tp: true positives per map (the 256 thresholds, or one adaptive map).
        pred_pos: predicted positives per map, same shape.
        n_fg: GT foreground pixels.
        n: all pixels.

    Returns:
        float64 array of E values, shaped like ``tp``.
    """
    tp = np.asarray(tp, dtype=np.int64)
    pred_pos = np.asarray(pred_pos, dtype=np.int64)
    pred_neg = n - pred_pos
    if n_fg == 0:
        total = pred_neg.astype(np.float64)
    elif n_fg == n:
        total = pred_pos.astype(np.float64)
    else:
        fp = pred_pos - tp
        fn = n_fg - tp
        tn = pred_neg - fn
        mean_pred = pred_pos / n
        mean_gt = n_fg / n
        # (pred value - mean, gt value - mean) for the four pixel kinds
        total = (
            _enhanced(1 - mean_pred, 1 - mean_gt) * tp
            + _enhanced(1 - mean_pred, 0 - mean_gt) * fp
            + _enhanced(0 - mean_pred, 1 - mean_gt) * fn
            + _enhanced(0 - mean_pred, 0 - mean_gt) * tn
        )
    return total / (n - 1 + EPS)


def e_curve_from(stats: PairStats) -> np.ndarray:
    """E-measure at thresholds t = 0..255 (ascending) from a pair's histogram statistics."""
    tp, pos, n_fg = stats.threshold_counts()
    return e_from_counts(tp, pos, n_fg, stats.n)


def adaptive_e_from(stats: PairStats) -> float:
    """Adaptive E-measure (map ``x >= min(2 mean(x), 1)``) from a pair's histogram statistics."""
    tp, pos, n_fg = stats.adaptive_counts()
    return float(e_from_counts(np.array(tp), np.array(pos), n_fg, stats.n))


def emeasure_curve(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, float]:
    """E curve (ascending thresholds t = 0..255) and adaptive E of one uint8 pair."""
    stats = PairStats.compute(pred, gt)
    return e_curve_from(stats), adaptive_e_from(stats)
