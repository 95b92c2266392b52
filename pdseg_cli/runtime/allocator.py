"""The C allocator: glibc malloc told to keep freed tensor buffers for reuse (the command line does)."""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from typing import Any

# mallopt(3) parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems; larger values are refused
KEEP_MMAP_THRESHOLD = 32 << 20
KEEP_TRIM_THRESHOLD = 512 << 20
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def has_glibc_malloc() -> bool:
    """Whether this process allocates with glibc's malloc (Linux with glibc)."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _glibc_function(name: str, argtypes: list[Any]) -> Any | None:
    """glibc's C function ``name`` returning int, or None off glibc or where it is missing."""
    if not has_glibc_malloc():
        return None
    try:
        fn = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn


def keep_freed_memory() -> str | None:
    """Make glibc malloc keep freed tensor buffers for reuse in this process (the CLI calls this).

    By default glibc hands a large freed buffer back to the kernel (``munmap``, or trimming the top
    of the heap), so the next forward pass page-faults the same amount of memory in afresh, in
    kernel time (benchmarks/RESULTS.md measures it). Buffers up to 32 MiB then come from the heap,
    and up to 512 MiB of free heap is kept instead of being returned. The peak is unchanged; the
    process just does not shrink back between images.

    Process-wide, so only the command line calls it; library users may call it themselves. Skipped
    (returns None) off glibc Linux, when any ``MALLOC_*`` or ``GLIBC_TUNABLES`` variable is set (the
    user's own tuning wins; set one to opt out), or when another allocator is preloaded.

    Returns:
        A one-line description of what was set, or None when nothing was changed.
    """
    if "GLIBC_TUNABLES" in os.environ or any(k.startswith("MALLOC_") for k in os.environ):
        return None
    if any(name in os.environ.get("LD_PRELOAD", "") for name in _OTHER_ALLOCATORS):
        return None
    mallopt = _glibc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    if mallopt is None or not (
        mallopt(_M_MMAP_THRESHOLD, KEEP_MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)
    ):
        return None
    return (
        f"glibc malloc: mmap threshold {KEEP_MMAP_THRESHOLD >> 20} MiB, "
        f"trim threshold {KEEP_TRIM_THRESHOLD >> 20} MiB"
    )


def release_freed_memory() -> bool:
    """Hand the free memory glibc keeps back to the kernel now (``malloc_trim(0)``); False off glibc.

    For measuring a pass's peak resident memory after :func:`keep_freed_memory`: otherwise the
    buffers of the previous pass are still resident and the pass seems to need nothing.
    """
    trim = _glibc_function("malloc_trim", [ctypes.c_size_t])
    if trim is None:
        return False
    trim(0)
    return True
