"""PDSeg: an MSCAN encoder and a progressive decoder of hamburger heads, for one foreground mask.

Zhu, Ahmed, Li, Shen, Jin, "One-stage Progressive Dichotomous Segmentation", BMVC 2023.
Our re-implementation; see ``docs/model.md`` for what follows the paper and what is guessed.
:class:`FastPDSeg` is its inference form (``docs/model.md``, 'Inference form').
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, overload

import torch
from torch import nn

from pdseg_cli import runtime
from pdseg_cli.config import NORMALIZATION, ModelConfig
from pdseg_cli.model.fusion import InferenceForm, KeptPlain, fast_form, tracing
from pdseg_cli.model.layers import crop_levels, pad_input
from pdseg_cli.model.mscan import MLP_BAND_ABOVE, MLP_BAND_BYTES, MSCAN
from pdseg_cli.model.registry import check_decoder


class PDSeg(nn.Module):
    """Encoder + decoder; takes any image size and returns logits at that size.

    Args:
        config: the variant to build.

    Attributes:
        config: the :class:`ModelConfig` it was built from.
        encoder: the MSCAN encoder.
        decoder: the decoder ``config.decoder`` names in :mod:`pdseg_cli.model.registry`.
        normalization: how inputs must be normalised (``pdseg_cli.config.NORMALIZATION`` unless a
            checkpoint says otherwise).
        train_size: the side of the square images the weights were trained at, if known.
    """

    # what the weights came from: set by load_model only (a model built here has no such attribute)
    provenance: dict[str, Any]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        entry = check_decoder(config)  # before building anything: an unknown decoder is one line
        self.config = config
        self.encoder = MSCAN(config.embed_dims, config.depths, config.mlp_ratios, config.drop_path_rate)
        self.decoder = entry.cls.from_config(config, self.encoder.out_channels)  # type: ignore[attr-defined]
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

        Raises:
            TypeError: ``x`` is not a float tensor of the weights' precision (an image tensor of
                bytes, or float64 from numpy), which torch would report deep inside a convolution.
        """
        weights = next(self.parameters()).dtype  # float64 is fine for a model made float64
        _refuse_non_float(x)
        if x.dtype != weights and not _autocast_on(x.device.type):  # autocast casts per operator
            raise TypeError(
                f"model(x) got a {x.dtype} tensor for {weights} weights: use x.to({weights}) (after "
                "normalising as model.normalization says), or run under torch.autocast"
            )
        size = x.shape[-2:]
        x = pad_input(x, self.config.pad_multiple)
        levels = self.decoder(self.encoder(x))
        if not return_levels:
            levels = levels[-1:]
        outs = crop_levels(levels, x.shape[-2:], size)
        return outs if return_levels else outs[0]

    def fast(
        self, *, precision: str = "fp32", channels_last: bool = True, use_fused_ops: bool = False
    ) -> FastPDSeg:
        """The inference form (plain operators unless ``use_fused_ops``).

        :func:`pdseg_cli.model.optimize.optimize` checks the arguments and calls this.
        """
        return FastPDSeg(self, precision=precision, channels_last=channels_last, use_fused_ops=use_fused_ops)


class FastPDSeg(InferenceForm):
    """The inference-only form :func:`~pdseg_cli.model.optimize.optimize` returns; call it as the PDSeg
    it came from.

    Built part by part from the model's current parameters: the encoder's form (``MSCAN.fast``) and
    the decoder's registered form. A part without one is kept as built (:class:`KeptPlain`), which
    still computes the plain model's logits, and named in :attr:`notes`.

    Attributes:
        config, normalization, train_size: copied from the source model.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast inside ``forward``).
        channels_last: whether inputs are turned channels-last.
        use_fused_ops: whether oneDNN fused-epilogue convolutions are used when they apply.
        mlp_bands: on the CPU, (above, size): MLP hidden maps over ``above`` bytes go in bands of
            about ``size`` bytes (``FastBlock``); None: whole maps.
        notes: one line per part that has no inference form and runs as built; empty when every
            part was folded.
    """

    def __init__(self, model: PDSeg, precision: str, channels_last: bool, use_fused_ops: bool) -> None:
        super().__init__()
        self.config = model.config
        self.normalization: Mapping[str, Any] = model.normalization
        self.train_size: int | None = model.train_size
        self.precision = precision
        self.channels_last = channels_last
        self.use_fused_ops = use_fused_ops
        self.mlp_bands: tuple[int, int] | None = (MLP_BAND_ABOVE, MLP_BAND_BYTES)
        self.strides: tuple[int, ...] = tuple(model.decoder.strides)
        self.encoder = fast_form(model.encoder, "the encoder")
        entry = check_decoder(model.config)
        fast = entry.fast if isinstance(model.decoder, entry.cls) else None
        where = f"the decoder {entry.name!r}"
        self.decoder = fast(model.decoder) if fast is not None else KeptPlain(model.decoder, where)
        self.notes: tuple[str, ...] = tuple(m.note for m in self.modules() if isinstance(m, KeptPlain))
        if channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # a stub gap
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
            and next(self.parameters()).dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and x.requires_grad)
            and not tracing()
        )

    def forward(self, x: torch.Tensor, return_levels: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Segment a batch: (B, 3, H, W) normalised float, any H and W -> logits (B, 1, H, W).

        The same contract as :meth:`PDSeg.forward`; outputs are float32 in every precision.

        Raises:
            TypeError: ``x`` holds bytes (an image tensor) or float64 (from numpy); the form casts
                float32/16 inputs to its own precision.
        """
        _refuse_non_float(x)
        if x.dtype == torch.float64:
            raise TypeError(
                "model(x) got a torch.float64 tensor: use x.float() (after normalising as "
                "model.normalization says)"
            )
        weights = next(self.parameters()).dtype  # float32, or float16 once .half() (an fp16 export)
        if self.precision == "fp32" and x.dtype != weights:
            x = x.to(weights)  # no autocast in this form to meet another dtype
        size = x.shape[-2:]
        x = pad_input(x, self.config.pad_multiple)
        padded = x.shape[-2:]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast(x.device, self.precision):
            fused = self._fuse(x)
            bands = self.mlp_bands if x.device.type == "cpu" and not tracing() else None
            levels = self.decoder(self.encoder(x, fused, bands), fused)
        if not return_levels:
            levels = levels[-1:]
        # float32 logits in every precision
        outs = crop_levels([level.float() for level in levels], padded, size)
        return outs if return_levels else outs[0]

    def extra_repr(self) -> str:
        return (
            f"variant={self.config.name}, precision={self.precision}, channels_last={self.channels_last}, "
            f"fused_ops={self.use_fused_ops}"
        )


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


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (torch < 2.4 has no device argument)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


def _refuse_non_float(x: torch.Tensor) -> None:
    """A clear TypeError for an image tensor of bytes (torch would fail deep in a convolution)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"model(x) takes a torch tensor (B, 3, H, W), got {type(x).__name__}: use Predictor for images"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"model(x) takes a normalised float32 tensor (B, 3, H, W), got {x.dtype}: use "
            "Predictor for images, or x.float() after normalising as model.normalization says"
        )
