"""Small blocks shared by the encoder and the decoders."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pdseg_cli.model.fusion import frozen_param

FOREGROUND_PRIOR = 0.1  # initial foreground probability of every decoder classifier


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample (Huang et al., ECCV 2016).

    Identity in eval mode or when ``p == 0``; in training, kept samples are scaled by 1 / (1 - p) so
    the expected value is unchanged.

    Args:
        p: probability of dropping the branch for one sample.
    """

    FOLDED_BY: ClassVar[str] = "Block"  # the identity in eval mode: inference forms leave it out

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        # (B, 1, 1, ...) mask: one draw per sample
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (channels-last inside).

    Subclasses ``nn.LayerNorm`` so the parameters keep the names ``weight`` and ``bias`` (the MSCAN
    stage norms ``norm{i}`` of the official checkpoints).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, H, W, C) -> norm over C -> (B, C, H, W)
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)

    def fast(self) -> LayerNorm2d:
        """Its inference form: a frozen float32 copy (on a channels-last map the permutes are free)."""
        norm = LayerNorm2d(self.normalized_shape, eps=self.eps, device=self.weight.device)
        norm.weight = frozen_param(self.weight, self.weight)
        norm.bias = frozen_param(self.bias, self.weight)
        return norm


class ConvGNReLU(nn.Module):
    """1x1 convolution without bias, GroupNorm, ReLU: mmcv's ``ConvModule`` as SegNeXt's heads use it.

    Args:
        in_channels: input channels.
        out_channels: output channels; must divide by ``groups``.
        groups: GroupNorm groups.
    """

    FOLDED_BY: ClassVar[str] = "HamLevel"

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm = nn.GroupNorm(groups, out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize of a (B, C, H, W) map to ``size`` (align_corners=False); no-op if already there."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def init_decoder_weights(module: nn.Module, classifier: nn.Conv2d) -> None:
    """Initialise a decode head as mmseg does.

    1x1 convolutions: Kaiming normal (fan_out, ReLU gain), bias 0 (mmcv ``ConvModule``). GroupNorm:
    weight 1, bias 0. The classifier: normal(0, 0.01) (mmseg ``BaseDecodeHead.conv_seg``), bias
    logit(:data:`FOREGROUND_PRIOR`).
    Nothing to do on the meta device.
    """
    if classifier.weight.is_meta:
        return
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.normal_(classifier.weight, std=0.01)
    if classifier.bias is not None:
        # The prior-probability init of RetinaNet (Lin et al., ICCV 2017) instead of mmseg's 0: most
        # pixels are background, so at p = 0.5 every first step pushes all classifier weights and
        # the features under them down together, and the 32-wide stride-4 level of pdseg-t ended
        # with every ReLU dead and a constant map (the 0.1 demo weights; and from scratch on the
        # DAVIS sets, 2 of 2 runs). Starting at p = FOREGROUND_PRIOR it learns like the others.
        nn.init.constant_(classifier.bias, math.log(FOREGROUND_PRIOR / (1.0 - FOREGROUND_PRIOR)))


def pad_input(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Check a model input and zero-pad it on the bottom and right to a multiple of ``multiple``.

    Args:
        x: (B, 3, H, W) normalised float.
        multiple: the model's total stride (32).

    Returns:
        (B, 3, H + pad_h, W + pad_w); the caller crops its outputs back to (H, W).
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


def crop_levels(
    levels: list[torch.Tensor], padded: tuple[int, int] | torch.Size, size: tuple[int, int] | torch.Size
) -> list[torch.Tensor]:
    """Each level's logits (B, 1, H / s, W / s) -> padded size (bilinear) -> cropped to ``size`` (H, W)."""
    h, w = size
    return [resize_to(level, padded)[..., :h, :w] for level in levels]
