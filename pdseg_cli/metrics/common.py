"""The shared input pipeline of the DIS metrics (``docs/metrics.md``, 'Normalisation' and
'Thresholds'), as lookup tables.

Every per-pixel step the reference tools apply to a prediction (divide by 255, min-max stretch,
truncate to 256 bins) depends only on the pixel's byte and on the image's smallest and largest
byte. So each step is computed once per byte value, with the same float64 operations in the same
order as pysodmetrics, and looked up: the values are bit-identical to the reference's.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

EPS = float(np.spacing(1))  # numpy's machine epsilon, 2.22e-16, as the references use it
GT_THRESHOLD = 128  # GT foreground is ``gt > 128`` (strictly)
N_THRESHOLDS = 256  # F and E curves: thresholds t = 0..255 on the quantised map, ``q >= t``


def check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    """Raise ValueError unless ``pred`` and ``gt`` are uint8 arrays of the same 2D shape."""
    for name, arr in (("prediction", pred), ("GT", gt)):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 2:
            desc = f"{arr.dtype} array of shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr)
            raise ValueError(f"{name} must be a 2D uint8 array, got {desc}")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from GT shape {gt.shape}")


def foreground(gt: np.ndarray) -> np.ndarray:
    """The binary GT: ``gt > 128`` (128 is background, 129 foreground)."""
    return gt > GT_THRESHOLD


def value_table(pred_min: int, pred_max: int) -> np.ndarray:
    """The normalised value ``x`` of each byte 0..255 for a map whose bytes span [min, max].

    ``x = v / 255``, then, unless the map is constant, ``(x - min) / (max - min)`` with min and
    max taken on ``x`` (MATLAB's ``mapminmax(im2double(...))``, pysodmetrics' ``prepare_data``).

    Returns:
        (256,) float64. Entries outside [min, max] are meaningless (no pixel has those bytes).
    """
    x = np.arange(256, dtype=np.uint8) / 255
    lo, hi = x[pred_min], x[pred_max]
    if hi != lo:
        x = (x - lo) / (hi - lo)
    return x


def quantize_table(values: np.ndarray) -> np.ndarray:
    """The 256-bin index of each normalised value, ``(x * 255).astype(uint8)`` (truncation).

    Entries outside [0, 1] (bytes no pixel has) are clipped first so the cast stays defined.
    """
    return (np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)


def normalized_map(pred: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
    """The min-max normalised float64 map ``x`` of a uint8 prediction (bit-identical to pysodmetrics).

    Args:
        pred: (H, W) uint8 prediction.
        values: ``value_table`` of the prediction's byte range, if already computed.
    """
    if values is None:
        values = value_table(int(pred.min()), int(pred.max()))
    return cv2.LUT(pred, values)


def values_equal(a: object, b: object) -> bool:
    """``a == b`` for two score dataclasses of the same type, array fields compared by value: the
    generated ``==`` compares arrays element-wise and fails on their truth value."""
    if type(a) is not type(b):
        return False
    for f in dataclasses.fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, f.name), getattr(b, f.name)
        if not (np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y):
            return False
    return True
