"""Human Correction Efforts HCE_gamma (Qin, Dai, Hu, Fan, Shao, Van Gool, "Highly Accurate
Dichotomous Image Segmentation", ECCV 2022), with relax gamma = 5 and RDP epsilon = 2.

This follows the official DIS procedure (xuebinqin/DIS ``IS-Net/hce_metric_main.py``) as
``docs/metrics.md``, 'HCE', specifies it, not pysodmetrics' ``HumanCorrectionEffortMeasure``
(which thresholds the normalised map and counts a whole-image error mask as one region):

1. ``G = gt > 128`` and ``P = pred > 128`` on the raw bytes (no normalisation), at GT size;
   ``K`` is scikit-image's skeleton of ``G``.
2. ``core`` = ``G | P`` eroded 5 times by the 3x3 cross (OpenCV borders: nothing erodes from
   the frame). False positives seeded inside the core grow back 5 steps through the GT
   background; false negatives likewise through the predicted background, plus every missed
   skeleton pixel (``K & ~TP``). Specks and slivers up to 5 pixels wide are free.
3. The cost of each relaxed error mask is the number of RDP vertices of its boundary runs that
   touch the neighbouring correct region (the *points*), plus one per 8-connected error region
   whose boundary touches none (the *regions*), with the official code's walking rules: the
   first visit of a boundary pixel counts, a contour's first run joins its last run reversed
   when the two ends are 8-neighbours, and a mask covering the whole image counts 0 regions.

The boundary walk is vectorised over all contour pixels at once; only the RDP call runs per
boundary run. The result is the four integer parts, equal to the official function's.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pdseg_cli.metrics.common import GT_THRESHOLD, check_pair
from pdseg_cli.metrics.skeleton import skeletonize

RELAX = 5  # gamma: error slivers up to this many pixels wide are not charged
EPSILON = 2.0  # RDP tolerance in pixels for the boundary polylines
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


@dataclass(frozen=True)
class HCEParts:
    """The four integer parts of one image's HCE."""

    fp_points: int
    fp_regions: int
    fn_points: int
    fn_regions: int

    @property
    def total(self) -> int:
        """HCE of the image: the sum of the four parts."""
        return self.fp_points + self.fp_regions + self.fn_points + self.fn_regions


def hce(pred: np.ndarray, gt: np.ndarray, skeleton: np.ndarray | None = None) -> HCEParts:
    """HCE of one uint8 pair at GT resolution.

    Args:
        pred: (H, W) uint8 prediction, already at the GT size (raw bytes, > 128 is foreground).
        gt: (H, W) uint8 GT.
        skeleton: precomputed ``skeletonize(gt > 128)`` (bool), or None to compute it here.
    """
    check_pair(pred, gt)
    fg = gt > GT_THRESHOLD
    if skeleton is None:
        skeleton = skeletonize(fg)
    return hce_from_masks(fg, pred > GT_THRESHOLD, skeleton)


def hce_from_masks(fg: np.ndarray, pos: np.ndarray, skeleton: np.ndarray) -> HCEParts:
    """HCE from the binary GT ``fg``, the binary prediction ``pos`` and the GT skeleton (all bool)."""
    g = fg.view(np.uint8)
    p = pos.view(np.uint8)
    k = skeleton.view(np.uint8)
    tp = g & p
    fp = p & ~g & 1
    fn = g & ~p & 1
    core: np.ndarray = cv2.erode(g | p, _CROSS, iterations=RELAX)  # uint8 (cv2's stubs: any dtype)

    fp_relaxed = _grow_back(fp & core, 1 - g) & fp
    fn_relaxed = (_grow_back(fn & core, 1 - p) & fn) | (k & ~tp & 1)

    fp_points, fp_regions = _cost(fp_relaxed, cv2.dilate(tp | fn_relaxed, _CROSS))
    fn_points, fn_regions = _cost(fn_relaxed, cv2.dilate(1 - (tp | fp_relaxed | fn_relaxed), _CROSS))
    return HCEParts(fp_points, fp_regions, fn_points, fn_regions)


