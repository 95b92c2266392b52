"""Validation during training: the DIS metrics of the EMA weights, scored by ``pdseg eval``'s code
(``docs/metrics.md``) on floor(255 p) maps at the training size against the GTs resized to it (not
at each GT's own size, as ``pdseg eval`` scores: a cheaper number for following a run and choosing
``best.pt``, close to but not the same as ``pdseg eval --split`` of the same weights), and a warning
while the final map cannot reach a confident foreground."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from pdseg_cli import runtime
from pdseg_cli.data import transforms
from pdseg_cli.engine.evaluate import evaluate_arrays
from pdseg_cli.engine.train_context import RunContext
from pdseg_cli.engine.train_folder import cache_root
from pdseg_cli.metrics.table import TABLE_KEYS
from pdseg_cli.model.pdseg import final_map_ceiling

# validation columns of results.csv: the DIS table's metrics, named from pdseg eval's keys
VAL_KEYS = TABLE_KEYS
VAL_COLUMNS = tuple(f"val_{key.lower()}" for key in VAL_KEYS)
CONFIDENT = 254.0 / 255.0  # a final map that cannot reach this probability never writes byte 254+


@torch.no_grad()
def validate(
    ctx: RunContext,
    model: nn.Module,
    loader: torch.utils.data.DataLoader | None,
    n_images: int,
    normalization: Mapping[str, Any],
    epoch: int,
) -> dict[str, float]:
    """The DIS metrics of ``model`` (the EMA weights) on the validation set at the training size.

    Rank 0 scores; the other ranks wait and get an empty dict.

    Args:
        ctx: the process.
        model: the EMA's model (put in eval mode).
        loader: batches of (B, 3, S, S) uint8 images and (B, 1, S, S) uint8 masks; None on ranks
            other than 0.
        n_images: the validation images, for the event.
        normalization: the model's input normalisation.
        epoch: the epoch just trained (0-based).

    Returns:
        ``results.csv``'s :data:`VAL_COLUMNS` and their values.
    """
    scores: dict[str, float] = {}
    if ctx.main and loader is not None:
        ctx.emit("validate", epoch=epoch + 1, values={"images": n_images})
        model = model.eval()
        pairs: list[tuple[np.ndarray, np.ndarray]] = []
        for images, masks in loader:
            x = transforms.normalize_tensor(images.to(ctx.device).float(), normalization)
            with runtime.autocast(ctx.device, ctx.precision):
                logits = model(x)
            # (B, 1, S, S) logits -> (B, S, S) uint8 floor(255 p)
            pred = transforms.quantize(torch.sigmoid(logits.float())[:, 0]).cpu().numpy()
            pairs += zip(pred, masks[:, 0].numpy(), strict=True)
        report = evaluate_arrays(
            pairs,
            name="val",
            jobs=max(1, ctx.workers),
            cache_dir=cache_root(ctx.cfg) / "eval",
            use_cache=True,  # the GT-only work (skeletons, distances) is the same every epoch
        )
        values = report.splits[0].scores.as_dict()
        scores = {column: float(values[key]) for column, key in zip(VAL_COLUMNS, VAL_KEYS, strict=True)}
    ctx.barrier()
    return scores


def check_final_map(ctx: RunContext, model: nn.Module, epoch: int) -> None:
    """Warn at every epoch end while the final map cannot reach a confident foreground."""
    ceiling = final_map_ceiling(model)
    if ceiling is not None and ceiling < CONFIDENT:
        ctx.notice(
            f"epoch {epoch}: the final map cannot exceed p = {ceiling:.2f} (byte {int(255 * ceiling)}): "
            "every weight of the last level's classifier is negative, so that level only marks "
            "background; train longer or from other weights, and check the maps before using them"
        )
