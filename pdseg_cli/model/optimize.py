"""An inference-only fast form of a PDSeg network, built from the same parameters.

:func:`optimize` returns a new module that computes what ``model.eval()(x)`` computes (the final
logits, fp32 maths unless asked otherwise) with fewer operations and memory passes. The original
model is not touched: it keeps its parameters, its mode and its gradients, and stays usable for
training. Nothing about checkpoints changes: load with ``load_model``, then optimise.

What is rewritten (every change is algebra on eval-mode operators; only float rounding differs,
max |delta logit| <= 1e-4 against the plain path in fp32, pinned by ``tests/test_optimize.py``):

* Eval-mode BatchNorm is folded into the convolution next to it: the stem and downsampling convs
  (BN after), each block's BN1 into ``proj_1`` and BN2 into ``fc1`` (BN before a 1x1 conv). BN1's
  output ``a`` is also the attention's inner shortcut, so that term is carried algebraically::

      x + g1 * (proj_2(v) + BN1(x)) = (1 + g1 * s1) * x + (g1 * W2) v + g1 * (b2 + t1)

  where BN1(x) = s1 * x + t1. The layer scales g1, g2 are folded into ``proj_2`` and ``fc2``.
* The MSCA strip branches are summed as they are produced: each vertical strip conv adds the
  running sum in its epilogue (t = s + V7 H7 s, then + V11 H11 s, then + V21 H21 s), and the 1x1
  ``conv3`` multiplies by ``u`` in its epilogue. One-conv forms of the three branches (a
  depth-wise conv with multiplier 3, or a grouped conv of 3 channels per group) were measured
  10-30x slower than three depth-wise convs on oneDNN, so the branches stay separate.
* On the CPU in fp32, convolutions run through oneDNN's fused-epilogue operators
  (``torch.ops.mkldnn._convolution_pointwise``, the kernels Inductor uses): GELU, ReLU, the
  residual add and the gating product happen inside the convolution instead of in separate
  passes over memory. Elsewhere (CUDA, autocast, tracing, ``torch.compile``) the same sequence
  runs with plain ``F.conv2d`` and in-place element-wise ops.
* Channels-last layout end to end (no layout changes between operators; the stage LayerNorm reads
  the channels-last memory directly).
* Decoder: the 1x1 squeeze of ``concat[E, up2(F), up2(M)]`` is split by input; the F and M parts are
  applied *before* the bilinear upsample (both are linear: up2(W F) = W up2(F)), at a quarter of
  the pixels, and without the concat. M = classifier(F) is folded into that product, so the
  intermediate levels' classifiers are never run (``return_levels=True`` runs them). SegNeXt's
  single head gets the same treatment for its strides 16 and 32 inputs.
* NMF: the same multiplicative updates in the same order, on the channels-last (B, N, C) matrix
  that the map already is in memory (no transposing copy), updates done in place into two (B, N, R)
  buffers reused by every step, and the output produced as (B, N, C), which is the channels-last
  map again. It stays float32 with autocast off.
* CPU: the MLP (1x1 up, 3x3 depth-wise, GELU, 1x1 down) of the large early stages runs in bands of
  rows, so its 4x/8x-wide hidden map never exists whole (see ``FastBlock._mlp_bands``).
* Fewer full-size maps alive at once, for ``--size full`` on large images: sums go into a map that
  is not needed afterwards (the attention's strip branches, the decoder's squeeze), the squeeze
  GroupNorm runs in place, and the NMF updates its coefficients in row blocks in place and writes
  its output into its input (``FastNMF``). Only where autograd and tracing are off.

Why the last two matter: on Linux a fresh buffer larger than glibc's mmap threshold (at most 32 MiB)
is mapped anew on every allocation and page-faults on first touch; on the 2-core VM where this was
measured that cost ~1 ms per MiB, as much as the arithmetic of a whole MLP. Preloading jemalloc or
tcmalloc (or ``MALLOC_MMAP_MAX_=0``) removes it for the plain path too.

Measured (``benchmarks/latency.py --reference``; AMD EPYC, 2 AVX2 cores shared with other jobs, 1
thread, pdseg-b, batch 1, fp32): 512x512 1.93 -> 1.16 s (1.66x), 1024x1024 7.33 -> 4.43 s (1.65x),
max |delta logit| 1.9e-6 / 4.6e-6. About 80% of pdseg-b's multiply-adds are 1x1 convolutions, which
both paths run as GEMMs near this core's FMA peak, so that is close to the ceiling on this CPU.

``precision="bf16"``/``"fp16"`` wraps the forward in autocast (NMF still fp32); ``compile=True``
(or a ``torch.compile`` mode: ``"reduce-overhead"`` also captures CUDA graphs on a GPU) returns
``torch.compile`` of the fast form (optional; the fused oneDNN operators are then left to
Inductor). The fast form is for inference only: its tensors do not require gradients.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pdseg_cli.errors import NotAvailableError, first_line
from pdseg_cli.model.build import unwrap_model
from pdseg_cli.model.decoder import HamLevel, LightHamHead, ProgressiveDecoder
from pdseg_cli.model.ham import EPS, NMF2D, Hamburger
from pdseg_cli.model.layers import crop_levels, pad_input, resize_to
from pdseg_cli.model.mscan import MSCAN, Block, DownsampleConv, StemConv
from pdseg_cli.model.pdseg import PDSeg
from pdseg_cli.runtime import COMPILE_MODES

PRECISIONS = ("fp32", "bf16", "fp16")

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# On the CPU, an MLP hidden map larger than MLP_BAND_ABOVE bytes is processed in bands of rows of
# about MLP_BAND_BYTES: they stay in cache, and no large buffer is allocated (fresh large buffers come
# from mmap and page-fault on every forward pass). Measured on pdseg-b blocks (CPU time, 1 thread,
# 2-core AVX2 VM): stage 1 at 256x256 427 -> 258 ms, stage 2 at 128x128 268 -> 189 ms, stage 3 at
# 64x64 135 -> 121 ms; maps under 8 MiB were as fast or faster whole.
MLP_BAND_ABOVE = 8 << 20
MLP_BAND_BYTES = 4 << 20
# rows of the NMF's (N, R) coefficient matrix updated at a time in place (see FastNMF)
NMF_ROWS = 4096


# ----------------------------------------------------------------------------------------------
# folding helpers (float64 maths, float32 results)


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as y = s * x + t; (C,) float64 each."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("optimize needs BatchNorm layers with running statistics (track_running_stats)")
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    weight = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = weight / torch.sqrt(var + bn.eps)
    return scale, bias - mean * scale


def _weight_bias(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv's weight and bias in float64 (a zero bias when it has none)."""
    weight = conv.weight.detach().double()
    if conv.bias is not None:
        bias = conv.bias.detach().double()
    else:
        bias = torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
    return weight, bias


