"""F-measure F_beta with beta^2 = 0.3: the 256-threshold curve (maxF, meanF) and the adaptive value.

Achanta, Hemami, Estrada, Susstrunk, "Frequency-tuned Salient Region Detection", CVPR 2009.
Computed as pysodmetrics 1.6.2 ``FmeasureV2`` with ``FmeasureHandler(beta=0.3)`` does
(``docs/metrics.md``, 'F-measure'): precision ``TP/P`` (0 when nothing is predicted), recall ``TP/#G``
(0 for an empty GT), ``F = (1 + b2) P R / (b2 P + R)`` (0 when the denominator is 0). All 256
thresholds come from one histogram of the quantised map and a cumulative sum.
"""

from __future__ import annotations

import numpy as np

from pdseg_cli.metrics.stats import PairStats

BETA2_F = 0.3  # beta^2 (pysodmetrics calls it ``beta``)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` in float64, 0 where ``den`` is 0."""
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def f_from_counts(tp: np.ndarray, pred_pos: np.ndarray, n_fg: int) -> np.ndarray:
    """F-measure for each binary map given its true-positive and predicted-positive counts.

    Args:
        tp: true positives per map (any shape; the 256 thresholds, or one adaptive map).
        pred_pos: predicted positives per map, same shape.
        n_fg: GT foreground pixels.

    Returns:
        float64 array of F values, shaped like ``tp``.
    """
    precision = _divide(tp, pred_pos)
    recall = _divide(tp, np.full(np.shape(tp), n_fg))
    return _divide((BETA2_F + 1) * precision * recall, BETA2_F * precision + recall)


def f_curve_from(stats: PairStats) -> np.ndarray:
    """F-measure at thresholds t = 0..255 (ascending) from a pair's histogram statistics."""
    tp, pos, n_fg = stats.threshold_counts()
    return f_from_counts(tp, pos, n_fg)


def adaptive_f_from(stats: PairStats) -> float:
    """Adaptive F-measure (map ``x >= min(2 mean(x), 1)``) from a pair's histogram statistics."""
    tp, pos, n_fg = stats.adaptive_counts()
    return float(f_from_counts(np.array(tp), np.array(pos), n_fg))


def fmeasure_curve(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, float]:
    """F curve (ascending thresholds t = 0..255) and adaptive F of one uint8 pair.

    The dataset maxF is the max of the image-averaged curves, not of one image's curve
    (``pdseg_cli.metrics.aggregate``).
    """
    stats = PairStats.compute(pred, gt)
    return f_curve_from(stats), adaptive_f_from(stats)
