"""`pdseg predict` when files fail: each failure named as it happens, a full disk that stops the run at
once, and a run with nothing left to do that loads no model (pdseg-tiny, CPU)."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import flat, run_cli, textured_image, tiny_checkpoint, torchrun_env

from pdseg_cli import runtime, ui
from pdseg_cli.data import atomic, header
from pdseg_cli.data import images as imio
from pdseg_cli.engine.predict import Predictor
from pdseg_cli.engine.predict_plan import plan_predict
from pdseg_cli.engine.predict_summary import OutputWriteStopped
from pdseg_cli.runtime import Distributed

N = 12  # images i00..i11
FULL_FROM = 2  # the disk fills up at i02's write


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("w") / "tiny.pt", train_size=32)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(N):
        cv2.imwrite(str(folder / f"i{i:02d}.png"), textured_image(20, 24, seed=i))
    return folder


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(atomic.TEMP_SUFFIX)]


def _full_disk(monkeypatch: pytest.MonkeyPatch, code: int, full_from: int = FULL_FROM) -> list[int]:
    """Writes of i<full_from> and later fail with ``code`` after a partial temporary, as on a disk
    that fills up; the model waits for the writes before it, as on a disk slower than the model,
    so that how many images it ran on is exact. Returns the list the model's calls are counted in."""
    real_write, real_forward = imio.write_png, Predictor.forward
    finished: list[Path] = []
    calls: list[int] = []

    def write_png(path: Path, pixels: np.ndarray, **kwargs: object) -> None:
        try:
            if int(path.stem[1:]) < full_from:
                real_write(path, pixels, **kwargs)
                return
            with atomic.atomic_path(path) as tmp:
                tmp.write_bytes(b"\x89PNG\r\n\x1a\n half a file")
                raise OSError(code, errno.errorcode[code], str(tmp))
        finally:
            finished.append(path)

    def forward(self: Predictor, arrays: list[np.ndarray]) -> object:
        deadline = time.monotonic() + 10
        while len(finished) < len(calls) and time.monotonic() < deadline:
            time.sleep(0.002)
        calls.append(len(arrays))
        return real_forward(self, arrays)

    monkeypatch.setattr(imio, "write_png", write_png)
    monkeypatch.setattr(Predictor, "forward", forward)
    return calls


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (errno.ENOSPC, "free some disk space"),
        (errno.EDQUOT, "free some of your disk quota"),
        (errno.EROFS, "the file system of --out is read-only: make it writable"),
    ],
)
def test_a_full_disk_stops_the_run_at_the_first_write_it_fails(
    images: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch, code: int, fix: str
) -> None:
    calls = _full_disk(monkeypatch, code)
    out, report = tmp_path / "out", tmp_path / "run.json"
    result = run_cli(
        "predict", images, "-o", out, "-w", ckpt, "--device", "cpu", "--json", report, columns=300
    )
    text = flat(result.output)
    assert result.exit_code == 1, text
    # the model ran on the image whose write failed and at most the one it was running on then,
    # not on every image left (which it did, each one then failing to write)
    assert len(calls) <= FULL_FROM + 2, calls
    assert sorted(p.name for p in out.iterdir()) == ["i00.png", "i01.png"]  # kept; no temporary
    assert not _temporaries(out)
    why = f"cannot write {out / 'i02.png'} ({errno.errorcode[code]})"
    assert f"error: {images / 'i02.png'}: {why}" in text, text
    assert text.count("error:") == 1, text  # one line, not one per image left
    assert f"hint: {fix}, then run the same command again with --skip-existing to go on" in text
    assert text.endswith("or run it with another --out")
    assert "damaged file" not in text  # the hint for damaged inputs is not the disk's
    data = json.loads(report.read_text())  # written though the run stopped: what is done, what is not
    # i03's write may have been under way too, and failed: then it is counted (written nothing)
    failed = data["counts"]["failed"]
    assert failed in (1, 2) and data["counts"] == {"done": 2, "skipped": 0, "failed": failed, "not_images": 0}
    assert f"stopped after {2 + failed} of 12 images: 2 done, {failed} failed" in text
    assert "pdseg predict" not in result.stdout  # no summary table after the error
    assert data["stopped"]["why"] == why
    assert data["stopped"]["not_reached"] == [str(images / f"i{i:02d}.png") for i in range(2 + failed, N)]
    assert all(f["outputs"] == [] for f in data["files"] if f["status"] == "failed")
    # once there is room, --skip-existing goes on where the run stopped
    monkeypatch.undo()
    again = run_cli("predict", images, "-o", out, "-w", ckpt, "--device", "cpu", "--skip-existing")
    assert again.exit_code == 0, again.output
    assert len(list(out.glob("*.png"))) == N


