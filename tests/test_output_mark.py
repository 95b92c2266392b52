"""pdseg marks the files it writes, and takes only a marked file in ``--out`` for its earlier output.

A user's file of an output's layout (a GT mask is an 8-bit gray PNG, as pdseg's mask is) is
refused, not replaced, with or without ``--skip-existing``; pdseg's own outputs are replaced on a
rerun. Also here: ``-r`` follows links to folders (each folder once), and the hint of a folder
whose only images are hidden. Tiny images, pdseg-tiny on the CPU.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from helpers import flat, no_space, png_chunks, run_cli, textured_image, write_output_png

from pdseg_cli import __version__
from pdseg_cli.data import header
from pdseg_cli.data import images as imio
from pdseg_cli.engine.predict_plan import collect_inputs, not_an_output, walk_folder

MARK = f"pdseg {__version__}"


def _predict(*args: str | Path) -> object:
    return run_cli("predict", *args)


def _profile(size: int = 600) -> bytes:
    """A made-up RGB ICC profile: a header that passes the reader's checks, then random bytes."""
    head = bytearray(132)
    head[0:4] = struct.pack(">I", size)
    head[12:20] = b"mntrRGB "
    head[20:24] = b"XYZ "
    head[36:40] = b"acsp"
    head[68:80] = bytes.fromhex("0000f6d6000100000000d32d")  # the D50 illuminant libpng checks for
    return bytes(head) + np.random.default_rng(size).integers(0, 256, size - 132, dtype=np.uint8).tobytes()


# ------------------------------------------------------------------------------ the mark itself


def test_the_mark_round_trips_in_png_and_tiff(tmp_path: Path) -> None:
    gray = textured_image()[..., 0]
    imio.write_png(tmp_path / "m.png", gray, software=header.OUTPUT_MARK)
    imio.write_png(tmp_path / "u.png", gray)
    imio.write_tiff(tmp_path / "m.tif", textured_image(dtype=np.uint16), software=header.OUTPUT_MARK)
    imio.write_tiff(tmp_path / "u.tif", textured_image(dtype=np.uint16))  # tifffile names itself there
    assert header.OUTPUT_MARK == MARK
    assert header.carries_output_mark(tmp_path / "m.png") and header.carries_output_mark(tmp_path / "m.tif")
    assert not header.carries_output_mark(tmp_path / "u.png") and not header.carries_output_mark(
        tmp_path / "u.tif"
    )
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        assert tif.pages[0].software == MARK  # as other readers see it
    # the tEXt chunk right after IHDR, its CRC right
    chunks = png_chunks((tmp_path / "m.png").read_bytes())
    assert [name for name, _ in chunks][:2] == [b"IHDR", b"tEXt"]
    assert chunks[1][1] == b"Software\x00" + MARK.encode()
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED), gray)
    # another program's Software text is not pdseg's mark
    other = imio.png_with_chunk(imio.encode_png(gray), b"tEXt", b"Software\x00GIMP 2.10")
    (tmp_path / "gimp.png").write_bytes(other)
    assert not header.carries_output_mark(tmp_path / "gimp.png")
    imio.write_tiff(tmp_path / "gimp.tif", textured_image(dtype=np.uint16), software="GIMP 2.10")
    assert not header.carries_output_mark(tmp_path / "gimp.tif")


def test_an_icc_profile_and_the_mark_coexist(tmp_path: Path) -> None:
    rgba = np.dstack([textured_image(), np.full((24, 32), 200, np.uint8)])
    profile = _profile()
    png = imio.encode_png(rgba, icc_profile=profile, software=MARK)
    path = tmp_path / "a.png"
    path.write_bytes(png)
    chunks = png_chunks(png)
    names = [name for name, _ in chunks]
    assert names[:3] == [b"IHDR", b"tEXt", b"iCCP"] and names.count(b"iCCP") == 1
    assert header.carries_output_mark(path)
    assert header.header_extras(path, header.read_head(path)).icc_profile == profile
    # decoded by OpenCV, and by hand: the joined IDAT inflates to the filtered rows' exact size
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded[..., [2, 1, 0, 3]], rgba)
    raw = zlib.decompress(b"".join(data for name, data in chunks if name == b"IDAT"))
    assert len(raw) == 24 * (1 + 32 * 4)
    # what the reader keeps: the colours and the profile
    loaded = imio.read_image(path)
    np.testing.assert_array_equal(loaded.pixels, rgba[..., :3])
    assert loaded.icc_profile == profile


