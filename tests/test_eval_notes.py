"""What `pdseg eval` says about how a run went, as pure functions: why DIS-TE1..4 folders get no
overall row, and the hint after a Ctrl-C for each state of the GT cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdseg_cli.data.eval_splits import OVERALL_NAME, overall_row_notes
from pdseg_cli.ui import evaluation as view

TE = ("DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")


def test_the_missing_overall_row_is_explained_once_only_for_the_four_test_folders(tmp_path: Path) -> None:
    splits = [(name, tmp_path / "DIS5K" / name) for name in ("DIS-VD", *TE)]
    for _, folder in splits:
        folder.mkdir(parents=True)
    notes = overall_row_notes(splits, {})
    assert list(notes) == ["DIS-TE4"] and len(notes["DIS-TE4"]) == 1
    note = notes["DIS-TE4"][0]
    assert note.startswith("no DIS-TE (overall) row: it is given only when the four test splits are named")
    assert note.endswith(f"if these are DIS5K's: --split DIS-TE --data-root {(tmp_path / 'DIS5K').resolve()}")
    # in two places: no single root to suggest, the rest is said
    apart = [(name, tmp_path / ("a" if name < "DIS-TE3" else "b") / name) for name in TE]
    assert overall_row_notes(apart, {})["DIS-TE4"][0].endswith("not given as folders")
    assert overall_row_notes(splits, {OVERALL_NAME: list(TE)}) == {}  # the row is there
    assert overall_row_notes(splits[:-1], {}) == {}  # three test splits: no row is expected
    # matched whatever their case, but --data-root looks the exact names up: no command that fails
    lower = [(name.lower(), tmp_path / "low" / name.lower()) for name in TE]
    for _, folder in lower:
        folder.mkdir(parents=True)
    assert overall_row_notes(lower, {})["dis-te4"][0].endswith("not given as folders")


@pytest.mark.parametrize(
    ("scoring", "cache", "kept", "hint"),
    [
        (False, None, False, "it starts over"),
        (
            True,
            "/c",
            True,
            "the GT cache /c keeps the GT data prepared so far, so that work is not done again",
        ),
        (True, "/c", False, "it starts over (the GT cache /c kept nothing)"),
        (True, None, False, "it starts over (the GT cache is off)"),
    ],
)
def test_the_hint_after_a_ctrl_c_promises_only_what_the_cache_kept(
    scoring: bool, cache: str | None, kept: bool, hint: str
) -> None:
    assert view.interrupt_hint(scoring, cache, kept) == f"running the same command again is safe; {hint}"
