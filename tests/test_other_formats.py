"""Files that are not images pdseg reads, named for what they are, with what to do about them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import flat, run_cli, tiny_checkpoint

from pdseg_cli.data import images as imio
from pdseg_cli.data.header import other_format
from pdseg_cli.errors import InputError
from pdseg_cli.metrics.reading import read_mask_file

HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 1234\n"


@pytest.mark.parametrize(
    ("head", "starts"),
    [
        (HEIC, "a HEIC/HEIF photo, the iPhone's format, which pdseg does not read: convert it to JPEG"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "an AVIF image, which pdseg does not read"),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "a video (MP4/MOV): extract its frames first"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "a JPEG XL image"),
        (b"%PDF-1.7\n%\xe2\xe3", "a PDF document: export its pages as PNG first"),
        (b"8BPS\x00\x01", "a Photoshop document"),
        (LFS, "a Git LFS pointer, not the file itself: fetch the real files with `git lfs pull`"),
        (b"\xef\xbb\xbf\n  <!DOCTYPE html><html>", "a web page (HTML), not an image"),
        (b"<HTML><head>", "a web page (HTML)"),
        (b'<?xml version="1.0"?><svg xmlns=', "an SVG drawing"),
        (b'<?xml version="1.0" encoding="UTF-8"?>\n<!-- Created with Inkscape -->\n\n<svg', "an SVG drawing"),
        (b"<!-- saved from url=(0040)https://example.com/ -->\n<html>", "a web page (HTML)"),
        (b"\x00\x00\x00\x20ftypmif1\x00\x00\x00\x00mif1avifmiaf", "an AVIF image"),
        (
            b'<?xml version="1.0"?><config>',
            "a text file, not an image: it starts '<?xml",
        ),
        (
            b"\x01\x02\x03\x04\x05\x06\x07\x08\x09",
            "not an image: it starts like no format pdseg reads (bytes 01",
        ),
    ],
)
def test_other_formats_are_named_with_the_fix(head: bytes, starts: str) -> None:
    assert other_format(head).startswith(starts)  # type: ignore[union-attr]


def test_formats_pdseg_reads_are_not_other_formats() -> None:
    ok, png = cv2.imencode(".png", np.zeros((4, 4), np.uint8))
    assert ok and other_format(png.tobytes()[:64]) is None
    assert other_format(b"\xff\xd8\xff\xe0") is None and other_format(b"II*\x00") is None


def test_a_heic_named_jpg_is_refused_naming_what_it_is(tmp_path: Path) -> None:
    (tmp_path / "IMG_0001.jpg").write_bytes(HEIC + bytes(200))
    with pytest.raises(InputError, match=r"IMG_0001\.jpg: cannot decode \(a HEIC/HEIF photo") as info:
        imio.read_image(tmp_path / "IMG_0001.jpg")
    assert "heif-convert" in str(info.value)


def test_a_git_lfs_pointer_as_a_gt_is_named(tmp_path: Path) -> None:
    (tmp_path / "gt.png").write_bytes(LFS)
    with pytest.raises(InputError, match=r"gt\.png: cannot decode \(a Git LFS pointer, not the file itself"):
        read_mask_file(tmp_path / "gt.png")


def test_predict_says_how_to_read_heic_photos_it_skips(tmp_path: Path) -> None:
    images = tmp_path / "photos"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.full((40, 48, 3), 90, np.uint8))
    (images / "IMG_0002.HEIC").write_bytes(HEIC)
    weights = tiny_checkpoint(tmp_path / "t.pt", train_size=64)
    result = run_cli("predict", images, "--out", tmp_path / "out", "-w", weights, "-d", "cpu", columns=300)
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "IMG_0002.HEIC; convert HEIC photos to JPEG first (e.g. `heif-convert IMG.heic IMG.jpg`)" in text


def test_eval_names_an_image_that_is_not_one_before_the_model_runs(tmp_path: Path) -> None:
    split = tmp_path / "set"
    (split / "im").mkdir(parents=True)
    (split / "gt").mkdir()
    for stem in ("a", "b"):
        cv2.imwrite(str(split / "gt" / f"{stem}.png"), np.full((16, 20), 255, np.uint8))
    cv2.imwrite(str(split / "im" / "a.jpg"), np.full((16, 20, 3), 90, np.uint8))
    (split / "im" / "b.jpg").write_bytes(LFS)
    weights = tiny_checkpoint(tmp_path / "t.pt", train_size=64)
    result = run_cli("eval", "--split", split, "-w", weights, "-d", "cpu", columns=300)
    text = flat(result.output)
    assert result.exit_code == 2, text
    bad = split / "im" / "b.jpg"
    assert f"set: 1 image in {split / 'im'} cannot be read: {bad}: a Git LFS pointer" in text
    assert "the model has not run yet" in text and "device" not in text  # refused before the model loaded


def test_eval_failures_name_each_file_once_and_group_by_reason() -> None:
    from pdseg_cli.engine.eval_model import grouped_failures

    why = "cannot decode (a text file, not an image: it starts 'junk')"
    failed = {s: (f"im/{s}.jpg", f"im/{s}.jpg: {why}") for s in ("a", "b")}
    assert grouped_failures(failed) == [f"2 images (im/a.jpg, im/b.jpg): {why}"]
    assert grouped_failures({"a": failed["a"]}) == [f"im/a.jpg: {why}"]


def test_a_folder_of_phone_photos_only_says_how_to_convert_them(tmp_path: Path) -> None:
    (tmp_path / "phone").mkdir()
    (tmp_path / "phone" / "IMG_0001.HEIC").write_bytes(HEIC)
    result = run_cli("predict", tmp_path / "phone", "-o", tmp_path / "out", columns=300)
    text = flat(result.output)
    assert result.exit_code == 2 and "no images found" in text
    assert "hint: convert HEIC photos to JPEG first (e.g. `heif-convert IMG.heic IMG.jpg`)" in text
