"""MSCAN, the multi-scale convolutional attention encoder of SegNeXt.

Guo, Lu, Hou, Liu, Cheng, Hu, "SegNeXt: Rethinking Convolutional Attention Design for Semantic
Segmentation", NeurIPS 2022.

Written from the description in ``docs/model.md``, 'Encoder', and checked against the public
SegNeXt code (Visual-Attention-Network/SegNeXt, mmseg/models/backbones/mscan.py). Module names follow
that code exactly, so the official ImageNet weights (``mscan_t/s/b/l.pth``) load with strict keys:
``patch_embed{i}``, ``block{i}.{j}.{norm1,attn,norm2,mlp,layer_scale_1,layer_scale_2}``, ``norm{i}``.
Differences: plain ``BatchNorm2d`` instead of SyncBN, and feature maps stay (B, C, H, W) between
blocks instead of being flattened to tokens (the arithmetic is the same).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from pdseg_cli.model.fusion import (
    FusedConv,
    InferenceForm,
    bn_scale_shift,
    fast_form,
    float64_on_cpu,
    fold_bn_after,
    fold_bn_before,
    frozen_param,
    memory_format_of,
    tracing,
    weight_bias,
)
from pdseg_cli.model.layers import DropPath, LayerNorm2d

STRIDES = (4, 8, 16, 32)
LAYER_SCALE_INIT = 1e-2  # gamma_1 and gamma_2 start at 0.01 (SegNeXt)
# Inference form, CPU: an MLP hidden map larger than MLP_BAND_ABOVE bytes is processed in bands of
# rows of about MLP_BAND_BYTES: they stay in cache, and no large buffer is allocated (fresh large
# buffers come from mmap and page-fault on every forward pass). Smaller maps are as fast whole.
MLP_BAND_ABOVE = 8 << 20
MLP_BAND_BYTES = 4 << 20


def _strip21_hangs(x: torch.Tensor) -> bool:
    """Whether the depth-wise (1, 21) strip conv of ``x`` would hit a oneDNN hang: in bf16 on the CPU,
    on a channels-last map of at most 16 channels (width >= 32), generating the brdgmm kernel
    (``jit_brdgmm_kernel_base_t::generate``) never returns on an AVX512-BF16 AMD EPYC (PyTorch 2.13).
    The 1x7, 1x11 and vertical strips, 24+ channels and NCHW maps are fine, so only pdseg-tiny's
    16-channel stage is affected. Never true for fp32, on GPUs, or while tracing/exporting/compiling.
    """
    return (
        x.shape[1] <= 16
        and x.device.type == "cpu"
        and (
            x.dtype == torch.bfloat16
            or (torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        )
        and memory_format_of(x) == torch.channels_last
        and not tracing()
    )


def _nchw_strip21(conv: nn.Conv2d | FusedConv, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` (no epilogue) with ``x`` and the weight as NCHW copies: a different oneDNN kernel
    (oneDNN goes channels-last when either is), the same sums; the result turned back to
    channels-last. The way round :func:`_strip21_hangs`. (A channels-last (C, 1, 1, 21) weight is
    also "contiguous", so ``contiguous()`` would keep its strides: it is cloned.)
    """
    weight = conv.weight.clone(memory_format=torch.contiguous_format)
    y = F.conv2d(x.contiguous(), weight, conv.bias, conv.stride, conv.padding, 1, conv.groups)
    return y.contiguous(memory_format=torch.channels_last)


def _plain(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return conv(x)


class StemConv(nn.Module):
    """Stage-1 downsampling by 4: two 3x3 stride-2 convolutions with BN, GELU between.

    ``proj`` is a 5-element sequence, as in the official weights (``patch_embed1.proj.{0,1,3,4}``).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, out_channels // 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(out_channels // 2),
            nn.GELU(),
            nn.Conv2d(out_channels // 2, out_channels, 3, stride=2, padding=1),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (B, 3, H, W) -> (B, C, H/4, W/4)

    def fast(self) -> FastStem:
        return FastStem(self)


class DownsampleConv(nn.Module):
    """Stages 2-4 downsampling by 2: one 3x3 stride-2 convolution and BN (``OverlapPatchEmbed``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))  # (B, C_prev, H, W) -> (B, C, H/2, W/2)

    def fast(self) -> FastDownsample:
        return FastDownsample(self)


