"""pdseg_cli.runtime: the glibc malloc setting, precision notes, peak memory and the torchrun lifecycle."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TORCHRUN_VARIABLES, torchrun_env

from pdseg_cli import runtime
from pdseg_cli.errors import InputError

GLIBC = runtime.has_glibc_malloc()

# In a fresh process: three forward passes of pdseg-t (plain, eval mode) at 256x256 after a warm-up,
# counting minor page faults. With glibc's defaults, freed activation buffers go back to the kernel
# and each pass faults them in again; with the setting they are reused.
_PASSES = """
import json, resource, sys
import torch
from pdseg_cli import create_model, runtime
applied = runtime.keep_freed_memory() if sys.argv[1] == "keep" else None
torch.set_num_threads(1)
model = create_model("pdseg-t").eval()
x = torch.randn(1, 3, 256, 256)
with torch.inference_mode():
    model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model(x)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults_per_pass": faults / 3}))
"""


def _faults_per_pass(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", _PASSES, mode],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc malloc only")
def test_keep_freed_memory_stops_refaulting_freed_buffers() -> None:
    default, kept = _faults_per_pass("default"), _faults_per_pass("keep")
    assert kept["applied"] and "32 MiB" in kept["applied"]
    # measured on the 2-core VM: about 9,500 faults (37 MiB) a pass with the defaults, none with it
    # when idle, and 340-680 on a loaded machine (other processes' page-cache pressure): the
    # property is the ratio, not an absolute count
    assert default["faults_per_pass"] > 2000
    assert kept["faults_per_pass"] < default["faults_per_pass"] / 5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MALLOC_ARENA_MAX", "2"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1"),
        ("LD_PRELOAD", "/x/libjemalloc.so.2"),
    ],
)
def test_keep_freed_memory_leaves_the_users_own_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    for key in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setenv(name, value)
    assert runtime.keep_freed_memory() is None


def test_keep_freed_memory_is_a_no_op_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert runtime.keep_freed_memory() is None


@pytest.mark.parametrize(
    ("flags", "precision", "warned"),
    [
        ({"avx2", "fma"}, "bf16", True),
        ({"avx2", "fma"}, "fp16", True),
        ({"avx2", "fma"}, "fp32", False),
        ({"avx2", "avx512_bf16"}, "bf16", False),
        ({"avx2", "amx_bf16"}, "fp16", True),
        ({"avx2", "amx_fp16"}, "fp16", False),
        (set(), "bf16", False),  # flags unknown (not x86 Linux): say nothing
    ],
)
def test_emulated_precision_note(
    monkeypatch: pytest.MonkeyPatch, flags: set[str], precision: str, warned: bool
) -> None:
    import torch

    monkeypatch.setattr(runtime.precision, "cpu_flags", lambda: frozenset(flags))
    note = runtime.emulated_precision_note(torch.device("cpu"), precision)
    assert (note is not None) == warned
    if warned:
        assert precision in note and "(--precision fp32)" in note
        fix = "export the model again without --half"  # what an exported fp16 file can do instead
        assert f"({fix})" in runtime.emulated_precision_note(torch.device("cpu"), precision, fix)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert runtime.emulated_precision_note(torch.device("cuda"), precision) is None  # the CPU's flags: moot


def _fake_gpus(monkeypatch: pytest.MonkeyPatch, capabilities: dict[int, tuple[int, int]]) -> None:
    """CUDA GPUs of these compute capabilities by index, GPU 0 current; nothing may ask the current
    device, nor make a tensor to find out (what is_bf16_supported does)."""
    import torch

    names = {(7, 0): "Tesla V100", (7, 5): "Tesla T4", (8, 0): "A100", (9, 0): "H100"}

    def index(device: object) -> int:
        assert device is not None and torch.device(device).index is not None, "asked the current device"
        return torch.device(device).index

    def refuse(*args: object, **kwargs: object) -> bool:
        raise AssertionError("is_bf16_supported asks the current GPU and says True of emulated bf16")

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capabilities[index(device)])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: names[capabilities[index(device)]])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", refuse)


@pytest.mark.parametrize(
    ("capability", "auto", "noted"),
    [((7, 0), "fp32", True), ((7, 5), "fp32", True), ((8, 0), "bf16", False), ((9, 0), "bf16", False)],
)
def test_auto_precision_is_bf16_only_on_gpus_with_native_bf16(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], auto: str, noted: bool
) -> None:
    import torch

    # the GPU asked about is GPU 1; GPU 0, the current one, is the other kind, so asking it fails
    other = (8, 0) if capability < (8, 0) else (7, 5)
    _fake_gpus(monkeypatch, {0: other, 1: capability})
    gpu = torch.device("cuda", 1)
    assert runtime.resolve_precision("auto", gpu) == auto
    # bf16 asked for is kept on an older GPU (PyTorch emulates it), with a note saying it is slow
    assert runtime.resolve_precision("bf16", gpu) == "bf16"
    note = runtime.emulated_precision_note(gpu, "bf16")
    assert (note is not None) == noted
    if noted:
        assert f"compute capability {capability[0]}.{capability[1]}" in note and "--precision fp16" in note
    assert runtime.emulated_precision_note(gpu, "fp16") is None
    assert runtime.emulated_precision_note(gpu, "fp32") is None


def test_predictor_carries_the_note(monkeypatch: pytest.MonkeyPatch) -> None:
    from pdseg_cli import Predictor, create_model

    monkeypatch.setattr(runtime.precision, "cpu_flags", lambda: frozenset({"avx2"}))
    model = create_model("pdseg-tiny")
    assert Predictor(model, device="cpu", precision="bf16", size=64).notes
    assert Predictor(model, device="cpu", precision="fp32", size=64).notes == []


_RELEASE = """
import json, os
import torch
from pdseg_cli import runtime
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
runtime.keep_freed_memory()
buf = torch.ones(6 << 20)  # 24 MiB, written: under the 32 MiB threshold, so it comes from the heap
del buf
kept = rss()
released = runtime.release_freed_memory()
print(json.dumps({"released": released, "dropped": kept - rss()}))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc malloc only")
def test_release_freed_memory_gives_kept_buffers_back() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _RELEASE], capture_output=True, text=True, check=True, timeout=120
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["released"]
    assert got["dropped"] > 16 << 20


