"""All DIS metrics of one (prediction, GT) pair, sharing the work between them.

One pass over the image builds the histogram of prediction bytes per GT class and per S-measure
block; F, E, MAE and S (and the adaptive values) follow from those 4 x 2 x 256 counts and the
per-byte normalised values. Weighted F needs the float map; HCE needs the raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pdseg_cli.metrics.common import check_pair, foreground, quantize_table, value_table
from pdseg_cli.metrics.emeasure import e_from_counts
from pdseg_cli.metrics.fmeasure import f_from_counts
from pdseg_cli.metrics.gtprep import GTPrep
from pdseg_cli.metrics.hce import HCEParts, hce_from_masks
from pdseg_cli.metrics.mae import mae_from_histograms
from pdseg_cli.metrics.smeasure import centroid_split, s_from_histograms
from pdseg_cli.metrics.wfmeasure import (
    band_pixels,
    nearest_index,
    squared_distances,
    weighted_fmeasure_from,
)


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
        return self.shape[0] * self.shape[1]

    @property
    def fg_hist(self) -> np.ndarray:
        return self.hist[:, 1].sum(axis=0)

    @property
    def bg_hist(self) -> np.ndarray:
        return self.hist[:, 0].sum(axis=0)

    def _threshold_counts(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(TP, predicted positives) for t = 0..255 (map ``q >= t``) and the GT foreground count."""
        q = quantize_table(self.values)
        fg_q = np.bincount(q, weights=self.fg_hist, minlength=256)
        all_q = np.bincount(q, weights=self.fg_hist + self.bg_hist, minlength=256)
        # counts of q >= t: reversed cumulative sums (float64 holds counts exactly below 2^53)
        tp = np.cumsum(fg_q[::-1])[::-1].astype(np.int64)
        pos = np.cumsum(all_q[::-1])[::-1].astype(np.int64)
        return tp, pos, int(self.fg_hist.sum())

    def _adaptive_counts(self) -> tuple[int, int, int]:
        """(TP, predicted positives, GT foreground) of the map ``x >= min(2 * mean(x), 1)``."""
        sel = self.values >= min(2 * self.mean_x, 1.0)
        fg_hist = self.fg_hist
        tp = int(fg_hist[sel].sum())
        return tp, tp + int(self.bg_hist[sel].sum()), int(fg_hist.sum())

    def f_curve(self) -> np.ndarray:
        """F-measure at thresholds t = 0..255 (ascending)."""
        tp, pos, n_fg = self._threshold_counts()
        return f_from_counts(tp, pos, n_fg)

    def e_curve(self) -> np.ndarray:
        """E-measure at thresholds t = 0..255 (ascending)."""
        tp, pos, n_fg = self._threshold_counts()
        return e_from_counts(tp, pos, n_fg, self.n)

    def adaptive_f(self) -> float:
        tp, pos, n_fg = self._adaptive_counts()
        return float(f_from_counts(np.array(tp), np.array(pos), n_fg))

    def adaptive_e(self) -> float:
        tp, pos, n_fg = self._adaptive_counts()
        return float(e_from_counts(np.array(tp), np.array(pos), n_fg, self.n))

    def mae(self) -> float:
        return mae_from_histograms(self.fg_hist, self.bg_hist, self.values)

    def s_measure(self) -> float:
        return s_from_histograms(self.hist, self.values, self.split, self.shape, self.block_means)


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


def normalized_map(pred: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
    """The min-max normalised float64 map ``x`` of a uint8 prediction (bit-identical to pysodmetrics)."""
    if values is None:
        values = value_table(int(pred.min()), int(pred.max()))
    return cv2.LUT(pred, values)


@dataclass(frozen=True)
class ImageScores:
    """Every metric of one image.

    Attributes:
        f_curve: (256,) F-measure per threshold, ascending (t = 0..255).
        e_curve: (256,) E-measure per threshold, ascending.
        adp_f: adaptive F-measure.
        adp_e: adaptive E-measure.
        wf: weighted F-measure.
        mae: mean absolute error.
        s: S-measure (0 in the NaN case).
        hce: the four HCE parts.
    """

    f_curve: np.ndarray
    e_curve: np.ndarray
    adp_f: float
    adp_e: float
    wf: float
    mae: float
    s: float
    hce: HCEParts

    def as_dict(self) -> dict[str, float | int]:
        """The per-image values under the report's key names (E = mean E, as the DIS table)."""
        return {
            "maxF": float(self.f_curve.max()),
            "wF": self.wf,
            "MAE": self.mae,
            "S": self.s,
            "E": float(self.e_curve.mean()),
            "HCE": self.hce.total,
            "meanF": float(self.f_curve.mean()),
            "adpF": self.adp_f,
            "maxE": float(self.e_curve.max()),
            "adpE": self.adp_e,
            "fp_points": self.hce.fp_points,
            "fp_regions": self.hce.fp_regions,
            "fn_points": self.hce.fn_points,
            "fn_regions": self.hce.fn_regions,
        }


def score_pair(pred: np.ndarray, gt: np.ndarray, prep: GTPrep | None = None) -> ImageScores:
    """Every DIS metric of one pair.

    Args:
        pred: (H, W) uint8 prediction at the GT size (resize first; see
            ``pdseg_cli.engine.evaluate``).
        gt: (H, W) uint8 GT; ``> 128`` is foreground.
        prep: ``GTPrep.from_gt(gt)``, e.g. from the cache; computed here when None.

    Returns:
        The image's scores.
    """
    check_pair(pred, gt)
    fg = foreground(gt)
    if prep is None:
        prep = GTPrep.from_gt(gt, fg)
    elif prep.shape != gt.shape:
        raise ValueError(f"GT data of shape {prep.shape} does not belong to a GT of shape {gt.shape}")
    values = value_table(int(pred.min()), int(pred.max()))
    x = normalized_map(pred, values)
    stats = PairStats.compute(pred, gt, fg=fg, split=prep.split, x=x)

    if prep.n_fg == 0:
        wf = 0.0
    else:
        width = gt.shape[1]
        band = band_pixels(fg)
        if band.size != prep.nearest_codes.size:
            raise ValueError("GT data does not belong to this GT (band size differs)")
        wf = weighted_fmeasure_from(
            x,
            fg,
            np.flatnonzero(fg),
            band,
            nearest_index(band, prep.nearest_codes, width),
            squared_distances(fg),
        )

    parts = hce_from_masks(fg, pred > 128, prep.skeleton_mask())
    return ImageScores(
        f_curve=stats.f_curve(),
        e_curve=stats.e_curve(),
        adp_f=stats.adaptive_f(),
        adp_e=stats.adaptive_e(),
        wf=wf,
        mae=stats.mae(),
        s=stats.s_measure(),
        hce=parts,
    )
