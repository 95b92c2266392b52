"""The Python API inside a host application: threads, callbacks that raise, daemonic processes,
PIL images, ``~`` in paths, and type checkers, none of which the command line meets."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import multiprocessing
import os
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import small_split, textured_image, tiny_checkpoint

import pdseg_cli
from pdseg_cli.data import transforms as T
from pdseg_cli.engine import eval_pairs, evaluate, train_config
from pdseg_cli.engine.predict_summary import FileResult
from pdseg_cli.runtime.quiet_warnings import ignoring_warnings, recording_warnings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- warning filters -----------------------------------------------------------------------------


def test_overlapping_blocks_leave_the_filters_as_they_were() -> None:
    """Two threads' blocks, the first ending before the second: with catch_warnings alone the
    second put back the list it found, holding the first one's filter, for good."""
    before = list(warnings.filters)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with ignoring_warnings():
            first_in.set()
            second_in.wait(0.3)  # the lock keeps the second out: it does not come in meanwhile
        first_out.set()

    def second() -> None:
        first_in.wait()
        with ignoring_warnings(UserWarning, message="x"):
            second_in.set()
            first_out.wait(0.3)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert warnings.filters == before


def test_models_loaded_on_threads_leave_the_host_filters(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "w.pt")
    pdseg_cli.load_model(ckpt)  # torch's own import-time filters are in place before the snapshot
    before = list(warnings.filters)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: pdseg_cli.load_model(ckpt), range(12)))
    assert warnings.filters == before


def test_recording_keeps_other_threads_warnings() -> None:
    """An export records its own thread's warnings; another thread's reach the host as before."""
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as host:
        warnings.simplefilter("always")
        with recording_warnings() as caught:
            warnings.warn("mine", UserWarning, stacklevel=1)
            other = threading.Thread(target=lambda: warnings.warn("theirs", UserWarning, stacklevel=1))
            other.start()
            other.join()
    assert [str(w.message) for w in caught] == ["mine"]
    assert [str(w.message) for w in host] == ["theirs"]
    assert warnings.filters == before


