"""Device, precision, peak memory and torchrun: values worked out once and passed in, never global.

Nothing here changes process-wide state at import. ``torch`` is imported inside the functions so
that ``import pdseg_cli.runtime`` stays cheap.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import functools
import os
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdseg_cli.errors import InputError, NotAvailableError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# torch.compile modes pdseg accepts ("reduce-overhead" replays CUDA graphs on a GPU)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class DeviceChoice:
    """The device a run uses, and why (shown to the user when it was picked automatically)."""

    device: torch.device
    reason: str


def resolve_device(spec: str = "auto", *, local_rank: int | None = None) -> DeviceChoice:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a device, failing loudly rather than falling back.

    Args:
        spec: what the user asked for.
        local_rank: under torchrun, the process's local rank: ``auto`` and ``cuda`` then mean
            ``cuda:<local_rank>`` (one GPU per process).

    Raises:
        NotAvailableError: CUDA (or MPS) was asked for and is not there.
        InputError: not a device name.
    """
    import torch

    text = spec.strip().lower()
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
            raise NotAvailableError("--device mps was asked for, but PyTorch sees no Apple MPS device")
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


def resolve_precision(spec: str, device: torch.device) -> str:
    """``auto|fp32|bf16|fp16`` -> the precision to run in: ``fp32``, ``bf16`` or ``fp16``.

    ``auto`` is bf16 on CUDA GPUs that support it (Ampere and newer) and fp32 everywhere else.

    Raises:
        InputError: not a precision name.
        NotAvailableError: bf16 asked for on a GPU without it.
    """
    import torch

    text = spec.strip().lower()
    if text not in PRECISIONS:
        raise InputError(f"not a precision: {spec!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    if text == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if text == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise NotAvailableError(
            f"--precision bf16 was asked for, but {torch.cuda.get_device_name(device)} has no bf16",
            hint="use --precision fp16 or fp32",
        )
    return text


def set_compute_threads(n: int | None) -> None:
    """Use ``n`` CPU threads for the maths: torch's intra-op pool, OpenCV's, and onnxruntime's
    (which follows torch's, see ``OnnxModel``). None leaves the defaults (all cores, or
    ``OMP_NUM_THREADS``). For a process that owns its threads, as the ``pdseg`` command does.

    Raises:
        InputError: ``n`` below 1.
    """
    if n is None:
        return
    if n < 1:
        raise InputError(f"--threads must be at least 1, got {n}")
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)


def resolve_compile(spec: str | bool | None) -> str | None:
    """``off|default|reduce-overhead|max-autotune|...`` (or a bool) -> a torch.compile mode, or None.

    Raises:
        InputError: not a mode name.
    """
    if spec is None or spec is False:
        return None
    if spec is True:
        return "default"
    text = spec.strip().lower()
    if text in ("off", "none", "no", ""):
        return None
    if text not in COMPILE_MODES:
        raise InputError(f"not a torch.compile mode: {spec!r}", hint=f"use off, {', '.join(COMPILE_MODES)}")
    return text


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


def emulated_precision_note(device: torch.device, precision: str) -> str | None:
    """A warning when ``precision`` would run emulated, and so slowly, on this CPU; None otherwise.

    Only said where the flags are known (x86 Linux) and show none of the instructions it needs.
    """
    if device.type != "cpu" or precision == "fp32":
        return None
    flags = cpu_flags()
    if not flags or "avx2" not in flags or cpu_has_fast(precision, flags):
        return None
    need = " or ".join(f.upper().replace("_", "-") for f in _FAST_CPU_FLAGS[precision])
    return (
        f"this CPU has no {need}, so {precision} runs emulated: expect it to be several times slower "
        f"than fp32 (--precision fp32)"
    )


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context for ``precision`` (a no-op for fp32). The model keeps its NMF in fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says a device (CUDA, or the CPU allocator) ran out of memory."""
    import torch

    text = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate" in text


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
    return peak_rss(), "peak resident memory of the process"


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


# ----------------------------------------------------------------------------------------------
# the C allocator

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
    of the heap), so the next forward pass page-faults the same amount of memory in afresh: on the
    2-core VM where pdseg was measured that was about 0.5 s of kernel time per 512x512 pdseg-b pass
    for the plain model, and 0.08 s for the optimised one. Buffers up to 32 MiB then come from the
    heap, and up to 512 MiB of free heap is kept instead of being returned. The peak is unchanged;
    the process just does not shrink back between images.

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


# ----------------------------------------------------------------------------------------------
# torchrun


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a torchrun job (world_size 1 when not under torchrun).

    Attributes:
        world_size: number of processes.
        rank: this process's index, 0..world_size - 1.
        local_rank: index among the processes on this machine (selects the GPU).
        initialized: True when this object set up a process group (and must tear it down).
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    initialized: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list[Any]) -> list[Any]:
        """This process's share of ``items``: every world_size-th item, starting at its rank."""
        return items[self.rank :: self.world_size] if self.enabled else list(items)

    def all_gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order (just ``[obj]`` without torchrun)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def env_distributed() -> Distributed:
    """Read WORLD_SIZE / RANK / LOCAL_RANK (set by torchrun) without starting anything."""

    def _int(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        try:
            return int(value) if value.strip() else default
        except ValueError:
            raise InputError(f"${name} is {value!r}, not a number") from None

    world = _int("WORLD_SIZE", 1)
    rank = _int("RANK", 0)
    local = _int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"torchrun environment is inconsistent: RANK={rank}, WORLD_SIZE={world}")
    return Distributed(world, rank, local)


@contextlib.contextmanager
def distributed(timeout_minutes: float = 120.0) -> Iterator[Distributed]:
    """Join the torchrun job, if any, for the duration of the block.

    A gloo process group is used for the small result messages (it works on CPU-only and GPU
    machines alike; the images never travel between processes). Without torchrun this yields a
    single-process :class:`Distributed` and starts nothing.
    """
    env = env_distributed()
    if not env.enabled:
        yield env
        return
    import torch.distributed as dist

    started = False
    if not dist.is_initialized():
        dist.init_process_group(
            backend="gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
            world_size=env.world_size,
            rank=env.rank,
        )
        started = True
    try:
        yield Distributed(env.world_size, env.rank, env.local_rank, initialized=started)
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()
