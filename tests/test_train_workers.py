"""Training's data-loading workers where processes are spawned (macOS and Windows start them so):
a Ctrl-C while they start, a worker that cannot start, and a script that would call ``train()``
again in every worker."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, make_dataset

from pdseg_cli.engine import train_workers
from pdseg_cli.errors import InputError, RunFailed


class _Loader:
    """Stands for a DataLoader: ``iter()`` runs ``start`` (what starting its workers does)."""

    def __init__(self, start: Any) -> None:
        self.start, self.started = start, False

    def __iter__(self) -> _Loader:
        self.start()
        self.started = True
        return self

    def __next__(self) -> None:
        raise StopIteration


_POSIX_SIGNALS = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and fork")


@pytest.fixture(params=["forked", "spawned"])
def started_as(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways workers start: forked (Linux), or afresh (macOS, Windows), which start_workers
    does from a thread of its own."""
    monkeypatch.setattr(train_workers, "spawns", lambda: request.param == "spawned")
    monkeypatch.setattr(train_workers, "unguarded_main_call", lambda: None)
    return request.param


@_POSIX_SIGNALS
def test_a_ctrl_c_while_the_workers_start_is_acted_on_once_the_loader_holds_them(started_as: str) -> None:
    """Raised inside the loader's start-up, it left a half-built loader whose workers (which ignore
    SIGTERM) kept the process from exiting, for ever."""

    def start() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)  # the start goes on after the Ctrl-C

    loader = _Loader(start)
    said: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        train_workers.start_workers(loader, 2, on_stopping=said.append)
    assert loader.started  # the start-up ran to its end before the Ctrl-C was raised
    assert said == ([signal.SIGINT] if started_as == "spawned" else [])


@_POSIX_SIGNALS
def test_a_second_ctrl_c_stops_a_start_that_never_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spawned worker that ends as it starts leaves the start writing to it for ever: the signals
    were held all that time, and only SIGKILL ended the process."""
    monkeypatch.setattr(train_workers, "spawns", lambda: True)
    monkeypatch.setattr(train_workers, "unguarded_main_call", lambda: None)
    stuck = threading.Event()

    def start() -> None:
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)
        stuck.wait(60)

    began = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            train_workers.start_workers(_Loader(start), 1)
    finally:
        stuck.set()
    assert time.monotonic() - began < 30


@_POSIX_SIGNALS
def test_one_stop_ends_a_start_that_never_ends_after_a_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheduler's SIGTERM comes once: the start may end whole meanwhile, else it is given up."""
    monkeypatch.setattr(train_workers, "spawns", lambda: True)
    monkeypatch.setattr(train_workers, "unguarded_main_call", lambda: None)
    monkeypatch.setattr(train_workers, "STOP_GRACE_S", 0.5)
    stuck = threading.Event()

    def start() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        stuck.wait(60)

    try:
        with pytest.raises(KeyboardInterrupt):
            train_workers.start_workers(_Loader(start), 1)
    finally:
        stuck.set()


@_POSIX_SIGNALS
def test_a_stop_is_acted_on_before_a_failed_start_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop is what the user did: it ends the run as a stop (status 130 or 143), not as a failure."""
    monkeypatch.setattr(train_workers, "spawns", lambda: True)
    monkeypatch.setattr(train_workers, "unguarded_main_call", lambda: None)

    def start() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(KeyboardInterrupt):
        train_workers.start_workers(_Loader(start), 1)


def test_a_start_that_never_ends_fails_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_workers, "spawns", lambda: True)
    monkeypatch.setattr(train_workers, "unguarded_main_call", lambda: None)
    monkeypatch.setattr(train_workers, "START_TIMEOUT_S", 0.5)
    stuck = threading.Event()
    try:
        with pytest.raises(RunFailed, match=r"the 3 data-loading worker processes did not start within 0 s"):
            train_workers.start_workers(_Loader(lambda: stuck.wait(60)), 3)
    finally:
        stuck.set()


def _worker_loop() -> None:
    time.sleep(60)


@_POSIX_SIGNALS
def test_a_worker_start_that_fails_kills_the_workers_started_and_says_so(started_as: str) -> None:
    started: list[multiprocessing.Process] = []

    def start() -> None:
        worker = multiprocessing.get_context("fork").Process(target=_worker_loop, daemon=True)
        worker.start()
        started.append(worker)
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(RunFailed, match=r"the 2 data-loading worker processes could not start \(BrokenPipe"):
        train_workers.start_workers(_Loader(start), 2)
    started[0].join(10)
    assert started[0].exitcode == -signal.SIGKILL


@_POSIX_SIGNALS
def test_a_stop_handler_of_the_callers_own_that_returns_lets_the_start_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A script that notes a scheduler's SIGTERM in a flag, to stop at a time of its own: the
    workers were killed and the run failed at its first batch."""
    monkeypatch.setattr(train_workers, "spawns", lambda: True)
    monkeypatch.setattr(train_workers, "unguarded_main_call", lambda: None)
    noted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
    try:
        started: list[multiprocessing.Process] = []

        def start() -> None:
            started.append(multiprocessing.get_context("fork").Process(target=_worker_loop, daemon=True))
            started[0].start()
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)

        loader = _Loader(start)
        train_workers.start_workers(loader, 1)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert loader.started and noted == [signal.SIGINT]
    try:
        started[0].join(0.5)
        assert started[0].is_alive()  # the loader's worker serves the run
    finally:
        started[0].kill()


