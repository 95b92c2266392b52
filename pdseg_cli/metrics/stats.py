"""The one pass over a (prediction, GT) pair that F, E, MAE and S share (``docs/metrics.md``,
'Thresholds' and 'S-measure').

The pass builds the histogram of prediction bytes per GT class and per S-measure block; F, E,
MAE and S (and the adaptive values) follow from those 4 x 2 x 256 counts and the per-byte
normalised values (``pdseg_cli.metrics.common.value_table``). Each metric module computes its
value from a ``PairStats``; this module knows none of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pdseg_cli.metrics.common import (
    N_THRESHOLDS,
    check_pair,
    foreground,
    normalized_map,
    quantize_table,
    value_table,
)


def centroid_split(row_sum: int, col_sum: int, n_fg: int, shape: tuple[int, int]) -> tuple[int, int]:
    """The (row, column) where the S-measure's region term splits the image: rounded centroid + 1.

    Rounding is numpy's half-to-even, as pysodmetrics (MATLAB rounds halves away from zero, so
    MATLAB can differ on an exact .5 centroid). An empty GT splits at the rounded centre.
    """
    h, w = shape
    if n_fg == 0:
        cy, cx = np.round(h / 2), np.round(w / 2)
    else:
        cy, cx = np.round(np.array([row_sum, col_sum], dtype=np.float64) / n_fg)
    return int(cy) + 1, int(cx) + 1


@dataclass(frozen=True)
class PairStats:
    """Histogram statistics of one pair, enough for F, E, MAE and S.

    Attributes:
        shape: (H, W).
        values: (256,) normalised value of each prediction byte.
        hist: (4, 2, 256) counts of prediction bytes per S block (top-left, top-right,
            bottom-left, bottom-right) and GT class (0 background, 1 foreground).
        split: (row, column) of the S block split.
        mean_x: mean of the normalised map (the adaptive threshold is twice this, at most 1).
        block_means: numpy's mean of the normalised map over each S block holding a single
            prediction value, None for the other blocks (the S-measure needs the reference's
            exact rounding there).
    """

    shape: tuple[int, int]
    values: np.ndarray
    hist: np.ndarray
    split: tuple[int, int]
    mean_x: float
    block_means: tuple[float | None, ...] = (None, None, None, None)

    @classmethod
    def compute(
        cls,
        pred: np.ndarray,
        gt: np.ndarray,
        *,
        fg: np.ndarray | None = None,
        split: tuple[int, int] | None = None,
        x: np.ndarray | None = None,
    ) -> PairStats:
        """Compute from a uint8 pair; pass ``fg``, ``split`` or the float map ``x`` if already known."""
        check_pair(pred, gt)
        if fg is None:
            fg = foreground(gt)
        h, w = pred.shape
        if split is None:
            rows, cols = np.nonzero(fg)
            split = centroid_split(int(rows.sum()), int(cols.sum()), rows.size, (h, w))
        values = value_table(int(pred.min()), int(pred.max()))
        if x is None:
            x = normalized_map(pred, values)
        cy, cx = split
        blocks = [(slice(0, cy), slice(0, cx)), (slice(0, cy), slice(cx, w))]
        blocks += [(slice(cy, h), slice(0, cx)), (slice(cy, h), slice(cx, w))]
        hist = _block_histograms(pred, fg, blocks)
        block_means = tuple(
            float(x[rs, cs].mean()) if np.count_nonzero(hist[b].sum(axis=0)) == 1 else None
            for b, (rs, cs) in enumerate(blocks)
        )
        # ndarray.mean on the float map: the same summation as the reference, so the adaptive
        # threshold (a comparison) is the same to the last bit
        return cls((h, w), values, hist, split, float(x.mean()), block_means)

    @property
    def n(self) -> int:
        """All pixels."""
        return self.shape[0] * self.shape[1]

    @property
    def fg_hist(self) -> np.ndarray:
        """(256,) prediction-byte counts over the GT foreground."""
        return self.hist[:, 1].sum(axis=0)

    @property
    def bg_hist(self) -> np.ndarray:
        """(256,) prediction-byte counts over the GT background."""
        return self.hist[:, 0].sum(axis=0)

    def threshold_counts(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(TP, predicted positives) for t = 0..255 (map ``q >= t``) and the GT foreground count."""
        q = quantize_table(self.values)
        fg_q = np.bincount(q, weights=self.fg_hist, minlength=N_THRESHOLDS)
        all_q = np.bincount(q, weights=self.fg_hist + self.bg_hist, minlength=N_THRESHOLDS)
        # counts of q >= t: reversed cumulative sums (float64 holds counts exactly below 2^53)
        tp = np.cumsum(fg_q[::-1])[::-1].astype(np.int64)
        pos = np.cumsum(all_q[::-1])[::-1].astype(np.int64)
        return tp, pos, int(self.fg_hist.sum())

    def adaptive_counts(self) -> tuple[int, int, int]:
        """(TP, predicted positives, GT foreground) of the map ``x >= min(2 * mean(x), 1)``."""
        sel = self.values >= min(2 * self.mean_x, 1.0)
        fg_hist = self.fg_hist
        tp = int(fg_hist[sel].sum())
        return tp, tp + int(self.bg_hist[sel].sum()), int(fg_hist.sum())


def _block_histograms(pred: np.ndarray, fg: np.ndarray, blocks: list[tuple[slice, slice]]) -> np.ndarray:
    """(4, 2, 256) int64 counts of prediction bytes per block and GT class (0 bg, 1 fg)."""
    hist = np.zeros((len(blocks), 2, 256), dtype=np.int64)
    if pred.size < 2**24:  # OpenCV counts in float32: exact below 2^24 pixels
        fg_u8 = fg.view(np.uint8)
        for b, (rows, cols) in enumerate(blocks):
            block = pred[rows, cols]
            if block.size == 0:
                continue
            every = cv2.calcHist([block], [0], None, [256], [0, 256]).reshape(-1).astype(np.int64)
            hist[b, 1] = cv2.calcHist([block], [0], fg_u8[rows, cols], [256], [0, 256]).reshape(-1)
            hist[b, 0] = every - hist[b, 1]
        return hist
    for b, (rows, cols) in enumerate(blocks):
        key = pred[rows, cols].astype(np.intp) + 256 * fg[rows, cols]
        hist[b] = np.bincount(key.reshape(-1), minlength=512).reshape(2, 256)
    return hist
