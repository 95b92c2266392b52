"""The DIS metrics on uint8 maps: numpy, OpenCV and pure functions only (no torch, no files).

``score_pair(pred, gt)`` gives every metric of one pair; ``aggregate`` turns per-image scores
into dataset values. ``docs/metrics.md`` specifies each metric; the module docstrings say how
each one is computed and which reference it equals.
"""

from pdseg_cli.metrics.aggregate import DatasetScores, aggregate
from pdseg_cli.metrics.hce import HCEParts, hce
from pdseg_cli.metrics.image import ImageScores, score_pair
from pdseg_cli.metrics.reading import read_gray_u8

__all__ = ["DatasetScores", "HCEParts", "ImageScores", "aggregate", "hce", "read_gray_u8", "score_pair"]
