"""Model variants: one frozen dataclass per named model, and the input normalisation they expect.

Numbers come from ``docs/model.md``: 'Encoder' (MSCAN, the SegNeXt configs), 'Single head' (the
LightHamHead of SegNeXt) and 'Decoder' (our progressive decoder "P1").
This module imports no torch, so ``pdseg info`` and the CLI's help stay fast.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pdseg_cli.errors import InputError

# ImageNet statistics on the 0-255 scale, RGB order: the MSCAN ImageNet weights were trained with
# them (SegNeXt configs, img_norm_cfg). A model input is (rgb_uint8 - mean) / std, float32.
# Read-only; checkpoints store a plain copy (lists for tuples).
# Images larger than this are refused from their header, before decoding: 2^27 pixels (e.g.
# 16384x8192) lets 8192x8192 through while a 3 MB file claiming 33792x33792 (3.4 GB of uint8 RGB,
# 16 GB once in float) is one line instead of an out-of-memory crash. `--max-pixels` changes it.
DEFAULT_MAX_PIXELS = 1 << 27

NORMALIZATION: Mapping[str, Any] = MappingProxyType(
    {
        "color": "RGB",
        "scale": 255.0,  # mean and std are on the 0..scale range of the raw pixel values
        "mean": (123.675, 116.28, 103.53),
        "std": (58.395, 57.12, 57.375),
    }
)


def decoder_groups(width: int, groups: int, min_channels: int = 1) -> int:
    """GroupNorm groups of a decoder layer ``width`` wide: at most ``groups``, with at least
    ``min_channels`` channels in each, and dividing ``width`` (the largest such count, 1 at least)."""
    most = max(1, min(groups, width // max(1, min_channels)))
    return next(g for g in range(most, 0, -1) if width % g == 0)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build one PDSeg network; stored in every checkpoint.

    Tuples over stages run from stage 1 (stride 4) to stage 4 (stride 32). ``decoder_widths`` runs
    the other way, from the coarsest decoder level (stride 32) to the finest (stride 4).
    """

    name: str
    # MSCAN encoder (docs/model.md, 'Encoder'). Per-variant values come from the SegNeXt configs; the
    # MSCAN class defaults (64,128,256,512 / 3,4,6,3) match no published variant.
    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    mlp_ratios: tuple[int, int, int, int] = (8, 8, 4, 4)  # the same for T, S, B and L
    # rises linearly from 0 over all blocks; 0.1 for T/S/B and 0.3 for L, as in SegNeXt
    drop_path_rate: float = 0.1
    # Decoder, a name in the decoder registry (pdseg_cli.model.registry, which checks it and the
    # number of decoder_widths when the model is built or a checkpoint read). "progressive" is our
    # P1 (docs/model.md, 'Decoder'): one hamburger level per stride, 32 -> 16 -> 8 -> 4.
    # "light_ham" is SegNeXt's single head on strides 8, 16, 32 (the paper's ablation baseline,
    # docs/model.md, 'Single head').
    decoder: str = "progressive"
    # progressive: one width per level, coarse to fine, mirroring the encoder (our guess: the
    # paper's 28.0M parameters pin the stride-32 level at 512). light_ham: one width, used for
    # both ham_channels and channels, as in every SegNeXt variant.
    decoder_widths: tuple[int, ...] = (512, 320, 128, 64)
    # NMF rank R (MD_R): 64 for SegNeXt-B/L, 16 for SegNeXt-T/S.
    ham_rank: int = 64
    ham_train_steps: int = 6  # multiplicative-update steps in training (SegNeXt)
    ham_eval_steps: int = 7  # one more in eval (SegNeXt); model.eval() before counting MACs
    # seeds the fixed NMF bases used in eval mode, so inference and ONNX export are deterministic
    ham_seed: int = 0
    dropout: float = 0.1  # Dropout2d before every classifier, as SegNeXt's decode heads
    norm_groups: int = 32  # GroupNorm groups in the decoder, as SegNeXt, at most
    # ... but never fewer than this many channels per group: a GroupNorm of one channel per group
    # (pdseg-t's 32-wide stride-4 level with 32 groups) normalises each channel over the image on
    # its own, so after the ReLU every channel fires on about half of every image and none can be a
    # sparse object detector. (It was not what killed that level in the 0.1 demo weights: a run with
    # this fix alone died too; the classifiers' prior init in layers.py did. See docs/model.md.)
    # 8 is SegNeXt-T's own ratio (256 channels, 32 groups). Checkpoints written before this field
    # read it as 1.
    min_group_channels: int = 8
    # progressive only: M_k = up2(M_{k-1}) + delta_k instead of a direct map (a zero-cost option;
    # the paper is silent, so it is off: docs/model.md, 'Residual maps')
    residual_maps: bool = False
    pad_multiple: int = 32  # inputs are padded to this (the total stride) and cropped back

    def __post_init__(self) -> None:
        # Cheap structural checks: a config from a damaged checkpoint fails here with a clear reason.
        for field in ("embed_dims", "depths", "mlp_ratios"):
            value = getattr(self, field)
            if len(value) != 4 or any(int(v) < 1 for v in value):
                raise ValueError(f"{field} must be 4 positive integers, got {value}")
        if not self.decoder_widths or any(int(w) < 1 for w in self.decoder_widths):
            raise ValueError(f"decoder_widths must be positive integers, got {self.decoder_widths}")
        if self.min_group_channels < 1:
            raise ValueError(f"min_group_channels must be >= 1, got {self.min_group_channels}")
        bad = [w for w in self.decoder_widths if w % self.norm_groups]
        if bad:
            raise ValueError(f"decoder widths {bad} do not divide into {self.norm_groups} GroupNorm groups")
        if self.ham_rank < 1 or self.ham_train_steps < 0 or self.ham_eval_steps < 0:
            raise ValueError("ham_rank must be >= 1 and the step counts >= 0")
        if self.pad_multiple % 32:
            raise ValueError(f"pad_multiple must be a multiple of 32, got {self.pad_multiple}")

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists for tuples), safe for JSON and ``torch.load(weights_only=True)``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild a config written by :meth:`to_dict`.

        Raises:
            ValueError: unknown or missing fields, or values that do not form a valid model.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a model config must be a dict, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"unknown model config fields: {', '.join(unknown)}")
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise ValueError(f"model config lacks fields: {', '.join(missing)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        values.setdefault("min_group_channels", 1)  # configs from before the field: one channel allowed
        try:
            return cls(**values)
        except TypeError as exc:  # e.g. a list where a number belongs
            raise ValueError(f"bad model config: {exc}") from None


_MSCAN_SMALL_DIMS = (64, 128, 320, 512)  # S, B and L share the widths; they differ in depth

VARIANTS: dict[str, ModelConfig] = {
    # MSCAN-T backbone (3.90M); decoder widths mirror its dims; R = 16 as in SegNeXt-T.
    "pdseg-t": ModelConfig(
        name="pdseg-t",
        embed_dims=(32, 64, 160, 256),
        depths=(3, 3, 5, 2),
        decoder_widths=(256, 160, 64, 32),
        ham_rank=16,
    ),
    # MSCAN-S backbone (13.45M); R = 16 as in SegNeXt-S.
    "pdseg-s": ModelConfig(
        name="pdseg-s",
        embed_dims=_MSCAN_SMALL_DIMS,
        depths=(2, 2, 4, 2),
        decoder_widths=(512, 320, 128, 64),
        ham_rank=16,
    ),
    # The paper's model: MSCAN-B (26.28M) + P1 decoder, 28.04M params, 127.6 GMACs at 1024^2.
    "pdseg-b": ModelConfig(
        name="pdseg-b",
        embed_dims=_MSCAN_SMALL_DIMS,
        depths=(3, 3, 12, 3),
        decoder_widths=(512, 320, 128, 64),
        ham_rank=64,
    ),
    # MSCAN-L backbone (44.64M), drop path 0.3 as in SegNeXt-L.
    "pdseg-l": ModelConfig(
        name="pdseg-l",
        embed_dims=_MSCAN_SMALL_DIMS,
        depths=(3, 5, 27, 3),
        drop_path_rate=0.3,
        decoder_widths=(512, 320, 128, 64),
        ham_rank=64,
    ),
    # The ablation's "single head": SegNeXt-B exactly (MSCAN-B + LightHamHead 512/512, R = 64),
    # 27.56M params and 137.6 GMACs at 1024^2.
    "segnext-b": ModelConfig(
        name="segnext-b",
        embed_dims=_MSCAN_SMALL_DIMS,
        depths=(3, 3, 12, 3),
        decoder="light_ham",
        decoder_widths=(512,),
        ham_rank=64,
    ),
    # SegNeXt-T (MSCAN-T + LightHamHead 256/256, R = 16): the single-head baseline at pdseg-t's
    # size, for ablations on small budgets. 4.225M params and 25.11 GMACs at 1024^2
    # (docs/model.md, 'Counting').
    "segnext-t": ModelConfig(
        name="segnext-t",
        embed_dims=(32, 64, 160, 256),
        depths=(3, 3, 5, 2),
        decoder="light_ham",
        decoder_widths=(256,),
        ham_rank=16,
    ),
    # A miniature for tests and smoke runs: one block per stage, narrow widths, 8 GroupNorm groups
    # (the real widths need 32). Not a model to train for results.
    "pdseg-tiny": ModelConfig(
        name="pdseg-tiny",
        embed_dims=(16, 32, 32, 64),
        depths=(1, 1, 1, 1),
        mlp_ratios=(2, 2, 2, 2),
        decoder_widths=(64, 32, 32, 16),
        ham_rank=8,
        ham_train_steps=2,
        ham_eval_steps=3,
        norm_groups=8,
        min_group_channels=1,
    ),
}

DEFAULT_VARIANT = "pdseg-b"  # the paper's model: what train and benchmark build when none is named
FULL_SIZE_NAMES = ("full", "native", "original")  # --size names for "each image at its own size"


def get_config(name: str) -> ModelConfig:
    """The registered config of a variant.

    Raises:
        InputError: ``name`` is not a variant; the message suggests the closest names.
    """
    key = name.strip().lower()
    if key in VARIANTS:
        return VARIANTS[key]
    close = difflib.get_close_matches(key, list(VARIANTS), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}?" if close else None
    raise InputError(
        f"unknown model variant {name!r} (choose from {', '.join(VARIANTS)})",
        hint=hint,
    )