def _grow_back(seeds: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Dilate ``seeds`` by the cross ``RELAX`` times, keeping only ``allowed`` pixels after each step."""
    for _ in range(RELAX):
        seeds = cv2.dilate(seeds, _CROSS) & allowed
    return seeds


def _cost(mask: np.ndarray, near: np.ndarray) -> tuple[int, int]:
    """(points, independent regions) of one relaxed error mask.

    Args:
        mask: (H, W) uint8 0/1 relaxed error mask.
        near: (H, W) uint8 0/1 neighbour mask: boundary pixels there are usable.
    """
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return 0, 0
    w = mask.shape[1]
    lengths = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
    pts = np.concatenate(contours).reshape(-1, 2)  # (x, y), contour after contour
    flat = pts[:, 1].astype(np.int64) * w + pts[:, 0]

    # usable: the neighbour mask is set, and this is the pixel's first visit in the whole walk
    first = np.zeros(flat.size, dtype=bool)
    first[np.unique(flat, return_index=True)[1]] = True
    usable = first & (near.reshape(-1)[flat] != 0)

    # maximal runs of usable pixels within each contour
    ends = np.cumsum(lengths)
    starts = ends - lengths
    before = np.zeros_like(usable)
    before[1:] = usable[:-1]
    before[starts] = False
    after = np.zeros_like(usable)
    after[:-1] = usable[1:]
    after[ends - 1] = False
    run_first = np.flatnonzero(usable & ~before)
    run_last = np.flatnonzero(usable & ~after)
    run_contour = np.searchsorted(ends, run_first, side="right")

    points = 0
    i = 0
    n_runs = run_first.size
    while i < n_runs:
        j = i
        while j + 1 < n_runs and run_contour[j + 1] == run_contour[i]:
            j += 1
        # runs i..j belong to one contour; join the first (reversed) onto the last if they touch
        joined = False
        if j > i:
            a, b = pts[run_first[i]], pts[run_last[j]]
            joined = int(max(abs(a[0] - b[0]), abs(a[1] - b[1]))) == 1
        for r in range(i + 1 if joined else i, j + 1):
            run = pts[run_first[r] : run_last[r] + 1]
            if joined and r == j:
                run = np.concatenate((run, pts[run_first[i] : run_last[i] + 1][::-1]))
            points += _rdp_vertices(run)
        i = j + 1

    # independent regions: 8-connected components of the mask with no usable boundary pixel. Each
    # component has one outer contour (even depth in the tree); a hole's contour (odd depth) runs
    # over the pixels of the component around it, its parent.
    if not (mask == 0).any():
        return points, 0  # the official code counts no region for a mask covering the whole image
    parent = hierarchy[0][:, 3]
    depth = np.full(len(contours), -1, dtype=np.int64)
    for c in range(len(contours)):
        chain = []
        up = c
        while up >= 0 and depth[up] < 0:  # climb to a contour of known depth, or past the root
            chain.append(up)
            up = parent[up]
        d = depth[up] + 1 if up >= 0 else 0
        for k in reversed(chain):
            depth[k] = d
            d += 1
    owner = np.where(depth % 2 == 0, np.arange(len(contours)), parent)
    touched = np.unique(owner[np.searchsorted(ends, np.flatnonzero(usable), side="right")])
    regions = int(np.count_nonzero(depth % 2 == 0)) - touched.size
    return points, regions


def _rdp_vertices(run: np.ndarray) -> int:
    """Vertices left by ``cv2.approxPolyDP(run, EPSILON, closed=False)`` (1 or 2 points stay as they are)."""
    if len(run) <= 2:
        return len(run)
    return len(cv2.approxPolyDP(np.ascontiguousarray(run, dtype=np.int32).reshape(-1, 1, 2), EPSILON, False))