# -- predict_paths: a progress callback that raises -------------------------------------------


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_raising_callback_is_not_called_again(tmp_path: Path, error: type[BaseException]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(1, 6):
        cv2.imwrite(str(folder / f"a_{i}.png"), textured_image(32, 32, seed=i))
    predictor = pdseg_cli.Predictor(tiny_checkpoint(tmp_path / "w.pt"), device="cpu", size=32)
    calls: list[str] = []

    def on_progress(result: FileResult) -> None:
        calls.append(result.path.stem)
        if len(calls) == 2:
            raise error("stop")

    with pytest.raises(error):
        predictor.predict_paths([folder], tmp_path / "out", on_progress=on_progress)
    assert calls == ["a_1", "a_2"]  # was a_1, a_2, a_2, a_3: the same file again, and later ones
    for written in (tmp_path / "out").iterdir():  # what was written is whole; no temporary left
        assert not written.name.startswith(".")
        assert cv2.imread(str(written), cv2.IMREAD_UNCHANGED).shape == (32, 32)


# -- evaluate: cancelled with worker processes, and inside a daemonic process -------------------

_CANCEL = """
import sys
import threading
import pdseg_cli

hook = threading.excepthook

def cancel(*args):
    raise {error}("cancel")

try:
    pdseg_cli.evaluate(sys.argv[1], sys.argv[2], jobs=2, use_cache=False, on_progress=cancel)
except {error}:
    print("cancelled")
print("hook kept" if threading.excepthook is hook else "hook replaced")
"""


@pytest.mark.parametrize("error", ["RuntimeError", "KeyboardInterrupt"])
def test_cancelled_parallel_evaluate_is_quiet(shared_data: Path, error: str) -> None:
    """Cancelled at the first image, with the others still queued (tiny images were all scored
    before the cancel, and the failure needs queued ones)."""
    pred, gt = shared_data / "davis16-eval-pred", shared_data / "davis16-eval" / "gt"
    run = subprocess.run(
        [sys.executable, "-c", _CANCEL.format(error=error), str(pred), str(gt)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.stdout.split() == ["cancelled", "hook", "kept"]
    assert run.stderr == ""  # was loky's "Exception in thread ExecutorManagerThread ... KeyError"


def _evaluate_jobs(args: tuple[str, str, int]) -> tuple[int, float]:
    report = pdseg_cli.evaluate(args[0], args[1], jobs=args[2], use_cache=False)
    return report.settings["jobs"], report.splits[0].scores.max_f


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_evaluate_in_a_pool_worker_scores_in_process(tmp_path: Path) -> None:
    split, maps = small_split(tmp_path)
    expected = pdseg_cli.evaluate(maps, split / "gt", jobs=1, use_cache=False).splits[0].scores.max_f
    with multiprocessing.get_context("fork").Pool(1) as pool:  # its workers are daemonic
        got = pool.map(_evaluate_jobs, [(str(maps), str(split / "gt"), jobs) for jobs in (2, -1)])
    assert got == [(1, expected), (1, expected)]  # was AssertionError: daemonic processes ...


def test_resolve_jobs_in_a_daemonic_process(monkeypatch: pytest.MonkeyPatch) -> None:
    class Daemonic:
        daemon = True

    monkeypatch.setattr(evaluate.multiprocessing, "current_process", Daemonic)
    assert evaluate.resolve_jobs(2) == evaluate.resolve_jobs(-1) == evaluate.resolve_jobs(None) == 1
    with pytest.raises(pdseg_cli.PdsegError):  # a count that means nothing is still refused
        evaluate.resolve_jobs(-3)


# -- PIL images ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["P", "CMYK", "LA", "PA", "YCbCr", "RGBa"])
def test_pil_images_read_as_their_rgb(mode: str) -> None:
    image = pytest.importorskip("PIL.Image")
    rgb = image.fromarray(textured_image(24, 32))
    converted = rgb.convert(mode)
    expected = T.to_float_rgb(np.asarray(converted.convert("RGB")))
    np.testing.assert_array_equal(T.to_float_rgb(converted), expected)


def test_pil_modes_read_as_arrays_are_kept() -> None:
    image = pytest.importorskip("PIL.Image")
    pixels = textured_image(24, 32)
    for mode in ("RGB", "RGBA", "L"):
        converted = image.fromarray(pixels).convert(mode)
        np.testing.assert_array_equal(T.to_float_rgb(converted), T.to_float_rgb(np.asarray(converted)))
    wide = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80
    big_endian = image.frombytes("I;16B", (32, 24), wide.astype(">u2").tobytes())
    np.testing.assert_allclose(T.to_float_rgb(big_endian), T.to_float_rgb(wide))


def test_predictor_takes_a_palette_image(tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    predictor = pdseg_cli.Predictor(
        tiny_checkpoint(tmp_path / "w.pt", classifier_std=3.0), device="cpu", size=32
    )
    palette = image.fromarray(textured_image(24, 32)).convert("P")
    expected = predictor.predict(np.asarray(palette.convert("RGB")))
    np.testing.assert_array_equal(predictor.predict(palette), expected)


def test_transforms_do_not_import_pil() -> None:
    code = (
        "import sys, numpy as np\n"
        "from pdseg_cli.data import transforms\n"
        "transforms.to_float_rgb(np.zeros((2, 2, 3), np.uint8))\n"
        "print('PIL' in sys.modules)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert run.stdout.strip() == "False"


# -- ~ in paths ----------------------------------------------------------------------------------


def test_home_is_expanded_in_model_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    tiny_checkpoint(tmp_path / "w.pt")
    assert pdseg_cli.load_model("~/w.pt").config.name == "pdseg-tiny"
    assert pdseg_cli.load_checkpoint("~/w.pt").path == tmp_path / "w.pt"
    assert pdseg_cli.Predictor("~/w.pt", device="cpu", size=32).weights_path == tmp_path / "w.pt"
    pdseg_cli.save_checkpoint(pdseg_cli.load_model("~/w.pt"), "~/saved.pt")
    assert (tmp_path / "saved.pt").is_file()
    pdseg_cli.export_checkpoint("~/w.pt", "~/exported.pt", check_shapes=[(1, 3, 32, 32)])
    assert (tmp_path / "exported.pt").is_file()


# -- the default split name ----------------------------------------------------------------------


def test_split_name_does_not_depend_on_the_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split, maps = small_split(tmp_path)
    gt = split / "gt"
    monkeypatch.chdir(split)
    spellings: list[tuple[str | Path, str | Path]] = [(maps, gt), ("../maps", "gt"), ("../maps", "./gt/")]
    names = {eval_pairs.plan_pairs(pred, truth).name for pred, truth in spellings}
    monkeypatch.chdir(gt)
    names.add(eval_pairs.plan_pairs("../../maps", ".").name)
    assert names == {"set"}  # "gt" was the name when the path was spelled "gt"
    assert pdseg_cli.evaluate("../../maps", ".", jobs=1, use_cache=False).splits[0].name == "set"
    named = pdseg_cli.evaluate("../../maps", ".", name=Path("DIS-VD"), jobs=1, use_cache=False)
    assert named.splits[0].name == "DIS-VD"  # a path as a name is its text


# -- TrainConfig's types -------------------------------------------------------------------------


def _typed_init() -> ast.FunctionDef:
    """The ``__init__`` TrainConfig declares for type checkers (under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(Path(inspect.getfile(train_config)).read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainConfig")
    block = next(n for n in cls.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    return next(n for n in block.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")


def test_typed_init_lists_every_field_in_order() -> None:
    """A field added to TrainConfig but not to the typed __init__ would be refused by type
    checkers though it works."""
    init = _typed_init()
    params = [a.arg for a in init.args.args[1:]]
    fields = dataclasses.fields(pdseg_cli.TrainConfig)
    assert params == [f.name for f in fields]
    required = [f.name for f in fields if f.default is dataclasses.MISSING]
    assert params[: len(params) - len(init.args.defaults)] == required


def test_train_config_takes_strings_and_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the typed __init__ promises is what __post_init__ does: the README's example."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = pdseg_cli.TrainConfig(out="runs/a", epochs=2, train_dir="my-set", init="~/w.pt")
    assert (cfg.out, cfg.train_dir, cfg.init) == (Path("runs/a"), Path("my-set"), tmp_path / "w.pt")
    several = pdseg_cli.TrainConfig(out=Path("r"), epochs=1, train_dir=["a", Path("b")])
    assert several.train_dirs == [Path("a"), Path("b")]


def test_evaluate_reports_its_folders_as_pdseg_eval_json_does(tmp_path: Path) -> None:
    """The library's report lacked settings.gt_folders and pred_folders, which the CLI added."""
    split, maps = small_split(tmp_path)
    settings = pdseg_cli.evaluate(maps, split / "gt", jobs=1, use_cache=False).to_json()["settings"]
    assert settings["gt_folders"] == {"set": str((split / "gt").resolve())}
    assert settings["pred_folders"] == {"set": str(maps.resolve())}
