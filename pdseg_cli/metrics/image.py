"""Every DIS metric of one (prediction, GT) pair, sharing the work between them.

One histogram pass (``pdseg_cli.metrics.stats``) serves F, E, MAE and S and the adaptive values;
weighted F needs the float map and the GT's band (``pdseg_cli.metrics.wfmeasure``); HCE needs the
raw bytes and the GT skeleton. The GT-only parts come from a ``GTPrep``, possibly cached.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, fields

import numpy as np

from pdseg_cli.metrics.common import GT_THRESHOLD, check_pair, foreground, normalized_map, values_equal
from pdseg_cli.metrics.emeasure import adaptive_e_from, e_curve_from
from pdseg_cli.metrics.fmeasure import adaptive_f_from, f_curve_from
from pdseg_cli.metrics.gtprep import GTPrep
from pdseg_cli.metrics.hce import HCEParts, hce_from_masks
from pdseg_cli.metrics.mae import mae_from
from pdseg_cli.metrics.smeasure import s_measure_from
from pdseg_cli.metrics.stats import PairStats
from pdseg_cli.metrics.table import METRICS, Metric
from pdseg_cli.metrics.wfmeasure import (
    band_pixels,
    nearest_index,
    squared_distances,
    weighted_fmeasure_from,
)


@dataclass(frozen=True, eq=False)  # __eq__ below: its curves are arrays
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

    f_curve: np.ndarray = field(repr=False)  # 256 values each: a repr of the scores stays readable
    e_curve: np.ndarray = field(repr=False)
    adp_f: float
    adp_e: float
    wf: float
    mae: float
    s: float
    hce: HCEParts

    __hash__ = None  # type: ignore[assignment]  # unhashable, as an == dataclass with arrays is

    def __eq__(self, other: object) -> bool:
        return values_equal(self, other)

    def value(self, metric: Metric) -> float | int:
        """The image's value of one metric: maxF is this image's best F, E its mean E, HCE an int."""
        raw = operator.attrgetter(metric.source)(self)
        if metric.reduce is None:
            return raw
        return float(getattr(raw, metric.reduce)())  # the curve's max() or mean()

    def as_dict(self) -> dict[str, float | int]:
        """The per-image values under the report's key names (``METRICS`` order), then the HCE parts."""
        out = {m.key: self.value(m) for m in METRICS}
        out.update({f.name: getattr(self.hce, f.name) for f in fields(HCEParts)})
        return out


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
    x = normalized_map(pred)
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
            np.flatnonzero(fg),
            band,
            nearest_index(band, prep.nearest_codes, width),
            squared_distances(fg),
        )

    parts = hce_from_masks(fg, pred > GT_THRESHOLD, prep.skeleton_mask())
    return ImageScores(
        f_curve=f_curve_from(stats),
        e_curve=e_curve_from(stats),
        adp_f=adaptive_f_from(stats),
        adp_e=adaptive_e_from(stats),
        wf=wf,
        mae=mae_from(stats),
        s=s_measure_from(stats),
        hce=parts,
    )
