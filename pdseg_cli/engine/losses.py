"""Training losses: BCE-with-logits + IoU on every decoder level (multi-scale supervision).

Follows ``docs/model.md``, 'Loss': each level's logits are brought to the mask size
(bilinear, align_corners=False), the loss of a level is BCE + IoU, and the total is the plain sum
over the supervised levels, all weights 1 (as IS-Net and BiRefNet sum their side outputs). The maths
runs in float32 whatever the autocast dtype of the logits, and BCE uses the logits form (BCELoss on
probabilities is rejected under autocast and is less stable).

``--loss structure`` weights both terms per pixel, heavier near the mask's edges (F3Net's
"structure loss", Wei et al., AAAI 2020): the only difference is the pixel weights, so one function,
:func:`bce_iou_loss`, computes both, and :data:`PIXEL_WEIGHTS` is the one entry to add another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

Supervision = Literal["multi", "single"]
Loss = Literal["bce-iou", "structure"]

# Added to both sides of the IoU ratio: a perfect empty prediction of an empty mask scores 0
# instead of 1, and at training sizes (>= 64x64 pixels per image) it is negligible otherwise.
IOU_SMOOTH = 1.0


# The structure loss's window and edge gain, as F3Net publishes them (a 31x31 mean; weights 1..6)
EDGE_WINDOW = 31
EDGE_GAIN = 5.0


def iou_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Soft IoU loss, averaged over the images of the batch (not summed, unlike BiRefNet's).

    Args:
        logits: (B, 1, H, W) float logits.
        target: (B, 1, H, W) float32 in [0, 1].
        weight: (B, 1, H, W) per-pixel weights of both sums, or None for 1 everywhere.

    Returns:
        A float32 scalar: mean over images of 1 - (sum wpg + s) / (sum wp + sum wg - sum wpg + s),
        with p = sigmoid(logits), g = target, w = weight and s = :data:`IOU_SMOOTH`.
    """
    p = torch.sigmoid(logits.float())
    # unweighted, the plain sums: no multiplications by 1 on every training step
    pw, gw = (p, target) if weight is None else (p * weight, target * weight)
    # (B, 1, H, W) -> (B,) sums per image
    inter = (pw * target).flatten(1).sum(1)
    union = pw.flatten(1).sum(1) + gw.flatten(1).sum(1) - inter
    return (1.0 - (inter + IOU_SMOOTH) / (union + IOU_SMOOTH)).mean()


def edge_weight(target: torch.Tensor) -> torch.Tensor:
    """F3Net's pixel weights: ``1 + 5 |mean31(g) - g|``, up to 6 near edges and on thin parts.

    The 31x31 mean leaves out what falls outside the image (a border is not an edge), and is taken
    as two 1-D means, which is exact because the count of an edge window factors too: 62 additions a
    pixel instead of 961 (the direct 31x31 mean, at every level, made a 512x512 training step on 2
    CPU cores 1.6 times as long).

    Args:
        target: (B, 1, H, W) float32 mask in [0, 1].

    Returns:
        (B, 1, H, W) float32 weights in [1, 1 + :data:`EDGE_GAIN`].
    """
    half = EDGE_WINDOW // 2
    mean = F.avg_pool2d(target, (1, EDGE_WINDOW), stride=1, padding=(0, half), count_include_pad=False)
    mean = F.avg_pool2d(mean, (EDGE_WINDOW, 1), stride=1, padding=(half, 0), count_include_pad=False)
    return 1.0 + EDGE_GAIN * (mean - target).abs()


# Per-pixel weights of each loss, from the target: None weighs every pixel alike
PIXEL_WEIGHTS: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "bce-iou": None,
    "structure": edge_weight,
}


def bce_iou_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """BCE-with-logits (mean over pixels) + :func:`iou_loss`, in float32; with ``weight``, both
    weighted per pixel (the BCE a weighted mean over each image's pixels, then over the batch).

    Args:
        logits: (B, 1, h, w) logits of any float dtype; resized bilinearly to the target's size
            when they differ.
        target: (B, 1, H, W) float32 mask in [0, 1].
        weight: (B, 1, H, W) per-pixel weights (e.g. :func:`edge_weight`), or None.

    Returns:
        A float32 scalar.
    """
    logits = logits.float()
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    if weight is None:
        bce = F.binary_cross_entropy_with_logits(logits, target)
    else:
        pixels = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        bce = ((weight * pixels).flatten(1).sum(1) / weight.flatten(1).sum(1)).mean()
    return bce + iou_loss(logits, target, weight)


def supervised_levels(n_levels: int, supervision: Supervision) -> list[int]:
    """Indices of the levels that carry a loss: all of them, or only the final (last) map."""
    if supervision == "multi":
        return list(range(n_levels))
    if supervision == "single":
        return [n_levels - 1]
    raise ValueError(f"supervision must be 'multi' or 'single', got {supervision!r}")


def multi_level_loss(
    levels: Sequence[torch.Tensor],
    target: torch.Tensor,
    supervision: Supervision = "multi",
    loss: Loss = "bce-iou",
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The training loss over the decoder levels.

    Args:
        levels: per-level logits, coarse to fine, each (B, 1, h, w); the last is the final map.
        target: (B, 1, H, W) float32 mask in [0, 1].
        supervision: ``"multi"`` sums the loss of every level; ``"single"`` uses the final map only
            (the paper's single-scale ablation).
        loss: ``"bce-iou"`` (the paper's) or ``"structure"`` (edge-weighted, :func:`edge_weight`);
            the keys of :data:`PIXEL_WEIGHTS`.

    Returns:
        ``(total, per_level)``: the float32 scalar to backpropagate, and every level's loss
        (detached; levels outside the supervision are still measured, for the log).
    """
    if not levels:
        raise ValueError("the model returned no levels")
    if loss not in PIXEL_WEIGHTS:
        raise ValueError(f"loss must be one of {', '.join(PIXEL_WEIGHTS)}, got {loss!r}")
    chosen = set(supervised_levels(len(levels), supervision))
    weigh = PIXEL_WEIGHTS[loss]
    weight = None if weigh is None else weigh(target)  # once: every level has the same target
    per_level: list[torch.Tensor] = []
    total: torch.Tensor | None = None
    for k, logits in enumerate(levels):
        if k in chosen:
            value = bce_iou_loss(logits, target, weight)
            total = value if total is None else total + value
            per_level.append(value.detach())
        else:
            with torch.no_grad():
                per_level.append(bce_iou_loss(logits.detach(), target, weight))
    assert total is not None  # chosen is never empty
    return total, per_level
