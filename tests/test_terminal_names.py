"""Names and terminals pdseg must show as they are: a folder name that is not UTF-8, rich markup and
emoji shortcodes in paths, newlines and format characters in file names, COLUMNS=0, FORCE_COLOR
into a log file, a stdout that is strict UTF-8 or ASCII."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, no_space, small_split, torchrun_env
from rich.console import Console

from pdseg_cli import ui

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names and streams")

NAME = "my set \udce9"  # the folder b"my set \xe9" (Latin-1), as Python reads it from the file system
ENCODINGS = [
    {},
    {"PYTHONIOENCODING": "utf-8"},  # strict, as in a UTF-8 locale: it raised on the name
    {"PYTHONUTF8": "0", "LC_ALL": "C"},  # ASCII with surrogateescape: it raised on the "·"
]


def _pdseg(cwd: Path, *args: str | Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    """``pdseg ARGS`` in ``cwd``; stdout and stderr are pipes (not terminals), as bytes."""
    return subprocess.run(
        [sys.executable, "-m", "pdseg_cli", *map(str, args)],
        cwd=cwd,
        env=torchrun_env(**env),
        capture_output=True,
        timeout=120,
    )


def _named_split(root: Path, name: str) -> tuple[Path, Path]:
    split, maps = small_split(root)
    return split.rename(root / name), maps


@pytest.mark.parametrize("env", ENCODINGS, ids=["default", "strict-utf8", "ascii"])
def test_a_folder_name_that_is_not_utf8_is_reported_and_shown(tmp_path: Path, env: dict[str, str]) -> None:
    """The CSV (a file, and stdout) holds the name's own bytes; the table shows them as \\xe9; no
    UnicodeEncodeError after the scoring, whatever stdout's encoding."""
    split, maps = _named_split(tmp_path, NAME)
    table = _pdseg(tmp_path, "eval", "--split", split, "--pred", maps, "--csv", "s.csv", **env)
    assert table.returncode == 0, table.stderr.decode(errors="replace")
    assert b"\nmy set \xe9,3," in (tmp_path / "s.csv").read_bytes()
    assert b"my set \\xe9 " in table.stdout and b"Traceback" not in table.stderr
    dot = b"?" if env.get("LC_ALL") == "C" else "·".encode()  # "?" where the encoding lacks it
    assert b"(E^m) " + dot + b" HCE" in table.stdout
    piped = _pdseg(
        tmp_path, "eval", "--split", split, "--pred", maps, "--csv", "-", "--json", "j.json", **env
    )
    assert piped.returncode == 0, piped.stderr.decode(errors="replace")
    assert piped.stdout.startswith(b"split,count,") and b"\nmy set \xe9,3," in piped.stdout
    assert json.loads((tmp_path / "j.json").read_text())["splits"][NAME]["count"] == 3


def test_a_named_pipe_report_holds_the_names_bytes(tmp_path: Path) -> None:
    split, maps = _named_split(tmp_path, NAME)
    os.mkfifo(tmp_path / "s.fifo")
    line = " ".join(f"'{a}'" for a in [sys.executable, "-m", "pdseg_cli", "eval", "--pred", maps])
    script = f'cat s.fifo > got.csv & {line} --split "$SPLIT" --csv s.fifo; wait'
    env = torchrun_env(SPLIT=str(split))
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"\nmy set \xe9,3," in (tmp_path / "got.csv").read_bytes()