def test_writes_that_the_full_disk_fails_together_are_each_reported(
    images: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two writes in flight when the disk fills: the one not raised was left out of the counts and
    # of --json (its input listed as not reached), though its mask was on the disk
    real_write = imio.write_png
    together = threading.Barrier(2, timeout=20)

    def write_png(path: Path, pixels: np.ndarray, **kwargs: object) -> None:
        if path.stem in ("i02_alpha", "i03_alpha"):
            together.wait()  # both images' masks are written, both alphas fail
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, pixels, **kwargs)

    monkeypatch.setattr(imio, "write_png", write_png)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)  # two writer threads, on any machine
    out, report = tmp_path / "out", tmp_path / "run.json"
    result = run_cli(
        "predict", images, "-o", out, "-w", ckpt, "--device", "cpu", "-b", "2", "-s", "mask,alpha",
        "--json", report, columns=300,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    data = json.loads(report.read_text())
    assert data["counts"]["failed"] == 2, data["counts"]
    failed = {f["input"]: f for f in data["files"] if f["status"] == "failed"}
    assert sorted(failed) == [str(images / "i02.png"), str(images / "i03.png")]
    for name in ("i02", "i03"):  # each lists the output it did write
        assert failed[str(images / f"{name}.png")]["outputs"] == [str(out / f"{name}.png")]
    assert str(images / "i03.png") not in data["stopped"]["not_reached"]
    assert "the images whose outputs were all written are skipped" in flat(result.output)


def test_a_full_disk_stops_predict_paths_with_what_was_done(
    images: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _full_disk(monkeypatch, errno.ENOSPC)
    predictor = Predictor(ckpt, device="cpu")
    with pytest.raises(OutputWriteStopped) as stopped:
        predictor.predict_paths([images], tmp_path / "out")
    summary = stopped.value.summary
    assert summary.done == 2 and summary.failed in (1, 2)  # i03's write may have been under way too
    assert summary.stopped is not None and summary.stopped.errno == errno.ENOSPC
    assert summary.stopped.result.path == images / "i02.png"


def test_a_write_error_of_one_file_fails_that_file_only(
    images: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = imio.write_png

    def write_png(path: Path, pixels: np.ndarray, **kwargs: object) -> None:
        if path.stem == "i03":  # a bad sector under one file: the others can still be written
            raise OSError(errno.EIO, "Input/output error", str(path))
        real(path, pixels, **kwargs)

    monkeypatch.setattr(imio, "write_png", write_png)
    out = tmp_path / "out"
    result = run_cli("predict", images, "-o", out, "-w", ckpt, "--device", "cpu", columns=300)
    assert result.exit_code == 1, result.output
    assert len(list(out.glob("*.png"))) == N - 1
    assert f"cannot write {out / 'i03.png'} (Input/output error)" in flat(result.output)


def test_each_failure_is_named_when_it_happens(
    images: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (images / "a_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # first in input order
    said: list[tuple[str, int]] = []  # each error line, with the model's calls before it
    calls: list[int] = []
    real_error, real_forward = ui.error, Predictor.forward

    def error(message: str, hint: str | None = None) -> None:
        said.append((message, len(calls)))
        real_error(message, hint)

    def forward(self: Predictor, arrays: list[np.ndarray]) -> object:
        calls.append(1)
        return real_forward(self, arrays)

    monkeypatch.setattr(ui, "error", error)
    monkeypatch.setattr(Predictor, "forward", forward)
    result = run_cli("predict", images, "-o", tmp_path / "out", "-w", ckpt, columns=300)
    assert result.exit_code == 1, result.output
    bad = [(m, n) for m, n in said if "a_bad.png" in m]
    assert len(bad) == 1 and bad[0][1] == 0, said  # before the model ran on any other image
    assert bad[0][0].startswith(f"{images / 'a_bad.png'}: ")
    text = flat(result.output)
    assert text.count("a_bad.png") == 1, text  # not named again at the end
    assert "error: 1 image failed, named in the error line above" in text
    assert "hint: each line says what went wrong" in text
    assert "run the same command again with --skip-existing to segment only these" in text
    table = flat(result.stdout.replace("│", " "))
    assert "failed 1" in table and f"done {N}" in table


@pytest.mark.parametrize("raised", [ValueError("tuple index out of range\nmore"), MemoryError()])
def test_a_reader_error_pdseg_does_not_know_names_its_file(
    images: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch, raised: BaseException
) -> None:
    """An odd file's decoder error (a TIFF of width 0: IndexError) was "cannot read (IndexError:
    ...)", the one error line, and the one --json error, without the file's name."""
    real = imio.read_image

    def read(path: Path, *args: object, **kwargs: object) -> object:
        if Path(path).name == "i00.png":
            raise raised
        return real(path, *args, **kwargs)

    monkeypatch.setattr(imio, "read_image", read)
    result = run_cli("predict", images, "-o", tmp_path / "out", "-w", ckpt, "--json", tmp_path / "r.json")
    assert result.exit_code == 1, result.output
    error = json.loads((tmp_path / "r.json").read_text())["files"][0]["error"]
    why = (
        "out of memory while decoding"
        if isinstance(raised, MemoryError)
        else "cannot read (ValueError: tuple index out of range)"
    )
    assert error == f"{images / 'i00.png'}: {why}"


def test_every_failed_file_is_named_however_many(tmp_path: Path, ckpt: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    bad = [f"b{i:02d}.jpg" for i in range(25)]  # more than the 20 the end summary used to list
    for name in bad:
        (folder / name).write_bytes(b"not a jpeg")
    cv2.imwrite(str(folder / "good.png"), textured_image())
    result = run_cli("predict", folder, "-o", tmp_path / "out", "-w", ckpt, columns=300)
    text = flat(result.output)
    assert result.exit_code == 1, text
    assert all(text.count(f"{folder / name}:") == 1 for name in bad), text
    assert "more failed" not in text
    assert "error: 25 images failed, named in the error lines above" in text


def test_ctrl_c_after_a_failure_counts_it_without_naming_it_twice(
    images: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (images / "a_bad.png").write_bytes(b"not a png")
    real = Predictor.forward
    calls: list[int] = []

    def forward_then_ctrl_c(self: Predictor, arrays: list[np.ndarray]) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, arrays)

    monkeypatch.setattr(Predictor, "forward", forward_then_ctrl_c)
    result = run_cli("predict", images, "-o", tmp_path / "out", "-w", ckpt, columns=300)
    text = flat(result.output)
    assert result.exit_code == 130, text
    assert text.count("a_bad.png") == 1, text  # named when it failed, counted when stopped
    assert f"stopped after 2 of {N + 1} images: 1 done, 1 failed" in text
    assert "run the same command again with --skip-existing to do only the rest" in text


def test_nothing_left_to_do_loads_no_model(
    images: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    assert run_cli("predict", images, "-o", out, "-w", ckpt).exit_code == 0

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Predictor, "__init__", no_model)
    result = run_cli("predict", images, "-o", out, "-w", ckpt, "--skip-existing", columns=300)
    text = flat(result.output)
    assert result.exit_code == 0, text
    assert f"nothing to do: all {N} images have their outputs in {out} already (--skip-existing)" in text
    table = flat(result.stdout.replace("│", " "))
    assert "done 0" in table and f"skipped (outputs exist) {N}" in table and "no model loaded" in table
    assert "images / s" not in table and "time (model loaded)" not in table  # nothing was segmented


def test_nothing_left_to_do_still_refuses_a_weights_path_that_is_not_there(
    images: Path, tmp_path: Path, ckpt: Path
) -> None:
    """A cron line whose -w was moved or mistyped says so at the next poll, not at the next photo."""
    out = tmp_path / "out"
    assert run_cli("predict", images, "-o", out, "-w", ckpt).exit_code == 0
    result = run_cli("predict", images, "-o", out, "-w", tmp_path / "moved.pt", "--skip-existing")
    assert result.exit_code == 2 and "moved.pt does not exist" in flat(result.output)


def test_nothing_left_to_do_with_onnx_spec_or_tta_loads_the_model_to_check_them(
    images: Path, tmp_path: Path, ckpt: Path
) -> None:
    out = tmp_path / "out"
    assert run_cli("predict", images, "-o", out, "-w", ckpt).exit_code == 0
    result = run_cli("predict", images, "-o", out, "-w", ckpt, "--skip-existing", "--onnx-spec", "size=64")
    assert result.exit_code == 2 and "--onnx-spec is for foreign ONNX models" in flat(result.output)


def test_nothing_left_to_do_does_not_even_import_torch(images: Path, tmp_path: Path, ckpt: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("predict", images, "-o", out, "-w", ckpt).exit_code == 0
    script = (
        "import sys\n"
        "from pdseg_cli.cli import app\n"
        "try:\n"
        f"    app(['predict', {str(images)!r}, '-o', {str(out)!r}, '-w', {str(ckpt)!r}, '--skip-existing'])\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code, 'torch' in sys.modules)\n"
    )
    env = torchrun_env(COLUMNS="200")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.stdout.strip().endswith("exit 0 False"), proc.stdout + proc.stderr


def _done_output(images: Path, out: Path, i: int) -> None:
    """The mask an earlier run made of image ``i``, with the mark that names its input."""
    mark = header.output_mark(images / f"i{i:02d}.png")
    imio.write_png(out / f"i{i:02d}.png", np.zeros((20, 24), np.uint8), software=mark)


def test_a_plan_for_the_whole_run_shares_out_as_plan_predict_does(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for i in (1, 4, 5):  # some done already, so that the shares hold done and to-do images
        _done_output(images, out, i)
    whole = plan_predict([images], out, skip_existing=True)
    assert len(whole.todo) == N - 3 and len(whole.skipped) == 3
    for rank in range(3):
        dist = Distributed(world_size=3, rank=rank)
        direct = plan_predict([images], out, skip_existing=True, dist=dist)
        shared = whole.share(dist)
        assert (shared.todo, shared.skipped) == (direct.todo, direct.skipped)
        assert shared.total == direct.total == N
    assert whole.share(Distributed()) is whole


def test_done_images_at_every_other_place_leave_no_process_idle(images: Path, tmp_path: Path) -> None:
    """A folder gone on with --skip-existing whose done images are every other one: each process
    gets its half of the images to do. Sharing the input order, done or not, gave one process
    every image done and the other every image to do."""
    out = tmp_path / "out"
    out.mkdir()
    for i in range(0, N, 2):
        _done_output(images, out, i)
    whole = plan_predict([images], out, skip_existing=True)
    shares = [whole.share(Distributed(world_size=2, rank=rank)) for rank in range(2)]
    assert [len(share.todo) for share in shares] == [N // 4, N // 4]
    assert sorted(item.index for share in shares for item in share.todo) == list(range(1, N, 2))
    assert sorted(item.index for share in shares for item in share.skipped) == list(range(0, N, 2))


class _RankOneAfterAWrite(Distributed):
    """Rank 1 of two, whose broadcast hands it rank 0's object as a started group would."""

    def __init__(self, rank0: object) -> None:
        super().__init__(world_size=2, rank=1)
        object.__setattr__(self, "rank0", rank0)

    def broadcast(self, obj: object) -> object:
        return self.rank0  # type: ignore[attr-defined]


def test_every_process_shares_rank_0s_plan(images: Path, tmp_path: Path) -> None:
    """An image another program finished between two processes' plans is to do in one and done in
    the other: both then share rank 0's lists, so no image falls between them."""
    out = tmp_path / "out"
    out.mkdir()
    rank0 = plan_predict([images], out, skip_existing=True)
    _done_output(images, out, 3)
    rank1 = plan_predict([images], out, skip_existing=True)
    assert len(rank1.skipped) == 1 and not rank0.skipped
    dist = _RankOneAfterAWrite((rank0.todo, rank0.skipped))
    agreed = rank1.agreed(dist)
    assert (agreed.todo, agreed.skipped) == (rank0.todo, [])
    mine = agreed.share(dist)
    theirs = rank0.share(Distributed(world_size=2, rank=0))
    assert sorted(item.index for item in [*mine.todo, *theirs.todo]) == list(range(N))
    assert rank1.agreed(Distributed()) is rank1


def _torchrun_script(tmp_path: Path, body: str) -> Path:
    """A script for torchrun that runs `pdseg` with ``body`` (Python) done first in each process."""
    script = tmp_path / "run_pdseg.py"
    script.write_text(
        f"import sys\n{body}\nfrom pdseg_cli.console import main\nsys.argv[0] = 'pdseg'\nmain()\n"
    )
    return script


def test_under_torchrun_a_process_stopped_by_its_disk_leaves_no_other_waiting(
    images: Path, tmp_path: Path, ckpt: Path
) -> None:
    # rank 1's writes fail from i03 on (its share: i01, i03, ...); rank 0's disk has room
    body = (
        "import errno, os\n"
        "from pdseg_cli.data import images as imio\n"
        "real = imio.write_png\n"
        "def write_png(path, pixels, **kw):\n"
        "    if os.environ['RANK'] == '1' and int(path.stem[1:]) >= 3:\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device', str(path))\n"
        "    real(path, pixels, **kw)\n"
        "imio.write_png = write_png\n"
    )
    script = _torchrun_script(tmp_path, body)
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
        "predict", str(images), "--out", str(out), "-w", str(ckpt), "--device", "cpu",
    ]  # fmt: skip
    env = torchrun_env(PYTHONWARNINGS="ignore", COLUMNS="300")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=180)
    text = flat(proc.stdout + proc.stderr)
    assert proc.returncode != 0, text
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"i{i:02d}.png" for i in (*range(0, N, 2), 1)), text  # rank 0 went to its end
    assert f"error: {images / 'i03.png'}: cannot write {out / 'i03.png'} (No space left on device)" in text
    assert text.count("error:") == 1, text  # said by rank 0 only
    # rank 1's next write (i05) may have been under way too, and failed
    assert re.search(r"stopped after (8 of 12 images: 7 done, 1|9 of 12 images: 7 done, 2) failed", text), (
        text
    )


@pytest.mark.parametrize("keep", [True, False])
def test_a_full_disk_under_eval_gives_eval_s_own_hint(
    images: Path, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    """eval runs the model through predict's code, but has no --out or --skip-existing to offer."""
    split = tmp_path / "split"
    (split / "gt").mkdir(parents=True)
    images.rename(split / "im")
    for i in range(N):
        cv2.imwrite(str(split / "gt" / f"i{i:02d}.png"), np.full((20, 24), 255, np.uint8))
    _full_disk(monkeypatch, errno.ENOSPC)
    keep_args = ["--save-preds", str(tmp_path / "maps")] if keep else []
    result = run_cli("eval", "--split", split, "-w", ckpt, "-d", "cpu", *keep_args, columns=300)
    text = flat(result.output)
    assert result.exit_code == 1, text
    assert "cannot write" in text and "(ENOSPC)" in text
    where = f"--save-preds {tmp_path / 'maps'}" if keep else "the temporary folder"
    assert f"hint: make room for the maps in {where}" in text and "--skip-existing" not in text
