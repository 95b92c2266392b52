"""Regenerate ``edge_cases.npz`` (inputs) and ``edge_cases.json`` (reference values).

The references: pysodmetrics 1.6.2 for F, weighted F, MAE, S and E, and the straightforward DIS
HCE of ``benchmarks/eval_speed.py`` (the official procedure written plainly; it matches the 92
golden pairs of ``../shared/data/golden`` part for part). The tests compare pdseg against the
stored files and need neither reference at test time.

    python tests/golden/make_edge_cases.py          # needs the dev extra (pysodmetrics, scikit-image)

Every case is built here from a fixed seed. A prediction of another size is resized to the GT size
(cv2 INTER_LINEAR) before the references see it, as the evaluation tools do; pdseg gets the
original and must resize it the same way. The S-measure NaN cases (GT foreground on the last
column or row) are stored as 0, pdseg's documented choice (pysodmetrics 1.6.2 gives NaN).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _reference_hce():
    spec = importlib.util.spec_from_file_location("eval_speed", REPO / "benchmarks" / "eval_speed.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.reference_hce


def _soft(gt: np.ndarray, rng: np.random.Generator, sigma: float = 1.5, noise: float = 20) -> np.ndarray:
    blur = cv2.GaussianBlur(gt, (0, 0), sigma).astype(np.float64)
    blur += rng.normal(0, noise, gt.shape)
    return np.clip(blur, 0, 255).astype(np.uint8)


def edge_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, prediction, GT), deterministic."""
    rng = np.random.default_rng(20240611)
    cases: list[tuple[str, np.ndarray, np.ndarray]] = []
    h, w = 96, 128

    thin = np.zeros((h, w), np.uint8)
    cv2.line(thin, (5, 5), (120, 90), 255, 1)
    cv2.line(thin, (10, 80), (110, 80), 255, 1)
    cv2.line(thin, (64, 2), (64, 93), 255, 2)
    cv2.circle(thin, (30, 40), 12, 255, 1)
    half = thin.copy()
    half[:, 70:] = 0
    cases.append(("thin_lines_half_found", _soft(half, rng, 0.8, 10), thin))
    cases.append(("thin_lines_binary_exact", thin.copy(), thin))
    shifted = np.roll(thin, 1, axis=1)
    cases.append(("thin_lines_shifted_1px", shifted, thin))

    holes = np.zeros((h, w), np.uint8)
    cv2.circle(holes, (64, 48), 40, 255, -1)
    for c, r in (((50, 40), 6), ((78, 55), 9), ((64, 30), 3)):
        cv2.circle(holes, c, r, 0, -1)
    filled = np.zeros_like(holes)
    cv2.circle(filled, (64, 48), 41, 255, -1)
    cases.append(("holes_filled_in_pred", _soft(filled, rng), holes))
    cases.append(("holes_soft_pred", _soft(holes, rng, 2.5, 30), holes))

    blob = np.zeros((h, w), np.uint8)
    cv2.ellipse(blob, (60, 50), (35, 25), 20, 0, 360, 255, -1)
    zero, full = np.zeros((h, w), np.uint8), np.full((h, w), 255, np.uint8)
    cases.append(("empty_gt_soft_pred", _soft(blob, rng), zero))
    cases.append(("empty_gt_zero_pred", zero.copy(), zero))
    cases.append(("empty_gt_full_pred", full.copy(), zero))
    cases.append(("full_gt_full_pred", full.copy(), full))
    cases.append(("full_gt_zero_pred", zero.copy(), full))
    cases.append(("full_gt_soft_pred", _soft(blob, rng), full))
    for c in (0, 37, 128, 129, 255):
        cases.append((f"constant_{c}", np.full((h, w), c, np.uint8), blob))

    # exactly 128 / 129 in the prediction and in an anti-aliased GT
    edge = np.where(blob > 0, 255, 0).astype(np.uint8)
    ring_in = cv2.erode(edge, np.ones((3, 3), np.uint8)) < edge
    ring_out = cv2.dilate(edge, np.ones((5, 5), np.uint8)) > edge
    p = edge.copy()
    p[ring_in] = 129
    p[ring_out] = 128
    p[5:12, 5:12] = 128
    p[80:90, 100:115] = 129
    cases.append(("pred_128_129", p, edge))
    g = edge.copy()
    g[ring_in] = 128
    g[ring_out & (rng.uniform(size=(h, w)) < 0.5)] = 129
    cases.append(("gt_128_129", _soft(edge, rng), g))

    low = (30 + _soft(blob, rng).astype(np.float64) * (170 / 255)).astype(np.uint8)
    cases.append(("low_range_30_200", low, blob))

    specks = edge.copy()
    for _ in range(40):
        y, x = rng.integers(0, h), rng.integers(0, w)
        specks[y, x] = 255 - specks[y, x]
    cv2.rectangle(specks, (100, 5), (120, 25), 255, -1)
    cases.append(("binary_with_specks_and_fp_block", specks, edge))

    border = np.zeros((h, w), np.uint8)
    border[:, :20] = 255
    border[:15, :] = 255
    cases.append(("objects_touching_the_border", _soft(np.roll(border, 3, axis=0), rng), border))

    # predictions of another size (resized to the GT size before scoring)
    small = cv2.resize(_soft(blob, rng), (64, 48), interpolation=cv2.INTER_AREA)
    cases.append(("pred_half_size", small, blob))
    big = cv2.resize(_soft(thin, rng, 1.0, 5), (200, 150), interpolation=cv2.INTER_LINEAR)
    cases.append(("pred_larger_other_aspect", big, thin))

    # S-measure NaN case: foreground only in the last column / last row
    last_col = np.zeros((h, w), np.uint8)
    last_col[10:60, -1] = 255
    cases.append(("gt_last_column_only", _soft(last_col, rng, 1.0, 10), last_col))
    last_row = np.zeros((h, w), np.uint8)
    last_row[-1, 20:90] = 255
    cases.append(("gt_last_row_only", _soft(last_row, rng, 1.0, 10), last_row))

    # nested components (a ring in a hole in a ring...): HCE regions of every depth
    rings = np.zeros((h, w), np.uint8)
    for r in range(44, 0, -6):
        cv2.circle(rings, (64, 48), r, 255 if r // 6 % 2 else 0, -1)
    cases.append(("nested_rings_inverted", 255 - rings, rings))
    cases.append(("nested_rings_shifted", np.roll(rings, 4, axis=1), rings))

    # S-measure blocks with a constant prediction over a constant GT block: the reference scores
    # them 1 or 0 depending on how numpy's mean of the block rounds
    sparse = np.zeros((7, 7), np.uint8)
    for y, x in ((0, 3), (1, 0), (1, 1), (2, 0), (2, 4), (3, 6), (4, 3)):
        sparse[y, x] = 255
    cases.append(("constant_169_small_gt", np.full((7, 7), 169, np.uint8), sparse))
    halves = blob.copy()
    halves[:, 64:] = 0
    pred_halves = _soft(halves, rng)
    pred_halves[:, 64:] = 77
    cases.append(("constant_right_half", pred_halves, halves))

    # a 0/1 GT reads as empty; tiny images
    cases.append(("gt_stored_as_0_1", _soft(blob, rng), (blob > 0).astype(np.uint8)))
    tiny_gt = np.array([[0, 255, 255], [0, 0, 255]], np.uint8)
    cases.append(("tiny_2x3", np.array([[10, 200, 130], [0, 90, 255]], np.uint8), tiny_gt))
    r_gt = ((rng.uniform(size=(48, 64)) < 0.3) * 255).astype(np.uint8)
    cases.append(("random_48x64", rng.integers(0, 256, (48, 64)).astype(np.uint8), r_gt))
    return cases


def reference_values(pred: np.ndarray, gt: np.ndarray, reference_hce) -> tuple[dict, dict]:
    """Per-image values and the pysodmetrics objects' state for one resized pair."""
    import py_sod_metrics as psm

    fm = psm.FmeasureV2(
        metric_handlers={"fm": psm.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3)}
    )
    wfm, mae, sm, em = psm.WeightedFmeasure(), psm.MAE(), psm.Smeasure(), psm.Emeasure()
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the S-measure NaN case warns
        for m in (fm, wfm, mae, sm, em):
            m.step(pred, gt)
    f_curve = fm.get_results()["fm"]["dynamic"][::-1]  # ascending thresholds
    e_res = em.get_results()["em"]
    e_curve = e_res["curve"][::-1]
    s = float(sm.get_results()["sm"])
    parts = reference_hce(pred, gt)
    values = {
        "maxF": float(f_curve.max()),
        "meanF": float(f_curve.mean()),
        "adpF": float(fm.get_results()["fm"]["adaptive"]),
        "wF": float(wfm.get_results()["wfm"]),
        "MAE": float(mae.get_results()["mae"]),
        "S": 0.0 if math.isnan(s) else s,
        "S_pysodmetrics_is_nan": math.isnan(s),
        "E": float(e_curve.mean()),
        "maxE": float(e_curve.max()),
        "adpE": float(e_res["adp"]),
        "HCE": int(sum(parts)),
        "fp_points": int(parts[0]),
        "fp_regions": int(parts[1]),
        "fn_points": int(parts[2]),
        "fn_regions": int(parts[3]),
    }
    return values, {"F": f_curve, "E": e_curve}


