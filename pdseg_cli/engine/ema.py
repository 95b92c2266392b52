"""Exponential moving average of model weights, used for validation and saved checkpoints."""

from __future__ import annotations

import copy
import math
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

EMA_TAU_ITERS = 2000.0  # Ultralytics' ramp; a run's default is min(this, a twentieth of the run)
EMA_DECAY = 0.9999  # Ultralytics' decay; a run's default is at most 1 - 10 / its steps


def default_ema_tau(total_steps: int) -> float:
    """The ramp (``tau``) of a run of ``total_steps`` when none is given: :data:`EMA_TAU_ITERS`, at
    most a twentieth of the run.

    A fixed ramp of 2,000 steps is made for runs of ~100k steps; in a run of 3,000 it ends at
    0.78 x ``decay``, so the "average" spans the last few steps only. With a twentieth of the run,
    the decay is ``decay`` to within 1e-4 by half of it.
    """
    return max(1.0, min(EMA_TAU_ITERS, total_steps / 20))


def default_ema_decay(total_steps: int) -> float:
    """The decay of a run of ``total_steps`` when none is given: :data:`EMA_DECAY`, or less in a run
    too short for it, so that the average spans at most a tenth of the run (``1 / (1 - decay)``
    steps) and the saved weights are those of its end.

    With 0.9999, a 777-step fine-tune (``--init``, 3 epochs of 2,076 images) would save an average
    96% of which came from its first half: the average barely moves after its ramp, so a short run
    changes the saved model far less than its training did (``benchmarks/RESULTS.md``, stage 9).
    """
    return min(EMA_DECAY, max(0.0, 1.0 - 10.0 / max(total_steps, 1)))


class ModelEMA:
    """A frozen copy of a model whose weights track ``decay * ema + (1 - decay) * model``.

    The decay ramps up as ``decay * (1 - exp(-updates / tau))`` (Ultralytics' ModelEMA), so the
    average follows the fast-changing weights of early training and settles at ``decay`` after a
    few ``tau`` updates; short runs are not stuck with their random initialisation. Floating-point
    buffers (BatchNorm statistics) are averaged too; integer buffers are copied.

    Args:
        model: the model being trained (unwrapped, not DDP); it is deep-copied.
        decay: the final decay.
        tau: updates over which the decay ramps up.
    """

    def __init__(self, model: nn.Module, decay: float = EMA_DECAY, tau: float = EMA_TAU_ITERS) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if tau <= 0:
            raise ValueError(f"EMA tau must be > 0, got {tau}")
        # read-only mappings (e.g. PDSeg.normalization) cannot be deep-copied; being immutable,
        # they are shared instead
        memo: dict[int, Any] = {id(v): v for v in vars(model).values() if isinstance(v, MappingProxyType)}
        self.module = copy.deepcopy(model, memo).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = 0

    def current_decay(self) -> float:
        """The decay of the latest update (0 before any update)."""
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights (call after each step)."""
        self.updates += 1
        d = self.current_decay()
        src = model.state_dict()
        ema_floats: list[torch.Tensor] = []
        new_floats: list[torch.Tensor] = []
        for name, value in self.module.state_dict().items():
            new = src[name].detach()
            if value.dtype.is_floating_point:
                ema_floats.append(value)
                new_floats.append(new.to(value.dtype))
            else:
                value.copy_(new)
        if ema_floats:
            # ema <- ema + (1 - d) * (new - ema) = d * ema + (1 - d) * new
            torch._foreach_lerp_(ema_floats, new_floats, 1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the average exactly."""
        return {
            "updates": self.updates,
            "decay": self.decay,
            "tau": self.tau,
            "weights": self.module.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (the model architecture must match)."""
        self.module.load_state_dict(state["weights"], strict=True)
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
        self.tau = float(state["tau"])
