"""The skeleton HCE needs, bit-identical to ``skimage.morphology.skeletonize`` (2D), but faster.

scikit-image thins a 2D mask with a parallel two-subiteration scheme: every pass reads the
3x3 neighbourhood of each foreground pixel, looks its 8-bit code up in a fixed table, and removes
all matching pixels at once; the first subiteration removes one class of codes, the second
another, and it repeats until a full iteration removes nothing. Each iteration sweeps the whole
image, and a large solid object takes hundreds of iterations.

Here only the pixels whose outcome can change are examined: a pixel surrounded by foreground
(code 255) is never removed, and a pixel that was examined and kept stays kept until one of its
neighbours is removed. The removal sets of every subiteration are the same as scikit-image's,
so the result is the same bit for bit (the tests compare the two).

The two code sets below are scikit-image's thinning table (``skimage/morphology/
_skeletonize_various_cy.pyx``, BSD-3-Clause, originally from CellProfiler), written as the codes
each subiteration removes. It is not the textbook Zhang-Suen rule (25 of 256 entries differ,
see ``docs/metrics.md``, 'HCE'), which is why it is data here and not derived.
"""

from __future__ import annotations

import cv2
import numpy as np

# Neighbour bits: 1 NW, 2 N, 4 NE, 8 E, 16 SE, 32 S, 64 SW, 128 W.
_REMOVED_FIRST = (
    3, 6, 7, 10, 11, 12, 14, 15, 28, 30, 31, 40, 60, 112, 120, 124, 130, 131, 134, 135, 143, 159,
    160, 161, 193, 194, 195, 198, 199, 207, 225, 227, 231, 240, 241, 243,
)  # fmt: skip
_REMOVED_SECOND = (
    7, 10, 15, 24, 26, 28, 30, 31, 40, 56, 60, 62, 63, 96, 104, 108, 112, 120, 124, 126, 130, 135,
    160, 176, 192, 193, 195, 199, 224, 225, 240, 241, 248, 249, 252,
)  # fmt: skip


def _table(codes: tuple[int, ...]) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[list(codes)] = True
    return table


_TABLES = (_table(_REMOVED_FIRST), _table(_REMOVED_SECOND))


def skeletonize(mask: np.ndarray) -> np.ndarray:
    """Thin a binary mask to a one-pixel-wide skeleton, exactly as scikit-image's 2D ``skeletonize``.

    Args:
        mask: (H, W) array; nonzero is foreground.

    Returns:
        (H, W) bool skeleton.
    """
    if mask.ndim != 2:
        raise ValueError(f"skeletonize expects a 2D mask, got shape {mask.shape}")
    h, w = mask.shape
    stride = w + 2
    # zero frame of one pixel: the outside is background, and no neighbour index leaves the array
    img = np.zeros((h + 2, w + 2), dtype=np.uint8)
    img[1:-1, 1:-1] = mask != 0
    flat = img.reshape(-1)
    # neighbour offsets in bit order (NW, N, NE, E, SE, S, SW, W)
    offsets = np.array(
        [-stride - 1, -stride, -stride + 1, 1, stride + 1, stride, stride - 1, -1], dtype=np.int64
    )
    weights = (1 << np.arange(8)).astype(np.uint8)

    # candidates: foreground pixels with at least one background 8-neighbour
    inner = cv2.erode(img, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    border = np.flatnonzero(img > inner)
    pending = [border, border]  # per subiteration: pixels whose outcome may have changed
    stamp = np.zeros(flat.size, dtype=np.int32)

    def distinct(values: np.ndarray) -> np.ndarray:
        """Drop repeated indices in O(n): each index keeps its last position (order is irrelevant)."""
        if values.size < 2:
            return values
        pos = np.arange(values.size, dtype=np.int32)
        stamp[values] = pos
        return values[stamp[values] == pos]

    while True:
        removed_any = False
        for sub in (0, 1):
            cand = pending[sub]
            if cand.size:
                cand = cand[flat[cand] != 0]
            if cand.size == 0:
                pending[sub] = cand
                continue
            code = np.zeros(cand.size, dtype=np.uint8)
            for off, bit in zip(offsets, weights, strict=True):
                code |= flat[cand + off] * bit
            removed = cand[_TABLES[sub][code]]
            if removed.size == 0:
                pending[sub] = removed  # everything examined was kept, nothing changed
                continue
            removed_any = True
            flat[removed] = 0
            touched = (removed[:, None] + offsets[None, :]).reshape(-1)
            touched = distinct(touched[flat[touched] != 0])
            pending[sub] = touched
            pending[1 - sub] = distinct(np.concatenate((pending[1 - sub], touched)))
        if not removed_any:
            break
    return img[1:-1, 1:-1].astype(bool)
