"""What `pdseg train` says about the user's own folders: misnamed masks, bad pairs grouped by
reason, folder-layout mistakes, a run folder inside the data, a changed --val on resume, a start
from random weights and a Ctrl-C during setup (pdseg-tiny at 64x64 on the CPU)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
from helpers import flat, make_dataset, run_cli, tiny_checkpoint

from pdseg_cli.data import dis5k
from pdseg_cli.engine import train_state
from pdseg_cli.engine.train import TrainConfig, train
from pdseg_cli.engine.train_folder import read_rows
from pdseg_cli.errors import DataError, InputError, Interrupted


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("train-messages")
    return {
        "train": make_dataset(base / "tr", 8),
        "val": make_dataset(base / "va", 2, seed=1),
        "other_val": make_dataset(base / "va2", 2, seed=2),
    }


TINY_CLI = [
    "train",
    "-e",
    "1",
    "--variant",
    "pdseg-tiny",
    "--size",
    "64",
    "--workers",
    "0",
    "--device",
    "cpu",
]


def tiny(out: Path, train_dir: Any, **kw: Any) -> TrainConfig:
    values: dict[str, Any] = dict(
        epochs=1, variant="pdseg-tiny", size=64, batch=4, workers=0, train_dir=train_dir, lr=1e-3,
        device="cpu", val_every=0,
    )  # fmt: skip
    values.update(kw)
    return TrainConfig(out=out, **values)


def renamed_masks(folder: Path, rename: Any) -> Path:
    """``folder``'s masks renamed by ``rename(stem) -> new stem``."""
    for mask in sorted((folder / "gt").iterdir()):
        mask.rename(mask.with_name(rename(mask.stem) + mask.suffix))
    return folder


def no_decoding(*args: object, **kw: object) -> None:
    raise AssertionError("decoded before the naming mistake was said")


# ----------------------------------------------------------------------------------------------
# 1. masks named otherwise than their images


def test_masks_with_a_suffix_are_named_with_the_fix_not_teacher_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = renamed_masks(make_dataset(Path("L") / "suffix_mask", 6), lambda stem: stem + "_mask")
    monkeypatch.setattr(dis5k, "load_sample", no_decoding)  # said from the names alone
    with pytest.raises(DataError) as info:
        train(tiny(tmp_path / "run", folder))
    message, hint = info.value.message, info.value.hint or ""
    # the folder as it can be opened from here, one example pair and how the names differ
    assert message == (
        "6 masks in L/suffix_mask match no image name, e.g. gt/s00_mask.png beside im/s00.jpg: all add "
        '"_mask" to their images\' names'
    )
    assert hint.startswith("name each mask as its image (gt/s00_mask.png -> gt/s00.png")
    assert "--teacher" not in hint and "have no mask" not in message


def test_masks_that_differ_in_case_only_are_said_so(tmp_path: Path) -> None:
    folder = renamed_masks(make_dataset(tmp_path / "case", 4), str.upper)
    with pytest.raises(DataError) as info:
        train(tiny(tmp_path / "run", folder))
    assert "4 masks in" in info.value.message and "e.g. gt/S00.png beside im/s00.jpg" in info.value.message
    assert "differ from their images' names only in upper or lower case" in info.value.message
    assert "gt/S00.png -> gt/s00.png" in (info.value.hint or "")


def test_a_folder_without_masks_is_named_as_it_can_be_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the example kept only the last two parts of the path (`unl/im/s00.jpg` for L/unl/im/s00.jpg)
    monkeypatch.chdir(tmp_path)
    folder = make_dataset(Path("L") / "unl", 3)
    shutil.rmtree(folder / "gt")
    with pytest.raises(DataError) as info:
        train(tiny(tmp_path / "run", folder))
    assert info.value.message == "3 of 3 training images have no mask (e.g. L/unl/im/s00.jpg)"
    assert "--teacher" in (info.value.hint or "")


