"""The GT cache: identical numbers cold and warm, a changed GT noticed, damage survived, size bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import edge_case_split

from pdseg_cli.data.atomic import TEMP_SUFFIX
from pdseg_cli.engine.evaluate import evaluate, evaluate_arrays
from pdseg_cli.errors import InputError
from pdseg_cli.metrics.cache import GTCache, default_cache_root
from pdseg_cli.metrics.gtprep import GTPrep

GOLDEN_DIR = Path(__file__).parent / "golden"
CASES = ("thin_lines_half_found", "holes_soft_pred", "gt_128_129", "pred_half_size")  # four distinct GTs


@pytest.fixture()
def split(tmp_path: Path) -> Path:
    """A small split: <tmp>/set/gt/*.png and <tmp>/set/pred/*.png from the stored edge cases."""
    order = json.loads((GOLDEN_DIR / "edge_cases.json").read_text())["order"]
    assert set(CASES) <= set(order)
    return edge_case_split(tmp_path / "set", CASES)


def _values(report) -> dict:
    return report.to_json()["images"] | {"dataset": report.to_json()["splits"]}


def test_cold_and_warm_give_identical_numbers(split: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cold = evaluate(split / "pred", split / "gt", jobs=1, cache_dir=cache)
    assert cold.splits[0].cache_hits == 0
    entries = list((cache / "eval-gt").rglob("*.npz"))
    assert len(entries) == len(CASES)
    warm = evaluate(split / "pred", split / "gt", jobs=2, cache_dir=cache)
    assert warm.splits[0].cache_hits == len(CASES)
    assert _values(warm) == _values(cold)
    uncached = evaluate(split / "pred", split / "gt", jobs=1, use_cache=False)
    assert _values(uncached) == _values(cold)


def test_changed_gt_is_noticed(split: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    before = evaluate(split / "pred", split / "gt", jobs=1, cache_dir=cache)
    path = split / "gt" / "holes_soft_pred.png"
    gt = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    gt[:, : gt.shape[1] // 2] = 0  # half the object gone
    cv2.imwrite(str(path), gt)
    after = evaluate(split / "pred", split / "gt", jobs=1, cache_dir=cache)
    assert after.splits[0].cache_hits == len(CASES) - 1
    fresh = evaluate(split / "pred", split / "gt", jobs=1, use_cache=False)
    assert _values(after) == _values(fresh)
    stem = "holes_soft_pred"
    assert after.to_json()["images"][split.name][stem] != before.to_json()["images"][split.name][stem]


def test_damaged_entry_is_recomputed(split: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = evaluate(split / "pred", split / "gt", jobs=1, cache_dir=cache)
    for entry in (cache / "eval-gt").rglob("*.npz"):
        entry.write_bytes(entry.read_bytes()[:50])
    again = evaluate(split / "pred", split / "gt", jobs=1, cache_dir=cache)
    assert again.splits[0].cache_hits == 0
    assert _values(again) == _values(first)
    third = evaluate(split / "pred", split / "gt", jobs=1, cache_dir=cache)
    assert third.splits[0].cache_hits == len(CASES)


def test_prune_drops_least_recently_used(tmp_path: Path) -> None:
    gt = np.zeros((40, 60), np.uint8)
    cv2.circle(gt, (30, 20), 10, 255, -1)
    prep = GTPrep.from_gt(gt)
    size = len(prep.to_bytes())
    cache = GTCache(tmp_path, max_bytes=int(2.5 * size))
    for i, key in enumerate(["aa11", "bb22", "cc33", "dd44"]):
        assert cache.store(key, prep)
        stamp = time.time() - 100 + i
        os.utime(cache.path_for(key), (stamp, stamp))
    assert cache.load("aa11") is not None  # a hit makes it the most recently used
    (cache.folder.parent / "v0").mkdir()
    (cache.folder.parent / "v0" / "old.npz").write_bytes(b"x" * 10)  # an older format version
    cache.prune()
    left = sorted(p.stem for p in cache.folder.rglob("*.npz"))
    assert left == ["aa11", "dd44"]
    assert not (cache.folder.parent / "v0" / "old.npz").exists()


def test_cache_location_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PDSEG_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert default_cache_root() == tmp_path / "env"
    monkeypatch.delenv("PDSEG_CACHE_DIR")
    assert default_cache_root() == tmp_path / "xdg" / "pdseg"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_root() == Path.home() / ".cache" / "pdseg"


def test_unwritable_cache_still_scores(split: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    report = evaluate(split / "pred", split / "gt", jobs=1, cache_dir=blocker)
    assert report.splits[0].scores.count == len(CASES)


def test_an_unusable_cache_variable_is_said_not_shown_as_the_cache(split: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    cmd = [sys.executable, "-m", "pdseg_cli", "eval", "--split", str(split), "--pred", str(split / "pred")]
    env = {**os.environ, "PDSEG_CACHE_DIR": str(blocker), "COLUMNS": "250", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, "--jobs", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "GT cache off: " in proc.stderr and "($PDSEG_CACHE_DIR) cannot be used" in proc.stderr
    assert f"GT cache {blocker}" not in proc.stderr


def test_in_memory_pairs_use_the_cache_when_asked(tmp_path: Path) -> None:
    with np.load(GOLDEN_DIR / "edge_cases.npz") as z:
        pairs = [(z[f"{n}__pred"], z[f"{n}__gt"]) for n in CASES]
    cold = evaluate_arrays(pairs, names=list(CASES), cache_dir=tmp_path, use_cache=True)
    warm = evaluate_arrays(pairs, names=list(CASES), cache_dir=tmp_path, use_cache=True)
    assert warm.splits[0].cache_hits == len(CASES)
    assert warm.to_json()["images"] == cold.to_json()["images"]


def test_two_runs_share_one_cache(split: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "pdseg_cli", "eval", "--split", str(split), "--pred", str(split / "pred")]
    cmd += ["--cache-dir", str(cache), "--jobs", "1", "--json"]
    env = {**os.environ, "COLUMNS": "200"}
    procs = [
        subprocess.Popen([*cmd, str(tmp_path / f"r{i}.json")], env=env, stderr=subprocess.PIPE)
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    first, second = (json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2))
    assert first["images"] == second["images"] and first["splits"] == second["splits"]
    assert not [p for p in cache.rglob("*") if p.name.endswith((".tmp", TEMP_SUFFIX))]
    assert len(list(cache.rglob("*.npz"))) == len(CASES)


@pytest.mark.parametrize("jobs", ["2", 1.5, True])
def test_evaluate_names_a_jobs_value_that_is_not_an_int(split: Path, tmp_path: Path, jobs: object) -> None:
    # one line, as evaluate's other options of the wrong kind (InputError, not resolve_jobs's TypeError)
    with pytest.raises(InputError, match=r"evaluate jobs=.*: give a whole number"):
        evaluate(split / "pred", split / "gt", jobs=jobs, cache_dir=tmp_path)  # type: ignore[arg-type]


def _ignores_ctrl_c(worker: bool) -> bool:
    import signal

    return worker and signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_scoring_workers_leave_ctrl_c_to_the_main_process() -> None:
    """Ctrl-C reaches the whole process group: workers that took it printed tracebacks. They start
    with SIGINT ignored, and the main process's own handler is back afterwards."""
    import signal

    from pdseg_cli.engine.evaluate import _run_parallel

    before = signal.getsignal(signal.SIGINT)
    assert list(_run_parallel([(_ignores_ctrl_c, ()), (_ignores_ctrl_c, ())], 2)) == [True, True]
    assert signal.getsignal(signal.SIGINT) is before


def test_evaluate_with_workers_needs_no_main_guard(split: Path, tmp_path: Path) -> None:
    """A script that calls evaluate(jobs=2) at its top level works as it did with joblib: the
    workers do not run the script again (multiprocessing's spawn would, and fail)."""
    import subprocess
    import sys

    script = tmp_path / "score.py"
    script.write_text(
        "import pdseg_cli\n"
        "print('body')\n"
        f"report = pdseg_cli.evaluate({str(split / 'pred')!r}, {str(split / 'gt')!r}, "
        "jobs=2, use_cache=False)\n"
        "print(len(report.splits[0].images))\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["body", str(len(CASES))]


def test_a_ctrl_c_mid_store_leaves_no_partial_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gt = np.zeros((40, 60), np.uint8)
    cv2.circle(gt, (30, 20), 10, 255, -1)
    cache = GTCache(tmp_path)

    def interrupted(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.store("aa11", GTPrep.from_gt(gt))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_planted_link_in_a_shared_cache_is_never_followed(tmp_path: Path) -> None:
    """eval-gt linked to someone's folder had prune delete every file there; an entry linked to
    /dev/zero was read without end."""
    gt = np.zeros((40, 60), np.uint8)
    gt[10:30, 10:50] = 255
    prep = GTPrep.from_gt(gt)
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "thesis.txt").write_text("precious")
    (victim / "sub" / "id_rsa").write_text("key")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "eval-gt").symlink_to(victim)
    cache = GTCache(shared, max_bytes=0)
    assert cache.prune() == 0 and not cache.store("ab" * 32, prep) and cache.load("ab" * 32) is None
    assert (victim / "thesis.txt").read_text() == "precious" and (victim / "sub" / "id_rsa").exists()
    assert sorted(p.name for p in victim.rglob("*")) == ["id_rsa", "sub", "thesis.txt"]  # nothing written
    # an entry that is a link (to a device, or to a file of the user's) is a miss, and prune leaves it
    own = GTCache(tmp_path / "own", max_bytes=0)
    key = "cd" * 32
    own.path_for(key).parent.mkdir(parents=True)
    own.path_for(key).symlink_to("/dev/zero")
    assert own.load(key) is None
    (own.folder / "notes.txt").write_text("mine")  # not a name pdseg gives: never pruned
    own.prune()
    assert own.path_for(key).is_symlink() and (own.folder / "notes.txt").exists()
    # a link one level down, as an entry's own folder: not written into, not read from
    key = "ef" * 32
    own.path_for(key).parent.symlink_to(victim, target_is_directory=True)
    assert not own.store(key, prep) and own.load(key) is None
    assert sorted(p.name for p in victim.rglob("*")) == ["id_rsa", "sub", "thesis.txt"]
