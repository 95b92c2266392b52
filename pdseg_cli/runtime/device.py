"""The device a run computes on: ``auto|cpu|cuda|cuda:N|mps`` checked, never a silent fallback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pdseg_cli.errors import InputError, NotAvailableError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DeviceChoice:
    """The device a run uses, and why (shown to the user when it was picked automatically)."""

    device: torch.device
    reason: str


def resolve_device(spec: str | torch.device = "auto", *, local_rank: int | None = None) -> DeviceChoice:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a device, failing loudly rather than falling back.

    Args:
        spec: what the user asked for (a ``torch.device`` too, as ``load_model`` takes).
        local_rank: under torchrun, the process's local rank: ``auto`` and ``cuda`` then mean
            ``cuda:<local_rank>`` (one GPU per process).

    Raises:
        NotAvailableError: CUDA (or MPS) was asked for and is not there.
        InputError: not a device name.
    """
    import torch

    text = str(spec).strip().lower()  # str() of a torch.device is its name: "cpu", "cuda:1"
    cuda_ok = torch.cuda.is_available()
    n_gpus = torch.cuda.device_count() if cuda_ok else 0
    if text == "auto":
        if cuda_ok:
            index = (local_rank or 0) % max(n_gpus, 1) if local_rank is not None else 0
            name = torch.cuda.get_device_name(index)
            return DeviceChoice(torch.device("cuda", index), f"auto: CUDA GPU {index} ({name})")
        mps = getattr(torch.backends, "mps", None)
        why = "no CUDA GPU visible to PyTorch"
        if mps is not None and mps.is_available():
            why += "; Apple MPS is there: pass --device mps to use it"
        return DeviceChoice(torch.device("cpu"), f"auto: CPU ({why})")
    if text == "cpu":
        return DeviceChoice(torch.device("cpu"), "cpu (asked for)")
    if text == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise NotAvailableError(
                "--device mps was asked for, but PyTorch sees no Apple MPS device",
                hint="use --device auto (a CUDA GPU if there is one, else the CPU) or --device cpu; MPS "
                "needs an Apple-silicon Mac and a PyTorch build for it",
            )
        return DeviceChoice(torch.device("mps"), "mps (asked for)")
    if text == "cuda" or text.startswith("cuda:"):
        if not cuda_ok:
            build = (
                "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            )
            raise NotAvailableError(
                f"--device {spec} was asked for, but PyTorch sees no CUDA GPU "
                f"(torch {torch.__version__}, {build})",
                hint="use --device cpu, or install a CUDA build of PyTorch and check nvidia-smi",
            )
        if text == "cuda":
            index = local_rank if local_rank is not None else 0
        else:
            try:
                index = int(text.split(":", 1)[1])
            except ValueError:
                raise InputError(f"not a device: {spec!r}", hint="use auto, cpu, cuda or cuda:N") from None
        if not 0 <= index < n_gpus:
            raise NotAvailableError(
                f"--device cuda:{index} was asked for, but only {n_gpus} CUDA GPU(s) are visible "
                f"(0..{n_gpus - 1})",
                hint="check CUDA_VISIBLE_DEVICES, or use fewer torchrun processes than GPUs",
            )
        name = torch.cuda.get_device_name(index)
        return DeviceChoice(torch.device("cuda", index), f"cuda:{index} ({name})")
    raise InputError(f"not a device: {spec!r}", hint="use auto, cpu, cuda, cuda:N or mps")
