"""pdseg run from scripts: standard streams closed at start, and a reader of stdout that goes away."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import REPO, torchrun_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX descriptors and pipes")


def _split(root: Path) -> tuple[Path, Path]:
    """A folder split of three GTs and a folder of maps for them."""
    rng = np.random.default_rng(0)
    (root / "set" / "gt").mkdir(parents=True)
    (root / "maps").mkdir()
    for i in range(3):
        gt = np.zeros((24, 32), np.uint8)
        gt[4 + i : 18, 6:26] = 255
        cv2.imwrite(str(root / "set" / "gt" / f"s{i}.png"), gt)
        cv2.imwrite(str(root / "maps" / f"s{i}.png"), rng.integers(0, 256, (24, 32), dtype=np.uint8))
    return root / "set", root / "maps"


@pytest.mark.parametrize("closed", ["1", "2", "1,2"])
def test_a_command_runs_with_stdout_or_stderr_closed(tmp_path: Path, closed: str) -> None:
    """`pdseg ... >&- 2>&-` (daemons, some cron lines): the work is done and the status is 0."""
    split, maps = _split(tmp_path)
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
    split, maps = _split(tmp_path)
    args = ["eval", "--split", split, "--pred", maps, *(["--csv", "-"] if output == "--csv" else [])]
    line = " ".join(f'"{a}"' for a in [sys.executable, "-m", "pdseg_cli", *args])
    # `true` reads nothing and is gone long before the scores are written
    proc = subprocess.run(
        ["bash", "-c", f"{line} 2>err.txt | true; echo ${{PIPESTATUS[0]}}"],
        env=torchrun_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = (tmp_path / "err.txt").read_text()
    assert proc.stdout.strip() == "0", err
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception ignored" not in err


def test_a_reader_that_goes_away_does_not_cost_the_other_report(tmp_path: Path) -> None:
    """`--json -` read by nobody, `--csv FILE` beside it: the CSV is still written."""
    split, maps = _split(tmp_path)
    line = " ".join(
        f'"{a}"' for a in [sys.executable, "-m", "pdseg_cli", "eval", "--split", split, "--pred", maps]
    )
    proc = subprocess.run(
        ["bash", "-c", f"{line} --json - --csv scores.csv 2>err.txt | true; echo ${{PIPESTATUS[0]}}"],
        env=torchrun_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.strip() == "0", (tmp_path / "err.txt").read_text()
    assert (tmp_path / "scores.csv").read_text().startswith("split,count,maxF")


def test_a_broken_pipe_that_is_not_stdout_is_an_error(tmp_path: Path) -> None:
    from typer import Exit

    from pdseg_cli.commands._common import user_errors

    with pytest.raises(Exit) as info, user_errors():
        raise BrokenPipeError(32, "Broken pipe")  # a child's or a socket's, say: not a reader of stdout
    assert info.value.exit_code == 1
