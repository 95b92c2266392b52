"""`pdseg predict` and the Predictor: sizes, outputs, resuming, failures, refusals (pdseg-tiny, CPU)."""

from __future__ import annotations

import errno
import json
import os
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from helpers import dead_pid, flat, no_space, textured_image, write_output_png
from typer.testing import CliRunner

from pdseg_cli import create_model, load_model, save_checkpoint
from pdseg_cli.cli import app
from pdseg_cli.config import NORMALIZATION
from pdseg_cli.data import atomic, header
from pdseg_cli.data import images as imio
from pdseg_cli.data import transforms as T
from pdseg_cli.engine.output_kinds import OUTPUT_KINDS, OutputKind, files_help, parse_save, save_help
from pdseg_cli.engine.predict import Predictor, parse_size
from pdseg_cli.engine.predict_plan import plan_predict
from pdseg_cli.errors import InputError
from pdseg_cli.runtime import Distributed

runner = CliRunner()
TRAIN = 64  # the tiny checkpoint's training size


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pdseg-tiny checkpoint with a classifier scaled up, so maps spread over 0..255."""
    torch.manual_seed(0)
    model = create_model("pdseg-tiny")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("classifier.bias"):
                p.zero_()  # centred at p = 0.5 (the init's foreground prior would push maps to 0)
            if "cls" in name or "classifier" in name:
                p.mul_(300.0)
    return save_checkpoint(model, tmp_path_factory.mktemp("w") / "tiny.pt", train_size=TRAIN)


@pytest.fixture(scope="session")
def predictor(ckpt: Path) -> Predictor:
    return Predictor(ckpt, device="cpu", size=TRAIN)


def _run(*args: str | Path) -> object:
    return runner.invoke(app, ["predict", *map(str, args)])


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(atomic.TEMP_SUFFIX)]


# ------------------------------------------------------------------------------ Python API


@pytest.mark.parametrize("size", [TRAIN, "full"])
@pytest.mark.parametrize(("h", "w"), [(37, 53), (64, 31)])
def test_predict_returns_input_size(predictor: Predictor, ckpt: Path, size: object, h: int, w: int) -> None:
    p = predictor if size == TRAIN else Predictor(ckpt, device="cpu", size="full")
    out = p.predict(textured_image(h, w))
    assert out.shape == (h, w) and out.dtype == np.uint8


def test_predict_prob_is_what_predict_quantises(predictor: Predictor) -> None:
    img = textured_image(37, 53, seed=5)
    prob = predictor.predict_prob(img)
    assert prob.shape == (37, 53) and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    np.testing.assert_array_equal((prob * np.float32(255.0)).astype(np.uint8), predictor.predict(img))


def test_predict_accepts_any_dtype_and_gray(predictor: Predictor) -> None:
    img8 = textured_image(33, 41)
    ref = predictor.predict(img8)
    img16 = img8.astype(np.uint16) * 257
    np.testing.assert_array_equal(predictor.predict(img16), ref)  # same 0..255 values
    np.testing.assert_array_equal(predictor.predict(img8.astype(np.float32) / 255), ref)
    assert predictor.predict(img8[..., 0]).shape == (33, 41)
    rgba = np.concatenate([img8, np.zeros((33, 41, 1), np.uint8)], 2)
    np.testing.assert_array_equal(predictor.predict(rgba), ref)  # alpha ignored


def test_shrinking_averages_so_a_thin_wire_survives() -> None:
    # a 1-px wire in a 4000-px photo brought to 512: bilinear sampling reads about one column in
    # eight, so the wire vanishes or shows at up to 60% depending on where it lies; averaging keeps it
    # at its share of the covered pixels (512 / 4000 of 255 = 32.6, or split between two columns)
    # wherever it lies
    averaged, sampled = [], []
    for column in range(1000, 1008):
        wire = np.zeros((4000, 4000, 3), np.float32)
        wire[:, column] = 255.0
        averaged.append(float(T.resize_image(wire, (512, 512))[0].max()))
        sampled.append(float(T.resize_bilinear(wire, (512, 512))[0].max()))
    # (a wire on the border of two output columns shares its value between them)
    assert all(255 * 512 / 4000 / 2 <= v <= 255 * 512 / 4000 + 0.01 for v in averaged), averaged
    assert sampled.count(0.0) == 6 and max(sampled) > 150, sampled  # what plain bilinear did


def test_a_mixed_resize_shrinks_first_and_enlarging_alone_is_bilinear() -> None:
    frame = textured_image(48, 85, seed=2).astype(np.float32)  # DAVIS's 854x480 shape to 64x64
    expected = cv2.resize(cv2.resize(frame, (64, 48), interpolation=cv2.INTER_AREA), (64, 64))
    np.testing.assert_array_equal(T.resize_image(frame, (64, 64)), expected)
    small = frame[:40, :50]
    np.testing.assert_array_equal(T.resize_image(small, (64, 64)), cv2.resize(small, (64, 64)))
    assert T.resize_image(frame, (48, 85)) is frame
    # masks too: a uint8 mask keeps its dtype
    assert T.resize_image(np.zeros((100, 30), np.uint8), (64, 64)).dtype == np.uint8


@pytest.mark.parametrize("size", [TRAIN, "full"])
def test_predict_equals_the_model_called_directly(ckpt: Path, size: object) -> None:
    img = textured_image(45, 70, seed=3)
    got = Predictor(ckpt, device="cpu", size=size, channels_last=False, optimized=False).predict(img)
    # the default optimised form (pdseg_cli.optimize) agrees within float rounding: one grey level
    fast = Predictor(ckpt, device="cpu", size=size).predict(img)
    assert np.abs(fast.astype(int) - got.astype(int)).max() <= 1

    model = load_model(ckpt)
    x = img.astype(np.float32)
    if size != "full":  # the width shrinks (averaged), then the height grows (bilinear)
        x = cv2.resize(x, (TRAIN, 45), interpolation=cv2.INTER_AREA)
        x = cv2.resize(x, (TRAIN, TRAIN), interpolation=cv2.INTER_LINEAR)
    x = (x - np.array(NORMALIZATION["mean"], np.float32)) / np.array(NORMALIZATION["std"], np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x).permute(2, 0, 1)[None].contiguous())
        logits = F.interpolate(logits, size=(45, 70), mode="bilinear", align_corners=False)
        expected = (torch.sigmoid(logits) * 255).to(torch.uint8)[0, 0].numpy()
    np.testing.assert_array_equal(got, expected)
    assert int(expected.max()) - int(expected.min()) > 50  # a real map, not a constant


def test_tta_averages_the_logits_of_the_image_and_its_mirror(ckpt: Path) -> None:
    img = textured_image(45, 70, seed=4)
    plain = Predictor(ckpt, device="cpu", size=TRAIN, channels_last=False, optimized=False)
    tta = Predictor(ckpt, device="cpu", size=TRAIN, channels_last=False, optimized=False, tta=True)
    x = plain.prepare_array(img.astype(np.float32))
    mirrored = np.ascontiguousarray(x[:, ::-1])
    expected = (plain.forward([x]) + plain.forward([mirrored]).flip(-1)) / 2
    torch.testing.assert_close(tta.forward([x]), expected, rtol=0, atol=1e-6)
    # so the map of the mirrored image is the mirror of the map
    a, b = tta.predict(img), tta.predict(np.ascontiguousarray(img[:, ::-1]))
    assert np.abs(a.astype(int) - b[:, ::-1].astype(int)).max() <= 1
    assert np.abs(a.astype(int) - plain.predict(img).astype(int)).max() > 1  # it changes the map
    assert "mirrored too (--tta)" in tta.describe_setting()
    assert "--tta" not in plain.describe_setting()


def test_channels_last_and_batches_agree(predictor: Predictor, ckpt: Path) -> None:
    imgs = [textured_image(40, 50, seed=s) for s in range(3)]
    singles = [predictor.predict(im) for im in imgs]
    batched = predictor.predict_batch(imgs)
    plain = Predictor(ckpt, device="cpu", size=TRAIN, channels_last=False)
    for a, b, im in zip(singles, batched, imgs, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
        assert np.abs(a.astype(int) - plain.predict(im).astype(int)).max() <= 1


def test_threshold_gives_binary_map(predictor: Predictor) -> None:
    out = predictor.predict(textured_image(30, 30), threshold=0.5)
    assert set(np.unique(out)) <= {0, 255}


def test_threshold_turns_p_of_exactly_the_threshold_to_255(predictor: Predictor) -> None:
    # logit 0 is p = 0.5 exactly: on --threshold 0.5 it is foreground, a hair below it is not
    logits = torch.tensor([[[[-1e-3, 0.0, 1e-3]]]])
    assert predictor.to_map(logits.clone(), (1, 3), 0.5).tolist() == [[0, 255, 255]]
    assert predictor.to_map(logits.clone(), (1, 3), None).tolist() == [[127, 127, 127]]


def test_default_size_is_the_checkpoint_training_size(ckpt: Path) -> None:
    p = Predictor(ckpt, device="cpu")
    assert p.size == TRAIN and p.size_from_checkpoint


def test_option_parsing() -> None:
    assert parse_save(["mask,alpha", "composite", "mask"]) == ("mask", "alpha", "composite")
    with pytest.raises(InputError, match="did you mean alpha"):
        parse_save(["alhpa"])
    assert parse_size("FULL") == "full" and parse_size("512") == 512 and parse_size(None) is None
    with pytest.raises(InputError):
        parse_size("16")
    with pytest.raises(InputError):
        parse_size("big")


def test_shards_cover_every_file_once() -> None:
    items = list(range(11))
    shards = [Distributed(3, r, r).shard(items) for r in range(3)]
    assert sorted(x for s in shards for x in s) == items


# ------------------------------------------------------------------------------------- CLI


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """in/: a JPEG, an 8-bit PNG, a 16-bit TIFF, a text file; odd sizes."""
    d = tmp_path / "in"
    d.mkdir()
    cv2.imwrite(str(d / "a.jpg"), textured_image(37, 53, 1))
    cv2.imwrite(str(d / "b.png"), textured_image(29, 40, 2))
    tifffile.imwrite(d / "c.tif", textured_image(31, 45, 3, np.uint16), photometric="rgb")
    (d / "notes.txt").write_text("not an image")
    return d


def test_cli_writes_masks_at_input_size(folder: Path, tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "out"
    result = _run(folder, "--out", out, "-w", ckpt, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    for name, shape in (("a", (37, 53)), ("b", (29, 40)), ("c", (31, 45))):
        m = cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert m.shape == shape and m.dtype == np.uint8
    text = no_space(result.output)
    assert "done3" in text.replace("│", "") and "otherfiles(notread)1" in text.replace("│", "")
    assert "skipped,notakindpdsegreads(JPEG,PNG,TIFF,BMP,WebP,PNM):" in text and "notes.txt" in text


def test_cli_full_size_and_mask_bytes_match_predict(folder: Path, tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "out"
    result = _run(folder / "a.jpg", "--out", out, "-w", ckpt, "--size", "full", "--device", "cpu")
    assert result.exit_code == 0, result.output
    written = cv2.imread(str(out / "a.png"), cv2.IMREAD_UNCHANGED)
    expected = Predictor(ckpt, device="cpu", size="full").predict(imio.read_image(folder / "a.jpg").pixels)
    np.testing.assert_array_equal(written, expected)


def test_cli_16bit_tiff_gives_16bit_rgba_tiff(folder: Path, tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "out"
    result = _run(
        folder / "c.tif",
        folder / "b.png",
        "-o",
        out,
        "-w",
        ckpt,
        "-s",
        "mask",
        "--save",
        "alpha,composite",
        "--bg",
        "#00ff00",
        "--no-refine-foreground",  # the original pixels under the alpha (refined: tests/test_foreground.py)
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["b.png", "b_alpha.png", "b_composite.png", "c.png", "c_alpha.tif", "c_composite.tif"]
    source = tifffile.imread(folder / "c.tif")
    with tifffile.TiffFile(out / "c_alpha.tif") as tif:
        rgba = tif.pages[0].asarray()
    assert rgba.dtype == np.uint16 and rgba.shape == (31, 45, 4)
    np.testing.assert_array_equal(rgba[..., :3], source)
    mask = cv2.imread(str(out / "c.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(rgba[..., 3], mask.astype(np.uint16) * 257)
    b_rgba = cv2.imread(str(out / "b_alpha.png"), cv2.IMREAD_UNCHANGED)
    assert b_rgba.shape == (29, 40, 4) and b_rgba.dtype == np.uint8
    assert tifffile.imread(out / "c_composite.tif").dtype == np.uint16


def test_a_new_output_kind_is_one_table_entry(
    folder: Path, tmp_path: Path, predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    def inverse(colour: np.ndarray | None, byte_map: np.ndarray, background: tuple[int, ...]) -> np.ndarray:
        assert colour is None  # a kind that does not use the image gets no colours
        return 255 - byte_map

    kind = OutputKind(
        "inverse",
        "255 minus the mask",
        "_inverse",
        uses_image=False,
        follows_depth=False,
        channels=1,
        make=inverse,
    )
    monkeypatch.setitem(OUTPUT_KINDS, kind.name, kind)  # registered for this test only
    assert parse_save(["mask,inverse"]) == ("mask", "inverse")
    assert "inverse (255 minus the mask)" in save_help()
    assert files_help().endswith(", <stem>_inverse.png (.tif: 16-bit/float)")
    out = tmp_path / "out"
    summary = predictor.predict_paths([folder / "b.png", folder / "c.tif"], out, save=("mask", "inverse"))
    assert summary.done == 2
    assert sorted(p.name for p in out.iterdir()) == ["b.png", "b_inverse.png", "c.png", "c_inverse.png"]
    for stem in ("b", "c"):  # c is a 16-bit TIFF: this kind does not follow the input's depth
        mask = cv2.imread(str(out / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(
            cv2.imread(str(out / f"{stem}_inverse.png"), cv2.IMREAD_UNCHANGED), 255 - mask
        )
    (out / "c_inverse.png").unlink()
    again = predictor.predict_paths(
        [folder / "b.png", folder / "c.tif"], out, save=("mask", "inverse"), skip_existing=True
    )
    assert (again.skipped, again.done) == (1, 1) and (out / "c_inverse.png").is_file()


def test_predict_help_names_every_output_file() -> None:
    assert files_help() == (
        "<stem>.png, <stem>_alpha.png|.tif, <stem>_composite.png|.tif (.tif: 16-bit/float)"
    )
    result = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert "Outputs go to --out: <stem>.png, <stem>_alpha.png|.tif" in result.output


def test_cli_tta_writes_the_tta_map(folder: Path, tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "out"
    result = _run(folder / "a.jpg", "--out", out, "-w", ckpt, "--tta", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert no_space(result.output).count("mirroredtoo(--tta)") == 2  # the header and the summary
    written = cv2.imread(str(out / "a.png"), cv2.IMREAD_UNCHANGED)
    tta = Predictor(ckpt, device="cpu", tta=True)
    np.testing.assert_array_equal(written, tta.predict(imio.read_image(folder / "a.jpg").pixels))


def test_cli_threshold_binary(folder: Path, tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "out"
    assert _run(folder / "a.jpg", "-o", out, "-w", ckpt, "--threshold", "0.5").exit_code == 0
    assert set(np.unique(cv2.imread(str(out / "a.png"), cv2.IMREAD_UNCHANGED))) <= {0, 255}


def test_corrupt_file_among_good_ones(folder: Path, tmp_path: Path, ckpt: Path) -> None:
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    out = tmp_path / "out"
    result = _run(folder, "-o", out, "-w", ckpt)
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    assert "broken.png" in no_space(result.output)
    assert _no_temporaries(out)
    # the way on, once: the other images need no second pass
    rerun = "runthesamecommandagainwith--skip-existingtosegmentonlythese(theotherimageswerewritten)"
    assert rerun in no_space(result.output)


def test_a_failed_file_keeps_the_hint_that_fixes_it(folder: Path, tmp_path: Path, ckpt: Path) -> None:
    result = _run(folder / "a.jpg", "-o", tmp_path / "out", "-w", ckpt, "--max-pixels", "100")
    assert result.exit_code == 1, result.output
    text = no_space(result.output)
    assert "53x37is1,961pixels,overthelimitof100" in text
    assert "passalarger--max-pixelsifthismachinehasthememoryforit" in text  # the fix, not only the fault


def test_out_of_memory_in_any_runtime_fails_one_image_not_the_run(
    folder: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Fail(Exception):  # ONNX Runtime's errors are not RuntimeErrors
        pass

    real = Predictor.forward
    calls = []

    def forward(self: Predictor, arrays: object) -> object:
        calls.append(1)
        if len(calls) <= 2:  # the first image's pass, and the one more try it gets
            raise Fail(
                "[ONNXRuntimeError] : 1 : FAIL : bfc_arena.cc:359 Failed to allocate memory for a buffer"
            )
        return real(self, arrays)

    monkeypatch.setattr(Predictor, "forward", forward)
    out = tmp_path / "out"
    result = _run(folder, "-o", out, "-w", ckpt, "--threads", "1")
    assert result.exit_code == 1, result.output
    text = no_space(result.output)
    assert "outofmemoryoncpu" in text and "--devicecpu" not in text and "Traceback" not in text
    assert "(tryasmaller--size)" in text
    assert len(list(out.glob("*.png"))) == 2  # the other images were still segmented
    assert len(calls) == 4


@pytest.mark.parametrize("batch", [1, 3])
def test_out_of_memory_is_tried_again_once_memory_is_freed(
    folder: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    import weakref

    from pdseg_cli.engine import predict_run

    predictor = Predictor(ckpt, device="cpu")
    real_forward, real_free = Predictor.forward, predict_run._FolderRun.free_memory
    batches: list[int] = []
    held: list[weakref.ref[torch.Tensor]] = []
    freed_with_the_pass_gone: list[bool] = []

    def forward(self: Predictor, arrays: list[np.ndarray]) -> torch.Tensor:
        batches.append(len(arrays))
        if len(batches) == 1:
            activations = torch.ones(1 << 16)  # what the failed pass held, in its traceback's frames
            held.append(weakref.ref(activations))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, arrays)

    def free_memory(run: predict_run._FolderRun) -> None:
        freed_with_the_pass_gone.append(held[0]() is None)  # the except block was left first
        real_free(run)

    monkeypatch.setattr(Predictor, "forward", forward)
    monkeypatch.setattr(predict_run._FolderRun, "free_memory", free_memory)
    summary = predictor.predict_paths([folder], tmp_path / "out", batch=batch)
    assert [r.status for r in summary.results] == ["done"] * 3
    assert freed_with_the_pass_gone == [True]
    # a batch is tried again an image at a time, and the run goes on so (each batch would fail)
    assert batches == ([1, 1, 1, 1] if batch == 1 else [3, 1, 1, 1])


def test_freeing_after_out_of_memory_waits_for_the_writes_and_empties_the_gpu_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from pdseg_cli.engine import predict_run

    done: list[str] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: done.append("empty_cache"))
    for device in ("cuda", "cpu"):
        run = SimpleNamespace(
            predictor=SimpleNamespace(device=torch.device(device)),
            collect_writes=lambda block_until: done.append(f"writes<={block_until}"),
        )
        predict_run._FolderRun.free_memory(run)  # type: ignore[arg-type]
    assert done == ["writes<=0", "empty_cache", "writes<=0"]


def test_out_of_memory_making_a_cutout_names_the_option_that_saves_it(
    folder: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pdseg_cli.engine.predict_run as predict_run

    def no_memory(*args: object, **kwargs: object) -> None:
        raise cv2.error(
            "OpenCV(4.x) alloc.cpp:73: error: (-4:Insufficient memory) Failed to allocate 1296000000 bytes"
        )

    monkeypatch.setattr(predict_run, "estimate_foreground", no_memory)
    result = _run(folder / "a.jpg", "-o", tmp_path / "out", "-w", ckpt, "--save", "alpha")
    assert result.exit_code == 1, result.output
    text = no_space(result.output)
    assert "outofmemorymakinga_alpha.png" in text and "--no-refine-foregroundneedsfarless" in text


def test_skip_existing_resumes(folder: Path, tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "out"
    assert _run(folder, "-o", out, "-w", ckpt).exit_code == 0
    (out / "b.png").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    result = _run(folder, "-o", out, "-w", ckpt, "--skip-existing")
    assert result.exit_code == 0, result.output
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert sorted(after) == ["a.png", "b.png", "c.png"]
    assert after["a.png"] == before["a.png"] and after["c.png"] == before["c.png"]
    assert "skipped(outputsexist)2" in no_space(result.output).replace("│", "")


def test_subfolders_a_run_without_recursive_passes_over_are_named(
    folder: Path, tmp_path: Path, ckpt: Path
) -> None:
    # images in in/sub/ were passed over without a word
    for name in ("sub", "two", ".hidden"):
        (folder / name).mkdir()
    cv2.imwrite(str(folder / "sub" / "d.jpg"), textured_image(20, 30))
    result = _run(folder, "-o", folder / "masks", "-w", ckpt)
    assert result.exit_code == 0, result.output
    line = f"2 subfolders not read ({folder / 'sub'}{os.sep}, {folder / 'two'}{os.sep}): add --recursive (-r)"
    assert line in flat(result.output) and "masks/" not in flat(result.output).split("): add")[0]
    again = _run(folder, "-o", tmp_path / "out", "-w", ckpt, "-r")
    assert again.exit_code == 0 and "not read (" not in flat(again.output), again.output


def test_pdsegs_own_outputs_among_a_folders_images_are_left_out(
    folder: Path, tmp_path: Path, ckpt: Path
) -> None:
    # --out in/ for in/sub put masks among the photos, and the next run segmented the masks
    sub = folder / "sub"
    sub.mkdir()
    cv2.imwrite(str(sub / "d.jpg"), textured_image(20, 30))
    assert _run(sub, "-o", folder, "-w", ckpt).exit_code == 0  # writes in/d.png beside the photos
    out = tmp_path / "out"
    result = _run(folder, "-o", out, "-w", ckpt, "-r", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["own_outputs"] == [str(folder / "d.png")]
    assert (
        "1 file among the inputs is an output of pdseg (masks or cut-outs of an earlier run), left "
        in flat(result.output)
    )
    assert not (out / "d.png").exists() and (out / "sub" / "d.png").is_file()
    named = _run(folder / "d.png", "-o", tmp_path / "again", "-w", ckpt)  # named on its own: segmented
    assert named.exit_code == 0 and (tmp_path / "again" / "d.png").is_file(), named.output
    masks = tmp_path / "masks"
    masks.mkdir()
    (folder / "d.png").rename(masks / "d.png")
    alone = _run(masks, "-o", tmp_path / "o3", "-w", ckpt)
    assert alone.exit_code == 2 and "are all outputs of pdseg" in flat(alone.output), alone.output


def test_skip_existing_makes_again_the_outputs_of_inputs_changed_since(
    folder: Path, tmp_path: Path, ckpt: Path
) -> None:
    """A photo turned after its mask was written kept its sideways mask under --skip-existing."""
    out = tmp_path / "out"
    assert _run(folder, "-o", out, "-w", ckpt, "--save", "mask,alpha").exit_code == 0
    written = time.time_ns() - 100 * 10**9  # the outputs' times put back, so that "later" is past
    for p in out.iterdir():
        os.utime(p, ns=(written, written))
    later = written + 10 * 10**9
    cv2.imwrite(str(folder / "a.jpg"), np.ascontiguousarray(textured_image(37, 53, 1).transpose(1, 0, 2)))
    os.utime(folder / "a.jpg", ns=(later, later))  # turned: 53x37 now
    os.utime(folder / "b.png", ns=(later, later))  # copied anew, the same bytes: still done
    # replaced by another photo that kept an old date (mv, cp -p, an unzip): its ctime is new
    tifffile.imwrite(folder / "c.tif", textured_image(45, 31, 4, np.uint16), photometric="rgb")
    os.utime(folder / "c.tif", ns=(10**18, 10**18))
    b_mask = (out / "b.png").read_bytes()
    hashed: list[Path] = []
    real = header.content_id
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(header, "content_id", lambda path: hashed.append(path) or real(path))
        result = _run(folder, "-o", out, "-w", ckpt, "--save", "mask,alpha", "--skip-existing")
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(out / "a.png"), cv2.IMREAD_UNCHANGED).shape == (53, 37)
    assert cv2.imread(str(out / "c.png"), cv2.IMREAD_UNCHANGED).shape == (45, 31)
    assert (out / "b.png").read_bytes() == b_mask
    assert "skipped(outputsexist)1" in no_space(result.output).replace("│", "")
    assert hashed.count(folder / "b.png") == 1  # once for its two outputs
    hashed.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(header, "content_id", lambda path: hashed.append(path) or real(path))
        again = _run(folder, "-o", out, "-w", ckpt, "--save", "mask,alpha", "--skip-existing")
    assert again.exit_code == 0 and folder / "b.png" not in hashed  # found unchanged: not hashed again


def test_a_file_pdseg_did_not_write_is_not_replaced(folder: Path, tmp_path: Path, ckpt: Path) -> None:
    # a photo album as --out: its colour a.png is where a.jpg's mask goes, and was replaced unsaid
    out = tmp_path / "album"
    out.mkdir()
    cv2.imwrite(str(out / "a.png"), textured_image(20, 30))  # a colour photo
    (out / "c_alpha.png").write_text("not an image")
    photo = (out / "a.png").read_bytes()
    result = _run(folder, "-o", out, "-w", ckpt, "--save", "mask,alpha")
    assert result.exit_code == 2, result.output
    text = no_space(result.output)
    assert "holds2filesthatpdsegwouldreplaceandcannottakeforitsownoutputs" in text
    assert "a.png(an8-bitPNGwith3channels;pdseg'smaskhas1)" in text
    assert "c_alpha.png(notanimage,northe4-channelPNGpdsegwritesasanalpha)" in text
    assert (out / "a.png").read_bytes() == photo
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c_alpha.png"]
    # its own earlier outputs are replaced on a rerun, as before (16-bit c.tif's alpha is a TIFF)
    (out / "c_alpha.png").unlink()
    (out / "a.png").unlink()
    assert _run(folder, "-o", out, "-w", ckpt, "--save", "mask,alpha").exit_code == 0
    assert _run(folder, "-o", out, "-w", ckpt, "--save", "mask,alpha").exit_code == 0
    # --skip-existing does not take the photo for a.jpg's mask: a.jpg is not skipped, so refused
    cv2.imwrite(str(out / "a.png"), textured_image(20, 30))
    skipped = _run(folder, "-o", out, "-w", ckpt, "--save", "mask,alpha", "--skip-existing")
    assert skipped.exit_code == 2 and "a.png(an8-bitPNGwith3channels;" in no_space(skipped.output)
    assert cv2.imread(str(out / "a.png"), cv2.IMREAD_UNCHANGED).ndim == 3  # still the photo
    # a 16-bit gray PNG (a depth map) is no mask pdseg wrote either; a .tif beside an 8-bit
    # input's outputs is never written to, so it does not matter
    cv2.imwrite(str(out / "a.png"), np.zeros((4, 4), np.uint16))
    (out / "a_alpha.tif").write_text("an unrelated file")
    depth = _run(folder, "-o", out, "-w", ckpt, "--save", "mask,alpha")
    assert depth.exit_code == 2 and "a.png(a16-bitPNGwith1channel;" in no_space(depth.output)
    assert "a_alpha.tif" not in depth.output
    (out / "a.png").unlink()
    assert _run(folder, "-o", out, "-w", ckpt, "--save", "mask,alpha").exit_code == 0
    assert (out / "a_alpha.tif").read_text() == "an unrelated file"


def test_refuses_to_write_among_the_inputs(folder: Path, tmp_path: Path, ckpt: Path) -> None:
    result = _run(folder, "-o", folder, "-w", ckpt)
    assert result.exit_code == 2
    assert f"--out{folder}isthefolderoftheinput" in no_space(result.output)
    assert sorted(p.name for p in folder.iterdir()) == ["a.jpg", "b.png", "c.tif", "notes.txt"]
    # a folder of JPEGs only: no mask would overwrite one, but a rerun would read the masks as inputs
    jpegs = tmp_path / "jpegs"
    jpegs.mkdir()
    cv2.imwrite(str(jpegs / "a.jpg"), textured_image(10, 10))
    result = _run(jpegs, "-o", jpegs, "-w", ckpt)
    assert result.exit_code == 2 and "apartfromtheinputs" in no_space(result.output)
    assert sorted(p.name for p in jpegs.iterdir()) == ["a.jpg"]


def test_the_folder_offered_instead_of_the_inputs_lies_beside_them(
    folder: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--out .` inside in/ was offered "in-masks", which from there is in/in-masks, among the inputs
    monkeypatch.chdir(folder)
    result = _run("a.jpg", "-o", ".", "-w", ckpt)
    assert result.exit_code == 2 and "e.g.../in-masks" in no_space(result.output)
    monkeypatch.chdir(folder.parent)
    assert "e.g.in-masks" in no_space(_run("in", "-o", "in", "-w", ckpt).output)


def test_refuses_two_inputs_writing_one_output(folder: Path, tmp_path: Path, ckpt: Path) -> None:
    cv2.imwrite(str(folder / "a.png"), textured_image(10, 10))
    cv2.imwrite(str(folder / "b.bmp"), textured_image(10, 10))
    result = _run(folder, "-o", tmp_path / "out", "-w", ckpt)
    text = no_space(result.output)
    assert result.exit_code == 2 and "2pairsofinputswouldwritethesameoutputfiles" in text
    assert "a.jpgand" in text and "b.bmpand" in text  # every pair named, not the first only
    assert "--recursive" not in text  # the pairs share a folder: mirroring folders cannot help
    assert not (tmp_path / "out").exists()  # refused before the output folder is made


def test_inputs_of_one_name_in_two_folders_get_their_common_folder_with_recursive(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "use --recursive" alone was refused the same way: inputs named apart share one output folder
    for name in ("dA", "dB"):
        (tmp_path / "p" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "p" / name / "cat.jpg"), textured_image(10, 10))
    out = tmp_path / "p" / "o"
    result = _run(tmp_path / "p" / "dA", tmp_path / "p" / "dB", "-o", out, "-w", ckpt)
    assert result.exit_code == 2
    command = f"pdseg predict {tmp_path / 'p'} -r -o {out}"
    assert no_space(command) in no_space(result.output)
    again = _run(tmp_path / "p", "-r", "-o", out, "-w", ckpt)  # the hint's command works
    assert again.exit_code == 0, again.output
    assert (out / "dA" / "cat.png").is_file() and (out / "dB" / "cat.png").is_file()
    monkeypatch.chdir(tmp_path / "p" / "dB")  # relative, one through "..": their common folder is ".."
    relative = _run("cat.jpg", "../dA/cat.jpg", "-o", "o2", "-w", ckpt)
    assert relative.exit_code == 2 and "pdseg predict .. -r -o o2" in flat(relative.output)


def _long_named_inputs(folder: Path) -> list[Path]:
    """Images whose mask name fits in 255 bytes and whose ``_composite.png`` does not: 245 ASCII
    letters, and 122 two-byte letters (244 bytes: the limit counts UTF-8 bytes, not characters)."""
    folder.mkdir()
    paths = [folder / f"{'a' * 245}.png", folder / f"{'é' * 122}.jpg", folder / "short.png"]
    try:
        for k, path in enumerate(paths):
            path.write_bytes(cv2.imencode(path.suffix, textured_image(20 + k, 30))[1].tobytes())
    except OSError:
        pytest.skip("this file system takes shorter names")
    return paths


def test_outputs_too_long_to_name_are_refused_before_the_model_loads(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the mask used to be written and the composite fail on "File name too long"
    long_a, long_e, short = _long_named_inputs(tmp_path / "in")
    out = tmp_path / "out"

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the model must not be loaded")

    with monkeypatch.context() as m:
        m.setattr("pdseg_cli.engine.predict.Predictor.__init__", boom)
        result = _run(tmp_path / "in", "-o", out, "-w", ckpt, "--save", "mask,composite")
    assert result.exit_code == 2, result.output
    text = no_space(result.output)
    assert "2inputswouldmakeoutputnameslongerthanthe255bytesthefilesystemof--out" in text
    assert f"{long_a}(its<stem>_composite.pngwouldbe259bytes)" in text  # the input named, once
    assert f"{long_e}(its<stem>_composite.pngwouldbe258bytes)" in text  # 244 bytes + 14
    assert "renamethem:anameofatmost241bytesbeforetheextensionfits" in text
    assert str(short) not in text and "Traceback" not in result.output
    assert not out.exists()  # nothing written, not even the masks that fit
    # an --out that exists (the name is then looked up: it must not be an OSError either)
    out.mkdir()
    result = _run(tmp_path / "in", "-o", out, "-w", ckpt, "--save", "composite")
    assert result.exit_code == 2 and "2inputswouldmakeoutputnames" in no_space(result.output)
    assert list(out.iterdir()) == []
    # the masks alone fit (253 and 248 bytes), and their atomic writes' temporaries are bounded
    result = _run(tmp_path / "in", "-o", out, "-w", ckpt, "--save", "mask")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}.png" for p in (long_a, long_e, short))
    assert _no_temporaries(out)


def test_the_name_limit_is_the_output_folders_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pdseg_cli.engine import predict_plan

    src = tmp_path / "src"
    (src / ("f" * 30)).mkdir(parents=True)
    cv2.imwrite(str(src / ("b" * 40 + ".png")), textured_image(10, 10))
    cv2.imwrite(str(src / ("f" * 30) / "x.png"), textured_image(10, 10))
    asked: list[str] = []
    limit = {"bytes": 50}  # a file system that takes names of 50 bytes, then one of 25
    real_lstat = os.lstat

    def pathconf(path: object, name: str) -> int:
        asked.append(str(path))
        assert name == "PC_NAME_MAX"
        return limit["bytes"]

    def lstat(path: str | os.PathLike[str], *args: object, **kw: object) -> os.stat_result:
        name = os.path.basename(path)  # asked in the nearest folder of --out that exists
        if os.path.dirname(path) == str(tmp_path) and len(os.fsencode(name)) > limit["bytes"]:
            raise OSError(errno.ENAMETOOLONG, "File name too long")
        return real_lstat(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(predict_plan.os, "pathconf", pathconf)
    monkeypatch.setattr(predict_plan.os, "lstat", lstat)
    out = tmp_path / "deep" / "out"  # not made yet: its nearest existing folder is asked
    # b*40 + _composite.png is 54 bytes
    with pytest.raises(InputError) as info:
        predict_plan.plan_predict([src], out, save=["mask", "composite"])
    assert "1 input would make output names longer than the 50 bytes" in info.value.message
    assert "(its <stem>_composite.png would be 54 bytes)" in info.value.message
    assert info.value.hint is not None and "rename it: a name of at most 36 bytes" in info.value.hint
    # a folder --recursive mirrors under --out is a name too
    limit["bytes"] = 25
    with pytest.raises(InputError) as info:
        predict_plan.plan_predict([src], out, recursive=True)
    assert f"(its folder {'f' * 30} is 30 bytes)" in info.value.message
    assert "b" * 40 in info.value.message
    assert info.value.hint is not None and "a folder name of at most 25 bytes fits" in info.value.hint
    assert not out.exists()  # refused before --out is made
    limit["bytes"] = 50
    plan = predict_plan.plan_predict([src], out, save=["mask"])  # b*40 + .png, 44 bytes, fits
    assert len(plan.todo) == 1 and asked[0] == str(tmp_path)


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(
    folder: Path, tmp_path: Path, ckpt: Path
) -> None:
    out = tmp_path / "masks"
    out.mkdir()
    stale = out / atomic.temp_name(out / "a.png").replace(f".{os.getpid()}-", f".{dead_pid()}-")
    stale.write_bytes(b"half a mask")
    result = _run(folder, "-o", out, "-w", ckpt)
    assert result.exit_code == 0, result.output
    assert not stale.exists() and _no_temporaries(out)


def test_unwritable_out_fails_before_loading_the_model(
    folder: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr("pdseg_cli.engine.predict.Predictor.__init__", boom)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        result = _run(folder, "-o", out, "-w", ckpt)
        assert result.exit_code == 2, result.output
        assert "--out" in result.output


def test_interrupted_write_leaves_nothing_behind(
    folder: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = imio.write_bytes_atomic
    calls = []

    def write_then_fail(path: Path, data: bytes) -> None:
        calls.append(path)
        if Path(path).name == "b.png":  # fail half-way through writing this one
            with atomic.atomic_path(path) as tmp:
                tmp.write_bytes(data[: len(data) // 2])
                raise OSError(5, "Input/output error")  # one file's fault (a full disk stops the run)
        real(path, data)

    monkeypatch.setattr(imio, "write_bytes_atomic", write_then_fail)
    out = tmp_path / "out"
    result = _run(folder, "-o", out, "-w", ckpt)
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]
    assert "Input/outputerror" in no_space(result.output)


def test_ctrl_c_leaves_no_partial_file(
    folder: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Predictor.forward
    seen = []

    def forward_then_ctrl_c(self: Predictor, arrays: list) -> torch.Tensor:
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(self, arrays)

    monkeypatch.setattr(Predictor, "forward", forward_then_ctrl_c)
    out, report = tmp_path / "out", tmp_path / "run.json"
    result = _run(folder, "-o", out, "-w", ckpt, "--json", report)
    assert result.exit_code == 130
    assert [p.name for p in out.iterdir()] == ["a.png"]  # the first image, complete
    assert "stopped after 1 of 3 images: 1 done, 0 failed" in flat(result.output)  # how far it got
    data = json.loads(report.read_text())  # a script learns the same from the report
    assert [f["input"] for f in data["files"]] == [str(folder / "a.jpg")] and data["counts"]["done"] == 1
    left = [str(folder / name) for name in ("b.png", "c.tif")]
    assert data["stopped"] == {"why": "interrupted", "signal": "SIGINT", "not_reached": left}
    assert cv2.imread(str(out / "a.png")) is not None
    result = _run(folder, "-o", out, "-w", ckpt, "--skip-existing")  # and the run resumes
    assert result.exit_code == 0 and sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]


def test_a_run_stopped_by_sigterm_says_so(
    folder: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scheduler's time limit (SIGTERM) read as a person's Ctrl-C, in the log and in --json."""
    import signal

    from pdseg_cli.runtime.stop import note_stop

    def forward_then_term(self: Predictor, arrays: list) -> torch.Tensor:
        note_stop(signal.SIGTERM)  # as pdseg's handler does, before it raises
        raise KeyboardInterrupt

    monkeypatch.setattr(Predictor, "forward", forward_then_term)
    out, report = tmp_path / "out", tmp_path / "run.json"
    result = _run(folder, "-o", out, "-w", ckpt, "--json", report)
    assert result.exit_code == 130 and "error: interrupted (SIGTERM)" in flat(result.output), result.output
    stopped = json.loads(report.read_text())["stopped"]
    assert stopped["why"] == "interrupted" and stopped["signal"] == "SIGTERM"


