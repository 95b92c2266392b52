"""Parameters and multiply-adds counted the way SegNeXt and the PDSeg paper count them.

``docs/model.md``, 'Counting': the papers' "GFLOPs" are MACs from ``torchprofile`` on a
1x3xHxW input in eval mode. One multiply-add counts 1; convolutions and matrix products (so the NMF)
are counted; norms with affine parameters count 1 per output element, elementwise products 1 per
element, bilinear upsampling 4 per output element; additions, divisions, activations and softmax are
free.

:func:`count_macs` reproduces those rules without torchprofile: it runs the model on the ``meta``
device (shapes only, no memory, no arithmetic) under a dispatch mode that counts each aten operator.
The tests check it against torchprofile.
"""

from __future__ import annotations

from collections import Counter
from math import prod
from typing import Any, Literal, overload

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from pdseg_cli.config import ModelConfig, get_config

aten = torch.ops.aten


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(t.shape)


def _conv(args: tuple[Any, ...], out: Any) -> int:
    # weight (C_out, C_in / groups, kh, kw): every output element costs C_in / groups * kh * kw
    weight = _shape(args[1])
    transposed = bool(args[6]) if len(args) > 6 else False
    if transposed:  # weight (C_in, C_out / groups, kh, kw); torchprofile's rule
        return prod(_shape(out)) * weight[0] * prod(weight[2:])
    return prod(_shape(out)) * weight[1] * prod(weight[2:])


def _mm(args: tuple[Any, ...], out: Any) -> int:
    n, m = _shape(args[0])
    return n * m * _shape(args[1])[1]


def _addmm(args: tuple[Any, ...], out: Any) -> int:
    n, m = _shape(args[1])
    return n * m * _shape(args[2])[1]


def _bmm(args: tuple[Any, ...], out: Any) -> int:
    b, n, m = _shape(args[0])
    return b * n * m * _shape(args[1])[2]


def _baddbmm(args: tuple[Any, ...], out: Any) -> int:
    b, n, m = _shape(args[1])
    return b * n * m * _shape(args[2])[2]


def _per_output(args: tuple[Any, ...], out: Any) -> int:
    first = out[0] if isinstance(out, (tuple, list)) else out
    return prod(_shape(first))


def _affine_norm(weight_index: int) -> Any:
    # torchprofile counts a norm only when it has affine parameters
    def count(args: tuple[Any, ...], out: Any) -> int:
        has_affine = len(args) > weight_index and args[weight_index] is not None
        return _per_output(args, out) if has_affine else 0

    return count


def _upsample_bilinear(args: tuple[Any, ...], out: Any) -> int:
    return 4 * prod(_shape(out))


# aten overload packet -> MACs(args, out). Anything else is free, as in torchprofile.
_RULES: dict[Any, Any] = {
    aten.convolution: _conv,
    aten.mm: _mm,
    aten.addmm: _addmm,
    aten.bmm: _bmm,
    aten.baddbmm: _baddbmm,
    aten.mul: _per_output,
    aten.native_batch_norm: _affine_norm(1),
    aten._native_batch_norm_legit_no_training: _affine_norm(1),
    aten._native_batch_norm_legit: _affine_norm(1),
    aten.native_layer_norm: _affine_norm(2),
    aten.native_group_norm: _affine_norm(1),
    aten.upsample_bilinear2d: _upsample_bilinear,
    aten.mean: _per_output,
    aten.avg_pool2d: _per_output,
    aten._adaptive_avg_pool2d: _per_output,
}


class MacCounter(TorchDispatchMode):
    """Counts MACs of the aten operators run inside it, by operator name.

    Attributes:
        by_op: MACs per operator overload packet name (e.g. ``"aten.convolution"``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        rule = _RULES.get(func.overloadpacket)
        if rule is not None:
            self.by_op[str(func.overloadpacket)] += int(rule(args, out))
        return out


def _as_config(model: str | ModelConfig | nn.Module) -> ModelConfig:
    if isinstance(model, str):
        return get_config(model)
    if isinstance(model, ModelConfig):
        return model
    config = getattr(model, "config", None)
    if isinstance(config, ModelConfig):
        return config
    raise TypeError(f"expected a variant name, a ModelConfig or a PDSeg model, got {type(model).__name__}")


def _meta_model(config: ModelConfig) -> nn.Module:
    # Built on the meta device: parameters have shapes but no storage, and init costs nothing.
    from pdseg_cli.model.pdseg import PDSeg

    with torch.device("meta"):
        return PDSeg(config).eval()


def count_params(model: str | ModelConfig | nn.Module) -> int:
    """Number of parameters (BN/GN/LN affines and layer scales included, buffers excluded).

    Args:
        model: a variant name, a config, or a built model (counted as it is).
    """
    if isinstance(model, nn.Module):
        return sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in _meta_model(_as_config(model)).parameters())


@overload
def count_macs(
    model: str | ModelConfig | nn.Module, size: int | tuple[int, int] = ..., *, by_op: Literal[False] = ...
) -> int: ...


@overload
def count_macs(
    model: str | ModelConfig | nn.Module, size: int | tuple[int, int] = ..., *, by_op: Literal[True]
) -> dict[str, int]: ...


@overload
def count_macs(
    model: str | ModelConfig | nn.Module, size: int | tuple[int, int] = ..., *, by_op: bool
) -> int | dict[str, int]: ...


def count_macs(
    model: str | ModelConfig | nn.Module,
    size: int | tuple[int, int] = 1024,
    *,
    by_op: bool = False,
) -> int | dict[str, int]:
    """Multiply-adds of one eval-mode forward pass on a 1x3xHxW input, counted as torchprofile does.

    Fast (no arithmetic runs) and independent of any weights: a model argument only selects its
    config. Sizes that are not multiples of 32 are counted at the padded size the model runs at.

    Args:
        model: a variant name, a :class:`ModelConfig`, or a PDSeg model (its config is used).
        size: the input side, or (H, W).
        by_op: return MACs per aten operator instead of the total.

    Returns:
        Total MACs, or a dict of MACs per operator.
    """
    config = _as_config(model)
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"input size must be positive, got {(h, w)}")
    meta = _meta_model(config)
    x = torch.empty((1, 3, h, w), device="meta")
    counter = MacCounter()
    with torch.no_grad(), counter:
        meta(x)
    return dict(counter.by_op) if by_op else counter.total
