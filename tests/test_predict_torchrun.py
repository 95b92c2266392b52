"""`torchrun --nproc-per-node 2 -m pdseg_cli predict` on CPU: files shared, one summary, exit status;
eval and export, which run as one process, refused once."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import flat, run_cli, torchrun_env

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
    for row in ("done 5", "failed 1", "2 processes, counts of all"):
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


def _as_rank(monkeypatch, rank: int, local_world: int | None = 2) -> None:  # noqa: ANN001
    for name, value in (
        ("WORLD_SIZE", 2),
        ("RANK", rank),
        ("LOCAL_RANK", rank),
        ("LOCAL_WORLD_SIZE", local_world),
    ):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(value))


def test_an_error_of_one_rank_is_said_by_it_and_one_every_rank_meets_by_rank_0(
    tmp_path: Path, monkeypatch
) -> None:
    """Every process but rank 0 was silent: an error one process met alone (here its torchrun
    variables, leaked into a shell without the job's address) left only torchrun's
    ChildFailedError, or nothing at all."""
    from helpers import run_cli

    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), np.zeros((20, 30, 3), np.uint8))
    ckpt = save_checkpoint(create_model("pdseg-tiny"), tmp_path / "tiny.pt", train_size=32)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    args = [src, "--out", tmp_path / "out", "-w", ckpt, "--device", "cpu"]
    _as_rank(monkeypatch, 1)
    result = run_cli("predict", *args)
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert text.count("rank 1: WORLD_SIZE=2 asks for a multi-process job, but $MASTER_ADDR") == 1, text
    assert "start the processes with torchrun" in text and "Traceback" not in text
    for rank in (0, 1):  # an option every process checks alike: rank 0 says it, once
        _as_rank(monkeypatch, rank)
        result = run_cli("predict", *args, "--batch", "0")
        assert result.exit_code == 2, result.output
        assert ("--batch must be at least 1" in result.output) == (rank == 0) and "rank" not in result.output
    # two machines of one process each: rank 1 is the first process of its machine, whose folders
    # may differ from rank 0's, so it says what it met alike too
    for name, value in (("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "1")):
        monkeypatch.setenv(name, value)
    result = run_cli("predict", *args, "--batch", "0")
    assert result.exit_code == 2, result.output
    assert flat(result.output).count("rank 1: --batch must be at least 1") == 1, result.output


def _gpus(monkeypatch, n: int) -> None:  # noqa: ANN001
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")


def test_predict_processes_may_share_gpus_and_rank_0_says_so(monkeypatch) -> None:
    """`--device cuda` under a scheduler's one GPU per task (LOCAL_RANK 1, one GPU visible) failed
    on every rank but 0, in silence; `auto` wrapped round the GPUs without a word."""
    from pdseg_cli import runtime

    _gpus(monkeypatch, 2)
    for spec in ("auto", "cuda"):
        assert runtime.resolve_device(spec, local_rank=3).device == torch.device("cuda", 1)
    _gpus(monkeypatch, 1)
    assert runtime.resolve_device("cuda", local_rank=1).device == torch.device("cuda", 0)
    note = runtime.gpu_sharing_note("auto", runtime.Distributed(3, 0, 0, 3))
    assert note == "3 processes share 1 GPU on this machine (torchrun --nproc-per-node 1 gives each its own)"
    _gpus(monkeypatch, 2)
    note = runtime.gpu_sharing_note("cuda", runtime.Distributed(3, 0, 0, 3))
    assert note is not None and note.startswith("3 processes share 2 GPUs on this machine, up to 2 on one")
    assert note.endswith("(torchrun --nproc-per-node 2 gives each its own)")
    assert runtime.gpu_sharing_note("cuda", runtime.Distributed(2, 0, 0, 2)) is None  # one GPU each
    note = runtime.gpu_sharing_note("cuda:1", runtime.Distributed(2, 0, 0, 2))
    assert (
        note
        == "--device cuda:1: all 2 processes on this machine share GPU 1 (--device cuda gives each its own)"
    )
    # one process per machine, no torchrun, the CPU, or a launcher that does not say: nothing to say
    for spec, env in (
        ("cuda:1", runtime.Distributed(2, 0, 0, 1)),
        ("auto", runtime.Distributed()),
        ("cpu", runtime.Distributed(4, 0, 0, 4)),
        ("auto", runtime.Distributed(4, 0, 0)),
    ):
        assert runtime.gpu_sharing_note(spec, env) is None


@pytest.mark.parametrize("command", [["eval", "--split", "anything"], ["export", "--out", "m.onnx"]])
@pytest.mark.parametrize("rank", [0, 1])
def test_commands_that_run_as_one_process_refuse_torchrun_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], rank: int
) -> None:
    """Under torchrun, every process ran the whole eval (or export): each printed every line and
    wrote the same files, --json - gave two documents, and --save-preds' lock failed one of them."""
    monkeypatch.chdir(tmp_path)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", str(rank)), ("LOCAL_RANK", str(rank))):
        monkeypatch.setenv(name, value)
    result = run_cli(*command)
    assert result.exit_code == 2, result.output
    said = (
        f"pdseg {command[0]} runs as one process; under torchrun each of the 2 processes would do all of "
        "it and write the same files"
    )
    assert (said in flat(result.output)) == (rank == 0)  # said once, by rank 0
    assert not list(tmp_path.iterdir())


def test_a_lost_peer_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 of one process of a training job: the others' collective failed with gloo's
    "Read error ... Connection reset by peer" and a fifty-line traceback."""
    import typer

    from pdseg_cli import ui
    from pdseg_cli.commands._common import user_errors

    for name, value in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    said: list[tuple[str, str | None]] = []
    monkeypatch.setattr(ui, "error", lambda message, hint=None: said.append((message, hint)))
    gloo = "[../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:5: Connection reset by peer"
    with pytest.raises(typer.Exit) as stopped:
        with user_errors(rank=0):
            raise RuntimeError(gloo)
    assert stopped.value.exit_code == 1
    assert said[0][0] == (
        "another process of this torchrun job stopped, and this one lost touch with it "
        "(Connection reset by peer)"
    )
    assert "pdseg train: with --resume" in (said[0][1] or "")
    monkeypatch.setenv("WORLD_SIZE", "1")  # alone, such an error is not about other processes
    with pytest.raises(RuntimeError):
        with user_errors(rank=0):
            raise RuntimeError(gloo)
