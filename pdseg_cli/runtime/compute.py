"""How the maths run: the CPU threads they use, and the torch.compile mode."""

from __future__ import annotations

from pdseg_cli.errors import InputError

# torch.compile modes pdseg accepts ("reduce-overhead" replays CUDA graphs on a GPU)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def set_compute_threads(n: int | None) -> None:
    """Use ``n`` CPU threads for the maths: torch's intra-op pool, OpenCV's, and onnxruntime's
    (which follows torch's, see ``OnnxModel``). None leaves the defaults (all cores, or
    ``OMP_NUM_THREADS``). For a process that owns its threads, as the ``pdseg`` command does.

    Raises:
        InputError: ``n`` below 1.
    """
    if n is None:
        return
    if n < 1:
        raise InputError(f"--threads must be at least 1, got {n}")
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)


def resolve_compile(spec: str | bool | None) -> str | None:
    """``off|default|reduce-overhead|max-autotune|...`` (or a bool) -> a torch.compile mode, or None.

    Raises:
        InputError: not a mode name.
    """
    if spec is None or spec is False:
        return None
    if spec is True:
        return "default"
    text = spec.strip().lower()
    if text in ("off", "none", "no", ""):
        return None
    if text not in COMPILE_MODES:
        raise InputError(f"not a torch.compile mode: {spec!r}", hint=f"use off, {', '.join(COMPILE_MODES)}")
    return text
