"""The report's rows: the overall row as the mean of its split rows, the counts every row carries,
and how many worker processes score by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pdseg_cli.engine import evaluate as ev
from pdseg_cli.engine.eval_report import EvalReport, PooledResult, SplitResult
from pdseg_cli.metrics.aggregate import DatasetScores
from pdseg_cli.metrics.table import METRICS
from pdseg_cli.runtime import compute

TEST_SPLITS = ("DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")


def _row(max_f: float, hce: float, count: int = 500, curve_at: float = 0.5) -> DatasetScores:
    values = {m.field: 0.5 for m in METRICS} | {"max_f": max_f, "hce": hce}
    return DatasetScores(count, np.full(256, curve_at), np.full(256, curve_at), **values)


def _split(name: str, scores: DatasetScores, missing: int = 0) -> SplitResult:
    return SplitResult(name, Path(name), None, [], scores, missing=[f"m{i}" for i in range(missing)])


def test_the_overall_row_is_the_mean_of_the_published_split_rows() -> None:
    # IS-Net in the DIS paper (ECCV 2022): maxF and HCE on DIS-TE1..4, then "Overall DIS-TE (1-4)"
    max_f, hce = (0.740, 0.799, 0.830, 0.827), (149, 340, 687, 2888)
    splits = [
        _split(name, _row(f, h, curve_at=i / 10), missing=i)
        for i, (name, f, h) in enumerate(zip(TEST_SPLITS, max_f, hce, strict=True))
    ]
    overall = PooledResult.mean_of("DIS-TE (overall)", splits)
    assert round(overall.scores.max_f, 3) == 0.799 and overall.scores.max_f == pytest.approx(0.799, abs=1e-12)
    assert overall.scores.hce == 1016.0
    assert overall.scores.count == 2000 and overall.missing == 0 + 1 + 2 + 3
    assert overall.scores.f_curve == pytest.approx(np.full(256, 0.15))  # the mean of the four curves
    row = overall.row()
    assert row["maxF"] == overall.scores.max_f and row["HCE"] == 1016.0 and row["wF"] == 0.5
    assert (row["count"], row["missing"], row["resized"]) == (2000, 6, 0)
    assert row["pooled_from"] == list(TEST_SPLITS) and row["combined"].startswith("unweighted mean")


def test_every_json_row_and_csv_line_carries_missing_and_resized() -> None:
    splits = [_split(name, _row(0.8, 100), missing=1 if name == "DIS-TE2" else 0) for name in TEST_SPLITS]
    report = EvalReport(splits, [PooledResult.mean_of("DIS-TE (overall)", splits)])
    rows = report.to_json()["splits"]
    assert [rows[n]["missing"] for n in rows] == [0, 1, 0, 0, 1]
    assert all(rows[n]["resized"] == 0 for n in rows)
    lines = report.to_csv().splitlines()
    assert lines[0].endswith(",missing,resized")
    assert [line.rsplit(",", 2)[1:] for line in lines[1:]] == [
        ["0", "0"],
        ["1", "0"],
        ["0", "0"],
        ["0", "0"],
        ["1", "0"],
    ]


@pytest.mark.load_aware_jobs  # the real default, not conftest's one process
def test_default_jobs_are_the_idle_cores() -> None:
    assert ev.default_jobs(cores=8, busy=3.0) == 5
    assert ev.default_jobs(cores=2, busy=1.0) == 1
    assert ev.default_jobs(cores=2, busy=5.0) == 1  # never fewer than one
    assert ev.default_jobs(cores=4, busy=0.0) == 4


@pytest.mark.load_aware_jobs  # the real default, not conftest's one process
def test_explicit_jobs_are_kept_whatever_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ev, "all_cores", lambda: 4)
    monkeypatch.setattr(compute, "other_runnable_tasks", lambda: 3.0)
    assert ev.resolve_jobs(None) == ev.resolve_jobs(0) == 1
    assert ev.resolve_jobs(-1) == 4 and ev.resolve_jobs(-2) == 3 and ev.resolve_jobs(6) == 6
    monkeypatch.setattr(compute, "other_runnable_tasks", lambda: None)  # no load to read (not Linux)
    assert ev.resolve_jobs(0) == 4


def test_a_prediction_of_another_size_is_resized_bilinearly_to_its_gt() -> None:
    """The rule of every published DIS evaluation, checked without the sample data (the golden
    sets check it too, where ../shared/data is there)."""
    import cv2

    from pdseg_cli.metrics.image import score_pair

    rng = np.random.default_rng(0)
    pred = rng.integers(0, 256, (12, 20), dtype=np.uint8)
    gt = np.zeros((30, 50), np.uint8)
    gt[8:22, 10:40] = 255
    got = ev.evaluate_arrays([(pred, gt)]).splits[0].images[0].scores
    want = score_pair(cv2.resize(pred, (50, 30), interpolation=cv2.INTER_LINEAR), gt)
    assert (got.mae, got.wf, got.s, got.hce) == (want.mae, want.wf, want.s, want.hce)
    np.testing.assert_array_equal(got.f_curve, want.f_curve)
