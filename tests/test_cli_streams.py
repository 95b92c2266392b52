"""pdseg run from scripts: standard streams closed at start, and a reader of stdout that goes away."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, small_split, torchrun_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX descriptors and pipes")


@pytest.mark.parametrize("closed", ["1", "2", "1,2"])
def test_a_command_runs_with_stdout_or_stderr_closed(tmp_path: Path, closed: str) -> None:
    """`pdseg ... >&- 2>&-` (daemons, some cron lines): the work is done and the status is 0."""
    split, maps = small_split(tmp_path)
    out = tmp_path / "scores.json"
    # the shell closes the descriptors before pdseg starts, as such a script line does
    redirect = " ".join(f"{fd}>&-" for fd in closed.split(","))
    line = f'"{sys.executable}" -m pdseg_cli eval --split "{split}" --pred "{maps}" --json "{out}" {redirect}'
    proc = subprocess.run(["sh", "-c", line], env=torchrun_env(), cwd=REPO, timeout=120)
    assert proc.returncode == 0
    assert out.is_file() and '"maxF"' in out.read_text()


def test_version_with_stderr_closed() -> None:
    proc = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -m pdseg_cli --version 2>&-'],
        env=torchrun_env(),
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.startswith(b"pdseg ")


@pytest.mark.parametrize("output", ["--csv", "table"])
def test_a_reader_that_goes_away_leaves_the_run_its_own_status(tmp_path: Path, output: str) -> None:
    """`pdseg eval ... | head -1`: no 'Broken pipe' error, no status 1 (the status of failed work),
    no shutdown traceback; the table (rich) and the CSV (a plain write) alike."""
    split, maps = small_split(tmp_path)
    status, err = _piped_to_true(
        tmp_path, "--split", split, "--pred", maps, *(["--csv", "-"] if output == "--csv" else [])
    )
    assert status == "0", err
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception ignored" not in err


def test_a_reader_that_goes_away_does_not_cost_the_other_report(tmp_path: Path) -> None:
    """`--json -` read by nobody, `--csv FILE` beside it: the CSV is still written."""
    split, maps = small_split(tmp_path)
    status, err = _piped_to_true(
        tmp_path, "--split", split, "--pred", maps, "--json", "-", "--csv", "scores.csv"
    )
    assert status == "0", err
    assert (tmp_path / "scores.csv").read_text().startswith("split,count,maxF")


def _piped_to_true(cwd: Path, *eval_args: str | Path) -> tuple[str, str]:
    """`pdseg eval ARGS 2>err.txt | true` in ``cwd``: (pdseg's exit status, its stderr). `true` reads
    nothing and is gone long before the scores are written."""
    proc = _bash(cwd, f"{_eval_line(*eval_args)} 2>err.txt | true; echo ${{PIPESTATUS[0]}}")
    return proc.stdout.strip(), (cwd / "err.txt").read_text()


def _eval_line(*args: str | Path) -> str:
    """`pdseg eval ARGS` as a shell command line (this interpreter, every word quoted)."""
    return " ".join(f'"{a}"' for a in [sys.executable, "-m", "pdseg_cli", "eval", *args])


def _bash(cwd: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script], env=torchrun_env(), cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_a_broken_pipe_that_is_not_stdout_is_an_error(tmp_path: Path) -> None:
    from typer import Exit

    from pdseg_cli.commands._common import user_errors

    with pytest.raises(Exit) as info, user_errors():
        raise BrokenPipeError(32, "Broken pipe")  # a child's or a socket's, say: not a reader of stdout
    assert info.value.exit_code == 1


def test_a_full_disk_elsewhere_is_not_said_as_standard_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint's or a cache's write that fills the disk (no file name in the error) keeps its
    own hint: only a write to standard output is said as one."""
    import errno

    from typer import Exit

    from pdseg_cli.commands._common import user_errors

    with pytest.raises(Exit), user_errors():
        raise OSError(errno.ENOSPC, "No space left on device")  # as np.save or f.write raises it
    err = capsys.readouterr().err
    assert "standard output" not in err and "--resume" in err, err


def test_dev_stdout_is_standard_output_and_the_table_goes_to_stderr(tmp_path: Path) -> None:
    """`--csv /dev/stdout | reader`: the reader gets the CSV alone, as with `--csv -`; appended to a
    file (`>> log`), nothing there before is lost."""
    split, maps = small_split(tmp_path)
    line = _eval_line("--split", split, "--pred", maps)
    (tmp_path / "log.csv").write_text("before\n")
    proc = _bash(tmp_path, f"{line} --csv /dev/stdout | cat; {line} --csv /dev/stdout >> log.csv")
    assert proc.stdout.startswith("split,count,maxF") and proc.stdout.count("\n") == 2, proc.stdout
    assert "pdseg eval" in proc.stderr  # the table
    log = (tmp_path / "log.csv").read_text()
    assert log.startswith("before\nsplit,count,maxF") and log.count("\n") == 3


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device that is always full)")
@pytest.mark.parametrize("args", [["--help"], ["predict", "--help"]])
def test_the_help_to_a_full_disk_is_one_line(args: list[str]) -> None:
    """click writes the help itself, and a full disk under it was a traceback."""
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "pdseg_cli", *args], stdout=full, stderr=subprocess.PIPE, text=True
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: cannot write to standard output (No space left on device)\n")
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device that is always full)")
@pytest.mark.parametrize("report", ["table", "--csv"])
def test_a_command_whose_output_goes_to_a_full_disk_says_standard_output(tmp_path: Path, report: str) -> None:
    """`pdseg eval ... > /dev/full` said "No space left on device" with no file, and a hint about
    training runs and --resume."""
    split, maps = small_split(tmp_path)
    args = ["--split", split, "--pred", maps, *(["--csv", "-"] if report == "--csv" else [])]
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "pdseg_cli", "eval", *map(str, args)],
            stdout=full, stderr=subprocess.PIPE, text=True, env=torchrun_env(), timeout=120,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "error: cannot write to standard output (No space left on device)" in done.stderr, done.stderr
    assert "--resume" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("args", ["--help", "predict --help", "-h"])
