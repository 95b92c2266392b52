"""Device, precision, threads, memory and torchrun: values worked out once and passed in, never global.

Nothing here changes process-wide state at import. ``torch`` is imported inside the functions so
that ``import pdseg_cli.runtime`` stays cheap. One module per part:

- ``device``: the device a run computes on.
- ``precision``: fp32/bf16/fp16, autocast, and which of them this CPU computes natively.
- ``compute``: CPU threads and the torch.compile mode.
- ``memory``: out-of-memory errors and peak memory.
- ``allocator``: glibc malloc kept from handing freed tensor buffers back (the command line).
- ``torchrun``: the process's place in a torchrun job and the process group's lifecycle.
- ``stop``: SIGTERM and SIGHUP stop a command as Ctrl-C does (the command line).
- ``quiet_warnings``: pdseg's own warning filters for a block, the host's left as they were.

Every public name is importable from here (``from pdseg_cli.runtime import resolve_device``).
"""

from pdseg_cli.runtime.allocator import (
    KEEP_MMAP_THRESHOLD,
    KEEP_TRIM_THRESHOLD,
    has_glibc_malloc,
    keep_freed_memory,
    release_freed_memory,
)
from pdseg_cli.runtime.compute import (
    COMPILE_MODES,
    default_threads,
    maps_threads,
    other_runnable_tasks,
    resolve_compile,
    set_compute_threads,
    usable_cores,
)
from pdseg_cli.runtime.device import DeviceChoice, check_gpu_per_process, gpu_sharing_note, resolve_device
from pdseg_cli.runtime.memory import (
    empty_device_cache,
    is_out_of_memory,
    peak_memory,
    peak_rss,
    reset_peak_memory,
    synchronize,
)
from pdseg_cli.runtime.precision import (
    PRECISIONS,
    autocast,
    cpu_flags,
    cpu_has_fast,
    emulated_precision_note,
    resolve_precision,
)
from pdseg_cli.runtime.quiet_warnings import ignoring_warnings, recording_warnings
from pdseg_cli.runtime.stop import (
    forget_stop,
    interrupt_on_stop_signals,
    interrupted_line,
    set_stop_handlers,
    stop_name,
    stop_signals,
    stopped_by,
    stopping,
)
from pdseg_cli.runtime.torchrun import (
    DEFAULT_TIMEOUT,
    Backend,
    Distributed,
    alike_on_every_rank,
    backend_for,
    distributed,
    env_distributed,
    every_rank_meets,
    met_by_every_rank,
)

__all__ = [
    "COMPILE_MODES",
    "DEFAULT_TIMEOUT",
    "KEEP_MMAP_THRESHOLD",
    "KEEP_TRIM_THRESHOLD",
    "PRECISIONS",
    "Backend",
    "DeviceChoice",
    "Distributed",
    "alike_on_every_rank",
    "autocast",
    "backend_for",
    "check_gpu_per_process",
    "cpu_flags",
    "cpu_has_fast",
    "distributed",
    "empty_device_cache",
    "emulated_precision_note",
    "env_distributed",
    "every_rank_meets",
    "gpu_sharing_note",
    "has_glibc_malloc",
    "interrupt_on_stop_signals",
    "is_out_of_memory",
    "keep_freed_memory",
    "met_by_every_rank",
    "peak_memory",
    "peak_rss",
    "release_freed_memory",
    "reset_peak_memory",
    "resolve_compile",
    "resolve_device",
    "resolve_precision",
    "set_compute_threads",
    "set_stop_handlers",
    "stop_signals",
    "synchronize",
    "ignoring_warnings",
    "recording_warnings",
    "stopped_by",
    "stop_name",
    "forget_stop",
    "interrupted_line",
    "stopping",
    "default_threads",
    "maps_threads",
    "other_runnable_tasks",
    "usable_cores",
]