def _ignoring_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)


@_POSIX_SIGNALS
def test_workers_still_running_at_exit_are_killed_before_multiprocessing_waits_on_them() -> None:
    """Its exit handler sends daemon processes SIGTERM, which the workers ignore, then waits on
    them: for ever, while anything still held the loader."""
    worker = multiprocessing.get_context("fork").Process(target=_ignoring_sigterm, daemon=True)
    worker.start()
    train_workers._kill_at_exit({worker})
    train_workers._kill_left()
    worker.join(10)
    assert worker.exitcode == -signal.SIGKILL


def test_train_in_a_starting_worker_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(InputError, match='under `if __name__ == "__main__":`'):
        train_workers.refuse_in_a_starting_worker()


_PROBE = """\
from pdseg_cli.engine.train_workers import unguarded_main_call

def call():
    return unguarded_main_call()

print("top", call())
if __name__ == "__main__":
    print("guarded", call())
if "__main__" == __name__ and len("x"):
    print("guarded and more", call())
if __name__ != "__main__":
    pass
else:
    print("else of !=", call())
"""


def test_the_main_guard_is_read_from_the_script(tmp_path: Path) -> None:
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    want = ["guarded None", "guarded and more None", "else of != None"]
    for name in ("probe.py", "probe"):  # a script without the .py suffix (./mytrain) is read too
        (tmp_path / name).write_text(_PROBE)
        out = subprocess.run(
            [sys.executable, str(tmp_path / name)], capture_output=True, text=True, check=True
        ).stdout
        assert out.splitlines() == [f"top {tmp_path / name}:6", *want]
    # a package's __main__.py (python -m pkg), which spawned workers do not run again
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "__main__.py").write_text(_PROBE)
    out = subprocess.run(
        [sys.executable, "-m", "pkg"], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    assert out.splitlines()[0] == "top None"


def test_a_script_that_trains_outside_the_main_guard_is_refused_before_any_worker_starts(
    tmp_path: Path,
) -> None:
    """As on macOS: the first spawned worker ran the script again, met the run folder's lock, and
    the script then hung for ever, writing the worker's data into a pipe nobody read."""
    data = make_dataset(tmp_path / "tr", 2)
    script = tmp_path / "mine.py"
    script.write_text(
        "import multiprocessing\nfrom pathlib import Path\nfrom pdseg_cli import TrainConfig, train\n"
        "multiprocessing.set_start_method('spawn', force=True)\n"
        f"train(TrainConfig(out=Path({str(tmp_path / 'run')!r}), epochs=1, variant='pdseg-tiny', size=32, "
        f"batch=2, workers=1, train_dir=Path({str(data)!r}), device='cpu'))\n"
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 1
    assert f'{script}:5 calls pdseg_cli.train outside `if __name__ == "__main__":`' in run.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def test_pdseg_train_with_spawned_workers_trains_and_says_what_a_ram_cache_costs(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "tr", 2)
    wrapper = tmp_path / "spawned_pdseg.py"  # the pdseg command, started as macOS starts workers
    wrapper.write_text(
        "import multiprocessing, sys\nfrom pdseg_cli.console import main\n"
        "if __name__ == '__main__':\n    multiprocessing.set_start_method('spawn', force=True)\n"
        "    sys.exit(main())\n"
    )
    args = ["train", "--train", str(data), "--variant", "pdseg-tiny", "--size", "32", "--batch", "2"]
    args += ["--epochs", "1", "--workers", "1", "--cache", "ram", "--device", "cpu"]
    args += ["--out", str(tmp_path / "run")]
    run = subprocess.run(
        [sys.executable, str(wrapper), *args], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert run.returncode == 0, run.stderr
    said = " ".join(run.stderr.split())
    assert "--cache ram with 1 worker started afresh (not forked): each holds its own copy" in said
    assert (tmp_path / "run" / "last.pt").is_file()
