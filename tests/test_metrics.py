"""The DIS metrics against reference values: the shared golden sets and our stored edge cases.

Golden values (the sample data's ``golden`` folder, see the ``shared_data`` fixture) come from
pysodmetrics 1.6.2 and the official DIS HCE; ``tests/golden/edge_cases.*`` were made once by
``tests/golden/make_edge_cases.py`` with the same references. Neither reference runs here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pdseg_cli.engine.evaluate import evaluate, evaluate_arrays
from pdseg_cli.metrics.emeasure import emeasure_curve
from pdseg_cli.metrics.fmeasure import fmeasure_curve
from pdseg_cli.metrics.hce import hce
from pdseg_cli.metrics.image import score_pair
from pdseg_cli.metrics.mae import mae
from pdseg_cli.metrics.smeasure import smeasure
from pdseg_cli.metrics.wfmeasure import weighted_fmeasure

GOLDEN_DIR = Path(__file__).parent / "golden"
FLOAT_KEYS = ("maxF", "meanF", "adpF", "wF", "MAE", "S", "E", "maxE", "adpE")
HCE_PARTS = ("fp_points", "fp_regions", "fn_points", "fn_regions")
TOL = 1e-9  # the golden README: 1e-9 with the same float64 operations (the requirement is 1e-6)


def _edge() -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    ref = json.loads((GOLDEN_DIR / "edge_cases.json").read_text())
    with np.load(GOLDEN_DIR / "edge_cases.npz") as z:
        arrays = {name: (z[f"{name}__pred"], z[f"{name}__gt"]) for name in ref["order"]}
    return ref, arrays


EDGE_REF, EDGE_ARRAYS = _edge()


# ----------------------------------------------------------------------------------------------
# golden sets: 46 DAVIS GTs x 2 prediction sets


@pytest.mark.parametrize(
    ("golden", "pred_dir", "jobs"),
    [("davis16-eval.json", "davis16-eval-pred", 2), ("davis16-eval-pred2.json", "davis16-eval-pred2", 1)],
)
def test_golden_sets(shared_data: Path, tmp_path: Path, golden: str, pred_dir: str, jobs: int) -> None:
    ref = json.loads((shared_data / "golden" / golden).read_text())
    report = evaluate(
        shared_data / pred_dir, shared_data / "davis16-eval" / "gt", jobs=jobs, cache_dir=tmp_path
    )
    split = report.splits[0]
    assert [r.stem for r in split.images] == sorted(ref["per_image"])
    for record in split.images:
        want, got = ref["per_image"][record.stem], record.as_dict()
        for key in FLOAT_KEYS:
            ref_key = "meanE" if key == "E" else key
            assert got[key] == pytest.approx(want[ref_key], abs=TOL), (record.stem, key)
        assert [got[k] for k in HCE_PARTS] == [want[k] for k in HCE_PARTS], record.stem
        assert got["HCE"] == want["HCE"]
        assert list(record.pred_size) == want["pred_size_hw"]
    values = split.scores.as_dict()
    for key in (*FLOAT_KEYS, "HCE"):
        ref_key = "meanE" if key == "E" else key
        assert values[key] == pytest.approx(ref["dataset"][ref_key], abs=TOL if key != "HCE" else 1e-12), key
    assert values["count"] == 46
    np.testing.assert_allclose(split.scores.f_curve, ref["curves"]["F"], rtol=0, atol=TOL)
    np.testing.assert_allclose(split.scores.e_curve, ref["curves"]["E"], rtol=0, atol=TOL)
    assert split.resized == sum(r["pred_size_hw"] != [480, 854] for r in ref["per_image"].values())


# ----------------------------------------------------------------------------------------------
# our edge cases


def test_edge_cases_per_image_and_dataset() -> None:
    names = EDGE_REF["order"]
    report = evaluate_arrays([EDGE_ARRAYS[n] for n in names], names=names)
    split = report.splits[0]
    for record in split.images:
        want, got = EDGE_REF["per_image"][record.stem], record.as_dict()
        for key in FLOAT_KEYS:
            assert got[key] == pytest.approx(want[key], abs=TOL), (record.stem, key)
        assert [got[k] for k in (*HCE_PARTS, "HCE")] == [want[k] for k in (*HCE_PARTS, "HCE")], record.stem
    values = split.scores.as_dict()
    for key, want in EDGE_REF["dataset"].items():
        assert values[key] == pytest.approx(want, abs=TOL), key


def test_s_measure_nan_case_counts_zero() -> None:
    nan_cases = [n for n, v in EDGE_REF["per_image"].items() if v["S_pysodmetrics_is_nan"]]
    assert {"gt_last_column_only", "gt_last_row_only"} <= set(nan_cases)
    for name in nan_cases:
        pred, gt = EDGE_ARRAYS[name]
        if pred.shape == gt.shape:
            assert smeasure(pred, gt) == 0.0


def test_degenerate_cases_match_the_reference_table() -> None:
    # docs/metrics.md, 'Edge cases', the rows a user is most surprised by
    per = EDGE_REF["per_image"]
    assert per["full_gt_zero_pred"]["maxF"] == 1.0  # t = 0 makes every pixel foreground
    assert per["full_gt_zero_pred"]["HCE"] == 0  # whole-image FN mask counts no region
    assert per["empty_gt_full_pred"]["HCE"] == 0
    assert per["constant_128"]["fp_points"] == 0  # 128 is background for HCE
    assert per["constant_129"]["fn_points"] == 0
    assert per["full_gt_full_pred"]["E"] > 1.0  # N - 1 denominator


@pytest.mark.parametrize(
    "name", ["thin_lines_half_found", "holes_soft_pred", "low_range_30_200", "constant_128"]
)
def test_single_metric_functions(name: str) -> None:
    pred, gt = EDGE_ARRAYS[name]
    want = EDGE_REF["per_image"][name]
    f_curve, adp_f = fmeasure_curve(pred, gt)
    e_curve, adp_e = emeasure_curve(pred, gt)
    assert f_curve.shape == e_curve.shape == (256,)
    assert f_curve.max() == pytest.approx(want["maxF"], abs=TOL)
    assert adp_f == pytest.approx(want["adpF"], abs=TOL)
    assert e_curve.mean() == pytest.approx(want["E"], abs=TOL)
    assert adp_e == pytest.approx(want["adpE"], abs=TOL)
    assert mae(pred, gt) == pytest.approx(want["MAE"], abs=TOL)
    assert smeasure(pred, gt) == pytest.approx(want["S"], abs=TOL)
    assert weighted_fmeasure(pred, gt) == pytest.approx(want["wF"], abs=TOL)
    parts = hce(pred, gt)
    assert (parts.fp_points, parts.fp_regions, parts.fn_points, parts.fn_regions) == tuple(
        want[k] for k in HCE_PARTS
    )


def test_maxf_is_max_of_mean_curve_not_mean_of_maxima() -> None:
    names = ["thin_lines_half_found", "holes_soft_pred", "constant_37", "random_48x64"]
    report = evaluate_arrays([EDGE_ARRAYS[n] for n in names], names=names)
    split = report.splits[0]
    mean_of_maxima = np.mean([r.scores.f_curve.max() for r in split.images])
    assert split.scores.max_f == pytest.approx(
        np.mean([r.scores.f_curve for r in split.images], axis=0).max()
    )
    assert split.scores.max_f < mean_of_maxima


def test_pairs_must_be_uint8_of_one_shape() -> None:
    gt = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        score_pair(np.zeros((8, 8), np.float32), gt)
    with pytest.raises(ValueError, match="shape"):
        score_pair(np.zeros((8, 9), np.uint8), gt)
