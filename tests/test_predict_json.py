"""`pdseg predict --json`: what happened to each input, for scripts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import flat, run_cli, tiny_checkpoint


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, value in (("a.png", 60), ("b.jpg", 160)):
        cv2.imwrite(str(folder / name), np.full((30, 40, 3), value, np.uint8))
    (folder / "c.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("x")
    return folder


def test_json_names_each_input_with_its_status_outputs_and_error(photos: Path, tmp_path: Path) -> None:
    weights = tiny_checkpoint(tmp_path / "t.pt", train_size=64)
    out, report = tmp_path / "out", tmp_path / "run.json"
    result = run_cli(
        "predict", photos, "-o", out, "-w", weights, "-d", "cpu", "--json", report, "-s", "mask,alpha"
    )
    assert result.exit_code == 1, result.output  # c.jpg failed
    data = json.loads(report.read_text())
    assert data["counts"] == {"done": 2, "skipped": 0, "failed": 1, "not_images": 1}
    files = {Path(f["input"]).name: f for f in data["files"]}
    assert [Path(f["input"]).name for f in data["files"]] == ["a.png", "b.jpg", "c.jpg"]  # input order
    assert sorted(Path(p).name for p in files["a.png"]["outputs"]) == ["a.png", "a_alpha.png"]
    assert all(Path(p).is_file() for f in files.values() for p in f["outputs"])
    assert files["c.jpg"]["status"] == "failed" and "cannot decode" in files["c.jpg"]["error"]
    assert files["b.jpg"]["error"] is None and files["b.jpg"]["status"] == "done"
    assert [Path(p).name for p in data["not_images"]] == ["notes.txt"]
    assert data["settings"]["weights"] == str(weights) and data["settings"]["save"] == ["mask", "alpha"]
    assert data["run"]["device"] == "cpu" and data["run"]["processes"] == 1
    # what gives the same bytes again: the last grey level follows the threads and the batch
    settings = data["settings"]
    assert settings["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert settings["batch"] == 1 and settings["threads"] == torch.get_num_threads()
    assert f"JSON written to {report}" in flat(result.output)
    # a rerun with nothing left: no model, and the JSON says every image was skipped
    (photos / "c.jpg").unlink()
    again = run_cli(
        "predict", photos, "-o", out, "-w", weights, "--skip-existing", "--json", report, "-s", "mask,alpha"
    )
    assert again.exit_code == 0, again.output
    data = json.loads(report.read_text())
    assert data["counts"]["skipped"] == 2 and data["run"]["device"] is None
    assert data["settings"]["weights_sha256"] is None and data["settings"]["threads"] is None


def test_json_on_stdout_is_the_only_thing_there(photos: Path, tmp_path: Path) -> None:
    (photos / "c.jpg").unlink()
    weights = tiny_checkpoint(tmp_path / "t.pt", train_size=64)
    result = run_cli("predict", photos, "-o", tmp_path / "out", "-w", weights, "-d", "cpu", "--json", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["done"] == 2  # the table went to standard error
    assert "pdseg predict" in result.stderr


@pytest.mark.parametrize(("name", "says"), [("folder", "is a folder"), ("x.png", "names an image file")])
def test_a_json_path_that_cannot_take_the_report_is_refused_first(
    photos: Path, tmp_path: Path, name: str, says: str
) -> None:
    (tmp_path / "folder").mkdir()
    result = run_cli("predict", photos, "-o", tmp_path / "out", "--json", tmp_path / name)
    assert result.exit_code == 2 and says in flat(result.output)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_json_may_go_into_the_out_folder_the_run_makes(photos: Path, tmp_path: Path) -> None:
    # --out is created if missing, but --json out/r.json was refused as "the folder does not exist"
    out = tmp_path / "out"
    result = run_cli("predict", photos, "-o", out, "--json", out / "r.json")
    assert result.exit_code == 1, result.output  # c.jpg is no image
    assert json.loads((out / "r.json").read_text())["counts"]["done"] == 2
    deeper = run_cli("predict", photos, "-o", tmp_path / "o2", "--json", tmp_path / "o2" / "sub" / "r.json")
    assert deeper.exit_code == 2 and "does not exist" in flat(deeper.output)  # only --out itself is made


def test_a_refused_run_writes_its_error_as_the_report(photos: Path, tmp_path: Path) -> None:
    """A script that reads the report without the exit status read the last run's report as this
    one's: a refusal left it in place."""
    (photos / "c.jpg").unlink()
    weights = tiny_checkpoint(tmp_path / "t.pt", train_size=64)
    out, report = tmp_path / "out", tmp_path / "run.json"
    assert run_cli("predict", photos, "-o", out, "-w", weights, "--json", report).exit_code == 0
    assert json.loads(report.read_text())["counts"]["done"] == 2  # the last run's report
    # a resume with another --threshold is refused: its error replaces the report
    refused = run_cli(
        "predict", photos, "-o", out, "-w", weights, "--skip-existing", "--threshold", "0.5", "--json", report
    )
    assert refused.exit_code == 2, refused.output
    data = json.loads(report.read_text())
    assert set(data) == {"pdseg", "error", "hint"} and "the same weights but other settings" in data["error"]
    assert data["hint"].startswith("give the same --size")
    # the options as given, which such a resume must give again
    first = run_cli(
        "predict", photos, "-o", tmp_path / "o2", "-w", weights, "--scales", "1", "--json", report
    )
    settings = json.loads(report.read_text())["settings"]
    assert first.exit_code == 0 and settings["scales"] == [1.0] and settings["size"] is None
    assert settings["bg"] == "white" and settings["refine_foreground"] is True and settings["tta"] is False
    # on standard output too, the only thing there
    bad = run_cli("predict", photos, "-o", out, "-w", tmp_path / "missing.pt", "--json", "-")
    assert bad.exit_code == 2 and "missing.pt" in json.loads(bad.stdout)["error"]
    # the report's path is checked first: an option refused early replaces a stale report too
    report.write_text('{"stale": true}')
    early = run_cli("predict", photos, "-o", out, "--save", "maks", "--json", report)
    assert early.exit_code == 2 and "maks" in json.loads(report.read_text())["error"]
    # a refusal of the report's own path writes nothing
    (tmp_path / "folder").mkdir()
    assert run_cli("predict", photos, "-o", out, "--json", tmp_path / "folder").exit_code == 2
    assert list((tmp_path / "folder").iterdir()) == []
