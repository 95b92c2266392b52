"""Everything the metrics need from a GT alone, computed once per GT and cacheable.

The skeleton (HCE) and the nearest-foreground choice of the band pixels (weighted F) cost most of
the time of a cold evaluation and depend only on the GT, so ``GTPrep`` holds them in a compact
form that ``pdseg_cli.metrics.cache`` stores on disk.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from pdseg_cli.metrics.common import foreground
from pdseg_cli.metrics.skeleton import skeletonize
from pdseg_cli.metrics.stats import centroid_split
from pdseg_cli.metrics.wfmeasure import band_pixels, nearest_codes

# Bump when the content or meaning of a GTPrep changes: old cache entries are then ignored.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class GTPrep:
    """GT-only data for one GT.

    Attributes:
        shape: (H, W).
        n_fg: foreground pixels (``gt > 128``).
        split: (row, column) where the S-measure's region term splits the image.
        skeleton: flat indices (C order, int64) of the GT skeleton's pixels.
        nearest_codes: per band pixel (``wfmeasure.band_pixels`` order), the code of its
            nearest foreground pixel (``wfmeasure.nearest_codes``).
    """

    shape: tuple[int, int]
    n_fg: int
    split: tuple[int, int]
    skeleton: np.ndarray
    nearest_codes: np.ndarray

    @classmethod
    def from_gt(cls, gt: np.ndarray, fg: np.ndarray | None = None) -> GTPrep:
        """Compute everything from a (H, W) uint8 GT (``fg`` = ``gt > 128`` if already known)."""
        if fg is None:
            fg = foreground(gt)
        h, w = fg.shape
        rows = np.count_nonzero(fg, axis=1)
        cols = np.count_nonzero(fg, axis=0)
        n_fg = int(rows.sum())
        split = centroid_split(
            int(np.dot(rows, np.arange(h, dtype=np.int64))),
            int(np.dot(cols, np.arange(w, dtype=np.int64))),
            n_fg,
            (h, w),
        )
        skeleton = np.flatnonzero(skeletonize(fg)) if n_fg else np.zeros(0, np.int64)
        codes = nearest_codes(fg, band_pixels(fg)) if n_fg else np.zeros(0, np.uint8)
        return cls((h, w), n_fg, split, skeleton, codes)

    def skeleton_mask(self) -> np.ndarray:
        """The skeleton as an (H, W) bool mask."""
        mask = np.zeros(self.shape[0] * self.shape[1], dtype=bool)
        mask[self.skeleton] = True
        return mask.reshape(self.shape)

    def to_bytes(self) -> bytes:
        """Serialise compactly (zlib-compressed npz; skeleton indices delta-coded)."""
        buf = io.BytesIO()
        meta = np.array([FORMAT_VERSION, *self.shape, self.n_fg, *self.split], dtype=np.int64)
        np.savez_compressed(
            buf,
            meta=meta,
            skeleton_steps=np.diff(self.skeleton, prepend=0).astype(np.uint32),
            nearest_codes=self.nearest_codes,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> GTPrep:
        """Inverse of ``to_bytes``; raises ValueError on a foreign or damaged payload."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                meta = z["meta"]
                steps = z["skeleton_steps"]
                codes = z["nearest_codes"]
        except Exception as exc:  # zipfile, zlib and numpy raise many kinds
            raise ValueError(f"damaged GT cache entry: {exc}") from None
        if meta.shape != (6,) or int(meta[0]) != FORMAT_VERSION:
            raise ValueError("GT cache entry of another format version")
        _, h, w, n_fg, cy, cx = (int(v) for v in meta)
        skeleton = np.cumsum(steps, dtype=np.int64)
        if skeleton.size and (skeleton[-1] >= h * w):
            raise ValueError("damaged GT cache entry: skeleton outside the image")
        return cls((h, w), n_fg, (cy, cx), skeleton, codes.astype(np.uint8, copy=False))
