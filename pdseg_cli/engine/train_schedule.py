"""The optimiser side of the recipe (``docs/model.md``, 'Training recipe'): SegNeXt's warmup + poly
learning-rate schedule, and AdamW's parameter groups."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

WARMUP_ITERS = 1500  # SegNeXt's linear warmup; the default is min(this, a tenth of the run)
WARMUP_RATIO = 1e-6  # the warmup starts at this fraction of the learning rate (SegNeXt)
POLY_POWER = 1.0  # poly decay to 0 at the last iteration (SegNeXt)


def default_warmup(total_steps: int) -> int:
    """Warmup iterations when ``--warmup`` is not given: :data:`WARMUP_ITERS`, at most a tenth of the run."""
    return min(WARMUP_ITERS, total_steps // 10)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """The learning-rate multiplier for iteration ``step`` (0-based) of ``total``.

    Poly decay ``(1 - step / total) ** POLY_POWER`` to 0 at ``total``, multiplied during the first
    ``warmup`` iterations by a linear ramp from :data:`WARMUP_RATIO` to 1 (mmseg's linear warmup on
    top of the poly schedule).
    """
    poly = max(0.0, 1.0 - step / max(total, 1)) ** POLY_POWER
    if step < warmup:
        return poly * (WARMUP_RATIO + (1.0 - WARMUP_RATIO) * step / warmup)
    return poly


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(
    model: nn.Module, lr: float, decoder_lr_mult: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups: encoder at ``lr``, the rest (the decoder) at ``lr * decoder_lr_mult``; no weight
    decay on norm affines, biases (every 1-D tensor) and layer scales."""
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, _NORMS):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "encoder" if name.startswith("encoder.") else "decoder"
        decay = not (id(p) in no_decay or p.ndim <= 1 or "layer_scale" in name)
        groups.setdefault((part, decay), []).append(p)
    out = []
    for part in ("encoder", "decoder"):
        for decay in (True, False):
            params = groups.get((part, decay))
            if params:
                out.append(
                    {
                        "params": params,
                        "lr": lr * (decoder_lr_mult if part == "decoder" else 1.0),
                        "weight_decay": weight_decay if decay else 0.0,
                        "name": f"{part}{'' if decay else '_no_decay'}",
                    }
                )
    return out


def make_optimizer(
    model: nn.Module, lr: float, decoder_lr_mult: float, weight_decay: float
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, betas (0.9, 0.999)."""
    return torch.optim.AdamW(param_groups(model, lr, decoder_lr_mult, weight_decay), betas=(0.9, 0.999))


def make_scheduler(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Steps :func:`lr_factor` once per iteration.

    A plain function as the multiplier: ``LambdaLR`` then leaves it out of its ``state_dict``, which
    ``last.pt`` stores.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total))


def restore_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR, state: dict[str, Any]) -> None:
    """Load a saved schedule's position into ``scheduler`` and give its optimiser the learning
    rates of that position on ``scheduler``'s own schedule.

    The optimiser's saved state carries the rates of the schedule it was saved under. A run
    extended with ``--resume --epochs N`` has a longer schedule, and ``LambdaLR.load_state_dict``
    does not write the new rates back: the first step after the resume would run at the old
    schedule's last rate (0 at the end of a finished run). On an unchanged schedule the rates are
    the same ones.
    """
    scheduler.load_state_dict(state)
    groups = scheduler.optimizer.param_groups
    for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(scheduler.last_epoch)