def test_a_few_misnamed_masks_among_good_ones_are_one_group_of_their_own(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path / "mixed", 6)
    for stem in ("s01", "s04"):
        (folder / "gt" / f"{stem}.png").rename(folder / "gt" / f"{stem}-gt.png")
    for scan, where in ((lambda: train(tiny(tmp_path / "run", folder)), "train"),
                        (lambda: dis5k.scan_pairs(folder).raise_problems(), "val")):  # fmt: skip
        with pytest.raises(DataError) as info:
            scan()
        message, hint = info.value.message, info.value.hint or ""
        assert message.startswith("2 masks in ") and "match no image name" in message, where
        assert 'e.g. gt/s01-gt.png beside im/s01.jpg: all add "-gt"' in message, where
        # their images are said with them, not again as images without a mask
        assert "no mask" not in message and "--teacher" not in hint, where


def test_one_misnamed_mask_is_said_of_itself(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path / "one", 4)
    (folder / "gt" / "s02.png").rename(folder / "gt" / "s02_label.png")
    with pytest.raises(DataError) as info:
        dis5k.scan_pairs(folder).raise_problems()
    assert info.value.message == (
        f'1 mask in {folder} matches no image name: gt/s02_label.png beside im/s02.jpg adds "_label" to its '
        "image's name"
    )
    assert (
        info.value.hint == "name each mask as its image (gt/s02_label.png -> gt/s02.png, in any image format)"
    )


def test_close_names_find_the_image_each_mask_seems_to_be_for() -> None:
    images = {stem: Path(f"im/{stem}.jpg") for stem in ("cat", "dog_rgb", "Owl", "bee")}
    masks = {stem: Path(f"gt/{stem}.png") for stem in ("mask_cat", "dog", "owl", "bee_label", "fox")}
    found = {stem: (path.stem, how) for stem, (path, how) in dis5k._close_names(masks, images).items()}
    assert found == {
        "mask_cat": ("cat", "mask_+"),
        "dog": ("dog_rgb", "-_rgb"),
        "owl": ("Owl", "case"),
        "bee_label": ("bee", "+_label"),
    }


@pytest.mark.parametrize(
    ("images", "masks"),
    [
        (["dog", "dog_2"], ["dog_mask", "dog_2_mask"]),
        (["a_1", "a_1_1", "a_1_2"], ["a_1_mask", "a_1_1_mask", "a_1_2_mask"]),
        (["photo", "photo (1)"], ["photo_mask", "photo (1)_mask"]),  # a space is a separator too
        (["dog", "dog_2"], ["dog_2_mask"]),  # alone, the longer image name is the closer
    ],
)
def test_a_mask_goes_to_the_longest_image_name_it_starts_with(images: list[str], masks: list[str]) -> None:
    # dog_2_mask went to dog (adding "_2_mask"), the first separator from the left
    found = dis5k._close_names(
        {m: Path(f"gt/{m}.png") for m in masks}, {i: Path(f"im/{i}.jpg") for i in images}
    )
    assert {m: (path.stem, how) for m, (path, how) in found.items()} == {
        m: (m.removesuffix("_mask"), "+_mask") for m in masks
    }


def test_no_image_goes_to_two_masks_and_the_shared_difference_wins() -> None:
    def close(images: list[str], masks: list[str]) -> dict[str, tuple[str, str]]:
        found = dis5k._close_names(
            {m: Path(f"gt/{m}.png") for m in masks}, {i: Path(f"im/{i}.jpg") for i in images}
        )
        return {m: (path.stem, how) for m, (path, how) in found.items()}

    assert close(["cat"], ["cat_mask", "cat_edge"]) == {}  # as close as each other: neither is its mask
    # the other masks add "_mask": so does cat's own
    assert close(["cat", "dog", "owl"], ["cat_edge", "cat_mask", "dog_mask", "owl_mask"]) == {
        "cat_mask": ("cat", "+_mask"), "dog_mask": ("dog", "+_mask"), "owl_mask": ("owl", "+_mask"),
    }  # fmt: skip
    # the masks' common difference outranks a shorter one
    assert close(["x", "y", "z", "z_2"], ["x_2_gt", "y_2_gt", "z_2_gt"])["z_2_gt"] == ("z", "+_2_gt")