def _fold_bn_after(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BN(conv(x)) as one conv: W' = s W (per output channel), b' = s b + t."""
    weight, bias = _weight_bias(conv)
    scale, shift = _bn_scale_shift(bn)
    return weight * scale[:, None, None, None], bias * scale + shift


def _fold_bn_before(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """conv(BN(x)) as one conv, for a 1x1 conv (no padding, so BN's shift is exact everywhere)."""
    if conv.kernel_size != (1, 1) or conv.groups != 1:
        raise ValueError("BN can be folded forward only into an ungrouped 1x1 convolution")
    weight, bias = _weight_bias(conv)
    scale, shift = _bn_scale_shift(bn)
    # W (s x + t) + b = (W diag(s)) x + (W t + b)
    return weight * scale[None, :, None, None], bias + weight[:, :, 0, 0] @ shift


def _param(t: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    """A frozen float32 parameter on ``like``'s device (a copy: never shares the original's storage)."""
    return nn.Parameter(t.detach().to(device=like.device, dtype=torch.float32).clone(), requires_grad=False)


# ----------------------------------------------------------------------------------------------
# a convolution with an optional fused epilogue


class FusedConv(nn.Module):
    """conv(x), then optionally ``act(conv(x))`` (relu, gelu) or ``conv(x) op other`` (add, mul).

    With ``fused=True`` (CPU, fp32, channels-last) the epilogue runs inside oneDNN's convolution
    (``torch.ops.mkldnn._convolution_pointwise``); otherwise ``F.conv2d`` then in-place ops.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        like: torch.Tensor,
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.weight = _param(weight, like)
        self.bias = _param(bias, like) if bias is not None else None
        self.stride = tuple(stride) if isinstance(stride, tuple) else (stride, stride)
        self.padding = tuple(padding) if isinstance(padding, tuple) else (padding, padding)
        self.groups = groups

    @classmethod
    def of(cls, conv: nn.Conv2d) -> FusedConv:
        """A copy of ``conv`` as it is."""
        return cls(
            conv.weight,
            conv.bias,
            conv.weight,
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
            groups=conv.groups,
        )

    def forward(
        self,
        x: torch.Tensor,
        fused: bool,
        act: str | None = None,
        other: torch.Tensor | None = None,
        op: str | None = None,
        padding: tuple[int, int] | None = None,
        into_other: bool = False,
    ) -> torch.Tensor:
        """Apply the conv; ``act`` and ``other``/``op`` are exclusive; ``padding`` overrides the conv's.

        ``into_other``: the caller owns ``other`` and does not need it afterwards, so ``conv(x) op
        other`` may be written into it (no new map; done for ``add`` on oneDNN, and in the plain path).
        """
        pad = self.padding if padding is None else padding
        if fused:
            mk = torch.ops.mkldnn
            args = (list(pad), list(self.stride), [1, 1], self.groups)
            if other is None:
                algorithm = "none" if act == "gelu" else None  # "none": exact erf GELU, as nn.GELU()
                return mk._convolution_pointwise(
                    x, self.weight, self.bias, *args, act or "none", [], algorithm
                )
            # oneDNN's in-place form exists for the sum only
            if into_other and op == "add" and other.is_contiguous(memory_format=torch.channels_last):
                return mk._convolution_pointwise_.binary(
                    other, x, self.weight, self.bias, *args, op, None, None, [], None
                )
            return mk._convolution_pointwise.binary(
                x, other, self.weight, self.bias, *args, op, None, None, [], None
            )
        y = F.conv2d(x, self.weight, self.bias, self.stride, pad, 1, self.groups)
        if other is not None and into_other and not _tracing():
            if not (torch.is_grad_enabled() and (y.requires_grad or other.requires_grad)):
                return other.add_(y) if op == "add" else other.mul_(y)
        if other is not None:
            y = y.add_(other) if op == "add" else y.mul_(other)
        if act == "gelu":
            y = F.gelu(y)
        elif act == "relu":
            y = y.relu_()
        return y

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        return f"{i * self.groups}, {o}, kernel=({kh}, {kw}), stride={self.stride}, groups={self.groups}"


# ----------------------------------------------------------------------------------------------
# encoder


class FastBlock(nn.Module):
    """One MSCAN block with BN1, BN2 and both layer scales folded (see the module docstring)."""

    def __init__(self, block: Block) -> None:
        super().__init__()
        attn, msca, mlp = block.attn, block.attn.spatial_gating_unit, block.mlp
        like = attn.proj_1.weight
        self.proj_1 = FusedConv(*_fold_bn_before(block.norm1, attn.proj_1), like)
        self.conv0 = FusedConv.of(msca.conv0)
        self.strips = nn.ModuleList(
            FusedConv.of(c)
            for c in (msca.conv0_1, msca.conv0_2, msca.conv1_1, msca.conv1_2, msca.conv2_1, msca.conv2_2)
        )
        self.conv3 = FusedConv.of(msca.conv3)
        # x + g1 * (W2 v + b2 + s1 x + t1) = (1 + g1 s1) x + (g1 W2) v + g1 (b2 + t1)
        g1 = block.layer_scale_1.detach().double()
        s1, t1 = _bn_scale_shift(block.norm1)
        w2, b2 = _weight_bias(attn.proj_2)
        self.proj_2 = FusedConv(w2 * g1[:, None, None, None], g1 * (b2 + t1), like)
        self.skip_scale = _param((1.0 + g1 * s1)[None, :, None, None], like)  # (1, C, 1, 1)
        self.fc1 = FusedConv(*_fold_bn_before(block.norm2, mlp.fc1), like)
        self.dwconv = FusedConv.of(mlp.dwconv.dwconv)
        g2 = block.layer_scale_2.detach().double()
        w4, b4 = _weight_bias(mlp.fc2)
        self.fc2 = FusedConv(w4 * g2[:, None, None, None], g2 * b4, like)

    def forward(self, x: torch.Tensor, fused: bool, bands: tuple[int, int] | None = None) -> torch.Tensor:
        u = self.proj_1(x, fused, act="gelu")
        s = self.conv0(u, fused)
        t = s
        for horizontal, vertical in zip(self.strips[0::2], self.strips[1::2], strict=True):
            # t <- V_k(H_k(s)) + t: the plain path's ((s + a) + b) + c, term by term; after the
            # first branch t is a map of our own, so the sum goes into it (fewer maps at the peak)
            t = vertical(horizontal(s, fused), fused, other=t, op="add", into_other=t is not s)
        del s
        v = self.conv3(t, fused, other=u, op="mul", into_other=True)  # u: not needed after
        del t, u
        y = self.proj_2(v, fused)
        del v
        # y + (1 + g1 s1) x, a fresh map (the MLP may write into it); the ONNX exporter turns addcmul_
        # into fp32 maths, so traced graphs get the two-op form
        x = y.add_(x * self.skip_scale) if _tracing() else y.addcmul_(x, self.skip_scale)
        return self._mlp(x, fused, bands)

    def _mlp(self, x: torch.Tensor, fused: bool, bands: tuple[int, int] | None) -> torch.Tensor:
        """x + fc2(GELU(dw(fc1(x)))); with ``bands = (above, size)``, by bands of rows of about ``size``
        bytes of hidden map when the whole hidden map would exceed ``above`` bytes."""
        b, _, height, width = x.shape
        row_bytes = b * self.fc1.weight.shape[0] * width * x.element_size()
        rows = height if bands is None or row_bytes * height <= bands[0] else bands[1] // row_bytes
        if bands is None or rows >= height:
            h = self.dwconv(self.fc1(x, fused), fused, act="gelu")
            return self.fc2(h, fused, other=x, op="add")
        return self._mlp_bands(x, fused, max(rows, 2))

    def _mlp_bands(self, x: torch.Tensor, fused: bool, rows: int) -> torch.Tensor:
        """The MLP band by band, written back into ``x`` (a map this block owns).

        The (B, rC, H, W) hidden map is never whole: each band of ``rows`` input rows goes through fc1,
        is joined to the last two fc1 rows of the band above (a zero row above the image), and the
        3x3 depth-wise conv runs without vertical padding, so it produces the rows it has both
        neighbours of: input rows [a, e) give output rows [a - 1, e - 1) (to H for the last band,
        with a zero row below the image). Those rows are written back into ``x`` at once: later
        bands read only rows >= e - 1 of ``x``, which are still the input. Same sums as the whole-map
        conv (zero rows = zero padding); the hidden bands stay in cache and no large buffer is
        allocated (fresh large allocations page-fault on every call).
        """
        b, _, height, width = x.shape
        fmt = _format_of(x)
        zero = x.new_zeros((b, self.fc1.weight.shape[0], 1, width)).contiguous(memory_format=fmt)
        carry = zero  # the fc1 rows just above the current band
        start = 0
        for a in range(0, height, rows):
            e = min(a + rows, height)
            band = self.fc1(x[:, :, a:e].contiguous(memory_format=fmt), fused)
            parts = [carry, band, zero] if e == height else [carry, band]
            h = self.dwconv(torch.cat(parts, dim=2), fused, act="gelu", padding=(0, 1))
            stop = height if e == height else e - 1
            x[:, :, start:stop] = self.fc2(
                h, fused, other=x[:, :, start:stop].contiguous(memory_format=fmt), op="add"
            )
            carry = band[:, :, -2:] if band.shape[2] >= 2 else torch.cat([carry[:, :, -1:], band], dim=2)
            start = stop
        return x


class FastEncoder(nn.Module):
    """MSCAN with every BN folded; returns the same four maps."""

    def __init__(self, encoder: MSCAN) -> None:
        super().__init__()
        self.embeds = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i in range(1, 5):
            embed = getattr(encoder, f"patch_embed{i}")
            if isinstance(embed, StemConv):
                proj = embed.proj
                self.embeds.append(
                    nn.ModuleList(
                        [
                            FusedConv(*_fold_bn_after(proj[0], proj[1]), proj[0].weight, stride=2, padding=1),
                            FusedConv(*_fold_bn_after(proj[3], proj[4]), proj[3].weight, stride=2, padding=1),
                        ]
                    )
                )
            elif isinstance(embed, DownsampleConv):
                self.embeds.append(
                    nn.ModuleList(
                        [
                            FusedConv(
                                *_fold_bn_after(embed.proj, embed.norm),
                                embed.proj.weight,
                                stride=2,
                                padding=1,
                            )
                        ]
                    )
                )
            else:
                raise TypeError(f"unknown MSCAN patch embedding {type(embed).__name__}")
            self.stages.append(nn.ModuleList(FastBlock(b) for b in getattr(encoder, f"block{i}")))
            norm = getattr(encoder, f"norm{i}")
            ln = nn.LayerNorm(norm.normalized_shape, eps=norm.eps, device=norm.weight.device)
            ln.weight = _param(norm.weight, norm.weight)
            ln.bias = _param(norm.bias, norm.weight)
            self.norms.append(ln)

    def forward(
        self, x: torch.Tensor, fused: bool, bands: tuple[int, int] | None = None
    ) -> list[torch.Tensor]:
        outs = []
        for embed, blocks, norm in zip(self.embeds, self.stages, self.norms, strict=True):
            if len(embed) == 2:  # stem: conv-BN-GELU, conv-BN
                x = embed[1](embed[0](x, fused, act="gelu"), fused)
            else:
                x = embed[0](x, fused)
            for block in blocks:
                x = block(x, fused, bands)
            # (B, C, H, W) -> (B, H, W, C) (a free view in channels-last) -> LN over C -> back
            x = norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            outs.append(x)
        return outs


# ----------------------------------------------------------------------------------------------
# decoder


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager[Any]:
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class FastNMF(nn.Module):
    """The eval-mode NMF of :class:`~pdseg_cli.model.ham.NMF2D` on the (B, N, C) layout, fp32."""

    def __init__(self, nmf: NMF2D) -> None:
        super().__init__()
        self.steps = nmf.eval_steps
        self.bases = _param(nmf.eval_bases, nmf.eval_bases)  # (1, C, R)

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
            plain_ops = _tracing() or (torch.is_grad_enabled() and x.requires_grad)
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
        same speed (measured: 79 ms whole, 80 ms in 1024-row blocks, on the stride-4 level at 512).
        The element-wise maths is the traceable form's, term by term.
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


def _group_norm_relu(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps).relu_()


def _group_norm_relu_(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """ReLU(GroupNorm(x)) written into ``x`` (a channels-last map the caller gives up).

    The same statistics as ``F.group_norm`` (per sample and group, biased variance): the squeeze
    map at stride 4 is the decoder's largest, and normalising it in place saves a copy of it.
    Falls back to :func:`_group_norm_relu` for other layouts and dtypes, autograd and tracing.
    """
    b, c, h, w = x.shape
    g = norm.num_groups
    nhwc = x.permute(0, 2, 3, 1)
    # float32 only: under autocast F.group_norm computes in float32, and so must the stats here
    if _tracing() or x.requires_grad or x.dtype != torch.float32 or not nhwc.is_contiguous():
        return _group_norm_relu(x, norm)
    v = nhwc.view(b, h * w, g, c // g)  # the channels-last memory itself
    var, mean = torch.var_mean(v, dim=(1, 3), keepdim=True, correction=0)
    scale = norm.weight.view(1, 1, g, c // g) * torch.rsqrt(var + norm.eps)
    shift = norm.bias.view(1, 1, g, c // g) - mean * scale
    torch.addcmul(shift, v, scale, out=v)
    v.relu_()
    return x


def _frozen_group_norm(norm: nn.GroupNorm) -> nn.GroupNorm:
    out = nn.GroupNorm(norm.num_groups, norm.num_channels, eps=norm.eps, device=norm.weight.device)
    out.weight = _param(norm.weight, norm.weight)
    out.bias = _param(norm.bias, norm.weight)
    return out


class FastHamLevel(nn.Module):
    """A :class:`HamLevel` after its squeeze conv: GN-ReLU, hamburger, align, classifier."""

    def __init__(self, level: HamLevel) -> None:
        super().__init__()
        ham: Hamburger = level.hamburger
        self.squeeze_norm = _frozen_group_norm(level.squeeze.norm)
        self.ham_in = FusedConv.of(ham.ham_in)
        self.nmf = FastNMF(ham.ham)
        self.ham_out = FusedConv.of(ham.ham_out)
        self.ham_out_norm = _frozen_group_norm(ham.ham_out_norm)
        self.align = FusedConv.of(level.align.conv)
        self.align_norm = _frozen_group_norm(level.align.norm)
        self.classifier = FusedConv.of(level.classifier)

    def forward(self, squeezed: torch.Tensor, fused: bool) -> torch.Tensor:
        """(B, C, h, w) squeeze-conv output (consumed: normalised in place) -> aligned features F."""
        y = _group_norm_relu_(squeezed, self.squeeze_norm)
        e = self.nmf(self.ham_in(y, fused, act="relu"), overwrite_input=True)
        e = self.ham_out(e.contiguous(memory_format=_format_of(y)), fused)
        # ReLU(y + GN(e))
        norm = self.ham_out_norm
        y = F.group_norm(e, norm.num_groups, norm.weight, norm.bias, norm.eps).add_(y).relu_()
        return _group_norm_relu(self.align(y, fused), self.align_norm)


def _format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last when ``x`` is laid out so (and not also plain contiguous), else contiguous."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _split_squeeze(conv: nn.Conv2d, sizes: list[int]) -> list[torch.Tensor]:
    """The (C, c_in, 1, 1) squeeze weight split along its inputs, float64."""
    return list(torch.split(conv.weight.detach().double(), sizes, dim=1))


class FastProgressiveDecoder(nn.Module):
    """:class:`ProgressiveDecoder` with each level's squeeze split by input and applied pre-upsample."""

    def __init__(self, decoder: ProgressiveDecoder, encoder_channels: tuple[int, ...]) -> None:
        super().__init__()
        self.residual_maps = decoder.residual_maps
        self.levels = nn.ModuleList(FastHamLevel(level) for level in decoder.levels)
        coarse_first = list(encoder_channels)[::-1]
        self.enc_squeeze = nn.ModuleList()
        self.prev_squeeze = nn.ModuleList()
        self.prev_map_weight = nn.ParameterList()
        widths = [level.align.conv.out_channels for level in decoder.levels]
        for k, (level, enc) in enumerate(zip(decoder.levels, coarse_first, strict=True)):
            conv = level.squeeze.conv
            like = conv.weight
            if k == 0:
                self.enc_squeeze.append(FusedConv(conv.weight.detach(), None, like))
                continue
            w_e, w_f, w_m = _split_squeeze(conv, [enc, widths[k - 1], 1])
            self.enc_squeeze.append(FusedConv(w_e, None, like))
            if self.residual_maps:
                # the previous map is a running sum, not classifier(F): keep its term apart
                self.prev_squeeze.append(FusedConv(w_f, None, like))
                self.prev_map_weight.append(_param(w_m.reshape(1, -1, 1, 1), like))  # (1, C, 1, 1)
            else:
                # W_f F + w_m (W_cls F + b_cls) = (W_f + w_m W_cls) F + w_m b_cls
                w_cls, b_cls = _weight_bias(decoder.levels[k - 1].classifier)
                weight = w_f[:, :, 0, 0] + w_m[:, :, 0, 0] @ w_cls[:, :, 0, 0]
                self.prev_squeeze.append(FusedConv(weight[:, :, None, None], w_m[:, 0, 0, 0] * b_cls, like))

    def forward(
        self, features: list[torch.Tensor], fused: bool, return_levels: bool = False
    ) -> list[torch.Tensor]:
        """Encoder maps (stride 4 first) -> [final logits], or every level's logits coarse to fine."""
        enc = features[::-1]
        maps: list[torch.Tensor] = []
        feats: torch.Tensor | None = None
        prev_map: torch.Tensor | None = None
        n = len(self.levels)
        for k, (level, e) in enumerate(zip(self.levels, enc, strict=True)):
            if feats is None:
                squeezed = self.enc_squeeze[k](e, fused)
            else:
                # W [E; up2(F); up2(M)] = W_e E + up2(W_f F + w_m M): the F and M terms before the upsample
                low = self.prev_squeeze[k - 1](feats, fused)
                if self.residual_maps and prev_map is not None:  # prev_map: (B, 1, h, w), every level
                    low = low.addcmul_(prev_map, self.prev_map_weight[k - 1])
                up = resize_to(low, e.shape[-2:]).contiguous(memory_format=_format_of(e))
                del low
                # the sum goes into ``up`` (ours, not needed after): one stride-4 map less at the peak
                squeezed = self.enc_squeeze[k](e, fused, other=up, op="add", into_other=True)
                del up
            feats = level(squeezed, fused)
            if return_levels or self.residual_maps or k == n - 1:
                logits = level.classifier(feats, fused)
                if self.residual_maps and prev_map is not None:
                    logits = logits + resize_to(prev_map, logits.shape[-2:])
                prev_map = logits
                maps.append(logits)
        return maps if return_levels else maps[-1:]


class FastLightHamHead(nn.Module):
    """:class:`LightHamHead` with the squeeze of strides 16 and 32 applied before their upsample."""

    def __init__(self, head: LightHamHead, encoder_channels: tuple[int, ...]) -> None:
        super().__init__()
        conv = head.level.squeeze.conv
        parts = _split_squeeze(conv, list(encoder_channels)[1:])
        self.squeeze = nn.ModuleList(FusedConv(w, None, conv.weight) for w in parts)
        self.level = FastHamLevel(head.level)

    def forward(
        self, features: list[torch.Tensor], fused: bool, return_levels: bool = False
    ) -> list[torch.Tensor]:
        f8, f16, f32 = features[1:]
        size = f8.shape[-2:]
        # W [f8; up(f16); up(f32)] = W8 f8 + up(W16 f16) + up(W32 f32)
        other = resize_to(self.squeeze[1](f16, fused), size)
        other = other + resize_to(self.squeeze[2](f32, fused), size)
        squeezed = self.squeeze[0](f8, fused, other=other.contiguous(memory_format=_format_of(f8)), op="add")
        feats = self.level(squeezed, fused)
        return [self.level.classifier(feats, fused)]


# ----------------------------------------------------------------------------------------------
# the whole network


class FastPDSeg(nn.Module):
    """The inference-only form :func:`optimize` returns; call it as the PDSeg it came from.

    Attributes:
        config, normalization, train_size: copied from the source model.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast inside ``forward``).
        channels_last: whether inputs are turned channels-last.
        use_fused_ops: whether oneDNN fused-epilogue convolutions are used when they apply.
    """

    def __init__(self, model: PDSeg, precision: str, channels_last: bool, use_fused_ops: bool) -> None:
        super().__init__()
        self.config = model.config
        self.normalization: Mapping[str, Any] = model.normalization
        self.train_size: int | None = model.train_size
        self.precision = precision
        self.channels_last = channels_last
        self.use_fused_ops = use_fused_ops
        # CPU: (above, size): MLP hidden maps over ``above`` bytes go in bands of ``size`` bytes; None: off
        self.mlp_bands: tuple[int, int] | None = (MLP_BAND_ABOVE, MLP_BAND_BYTES)
        self.strides: tuple[int, ...] = tuple(model.decoder.strides)
        self.encoder = FastEncoder(model.encoder)
        decoder: nn.Module
        if isinstance(model.decoder, ProgressiveDecoder):
            decoder = FastProgressiveDecoder(model.decoder, model.encoder.out_channels)
        elif isinstance(model.decoder, LightHamHead):
            decoder = FastLightHamHead(model.decoder, model.encoder.out_channels)
        else:
            raise TypeError(f"optimize does not know the decoder {type(model.decoder).__name__}")
        self.decoder = decoder
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.eval()

    @property
    def level_strides(self) -> tuple[int, ...]:
        return self.strides

    def _fuse(self, x: torch.Tensor) -> bool:
        """Whether this call can use the oneDNN fused operators (CPU fp32, no autograd/tracing)."""
        return (
            self.use_fused_ops
            and self.channels_last
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.encoder.norms[0].weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and x.requires_grad)
            and not _tracing()
        )

    def forward(self, x: torch.Tensor, return_levels: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Segment a batch: (B, 3, H, W) normalised float, any H and W -> logits (B, 1, H, W).

        The same contract as :meth:`PDSeg.forward`; outputs are float32 in every precision.
        """
        size = x.shape[-2:]
        x = pad_input(x, self.config.pad_multiple)
        padded = x.shape[-2:]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.precision == "fp32":
            ctx: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        else:
            ctx = torch.autocast(device_type=x.device.type, dtype=_AUTOCAST_DTYPES[self.precision])
        with ctx:
            fused = self._fuse(x)
            bands = self.mlp_bands if x.device.type == "cpu" and not _tracing() else None
            levels = self.decoder(self.encoder(x, fused, bands), fused, return_levels)
        # float32 logits in every precision
        outs = crop_levels([level.float() for level in levels], padded, size)
        return outs if return_levels else outs[0]

    def extra_repr(self) -> str:
        return (
            f"variant={self.config.name}, precision={self.precision}, channels_last={self.channels_last}, "
            f"fused_ops={self.use_fused_ops}"
        )


# ----------------------------------------------------------------------------------------------
# entry point


def _tracing() -> bool:
    """Under torch.jit tracing/scripting, ONNX export or torch.compile: keep the graph plain."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


@functools.cache
def fused_ops_available() -> bool:
    """Whether oneDNN's fused convolution operators exist here and give F.conv2d's numbers (cached)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        mk = torch.ops.mkldnn
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(1, 8, 6, 5, generator=gen).contiguous(memory_format=torch.channels_last)
        w = torch.rand(8, 1, 3, 3, generator=gen)
        b = torch.rand(8, generator=gen)
        args = ([1, 1], [1, 1], [1, 1], 8)
        with torch.inference_mode():
            conv = F.conv2d(x, w, b, padding=1, groups=8)
            pairs = [
                (mk._convolution_pointwise(x, w, b, *args, "gelu", [], "none"), F.gelu(conv)),
                (mk._convolution_pointwise(x, w, b, *args, "relu", [], None), conv.relu()),
                (mk._convolution_pointwise.binary(x, x, w, b, *args, "mul", None, None, [], None), conv * x),
                (mk._convolution_pointwise.binary(x, x, w, b, *args, "add", None, None, [], None), conv + x),
            ]
        return all(torch.allclose(got, want, atol=1e-5, rtol=1e-5) for got, want in pairs)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def optimize(
    model: nn.Module,
    *,
    precision: str = "fp32",
    channels_last: bool = True,
    compile: bool | str | None = False,
) -> nn.Module:
    """Build the inference-only fast form of a PDSeg network from its current parameters.

    Args:
        model: a :class:`PDSeg` (also inside DDP or ``torch.compile``), in any mode. It is not
            changed: the fast form holds its own folded copies of the weights (about one more copy
            of the model's memory), on the model's device.
        precision: ``fp32`` (the plain path's maths: max |delta logit| <= 1e-4), or ``bf16`` /
            ``fp16`` (autocast around the forward; the NMF stays fp32).
        channels_last: run in channels-last layout (faster on CPU and GPU).
        compile: False or None for the eager form; ``True`` or a mode of
            :data:`pdseg_cli.runtime.COMPILE_MODES` to return ``torch.compile`` of the fast form
            (optional; the first call of each input shape compiles, which takes a minute or more).
            ``"reduce-overhead"`` replays CUDA graphs on a GPU (fewer kernel launches). A
            compilation that fails raises :class:`~pdseg_cli.errors.NotAvailableError`.

    Returns:
        A module taking what ``model`` takes, a (B, 3, H, W) normalised float tensor of any H, W,
        and returning the final logits (B, 1, H, W) float32 (``return_levels=True`` also works).
        It has ``config``, ``train_size`` and ``normalization`` like the source model, is in eval
        mode, and requires no gradients. Eval-mode semantics are used whatever ``model``'s mode:
        BN running statistics, the fixed NMF bases and the eval step count; no dropout.

    Raises:
        TypeError: ``model`` is not a PDSeg network.
        ValueError: an unknown precision or compile mode.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if isinstance(compile, str) and compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
    net = unwrap_model(model)
    if isinstance(net, FastPDSeg):
        raise TypeError("this model is already optimised; optimise the PDSeg model it came from")
    if not isinstance(net, PDSeg):
        raise TypeError(f"optimize needs a PDSeg model, got {type(net).__name__}")
    if any(p.is_meta for p in net.parameters()):
        raise ValueError("optimize needs a model with weights (this one is on the meta device)")
    with torch.no_grad():
        fast = FastPDSeg(
            net,
            precision=precision,
            channels_last=channels_last,
            use_fused_ops=not compile and fused_ops_available(),
        )
    if compile:
        return CompiledPDSeg(fast, "default" if compile is True else str(compile))
    return fast


class CompiledPDSeg(nn.Module):
    """``torch.compile`` of a :class:`FastPDSeg`, called as the PDSeg it came from.

    A failed compilation (no C++ compiler for Inductor on the CPU, an unsupported GPU, ...) is
    raised as a one-line :class:`NotAvailableError` that names the way out, not as a compiler
    traceback. ``module`` is the fast form (``unwrap_model`` finds it there).
    """

    def __init__(self, fast: FastPDSeg, mode: str) -> None:
        super().__init__()
        self.module = fast
        self.mode = mode
        self.config = fast.config
        self.normalization = fast.normalization
        self.train_size = fast.train_size
        # not a registered submodule: its parameters are ``module``'s
        object.__setattr__(self, "_compiled", torch.compile(fast, mode=None if mode == "default" else mode))

    @property
    def level_strides(self) -> tuple[int, ...]:
        return self.module.level_strides

    def forward(self, x: torch.Tensor, return_levels: bool = False) -> torch.Tensor | list[torch.Tensor]:
        try:
            return self._compiled(x, return_levels)  # type: ignore[operator]
        except torch._dynamo.exc.TorchDynamoException as exc:
            raise NotAvailableError(
                f"torch.compile ({self.mode}) failed on this machine: {first_line(exc)}",
                hint="run without --compile (compile=False): the eager form gives the same maps",
            ) from exc

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


__all__ = ["CompiledPDSeg", "FastPDSeg", "fused_ops_available", "optimize"]
