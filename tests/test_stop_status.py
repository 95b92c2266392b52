"""A command stopped by a signal ends by that signal (signal_exit.end_by): a shell shows 130, 143 or 129,
and a shell loop or script that runs pdseg stops with it. An exit with status 130 told the shell
that pdseg had handled the Ctrl-C itself, and `for f in *.jpg; do pdseg predict "$f"; done` went
on to the next file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals")


def _stopped_info(send: str) -> str:
    """Python code that runs `pdseg info --size 64` through the console script, with the command
    sending `send` as it works (`os.kill` to itself, or `os.killpg` to its process group)."""
    return (
        "import os, signal, sys, time\n"
        "from pdseg_cli.commands import info\n"
        "def stopped(*args, **kwargs):\n"
        f"    {send}\n"
        "    time.sleep(30)\n"
        "info.square_side = stopped\n"
        "sys.argv = ['pdseg', 'info', '--size', '64']\n"
        "from pdseg_cli.console import main\n"
        "main()\n"
    )


def _as_from_a_terminal() -> None:
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_command_stopped_by_a_signal_ends_by_it(name: str) -> None:
    code = _stopped_info(f"os.kill(os.getpid(), signal.{name})")
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        # as a terminal starts it: a test run under nohup (or in a background job) passes SIGHUP (or
        # SIGINT) on ignored, and pdseg rightly keeps an ignored signal ignored
        preexec_fn=_as_from_a_terminal,
    )
    assert done.returncode == -getattr(signal, name), (done.returncode, done.stderr)
    # a person's Ctrl-C is plain; a kill or a scheduler's stop is named, for the log that shows it
    assert done.stderr == ("error: interrupted\n" if name == "SIGINT" else f"error: interrupted ({name})\n")


def test_a_ctrl_c_stops_the_shell_loop_that_runs_pdseg() -> None:
    """The terminal's Ctrl-C reaches the whole foreground group: the shell, then pdseg. bash goes on
    with its loop unless the command it waited for died by SIGINT."""
    code = _stopped_info("os.killpg(0, signal.SIGINT)")
    loop = 'for i in 1 2 3; do "$0" -c "$1"; echo "went on after $i"; done'
    done = subprocess.run(
        ["bash", "-c", loop, sys.executable, code],
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,  # its own group: the Ctrl-C must not reach the test run
    )
    assert "went on" not in done.stdout, done.stdout
    assert done.returncode == -signal.SIGINT, (done.returncode, done.stderr)
