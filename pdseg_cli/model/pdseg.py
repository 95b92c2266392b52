"""PDSeg: an MSCAN encoder and a progressive decoder of hamburger heads, for one foreground mask.

Zhu, Ahmed, Li, Shen, Jin, "One-stage Progressive Dichotomous Segmentation", BMVC 2023.
Our re-implementation; see ``docs/model.md`` for what follows the paper and what is guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, overload

import torch
from torch import nn

from pdseg_cli.config import NORMALIZATION, ModelConfig
from pdseg_cli.model.decoder import LightHamHead, ProgressiveDecoder
from pdseg_cli.model.layers import crop_levels, pad_input
from pdseg_cli.model.mscan import MSCAN


class PDSeg(nn.Module):
    """Encoder + decoder; takes any image size and returns logits at that size.

    Args:
        config: the variant to build.

    Attributes:
        config: the :class:`ModelConfig` it was built from.
        encoder: the MSCAN encoder.
        decoder: a :class:`ProgressiveDecoder` or a :class:`LightHamHead`.
        normalization: how inputs must be normalised (``pdseg_cli.config.NORMALIZATION`` unless a
            checkpoint says otherwise).
        train_size: the side of the square images the weights were trained at, if known.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = MSCAN(config.embed_dims, config.depths, config.mlp_ratios, config.drop_path_rate)
        # the hamburger settings both decoders take
        ham: dict[str, Any] = dict(
            rank=config.ham_rank,
            train_steps=config.ham_train_steps,
            eval_steps=config.ham_eval_steps,
            seed=config.ham_seed,
            groups=config.norm_groups,
            min_group_channels=config.min_group_channels,
            dropout=config.dropout,
        )
        decoder: nn.Module
        if config.decoder == "progressive":
            decoder = ProgressiveDecoder(
                self.encoder.out_channels, config.decoder_widths, residual_maps=config.residual_maps, **ham
            )
        else:
            decoder = LightHamHead(self.encoder.out_channels, config.decoder_widths[0], **ham)
        self.decoder = decoder
        # a plain copy: copy.deepcopy (EMA, export) cannot copy the read-only NORMALIZATION proxy
        self.normalization: Mapping[str, Any] = dict(NORMALIZATION)
        self.train_size: int | None = None

    @property
    def level_strides(self) -> tuple[int, ...]:
        """Strides of the decoder's per-level logits, coarse to fine (e.g. (32, 16, 8, 4))."""
        return tuple(self.decoder.strides)

    def forward_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-level logits at their own strides, for an input whose sides are multiples of 32.

        Args:
            x: (B, 3, H, W) normalised float, H and W multiples of ``config.pad_multiple``.

        Returns:
            Logits (B, 1, H / s, W / s) for each stride s in :attr:`level_strides`, coarse to fine.
        """
        m = self.config.pad_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"forward_levels needs sides that are multiples of {m}, got {tuple(x.shape)}")
        return self.decoder(self.encoder(x))

    @overload
    def forward(self, x: torch.Tensor, return_levels: Literal[False] = False) -> torch.Tensor: ...

    @overload
    def forward(self, x: torch.Tensor, return_levels: Literal[True]) -> list[torch.Tensor]: ...

    def forward(self, x: torch.Tensor, return_levels: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Segment a batch of images.

        Args:
            x: (B, 3, H, W) float, normalised as :attr:`normalization` says; any H and W (padded with
                zeros to a multiple of 32 inside and cropped back).
            return_levels: also return the coarser levels (for multi-scale supervision).

        Returns:
            The final logits (B, 1, H, W) (apply a sigmoid for probabilities). With
            ``return_levels=True``, a list of every level's logits, coarse to fine, each resized
            bilinearly to (B, 1, H, W); the last element is the final logits.
        """
        size = x.shape[-2:]
        x = pad_input(x, self.config.pad_multiple)
        levels = self.decoder(self.encoder(x))
        if not return_levels:
            levels = levels[-1:]
        outs = crop_levels(levels, x.shape[-2:], size)
        return outs if return_levels else outs[0]


def final_map_ceiling(model: nn.Module) -> float | None:
    """The highest probability the final map can ever give, when its classifier caps it; else None.

    The final classifier is a 1x1 convolution on features that come out of a ReLU (never
    negative). If none of its weights is positive, a feature can only lower the logit, so every
    pixel's probability is at most sigmoid(bias): a level that learnt "foreground is where nothing
    fires" and can never say "certainly foreground" (the 0.1 demo weights: all 32 weights negative,
    bias 0.54, so no map byte above 161). With residual maps the previous level's logits are added
    and no such bound holds.

    Args:
        model: a :class:`PDSeg` (or anything with a ``decoder`` whose last level has a
            ``classifier``); other models give None.
    """
    decoder = getattr(model, "decoder", None)
    if decoder is None or getattr(decoder, "residual_maps", False):
        return None
    level = decoder.levels[-1] if hasattr(decoder, "levels") else getattr(decoder, "level", None)
    classifier = getattr(level, "classifier", None)
    if not isinstance(classifier, nn.Conv2d) or classifier.bias is None:
        return None
    if bool((classifier.weight > 0).any()):
        return None
    return float(torch.sigmoid(classifier.bias.detach().float().max()))
