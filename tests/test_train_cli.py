"""`pdseg train` from the command line (CliRunner), and a 2-process DDP run through torchrun on CPU."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import flat, make_dataset, tiny_checkpoint, torchrun_env
from typer.testing import CliRunner

from pdseg_cli.cli import app
from pdseg_cli.data.augment import AugmentConfig
from pdseg_cli.model import load_model

runner = CliRunner()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("train-cli")
    return {"train": make_dataset(base / "tr", 8), "val": make_dataset(base / "va", 2, seed=1)}


def tiny_args(out: Path, folders: dict[str, Path], epochs: int = 1) -> list[str]:
    return [
        "train", "--epochs", str(epochs), "--out", str(out), "--variant", "pdseg-tiny", "--size", "64",
        "--batch", "4", "--workers", "0", "--train", str(folders["train"]), "--val", str(folders["val"]),
        "--device", "cpu",
    ]  # fmt: skip


def test_cli_trains_refuses_to_overwrite_and_resumes(tmp_path: Path, folders: dict[str, Path]) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, tiny_args(out, folders))
    assert result.exit_code == 0, result.output
    assert "pdseg train" in result.output and "val maxF" in result.output  # the epoch table
    assert "leaves out" not in result.output  # 8 images fill 2 batches of 4
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["variant"] == "pdseg-tiny" and config["resolved"]["steps_per_epoch"] == 2
    assert config["resolved"]["augment"] == dataclasses.asdict(AugmentConfig())  # the recipe, recorded
    assert config["train"]["ema_decay"] is None and config["resolved"]["ema_decay"] == 0.0  # 2 steps

    again = runner.invoke(app, tiny_args(out, folders))
    assert again.exit_code == 2
    assert "already holds a training run (last.pt, best.pt), finished: 1 epoch, 2 steps" in flat(again.output)
    # the whole command to go on, so that adding --resume to the refused one is not a second refusal
    assert f"pdseg train --resume --out {out} --epochs N (N > 1)" in flat(again.output)
    assert "Traceback" not in again.output

    changed = runner.invoke(app, ["train", "--epochs", "2", "--out", str(out), "--resume", "--batch", "2"])
    assert changed.exit_code == 2 and "--batch 4 -> 2" in flat(changed.output)

    before = {name: (out / name).read_bytes() for name in ("last.pt", "results.csv", "config.json")}
    refused = runner.invoke(app, [*tiny_args(out, {**folders, "val": out / "nowhere"}), "--overwrite"])
    assert refused.exit_code == 2 and "nowhere" in flat(refused.output)
    # an --overwrite that cannot start leaves the old run whole: it is removed only when the new one writes
    assert {name: (out / name).read_bytes() for name in before} == before

    both = runner.invoke(app, ["train", "--epochs", "2", "--out", str(out), "--resume", "--overwrite"])
    assert both.exit_code == 2 and "--resume and --overwrite contradict each other" in flat(both.output)

    resumed = runner.invoke(app, ["train", "--epochs", "2", "--out", str(out), "--resume", "--workers", "0"])
    assert resumed.exit_code == 0, resumed.output
    # the first session's schedule (1 epoch, 2 steps) stays on record: it is part of the run
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["resolved"]["total_steps"] == 4
    [first] = config["earlier_sessions"]
    assert first["train"]["epochs"] == 1 and first["resolved"]["total_steps"] == 2
    behind = runner.invoke(app, ["train", "--epochs", "1", "--out", str(out), "--resume"])
    assert behind.exit_code == 2, behind.output
    assert f"{out} has finished 2 epochs; --epochs 1 is behind it" in flat(behind.output)
    assert "pass --epochs 3 or more" in flat(behind.output)
    for length in (["--epochs", "2"], []):  # --resume keeps the run's own --epochs
        done = runner.invoke(app, ["train", *length, "--out", str(out), "--resume", "--workers", "0"])
        assert done.exit_code == 0 and "has finished its 2 epochs: nothing to train" in flat(done.output)
        assert f"pdseg train --resume --out {out} --epochs N (N > 2)" in flat(done.output)
        assert "epoch" not in done.stdout  # said before loading the data: no replayed epoch table
    # a finished run refuses changed settings as one with more to train does (it said "nothing to
    # train" and dropped the new --batch in silence)
    changed = runner.invoke(app, ["train", "--out", str(out), "--resume", "--batch", "2"])
    assert changed.exit_code == 2 and "--batch 4 -> 2" in flat(changed.output), changed.output
    # without --epochs into a folder that holds a run: how to go on with it, not "--epochs is needed"
    again = runner.invoke(app, ["train", "--out", str(out), "--variant", "pdseg-tiny"])
    assert again.exit_code == 2 and "already holds a training run" in flat(again.output)
    unstarted = runner.invoke(app, ["train", "--out", str(tmp_path / "new"), "--variant", "pdseg-tiny"])
    assert unstarted.exit_code == 2 and "--epochs is needed to start a run" in flat(unstarted.output)
    assert len((out / "results.csv").read_text().splitlines()) == 3  # header + 2 epochs
    assert load_model(out / "last.pt").config.name == "pdseg-tiny"


def test_cli_overwrite_interrupted_before_its_first_file_leaves_the_old_run_whole(
    tmp_path: Path, folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pdseg_cli.engine.train_state as train_state

    out = tmp_path / "run"
    assert runner.invoke(app, tiny_args(out, folders)).exit_code == 0
    names = ("last.pt", "best.pt", "results.csv", "config.json")
    before = {name: (out / name).read_bytes() for name in names}
    board = out / "tensorboard"
    boards = sorted(p.name for p in board.iterdir()) if board.is_dir() else None

    def ctrl_c(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # a Ctrl-C (or SIGTERM/SIGHUP) after the data is read, before any write

    # the optimiser is made after the data and the model, before the new run writes config.json
    monkeypatch.setattr(train_state, "make_optimizer", ctrl_c)
    stopped = runner.invoke(app, [*tiny_args(out, folders), "--overwrite"])
    assert stopped.exit_code == 130, stopped.output
    assert {name: (out / name).read_bytes() for name in names} == before
    if boards is not None:
        assert sorted(p.name for p in board.iterdir()) == boards


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--size", "100"], "multiple of 32"),
        (["--variant", "pdseg-bb"], "did you mean pdseg-b"),
        (["--supervision", "some"], "multi or single"),
        (["--loss", "dice"], "--loss must be bce-iou or structure, got 'dice'"),
        (["--precision", "fp16"], "fp16 needs a CUDA GPU"),
        (["--lr", "inf"], "--lr must be a positive, finite number, got inf"),  # the loss would be nan at once
        # torch's own overflow traceback, after the samples were decoded into the run folder
        (["--seed", "18446744073709551617"], "--seed 18446744073709551617 is too large"),
        # exit 1, "moved or deleted while pdseg was running", after the samples were decoded
        (["--backbone-weights", "nope.pth"], "--backbone-weights nope.pth does not exist"),
        (["--cache-dir", "{a file}"], "is a file"),  # exit 1, "cannot write the sample cache", late
    ],
)
def test_cli_bad_options_are_one_line_errors(
    tmp_path: Path, folders: dict[str, Path], extra: list[str], message: str
) -> None:
    (tmp_path / "a file").write_text("x")
    extra = [str(tmp_path / "a file") if a == "{a file}" else a for a in extra]
    result = runner.invoke(app, tiny_args(tmp_path / "run", folders) + extra)
    assert result.exit_code == 2, result.output
    assert message in flat(result.output) and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_a_first_step_the_scaler_skips_warns_nothing(
    tmp_path: Path, folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp16 (CUDA only, so the scaler is made to skip here): a first step whose gradients overflow
    is skipped, the schedule still steps, and torch warned into the progress bar that the
    schedule had stepped before the optimizer."""
    import warnings

    calls: list[int] = []
    step = torch.amp.GradScaler.step

    def skip_first(self: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, *a: object) -> object:
        calls.append(1)
        return None if len(calls) == 1 else step(self, optimizer, *a)

    monkeypatch.setattr(torch.amp.GradScaler, "step", skip_first)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = runner.invoke(app, tiny_args(tmp_path / "run", folders))
    assert result.exit_code == 0, result.output
    assert len(calls) == 2  # two steps, the first skipped
    said = result.output + "".join(str(w.message) for w in seen)
    assert "lr_scheduler.step()" not in said