def test_masks_of_names_that_start_one_another_are_each_renamed_to_their_own_image(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path / "dogs", 2)
    for old, new in (("s00", "dog"), ("s01", "dog_2")):
        (folder / "im" / f"{old}.jpg").rename(folder / "im" / f"{new}.jpg")
        (folder / "gt" / f"{old}.png").rename(folder / "gt" / f"{new}_mask.png")
    with pytest.raises(DataError) as info:
        dis5k.scan_pairs(folder).raise_problems()
    assert info.value.message == (
        f"2 masks in {folder} match no image name, e.g. gt/dog_2_mask.png beside im/dog_2.jpg: all add "
        '"_mask" to their images\' names'
    )
    assert "gt/dog_2_mask.png -> gt/dog_2.png" in (info.value.hint or "")
    assert "no mask" not in info.value.message  # neither image is said to lack one


def test_two_masks_for_one_image_are_listed_and_the_image_lacks_its_mask(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path / "cat", 1)
    (folder / "gt" / "s00.png").rename(folder / "gt" / "s00_mask.png")
    shutil.copy(folder / "gt" / "s00_mask.png", folder / "gt" / "s00_edge.png")
    scan = dis5k.scan_pairs(folder)
    assert sorted((p.reason, p.path.name, p.partner) for p in scan.problems) == [
        (dis5k.NO_MASK, "s00.jpg", None),
        (dis5k.UNMATCHED, "s00_edge.png", None),
        (dis5k.UNMATCHED, "s00_mask.png", None),
    ]
    with pytest.raises(DataError) as info:
        scan.raise_problems()
    assert "2 masks match no image name: gt/s00_edge.png, gt/s00_mask.png" in info.value.message
    assert "(is it" not in str(scan.problems) and " -> gt/s00.png" not in (info.value.hint or "")


def test_one_misnamed_mask_in_a_group_is_said_without_a_count(tmp_path: Path) -> None:
    # "1 of them add ..."
    folder = make_dataset(tmp_path / "one", 4)
    (folder / "gt" / "s03.png").rename(folder / "gt" / "s03_label.png")
    shutil.copy(folder / "gt" / "s00.png", folder / "gt" / "zzz_old.png")
    with pytest.raises(DataError) as info:
        dis5k.scan_pairs(folder).raise_problems()
    assert info.value.message == (
        f'2 masks in {folder} match no image name, e.g. gt/s03_label.png beside im/s03.jpg adds "_label" to '
        "its image's name"
    )


def test_a_stray_mask_does_not_hide_that_another_folder_needs_a_teacher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    labelled = make_dataset(Path("dsS"), 4)
    shutil.copy(labelled / "gt" / "s00.png", labelled / "gt" / "s00_old.png")  # no image is without a mask
    maskless = make_dataset(Path("dsN"), 2, seed=1)
    shutil.rmtree(maskless / "gt")
    monkeypatch.setattr(dis5k, "load_sample", no_decoding)  # said from the names alone
    with pytest.raises(DataError) as info:
        train(tiny(tmp_path / "run", [labelled, maskless]))
    assert info.value.message == (
        "2 of 6 training images have no mask (e.g. dsN/im/s00.jpg); and 1 mask in dsS matches no image name: "
        "gt/s00_old.png"
    )
    hint = info.value.hint or ""
    assert hint.startswith("pass --teacher MODEL") and "remove the masks without an image" in hint
    assert "gt/s00_old.png -> " not in hint


def test_a_stray_mask_keeps_the_teacher_advice_for_images_without_masks(tmp_path: Path) -> None:
    folder = make_dataset(tmp_path / "half", 4)
    (folder / "gt" / "s03.png").unlink()
    shutil.copy(folder / "gt" / "s00.png", folder / "gt" / "zzz_old.png")
    with pytest.raises(DataError) as info:
        train(tiny(tmp_path / "run", folder))
    message, hint = info.value.message, info.value.hint or ""
    assert (
        "im/s03.jpg: no mask gt/s03.png" in message
        and "1 mask matches no image name: gt/zzz_old.png" in message
    )
    assert "1 of 4 training images have no mask: pass --teacher MODEL" in hint


def test_a_folder_with_some_masks_misnamed_and_one_missing_says_both_fixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = renamed_masks(make_dataset(Path("ds"), 3), lambda stem: stem + "_mask")
    (folder / "gt" / "s02_mask.png").unlink()
    monkeypatch.setattr(dis5k, "load_sample", no_decoding)  # said from the names alone
    with pytest.raises(DataError) as info:
        train(tiny(tmp_path / "run", folder))
    assert info.value.message == (
        "3 bad image/mask pair(s) in ds: 2 masks match no image name, e.g. gt/s00_mask.png beside "
        'im/s00.jpg: all add "_mask" to their images\' names; im/s02.jpg: no mask gt/s02.png'
    )
    hint = info.value.hint or ""
    assert (
        "gt/s00_mask.png -> gt/s00.png" in hint
        and "1 of 3 training images have no mask: pass --teacher" in hint
    )


