"""`pdseg eval` end to end on temporary splits: table, JSON, CSV and every kind of bad input."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from helpers import edge_case_split, flat, no_space, textured_image, write_output_png
from typer.testing import CliRunner

from pdseg_cli.cli import app
from pdseg_cli.engine.evaluate import evaluate

GOLDEN_DIR = Path(__file__).parent / "golden"
CASES = ("thin_lines_half_found", "holes_soft_pred", "low_range_30_200", "pred_half_size")
runner = CliRunner(env={"COLUMNS": "250", "PDSEG_CACHE_DIR": None})


def _run(*args: str | Path, cache: Path) -> object:
    result = runner.invoke(app, ["eval", *map(str, args), "--cache-dir", str(cache), "--jobs", "1"])
    assert "Traceback" not in result.output
    return result


def test_table_json_and_csv(tmp_path: Path) -> None:
    split = edge_case_split(tmp_path / "myset", CASES)
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    result = _run(
        "--split", split, "--pred", split / "pred", "--json", out_json, "--csv", out_csv, cache=tmp_path / "c"
    )
    assert result.exit_code == 0, result.output
    api = evaluate(split / "pred", split / "gt", jobs=1, use_cache=False).splits[0].scores
    want = api.as_dict()  # the table's keys, count, then the extras
    metrics = [key for key in want if key != "count"]
    assert metrics[:6] == ["maxF", "wF", "MAE", "S", "E", "HCE"] and want["E"] == api.mean_e

    # the table: its header cells in order, and the row's values at the printed precision
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "split" in line)
    assert header.replace("┃", " ").split() == ["split", "images", *metrics[:6]]
    row_line = next(line for line in lines if line.startswith("│ myset "))
    printed = [f"{want[key]:.3f}" for key in metrics[:5]] + [f"{want['HCE']:.0f}"]
    assert row_line.replace("│", " ").split() == ["myset", "4", *printed]
    assert "1 of 4 predictions had another size and were resized" in flat(result.stderr)

    data = json.loads(out_json.read_text())
    assert set(data) >= {"splits", "images", "settings", "curves"}
    row = data["splits"]["myset"]
    assert row["count"] == 4 and row["resized"] == 1 and row["missing"] == 0
    for key in metrics:  # the cached scores the CLI read are the API's fresh ones, to the last bit
        assert row[key] == want[key], key
    assert set(data["images"]["myset"]) == set(CASES)
    one = data["images"]["myset"]["pred_half_size"]
    assert {"maxF", "wF", "MAE", "S", "E", "HCE", "fp_points", "fn_regions"} <= set(one)
    assert one["resized_from_hw"] == [48, 64]
    assert len(data["curves"]["myset"]["F"]) == 256
    assert data["settings"]["S"]["alpha"] == 0.5

    # the CSV writes repr(float): every value reads back as the JSON's and the API's exactly
    with out_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["split", "count", *metrics, "missing", "resized"]
        [csv_row] = list(reader)
    assert [csv_row[k] for k in ("split", "count", "missing", "resized")] == ["myset", "4", "0", "1"]
    for key in metrics:
        assert float(csv_row[key]) == row[key] == want[key], key


def test_a_report_that_cannot_be_written_after_scoring_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scores are made but not kept: the run failed (exit 1), not a usage mistake (exit 2)."""
    from pdseg_cli.data import images

    def full(path: object, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(images, "write_bytes_atomic", full)
    split = edge_case_split(tmp_path / "myset", CASES)
    result = _run(
        "--split", split, "--pred", split / "pred", "--json", tmp_path / "r.json", cache=tmp_path / "c"
    )
    assert result.exit_code == 1, result.output
    assert "No space left on device" in flat(result.output) and "free some space" in flat(result.output)


def test_missing_predictions_are_listed(tmp_path: Path) -> None:
    split = edge_case_split(tmp_path / "s", CASES)
    (split / "pred" / "holes_soft_pred.png").unlink()
    result = _run("--split", split, "--pred", split / "pred", cache=tmp_path / "c")
    assert result.exit_code == 2
    text = flat(result.output)
    assert "1 of 4 GT masks have no prediction" in text and "holes_soft_pred" in text
    assert "--allow-missing" in text and "scoring" not in text  # no start line before a refusal
    allowed = _run("--split", split, "--pred", split / "pred", "--allow-missing", cache=tmp_path / "c")
    assert allowed.exit_code == 0, allowed.output
    assert "left out" in flat(allowed.stderr) and "holes_soft_pred" in allowed.stderr
    assert "│ 3 of 4 │" in allowed.stdout  # the row says it is not the whole split
    as_csv = _run(
        "--split", split, "--pred", split / "pred", "--allow-missing", "--csv", "-", cache=tmp_path / "c"
    )
    assert as_csv.stdout.splitlines()[1].startswith("s,3,") and as_csv.stdout.splitlines()[1].endswith(",1")


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    split = edge_case_split(tmp_path / "s", CASES)
    (split / "pred" / "low_range_30_200.png").write_bytes(b"garbage")
    result = _run("--split", split, "--pred", split / "pred", cache=tmp_path / "c")
    assert result.exit_code == 2
    assert "low_range_30_200.png" in result.output and "cannot decode" in result.output
    assert "replace them, or pass --allow-missing to score the others" in flat(result.output)
    allowed = _run("--split", split, "--pred", split / "pred", "--allow-missing", cache=tmp_path / "c")
    assert allowed.exit_code == 0 and "low_range_30_200" in allowed.stderr
    (split / "gt" / "holes_soft_pred.png").write_bytes(b"")
    bad_gt = _run("--split", split, "--pred", split / "pred", "--allow-missing", cache=tmp_path / "c")
    # left out and named, as a map that cannot be read is
    assert bad_gt.exit_code == 0 and "holes_soft_pred.png" in flat(bad_gt.stderr), bad_gt.output
    assert "not scored (--allow-missing): GT" in flat(bad_gt.stderr)
    floats = tmp_path / "floats"
    floats.mkdir()
    for gt in (split / "gt").glob("*.png"):
        cv2.imwrite(str(floats / f"{gt.stem}.tif"), np.zeros((8, 8), np.float32))
    as_float = _run("--split", split, "--pred", floats, cache=tmp_path / "c")
    assert as_float.exit_code == 2 and "a 32-bit float map, which the DIS metric tools do not read" in flat(
        as_float.output
    )


def test_empty_folders_and_unpaired_stems(tmp_path: Path) -> None:
    split = edge_case_split(tmp_path / "s", CASES)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run("--split", split, "--pred", empty, cache=tmp_path / "c")
    assert result.exit_code == 2 and "no prediction maps in" in flat(result.output)
    other = tmp_path / "other"
    other.mkdir()
    cv2.imwrite(str(other / "frame_0001.png"), np.zeros((5, 5), np.uint8))
    result = _run("--split", split, "--pred", other, cache=tmp_path / "c")
    text = flat(result.output)
    assert result.exit_code == 2 and "matches a GT by file stem; its maps are named like frame_0001" in text
    assert "is --pred the right folder?" in text and "--allow-missing" not in text
    cv2.imwrite(str(split / "pred" / "extra.png"), np.zeros((5, 5), np.uint8))
    result = _run("--split", split, "--pred", split / "pred", cache=tmp_path / "c")
    assert result.exit_code == 0
    assert "1 prediction has no GT of the same name and was ignored: extra" in flat(result.stderr)
    for f in (split / "gt").iterdir():
        f.unlink()
    result = _run("--split", split, "--pred", split / "pred", cache=tmp_path / "c")
    assert result.exit_code == 2 and "no GT masks in" in flat(result.output)


def test_zero_one_gt_and_16_bit_masks_are_explained(tmp_path: Path) -> None:
    split = edge_case_split(tmp_path / "s", CASES[:2])
    gt_path = split / "gt" / f"{CASES[0]}.png"
    gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(gt_path), (gt > 128).astype(np.uint8))  # stored as 0/1
    pred_path = split / "pred" / f"{CASES[1]}.png"
    pred = cv2.imread(str(pred_path), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(pred_path), pred.astype(np.uint16) * 257)  # 16-bit, same high byte
    result = _run(
        "--split", split, "--pred", split / "pred", "--json", tmp_path / "r.json", cache=tmp_path / "c"
    )
    assert result.exit_code == 0, result.output
    err = flat(result.stderr)
    assert "GT masks have no pixel above 128 (0/1 masks?): they read as empty GTs" in err
    assert f"(1 file): {split / 'gt' / CASES[0]}.png" in err
    assert "prediction files are 16-bit: read as their high byte (v >> 8)" in err
    assert f"(1 file): {split / 'pred' / CASES[1]}.png" in err
    data = json.loads((tmp_path / "r.json").read_text())
    assert len(data["notes"]["s"]["warnings"]) == 2
    # each file's own, beside its scores: a warning line lists five files, the rest "and N more"
    assert data["images"]["s"][CASES[0]]["notes"] == ["gt_empty"]
    assert data["images"]["s"][CASES[1]]["notes"] == ["pred_16bit"]


