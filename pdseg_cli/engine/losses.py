"""Training losses: BCE-with-logits + IoU on every decoder level (multi-scale supervision).

Follows ``docs/model.md``, 'Loss': each level's logits are brought to the mask size
(bilinear, align_corners=False), the loss of a level is BCE + IoU, and the total is the plain sum
over the supervised levels, all weights 1 (as IS-Net and BiRefNet sum their side outputs). The maths
runs in float32 whatever the autocast dtype of the logits, and BCE uses the logits form (BCELoss on
probabilities is rejected under autocast and is less stable).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

Supervision = Literal["multi", "single"]

# Added to both sides of the IoU ratio: a perfect empty prediction of an empty mask scores 0
# instead of 1, and at training sizes (>= 64x64 pixels per image) it is negligible otherwise.
IOU_SMOOTH = 1.0


def iou_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft IoU loss, averaged over the images of the batch (not summed, unlike BiRefNet's).

    Args:
        logits: (B, 1, H, W) float logits.
        target: (B, 1, H, W) float32 in [0, 1].

    Returns:
        A float32 scalar: mean over images of 1 - (sum pg + s) / (sum p + sum g - sum pg + s),
        with p = sigmoid(logits), g = target and s = :data:`IOU_SMOOTH`.
    """
    p = torch.sigmoid(logits.float())
    # (B, 1, H, W) -> (B,) sums per image
    inter = (p * target).flatten(1).sum(1)
    union = p.flatten(1).sum(1) + target.flatten(1).sum(1) - inter
    return (1.0 - (inter + IOU_SMOOTH) / (union + IOU_SMOOTH)).mean()


def bce_iou_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits (mean over pixels) + :func:`iou_loss`, in float32.

    Args:
        logits: (B, 1, h, w) logits of any float dtype; resized bilinearly to the target's size
            when they differ.
        target: (B, 1, H, W) float32 mask in [0, 1].

    Returns:
        A float32 scalar.
    """
    logits = logits.float()
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.binary_cross_entropy_with_logits(logits, target) + iou_loss(logits, target)


def supervised_levels(n_levels: int, supervision: Supervision) -> list[int]:
    """Indices of the levels that carry a loss: all of them, or only the final (last) map."""
    if supervision == "multi":
        return list(range(n_levels))
    if supervision == "single":
        return [n_levels - 1]
    raise ValueError(f"supervision must be 'multi' or 'single', got {supervision!r}")


def multi_level_loss(
    levels: Sequence[torch.Tensor], target: torch.Tensor, supervision: Supervision = "multi"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The training loss over the decoder levels.

    Args:
        levels: per-level logits, coarse to fine, each (B, 1, h, w); the last is the final map.
        target: (B, 1, H, W) float32 mask in [0, 1].
        supervision: ``"multi"`` sums the loss of every level; ``"single"`` uses the final map only
            (the paper's single-scale ablation).

    Returns:
        ``(total, per_level)``: the float32 scalar to backpropagate, and every level's loss
        (detached; levels outside the supervision are still measured, for the log).
    """
    if not levels:
        raise ValueError("the model returned no levels")
    chosen = set(supervised_levels(len(levels), supervision))
    per_level: list[torch.Tensor] = []
    total: torch.Tensor | None = None
    for k, logits in enumerate(levels):
        if k in chosen:
            loss = bce_iou_loss(logits, target)
            total = loss if total is None else total + loss
            per_level.append(loss.detach())
        else:
            with torch.no_grad():
                per_level.append(bce_iou_loss(logits.detach(), target))
    assert total is not None  # chosen is never empty
    return total, per_level
