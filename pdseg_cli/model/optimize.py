"""An inference-only fast form of a PDSeg network, built from the same parameters.

:func:`optimize` returns a new module that computes what ``model.eval()(x)`` computes (the final
logits, fp32 maths unless asked otherwise) with fewer operations and memory passes. The original
model is not touched: it keeps its parameters, its mode and its gradients, and stays usable for
training. Nothing about checkpoints changes: load with ``load_model``, then optimise.

The fast form is built in one walk over the model: ``PDSeg.fast`` builds :class:`FastPDSeg` from
the encoder's form (``MSCAN.fast``, which takes each patch embedding's, block's and stage norm's)
and the decoder's form from the decoder registry (:mod:`pdseg_cli.model.registry`). Each form lives
next to the part it folds (``docs/model.md``, 'Inference form'):

* ``mscan.py``: eval-mode BatchNorm folded into the convolutions next to it, the layer scales into
  ``proj_2`` and ``fc2``, the attention's strip branches summed in the convolution epilogues, and
  on the CPU the MLP of the large early stages runs in bands of rows, so its 4x/8x-wide hidden map
  never exists whole (``FastStem``, ``FastDownsample``, ``FastBlock``, ``FastEncoder``).
* ``ham.py``: the NMF on the channels-last (B, N, C) matrix, updated in place in row blocks
  (``FastNMF``).
* ``decoder.py``: each squeeze split by input and applied before the upsample, the previous level's
  classifier folded into it, GroupNorm in place (``FastHamLevel``, ``FastProgressiveDecoder``,
  ``FastLightHamHead``).
* ``fusion.py``: the shared pieces: BN folding, and ``FusedConv``, which on the CPU in fp32 runs
  the convolution through oneDNN's fused-epilogue operators (``torch.ops.mkldnn._convolution_pointwise``,
  the kernels Inductor uses) so GELU, ReLU, the residual add and the gating product happen inside
  it. Elsewhere (CUDA, autocast, tracing, ``torch.compile``) the same sequence runs with plain
  ``F.conv2d`` and in-place element-wise ops.

Every change is algebra on eval-mode operators; only float rounding differs (max |delta logit| <=
1e-4 against the plain path in fp32, pinned by ``tests/test_optimize.py``). Maps stay channels-last
end to end, and fewer full-size maps are alive at once: on Linux a fresh buffer larger than glibc's
mmap threshold is mapped anew on every allocation and page-faults on first touch, which costs as
much as a good part of the arithmetic (preloading jemalloc or tcmalloc, or ``MALLOC_MMAP_MAX_=0``,
removes that for the plain path too). The speed-ups are in ``benchmarks/RESULTS.md``.

A part without an inference form (a registered decoder without ``fast``, or an encoder part without
a ``fast`` method) is not refused: it is kept as built, a frozen eval-mode copy run with its own
``forward`` (``fusion.KeptPlain``), so the result still computes ``model(x)``, and the optimised
model's ``notes`` name it (empty when every part was folded).

``precision="bf16"``/``"fp16"`` wraps the forward in autocast (NMF still fp32); ``compile=True``
(or a ``torch.compile`` mode: ``"reduce-overhead"`` also captures CUDA graphs on a GPU) returns
``torch.compile`` of the fast form (optional; the fused oneDNN operators are then left to
Inductor). The fast form is for inference only: its tensors do not require gradients.
"""

from __future__ import annotations

import torch
from torch import nn

from pdseg_cli.errors import NotAvailableError, first_line
from pdseg_cli.model.build import unwrap_model
from pdseg_cli.model.fusion import InferenceForm, fused_ops_available
from pdseg_cli.model.pdseg import FastPDSeg, PDSeg
from pdseg_cli.runtime import COMPILE_MODES, is_out_of_memory

PRECISIONS = ("fp32", "bf16", "fp16")