def _dis_root(tmp_path: Path) -> tuple[Path, Path]:
    """A DIS5K root with all five splits (2-4 images each) and their maps in preds/<split>/."""
    root, preds = tmp_path / "DIS5K", tmp_path / "preds"
    preds.mkdir()
    for i, name in enumerate(("DIS-VD", "DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")):
        folder = edge_case_split(root / name, CASES[: 2 + i % 3], images=True)
        (folder / "pred").rename(preds / name)
    return root, preds


def test_dis_te_overall_row_is_the_mean_of_the_split_rows(tmp_path: Path) -> None:
    root, preds = _dis_root(tmp_path)  # DIS-TE1..4 hold 3, 4, 2 and 3 images
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    args = ["--split", "DIS-TE", "--data-root", root, "--pred", preds, "--json", out_json, "--csv", out_csv]
    result = _run(*args, cache=tmp_path / "c")
    assert result.exit_code == 0, result.output
    text = flat(result.stdout)
    for name in ("DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4", "DIS-TE (overall)"):
        assert name in text
    members = "DIS-TE1, DIS-TE2, DIS-TE3, DIS-TE4"
    assert f"DIS-TE (overall): mean of the {members} rows, each split weight 1" in text
    data = json.loads(out_json.read_text())
    overall = data["splits"]["DIS-TE (overall)"]
    assert overall["count"] == 12 and overall["missing"] == 0
    assert overall["resized"] == 1  # pred_half_size, in DIS-TE2
    assert overall["pooled_from"] == ["DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4"]
    rows = [data["splits"][n] for n in ("DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")]
    for key in ("maxF", "wF", "MAE", "S", "E", "HCE", "meanF", "adpF", "maxE", "adpE"):
        assert overall[key] == pytest.approx(np.mean([row[key] for row in rows]), abs=1e-12), key
    # what the row was before: all 12 images pooled into one F curve, a different maxF
    images = [
        r.scores
        for n in ("DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")
        for r in evaluate(preds / n, root / n / "gt", jobs=1, use_cache=False).splits[0].images
    ]
    pooled_max_f = np.mean([s.f_curve for s in images], axis=0).max()
    assert abs(overall["maxF"] - pooled_max_f) > 1e-3
    curve = np.mean([data["curves"][n]["F"] for n in ("DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")], axis=0)
    assert data["curves"]["DIS-TE (overall)"]["F"] == pytest.approx(curve.tolist(), abs=1e-12)
    assert "DIS-VD" not in data["splits"]
    line = next(row for row in out_csv.read_text().splitlines() if row.startswith("DIS-TE (overall),"))
    assert line.startswith("DIS-TE (overall),12,") and line.endswith(",0,1")
    assert float(line.split(",")[2]) == overall["maxF"]


def test_the_overall_row_needs_all_four_test_splits_however_named(tmp_path: Path) -> None:
    root, preds = _dis_root(tmp_path)
    common = ["--data-root", root, "--pred", preds, "--json", "-"]
    by_group = json.loads(_run("--split", "DIS-TE", *common, cache=tmp_path / "c").stdout)["splits"]
    four = "DIS-TE1,DIS-TE2,DIS-TE3,DIS-TE4"
    by_name = json.loads(_run("--split", four, *common, cache=tmp_path / "c").stdout)["splits"]
    assert by_name["DIS-TE (overall)"]["maxF"] == by_group["DIS-TE (overall)"]["maxF"]
    with_vd = json.loads(_run("--split", "DIS-VD,DIS-TE", *common, cache=tmp_path / "c").stdout)["splits"]
    assert with_vd["DIS-TE (overall)"] == by_group["DIS-TE (overall)"]  # DIS-VD stays out of it
    two = json.loads(_run("--split", "DIS-TE1,DIS-TE2", *common, cache=tmp_path / "c").stdout)["splits"]
    assert set(two) == {"DIS-TE1", "DIS-TE2"}
    # folders of one's own that are called DIS-TE1..4 are not DIS5K's splits: no overall row
    folders = ",".join(str(root / f"DIS-TE{i}") for i in range(1, 5))
    own = _run("--split", folders, "--pred", preds, "--json", "-", cache=tmp_path / "c")
    assert own.exit_code == 0, own.output
    assert "DIS-TE (overall)" not in json.loads(own.stdout)["splits"]


def test_a_dis5k_split_of_another_size_than_published_is_noted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A truncated download's DIS-TE rows looked like the published ones."""
    from pdseg_cli.data import eval_splits

    root, preds = _dis_root(tmp_path)  # DIS-TE1..4 hold 3, 4, 2 and 3 images
    monkeypatch.setitem(eval_splits.PUBLISHED_SIZES, "DIS-TE2", 4)  # as if complete
    args = ["--split", "DIS-TE", "--data-root", root, "--pred", preds, "--json", tmp_path / "r.json"]
    result = _run(*args, cache=tmp_path / "c")
    assert result.exit_code == 0, result.output
    note = (
        "DIS-TE1: 3 GT masks here, 500 in DIS5K's DIS-TE1: its row is not comparable with published "
        "tables (a partial copy of the split?)"
    )
    assert note in flat(result.stderr) and "DIS-TE2: 4 GT masks" not in flat(result.stderr)
    notes = json.loads((tmp_path / "r.json").read_text())["notes"]
    assert note in notes["DIS-TE1"]["warnings"]
    assert not [w for w in notes["DIS-TE2"]["warnings"] if "GT masks here" in w]
    assert eval_splits.published_size_notes({"DIS-VD": 470, "DIS-TE4": 500, "mine": 3}) == {}
    assert "DIS5K's 4 splits hold 1,504 images: not the published row" in flat(result.stdout)
    for name, n in (("DIS-TE1", 3), ("DIS-TE3", 2), ("DIS-TE4", 3)):  # as if all four were complete
        monkeypatch.setitem(eval_splits.PUBLISHED_SIZES, name, n)
    whole = _run("--split", "DIS-TE", "--data-root", root, "--pred", preds, cache=tmp_path / "c")
    assert "not the published row" not in flat(whole.output) and "GT masks here" not in flat(whole.output)


def test_the_overall_row_counts_what_allow_missing_left_out(tmp_path: Path) -> None:
    root, preds = _dis_root(tmp_path)
    (preds / "DIS-TE2" / f"{CASES[3]}.png").unlink()
    args = ["--split", "DIS-TE", "--data-root", root, "--pred", preds, "--allow-missing"]
    result = _run(*args, "--json", tmp_path / "r.json", cache=tmp_path / "c")
    assert result.exit_code == 0, result.output
    table = flat(result.stdout)
    assert "│ DIS-TE2 │ 3 of 4 │" in table and "│ DIS-TE (overall) │ 11 of 12 │" in table
    assert "its splits leave out 1 GT mask (--allow-missing)" in table
    splits = json.loads((tmp_path / "r.json").read_text())["splits"]
    assert splits["DIS-TE2"]["count"] == 3 and splits["DIS-TE2"]["missing"] == 1
    overall = splits["DIS-TE (overall)"]
    assert overall["count"] == 11 and overall["missing"] == 1
    rows = [splits[n]["HCE"] for n in ("DIS-TE1", "DIS-TE2", "DIS-TE3", "DIS-TE4")]
    assert overall["HCE"] == pytest.approx(np.mean(rows), abs=1e-9)
    as_csv = _run(*args, "--csv", "-", cache=tmp_path / "c").stdout.splitlines()
    assert next(line for line in as_csv if line.startswith("DIS-TE (overall),")).endswith(",1,0")


def test_comma_lists_of_splits_and_isnet_prediction_folders(tmp_path: Path) -> None:
    root, preds = _dis_root(tmp_path)
    for name in ("DIS-TE1", "DIS-TE2"):  # IS-Net's inference writes <out>/DIS5K-TE1/<stem>.png
        (preds / name).rename(preds / name.replace("DIS-", "DIS5K-"))
    args = ["--split", "DIS-TE1,DIS-TE2", "--data-root", root, "--pred", preds, "--json", "-"]
    result = _run(*args, cache=tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["splits"]) == {"DIS-TE1", "DIS-TE2"}
    one = _run("--split", "DIS-TE1", "--data-root", root, "--pred", preds, cache=tmp_path / "c")
    assert one.exit_code == 0, one.output


def test_split_names_and_roots_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PDSEG_DATA", raising=False)
    result = _run("--split", "DIS-TE3", "--pred", tmp_path, cache=tmp_path / "c")
    assert result.exit_code == 2
    text = flat(result.output)
    assert "DIS5K root DIS5K (from the default ./DIS5K) is not a folder" in text
    assert "<root>/<split>/gt/<stem>.png" in text
    root, preds = _dis_root(tmp_path)
    (root / "DIS-TE3" / "gt").rename(root / "DIS-TE3" / "masks")
    result = _run("--split", "DIS-TE3", "--data-root", root, "--pred", preds, cache=tmp_path / "c")
    assert result.exit_code == 2 and "split DIS-TE3 has no gt/ subfolder" in flat(result.output)
    result = _run("--split", "DIS-TE1", "--data-root", tmp_path, "--pred", preds, cache=tmp_path / "c")
    assert result.exit_code == 2 and f"did you mean --data-root {root}?" in flat(result.output)
    result = _run("--split", "DIS-TE5", "--data-root", root, "--pred", preds, cache=tmp_path / "c")
    assert result.exit_code == 2 and "not a DIS5K split name nor a folder" in flat(result.output)
    assert "did you mean" in flat(result.output)
    # the training split is DIS5K's too: said so, with the way to score it anyway (it said "DIS-TE?")
    result = _run("--split", "dis-tr", "--data-root", root, "--pred", preds, cache=tmp_path / "c")
    text = flat(result.output)
    assert result.exit_code == 2 and "--split dis-tr: the training split has no published scores" in text
    assert f"--split {root / 'DIS-TR'}" in text and "did you mean" not in text
    result = _run(
        "--split",
        "DIS-VD",
        "--split",
        "DIS-TE1",
        "--data-root",
        root,
        "--pred",
        tmp_path / "nowhere",
        cache=tmp_path / "c",
    )
    assert result.exit_code == 2 and "no subfolder DIS-VD/" in flat(result.output)


