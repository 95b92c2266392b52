"""Training engine on tiny synthetic data (pdseg-tiny at 64x64 on the CPU): the loss goes down,
resume is bit-exact, bad pairs and NaN losses stop cleanly; plus the pieces (loss, schedule,
parameter groups, augmentation, batches, EMA, cache)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, make_dataset

from pdseg_cli.data import dis5k
from pdseg_cli.data.augment import AugmentConfig, augment, fill_object, paste_object, sample_rng
from pdseg_cli.engine import losses
from pdseg_cli.engine.ema import ModelEMA, default_ema_decay, default_ema_tau
from pdseg_cli.engine.train import TrainConfig, TrainingDiverged, train
from pdseg_cli.engine.train_checkpoints import resume_summary
from pdseg_cli.engine.train_data import augment_config
from pdseg_cli.engine.train_folder import read_rows
from pdseg_cli.engine.train_schedule import (
    lr_factor,
    make_optimizer,
    make_scheduler,
    param_groups,
    restore_scheduler,
)
from pdseg_cli.errors import DataError, InputError, RunFailed
from pdseg_cli.model import create_model, load_model, save_checkpoint


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("train-data")
    return {"train": make_dataset(base / "tr", 8), "val": make_dataset(base / "va", 4, seed=1)}


def tiny(out: Path, data: dict[str, Path], **kw: Any) -> TrainConfig:
    values: dict[str, Any] = dict(
        epochs=2, variant="pdseg-tiny", size=64, batch=4, workers=0, train_dir=data["train"],
        val_dir=data["val"], lr=1e-3, device="cpu",
    )  # fmt: skip
    values.update(kw)
    return TrainConfig(out=out, **values)


def all_tensors_equal(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths where two nested structures of tensors and plain values differ."""
    if isinstance(a, torch.Tensor):
        return [] if isinstance(b, torch.Tensor) and torch.equal(a, b) else [where]
    if isinstance(a, dict):
        if set(a) != set(b):
            return [f"{where} keys"]
        return [d for k in a for d in all_tensors_equal(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} len"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in all_tensors_equal(x, y, f"{where}[{i}]")
        ]
    return [] if a == b else [where]


# ----------------------------------------------------------------------------------------------
# whole runs


def test_a_few_steps_lower_the_loss_and_write_the_run_files(tmp_path: Path, data: dict[str, Path]) -> None:
    events: list[Any] = []
    result = train(tiny(tmp_path / "run", data, epochs=4, augment=False), on_event=events.append)
    losses_by_epoch = [row["loss"] for row in result.rows]
    assert losses_by_epoch[-1] < losses_by_epoch[0] * 0.95, losses_by_epoch
    run = tmp_path / "run"
    for name in ("last.pt", "best.pt", "results.csv", "config.json"):
        assert (run / name).is_file(), name
    header = (run / "results.csv").read_text().splitlines()[0].split(",")
    for column in ("epoch", "loss", "loss_l1", "loss_l4", "lr", "val_maxf", "val_mae", "epoch_time_s"):
        assert column in header
    assert len((run / "results.csv").read_text().splitlines()) == 5
    # the lr column is what the epoch's last step used: the schedule reaches 0 only after it
    step_lrs = [e.values["lr"] for e in events if e.kind == "step"]
    assert [row["lr"] for row in result.rows] == step_lrs[1::2] and result.rows[-1]["lr"] > 0
    assert result.best is not None and 0.0 <= result.best_maxf <= 1.0
    # both checkpoints are ordinary pdseg checkpoints holding the EMA weights, with provenance
    model = load_model(run / "best.pt")
    assert model.config.name == "pdseg-tiny"
    payload = torch.load(run / "last.pt", weights_only=True)
    assert payload["provenance"]["steps"] == result.steps == 8
    assert payload["train_size"] == 64
    assert all_tensors_equal(payload["state_dict"], payload["train_state"]["ema"]["weights"]) == []
    kinds = {e.kind for e in events}
    assert {"prepare", "start", "epoch_start", "step", "validate", "epoch_end"} <= kinds


def test_tensorboard_scalars_per_step_and_epoch_continue_on_resume(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(tiny(run, data, epochs=1, augment=False))
    train(TrainConfig.for_resume(run, epochs=2))
    # one event file a session, read in the order written: TensorBoard orders a folder's files by
    # name, and two writers of one process in one second differ only in a counter that sorts as
    # text (..9 after ..10), which the number of earlier tests' writers decides
    files = sorted((run / "tensorboard").iterdir(), key=lambda f: f.stat().st_mtime_ns)
    assert len(files) == 2
    sessions = [EventAccumulator(str(f)) for f in files]
    for events in sessions:
        events.Reload()
    tags = set().union(*(set(events.Tags()["scalars"]) for events in sessions))
    assert {"train/loss", "train/lr", "epoch/loss", "epoch/val_maxf", "epoch/val_mae"} <= tags

    def scalars(tag: str) -> list[Any]:
        return [e for events in sessions for e in events.Scalars(tag)]

    # 8 images, batch 4: steps 1..4 over both runs, each logged once; the epochs end at steps 2 and 4
    assert [e.step for e in scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in scalars("epoch/val_maxf")] == [2, 4]
    rows = (run / "results.csv").read_text().splitlines()[1:]
    logged = [e.value for e in scalars("epoch/loss")]
    assert logged == pytest.approx([float(r.split(",")[2]) for r in rows], rel=1e-6)


@pytest.mark.skipif(sys.platform == "win32", reason="os.kill(SIGINT) terminates the process on Windows")
@pytest.mark.parametrize("at_step", [1, 2], ids=["mid-epoch", "after-its-last-step"])
def test_interrupted_run_resumes_to_identical_weights(
    tmp_path: Path, data: dict[str, Path], at_step: int
) -> None:
    # one worker process: Ctrl-C must not reach it, and the data must not depend on it
    common = dict(epochs=2, batch=3, workers=1, val_every=0)
    uninterrupted = train(tiny(tmp_path / "a", data, **common))

    def ctrl_c_mid_epoch(event: Any) -> None:
        if event.kind == "step" and event.epoch == 1 and event.step == at_step:
            os.kill(os.getpid(), signal.SIGINT)

    stopped = train(tiny(tmp_path / "b", data, **common), on_event=ctrl_c_mid_epoch)
    assert stopped.interrupted and stopped.steps == at_step
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["train_state"]
    assert (state["epoch"], state["step_in_epoch"]) == (0, at_step)
    resumed = train(TrainConfig.for_resume(tmp_path / "b"))
    assert not resumed.interrupted and resumed.steps == uninterrupted.steps == 4

    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert all_tensors_equal(a["state_dict"], b["state_dict"]) == []
    for part in ("model", "ema", "optimizer", "scheduler", "rng"):
        assert all_tensors_equal(a["train_state"][part], b["train_state"][part], part) == []
    rows_a = (tmp_path / "a" / "results.csv").read_text().splitlines()
    rows_b = (tmp_path / "b" / "results.csv").read_text().splitlines()
    strip_times = [",".join(r.split(",")[:-2]) for r in rows_a], [",".join(r.split(",")[:-2]) for r in rows_b]
    assert strip_times[0] == strip_times[1]  # same losses and lr per epoch, also for the split epoch


def test_a_ctrl_c_during_validation_stops_at_the_epochs_end(tmp_path: Path, data: dict[str, Path]) -> None:
    """The stop was taken only after the next epoch's first step: its loader started, one step ran
    and a second last.pt was written, minutes later on a large validation set."""

    def ctrl_c_while_validating(event: Any) -> None:
        if event.kind == "validate" and event.epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)

    stopped = train(
        tiny(tmp_path / "b", data, epochs=3, batch=3, val_every=1), on_event=ctrl_c_while_validating
    )
    assert stopped.interrupted and stopped.steps == 2 and stopped.epochs == 1  # validated, then stopped
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["train_state"]
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)
    assert (tmp_path / "b" / "best.pt").is_file()
    assert not train(TrainConfig.for_resume(tmp_path / "b")).interrupted


