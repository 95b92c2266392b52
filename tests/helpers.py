"""Helpers several test files share: tiny models and checkpoints, sample data, CLI runs, output text.

Plain functions, imported as ``from helpers import tiny_checkpoint`` (pytest puts tests/ on the
path); fixtures live in conftest.py.
"""

from __future__ import annotations

import importlib.util
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import torch
from typer.testing import CliRunner, Result

from pdseg_cli.cli import app
from pdseg_cli.config import ModelConfig
from pdseg_cli.model import PDSeg, create_model, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_IMAGES = REPO / "examples" / "images"
GOLDEN = Path(__file__).resolve().parent / "golden"
TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def flat(text: str) -> str:
    """``text`` with rich's line wrapping undone: every run of whitespace is one space."""
    return " ".join(text.split())


def no_space(text: str) -> str:
    """``text`` without any whitespace (a long path wraps anywhere, even inside a word)."""
    return "".join(text.split())


def run_cli(*args: str | Path, columns: int | None = None) -> Result:
    """``pdseg args...`` in-process (CliRunner), at ``columns`` wide when given."""
    runner = CliRunner(env={"COLUMNS": str(columns)} if columns else None)
    return runner.invoke(app, [str(arg) for arg in args])


def seeded_model(config: ModelConfig | str = "pdseg-tiny", seed: int = 0) -> PDSeg:
    """``create_model(config)`` with torch's global RNG seeded first: the same weights every time."""
    torch.manual_seed(seed)
    return create_model(config)


def tiny_checkpoint(
    path: Path, *, seed: int = 0, train_size: int | None = None, classifier_std: float | None = None
) -> Path:
    """A pdseg-tiny checkpoint of seeded random weights, written to ``path``.

    Args:
        classifier_std: re-draw every level's classifier weights with this std (and zero biases),
            so that logits lie far from 0 as a trained model's do and maps span dark to bright.
    """
    model = seeded_model("pdseg-tiny", seed)
    if classifier_std is not None:
        for level in model.decoder.levels:
            torch.nn.init.normal_(level.classifier.weight, std=classifier_std)
            torch.nn.init.zeros_(level.classifier.bias)
    return save_checkpoint(model, path, train_size=train_size)