def test_pred_and_weights_exclude_each_other(tmp_path: Path) -> None:
    split = edge_case_split(tmp_path / "s", CASES)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    result = _run("--split", split, "--pred", split / "pred", "--weights", weights, cache=tmp_path / "c")
    assert result.exit_code == 2 and "--pred scores existing maps, so --weights" in flat(result.output)
    result = _run("--split", split, "--pred", split / "pred", "--tta", cache=tmp_path / "c")
    assert result.exit_code == 2 and "so --tta (for running a model) cannot apply" in flat(result.output)
    result = _run("--split", split, "--pred", split / "pred", "--scales", "1,1.125", cache=tmp_path / "c")
    assert result.exit_code == 2 and "so --scales (for running a model) cannot apply" in flat(result.output)
    more = ["--size", "64", "--batch", "4", "--onnx-spec", "size=3"]
    result = _run("--split", split, "--pred", split / "pred", *more, cache=tmp_path / "c")
    assert result.exit_code == 2 and "drop --size, --onnx-spec, --batch" in flat(result.output)


def test_a_refused_eval_writes_its_error_as_the_report(tmp_path: Path) -> None:
    """The last run's scores were left in place for a script that reads the report alone."""
    split = edge_case_split(tmp_path / "s", CASES)
    report = tmp_path / "scores.json"
    args = ["--split", split, "--pred", split / "pred", "--json", report]
    assert _run(*args, cache=tmp_path / "c").exit_code == 0
    assert "splits" in json.loads(report.read_text())
    (split / "pred" / f"{CASES[0]}.png").unlink()
    refused = _run(*args, cache=tmp_path / "c")
    data = json.loads(report.read_text())
    assert refused.exit_code == 2 and "have no prediction" in data["error"], refused.output
    assert "--allow-missing" in data["hint"] and "splits" not in data
    early = _run(*args, "--batch", "0", cache=tmp_path / "c")  # refused before the --pred check
    assert early.exit_code == 2 and "--batch" in json.loads(report.read_text())["error"]