def test_mid_epoch_saves_are_not_counted_as_training_time(
    tmp_path: Path, folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--save-every-steps: the seconds a mid-epoch save takes were added to the epoch's and the
    run's training time (results.csv), where the epoch-end writes never were."""
    import csv
    import time

    import pdseg_cli.engine.train_loop as loop

    real_clock, real_save = time.perf_counter, loop._save_last
    late = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + late[0])

    def slow_save(*args: object) -> None:
        real_save(*args)  # type: ignore[arg-type]
        late[0] += 1000.0  # as if the write took 1000 s

    monkeypatch.setattr(loop, "_save_last", slow_save)
    result = runner.invoke(app, [*tiny_args(tmp_path / "run", folders), "--save-every-steps", "1"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "run" / "results.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["epoch_time_s"]) < 500 and float(row["wall_time_s"]) < 500


def test_cli_out_of_memory_is_a_one_line_error(
    tmp_path: Path, folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pdseg_cli.engine.train as engine

    real_train = engine.train

    def no_memory(*args: object, **kwargs: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(engine, "train", no_memory)
    result = runner.invoke(app, tiny_args(tmp_path / "run", folders))
    assert result.exit_code == 1, result.output
    text = flat(result.output)
    assert "out of memory training pdseg-tiny at --size 64 with --batch 4 per process on cpu" in text
    assert "(CUDA out of memory)" in text
    assert "smaller --batch or --size" in text and "Traceback" not in result.output
    # fine-tuning with neither --variant nor --size: the run's own (--init's), not the defaults
    start = tiny_checkpoint(tmp_path / "start.pt", train_size=64)
    import pdseg_cli.engine.train_loop as loop

    monkeypatch.setattr(engine, "train", real_train)
    monkeypatch.setattr(loop, "_train_step", no_memory)
    args = [
        a
        for a in tiny_args(tmp_path / "tuned", folders)
        if a not in ("--variant", "pdseg-tiny", "--size", "64")
    ]
    result = runner.invoke(app, [*args, "--init", str(start)])
    assert result.exit_code == 1, result.output
    assert "out of memory training pdseg-tiny at --size 64 with --batch 4" in flat(result.output)
    monkeypatch.setattr(engine, "train", no_memory)
    # under torchrun each process runs out of its own GPU's memory, and says so itself
    _as_rank(monkeypatch, 1)
    result = runner.invoke(app, tiny_args(tmp_path / "run", folders))
    assert result.exit_code == 1, result.output
    assert flat(result.output).count("rank 1: out of memory training pdseg-tiny") == 1, result.output
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr(engine, "train", broken)
    result = runner.invoke(app, tiny_args(tmp_path / "run2", folders))
    assert isinstance(result.exception, RuntimeError)  # a real bug still surfaces


def test_cli_missing_dis5k_root_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PDSEG_DATA", raising=False)
    result = runner.invoke(app, ["train", "--epochs", "1", "--variant", "pdseg-tiny", "--device", "cpu"])
    assert result.exit_code == 2
    assert "DIS5K" in result.output and "--data-root" in flat(result.output)
    (tmp_path / "DIS5K").mkdir()
    make_dataset(tmp_path / "DIS5K" / "DIS-TR", 2)
    args = ["train", "--epochs", "1", "--variant", "pdseg-tiny", "--device", "cpu"]
    no_vd = runner.invoke(app, args)
    assert (
        no_vd.exit_code == 2 and "--val DIR" in flat(no_vd.output) and "--val-every 0" in flat(no_vd.output)
    )
    too_high = runner.invoke(app, [*args, "--data-root", str(tmp_path)])
    assert too_high.exit_code == 2 and f"did you mean --data-root {tmp_path / 'DIS5K'}?" in flat(
        too_high.output
    )
    elsewhere = tmp_path / "photos"  # a root with no DIS5K in or below it: the layout, not a question
    elsewhere.mkdir()
    wrong = flat(runner.invoke(app, [*args, "--data-root", str(elsewhere)]).output)
    assert f"split DIS-TR not found under {elsewhere}" in wrong
    assert "expected layout: <root>/DIS-TR/im/<stem>.jpg and <root>/DIS-TR/gt/<stem>.png" in wrong
    assert "or train on your own folders with --train DIR" in wrong
    assert not (tmp_path / "runs").exists()  # a run that never started leaves no empty folder


def test_two_gloo_processes_train_and_only_rank_0_writes(tmp_path: Path, folders: dict[str, Path]) -> None:
    env = torchrun_env(COLUMNS="200")  # warnings shown: DDP's own, in every process, broke into the bar
    out = tmp_path / "ddp"
    args = tiny_args(out, folders)
    args[args.index("--batch") + 1] = "2"  # 2 per process: 4 images per step, 2 steps
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "pdseg_cli", *args, "--val-every", "0",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=240)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert text.count("pdseg train") == 1, text  # one table: rank 0's
    assert "bucket view strides" not in text, text  # DDP's warning, once a process, into the bar
    config = json.loads((out / "config.json").read_text())["resolved"]
    assert config["world_size"] == 2 and config["global_batch"] == 4 and config["steps_per_epoch"] == 2
    state = torch.load(out / "last.pt", weights_only=True)["train_state"]
    assert state["global_step"] == 2 and len(state["rng"]) == 2  # every rank's RNG, for resume
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("cache"))
    assert [n for n in written if n != "tensorboard"] == ["config.json", "last.pt", "results.csv"]
    if "tensorboard" in written:  # one writer: rank 0's single event file
        assert len(list((out / "tensorboard").iterdir())) == 1

    # resumed on one process, its schedule (decaying to 0 at step 2 of 2-process steps) and its
    # place in the epoch would be counted at the other rate: refused, both ways on named
    alone = runner.invoke(app, ["train", "--resume", "--epochs", "2", "--out", str(out)])
    assert alone.exit_code == 2, alone.output
    text = flat(alone.output)
    assert "was trained with 2 processes, and this resume has 1" in text, text
    assert "resume with 2 processes (torchrun --nproc-per-node 2)" in text and "--init" in text


def test_cli_disk_full_is_a_one_line_error_naming_the_file(
    tmp_path: Path, folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import pdseg_cli.engine.train_config as train_config
    import pdseg_cli.engine.train_loop as loop

    def disk_full(path: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(loop, "write_checkpoint", disk_full)
    monkeypatch.setattr(train_config, "DEFAULT_VARIANT", "pdseg-tiny")  # no --variant: the default's name
    args = tiny_args(tmp_path / "run", folders)
    args.remove("--variant"), args.remove("pdseg-tiny")
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    text = flat(result.output)
    assert "pdseg-tiny: training on 8 images" in text  # the variant built, not None
    assert (
        f"error: No space left on device: {tmp_path / 'run'}" in text and "best.pt" in text
    )  # the first write of the epoch's end
    assert "free some disk space" in text and "--resume" in text and "Traceback" not in result.output


def test_cli_resume_refuses_a_folder_that_gained_images(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "tr", 8)
    out = tmp_path / "run"
    args = ["train", "--variant", "pdseg-tiny", "--size", "64", "--batch", "4", "--workers", "0"]
    first = runner.invoke(app, [*args, "--epochs", "1", "--out", str(out), "--train", str(data), "-d", "cpu"])
    assert first.exit_code == 0, first.output
    make_dataset(tmp_path / "more", 2, seed=3)
    for sub in ("im", "gt"):
        for f in (tmp_path / "more" / sub).iterdir():
            f.rename(data / sub / f"new-{f.name}")
    resumed = runner.invoke(app, ["train", "--epochs", "2", "--out", str(out), "--resume"])
    assert resumed.exit_code == 2, resumed.output
    text = flat(resumed.output)
    assert f"was trained on 8 images of {data.resolve()}; those folders now give 10" in text
    assert f"--init {out / 'last.pt'}" in text


def test_cli_resume_refuses_a_folder_with_other_images_of_the_same_count(tmp_path: Path) -> None:
    """One pair swapped for another, the count unchanged: the resume went on in silence, on
    another data set than the one its batches were drawn from."""
    data = make_dataset(tmp_path / "tr", 8)
    out = tmp_path / "run"
    args = ["train", "--variant", "pdseg-tiny", "--size", "64", "--batch", "4", "--workers", "0"]
    first = runner.invoke(app, [*args, "--epochs", "1", "--out", str(out), "--train", str(data), "-d", "cpu"])
    assert first.exit_code == 0, first.output
    same = runner.invoke(app, ["train", "--epochs", "2", "--out", str(out), "--resume"])
    assert same.exit_code == 0, same.output  # untouched: goes on
    assert "resuming at the start of epoch 2/2 (2 of 4 steps done)" in flat(same.output)
    gone = sorted((data / "im").iterdir())[0].stem
    make_dataset(tmp_path / "other", 1, seed=5)
    for sub in ("im", "gt"):
        next((data / sub).glob(f"{gone}.*")).unlink()
        for f in (tmp_path / "other" / sub).iterdir():
            f.rename(data / sub / f"new-{f.name}")
    resumed = runner.invoke(app, ["train", "--epochs", "3", "--out", str(out), "--resume"])
    assert resumed.exit_code == 2, resumed.output
    text = flat(resumed.output)
    assert (
        f"was trained on other files of {data.resolve()}: as many images (8), but with other names or "
        "sizes since" in text
    )
    assert f"--init {out / 'last.pt'}" in text


def test_cli_resume_keeps_the_options_of_the_session_that_saved(tmp_path: Path) -> None:
    """A session that stopped before its first save (a kill, a full disk) had rewritten config.json
    with its own options: a plain --resume then took its --epochs for the run's, with a warning
    about an --epochs nobody gave."""
    data = make_dataset(tmp_path / "tr", 8)
    out = tmp_path / "run"
    args = ["train", "--variant", "pdseg-tiny", "--size", "64", "--batch", "4", "--workers", "0", "-d", "cpu"]
    assert (
        runner.invoke(app, [*args, "--epochs", "1", "--out", str(out), "--train", str(data)]).exit_code == 0
    )
    record = json.loads((out / "config.json").read_text())
    record["train"]["epochs"] = 2  # what `--resume --epochs 2` wrote before it was killed
    (out / "config.json").write_text(json.dumps(record))
    resumed = runner.invoke(app, ["train", "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    text = flat(resumed.output)
    assert "has finished its 1 epoch: nothing to train" in text and "(was 1)" not in text


def test_cli_a_train_folder_given_twice_is_refused(tmp_path: Path, folders: dict[str, Path]) -> None:
    args = tiny_args(tmp_path / "run", folders) + ["--train", str(folders["train"]) + "/"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"--train {folders['train'].resolve()} is given twice" in flat(result.output)
    same = tiny_args(tmp_path / "run2", {**folders, "val": folders["train"]})
    result = runner.invoke(app, same)
    assert result.exit_code == 0, result.output
    assert "is also a --train folder" in flat(result.output)
    copied = tmp_path / "val-copy"  # the training folder copied elsewhere: no path gives it away
    shutil.copytree(folders["train"], copied)
    result = runner.invoke(app, tiny_args(tmp_path / "run4", {**folders, "val": copied}))
    assert result.exit_code == 0, result.output
    assert "--val: 8 of its images are copies of training images" in flat(result.output)
    # copied into a second --train folder: drawn twice as often, which a path comparison misses
    result = runner.invoke(app, tiny_args(tmp_path / "run5", folders) + ["--train", str(copied)])
    assert result.exit_code == 0, result.output
    assert "8 of its images are copies of images of an earlier --train folder" in flat(result.output)
    unused = runner.invoke(app, tiny_args(tmp_path / "run3", folders) + ["--val-every", "0"])
    assert unused.exit_code == 0 and "--val-every 0:" in flat(unused.output)
    assert "is not used, and no best.pt is written" in flat(unused.output)


def test_cli_says_how_many_images_each_epoch_leaves_out(tmp_path: Path, folders: dict[str, Path]) -> None:
    args = tiny_args(tmp_path / "run", folders)
    args[args.index("--batch") + 1] = "3"  # 8 images: 2 batches of 3, and 2 wait for the next epoch
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "each epoch leaves out 2 of the 8 images" in flat(result.output)
    assert "size 64, batch 3, lr 6e-05 · 2 steps/epoch" in flat(result.output)  # what the run does
    args[args.index("--batch") + 1] = "16"
    args[args.index("--out") + 1] = str(tmp_path / "run2")
    args[args.index("--epochs") + 1] = "2"
    bigger = runner.invoke(app, args)
    assert bigger.exit_code == 0, bigger.output
    assert re.search(r"epoch 1/2 · .* left", flat(bigger.output))  # the time the run has left
    assert not re.search(r"epoch 2/2 · .* left", flat(bigger.output))
    assert "--batch 16 is more than the 8 images per process: each step takes all 8" in flat(bigger.output)
    assert "1 step/epoch" in flat(bigger.output)


def test_cli_default_run_folder_follows_init_and_resume_names_the_runs(
    tmp_path: Path, folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pdseg_cli.model.build import create_model, save_checkpoint

    monkeypatch.chdir(tmp_path)
    save_checkpoint(create_model("pdseg-tiny"), tmp_path / "tiny.pt", train_size=64)
    args = tiny_args(tmp_path / "unused", folders)
    args = args[: args.index("--out")] + args[args.index("--out") + 2 :]  # no --out
    args.remove("--variant")
    args.remove("pdseg-tiny")
    at = args.index("--size")
    del args[at : at + 2]  # no --size either
    result = runner.invoke(app, [*args, "--init", str(tmp_path / "tiny.pt")])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "pdseg-tiny"
    assert (run / "last.pt").is_file()  # the checkpoint's variant, not pdseg-b
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["size"] == 64  # its size, not 1024
    from pdseg_cli.data.teacher import file_sha256

    init = config["resolved"]["init"]  # the file itself, not the path as typed
    assert init == {
        "path": str((tmp_path / "tiny.pt").resolve()),
        "sha256": file_sha256(tmp_path / "tiny.pt"),
    }
    resumed = runner.invoke(app, ["train", "--epochs", "2", "--resume"])  # looks in runs/pdseg-b
    assert resumed.exit_code == 2
    assert "runs beside it: runs/pdseg-tiny" in flat(resumed.output)
    extended = runner.invoke(app, ["train", "--epochs", "2", "--resume", "--out", str(run), "--workers", "0"])
    assert extended.exit_code == 0, extended.output
    assert json.loads((run / "config.json").read_text())["resolved"]["init"] == init  # still the run's start


def test_the_recipe_and_threads_are_recorded_and_a_thread_change_is_said(
    tmp_path: Path, folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs that differed only in --lr or --zoom had the same provenance; and on a CPU the same
    seed gives the same weights only with the same thread count, which nothing recorded. The
    resume command a stop prints took the default count, which follows the load, so it did not
    go on exactly: a resume without --threads now keeps the run's."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # which a resume leaves in charge
    out = tmp_path / "run"
    args = [*tiny_args(out, folders), "--val-every", "0", "--lr", "0.001", "--zoom", "0.5", "--threads", "1"]
    first = runner.invoke(app, [*args, "--loss", "structure"])
    assert first.exit_code == 0, first.output
    provenance = torch.load(out / "last.pt", weights_only=True)["provenance"]
    recipe = provenance["recipe"]
    assert provenance["loss"] == "structure" and provenance["supervision"] == "multi"
    assert recipe["lr"] == 0.001 and recipe["augment"]["zoom"] == 0.5 and recipe["planned_epochs"] == 1
    assert recipe["threads"] == 1 and recipe["total_steps"] == 2 and recipe["backbone_weights"] is None
    assert json.loads((out / "config.json").read_text())["resolved"]["threads"] == 1
    shown = runner.invoke(app, ["info", str(out / "last.pt")], env={"COLUMNS": "200"})
    assert "provenance: recipe threads" in shown.output  # a row a setting, none cut off
    assert "provenance: recipe backbone_weights" in shown.output

    other = ["train", "--resume", "--epochs", "2", "--out", str(out), "--train", str(folders["val"])]
    refused = runner.invoke(app, other)  # says only why: the thread line came first
    assert refused.exit_code == 2 and "as the run had" not in refused.output, refused.output
    kept = runner.invoke(app, ["train", "--resume", "--epochs", "2", "--out", str(out)])
    assert kept.exit_code == 0, kept.output
    assert "1 compute thread, as the run had" in flat(kept.output) and "->" not in kept.output
    assert torch.load(out / "last.pt", weights_only=True)["train_state"]["threads"] == 1
    resumed = runner.invoke(app, ["train", "--resume", "--epochs", "3", "--out", str(out), "--threads", "2"])
    assert resumed.exit_code == 0, resumed.output
    assert "1 -> 2 compute threads (pass --threads 1 to keep them)" in flat(resumed.output)


def test_a_warmup_as_long_as_the_run_is_said(tmp_path: Path, folders: dict[str, Path]) -> None:
    """--warmup 99999 on a 2-step run was taken in silence: the learning rate never neared --lr."""
    long = runner.invoke(app, [*tiny_args(tmp_path / "a", folders), "--val-every", "0", "--warmup", "2"])
    assert long.exit_code == 0, long.output
    assert "--warmup 2 is as long as the run's 2 steps or longer" in flat(long.output)
    longer = runner.invoke(app, ["train", "--resume", "--epochs", "2", "--out", str(tmp_path / "a")])
    assert longer.exit_code == 0 and "is as long as" not in longer.output  # a resume keeps the warmup
    assert "decays to 0 at step 4 instead of 2" in flat(longer.output) and "inside" not in longer.output
    short = runner.invoke(app, [*tiny_args(tmp_path / "b", folders), "--val-every", "0", "--warmup", "1"])
    assert short.exit_code == 0 and "--warmup" not in short.output
    assert "pdseg train" in short.output and "val maxF" not in short.output  # no empty columns unvalidated


def test_a_resume_keeps_where_the_weights_came_from(tmp_path: Path, folders: dict[str, Path]) -> None:
    """Resumed, a fine-tune's checkpoints lost their --init chain (provenance None), and a
    --backbone-weights file moved after the start stopped the run at its first save (the recipe
    hashed the file at every save)."""
    first = tmp_path / "first"
    assert runner.invoke(app, [*tiny_args(first, folders), "--val-every", "0"]).exit_code == 0
    start = tmp_path / "start.pt"
    shutil.copy(first / "last.pt", start)

    tuned = tmp_path / "tuned"
    args = [*tiny_args(tuned, folders), "--val-every", "0", "--init", str(start)]
    assert runner.invoke(app, [a for a in args if a not in ("--variant", "pdseg-tiny")]).exit_code == 0
    resumed = runner.invoke(app, ["train", "--resume", "--epochs", "2", "--out", str(tuned)])
    assert resumed.exit_code == 0, resumed.output
    chain = torch.load(tuned / "last.pt", weights_only=True)["provenance"]["init"]
    assert chain["path"] == str(start.resolve()) and chain["provenance"]["sha256"]

    grown = tmp_path / "grown"
    args = [*tiny_args(grown, folders), "--val-every", "0", "--backbone-weights", str(start)]
    assert runner.invoke(app, args).exit_code == 0
    sha = hashlib.sha256(start.read_bytes()).hexdigest()
    start.unlink()  # moved away after the run began: a resume does not read it
    resumed = runner.invoke(app, ["train", "--resume", "--epochs", "2", "--out", str(grown)])
    assert resumed.exit_code == 0, resumed.output
    recipe = torch.load(grown / "last.pt", weights_only=True)["provenance"]["recipe"]
    assert recipe["backbone_weights"] == {"path": str(start.resolve()), "sha256": sha}


def test_a_folder_with_best_pt_and_no_last_pt_says_it_cannot_be_resumed(
    tmp_path: Path, folders: dict[str, Path]
) -> None:
    """Killed between best.pt and its first last.pt: the plain command said "pass --resume", and
    --resume then said "start it again without --resume"; only --overwrite gets out."""
    out = tmp_path / "run"
    assert runner.invoke(app, tiny_args(out, folders)).exit_code == 0
    (out / "last.pt").unlink()
    again = runner.invoke(app, tiny_args(out, folders))
    assert again.exit_code == 2, again.output
    text = flat(again.output)
    assert "holds best.pt but no last.pt" in text and "--overwrite starts it again" in text
    assert "--resume" not in text
    resumed = runner.invoke(app, ["train", "--resume", "--epochs", "2", "--out", str(out)])
    assert resumed.exit_code == 2, resumed.output
    text = flat(resumed.output)
    assert "does not exist, only" in text and "--overwrite starts it again" in text
    assert "nothing was trained yet" not in text  # best.pt is something


def test_stale_samples_in_the_run_cache_are_dropped(tmp_path: Path, folders: dict[str, Path]) -> None:
    """Samples no pair of the run names (an edited file's, an older cache layout's) stayed for good:
    a resume after an upgrade doubled the cache folder."""
    out = tmp_path / "run"
    assert runner.invoke(app, [*tiny_args(out, folders), "--val-every", "0"]).exit_code == 0
    folder = out / "cache" / "64"
    current = sorted(p.name for p in folder.glob("*.npy"))
    assert len(current) == 8
    (folder / "s00-0123456789abcdef.npy").write_bytes(b"old layout")
    resumed = runner.invoke(app, ["train", "--resume", "--epochs", "2", "--out", str(out)])
    assert resumed.exit_code == 0, resumed.output
    assert sorted(p.name for p in folder.glob("*.npy")) == current


# ----------------------------------------------------------------------------------------------
# torchrun: which process says an error, and one GPU per process


def _as_rank(
    monkeypatch: pytest.MonkeyPatch, rank: int, world: int = 2, local_world: int | None = None
) -> None:
    """This process as rank ``rank`` of a torchrun job (no process group is reached: the errors
    come first)."""
    for name, value in (("WORLD_SIZE", world), ("RANK", rank), ("LOCAL_RANK", rank)):
        monkeypatch.setenv(name, str(value))
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))


def _gpus(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """``n`` CUDA GPUs as torch sees them (nothing may run on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")


def test_one_gpu_per_task_or_per_node_is_not_refused() -> None:
    """Two set-ups a first version of the check refused wrongly: a scheduler's one GPU per task with
    no LOCAL_WORLD_SIZE (each process sees its own GPU as cuda:0; LOCAL_RANK wraps round to it), and
    one process per node on a multi-node job with --device cuda:0 (nothing shared on any node)."""
    from pdseg_cli import runtime

    with pytest.MonkeyPatch.context() as patch:
        _gpus(patch, 1)
        for rank in (0, 1):
            assert runtime.check_gpu_per_process("cuda", runtime.Distributed(2, rank, rank)) is None
            assert runtime.check_gpu_per_process("auto", runtime.Distributed(2, rank, rank)) is None
            assert runtime.resolve_device("cuda", local_rank=rank).device == torch.device("cuda", 0)
            one_per_node = runtime.Distributed(2, rank, 0, 1)
            assert runtime.check_gpu_per_process("cuda:0", one_per_node) is None


@pytest.mark.parametrize(
    ("gpus", "device", "said"),
    [
        (1, "cuda", "2 torchrun processes on this machine, and 1 GPU is visible"),
        (1, "auto", "2 torchrun processes on this machine, and 1 GPU is visible"),
        (2, "cuda:1", "--device cuda:1 puts all 2 torchrun processes of this machine on GPU 1"),
    ],
)
def test_training_refuses_two_processes_on_one_gpu_said_once_by_rank_0(
    tmp_path: Path,
    folders: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    gpus: int,
    device: str,
    said: str,
) -> None:
    """NCCL stopped such a job at its first step ("Duplicate GPU detected"), a traceback per rank."""
    _gpus(monkeypatch, gpus)
    args = [*tiny_args(tmp_path / "run", folders)]
    args[args.index("--device") + 1] = device
    for rank in (0, 1):
        _as_rank(monkeypatch, rank, local_world=2)
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        if rank == 1:  # the same refusal, which rank 0 says
            assert result.output == ""
            continue
        text = flat(result.output)
        assert said in text and "training needs a GPU of its own per process" in text, text
        fix = "--device cuda (or leave --device out)" if ":" in device else "torchrun --nproc-per-node 1"
        assert fix in text and "rank" not in text
    assert not (tmp_path / "run").exists()


def test_an_error_every_rank_meets_is_said_once_by_rank_0(
    tmp_path: Path, folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    for rank in (0, 1):
        _as_rank(monkeypatch, rank, local_world=2)
        for bad in (["--batch", "0"], ["--size", "full"], ["--precision", "fp16"]):
            result = runner.invoke(app, [*tiny_args(tmp_path / "run", folders), *bad])
            assert result.exit_code == 2, result.output
            assert (result.output == "") == (rank == 1), (bad, result.output)


# ----------------------------------------------------------------------------------------------
# --freeze-bn


def test_train_help_teaches_freeze_bn() -> None:
    from pdseg_cli.engine.train_config import FREEZE_BN_BATCH

    text = flat(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output.replace("│", " "))
    assert "--freeze-bn Keep the encoder's BatchNorm statistics" in text and "Off: --no-freeze-bn" in text
    assert "Use it to fine-tune --init or --backbone-weights with a small batch" in text
    assert f"at most {FREEZE_BN_BATCH} images a step" in text  # the help spells the constant out


def test_cli_freeze_bn_is_recorded_and_a_resume_keeps_it(tmp_path: Path, folders: dict[str, Path]) -> None:
    first = tmp_path / "first"
    assert runner.invoke(app, [*tiny_args(first, folders), "--val-every", "0"]).exit_code == 0
    tuned = tmp_path / "tuned"
    args = [a for a in tiny_args(tuned, folders) if a not in ("--variant", "pdseg-tiny")]
    args[args.index("--batch") + 1] = "2"
    result = runner.invoke(
        app, [*args, "--val-every", "0", "--init", str(first / "last.pt"), "--no-freeze-bn"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tuned / "config.json").read_text())["resolved"]["freeze_bn"] is False
    assert torch.load(tuned / "last.pt", weights_only=True)["provenance"]["recipe"]["freeze_bn"] is False
    resumed = runner.invoke(app, ["train", "--resume", "--epochs", "2", "--out", str(tuned), "--freeze-bn"])
    assert resumed.exit_code == 2, resumed.output
    assert "trained with other settings: --no-freeze-bn -> --freeze-bn" in flat(resumed.output)
    resumed = runner.invoke(app, ["train", "--resume", "--epochs", "2", "--out", str(tuned)])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((tuned / "config.json").read_text())["resolved"]["freeze_bn"] is False