class MSCA(nn.Module):
    """Multi-scale convolutional attention: a 5x5 depth-wise conv, three depth-wise strip branches
    (1x7/7x1, 1x11/11x1, 1x21/21x1), a 1x1 channel mix, then gating of the input.

    The official name of this module is ``AttentionModule``; its attribute names are kept.
    """

    FOLDED_BY: ClassVar[str] = "Block"

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv0_1 = nn.Conv2d(dim, dim, (1, 7), padding=(0, 3), groups=dim)
        self.conv0_2 = nn.Conv2d(dim, dim, (7, 1), padding=(3, 0), groups=dim)
        self.conv1_1 = nn.Conv2d(dim, dim, (1, 11), padding=(0, 5), groups=dim)
        self.conv1_2 = nn.Conv2d(dim, dim, (11, 1), padding=(5, 0), groups=dim)
        self.conv2_1 = nn.Conv2d(dim, dim, (1, 21), padding=(0, 10), groups=dim)
        self.conv2_2 = nn.Conv2d(dim, dim, (21, 1), padding=(10, 0), groups=dim)
        self.conv3 = nn.Conv2d(dim, dim, 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        s = self.conv0(u)
        # The branches are called in the original order, the (1, 21) strip last: calling it first
        # (to choose its kernel) changed the order in which backward adds the gradients into s, and
        # so fp32 training of every variant in its last bits (a run resumed across that change
        # did not end as it would have).
        strip21 = _nchw_strip21 if _strip21_hangs(s) else _plain
        t = (
            s
            + self.conv0_2(self.conv0_1(s))
            + self.conv1_2(self.conv1_1(s))
            + self.conv2_2(strip21(self.conv2_1, s))
        )
        return self.conv3(t) * u


class SpatialAttention(nn.Module):
    """1x1 conv, GELU, MSCA, 1x1 conv, plus a shortcut from the (normalised) input."""

    FOLDED_BY: ClassVar[str] = "Block"

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = MSCA(dim)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(a)))) + a


class DWConv(nn.Module):
    """3x3 depth-wise convolution with bias, wrapped so its key is ``mlp.dwconv.dwconv``."""

    FOLDED_BY: ClassVar[str] = "Block"

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dwconv(x)


class MLP(nn.Module):
    """1x1 conv C -> rC, 3x3 depth-wise conv, GELU, 1x1 conv rC -> C (dropout 0, so none)."""

    FOLDED_BY: ClassVar[str] = "Block"

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class Block(nn.Module):
    """One MSCAN block: x += DropPath(g1 * Attn(BN1(x))); x += DropPath(g2 * MLP(BN2(x))).

    Args:
        dim: channels C.
        mlp_ratio: hidden width of the MLP is ``mlp_ratio * C``.
        drop_path: drop-path probability of this block.
    """

    def __init__(self, dim: int, mlp_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = SpatialAttention(dim)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # layer scales (C,) -> (C, 1, 1) to broadcast over (B, C, H, W)
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))
        return x

    def fast(self) -> FastBlock:
        return FastBlock(self)


