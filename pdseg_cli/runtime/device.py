"""The device a run computes on: ``auto|cpu|cuda|cuda:N|mps`` checked, never a silent fallback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pdseg_cli.errors import InputError, NotAvailableError, counted
from pdseg_cli.runtime.torchrun import every_rank_meets

if TYPE_CHECKING:
    import torch

    from pdseg_cli.runtime.torchrun import Distributed


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
            ``cuda:<local_rank>`` (one GPU per process), wrapping round when there are more
            processes than GPUs (training refuses that first: :func:`check_gpu_per_process`).

    Raises:
        NotAvailableError: CUDA (or MPS) was asked for and is not there.
        InputError: not a device name.
    """
    import torch

    text = str(spec).strip().lower()  # str() of a torch.device is its name: "cpu", "cuda:1"
    cuda_ok = torch.cuda.is_available()
    n_gpus = torch.cuda.device_count() if cuda_ok else 0
    index: int | None  # a GPU's, once checked
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
        if text == "cuda":  # as auto: a scheduler's one GPU per task is cuda:0 in every process
            index = local_rank % max(n_gpus, 1) if local_rank is not None else 0
        else:
            index = _cuda_index(text)
            if index is None:
                raise InputError(f"not a device: {spec!r}", hint="use auto, cpu, cuda or cuda:N")
        if not 0 <= index < n_gpus:
            raise NotAvailableError(
                f"--device cuda:{index} was asked for, but only {n_gpus} CUDA GPU(s) are visible "
                f"(0..{n_gpus - 1})",
                hint="check CUDA_VISIBLE_DEVICES, or use fewer torchrun processes than GPUs",
            )
        name = torch.cuda.get_device_name(index)
        return DeviceChoice(torch.device("cuda", index), f"cuda:{index} ({name})")
    raise InputError(f"not a device: {spec!r}", hint="use auto, cpu, cuda, cuda:N or mps")


def _cuda_index(spec: str | torch.device) -> int | None:
    """The N of ``cuda:N`` (None for any other name, or a malformed N, which resolve_device refuses);
    the one reading of it for resolve_device and the torchrun checks."""
    text = str(spec).strip().lower()
    if not text.startswith("cuda:"):
        return None
    try:
        return int(text.split(":", 1)[1])
    except ValueError:
        return None


def _on_cuda(spec: str | torch.device) -> bool:
    """Whether ``spec`` computes on a CUDA GPU here (``auto`` does where one is visible)."""
    import torch

    text = str(spec).strip().lower()
    wants = text in ("auto", "cuda") or text.startswith("cuda:")
    return wants and torch.cuda.is_available()


def _gpus_of_the_machine(spec: str | torch.device, env: Distributed) -> tuple[int, int | None, int] | None:
    """What the torchrun GPU checks weigh: the processes on this machine, the N of ``--device cuda:N``
    (None for ``cuda`` or ``auto``) and the visible GPUs. None where no GPU can be shared: no torchrun,
    no CUDA, one process per machine, or a launcher that does not say how many share it (a
    scheduler's one GPU per task sets no LOCAL_WORLD_SIZE: no process can then tell its own GPU from
    a shared one, and LOCAL_RANK wraps round the visible GPUs, as it always did)."""
    local = env.local_world_size
    if not env.enabled or local is None or local < 2 or not _on_cuda(spec):
        return None
    import torch

    return local, _cuda_index(spec), torch.cuda.device_count()


def check_gpu_per_process(spec: str | torch.device, env: Distributed) -> None:
    """Refuse a torchrun training job that would put two processes on one GPU: NCCL stopped at the
    first step with "Duplicate GPU detected" and a traceback, after the whole set-up.

    Args:
        spec: ``--device`` as given.
        env: the job.

    Raises:
        InputError: ``--device cuda:N`` (every process on GPU N), or more processes on this
            machine than visible GPUs. Marked as met by every rank (rank 0 says it). Nothing is
            refused where one process runs per machine, or where the launcher does not say how many
            share it (LOCAL_WORLD_SIZE).
    """
    machine = _gpus_of_the_machine(spec, env)
    if machine is None:
        return
    local, index, n_gpus = machine
    if index is not None:
        raise every_rank_meets(
            InputError(
                f"--device {str(spec).strip()} puts all {local} torchrun processes of this machine on GPU "
                f"{index}, and training needs a GPU of its own per process",
                hint="pass --device cuda (or leave --device out): each process takes the GPU of its "
                "LOCAL_RANK; CUDA_VISIBLE_DEVICES chooses which GPUs",
            )
        )
    if local > n_gpus:
        gpus = counted(n_gpus, "GPU is", "GPUs are")
        raise every_rank_meets(
            InputError(
                f"{local} torchrun processes on this machine, and {gpus} visible: training needs a GPU of "
                "its own per process",
                hint=f"torchrun --nproc-per-node {n_gpus}, or make more GPUs visible (CUDA_VISIBLE_DEVICES)",
            )
        )


def gpu_sharing_note(spec: str | torch.device, env: Distributed) -> str | None:
    """One line when the processes of a torchrun ``predict`` share GPUs: they may (each writes its
    own files), but the job is then no faster than one process per GPU. None otherwise, and where
    the launcher does not say how many processes share the machine."""
    machine = _gpus_of_the_machine(spec, env)
    if machine is None:
        return None
    local, index, n_gpus = machine
    if index is not None:
        return (
            f"--device {str(spec).strip()}: all {local} processes on this machine share GPU {index} "
            "(--device cuda gives each its own)"
        )
    if local <= n_gpus:
        return None
    most = -(-local // n_gpus)  # ceil
    on_one = "" if n_gpus == 1 else f", up to {most} on one"
    return (
        f"{local} processes share {counted(n_gpus, 'GPU')} on this machine{on_one} "
        f"(torchrun --nproc-per-node {n_gpus} gives each its own)"
    )
