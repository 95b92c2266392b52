"""Dataset values from per-image scores (``docs/metrics.md``, 'Aggregation'): every image weighs 1.

Scalar metrics (wF, MAE, S, HCE and the adaptive values) are means over images. The F and E
curves are first averaged over images threshold by threshold; maxF / meanF (maxE / meanE) are
the max / mean of that mean curve. maxF is therefore *not* the mean of each image's best F.
Which metric is which comes from the metric table (``pdseg_cli.metrics.table``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pdseg_cli.metrics.common import N_THRESHOLDS, values_equal
from pdseg_cli.metrics.image import ImageScores
from pdseg_cli.metrics.table import EXTRA_KEYS, METRICS, TABLE_KEYS

__all__ = ["EXTRA_KEYS", "TABLE_KEYS", "DatasetScores", "aggregate"]

# the curves the curve metrics reduce: ImageScores and DatasetScores attributes of that name
_CURVES = tuple(dict.fromkeys(m.source for m in METRICS if m.reduce is not None))


@dataclass(frozen=True, eq=False)  # __eq__ below: its curves are arrays
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
    f_curve: np.ndarray = field(repr=False)  # 256 values each: a repr of the scores stays readable
    e_curve: np.ndarray = field(repr=False)
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

    __hash__ = None  # type: ignore[assignment]  # unhashable, as an == dataclass with arrays is

    def __eq__(self, other: object) -> bool:
        return values_equal(self, other)

    def as_dict(self) -> dict[str, float | int]:
        """Values under the report's key names: the DIS table's, ``count``, then the extras.

        ``E`` is the mean E-measure (the DIS table's E).
        """
        values = {m.key: getattr(self, m.field) for m in METRICS}
        return {
            **{key: values[key] for key in TABLE_KEYS},
            "count": self.count,
            **{key: values[key] for key in EXTRA_KEYS},
        }


def aggregate(images: Sequence[ImageScores]) -> DatasetScores:
    """Combine per-image scores into dataset values (NaN everywhere for an empty sequence)."""
    if not images:
        curves: dict[str, Any] = {name: np.full(N_THRESHOLDS, np.nan) for name in _CURVES}
        nans: dict[str, Any] = {m.field: float("nan") for m in METRICS}
        return DatasetScores(0, **curves, **nans)
    curves = {
        name: np.mean(np.array([getattr(im, name) for im in images], dtype=np.float64), axis=0)
        for name in _CURVES
    }
    values: dict[str, Any] = {}  # floats
    for m in METRICS:
        if m.reduce is not None:
            values[m.field] = float(getattr(curves[m.source], m.reduce)())
        else:
            per_image = np.array([float(im.value(m)) for im in images], dtype=np.float64)
            values[m.field] = float(np.mean(per_image))
    return DatasetScores(len(images), **curves, **values)
