"""Precision: which arithmetic a run uses (fp32, bf16, fp16), and whether this CPU has it natively."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdseg_cli.errors import InputError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(spec: str, device: torch.device) -> str:
    """``auto|fp32|bf16|fp16`` -> the precision to run in: ``fp32``, ``bf16`` or ``fp16``.

    ``auto`` is bf16 on CUDA GPUs with native bf16 (Ampere and newer, compute capability 8.0) and
    fp32 everywhere else. An explicit ``bf16`` on an older GPU is kept: PyTorch emulates it there,
    slowly, which :func:`emulated_precision_note` says.

    Raises:
        InputError: not a precision name.
    """
    # a Python caller's torch.float16 or None: the same line as a misspelt name, not .strip()'s error
    text = spec.strip().lower() if isinstance(spec, str) else None
    if text not in PRECISIONS:
        raise InputError(f"not a precision: {spec!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    if text == "auto":
        return "bf16" if device.type == "cuda" and gpu_has_native_bf16(device) else "fp32"
    return text


def gpu_has_native_bf16(device: torch.device) -> bool:
    """Whether the CUDA GPU ``device`` (its own, not the current one) computes bf16 natively: compute
    capability 8.0 or newer (Ampere). Not ``torch.cuda.is_bf16_supported()``, which by default also
    says True for a T4 or V100 that only emulates bf16 (any card that can hold a bf16 tensor), asks
    the current device rather than ``device``, and makes a tensor there to find out."""
    import torch

    return tuple(torch.cuda.get_device_capability(device)) >= (8, 0)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags (Linux only; empty elsewhere). Read once per process."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


# the x86 instructions that give a CPU native arithmetic in each reduced precision
_FAST_CPU_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}


def cpu_has_fast(precision: str, flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU (or one with ``flags``) computes ``precision`` natively (fp32 always;
    bf16/fp16 need AVX-512 or AMX)."""
    if precision == "fp32":
        return True
    return bool((cpu_flags() if flags is None else flags) & set(_FAST_CPU_FLAGS[precision]))


def emulated_precision_note(
    device: torch.device, precision: str, fix: str = "--precision fp32", *, cost: str = "several times slower"
) -> str | None:
    """A warning when ``precision`` would run emulated, and so slowly, on this device; None otherwise.
    ``cost`` says how much slower: PyTorch's emulation is several times slower, while ONNX Runtime
    ran an fp16 export 1.7 times slower than the fp32 one here (`benchmarks/RESULTS.md`).

    On the CPU, only said where the flags are known (x86 Linux) and show none of the instructions it
    needs. On a CUDA GPU, said of bf16 before Ampere (compute capability below 8.0), where fp16 is
    the fast reduced precision.
    """
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return _gpu_bf16_note(device) if precision == "bf16" else None
    if device.type != "cpu":
        return None
    flags = cpu_flags()
    if not flags or "avx2" not in flags or cpu_has_fast(precision, flags):
        return None
    need = " or ".join(f.upper().replace("_", "-") for f in _FAST_CPU_FLAGS[precision])
    return f"this CPU has no {need}, so {precision} runs emulated: expect it to be {cost} than fp32 ({fix})"


def _gpu_bf16_note(device: torch.device) -> str | None:
    """The note for bf16 on a GPU without it natively (a T4, a V100), or None."""
    import torch

    if gpu_has_native_bf16(device):
        return None
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    return (
        f"{name} (compute capability {major}.{minor}) has no native bf16, so bf16 runs emulated: expect it "
        "to be slower than fp32 (--precision fp16 is this GPU's fast precision, or --precision fp32)"
    )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context for ``precision`` (a no-op for fp32). The model keeps its NMF in fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
