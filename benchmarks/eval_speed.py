"""How much faster is ``pdseg eval`` than the reference tools, on the same DIS-like masks?

One run, on one set of synthetic 2500x3300 masks with thin structures (wires, a fence, holes):

1. the reference: pysodmetrics 1.6.2 (F, weighted F, MAE, S, E) plus a straightforward DIS HCE
   (written below plainly from the official procedure: scikit-image skeleton, a Python walk over
   every contour pixel, scikit-image labels), one image after another in this process, as the
   reference tools are run;
2. ``pdseg_cli.evaluate`` with an empty GT cache (cold), ``--jobs`` processes;
3. the same again with the cache filled (warm), in this process (the worker pool is reused);
4. the ``pdseg eval`` command in a fresh process, warm cache (interpreter, imports and worker
   start-up included).

It checks that both give the same numbers (1e-6, HCE parts equal) and prints the times and
ratios: wall time (pdseg with ``--jobs`` processes, the reference with one, as it runs), and CPU
seconds of the same work in one process (a figure other load on the machine hardly moves; the
load average is printed too). Needs the dev extra (pysodmetrics, scikit-image).

    python benchmarks/eval_speed.py                # 6 images, the idle cores
    python benchmarks/eval_speed.py --jobs 2 --images 4
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

# --------------------------------------------------------------------------------------------
# synthetic DIS-like pairs


def make_pair(seed: int, h: int = 2500, w: int = 3300) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, GT) uint8: a large holed object, a fence and thin wires; a soft, imperfect map."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((h, w), np.uint8)
    cy, cx = h / 2 + rng.uniform(-0.08, 0.08) * h, w / 2 + rng.uniform(-0.09, 0.09) * w
    ang = np.sort(rng.uniform(0, 2 * np.pi, 24))
    rad = rng.uniform(0.14, 0.36, 24) * min(h, w)
    poly = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
    cv2.fillPoly(gt, [poly], 255)
    for _ in range(12):  # holes
        centre = (int(cx + rng.uniform(-0.15, 0.15) * w), int(cy + rng.uniform(-0.16, 0.16) * h))
        axes = (int(rng.uniform(10, 80)), int(rng.uniform(10, 80)))
        cv2.ellipse(gt, centre, axes, rng.uniform(0, 180), 0, 360, 0, -1)
    x0, y0 = int(rng.uniform(0.03, 0.18) * w), int(rng.uniform(0.04, 0.24) * h)
    for k in range(25):  # a fence of 1-3 px bars
        cv2.line(gt, (x0 + 30 * k, y0), (x0 + 30 * k, y0 + 700), 255, int(rng.integers(1, 4)))
        cv2.line(gt, (x0, y0 + 28 * k), (x0 + 720, y0 + 28 * k), 255, int(rng.integers(1, 4)))
    wires = []
    for _ in range(60):  # thin wires leaving the object
        pts = [(cx + rng.uniform(-400, 400), cy + rng.uniform(-400, 400))]
        for _ in range(int(rng.integers(2, 6))):
            pts.append((pts[-1][0] + rng.uniform(-700, 700), pts[-1][1] + rng.uniform(-600, 600)))
        line = np.array(pts, np.int32).reshape(-1, 1, 2)
        thickness = int(rng.integers(1, 4))
        cv2.polylines(gt, [line], False, 255, thickness)
        wires.append((line, thickness))
    pred = gt.copy()
    for line, thickness in wires:  # a third of the wires missed
        if rng.uniform() < 0.3:
            cv2.polylines(pred, [line], False, 0, thickness + 2)
    for _ in range(15):  # false-positive blobs
        centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        cv2.circle(pred, centre, int(rng.uniform(5, 60)), 255, -1)
    pred = cv2.GaussianBlur(pred, (0, 0), rng.uniform(1.0, 3.0))
    soft = pred.astype(np.float64)
    band = (pred > 10) & (pred < 245)
    soft[band] += rng.normal(0, 25, (h, w))[band]
    return np.clip(soft, 0, 255).astype(np.uint8), gt


# --------------------------------------------------------------------------------------------
# the reference: pysodmetrics + a straightforward DIS HCE


def reference_hce(pred: np.ndarray, gt: np.ndarray, relax: int = 5, epsilon: float = 2.0) -> tuple[int, ...]:
    """(FP points, FP regions, FN points, FN regions) of the official DIS HCE, written plainly.

    The procedure of xuebinqin/DIS ``IS-Net/hce_metric_main.py`` as ``docs/metrics.md``, 'HCE',
    describes it, without any speed-up: raw bytes > 128, scikit-image skeleton of the GT,
    OpenCV morphology with the 3x3 cross, then a Python walk over every contour pixel.
    """
    from skimage.measure import label
    from skimage.morphology import skeletonize

    g = (gt > 128).astype(np.uint8)
    p = (pred > 128).astype(np.uint8)
    skel = skeletonize(g > 0).astype(np.uint8)
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
    tp, fp, fn = g * p, p * (1 - g), g * (1 - p)
    core = cv2.erode(np.logical_or(g, p).astype(np.uint8), cross, iterations=relax)
    fp_r = np.logical_and(fp, core).astype(np.uint8)
    for _ in range(relax):
        fp_r = np.logical_and(cv2.dilate(fp_r, cross), 1 - g).astype(np.uint8)
    fp_r = np.logical_and(fp_r, fp).astype(np.uint8)
    fn_r = np.logical_and(fn, core).astype(np.uint8)
    for _ in range(relax):
        fn_r = np.logical_and(cv2.dilate(fn_r, cross), 1 - p).astype(np.uint8)
    fn_r = np.logical_or(np.logical_and(fn_r, fn), np.logical_and(skel, 1 - tp)).astype(np.uint8)
    near_fp = cv2.dilate(np.logical_or(tp, fn_r).astype(np.uint8), cross)
    near_fn = cv2.dilate((1 - (tp | fp_r | fn_r)).astype(np.uint8), cross)

    def walk(mask: np.ndarray, near: np.ndarray) -> tuple[int, int]:
        contours, _ = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
        labels = label(mask)
        free = [True] * len(np.unique(labels))  # one flag per label value, background first
        free[0] = False
        seen = np.zeros(mask.shape, bool)
        polylines = []
        for c in contours:
            runs: list[list[tuple[int, int]]] = []
            run: list[tuple[int, int]] = []
            for k in range(c.shape[0]):
                x, y = int(c[k, 0, 0]), int(c[k, 0, 1])
                if near[y, x] == 0 or seen[y, x]:
                    if run:
                        runs.append(run)
                        run = []
                    continue
                run.append((x, y))
                seen[y, x] = True
                free[labels[y, x]] = False
            if run:
                runs.append(run)
            if len(runs) > 1:
                (fx, fy), (lx, ly) = runs[0][0], runs[-1][-1]
                if max(abs(fx - lx), abs(fy - ly)) == 1:
                    runs[-1] = runs[-1] + runs[0][::-1]
                    runs = runs[1:]
            polylines.extend(runs)
        points = sum(
            len(cv2.approxPolyDP(np.array(r, np.int32).reshape(-1, 1, 2), epsilon, False)) for r in polylines
        )
        return points, sum(free)

    return (*walk(fp_r, near_fp), *walk(fn_r, near_fn))


def reference_scores(pairs: list[tuple[Path, Path]]) -> tuple[dict[str, float], list[tuple[int, ...]]]:
    """Dataset values from pysodmetrics and per-image HCE parts from ``reference_hce``."""
    import py_sod_metrics as psm

    fm = psm.FmeasureV2(
        metric_handlers={"fm": psm.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3)}
    )
    wfm, mae, sm, em = psm.WeightedFmeasure(), psm.MAE(), psm.Smeasure(), psm.Emeasure()
    parts = []
    for pred_path, gt_path in pairs:
        pred = cv2.imread(str(pred_path), cv2.IMREAD_GRAYSCALE)
        gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)
        if pred.shape != gt.shape:
            pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        for m in (fm, wfm, mae, sm, em):
            m.step(pred, gt)
        parts.append(reference_hce(pred, gt))
    f = fm.get_results()["fm"]
    e = em.get_results()["em"]
    values = {
        "maxF": float(f["dynamic"].max()),
        "wF": float(wfm.get_results()["wfm"]),
        "MAE": float(mae.get_results()["mae"]),
        "S": float(sm.get_results()["sm"]),
        "E": float(e["curve"].mean()),
        "HCE": float(np.mean([sum(p) for p in parts])),
    }
    return values, parts


# --------------------------------------------------------------------------------------------


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--height", type=int, default=2500)
    parser.add_argument("--width", type=int, default=3300)
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="pdseg worker processes (0: the idle cores, as pdseg eval's default)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the masks and cache here")
    args = parser.parse_args()

    from pdseg_cli.engine.evaluate import evaluate, resolve_jobs

    jobs = resolve_jobs(args.jobs)
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="pdseg-bench-")
        work = Path(tmp.name)
    else:
        work = args.workdir
    (work / "gt").mkdir(parents=True, exist_ok=True)
    (work / "pred").mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(args.images):
        pred, gt = make_pair(args.seed + i, args.height, args.width)
        cv2.imwrite(str(work / "gt" / f"img{i:02d}.png"), gt)
        cv2.imwrite(str(work / "pred" / f"img{i:02d}.png"), pred)
        pairs.append((work / "pred" / f"img{i:02d}.png", work / "gt" / f"img{i:02d}.png"))
    cache = work / "cache"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{args.images} pairs of {args.width}x{args.height}, {cpus} cores available, pdseg --jobs {jobs}")

    print(f"load average before: {_load()}")

    t, c = time.perf_counter(), time.process_time()
    ref_values, ref_parts = reference_scores(pairs)
    t_ref, c_ref = time.perf_counter() - t, time.process_time() - c
    print(
        f"reference (pysodmetrics + straightforward DIS HCE), 1 process: {t_ref:7.1f} s  (CPU {c_ref:.1f} s)"
    )

    shutil.rmtree(cache, ignore_errors=True)
    t = time.perf_counter()
    cold = evaluate(work / "pred", work / "gt", jobs=jobs, cache_dir=cache)
    t_cold = time.perf_counter() - t
    print(f"pdseg evaluate --jobs {jobs}, cold cache (pool start included):   {t_cold:7.1f} s")
    t = time.perf_counter()
    warm = evaluate(work / "pred", work / "gt", jobs=jobs, cache_dir=cache)
    t_warm = time.perf_counter() - t
    print(f"pdseg evaluate --jobs {jobs}, warm cache:                         {t_warm:7.1f} s")
    cmd = [sys.executable, "-m", "pdseg_cli", "eval", "--split", str(work), "--pred", str(work / "pred")]
    cmd += ["--cache-dir", str(cache), "--jobs", str(jobs)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    t_cli = time.perf_counter() - t
    print(f"pdseg eval command --jobs {jobs}, warm cache, fresh process:      {t_cli:7.1f} s")

    # CPU seconds of the same work in this process (one worker): independent of other load
    shutil.rmtree(cache, ignore_errors=True)
    c = time.process_time()
    evaluate(work / "pred", work / "gt", jobs=1, cache_dir=cache)
    c_cold = time.process_time() - c
    c = time.process_time()
    evaluate(work / "pred", work / "gt", jobs=1, cache_dir=cache)
    c_warm = time.process_time() - c
    print(f"pdseg CPU seconds (--jobs 1): cold {c_cold:.1f} s, warm {c_warm:.1f} s")
    print(f"load average after: {_load()}")

    for report in (cold, warm):
        values = report.splits[0].scores.as_dict()
        for key, ref in ref_values.items():
            if abs(values[key] - ref) > 1e-6:
                raise SystemExit(f"MISMATCH {key}: pdseg {values[key]!r} reference {ref!r}")
        got = [dataclasses.astuple(r.scores.hce) for r in report.splits[0].images]
        if got != ref_parts:
            raise SystemExit(f"MISMATCH HCE parts: pdseg {got} reference {ref_parts}")
    print("numbers: identical within 1e-6, HCE parts equal per image")
    print(
        f"speed-up, wall time ({jobs} processes vs 1): cold {t_ref / t_cold:.1f}x, "
        f"warm {t_ref / t_warm:.1f}x, warm command in a fresh process {t_ref / t_cli:.1f}x"
    )
    print(f"speed-up, CPU seconds (work done): cold {c_ref / c_cold:.1f}x, warm {c_ref / c_warm:.1f}x")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
