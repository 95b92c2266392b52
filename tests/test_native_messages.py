"""What libjpeg and libpng print from C comes back attributed to the file being decoded."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from pdseg_cli.data import native_messages

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def _library_write(*parts: bytes) -> None:
    for part in parts:  # libpng writes its message and the newline separately
        os.write(2, part)


def test_messages_come_back_to_their_decode_and_the_rest_is_forwarded(capfd):
    with native_messages.routed():
        os.write(2, b"progress 10%\r")
        value, messages = native_messages.decode(
            lambda: _library_write(b"libpng error: IDAT: CRC error", b"\n") or 7
        )
        os.write(2, b"after\n")
        _, clean = native_messages.decode(lambda: None)
    assert value == 7
    assert messages == ["libpng error: IDAT: CRC error"]
    assert clean == []
    err = capfd.readouterr().err
    assert "progress 10%\r" in err and "after\n" in err
    assert "libpng" not in err  # attributed, not printed bare
    assert "pdseg-decode" not in err  # the marks never reach the terminal


def test_overlapping_decodes_are_redone_alone_so_the_message_lands_on_its_file():
    started, release = threading.Event(), threading.Event()
    results: dict[str, list[str]] = {}

    def clean() -> None:  # in flight while the corrupt one prints
        started.set()
        release.wait(5)

    def corrupt() -> None:
        _library_write(b"Corrupt JPEG data: premature end of data segment\n")
        release.set()

    with native_messages.routed():
        t = threading.Thread(target=lambda: results.__setitem__("clean", native_messages.decode(clean)[1]))
        t.start()
        started.wait(5)
        results["corrupt"] = native_messages.decode(corrupt)[1]
        t.join(10)
    assert results["corrupt"] == ["Corrupt JPEG data: premature end of data segment"]
    assert results["clean"] == []


def test_outside_the_command_nothing_is_routed():
    assert native_messages.decode(lambda: 3) == (3, [])


def test_predict_names_the_file_a_library_message_is_about(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    data = bytearray((EXAMPLES / "coffee.jpg").read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 40, 7):  # damage the entropy-coded data
        data[i] = 0xFF
    (photos / "damaged.jpg").write_bytes(bytes(data))
    good = (EXAMPLES / "rocket.jpg").read_bytes()
    (photos / "good.jpg").write_bytes(good)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "pdseg_cli", "predict", str(photos), "--out", str(tmp_path / "masks")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "Corrupt JPEG data" in line]
    assert lines and all("damaged.jpg" in line for line in lines), proc.stderr
    assert (tmp_path / "masks" / "damaged.png").is_file() and (tmp_path / "masks" / "good.png").is_file()


def test_eval_notes_a_damaged_prediction_by_name(tmp_path):
    import cv2
    import numpy as np

    split = tmp_path / "set"
    (split / "gt").mkdir(parents=True)
    preds = tmp_path / "preds"
    preds.mkdir()
    rng = np.random.default_rng(0)
    for stem in ("a", "b"):
        gt = np.zeros((96, 128), np.uint8)
        gt[20:70, 30:90] = 255
        cv2.imwrite(str(split / "gt" / f"{stem}.png"), gt)
        pred = cv2.GaussianBlur(gt, (9, 9), 3) // 2 + rng.integers(0, 60, gt.shape, dtype=np.uint8)
        cv2.imwrite(str(preds / f"{stem}.jpg"), pred, [cv2.IMWRITE_JPEG_QUALITY, 90])
    data = bytearray((preds / "b.jpg").read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 40, 7):
        data[i] = 0xFF
    (preds / "b.jpg").write_bytes(bytes(data))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pdseg_cli",
            "eval",
            "--split",
            str(split),
            "--pred",
            str(preds),
            "--no-cache",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "prediction files are damaged" in out and "b.jpg" in out, out
    assert "Corrupt JPEG data" not in out  # said once, as a note naming the file, not bare


def test_opencv_codec_warnings_come_back_to_their_file(tmp_path):
    import cv2
    import numpy as np

    (tmp_path / "set" / "gt").mkdir(parents=True)
    (tmp_path / "preds").mkdir()
    gt = np.zeros((96, 128), np.uint8)
    gt[20:70, 30:90] = 255
    cv2.imwrite(str(tmp_path / "set" / "gt" / "a.png"), gt)
    ok, png = cv2.imencode(".png", cv2.GaussianBlur(gt, (9, 9), 3))
    (tmp_path / "preds" / "a.png").write_bytes(png.tobytes()[:300])  # truncated
    proc = subprocess.run(
        [sys.executable, "-m", "pdseg_cli", "eval", "--split", str(tmp_path / "set"), "--pred",
         str(tmp_path / "preds"), "--no-cache", "--jobs", "1"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr  # a file that cannot be read: a data error
    assert "[ WARN" not in proc.stderr  # OpenCV's bare log line, with no file name
    assert (
        "a.png: cannot decode" in proc.stderr
        and "the decoder said: PNG input buffer is incomplete" in proc.stderr
    )


def test_opencv_decode_errors_from_loadsave_come_back_to_their_file(capfd):
    import io

    import cv2
    import numpy as np
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((60, 80, 3), np.uint8), photometric="rgb")
    truncated = np.frombuffer(buffer.getvalue()[:1000], np.uint8)  # the strips cut off
    with native_messages.routed():
        image, messages = native_messages.decode(lambda: cv2.imdecode(truncated, cv2.IMREAD_COLOR))
    assert image is None
    err = capfd.readouterr().err
    assert "loadsave.cpp" not in err and "[ERROR" not in err  # no bare OpenCV log line
    assert "\n" not in err  # nor the blank line OpenCV writes after it (one per file, under -q too)
    # "[ERROR:0@2.759] global loadsave.cpp:1409 imdecode_ imdecode_(''): can't read data: OpenCV(4.x)
    # .../grfmt_tiff.cpp:926: error: (-2:Unspecified error) OpenCV TIFF: failed ... in function 'readData'"
    read = [m for m in messages if m.startswith("can't read data")]
    assert read == ["can't read data: OpenCV TIFF: failed TIFFReadRGBAStrip(tif, y, (uint32_t*)src_buffer)"]


def test_a_child_holding_the_pipe_does_not_hold_up_the_end(capfd):
    """Child processes inherit fd 2, the pipe's write end, and some outlive the command (eval's
    resource trackers): the end waited for end-of-file on the pipe, 2 s, after every ``eval --jobs
    N``. It ends at once, still forwards all written before it, and the reader thread stops."""
    child = None
    try:
        with native_messages.routed():
            router = native_messages._router
            child = subprocess.Popen(  # writes to the pipe, says so, then holds it open
                [sys.executable, "-c", "import os, time; os.write(2, b'from the child\\n'); "
                 "print('written', flush=True); time.sleep(60)"],
                stdout=subprocess.PIPE,
            )  # fmt: skip
            assert child.stdout.readline() == b"written\n"
            _, messages = native_messages.decode(lambda: _library_write(b"Premature end of JPEG file\n"))
            os.write(2, b"progress 99%\r")
            started = time.monotonic()
        took = time.monotonic() - started
        assert took < 1.5, f"the end waited {took:.2f} s on a child holding the pipe (it waited 2 s)"
        assert router is not None and not router.thread.is_alive()
        assert messages == ["Premature end of JPEG file"]
        os.write(2, b"straight after\n")  # fd 2 is the real stderr again
        sys.stderr.write("python after\n")
        sys.stderr.flush()
        err = capfd.readouterr().err
        for text in ("from the child\n", "progress 99%\r", "straight after\n", "python after\n"):
            assert text in err, err
        assert "pdseg-decode" not in err and "Premature" not in err
    finally:
        if child is not None:
            child.kill()
            child.wait()
            child.stdout.close()


def test_fd_2_replaced_under_the_router_costs_a_decode_nothing(tmp_path, monkeypatch):
    """Something that points fd 2 elsewhere while the command routes (pytest's capture did, under
    a fixture that entered the router first): the marks went through fd 2, so none reached the
    reader and every decode waited out the router's timeout. They have a write end of their own."""
    monkeypatch.setattr(native_messages, "_WAIT_S", 30.0)
    with native_messages.routed():
        saved = os.dup(2)
        try:
            with open(tmp_path / "elsewhere.txt", "wb") as elsewhere:
                os.dup2(elsewhere.fileno(), 2)
                started = time.monotonic()
                value, messages = native_messages.decode(lambda: _library_write(b"libpng warning: x\n") or 3)
                took = time.monotonic() - started
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    assert took < 10, f"a decode waited {took:.1f} s for its end mark"
    assert value == 3 and messages == []  # the line went where fd 2 pointed, not to the decode
    assert (tmp_path / "elsewhere.txt").read_bytes() == b"libpng warning: x\n"


