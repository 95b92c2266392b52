"""torchrun: where this process stands in the job, and the one process-group lifecycle.

``pdseg predict`` and ``pdseg train`` both run under ``torchrun --nproc-per-node N``. Both join
the job through :func:`distributed`: predict over gloo for its small result messages, training
over NCCL on GPUs for its gradients (:func:`backend_for`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pdseg_cli.errors import InputError

if TYPE_CHECKING:
    import torch

Backend = Literal["gloo", "nccl"]
_E = TypeVar("_E", bound=BaseException)

# how long a collective waits for the slowest process: rank 0 may spend long alone before the
# first one (training fills its sample cache, predict lists and plans every input)
DEFAULT_TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a torchrun job (world_size 1 when not under torchrun).

    Attributes:
        world_size: number of processes.
        rank: this process's index, 0..world_size - 1.
        local_rank: index among the processes on this machine (selects the GPU).
        local_world_size: processes on this machine (torchrun's ``LOCAL_WORLD_SIZE``); None where
            the launcher does not say (a scheduler's own variables): this process knows only its own
            place then.
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int | None = None

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

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` in every process (``obj`` itself without torchrun)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait for every process (returns at once without torchrun)."""
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


# torchrun's variables in a shell that is not a torchrun job: leaked from a scheduler (SLURM, a
# Kubernetes job) or an outer launcher
_OUTER_JOB = "unset WORLD_SIZE, RANK and LOCAL_RANK to run as one process"
_MAX_WORLD = 1 << 20  # beyond any real job; torch's own check of a larger one is a traceback


def env_distributed(*, strict: bool = True) -> Distributed:
    """Read WORLD_SIZE / RANK / LOCAL_RANK (set by torchrun) without starting anything.

    ``strict`` False reads variables that make no sense as no torchrun (a process on its own), for
    a caller that is not the one to say so: a Python script's ``Predictor``, or a command's choice
    of which process prints an error (the command then reports them).

    Raises:
        InputError: with ``strict``, a variable that is not a number, or a rank outside the world.
    """
    if not strict:
        try:
            return env_distributed()
        except InputError:
            return Distributed()

    def _int(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        try:
            return int(value) if value.strip() else default
        except ValueError:
            raise InputError(f"${name} is {value!r}, not a number", hint=_OUTER_JOB) from None

    world = _int("WORLD_SIZE", 1)
    rank = _int("RANK", 0)
    local = _int("LOCAL_RANK", rank)
    if world < 1 or world > _MAX_WORLD or not 0 <= rank < world:
        raise InputError(
            f"torchrun environment is inconsistent: RANK={rank}, WORLD_SIZE={world}", hint=_OUTER_JOB
        )
    local_world = _int("LOCAL_WORLD_SIZE", 0)  # 0: not said
    if local_world and not local < local_world <= world:  # a leftover of another job: unknown
        local_world = 0
    return Distributed(world, rank, local, local_world or None)


# Which process says an error. Under torchrun every process runs the command, so an error that
# every process meets alike (a bad option, the run folder, an error the ranks agreed on) is said
# by rank 0 alone, once; one that a single process meets (its GPU, its share of the files) is said
# by that process, naming its rank: said by no one, the user saw only torchrun's ChildFailedError.
_MET_BY_EVERY_RANK = "_pdseg_met_by_every_rank"


def every_rank_meets(error: _E) -> _E:
    """``error``, marked as one every process of the job meets alike (``raise
    every_rank_meets(InputError(...))``): only rank 0 says it."""
    setattr(error, _MET_BY_EVERY_RANK, True)
    return error


def met_by_every_rank(error: BaseException) -> bool:
    """Whether ``error`` is one every process meets alike (:func:`every_rank_meets`,
    :func:`alike_on_every_rank`)."""
    return bool(getattr(error, _MET_BY_EVERY_RANK, False))


@contextlib.contextmanager
def alike_on_every_rank() -> Iterator[None]:
    """Mark every error raised in the block as one every process meets alike: checks of the
    options, the files and the machine that give each process the same answer."""
    try:
        yield
    except Exception as exc:
        every_rank_meets(exc)
        raise


def backend_for(device: torch.device) -> Backend:
    """The process-group backend for collectives on ``device``'s tensors: NCCL on CUDA, else gloo."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def distributed(
    *,
    backend: Backend = "gloo",
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
    device: torch.device | None = None,
) -> Iterator[Distributed]:
    """Join the torchrun job, if any, for the duration of the block; leave it on the way out.

    Without torchrun (or with one process) this starts nothing and yields a single-process
    :class:`Distributed`. A process group someone else started is used as it is and left running.

    Args:
        backend: gloo carries small Python objects on CPU-only and GPU machines alike (predict's
            results; the images never travel between processes); NCCL carries GPU tensors, as
            training's gradients (``backend_for(device)`` picks it on CUDA).
        timeout: how long a collective waits for the slowest process.
        device: the device this process computes on. A CUDA device is made the current one for
            the block, before the group starts (NCCL binds each process to its GPU then), under
            torchrun or not; None, or another device, changes nothing.
    """
    import torch
    import torch.distributed as dist

    env = env_distributed()
    with contextlib.ExitStack() as stack:
        if device is not None and device.type == "cuda":
            stack.enter_context(torch.cuda.device(device))
        if env.enabled and not dist.is_initialized():
            _check_rendezvous(env)
            dist.init_process_group(
                backend=backend, timeout=timeout, world_size=env.world_size, rank=env.rank
            )
            stack.push(_leave_group)
        yield env


def _check_rendezvous(env: Distributed) -> None:
    """Refuse a job whose processes cannot find each other (torch's env:// rendezvous error is a
    ValueError traceback): torchrun's variables leaked into a plain shell, without its address.

    Raises:
        InputError: ``MASTER_ADDR`` or ``MASTER_PORT`` is not set.
    """
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise InputError(
            f"WORLD_SIZE={env.world_size} asks for a multi-process job, but ${' and $'.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set",
            hint="start the processes with torchrun (it sets them all), or " + _OUTER_JOB,
        )


def _leave_group(exc_type: type[BaseException] | None, *exc: object) -> None:
    """Destroy the process group :func:`distributed` started (unless the block already did).

    After a block that ended normally, every process first waits for the others: a process that
    tore its gloo pairs down while a peer was still finishing its last collective sometimes
    aborted at exit ("terminate called without an active exception"). After an error nobody
    waits, since the peers may never arrive; torchrun ends them.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if exc_type is None:
        try:  # bounded: a peer that died without a word must not hold this one for the group's hours
            dist.barrier(async_op=True).wait(timeout=_LEAVE_WAIT)
        except Exception:  # a peer that has already failed, or one that never came: leave all the same
            pass
    dist.destroy_process_group()


_LEAVE_WAIT = datetime.timedelta(seconds=60)