def test_max_pixels_is_evals_too(tmp_path: Path, spread_tiny_ckpt: Path) -> None:
    """An image over the limit was refused with the hint to pass --max-pixels, which eval lacked."""
    split = edge_case_split(tmp_path / "s", CASES[:2], images=True)
    h, w = cv2.imread(str(split / "im" / f"{CASES[0]}.jpg")).shape[:2]
    small = cv2.imread(str(split / "im" / f"{CASES[1]}.jpg"))
    cv2.imwrite(str(split / "im" / f"{CASES[1]}.jpg"), cv2.resize(small, (w // 2, h // 2)))
    args = ["--split", split, "--weights", spread_tiny_ckpt, "--max-pixels", h * w - 1]
    refused = _run(*args, cache=tmp_path / "c")
    text = flat(refused.output)
    assert refused.exit_code == 2 and "1 GT mask without a prediction" in text, text
    assert f"over the limit of {h * w - 1:,}; not decoded; pass a larger --max-pixels" in text
    assert _run(*args, "--allow-missing", cache=tmp_path / "c").exit_code == 0
    assert _run(*args[:-1], h * w, cache=tmp_path / "c").exit_code == 0
    both = _run("--split", split, "--pred", split / "pred", "--max-pixels", 5, cache=tmp_path / "c")
    assert both.exit_code == 2 and "drop --max-pixels" in flat(both.output)


class _FakeSummary:
    def __init__(self, failures):
        self.failures = failures


class _FakePredictor:
    """Stands in for pdseg_cli.engine.predict.Predictor: 'predicts' by copying the stored maps."""

    source: Path

    def __init__(
        self, weights, device="auto", precision="auto", size=None, onnx_spec=None, tta=False, scales=None
    ):
        self.weights_path = weights
        self.weights_sha256 = hashlib.sha256(Path(weights).read_bytes()).hexdigest() if weights else None
        self.description = "a stand-in"
        self.device, self.device_reason, self.precision, self.size = "cpu", "cpu (asked)", "fp32", 64
        self.tta = tta
        self.notes: list[str] = []
        self.doubts: list[str] = []  # what the runs showed about how the model is read: nothing
        self.scale_sides: tuple[int, ...] = ()

    def describe_setting(self):
        return str(self.size)

    def predict_paths(self, sources, out_dir, *, batch=1, on_progress=None, max_pixels=None):
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for src in sources:
            pred = cv2.imread(str(self.source / f"{Path(src).stem}.png"), cv2.IMREAD_GRAYSCALE)
            write_output_png(out_dir / f"{Path(src).stem}.png", pred)  # marked, as the real one writes
            if on_progress:
                on_progress(None)
        return _FakeSummary([])


def test_a_save_preds_folder_in_use_is_refused_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock was taken after the model had loaded: seconds to minutes on a GPU, for a refusal."""
    import pdseg_cli.engine.predict as predict_mod
    from pdseg_cli.data.folder_lock import folder_lock

    split = edge_case_split(tmp_path / "s", CASES, images=True)
    loaded: list[object] = []
    monkeypatch.setattr(predict_mod, "Predictor", lambda *a, **k: loaded.append(a) or _FakePredictor(*a, **k))
    (tmp_path / "w.pt").write_bytes(b"stub")
    keep = tmp_path / "kept"
    with folder_lock(keep, "another eval"):
        result = _run(
            "--split", split, "--weights", tmp_path / "w.pt", "--save-preds", keep, cache=tmp_path / "c"
        )
    assert result.exit_code == 2, result.output
    assert f"--save-preds {keep} is in use by another pdseg process" in flat(result.output)
    assert loaded == []


def test_weights_mode_runs_the_model_and_keeps_maps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pdseg_cli.engine.predict as predict_mod

    split = edge_case_split(tmp_path / "s", CASES, images=True)
    _FakePredictor.source = split / "pred"
    monkeypatch.setattr(predict_mod, "Predictor", _FakePredictor)
    keep = tmp_path / "kept"
    (tmp_path / "w.pt").write_bytes(b"stub")
    result = _run(
        "--split",
        split,
        "--weights",
        tmp_path / "w.pt",
        "--save-preds",
        keep,
        "--json",
        tmp_path / "r.json",
        cache=tmp_path / "c",
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in (keep / "s").glob("*.png")) == sorted(CASES)
    from_files = evaluate(split / "pred", split / "gt", jobs=1, use_cache=False).splits[0].scores.as_dict()
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["splits"]["s"]["maxF"] == pytest.approx(from_files["maxF"], abs=1e-12)
    assert data["settings"]["predictions"]["saved_to"] == str(keep)
    # which weights, by content, and what ran them: a path alone says little once a file is retrained
    assert data["settings"]["predictions"]["weights_sha256"] == hashlib.sha256(b"stub").hexdigest()
    assert "torch" in data["settings"]["predictions"]["versions"]
    (split / "im" / f"{CASES[0]}.jpg").unlink()
    result = _run("--split", split, "--weights", tmp_path / "w.pt", cache=tmp_path / "c")
    assert result.exit_code == 2 and "1 GT mask without an image of the same name" in flat(result.output)
    result = _run("--split", split, "--weights", tmp_path / "w.pt", "--allow-missing", cache=tmp_path / "c")
    assert result.exit_code == 0 and f"{CASES[0]}.*: no image of that name in im/" in flat(result.output)


def test_a_reused_save_preds_folder_never_scores_a_stale_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    import pdseg_cli.engine.predict as predict_mod

    class FailsOnOne(_FakePredictor):
        def predict_paths(self, sources, out_dir, *, batch=1, on_progress=None, max_pixels=None):
            kept = [s for s in sources if Path(s).stem != CASES[1]]
            super().predict_paths(kept, out_dir, batch=batch, on_progress=on_progress)
            bad = next(s for s in sources if Path(s).stem == CASES[1])
            return _FakeSummary([types.SimpleNamespace(path=bad, error="cannot decode (truncated)")])

    split = edge_case_split(tmp_path / "s", CASES, images=True)
    _FakePredictor.source = split / "pred"
    (tmp_path / "w.pt").write_bytes(b"stub")
    keep, out_json = tmp_path / "kept", tmp_path / "r.json"
    args = ["--split", split, "--weights", tmp_path / "w.pt", "--save-preds", keep, "--json", out_json]
    monkeypatch.setattr(predict_mod, "Predictor", _FakePredictor)
    assert _run(*args, cache=tmp_path / "c").exit_code == 0
    assert (keep / "s" / f"{CASES[1]}.png").exists()  # the first run's map
    monkeypatch.setattr(predict_mod, "Predictor", FailsOnOne)
    result = _run(*args, "--allow-missing", cache=tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert "cannot decode (truncated)" in flat(result.output)  # the reason reaches the user
    data = json.loads(out_json.read_text())
    assert data["splits"]["s"]["count"] == len(CASES) - 1 and data["notes"]["s"]["missing"] == [CASES[1]]


def _split_unrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: str) -> Path:
    """A split with images, a stub weights file w.pt, and a Predictor that fails the test if built."""
    import pdseg_cli.engine.predict as predict_mod

    class NeverBuilt(_FakePredictor):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            raise AssertionError(why)

    (tmp_path / "w.pt").write_bytes(b"stub")
    monkeypatch.setattr(predict_mod, "Predictor", NeverBuilt)
    return edge_case_split(tmp_path / "s", CASES[:2], images=True)


def _save_preds_unrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, list]:
    """:func:`_split_unrun`, an empty --save-preds folder ``sp/s`` for it, and eval's arguments."""
    split = _split_unrun(tmp_path, monkeypatch, "the model ran before --save-preds was checked")
    keep = tmp_path / "sp"
    (keep / "s").mkdir(parents=True)
    return split, keep, ["--split", split, "--weights", tmp_path / "w.pt", "--save-preds", keep]


def test_a_save_preds_folder_that_would_clash_is_refused_before_the_model_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pdseg_cli.engine.predict as predict_mod

    split, keep, args = _save_preds_unrun(tmp_path, monkeypatch)
    cv2.imwrite(str(keep / "s" / f"{CASES[0]}.jpg"), np.zeros((8, 8), np.uint8))  # an older map, as JPEG
    result = _run(*args, cache=tmp_path / "c")
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert (
        f"--save-preds {keep}: {keep / 's'} would hold several files per name: {CASES[0]}.jpg and the new "
        f"{CASES[0]}.png" in text
    )
    assert "give --save-preds an empty folder; the model has not run yet" in text
    (keep / "s" / f"{CASES[0]}.jpg").unlink()
    for suffix in (".bmp", ".tif"):  # two old maps of one unrelated name clash among themselves
        cv2.imwrite(str(keep / "s" / f"old{suffix}"), np.zeros((8, 8), np.uint8))
    result = _run(*args, cache=tmp_path / "c")
    assert result.exit_code == 2 and "several files per name: old.bmp and old.tif" in flat(result.output)
    (keep / "s" / "old.bmp").unlink()
    # a photo where a map goes: named as --save-preds, before the model runs (the predict step
    # refused it later, calling the folder "--out", an option eval does not have)
    cv2.imwrite(str(keep / "s" / f"{CASES[0]}.png"), np.zeros((8, 8, 3), np.uint8))
    result = _run(*args, cache=tmp_path / "c")
    assert result.exit_code == 2, result.output
    assert (
        f"--save-preds {keep}: {keep / 's'} holds 1 file that pdseg would replace and cannot take "
        f"for its own outputs: {CASES[0]}.png (an 8-bit PNG with 3 channels; pdseg's mask has 1)"
        in flat(result.output)
    )
    assert "--out" not in result.output
    # a gray PNG without pdseg's mark (a GT mask, say) is refused too, saying why
    cv2.imwrite(str(keep / "s" / f"{CASES[0]}.png"), np.zeros((8, 8), np.uint8))
    result = _run(*args, cache=tmp_path / "c")
    assert result.exit_code == 2, result.output
    assert (
        "holds 1 file that pdseg would replace and cannot take for its own outputs: "
        f"{CASES[0]}.png (an 8-bit gray PNG "
        'without the "Software: pdseg" mark' in flat(result.output)
    )
    # an old map of the same name is just replaced
    write_output_png(keep / "s" / f"{CASES[0]}.png", np.zeros((8, 8), np.uint8))
    _FakePredictor.source = split / "pred"
    monkeypatch.setattr(predict_mod, "Predictor", _FakePredictor)
    assert _run(*args, cache=tmp_path / "c").exit_code == 0


def test_save_preds_maps_of_another_copy_of_the_split_are_refused_before_the_model_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the maps of another copy of the split (same names, other images) in --save-preds: the predict
    # step refused them after the model was built, calling the folder "--out"
    from pdseg_cli.data.header import output_mark
    from pdseg_cli.data.images import write_png

    split, keep, args = _save_preds_unrun(tmp_path, monkeypatch)
    other = tmp_path / "copy" / "im" / f"{CASES[0]}.jpg"
    write_png(keep / "s" / f"{CASES[0]}.png", np.zeros((8, 8), np.uint8), software=output_mark(other))
    result = _run(*args, cache=tmp_path / "c")
    assert result.exit_code == 2, result.output
    said = (
        f"--save-preds {keep}: {keep / 's'} holds 1 map that pdseg made from another image of the same "
        f"name, which this run would replace: {keep / 's' / CASES[0]}.png (made from another input than "
        f"{split / 'im' / CASES[0]}.jpg)"
    )
    assert no_space(said) in no_space(result.output) and "--out" not in result.output
    assert "give --save-preds another folder for this copy of the split" in flat(result.output)
    # the map of this very image is replaced, as before
    mine = split / "im" / f"{CASES[0]}.jpg"
    write_png(keep / "s" / f"{CASES[0]}.png", np.zeros((8, 8), np.uint8), software=output_mark(mine))
    import pdseg_cli.engine.predict as predict_mod

    _FakePredictor.source = split / "pred"
    monkeypatch.setattr(predict_mod, "Predictor", _FakePredictor)
    assert _run(*args, cache=tmp_path / "c").exit_code == 0


def test_gts_without_images_and_empty_gt_folders_are_refused_before_the_model_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the model ran over every split before the GT without an image stopped the run
    split = _split_unrun(tmp_path, monkeypatch, "the model ran before the GTs were paired with images")
    (split / "im" / f"{CASES[1]}.jpg").unlink()
    result = _run("--split", split, "--weights", tmp_path / "w.pt", cache=tmp_path / "c")
    text = flat(result.output)
    assert result.exit_code == 2, result.output
    assert f"s: 1 GT mask without an image of the same name in {split / 'im'}: {CASES[1]}.png" in text
    assert "pass --allow-missing to score the others; the model has not run yet" in text
    # GTs named otherwise than their images get train's rename, and no --allow-missing that would
    # leave nothing to score
    for mask in (split / "gt").iterdir():
        mask.rename(mask.with_name(f"{mask.stem}_mask.png"))
    for image in (split / "im").iterdir():
        if not (split / "gt" / f"{image.stem}_mask.png").exists():
            image.unlink()
    for extra in ((), ("--allow-missing",)):
        result = _run("--split", split, "--weights", tmp_path / "w.pt", *extra, cache=tmp_path / "c")
        text = flat(result.output)
        assert result.exit_code == 2, result.output
        assert f"s: 2 GT masks match no image name in {split}, e.g. gt/{CASES[0]}_mask.png beside " in text
        assert 'adds "_mask" to its image\'s name' in text and "--allow-missing" not in text
        assert f"gt/{CASES[0]}_mask.png -> gt/{CASES[0]}.png" in text and "the model has not run yet" in text
    for mask in (split / "gt").iterdir():
        mask.unlink()
    result = _run("--split", split, "--weights", tmp_path / "w.pt", cache=tmp_path / "c")
    assert result.exit_code == 2 and f"no GT masks in {split / 'gt'}" in flat(result.output)


def test_allow_missing_with_a_misnamed_gt_says_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pdseg_cli.engine.predict as predict_mod

    split = edge_case_split(tmp_path / "s", CASES[:3], images=True)
    _FakePredictor.source = split / "pred"
    monkeypatch.setattr(predict_mod, "Predictor", _FakePredictor)
    (tmp_path / "w.pt").write_bytes(b"stub")
    gt = split / "gt" / f"{CASES[0]}.png"
    gt.rename(gt.with_name(f"{CASES[0]}_mask.png"))
    result = _run("--split", split, "--weights", tmp_path / "w.pt", "--allow-missing", cache=tmp_path / "c")
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "1 GT mask without a prediction: " in text
    assert (
        f"no image of that name in im/; name each mask as its image (gt/{CASES[0]}_mask.png -> "
        f"gt/{CASES[0]}.png, in any image format)"
    ) in text


def test_two_images_of_one_name_are_refused_before_the_model_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    split = _split_unrun(tmp_path, monkeypatch, "the model ran before the images were listed")
    cv2.imwrite(str(split / "im" / f"{CASES[1]}.png"), np.zeros((8, 8), np.uint8))
    result = _run("--split", split, "--weights", tmp_path / "w.pt", cache=tmp_path / "c")
    assert result.exit_code == 2, result.output
    assert f"has several files per name: {CASES[1]}.jpg and {CASES[1]}.png" in flat(result.output)


def test_images_without_a_gt_are_named_not_dropped_in_silence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pdseg_cli.engine.predict as predict_mod

    split = edge_case_split(tmp_path / "s", CASES[:2], images=True)
    cv2.imwrite(str(split / "im" / "extra.png"), np.zeros((8, 8), np.uint8))  # no gt/extra.png
    (tmp_path / "w.pt").write_bytes(b"stub")
    _FakePredictor.source = split / "pred"
    monkeypatch.setattr(predict_mod, "Predictor", _FakePredictor)
    report = tmp_path / "r.json"
    result = _run("--split", split, "--weights", tmp_path / "w.pt", "--json", report, cache=tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert "s: 1 image in im/ without a GT, not scored: extra.png" in flat(result.output)
    notes = json.loads(report.read_text())["notes"]["s"]  # the report keeps what the run warned about
    assert notes["no_gt"] == ["extra.png"] and notes["unmatched"] == []


@pytest.mark.load_aware_jobs  # the real default, not conftest's one process
def test_default_jobs_follow_threads_and_the_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pdseg_cli.engine.evaluate as ev
    from pdseg_cli.runtime import compute

    split = edge_case_split(tmp_path / "s", CASES)
    monkeypatch.setattr(ev, "all_cores", lambda: 2)
    monkeypatch.setattr(compute, "other_runnable_tasks", lambda: 1.0)  # another job holds one of the 2 cores
    args = ["eval", "--split", str(split), "--pred", str(split / "pred"), "--cache-dir", str(tmp_path / "c")]
    busy = runner.invoke(app, [*args, "--json", "-"])
    assert busy.exit_code == 0, busy.output
    assert "· 1 process ·" in busy.stderr and json.loads(busy.stdout)["settings"]["jobs"] == 1
    monkeypatch.setattr(compute, "other_runnable_tasks", lambda: 0.0)
    assert "· 2 processes ·" in runner.invoke(app, args).stderr  # an idle machine: every core
    assert "· 1 process ·" in runner.invoke(app, [*args, "--threads", "1"]).stderr  # the user's CPU budget
    assert "· 2 processes ·" in runner.invoke(app, [*args, "--threads", "1", "--jobs", "2"]).stderr


def test_weights_mode_scores_the_bytes_predict_writes(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from pdseg_cli.model.build import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("pdseg-tiny")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("classifier.bias"):
                p.zero_()  # centred at p = 0.5, not at the init's foreground prior
            if "cls" in name or "classifier" in name:
                p.mul_(300.0)  # maps spread over 0..255
    ckpt = save_checkpoint(model, tmp_path / "tiny.pt", train_size=64)
    split = edge_case_split(tmp_path / "s", CASES[:3], images=True)
    keep, out_json = tmp_path / "kept", tmp_path / "r.json"
    args = ["--split", split, "--weights", ckpt, "--device", "cpu", "--save-preds", keep, "--json", out_json]
    for tta in ([], ["--tta"]):  # with --tta too: eval scores what `predict --tta` writes
        result = _run(*args, *tta, cache=tmp_path / "c")
        assert result.exit_code == 0, result.output
        out = tmp_path / f"p{len(tta)}"
        predicted = runner.invoke(
            app, ["predict", str(split / "im"), "--out", str(out), "-w", str(ckpt), "-d", "cpu", *tta]
        )
        assert predicted.exit_code == 0, predicted.output
        for name in CASES[:3]:
            assert (keep / "s" / f"{name}.png").read_bytes() == (out / f"{name}.png").read_bytes()
        from_files = evaluate(out, split / "gt", name="s", jobs=1, use_cache=False)
        data = json.loads(out_json.read_text())
        assert data["images"] == from_files.to_json()["images"]
        assert data["settings"]["predictions"]["tta"] is bool(tta)
        assert data["settings"]["predictions"]["threads"] == torch.get_num_threads()  # what gives them again
    maps = [[(tmp_path / p / f"{name}.png").read_bytes() for name in CASES[:3]] for p in ("p0", "p1")]
    assert maps[0] != maps[1]  # --tta reached the model


def test_colour_photos_given_as_predictions_are_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "set" / "gt").mkdir(parents=True)
    (tmp_path / "photos").mkdir()
    for i in range(2):
        gt = np.zeros((32, 40), np.uint8)
        gt[8:24, 10:30] = 255
        cv2.imwrite(str(tmp_path / "set" / "gt" / f"a{i}.png"), gt)
        cv2.imwrite(str(tmp_path / "photos" / f"a{i}.jpg"), rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
    gray = np.full((32, 40, 3), 120, np.uint8)  # a gray map saved as a 3-channel JPEG is not a photo
    cv2.imwrite(str(tmp_path / "photos" / "gray.jpg"), gray)
    result = CliRunner(env={"COLUMNS": "300"}).invoke(
        app,
        [
            "eval",
            "--split",
            str(tmp_path / "set"),
            "--pred",
            str(tmp_path / "photos"),
            "--no-cache",
            "-j",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "not gray maps (photos given as --pred?)" in text and "(2 files)" in text


def test_a_gray_map_saved_in_colour_reads_as_gray_without_a_note(tmp_path: Path) -> None:
    """A gray map stored as an RGB or palette PNG (or an RGB TIFF) reads exactly as the gray file;
    it was noted as 'photos given as --pred?'."""
    from pdseg_cli.metrics.reading import read_mask_file

    gray = textured_image(24, 32)[..., 0]
    cv2.imwrite(str(tmp_path / "rgb.png"), np.dstack([gray] * 3))
    tifffile.imwrite(tmp_path / "rgb.tif", np.dstack([gray] * 3), photometric="rgb")
    tinted = np.dstack([gray] * 3)
    tinted[0, 0, 2] ^= 1
    cv2.imwrite(str(tmp_path / "tinted.png"), tinted)
    for name, colour in (("rgb.png", None), ("rgb.tif", None), ("tinted.png", "RGB")):
        mask = read_mask_file(tmp_path / name)
        assert mask.colour == colour, name
        if colour is None:
            assert np.array_equal(mask.array, gray), name


def test_unreadable_gts_are_refused_before_the_model_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pdseg_cli.engine.predict as predict_mod

    class NeverBuilt(_FakePredictor):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            raise AssertionError("the model ran before the GTs were checked")

    split = edge_case_split(tmp_path / "s", CASES[:3], images=True)
    (split / "gt" / f"{CASES[0]}.png").write_bytes(b"")
    (split / "gt" / f"{CASES[1]}.png").write_text("not a mask")
    monkeypatch.setattr(predict_mod, "Predictor", NeverBuilt)
    (tmp_path / "w.pt").write_bytes(b"stub")
    result = _run("--split", split, "--weights", tmp_path / "w.pt", cache=tmp_path / "c")
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "2 GT file(s) cannot be read" in text and "the model has not run yet" in text
    assert f"{split / 'gt' / CASES[0]}.png: the file is empty" in text
    assert f"{split / 'gt' / CASES[1]}.png: not an image" in text


def _damage_body(png: Path) -> None:
    """Spoil a PNG's image data behind a valid header: only decoding it finds out."""
    data = png.read_bytes()
    at = data.index(b"IDAT") + 4
    png.write_bytes(data[:at] + bytes(b ^ 0x5A for b in data[at : at + 30]) + data[at + 30 :])


def test_a_gt_damaged_behind_its_header_is_left_out_with_allow_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found only when scored, after the model pass: it stopped the run with "replace them", and
    --allow-missing, which leaves out a map that cannot be read, did not leave out such a GT."""
    import pdseg_cli.engine.predict as predict_mod

    split = edge_case_split(tmp_path / "s", CASES[:3], images=True)
    _damage_body(split / "gt" / f"{CASES[1]}.png")
    result = _run("--split", split, "--pred", split / "pred", cache=tmp_path / "c")
    assert result.exit_code != 0
    text = flat(result.output)
    assert f"{CASES[1]}.png" in text and "pass --allow-missing to score the others" in text, text

    _FakePredictor.source = split / "pred"
    monkeypatch.setattr(predict_mod, "Predictor", _FakePredictor)
    (tmp_path / "w.pt").write_bytes(b"stub")
    (split / "gt" / f"{CASES[2]}.png").write_text("not a mask")  # refused before the pass without it
    out_json = tmp_path / "r.json"
    args = ("--split", split, "--weights", tmp_path / "w.pt", "--json", out_json, "--allow-missing")
    result = _run(*args, cache=tmp_path / "c")
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert f"not scored (--allow-missing): GT {split / 'gt' / CASES[1]}.png" in text, text
    data = json.loads(out_json.read_text())
    assert data["splits"]["s"]["count"] == 1 and data["notes"]["s"]["missing"] == sorted(CASES[1:3])


def test_a_cache_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    split = edge_case_split(tmp_path / "s", CASES[:2])
    (tmp_path / "afile").write_text("x")
    result = _run("--split", split, "--pred", split / "pred", cache=tmp_path / "afile")
    assert result.exit_code == 2
    assert f"--cache-dir {tmp_path / 'afile'} is a file" in flat(result.output)


def test_resized_predictions_are_named_and_a_changed_shape_is_warned(tmp_path: Path) -> None:
    split = edge_case_split(tmp_path / "s", CASES[:3])
    pred = split / "pred" / f"{CASES[0]}.png"
    cv2.imwrite(str(pred), cv2.imread(str(pred), cv2.IMREAD_GRAYSCALE).T.copy())  # rotated
    result = _run("--split", split, "--pred", split / "pred", cache=tmp_path / "c")
    assert result.exit_code == 0, result.output
    text = flat(result.stderr)
    assert "1 of 3 predictions had another size" in text and CASES[0] in text
    assert f"has another aspect ratio than its GT, so was stretched: {CASES[0]}" in text
    assert text.count("has another aspect ratio") == 1  # printed once, from the report's warnings


def test_json_and_csv_carry_the_same_counts_and_every_warning(tmp_path: Path) -> None:
    split = edge_case_split(tmp_path / "s", CASES)
    pred = split / "pred" / f"{CASES[0]}.png"
    cv2.imwrite(str(pred), cv2.imread(str(pred), cv2.IMREAD_GRAYSCALE).T.copy())  # rotated
    (split / "pred" / f"{CASES[1]}.png").unlink()
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    args = [
        "--split",
        split,
        "--pred",
        split / "pred",
        "--allow-missing",
        "--json",
        out_json,
        "--csv",
        out_csv,
    ]
    result = _run(*args, cache=tmp_path / "c")
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    row = data["splits"]["s"]
    assert (row["count"], row["missing"], row["resized"]) == (3, 1, 2)  # rotated + pred_half_size
    header, line = out_csv.read_text().splitlines()
    assert (
        header.split(",")[-2:] == ["missing", "resized"] and line.startswith("s,3,") and line.endswith(",1,2")
    )
    warnings = data["notes"]["s"]["warnings"]
    assert warnings == [
        f"s: 1 prediction has another aspect ratio than its GT, so was stretched: {CASES[0]} "
        "(rotated, or another image's map?)"
    ]
    assert data["notes"]["s"]["missing"] == [CASES[1]]


def test_the_splits_own_images_are_refused_as_predictions(tmp_path: Path) -> None:
    # the photos, read as gray maps, gave a plausible table of low scores and exit 0
    split = edge_case_split(tmp_path / "s", CASES[:2], images=True)
    photos = _run("--split", split, "--pred", split / "im", cache=tmp_path / "c")
    assert photos.exit_code == 2, photos.output
    assert "image folder" in flat(photos.output) and "drop --pred" in flat(photos.output)
    (tmp_path / "p" / "s").mkdir(parents=True)
    (tmp_path / "p" / "s" / "im").symlink_to(split / "im", target_is_directory=True)
    linked = _run("--split", split, "--pred", tmp_path / "p" / "s" / "im", cache=tmp_path / "c")
    assert linked.exit_code == 2 and "image folder" in flat(linked.output)  # the same folder by a link


def test_json_and_csv_outputs_go_to_stdout_or_distinct_files(tmp_path: Path) -> None:
    split = edge_case_split(tmp_path / "s", CASES[:2])
    base = ["--split", split, "--pred", split / "pred"]
    same = _run(*base, "--json", tmp_path / "r.out", "--csv", tmp_path / "r.out", cache=tmp_path / "c")
    assert same.exit_code == 2 and "the CSV would replace the JSON" in flat(same.output)
    assert not (tmp_path / "r.out").exists()  # refused before scoring
    (tmp_path / "afile").touch()
    save_to_file = _run("--split", split, "--save-preds", tmp_path / "afile", cache=tmp_path / "c")
    assert (
        save_to_file.exit_code == 2
        and "--save-preds" in save_to_file.output
        and "is a file" in save_to_file.output
    )
    itself = _run("--split", split, "--pred", split / "gt", cache=tmp_path / "c")  # a perfect score
    assert itself.exit_code == 2 and "scored against themselves" in flat(itself.output)
    gt = split / "gt" / f"{CASES[0]}.png"
    before = gt.read_bytes()
    onto_a_mask = _run(*base, "--csv", gt, cache=tmp_path / "c")  # a slip that would replace a GT
    assert onto_a_mask.exit_code == 2 and "--csv" in onto_a_mask.output
    assert "names an image file" in flat(onto_a_mask.output) and gt.read_bytes() == before
    both = _run(*base, "--json", "-", "--csv", "-", cache=tmp_path / "c")
    assert both.exit_code == 2 and "both ask for standard output" in flat(both.output)
    piped = _run(*base, "--csv", "-", cache=tmp_path / "c")
    assert piped.exit_code == 0, piped.output
    assert piped.stdout.splitlines()[0].startswith("split,count,maxF")  # only the CSV: the table is on stderr
    assert "pdseg eval" in piped.stderr and not (Path.cwd() / "-").exists()
    as_json = _run(*base, "--json", "-", cache=tmp_path / "c")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["settings"]["gt_folders"] == {
        "s": str((split / "gt").resolve())
    }


def test_masks_kept_only_in_an_alpha_channel_are_named(tmp_path: Path) -> None:
    (tmp_path / "set" / "gt").mkdir(parents=True)
    (tmp_path / "pred").mkdir()
    for i in range(2):
        rgba = np.zeros((32, 40, 4), np.uint8)  # black everywhere, the object only in alpha
        rgba[8:24, 10:30, 3] = 255
        cv2.imwrite(str(tmp_path / "set" / "gt" / f"a{i}.png"), rgba)
        cv2.imwrite(str(tmp_path / "pred" / f"a{i}.png"), rgba[..., 3])
    result = _run("--split", tmp_path / "set", "--pred", tmp_path / "pred", cache=tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert "GT files keep their mask in the alpha channel" in flat(result.stderr)
    assert "a0.png" in result.stderr
    for i in range(2):  # an opaque all-black prediction (nothing found) is blank, not a hidden alpha map
        cv2.imwrite(
            str(tmp_path / "pred" / f"a{i}.png"),
            np.dstack([np.zeros((32, 40, 3), np.uint8)] + [np.full((32, 40), 255, np.uint8)]),
        )
    opaque = _run("--split", tmp_path / "set", "--pred", tmp_path / "pred", cache=tmp_path / "c")
    assert "prediction files keep their map in the alpha channel" not in flat(opaque.stderr)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a folder no one can write in")
def test_unwritable_outputs_are_refused_before_the_model_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only --json/--csv folder was found only after the whole run, and a read-only
    --save-preds was called --out, an option the user never typed."""
    split = _split_unrun(tmp_path, monkeypatch, "the model ran before the outputs were checked")
    weights = ["--split", split, "--weights", tmp_path / "w.pt"]
    for option in ("--json", "--csv"):
        result = _run(*weights, option, f"/proc/report.{option[2:]}", cache=tmp_path / "c")
        assert result.exit_code == 2 and f"{option} /proc/report.{option[2:]} cannot be written" in flat(
            result.output
        )
    result = _run(*weights, "--save-preds", "/proc/preds", cache=tmp_path / "c")
    assert result.exit_code == 2 and "--save-preds /proc/preds cannot be written" in flat(result.output)
    (tmp_path / "afile").write_text("x")
    result = _run(*weights, "--csv", tmp_path / "afile" / "x.csv", cache=tmp_path / "c")
    assert result.exit_code == 2 and f"{tmp_path / 'afile'}isafile,notafolder" in no_space(result.output)


def test_the_start_line_counts_the_processes_that_run(tmp_path: Path) -> None:
    split = edge_case_split(tmp_path / "s", CASES)
    args = ["--split", split, "--pred", split / "pred", "--cache-dir", tmp_path / "c", "--jobs", "64"]
    result = runner.invoke(app, ["eval", *map(str, args)])
    assert result.exit_code == 0 and f"· {len(CASES)} processes ·" in result.output  # not 64


def test_a_refused_run_leaves_no_save_preds_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--save-preds is proven writable before the model runs, but made only when maps are written:
    a run refused for another split's sake leaves nothing behind."""
    good = _split_unrun(tmp_path, monkeypatch, "the model ran on a refused run")
    bad = edge_case_split(tmp_path / "bad", CASES[:1], images=True)
    cv2.imwrite(str(bad / "im" / f"{CASES[0]}.png"), np.zeros((8, 8, 3), np.uint8))  # two images, one stem
    saved = tmp_path / "saved"
    args = ["--split", good, "--split", bad, "--weights", tmp_path / "w.pt", "--save-preds", saved]
    result = _run(*args, cache=tmp_path / "c")
    assert result.exit_code == 2 and "several files per name" in flat(result.output)
    assert not saved.exists()


def test_jobs_below_minus_two_are_refused_naming_the_option(tmp_path: Path) -> None:
    """--jobs takes N >= 1, 0 (the default), -1 (all cores) and -2 (all but one); joblib's -3 and
    below (all but two, ...) made a mistyped count silently mean another."""
    from pdseg_cli.errors import InputError

    split = edge_case_split(tmp_path / "s", CASES[:2])
    args = ["eval", "--split", str(split), "--pred", str(split / "pred"), "--no-cache", "--jobs"]
    for bad in ("-5", "-3"):
        result = runner.invoke(app, [*args, bad])
        text = flat(result.output)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert f"--jobs {bad} is not a number of processes" in text
        assert "N >= 1, 0 (the default" in text and "-1 (all cores) or -2 (all but one)" in text
    for good in ("-1", "-2", "0", "1"):
        assert runner.invoke(app, [*args, good]).exit_code == 0
    assert "Other values are refused." in flat(
        runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "250"}).output
    )
    with pytest.raises(InputError, match="jobs=-3 is not a number of processes"):
        evaluate(split / "pred", split / "gt", jobs=-3, use_cache=False)


def _signal_state(worker: bool) -> tuple[bool, list[bool], list[int]]:
    """In a scoring worker: whether each stop signal is ignored, and the blocked ones."""
    stops = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)
    return (
        worker,
        [signal.getsignal(s) is signal.SIG_IGN for s in stops],
        sorted(signal.pthread_sigmask(0, [])),
    )


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="POSIX signals, Linux /proc")
def test_scoring_workers_leave_stop_signals_to_the_main_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C reaches the whole process group: a worker must never take it, nor while it starts
    (Python 3.11's multiprocessing unblocked SIGINT as loky started its resource tracker, and the
    workers' imports then printed KeyboardInterrupt tracebacks)."""
    from joblib.externals.loky.process_executor import ProcessPoolExecutor

    import pdseg_cli.engine.evaluate as ev

    states: list[str] = []
    real_submit = ProcessPoolExecutor.submit

    def submit(self: ProcessPoolExecutor, *args: object, **kwargs: object) -> object:
        future = real_submit(self, *args, **kwargs)
        for process in list(self._processes.values()):  # just started: still importing, or ready
            status = Path(f"/proc/{process.pid}/status").read_text()
            masks = {
                k: int(v, 16)
                for k, v in (line.split(":\t") for line in status.splitlines())
                if k in ("SigBlk", "SigIgn")
            }
            states.append(
                "safe" if (masks["SigBlk"] | masks["SigIgn"]) & (1 << (signal.SIGINT - 1)) else status
            )
        return future

    monkeypatch.setattr(ProcessPoolExecutor, "submit", submit)
    before = signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with contextlib.closing(ev._run_parallel([(_signal_state, ())] * 4, 2)) as results:
        out = list(results)
    assert states and set(states) == {"safe"}
    assert out == [(True, [True, True, True], [])] * 4  # ignored, and nothing left blocked
    assert (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, [])) == before


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signals")
def test_a_ctrl_c_as_the_workers_start_stops_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C while the pool starts was ignored (the whole run went on); it is held and acted on
    once the tasks are handed over: one line, exit 130, the workers stopped."""
    from joblib.externals.loky.process_executor import ProcessPoolExecutor

    from pdseg_cli.runtime.stop import stopping

    split = edge_case_split(tmp_path / "s", CASES)
    real_submit = ProcessPoolExecutor.submit
    pools: list[ProcessPoolExecutor] = []

    def submit(self: ProcessPoolExecutor, *args: object, **kwargs: object) -> object:
        if not pools:
            pools.append(self)
            os.kill(os.getpid(), signal.SIGINT)
        return real_submit(self, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", submit)
    args = ["eval", "--split", str(split), "--pred", str(split / "pred"), "--no-cache", "--jobs", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 130 and "Traceback" not in result.output, result.output
    assert "interrupted" in result.output and "maxF" not in result.output
    # torn down, not left to run the tasks (those not started are cancelled: evaluate._run_parallel)
    assert stopping.is_set() and pools[0]._flags.shutdown


# loky's manager thread may fail with a KeyError as the pool is torn down mid-submit: the pdseg
# command's thread hook drops such failures while stopping (cli._thread_os_error, runtime.stopping),
# but pytest puts its own hook in its place and reports them as a warning, now and then
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_interrupt_in_the_callers_loop_stops_the_pool_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C in the progress display (outside the pool's generator) stops the workers in the
    caller's frame: a second one during that clean-up is an ordinary KeyboardInterrupt, not an
    "Exception ignored in <generator>" traceback printed as the generator is collected."""
    from joblib.externals.loky.process_executor import ProcessPoolExecutor

    split = edge_case_split(tmp_path / "s", CASES)
    real_shutdown = ProcessPoolExecutor.shutdown

    def shutdown(self: ProcessPoolExecutor, wait: bool = True, kill_workers: bool = False) -> None:
        real_shutdown(self, wait=wait, kill_workers=kill_workers)
        if not wait:  # the teardown of an interrupted run (a completed one waits for its workers)
            raise KeyboardInterrupt("a second Ctrl-C")

    def on_progress(name: str, stem: str) -> None:
        raise KeyboardInterrupt("Ctrl-C")

    unraisable: list[object] = []
    monkeypatch.setattr(ProcessPoolExecutor, "shutdown", shutdown)
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(KeyboardInterrupt, match="a second Ctrl-C"):
        evaluate(split / "pred", split / "gt", jobs=2, use_cache=False, on_progress=on_progress)
    assert not unraisable


def test_gts_and_maps_that_read_as_empty_are_named(tmp_path: Path) -> None:
    # a 0/255 mask saved as 16-bit reads as its high byte, all 0; a 0/1 map is empty to HCE
    split = edge_case_split(tmp_path / "s", CASES[:2])
    gt = cv2.imread(str(split / "gt" / f"{CASES[0]}.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(split / "gt" / f"{CASES[0]}.png"), ((gt > 128) * 255).astype(np.uint16))
    pred = cv2.imread(str(split / "pred" / f"{CASES[1]}.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(split / "pred" / f"{CASES[1]}.png"), (pred > 128).astype(np.uint8))
    result = _run("--split", split, "--pred", split / "pred", cache=tmp_path / "c")
    assert result.exit_code == 0, result.output
    text = flat(result.stderr)
    assert "GT files are 16-bit with no value of 256 or more (0/255 masks saved as 16-bit?)" in text
    assert (
        f"so they read as empty GTs, as in the reference tools; store masks as 8-bit 0/255 (1 file): {split}"
        in text
    )
    assert "prediction maps have no pixel above 128 (0/1 maps?)" in text and "HCE reads the bytes" in text


def test_images_of_another_size_are_named_as_images_with_weights(tmp_path: Path) -> None:
    """With --weights the user gave images, and each map has its image's size: a size unlike the
    GT's is the image's, so the notes name the image file and both sizes (they said "predictions",
    which the user never gave). The --pred wording is test_resized_predictions_are_named_..."""
    from helpers import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "t.pt", train_size=64)
    split = edge_case_split(tmp_path / "s", CASES[:3], images=True)
    photo = cv2.imread(str(split / "im" / f"{CASES[0]}.jpg"))  # 128x96, as its GT
    cv2.imwrite(str(split / "im" / f"{CASES[0]}.jpg"), cv2.resize(photo, (64, 48)))  # half size
    cv2.imwrite(str(split / "im" / f"{CASES[1]}.jpg"), cv2.resize(photo, (96, 96)))  # another shape
    out_json = tmp_path / "r.json"
    result = _run(
        "--split", split, "--weights", ckpt, "--device", "cpu", "--json", out_json, cache=tmp_path / "c"
    )
    assert result.exit_code == 0, result.output
    err = flat(result.stderr)
    assert (
        f"s: 2 of 3 images in {split / 'im'} have another size than their GTs: the model's maps, made at "
        "the images' sizes, were resized to their GTs' sizes (bilinear, cv2 INTER_LINEAR) to be scored: "
        f"{CASES[1]}.jpg 96x96 (GT 128x96), {CASES[0]}.jpg 64x48 (GT 128x96)"
    ) in err
    warning = (
        f"s: 1 image in {split / 'im'} has another aspect ratio than its GT, so the model's map, made "
        f"at the image's size, was stretched to the GT's: {CASES[1]}.jpg 96x96 (GT 128x96); rotated (an "
        "EXIF orientation pdseg applies and the GT was not drawn with?), or the GT of another image?"
    )
    assert warning in err and "predictions had another size" not in err and "prediction(s)" not in err
    data = json.loads(out_json.read_text())
    assert data["notes"]["s"]["warnings"][0] == warning  # the JSON holds what the table's notes said
    assert (
        data["images"]["s"][CASES[0]]["resized_from_hw"] == [48, 64] and data["splits"]["s"]["resized"] == 2
    )


def test_a_faint_model_map_is_noted_by_its_image_not_a_temporary_file(tmp_path: Path) -> None:
    """With --weights the maps live in a temporary folder that is gone when the note is read, and
    "store maps as 0..255" is no fix for a model: the note names the image and says what HCE did."""
    import torch
    from helpers import seeded_model

    from pdseg_cli.model import save_checkpoint

    model = seeded_model("pdseg-tiny", 0)
    final = model.decoder.levels[-1].classifier
    torch.nn.init.zeros_(final.weight)
    torch.nn.init.zeros_(final.bias)  # logit 0 everywhere: p 0.5, byte 127, never above 128
    ckpt = save_checkpoint(model, tmp_path / "faint.pt", train_size=64)
    split = edge_case_split(tmp_path / "s", CASES[:2], images=True)
    result = _run("--split", split, "--weights", ckpt, "--device", "cpu", cache=tmp_path / "c")
    assert result.exit_code == 0, result.output
    err = flat(result.stderr)
    assert "the model's maps of these images have no pixel above 128 (no object found)" in err
    assert any(f"(2 files): {split / 'im' / case}.jpg" in err for case in CASES[:2])
    assert "0/1 maps?" not in err and "pdseg-eval-" not in err


def test_test_split_folders_given_as_paths_say_why_there_is_no_overall_row(tmp_path: Path) -> None:
    root, preds = _dis_root(tmp_path)
    folders = [a for i in range(1, 5) for a in ("--split", str(root / f"DIS-TE{i}"))]
    out_json = tmp_path / "r.json"
    result = _run(*folders, "--pred", preds, "--json", out_json, cache=tmp_path / "c")
    assert result.exit_code == 0, result.output
    note = (
        "no DIS-TE (overall) row: it is given only when the four test splits are named (--split DIS-TE1 "
        "... DIS-TE4 --data-root ROOT, or --split DIS-TE --data-root ROOT), not given as folders; if these "
        f"are DIS5K's: --split DIS-TE --data-root {root.resolve()}"
    )
    assert flat(result.stderr).count(note) == 1 and "DIS-TE (overall)" not in flat(result.stdout)
    notes = json.loads(out_json.read_text())["notes"]
    assert notes["DIS-TE4"]["warnings"][-1:] == [note]  # once, on the last of the four (after its size's)
    assert all(note not in notes[name]["warnings"] for name in ("DIS-TE1", "DIS-TE2", "DIS-TE3"))
    named = _run("--split", "DIS-TE", "--data-root", root, "--pred", preds, cache=tmp_path / "c")
    three = _run(*folders[:6], "--pred", preds, cache=tmp_path / "c")
    for run in (named, three):  # the row is there, or no four test splits: nothing to explain
        assert run.exit_code == 0 and "no DIS-TE (overall) row" not in flat(run.output), run.output


def test_the_prediction_folder_chosen_for_each_split_is_said_and_in_the_json(tmp_path: Path) -> None:
    root, preds = _dis_root(tmp_path)
    (preds / "DIS-TE1").rename(preds / "DIS5K-TE1")  # as IS-Net's inference names it
    out_json = tmp_path / "r.json"
    args = ["--split", "DIS-TE1,DIS-TE2", "--data-root", root, "--pred", preds, "--json", out_json]
    result = _run(*args, cache=tmp_path / "c")
    assert result.exit_code == 0, result.output
    header = f"maps read from {preds.resolve()}: DIS-TE1 from DIS5K-TE1/, DIS-TE2 from DIS-TE2/"
    assert header in flat(result.stderr)
    assert flat(result.stderr).index(header) < flat(result.stderr).index("scoring 7 images")
    settings = json.loads(out_json.read_text())["settings"]
    assert settings["pred_folders"] == {
        "DIS-TE1": str((preds / "DIS5K-TE1").resolve()),
        "DIS-TE2": str((preds / "DIS-TE2").resolve()),
    }
    assert settings["predictions"] == f"maps read from {preds.resolve()}"  # the older key is as it was
    # one split: its subfolder is taken over the maps' root, without being asked, so it is said too
    one = _run(
        "--split", "DIS-TE2", "--data-root", root, "--pred", preds, "--json", "-", cache=tmp_path / "c"
    )
    assert f"maps read from {preds.resolve()}: DIS-TE2 from DIS-TE2/" in flat(one.stderr)
    assert json.loads(one.stdout)["settings"]["pred_folders"] == {
        "DIS-TE2": str((preds / "DIS-TE2").resolve())
    }
    direct = _run(
        "--split", "DIS-TE2", "--data-root", root, "--pred", preds / "DIS-TE2", cache=tmp_path / "c"
    )
    assert f"maps read from {(preds / 'DIS-TE2').resolve()} scoring" in flat(direct.stderr)


def test_a_ctrl_c_while_scoring_says_running_again_is_safe_and_the_cache_keeps_its_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pdseg_cli.engine.evaluate as ev

    split = edge_case_split(tmp_path / "s", CASES)
    real_score_pair, scored = ev.score_pair, []

    def score_pair(*args: object) -> object:  # a Ctrl-C as the second image is scored
        scored.append(args)
        if len(scored) == 2:
            raise KeyboardInterrupt
        return real_score_pair(*args)

    monkeypatch.setattr(ev, "score_pair", score_pair)
    cache, out_json = tmp_path / "c", tmp_path / "r.json"
    args = ["--split", split, "--pred", split / "pred", "--json", out_json]
    result = _run(*args, cache=cache)
    assert result.exit_code == 130, result.output
    text = flat(result.stderr)
    hint = (
        f"hint: running the same command again is safe; the GT cache {cache} keeps the GT data prepared so "
        "far, so that work is not done again"
    )
    assert text.index("error: interrupted") < text.index(hint) and "maxF" not in result.output
    assert len(list(cache.rglob("*.npz"))) == 2  # the two GTs begun
    assert json.loads(out_json.read_text())["error"] == "interrupted"  # no scores: the stop instead
    monkeypatch.undo()
    again = _run(*args, cache=cache)
    assert again.exit_code == 0 and json.loads(out_json.read_text())["splits"]["s"]["count"] == len(CASES)
    monkeypatch.setattr(ev, "score_pair", score_pair)
    scored.clear()
    off = _run(*args, "--no-cache", cache=cache)
    assert off.exit_code == 130
    assert "hint: running the same command again is safe; it starts over (the GT cache is off)" in flat(
        off.stderr
    )
    blocked = tmp_path / "blocked"  # a writable root whose entries cannot be stored: nothing promised
    blocked.mkdir()
    (blocked / "eval-gt").write_text("a file where the cache's folder goes")
    scored.clear()
    none = _run(*args, cache=blocked)
    assert none.exit_code == 130
    assert f"it starts over (the GT cache {blocked} kept nothing)" in flat(none.stderr), none.stderr


def test_a_ctrl_c_while_the_model_runs_says_running_again_is_safe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pdseg_cli.engine.predict as predict_mod

    class Stopped(_FakePredictor):
        def predict_paths(self, *args: object, **kwargs: object) -> object:
            raise KeyboardInterrupt

    split = edge_case_split(tmp_path / "s", CASES, images=True)
    monkeypatch.setattr(predict_mod, "Predictor", Stopped)
    (tmp_path / "w.pt").write_bytes(b"stub")
    result = _run("--split", split, "--weights", tmp_path / "w.pt", cache=tmp_path / "c")
    assert result.exit_code == 130, result.output
    text = flat(result.stderr)  # no GT was prepared yet: the cache is not mentioned
    assert text.endswith("error: interrupted hint: running the same command again is safe; it starts over")


def test_a_mask_far_beyond_any_real_one_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A GT linked to /dev/zero was read without end; a small PNG claiming 20000x20000 was decoded
    to gigabytes before being resized to its GT."""
    import struct
    import zlib

    from pdseg_cli.errors import InputError
    from pdseg_cli.metrics.reading import read_mask_file

    (tmp_path / "zero.png").symlink_to("/dev/zero")
    with pytest.raises(InputError, match="not a regular file"):
        read_mask_file(tmp_path / "zero.png")
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    with pytest.raises(InputError, match="40000x40000 pixels, far more than any mask"):
        read_mask_file(tmp_path / "bomb.png")


def test_a_name_in_either_unicode_form_pairs(tmp_path: Path) -> None:
    """café typed on Linux (é) and café written by macOS (e + combining accent) look the same:
    they were listed as a GT without prediction and a prediction without GT, identical to the eye."""
    from pdseg_cli.engine.eval_pairs import plan_pairs

    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 5:25] = 255
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    cv2.imwrite(str(tmp_path / "gt" / "caf\u00e9.png"), mask)
    cv2.imwrite(str(tmp_path / "pred" / "cafe\u0301.png"), mask)
    plan = plan_pairs(tmp_path / "pred", tmp_path / "gt")
    assert [stem for stem, _, _ in plan.pairs] == ["caf\u00e9"] and not plan.missing and not plan.unmatched


def test_two_names_of_one_unicode_form_on_a_side_never_share_a_map(tmp_path: Path) -> None:
    from pdseg_cli.engine.eval_pairs import plan_pairs

    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 5:25] = 255
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    for folder, names in (("gt", (nfc, nfd)), ("pred", (nfc,))):
        (tmp_path / folder).mkdir()
        for name in names:
            cv2.imwrite(str(tmp_path / folder / f"{name}.png"), mask)
    plan = plan_pairs(tmp_path / "pred", tmp_path / "gt")  # one map, scored once: by its exact name
    assert [stem for stem, _, _ in plan.pairs] == [nfc] and plan.missing == [nfd] and not plan.unmatched
    cv2.imwrite(str(tmp_path / "pred" / f"{nfd}.png"), mask)
    (tmp_path / "gt" / f"{nfd}.png").unlink()
    plan = plan_pairs(tmp_path / "pred", tmp_path / "gt")  # two maps, one GT: the other is named
    assert [stem for stem, _, _ in plan.pairs] == [nfc] and plan.unmatched == [nfd]