# ----------------------------------------------------------------------------------------------
# 3. bad pairs grouped by reason


def test_many_masks_with_one_fault_are_one_reason_with_its_fix(tmp_path: Path, data: dict[str, Path]) -> None:
    folder = tmp_path / "zeroone"
    shutil.copytree(data["train"], folder)
    for mask in sorted((folder / "gt").iterdir()):
        cv2.imwrite(str(mask), (cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8))
    with pytest.raises(DataError) as info:
        train(tiny(tmp_path / "run", folder))
    message = info.value.message
    assert message.startswith(f"8 masks in {folder} hold only the values 0 and 1")
    assert message.endswith(
        "gt/s00.png, gt/s01.png, gt/s02.png, gt/s03.png, gt/s04.png, gt/s05.png and 2 more"
    )
    assert message.count("0 and 1") == 1 and len(message) < 250  # said once, not once per file
    assert info.value.hint == "save them as 0/255 (multiply by 255)"


def test_several_faults_each_get_their_fix_and_the_cli_exit_code_stays(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(data["train"], folder)
    for stem in ("s00", "s01"):
        cv2.imwrite(str(folder / "gt" / f"{stem}.png"), np.zeros((32, 48), np.uint8))
    cv2.imwrite(str(folder / "gt" / "s02.png"), np.ones((64, 64), np.uint8))
    (folder / "im" / "s03.jpg").write_bytes((folder / "im" / "s03.jpg").read_bytes()[:200])
    result = run_cli(*TINY_CLI, "--train", folder, "--out", tmp_path / "run", columns=400)
    assert result.exit_code == 2 and "Traceback" not in result.output
    text = flat(result.output)
    assert f"error: 4 bad image/mask pair(s) in {folder}: " in text
    assert "2 masks are not the size of their images: gt/s00.png (48x32 for 64x64), gt/s01.png" in text
    assert "gt/s02.png holds only the values 0 and 1" in text and "im/s03.jpg: " in text
    assert "hint: sizes: resize each mask to its image" in text
    assert "0/1 masks: save them as 0/255 (multiply by 255)" in text
    assert "unreadable files: save them again or remove them" in text


# ----------------------------------------------------------------------------------------------
# 7. folder-layout mistakes


def test_the_im_folder_itself_is_refused_in_one_wording_for_train_and_val(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    train_im = tiny(tmp_path / "run", data["train"] / "im")
    val_im = tiny(tmp_path / "run", data["train"], val_dir=data["val"] / "im", val_every=1)
    for cfg, folder in ((train_im, data["train"]), (val_im, data["val"])):
        with pytest.raises(DataError) as info:
            train(cfg)
        assert info.value.message == f"{folder / 'im'} is the im/ folder of a dataset, not a dataset folder"
        assert info.value.hint == f"pass {folder}, the folder that holds im/ and gt/"


def test_other_layouts_get_the_fix_that_fits_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_dataset(Path("sets") / "setA", 2)
    make_dataset(Path("sets") / "setB", 2)
    renamed = make_dataset(Path("renamed"), 2)
    (renamed / "im").rename(renamed / "images")
    (renamed / "gt").rename(renamed / "masks")
    nested = make_dataset(Path("nested"), 3)
    (nested / "im" / "cats").mkdir()
    for image in sorted((nested / "im").glob("*.jpg")):
        image.rename(nested / "im" / "cats" / image.name)

    def refusal(folder: str, **kw: Any) -> tuple[str, str]:
        with pytest.raises(DataError) as info:
            train(tiny(tmp_path / "run", folder, **kw))
        return info.value.message, info.value.hint or ""

    message, hint = refusal("sets")
    assert message == "dataset folder sets has no im/ subfolder"
    assert hint.endswith("--train sets/setA --train sets/setB")
    message, hint = refusal("renamed")
    assert hint.startswith("rename images/ to im/ and masks/ to gt/")
    upper = make_dataset(Path("upper"), 2)  # DUTS-style GT/: Linux names are case-sensitive
    (upper / "gt").rename(upper / "GT")
    message, hint = refusal("upper")
    assert message == "2 of 2 training images have no mask (e.g. upper/im/s00.jpg)"
    assert hint == (
        "rename upper/GT/ to upper/gt/ (pdseg pairs im/NAME.jpg with gt/NAME.png), or pass --teacher MODEL"
    )
    bare = make_dataset(Path("bare"), 2)  # no masks at all, and no other folder of them
    shutil.rmtree(bare / "gt")
    message, hint = refusal([bare, upper])  # the rename fits one folder only: the other fix stays
    assert hint == (
        "rename upper/GT/ to upper/gt/ (pdseg pairs im/NAME.jpg with gt/NAME.png); for the other folders, "
        "pass --teacher MODEL to learn their targets from a model, or add masks named like them to gt/"
    )
    message, hint = refusal(str(Path("sets") / "setA"), val_dir=upper, val_every=1)
    assert hint.startswith("rename GT/ to gt/")
    message, hint = refusal("nested")
    assert message == "no images in nested/im itself; its subfolders hold them: cats/ (3)"
    assert "move them into im/" in hint
    message, hint = refusal("nonexist")
    assert message == "--train nonexist does not exist" and hint.startswith("check the path")
    assert refusal("nowhere/photos")[1] == "nowhere does not exist either: check the path"
    assert refusal("nestd")[1] == "did you mean --train nested?"
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------
# 8. the run folder inside the data


@pytest.mark.parametrize("where", ["train", "inside-train", "inside-val"])
def test_a_run_folder_in_the_data_is_refused_before_anything_is_written(tmp_path: Path, where: str) -> None:
    folder = make_dataset(tmp_path / "photos", 4)
    val = make_dataset(tmp_path / "test", 2, seed=1)
    out = {"train": folder, "inside-train": folder / "runs" / "a", "inside-val": val / "run"}[where]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(InputError) as info:
        train(tiny(out, folder, val_dir=val, val_every=1))
    option = "--val" if where == "inside-val" else "--train"
    assert f"--out {out} is" in info.value.message and f"the {option} folder" in info.value.message
    assert info.value.hint == "choose a run folder outside the data, e.g. --out runs/NAME"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# ----------------------------------------------------------------------------------------------
# 2. --val on resume (and settings shown as typed)


def test_resume_refuses_another_val_folder_and_shows_settings_as_typed(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    out = tmp_path / "run"
    train(tiny(out, data["train"], val_dir=data["val"], val_every=1))
    with pytest.raises(InputError) as info:
        train(TrainConfig.for_resume(out, epochs=2, val_dir=data["other_val"]))
    assert f"--val {data['val']} -> {data['other_val']}" in info.value.message
    assert "leave those options out" in (info.value.hint or "")
    with pytest.raises(InputError) as info:
        train(TrainConfig.for_resume(out, epochs=2, augment=False, variant="pdseg-t"))
    assert "--variant pdseg-tiny -> pdseg-t; --augment -> --no-augment" in info.value.message
    # a finished run is refused alike by the CLI (it says "nothing to train" otherwise)
    finished = run_cli("train", "--resume", "--out", out, "--val", data["other_val"], columns=400)
    assert finished.exit_code == 2 and f"--val {data['val']} -> {data['other_val']}" in flat(finished.output)
    same = train(TrainConfig.for_resume(out, epochs=2, val_dir=data["val"], workers=0))
    assert same.epochs == 2 and same.best is not None


def test_val_added_on_resume_says_where_best_pt_starts(tmp_path: Path, data: dict[str, Path]) -> None:
    out = tmp_path / "run"
    train(tiny(out, data["train"], val_dir=None, val_every=1))
    assert not (out / "best.pt").exists()
    events: list[Any] = []
    result = train(TrainConfig.for_resume(out, epochs=2, val_dir=data["val"]), events.append)
    notices = [e.values["message"] for e in events if e.kind == "notice"]
    assert any("the run has not validated before, so best.pt is chosen among the epochs from 2 on" in m
               for m in notices), notices  # fmt: skip
    assert result.best_epoch == 2 and result.best is not None
    # from now on the run has a validation folder: another one is refused
    with pytest.raises(InputError, match="--val .* -> "):
        train(TrainConfig.for_resume(out, epochs=3, val_dir=data["other_val"]))
    assert json.loads((out / "config.json").read_text())["resolved"]["val_dir"] == str(data["val"].resolve())


def test_a_python_resume_takes_the_runs_own_settings(tmp_path: Path, data: dict[str, Path]) -> None:
    """TrainConfig(out, epochs, resume=True), as the README's API shows a run: its defaults were
    compared with the run's settings ("--variant pdseg-tiny -> pdseg-b; --size 64 -> 1024"), and
    the hint said to leave out options a dataclass cannot leave out."""
    out = tmp_path / "run"
    train(tiny(out, data["train"]))
    start = tmp_path / "start.pt"
    start.write_bytes((out / "last.pt").read_bytes())
    result = train(TrainConfig(out=out, epochs=2, resume=True, init=start))  # init: ignored on resume
    assert result.epochs == 2 and len(read_rows(out / "results.csv")) == 2
    with pytest.raises(InputError, match="--size 64 -> 96"):  # a field given is still a change
        train(TrainConfig(out=out, epochs=3, resume=True, size=96))
    # for_resume is exact: a value given equal to the default is a change too (val_every 0 -> 1)
    assert TrainConfig.for_resume(out, val_every=1).val_every == 1
    assert TrainConfig(out=out, epochs=3, resume=True, val_every=1).resumed().val_every == 0
    kept = dataclasses.replace(TrainConfig.for_resume(out), val_every=1, epochs=3)  # still exact
    assert kept.from_record and kept.val_every == 1
    assert "from_record" not in json.loads((out / "config.json").read_text())["train"]


def test_a_run_that_never_validated_may_gain_val_on_resume(tmp_path: Path, data: dict[str, Path]) -> None:
    # --val dsV --val-every 0 stored dsV, but never validated on it: --val dsW was refused
    def notices(out: Path, epochs: int, **kw: Any) -> list[str]:
        events: list[Any] = []
        train(TrainConfig.for_resume(out, epochs=epochs, **kw), events.append)
        return [e.values["message"] for e in events if e.kind == "notice"]

    start = "the run has not validated before, so best.pt is chosen among the epochs from 2 on"
    other = tmp_path / "other"
    train(tiny(other, data["train"], val_dir=data["val"], val_every=0))
    assert json.loads((other / "config.json").read_text())["resolved"]["val_dir"] is None
    assert any(start in m for m in notices(other, 2, val_dir=data["other_val"], val_every=1))
    assert (other / "best.pt").is_file()
    same = tmp_path / "same"  # the same dsV, now validating
    train(tiny(same, data["train"], val_dir=data["val"], val_every=0))
    assert any(start in m for m in notices(same, 2, val_every=1))
    # a run that validated once keeps its folder, whatever a later session did
    paused = tmp_path / "paused"
    train(tiny(paused, data["train"], val_dir=data["val"], val_every=1))
    notices(paused, 2, val_every=0)
    with pytest.raises(InputError, match=f"--val {data['val']} -> {data['other_val']}"):
        train(TrainConfig.for_resume(paused, epochs=3, val_dir=data["other_val"], val_every=1))


def test_the_no_val_notice_comes_once_per_run_and_after_the_data_checks(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    # it came on every resume of a run without --val, and before a refusal of the data
    said = "no --val folder given: training runs without validation and writes no best.pt"

    def notices(config: TrainConfig) -> list[str]:
        events: list[Any] = []
        train(config, events.append)
        return [e.values["message"] for e in events if e.kind == "notice"]

    run = tmp_path / "run"
    assert said in notices(tiny(run, data["train"], val_every=1))
    assert said not in notices(TrainConfig.for_resume(run, epochs=2))
    empty = tmp_path / "empty"
    (empty / "im").mkdir(parents=True)
    (empty / "gt").mkdir()
    events: list[Any] = []
    with pytest.raises(DataError):
        train(tiny(tmp_path / "refused", empty, val_every=1), events.append)
    assert not [e for e in events if e.kind == "notice"]


# ----------------------------------------------------------------------------------------------
# 4. random weights on a small folder


def test_a_small_folder_from_random_weights_names_the_bundled_checkpoint(
    tmp_path: Path, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[Any] = []
    train(tiny(tmp_path / "a", data["train"]), events.append)
    infos = [e.values["message"] for e in events if e.kind == "info"]
    [line] = [m for m in infos if "from random weights" in m]
    assert line.startswith("pdseg-tiny from random weights: to fine-tune the bundled model, pass --init ")
    # the bundled model is a pdseg-t: with --variant pdseg-tiny kept, --init would be refused
    assert line.endswith("pdseg-t-distilled.pt (a pdseg-t; drop --variant pdseg-tiny)")
    monkeypatch.setattr(train_state, "SMALL_TRAINING_SET", 8)  # as large a set as DIS5K is: deliberate
    events.clear()
    train(tiny(tmp_path / "b", data["train"]), events.append)
    assert not any("random weights" in str(e.values) for e in events)


def test_the_random_weights_line_fits_the_variant_and_is_not_said_when_distilling(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    said: list[str] = []

    def line(variant: str | None) -> str:
        said.clear()
        ctx = SimpleNamespace(
            cfg=tiny(tmp_path / "x", data["train"], variant=variant),
            emit=lambda kind, values: said.append(values["message"]),
        )
        train_state._say_random_start(ctx, 8)  # type: ignore[arg-type]
        [message] = said
        return message

    assert line("pdseg-t").endswith("pdseg-t-distilled.pt")  # the bundled model's own variant
    assert line(None).endswith("pdseg-t-distilled.pt (a pdseg-t)")  # pdseg-b, the default: --init changes it
    events: list[Any] = []
    teacher = tiny_checkpoint(tmp_path / "teacher.pt", train_size=64)
    train(
        tiny(tmp_path / "run", data["train"], teacher=teacher, teacher_cache=tmp_path / "tc"), events.append
    )
    assert not any("random weights" in str(e.values) for e in events)


# ----------------------------------------------------------------------------------------------
# 11. Ctrl-C during setup


def test_a_ctrl_c_during_setup_says_what_was_kept_and_a_rerun_starts(
    tmp_path: Path, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    real = dis5k.prepare_samples

    def decode_then_stop(*args: Any, **kw: Any) -> Any:
        real(*args, **kw)  # the samples reach the cache, as in the first seconds of a real run
        raise KeyboardInterrupt

    monkeypatch.setattr(dis5k, "prepare_samples", decode_then_stop)
    with pytest.raises(Interrupted) as info:
        train(tiny(out, data["train"]))
    # what the hint says is kept is what --resume then finds, and reuses
    assert info.value.hint == (
        f"no training step ran (the samples decoded so far are kept in {out / 'cache'}): the same command "
        "starts the run again"
    )
    assert sorted(p.name for p in out.iterdir()) == ["cache"]
    cli = run_cli(*TINY_CLI, "--val-every", "0", "--train", data["train"], "--out", out, columns=400)
    assert cli.exit_code == 130 and "Traceback" not in cli.output
    assert "error: interrupted" in cli.output and "hint: no training step ran" in flat(cli.output)
    monkeypatch.undo()
    resume = run_cli("train", "--resume", "--out", out, columns=400)
    assert resume.exit_code == 2
    assert f"nothing to resume in {out}: the run there never started" in flat(resume.output)
    assert "hint: run the same command without --resume to start it" in flat(resume.output)
    done = train(tiny(out, data["train"]))  # the plain rerun takes the folder with its cache
    assert done.epochs == 1 and (out / "last.pt").is_file()


@pytest.mark.parametrize("existed", [False, True])
def test_a_ctrl_c_during_setup_without_a_cache_leaves_no_folder_it_made(
    tmp_path: Path, data: dict[str, Path], monkeypatch: pytest.MonkeyPatch, existed: bool
) -> None:
    out = tmp_path / "runs" / "a"
    if existed:  # the user's own (empty) folder stays
        out.mkdir(parents=True)

    def stop(*args: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(dis5k, "prepare_samples", stop)
    with pytest.raises(Interrupted) as info:
        train(tiny(out, data["train"], cache="off"))
    assert (
        info.value.hint == "nothing was saved (no training step ran): the same command starts the run again"
    )
    assert out.is_dir() == existed and (tmp_path / "runs").is_dir() == existed


def test_export_will_not_replace_a_runs_resumable_last_pt(tmp_path: Path) -> None:
    # `pdseg export -w runs/x/best.pt --out runs/x/last.pt` wrote weights over the training state
    from pdseg_cli import export_checkpoint

    run = tmp_path / "run"
    train(tiny(run, make_dataset(tmp_path / "set", 4, size=64)))
    before = (run / "last.pt").read_bytes()
    weights = tiny_checkpoint(tmp_path / "w.pt", train_size=64)
    with pytest.raises(InputError, match="holds a training run's state") as info:
        export_checkpoint(weights, run / "last.pt")
    assert "last-weights.pt" in (info.value.hint or "")
    assert (run / "last.pt").read_bytes() == before


def test_an_interrupted_setup_removes_only_empty_folders_deepest_first(tmp_path: Path) -> None:
    # a/b was created by the run, a/b/cache holds decoded samples, a/b/c (the run folder) is empty
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "cache").mkdir()
    (tmp_path / "a" / "b" / "cache" / "s.npz").write_bytes(b"x")
    train_state._remove_if_empty(tmp_path / "a" / "b")
    assert not (tmp_path / "a" / "b" / "c").exists()
    assert (tmp_path / "a" / "b" / "cache" / "s.npz").is_file()


def test_a_mask_turned_by_90_degrees_names_the_exif_orientation(tmp_path: Path) -> None:
    """A photo whose EXIF orientation OpenCV applies, with a mask drawn on the stored pixels, was
    told to resize the mask to its image: the fix is turning one of them."""
    from pdseg_cli.data import dis5k

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((48, 64, 3), np.uint8))  # 64 wide, 48 high
    cv2.imwrite(str(tmp_path / "a_gt.png"), np.zeros((64, 48), np.uint8))  # 48 wide, 64 high
    with pytest.raises(dis5k.PairError) as info:
        dis5k.load_sample(dis5k.Pair("a", tmp_path / "a.png", tmp_path / "a_gt.png"), 32)
    assert info.value.reason == dis5k.TURNED
    assert "EXIF orientation" in dis5k._REASONS[dis5k.TURNED].fix


def test_problems_of_the_val_folder_say_it_is_the_val_folder(tmp_path: Path, data: dict[str, Path]) -> None:
    # "no images in x/im" or "2 masks in x hold only 0 and 1" read as a training problem
    empty = tmp_path / "empty"
    (empty / "im").mkdir(parents=True)
    (empty / "gt").mkdir()
    with pytest.raises(DataError) as info:
        train(tiny(tmp_path / "run", data["train"], val_dir=empty, val_every=1))
    assert info.value.message.startswith("--val: no images in ")
    assert str(info.value).startswith("--val: ")


def test_what_the_image_readers_warn_of_is_said_before_training(tmp_path: Path) -> None:
    # a scanner's 12-bit data in a 16-bit file trains as a nearly black image: predict warns of it,
    # and training said nothing
    folder = make_dataset(tmp_path / "set", 7)
    rng = np.random.default_rng(3)
    for i in range(6):
        (folder / "im" / f"s{i:02d}.jpg").unlink()
        cv2.imwrite(str(folder / "im" / f"s{i:02d}.png"), rng.integers(0, 4096, (64, 64, 3), dtype=np.uint16))
    result = run_cli(*TINY_CLI, "--val-every", "0", "--train", folder, "--out", tmp_path / "run", columns=300)
    assert result.exit_code == 0, result.output
    said = flat(result.output)
    assert said.count("of 65535 (12-bit data") == 5  # five named, the sixth counted
    assert "s00.png" in said and "and 1 more warnings of the images read before training" in said
    assert "s06.jpg" not in said
    # again by a run that finds the samples in the cache (kept beside them), not only the first
    assert len(list((tmp_path / "run").rglob("*.warnings.txt"))) == 6
    args = [*TINY_CLI, "--val-every", "0", "--train", folder, "--out", tmp_path / "run", "--overwrite"]
    again = run_cli(*args, columns=300)
    assert again.exit_code == 0, again.output
    assert flat(again.output).count("of 65535 (12-bit data") == 5
