"""Mean absolute error M: ``mean(|x - G|)`` on the min-max normalised map (``docs/metrics.md``, 'MAE')."""

from __future__ import annotations

import numpy as np


def mae_from_histograms(fg_hist: np.ndarray, bg_hist: np.ndarray, values: np.ndarray) -> float:
    """MAE from the prediction-byte histograms over the GT foreground and background."""
    n = int(fg_hist.sum() + bg_hist.sum())
    return float((np.dot(bg_hist, values) + np.dot(fg_hist, 1 - values)) / n)


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    """MAE of one uint8 pair."""
    from pdseg_cli.metrics.image import PairStats

    return PairStats.compute(pred, gt).mae()