class MSCAN(nn.Module):
    """The MSCAN encoder: four stages at strides 4, 8, 16 and 32.

    Args:
        embed_dims: channels of stages 1-4.
        depths: blocks per stage.
        mlp_ratios: MLP expansion per stage.
        drop_path_rate: drop-path probability of the last block; it rises linearly from 0.
        in_channels: input channels (3 for RGB).

    Attributes:
        out_channels: channels of the four outputs, stage 1 first.
        strides: strides of the four outputs relative to the input.
    """

    def __init__(
        self,
        embed_dims: Sequence[int],
        depths: Sequence[int],
        mlp_ratios: Sequence[int],
        drop_path_rate: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.out_channels: tuple[int, ...] = tuple(int(d) for d in embed_dims)
        self.strides: tuple[int, ...] = STRIDES
        self.depths = tuple(int(d) for d in depths)
        total = sum(self.depths)
        rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        cur = 0
        prev = in_channels
        for i, (dim, depth, ratio) in enumerate(
            zip(self.out_channels, self.depths, mlp_ratios, strict=True), start=1
        ):
            embed: nn.Module = StemConv(prev, dim) if i == 1 else DownsampleConv(prev, dim)
            blocks = nn.ModuleList(Block(dim, int(ratio), rates[cur + j]) for j in range(depth))
            setattr(self, f"patch_embed{i}", embed)
            setattr(self, f"block{i}", blocks)
            setattr(self, f"norm{i}", LayerNorm2d(dim))
            cur += depth
            prev = dim
        self._init_weights()

    def _init_weights(self) -> None:
        # SegNeXt's init when no pretrained weights are given: conv normal(0, sqrt(2 / fan_out)),
        # bias 0; BN and LayerNorm weight 1, bias 0 (the torch defaults). Skipped on the meta device
        # (no values to set; counting builds there and the init would dominate its time).
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode an image batch.

        Args:
            x: (B, 3, H, W) float, normalised; H and W multiples of 32 give exact strides.

        Returns:
            Four maps (B, C_i, H / s_i, W / s_i) for strides s_i = 4, 8, 16, 32.
        """
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                x = block(x)
            x = getattr(self, f"norm{i}")(x)
            outs.append(x)
        return outs

    def fast(self) -> FastEncoder:
        return FastEncoder(self)


# ----------------------------------------------------------------------------------------------
# inference forms (docs/model.md, 'Inference form')


class FastStem(InferenceForm):
    """:class:`StemConv` with both BNs folded into their convolutions; the GELU is the first's epilogue."""

    def __init__(self, stem: StemConv) -> None:
        super().__init__()
        conv1, bn1, _, conv2, bn2 = stem.proj
        conv1, conv2 = cast(nn.Conv2d, conv1), cast(nn.Conv2d, conv2)
        bn1, bn2 = cast(nn.BatchNorm2d, bn1), cast(nn.BatchNorm2d, bn2)
        # torch types Conv2d's stride and padding as any tuple (padding: or a str); a 3x3 conv's are pairs
        self.conv1 = FusedConv(
            *fold_bn_after(conv1, bn1),
            conv1.weight,
            stride=conv1.stride,  # type: ignore[arg-type]
            padding=conv1.padding,  # type: ignore[arg-type]
        )
        self.conv2 = FusedConv(
            *fold_bn_after(conv2, bn2),
            conv2.weight,
            stride=conv2.stride,  # type: ignore[arg-type]
            padding=conv2.padding,  # type: ignore[arg-type]
        )

    def forward(self, x: torch.Tensor, fused: bool) -> torch.Tensor:
        return self.conv2(self.conv1(x, fused, act="gelu"), fused)


class FastDownsample(InferenceForm):
    """:class:`DownsampleConv` with its BN folded into the convolution."""

    def __init__(self, embed: DownsampleConv) -> None:
        super().__init__()
        conv = embed.proj
        self.conv = FusedConv(
            *fold_bn_after(conv, embed.norm),
            conv.weight,
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
        )

    def forward(self, x: torch.Tensor, fused: bool) -> torch.Tensor:
        return self.conv(x, fused)


class FastBlock(InferenceForm):
    """One MSCAN block with BN1, BN2 and both layer scales folded.

    BN2 is folded into ``fc1`` and BN1 into ``proj_1`` (BN before a 1x1 conv). BN1's output ``a`` is
    also the attention's inner shortcut, so that term is carried algebraically, and the layer scales
    g1, g2 go into ``proj_2`` and ``fc2``::

        x + g1 * (proj_2(v) + BN1(x)) = (1 + g1 * s1) * x + (g1 * W2) v + g1 * (b2 + t1)

    where BN1(x) = s1 * x + t1. The MSCA strip branches are summed as they are produced: each
    vertical strip conv adds the running sum in its epilogue (t = s + V7 H7 s, then + V11 H11 s, then
    + V21 H21 s), and the 1x1 ``conv3`` multiplies by ``u`` in its epilogue. (One-conv forms of the
    three branches, a depth-wise conv with multiplier 3 or a grouped conv of 3 channels per group,
    were much slower than three depth-wise convs on oneDNN, so the branches stay separate.) On the
    CPU the MLP of a large map runs in bands of rows (:meth:`_mlp_bands`).
    """

    def __init__(self, block: Block) -> None:
        super().__init__()
        attn, msca, mlp = block.attn, block.attn.spatial_gating_unit, block.mlp
        like = attn.proj_1.weight
        self.proj_1 = FusedConv(*fold_bn_before(block.norm1, attn.proj_1), like)
        self.conv0 = FusedConv.of(msca.conv0)
        self.strips = nn.ModuleList(
            FusedConv.of(c)
            for c in (msca.conv0_1, msca.conv0_2, msca.conv1_1, msca.conv1_2, msca.conv2_1, msca.conv2_2)
        )
        self.conv3 = FusedConv.of(msca.conv3)
        # x + g1 * (W2 v + b2 + s1 x + t1) = (1 + g1 s1) x + (g1 W2) v + g1 (b2 + t1)
        g1 = float64_on_cpu(block.layer_scale_1)
        s1, t1 = bn_scale_shift(block.norm1)
        w2, b2 = weight_bias(attn.proj_2)
        self.proj_2 = FusedConv(w2 * g1[:, None, None, None], g1 * (b2 + t1), like)
        self.skip_scale = frozen_param((1.0 + g1 * s1)[None, :, None, None], like)  # (1, C, 1, 1)
        self.fc1 = FusedConv(*fold_bn_before(block.norm2, mlp.fc1), like)
        self.dwconv = FusedConv.of(mlp.dwconv.dwconv)
        g2 = float64_on_cpu(block.layer_scale_2)
        w4, b4 = weight_bias(mlp.fc2)
        self.fc2 = FusedConv(w4 * g2[:, None, None, None], g2 * b4, like)

    def forward(self, x: torch.Tensor, fused: bool, bands: tuple[int, int] | None = None) -> torch.Tensor:
        u = self.proj_1(x, fused, act="gelu")
        s = self.conv0(u, fused)
        t = s
        for horizontal, vertical in zip(self.strips[0::2], self.strips[1::2], strict=True):
            horizontal = cast(FusedConv, horizontal)  # self.strips holds FusedConvs
            # t <- V_k(H_k(s)) + t: the plain path's ((s + a) + b) + c, term by term; after the
            # first branch t is a map of our own, so the sum goes into it (fewer maps at the peak)
            if horizontal.weight.shape[-1] == 21 and _strip21_hangs(s):
                h = _nchw_strip21(horizontal, s)
            else:
                h = horizontal(s, fused)
            t = vertical(h, fused, other=t, op="add", into_other=t is not s)
        del s
        v = self.conv3(t, fused, other=u, op="mul", into_other=True)  # u: not needed after
        del t, u
        y = self.proj_2(v, fused)
        del v
        # y + (1 + g1 s1) x, a fresh map (the MLP may write into it); the ONNX exporter turns addcmul_
        # into fp32 maths, so traced graphs get the two-op form
        x = y.add_(x * self.skip_scale) if tracing() else y.addcmul_(x, self.skip_scale)
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
        fmt = memory_format_of(x)
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


class FastEncoder(InferenceForm):
    """MSCAN made of its parts' inference forms; returns the same four maps."""

    def __init__(self, encoder: MSCAN) -> None:
        super().__init__()
        self.embeds = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i in range(1, 5):
            self.embeds.append(fast_form(getattr(encoder, f"patch_embed{i}"), f"encoder.patch_embed{i}"))
            blocks = getattr(encoder, f"block{i}")
            self.stages.append(
                nn.ModuleList(fast_form(block, f"encoder.block{i}.{j}") for j, block in enumerate(blocks))
            )
            self.norms.append(fast_form(getattr(encoder, f"norm{i}"), f"encoder.norm{i}"))

    def forward(
        self, x: torch.Tensor, fused: bool, bands: tuple[int, int] | None = None
    ) -> list[torch.Tensor]:
        outs = []
        for embed, blocks, norm in zip(self.embeds, self.stages, self.norms, strict=True):
            x = embed(x, fused)
            for block in cast(nn.ModuleList, blocks):
                x = block(x, fused, bands)
            x = norm(x)  # LayerNorm2d reads the channels-last memory as it is (a free permute)
            outs.append(x)
        return outs
