"""The DIS metrics on uint8 maps (``docs/metrics.md`` specifies each one).

``score_pair(pred, gt)`` gives every metric of one pair; ``aggregate`` turns per-image scores
into dataset values; ``METRICS`` (``metric("maxF")``) is the table of reported metrics that
report keys, columns and formats derive from. The module docstrings say how each metric is
computed and which reference it equals.

The metric functions are pure (numpy and OpenCV, no torch, no files) and import neither of the
two modules that touch files: ``reading`` (decoding mask files as the DIS tools do) and
``cache`` (the on-disk cache of GT-only data).
"""

from pdseg_cli.metrics.aggregate import DatasetScores, aggregate
from pdseg_cli.metrics.hce import HCEParts, hce
from pdseg_cli.metrics.image import ImageScores, score_pair
from pdseg_cli.metrics.reading import read_gray_u8
from pdseg_cli.metrics.table import EXTRA_KEYS, METRICS, TABLE_KEYS, Metric, metric

__all__ = [
    "EXTRA_KEYS",
    "METRICS",
    "TABLE_KEYS",
    "DatasetScores",
    "HCEParts",
    "ImageScores",
    "Metric",
    "aggregate",
    "hce",
    "metric",
    "read_gray_u8",
    "score_pair",
]
