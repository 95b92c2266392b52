"""`torchrun --nproc-per-node 2 -m pdseg_cli predict` on CPU: files shared, one summary, exit status."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from helpers import flat, torchrun_env

from pdseg_cli import create_model, save_checkpoint


def _torchrun(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = torchrun_env(PYTHONWARNINGS="ignore", COLUMNS="200")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "pdseg_cli", "predict", *map(str, args),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=180)


def _in_summary(words: str, stdout: str) -> bool:
    """Whether ``words`` (a summary row's label and value, or a part of its caption) stand in the
    summary table as whole words, the table's rules and line breaks read as spaces."""
    return re.search(rf"(?<!\w){re.escape(words)}(?!\w)", flat(stdout.replace("│", " "))) is not None


def test_two_processes_share_the_files_and_print_one_summary(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("pdseg-tiny"), tmp_path / "tiny.pt", train_size=32)
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    names = [f"im{i}" for i in range(5)]
    for i, name in enumerate(names):
        cv2.imwrite(str(src / f"{name}.png"), rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8))
    (src / "zz_broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"

    proc = _torchrun(src, "--out", out, "-w", ckpt, "--device", "cpu", cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text  # the broken file fails the run (exit 1 on every rank)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.png" for n in names)
    for i, name in enumerate(names):
        assert cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED).shape == (20 + i, 30)
    assert proc.stdout.count("pdseg predict") == 1, text  # one summary, from rank 0
    # merged over ranks; whole words, so that "done 50" or "failed 12" would not do
    for row in ("done 5", "failed 1", "2 processes"):
        assert _in_summary(row, proc.stdout), text
    assert "zz_broken.jpg" in "".join(text.split())

    (src / "zz_broken.jpg").unlink()
    proc = _torchrun(src, "--out", out, "-w", ckpt, "--device", "cpu", "--skip-existing", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _in_summary("skipped (outputs exist) 5", proc.stdout), proc.stdout


def test_a_predictor_made_under_torchrun_takes_its_local_rank(monkeypatch) -> None:
    """Predictor(device="auto") in a Python script run by torchrun puts each process on its own GPU,
    as the commands do; it put every process on cuda:0."""
    from pdseg_cli import Predictor, runtime

    seen: list[int | None] = []
    resolve = runtime.resolve_device

    def spy(spec, *, local_rank=None):  # noqa: ANN001, ANN202
        seen.append(local_rank)
        return resolve("cpu")

    monkeypatch.setattr(runtime, "resolve_device", spy)
    model = create_model("pdseg-tiny")
    under_torchrun = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    alone = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}
    for env, want in ((under_torchrun, 1), (alone, None)):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        Predictor(model, device="auto")
        assert seen[-1] == want
    Predictor(model, device="auto", local_rank=0)  # given: used as it is
    assert seen[-1] == 0
