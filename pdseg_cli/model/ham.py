"""The hamburger block: non-negative matrix factorisation (NMF) between two 1x1 convolutions.

Geng, Guo, Chen, Li, Wei, Lin, "Is Attention Better Than Matrix Decomposition?", ICLR 2021; used as
SegNeXt's LightHamHead (Guo et al., NeurIPS 2022).

Written from ``docs/model.md``, 'Hamburger', and checked against SegNeXt/mmseg
``decode_heads/ham_head.py``. Pinned choices (``docs/model.md``, 'NMF precision' and 'NMF bases'):

- The NMF always runs in float32 with autocast off, then casts back: its sums over N overflow fp16.
- Training: bases drawn uniformly at random on every forward pass (global RNG), as SegNeXt does.
- Eval: fixed bases drawn once from a seeded generator, kept in a non-persistent buffer created here
  in ``__init__`` (never in ``forward``), so inference and ONNX export are deterministic and
  checkpoints do not depend on them.
- 6 multiplicative-update steps in training, 7 in eval; gradients flow through every unrolled step
  (SegNeXt, not Enjoy-Hamburger's one-step gradient).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pdseg_cli.model.fusion import InferenceForm, frozen_param, tracing

EPS = 1e-6  # added to every multiplicative-update denominator (SegNeXt)
# rows of the NMF's (N, R) coefficient matrix the inference form updates at a time, in place
NMF_ROWS = 4096


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager[None]:
    """A context that disables autocast on ``device_type`` (nothing to do where autocast is unknown)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def nmf_bases(channels: int, rank: int, seed: int) -> torch.Tensor:
    """Seeded NMF bases: uniform [0, 1), each column L2-normalised over the channels.

    Returns:
        (1, channels, rank) float32 on the CPU; the same for the same arguments on every machine.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    bases = torch.rand((1, channels, rank), generator=generator, dtype=torch.float32, device="cpu")
    return F.normalize(bases, dim=1)


class NMF2D(nn.Module):
    """NMF of a (B, C, H, W) map as X ~ B Z^T, with X of shape (C, N), N = H * W, and rank R.

    SegNeXt's ``NMF2D`` with MD_S = 1 (so D = C) and temperature 1.

    Args:
        channels: C.
        rank: R, the number of bases.
        train_steps: multiplicative-update steps in training mode.
        eval_steps: steps in eval mode.
        seed: seed of the fixed eval-mode bases.
    """

    eval_bases: torch.Tensor

    def __init__(self, channels: int, rank: int, train_steps: int, eval_steps: int, seed: int) -> None:
        super().__init__()
        self.channels = channels
        self.rank = rank
        self.train_steps = train_steps
        self.eval_steps = eval_steps
        self.seed = seed
        # drawn on the CPU (the same numbers everywhere), then moved to the default device
        bases = nmf_bases(channels, rank, seed).to(torch.get_default_device())
        self.register_buffer("eval_bases", bases, persistent=False)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> NMF2D:
        # .half() / .to(dtype) would round the bases; redraw them in float32 on the new device.
        super()._apply(fn, recurse)
        if self.eval_bases.dtype != torch.float32:
            device = self.eval_bases.device
            self.eval_bases = nmf_bases(self.channels, self.rank, self.seed).to(device)
        return self

    def _bases(self, batch: int, device: torch.device) -> torch.Tensor:
        """(B, C, R) float32 starting bases: random in training mode, the fixed ones in eval."""
        if self.training:
            bases = torch.rand((batch, self.channels, self.rank), device=device, dtype=torch.float32)
            return F.normalize(bases, dim=1)
        return self.eval_bases.expand(batch, -1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Low-rank reconstruction of ``x``.

        Args:
            x: (B, C, H, W), non-negative (it follows a ReLU); any float dtype.

        Returns:
            (B, C, H, W) in the dtype of ``x``.
        """
        b, c = x.shape[:2]
        if c != self.channels:
            raise ValueError(f"NMF2D built for {self.channels} channels got {c}")
        steps = self.train_steps if self.training else self.eval_steps
        with _autocast_off(x.device.type):
            v = x.flatten(2).float()  # (B, C, H, W) -> (B, C, N)
            bases = self._bases(b, x.device)  # (B, C, R)
            vt = v.transpose(1, 2)  # (B, N, C)
            # (B, N, C) @ (B, C, R) -> (B, N, R), softmax over R
            coef = torch.softmax(torch.bmm(vt, bases), dim=-1)
            for _ in range(steps):
                coef = self._update_coef(vt, bases, coef)
                # (B, C, N) @ (B, N, R) -> (B, C, R); (B, C, R) @ [(B, R, N) @ (B, N, R)] -> (B, C, R)
                numerator = torch.bmm(v, coef)
                denominator = torch.bmm(bases, torch.bmm(coef.transpose(1, 2), coef))
                bases = bases * numerator / (denominator + EPS)
            coef = self._update_coef(vt, bases, coef)
            # (B, C, R) @ (B, R, N) -> (B, C, N)
            out = torch.bmm(bases, coef.transpose(1, 2))
        return out.reshape(x.shape).to(x.dtype)

    @staticmethod
    def _update_coef(vt: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """Z <- Z * (X^T B) / (Z B^T B + eps)."""
        # (B, N, C) @ (B, C, R) -> (B, N, R); (B, N, R) @ [(B, R, C) @ (B, C, R)] -> (B, N, R)
        numerator = torch.bmm(vt, bases)
        denominator = torch.bmm(coef, torch.bmm(bases.transpose(1, 2), bases))
        return coef * numerator / (denominator + EPS)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, rank={self.rank}, steps={self.train_steps}/{self.eval_steps} "
            f"(train/eval), seed={self.seed}"
        )

    def fast(self) -> FastNMF:
        return FastNMF(self)


