"""User-error messages that read as plain English and come as pdseg's own red line: a foreign
file in predict's --out, a glob pattern that matches nothing, a misspelt --mode or --format, and a
training folder with bad pairs (refused without leaving a run folder behind)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import flat, make_dataset, run_cli, tiny_checkpoint

WIDE = 1000  # columns: no message wraps, so that it is compared whole


def _refused(result_output: str, exit_code: int) -> str:
    """The output of a run refused the pdseg way (exit 2, no usage box, no traceback), flattened."""
    assert exit_code == 2, result_output
    assert "╭" not in result_output and "Usage:" not in result_output, result_output
    assert "Traceback" not in result_output, result_output
    return flat(result_output)


def _photos(folder: Path, names: tuple[str, ...]) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in names:
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    return folder


def test_a_foreign_file_in_out_is_described_in_plain_english(tmp_path: Path) -> None:
    images = _photos(tmp_path / "images", ("a.jpg", "b.jpg", "c.jpg", "d.jpg"))
    out = tmp_path / "album"
    out.mkdir()
    shutil.copy(images / "a.jpg", out / "a.png")  # a JPEG under a PNG's name
    cv2.imwrite(str(out / "b.png"), np.zeros((4, 4, 3), np.uint8))  # a colour PNG
    cv2.imwrite(str(out / "c.png"), np.zeros((4, 4), np.uint16))  # a 16-bit gray PNG
    (out / "d.png").write_text("not an image")
    result = run_cli("predict", images, "-o", out, "-w", tiny_checkpoint(tmp_path / "m.pt"), columns=WIDE)
    text = _refused(result.output, result.exit_code)
    said = f"error: --out {out} holds 4 files that pdseg would replace and cannot take for its own outputs: "
    assert said in text
    assert f"{out / 'a.png'} (a JPEG, not the 1-channel PNG pdseg writes as a mask)" in text
    assert f"{out / 'b.png'} (an 8-bit PNG with 3 channels; pdseg's mask has 1)" in text
    assert f"{out / 'c.png'} (a 16-bit PNG with 1 channel; pdseg's mask PNG is 8-bit)" in text
    assert f"{out / 'd.png'} (not an image, nor the 1-channel PNG pdseg writes as a mask)" in text
    assert "hint: move them, or choose another --out; pdseg replaces only its own earlier outputs" in text


def test_a_pattern_that_matches_nothing_says_what_the_folder_holds(tmp_path: Path) -> None:
    # the pattern reached pdseg, so the shell left it alone: quoting it again is not the fix
    images = _photos(tmp_path / "images", ("a.jpg", "b.jpg", "c.JPG"))
    (images / "notes.txt").write_text("")
    (images / "sub").mkdir()
    pattern = str(images / "*.jpeg")
    result = run_cli("predict", pattern, "-o", tmp_path / "out", columns=WIDE)
    text = _refused(result.output, result.exit_code)
    assert f"error: no file matches the pattern {pattern!r}" in text
    assert f"hint: the folder {images} holds 3 .jpg files, 1 .txt file and 1 folder" in text
    assert "quote" not in text
    missing = str(tmp_path / "nowhere" / "*.jpg")
    result = run_cli("predict", missing, "-o", tmp_path / "out", columns=WIDE)
    text = _refused(result.output, result.exit_code)
    assert f"hint: the folder {tmp_path / 'nowhere'} does not exist" in text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (
            ["benchmark", "--mode", "comapre", "--size", "64"],
            "error: --mode 'comapre' is not a benchmark mode (choose from optimized, plain, compare)",
            "hint: did you mean --mode compare?",
        ),
        (
            ["benchmark", "--mode", "fastest", "--size", "64"],
            "error: --mode 'fastest' is not a benchmark mode (choose from optimized, plain, compare)",
            "hint: e.g. --mode compare",
        ),
        (
            ["export", "--out", "x.onnx", "--format", "onx"],
            "error: --format 'onx' is not an export format (choose from onnx, torchscript, checkpoint)",
            "hint: did you mean --format onnx?",
        ),
        (
            ["export", "--out", "x.onnx", "-f", "zip"],
            "error: --format 'zip' is not an export format (choose from onnx, torchscript, checkpoint)",
            "hint: leave --format out: --out's extension decides",
        ),
    ],
)
def test_a_misspelt_choice_gets_pdsegs_line_and_a_did_you_mean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str, hint: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli(*args, columns=WIDE)
    text = _refused(result.output, result.exit_code)
    assert f"{message} {hint}" in text
    assert "Value error" not in text and "is not one of" not in text
    assert not (tmp_path / "x.onnx").exists()


def test_refused_training_data_are_named_one_way(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "tr", 4)
    (data / "gt" / "s01.png").unlink()  # an image without a mask
    cv2.imwrite(str(data / "gt" / "s02.png"), np.zeros((32, 48), np.uint8))  # a mask of another size
    (data / "im" / "zz.jpg").write_text("junk")  # not an image, with a mask
    shutil.copy(data / "gt" / "s00.png", data / "gt" / "zz.png")
    args = ["train", "--epochs", "1", "--train", data, "--variant", "pdseg-tiny", "--size", "64",
            "--threads", "1", "--workers", "0", "--device", "cpu", "--val-every", "0"]  # fmt: skip
    result = run_cli(*args, "--out", tmp_path / "runs" / "bad", columns=WIDE)
    text = _refused(result.output, result.exit_code)
    assert f"error: 3 bad image/mask pair(s) in {data.resolve()}: " in text
    assert "im/s01.jpg: no mask gt/s01.png; " in text
    assert "im/s02.jpg is 64x64 but its mask gt/s02.png is 48x32; " in text
    assert "im/zz.jpg: cannot decode" in text
    assert text.count(str(data.resolve())) == 1  # the folder, once; its files relative to it


def test_names_and_metadata_never_reach_the_terminal_as_control_codes(tmp_path: Path) -> None:
    """A file name or a provenance value holding ESC sequences cleared the screen, set the window
    title or made OSC 8 links; they are shown written out instead."""
    from helpers import run_cli, tiny_checkpoint

    from pdseg_cli import load_model, save_checkpoint
    from pdseg_cli.ui import printable

    nasty = "z\x1b[2J\x1b]0;TITLE\x1b\\ [bold]x[/]"
    assert printable(nasty) == "z\\x1b[2J\\x1b]0;TITLE\\x1b\\ [bold]x[/]"
    assert printable("a\tb\nc é") == "a\\tb\\nc é"  # one line, every character seen
    folder = tmp_path / "in"
    folder.mkdir()
    named = folder / "z\x1b[2J\x1b]0;TITLE\x1b\\ [bold]x.png"  # a file name holds no "/"
    named.write_bytes(b"not an image")
    result = run_cli("predict", named, "-o", tmp_path / "out", columns=250)
    assert "\x1b" not in result.output and "\\x1b[2J" in result.output, result.output
    ckpt = tiny_checkpoint(tmp_path / "t.pt")
    model = load_model(ckpt)
    save_checkpoint(model, tmp_path / "n.pt", summary=nasty)
    shown = run_cli("info", tmp_path / "n.pt", columns=250)
    assert shown.exit_code == 0 and "\x1b" not in shown.output and "[bold]x[/]" in shown.output


def test_an_out_on_a_loop_of_links_is_one_line(tmp_path: Path) -> None:
    """Path.resolve() raises RuntimeError on a loop (Python 3.11, 3.12): it was a traceback."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    folder = make_dataset(tmp_path / "set", 1) / "im"
    result = run_cli("predict", folder, "--out", tmp_path / "a" / "x", columns=250)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "loop of symbolic links" in flat(result.output) or "symbolic links" in flat(result.output)


def test_did_you_mean_needs_alike_stems_and_ignores_case(tmp_path: Path) -> None:
    from pdseg_cli.errors import close_sibling

    for name in ("rocket.jpg", "coffee.jpg"):
        (tmp_path / name).write_bytes(b"x")
    assert close_sibling(tmp_path / "nonexist.jpg") is None  # the ".jpg" alone made it alike
    assert close_sibling(tmp_path / "ROCKET.JPG") == tmp_path / "rocket.jpg"
    assert close_sibling(tmp_path / "rockt.jpg") == tmp_path / "rocket.jpg"
    assert close_sibling(tmp_path / "coffee.png") == tmp_path / "coffee.jpg"
