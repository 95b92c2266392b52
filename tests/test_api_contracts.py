"""The Python API as a library user meets it: arguments in the forms the CLI takes, errors that
name what was passed, and no process-wide state left changed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import make_dataset, seeded_model, tiny_checkpoint

from pdseg_cli import Predictor, evaluate, load_model, optimize, save_checkpoint
from pdseg_cli.engine.evaluate import evaluate_arrays
from pdseg_cli.engine.predict import background_colour
from pdseg_cli.engine.train import TrainConfig, train
from pdseg_cli.errors import InputError


def test_predict_paths_takes_save_as_the_cli_writes_it(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "t.pt", train_size=64)
    images = make_dataset(tmp_path / "set", 1) / "im"
    out = tmp_path / "out"
    Predictor(ckpt, device="cpu").predict_paths([images], out, save="mask,alpha", background="white")
    stem = next(images.iterdir()).stem
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}.png", f"{stem}_alpha.png"]


def test_predict_paths_takes_the_clis_refine_and_pixel_limit(tmp_path: Path) -> None:
    """--no-refine-foreground and --max-pixels were the command's alone: the API could not set them."""
    ckpt = tiny_checkpoint(tmp_path / "t.pt", train_size=64)
    images = make_dataset(tmp_path / "set", 1) / "im"
    image = next(images.iterdir())
    predictor = Predictor(ckpt, device="cpu")
    summary = predictor.predict_paths([images], tmp_path / "big", max_pixels=16)
    (result,) = summary.results
    assert result.status == "failed" and "--max-pixels" in (result.error or "")
    predictor.predict_paths([images], tmp_path / "raw", save="alpha", refine_foreground=False)
    cut = cv2.imread(str(tmp_path / "raw" / f"{image.stem}_alpha.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(cut[..., :3], cv2.imread(str(image)))  # the image's own colours, unrefined
    with pytest.raises(InputError, match="max_pixels=0"):
        predictor.predict_paths([images], tmp_path / "none", max_pixels=0)
    with pytest.raises(InputError, match="refine_foreground"):
        predictor.predict_paths([images], tmp_path / "none", refine_foreground="no")  # type: ignore[arg-type]


def test_a_background_is_a_colour_or_one_line_naming_it() -> None:
    assert background_colour("white") == (255, 255, 255)
    assert background_colour("#00ff00") == (0, 255, 0)
    assert background_colour([1, 2, np.uint8(3)]) == (1, 2, 3)
    with pytest.raises(InputError, match="background not a colour: 'rouge'"):
        background_colour("rouge")
    with pytest.raises(InputError, match=r"background \(300, 0, 0\) is not a colour"):
        background_colour((300, 0, 0))  # was clipped to 255 in silence


def test_train_leaves_opencv_threads_as_it_found_them(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "tr", 4)
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        cfg = TrainConfig(
            out=tmp_path / "run", epochs=1, variant="pdseg-tiny", size=64, batch=2, workers=1,
            train_dir=data, device="cpu",
        )  # fmt: skip
        train(cfg)
        assert cv2.getNumThreads() == 2  # the loaders' workers are forked with 1: for the run only
    finally:
        cv2.setNumThreads(before)


def test_a_checkpoint_that_cannot_be_written_is_named_not_its_temporary(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError) as failed:
        save_checkpoint(seeded_model(), tmp_path / "file" / "m.pt")
    assert failed.value.filename == str(tmp_path / "file" / "m.pt")
    assert "cannot write the checkpoint" in str(failed.value) and "pdseg-tmp" not in str(failed.value)


def test_the_optimised_form_takes_half_inputs_as_the_plain_model_casts_them() -> None:
    model = seeded_model().eval()
    fast = optimize(model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(fast(x.half()).numpy(), fast(x.half().float()).numpy(), rtol=0, atol=0)


def test_loading_weights_leaves_the_callers_random_stream_alone(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "t.pt")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_model(ckpt)
    assert torch.equal(torch.rand(3), expected)


def test_scores_compare_by_value() -> None:
    rng = np.random.default_rng(0)
    gt = (rng.random((32, 32)) > 0.5).astype(np.uint8) * 255
    pred = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    a, b = (evaluate_arrays([(p, gt)]).splits[0].scores for p in (pred, pred.copy()))
    assert a == b  # the curves are arrays: == on them used to raise "truth value ... ambiguous"
    assert a != evaluate_arrays([(255 - pred, gt)]).splits[0].scores


def test_evaluate_refuses_a_negative_cache_size(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cache_max_bytes=-5 must be 0 or more"):
        evaluate(tmp_path, tmp_path, cache_max_bytes=-5)


def test_a_size_from_arithmetic_is_a_size_and_a_bool_is_not() -> None:
    from pdseg_cli.engine.predict import parse_size

    assert parse_size(512.0) == parse_size(np.int64(512)) == parse_size("512") == 512
    for wrong in (True, 512.5):
        with pytest.raises(InputError, match="is not a whole number"):
            parse_size(wrong)


def test_a_threshold_that_is_not_a_number_is_one_line() -> None:
    from pdseg_cli.engine.predict import check_threshold

    check_threshold(np.float32(0.5))
    for wrong in ("0.5", True):
        with pytest.raises(InputError, match="is not a number: give a float in"):
            check_threshold(wrong)  # type: ignore[arg-type]


def test_training_and_export_are_public_names() -> None:
    import pdseg_cli
    from pdseg_cli.engine.export import export_checkpoint

    assert pdseg_cli.train is train and pdseg_cli.TrainConfig is TrainConfig
    assert pdseg_cli.export_checkpoint is export_checkpoint


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [("epochs", "2", "a whole number"), ("batch", 2.5, "a whole number"), ("seed", True, "a whole number"),
     ("lr", "1e-3", "a number"), ("augment", 1, "True or False")],
)  # fmt: skip
def test_a_training_option_of_the_wrong_kind_is_one_line(field: str, value: object, what: str) -> None:
    values: dict[str, object] = {"out": "runs/x", "epochs": 2, field: value}
    with pytest.raises(InputError, match=f"TrainConfig {field}={value!r}: give {what}"):
        TrainConfig(**values).check()  # type: ignore[arg-type]
    assert TrainConfig(out="runs/x", epochs=2, lr=1).lr == 1  # a whole number is a number


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"opset": "18"}, "export opset='18': give a whole number"),
        ({"half": "no"}, "export half='no': give True or False"),
        ({"check": 1}, "export check=1: give True or False"),
        ({"tolerance": "1e-3"}, "export tolerance='1e-3': give a number"),
        ({"fmt": 3}, "export format 3: give one of onnx, torchscript, checkpoint"),
    ],
)
def test_an_export_option_of_the_wrong_kind_is_one_line_before_the_load(
    tmp_path: Path, options: dict, words: str
) -> None:
    from pdseg_cli import export_checkpoint

    # the checkpoint does not exist: the option is refused before anything is read
    with pytest.raises(InputError) as info:
        export_checkpoint(tmp_path / "missing.pt", tmp_path / "m.onnx", **options)
    assert info.value.message == words