def test_a_decode_still_running_as_the_command_ends_writes_its_mark_nowhere(tmp_path):
    """The marks' write end is closed with the router: a decode's end mark written after it went
    into whichever file took its number next, or failed with EBADF over the decode's own result."""
    inside, release = threading.Event(), threading.Event()
    result = {}

    def slow() -> int:
        inside.set()
        release.wait(10)
        return 5

    with native_messages.routed():
        decoding = threading.Thread(target=lambda: result.update(got=native_messages.decode(slow)))
        decoding.start()
        assert inside.wait(10)
    opened = [open(tmp_path / f"{i}.bin", "wb") for i in range(4)]  # noqa: SIM115 - held open on purpose
    try:
        release.set()
        decoding.join(10)
    finally:
        for f in opened:
            f.close()
    assert result["got"] == (5, [])
    assert [(tmp_path / f"{i}.bin").read_bytes() for i in range(4)] == [b""] * 4


def test_pdseg_s_own_line_quoting_a_library_message_is_not_taken_for_one(capfd):
    """A warning pdseg printed about one file while another was decoding lost its quoted words,
    and the rest of its line, to that decode: a good file was reported as damaged."""
    said = b"warning: a.png: the decoder said: libpng error: IHDR: CRC error (decoded anyway)\n"
    with native_messages.routed():
        _, messages = native_messages.decode(lambda: os.write(2, said))
    assert messages == []
    assert said.decode() in capfd.readouterr().err
