"""Time and memory of the foreground colour estimate behind ``--save alpha`` / ``composite``.

``pdseg_cli.data.foreground.estimate_foreground`` runs in bands of rows (about 4 MP each, plus
the rows its blurs reach). This compares it with the same code run as one band over the whole
image, which is what it did before the bands, on a photo-sized gray image whose map is a soft
disc (fractional only at the edge, as a real map is) and on the worst case, a map fractional
everywhere. Peak is the largest total of numpy/OpenCV arrays alive during the call
(``tracemalloc``), the image and map themselves not counted; OpenCV uses one thread.

    python benchmarks/foreground.py                 # 4000x3000 and 8000x6000
    python benchmarks/foreground.py --sizes 12000x9000
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import cv2
import numpy as np

from pdseg_cli.data.foreground import estimate_foreground


def _maps(height: int, width: int) -> dict[str, np.ndarray]:
    disc = np.zeros((height, width), np.uint8)
    cv2.circle(disc, (width // 2, height // 2), min(height, width) * 2 // 5, 255, -1)
    disc = cv2.GaussianBlur(disc, (0, 0), 12)
    everywhere = np.full((height, width), 128, np.uint8)
    return {"soft disc": disc, "all fractional": everywhere}


def _measure(
    image: np.ndarray, byte_map: np.ndarray, band_rows: int | None
) -> tuple[float, float, np.ndarray]:
    tracemalloc.start()
    t0 = time.perf_counter()
    out = estimate_foreground(image, byte_map, band_rows=band_rows)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / 2**30, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["4000x3000", "8000x6000"], help="WxH")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    print("| size | map | one band: s | one band: peak GiB | bands: s | bands: peak GiB | same output |")
    print("| --- | --- | --: | --: | --: | --: | --- |")
    for size in args.sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        image = np.full((height, width, 3), 120, np.uint8)
        image[:, : width // 2] = (30, 160, 60)  # two colours, so the estimate has something to do
        for name, byte_map in _maps(height, width).items():
            whole_s, whole_gib, whole = _measure(image, byte_map, band_rows=height)
            band_s, band_gib, banded = _measure(image, byte_map, band_rows=None)
            same = (
                "yes"
                if np.array_equal(whole, banded)
                else f"max diff {np.abs(whole - banded.astype(int)).max()}"
            )
            del whole, banded
            cells = [f"{width}x{height}", name, f"{whole_s:.1f}", f"{whole_gib:.2f}", f"{band_s:.1f}"]
            print("| " + " | ".join([*cells, f"{band_gib:.2f}", same]) + " |")


if __name__ == "__main__":
    main()