def test_a_start_stopped_before_its_first_checkpoint_is_not_a_run(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    # Ctrl-C during startup (teacher labelling can take an hour) leaves config.json and no
    # checkpoint: a plain rerun starts again (it was refused as "already holds a run", and
    # --resume then said there was nothing to resume)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "bert"}')  # another tool's files are kept
    (out / "results.csv").write_text("experiment,acc\nA,0.91\n")
    with pytest.raises(InputError, match="holds results.csv, config.json, which are not a pdseg run's"):
        train(tiny(out, data, epochs=1, val_every=0))
    assert (out / "config.json").read_text() == '{"model_type": "bert"}'
    (out / "config.json").write_text('{"pdseg_version": "0.1.0", "train": {}}')  # what a stopped start left
    (out / "results.csv").write_text("epoch\n")
    with pytest.raises(InputError, match="nothing to resume") as refused:
        train(tiny(out, data, epochs=1, val_every=0, resume=True))
    assert "without --resume" in (refused.value.hint or "")
    events: list[Any] = []
    train(tiny(out, data, epochs=1, val_every=0), events.append)
    notices = [e.values["message"] for e in events if e.kind == "notice"]
    assert any("replacing results.csv, config.json of a start that saved no checkpoint" in m for m in notices)
    assert (out / "last.pt").is_file()
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 1


@pytest.mark.parametrize(
    ("epoch", "in_epoch", "step", "said"),
    [
        (0, 1, 1, "stopped in epoch 1 of 2, at step 1 of 4"),
        (1, 0, 2, "stopped after epoch 1 of 2, at step 2 of 4"),  # the end-of-epoch save
        (1, 2, 4, "stopped in epoch 2 of 2, at step 4 of 4"),  # its last step, before its end-of-epoch work
        (2, 0, 4, "finished: 2 epochs, 4 steps"),
    ],
)
def test_info_says_where_a_stopped_run_stands(
    tmp_path: Path, epoch: int, in_epoch: int, step: int, said: str
) -> None:
    state = {"version": 1, "epoch": epoch, "step_in_epoch": in_epoch, "global_step": step, "epochs": 2}
    torch.save({"train_state": {**state, "total_steps": 4}}, tmp_path / "last.pt")
    summary = resume_summary(tmp_path / "last.pt")
    assert summary is not None and summary.startswith(said)
    assert summary.endswith(f"--out {tmp_path}" if "stopped" in said else "(N > 2)")


def test_resume_from_another_working_folder_finds_relative_paths(
    tmp_path: Path, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # config.json stores paths absolute: a run started with `--train tr` in the data's folder
    # resumes from anywhere (it read `tr` against the new working folder and failed, or found another)
    monkeypatch.chdir(data["train"].parent)
    monkeypatch.setenv("HOME", str(tmp_path))  # and `~` is stored expanded (a literal ~ in Python)
    out = tmp_path / "run"
    relative = Path(data["train"].name)
    train(tiny(out, data, epochs=1, val_every=0, train_dir=relative, val_dir=None, cache_dir="~/c"))
    assert json.loads((out / "config.json").read_text())["train"]["cache_dir"] == str(tmp_path / "c")
    assert resume_summary(out / "last.pt") == (
        f"finished: 1 epoch, 2 steps; to train longer: pdseg train --resume --out {out} --epochs N (N > 1)"
    )
    assert resume_summary(REPO / "weights" / "pdseg-t-distilled.pt") is None  # weights without a state
    stored = json.loads((out / "config.json").read_text())["train"]
    assert stored["train_dir"] == str(data["train"]) and stored["out"] == str(out)
    monkeypatch.chdir(tmp_path)
    resumed = train(TrainConfig.for_resume(Path("run"), epochs=2))
    assert resumed is not None and (out / "last.pt").is_file()
    assert len(read_rows(out / "results.csv")) == 2


def test_backbone_weights_then_resume_refusals(tmp_path: Path, data: dict[str, Path]) -> None:
    pretrained = create_model("pdseg-tiny")
    save_checkpoint(pretrained, tmp_path / "encoder.pt")  # load_backbone takes a pdseg file's encoder
    events: list[Any] = []
    train(
        tiny(tmp_path / "run", data, epochs=1, val_every=0, backbone_weights=tmp_path / "encoder.pt"),
        events.append,
    )
    assert any(e.kind == "info" and "encoder initialised" in e.values["message"] for e in events)
    with pytest.raises(InputError, match="already holds a training run"):
        train(tiny(tmp_path / "run", data, epochs=1, val_every=0))
    with pytest.raises(InputError, match="--size 64 -> 96"):
        train(TrainConfig.for_resume(tmp_path / "run", size=96))
    with pytest.raises(InputError, match="--zoom 0.0 -> 0.5"):
        train(TrainConfig.for_resume(tmp_path / "run", zoom=0.5))
    with pytest.raises(InputError, match="--loss bce-iou -> structure"):
        train(TrainConfig.for_resume(tmp_path / "run", loss="structure"))
    with pytest.raises(InputError, match="nothing to resume"):
        TrainConfig.for_resume(tmp_path / "elsewhere")
    # a run started before a trajectory field existed (zoom) had its default, and still resumes
    payload = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    del payload["train_state"]["config"]["zoom"]
    torch.save(payload, tmp_path / "run" / "last.pt")
    done = train(TrainConfig.for_resume(tmp_path / "run"))  # already at --epochs 1: nothing to do
    assert done.epochs == 1 and done.steps == 2


def test_bad_pairs_are_all_named_before_training(tmp_path: Path, data: dict[str, Path]) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(data["train"], bad)
    (bad / "gt" / "s01.png").unlink()  # image without mask
    shutil.copy(bad / "gt" / "s02.png", bad / "gt" / "orphan.png")  # mask without image
    (bad / "im" / "s03.jpg").write_bytes(b"not a jpeg")  # unreadable image
    cv2.imwrite(str(bad / "gt" / "s04.png"), np.zeros((32, 48), np.uint8))  # another size
    zero_one = (cv2.imread(str(bad / "gt" / "s05.png"), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8)
    cv2.imwrite(str(bad / "gt" / "s05.png"), zero_one)  # 0/1: would train as an empty mask
    with pytest.raises(DataError) as info:
        train(tiny(tmp_path / "run", data, train_dir=bad))
    message = str(info.value)
    assert "5 bad image/mask pair(s)" in message
    for name in ("s01.jpg", "orphan.png", "s03.jpg", "im/s04.jpg is 64x64 but its mask gt/s04.png is 48x32",
                 "s05.png holds only the values 0 and 1"):  # fmt: skip
        assert name in message
    assert not (tmp_path / "run" / "last.pt").exists()


def test_masks_that_read_as_faint_targets_are_named_before_training(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    # the metrics read a colour GT as its luminance: DAVIS's palette masks (object = index 1, dark
    # red) would train as a target of 38/255, so training names them instead
    from PIL import Image

    bad = tmp_path / "bad"
    shutil.copytree(data["train"], bad)
    fg = [cv2.imread(str(bad / "gt" / f"s{i:02d}.png"), cv2.IMREAD_GRAYSCALE) > 127 for i in range(8)]
    palette = Image.fromarray(fg[0].astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    palette.save(bad / "gt" / "s00.png")
    red = np.zeros((*fg[1].shape, 3), np.uint8)
    red[fg[1]] = (0, 0, 255)  # BGR
    cv2.imwrite(str(bad / "gt" / "s01.png"), red)
    alpha = np.zeros((*fg[2].shape, 4), np.uint8)
    alpha[..., 3] = fg[2] * 255  # the mask in alpha, colours uniform
    cv2.imwrite(str(bad / "gt" / "s02.png"), alpha)
    cv2.imwrite(str(bad / "gt" / "s03.png"), fg[3].astype(np.uint8) * 100)  # at most 100
    cv2.imwrite(str(bad / "gt" / "s04.png"), fg[4].astype(np.uint16) * 255)  # 16-bit 0/255: high byte 0
    # these train as they are: a gray mask stored as RGB with one stray tinted pixel, a yellow
    # object (luminance 225), and a gray mask saved as a colour JPEG (channels differ by noise)
    gray_rgb = np.repeat((fg[5].astype(np.uint8) * 255)[..., None], 3, axis=2)
    gray_rgb[0, 0] = (0, 0, 1)
    cv2.imwrite(str(bad / "gt" / "s05.png"), gray_rgb)
    yellow = np.zeros((*fg[6].shape, 3), np.uint8)
    yellow[fg[6]] = (0, 255, 255)
    cv2.imwrite(str(bad / "gt" / "s06.png"), yellow)
    jpeg = np.repeat((fg[7].astype(np.uint8) * 255)[..., None], 3, axis=2)
    jpeg[fg[7]] = (250, 255, 253)
    cv2.imwrite(str(bad / "gt" / "s07.png"), jpeg)
    with pytest.raises(DataError) as info:
        train(tiny(tmp_path / "run", data, train_dir=bad))
    message = str(info.value)
    assert "5 bad image/mask pair(s)" in message, message
    # grouped by reason, each said once: the palette and the RGB mask are one group
    assert (
        "2 masks are colour images whose objects read as faint gray targets: gt/s00.png (palette, at most "
        "38), gt/s01.png (RGB, at most 76)"
    ) in message
    assert "gt/s02.png keeps its mask in the alpha channel" in message
    assert "gt/s03.png has no value above 128 (at most 100): it trains as a faint target" in message
    assert "gt/s04.png is a 16-bit mask whose values (at most 255) read as 0 in 8 bits" in message
    hint = info.value.hint or ""
    assert "colour masks: save them as 8-bit gray masks" in hint and "16-bit masks: save them" in hint
    for fine in ("s05.png", "s06.png", "s07.png"):
        assert fine not in message


def test_mask_checks_follow_the_file_not_its_exif_or_alpha(tmp_path: Path) -> None:
    from PIL import Image

    from pdseg_cli.metrics.reading import read_mask_file, training_mask_problem

    def problem(path: Path) -> str | None:
        return training_mask_problem(read_mask_file(path))

    obj = np.zeros((40, 80), bool)
    obj[10:30, 20:60] = True
    # a near-white JPEG object with an EXIF rotation: the gray read turns it, the raw one does not
    rgb = np.zeros((40, 80, 3), np.uint8)
    rgb[obj] = (255, 240, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    assert problem(tmp_path / "rotated.jpg") is None
    # a thin dark-red object outlined in a bright "void" colour (VOC-style palette): still faint
    voc = np.zeros((40, 80), np.uint8)
    voc[8:32, 18:62] = 255
    voc[13:27, 23:57] = 1
    image = Image.fromarray(voc, "P")
    image.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 253 + [224, 224, 192])
    image.save(tmp_path / "voc.png")
    assert "a faint target" in (problem(tmp_path / "voc.png") or "")
    # an opaque all-black 16-bit RGBA mask (an image without the object) is a blank mask, not 16-bit trouble
    cv2.imwrite(
        str(tmp_path / "blank16.png"),
        np.dstack([np.zeros((40, 80, 3), np.uint16), np.full((40, 80), 65535, np.uint16)]),
    )
    assert problem(tmp_path / "blank16.png") is None


def test_cut_outs_and_photos_in_gt_are_named_and_masks_drawn_in_both_pass(tmp_path: Path) -> None:
    # a background remover's cut-out (the photo in the colours, the mask in alpha) and a photo copied
    # into gt/ were read as gray, so they trained on the photo's brightness in silence
    from helpers import EXAMPLE_IMAGES
    from PIL import Image

    from pdseg_cli.metrics.reading import MASK_IN_ALPHA, read_mask_file, training_mask_problem

    photo = cv2.resize(
        cv2.imread(str(EXAMPLE_IMAGES / "chelsea.jpg")), (80, 40), interpolation=cv2.INTER_AREA
    )
    mask = np.zeros((40, 80), np.uint8)
    mask[8:32, 20:60] = 255
    kept = photo.copy()
    kept[mask == 0] = 0  # premultiplied: black where transparent, as its alpha is
    margin = np.full((40, 80), 255, np.uint8)
    margin[:, :4] = 0  # a transparent canvas margin around an opaque white-on-black mask
    labels = np.zeros((40, 80, 3), np.uint8)
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]):
        labels[i * 8 : (i + 1) * 8] = colour  # five classes, none of them most of the image
    yy, xx = np.mgrid[:40, :80]
    matte = np.clip(255 - np.hypot(yy - 20, xx - 40) * 6, 0, 255).astype(np.uint8)
    files = {
        "cutout.png": np.dstack([photo, mask]),
        "premultiplied.png": np.dstack([kept, mask]),
        "photo.png": photo,
        "white-on-black.png": np.dstack([mask, mask, mask, mask]),  # the mask drawn in both: reads right
        "margin.png": np.dstack([mask, mask, mask, margin]),
        "margin16.png": np.dstack([mask, mask, mask, margin]).astype(np.uint16) * 257,
        "labels.png": labels,
        "tinted-matte.png": np.dstack([matte + (matte < 255), matte, matte]),  # a soft matte, tinted by 1
    }
    for name, pixels in files.items():
        cv2.imwrite(str(tmp_path / name), pixels)
    cv2.imwrite(
        str(tmp_path / "noisy.jpg"), np.dstack([mask, mask, np.where(mask > 0, 250, 3)]).astype(np.uint8)
    )
    cv2.imwrite(str(tmp_path / "cutout.webp"), np.dstack([photo, mask]), [cv2.IMWRITE_WEBP_QUALITY, 101])
    exif = Image.Exif()
    exif[0x0112] = 6  # turned: the gray reading is turned, the stored alpha is not
    square = np.zeros((48, 48), np.uint8)
    square[4:20, 8:40] = 255
    Image.fromarray(np.dstack([square] * 4), "RGBA").save(tmp_path / "turned.png", exif=exif)
    extra = ["noisy.jpg", "cutout.webp", "turned.png"]
    kinds = {name: getattr(training_mask_problem(read_mask_file(tmp_path / name)), "kind", None)
             for name in [*files, *extra]}  # fmt: skip
    assert kinds == {
        "cutout.png": MASK_IN_ALPHA,
        "premultiplied.png": MASK_IN_ALPHA,
        "photo.png": "picture",
        "white-on-black.png": None,
        "margin.png": None,
        "margin16.png": None,
        "labels.png": "colour",  # a label map gets the colour masks' fix, not "put the photos in im/"
        "tinted-matte.png": None,
        "noisy.jpg": None,  # a colour JPEG of a mask: its gray levels stay in a few bins
        "cutout.webp": MASK_IN_ALPHA,  # a WebP with alpha is judged as a PNG is
        "turned.png": None,
    }
    said = str(training_mask_problem(read_mask_file(tmp_path / "cutout.png")))
    assert said.endswith("(its colours are a picture: a cut-out)")
    assert "is an RGB picture, not a mask" in str(
        training_mask_problem(read_mask_file(tmp_path / "photo.png"))
    )


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = losses.multi_level_loss
    calls = {"n": 0}

    def nan_on_third_step(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        total, per_level = real(*args, **kw)
        return (total * float("nan"), per_level) if calls["n"] == 3 else (total, per_level)

    monkeypatch.setattr(losses, "multi_level_loss", nan_on_third_step)
    run = tmp_path / "run"
    stopped = r"loss became nan at epoch 2, step 1.*step 2\) is kept"
    with pytest.raises(TrainingDiverged, match=stopped) as err:
        train(tiny(run, data, epochs=3, val_every=0))
    # the way on: a new run from last.pt (--resume would refuse a changed --lr)
    assert f"--init {run / 'last.pt'} --out NEW_FOLDER" in (err.value.hint or "")
    state = torch.load(run / "last.pt", weights_only=True)["train_state"]
    assert state["global_step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_the_default_clip_grad_is_5_as_the_help_and_docs_say(tmp_path: Path) -> None:
    assert TrainConfig(out=tmp_path, epochs=1).clip_grad == 5.0


@pytest.mark.parametrize(
    ("clip_grad", "scaled"),
    [(None, False), (1e-3, False), (1e-3, True), (0.0, False)],
    ids=["default", "tight", "tight-under-a-grad-scaler", "off"],
)
def test_every_step_clips_the_unscaled_gradient_norm_to_clip_grad(
    tmp_path: Path,
    data: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    clip_grad: float | None,
    scaled: bool,
) -> None:
    # AdamW's step barely depends on the gradient's scale, so the weights cannot show the clip:
    # the call is watched instead, where train_loop looks it up (torch.nn.utils at call time)
    real = torch.nn.utils.clip_grad_norm_
    calls: list[tuple[float, float, float]] = []  # (max_norm, norm before, norm after)

    def spy(parameters: Any, max_norm: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        grads = [p for p in parameters if p.grad is not None]
        before = real(grads, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in grads]))
        calls.append((max_norm, float(before), float(after)))
        return before

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    if scaled:  # fp16's loss scaler (CUDA only), turned on in an fp32 run on the CPU
        real_scaler = torch.amp.GradScaler

        def scaler_on(device: str, enabled: bool = False) -> torch.amp.GradScaler:
            return real_scaler(device, init_scale=2.0**16, enabled=True)

        monkeypatch.setattr(torch.amp, "GradScaler", scaler_on)
    given = {} if clip_grad is None else {"clip_grad": clip_grad}
    # 8 pairs in one batch: one step
    result = train(tiny(tmp_path / "run", data, epochs=1, batch=8, val_every=0, precision="fp32", **given))
    assert result.steps == 1
    if clip_grad == 0.0:
        assert calls == []  # 0 turns clipping off
        return
    [(max_norm, before, after)] = calls
    assert max_norm == (5.0 if clip_grad is None else clip_grad)
    if clip_grad is not None:
        # the clip did something, and it saw the true gradient: the loss scale (2**16) was taken
        # off first, else the norm before would be tens of thousands
        assert 1e-3 < before < 1e3 and after <= clip_grad * (1 + 1e-4)


# ----------------------------------------------------------------------------------------------
# pieces


def test_zoom_is_off_by_default_and_needs_augmentation(tmp_path: Path, data: dict[str, Path]) -> None:
    assert augment_config(tiny(tmp_path, data)) == AugmentConfig() and AugmentConfig().zoom == 0.0
    assert augment_config(tiny(tmp_path, data, zoom=0.5)) == AugmentConfig(zoom=0.5)
    assert augment_config(tiny(tmp_path, data, augment=False)) is None
    with pytest.raises(InputError, match=r"--zoom must be a probability in \[0, 1\], got 2"):
        tiny(tmp_path, data, zoom=2.0).check()
    with pytest.raises(InputError, match="--zoom needs augmentation"):
        tiny(tmp_path, data, zoom=0.5, augment=False).check()


def test_paste_is_off_by_default_and_needs_augmentation(tmp_path: Path, data: dict[str, Path]) -> None:
    assert AugmentConfig().paste == 0.0
    assert augment_config(tiny(tmp_path, data, paste=0.3)) == AugmentConfig(paste=0.3)
    with pytest.raises(InputError, match=r"--paste must be a probability in \[0, 1\], got -0.1"):
        tiny(tmp_path, data, paste=-0.1).check()
    with pytest.raises(InputError, match="--paste needs augmentation"):
        tiny(tmp_path, data, paste=0.3, augment=False).check()
    with pytest.raises(ValueError, match="paste must be in"):
        AugmentConfig(paste=1.5)


def test_fill_object_replaces_the_object_with_the_background_around_it() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = (200, 40, 40)  # background: red on the left, blue on the right
    image[:, 32:] = (40, 40, 200)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:56, 24:40] = 255  # a bar across the border of the two colours
    image[mask > 0] = (0, 255, 0)
    filled = fill_object(image, mask)
    assert np.array_equal(filled[mask == 0], image[mask == 0])  # the background is untouched
    assert not (filled[..., 1] > 100).any()  # no green left
    # each side of the object takes the colour of the background next to it
    assert filled[32, 25, 0] > filled[32, 25, 2] and filled[32, 38, 2] > filled[32, 38, 0]
    everything = np.full((64, 64), 255, np.uint8)  # no background at all: the image's mean colour
    assert np.array_equal(
        fill_object(image, everything), np.broadcast_to(np.rint(cv2.mean(image)[:3]), image.shape)
    )


def test_paste_object_uses_the_target_as_alpha() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    background = np.full((32, 32, 3), (10, 20, 30), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    mask[8:24, 24] = 128  # a soft edge
    out = paste_object(image, mask, background, np.zeros((32, 32), np.uint8))
    assert np.array_equal(out[mask == 255], image[mask == 255])  # the object as it was
    assert np.array_equal(out[mask == 0], background[mask == 0])  # the new scene around it
    edge = (128 / 255) * image[8:24, 24].astype(float) + (127 / 255) * background[8:24, 24]
    assert np.abs(out[8:24, 24] - edge).max() <= 0.5 + 1e-9
    with pytest.raises(ValueError, match="one size"):
        paste_object(image, mask, background[:16], mask[:16])


def test_paste_in_the_dataset_keeps_the_target_and_the_other_draws(data: dict[str, Path]) -> None:
    store = dis5k.SampleStore(dis5k.scan_pairs(data["train"]).pairs, 32, "ram")
    plain = dis5k.SampleDataset(store, seed=3, augment=AugmentConfig(zoom=0.5))
    pasted = dis5k.SampleDataset(store, seed=3, augment=AugmentConfig(zoom=0.5, paste=1.0))
    changed = 0
    for index in range(len(store)):
        image, mask = plain[(2, index)]
        image_p, mask_p = pasted[(2, index)]
        # the paste has its own random stream: the geometry, and so the target, are the same
        assert torch.equal(mask, mask_p)
        again = pasted[(2, index)]
        assert torch.equal(again[0], image_p) and torch.equal(again[1], mask_p)
        changed += not torch.equal(image, image_p)
    assert changed == len(store)  # every sample got another's background (paste=1)
    assert torch.equal(pasted[0][0], plain[0][0])  # as cached, without an epoch: no augmentation


def test_loss_supervision_multi_sums_levels_and_single_uses_the_final_map() -> None:
    torch.manual_seed(0)
    target = (torch.rand(2, 1, 32, 32) > 0.5).float()
    levels = [torch.randn(2, 1, 32, 32, requires_grad=True) for _ in range(4)]
    total, per_level = losses.multi_level_loss(levels, target, "multi")
    assert torch.allclose(total, torch.stack(per_level).sum())
    single, per_level_single = losses.multi_level_loss(levels, target, "single")
    assert torch.allclose(single, per_level[-1]) and len(per_level_single) == 4
    single.backward()
    assert levels[0].grad is None and levels[-1].grad is not None
    perfect = losses.bce_iou_loss(torch.full((1, 1, 8, 8), 30.0), torch.ones(1, 1, 8, 8))
    assert perfect.item() < 1e-6
    half = losses.bce_iou_loss(torch.zeros(1, 1, 8, 8, dtype=torch.bfloat16), torch.ones(1, 1, 8, 8))
    assert half.dtype == torch.float32


def test_structure_loss_on_a_hand_worked_mask() -> None:
    # one foreground pixel in a 3x3 mask: the 31x31 window holds the whole image wherever it is
    # centred (outside pixels not counted), so every mean is 1/9 and the weights 1 + 5 * 8/9 = 49/9
    # at the pixel and 1 + 5/9 = 14/9 elsewhere; zero logits give BCE ln 2 at every pixel and p = 1/2
    target = torch.zeros(1, 1, 3, 3)
    target[0, 0, 1, 2] = 1.0
    weight = losses.edge_weight(target)
    expected = torch.full((1, 1, 3, 3), 14 / 9)
    expected[0, 0, 1, 2] = 49 / 9
    assert torch.allclose(weight, expected, atol=1e-6)
    # weighted IoU: inter = 1/2 * 49/9, sum wp = 1/2 * 161/9, sum wg = 49/9
    inter, union = 24.5 / 9, 80.5 / 9 + 49 / 9 - 24.5 / 9
    value = losses.bce_iou_loss(torch.zeros(1, 1, 3, 3), target, weight).item()
    assert value == pytest.approx(math.log(2) + 1 - (inter + 1) / (union + 1), abs=1e-6)
    total, _ = losses.multi_level_loss([torch.zeros(1, 1, 3, 3)], target, "multi", "structure")
    assert total.item() == pytest.approx(value, abs=1e-7)


def test_structure_loss_weights_edges_and_equals_bce_iou_on_flat_masks() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 16, 16)
    for flat in (torch.zeros(2, 1, 64, 64), torch.ones(2, 1, 64, 64)):  # no edge: all weights 1
        assert torch.equal(losses.edge_weight(flat), torch.ones_like(flat))
        plain = losses.multi_level_loss([logits], flat, "multi", "bce-iou")[0]
        assert losses.multi_level_loss([logits], flat, "multi", "structure")[0].item() == pytest.approx(
            plain.item(), abs=1e-6
        )
    # a square: 1 far inside and far outside, most near its sides (the two 1-D means are the
    # 2-D mean, windows clipped at the border alike)
    square = torch.zeros(1, 1, 96, 96)
    square[..., 32:64, 32:64] = 1.0
    weight = losses.edge_weight(square)
    full = F.avg_pool2d(square, 31, stride=1, padding=15, count_include_pad=False)
    assert torch.allclose(weight, 1 + 5 * (full - square).abs(), atol=1e-6)
    assert weight[0, 0, 0, 0] == 1.0 and weight[0, 0, 48, 48] == 1.0
    assert weight[0, 0, 32, 48] > 3.0 and weight[0, 0, 31, 48] > 2.0
    with pytest.raises(ValueError, match="bce-iou, structure"):
        losses.multi_level_loss([logits], square, "multi", "dice")  # type: ignore[arg-type]


def test_schedule_warms_up_then_decays_to_zero() -> None:
    assert lr_factor(0, 10, 100) == pytest.approx(1e-6)
    assert lr_factor(5, 10, 100) == pytest.approx(0.95 * 0.5, rel=1e-4)
    assert lr_factor(10, 10, 100) == pytest.approx(0.9)
    assert lr_factor(100, 10, 100) == 0.0
    assert lr_factor(0, 0, 100) == 1.0


def test_extended_schedule_gives_the_optimiser_its_own_rates_on_resume() -> None:
    # a finished 10-step run extended to 20 (--resume --epochs N): the saved optimiser holds lr 0,
    # the last rate of the old schedule; step 10 of the new one must run at its own rate
    def run(total: int) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
        optimizer = make_optimizer(create_model("pdseg-tiny"), 1e-3, 10.0, 0.01)
        return optimizer, make_scheduler(optimizer, 2, total)

    old_opt, old_sched = run(10)
    for _ in range(10):
        old_opt.step()
        old_sched.step()
    assert [g["lr"] for g in old_opt.param_groups] == [0.0] * len(old_opt.param_groups)
    new_opt, new_sched = run(20)
    new_opt.load_state_dict(old_opt.state_dict())
    restore_scheduler(new_sched, old_sched.state_dict())
    expected = [g["initial_lr"] * lr_factor(10, 2, 20) for g in new_opt.param_groups]
    assert [g["lr"] for g in new_opt.param_groups] == pytest.approx(expected)
    assert expected[0] == pytest.approx(1e-3 * 0.5)
    # an unchanged schedule (a plain resume) keeps the saved rates exactly
    same_opt, same_sched = run(10)
    same_opt.load_state_dict(old_opt.state_dict())
    restore_scheduler(same_sched, old_sched.state_dict())
    assert [g["lr"] for g in same_opt.param_groups] == [g["lr"] for g in old_opt.param_groups]


def test_param_groups_decoder_lr_and_no_decay_on_norms_biases_layer_scales() -> None:
    model = create_model("pdseg-tiny")
    groups = {g["name"]: g for g in param_groups(model, 6e-5, 10.0, 0.01)}
    assert set(groups) == {"encoder", "encoder_no_decay", "decoder", "decoder_no_decay"}
    assert groups["decoder"]["lr"] == pytest.approx(6e-4) and groups["encoder"]["lr"] == 6e-5
    assert groups["encoder_no_decay"]["weight_decay"] == 0.0 and groups["encoder"]["weight_decay"] == 0.01
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = [names[id(p)] for g in ("encoder_no_decay", "decoder_no_decay") for p in groups[g]["params"]]
    assert any("layer_scale" in n for n in no_decay) and any(n.endswith(".bias") for n in no_decay)
    assert all(p.ndim > 1 for g in ("encoder", "decoder") for p in groups[g]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_augmentation_is_a_function_of_seed_epoch_index() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    mask = (rng.random((48, 40)) > 0.5).astype(np.uint8) * 255
    everything = AugmentConfig(hflip=1.0, rotate=1.0, crop=1.0, jitter=1.0)
    a = augment(image, mask, sample_rng(0, 3, 7), everything)
    b = augment(image, mask, sample_rng(0, 3, 7), everything)
    c = augment(image, mask, sample_rng(0, 4, 7), everything)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == image.shape and a[1].shape == mask.shape and a[0].dtype == np.uint8
    only_flip = AugmentConfig(hflip=1.0, rotate=0, crop=0, jitter=0, zoom=0)
    flipped = augment(image, mask, sample_rng(0, 0, 0), only_flip)
    assert np.array_equal(flipped[0], image[:, ::-1]) and np.array_equal(flipped[1], mask[:, ::-1])


def test_zoom_out_frames_the_image_as_background_and_zoom_in_enlarges() -> None:
    image = np.full((64, 64, 3), (10, 200, 30), np.uint8)
    image[16:48, 16:48] = (250, 250, 250)  # a white square object in the middle
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    only_zoom = AugmentConfig(hflip=0, rotate=0, crop=0, jitter=0, zoom=1.0, max_zoom=2.0)
    sizes = []
    for index in range(40):
        rng = sample_rng(0, 0, index)
        z = math.exp((2.0 * rng.random(15)[14] - 1.0) * math.log(2.0))  # the draw augment makes
        out, out_mask = augment(image, mask, sample_rng(0, 0, index), only_zoom)
        area = int((out_mask > 127).sum())
        assert area == pytest.approx(32 * 32 / z**2, rel=0.25)  # the object is 1/z as wide
        if z > 1.05:  # zoomed out: the frame is background in the mask and the mean colour
            assert out_mask[0, 0] == 0 and out_mask[-1, -1] == 0
            fill = np.array(cv2.mean(image)[:3]).round()
            corners = [out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]]
            assert any(np.abs(c.astype(float) - fill).max() <= 1 for c in corners)
        sizes.append(z)
    assert min(sizes) < 0.8 and max(sizes) > 1.25  # both ways, within [1/2, 2]
    assert all(0.5 <= z <= 2.0 for z in sizes)
    unzoomed = AugmentConfig(hflip=0, rotate=0, crop=0, jitter=0, zoom=0.0)
    same = augment(image, mask, sample_rng(0, 0, 0), unzoomed)
    assert np.array_equal(same[0], image) and np.array_equal(same[1], mask)
    with pytest.raises(ValueError, match="max_zoom"):
        AugmentConfig(max_zoom=0.5)


def test_epoch_batches_shard_resume_and_reproduce() -> None:
    one = dis5k.EpochBatches(10, 3, seed=0)
    assert one.steps_per_epoch == 3 and len(one.batches(0)) == 3
    assert one.batches(0) == dis5k.EpochBatches(10, 3, seed=0).batches(0)
    assert one.batches(0) != one.batches(1)
    one.set_epoch(0, start=1)
    assert list(one) == one.batches(0)[1:] and len(one) == 2
    ranks = [dis5k.EpochBatches(10, 2, seed=0, rank=r, world_size=2) for r in range(2)]
    seen = [i for r in ranks for batch in r.batches(5) for _, i in batch]
    assert len(seen) == 8 and len(set(seen)) == 8  # disjoint shards, 2 steps of 2 each
    assert dis5k.EpochBatches(2, 8, seed=0).batches(0)[0].__len__() == 2  # fewer samples than a batch
    # what each epoch leaves out: the remainder of a last batch, per rank after padding
    assert one.left_out == 1 and ranks[0].left_out == 2 and dis5k.EpochBatches(2, 8, seed=0).left_out == 0
    assert dis5k.EpochBatches(12, 3, seed=0).left_out == 0


def test_ema_tracks_the_model() -> None:
    model = torch.nn.Linear(2, 2)
    ema = ModelEMA(model, decay=0.5, tau=1e-9)  # decay 0.5 from the first update
    with torch.no_grad():
        model.weight.add_(2.0)
    before = ema.module.weight.clone()
    ema.update(model)
    assert torch.allclose(ema.module.weight, 0.5 * before + 0.5 * model.weight)
    assert not ema.module.weight.requires_grad


def test_the_ema_ramp_fits_the_run() -> None:
    # a fixed 2,000-step ramp left a 3,000-step CPU run's "average" at decay 0.78 x 0.999, i.e. the
    # last few steps; a twentieth of the run reaches the full decay by half of it
    assert default_ema_tau(200_000) == 2000.0
    assert default_ema_tau(2849) == pytest.approx(142.45)
    assert default_ema_tau(10) == 1.0
    ema = ModelEMA(torch.nn.Linear(2, 2), decay=0.999, tau=default_ema_tau(2849))
    ema.updates = 2849 // 2
    assert ema.current_decay() == pytest.approx(0.999, abs=1e-4)


def _ema_share_of_the_second_half(steps: int, decay: float) -> float:
    """How much of the saved average comes from the second half of a run of ``steps`` updates."""
    weight = torch.nn.Parameter(torch.zeros(1))
    model = torch.nn.Module()
    model.weight = weight
    ema = ModelEMA(model, decay=decay, tau=default_ema_tau(steps))
    for step in range(steps):
        with torch.no_grad():
            weight.fill_(float(step >= steps // 2))  # 0 in the first half, 1 in the second
        ema.update(model)
    return float(ema.module.weight)


def test_the_default_ema_decay_keeps_the_end_of_a_short_run() -> None:
    assert default_ema_decay(200_000) == 0.9999  # a DIS5K GPU run: Ultralytics' decay
    assert default_ema_decay(777) == pytest.approx(1 - 10 / 777)
    assert default_ema_decay(5) == 0.0  # a handful of steps: the weights themselves
    # a 777-step fine-tune (stage 9's mistake): 0.9999 keeps mostly the run's first steps
    assert _ema_share_of_the_second_half(777, 0.9999) < 0.05
    assert _ema_share_of_the_second_half(777, default_ema_decay(777)) > 0.99


def test_disk_cache_is_reused_and_reads_real_pairs(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = shared_data / "davis16-train"
    folder = tmp_path / "real"
    (folder / "im").mkdir(parents=True)
    (folder / "gt").mkdir()
    for image in sorted((src / "im").glob("*.jpg"))[:3]:
        shutil.copy(image, folder / "im")
        shutil.copy(src / "gt" / f"{image.stem}.png", folder / "gt")
    scan = dis5k.scan_pairs(folder)
    assert scan.problems == [] and len(scan.pairs) == 3
    store = dis5k.prepare_samples(scan, 64, "disk", tmp_path / "cache", threads=2)
    sample = store[0]
    assert sample.shape == (64, 64, 4) and sample.dtype == np.uint8
    assert set(np.unique(sample[..., 3])) - {0, 255}  # bilinear resize: soft mask edges
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
    ram = dis5k.prepare_samples(scan, 64, "ram", None)
    assert np.array_equal(ram[0], sample)
    monkeypatch.setattr(dis5k, "load_sample", lambda *a: pytest.fail("decoded again despite the cache"))
    again = dis5k.prepare_samples(scan, 64, "disk", tmp_path / "cache")
    assert np.array_equal(again[0], sample)


def test_an_unwritable_cache_dir_is_named_not_the_pairs(
    tmp_path: Path, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pdseg_cli.data import dis5k

    def refuse(path: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dis5k, "atomic_path", refuse)  # a read-only --cache-dir (root ignores chmod)
    with pytest.raises(RunFailed) as info:  # a write that failed: exit 1, as for any OSError
        train(tiny(tmp_path / "run", data, cache="disk", cache_dir=tmp_path / "ro"))
    assert "cannot write the sample cache" in info.value.message and "bad image" not in info.value.message
    assert "--cache-dir" in (info.value.hint or "")


def test_unwritable_run_folders_and_a_full_disk(
    tmp_path: Path, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from pdseg_cli.cli import app

    runner = CliRunner(env={"COLUMNS": "200"})
    common = ["train", "-e", "1", "--variant", "pdseg-tiny", "--size", "64", "--train", str(data["train"])]
    for out in ("/proc/pdseg-run", str(data["train"] / "im" / "s00.jpg")):
        result = runner.invoke(app, [*common, "--out", out])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "cannot be written" in result.output or "is a file" in result.output
    # a first epoch saves; then the disk is full: one line, exit 1, the last good last.pt kept
    train(tiny(tmp_path / "run", data, epochs=1, val_dir=None))
    good = (tmp_path / "run" / "last.pt").read_bytes()

    def full(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4416 vs 4312")

    monkeypatch.setattr(torch, "save", full)  # every checkpoint, last.pt and best.pt, is written by it
    result = runner.invoke(
        app, [*common, "--out", str(tmp_path / "run"), "--resume", "-e", "2", "--workers", "0"]
    )
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "previous checkpoint is intact" in text and "--resume" in text and "Traceback" not in text
    assert "the disk is probably full" in text  # what torch's "enforce fail ... unexpected pos" means
    assert (tmp_path / "run" / "last.pt").read_bytes() == good
    # full before the first checkpoint: nothing to resume, so the hint is to start again
    first = runner.invoke(app, [*common, "--out", str(tmp_path / "run2"), "--workers", "0"])
    assert first.exit_code == 1, first.output
    text = " ".join(first.output.split())
    assert "no resume point (last.pt) has been written yet" in text and "and start the run again" in text
    assert "--overwrite" not in text  # nothing was saved: the same command starts it, as it does
    monkeypatch.undo()
    again = runner.invoke(app, [*common, "--out", str(tmp_path / "run2"), "--workers", "0"])
    assert again.exit_code == 0, again.output


def test_an_epoch_writes_best_and_results_before_last(
    tmp_path: Path, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # last.pt records the epoch's best score: written first, a stop before best.pt would leave a
    # resume that trusts a best.pt of an older epoch and has dropped the epoch's results row
    replaced: list[str] = []
    real = os.replace

    def spy(src: Any, dst: Any) -> None:
        replaced.append(Path(dst).name)
        real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    train(tiny(tmp_path / "run", data, epochs=1))
    ends = [name for name in replaced if name in ("best.pt", "results.csv", "last.pt")]
    assert ends == ["best.pt", "results.csv", "last.pt"], replaced


def test_auto_precision_on_the_cpu_is_bf16_only_where_it_is_native(
    tmp_path: Path, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pdseg_cli import runtime

    seen: list[Any] = []
    monkeypatch.setattr(runtime.precision, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    result = train(tiny(tmp_path / "a", data, epochs=1, val_dir=None), on_event=seen.append)
    start = next(e for e in seen if e.kind == "start")
    assert start.values["precision"] == "bf16" and result.steps == 2
    monkeypatch.setattr(runtime.precision, "cpu_flags", lambda: frozenset({"avx2"}))
    seen.clear()
    train(tiny(tmp_path / "b", data, epochs=1, val_dir=None), on_event=seen.append)
    assert next(e for e in seen if e.kind == "start").values["precision"] == "fp32"


def test_more_workers_than_cores_is_said_once_in_pdseg_words(
    tmp_path: Path, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pdseg_cli import runtime

    monkeypatch.setattr(runtime, "usable_cores", lambda: 1)
    notices: list[str] = []
    workers = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) + 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(
            tiny(tmp_path / "w", data, epochs=1, batch=3, workers=workers, val_every=0),
            on_event=lambda e: notices.append(e.values["message"]) if e.kind == "notice" else None,
        )
    assert sum(f"--workers {workers} on 1 usable cores" in n for n in notices) == 1
    assert not [w for w in caught if "DataLoader will create" in str(w.message)]  # torch's, twice before


def test_a_killed_runs_temporaries_are_removed_when_it_goes_on(tmp_path: Path, data: dict[str, Path]) -> None:
    # a SIGKILL while last.pt was written leaves its hidden temporary, as big as the model
    from helpers import dead_pid

    from pdseg_cli.data import atomic

    out = tmp_path / "run"
    train(tiny(out, data, epochs=1, val_every=0))
    stale = out / atomic.temp_name(out / "last.pt").replace(f".{os.getpid()}-", f".{dead_pid()}-")
    stale.write_bytes(b"half a checkpoint")
    train(tiny(out, data, epochs=2, val_every=0, resume=True))
    assert not stale.exists()
    assert not [p for p in out.iterdir() if p.name.endswith(atomic.TEMP_SUFFIX)]


def test_data_workers_leave_every_stop_signal_to_the_main_process() -> None:
    # a scheduler's SIGTERM or a closed terminal reaches the whole group: workers killed by it made
    # the main process fail with a traceback instead of saving a resumable checkpoint
    code = (
        "import signal; from pdseg_cli.engine.train_signals import worker_init; worker_init(0); "
        "stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP); "
        "print([signal.getsignal(s) == signal.SIG_IGN for s in stops])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[True, True, True]"


def test_the_resume_command_is_quoted_for_the_shell(tmp_path: Path, data: dict[str, Path]) -> None:
    # "--out my run" was printed bare: pasted, the shell split it in two
    from pdseg_cli.engine.train_checkpoints import resume_parts

    out = tmp_path / "my run"
    train(tiny(out, data, epochs=1, val_every=0))
    parts = resume_parts(out / "last.pt")
    assert parts is not None and f"--resume --out '{out}' --epochs N" in parts[1]


def test_a_killed_runs_sample_cache_leftovers_are_removed(tmp_path: Path, data: dict[str, Path]) -> None:
    # a SIGKILL while a decoded sample was written left its temporary in the cache's size folder
    from helpers import dead_pid

    from pdseg_cli.data import atomic

    cache = tmp_path / "samples"
    train(tiny(tmp_path / "run", data, epochs=1, val_every=0, cache="disk", cache_dir=cache))
    sample = next(p for p in cache.rglob("*.npy"))
    stale = sample.with_name(atomic.temp_name(sample).replace(f".{os.getpid()}-", f".{dead_pid()}-"))
    stale.write_bytes(b"half a sample")
    train(tiny(tmp_path / "run2", data, epochs=1, val_every=0, cache="disk", cache_dir=cache))
    assert not stale.exists() and sample.exists()


def test_another_runs_own_cache_is_refused_as_a_cache_dir(tmp_path: Path, data: dict[str, Path]) -> None:
    """A run drops the samples its own cache/ holds that it does not use each time it starts: a
    second run reading that folder through --cache-dir stopped with a missing file."""
    first = tmp_path / "runs" / "a"
    train(tiny(first, data, epochs=1, val_every=0, cache="disk"))
    for given in (first / "cache", first / "cache" / "64"):
        with pytest.raises(InputError) as refused:
            train(tiny(tmp_path / "runs" / "b", data, epochs=1, val_every=0, cache="disk", cache_dir=given))
        assert refused.value.message == (
            f"--cache-dir {given} is the sample cache of the run {first}, which removes the samples it "
            "does not use each time it starts"
        )
        assert "--cache-dir ~/.cache/pdseg/samples" in (refused.value.hint or "")
    assert not (tmp_path / "runs" / "b").exists()
    # its own cache, named: allowed, as is a folder of its own that runs share
    train(tiny(first, data, epochs=1, val_every=0, cache="disk", cache_dir=first / "cache", overwrite=True))


def test_a_results_file_open_in_another_program_does_not_stop_the_run(
    tmp_path: Path, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows refuses to replace a file a spreadsheet has open: the epoch was lost with the run.
    Now a notice, and the rows are written again when the session ends; still locked then, the
    run stops with the error rather than ending with rows missing in silence."""
    from pdseg_cli.engine import train_loop

    real = train_loop.write_rows
    calls: list[int] = []

    def locked_once(path: Path, rows: list[dict[str, Any]]) -> None:
        calls.append(len(rows))
        if len(calls) == 1:
            raise PermissionError(13, "The process cannot access the file")
        real(path, rows)

    monkeypatch.setattr(train_loop, "write_rows", locked_once)
    notices: list[str] = []

    def on_event(event: Any) -> None:
        if event.kind == "notice":
            notices.append(event.values["message"])

    train(tiny(tmp_path / "run", data, epochs=1, val_dir=None), on_event=on_event)
    assert any("could not be replaced (open in another program?)" in n for n in notices)
    assert calls == [1, 1] and len((tmp_path / "run" / "results.csv").read_text().splitlines()) == 2

    def locked(path: Path, rows: list[dict[str, Any]]) -> None:
        raise PermissionError(13, "The process cannot access the file")

    monkeypatch.setattr(train_loop, "write_rows", locked)
    with pytest.raises(PermissionError):
        train(tiny(tmp_path / "run2", data, epochs=1, val_dir=None))
    assert (tmp_path / "run2" / "last.pt").is_file()  # the epoch itself is saved


# ----------------------------------------------------------------------------------------------
# precision changed on resume: the fp16 gradient scaler


def _session(cfg: TrainConfig, precision: str, events: list[Any]) -> Any:
    """One session as train() runs it, in ``precision`` on the CPU, fp16 too, which train() refuses
    off CUDA: the CPU's autocast and GradScaler compute it (slowly), and the scaler's saving and
    restoring is the same code on every device."""
    from pdseg_cli import runtime
    from pdseg_cli.engine.train_context import RunContext
    from pdseg_cli.engine.train_loop import run_training
    from pdseg_cli.engine.train_rng import isolated_rng

    cpu = torch.device("cpu")
    ctx = RunContext(cfg, runtime.Distributed(), cpu, "cpu", precision, 0, events.append)
    with isolated_rng(cpu):
        return run_training(ctx)


def _notices(events: list[Any]) -> str:
    return " | ".join(e.values["message"] for e in events if e.kind == "notice")


def _scaler(run: Path) -> dict[str, Any]:
    return torch.load(run / "last.pt", weights_only=True)["train_state"]["scaler"]


def test_a_run_resumed_in_fp16_from_another_precision_starts_a_fresh_scaler(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    """A bf16 or fp32 session saves its disabled scaler as {}; an fp16 resume loaded it into an
    enabled one: "RuntimeError: The source state dict is empty", a traceback."""
    run = tmp_path / "run"
    train(tiny(run, data, epochs=1, val_every=0, precision="fp32"))
    assert _scaler(run) == {}
    events: list[Any] = []
    result = _session(TrainConfig.for_resume(run, epochs=2, precision="fp16"), "fp16", events)
    assert result.epochs == 2 and not result.interrupted
    assert "precision fp32 -> fp16 (a fresh fp16 gradient scaler)" in _notices(events)
    assert _scaler(run)["scale"] > 0 and _scaler(run)["_growth_tracker"] == 2  # fresh: this session's steps
    # fp16 resumed in fp16 goes on with the run's scale and its count of steps since it changed
    events = []
    _session(TrainConfig.for_resume(run, epochs=3), "fp16", events)
    assert _scaler(run)["_growth_tracker"] == 4 and "resuming with" not in _notices(events)


def test_an_fp16_run_resumes_in_bf16_or_fp32(tmp_path: Path, data: dict[str, Path]) -> None:
    run = tmp_path / "run"
    _session(tiny(run, data, epochs=1, val_every=0, precision="fp16"), "fp16", [])
    assert _scaler(run)["scale"] > 0
    said = []
    for epochs, precision in ((2, "bf16"), (3, "fp32")):
        events: list[Any] = []
        result = train(
            TrainConfig.for_resume(run, epochs=epochs, precision=precision), on_event=events.append
        )
        assert result.epochs == epochs and not result.interrupted
        assert _scaler(run) == {}  # this session's scaler: disabled
        said.append(_notices(events))
    assert "precision fp16 -> bf16 (the fp16 gradient scaler is set aside)" in said[0]
    assert "precision bf16 -> fp32" in said[1] and "scaler" not in said[1]


# ----------------------------------------------------------------------------------------------
# frozen BatchNorm statistics


def _bn_statistics(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's BatchNorm running statistics (and step counts) in a state dict."""
    kinds = ("running_mean", "running_var", "num_batches_tracked")
    return {k: v for k, v in state.items() if k.startswith("encoder.") and k.endswith(kinds)}


def _bn_affine(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.weight": module.weight.detach().clone()
        for name, module in model.encoder.named_modules()
        if isinstance(module, torch.nn.BatchNorm2d)
    }


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pdseg-tiny checkpoint whose BatchNorm statistics are not the initial 0 and 1 (as trained
    weights' are not), so a step that refits them shows."""
    model = create_model("pdseg-tiny")
    generator = torch.Generator().manual_seed(3)
    for module in model.encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
    return save_checkpoint(model, tmp_path_factory.mktemp("init") / "start.pt", train_size=64)


def test_frozen_batchnorm_keeps_its_statistics_and_trains_its_affine_weights(
    tmp_path: Path, data: dict[str, Path], tiny_init: Path
) -> None:
    start = torch.load(tiny_init, weights_only=True)["state_dict"]
    assert _bn_statistics(start)
    weights_before = _bn_affine(load_model(tiny_init))
    for freeze in (True, False):
        run = tmp_path / f"freeze-{freeze}"
        cfg = tiny(run, data, epochs=1, val_every=0, variant=None, init=tiny_init, batch=2, freeze_bn=freeze)
        train(cfg)
        trained = torch.load(run / "last.pt", weights_only=True)["train_state"]["model"]
        same = all_tensors_equal(_bn_statistics(start), _bn_statistics(trained))
        assert (same == []) == freeze, same
        model = create_model("pdseg-tiny")
        model.load_state_dict(trained)
        moved = [k for k, w in _bn_affine(model).items() if not torch.equal(w, weights_before[k])]
        assert moved, "the affine weights train either way"


def test_train_mode_keeps_frozen_batchnorm_in_eval_mode_after_every_train_call() -> None:
    from pdseg_cli.engine.train_state import train_mode

    model = create_model("pdseg-tiny")
    norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for freeze in (True, False, True):
        model.eval()  # as validation leaves a model
        train_mode(model, model, freeze)
        assert model.training and model.decoder.training
        assert all(m.training != freeze for m in norms)


@pytest.mark.parametrize(
    ("batch", "world", "device", "start", "frozen"),
    [
        (2, 1, "cpu", "init", True),
        (4, 1, "cpu", "backbone", True),
        (5, 1, "cpu", "init", False),
        (2, 1, "cpu", None, False),  # never from random weights
        (3, 2, "cpu", "init", True),  # gloo: each BatchNorm sees its own process's 3
        (3, 2, "cuda", "init", False),  # SyncBatchNorm: 6 over both processes
        (2, 2, "cuda", "init", True),
        (8, 1, "cpu", "init", True),  # 3 images per rank: a batch of 8 is 3
    ],
)
def test_the_default_freezes_small_batches_from_trained_weights(
    tmp_path: Path, batch: int, world: int, device: str, start: str | None, frozen: bool
) -> None:
    from types import SimpleNamespace

    from pdseg_cli import runtime
    from pdseg_cli.engine.train_context import RunContext
    from pdseg_cli.engine.train_state import resolve_freeze_bn

    weights = {"init": {"init": tmp_path / "a.pt"}, "backbone": {"backbone_weights": tmp_path / "b.pt"}}
    cfg = TrainConfig(out=tmp_path / "run", epochs=1, batch=batch, **weights.get(start or "", {}))
    events: list[Any] = []
    env = runtime.Distributed(world, 0, 0)
    ctx = RunContext(cfg, env, torch.device(device), device, "fp32", 0, events.append)
    n = 3 * world if batch == 8 else 64
    plan = SimpleNamespace(batches=dis5k.EpochBatches(n, batch, 0, 0, world))
    assert resolve_freeze_bn(ctx, plan, None) is frozen
    said = [e.values["message"] for e in events if e.kind == "info"]
    assert bool(said) == frozen and all("--no-freeze-bn" in s for s in said)
    # given, the flag wins (from random weights with a note); resumed, the run's own value
    for given in (True, False):
        events.clear()
        ctx = dataclasses.replace(ctx, cfg=dataclasses.replace(cfg, freeze_bn=given))
        assert resolve_freeze_bn(ctx, plan, None) is given
        notes = [e.values["message"] for e in events if e.kind == "notice"]
        assert bool(notes) == (given and start is None)
        assert all("stay at their initial values" in n for n in notes)
        assert resolve_freeze_bn(ctx, plan, {"freeze_bn": not given}) is (not given)
    assert resolve_freeze_bn(ctx, plan, {}) is False  # a state from before the option: trained


def test_freeze_bn_is_recorded_and_kept_on_resume(
    tmp_path: Path, data: dict[str, Path], tiny_init: Path
) -> None:
    run = tmp_path / "run"
    events: list[Any] = []
    train(
        tiny(run, data, epochs=1, val_every=0, variant=None, init=tiny_init, batch=2), on_event=events.append
    )
    assert any(
        "BatchNorm statistics stay those of --init" in e.values["message"] for e in events if e.kind == "info"
    )
    payload = torch.load(run / "last.pt", weights_only=True)
    assert (
        payload["provenance"]["recipe"]["freeze_bn"] is True and payload["train_state"]["freeze_bn"] is True
    )
    record = json.loads((run / "config.json").read_text())
    assert record["resolved"]["freeze_bn"] is True and record["train"]["freeze_bn"] is None  # as given
    start = _bn_statistics(torch.load(tiny_init, weights_only=True)["state_dict"])

    resumed = TrainConfig.for_resume(run, epochs=2)
    assert resumed.freeze_bn is True  # the value the run resolved
    train(resumed)
    trained = torch.load(run / "last.pt", weights_only=True)
    assert all_tensors_equal(start, _bn_statistics(trained["train_state"]["model"])) == []
    assert trained["train_state"]["freeze_bn"] is True
    assert json.loads((run / "config.json").read_text())["resolved"]["freeze_bn"] is True
    with pytest.raises(InputError, match="--freeze-bn -> --no-freeze-bn"):
        train(TrainConfig.for_resume(run, epochs=3, freeze_bn=False))
    train(TrainConfig.for_resume(run, epochs=3, freeze_bn=True))  # the same value: no conflict

    # a run from before the option trained its statistics: it resumes so, and refuses --freeze-bn
    del trained["train_state"]["freeze_bn"]
    del trained["train_state"]["config"]["freeze_bn"]  # its options (the resume's source) had none
    torch.save(trained, run / "last.pt")
    record = json.loads((run / "config.json").read_text())
    del record["resolved"]["freeze_bn"]
    record["train"]["freeze_bn"] = None
    (run / "config.json").write_text(json.dumps(record))
    assert TrainConfig.for_resume(run).freeze_bn is None
    with pytest.raises(InputError, match="--no-freeze-bn -> --freeze-bn"):
        train(TrainConfig.for_resume(run, epochs=4, freeze_bn=True))


def test_one_image_a_step_at_size_32_is_refused_unless_the_statistics_stay_frozen(
    tmp_path: Path, data: dict[str, Path], tiny_init: Path
) -> None:
    # the stride-32 features are 1x1: a training BatchNorm got one value per channel and torch
    # stopped the first step with a traceback
    with pytest.raises(InputError, match="--size 32 with one image per step and process") as info:
        train(tiny(tmp_path / "scratch", data, size=32, batch=1, epochs=1, val_dir=None))
    assert info.value.hint == "use --size 64 or more, or --batch 2 or more"
    # --init's statistics kept (the default at one image a step): it trains
    result = train(tiny(tmp_path / "kept", data, size=32, batch=1, epochs=1, val_dir=None, init=tiny_init))
    assert (tmp_path / "kept" / "last.pt").exists() and result is not None


def test_the_size_follows_init_in_the_api_as_on_the_command_line(
    tmp_path: Path, data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    # TrainConfig(init=...) trained at 1024 where `pdseg train --init` took the file's size: a
    # fine-tune of the bundled weights (512) ran four times slower than the CLI's
    odd = save_checkpoint(create_model("pdseg-tiny"), tmp_path_factory.mktemp("odd") / "w.pt", train_size=90)
    events: list[Any] = []
    cfg = tiny(tmp_path / "run", data, epochs=1, val_every=0, variant=None, init=odd, size=None)
    train(cfg, on_event=events.append)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (stored["variant"], stored["size"]) == ("pdseg-tiny", 96)  # 90: the nearest multiple of 32
    said = [e.values["message"] for e in events if e.kind == "info"]
    assert (
        f"--init {odd} was trained at 90; training at 96, the nearest multiple of 32 (--size chooses another)"
        in said
    )
    # given, the size is the caller's; without init, the recipe's 1024 (not run here: a check is enough)
    train(tiny(tmp_path / "given", data, epochs=1, val_every=0, variant=None, init=odd, size=64))
    assert json.loads((tmp_path / "given" / "config.json").read_text())["train"]["size"] == 64
    assert TrainConfig(out=tmp_path / "x", epochs=1).size is None
