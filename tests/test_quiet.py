"""`--quiet`: warnings and errors only, for cron and scripts; files and stdout output as usual."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import flat, run_cli, small_split

from pdseg_cli import ui


def test_quiet_eval_prints_nothing_and_writes_its_files(tmp_path: Path) -> None:
    split, maps = small_split(tmp_path)
    result = run_cli("eval", "-q", "--split", split, "--pred", maps, "--json", tmp_path / "s.json")
    assert result.exit_code == 0 and result.output == ""
    assert json.loads((tmp_path / "s.json").read_text())["splits"]
    # output asked for on stdout is the output: still written
    csv = run_cli("eval", "--quiet", "--split", split, "--pred", maps, "--csv", "-")
    assert csv.exit_code == 0 and csv.output.startswith("split,count,maxF,")
    assert csv.output.count("\n") == 2  # the header and the split's row, nothing else


def test_quiet_keeps_errors_and_ends_with_its_command(tmp_path: Path) -> None:
    result = run_cli("eval", "-q", "--split", tmp_path, "--pred", tmp_path / "nowhere")
    assert result.exit_code == 2 and "error: --split" in flat(result.output) and "hint:" in result.output
    assert not ui.is_quiet()  # the next command (in this process) is not quiet
    assert "pdseg model variants" in run_cli("info").output


def test_every_command_takes_quiet() -> None:
    for command in ("predict", "eval", "train", "export", "info", "benchmark"):
        assert "--quiet" in flat(run_cli(command, "--help", columns=200).output), command


def test_a_command_line_that_fails_to_parse_leaves_no_quiet_behind() -> None:
    result = run_cli("eval", "-q", "--no-such-option")
    assert result.exit_code == 2 and not ui.is_quiet()
