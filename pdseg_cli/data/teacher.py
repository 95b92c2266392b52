"""Teacher maps as training targets, on arrays alone: how sure a map is (``--max-unsure``), and the
blend of a GT mask and a teacher map (``--teacher-weight``); and the file hash that keys caches and
records. Running the teacher and caching its maps is :mod:`pdseg_cli.engine.teacher`'s (it needs a
model), so this module, which the training sample cache imports, stays free of the engine."""

from __future__ import annotations

import hashlib
import os

import cv2
import numpy as np

_CHUNK = 1 << 20

# How sure a teacher map is (pdseg train --max-unsure), judged on the map alone, as self-training
# keeps only confident pseudo-labels: the map is area-averaged to JUDGE_SIDE x JUDGE_SIDE, so a few
# soft edge pixels of a large photo weigh what they cover; a value strictly between UNSURE_LOW and
# UNSURE_HIGH is unsure, one above 127 foreground.
JUDGE_SIDE = 128
UNSURE_LOW, UNSURE_HIGH = 25, 230
MIN_FOREGROUND = 0.01  # under this share of foreground, the teacher found no object
NO_OBJECT, UNSURE = "no object", "unsure"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def map_doubt(teacher_map: np.ndarray, max_unsure: float) -> str | None:
    """Why a teacher map is too doubtful to train on, or None when it is confident.

    Args:
        teacher_map: (H, W) uint8 map, 0..255.
        max_unsure: the largest share of unsure pixels a kept map may have (0..1).

    Returns:
        :data:`NO_OBJECT` when under :data:`MIN_FOREGROUND` of the map is foreground, else
        :data:`UNSURE` when more than ``max_unsure`` of it is unsure, else None.
    """
    small = cv2.resize(teacher_map, (JUDGE_SIDE, JUDGE_SIDE), interpolation=cv2.INTER_AREA)
    if float(np.mean(small > 127)) < MIN_FOREGROUND:
        return NO_OBJECT
    unsure = float(np.mean((small > UNSURE_LOW) & (small < UNSURE_HIGH)))
    return UNSURE if unsure > max_unsure else None


def harden_map(teacher_map: np.ndarray) -> np.ndarray:
    """A teacher map with its nearly sure pixels made sure (``pdseg train --harden-teacher``).

    Some teachers' maps never quite reach 0 or 255 and are faintly grey over wide areas (sky, flat
    background); this takes the grey out where the map is sure. Pixels the map is sure
    of by :func:`map_doubt`'s thresholds become 0 (at most :data:`UNSURE_LOW`) or 255 (at least
    :data:`UNSURE_HIGH`); the unsure ones between, the object's soft edges, stay as they are.

    Args:
        teacher_map: (H, W) uint8 map, 0..255.

    Returns:
        A new (H, W) uint8 map.
    """
    out = teacher_map.copy()
    out[teacher_map <= UNSURE_LOW] = 0
    out[teacher_map >= UNSURE_HIGH] = 255
    return out


def blend_targets(gt: np.ndarray | None, teacher: np.ndarray | None, weight: float) -> np.ndarray:
    """The training target of one image, as uint8 0..255 (soft).

    Args:
        gt: the GT mask, or None when the image has none.
        teacher: the teacher's map, or None when there is no teacher.
        weight: the teacher's share where both exist (0: the GT alone, 1: the teacher alone).

    Returns:
        The GT where there is no teacher map, the teacher's map where there is no GT, else
        ``round((1 - weight) * gt + weight * teacher)``.

    Raises:
        ValueError: neither is given, or their shapes differ.
    """
    if gt is None and teacher is None:
        raise ValueError("an image needs a GT mask or a teacher map")
    if teacher is None or (gt is not None and weight <= 0.0):
        return gt  # type: ignore[return-value]
    if gt is None or weight >= 1.0:
        return teacher
    if gt.shape != teacher.shape:
        raise ValueError(f"GT {gt.shape} and teacher map {teacher.shape} differ in size")
    mixed = (1.0 - weight) * gt.astype(np.float32) + weight * teacher.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
