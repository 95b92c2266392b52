"""The fast paths equal the library functions the references call, bit for bit.

* ``pdseg_cli.metrics.skeleton.skeletonize`` vs ``skimage.morphology.skeletonize``;
* the band's nearest-foreground choice vs ``scipy.ndimage.distance_transform_edt`` indices;
* the squared distances vs scipy's distances;
* HCE vs the plain transcription of the official procedure in ``benchmarks/eval_speed.py``;
* the GT cache payload round trip and file reading semantics.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers import benchmark_script
from scipy import ndimage
from skimage.morphology import skeletonize as sk_skeletonize

from pdseg_cli.errors import InputError
from pdseg_cli.metrics.gtprep import GTPrep
from pdseg_cli.metrics.hce import hce
from pdseg_cli.metrics.reading import read_gray_u8, read_mask_file
from pdseg_cli.metrics.skeleton import skeletonize
from pdseg_cli.metrics.wfmeasure import band_pixels, nearest_codes, nearest_index, squared_distances


def _random_masks(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        kind = i % 4
        if kind == 0:
            m = rng.uniform(size=(h, w)) < rng.uniform(0.05, 0.8)
        elif kind == 1:
            m8 = np.zeros((h, w), np.uint8)
            for _ in range(int(rng.integers(1, 6))):
                p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
                p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
                cv2.line(m8, p0, p1, 1, int(rng.integers(1, 4)))
            m = m8 > 0
        elif kind == 2:
            m8 = np.zeros((h, w), np.uint8)
            cv2.circle(
                m8, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 50)), 1, -1
            )
            m = m8 > 0
        else:
            small = (rng.uniform(size=(max(h // 7, 1), max(w // 7, 1))) < 0.45).astype(np.uint8)
            m = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST) > 0
        masks.append(m)
    return masks


def test_skeleton_equals_scikit_image() -> None:
    masks = _random_masks(160, seed=1)
    full = np.ones((40, 50), bool)
    ring = np.zeros((60, 60), np.uint8)
    cv2.circle(ring, (30, 30), 25, 1, 9)
    masks += [full, ring > 0, np.zeros((5, 5), bool), np.ones((1, 7), bool)]
    for m in masks:
        np.testing.assert_array_equal(skeletonize(m), sk_skeletonize(m))


def test_skeleton_equals_scikit_image_on_real_gts(shared_data) -> None:
    for path in sorted((shared_data / "davis16-eval" / "gt").glob("*.png"))[::4]:
        fg = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 128
        np.testing.assert_array_equal(skeletonize(fg), sk_skeletonize(fg), err_msg=path.name)


def test_nearest_foreground_and_distances_equal_scipy() -> None:
    for fg in _random_masks(120, seed=2):
        if not fg.any():
            continue
        dist, (rows, cols) = ndimage.distance_transform_edt(~fg, return_indices=True)
        band = band_pixels(fg)
        got = nearest_index(band, nearest_codes(fg, band), fg.shape[1])
        want = (rows * fg.shape[1] + cols).reshape(-1)[band]
        np.testing.assert_array_equal(got, want)
        want_d2 = np.minimum(np.rint(dist**2), 65535).astype(np.uint16)
        np.testing.assert_array_equal(squared_distances(fg), want_d2)


def test_gtprep_round_trip_and_damage() -> None:
    gt = np.zeros((50, 70), np.uint8)
    cv2.circle(gt, (30, 25), 15, 255, -1)
    cv2.line(gt, (0, 49), (69, 0), 255, 1)
    prep = GTPrep.from_gt(gt)
    back = GTPrep.from_bytes(prep.to_bytes())
    assert back.shape == prep.shape and back.n_fg == prep.n_fg and back.split == prep.split
    np.testing.assert_array_equal(back.skeleton, prep.skeleton)
    np.testing.assert_array_equal(back.nearest_codes, prep.nearest_codes)
    with pytest.raises(ValueError):
        GTPrep.from_bytes(b"not an npz")
    with pytest.raises(ValueError):
        GTPrep.from_bytes(prep.to_bytes()[:40])


def test_reading_follows_imread_grayscale(tmp_path) -> None:
    values16 = np.array([[383, 32895, 65535, 255]], np.uint16)
    cv2.imwrite(str(tmp_path / "m16.png"), values16)
    f = read_mask_file(tmp_path / "m16.png")
    assert f.sixteen_bit and f.array.tolist() == [[1, 128, 255, 0]]  # the high byte, as cv2
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 2] = 200  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb)
    f = read_mask_file(tmp_path / "rgb.png")
    assert f.colour == "RGB"
    np.testing.assert_array_equal(f.array, cv2.imread(str(tmp_path / "rgb.png"), cv2.IMREAD_GRAYSCALE))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InputError, match="bad.png"):
        read_gray_u8(tmp_path / "bad.png")
    with pytest.raises(InputError, match="no such file"):
        read_gray_u8(tmp_path / "absent.png")


def test_hce_equals_the_straightforward_procedure_on_random_pairs() -> None:
    # the benchmark's plain transcription of the official procedure (per-pixel walk, skimage labels)
    reference_hce = benchmark_script("eval_speed").reference_hce
    rng = np.random.default_rng(11)
    for t in range(60):
        h, w = (int(v) for v in rng.integers(20, 120, 2))
        gt = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(gt, centre, int(rng.integers(2, 30)), 255, -1)
        for _ in range(int(rng.integers(0, 5))):
            p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(gt, p0, p1, 255, int(rng.integers(1, 4)))
        kind = t % 4
        if kind == 0:
            pred = cv2.dilate(gt, np.ones((3, 3), np.uint8), iterations=int(rng.integers(1, 6)))
        elif kind == 1:
            pred = np.roll(gt, int(rng.integers(-6, 7)), axis=int(rng.integers(0, 2)))
        elif kind == 2:
            noise = rng.integers(-80, 80, gt.shape)
            pred = np.clip(cv2.GaussianBlur(gt, (0, 0), 1.5).astype(int) + noise, 0, 255).astype(np.uint8)
        else:
            pred = gt.copy()
            for _ in range(int(rng.integers(1, 8))):
                centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
                cv2.circle(pred, centre, int(rng.integers(1, 12)), int(rng.choice([0, 128, 129, 255])), -1)
        parts = hce(pred, gt)
        got = (parts.fp_points, parts.fp_regions, parts.fn_points, parts.fn_regions)
        assert got == reference_hce(pred, gt), t