def main() -> None:
    reference_hce = _reference_hce()
    cases = edge_cases()
    arrays: dict[str, np.ndarray] = {}
    per_image: dict[str, dict] = {}
    f_curves, e_curves = [], []
    for name, pred, gt in cases:
        arrays[f"{name}__pred"] = pred
        arrays[f"{name}__gt"] = gt
        resized = pred
        if pred.shape != gt.shape:
            resized = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        values, curves = reference_values(resized, gt, reference_hce)
        values["pred_size_hw"] = list(pred.shape)
        per_image[name] = values
        f_curves.append(curves["F"])
        e_curves.append(curves["E"])
    f_mean, e_mean = np.mean(f_curves, axis=0), np.mean(e_curves, axis=0)

    def mean(key: str) -> float:
        return float(np.mean([v[key] for v in per_image.values()]))

    dataset = {
        "maxF": float(f_mean.max()),
        "meanF": float(f_mean.mean()),
        "adpF": mean("adpF"),
        "wF": mean("wF"),
        "MAE": mean("MAE"),
        "S": mean("S"),
        "E": float(e_mean.mean()),
        "maxE": float(e_mean.max()),
        "adpE": mean("adpE"),
        "HCE": mean("HCE"),
        "count": len(cases),
    }
    out = {
        "description": __doc__.split("\n\n")[0],
        "made_with": {
            "pysodmetrics": importlib.metadata.version("pysodmetrics"),
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "python": sys.version.split()[0],
        },
        "order": [name for name, _, _ in cases],
        "dataset": dataset,
        "per_image": per_image,
    }
    np.savez_compressed(HERE / "edge_cases.npz", **arrays)
    (HERE / "edge_cases.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {HERE / 'edge_cases.json'} and edge_cases.npz")


if __name__ == "__main__":
    main()