def test_a_predictor_option_of_the_wrong_kind_is_one_line(tmp_path: Path) -> None:
    predictor = Predictor(seeded_model(), device="cpu")
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InputError, match="predict_batch batch='2': give a whole number"):
        predictor.predict_batch([image], batch="2")
    assert len(predictor.predict_batch([image], batch=np.int64(2))) == 1
    with pytest.raises(InputError, match="predict_paths recursive='no': give True or False"):
        predictor.predict_paths([tmp_path], tmp_path / "out", recursive="no")
    assert not (tmp_path / "out").exists()


def test_numpy_switches_and_numbers_pass_as_python_ones(tmp_path: Path) -> None:
    from pdseg_cli.errors import check_kind

    check_kind("t", "switch", np.True_, bool)  # np.bool_ is named "bool" in numpy 2
    check_kind("t", "count", np.int64(3), int)
    check_kind("t", "rate", np.float32(0.5), float)
    with pytest.raises(InputError, match="give a whole number"):
        check_kind("t", "count", np.True_, int)
    images = make_dataset(tmp_path / "set", 1) / "im"
    Predictor(seeded_model(), device="cpu").predict_paths([images], tmp_path / "out", recursive=np.False_)
    assert len(list((tmp_path / "out").iterdir())) == 1


def test_a_pickle_that_would_run_code_is_named_so_and_never_run(tmp_path: Path) -> None:
    """torch 2.13 says "unsupported GLOBAL posix.system" (lower case): it was taken for a file that
    is not PyTorch's at all, and --resume called it damaged and offered --overwrite."""
    import os

    from pdseg_cli.engine.train_checkpoints import read_train_state
    from pdseg_cli.errors import WeightsError

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "last.pt"
    torch.save({"train_state": Evil()}, evil)
    with pytest.raises(WeightsError, match=r"holds pickled Python objects \(\w+\.system\)"):
        load_model(evil)
    with pytest.raises(WeightsError, match="not a pdseg training state") as err:
        read_train_state(evil)
    assert "--overwrite" not in str(err.value) and not marker.exists()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"allow_missing": "no"}, "evaluate allow_missing='no': give True or False"),  # "no" was true
        ({"use_cache": "no"}, "evaluate use_cache='no': give True or False"),
        ({"cache_max_bytes": "1G"}, "evaluate cache_max_bytes='1G': give a whole number"),
        ({"on_progress": 5}, "evaluate on_progress=5: give a function of one record, or None"),
        ({"name": 3}, "evaluate name=3: give the split's name as a string, or None"),  # heads the report
        ({"jobs": "2"}, "evaluate jobs='2': give a whole number"),  # was a TypeError, unlike the rest
        ({"use_cache": None}, "evaluate use_cache=None: give True or False"),  # None is for jobs alone
        ({"cache_max_bytes": None}, "evaluate cache_max_bytes=None: give a whole number"),
    ],
)
def test_an_evaluate_option_of_the_wrong_kind_is_one_line_before_scoring(
    tmp_path: Path, options: dict, words: str
) -> None:
    from pdseg_cli import evaluate

    with pytest.raises(InputError) as info:  # the folders do not exist: refused before they are read
        evaluate(tmp_path / "pred", tmp_path / "gt", **options)
    assert info.value.message == words


