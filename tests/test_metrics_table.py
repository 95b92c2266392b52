"""The metric table (``pdseg_cli.metrics.table``) and everything derived from it.

The report layout is pinned here: the JSON and CSV keys and their order, and the columns of
``pdseg eval``'s table, must not change when the code that produces them does.
"""

from __future__ import annotations

import dataclasses
import io
import operator

import numpy as np
import pytest
from rich.console import Console

from pdseg_cli import ui
from pdseg_cli.engine.evaluate import evaluate_arrays
from pdseg_cli.metrics.aggregate import DatasetScores, aggregate
from pdseg_cli.metrics.hce import HCEParts
from pdseg_cli.metrics.image import ImageScores, score_pair
from pdseg_cli.metrics.table import EXTRA_KEYS, METRICS, TABLE_KEYS, TABLE_METRICS, metric
from pdseg_cli.ui import evaluation as view

DIS_TABLE = ("maxF", "wF", "MAE", "S", "E", "HCE")  # the paper's column order
EXTRAS = ("meanF", "adpF", "maxE", "adpE")
HCE_PARTS = ("fp_points", "fp_regions", "fn_points", "fn_regions")


def _pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    gt = np.zeros((40, 56), np.uint8)
    gt[8:30, 10:44] = 255
    soft = np.clip(gt.astype(int) + rng.integers(-90, 90, gt.shape), 0, 255).astype(np.uint8)
    return [(soft, gt), (np.roll(gt, 3, axis=1), gt), (np.full_like(gt, 37), gt)]


def test_the_keys_and_their_order_are_the_reports() -> None:
    assert TABLE_KEYS == DIS_TABLE
    assert EXTRA_KEYS == EXTRAS
    assert tuple(m.key for m in METRICS) == (*DIS_TABLE, *EXTRAS)  # the table first: JSON order
    assert tuple(m.key for m in TABLE_METRICS) == DIS_TABLE


def test_entries_are_distinct_and_complete() -> None:
    for attr in ("key", "field", "label", "description"):
        values = [getattr(m, attr) for m in METRICS]
        assert len(set(values)) == len(values), attr
    for m in METRICS:
        assert m.description and "\n" not in m.description, m.key
        assert m.decimals >= 0
    assert [m.key for m in METRICS if not m.higher_is_better] == ["MAE", "HCE"]


def test_the_table_agrees_with_the_score_classes() -> None:
    curves = {m.source for m in METRICS if m.reduce is not None}
    assert curves == {"f_curve", "e_curve"}
    dataset_fields = [f.name for f in dataclasses.fields(DatasetScores)]
    assert dataset_fields[:3] == ["count", "f_curve", "e_curve"]
    assert sorted(dataset_fields[3:]) == sorted(m.field for m in METRICS)
    image = score_pair(*_pairs()[0])
    image_fields = {f.name for f in dataclasses.fields(ImageScores)}
    for m in METRICS:
        assert m.source.split(".")[0] in image_fields, m.key
        operator.attrgetter(m.source)(image)  # resolves


def test_metric_lookup_and_format() -> None:
    assert metric("maxF").field == "max_f"
    assert metric("E").field == "mean_e"  # the DIS table's E is the mean E-measure
    assert metric("maxF").format(0.91249) == "0.912"
    assert metric("MAE").format(0.0456) == "0.046"
    assert metric("HCE").format(1023.5) == "1024"  # a count: no decimals (round half to even)
    assert metric("HCE").format(1022.5) == "1022"
    with pytest.raises(KeyError, match="maxF, wF"):
        metric("maxf")


def test_per_image_values_follow_the_table() -> None:
    image = score_pair(*_pairs()[0])
    values = image.as_dict()
    assert list(values) == [*DIS_TABLE, *EXTRAS, *HCE_PARTS]
    assert values["maxF"] == float(image.f_curve.max())
    assert values["E"] == float(image.e_curve.mean())
    assert values["meanF"] == float(image.f_curve.mean())
    assert values["maxE"] == float(image.e_curve.max())
    assert values["HCE"] == image.hce.total and isinstance(values["HCE"], int)
    assert [values[k] for k in HCE_PARTS] == list(dataclasses.astuple(image.hce))
    assert (values["wF"], values["MAE"], values["S"]) == (image.wf, image.mae, image.s)


def test_dataset_values_follow_the_table() -> None:
    images = [score_pair(p, g) for p, g in _pairs()]
    scores = aggregate(images)
    values = scores.as_dict()
    assert list(values) == [*DIS_TABLE, "count", *EXTRAS]
    f_mean = np.mean(np.array([im.f_curve for im in images]), axis=0)
    assert values["maxF"] == float(f_mean.max()) == scores.max_f
    assert values["HCE"] == float(np.mean([im.hce.total for im in images])) == scores.hce
    assert values["S"] == float(np.mean([im.s for im in images]))
    empty = aggregate([]).as_dict()
    assert empty["count"] == 0 and all(np.isnan(empty[k]) for k in (*DIS_TABLE, *EXTRAS))


def test_csv_and_rich_table_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    report = evaluate_arrays(_pairs(), name="val")
    header = report.to_csv().splitlines()[0]
    assert header == ",".join(["split", "count", *DIS_TABLE, *EXTRAS, "missing", "resized"])
    assert list(report.to_json()["splits"]["val"]) == [*DIS_TABLE, "count", *EXTRAS, "resized", "missing"]

    out = io.StringIO()
    monkeypatch.setattr(ui, "console", Console(file=out, width=200, highlight=False))
    view.render(report)
    lines = out.getvalue().splitlines()
    header_line = next(line for line in lines if "split" in line)
    assert header_line.split() == ["┃", "split", "┃", "images", *_between_bars(DIS_TABLE)]
    row = next(line for line in lines if line.startswith("│ val "))
    sc = report.splits[0].scores
    want = ["val", "3", *(f"{getattr(sc, f):.3f}" for f in ("max_f", "wf", "mae", "s", "mean_e"))]
    assert row.replace("│", " ").split() == [*want, f"{sc.hce:.0f}"]


def _between_bars(columns: tuple[str, ...]) -> list[str]:
    out = ["┃"]
    for c in columns:
        out += [c, "┃"]
    return out


def test_hce_parts_are_the_per_image_extras() -> None:
    assert [f.name for f in dataclasses.fields(HCEParts)] == list(HCE_PARTS)