def test_damaged_files_read_as_unmarked_without_raising(tmp_path: Path) -> None:
    png = imio.encode_png(textured_image()[..., 0], software=MARK)
    mark_end = 33 + 12 + len(b"Software\x00" + MARK.encode())  # IHDR, then the whole tEXt chunk
    path = tmp_path / "cut.png"
    for cut in range(len(png)):
        path.write_bytes(png[:cut])
        assert header.carries_output_mark(path) == (cut >= mark_end), cut
        assert header.layout_and_mark(path, header.read_head(path))[1] == (cut >= mark_end), cut
        # unmarked: said what it is (or that it is no image); marked, though cut short: pdseg's own
        assert (not_an_output(path, "mask") is None) == (cut >= mark_end), cut
    # a chunk length past any real one, or a length the tEXt chunk's CRC does not match
    path.write_bytes(png[:33] + b"\xff\xff\xff\xfftEXt" + png[41:])
    assert not header.carries_output_mark(path)
    path.write_bytes(png[:33] + b"\x7f\xff\xff\xfftEXt" + png[41:])
    assert not header.carries_output_mark(path)

    imio.write_tiff(tmp_path / "ok.tif", textured_image(dtype=np.uint16), software=MARK)
    tiff = (tmp_path / "ok.tif").read_bytes()
    bad = tmp_path / "bad.tif"
    for cut in (0, 4, 8, 12, 30, 60, 100):
        bad.write_bytes(tiff[:cut])
        assert not header.carries_output_mark(bad), cut
        assert not header.layout_and_mark(bad, header.read_head(bad))[1], cut
        assert not_an_output(bad, "alpha") is not None, cut
        assert header.sample_layout(bad) is None or cut > 8
    order = "<" if tiff[:2] == b"II" else ">"
    for first_ifd in (len(tiff) + 10, 2**32 - 1):  # the first directory past the end
        bad.write_bytes(tiff[:4] + struct.pack(order + "I", first_ifd) + tiff[8:])
        assert not header.carries_output_mark(bad) and header.sample_layout(bad) is None
    # the Software tag's value pointing past the end of the file
    ifd = struct.unpack(order + "I", tiff[4:8])[0]
    (entries,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    data = bytearray(tiff)
    for i in range(entries):
        at = ifd + 2 + 12 * i
        if struct.unpack(order + "H", data[at : at + 2])[0] == 305:
            data[at + 8 : at + 12] = struct.pack(order + "I", len(tiff) + 1000)
    bad.write_bytes(bytes(data))
    assert not header.carries_output_mark(bad)
    (tmp_path / "missing.png").unlink(missing_ok=True)
    assert not header.carries_output_mark(tmp_path / "missing.png")


# ------------------------------------------------------------------------------ --out


def _gt_folder(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """im/cat.jpg and a GT mask gt/cat.png (8-bit gray, as pdseg's mask), and the GT's bytes."""
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    cv2.imwrite(str(tmp_path / "im" / "cat.jpg"), textured_image())
    gt = np.zeros((24, 32), np.uint8)
    gt[6:18, 8:24] = 255
    cv2.imwrite(str(tmp_path / "gt" / "cat.png"), gt)
    return tmp_path / "im", tmp_path / "gt", (tmp_path / "gt" / "cat.png").read_bytes()


@pytest.mark.parametrize("skip", [False, True])
def test_a_gt_mask_in_out_is_refused_not_replaced(tmp_path: Path, spread_tiny_ckpt: Path, skip: bool) -> None:
    images, gts, before = _gt_folder(tmp_path)
    result = _predict(images, "--out", gts, "-w", spread_tiny_ckpt, *(["--skip-existing"] if skip else []))
    assert result.exit_code == 2, result.output
    text = no_space(result.output)  # a long path wraps anywhere
    said = f"--out {gts} holds 1 file that pdseg would replace and cannot take for its own outputs: "
    said += f"{gts / 'cat.png'} "
    assert no_space(said + '(an 8-bit gray PNG without the "Software: pdseg" mark') in text
    assert no_space("outputs of a pdseg that marked none: delete them") in text  # the way on
    assert (gts / "cat.png").read_bytes() == before and "Traceback" not in result.output
    assert sorted(p.name for p in gts.iterdir()) == ["cat.png"]  # nothing written beside it


def test_a_rerun_replaces_its_own_outputs(tmp_path: Path, spread_tiny_ckpt: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.jpg"), textured_image())
    tifffile.imwrite(src / "b.tif", textured_image(seed=1, dtype=np.uint16), photometric="rgb")  # 16-bit
    out = tmp_path / "out"
    save = "mask,alpha,composite"
    first = _predict(
        src, "--out", out, "-w", spread_tiny_ckpt, "--save", save, "--threshold", "0.5", "--bg", "255,0,0"
    )
    assert first.exit_code == 0, first.output
    names = ["a.png", "a_alpha.png", "a_composite.png", "b.png", "b_alpha.tif", "b_composite.tif"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name in names:
        assert header.carries_output_mark(out / name), name
        kind = "alpha" if "_alpha" in name else "composite" if "_composite" in name else "mask"
        assert not_an_output(out / name, kind) is None, name
    assert header.sample_layout(out / "b_alpha.tif") == ("TIFF", 4, 16)
    before = {name: (out / name).read_bytes() for name in names}
    # --skip-existing with the same options takes them for done: none is written again
    same = ["--save", save, "--threshold", "0.5", "--bg", "255,0,0", "--skip-existing"]
    result = _predict(src, "--out", out, "-w", spread_tiny_ckpt, *same)
    assert result.exit_code == 0, result.output
    assert all((out / name).read_bytes() == before[name] for name in names)
    # without it, a soft map on another background replaces every one of them
    second = _predict(src, "--out", out, "-w", spread_tiny_ckpt, "--save", save, "--bg", "0,0,255")
    assert second.exit_code == 0, second.output
    for name in names:
        assert (out / name).read_bytes() != before[name], name
        assert header.carries_output_mark(out / name), name


def test_the_mark_names_the_input_by_a_hash_of_its_path_and_of_its_content(tmp_path: Path) -> None:
    photo = tmp_path / "cards" / "IMG_0001.JPG"
    assert header.output_mark(photo) == f"{MARK} (input {header.source_id(photo)})"  # unreadable: path only
    photo.parent.mkdir()
    photo.write_bytes(bytes(range(256)) * 1000)
    mark = header.output_mark(photo)
    content = header.content_id(photo)
    assert content is not None and len(content) == 16
    assert mark == f"{MARK} (input {header.source_id(photo)} {content})" and str(tmp_path) not in mark
    assert header.source_id(tmp_path / "cards" / ".." / "cards" / "IMG_0001.JPG") == header.source_id(photo)
    assert header.source_id(tmp_path / "other" / "IMG_0001.JPG") != header.source_id(photo)
    middle = bytearray(photo.read_bytes())
    middle[100_000] ^= 1  # one bit away from the start and the end, as two uncompressed scans differ
    (tmp_path / "edited.JPG").write_bytes(middle)
    (tmp_path / "small.JPG").write_bytes(b"tiny")
    assert header.content_id(tmp_path / "edited.JPG") not in (None, content)
    assert header.content_id(tmp_path / "small.JPG") not in (None, content)
    gray = textured_image()[..., 0]
    imio.write_png(tmp_path / "m.png", gray, software=mark)
    imio.write_tiff(tmp_path / "m.tif", textured_image(dtype=np.uint16), software=mark)
    imio.write_png(tmp_path / "old.png", gray, software=MARK)  # an earlier pdseg's mark: no input
    pathonly = f"{MARK} (input {header.source_id(photo)})"  # a mark of 2026-12-06: no content
    imio.write_png(tmp_path / "p.png", gray, software=pathonly)
    for name in ("m.png", "m.tif"):
        assert header.marked_source(tmp_path / name) == header.MarkedSource(header.source_id(photo), content)
        assert header.carries_output_mark(tmp_path / name), name
    assert header.marked_source(tmp_path / "p.png") == header.MarkedSource(header.source_id(photo), None)
    assert header.marked_source(tmp_path / "old.png") is None
    png = (tmp_path / "m.png").read_bytes()
    for cut in (0, 20, 40, 60):  # cut short: no input, and no error
        (tmp_path / "cut.png").write_bytes(png[:cut])
        assert header.marked_source(tmp_path / "cut.png") is None, cut


@pytest.mark.parametrize("skip", [False, True])
def test_outputs_of_another_input_of_the_same_name_are_kept(
    tmp_path: Path, spread_tiny_ckpt: Path, skip: bool
) -> None:
    # IMG_0001.JPG of one card, then of the next, into one --out: the second run would replace the
    # first card's mask in silence, or with --skip-existing take it for its own and segment nothing
    cards = [tmp_path / "card1", tmp_path / "card2"]
    for seed, card in enumerate(cards):
        card.mkdir()
        cv2.imwrite(str(card / "IMG_0001.JPG"), textured_image(seed=seed))
        cv2.imwrite(str(card / f"IMG_000{seed + 2}.JPG"), textured_image(seed=seed + 5))
    out = tmp_path / "masks"
    first = _predict(cards[0], "--out", out, "-w", spread_tiny_ckpt)
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    second = _predict(cards[1], "--out", out, "-w", spread_tiny_ckpt, *(["--skip-existing"] if skip else []))
    assert second.exit_code == 2, second.output
    what = "take as done" if skip else "replace"
    said = (
        f"--out {out} holds 1 output of another input of the same name, which this run would {what}: "
        f"{out / 'IMG_0001.png'} (made from another input than {cards[1] / 'IMG_0001.JPG'})"
    )
    assert no_space(said) in no_space(second.output) and "Traceback" not in second.output
    assert no_space("give these inputs an --out of their own, or delete those outputs") in no_space(
        second.output
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written
    # the first card again replaces its own outputs; the second card into its own --out works
    assert _predict(cards[0], "--out", out, "-w", spread_tiny_ckpt, "--bg", "0,0,255").exit_code == 0
    assert _predict(cards[1], "--out", tmp_path / "masks2", "-w", spread_tiny_ckpt).exit_code == 0
    # an earlier pdseg's output (its mark names no input) is replaced as before
    write_output_png(out / "IMG_0001.png", np.zeros((24, 32), np.uint8))
    third = _predict(cards[1], "--out", out, "-w", spread_tiny_ckpt)
    assert third.exit_code == 0, third.output
    assert header.marked_source(out / "IMG_0001.png").path_id == header.source_id(cards[1] / "IMG_0001.JPG")


def _two_cards(tmp_path: Path, per_card: int = 2) -> list[Path]:
    """Two folders of photos of the same names (IMG_0001.JPG...), as two camera cards hold."""
    cards = [tmp_path / "card1", tmp_path / "card2"]
    for seed, card in enumerate(cards):
        card.mkdir()
        for n in range(1, per_card + 1):
            cv2.imwrite(str(card / f"IMG_000{n}.JPG"), textured_image(seed=seed * 2 + n))
    return cards


def _written_after_the_plan(
    monkeypatch: pytest.MonkeyPatch, output: Path, pixels: np.ndarray, source: Path
) -> None:
    """Another run's output of ``source`` lands in ``--out`` right after this run's plan."""
    from pdseg_cli.engine import predict_plan

    planned = predict_plan.plan_predict

    def plan_then_the_other_run_writes(*args: object, **kwargs: object) -> object:
        plan = planned(*args, **kwargs)
        output.parent.mkdir(exist_ok=True)
        imio.write_png(output, pixels, software=header.output_mark(source))
        return plan

    monkeypatch.setattr(predict_plan, "plan_predict", plan_then_the_other_run_writes)


def test_an_output_another_run_wrote_since_the_plan_is_kept(
    tmp_path: Path, spread_tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs started at the same moment (a job array) into one --out, with other photos of the
    same names: each plan saw an empty --out, so the plan's refusal could not catch it, and the
    second run replaced the first one's masks in silence while both said "done"."""
    cards = _two_cards(tmp_path)
    out = tmp_path / "masks"
    theirs = np.full((24, 32), 7, np.uint8)
    _written_after_the_plan(monkeypatch, out / "IMG_0001.png", theirs, cards[1] / "IMG_0001.JPG")
    result = _predict(cards[0], "--out", out, "-w", spread_tiny_ckpt, "--json", tmp_path / "r.json")
    assert result.exit_code == 1, result.output
    said = (
        f"{out / 'IMG_0001.png'} was written meanwhile from another input of the same name, by another "
        "pdseg run into the same --out; it is kept (give each folder of inputs an --out of its own)"
    )
    assert no_space(said) in no_space(result.output) and "Traceback" not in result.output
    assert np.array_equal(cv2.imread(str(out / "IMG_0001.png"), cv2.IMREAD_UNCHANGED), theirs)  # kept
    assert header.marked_source(out / "IMG_0002.png").path_id == header.source_id(cards[0] / "IMG_0002.JPG")
    status = {
        Path(r["input"]).name: r["status"] for r in json.loads((tmp_path / "r.json").read_text())["files"]
    }
    assert status == {"IMG_0001.JPG": "failed", "IMG_0002.JPG": "done"}


def test_none_of_an_images_outputs_is_written_beside_another_runs(
    tmp_path: Path, spread_tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --save mask,alpha, the other run's alpha landed after the plan: this run's mask was
    written beside it, a mask of one photo next to the cut-out of another."""
    cards = _two_cards(tmp_path, per_card=1)
    out = tmp_path / "masks"
    theirs = np.zeros((24, 32, 4), np.uint8)
    _written_after_the_plan(monkeypatch, out / "IMG_0001_alpha.png", theirs, cards[1] / "IMG_0001.JPG")
    result = _predict(cards[0], "--out", out, "-w", spread_tiny_ckpt, "-s", "mask,alpha")
    assert result.exit_code == 1, result.output
    assert "IMG_0001_alpha.png was written meanwhile" in flat(result.output)
    assert sorted(p.name for p in out.iterdir()) == ["IMG_0001_alpha.png"]  # no mask beside it


@pytest.mark.parametrize("skip", [False, True])
def test_outputs_of_the_same_inputs_moved_elsewhere_are_their_own(
    tmp_path: Path, spread_tiny_ckpt: Path, skip: bool
) -> None:
    """A folder moved (or a card mounted elsewhere) after a run: its outputs were refused as "made
    from another input", so --skip-existing could not go on and a rerun could not replace them."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in (1, 2):
        cv2.imwrite(str(photos / f"IMG_000{n}.JPG"), textured_image(seed=n))
    out = tmp_path / "masks"
    assert _predict(photos, "--out", out, "-w", spread_tiny_ckpt).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    moved = photos.rename(tmp_path / "moved")
    again = _predict(moved, "--out", out, "-w", spread_tiny_ckpt, *(["--skip-existing"] if skip else []))
    assert again.exit_code == 0, again.output
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert (after == before) if skip else (after.keys() == before.keys())  # skipped as done, or replaced
    (moved / "IMG_0001.JPG").write_bytes(cv2.imencode(".jpg", textured_image(seed=9))[1].tobytes())
    other = moved.rename(tmp_path / "elsewhere")  # another path and other content: another input
    refused = _predict(other, "--out", out, "-w", spread_tiny_ckpt)
    assert refused.exit_code == 2 and "made from another input" in flat(refused.output)


def test_outputs_of_other_inputs_are_counted_in_the_plural(tmp_path: Path, spread_tiny_ckpt: Path) -> None:
    cards = _two_cards(tmp_path)
    out = tmp_path / "masks"
    assert _predict(cards[0], "--out", out, "-w", spread_tiny_ckpt).exit_code == 0
    second = _predict(cards[1], "--out", out, "-w", spread_tiny_ckpt)
    assert second.exit_code == 2, second.output
    said = f"--out {out} holds 2 outputs of other inputs of the same names, which this run would replace"
    assert no_space(said) in no_space(second.output)


def test_skip_existing_does_not_count_an_unmarked_file_as_done(
    tmp_path: Path, spread_tiny_ckpt: Path
) -> None:
    images, gts, before = _gt_folder(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    # an earlier output: done
    write_output_png(out / "cat.png", np.zeros((24, 32), np.uint8), source=images / "cat.jpg")
    result = _predict(images, "--out", out, "-w", spread_tiny_ckpt, "--skip-existing")
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(out / "cat.png"), cv2.IMREAD_UNCHANGED).max() == 0  # kept, not redone
    (out / "cat.png").write_bytes(before)  # the GT instead: not done, and not replaced
    result = _predict(images, "--out", out, "-w", spread_tiny_ckpt, "--skip-existing")
    assert result.exit_code == 2 and (out / "cat.png").read_bytes() == before, result.output


# ------------------------------------------------------------------------------ links to folders


def _linked_tree(tmp_path: Path) -> Path:
    """src/real/a.jpg; src/linked -> elsewhere (b.jpg, and back -> src: a loop); src/dup -> real;
    src/real/up -> src (a loop)."""
    src, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    (src / "real").mkdir(parents=True)
    elsewhere.mkdir()
    cv2.imwrite(str(src / "real" / "a.jpg"), textured_image())
    cv2.imwrite(str(elsewhere / "b.jpg"), textured_image(seed=2))
    (src / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "back").symlink_to(src, target_is_directory=True)
    (src / "dup").symlink_to("real", target_is_directory=True)
    (src / "real" / "up").symlink_to("..", target_is_directory=True)
    return src


def test_walk_follows_links_to_folders_once(tmp_path: Path) -> None:
    src = _linked_tree(tmp_path)
    walk = walk_folder(src)
    # the real folder by its own name (not the link dup, though it sorts first); the linked one by the link's
    assert walk.files == [src / "real" / "a.jpg", src / "linked" / "b.jpg"]
    assert sorted(walk.skipped_links) == sorted([src / "dup", src / "real" / "up", src / "linked" / "back"])
    images, others, _ = collect_inputs([src], recursive=True)
    assert [(i.path, i.rel_dir) for i in images] == [
        (src / "real" / "a.jpg", Path("real")),
        (src / "linked" / "b.jpg", Path("linked")),
    ]
    assert sorted(others) == sorted(walk.skipped_links)  # named once each


def test_recursive_predict_mirrors_linked_folders_and_names_the_loops(
    tmp_path: Path, spread_tiny_ckpt: Path
) -> None:
    src = _linked_tree(tmp_path)
    out = tmp_path / "out"
    result = _predict(src, "-r", "--out", out, "-w", spread_tiny_ckpt)
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["linked/b.png", "real/a.png"]
    text = no_space(result.output)
    assert "notfollowed,linkstofoldersreadalreadyorbackupthetree:" in text
    assert "brokenlinks" not in text and "notakindpdsegreads" not in text
    for link in (src / "dup", src / "real" / "up", src / "linked" / "back"):
        assert text.count(no_space(str(link))) == 1, link


def test_out_inside_the_input_is_left_out_through_a_link_too(tmp_path: Path, spread_tiny_ckpt: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.jpg"), textured_image())
    out = src / "masks"
    (src / "view").symlink_to("masks", target_is_directory=True)  # --out, reached through a link
    for _ in range(2):  # the rerun does not read the first run's outputs as inputs
        result = _predict(src, "-r", "--out", out, "-w", spread_tiny_ckpt)
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in out.rglob("*")) == ["a.png"]
    walk = walk_folder(src, out.resolve())
    assert walk.passed_exclude and walk.files == [src / "a.jpg"] and walk.skipped_links == []
    # a link to a folder inside --out is left out too
    (out / "sub").mkdir()
    cv2.imwrite(str(out / "sub" / "x.jpg"), textured_image())
    os.symlink(out / "sub", src / "deep", target_is_directory=True)
    assert walk_folder(src, out.resolve()).files == [src / "a.jpg"]


# ------------------------------------------------------------------------------ hidden files


def test_a_folder_of_hidden_images_says_so(tmp_path: Path, spread_tiny_ckpt: Path) -> None:
    folder = tmp_path / "m8"
    folder.mkdir()
    cv2.imwrite(str(folder / ".hidden.jpg"), textured_image())
    result = _predict(folder, "--out", tmp_path / "o", "-w", spread_tiny_ckpt)
    assert result.exit_code == 2, result.output
    text = no_space(result.output)  # a long path wraps anywhere
    assert no_space(f"no images found in {folder}") in text
    assert no_space(f"the only images in {folder} are hidden (.hidden.jpg)") in text
    assert "namethemdirectlytosegmentthem" in text and "--recursive" not in text
    (folder / "sub").mkdir()  # a subfolder: --recursive may find more
    result = _predict(folder, "--out", tmp_path / "o", "-w", spread_tiny_ckpt)
    assert result.exit_code == 2 and "add --recursive to look in subfolders" in flat(result.output)
    # named directly, it is segmented
    result = _predict(folder / ".hidden.jpg", "--out", tmp_path / "o", "-w", spread_tiny_ckpt)
    assert result.exit_code == 0 and (tmp_path / "o" / ".hidden.png").exists(), result.output


def test_a_pattern_walks_the_linked_folders_it_matches(tmp_path: Path, spread_tiny_ckpt: Path) -> None:
    # a pattern's links to folders were handed over as files: called broken, never walked
    src = _linked_tree(tmp_path)
    out = tmp_path / "out"
    result = run_cli("predict", str(src / "*"), "-r", "-o", out, "-w", spread_tiny_ckpt, columns=300)
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["linked/b.png", "real/a.png"]
    assert "brokenlinks" not in no_space(result.output)


def test_skip_existing_makes_again_an_output_whose_mark_names_no_input(
    tmp_path: Path, spread_tiny_ckpt: Path
) -> None:
    """pdseg of 2026-12-06 marked its outputs without naming their input: the last camera card's
    IMG_0001 mask was taken as this card's IMG_0001 done, in silence."""
    images, _, _ = _gt_folder(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    write_output_png(out / "cat.png", np.zeros((24, 32), np.uint8))  # the bare mark
    result = _predict(images, "--out", out, "-w", spread_tiny_ckpt, "--skip-existing")
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(out / "cat.png"), cv2.IMREAD_UNCHANGED).max() > 0  # made again
    text = flat(result.output)
    assert "1 earlier output" in text and "names no input in its mark" in text, text
    again = _predict(images, "--out", out, "-w", spread_tiny_ckpt, "--skip-existing")
    assert "nothing to do" in flat(again.output), again.output  # its own mark names it now


# ------------------------------------------------------------------ the model and settings in the mark


def test_the_settings_id_follows_what_each_kind_is_made_of() -> None:
    from pdseg_cli.engine.made_with import MadeWith

    base = MadeWith("a" * 64)
    mask, alpha, composite = (base.id_for(kind) for kind in ("mask", "alpha", "composite"))
    assert len({mask, alpha, composite}) == 3 and all(len(i) == 16 for i in (mask, alpha, composite))
    other_bg = MadeWith("a" * 64, background=(0, 0, 0))
    assert other_bg.id_for("mask") == mask and other_bg.id_for("alpha") == alpha  # neither is painted
    assert other_bg.id_for("composite") != composite
    plain = MadeWith("a" * 64, refine_foreground=False)
    assert plain.id_for("mask") == mask and plain.id_for("alpha") != alpha
    for changed in (
        MadeWith("b" * 64),
        MadeWith("a" * 64, size=512),
        MadeWith("a" * 64, size="full"),
        MadeWith("a" * 64, tta=True),
        MadeWith("a" * 64, scales=(0.875, 1.0)),
        MadeWith("a" * 64, onnx_spec="size=1024"),
        MadeWith("a" * 64, threshold=0.5),
    ):
        assert changed.id_for("mask") != mask, changed
    # the same settings spelt otherwise are the same settings
    assert MadeWith("a" * 64, scales=(1.125, 0.875, 1)).id_for("mask") == MadeWith(
        "a" * 64, scales=(0.875, 1.0, 1.125)
    ).id_for("mask")
    assert MadeWith("a" * 64, onnx_spec="size=1024,mean=0.5").id_for("mask") == MadeWith(
        "a" * 64, onnx_spec=" mean=0.5, size=1024 "
    ).id_for("mask")
    assert MadeWith("a" * 64, scales=()).id_for("mask") == mask


def test_every_predict_option_is_in_the_settings_id_or_known_not_to_change_pixels() -> None:
    """A new option that changes the maps must go into MadeWith, or --skip-existing would take an
    output made without it as done."""
    import dataclasses
    import inspect

    from pdseg_cli.commands.predict import predict
    from pdseg_cli.engine.made_with import MadeWith

    # the option's parameter name in `predict`, per MadeWith field
    in_id = {
        "weights_sha256": "weights", "size": "size", "tta": "tta", "scales": "scales",
        "onnx_spec": "onnx_spec", "threshold": "threshold", "background": "bg",
        "refine_foreground": "refine_foreground",
    }  # fmt: skip
    assert set(in_id) == {f.name for f in dataclasses.fields(MadeWith)}
    # where the outputs go and which, which images, reports and messages; and float rounding only
    # (benchmarks/RESULTS.md, 'bf16 against fp32'), left out so that a run goes on elsewhere
    not_pixels = {
        "ctx", "sources", "out_text", "save", "max_pixels", "recursive", "skip_existing", "json_out",
        "quiet", "batch", "device", "precision", "compile_mode", "threads",
    }  # fmt: skip
    assert set(inspect.signature(predict).parameters) == set(in_id.values()) | not_pixels


def test_scales_of_another_kind_are_refused_as_before(spread_tiny_ckpt: Path) -> None:
    from pdseg_cli import Predictor
    from pdseg_cli.errors import InputError

    with pytest.raises(InputError, match="give a list of numbers"):
        Predictor(spread_tiny_ckpt, device="cpu", scales=np.array([0.5, 1.0]))


def test_the_mark_records_the_settings_id(tmp_path: Path) -> None:
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"photo")
    ids = header.input_ids(photo)
    mark = header.mark_of(ids, "0123456789abcdef")
    assert mark == f"{MARK} (input {ids.path_id} {ids.content_id}; made 0123456789abcdef)"
    imio.write_png(tmp_path / "m.png", textured_image()[..., 0], software=mark)
    assert header.marked_source(tmp_path / "m.png") == header.MarkedSource(
        ids.path_id, ids.content_id, "0123456789abcdef"
    )
    assert header.mark_of(ids) == header.output_mark(photo)  # no id: the mark of before
    # a later pdseg's fields after "; " are passed over: its outputs still name their input here
    later = f"pdseg 9.0 (input {ids.path_id} {ids.content_id}; made 0123456789abcdef; model 7 x)"
    imio.write_png(tmp_path / "later.png", textured_image()[..., 0], software=later)
    assert header.marked_source(tmp_path / "later.png") == header.MarkedSource(
        ids.path_id, ids.content_id, "0123456789abcdef"
    )


def _made_id(path: Path) -> str | None:
    found = header.marked_source(path)
    assert found is not None, path
    return found.made


def test_skip_existing_refuses_what_other_weights_or_settings_made(
    tmp_path: Path, spread_tiny_ckpt: Path
) -> None:
    """A folder resumed with another model or --threshold held the maps of two runs in silence; and
    remaking them would replace hours of maps where an option was only forgotten."""
    import shutil

    from helpers import tiny_checkpoint

    images, _, _ = _gt_folder(tmp_path)
    out = tmp_path / "out"
    first = _predict(images, "--out", out, "-w", spread_tiny_ckpt, "-s", "mask,composite")
    assert first.exit_code == 0, first.output
    names = ("cat.png", "cat_composite.png")
    made = {name: _made_id(out / name) for name in names}
    assert None not in made.values() and len(set(made.values())) == 2
    before = {name: (out / name).read_bytes() for name in names}

    # the same weights under another name, and another --bg for the mask alone: done
    copy = shutil.copy(spread_tiny_ckpt, tmp_path / "renamed.pt")
    again = _predict(images, "--out", out, "-w", copy, "--skip-existing", "--bg", "black")
    assert again.exit_code == 0 and "nothing to do" in flat(again.output), again.output

    # another --bg for the composite, other weights, another --threshold: refused, nothing written
    other = tiny_checkpoint(tmp_path / "other.pt", train_size=64, classifier_std=3.0, seed=1)
    black = ["-s", "mask,composite", "--bg", "black"]
    cases = [
        (["-w", copy, *black], "1 earlier output", "the same weights but other settings than this run"),
        (["-w", other], "1 earlier output", "made with other weights than this run"),
        (["-w", other, *black], "2 earlier outputs", "other weights and other settings"),
        (["-w", spread_tiny_ckpt, "--threshold", "0.5"], "1 earlier output", "the same weights but other"),
    ]
    for options, count, what in cases:
        refused = _predict(images, "--out", out, *options, "--skip-existing")
        text = flat(refused.output)
        assert refused.exit_code == 2 and f"{count} in {out}" in text and what in text, (options, text)
        assert "drop --skip-existing to make every image again" in text
        assert {name: (out / name).read_bytes() for name in names} == before
    # without --skip-existing the run makes them again, as any rerun replaces its own outputs
    redone = _predict(images, "--out", out, "-w", spread_tiny_ckpt, "--threshold", "0.5")
    assert redone.exit_code == 0 and _made_id(out / "cat.png") != made["cat.png"]
    assert set(np.unique(cv2.imread(str(out / "cat.png"), cv2.IMREAD_UNCHANGED))) <= {0, 255}


def test_the_refusal_says_whether_weights_or_settings_differ(tmp_path: Path) -> None:
    from pdseg_cli.engine.predict_plan import OtherwiseMade, PredictPlan
    from pdseg_cli.errors import InputError

    def refuse(outputs: list[OtherwiseMade]) -> None:
        PredictPlan(tmp_path, ("mask",), [], [], [], 0, otherwise_made=outputs).refuse_otherwise_made()

    refuse([])  # none: nothing to say
    a, b = tmp_path / "a.png", tmp_path / "b_composite.png"
    for outputs, said, options in (
        (
            [OtherwiseMade(a, "mask", True, False)],
            "1 earlier output in",
            "same --size, --tta, --scales, --onnx-spec and --threshold as",
        ),
        (
            [OtherwiseMade(b, "composite", True, False)],
            "the same weights but",
            "--threshold, --bg and --refine",
        ),
        (
            [OtherwiseMade(a, "mask", False, True)] * 2,
            "were made with other weights than",
            "same --weights as",
        ),
        (
            [OtherwiseMade(a, "mask", False, True), OtherwiseMade(b, "composite", True, False)],
            "other weights and other settings",
            "same --weights, --size",
        ),
    ):
        with pytest.raises(InputError) as info:
            refuse(outputs)
        assert said in info.value.message and options in (info.value.hint or ""), info.value.hint
        assert "delete those outputs" in (info.value.hint or "")


def test_a_stale_output_beside_one_that_shows_the_image_done_is_no_refusal(
    tmp_path: Path, spread_tiny_ckpt: Path
) -> None:
    """A kind has two candidate paths where the input's depth is unknown (.png and .tif): one made
    otherwise beside the one this run's settings made says nothing against the image."""
    src = tmp_path / "src"
    src.mkdir()
    tifffile.imwrite(src / "b.tif", textured_image(seed=1, dtype=np.uint16), photometric="rgb")
    out = tmp_path / "out"
    assert _predict(src, "--out", out, "-w", spread_tiny_ckpt, "-s", "alpha").exit_code == 0
    assert (out / "b_alpha.tif").is_file()
    stale = header.mark_of(header.input_ids(src / "b.tif"), "0123456789abcdef")  # other weights
    imio.write_png(out / "b_alpha.png", np.zeros((24, 32, 4), np.uint8), software=stale)
    again = _predict(src, "--out", out, "-w", spread_tiny_ckpt, "-s", "alpha", "--skip-existing")
    assert again.exit_code == 0 and "nothing to do" in flat(again.output), again.output


def test_the_command_and_the_api_record_the_same_settings(tmp_path: Path, spread_tiny_ckpt: Path) -> None:
    """The command works the id out before the model loads, a Predictor from itself: the two agree,
    so a folder started with one goes on with the other."""
    from pdseg_cli import Predictor
    from pdseg_cli.errors import InputError

    images, _, _ = _gt_folder(tmp_path)
    out = tmp_path / "out"
    asked = ["--size", "64", "--threshold", "0.25", "--scales", "1,0.5", "-s", "mask,alpha"]
    assert _predict(images, "--out", out, "-w", spread_tiny_ckpt, *asked).exit_code == 0
    predictor = Predictor(spread_tiny_ckpt, device="cpu", size=64, scales=(0.5, 1.0))
    summary = predictor.predict_paths([images], out, save="mask,alpha", threshold=0.25, skip_existing=True)
    assert [r.status for r in summary.results] == ["skipped"]
    with pytest.raises(InputError, match="2 earlier outputs .* the same weights but other settings"):
        predictor.predict_paths([images], out, save="mask,alpha", threshold=0.75, skip_existing=True)
    predictor.predict_paths([images], out, save="mask,alpha", threshold=0.75)  # made again
    again = _predict(images, "--out", out, "-w", spread_tiny_ckpt, *asked, "--skip-existing")
    assert again.exit_code == 2 and "other settings" in flat(again.output), again.output
    predictor.predict_paths([images], out, save="mask,alpha", threshold=0.25)
    report = tmp_path / "run.json"
    done = _predict(images, "--out", out, "-w", spread_tiny_ckpt, *asked, "--skip-existing", "--json", report)
    assert done.exit_code == 0, done.output
    assert [f["status"] for f in json.loads(report.read_text())["files"]] == ["skipped"]


def test_outputs_whose_mark_records_no_settings_are_taken_as_done(
    tmp_path: Path, spread_tiny_ckpt: Path
) -> None:
    """Outputs of the pdseg before the settings were marked name their input and its content only:
    nothing says what made them, and a resume goes on as it did."""
    images, _, _ = _gt_folder(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    write_output_png(out / "cat.png", np.zeros((24, 32), np.uint8), source=images / "cat.jpg")
    result = _predict(images, "--out", out, "-w", spread_tiny_ckpt, "--skip-existing", "--threshold", "0.5")
    assert result.exit_code == 0 and "nothing to do" in flat(result.output), result.output
