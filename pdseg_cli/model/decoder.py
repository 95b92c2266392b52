"""Decoders on top of the MSCAN features: the progressive decoder of PDSeg, and SegNeXt's single head.

Zhu, Ahmed, Li, Shen, Jin, "One-stage Progressive Dichotomous Segmentation", BMVC 2023.

The paper publishes no code. :class:`ProgressiveDecoder` is our design "P1" (``docs/model.md``,
'Decoder'): its data flow follows the paper's poster, its widths are our guess, fitted to the paper's
28.0M parameters and 129.2 GMACs. :class:`LightHamHead` is SegNeXt's head (``docs/model.md``,
'Single head'), the single-head baseline of the paper's ablation. Both are registered by name in
:mod:`pdseg_cli.model.registry`, with their inference forms defined below (``docs/model.md``,
'Inference form').
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from pdseg_cli.config import ModelConfig, decoder_groups
from pdseg_cli.model.fusion import (
    FusedConv,
    InferenceForm,
    float64_on_cpu,
    frozen_param,
    memory_format_of,
    tracing,
    weight_bias,
)
from pdseg_cli.model.ham import Hamburger
from pdseg_cli.model.layers import ConvGNReLU, init_decoder_weights, resize_to


def ham_settings(config: ModelConfig) -> dict[str, Any]:
    """The hamburger settings every decoder takes from a config, as keyword arguments."""
    return dict(
        rank=config.ham_rank,
        train_steps=config.ham_train_steps,
        eval_steps=config.ham_eval_steps,
        seed=config.ham_seed,
        groups=config.norm_groups,
        min_group_channels=config.min_group_channels,
        dropout=config.dropout,
    )


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

    def fast(self) -> FastHamLevel:
        return FastHamLevel(self)


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
        self.encoder_channels = tuple(encoder_channels)
        coarse_first = list(encoder_channels)[::-1]  # channels at strides 32, 16, 8, 4
        self.strides: tuple[int, ...] = (32, 16, 8, 4)
        self.residual_maps = residual_maps
        levels = []
        for k, (enc, width) in enumerate(zip(coarse_first, widths, strict=True)):
            c_in = enc if k == 0 else enc + widths[k - 1] + 1
            g = decoder_groups(width, groups, min_group_channels)
            levels.append(HamLevel(c_in, width, rank, train_steps, eval_steps, seed + k, g, dropout))
        self.levels = nn.ModuleList(levels)

    @classmethod
    def from_config(cls, config: ModelConfig, encoder_channels: Sequence[int]) -> ProgressiveDecoder:
        """The decoder ``config`` describes, on encoder maps of ``encoder_channels`` (stride 4 first)."""
        return cls(
            encoder_channels,
            config.decoder_widths,
            residual_maps=config.residual_maps,
            **ham_settings(config),
        )

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
        self.encoder_channels = tuple(encoder_channels)
        self.strides: tuple[int, ...] = (8,)
        c_in = sum(list(encoder_channels)[1:])
        g = decoder_groups(width, groups, min_group_channels)
        self.level = HamLevel(c_in, width, rank, train_steps, eval_steps, seed, g, dropout)

    @classmethod
    def from_config(cls, config: ModelConfig, encoder_channels: Sequence[int]) -> LightHamHead:
        """The head ``config`` describes (its one width), on encoder maps of ``encoder_channels``."""
        return cls(encoder_channels, config.decoder_widths[0], **ham_settings(config))

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Decode the encoder maps (stride 4 first) into one list holding the (B, 1, H/8, W/8) logits."""
        used = list(features)[1:]
        size = used[0].shape[-2:]
        # resize strides 16 and 32 to stride 8 and concatenate: (B, C2 + C3 + C4, H/8, W/8)
        x = torch.cat([resize_to(f, size) for f in used], dim=1)
        _, logits = self.level(x)
        return [logits]


# ----------------------------------------------------------------------------------------------
# inference forms (docs/model.md, 'Inference form')


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
    if tracing() or x.requires_grad or x.dtype != torch.float32 or not nhwc.is_contiguous():
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
    out.weight = frozen_param(norm.weight, norm.weight)
    out.bias = frozen_param(norm.bias, norm.weight)
    return out


def _split_squeeze(conv: nn.Conv2d, sizes: list[int]) -> list[torch.Tensor]:
    """The (C, c_in, 1, 1) squeeze weight split along its inputs, float64 on the CPU."""
    return list(torch.split(float64_on_cpu(conv.weight), sizes, dim=1))