def test_optimize_refuses_a_channels_last_that_is_not_a_bool() -> None:
    from pdseg_cli import optimize

    with pytest.raises(TypeError, match="channels_last must be True or False, not 'no'"):
        optimize(seeded_model(), channels_last="no")


@pytest.mark.parametrize(
    ("local_rank", "words"),
    [
        ("0", "Predictor local_rank='0': give a whole number"),
        (1.0, "Predictor local_rank=1.0: give a whole number"),
        (-1, "Predictor local_rank=-1: give a GPU index, 0 or more, or None"),
    ],
)
def test_a_predictor_local_rank_that_is_no_gpu_index_is_one_line(local_rank: object, words: str) -> None:
    from pdseg_cli import Predictor

    with pytest.raises(InputError) as info:  # before any device or weights are touched
        Predictor(seeded_model(), device="cpu", local_rank=local_rank)
    assert info.value.message == words


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"precision": torch.float16}, "not a precision: torch.float16"),  # was .strip()'s AttributeError
        ({"precision": None}, "not a precision: None"),
        ({"compile": 1}, "not a torch.compile mode: 1"),
    ],
)
def test_a_predictor_precision_or_compile_of_the_wrong_kind_is_one_line(options: dict, words: str) -> None:
    from pdseg_cli import Predictor

    with pytest.raises(InputError) as info:
        Predictor(seeded_model(), device="cpu", **options)
    assert info.value.message == words


def test_predict_batch_refuses_file_names_as_predict_does() -> None:
    from pdseg_cli import Predictor

    predictor = Predictor(seeded_model(), device="cpu", size=64)
    image = np.zeros((8, 8, 3), np.uint8)
    assert len(predictor.predict_batch(image for _ in range(3))) == 3  # a generator: read once, all used
    words = r"predict_batch takes pixels, not a file name \('a.jpg'\).*read_image"
    with pytest.raises(TypeError, match=words):
        predictor.predict_batch([np.zeros((8, 8, 3), np.uint8), "a.jpg"])


def test_the_errors_the_docstrings_name_are_importable_from_the_package() -> None:
    import pdseg_cli
    from pdseg_cli import errors

    for name in ("PdsegError", "InputError", "WeightsError", "DataError", "NotAvailableError", "RunFailed"):
        assert getattr(pdseg_cli, name) is getattr(errors, name) and name in pdseg_cli.__all__
    assert issubclass(pdseg_cli.InputError, pdseg_cli.PdsegError)


def test_a_predict_summary_and_an_export_report_show_their_gist_in_a_notebook(tmp_path: Path) -> None:
    # their dataclass reprs dumped every FileResult and the whole provenance (6 KB an export)
    from pdseg_cli import export_checkpoint

    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    cv2.imwrite(str(image), np.zeros((16, 16, 3), np.uint8))
    summary = Predictor(seeded_model(), device="cpu", size=64).predict_paths([image.parent], tmp_path / "out")
    assert repr(summary).startswith("PredictSummary(done=1, skipped=0, failed=0, not_images=0, wall_seconds=")
    assert repr(summary).endswith(", device='cpu', size='64', stopped=None)")
    checkpoint = tiny_checkpoint(tmp_path / "m.pt")
    report = export_checkpoint(checkpoint, tmp_path / "m.ts", check=False)
    head = f"ExportReport(path={str(tmp_path / 'm.ts')!r}, format='torchscript', ok=True"
    assert repr(report).startswith(head)
    assert len(repr(report)) < 300


def test_torch_tensors_are_taken_as_arrays_and_a_channels_first_array_gets_the_fix() -> None:
    # a tensor that requires grad, or a bf16 one, failed inside numpy; (3, H, W) said only its shape
    predictor = Predictor(seeded_model(), device="cpu", size=64)
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    want = predictor.predict(image)
    tensor = torch.from_numpy(image.astype(np.float32)).requires_grad_(True)
    assert np.array_equal(predictor.predict(tensor), want)
    assert predictor.predict(tensor.detach().bfloat16()).shape == (40, 56)
    with pytest.raises(
        ValueError, match=r"got shape \(3, 40, 56\) \(channels first\? image.transpose\(1, 2, 0\)"
    ):
        predictor.predict(image.transpose(2, 0, 1))
