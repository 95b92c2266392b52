"""Mean absolute error M: ``mean(|x - G|)`` on the min-max normalised map (``docs/metrics.md``, 'MAE')."""

from __future__ import annotations

import numpy as np

from pdseg_cli.metrics.stats import PairStats


def mae_from(stats: PairStats) -> float:
    """MAE from a pair's prediction-byte histograms over the GT foreground and background."""
    fg_hist, bg_hist, values = stats.fg_hist, stats.bg_hist, stats.values
    n = int(fg_hist.sum() + bg_hist.sum())
    return float((np.dot(bg_hist, values) + np.dot(fg_hist, 1 - values)) / n)


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    """MAE of one uint8 pair."""
    return mae_from(PairStats.compute(pred, gt))
