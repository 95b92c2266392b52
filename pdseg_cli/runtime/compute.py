"""How the maths run: the CPU threads they use, and the torch.compile mode."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from pdseg_cli.errors import InputError

# torch.compile modes pdseg accepts ("reduce-overhead" replays CUDA graphs on a GPU)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


_MOST_THREADS = 256  # more than this is refused unless the machine has 32 cores or more (8 per core)


def set_compute_threads(n: int | None) -> int | None:
    """Use ``n`` CPU threads for the maths: torch's intra-op pool, OpenCV's, and onnxruntime's
    (which follows torch's, see ``OnnxModel``). None: :func:`default_threads`. For a process that
    owns its threads, as the ``pdseg`` command does.

    Returns:
        the number of threads set; None where the defaults were left (``OMP_NUM_THREADS`` set, or
        no way to see how busy the cores are).

    Raises:
        InputError: ``n`` below 1, or far above the cores (more than 8 per core and 256).
    """
    if n is None:
        n = default_threads()
        if n is None:
            return None
    if n < 1:
        raise InputError(f"--threads must be at least 1, got {n}")
    cores = usable_cores()
    if n > max(_MOST_THREADS, 8 * cores):  # torch crashes (or overflows) on absurd counts
        raise InputError(
            f"--threads {n} is far more than the {cores} cores this process may use",
            hint=f"e.g. --threads {cores}, or leave --threads out for the cores that are idle",
        )
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)
    return n


def maps_threads(device: object) -> int | None:
    """The CPU threads a model on ``device`` (a torch.device or its name) runs with, for a report:
    on a CPU the last grey level of a few pixels follows them (the order of float sums); None on an
    accelerator."""
    import torch

    return torch.get_num_threads() if torch.device(str(device)).type == "cpu" else None


def default_threads(cores: int | None = None, busy: float | None = None) -> int | None:
    """Threads for the maths when none are asked for: the cores that other work is not using now.

    PyTorch's OpenMP threads wait for one another at the end of every operator, so when another
    process holds one of the cores, each operator lasts as long as its slowest, preempted thread:
    on a busy machine fewer threads finish sooner (measured in ``benchmarks/RESULTS.md``,
    'Threads and workers'). ``busy`` is the number of other runnable tasks now (a median of a few
    quick looks at ``/proc/loadavg``, not the 1-minute average, which still counts a run that just
    ended). None where ``OMP_NUM_THREADS`` is set (the user's choice stands) or the load cannot be
    read (not Linux).
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    return idle_cores(usable_cores() if cores is None else cores, busy)


def idle_cores(cores: int, busy: float | None = None) -> int | None:
    """Of ``cores``, those that ``busy`` other runnable tasks leave idle (at least 1); ``busy``
    defaults to :func:`other_runnable_tasks` now, and None comes back where it cannot be read."""
    if busy is None:
        busy = other_runnable_tasks()
        if busy is None:
            return None
    return max(1, min(cores, round(cores - busy)))


def usable_cores() -> int:
    """The cores this process may run on: its affinity mask and its container's CPU quota
    (`docker run --cpus 2` on a 64-core host is 2, where the affinity alone says 64, and 64
    threads under a 2-CPU quota run far slower than 2), as joblib's count reads them."""
    from joblib import cpu_count

    return max(1, int(cpu_count()))


def other_runnable_tasks(looks: int = 5, interval_s: float = 0.01) -> float | None:
    """How many tasks besides this one are runnable right now (Linux), the median of ``looks``."""
    counts = []
    for i in range(looks):
        try:
            running = Path("/proc/loadavg").read_text().split()[3].split("/")[0]
        except (OSError, IndexError):
            return None
        counts.append(int(running) - 1)  # the reading task itself is running
        if i + 1 < looks:
            time.sleep(interval_s)
    return float(statistics.median(counts))


def resolve_compile(spec: str | bool | None) -> str | None:
    """``off|default|reduce-overhead|max-autotune|...`` (or a bool) -> a torch.compile mode, or None.

    Raises:
        InputError: not a mode name.
    """
    if spec is None or spec is False:
        return None
    if spec is True:
        return "default"
    # compile=1 from a Python caller: the same line as a misspelt mode, not .strip()'s error
    text = spec.strip().lower() if isinstance(spec, str) else None
    if text in ("off", "none", "no", ""):
        return None
    if text not in COMPILE_MODES:
        raise InputError(f"not a torch.compile mode: {spec!r}", hint=f"use off, {', '.join(COMPILE_MODES)}")
    return text