def optimize(
    model: nn.Module,
    *,
    precision: str = "fp32",
    channels_last: bool = True,
    compile: bool | str | None = False,
) -> nn.Module:
    """Build the inference-only fast form of a PDSeg network from its current parameters.

    Args:
        model: a :class:`PDSeg` (also inside DDP or ``torch.compile``), in any mode. It is not
            changed: the fast form holds its own folded copies of the weights (about one more copy
            of the model's memory), on the model's device.
        precision: ``fp32`` (the plain path's maths: max |delta logit| <= 1e-4), or ``bf16`` /
            ``fp16`` (autocast around the forward; the NMF stays fp32).
        channels_last: run in channels-last layout (faster on CPU and GPU).
        compile: False or None for the eager form; ``True`` or a mode of
            :data:`pdseg_cli.runtime.COMPILE_MODES` to return ``torch.compile`` of the fast form
            (optional; the first call of each input shape compiles, which takes a minute or more).
            ``"reduce-overhead"`` replays CUDA graphs on a GPU (fewer kernel launches). A
            compilation that fails raises :class:`~pdseg_cli.errors.NotAvailableError`.

    Returns:
        A module taking what ``model`` takes, a (B, 3, H, W) normalised float tensor of any H, W,
        and returning the final logits (B, 1, H, W) float32 (``return_levels=True`` also works).
        It has ``config``, ``train_size`` and ``normalization`` like the source model, and
        ``notes``: one line per part that has no inference form and runs as built (empty when
        every part was folded; worth showing the user). It is in eval mode and requires no
        gradients. Eval-mode semantics are used whatever ``model``'s mode:
        BN running statistics, the fixed NMF bases and the eval step count; no dropout.

    Raises:
        TypeError: ``model`` is not a PDSeg network, or ``channels_last`` is not a bool.
        ValueError: an unknown precision or compile mode.
    """
    if not isinstance(channels_last, bool):  # bool("no") is True: a typo would flip it on
        raise TypeError(f"channels_last must be True or False, not {channels_last!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if isinstance(compile, str) and compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
    net = unwrap_model(model)
    if isinstance(net, FastPDSeg):
        raise TypeError("this model is already optimised; optimise the PDSeg model it came from")
    if not isinstance(net, PDSeg):
        raise TypeError(f"optimize needs a PDSeg model, got {type(net).__name__}")
    if any(p.is_meta for p in net.parameters()):
        raise ValueError("optimize needs a model with weights (this one is on the meta device)")
    with torch.no_grad():
        fast = net.fast(
            precision=precision,
            channels_last=channels_last,
            use_fused_ops=not compile and fused_ops_available(),
        )
    if compile:
        return CompiledPDSeg(fast, "default" if compile is True else str(compile))
    return fast


class CompiledPDSeg(InferenceForm):
    """``torch.compile`` of a :class:`FastPDSeg`, called as the PDSeg it came from.

    A failed compilation (no C++ compiler for Inductor on the CPU, an unsupported GPU, ...) is
    raised as a one-line :class:`NotAvailableError` that names the way out, not as a compiler
    traceback. ``module`` is the fast form (``unwrap_model`` finds it there).
    """

    def __init__(self, fast: FastPDSeg, mode: str) -> None:
        super().__init__()
        self.module = fast
        self.mode = mode
        self.config = fast.config
        self.normalization = fast.normalization
        self.train_size = fast.train_size
        self.notes = fast.notes
        # not a registered submodule: its parameters are ``module``'s
        object.__setattr__(self, "_compiled", torch.compile(fast, mode=None if mode == "default" else mode))

    @property
    def level_strides(self) -> tuple[int, ...]:
        return self.module.level_strides

    def forward(self, x: torch.Tensor, return_levels: bool = False) -> torch.Tensor | list[torch.Tensor]:
        try:
            return self._compiled(x, return_levels)  # type: ignore[operator]
        except torch._dynamo.exc.TorchDynamoException as exc:
            # Inductor out of memory while compiling or autotuning this size (wrapped, its first
            # line "backend='inductor' raised:"): the caller's own fallback (one image at a time, a
            # smaller size) is the way on, not "compile failed"
            cause = exc.__cause__ or exc.__context__
            if cause is not None and is_out_of_memory(cause):
                raise cause from None
            if is_out_of_memory(exc):
                raise
            raise NotAvailableError(
                f"torch.compile ({self.mode}) failed on this machine: {first_line(exc)}",
                hint="run without --compile (compile=False): the eager form gives the same maps",
            ) from exc

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


__all__ = ["CompiledPDSeg", "FastPDSeg", "fused_ops_available", "optimize"]
