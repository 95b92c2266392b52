"""SIGTERM and SIGHUP stop a command as Ctrl-C does (runtime.stop), except where ignored (nohup)."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from pdseg_cli.engine.train_signals import StopFlag
from pdseg_cli.runtime import interrupt_on_stop_signals, stop_signals

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture
def restore_handlers():  # noqa: ANN201
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_term_and_hangup_raise_keyboard_interrupt(restore_handlers: None) -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    interrupt_on_stop_signals()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)
            signal.sigtimedwait([], 0.1) if hasattr(signal, "sigtimedwait") else None


def test_an_ignored_hangup_stays_ignored(restore_handlers: None) -> None:
    """Under nohup SIGHUP is ignored on purpose: the run must outlive its terminal."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert stop_signals() == (signal.SIGTERM,)
    interrupt_on_stop_signals()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGHUP)  # nothing happens


def test_a_handler_already_set_is_kept(restore_handlers: None) -> None:
    def mine(signum: int, frame: object) -> None:
        return None

    signal.signal(signal.SIGTERM, mine)
    interrupt_on_stop_signals()
    assert signal.getsignal(signal.SIGTERM) is mine


def test_training_stops_at_a_step_on_hangup_unless_ignored(restore_handlers: None) -> None:
    notes: list[str] = []
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    with StopFlag(notes.append) as flag:
        os.kill(os.getpid(), signal.SIGHUP)
    assert flag.requested and notes  # a resumable last.pt is saved at the next step boundary
    assert "Ctrl-C" not in notes[0]  # no "Ctrl-C again" to offer a closed terminal or a scheduler
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with StopFlag(notes.append) as flag:
        os.kill(os.getpid(), signal.SIGHUP)
    assert not flag.requested
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN  # restored on exit


def test_a_quick_second_ctrl_c_aborts_training_unless_torchrun_echoes_it(restore_handlers: None) -> None:
    # the notice promised "Ctrl-C again aborts", but a press within 2 s was taken for torchrun's echo
    # in every run: a quick double press finished the epoch instead
    notes: list[str] = []
    with StopFlag(notes.append) as flag:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert flag.requested and notes[0].endswith("(Ctrl-C again aborts)")
    with StopFlag(notes.append, StopFlag.ECHO_SECONDS) as flag:  # a torchrun worker
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the forwarded copy: ignored
    assert flag.requested and notes[1].endswith("(Ctrl-C again, 2 s or more after the first, aborts)")


def test_a_background_training_run_keeps_ctrl_c_ignored(restore_handlers: None) -> None:
    # `pdseg train ... &` in a script starts with SIGINT ignored, so a Ctrl-C meant for the
    # script's foreground command leaves it running; the training run took SIGINT back and stopped
    notes: list[str] = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with StopFlag(notes.append) as flag:
        os.kill(os.getpid(), signal.SIGINT)
    assert not flag.requested and not notes
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
