"""Memory: running out of it, and the peak a run used (on the GPU, or the process's resident set)."""

from __future__ import annotations

import ctypes
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says a device (CUDA, or the CPU allocator) ran out of memory: torch's errors,
    numpy's ``MemoryError``, ONNX Runtime's "Failed to allocate memory", cuDNN's and cuBLAS's
    ``*_STATUS_ALLOC_FAILED`` and OpenCV's "Insufficient memory"."""
    import torch

    text = str(exc).lower()
    return (
        isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError))
        or "out of memory" in text
        or "can't allocate" in text
        or "failed to allocate memory" in text
        or "insufficient memory" in text
        # cuDNN's and cuBLAS's own allocation failures (torch's and onnxruntime's CUDA paths)
        or "status_alloc_failed" in text
    )


def empty_device_cache(device: torch.device) -> None:
    """Give the blocks PyTorch's caching allocator holds on a GPU (CUDA, or Apple's MPS) back to
    the device: after an out-of-memory error, so that the retry with less finds them free."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a GPU (CUDA or MPS, both asynchronous) to finish: a clock read
    without it times how fast the work was queued."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    """Start counting peak GPU memory afresh (CPU peak RSS cannot be reset: it is the process's)."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): ``torch.cuda.max_memory_allocated`` on a GPU, peak RSS on the CPU."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "GPU memory allocated by PyTorch"
    return peak_rss(), "resident memory of the process"  # shown as "peak memory (...)"


def peak_rss() -> int:
    """This process's peak resident set size in bytes (0 where it cannot be read).

    ``getrusage`` on Linux and macOS; the peak working set on Windows, which has no ``resource``
    module (so it is imported here, not at the top: the CLI must start there too).
    """
    if sys.platform == "win32":
        return _windows_peak_working_set()
    try:
        import resource
    except ImportError:
        return 0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # macOS gives bytes, Linux KiB


def _windows_peak_working_set() -> int:
    """``PeakWorkingSetSize`` of this process (``GetProcessMemoryInfo``), or 0."""
    try:
        from ctypes import wintypes

        class Counters(ctypes.Structure):
            _fields_ = [
                ("cb", wintypes.DWORD),
                ("PageFaultCount", wintypes.DWORD),
                ("PeakWorkingSetSize", ctypes.c_size_t),
                ("WorkingSetSize", ctypes.c_size_t),
                ("QuotaPeakPagedPoolUsage", ctypes.c_size_t),
                ("QuotaPagedPoolUsage", ctypes.c_size_t),
                ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t),
                ("QuotaNonPagedPoolUsage", ctypes.c_size_t),
                ("PagefileUsage", ctypes.c_size_t),
                ("PeakPagefileUsage", ctypes.c_size_t),
            ]

        kernel32 = ctypes.WinDLL("kernel32")  # type: ignore[attr-defined]
        kernel32.GetCurrentProcess.restype = wintypes.HANDLE
        counters = Counters()
        counters.cb = ctypes.sizeof(Counters)
        ok = kernel32.K32GetProcessMemoryInfo(
            kernel32.GetCurrentProcess(), ctypes.byref(counters), counters.cb
        )
        return int(counters.PeakWorkingSetSize) if ok else 0
    except (AttributeError, OSError, ImportError, ValueError):
        return 0