def test_every_module_imports_without_unix_only_modules() -> None:
    # Windows has no `resource`: pdseg must still import (and `pdseg --help` run) there
    code = (
        "import sys, pkgutil, importlib\n"
        "sys.modules['resource'] = None\n"
        "import pdseg_cli\n"
        "names = [m.name for m in pkgutil.walk_packages(pdseg_cli.__path__, 'pdseg_cli.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "from pdseg_cli.runtime import peak_rss\n"
        "print(len(names), peak_rss())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    count, rss = out.stdout.split()
    assert int(count) > 30 and rss == "0"


def test_peak_rss_off_unix_gives_zero_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    assert runtime.peak_rss() > 0
    monkeypatch.setattr(sys, "platform", "win32")  # no WinDLL here: the fallback path
    assert runtime.peak_rss() == 0


# ----------------------------------------------------------------------------------------------
# torchrun


def _clear_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_env_distributed_reads_torchrun_and_refuses_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_torchrun_env(monkeypatch)
    assert runtime.env_distributed() == runtime.Distributed(1, 0, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert runtime.env_distributed() == runtime.Distributed(4, 3, 3)  # LOCAL_RANK defaults to RANK
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runtime.env_distributed() == runtime.Distributed(4, 3, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(InputError, match="inconsistent"):
        runtime.env_distributed()
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(InputError, match="not a number"):
        runtime.env_distributed()


def test_outside_torchrun_nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import torch.distributed as dist

    _clear_torchrun_env(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "1")  # `torchrun --nproc-per-node 1`: one process, no group
    with runtime.distributed(device=torch.device("cpu")) as env:
        assert env == runtime.Distributed() and not env.enabled and env.is_main
        assert not dist.is_initialized()
        assert env.all_gather("x") == ["x"] and env.shard([1, 2, 3]) == [1, 2, 3]
        env.barrier()  # returns at once


def test_backend_follows_the_device() -> None:
    import torch

    assert runtime.backend_for(torch.device("cpu")) == "gloo"
    assert runtime.backend_for(torch.device("cuda", 1)) == "nccl"


# Each of two processes joins the job through runtime.distributed (or starts the group itself first,
# "own"), gathers, shards and meets at a barrier, and reports whether a group is left afterwards.
_JOIN = """
import datetime, json, sys
import torch
import torch.distributed as dist
from pdseg_cli import runtime
own = sys.argv[1] == "own"
if own:
    dist.init_process_group("gloo")
with runtime.distributed(timeout=datetime.timedelta(seconds=60), device=torch.device("cpu")) as env:
    backend = dist.get_backend()
    gathered = env.all_gather({"rank": env.rank})
    shard = env.shard(list(range(5)))
    env.barrier()
left = dist.is_initialized()
if own:
    dist.destroy_process_group()
print(json.dumps({"env": [env.world_size, env.rank, env.local_rank], "backend": backend,
                  "gathered": gathered, "shard": shard, "left": left}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_processes(mode: str) -> list[dict]:
    port = str(_free_port())
    procs = []
    for rank in range(2):
        torchrun = {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}
        env = torchrun_env(**torchrun, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _JOIN, mode],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.parametrize("mode", ["started", "own"])
def test_two_processes_join_gather_and_leave(mode: str) -> None:
    first, second = _two_processes(mode)
    assert first["env"] == [2, 0, 0] and second["env"] == [2, 1, 1]
    for got in (first, second):
        assert got["backend"] == "gloo"
        assert got["gathered"] == [{"rank": 0}, {"rank": 1}]
        # a group runtime.distributed started is gone after the block; one started before is kept
        assert got["left"] == (mode == "own")
    assert (first["shard"], second["shard"]) == ([0, 2, 4], [1, 3])


def test_default_threads_are_the_cores_other_work_leaves_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert runtime.default_threads(cores=2, busy=0.0) == 2
    assert runtime.default_threads(cores=2, busy=1.0) == 1  # one core taken: one thread, never 0
    assert runtime.default_threads(cores=2, busy=5.0) == 1
    assert runtime.default_threads(cores=16, busy=4.0) == 12
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stands
    assert runtime.default_threads(cores=2, busy=0.0) is None


@pytest.mark.skipif(not Path("/proc/loadavg").exists(), reason="Linux only")
def test_other_runnable_tasks_reads_the_run_queue() -> None:
    busy = runtime.other_runnable_tasks(looks=3, interval_s=0.0)
    assert busy is not None and busy >= 0


def test_a_torch_device_is_taken_as_its_name() -> None:
    """`Predictor(device=torch.device("cpu"))` failed on `.strip()`; load_model takes one too."""
    import torch

    from pdseg_cli.engine.predict import Predictor
    from pdseg_cli.model import create_model
    from pdseg_cli.runtime import resolve_device

    assert resolve_device(torch.device("cpu")).device == torch.device("cpu")
    assert Predictor(create_model("pdseg-tiny"), device=torch.device("cpu")).device.type == "cpu"


@pytest.mark.parametrize(
    ("text", "oom"),
    [
        ("CUDA out of memory. Tried to allocate 2.00 GiB", True),
        ("Failed to allocate memory for requested buffer of size 1073741824", True),  # onnxruntime
        ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED", True),
        ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", True),
        ("its Add node: Attempting to broadcast an axis by a dimension other than 1", False),
    ],
)
def test_out_of_memory_is_told_from_other_failures(text: str, oom: bool) -> None:
    from pdseg_cli.runtime.memory import is_out_of_memory

    assert is_out_of_memory(RuntimeError(text)) is oom


def test_gpu_waits_and_cache_release_reach_mps_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """MPS runs its work asynchronously as CUDA does: a benchmark clock read without waiting timed
    the queueing, and an out-of-memory retry found the cache still full."""
    import torch

    calls: list[str] = []
    for module, name in ((torch.mps, "mps"), (torch.cuda, "cuda")):
        monkeypatch.setattr(module, "synchronize", lambda *a, n=name: calls.append(f"{n} sync"))
        monkeypatch.setattr(module, "empty_cache", lambda *a, n=name: calls.append(f"{n} empty"))
    for device in ("cpu", "mps", "cuda"):
        runtime.synchronize(torch.device(device))
        runtime.empty_device_cache(torch.device(device))
    assert calls == ["mps sync", "mps empty", "cuda sync", "cuda empty"]


def test_usable_cores_follow_the_container_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    """`docker run --cpus 2` on a many-core host: joblib's count reads the cgroup quota (and the
    affinity), and predict, train and eval all size their threads and workers from it."""
    import joblib

    from pdseg_cli.engine import evaluate

    monkeypatch.setattr(joblib, "cpu_count", lambda *a, **k: 2)
    assert runtime.usable_cores() == 2 and evaluate.all_cores() == 2
    monkeypatch.setattr(joblib, "cpu_count", lambda *a, **k: 0)  # never fewer than one
    assert runtime.usable_cores() == 1
