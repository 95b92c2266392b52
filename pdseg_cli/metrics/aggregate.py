"""Dataset values from per-image scores (``docs/metrics.md``, 'Aggregation'): every image weighs 1.

Scalar metrics (wF, MAE, S, HCE and the adaptive values) are means over images. The F and E
curves are first averaged over images threshold by threshold; maxF / meanF (maxE / meanE) are
the max / mean of that mean curve. maxF is therefore *not* the mean of each image's best F.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pdseg_cli.metrics.common import N_THRESHOLDS
from pdseg_cli.metrics.image import ImageScores

# The DIS table's columns, in the paper's order, then the extras.
TABLE_KEYS = ("maxF", "wF", "MAE", "S", "E", "HCE")
EXTRA_KEYS = ("meanF", "adpF", "maxE", "adpE")


@dataclass(frozen=True)
class DatasetScores:
    """Aggregated values of a set of images.

    Attributes:
        count: number of images.
        f_curve: (256,) image-averaged F curve, ascending thresholds.
        e_curve: (256,) image-averaged E curve, ascending thresholds.
        max_f, mean_f, adp_f, wf, mae, s, mean_e, max_e, adp_e: the dataset values.
        hce: mean HCE (not rounded; tables print it as an integer).
    """

    count: int
    f_curve: np.ndarray
    e_curve: np.ndarray
    max_f: float
    mean_f: float
    adp_f: float
    wf: float
    mae: float
    s: float
    mean_e: float
    max_e: float
    adp_e: float
    hce: float

    def as_dict(self) -> dict[str, float | int]:
        """Values under the report's key names; ``E`` is the mean E-measure (the DIS table's E)."""
        return {
            "maxF": self.max_f,
            "wF": self.wf,
            "MAE": self.mae,
            "S": self.s,
            "E": self.mean_e,
            "HCE": self.hce,
            "count": self.count,
            "meanF": self.mean_f,
            "adpF": self.adp_f,
            "maxE": self.max_e,
            "adpE": self.adp_e,
        }


def aggregate(images: Sequence[ImageScores]) -> DatasetScores:
    """Combine per-image scores into dataset values (NaN everywhere for an empty sequence)."""
    if not images:
        nan = float("nan")
        curve = np.full(N_THRESHOLDS, np.nan)
        return DatasetScores(0, curve, curve.copy(), nan, nan, nan, nan, nan, nan, nan, nan, nan, nan)
    f_curve = np.mean(np.array([im.f_curve for im in images], dtype=np.float64), axis=0)
    e_curve = np.mean(np.array([im.e_curve for im in images], dtype=np.float64), axis=0)

    def mean(values: list[float]) -> float:
        return float(np.mean(np.array(values, dtype=np.float64)))

    return DatasetScores(
        count=len(images),
        f_curve=f_curve,
        e_curve=e_curve,
        max_f=float(f_curve.max()),
        mean_f=float(f_curve.mean()),
        adp_f=mean([im.adp_f for im in images]),
        wf=mean([im.wf for im in images]),
        mae=mean([im.mae for im in images]),
        s=mean([im.s for im in images]),
        mean_e=float(e_curve.mean()),
        max_e=float(e_curve.max()),
        adp_e=mean([im.adp_e for im in images]),
        hce=mean([float(im.hce.total) for im in images]),
    )
