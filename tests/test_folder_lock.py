"""One pdseg process at a time in a folder a run owns (data.folder_lock): a training run's --out,
eval's --save-preds. Two runs in one such folder deleted, mixed or cross-scored each other's files."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import flat, make_dataset
from typer.testing import CliRunner

from pdseg_cli.cli import app
from pdseg_cli.data import atomic
from pdseg_cli.data.folder_lock import LOCK_NAME, folder_lock
from pdseg_cli.errors import InputError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock: no lock on Windows")
runner = CliRunner()


def test_a_held_folder_is_refused_and_left_clean(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with folder_lock(out, "--out run"):
        assert (out / LOCK_NAME).is_file()
        with pytest.raises(
            InputError, match=r"--out run is in use by another pdseg process \(process \d+ on "
        ):
            with folder_lock(out, "--out run"):
                pass
    assert not out.exists()  # made for the lock, left empty: removed
    out.mkdir()
    (out / "kept.txt").write_text("x")
    with folder_lock(out, "--out run"):
        pass
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt"]  # the lock file goes with the run


def test_a_second_train_into_a_live_run_is_refused(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "tr", 4)
    out = tmp_path / "run"
    args = ["train", "--epochs", "1", "--out", str(out), "--variant", "pdseg-tiny", "--size", "64"]
    args += ["--batch", "2", "--workers", "0", "--train", str(data), "--val-every", "0", "--device", "cpu"]
    with folder_lock(out, "the live run"):  # another process's run, as far as the lock can tell
        for extra in ([], ["--overwrite"]):
            result = runner.invoke(app, [*args, *extra])
            assert result.exit_code == 2, result.output
            assert f"--out {out} is in use by another pdseg process" in flat(result.output)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written or deleted
    assert runner.invoke(app, args).exit_code == 0  # once it has ended


def test_a_file_system_without_flock_runs_without_a_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFS without lockd (ENOLCK) or Lustre without -o flock (ENOSYS): every run was refused as if
    another held the folder, and an empty folder with a lock file was left."""
    import errno

    from pdseg_cli.data import folder_lock as module

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(module.fcntl, "flock", no_flock)
    out = tmp_path / "runs" / "a"
    with folder_lock(out, "--out runs/a"):
        assert out.is_dir() and not (out / LOCK_NAME).exists()
    assert not (tmp_path / "runs").exists()  # every folder it made, removed again while empty


_FORKS_THEN_DIES = """
import os, signal, sys, time
from pathlib import Path
from pdseg_cli.data.folder_lock import folder_lock
with folder_lock(Path(sys.argv[1]), "--out run"):
    child = os.fork()  # as a DataLoader worker is
    if child == 0:  # off the test's pipes, which it would hold open for its minute
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork: POSIX")
def test_a_forked_child_does_not_keep_a_killed_runs_lock(tmp_path: Path) -> None:
    """``kill -9`` of a training run with ``--workers 2``: its forked workers shared the lock file
    and kept the flock until they had exited, so a requeue's ``--resume`` was refused, naming a
    process that was gone."""
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", _FORKS_THEN_DIES, str(out)], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    child = int(done.stdout)
    try:
        assert atomic._process_alive(child)  # the orphaned child still runs...
        with folder_lock(out, "--out run"):  # ...and the folder is free
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_holder_that_has_ended_is_said_so(tmp_path: Path) -> None:
    out = tmp_path / "run"
    gone = int(
        subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout
    )
    host = socket.gethostname()
    token = atomic.writer_token().replace(f"{os.getpid()}-", f"{gone}-", 1)  # as that process wrote it
    with folder_lock(out, "--out run"):
        for content, ended in ((f"{gone} {host} {token}", True), (f"{gone} {host}", False)):  # older files
            (out / LOCK_NAME).write_text(content + "\n")
            with pytest.raises(InputError) as refused:
                with folder_lock(out, "--out run"):
                    pass
            said = f"(process {gone} on {host}, which has ended; a process it started still holds it"
            assert (said in refused.value.message) == ended, refused.value.message
            assert f"(process {gone} on {host}" in refused.value.message
