"""The metric table: one entry per metric that ``pdseg eval`` reports (``docs/metrics.md``).

Every place that names a metric derives from ``METRICS``: the JSON and CSV keys and their order
(the DIS table's six columns in the paper's order, then the extras), the fields of
``DatasetScores`` and its dict form, the per-image values of ``ImageScores``, the aggregation,
and the columns of ``pdseg eval``'s table. Adding a metric is one entry here, its function, its
fields in ``ImageScores`` and ``DatasetScores`` (a test checks that the three agree) and its call in
``score_pair``; the README's 'Where to add things' lists the docs that describe it.

This module is a leaf: it imports nothing from pdseg_cli.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Metric:
    """One reported metric.

    Attributes:
        key: the name in the JSON and CSV reports, e.g. ``"maxF"``.
        field: the ``DatasetScores`` attribute that holds the dataset value.
        label: the column heading in ``pdseg eval``'s table.
        decimals: digits after the point in tables (HCE, a count of clicks, has none).
        higher_is_better: whether a larger value is a better segmentation.
        in_table: a column of the DIS table; False for the extras, which only the JSON and CSV
            reports hold.
        description: one line for ``--help`` and the docs.
        source: the ``ImageScores`` attribute the per-image value comes from, a dotted path
            (``"hce.total"``); for a curve metric, the curve.
        reduce: for a curve metric, how a curve becomes a value (its ``max`` or its ``mean``);
            the dataset value reduces the image-averaged curve (``docs/metrics.md``,
            'Aggregation'). None for a scalar metric, whose dataset value is the mean over images.
    """

    key: str
    field: str
    label: str
    decimals: int
    higher_is_better: bool
    in_table: bool
    description: str
    source: str
    reduce: Literal["max", "mean"] | None = None

    def format(self, value: float) -> str:
        """The value as tables print it, e.g. ``0.912`` (maxF) or ``1024`` (HCE)."""
        return f"{value:.{self.decimals}f}"


METRICS: tuple[Metric, ...] = (
    # the DIS table's columns, in the paper's order
    Metric(
        key="maxF",
        field="max_f",
        label="maxF",
        decimals=3,
        higher_is_better=True,
        in_table=True,
        description="maximum F-measure (beta^2 = 0.3) over 256 thresholds of the image-averaged F curve",
        source="f_curve",
        reduce="max",
    ),
    Metric(
        key="wF",
        field="wf",
        label="wF",
        decimals=3,
        higher_is_better=True,
        in_table=True,
        description="weighted F-measure (beta^2 = 1), mean over images",
        source="wf",
    ),
    Metric(
        key="MAE",
        field="mae",
        label="MAE",
        decimals=3,
        higher_is_better=False,
        in_table=True,
        description="mean absolute error of the min-max normalised map, mean over images",
        source="mae",
    ),
    Metric(
        key="S",
        field="s",
        label="S",
        decimals=3,
        higher_is_better=True,
        in_table=True,
        description="S-measure (alpha = 0.5; an image in the NaN case counts 0), mean over images",
        source="s",
    ),
    Metric(
        key="E",
        field="mean_e",
        label="E",
        decimals=3,
        higher_is_better=True,
        in_table=True,
        description="mean E-measure: mean over 256 thresholds of the image-averaged E curve",
        source="e_curve",
        reduce="mean",
    ),
    Metric(
        key="HCE",
        field="hce",
        label="HCE",
        decimals=0,
        higher_is_better=False,
        in_table=True,
        description="human correction efforts (official DIS procedure, relax 5, epsilon 2), mean over images",
        source="hce.total",
    ),
    # the extras, in the JSON and CSV reports only
    Metric(
        key="meanF",
        field="mean_f",
        label="meanF",
        decimals=3,
        higher_is_better=True,
        in_table=False,
        description="mean F-measure: mean over 256 thresholds of the image-averaged F curve",
        source="f_curve",
        reduce="mean",
    ),
    Metric(
        key="adpF",
        field="adp_f",
        label="adpF",
        decimals=3,
        higher_is_better=True,
        in_table=False,
        description="adaptive F-measure (threshold min(2 mean(x), 1)), mean over images",
        source="adp_f",
    ),
    Metric(
        key="maxE",
        field="max_e",
        label="maxE",
        decimals=3,
        higher_is_better=True,
        in_table=False,
        description="maximum E-measure over 256 thresholds of the image-averaged E curve",
        source="e_curve",
        reduce="max",
    ),
    Metric(
        key="adpE",
        field="adp_e",
        label="adpE",
        decimals=3,
        higher_is_better=True,
        in_table=False,
        description="adaptive E-measure (threshold min(2 mean(x), 1)), mean over images",
        source="adp_e",
    ),
)

TABLE_METRICS: tuple[Metric, ...] = tuple(m for m in METRICS if m.in_table)
TABLE_KEYS: tuple[str, ...] = tuple(m.key for m in TABLE_METRICS)  # maxF wF MAE S E HCE
EXTRA_KEYS: tuple[str, ...] = tuple(m.key for m in METRICS if not m.in_table)  # meanF adpF maxE adpE

_BY_KEY = {m.key: m for m in METRICS}


def metric(key: str) -> Metric:
    """The entry of ``key`` (a JSON/CSV key such as ``"maxF"``); KeyError naming the keys otherwise."""
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"unknown metric {key!r}; the metrics are {', '.join(_BY_KEY)}") from None
