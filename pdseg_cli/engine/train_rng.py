"""Every random generator a training run touches, saved and restored as plain values (so that
``last.pt`` loads with ``weights_only=True``), and the seeds the run starts them from."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from typing import Any, cast

import numpy as np
import torch


def rng_state(device: torch.device) -> dict[str, Any]:
    """Python's, NumPy's and torch's global generators (and ``device``'s CUDA one) as plain values."""
    # the global generator is NumPy's MT19937, whose state is the legacy tuple (never the dict form)
    np_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Leave the caller's global RNGs as they were, whatever the run does with them."""
    saved = rng_state(device)
    try:
        yield
    finally:
        set_rng_state(saved, device)


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (the initial weights depend on it)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stream_seed(seed: int, rank: int) -> int:
    """The seed of the model's random stream (dropout, drop-path, NMF bases) on ``rank``."""
    return int(np.random.SeedSequence([seed, rank], spawn_key=(2,)).generate_state(1)[0])