class Hamburger(nn.Module):
    """ReLU(x + GN(conv(NMF(ReLU(conv(x)))))): the "lower bread", the "ham" and the "upper bread".

    Args:
        channels: C, the same in and out.
        rank: NMF rank R.
        train_steps: NMF steps in training mode.
        eval_steps: NMF steps in eval mode.
        seed: seed of the eval-mode NMF bases.
        groups: GroupNorm groups after the output conv.
    """

    FOLDED_BY: ClassVar[str] = "HamLevel"

    def __init__(
        self, channels: int, rank: int, train_steps: int, eval_steps: int, seed: int, groups: int
    ) -> None:
        super().__init__()
        self.ham_in = nn.Conv2d(channels, channels, 1)  # with bias, no norm (mmseg ConvModule, no norm)
        self.ham = NMF2D(channels, rank, train_steps, eval_steps, seed)
        self.ham_out = nn.Conv2d(channels, channels, 1, bias=False)
        self.ham_out_norm = nn.GroupNorm(groups, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = F.relu(self.ham_in(x))
        e = self.ham(e)
        e = self.ham_out_norm(self.ham_out(e))
        return F.relu(x + e)


class FastNMF(InferenceForm):
    """The eval-mode NMF of :class:`NMF2D` on the channels-last (B, N, C) layout, fp32.

    The same multiplicative updates in the same order, on the (B, N, C) matrix that a channels-last
    map already is in memory (no transposing copy), producing its output as (B, N, C), the
    channels-last map again. Outside autograd and tracing, the coefficients are updated in row
    blocks in place, so no extra (B, N, R) map is allocated per step, and the output may be written
    into the input (``overwrite_input``). It stays float32 with autocast off.
    """

    def __init__(self, nmf: NMF2D) -> None:
        super().__init__()
        self.steps = nmf.eval_steps
        self.bases = frozen_param(nmf.eval_bases, nmf.eval_bases)  # (1, C, R)

    def forward(self, x: torch.Tensor, overwrite_input: bool = False) -> torch.Tensor:
        """(B, C, H, W) non-negative -> low-rank reconstruction (B, C, H, W), channels-last, x's dtype.

        ``overwrite_input``: the caller owns ``x`` and does not need it afterwards, so the result is
        written into its memory when the layouts allow (one map less at the decoder's peak).
        """
        b, c, h, w = x.shape
        with _autocast_off(x.device.type):
            # (B, C, H, W) -> (B, H, W, C) -> (B, N, C): no copy when x is channels-last
            xt = x.float().permute(0, 2, 3, 1).reshape(b, h * w, c)
            bases = self.bases.float().expand(b, -1, -1)  # (B, C, R), fp32 even in a .half() model
            # Not under tracing (out= and in-place row blocks are not exportable) or autograd.
            plain_ops = tracing() or (torch.is_grad_enabled() and x.requires_grad)
            if plain_ops:
                coef = torch.softmax(torch.bmm(xt, bases), dim=-1)  # (B, N, C) @ (B, C, R) -> (B, N, R)
            else:
                coef = self._softmax_coef_in_blocks(xt, bases)
            update = self._update_coef if plain_ops else self._update_coef_in_place
            for _ in range(self.steps):
                coef = update(xt, bases, coef)
                # (B, C, N) @ (B, N, R) -> (B, C, R); (B, C, R) @ [(B, R, N) @ (B, N, R)] -> (B, C, R)
                numerator = torch.bmm(xt.transpose(1, 2), coef)
                denominator = torch.bmm(bases, torch.bmm(coef.transpose(1, 2), coef))
                bases = numerator.mul_(bases).div_(denominator.add_(EPS))
            coef = update(xt, bases, coef)
            # (B, N, R) @ (B, R, C) -> (B, N, C) = (B, H, W, C), the channels-last (B, C, H, W)
            if overwrite_input and not plain_ops and xt.is_contiguous():
                out = torch.bmm(coef, bases.transpose(1, 2), out=xt)
            else:
                out = torch.bmm(coef, bases.transpose(1, 2))
        return out.view(b, h, w, c).permute(0, 3, 1, 2).to(x.dtype)

    @staticmethod
    def _softmax_coef_in_blocks(xt: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
        """softmax(X^T B) over R, NMF_ROWS rows at a time: the (B, N, R) logits never exist whole."""
        b, n, _ = xt.shape
        coef = xt.new_empty((b, n, bases.shape[-1]))
        for a in range(0, n, NMF_ROWS):
            e = min(a + NMF_ROWS, n)
            coef[:, a:e] = torch.softmax(torch.bmm(xt[:, a:e], bases), dim=-1)
        return coef

    @staticmethod
    def _update_coef(xt: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """Z <- Z * (X^T B) / (Z B^T B + eps), as new tensors (the traceable form)."""
        # (B, N, C) @ (B, C, R) -> (B, N, R); (B, N, R) @ [(B, R, C) @ (B, C, R)] -> (B, N, R)
        gram = torch.bmm(bases.transpose(1, 2), bases)
        numerator = torch.bmm(xt, bases)
        denominator = torch.bmm(coef, gram)
        return numerator.mul_(coef).div_(denominator.add_(EPS))

    @staticmethod
    def _update_coef_in_place(xt: torch.Tensor, bases: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """The same update written into ``coef``, NMF_ROWS rows at a time.

        Each row of the new Z depends only on the same row of the old Z, so a block of rows can be
        replaced as soon as its two products exist: the products need block-sized buffers instead
        of two more (B, N, R) maps (at 8192x8192 input, 2 GB less at the decoder's peak), at the
        same speed (benchmarks/RESULTS.md). The element-wise maths is the traceable form's, term by
        term.
        """
        gram = torch.bmm(bases.transpose(1, 2), bases)
        b, n, r = coef.shape
        rows = min(n, NMF_ROWS)
        num = coef.new_empty((b, rows, r))
        den = coef.new_empty((b, rows, r))
        for a in range(0, n, rows):
            e = min(a + rows, n)
            block = coef[:, a:e]
            if e - a < rows:  # the last, shorter block: out= wants buffers of its exact shape
                num, den = coef.new_empty((b, e - a, r)), coef.new_empty((b, e - a, r))
            torch.bmm(xt[:, a:e], bases, out=num)
            torch.bmm(block, gram, out=den)
            block.mul_(num).div_(den.add_(EPS))
        return coef