def test_the_help_read_in_part_ends_with_status_0(tmp_path: Path, args: str) -> None:
    """`pdseg predict --help | head -1` ended with status 1 (rich's answer to a reader that went
    away), which `set -o pipefail` takes for a failure."""
    line = f'"{sys.executable}" -m pdseg_cli {args}'
    proc = _bash(tmp_path, f"{line} 2>err.txt | head -c 1 > /dev/null; echo ${{PIPESTATUS[0]}}")
    assert proc.stdout.strip() == "0", (tmp_path / "err.txt").read_text()


def test_a_csv_on_standard_output_keeps_its_names_in_an_ascii_locale(tmp_path: Path) -> None:
    """`--csv -` with PYTHONIOENCODING=ascii wrote "?" for the "é" of a split's name: the same
    bytes as `--csv FILE` now."""
    split, maps = small_split(tmp_path)
    named = split.rename(split.with_name("café"))
    args = ["--split", named, "--pred", maps]
    env = {**torchrun_env(), "PYTHONIOENCODING": "ascii"}
    cmd = [sys.executable, "-m", "pdseg_cli", "eval", *map(str, args)]
    piped = subprocess.run([*cmd, "--csv", "-"], capture_output=True, env=env, cwd=tmp_path, timeout=120)
    assert piped.returncode == 0, piped.stderr
    subprocess.run([*cmd, "--csv", "s.csv"], capture_output=True, env=env, cwd=tmp_path, timeout=120)
    assert "café".encode() in piped.stdout and piped.stdout == (tmp_path / "s.csv").read_bytes()


def test_a_deleted_current_folder_is_said(tmp_path: Path) -> None:
    """torch's maths library cannot load there, and ended every command with status 2 and nothing
    printed."""
    gone = tmp_path / "gone"
    gone.mkdir()
    script = f'cd "{gone}" && rmdir "{gone}" && "{sys.executable}" -m pdseg_cli info pdseg-t; echo "rc=$?"'
    proc = _bash(tmp_path, script)
    assert proc.stdout.strip().endswith("rc=1"), proc.stdout + proc.stderr
    assert f"error: the current folder {gone} no longer exists" in proc.stderr, proc.stderr
    assert "hint: cd to a folder that exists" in proc.stderr
    # $PWD inherited from a parent that did not cd (a script's subprocess, cron): not named
    gone.mkdir()
    script = f'cd "{gone}" && rmdir "{gone}" && PWD="{tmp_path}" "{sys.executable}" -m pdseg_cli info pdseg-t'
    proc = _bash(tmp_path, script)
    assert "error: the current folder no longer exists" in proc.stderr, proc.stderr


@pytest.mark.parametrize("reader", ["first", "later"])
def test_a_named_pipe_report_is_read_whole_and_a_wait_is_said(tmp_path: Path, reader: str) -> None:
    """`--json FIFO`: a reader already there gets the whole report (no trial open that would end its
    input); with none yet, the run says it waits for one instead of seeming to hang."""
    split, maps = small_split(tmp_path)
    fifo = tmp_path / "scores.fifo"
    os.mkfifo(fifo)
    read = "cat scores.fifo > got.json"
    if reader == "first":
        script = f"{read} & sleep 0.5; {_eval_line('--split', split, '--pred', maps, '--json', fifo)}; wait"
    else:
        script = f"(sleep 4; {read}) & {_eval_line('--split', split, '--pred', maps, '--json', fifo)}; wait"
    proc = _bash(tmp_path, script)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "got.json").read_text())["splits"]["set"]["count"] == 3
    waited = "waiting for a program to read the named pipe" in proc.stderr
    assert waited == (reader == "later"), proc.stderr
