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

import torch
from torch import nn

from pdseg_cli.model.layers import DropPath, LayerNorm2d

STRIDES = (4, 8, 16, 32)
LAYER_SCALE_INIT = 1e-2  # gamma_1 and gamma_2 start at 0.01 (SegNeXt)


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


class DownsampleConv(nn.Module):
    """Stages 2-4 downsampling by 2: one 3x3 stride-2 convolution and BN (``OverlapPatchEmbed``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))  # (B, C_prev, H, W) -> (B, C, H/2, W/2)


class MSCA(nn.Module):
    """Multi-scale convolutional attention: a 5x5 depth-wise conv, three depth-wise strip branches
    (1x7/7x1, 1x11/11x1, 1x21/21x1), a 1x1 channel mix, then gating of the input.

    The official name of this module is ``AttentionModule``; its attribute names are kept.
    """

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
        t = s + self.conv0_2(self.conv0_1(s)) + self.conv1_2(self.conv1_1(s)) + self.conv2_2(self.conv2_1(s))
        return self.conv3(t) * u


class SpatialAttention(nn.Module):
    """1x1 conv, GELU, MSCA, 1x1 conv, plus a shortcut from the (normalised) input."""

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

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dwconv(x)


class MLP(nn.Module):
    """1x1 conv C -> rC, 3x3 depth-wise conv, GELU, 1x1 conv rC -> C (dropout 0, so none)."""

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