def test_a_ctrl_c_of_a_callers_own_kind_reaches_the_caller_as_it_is(
    folder: Path, tmp_path: Path, predictor: Predictor
) -> None:
    """A plain Ctrl-C comes back with what was done (for --json); a KeyboardInterrupt subclass a
    caller raises from on_progress must not be swapped for another."""
    from pdseg_cli.engine.predict_summary import PredictInterrupted

    class Stop(KeyboardInterrupt):
        pass

    def stop(result: object) -> None:
        raise Stop

    with pytest.raises(Stop):
        predictor.predict_paths([folder], tmp_path / "a", on_progress=stop)

    def ctrl_c(result: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(PredictInterrupted) as info:
        predictor.predict_paths([folder], tmp_path / "b", on_progress=ctrl_c)
    assert info.value.summary.interrupted and info.value.summary.done >= 1  # writes in flight finish


def test_an_out_is_made_by_the_first_write_so_an_early_end_leaves_none(
    folder: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "new" / "masks"  # neither folder exists before the run
    plan_predict([folder], out)  # checked writable (where it will be made), not made
    assert not (tmp_path / "new").exists()

    def ctrl_c(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("pdseg_cli.engine.predict.Predictor.__init__", ctrl_c)
    result = _run(folder, "-o", out, "-w", ckpt)
    assert result.exit_code == 130, result.output
    assert not (tmp_path / "new").exists()  # Ctrl-C while the model loads: no empty folder behind
    kept = tmp_path / "kept"
    kept.mkdir()  # an empty folder the user made stays, as does one named through ".."
    assert _run(folder, "-o", kept, "-w", ckpt).exit_code == 130 and kept.is_dir()
    assert _run(folder, "-o", tmp_path / "gone" / ".." / "kept", "-w", ckpt).exit_code == 130
    assert kept.is_dir() and not (tmp_path / "gone").exists()


def test_an_output_that_links_outside_out_is_refused_before_anything_is_written(
    folder: Path, tmp_path: Path, ckpt: Path
) -> None:
    # writes go through links: a mask named like an input's, linked to a GT kept elsewhere, would
    # overwrite that GT in silence
    stem = sorted(folder.iterdir())[0].stem
    gts = tmp_path / "gts"
    gts.mkdir()
    (gts / f"{stem}.png").write_bytes(b"a hand-made mask")
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{stem}.png").symlink_to(gts / f"{stem}.png")
    result = _run(folder, "-o", out, "-w", ckpt)
    assert result.exit_code == 2, result.output
    assert f"the output {out / stem}.png is a link to {(gts / stem).resolve()}.png, outside --out" in flat(
        result.output
    )
    assert (gts / f"{stem}.png").read_bytes() == b"a hand-made mask" and "Traceback" not in result.output
    (out / f"{stem}.png").unlink()
    (out / f"{stem}.png").symlink_to(f"{stem}.png")  # a link to itself: a loop, one line too
    result = _run(folder, "-o", out, "-w", ckpt)
    assert result.exit_code == 2 and "is a link in a loop" in flat(result.output), result.output
    (out / f"{stem}.png").unlink()
    write_output_png(out / "kept.png", np.zeros((4, 4), np.uint8))  # an earlier mask, say
    (out / f"{stem}.png").symlink_to("kept.png")  # inside --out: written through, the link stays
    assert _run(folder, "-o", out, "-w", ckpt).exit_code == 0
    assert (out / f"{stem}.png").is_symlink() and cv2.imread(str(out / "kept.png")).shape[0] > 4


def test_recursive_mirrors_subfolders_and_globs(tmp_path: Path, ckpt: Path) -> None:
    src = tmp_path / "src"
    (src / "x" / "y").mkdir(parents=True)
    cv2.imwrite(str(src / "top.png"), textured_image(20, 30))
    cv2.imwrite(str(src / "x" / "y" / "deep.jpg"), textured_image(25, 21))
    out = tmp_path / "out"
    assert _run(src, "-o", out, "-w", ckpt).exit_code == 0  # not recursive: top level only
    assert [p.name for p in out.rglob("*.png")] == ["top.png"]
    result = _run(src, "-o", out, "-w", ckpt, "-r")
    assert result.exit_code == 0, result.output
    assert (out / "x" / "y" / "deep.png").is_file()
    out2 = tmp_path / "out2"
    result = _run(str(src / "**" / "*.jpg"), "-o", out2, "-w", ckpt, "--recursive")
    assert result.exit_code == 0, result.output
    assert (out2 / "x" / "y" / "deep.png").is_file()


def test_an_out_named_like_an_image_is_refused_not_made_a_folder(tmp_path: Path, ckpt: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), textured_image(20, 30))
    result = _run(tmp_path / "a.png", "-o", tmp_path / "mask.png", "-w", ckpt)
    assert result.exit_code == 2 and "names a file, and --out is the folder" in flat(result.output)
    assert not (tmp_path / "mask.png").exists()
    (tmp_path / "odd.png").mkdir()  # a folder that happens to have such a name is used
    assert _run(tmp_path / "a.png", "-o", tmp_path / "odd.png", "-w", ckpt).exit_code == 0
    assert (tmp_path / "odd.png" / "a.png").is_file()


def test_options_that_cannot_apply_are_said(tmp_path: Path, ckpt: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), textured_image(20, 30))
    masks = _run(
        tmp_path / "a.png", "-o", tmp_path / "o1", "-w", ckpt, "--bg", "red", "--no-refine-foreground"
    )
    assert masks.exit_code == 0, masks.output
    assert "--bg colours --save composite only" in flat(masks.output)
    assert "apply to --save alpha and composite only" in flat(masks.output)
    cutout = _run(tmp_path / "a.png", "-o", tmp_path / "o2", "-w", ckpt, "--bg", "red", "--save", "composite")
    assert cutout.exit_code == 0 and "warning" not in cutout.output
    plain = _run(tmp_path / "a.png", "-o", tmp_path / "o3", "-w", ckpt)  # defaults are never "given"
    assert plain.exit_code == 0 and "warning" not in plain.output


def test_recursive_out_inside_the_inputs_names_the_images_it_leaves_out(tmp_path: Path, ckpt: Path) -> None:
    # the walk leaves --out out so that outputs are not read as inputs; a photo already in it
    # went unsegmented in silence
    src = tmp_path / "photos"
    (src / "2024" / ".hidden").mkdir(parents=True)
    cv2.imwrite(str(src / "top.png"), textured_image(20, 30))
    cv2.imwrite(str(src / "2024" / "coffee.jpg"), textured_image(25, 21))
    cv2.imwrite(str(src / "2024" / ".hidden" / "h.jpg"), textured_image(25, 21))  # hidden: never read anyway
    result = _run(src, "-o", src / "2024", "-w", ckpt, "-r", "--save", "mask,alpha")
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert (
        "is inside a folder --recursive reads and is left out of it: 1 image there is not segmented" in text
    )
    assert "coffee.jpg" in text and "h.jpg" not in text
    summary = Predictor(ckpt, device="cpu").predict_paths([src], src / "2024", recursive=True)
    assert [p.name for p in summary.left_in_out] == ["coffee.jpg"]  # the Python API is told too
    (src / "2024" / "coffee.jpg").unlink()
    again = _run(src, "-o", src / "2024", "-w", ckpt, "-r", "--save", "mask,alpha")  # outputs are not named
    assert again.exit_code == 0 and "left out of it" not in flat(again.output)
    assert sorted(p.name for p in (src / "2024").iterdir()) == [".hidden", "top.png", "top_alpha.png"]
    pattern = _run(str(src / "*.png"), "-o", src / "2024", "-w", ckpt, "-r")  # files: no walk
    assert pattern.exit_code == 0 and "left out of it" not in flat(pattern.output)
    cv2.imwrite(str(src / "2024" / "tea.jpg"), textured_image(25, 21))
    folders = _run(
        str(tmp_path / "phot*"), "-o", src / "2024", "-w", ckpt, "-r"
    )  # a pattern's folder is walked
    assert folders.exit_code == 0 and "tea.jpg" in flat(folders.output)


def test_broken_links_and_link_loops_are_counted_not_a_traceback(tmp_path: Path, ckpt: Path) -> None:
    from pdseg_cli.engine.predict_plan import collect_inputs

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    cv2.imwrite(str(src / "sub" / "ok.png"), textured_image(20, 30))
    (src / "loop1.jpg").symlink_to("loop2.jpg")
    (src / "loop2.jpg").symlink_to("loop1.jpg")
    (src / "gone.jpg").symlink_to("nowhere.jpg")
    for recursive in (False, True):
        images, others, _ = collect_inputs([src], recursive=recursive)
        assert [f.path.name for f in images] == (["ok.png"] if recursive else [])
        assert sorted(p.name for p in others) == ["gone.jpg", "loop1.jpg", "loop2.jpg"]
    _, others, _ = collect_inputs([str(src / "*.jpg")])  # matched by a pattern: counted too
    assert sorted(p.name for p in others) == ["gone.jpg", "loop1.jpg", "loop2.jpg"]
    result = _run(src, "-r", "-o", tmp_path / "out", "-w", ckpt)
    assert result.exit_code == 0, result.output
    text = no_space(result.output)
    assert "skipped,brokenlinksorlinkloops:" in text and "notakindpdsegreads" not in text


def test_no_images_and_bad_options(tmp_path: Path, ckpt: Path, folder: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run(empty, "-o", tmp_path / "o", "-w", ckpt)  # no subfolders: --recursive cannot help
    assert result.exit_code == 2 and "no images" in result.output and "--recursive" not in result.output
    (empty / "sub").mkdir()
    result = _run(empty, "-o", tmp_path / "o", "-w", ckpt)
    assert result.exit_code == 2 and "no images" in result.output and "--recursive" in result.output
    notes = folder / "notes.txt"
    result = _run(notes, "-o", tmp_path / "o", "-w", ckpt)  # a file given by name: subfolders cannot help
    assert result.exit_code == 2 and ".txt is not a kind of image pdseg reads" in result.output
    assert "--recursive" not in result.output
    assert _run(folder, "-o", tmp_path / "o", "-w", ckpt, "--bg", "bluish").exit_code == 2
    assert _run(folder, "-o", tmp_path / "o", "-w", ckpt, "--threshold", "1.5").exit_code == 2
    assert _run(folder, "-o", tmp_path / "o", "-w", ckpt, "--save", "maks").exit_code == 2
    assert _run(tmp_path / "missing.png", "-o", tmp_path / "o", "-w", ckpt).exit_code == 2


def test_a_file_named_but_not_read_is_warned_of_under_quiet_too(
    tmp_path: Path, ckpt: Path, folder: Path
) -> None:
    """An image and a .gif named together: under --quiet the .gif was dropped without a word (the
    summary, which names it, is not printed)."""
    gif = tmp_path / "x.gif"
    gif.write_bytes(b"GIF89a")
    image = next(folder.glob("*.png"))
    result = _run(image, gif, "-o", tmp_path / "o", "-w", ckpt, "-q")
    assert result.exit_code == 0, result.output
    assert "warning: skipped, not a kind pdseg reads" in flat(result.output)
    assert "x.gif" in no_space(result.output)
    assert (tmp_path / "o" / f"{image.stem}.png").is_file()
    in_folder = tmp_path / "f"
    in_folder.mkdir()
    (in_folder / "y.gif").write_bytes(b"GIF89a")
    (in_folder / image.name).write_bytes(image.read_bytes())
    quiet = _run(in_folder, "-o", tmp_path / "o2", "-w", ckpt, "-q")  # met in a folder: the summary's
    assert quiet.exit_code == 0 and "warning" not in quiet.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_an_error_not_a_cpu_run(folder: Path, tmp_path: Path, ckpt: Path) -> None:
    result = _run(folder, "-o", tmp_path / "o", "-w", ckpt, "--device", "cuda")
    assert result.exit_code == 2
    assert "no CUDA GPU" in no_space(result.output).replace("noCUDAGPU", "no CUDA GPU")


def test_compile_option_reaches_the_model(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pdseg_cli.model.optimize import CompiledPDSeg

    modes: list[object] = []

    def fake_compile(module: torch.nn.Module, mode: str | None = None) -> torch.nn.Module:
        modes.append(mode)
        return module  # the plumbing only: a real compile takes minutes on a small CPU

    monkeypatch.setattr(torch, "compile", fake_compile)
    compiled = Predictor(ckpt, device="cpu", size=TRAIN, compile="reduce-overhead")
    assert isinstance(compiled.model, CompiledPDSeg) and modes == ["reduce-overhead"]
    eager = Predictor(ckpt, device="cpu", size=TRAIN)
    img = textured_image(40, 56)
    assert np.array_equal(compiled.predict(img), eager.predict(img))
    with pytest.raises(InputError, match="needs a PyTorch checkpoint"):
        Predictor(ckpt, device="cpu", optimized=False, compile="default")

    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), img)
    result = _run(folder, "--out", tmp_path / "out", "-w", ckpt, "-d", "cpu", "--compile", "default")
    assert result.exit_code == 0, result.output
    assert modes[-1] is None and (tmp_path / "out" / "a.png").is_file()
    bad = _run(folder, "--out", tmp_path / "out2", "-w", ckpt, "-d", "cpu", "--compile", "turbo")
    assert bad.exit_code == 2 and "not a torch.compile mode" in bad.output
    assert not (tmp_path / "out2").exists()  # refused before any work


def _like_cuda_graphs(module: torch.nn.Module, mode: str | None = None) -> object:
    """torch.compile as CUDA graphs behave: each call writes its output where the last call's was."""
    static: dict[torch.Size, torch.Tensor] = {}

    def replay(x: torch.Tensor, return_levels: bool = False) -> torch.Tensor:
        out = module(x, return_levels)
        return static.setdefault(out.shape, torch.empty_like(out)).copy_(out)

    return replay


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_tta_keeps_the_first_pass_of_a_cuda_graph_before_the_mirrored_one(
    ckpt: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the mirrored pass's replay overwrote the first pass's logits (on a GPU: "accessing tensor output
    # of CUDAGraphs that has been overwritten by a subsequent run")
    monkeypatch.setattr(torch, "compile", _like_cuda_graphs)
    img = textured_image(45, 70, seed=4)
    graphs = Predictor(ckpt, device="cpu", size=TRAIN, compile=mode, tta=True)
    eager = Predictor(ckpt, device="cpu", size=TRAIN, tta=True)
    x = eager.prepare_array(img.astype(np.float32))
    # within the fused operators' rounding (which compile leaves to Inductor); the overwritten pass
    # gave the mirror's logits twice, 13 off here
    torch.testing.assert_close(graphs.forward([x]), eager.forward([x]), rtol=0, atol=1e-4)


@pytest.mark.parametrize(("mode", "graphs"), [("default", False), ("reduce-overhead", True)])
def test_compile_with_full_size_warns_that_each_new_size_compiles_again(
    ckpt: Path, mode: str, graphs: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: module)
    notes = Predictor(ckpt, device="cpu", size="full", compile=mode).notes
    said = [n for n in notes if "--compile" in n]
    assert len(said) == 1, notes  # once, at the start
    assert f"--compile {mode} with --size full" in said[0] and "give a fixed --size" in said[0]
    assert ("CUDA graphs" in said[0]) == graphs
    for quiet in (Predictor(ckpt, device="cpu", size=TRAIN, compile=mode), Predictor(ckpt, device="cpu")):
        assert not [n for n in quiet.notes if "--compile" in n]


def test_a_float_tiff_with_nan_gives_finite_cutouts_and_a_warning(tmp_path: Path, ckpt: Path) -> None:
    img = textured_image(48, 64).astype(np.float32) / 255
    img[5:10, 5:10] = np.nan
    img[20:22, 30:40] = np.inf
    tifffile.imwrite(tmp_path / "nan.tif", img, photometric="rgb")
    out = tmp_path / "out"
    result = _run(tmp_path / "nan.tif", "-o", out, "-w", ckpt, "--save", "alpha,composite")
    assert result.exit_code == 0, result.output
    assert "pixelsareNaNorinfinite;readas0" in no_space(result.output)
    for name in ("nan_alpha.tif", "nan_composite.tif"):
        assert np.isfinite(tifffile.imread(out / name)).all(), name


def test_a_module_given_to_predictor_is_left_as_it_was() -> None:
    model = create_model("pdseg-tiny").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for optimized in (False, True):
        Predictor(model, device="cpu", size=64, optimized=optimized).predict(textured_image(20, 30))
        assert model.training  # a training loop that validates this way keeps training
        assert all(p.is_contiguous() for p in model.parameters())  # no channels_last conversion
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_predict_given_a_file_name_says_how_to_read_it(predictor: Predictor) -> None:
    with pytest.raises(TypeError, match=r"takes pixels, not a file name \('a.jpg'\).*read_image"):
        predictor.predict("a.jpg")


def test_predictor_names_a_missing_file_and_unwraps_a_wrapped_module(ckpt: Path, tmp_path: Path) -> None:
    from pdseg_cli.errors import WeightsError

    for bad in (tmp_path / "nope.pt", tmp_path):
        with pytest.raises(WeightsError, match="does not exist|is a folder, not a file"):
            Predictor(bad)
    wrapped = torch.nn.DataParallel(load_model(ckpt))  # its training size and normalisation still count
    assert Predictor(wrapped, device="cpu").size == Predictor(ckpt, device="cpu").size


def test_predict_paths_takes_one_folder_as_a_string(folder: Path, tmp_path: Path, ckpt: Path) -> None:
    summary = Predictor(ckpt, device="cpu").predict_paths(str(folder), tmp_path / "out")
    assert summary.done == 3  # the folder, not its name's characters


def test_a_module_that_is_not_a_one_map_segmenter_is_refused() -> None:
    """Any nn.Module is taken directly; one with 3 output channels had its first used in silence."""
    predictor = Predictor(torch.nn.Conv2d(3, 3, 1), device="cpu", size=64)
    image = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(ValueError, match=r"the model gave \(1, 3, 64, 64\).*\(B, 1, H, W\) logits"):
        predictor.predict(image)
    with pytest.raises(ValueError, match="batch must be at least 1, got 0"):
        Predictor(torch.nn.Conv2d(3, 1, 1), device="cpu", size=64).predict_batch([image], batch=0)
    # one image, not a list: its 40 rows were segmented as 40 images of 50x3
    with pytest.raises(ValueError, match=r"not one \(40, 50, 3\) image: use predict\(image\)"):
        Predictor(torch.nn.Conv2d(3, 1, 1), device="cpu", size=64).predict_batch(image)
    stacked = Predictor(torch.nn.Conv2d(3, 1, 1), device="cpu", size=64).predict_batch(np.stack([image] * 2))
    assert [m.shape for m in stacked] == [(40, 50)] * 2  # an (N, H, W, C) array is N images
    gray = Predictor(torch.nn.Conv2d(3, 1, 1), device="cpu", size=64).predict_batch(
        np.zeros((2, 40, 50), np.uint8)
    )
    assert [m.shape for m in gray] == [(40, 50)] * 2  # and an (N, H, W) one N gray images


def test_a_module_that_fails_inside_torch_is_named_with_what_predictor_needs() -> None:
    # nn.Linear(3, 3) gave torch's "mat1 and mat2 shapes cannot be multiplied" alone
    predictor = Predictor(torch.nn.Linear(3, 3), device="cpu", size=32)
    with pytest.raises(
        RuntimeError,
        match=r"the model failed on an input of \(1, 3, 32, 32\) \(mat1 and mat2 "
        r"shapes cannot be multiplied.*\): Predictor runs a module that maps \(B, 3, H, W\)",
    ):
        predictor.predict(np.zeros((20, 30, 3), np.uint8))


def test_nan_samples_of_an_array_are_read_as_0_with_a_warning(predictor: Predictor) -> None:
    image = textured_image(40, 52).astype(np.float32) / 255
    clean = predictor.predict(image)
    image[:4, :4] = np.nan
    image[10, 10, 1] = -np.inf
    with pytest.warns(RuntimeWarning, match="17 pixels of the image are NaN or infinite; read as 0"):
        got = predictor.predict(image)
    assert got.shape == clean.shape
    with pytest.warns(RuntimeWarning, match="16 pixels of the image are NaN"):  # gray: pixels, not samples
        predictor.predict(image[..., 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finite image: no warning
        predictor.predict(np.where(np.isfinite(image), image, 0))


@pytest.mark.parametrize("name", ["tta", "channels_last", "optimized"])
def test_switches_must_be_bools(name: str) -> None:
    # bool("no") is True: Predictor(tta="no") ran with test-time augmentation on
    with pytest.raises(TypeError, match=f"{name} must be True or False, not 'no'"):
        Predictor(torch.nn.Conv2d(3, 1, 1), device="cpu", size=64, **{name: "no"})
    assert Predictor(torch.nn.Conv2d(3, 1, 1), device="cpu", size=64, tta=np.bool_(True)).tta is True


def test_full_size_warns_for_models_trained_small_and_offers_no_bigger_size() -> None:
    from pdseg_cli.engine.predict import FULL_SIZE_TRAINED, full_size_note

    note = full_size_note("full", 512)
    assert note is not None and "leave --size out to work at 512" in note
    # it offered "--size 1024", at which the bundled weights score maxF 0.525 (0.735 at 512)
    assert "1024" not in note
    assert full_size_note("full", FULL_SIZE_TRAINED) is None and full_size_note(512, 256) is None


@pytest.mark.skipif(os.name == "nt", reason="a SIGINT sent to itself ends the process on Windows")
def test_a_ctrl_c_that_waits_for_long_writes_says_so(
    folder: Path, tmp_path: Path, ckpt: Path, predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a large scan's outputs take tens of seconds to write: the Ctrl-C seemed to do nothing, and
    # was pressed again
    import signal
    import threading

    from pdseg_cli.engine import predict_run
    from pdseg_cli.engine.predict_summary import PredictInterrupted

    real = predict_run._write_outputs
    started: list[str] = []
    lock = threading.Lock()

    def slow_after_the_first(plan: object, prepared: predict_run._Prepared, *rest: object) -> object:
        if prepared.item.path.name != "a.jpg":
            with lock:
                started.append(prepared.item.path.name)
                if len(started) == 2:  # both slow writes under way: the user presses Ctrl-C
                    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            time.sleep(3 * predict_run.STOP_NOTICE_S)
        return real(plan, prepared, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(predict_run, "_write_outputs", slow_after_the_first)
    monkeypatch.setattr(predict_run, "STOP_NOTICE_S", 0.3)  # writes of 0.9 s outlast it
    plan = plan_predict([folder], tmp_path / "out")
    said: list[int] = []
    with pytest.raises(PredictInterrupted) as info:
        predictor.run_plan(plan, batch=3, on_stopping=said.append, write_workers=3)
    assert said in ([2], [1])  # b.png and c.tif (or the later one), still being written
    assert info.value.summary.done == 3  # and finished: written whole, not cut short
    started.clear()
    result = _run(folder, "-o", tmp_path / "cli", "-w", ckpt, "--batch", "3")  # said as a status line
    assert result.exit_code == 130 and "stopping: finishing the outputs of" in flat(result.output)
    assert len(list((tmp_path / "cli").iterdir())) == 3

    def ctrl_c(result: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_run, "_write_outputs", real)
    quick: list[int] = []
    with pytest.raises(PredictInterrupted):  # writes that end within the second: nothing to say
        predictor.run_plan(
            plan_predict([folder], tmp_path / "o2"), on_progress=ctrl_c, on_stopping=quick.append
        )
    assert quick == []


def test_a_second_ctrl_c_waits_for_the_writes_in_flight() -> None:
    # a writer thread still inside an encoder as the interpreter exits aborts the process
    # (std::terminate): a second Ctrl-C during the wait for the writers no longer cuts it short
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from pdseg_cli.engine.predict_run import _wait_for

    pool = ThreadPoolExecutor(1)
    ended = threading.Event()
    pool.submit(lambda: (time.sleep(0.3), ended.set()))
    real = pool.shutdown
    calls = []

    def shutdown(wait: bool = True, *, cancel_futures: bool = False) -> None:
        calls.append(wait)
        if wait and calls.count(True) == 1:
            raise KeyboardInterrupt  # the second Ctrl-C, during the wait
        real(wait=wait, cancel_futures=cancel_futures)

    pool.shutdown = shutdown  # type: ignore[method-assign]
    assert _wait_for(pool, cancel=True) is True and ended.is_set()


def test_a_link_to_another_input_is_an_input_of_its_own_name(tmp_path: Path, ckpt: Path) -> None:
    from pdseg_cli.engine.predict_plan import collect_inputs

    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.jpg"), textured_image(20, 30))
    (src / "b.jpg").symlink_to("a.jpg")  # was dropped in silence, while a hard link was kept
    os.link(src / "a.jpg", src / "c.jpg")
    images, _, _ = collect_inputs([src, src / "a.jpg", str(src / "*.jpg")])  # a name given thrice: once
    assert [f.path.name for f in images] == ["a.jpg", "b.jpg", "c.jpg"]
    result = _run(src, "-o", tmp_path / "out", "-w", ckpt)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.png"]


def test_a_missing_input_gets_the_closest_name_or_check_the_path(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "coffee.jpg"), textured_image())
    typo = _run(tmp_path / "cofee.jpg", "-o", tmp_path / "out")
    assert typo.exit_code == 2 and f"did you mean {tmp_path / 'coffee.jpg'}?" in flat(typo.output)
    nowhere = _run(tmp_path / "nope" / "a.jpg", "-o", tmp_path / "out")
    assert "check the path" in flat(nowhere.output) and "does not exist" in flat(nowhere.output)


def test_outputs_that_differ_only_in_case_clash_where_out_folds_case(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A.jpg and a.png write A.png and a.png: on macOS, Windows or an exFAT drive the second
    replaced the first in silence, and --skip-existing then counted both as done."""
    from pdseg_cli.engine import predict_plan

    src = tmp_path / "src"
    src.mkdir()
    image = np.full((40, 50, 3), 120, np.uint8)
    cv2.imwrite(str(src / "A.jpg"), image)
    cv2.imwrite(str(src / "a.png"), image)
    assert predict_plan.plan_predict([src], tmp_path / "out").todo  # case-sensitive: two files
    monkeypatch.setattr(predict_plan, "folds_case", lambda folder: True)
    with pytest.raises(InputError, match="differ only in case are one file"):
        predict_plan.plan_predict([src], tmp_path / "out2")


def test_an_input_link_that_leads_nowhere_says_so(tmp_path: Path) -> None:
    """A loop of links was "no such file, folder or pattern", hint "did you mean <itself>?"."""
    from pdseg_cli.engine.predict_plan import plan_predict

    (tmp_path / "la").symlink_to(tmp_path / "lb")
    (tmp_path / "lb").symlink_to(tmp_path / "la")
    (tmp_path / "gone").symlink_to(tmp_path / "missing.jpg")
    for name in ("la", "gone"):
        with pytest.raises(InputError, match="symbolic link that leads nowhere") as err:
            plan_predict([tmp_path / name], tmp_path / "out")
        assert "did you mean" not in str(err.value)


def test_a_master_beside_its_copy_gets_the_two_runs_that_need_no_renaming(tmp_path: Path) -> None:
    """IMG_0001.tif beside IMG_0001.jpg, as archives keep them: the hint gives the two commands."""
    from pdseg_cli.engine.predict_plan import plan_predict

    src = tmp_path / "scans"
    src.mkdir()
    image = np.full((40, 50, 3), 120, np.uint8)
    cv2.imwrite(str(src / "IMG_0001.jpg"), image)
    cv2.imwrite(str(src / "IMG_0001.tif"), image)
    with pytest.raises(InputError) as err:
        plan_predict([src], tmp_path / "cut")
    assert f"pdseg predict '{src}/*.jpg' -o {tmp_path}/cut-jpg" in (err.value.hint or "")
    assert f"then pdseg predict '{src}/*.tif' -o {tmp_path}/cut-tif" in (err.value.hint or "")
    assert plan_predict([f"{src}/*.jpg"], tmp_path / "cut-jpg").todo  # the first of them plans


def test_the_two_runs_hint_is_offered_only_where_it_leaves_nothing_out(tmp_path: Path) -> None:
    """.JPG beside .jpg made two runs into one --out; a folder of four kinds got runs for two."""
    from pdseg_cli.engine.predict_plan import plan_predict

    image = np.full((40, 50, 3), 120, np.uint8)
    for folder, names in (
        ("cases", ("IMG_1.JPG", "IMG_1.jpg")),
        ("mixed", ("a.jpg", "a.png", "b.webp", "c.tif")),
    ):
        (tmp_path / folder).mkdir()
        for name in names:
            cv2.imwrite(str(tmp_path / folder / name), image)
        with pytest.raises(InputError) as err:
            plan_predict([tmp_path / folder], tmp_path / f"{folder}-out")
        assert "run each kind into its own --out" not in (err.value.hint or ""), err.value.hint


def test_a_name_windows_keeps_for_a_device_is_refused_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CON.jpg from a Linux share makes CON.png, which Windows opens as the console."""
    from pdseg_cli.engine import predict_plan

    src = tmp_path / "share"
    src.mkdir()
    for name in ("CON.jpg", "aux.tar.png", "console.jpg", "com10.jpg"):
        cv2.imwrite(str(src / name), np.full((20, 30, 3), 90, np.uint8))
    assert len(predict_plan.plan_predict([src], tmp_path / "out").todo) == 4  # elsewhere, names like any
    monkeypatch.setattr(predict_plan, "_on_windows", lambda: True)
    with pytest.raises(InputError, match="2 inputs would make outputs with a name Windows keeps") as err:
        predict_plan.plan_predict([src], tmp_path / "out2")
    assert "CON.jpg" in str(err.value) and "aux.tar.png" in str(err.value) and "console" not in str(err.value)


def test_a_ctrl_c_after_the_last_image_says_nothing_is_left(capsys: pytest.CaptureFixture[str]) -> None:
    # it said "run the same command again with --skip-existing to do only the rest" of nothing
    from types import SimpleNamespace

    from pdseg_cli.ui import prediction

    done = [SimpleNamespace(status="done")] * 2
    prediction.interrupted(False, done, 2)
    said = flat(capsys.readouterr().err)
    assert "stopped after 2 of 2 images: 2 done, 0 failed" in said
    assert "nothing is left to do" in said and "--skip-existing" not in said
    for seen, whole_run in (
        (done[:1], True),
        (done, False),
        ([*done[:1], SimpleNamespace(status="failed")], True),
    ):
        prediction.interrupted(False, seen, 2, whole_run=whole_run)  # images left, here or in another process
        assert "with --skip-existing to do only the rest" in flat(capsys.readouterr().err)


# --scales: multi-scale inference


def test_scale_sides_round_to_the_stride_and_refuse_what_cannot_run() -> None:
    from pdseg_cli.engine.predict import scale_sides

    assert scale_sides((0.875, 1, 1.125), 512) == (448, 512, 576)
    assert scale_sides((1.0, 1.01, 0.5), 100) == (64, 96)  # 50 -> 64, 100 and 101 -> 96 once
    assert scale_sides((0.01,), 512) == (32,)  # never below the stride
    assert scale_sides(None, 512) == () == scale_sides((), 512)
    for bad, words in (
        ((0,), "in (0, 4]"),
        ((5,), "in (0, 4]"),
        (("1",), "each scale is a number"),
        ((True,), "each scale is a number"),
        ((1, 1, 1, 1, 1), "at most 4"),
    ):
        with pytest.raises(InputError, match=words.replace("(", r"\(").replace("]", r"\]")):
            scale_sides(bad, 512)
    with pytest.raises(InputError, match="--size full runs each image at its own"):
        scale_sides((1, 1.125), "full")
    with pytest.raises(InputError, match="takes only 1024x1024"):
        scale_sides((1, 1.125), 1024, fixed=1024)


def test_scales_average_each_sides_logits_at_the_largest_side(ckpt: Path) -> None:
    image = textured_image(37, 53, 4)[..., ::-1].copy()
    multi = Predictor(ckpt, device="cpu", size=64, scales=(0.5, 1, 1.5))
    assert multi.scale_sides == (32, 64, 96) and "32+64+96 (--scales of 64" in multi.describe_setting()
    x = T.to_float_rgb(image)
    logits = []
    for side in (32, 64, 96):  # each side from the image itself, as one-size predictors make it
        one = Predictor(ckpt, device="cpu", size=side)
        out = one.forward([one.prepare_array(x)])
        logits.append(F.interpolate(out, size=(96, 96), mode="bilinear", align_corners=False))
    want = multi.to_map(torch.stack(logits).mean(0), image.shape[:2], None)
    assert np.array_equal(multi.predict(image), want)
    assert not np.array_equal(want, Predictor(ckpt, device="cpu", size=64).predict(image))
    # predict_batch of several images of other sizes (each image a list of arrays with scales)
    other = textured_image(20, 30, 5)[..., ::-1].copy()
    maps = multi.predict_batch([image, other, image], batch=2)
    assert np.array_equal(maps[0], want) and np.array_equal(maps[2], want)
    assert np.array_equal(maps[1], multi.predict(other))


def test_a_folder_run_with_scales_writes_what_predict_gives(folder: Path, tmp_path: Path, ckpt: Path) -> None:
    result = _run(folder, "-o", tmp_path / "out", "-w", ckpt, "--size", "64", "--scales", "0.5,1,1.5")
    assert result.exit_code == 0, result.output
    assert "32+64+96" in flat(result.output)
    multi = Predictor(ckpt, device="cpu", size=64, scales=(0.5, 1, 1.5))
    got = cv2.imread(str(tmp_path / "out" / "a.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(got, multi.predict(imio.read_image(folder / "a.jpg").pixels))
    bad = _run(folder, "-o", tmp_path / "o2", "-w", ckpt, "--scales", "1,big")
    assert bad.exit_code == 2 and "--scales 1,big: give numbers separated by commas" in flat(bad.output)
    full = _run(folder, "-o", tmp_path / "o3", "-w", ckpt, "--size", "full", "--scales", "1,1.5")
    assert full.exit_code == 2 and "--scales multiplies a working size" in flat(full.output)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes: POSIX")
def test_a_named_pipe_among_the_images_is_skipped_not_waited_on(tmp_path: Path, ckpt: Path) -> None:
    """A FIFO of an image's name, in a folder walked with -r or linked into one, blocked the plan
    for good on its first read (pdseg looks at an output-like file's mark); one in a folder read
    without -r was dropped without a word."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    cv2.imwrite(str(photos / "a.png"), textured_image())
    os.mkfifo(photos / "pipe.png")
    os.mkfifo(photos / "sub" / "deep.jpg")
    (photos / "link.png").symlink_to(photos / "pipe.png")
    for extra in ([], ["-r"]):
        result = _run(photos, "--out", tmp_path / f"out{len(extra)}", "-w", ckpt, *extra)
        assert result.exit_code == 0, result.output
        pipes = [photos / "link.png", photos / "pipe.png", *([photos / "sub" / "deep.jpg"] if extra else [])]
        said = "skipped, not files (a named pipe, a device or a socket, or a link to one): " + ", ".join(
            map(str, pipes)
        )
        assert no_space(said) in no_space(result.output)
        assert sorted(p.name for p in (tmp_path / f"out{len(extra)}").iterdir()) == ["a.png"]


class _HalfNaN(torch.nn.Module):
    """Logits whose left half is NaN, as a model overflowing in fp16 gives."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.mean(1, keepdim=True)
        out[..., : x.shape[-1] // 2] = float("nan")
        return out


def test_a_map_with_nan_is_written_with_a_warning_naming_the_image(tmp_path: Path) -> None:
    """NaN becomes 0 in the map: a model that overflowed gave black masks, status done, no word."""
    cv2.imwrite(str(tmp_path / "a.png"), textured_image())
    predictor = Predictor(_HalfNaN(), device="cpu", size=32)
    summary = predictor.predict_paths([tmp_path / "a.png"], tmp_path / "out")
    assert summary.done == 1
    assert summary.results[0].warnings == [
        f"{tmp_path / 'a.png'}: the model's map had 512 of 1,024 values NaN, written as 0 (background)"
    ]
