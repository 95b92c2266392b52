"""Shared fixtures: the sample data beside the checkout, one torch thread, and the slow-test switch.

Shared plain functions (tiny checkpoints, sample folders, CLI runs) are in helpers.py.
"""

from __future__ import annotations

import os
import signal
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

# The sample data is research-only: tests read it in place beside the checkout and never copy it
# into the repository.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "load_aware_jobs: keep eval's default scoring processes (the idle cores, "
        "evaluate.default_jobs) for a test of that default",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PDSEG_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set PDSEG_RUN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder ../shared/data beside the checkout (skips the test where it is absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"sample data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def spread_tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pdseg-tiny checkpoint (seed 0, trained at 64) whose classifier weights are far from 0
    (std 3): maps that span dark to bright, so cut-out products and --threshold reruns are not
    trivial. Shared by the session: tests only read it."""
    from helpers import tiny_checkpoint  # here, not at the top: helpers imports torch

    return tiny_checkpoint(tmp_path_factory.mktemp("w") / "tiny.pt", train_size=64, classifier_std=3.0)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures(...)``): small
    ops on a shared 2-core machine are much faster without thread barriers. Restored afterwards."""
    import torch  # here, not at the top: the metric tests run without torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _cli_keeps_the_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process ``pdseg`` runs leave torch's thread count as it is: the command line's default
    (as many threads as idle cores, ``runtime.default_threads``) would change it for every later
    test by how busy the machine happens to be. Tests of that default call it directly."""
    from pdseg_cli.runtime import compute

    monkeypatch.setattr(compute, "default_threads", lambda *args, **kwargs: None)


@pytest.fixture(autouse=True)
def _eval_scores_in_one_process_by_default(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pdseg eval`` and ``evaluate()`` without ``--jobs``/``jobs=`` score in this process: their
    default (as many processes as idle cores, ``evaluate.default_jobs``) would choose between the
    in-process loop and a process pool by how busy the machine happens to be. Tests of that default
    are marked ``load_aware_jobs``."""
    if request.node.get_closest_marker("load_aware_jobs") is not None:
        return
    from pdseg_cli.engine import evaluate

    monkeypatch.setattr(evaluate, "default_jobs", lambda cores=None, busy=None: 1)


# A suite started in the background of a script (`pytest ... &`) inherits SIGINT ignored (POSIX),
# as does every process it starts, and pdseg rightly keeps an inherited SIG_IGN: the tests of
# Ctrl-C then saw none. They need Python's own handler, however the suite was started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@pytest.fixture(autouse=True)
def _signals_as_they_were(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test leaves the stop signals' handlers and the main thread's signal mask as it found
    them. In-process runs install and restore handlers and block signals while pools start; one
    left behind (SIGINT ignored or blocked) made a later test's Ctrl-C vanish, a failure far from
    its cause. A leak is put right and named as a warning, so the test that leaks is found."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from pdseg_cli.runtime.stop import forget_stop

    handlers = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, []) if hasattr(signal, "pthread_sigmask") else None
    yield
    forget_stop()  # a signal a test delivered is not the next test's stop (runtime.interrupted_line)
    changed = [sig.name for sig, handler in handlers.items() if signal.getsignal(sig) is not handler]
    for sig, handler in handlers.items():
        if handler is not None:  # None: set from C, which Python cannot set back
            signal.signal(sig, handler)
    if mask is not None:
        now = signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if set(now) != set(mask):
            changed.append(f"mask {sorted(s.name for s in set(now) ^ set(mask))}")
    if changed:
        warnings.warn(f"{request.node.nodeid} left signals changed: {', '.join(changed)}", stacklevel=1)