def make_dataset(root: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    """``root/im/*.jpg`` and ``root/gt/*.png``: ``n`` pairs of a bright disc or square on a dark
    noisy background."""
    rng = np.random.default_rng(seed)
    (root / "im").mkdir(parents=True)
    (root / "gt").mkdir(parents=True)
    for i in range(n):
        image = rng.integers(30, 90, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        cx, cy = (int(v) for v in rng.integers(size // 4, 3 * size // 4, 2))
        r = int(rng.integers(size // 8, size // 4))
        if i % 2:
            cv2.circle(mask, (cx, cy), r, 255, -1)
        else:
            cv2.rectangle(mask, (cx - r, cy - r), (cx + r, cy + r), 255, -1)
        image[mask > 0] = rng.integers(160, 250, 3, dtype=np.uint8)
        cv2.imwrite(str(root / "im" / f"s{i:02d}.jpg"), image)
        cv2.imwrite(str(root / "gt" / f"s{i:02d}.png"), mask)
    return root


def write_output_png(path: Path, pixels: np.ndarray, source: Path | None = None) -> Path:
    """``pixels`` (gray, RGB or RGBA uint8) written as pdseg writes an output: with its mark, so a
    later run takes it for its own earlier output (an unmarked file of that layout is refused).
    ``source``: the input it was made from, which the mark then names, as pdseg's own does, so
    that --skip-existing takes it as that input's; without it, the bare mark of 2026-12-06."""
    from pdseg_cli.data.header import OUTPUT_MARK, output_mark
    from pdseg_cli.data.images import write_png

    write_png(path, pixels, software=OUTPUT_MARK if source is None else output_mark(source))
    return path


def edge_case_split(folder: Path, cases: Sequence[str], *, images: bool = False) -> Path:
    """``folder/gt/<case>.png`` and ``folder/pred/<case>.png`` from tests/golden/edge_cases.npz
    (and ``folder/im/<case>.jpg``, the GT as a grey photo, with ``images``)."""
    (folder / "gt").mkdir(parents=True)
    (folder / "pred").mkdir()
    with np.load(GOLDEN / "edge_cases.npz") as z:
        for name in cases:
            cv2.imwrite(str(folder / "gt" / f"{name}.png"), z[f"{name}__gt"])
            cv2.imwrite(str(folder / "pred" / f"{name}.png"), z[f"{name}__pred"])
            if images:
                (folder / "im").mkdir(exist_ok=True)
                cv2.imwrite(str(folder / "im" / f"{name}.jpg"), np.dstack([z[f"{name}__gt"]] * 3))
    return folder


def benchmark_script(stem: str) -> ModuleType:
    """``benchmarks/<stem>.py`` imported as a module (the scripts are not a package)."""
    name = f"benchmarks_{stem}"
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{stem}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def torchrun_env(**extra: str) -> dict[str, str]:
    """This process's environment for a test's own multi-process job: no torchrun variables of an
    outer job, one thread per process, this checkout first on PYTHONPATH, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def dead_pid() -> int:
    """The pid of a process that has ended (and been waited for): a killed writer's."""
    import pytest

    from pdseg_cli.data import atomic

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    if atomic._process_alive(child.pid):
        pytest.skip("the pid was taken again at once")
    return child.pid


def lzw_literals(data: bytes) -> bytes:
    """TIFF LZW of ``data`` written as one 9-bit literal code a byte (Clear, bytes, EOI): valid LZW
    that needs no string table, for tiny test images (the decoder's table reaches the 10-bit
    switch at 511 only after 253 bytes). tifffile writes LZW only with imagecodecs."""
    assert len(data) <= 253
    bits = "".join(format(code, "09b") for code in (256, *data, 257))
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def gray_extra_tiffs(
    tmp_path: Path, samples: np.ndarray, extrasamples: Sequence[int | str]
) -> tuple[Path, Path]:
    """``samples`` (H, W, 1 + extras) as gray TIFFs with ``extrasamples`` as ExtraSamples (alpha
    kinds or 0, unspecified): (uncompressed, read by tifffile; LZW, which tifffile cannot decode
    without imagecodecs, so read by OpenCV's libtiff)."""
    import tifffile

    kwargs = {"photometric": "minisblack", "extrasamples": list(extrasamples), "planarconfig": "contig"}
    plain, lzw = tmp_path / "plain.tif", tmp_path / "lzw.tif"
    tifffile.imwrite(plain, samples, **kwargs)
    stored = lzw_literals(samples.astype(samples.dtype.newbyteorder("<")).tobytes())
    # one pre-encoded strip under a compression tifffile encodes, then retagged LZW (5)
    tifffile.imwrite(
        lzw,
        iter([stored]),
        shape=samples.shape,
        dtype=samples.dtype,
        compression="zlib",
        rowsperstrip=samples.shape[0],
        **kwargs,
    )
    with tifffile.TiffFile(lzw, mode="r+b") as tif:
        tif.pages[0].tags["Compression"].overwrite(5)
    return plain, lzw


def png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of each chunk of a PNG, read here without pdseg, checking every CRC."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    out, i = [], 8
    while i < len(png):
        (length,) = struct.unpack(">I", png[i : i + 4])
        name, data = png[i + 4 : i + 8], png[i + 8 : i + 8 + length]
        assert struct.unpack(">I", png[i + 8 + length : i + 12 + length])[0] == zlib.crc32(name + data)
        out.append((name, data))
        i += 12 + length
    return out


def textured_image(h: int = 24, w: int = 32, seed: int = 0, dtype: type = np.uint8) -> np.ndarray:
    """(h, w, 3) random colours of ``dtype`` (uint8 or uint16) with a darker middle: some structure
    for a model to see, the same for a seed."""
    rng = np.random.default_rng(seed)
    top = 65535 if dtype == np.uint16 else 255
    img = rng.integers(0, top + 1, (h, w, 3)).astype(dtype)
    img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] //= 3  # some structure
    return img


def small_split(root: Path, n: int = 3) -> tuple[Path, Path]:
    """A folder split ``root/set`` of ``n`` 24x32 GTs (``gt/s<i>.png``) and ``root/maps`` of seeded
    random maps for them: the smallest thing ``pdseg eval --split ... --pred ...`` scores."""
    rng = np.random.default_rng(0)
    (root / "set" / "gt").mkdir(parents=True)
    (root / "maps").mkdir()
    for i in range(n):
        gt = np.zeros((24, 32), np.uint8)
        gt[4 + i : 18, 6:26] = 255
        cv2.imwrite(str(root / "set" / "gt" / f"s{i}.png"), gt)
        cv2.imwrite(str(root / "maps" / f"s{i}.png"), rng.integers(0, 256, (24, 32), dtype=np.uint8))
    return root / "set", root / "maps"
