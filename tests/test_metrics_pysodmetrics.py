"""The DIS metrics against live pysodmetrics (the dev extra) on seeded random pairs.

test_metrics.py compares with stored values of a few dozen chosen cases; this runs the reference
itself on shapes nobody chose: random sizes, GTs of zero to three discs (some with soft edges),
and noisy, blurred-noisy, binary and constant maps. Skipped where pysodmetrics is not installed.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from pdseg_cli.engine.evaluate import evaluate_arrays
from pdseg_cli.metrics.image import score_pair

psm = pytest.importorskip("py_sod_metrics")

TOL = 1e-9  # as test_metrics.py: the same float64 operations, so differences are rounding only
N_PAIRS = 120


def _random_pairs(n: int, seed: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (pred, gt) uint8 pairs of random sizes from 8 to 79 a side."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(8, 80, 2))
        gt = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(0, 4))):  # no disc at all: an empty GT
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(gt, centre, int(rng.integers(1, 25)), 255, -1)
        if i % 5 == 4:  # grey edges: which pixels are foreground is the gt > 128 rule's call
            gt = cv2.GaussianBlur(gt, (0, 0), 1.5)
        kind = i % 4
        if kind == 0:  # noise
            pred = rng.integers(0, 256, (h, w)).astype(np.uint8)
        elif kind == 1:  # a soft, noisy version of the GT
            soft = cv2.GaussianBlur(gt, (0, 0), 2).astype(int) + rng.integers(-60, 60, (h, w))
            pred = np.clip(soft, 0, 255).astype(np.uint8)
        elif kind == 2:  # a binary map, half right
            pred = np.where((gt > 128) ^ (rng.random((h, w)) < 0.25), 255, 0).astype(np.uint8)
        else:  # constant, 0 and 255 included
            pred = np.full((h, w), int(rng.choice([0, 255, int(rng.integers(1, 255))])), np.uint8)
        pairs.append((pred, gt))
    return pairs


PAIRS = _random_pairs(N_PAIRS)


def _meters() -> dict[str, Any]:
    """One pysodmetrics meter per metric, under the key its ``get_results()`` uses."""
    return {
        "fm": psm.Fmeasure(),
        "em": psm.Emeasure(),
        "mae": psm.MAE(),
        "sm": psm.Smeasure(),
        "wfm": psm.WeightedFmeasure(),
    }


@pytest.mark.filterwarnings("ignore:This class will be removed:UserWarning")  # psm's Fmeasure
def test_metrics_equal_pysodmetrics_on_random_pairs() -> None:
    totals: dict[str, Any] = _meters()
    for i, (pred, gt) in enumerate(PAIRS):
        one: dict[str, Any] = _meters()
        for name in one:
            one[name].step(pred, gt)
            totals[name].step(pred, gt)
        ref = {name: meter.get_results()[name] for name, meter in one.items()}
        got = score_pair(pred, gt)
        # pysodmetrics' curves run from threshold 255 down to 0; ours ascend
        np.testing.assert_allclose(got.f_curve, ref["fm"]["curve"][::-1], rtol=0, atol=TOL, err_msg=f"F {i}")
        np.testing.assert_allclose(got.e_curve, ref["em"]["curve"][::-1], rtol=0, atol=TOL, err_msg=f"E {i}")
        want = (ref["fm"]["adp"], ref["em"]["adp"], ref["wfm"], ref["mae"], ref["sm"])
        assert (got.adp_f, got.adp_e, got.wf, got.mae, got.s) == pytest.approx(want, abs=TOL), i

    # the dataset values: curves averaged over images first (maxF is the mean curve's max)
    report = evaluate_arrays(PAIRS).splits[0].scores.as_dict()
    ref = {name: meter.get_results()[name] for name, meter in totals.items()}
    f_curve, e_curve = ref["fm"]["curve"], ref["em"]["curve"]
    want = {
        "maxF": f_curve.max(),
        "meanF": f_curve.mean(),
        "adpF": ref["fm"]["adp"],
        "wF": ref["wfm"],
        "MAE": ref["mae"],
        "S": ref["sm"],
        "E": e_curve.mean(),
        "maxE": e_curve.max(),
        "adpE": ref["em"]["adp"],
    }
    assert report["count"] == N_PAIRS
    for key, value in want.items():
        assert report[key] == pytest.approx(float(value), abs=TOL), key


def test_the_random_pairs_cover_the_awkward_cases() -> None:
    """The draw holds what the comparison is for: empty GTs, grey-edged GTs, constant maps."""
    assert sum(gt.max() == 0 for _, gt in PAIRS) >= 10
    assert sum(bool(((gt > 0) & (gt < 255)).any()) for _, gt in PAIRS) >= 10
    constants = {int(pred[0, 0]) for pred, _ in PAIRS if pred.min() == pred.max()}
    assert {0, 255} <= constants and len(constants) >= 5
