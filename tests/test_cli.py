"""The CLI shell: help, version, `pdseg info`, and user errors without tracebacks."""

from __future__ import annotations

import inspect
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import flat, no_space, tiny_checkpoint
from typer.testing import CliRunner

from pdseg_cli import __version__
from pdseg_cli.cli import app

runner = CliRunner()


def test_help_lists_every_subcommand() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("info", "predict", "eval", "train", "export", "benchmark"):
        assert name in result.output


def test_help_texts_wrap_as_paragraphs() -> None:
    # Typer's rich help keeps a docstring's line breaks, so a paragraph broken over lines comes out
    # ragged in a terminal: every paragraph is one line, and examples fit 80 columns
    for command in app.registered_commands:
        doc = inspect.cleandoc(command.callback.__doc__ or "")
        assert doc, command.name
        for paragraph in doc.split("\n\n"):
            assert "\n" not in paragraph.strip(), (command.name, paragraph)
            if paragraph.startswith("  "):  # an example command line
                assert len(paragraph) <= 78, (command.name, paragraph)


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"pdseg {__version__}"


def test_python_dash_m_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pdseg_cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"pdseg {__version__}"


def test_info_one_variant_counts() -> None:
    result = runner.invoke(app, ["info", "pdseg-tiny", "--size", "64"])
    assert result.exit_code == 0, result.output
    assert "pdseg-tiny" in result.output
    assert "GMACs" in result.output
    assert "miniature" in flat(result.output)  # the caption that explains it
    other = runner.invoke(app, ["info", "pdseg-t", "--size", "64"], env={"COLUMNS": "200"})
    assert other.exit_code == 0 and "miniature" not in other.output  # no caption for a missing row


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "IMG", "--out", "OUT"],
        ["eval", "--split", "SPLIT"],
        ["export", "--out", "OUT/m.onnx"],
        ["benchmark", "--variant", "pdseg-tiny"],
    ],
)
def test_weights_given_as_a_folder_names_the_checkpoints_in_it(tmp_path: Path, command: list[str]) -> None:
    """Every --weights option answers a folder with pdseg's own line and the file to give, not
    click's usage box: a run's folder is the usual slip."""
    (tmp_path / "run").mkdir()
    for name in ("last.pt", "best.pt"):
        (tmp_path / "run" / name).write_bytes(b"x")  # an empty file is not offered
    for folder in ("split/im", "split/gt"):
        (tmp_path / folder).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / folder / "a.png"), np.full((8, 8), 255, np.uint8))
    names = {"IMG": str(tmp_path / "split/im/a.png"), "SPLIT": str(tmp_path / "split")}
    args = [names.get(a, a.replace("OUT", str(tmp_path / "o"))) for a in command]
    result = runner.invoke(app, [*args, "--weights", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "is a folder, not a file" in result.output and "╭" not in result.output
    assert f"e.g.{tmp_path / 'run' / 'best.pt'}" in no_space(result.output)


def test_info_unknown_variant_is_one_line_error() -> None:
    result = runner.invoke(app, ["info", "pdseg-bb"])
    assert result.exit_code == 2
    assert "unknown model variant 'pdseg-bb'" in result.output
    assert "did you mean pdseg-b" in result.output
    assert "Traceback" not in result.output


def test_info_of_the_bundled_name_from_elsewhere_says_where_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pdseg info weights/pdseg-t-distilled.pt` outside the clone (or with a wheel): predict says
    where the bundled file is; info said only "give a weights file, or a variant"."""
    from pdseg_cli.weights import default_weights

    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["info", f"weights/{default_weights().name}"])
    assert result.exit_code == 2 and "no such file" in result.output
    assert no_space(f"the bundled weights are at {default_weights()}") in no_space(result.output)


def test_a_wheel_names_the_model_card_it_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled weights' stored summary names `weights/README.md`, the repository's path; an
    installed wheel holds the card as pdseg_cli/bundled_weights/README.md."""
    import pdseg_cli.weights as w
    from pdseg_cli.model.build import weights_line

    summary = {"summary": "research use only (weights/README.md)"}
    assert weights_line("pdseg-t", 512, summary).endswith("(weights/README.md)")  # a clone
    packaged = tmp_path / "bundled_weights"
    packaged.mkdir()
    (packaged / "README.md").write_text("# card\n")
    monkeypatch.setattr(w, "bundled_weights_dir", lambda: packaged)
    assert weights_line("pdseg-t", 512, summary).endswith(f"({packaged / 'README.md'})")


def test_info_on_a_run_folder_names_the_files_inside(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    for name in ("last.pt", "best.pt", "old.PTH", "results.csv", ".hidden.pt"):
        (tmp_path / "run" / name).write_bytes(b"x")
    (tmp_path / "run" / "empty.pt").touch()  # no weights in it: not offered
    (tmp_path / "run" / "sub.pt").mkdir()  # a folder with such a name is not a weights file
    result = runner.invoke(app, ["info", str(tmp_path / "run")])
    assert result.exit_code == 2 and "is a folder, not a file" in result.output
    assert "best.pt, last.pt, old.PTH" in result.output and "results.csv" not in result.output
    assert "hidden" not in result.output and "sub.pt" not in result.output
    assert "empty.pt" not in result.output


def test_info_on_a_file_that_is_no_model_says_what_info_reads(tmp_path: Path) -> None:
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    result = runner.invoke(app, ["info", str(tmp_path / "photo.png")])
    assert result.exit_code == 2 and "it is an image, not a model" in " ".join(result.output.split())
    (tmp_path / "notes.bin").write_bytes(b"some bytes")
    result = runner.invoke(app, ["info", str(tmp_path / "notes.bin")])
    assert result.exit_code == 2 and "is not a PyTorch file" in result.output
    assert "an export or DIS/SOD model (.onnx, .ts), or a variant name" in " ".join(result.output.split())


def test_import_is_light() -> None:
    # `import pdseg_cli` must not pull in torch (fast --help, fast metrics-only use).
    code = "import sys, pdseg_cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dash_h_is_help_everywhere() -> None:
    for args in (
        ["-h"],
        ["predict", "-h"],
        ["eval", "-h"],
        ["train", "-h"],
        ["export", "-h"],
        ["info", "-h"],
        ["benchmark", "-h"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage:" in result.output, args


def test_predict_refuses_an_empty_out_and_impossible_sizes(tmp_path) -> None:  # noqa: ANN001
    images = str(tmp_path)
    empty = runner.invoke(app, ["predict", images, "--out", ""])
    assert empty.exit_code == 2 and "--out is empty" in empty.output
    huge = runner.invoke(app, ["predict", images, "--out", str(tmp_path / "o"), "--size", "100000"])
    assert huge.exit_code == 2 and "too large" in huge.output and "--size full" in huge.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["train", "--out", "", "--epochs", "1"], "--out is empty"),  # trained into the current folder
        (["train", "-o", "x", "--variant", ""], "--variant is empty"),  # trained the default variant
        (["predict", "in", "-o", "m", "--scales", ""], "--scales is empty"),  # ran one size
        (["predict", "in", "-o", "m", "--save="], "--save is empty"),  # wrote the default mask
        (["eval", "--split", "s", "--json", ""], "--json is empty"),  # "--json . is a folder"
        (["export", "-o", "m.onnx", "-w", ""], "--weights is empty"),  # "weights . is a folder"
        (["info", ""], "pdseg info: an argument is empty"),
        (["predict", "", "-o", "m"], "pdseg predict: an argument is empty"),
        (["predict", "-o", "m", "--", ""], "pdseg predict: an argument is empty"),
    ],
)
def test_an_empty_value_is_refused_naming_its_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], said: str
) -> None:
    """An unset shell variable (`--out "$OUT"`): read as a path, "" was "."; as a list or a name
    it was dropped in silence. Refused before anything runs or is written."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert said in flat(result.output) and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []
    # a value that merely starts the next option is not taken for empty
    assert "is empty" not in flat(runner.invoke(app, ["info", "pdseg-t", "--onnx-spec", "-x"]).output)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["benchmark", "-v", "pdseg-tiny", "-s", "64", "-b", "100000"], "--batch 100000 is more than"),
        (["predict", "in", "-o", "m", "--batch", "5000"], "--batch 5000 is more than"),
        (["info", "pdseg-tiny", "--onnx-spec", "size=64"], "pdseg-tiny is a variant"),  # was ignored
        # exit 1, "a file or folder was moved or deleted while pdseg was running"
        (["export", "-o", "m.onnx", "-w", "nope.pt"], "weights nope.pt does not exist"),
    ],
)
def test_options_found_by_fuzzing_are_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], said: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert said in flat(result.output) and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_predict_says_how_to_resume(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import cv2
    import numpy as np

    from pdseg_cli.engine import predict as predict_mod

    cv2.imwrite(str(tmp_path / "a.png"), np.full((40, 40, 3), 90, np.uint8))
    ckpt = tiny_checkpoint(tmp_path / "t.pt", train_size=64)

    def stop(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_mod.Predictor, "run_plan", stop)
    result = runner.invoke(
        app, ["predict", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "-w", str(ckpt)]
    )
    assert result.exit_code == 130
    assert "--skip-existing" in " ".join(result.output.split())


def test_threads_option_sets_torch_and_opencv(monkeypatch) -> None:  # noqa: ANN001
    import cv2
    import torch

    from pdseg_cli import runtime

    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        runtime.set_compute_threads(1)
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
    for command in ("predict", "eval", "train"):
        assert "--threads" in runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output


def _option_row(command: str, name: str) -> str:
    """The row of option ``name`` in ``pdseg command --help``, on one line, whitespace collapsed."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "1000"})
    assert result.exit_code == 0, result.output
    # a row goes on over the lines that follow it (an earlier test's console may have fixed a width)
    rows: list[str] = []
    for line in result.output.splitlines():
        text = " ".join(line.strip("│ ").split())
        if not line.startswith("│") or not text:
            continue
        if text.lstrip("* ").startswith("-") or not rows:
            rows.append(text.lstrip("* "))
        else:
            rows[-1] += " " + text
    (row,) = [row for row in rows if row.split(" ", 1)[0] == name]
    return row


@pytest.mark.parametrize(
    ("name", "commands"),
    [
        ("--weights", ("predict", "eval")),
        ("--onnx-spec", ("predict", "eval", "train")),
        ("--size", ("predict", "eval")),
        ("--device", ("predict", "eval", "train", "benchmark")),
        ("--precision", ("predict", "eval")),
        ("--batch", ("predict", "eval", "benchmark")),
        ("--threads", ("predict", "eval", "train")),
        ("--compile", ("predict", "benchmark")),
        ("--data-root", ("eval", "train")),
    ],
)
def test_shared_options_read_the_same_in_every_command(name: str, commands: tuple[str, ...]) -> None:
    # declared once (commands/_common.py): the same flags, type, help and default wherever they appear
    rows = {command: _option_row(command, name) for command in commands}
    assert len(set(rows.values())) == 1, rows


def test_operating_system_errors_are_one_line_with_a_hint() -> None:
    import errno

    from pdseg_cli.errors import os_error_line

    full = OSError(errno.ENOSPC, "No space left on device", "out/a.png")
    line, hint = os_error_line(full)
    assert line == "No space left on device: out/a.png"
    assert hint is not None and "free some disk space" in hint
    # a DataLoader worker's error comes back with the worker's traceback as its text
    worker = FileNotFoundError(
        "Caught FileNotFoundError in DataLoader worker process 0.\n"
        "Original Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "FileNotFoundError: [Errno 2] No such file or directory: 'run/cache/a.npy'\n"
    )
    line, hint = os_error_line(worker)
    assert line == "No such file or directory: 'run/cache/a.npy'"
    assert hint is not None and "moved or deleted" in hint
    assert os_error_line(OSError("odd: thing")) == ("odd: thing", None)
    assert os_error_line(OSError()) == ("OSError", None)


def test_background_thread_os_errors_are_one_warning_line(capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    from pdseg_cli import runtime
    from pdseg_cli.cli import _thread_os_error

    # an earlier test's interrupted worker pool leaves the process "stopping", when the hook is silent
    runtime.stopping.clear()

    def fail() -> None:
        raise OSError(28, "No space left on device", "run/tensorboard/events")

    before = threading.excepthook
    threading.excepthook = _thread_os_error
    try:
        thread = threading.Thread(target=fail)
        thread.start()
        thread.join()
    finally:
        threading.excepthook = before
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: a background writer stopped: No space left on device: run/tensorboard/events" in err
    assert "Traceback" not in err


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_the_progress_bar_draws_in_a_terminal(tmp_path) -> None:  # noqa: ANN001
    # The console script routes fd 2 through a pipe (data.native_messages); the bar must still
    # know that the far end is a terminal. Run the real entry point on a pseudo-terminal.
    import os
    import pty

    import cv2
    import numpy as np

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((40, 40, 3), 60 * i, np.uint8))
    ckpt = tiny_checkpoint(tmp_path / "t.pt", train_size=64)
    out = str(tmp_path / "o")
    args = ["-m", "pdseg_cli", "predict", str(tmp_path), "-o", out, "-w", str(ckpt), "--threads", "1"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout and stderr are the pseudo-terminal
        os.execv(sys.executable, [sys.executable, *args])
    seen = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, seen.decode(errors="replace")
    assert b"img/s" in seen and b"3/3" in seen  # the bar's rate and count columns


def test_forced_progress_in_a_log_is_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """PDSEG_PROGRESS=1 into a log file: one plain line per tenth of the work and one at the end,
    with no escape codes or carriage returns (a redrawn bar filled the log with them)."""
    from pdseg_cli import ui

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PDSEG_PROGRESS", "1")
        with ui.progress_bar("train", 20, unit="step", fields=("loss",)) as advance:
            for i in range(20):
                advance(loss=1.0 / (i + 1))
        with ui.progress_bar("labels", None) as advance:  # no total: one line where it ended
            advance(3)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\x1b" not in err and "\r" not in err
    assert [line.split("  ")[0] for line in lines] == [
        f"train {2 * k}/20 ({10 * k}%)" for k in range(1, 11)
    ] + ["labels 3"]
    assert "loss 0.05" in lines[9] and "left" not in lines[9] and "left" in lines[0]


def test_work_done_before_counts_but_does_not_set_the_rate(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--skip-existing with 40 outputs there: the skipped images were advanced through the bar
    at the start, and it read 22989 img/s and about no time left."""
    from pdseg_cli import ui

    clock = iter([100.0, 102.0, 102.0])  # start, then 2 s later (the line and its left time)
    monkeypatch.setattr(ui.time, "monotonic", lambda: next(clock))
    monkeypatch.setenv("PDSEG_PROGRESS", "1")
    with ui.progress_bar("predict", 50, already=40) as advance:
        advance(5)  # 45/50, the ninth tenth: a line
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith("predict 45/50 (90%)  2.50 img/s")  # 5 images in 2 s, not 45
    assert "left 0:00:02" in line  # 5 more at that rate


def test_skipped_outputs_and_a_resumed_epochs_steps_reach_the_bar_as_done_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """predict and train hand what an earlier run did to the bar as ``already`` (not as advances,
    which rich and the log lines count in the rate)."""
    import contextlib

    from pdseg_cli import ui
    from pdseg_cli.engine.predict_summary import FileResult
    from pdseg_cli.engine.train_events import TrainEvent
    from pdseg_cli.ui import prediction
    from pdseg_cli.ui.training import TrainingView

    bars: list[tuple[int | None, int]] = []
    advanced: list[int] = []

    @contextlib.contextmanager
    def bar(description: str, total: int | None, *, already: int = 0, **kw: object):  # noqa: ANN202
        bars.append((total, already))
        yield lambda n=1, **values: advanced.append(n)

    monkeypatch.setattr(ui, "progress_bar", bar)
    with prediction.progress(5, skipped=3) as advance:
        for status in ("skipped", "skipped", "skipped", "done", "failed"):
            advance(FileResult(Path(f"{status}.jpg"), status))  # type: ignore[arg-type]
    assert bars == [(5, 3)] and advanced == [1, 1]  # the done and the failed image only
    view = TrainingView()
    view(TrainEvent("epoch_start", epoch=2, step=7, total=10))
    view.close()
    assert bars[-1] == (10, 7) and advanced == [1, 1]  # the resumed epoch's 7 steps: done before


def test_train_time_left_follows_the_pace_after_the_first_epoch(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first epoch of a session pays for starting (workers, the first decode into the cache):
    the time left was the mean of every epoch's, 7.9 s where the three epochs left took 2.3 s."""
    import pdseg_cli.ui.training as training
    from pdseg_cli.engine.train_events import TrainEvent
    from pdseg_cli.ui.training import TrainingView

    monkeypatch.setenv("PDSEG_PROGRESS", "0")
    now = [0.0]
    monkeypatch.setattr(training.time, "monotonic", lambda: now[0])
    view = TrainingView()
    view._epochs = 6
    lines = []
    # (epoch, its first step, this session's seconds in it, epoch_time_s as results.csv has it)
    for epoch, first, seconds, recorded in ((1, 5, 13.0, 40.0), (2, 0, 1.0, 1.0), (3, 0, 3.0, 3.0)):
        view(TrainEvent("epoch_start", epoch=epoch, step=first, total=10))
        now[0] += seconds
        view(TrainEvent("epoch_end", epoch=epoch, values={"loss": 0.5, "epoch_time_s": recorded}))
        lines.append(capsys.readouterr().err)
    view.close()
    # a resumed epoch, 5 of its 10 steps in this session: 2.6 s a step, not 40 s over 5 steps
    assert "about 2:10 left" in lines[0]  # 5 epochs of 10 steps at 2.6 s
    assert "about 4.0 s left" in lines[1]  # 4 more at epoch 2's pace, not at the mean's
    assert "about 6.0 s left" in lines[2]  # the median of 1 s and 3 s, 2 s, for 3 more


def test_durations_read_as_people_read_them() -> None:
    from pdseg_cli.ui import duration

    assert [duration(s) for s in (0.04, 12.34, 59.94, 59.97, 60.0, 245.0, 3723.0)] == [
        "0.0 s",
        "12.3 s",
        "59.9 s",
        "1:00",  # not "60.0 s"
        "1:00",
        "4:05",
        "1:02:03",
    ]


def test_a_dumb_terminal_gets_plain_progress_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """TERM=dumb on a terminal (an Emacs shell buffer): rich draws no bar there, and no progress
    was shown at all, with PDSEG_PROGRESS=1 or without."""
    from pdseg_cli import ui

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TERM", "dumb")
        mp.delenv("PDSEG_PROGRESS", raising=False)
        mp.setattr(ui, "_stderr_is_terminal", True)  # as pin_terminal finds a terminal
        with ui.progress_bar("predict", 10) as advance:
            for _ in range(10):
                advance()
    err = capsys.readouterr().err
    assert "predict 10/10 (100%)" in err and "\x1b" not in err and "\r" not in err, err


def test_help_shows_no_value_for_flags_and_no_cut_text() -> None:
    # Typer shows a flag's type as "<bool>", which reads as "--tta true"; and a word wider than the
    # help column cuts the option names short with an ellipsis
    for command in ("predict", "eval", "train", "export", "benchmark", "info"):
        text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "110"}).output
        assert "<bool>" not in text, command  # Typer's own --help included
        assert "<list[" not in text and "{sources}" not in text, command  # Python types, not names
        assert "…" not in text, command
    assert "<bool>" not in runner.invoke(app, ["--help"], env={"COLUMNS": "110"}).output
    for command in ("predict", "eval", "train", "export", "benchmark", "info"):
        text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"}).output
        assert "…" not in text, command
        # the help text keeps 30 of 80 columns: the "off" form of a switch and a number's range
        # type used to take columns of their own and leave it 15 characters wide
        (row,) = [line for line in text.splitlines() if "Show this message and exit." in line]
        assert len(row) - row.index("Show this message") >= 30, (command, row)
    # a narrow terminal (a split pane, a phone): rich's table cut the option names (`--weig…`);
    # click's plain help wraps them, and every option is named whole
    for command in ("predict", "eval", "train", "export", "benchmark", "info"):
        text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "40"}).output
        assert "…" not in text and "-h, --help" in text, command
        assert "--threads" in text or command == "info", command


def test_switch_help_names_its_off_form() -> None:
    # the "off" form lives in the help text at any width (not in a column of its own), and still parses
    row = _option_row("predict", "--refine-foreground")
    assert "Off: --no-refine-foreground." in row, row
    assert "Off: --no-augment." in _option_row("train", "--augment")
    assert "<int> [x>=1]" in _option_row("predict", "--threads")  # a range: no "<int range>"


def test_every_lazy_public_name_is_typed_for_type_checkers() -> None:
    """`from pdseg_cli import Predictor` resolves lazily at run time; the TYPE_CHECKING imports
    give type checkers its real signature (py.typed ships), so the two lists must stay equal."""
    import ast

    import pdseg_cli

    tree = ast.parse(Path(pdseg_cli.__file__).read_text())
    [block] = [n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING"]
    typed = {alias.asname for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert typed == set(pdseg_cli._LAZY)


def test_a_ctrl_c_while_the_cli_is_imported_is_one_line() -> None:
    # the console script imported the whole CLI before any handler: a Ctrl-C then was a traceback
    code = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def interrupted(name, *args, **kw):\n"
        "    if name == 'pdseg_cli' and 'cli' in (args[2] if len(args) > 2 and args[2] else ()):\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kw)\n"
        "builtins.__import__ = interrupted\n"
        "from pdseg_cli.console import main\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    # ended by SIGINT, as a shell expects of a Ctrl-C (test_stop_status.py); a shell shows 130
    assert done.returncode == -signal.SIGINT and done.stderr == "error: interrupted\n", done.stderr


def test_an_ascii_only_terminal_gets_question_marks_not_a_crash(tmp_path: Path) -> None:
    """PYTHONIOENCODING=ascii (or a legacy Windows code page): the "·" and box lines pdseg prints
    stopped the command with a UnicodeEncodeError after its work was done."""
    import os
    import subprocess

    import cv2
    import numpy as np

    mask = np.zeros((32, 48), np.uint8)
    mask[8:24, 8:40] = 255
    for folder in ("gt", "pred"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "a.png"), mask)
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "COLUMNS": "120"}
    command = ["eval", "--split", str(tmp_path), "--pred", str(tmp_path / "pred"), "--no-cache", "-j", "1"]
    done = subprocess.run(
        [sys.executable, "-c", "from pdseg_cli.console import main; main()", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0 and "UnicodeEncodeError" not in done.stderr, done.stderr[-2000:]
    assert "maxF" in done.stdout and "?" in done.stdout  # the caption's "·" shown as "?"


def test_a_command_option_given_before_the_command_says_where_it_goes() -> None:
    """`pdseg -q info` showed click's "No such option: -q" box: the README says -q is on every
    command, and it is, after the command's name."""
    result = runner.invoke(app, ["-q", "info"])
    assert result.exit_code == 2
    text = flat(result.output)
    assert "-q is an option of pdseg info, given before it" in text and "pdseg info -q" in text, text
    unknown = runner.invoke(app, ["--zzz", "info"])  # no command has it: click's own box
    assert unknown.exit_code == 2 and "given before it" not in unknown.output


def test_standard_input_as_an_input_says_files_are_read(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", "-", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "not standard input" in flat(result.output) and "did you mean" not in result.output


def test_a_narrow_terminal_folds_table_cells_and_cuts_none() -> None:
    """At 40 columns every variant name of `pdseg info` read "p…", and the widths lost values."""
    text = runner.invoke(app, ["info"], env={"COLUMNS": "40"}).output
    assert "…" not in text, text
    assert "pdseg" in text.replace("│", "").replace(" ", "").replace("\n", "")
