"""Decoders on top of the MSCAN features: the progressive decoder of PDSeg, and SegNeXt's single head.

Zhu, Ahmed, Li, Shen, Jin, "One-stage Progressive Dichotomous Segmentation", BMVC 2023.

The paper publishes no code. :class:`ProgressiveDecoder` is our design "P1" (``docs/model.md``,
'Decoder'): its data flow follows the paper's poster, its widths are our guess, fitted to the paper's
28.0M parameters and 129.2 GMACs. :class:`LightHamHead` is SegNeXt's head (``docs/model.md``,
'Single head'), the single-head baseline of the paper's ablation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pdseg_cli.config import decoder_groups
from pdseg_cli.model.ham import Hamburger
from pdseg_cli.model.layers import ConvGNReLU, init_decoder_weights, resize_to


class HamLevel(nn.Module):
    """squeeze (1x1 conv, GN, ReLU) -> Hamburger -> align (1x1 conv, GN, ReLU) -> Dropout2d -> 1x1 conv.

    Args:
        in_channels: input channels.
        channels: C, the width of the level.
        rank: NMF rank.
        train_steps: NMF steps in training mode.
        eval_steps: NMF steps in eval mode.
        seed: seed of the eval-mode NMF bases.
        groups: GroupNorm groups.
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        rank: int,
        train_steps: int,
        eval_steps: int,
        seed: int,
        groups: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.squeeze = ConvGNReLU(in_channels, channels, groups)
        self.hamburger = Hamburger(channels, rank, train_steps, eval_steps, seed, groups)
        self.align = ConvGNReLU(channels, channels, groups)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, 1, 1)
        init_decoder_weights(self, self.classifier)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, c_in, h, w) -> features F (B, C, h, w) and logits M (B, 1, h, w)."""
        feats = self.align(self.hamburger(self.squeeze(x)))
        return feats, self.classifier(self.dropout(feats))


class ProgressiveDecoder(nn.Module):
    """Four hamburger levels at strides 32, 16, 8, 4, each refining the previous level's map.

    Level 1 reads E32. Level k > 1 reads concat[E_s, up2(F_{k-1}), up2(M_{k-1})], where E_s is the
    encoder map at its stride, F the previous level's aligned features and M its logits (not
    detached).

    Args:
        encoder_channels: channels of the encoder maps at strides 4, 8, 16, 32 (stage 1 first).
        widths: level widths, coarse to fine (stride 32 first).
        rank: NMF rank at every level.
        train_steps: NMF steps in training mode.
        eval_steps: NMF steps in eval mode.
        seed: seed of the eval-mode NMF bases (level k uses seed + k - 1).
        groups: GroupNorm groups.
        dropout: Dropout2d probability before each classifier.
        residual_maps: if true, M_k = up2(M_{k-1}) + delta_k.
        min_group_channels: fewest channels per GroupNorm group; a narrow level gets fewer groups
            (:func:`pdseg_cli.config.decoder_groups`).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        widths: Sequence[int],
        rank: int,
        train_steps: int,
        eval_steps: int,
        seed: int = 0,
        groups: int = 32,
        dropout: float = 0.1,
        residual_maps: bool = False,
        min_group_channels: int = 1,
    ) -> None:
        super().__init__()
        if len(encoder_channels) != 4 or len(widths) != 4:
            raise ValueError("the progressive decoder needs 4 encoder maps and 4 widths")
        coarse_first = list(encoder_channels)[::-1]  # channels at strides 32, 16, 8, 4
        self.strides: tuple[int, ...] = (32, 16, 8, 4)
        self.residual_maps = residual_maps
        levels = []
        for k, (enc, width) in enumerate(zip(coarse_first, widths, strict=True)):
            c_in = enc if k == 0 else enc + widths[k - 1] + 1
            g = decoder_groups(width, groups, min_group_channels)
            levels.append(HamLevel(c_in, width, rank, train_steps, eval_steps, seed + k, g, dropout))
        self.levels = nn.ModuleList(levels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Decode the encoder maps.

        Args:
            features: the four encoder maps, stride 4 first (MSCAN's output order).

        Returns:
            Logits (B, 1, H / s, W / s) for s = 32, 16, 8, 4, coarse to fine.
        """
        enc = list(features)[::-1]  # stride 32 first
        maps: list[torch.Tensor] = []
        feats: torch.Tensor | None = None
        for level, e in zip(self.levels, enc, strict=True):
            if feats is None:
                x = e
            else:
                size = e.shape[-2:]
                prev_map = resize_to(maps[-1], size)
                # (B, C_e, h, w) + (B, C_{k-1}, h, w) + (B, 1, h, w) -> (B, c_in, h, w)
                x = torch.cat([e, resize_to(feats, size), prev_map], dim=1)
            feats, logits = level(x)
            if self.residual_maps and maps:
                logits = logits + prev_map
            maps.append(logits)
        return maps


class LightHamHead(nn.Module):
    """SegNeXt's decode head: strides 8, 16, 32 resized to stride 8, concatenated, one hamburger.

    Args:
        encoder_channels: channels of the encoder maps at strides 4, 8, 16, 32 (stage 1 is unused).
        width: ham_channels and channels (equal in every SegNeXt variant).
        rank: NMF rank.
        train_steps: NMF steps in training mode.
        eval_steps: NMF steps in eval mode.
        seed: seed of the eval-mode NMF bases.
        groups: GroupNorm groups (at most).
        dropout: Dropout2d probability before the classifier.
        min_group_channels: fewest channels per GroupNorm group.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        width: int,
        rank: int,
        train_steps: int,
        eval_steps: int,
        seed: int = 0,
        groups: int = 32,
        dropout: float = 0.1,
        min_group_channels: int = 1,
    ) -> None:
        super().__init__()
        self.strides: tuple[int, ...] = (8,)
        c_in = sum(list(encoder_channels)[1:])
        g = decoder_groups(width, groups, min_group_channels)
        self.level = HamLevel(c_in, width, rank, train_steps, eval_steps, seed, g, dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Decode the encoder maps (stride 4 first) into one list holding the (B, 1, H/8, W/8) logits."""
        used = list(features)[1:]
        size = used[0].shape[-2:]
        # resize strides 16 and 32 to stride 8 and concatenate: (B, C2 + C3 + C4, H/8, W/8)
        x = torch.cat([resize_to(f, size) for f in used], dim=1)
        _, logits = self.level(x)
        return [logits]