class FastHamLevel(InferenceForm):
    """A :class:`HamLevel` after its squeeze conv (which the decoder's form applies): GN-ReLU in place,
    hamburger with the in-place NMF (:class:`~pdseg_cli.model.ham.FastNMF`), align, classifier."""

    def __init__(self, level: HamLevel) -> None:
        super().__init__()
        ham: Hamburger = level.hamburger
        self.squeeze_norm = _frozen_group_norm(level.squeeze.norm)
        self.ham_in = FusedConv.of(ham.ham_in)
        self.nmf = ham.ham.fast()
        self.ham_out = FusedConv.of(ham.ham_out)
        self.ham_out_norm = _frozen_group_norm(ham.ham_out_norm)
        self.align = FusedConv.of(level.align.conv)
        self.align_norm = _frozen_group_norm(level.align.norm)
        self.classifier = FusedConv.of(level.classifier)

    def forward(self, squeezed: torch.Tensor, fused: bool) -> torch.Tensor:
        """(B, C, h, w) squeeze-conv output (consumed: normalised in place) -> aligned features F."""
        y = _group_norm_relu_(squeezed, self.squeeze_norm)
        e = self.nmf(self.ham_in(y, fused, act="relu"), overwrite_input=True)
        e = self.ham_out(e.contiguous(memory_format=memory_format_of(y)), fused)
        # ReLU(y + GN(e))
        norm = self.ham_out_norm
        y = F.group_norm(e, norm.num_groups, norm.weight, norm.bias, norm.eps).add_(y).relu_()
        return _group_norm_relu(self.align(y, fused), self.align_norm)


class FastProgressiveDecoder(InferenceForm):
    """:class:`ProgressiveDecoder` with each level's squeeze split by input and applied pre-upsample.

    The 1x1 squeeze of ``concat[E, up2(F), up2(M)]`` is split by input; the F and M parts are applied
    *before* the bilinear upsample (both are linear: up2(W F) = W up2(F)), at a quarter of the
    pixels, and without the concat. M = classifier(F) is folded into that product, so no level
    waits for the previous level's classifier. The squeeze sum goes into the upsampled map (ours,
    not needed after), one stride-4 map less at the peak.
    """

    def __init__(self, decoder: ProgressiveDecoder) -> None:
        super().__init__()
        self.residual_maps = decoder.residual_maps
        levels = cast(Sequence[HamLevel], decoder.levels)  # a ModuleList of HamLevels
        self.levels = nn.ModuleList(level.fast() for level in levels)
        coarse_first = list(decoder.encoder_channels)[::-1]
        self.enc_squeeze = nn.ModuleList()
        self.prev_squeeze = nn.ModuleList()
        self.prev_map_weight = nn.ParameterList()
        widths = [level.align.conv.out_channels for level in levels]
        for k, (level, enc) in enumerate(zip(levels, coarse_first, strict=True)):
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
                self.prev_map_weight.append(frozen_param(w_m.reshape(1, -1, 1, 1), like))  # (1, C, 1, 1)
            else:
                # W_f F + w_m (W_cls F + b_cls) = (W_f + w_m W_cls) F + w_m b_cls
                w_cls, b_cls = weight_bias(levels[k - 1].classifier)
                weight = w_f[:, :, 0, 0] + w_m[:, :, 0, 0] @ w_cls[:, :, 0, 0]
                self.prev_squeeze.append(FusedConv(weight[:, :, None, None], w_m[:, 0, 0, 0] * b_cls, like))

    def forward(self, features: list[torch.Tensor], fused: bool) -> list[torch.Tensor]:
        """Encoder maps (stride 4 first) -> every level's logits, coarse to fine."""
        enc = features[::-1]
        maps: list[torch.Tensor] = []
        feats: torch.Tensor | None = None
        for k, (level, e) in enumerate(zip(self.levels, enc, strict=True)):
            if feats is None:
                squeezed = self.enc_squeeze[k](e, fused)
            else:
                # W [E; up2(F); up2(M)] = W_e E + up2(W_f F + w_m M): the F and M terms before the upsample
                low = self.prev_squeeze[k - 1](feats, fused)
                if self.residual_maps:  # maps[-1]: the previous level's logits (B, 1, h, w)
                    low = low.addcmul_(maps[-1], self.prev_map_weight[k - 1])
                up = resize_to(low, e.shape[-2:]).contiguous(memory_format=memory_format_of(e))
                del low
                # the sum goes into ``up`` (ours, not needed after): one stride-4 map less at the peak
                squeezed = self.enc_squeeze[k](e, fused, other=up, op="add", into_other=True)
                del up
            feats = level(squeezed, fused)
            logits = cast(FastHamLevel, level).classifier(feats, fused)
            if self.residual_maps and maps:
                logits = logits + resize_to(maps[-1], logits.shape[-2:])
            maps.append(logits)
        return maps


class FastLightHamHead(InferenceForm):
    """:class:`LightHamHead` with the squeeze of strides 16 and 32 applied before their upsample."""

    def __init__(self, head: LightHamHead) -> None:
        super().__init__()
        conv = head.level.squeeze.conv
        parts = _split_squeeze(conv, list(head.encoder_channels)[1:])
        self.squeeze = nn.ModuleList(FusedConv(w, None, conv.weight) for w in parts)
        self.level = head.level.fast()

    def forward(self, features: list[torch.Tensor], fused: bool) -> list[torch.Tensor]:
        """Encoder maps (stride 4 first) -> a list holding the (B, 1, H/8, W/8) logits."""
        f8, f16, f32 = features[1:]
        size = f8.shape[-2:]
        # W [f8; up(f16); up(f32)] = W8 f8 + up(W16 f16) + up(W32 f32)
        other = resize_to(self.squeeze[1](f16, fused), size)
        other = other + resize_to(self.squeeze[2](f32, fused), size)
        other = other.contiguous(memory_format=memory_format_of(f8))
        squeezed = self.squeeze[0](f8, fused, other=other, op="add")
        feats = self.level(squeezed, fused)
        return [self.level.classifier(feats, fused)]