@pytest.mark.parametrize(
    ("name", "columns"), [("a very long split folder name that goes on and on " * 2, 80), ("set", 60)]
)
def test_eval_table_numbers_are_never_cut(tmp_path: Path, name: str, columns: int) -> None:
    """A long split name folds onto more lines (every score showed as "0…"); at 60 columns with a
    short name too, every score is whole, and so is the name."""
    split, maps = _named_split(tmp_path, name.strip())
    proc = _pdseg(
        tmp_path, "eval", "--split", split, "--pred", maps, "--json", "j.json", COLUMNS=str(columns)
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0 and "…" not in out, out
    scores = json.loads((tmp_path / "j.json").read_text())["splits"][name.strip()]
    for key in ("maxF", "wF", "MAE", "S", "E"):
        assert f" {scores[key]:.3f} " in out, (key, out)
    rows = [line.split("│") for line in out.splitlines() if "│" in line]
    shown = [row[1] if row[0] == "" else row[0] for row in rows]  # the split column (edges or none)
    assert " ".join(" ".join(shown).split()) == " ".join(name.split())
    assert max(map(len, out.splitlines())) <= columns


def test_markup_and_shortcodes_in_a_path_are_shown_as_they_are(capsys: pytest.CaptureFixture[str]) -> None:
    """`pdseg train --out 'runs/[red]x'` lost its `[red]`; `[/]` raised MarkupError after the
    weights were written; `:100:` became an emoji."""
    title = "pdseg train · runs/[red]x[/] [/]shot:100:"
    ui.table(title, ["epoch"], [["1"]], numeric=[True], caption="[bold]weights[/] [/]a.pt\nshot:100:.pt")
    shown = no_space(capsys.readouterr().out)  # the title and caption wrap to the table's width
    assert no_space(title) in shown and "[bold]weights[/][/]a.ptshot:100:.pt" in shown


def test_emoji_shortcodes_in_a_file_name_stay(capsys: pytest.CaptureFixture[str]) -> None:
    ui.error("shot:100:.jpg: cannot decode")
    assert capsys.readouterr().err == "error: shot:100:.jpg: cannot decode\n"


def test_names_are_shown_on_one_line_with_nothing_hidden() -> None:
    """A newline or tab split an error line; a right-to-left override or a zero-width space hid
    what the name is; a byte that is not UTF-8 is shown as ls shows it."""
    assert ui.printable("nl/new\nline\t.jpg") == "nl/new\\nline\\t.jpg"
    assert ui.printable("a\u202egpj.exe\u200b") == "a\\u202egpj.exe\\u200b"
    assert ui.printable("my set \udce9 \x1b[2J") == "my set \\xe9 \\x1b[2J"
    assert ui.printable("café 数据 ok") == "café 数据 ok"


def test_an_error_line_names_a_file_with_a_newline_on_one_line(tmp_path: Path) -> None:
    proc = _pdseg(tmp_path, "eval", "--split", "no\nsuch", "--pred", tmp_path)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 2 and lines[0].startswith("error: --split no\\nsuch: "), lines
    assert all(line.startswith(("error:", "hint:")) for line in lines), lines


@pytest.mark.parametrize(
    "env", [{"COLUMNS": "0"}, {"COLUMNS": "-3", "LINES": "0"}, {"TERMINAL_WIDTH": "0"}, {"COLUMNS": "x"}]
)
def test_an_unusable_terminal_width_falls_back(tmp_path: Path, env: dict[str, str]) -> None:
    """`COLUMNS=0 pdseg ...` printed nothing at all, error lines and the help included."""
    failed = _pdseg(tmp_path, "eval", "--split", "nosuch", "--pred", tmp_path, **env)
    assert failed.returncode == 2 and failed.stderr.startswith(b"error: --split nosuch: "), failed.stderr
    help_text = _pdseg(tmp_path, "--help", **env)
    assert help_text.returncode == 0 and b" Usage: " in help_text.stdout, help_text.stderr


def test_benchmark_json_is_plain_json(tmp_path: Path) -> None:
    """No colour codes under FORCE_COLOR, and a path that an ASCII stdout cannot show kept whole
    (it was `caf?.pt`)."""
    weights = tmp_path / "café.pt"
    shutil.copy(REPO / "weights" / "pdseg-t-distilled.pt", weights)
    args = ["benchmark", "-s", "32", "-n", "1", "--warmup", "1", "-w", weights, "--json"]
    proc = _pdseg(tmp_path, *args, FORCE_COLOR="1", PYTHONIOENCODING="ascii")
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout.isascii() and b"\x1b" not in proc.stdout
    assert json.loads(proc.stdout)["weights"] == str(weights)


def test_benchmark_json_is_indented_text(capsys: pytest.CaptureFixture[str]) -> None:
    from pdseg_cli.ui import benchmark

    @dataclasses.dataclass
    class Report:
        weights: str = "caf\xe9 [red].pt"

    benchmark.as_json(Report())
    assert capsys.readouterr().out == '{\n  "weights": "caf\\u00e9 [red].pt"\n}\n'


@pytest.mark.parametrize("progress", ["", "1"])
def test_forced_colour_into_a_log_draws_no_bar(tmp_path: Path, progress: str) -> None:
    """FORCE_COLOR=1 2>log: the redrawn bar went into the log and PDSEG_PROGRESS=1 was ignored."""
    split, maps = small_split(tmp_path)
    env = {"FORCE_COLOR": "1", "PDSEG_PROGRESS": progress}
    proc = _pdseg(tmp_path, "eval", "--split", split, "--pred", maps, "--no-cache", **env)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "\r" not in err and "━" not in err and "\x1b[?25l" not in err, err
    assert ("eval 3/3 (100%)" in err) == (progress == "1"), err


def test_drain_forwards_stderr_before_stdout_is_written(tmp_path: Path) -> None:
    """What goes through the routed stderr reaches the real one before what drain's caller writes
    to stdout next (a progress bar's last frame was drawn over the table that followed it)."""
    code = (
        "import os\n"
        "from pdseg_cli.data import native_messages\n"
        "with native_messages.routed():\n"
        "    os.write(2, b'e' * 300_000)\n"
        "    native_messages.drain()\n"
        "    os.write(1, b'OUT')\n"
    )
    with open(tmp_path / "both.txt", "wb") as both:  # one file, one offset for both streams
        subprocess.run([sys.executable, "-c", code], stdout=both, stderr=both, env=torchrun_env(), timeout=60)
    data = (tmp_path / "both.txt").read_bytes()
    assert data == b"e" * 300_000 + b"OUT"


def test_a_live_bar_drains_stderr_when_it_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    from pdseg_cli.data import native_messages

    drained: list[bool] = []
    monkeypatch.setattr(native_messages, "drain", lambda: drained.append(True))
    monkeypatch.setattr(ui, "err_console", Console(file=io.StringIO(), force_terminal=True, width=80))
    monkeypatch.setattr(ui, "_stderr_is_terminal", True)
    with ui.progress_bar("predict", 2) as advance:
        advance(2)
    assert drained == [True]
