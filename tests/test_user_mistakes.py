"""A newcomer's slips, each answered in pdseg's own words: one error line, a hint with an example
value, exit status 2 (the CLI audit of options carried over from another command, --size, missing
hints and hints that did not fit)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import EXAMPLE_IMAGES, flat, make_dataset, run_cli, seeded_model

from pdseg_cli import runtime
from pdseg_cli.commands import info as info_cmd
from pdseg_cli.config import DEFAULT_VARIANT, VARIANTS
from pdseg_cli.engine.onnx_spec import parse_spec
from pdseg_cli.errors import InputError
from pdseg_cli.model import save_checkpoint


def _refused(*args: str | Path) -> str:
    """The output of a refused ``pdseg args...``: exit 2, pdseg's error and hint lines, no
    traceback nor usage box; flattened (rich's wrapping undone)."""
    result = run_cli(*args, columns=200)
    text = flat(result.output)
    assert result.exit_code == 2, text
    assert "Traceback" not in text and "Usage:" not in text, text
    assert "error:" in text and "hint:" in text, text
    return text


def _photos(tmp_path: Path) -> Path:
    """A folder of images, no im/ nor gt/ (a newcomer's photos)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for src in sorted(EXAMPLE_IMAGES.iterdir())[:2]:
        shutil.copy(src, folder / src.name)
    return folder


# 1 and 2: options carried over from another command


@pytest.mark.parametrize("flag", ["-w", "--weights"])
def test_train_weights_points_to_init_and_resume(flag: str) -> None:
    text = _refused("train", flag, "runs/a/last.pt")
    assert f"error: pdseg train has no {flag} option" in text
    assert "--init FILE" in text and "--resume" in text
    assert "Invalid value for '--workers'" not in text  # -w was once --workers in train
    if flag == "-w":  # and says where workers went, for one who meant them
        assert "--workers N (no short form)" in text


def test_eval_out_points_to_json_csv_and_save_preds() -> None:
    text = _refused("eval", "--out", "scores.json")
    assert "error: pdseg eval has no --out option" in text
    assert "--json FILE" in text and "--csv FILE" in text and "--save-preds DIR" in text
    assert "--tta" not in text


def test_export_size_points_to_check_shape() -> None:
    text = _refused("export", "--size", "1024")
    assert "error: pdseg export has no --size option" in text
    assert "--check-shape 1x3x1024x1024" in text and "dynamic" in text


@pytest.mark.parametrize("flag", ["-w", "--weights"])
def test_info_weights_points_to_its_argument(flag: str) -> None:
    text = _refused("info", flag, "runs/a/last.pt")
    assert f"error: pdseg info has no {flag} option" in text and "pdseg info FILE" in text


def test_benchmark_json_with_a_file_says_it_prints_to_stdout() -> None:
    # predict's and eval's --json take a file; benchmark's is a switch, and the file was an
    # "unexpected extra argument" in click's box
    text = _refused("benchmark", "--json", "bench.json")
    assert "error: pdseg benchmark --json takes no value (got bench.json)" in text
    assert "pdseg benchmark --json > bench.json" in text
    for given in (["--json", "-"], ["--json=bench.json"]):  # predict's stdout spelling, and with "="
        assert "pdseg benchmark --json takes no value" in _refused("benchmark", *given)
    other = run_cli("benchmark", "-s", "64", "stray", columns=200)  # any other extra: click's box
    assert other.exit_code == 2 and "unexpected extra argument" in other.output


def test_an_option_in_capitals_is_named_in_lower_case() -> None:
    text = _refused("predict", "imgs", "--Out", "masks")  # click suggested --out, --quiet, --tta
    assert "error: pdseg predict has no --Out option" in text
    assert "hint: options are lower case: --out" in text


def test_other_unknown_options_keep_clicks_usage_box() -> None:
    result = run_cli("predict", "--bogus", columns=200)
    assert result.exit_code == 2
    assert "No such option: --bogus" in result.output


def test_train_workers_has_no_short_flag() -> None:
    result = run_cli("train", "-h", columns=200)
    line = next(line for line in result.output.splitlines() if "--workers" in line)
    assert "-w" not in line.replace("--workers", "")


# 3: --size, one mistake said one way


def test_train_size_zero_is_not_called_a_multiple_of_32(tmp_path: Path) -> None:
    text = _refused("train", "--epochs", "1", "--size", "0", "--out", tmp_path / "run")
    assert "--size must be at least 32 and a multiple of 32 (the model's total stride), got 0" in text
    assert "hint: e.g. --size 1024" in text


@pytest.mark.parametrize("command", ["train", "info"])
def test_size_full_is_for_predict_and_eval(command: str, tmp_path: Path) -> None:
    extra = ["--epochs", "1", "--out", tmp_path / "run"] if command == "train" else []
    text = _refused(command, *extra, "--size", "full")
    assert f"--size full is for predict and eval only: {command} takes a square side in pixels" in text
    text = _refused(command, *extra, "--size", "abc")
    assert "--size 'abc' is not a whole number" in text and "hint: e.g. --size 1024" in text


def test_predict_size_mistakes_get_hints(tmp_path: Path) -> None:
    out = tmp_path / "masks"
    text = _refused("predict", EXAMPLE_IMAGES, "-o", out, "--size", "0")
    assert "--size 0 is too small: at least 32 (the model's stride)" in text
    assert "hint: e.g. --size 1024" in text
    text = _refused("predict", EXAMPLE_IMAGES, "-o", out, "--size", "512.5")
    assert "--size '512.5' is not a whole number" in text and "neither" not in text
    assert "--size full" in text
    assert not out.exists()


def test_benchmark_refuses_a_side_larger_than_predict_takes() -> None:
    from pdseg_cli.engine.predict import MAX_SIDE

    text = _refused("benchmark", "--size", str(MAX_SIDE + 1), "--runs", "1")
    assert f"--size {MAX_SIDE + 1} is too large: at most {MAX_SIDE}" in text
    assert "median" not in text  # no table was drawn


@pytest.mark.parametrize("command", ["predict", "eval", "benchmark"])
def test_batch_zero_is_one_pdseg_line_as_in_train(command: str, tmp_path: Path) -> None:
    args = {"predict": [EXAMPLE_IMAGES, "-o", tmp_path / "m"], "eval": ["--split", "DIS-VD"], "benchmark": []}
    text = _refused(command, *args[command], "--batch", "0")
    assert "error: --batch must be at least 1, got 0" in text and "hint: e.g. --batch 4" in text


# 4: --resume with --overwrite


def test_resume_and_overwrite_contradict_each_other(tmp_path: Path) -> None:
    text = _refused("train", "--resume", "--overwrite", "--out", tmp_path / "a")
    assert (
        "--resume and --overwrite contradict each other (resume goes on with the run in --out; "
        "overwrite starts it again)"
    ) in text
    assert "drop --overwrite" in text and "drop --resume" in text


# 5: every user mistake has a hint with an example


@pytest.mark.parametrize(
    ("option", "value", "example"),
    [
        ("--epochs", "0", "--epochs 20"),
        ("--epochs", "99999999999", "--epochs 20"),  # an ETA of centuries
        ("--lr", "-1", "--lr 6e-5"),
        ("--cache", "memory", "--cache ram"),
        ("--supervision", "both", "--supervision single"),
        ("--loss", "dice", "--loss structure"),
        ("--workers", "-1", "--workers 2"),
        ("--warmup", "-1", "--warmup 500"),
        ("--clip-grad", "-1", "--clip-grad 5"),
        ("--clip-grad", "inf", "--clip-grad 5"),  # JSON (config, checkpoints) has no infinity
        ("--val-every", "-1", "--val-every 5"),
        ("--ema-decay", "2", "--ema-decay 0.999"),
    ],
)
def test_train_value_errors_have_an_example(option: str, value: str, example: str, tmp_path: Path) -> None:
    args = ["--epochs", "1"] if option != "--epochs" else []
    text = _refused("train", *args, option, value, "--out", tmp_path / "run")
    assert f"error: {option} must" in text
    assert f"hint: e.g. {example}" in text


def test_predict_option_errors_have_hints(tmp_path: Path) -> None:
    text = _refused(
        "predict", EXAMPLE_IMAGES, "-o", tmp_path / "m", "--save", "mask,composite", "--bg", "zzz"
    )
    assert "--bg" in text and "hint: e.g. --bg white" in text
    text = _refused("predict", EXAMPLE_IMAGES, "-o", tmp_path / "m", "-s", "1024")  # benchmark's -s
    assert "--save '1024' is not an output kind" in text and "the working size is --size 1024" in text
    for size, said in (("native", "native"), ("1024x1024", "1024")):  # --size N is NxN
        assert f"--size {said} (no" in _refused("predict", EXAMPLE_IMAGES, "-o", tmp_path / "m", "-s", size)
    a_file = tmp_path / "fake.pt"
    a_file.write_bytes(b"x")
    text = _refused("predict", EXAMPLE_IMAGES, "-o", a_file)
    assert f"--out {a_file} is a file, not a folder" in text and "hint: give a folder" in text
    if Path(os.devnull).exists():  # --out /dev/null: the hint named a folder /dev/null-masks
        text = _refused("predict", EXAMPLE_IMAGES, "-o", os.devnull)
        assert f"--out {os.devnull} is a device or pipe, not a folder" in text, text
        assert "e.g. --out masks" in text and "null-masks" not in text, text


@pytest.mark.skipif(runtime.resolve_device("auto").device.type != "cpu", reason="an accelerator is here")
def test_device_mps_without_mps_has_a_hint(tmp_path: Path) -> None:
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        pytest.skip("this machine has MPS")
    text = _refused("predict", EXAMPLE_IMAGES, "-o", tmp_path / "m", "--device", "mps")
    assert "hint: use --device auto" in text


def test_eval_json_folder_has_a_file_name_hint(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    text = _refused("eval", "--split", "DIS-VD", "--json", folder)
    assert f"hint: e.g. --json {folder / 'scores.json'}" in text
    text = _refused("predict", EXAMPLE_IMAGES, "-o", tmp_path / "m", "--json", folder)
    assert f"hint: e.g. --json {folder / 'run.json'}" in text  # predict's report holds no scores


def test_onnx_spec_errors_have_examples() -> None:
    with pytest.raises(InputError) as bad_size:
        parse_spec("size=abc")
    assert bad_size.value.hint is not None and "size=1024" in bad_size.value.hint
    with pytest.raises(InputError) as typo:
        parse_spec("sise=1024")
    assert typo.value.message == "--onnx-spec: unknown key 'sise'"
    assert typo.value.hint == "did you mean size=1024?"


# 6: hints that fit what the user typed


def test_data_root_that_is_a_file_is_said_of_the_option(tmp_path: Path) -> None:
    a_file = tmp_path / "fake.pt"
    a_file.write_bytes(b"x")
    text = _refused("eval", "--split", "DIS-VD", "--data-root", a_file)
    assert f"--data-root {a_file} is a file, not the DIS5K folder" in text
    assert "pass --data-root" not in text


def test_eval_split_of_plain_photos_says_to_add_gt(tmp_path: Path) -> None:
    photos = _photos(tmp_path)
    text = _refused("eval", "--split", photos)
    assert f"add {photos}/gt/ with one mask per image (<stem>.png)" in text
    assert "expected layout" not in text


def test_teacher_needs_only_im(tmp_path: Path) -> None:
    photos = _photos(tmp_path)
    text = _refused(
        "train",
        "--epochs",
        "1",
        "--teacher",
        tmp_path / "isnet.onnx",
        "--train",
        photos,
        "--out",
        tmp_path / "r",
    )
    assert f"move them into {photos / 'im'}/" in text and "with --teacher the masks are optional" in text


def test_val_that_does_not_exist_names_val(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "set", 2)
    text = _refused("train", "--epochs", "1", "--train", data, "--val", tmp_path / "nothere")
    assert f"error: --val {tmp_path / 'nothere'} does not exist" in text


# 7: copy


def test_a_file_that_is_not_an_image_says_so(tmp_path: Path) -> None:
    a_file = tmp_path / "fake.pt"
    a_file.write_bytes(b"x")
    text = _refused("predict", a_file, "-o", tmp_path / "m")
    assert f"error: {a_file}: .pt is not a kind of image pdseg reads" in text
    assert "pdseg reads" in text and "other files" not in text


def test_one_other_file_is_singular(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    text = _refused("predict", folder, "-o", tmp_path / "m")
    assert "(1 other file skipped)" in text


def test_peak_memory_label_is_no_tautology() -> None:
    _, what = runtime.peak_memory(torch.device("cpu"))
    assert not what.startswith("peak")


def test_info_file_shows_none_for_empty_provenance(tmp_path: Path) -> None:
    path = save_checkpoint(seeded_model(), tmp_path / "last.pt", train_size=64, data=None)
    result = run_cli("info", path, "--size", "64", columns=200)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "provenance: data" in line)
    assert "null" not in row and "none" in row
    assert "0.0 " not in result.output  # GMACs at 64x64 keep their digits


def test_gmacs_keep_three_digits_below_ten() -> None:
    assert info_cmd.gmacs(0.004781) == "0.00478"
    assert info_cmd.gmacs(5.234) == "5.23"
    assert info_cmd.gmacs(127.61) == "127.6"


# 8: help


def test_root_help_says_info_describes_weights_files() -> None:
    result = run_cli("--help", columns=200)
    line = next(line for line in result.output.splitlines() if " info " in line)
    assert "weights file" in line


def test_train_variant_help_names_every_variant() -> None:
    result = run_cli("train", "-h", columns=400)
    text = flat(result.output)
    for name in VARIANTS:
        assert name in text
    assert f"{DEFAULT_VARIANT}, or the --init checkpoint's" in text  # one name, from the config


def test_info_and_train_sizes_have_predicts_upper_limit() -> None:
    for command in ("info", "train"):
        text = _refused(command, "--size", "99999")
        assert "--size 99999 is too large: at most 16384" in text, text


# from a fuzz of every command's options: each of these was a traceback, a crash or a silent loss


def test_torchrun_variables_without_torchrun_are_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")  # leaked from a scheduler
    photos = _photos(tmp_path)
    text = _refused("predict", photos, "-o", tmp_path / "out")
    assert "$MASTER_ADDR and $MASTER_PORT are not set" in text and "unset WORLD_SIZE" in text
    monkeypatch.setenv("WORLD_SIZE", str(2**63))
    assert "inconsistent" in _refused("predict", photos, "-o", tmp_path / "out")


@pytest.mark.parametrize("threads", ["100000", "2147483648"])
def test_absurd_thread_counts_are_refused(tmp_path: Path, threads: str) -> None:
    text = _refused("predict", _photos(tmp_path), "-o", tmp_path / "out", "--threads", threads)
    assert f"--threads {threads} is far more than the" in text


def test_absurd_worker_counts_are_refused_before_any_fork(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "tr", 4)
    args = ["train", "-e", "1", "--variant", "pdseg-tiny", "--train", data, "--out", tmp_path / "r"]
    assert "--workers 2147483648 is more than any machine runs well" in _refused(
        *args, "--workers", "2147483648"
    )


@pytest.mark.parametrize(("name", "says"), [("w.pt", "names a model file"), ("none/x.json", "mkdir -p")])
def test_a_report_path_that_would_replace_weights_or_has_no_folder(
    tmp_path: Path, name: str, says: str
) -> None:
    split = tmp_path / "set"
    (split / "gt").mkdir(parents=True)
    text = _refused("eval", "--split", split, "--pred", split / "gt", "--json", tmp_path / name)
    assert says in text


def test_a_tilde_path_of_no_home_is_one_line(tmp_path: Path) -> None:
    text = _refused("predict", _photos(tmp_path), "--out", "~no-such-user-pdseg/masks")
    assert "names a home folder that cannot be found" in text


def test_no_home_at_all_turns_the_gt_cache_off_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from pdseg_cli.metrics import cache

    for name in (cache.CACHE_ENV, "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    root, note = cache.usable_cache_root()
    assert root is None and note is not None and "no home folder" in note
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as the XDG spec says
    assert cache.cache_root_origin() == "the default"


def test_a_weights_path_that_is_a_pipe_is_not_called_missing(tmp_path: Path) -> None:
    import os

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(tmp_path / "w.pt")
    assert "is not a regular file" in _refused("info", tmp_path / "w.pt")
