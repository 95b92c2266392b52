"""What every inference form shares: BatchNorm folding, a convolution with a fused epilogue, and the
rule for a part that has no inference form.

The inference form of a network (:func:`pdseg_cli.model.optimize.optimize`) is built part by part,
each part's form living next to the part (``docs/model.md``, 'Inference form'):

* A part with a form of its own has a ``fast()`` method returning it (``MSCAN``, ``Block``, the
  patch embeddings, ``NMF2D``, ``HamLevel``, ``PDSeg``); a decoder's form is its registry entry's
  ``fast`` (:mod:`pdseg_cli.model.registry`).
* A part whose arithmetic its parent's form folds in declares ``FOLDED_BY``, the name of that
  parent class (e.g. ``MSCA.FOLDED_BY = "Block"``): it needs no form of its own.
* The forms themselves subclass :class:`InferenceForm`.

:func:`fast_form` applies the first rule and, for a part without a form, keeps the part as it is: a
frozen eval-mode copy run with its own ``forward`` (:class:`KeptPlain`), which still computes what
the plain model computes, and which carries a one-line note that ``FastPDSeg.notes`` collects.

Folding is done in float64 on the CPU, whatever device the model is on (MPS has no float64), and
stored as float32 parameters on the model's device that never require gradients and never share
storage with the source model.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class InferenceForm(nn.Module):
    """Base of the inference-only modules :func:`~pdseg_cli.model.optimize.optimize` builds.

    Their parameters are frozen float32 copies. Those that convolve take ``fused`` in ``forward``
    (whether the oneDNN fused operators may be used, decided once per call by ``FastPDSeg``).
    """


def tracing() -> bool:
    """Under torch.jit tracing/scripting, ONNX export or torch.compile: keep the graph plain."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last when ``x`` is laid out so (and not also plain contiguous), else contiguous."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


# ----------------------------------------------------------------------------------------------
# folding (float64 maths on the CPU, float32 results on the model's device)


def frozen_param(t: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    """A frozen float32 parameter on ``like``'s device (a copy: never shares the original's storage).

    Rounded to float32 before the move: a folded float64 result lives on the CPU, and a device
    without float64 (MPS) cannot take it as it is.
    """
    return nn.Parameter(t.detach().float().to(like.device).clone(), requires_grad=False)


def float64_on_cpu(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float64 on the CPU, where all folding maths runs: MPS has no float64 ("Cannot convert
    a MPS Tensor to float64"), so it is copied off the device in its own dtype and widened there."""
    return t.detach().cpu().double()


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as y = s * x + t; (C,) float64 each, on the CPU."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("optimize needs BatchNorm layers with running statistics (track_running_stats)")
    var = float64_on_cpu(bn.running_var)
    mean = float64_on_cpu(bn.running_mean)
    weight = float64_on_cpu(bn.weight) if bn.weight is not None else torch.ones_like(var)
    bias = float64_on_cpu(bn.bias) if bn.bias is not None else torch.zeros_like(var)
    scale = weight / torch.sqrt(var + bn.eps)
    return scale, bias - mean * scale


def weight_bias(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv's weight and bias in float64 on the CPU (a zero bias when it has none)."""
    weight = float64_on_cpu(conv.weight)
    if conv.bias is not None:
        bias = float64_on_cpu(conv.bias)
    else:
        bias = torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
    return weight, bias


def fold_bn_after(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BN(conv(x)) as one conv: W' = s W (per output channel), b' = s b + t."""
    weight, bias = weight_bias(conv)
    scale, shift = bn_scale_shift(bn)
    return weight * scale[:, None, None, None], bias * scale + shift


def fold_bn_before(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """conv(BN(x)) as one conv, for a 1x1 conv (no padding, so BN's shift is exact everywhere)."""
    if conv.kernel_size != (1, 1) or conv.groups != 1:
        raise ValueError("BN can be folded forward only into an ungrouped 1x1 convolution")
    weight, bias = weight_bias(conv)
    scale, shift = bn_scale_shift(bn)
    # W (s x + t) + b = (W diag(s)) x + (W t + b)
    return weight * scale[None, :, None, None], bias + weight[:, :, 0, 0] @ shift


# ----------------------------------------------------------------------------------------------
# a convolution with an optional fused epilogue


class FusedConv(InferenceForm):
    """conv(x), then optionally ``act(conv(x))`` (relu, gelu) or ``conv(x) op other`` (add, mul).

    With ``fused=True`` (CPU, fp32, channels-last) the epilogue runs inside oneDNN's convolution
    (``torch.ops.mkldnn._convolution_pointwise``, the kernels Inductor uses), so the activation, the
    residual add or the gating product costs no separate pass over memory; otherwise ``F.conv2d``
    then in-place ops.
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
        self.weight = frozen_param(weight, like)
        self.bias = frozen_param(bias, like) if bias is not None else None
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
        if other is not None and into_other and not tracing():
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


# ----------------------------------------------------------------------------------------------
# parts without an inference form


class KeptPlain(InferenceForm):
    """A part that has no inference form, run as built: a frozen eval-mode copy of it.

    Called as the forms around it call theirs; the arguments only inference forms take (``fused``,
    ``bands``, ...) are ignored. The copy stays in eval mode whatever ``train()`` says, as every
    inference form computes eval-mode maths.

    Args:
        part: the plain module (copied; the original is not touched).
        where: where it sits in the network (e.g. ``"decoder"``, ``"encoder.block1.0"``).

    Attributes:
        module: the copy.
        note: one line for the user, naming the part and saying it was not folded.
    """

    def __init__(self, part: nn.Module, where: str) -> None:
        super().__init__()
        self.module = copy.deepcopy(part).eval().requires_grad_(False)
        self.note = (
            f"{where} ({type(part).__name__}) has no inference form: it runs as built, "
            "with the same results and without the fast form's speed-ups"
        )

    def train(self, mode: bool = True) -> KeptPlain:
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, x: Any, *_inference_args: Any, **_inference_kwargs: Any) -> Any:
        return self.module(x)

    def extra_repr(self) -> str:
        return "kept plain"


def fast_form(part: nn.Module, where: str) -> nn.Module:
    """``part.fast()``, or :class:`KeptPlain` of ``part`` when it has no ``fast`` method.

    Args:
        part: a plain model part.
        where: its place in the network, for the note of a part kept plain.
    """
    make = getattr(part, "fast", None)
    if callable(make):
        return make()
    return KeptPlain(part, where)
