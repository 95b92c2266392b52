"""Foreign ONNX models in predict/eval, teacher maps and distillation, and fine-tuning with --init.

Everything is made in the test: a tiny pdseg (checkpoint and its ONNX export) as a teacher, and
hand-built foreign ONNX graphs with their own normalisation and several outputs. The ISNet teacher
file is never needed (a slow test uses it when ``PDSEG_ISNET`` points at it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from helpers import dead_pid, flat, make_dataset, textured_image, tiny_checkpoint
from typer.testing import CliRunner

from pdseg_cli.cli import app
from pdseg_cli.data import dis5k
from pdseg_cli.data.teacher import NO_OBJECT, UNSURE, blend_targets, file_sha256, harden_map, map_doubt
from pdseg_cli.engine.onnx_spec import Signature, parse_spec, recognise
from pdseg_cli.engine.predict import Predictor
from pdseg_cli.engine.teacher import TeacherMaps, _cache_key
from pdseg_cli.engine.train import TrainConfig, train
from pdseg_cli.errors import DataError, InputError, Interrupted, WeightsError
from pdseg_cli.model import create_model, load_checkpoint, save_checkpoint

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

# the foreign graph's own preprocessing: BGR, (x / 255 - 0.4) / 0.3, and its map is output "b"
FOREIGN_SPEC = "size=48,color=bgr,scale=1,mean=0.4,std=0.3,output=b,kind=probability"


def _foreign_onnx(
    path: Path, side: int | None, n_outputs: int = 2, input_name: str = "pixels", names: Sequence[str] = ()
) -> Path:
    """A foreign segmentation graph: out_k = sigmoid(w_k . x + b_k), per pixel, (B, 1, H, W) each.

    Output 0 ("a") is a distractor; output 1 ("b") weighs the channels unevenly, so a wrong colour
    order or normalisation shows in its values.
    """
    dims: list[int | str] = [1, 3, side, side] if side else ["B", 3, "H", "W"]
    inp = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, dims)
    names = list(names) or ["a", "b", "c", "d", "e", "f", "g"][:n_outputs]
    nodes, inits, outs = [], [], []
    for k, name in enumerate(names):
        w = np.array([1.5, -0.5, 0.25], np.float32) * (1 if k != 1 else 2.0) + 0.1 * k
        inits.append(helper.make_tensor(f"w{k}", TensorProto.FLOAT, [1, 3, 1, 1], w.tolist()))
        inits.append(helper.make_tensor(f"b{k}", TensorProto.FLOAT, [1], [0.2 * k - 0.1]))
        nodes.append(helper.make_node("Conv", [input_name, f"w{k}", f"b{k}"], [f"z{k}"]))
        nodes.append(helper.make_node("Sigmoid", [f"z{k}"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [dims[0], 1, dims[2], dims[3]]))
    graph = helper.make_graph(nodes, "foreign", [inp], outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _by_hand(path: Path, image: np.ndarray, side: int) -> np.ndarray:
    """What a plain script does with the foreign model: resize, BGR, normalise, run, resize back, floor."""
    h, w = image.shape[:2]
    x = cv2.resize(image.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    x = (x[..., ::-1] / 255.0 - 0.4) / 0.3
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (p,) = session.run(["b"], {"pixels": x.transpose(2, 0, 1)[None].astype(np.float32)})
    up = F.interpolate(torch.from_numpy(p), size=(h, w), mode="bilinear", align_corners=False)
    return (up[0, 0] * 255.0).to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _foreign_onnx(tmp_path_factory.mktemp("foreign") / "foreign.onnx", 48)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (37, 61, 3), dtype=np.uint8)
    image[10:30, 20:50] = (230, 40, 90)
    return image


# ----------------------------------------------------------------------------------------------
# foreign ONNX models


def test_unknown_foreign_onnx_says_what_to_pass(foreign: Path) -> None:
    with pytest.raises(WeightsError) as info:
        Predictor(foreign, device="cpu")
    assert "matches no known model" in info.value.message and "pixels" in info.value.message
    assert "--onnx-spec" in (info.value.hint or "")


def test_foreign_onnx_with_a_spec_equals_a_plain_script(foreign: Path, photo: np.ndarray) -> None:
    predictor = Predictor(foreign, device="cpu", onnx_spec=FOREIGN_SPEC)
    assert predictor.size == 48 and "output 'b'" in predictor.description
    got = predictor.predict(photo)
    want = _by_hand(foreign, photo, 48)
    assert got.shape == photo.shape[:2]
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert (got == want).mean() > 0.99


def test_a_probability_read_as_a_logit_is_warned_of_after_the_run(
    foreign: Path, photo: np.ndarray, tmp_path: Path
) -> None:
    # sigmoid of 0..1 is bytes 127..186: grey maps, and nothing said why
    wrong = Predictor(foreign, device="cpu", onnx_spec=FOREIGN_SPEC.replace("kind=probability", "kind=logit"))
    assert wrong.doubts == []  # nothing run yet
    grey = wrong.predict(photo)
    assert 127 <= grey.min() and grey.max() <= 186
    # the user's own spec with its kind changed: kind= alone resets size, colour, mean, std, output
    assert len(wrong.doubts) == 1 and f"--onnx-spec {FOREIGN_SPEC}" in wrong.doubts[0]
    right = Predictor(foreign, device="cpu", onnx_spec=FOREIGN_SPEC)
    right.predict(photo)
    assert right.doubts == []
    cv2.imwrite(str(tmp_path / "p.png"), photo)
    spec = FOREIGN_SPEC.replace("kind=probability", "kind=logit")
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(tmp_path / "p.png"),
            "-o",
            str(tmp_path / "o"),
            "-w",
            str(foreign),
            "--onnx-spec",
            spec,
            "--json",
            str(tmp_path / "run.json"),
        ],
    )
    assert result.exit_code == 0 and "kind=probability" in flat(result.output)
    # and in the JSON, for a script that does not read the messages
    (said,) = json.loads((tmp_path / "run.json").read_text())["run"]["model_warnings"]
    assert f"--onnx-spec {FOREIGN_SPEC}" in said


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("size=64", "takes only 48x48"),
        ("output=zz", "no output 'zz'"),
        ("output=5", "output=5 is not one"),
        ("output=-3", "output=-3 is not one"),
        ("output=b,channel=3", "channel=3 is not one"),
        ("size=dynamic", "takes only 48x48 inputs (--onnx-spec size=dynamic)"),  # said "size=None"
        ("kind=odds", "probability or logit"),
        ("mean=1:2", "one value or three"),
        ("colour=rgb", "unknown key"),
        ("std=0", "std cannot be 0"),
    ],
)
def test_bad_onnx_specs_are_one_line_errors(foreign: Path, spec: str, words: str) -> None:
    with pytest.raises(InputError) as info:
        Predictor(foreign, device="cpu", onnx_spec=spec)
    assert words in info.value.message
    assert info.value.hint, "every refusal says what to pass instead"


def test_a_negative_output_index_counts_from_the_end(foreign: Path) -> None:
    # "output=-1" was taken as an output named "-1"
    spec = FOREIGN_SPEC.replace("output=b", "output=-1")
    assert "output #1" in Predictor(foreign, device="cpu", onnx_spec=spec).description


def test_a_predictor_of_a_foreign_model_pickles_with_its_spec(foreign: Path) -> None:
    import pickle

    predictor = Predictor(foreign, device="cpu", onnx_spec=FOREIGN_SPEC)
    copy = pickle.loads(pickle.dumps(predictor))
    image = textured_image(30, 40)
    assert copy.model.spec == predictor.model.spec
    assert np.array_equal(copy.predict(image), predictor.predict(image))


def test_an_output_named_by_a_number_is_taken_by_its_name(tmp_path: Path) -> None:
    # PyTorch names outputs "1890", "1891": output=1890 was read as an index and refused, though
    # the refusal's hint offered the name; where the number is both, the name wins
    path = _foreign_onnx(tmp_path / "numbered.onnx", 48, names=["7", "0"])
    image = textured_image(30, 40)
    by_name = Predictor(path, device="cpu", onnx_spec=FOREIGN_SPEC.replace("output=b", "output=0"))
    assert "output '0'" in by_name.description
    second = _foreign_onnx(tmp_path / "lettered.onnx", 48)
    by_index = Predictor(second, device="cpu", onnx_spec=FOREIGN_SPEC.replace("output=b", "output=1"))
    assert np.array_equal(by_name.predict(image), by_index.predict(image))  # the second output, "0"
    assert "output '7'" in Predictor(path, device="cpu", onnx_spec="output=7").description


def test_fixed_size_models_refuse_another_size(foreign: Path) -> None:
    with pytest.raises(InputError) as info:
        Predictor(foreign, device="cpu", size=96, onnx_spec=FOREIGN_SPEC)
    assert "takes only 48x48" in info.value.message and "drop --size" in (info.value.hint or "")


def test_a_size_fixed_by_the_spec_is_said_to_come_from_it(tmp_path: Path) -> None:
    # the graph takes any size: "takes only 64x64" blamed the model for what --onnx-spec said
    dynamic = _foreign_onnx(tmp_path / "dynamic.onnx", None)
    spec = FOREIGN_SPEC.replace("size=48", "size=64")
    assert "size=64" in spec
    with pytest.raises(InputError) as info:
        Predictor(dynamic, device="cpu", size=96, onnx_spec=spec)
    assert info.value.message.startswith("--onnx-spec size=64 runs ") and "--size 96" in info.value.message
    assert "size=dynamic" in (info.value.hint or "")
    assert Predictor(dynamic, device="cpu", onnx_spec=spec).size_note == "--onnx-spec size=64"
    assert (
        Predictor(dynamic, device="cpu", size=96, onnx_spec=spec.replace("size=64", "size=dynamic")).size
        == 96
    )


def test_known_signatures_are_recognised(tmp_path: Path) -> None:
    u2 = _foreign_onnx(tmp_path / "u2.onnx", 320, n_outputs=7, input_name="input.1")
    predictor = Predictor(u2, device="cpu")
    assert predictor.size == 320 and predictor.description.startswith("foreign ONNX, u2net")
    sig = Signature("input", (1, 3, 1024, 1024), (("output", (1, 1, 1024, 1024)), ("x", (1, 1, 1024, 1024))))
    spec = recognise(sig)
    assert spec is not None and spec.name == "isnet (imgly)" and spec.mean == (128.0,) * 3
    birefnet = recognise(
        Signature("input_image", (1, 3, None, None), (("output_image", (1, 1, None, None)),))
    )
    assert birefnet is not None and birefnet.kind == "logit" and birefnet.size is None
    assert recognise(Signature("x", (1, 3, 512, 512), (("y", (1, 1, 512, 512)),))) is None
    assert parse_spec("size=dynamic,mean=0.5:0.5:0.5,kind=logits") == {
        "size": None,
        "mean": (0.5, 0.5, 0.5),
        "kind": "logit",
    }


def test_dynamic_foreign_model_takes_size(tmp_path: Path, photo: np.ndarray) -> None:
    path = _foreign_onnx(tmp_path / "dyn.onnx", None)
    predictor = Predictor(path, device="cpu", size=64, onnx_spec="output=1,mean=0.5,std=0.5,scale=1")
    assert predictor.size == 64
    assert predictor.predict_batch([photo, photo], batch=2)[0].shape == photo.shape[:2]


def test_onnx_spec_on_a_pdseg_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    save_checkpoint(create_model("pdseg-tiny"), path, train_size=64)
    with pytest.raises(InputError):
        Predictor(path, device="cpu", onnx_spec="size=64")


def test_eval_of_a_foreign_onnx_equals_scoring_its_maps_by_hand(foreign: Path, tmp_path: Path) -> None:
    split = make_dataset(tmp_path / "set", 4, size=40)
    maps = tmp_path / "by-hand"
    maps.mkdir()
    for image in sorted((split / "im").iterdir()):
        pixels = cv2.imread(str(image))[..., ::-1]
        cv2.imwrite(str(maps / f"{image.stem}.png"), _by_hand(foreign, pixels, 48))
    runner = CliRunner(env={"COLUMNS": "200"})
    common = ["eval", "--split", str(split), "--jobs", "1", "--no-cache"]
    ran = runner.invoke(
        app, [*common, "-w", str(foreign), "--onnx-spec", FOREIGN_SPEC, "--json", str(tmp_path / "a.json")]
    )
    assert ran.exit_code == 0, ran.output
    read = runner.invoke(app, [*common, "--pred", str(maps), "--json", str(tmp_path / "b.json")])
    assert read.exit_code == 0, read.output
    a = next(iter(json.loads((tmp_path / "a.json").read_text())["splits"].values()))
    b = next(iter(json.loads((tmp_path / "b.json").read_text())["splits"].values()))
    for key in ("maxF", "wF", "MAE", "S", "E"):
        assert a[key] == pytest.approx(b[key], abs=2e-3), key


def test_eval_warns_of_probabilities_read_as_logits_and_keeps_it(foreign: Path, tmp_path: Path) -> None:
    split = make_dataset(tmp_path / "set", 2, size=40)
    spec = FOREIGN_SPEC.replace("kind=probability", "kind=logit")
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        app,
        ["eval", "--split", str(split), "--jobs", "1", "--no-cache", "-w", str(foreign), "--onnx-spec", spec,
         "--json", str(tmp_path / "e.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"--onnx-spec {FOREIGN_SPEC}" in flat(result.output)
    settings = json.loads((tmp_path / "e.json").read_text())["settings"]["predictions"]
    (said,) = settings["model_warnings"]
    assert f"--onnx-spec {FOREIGN_SPEC}" in said


def test_cli_predict_names_the_model_and_refuses_a_bad_spec(foreign: Path, tmp_path: Path) -> None:
    images = make_dataset(tmp_path / "set", 1, size=40) / "im"
    runner = CliRunner(env={"COLUMNS": "200"})
    ok = runner.invoke(
        app,
        ["predict", str(images), "-o", str(tmp_path / "o"), "-w", str(foreign), "--onnx-spec", FOREIGN_SPEC],
    )
    assert ok.exit_code == 0, ok.output
    assert "foreign ONNX" in ok.output and (tmp_path / "o" / "s00.png").is_file()
    bad = runner.invoke(app, ["predict", str(images), "-o", str(tmp_path / "p"), "-w", str(foreign)])
    assert bad.exit_code == 2 and "Traceback" not in bad.output and "--onnx-spec" in bad.output


# ----------------------------------------------------------------------------------------------
# teacher maps


def test_blend_targets() -> None:
    gt = np.array([[0, 255]], np.uint8)
    teacher = np.array([[100, 155]], np.uint8)
    assert blend_targets(gt, teacher, 0.0) is gt
    assert blend_targets(None, teacher, 0.0) is teacher
    assert blend_targets(gt, None, 0.5) is gt
    assert blend_targets(gt, teacher, 0.25).tolist() == [[25, 230]]
    with pytest.raises(ValueError):
        blend_targets(None, None, 0.5)


@pytest.fixture()
def tiny_teacher(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    model = create_model("pdseg-tiny")
    for level in model.decoder.levels:
        torch.nn.init.normal_(level.classifier.weight, std=1.0)
    path = tmp_path / "teacher.pt"
    save_checkpoint(model, path, train_size=64)
    return path


@pytest.fixture
def three_images(tiny_teacher: Path, tmp_path: Path) -> tuple[list[Path], TeacherMaps]:
    """Three 40x40 images, and the tiny teacher's (empty) map cache."""
    images = make_dataset(tmp_path / "set", 3, size=40) / "im"
    return sorted(images.iterdir()), TeacherMaps(tiny_teacher, tmp_path / "cache")


def test_teacher_maps_are_cached_and_invalidated(
    tiny_teacher: Path,
    three_images: tuple[list[Path], TeacherMaps],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paths, maps = three_images
    calls: list[Path] = []
    compute = maps.compute
    monkeypatch.setattr(maps, "compute", lambda p: calls.append(p) or compute(p))
    first = maps.ensure_all(paths)
    assert len(calls) == 3 and all(p.is_file() for p in first)
    assert cv2.imread(str(first[0]), cv2.IMREAD_UNCHANGED).shape == (40, 40)
    assert maps.ensure_all(paths) == first and len(calls) == 3  # cached: not computed again
    # another image content -> another map; the others stay
    cv2.imwrite(str(paths[0]), np.full((40, 40, 3), 200, np.uint8))
    again = maps.ensure_all(paths)
    assert len(calls) == 4 and again[0] != first[0] and again[1:] == first[1:]
    # another teacher -> another folder
    other = tmp_path / "other.pt"
    save_checkpoint(create_model("pdseg-tiny"), other, train_size=64)
    assert TeacherMaps(other, tmp_path / "cache").folder != maps.folder
    assert TeacherMaps(tiny_teacher, tmp_path / "cache").folder == maps.folder
    # what a killed labelling left half-written goes as the cache is next opened (nothing else
    # ever looks there); a live writer's temporary stays
    from pdseg_cli.data import atomic

    target = first[1]
    dead = target.with_name(atomic.temp_name(target).replace(f".{os.getpid()}-", f".{dead_pid()}-", 1))
    live = target.with_name(atomic.temp_name(target))
    dead.write_bytes(b"half")
    live.write_bytes(b"half")
    TeacherMaps(tiny_teacher, tmp_path / "cache")
    assert not dead.exists() and live.exists()


def test_a_teacher_replaced_after_the_run_began_is_refused(
    three_images: tuple[list[Path], TeacherMaps], tiny_teacher: Path
) -> None:
    """The cache folder is named by the teacher file's hash when the run begins; the model loads
    at the first map. A file saved over it in between would have had its maps cached, for good,
    under the other file's key."""
    paths, maps = three_images
    save_checkpoint(create_model("pdseg-tiny"), tiny_teacher, train_size=64)  # another teacher, same name
    with pytest.raises(WeightsError, match="changed after this run began"):
        maps.ensure_all(paths)
    assert not any(maps.folder.glob("*.png"))  # nothing cached under the first file's key


def test_a_ctrl_c_while_labelling_keeps_the_maps_made_and_says_so(
    three_images: tuple[list[Path], TeacherMaps], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, maps = three_images
    compute = maps.compute
    calls: list[Path] = []

    def stop_at_the_second(image: Path) -> np.ndarray:
        calls.append(image)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return compute(image)

    monkeypatch.setattr(maps, "compute", stop_at_the_second)
    with pytest.raises(Interrupted) as stopped:
        maps.ensure_all(paths)
    assert isinstance(stopped.value, KeyboardInterrupt)  # every Ctrl-C clean-up still runs
    assert stopped.value.hint == (
        f"the teacher maps are cached in {maps.folder}: 1 made now, 0 found from earlier runs, 2 not "
        "looked at yet; running the same command again goes on from there"
    )
    assert maps.map_path(paths[0]).is_file() and not maps.map_path(paths[1]).exists()
    assert [p.name for p in maps.folder.iterdir()] == [maps.map_path(paths[0]).name]  # no partial file
    monkeypatch.setattr(maps, "compute", compute)
    assert all(p.is_file() for p in maps.ensure_all(paths))


def test_the_cli_prints_the_labelling_hint_and_exits_130(
    tiny_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_dataset(tmp_path / "set", 2, size=40)
    for gt in (data / "gt").iterdir():
        gt.unlink()  # images alone: every one needs the teacher

    def interrupted(self: TeacherMaps, image: Path) -> np.ndarray:
        raise KeyboardInterrupt

    monkeypatch.setattr(TeacherMaps, "compute", interrupted)
    monkeypatch.setenv("PDSEG_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(
        app,
        ["train", "--variant", "pdseg-tiny", "--size", "64", "--epochs", "1", "--device", "cpu",
         "--train", str(data), "--teacher", str(tiny_teacher), "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 130, result.output
    assert "error: interrupted" in result.output
    assert "0 made now, 0 found from earlier runs, 2 not looked at yet" in " ".join(result.output.split())
    assert "running the same command again goes on from there" in result.output


def test_a_teacher_read_as_a_logit_that_gives_probabilities_is_warned_of(
    foreign: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # its maps are grey (127..186): every target of a distillation run, with nothing said
    data = make_dataset(tmp_path / "set", 2, size=40)
    for gt in (data / "gt").iterdir():
        gt.unlink()
    monkeypatch.setenv("PDSEG_CACHE_DIR", str(tmp_path / "cache"))
    spec = FOREIGN_SPEC.replace("kind=probability", "kind=logit")
    result = CliRunner(env={"COLUMNS": "250"}).invoke(
        app,
        ["train", "--variant", "pdseg-tiny", "--size", "64", "--epochs", "1", "--device", "cpu",
         "--val-every", "0", "--train", str(data), "--teacher", str(foreign), "--onnx-spec", spec,
         "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"--onnx-spec {FOREIGN_SPEC}" in flat(result.output)


def test_the_teacher_cache_is_keyed_by_what_the_spec_means() -> None:
    # how a teacher runs changes its maps, so a spec is part of the key; its spelling is not
    sha = "ab" * 32
    bgr = _cache_key(sha, "color=bgr,scale=1,mean=0.5")
    assert bgr == _cache_key(sha, " scale=1.0, mean=0.5:0.5:0.5 ,color=BGR,name=my model")
    assert bgr != _cache_key(sha, "color=rgb,scale=1,mean=0.5") != _cache_key(sha, "")
    assert _cache_key(sha, "") == _cache_key(sha, "name=only a label") == sha[:24]
    # an ONNX teacher's maps of earlier versions were resized as clamped logits: not mixed in
    assert _cache_key(sha, "", onnx=True) not in (sha[:24], _cache_key(sha, "name=x", onnx=False))
    assert _cache_key(sha, "", onnx=True).startswith(sha[:16])


def test_a_foreign_onnx_teacher_labels_at_its_own_size(
    foreign: Path, tmp_path: Path, photo: np.ndarray
) -> None:
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), photo[..., ::-1])
    maps = TeacherMaps(foreign, tmp_path / "cache", onnx_spec=FOREIGN_SPEC)
    got = cv2.imread(str(maps.ensure(image)), cv2.IMREAD_UNCHANGED)
    assert np.abs(got.astype(int) - _by_hand(foreign, photo, 48).astype(int)).max() <= 1
    assert "output 'b'" in maps.info().description


def test_a_shrunk_image_gets_its_own_map_name_with_a_pdseg_teacher_alone(
    tiny_teacher: Path, foreign: Path, tmp_path: Path
) -> None:
    # pdseg shrinks its own models' inputs by averaging: the map of an image larger than the teacher's
    # input (64) differs from what earlier versions cached, so it has another name; smaller images,
    # and every image of a foreign teacher (fed bilinearly as before), keep their cached maps
    small, big, tif = tmp_path / "small.png", tmp_path / "big.jpg", tmp_path / "scan.tif"
    cv2.imwrite(str(small), textured_image(40, 64))
    cv2.imwrite(str(big), textured_image(40, 65))
    tifffile.imwrite(tif, textured_image(40, 40))  # a TIFF's first page may be a thumbnail: not trusted
    maps = TeacherMaps(tiny_teacher, tmp_path / "cache")
    assert maps.map_path(small).name == f"{file_sha256(small)[:32]}.png"
    assert maps.map_path(big).name == f"{file_sha256(big)[:32]}-area.png"
    assert maps.map_path(tif).name == f"{file_sha256(tif)[:32]}-area.png"
    foreign_maps = TeacherMaps(foreign, tmp_path / "cache", onnx_spec=FOREIGN_SPEC)
    assert foreign_maps.map_path(big).name == f"{file_sha256(big)[:32]}.png"


# ----------------------------------------------------------------------------------------------
# distillation and fine-tuning in pdseg train


def _unlabelled(root: Path, n: int) -> Path:
    make_dataset(root, n, size=64, seed=5)
    for mask in (root / "gt").iterdir():
        mask.unlink()
    (root / "gt").rmdir()
    return root


def _cfg(out: Path, **kw: object) -> TrainConfig:
    values: dict[str, object] = dict(
        epochs=1, size=64, batch=4, workers=0, lr=1e-3, device="cpu", val_every=0, cache="ram",
        teacher_cache=out.parent / "teacher-cache",
    )  # fmt: skip
    values.update(kw)
    return TrainConfig(out=out, **values)  # type: ignore[arg-type]


def test_unlabelled_images_without_a_teacher_are_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a folder without any mask (a forgotten --teacher) is said at once: nothing is decoded first
    labelled = make_dataset(tmp_path / "lab", 4)
    unlabelled = _unlabelled(tmp_path / "unl", 3)

    def no_decoding(*args: object, **kw: object) -> None:
        raise AssertionError("decoded before saying that --teacher is missing")

    monkeypatch.setattr(dis5k, "load_sample", no_decoding)
    with pytest.raises(DataError) as info:
        train(_cfg(tmp_path / "run", variant="pdseg-tiny", train_dir=[labelled, unlabelled]))
    # the example as the user can open it (it was "unl/im/s00.jpg", without the folders above)
    assert info.value.message == f"3 of 7 training images have no mask (e.g. {unlabelled / 'im' / 's00.jpg'})"
    assert "--teacher" in (info.value.hint or "")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_an_unusable_teacher_cache_is_named_before_any_work(tiny_teacher: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    cfg = _cfg(tmp_path / "run", variant="pdseg-tiny", train_dir=[_unlabelled(tmp_path / "unl", 2)],
               teacher=tiny_teacher, teacher_cache=blocker)  # fmt: skip
    with pytest.raises(
        DataError, match="the teacher-map cache .* cannot be used: .* is a file, not a folder"
    ):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_a_folder_of_images_alone_is_refused_at_once_with_the_count(tmp_path: Path) -> None:
    unlabelled = _unlabelled(tmp_path / "unl", 3)
    with pytest.raises(DataError) as info:
        train(_cfg(tmp_path / "run", variant="pdseg-tiny", train_dir=[unlabelled]))
    assert info.value.message == f"3 of 3 training images have no mask (e.g. {unlabelled / 'im' / 's00.jpg'})"
    assert "--teacher" in (info.value.hint or "")


def test_missing_masks_and_bad_pairs_are_named_in_one_error(tmp_path: Path) -> None:
    # one run names every fix: the image without a mask and what decoding finds in the others
    labelled = make_dataset(tmp_path / "lab", 4)
    (labelled / "gt" / "s00.png").unlink()
    cv2.imwrite(str(labelled / "gt" / "s01.png"), np.ones((64, 64), np.uint8))  # 0/1 values
    cv2.imwrite(str(labelled / "gt" / "s02.png"), np.zeros((32, 64), np.uint8))  # another size
    with pytest.raises(DataError) as info:
        train(_cfg(tmp_path / "run", variant="pdseg-tiny", train_dir=[labelled]))
    message = info.value.message
    assert message.startswith("3 bad image/mask pair(s)")
    assert "im/s00.jpg: no mask gt/s00.png" in message
    assert "s01.png holds only the values 0 and 1" in message
    assert "im/s02.jpg is 64x64 but its mask gt/s02.png is 64x32" in message
    assert (info.value.hint or "").startswith("1 of 4 training images have no mask: pass --teacher")


def test_distillation_mixes_folders_and_records_the_teacher(tiny_teacher: Path, tmp_path: Path) -> None:
    labelled = make_dataset(tmp_path / "lab", 4)
    unlabelled = _unlabelled(tmp_path / "unl", 4)
    (labelled / "im" / "extra.jpg").write_bytes((unlabelled / "im" / "s00.jpg").read_bytes())  # no gt
    cfg = _cfg(tmp_path / "run", variant="pdseg-tiny", train_dir=[labelled, unlabelled], teacher=tiny_teacher)
    events: list[Any] = []
    result = train(cfg, events.append)
    assert load_checkpoint(result.last).provenance["train_images"] == 9
    [said] = [
        e.values["message"] for e in events if e.kind == "info" and e.values["message"].startswith("teacher ")
    ]
    assert said.endswith(": the targets of 5 images without a mask")  # what the teacher is used for
    maps = sorted((tmp_path / "teacher-cache" / "teacher").glob("*/*.png"))
    assert len(maps) == 4  # extra.jpg has the content of unl/s00.jpg: one map serves both
    rows = (tmp_path / "run" / "results.csv").read_text().splitlines()
    sha = load_checkpoint(result.last).provenance["teacher_sha256"]
    assert "teacher_sha256" in rows[0] and sha in rows[1]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved"]["teacher_sha256"] == sha and len(config["train"]["train_dir"]) == 2
    # a second run finds every map cached; blending needs the labelled images' maps too
    blended = _cfg(
        tmp_path / "run2", variant="pdseg-tiny", train_dir=[labelled, unlabelled], teacher=tiny_teacher,
        teacher_weight=0.5,
    )  # fmt: skip
    events.clear()
    train(blended, events.append)
    assert len(sorted((tmp_path / "teacher-cache" / "teacher").glob("*/*.png"))) == 8
    [said] = [
        e.values["message"] for e in events if e.kind == "info" and e.values["message"].startswith("teacher ")
    ]
    assert said.endswith(
        ": the targets of 5 images without a mask and blended into the masks of 4 images "
        "(--teacher-weight 0.5)"
    )


def test_blended_targets_reach_the_sample_cache(tiny_teacher: Path, tmp_path: Path) -> None:
    labelled = make_dataset(tmp_path / "lab", 1)
    maps = TeacherMaps(tiny_teacher, tmp_path / "cache")
    pair = dis5k.scan_pairs(labelled).pairs[0]
    teacher_map = maps.ensure(pair.image)
    gt = cv2.imread(str(pair.mask), cv2.IMREAD_GRAYSCALE)
    t = cv2.imread(str(teacher_map), cv2.IMREAD_GRAYSCALE)
    for weight in (0.0, 0.3, 1.0):
        import dataclasses

        sample = dis5k.load_sample(dataclasses.replace(pair, teacher=teacher_map, teacher_weight=weight), 64)
        assert np.array_equal(sample[..., 3], blend_targets(gt, t, weight))


def test_harden_map_makes_the_sure_pixels_sure_and_keeps_the_edges() -> None:
    teacher_map = np.array([[0, 1, 25, 26, 128, 229, 230, 254, 255]], np.uint8)
    hard = harden_map(teacher_map)
    assert hard.tolist() == [[0, 0, 0, 26, 128, 229, 255, 255, 255]]
    assert teacher_map.tolist() == [[0, 1, 25, 26, 128, 229, 230, 254, 255]]  # the input is kept
    # the same bounds as --max-unsure's: what map_doubt calls sure becomes 0 or 255
    assert not ((hard > 0) & (hard <= 25)).any() and not ((hard >= 230) & (hard < 255)).any()


def test_harden_teacher_hardens_teacher_targets_alone(tiny_teacher: Path, tmp_path: Path) -> None:
    import dataclasses

    labelled = make_dataset(tmp_path / "lab", 1)
    pair = dis5k.scan_pairs(labelled).pairs[0]
    teacher_map = tmp_path / "map.png"
    ramp = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))  # 0..252: sure, unsure and sure again
    cv2.imwrite(str(teacher_map), ramp)
    gt = cv2.imread(str(pair.mask), cv2.IMREAD_GRAYSCALE)
    unlabelled = dataclasses.replace(pair, mask=None, teacher=teacher_map)
    soft = dis5k.load_sample(unlabelled, 64)[..., 3]
    hard = dis5k.load_sample(dataclasses.replace(unlabelled, harden_teacher=True), 64)[..., 3]
    assert np.array_equal(soft, ramp) and np.array_equal(hard, harden_map(ramp))
    # blended with a mask, the teacher's share is hardened first; the mask itself is never touched
    both = dataclasses.replace(pair, teacher=teacher_map, teacher_weight=0.5, harden_teacher=True)
    assert np.array_equal(dis5k.load_sample(both, 64)[..., 3], blend_targets(gt, harden_map(ramp), 0.5))
    masked = dataclasses.replace(pair, teacher=teacher_map, harden_teacher=True)  # weight 0: the mask
    assert np.array_equal(dis5k.load_sample(masked, 64)[..., 3], gt)
    # the disk cache tells hard from soft where a teacher map is used, and only there
    name = dis5k._cache_name
    assert name(unlabelled, 64) != name(dataclasses.replace(unlabelled, harden_teacher=True), 64)
    assert name(pair, 64) == name(dataclasses.replace(pair, harden_teacher=True), 64)


def test_harden_teacher_is_recorded_and_needs_a_teacher(tiny_teacher: Path, tmp_path: Path) -> None:
    unlabelled = _unlabelled(tmp_path / "unl", 4)
    cfg = _cfg(tmp_path / "run", variant="pdseg-tiny", train_dir=unlabelled, teacher=tiny_teacher,
               harden_teacher=True)  # fmt: skip
    result = train(cfg)
    assert load_checkpoint(result.last).provenance["harden_teacher"] is True
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["harden_teacher"] is True
    with pytest.raises(InputError, match="--harden-teacher and --onnx-spec need --teacher"):
        _cfg(tmp_path / "bad", variant="pdseg-tiny", train_dir=unlabelled, harden_teacher=True).check()
    out = CliRunner().invoke(
        app,
        [
            "train",
            "--epochs",
            "1",
            "--train",
            str(unlabelled),
            "--harden-teacher",
            "--out",
            str(tmp_path / "cli"),
        ],
    )
    assert out.exit_code == 2 and "need --teacher" in out.output, out.output
    # a resume that would change the targets says the change as the flags are typed
    again = CliRunner().invoke(
        app, ["train", "--resume", "--out", str(tmp_path / "run"), "--no-harden-teacher"]
    )
    assert again.exit_code == 2 and "--harden-teacher -> --no-harden-teacher" in again.output, again.output


def test_map_doubt_judges_the_map_alone() -> None:
    side = 128  # the judging size: maps of this size are judged pixel by pixel
    few = np.zeros((side, side), np.uint8)
    few.flat[:163] = 255  # 163 / 16384 = 0.99% foreground: the teacher found no object
    assert map_doubt(few, 1.0) == NO_OBJECT
    few.flat[163] = 255  # 1.0%
    assert map_doubt(few, 0.0) is None
    half = np.zeros((side, side), np.uint8)
    half[: side // 2] = 255
    half.flat[:5734] = 100  # 5734 / 16384 = 34.998% unsure (100 is between 25 and 230)
    assert map_doubt(half, 0.35) is None
    half.flat[5734] = 26  # 35.004%
    assert map_doubt(half, 0.35) == UNSURE
    for bound in (25, 230):  # the bounds themselves are sure
        half.flat[5734] = bound
        assert map_doubt(half, 0.35) is None
    # judged on the area: 1-pixel stripes of 0 and 255 at 1024 average to 128, all unsure
    stripes = np.zeros((1024, 1024), np.uint8)
    stripes[:, ::2] = 255
    assert map_doubt(stripes, 0.99) == UNSURE


def test_max_unsure_leaves_out_doubtful_teacher_maps(tiny_teacher: Path, tmp_path: Path) -> None:
    labelled = make_dataset(tmp_path / "lab", 4)
    unlabelled = _unlabelled(tmp_path / "unl", 4)
    maps = TeacherMaps(tiny_teacher, tmp_path / "teacher-cache")
    disc = np.zeros((64, 64), np.uint8)
    cv2.circle(disc, (32, 32), 16, 255, -1)
    made = [np.zeros_like(disc), np.full_like(disc, 128), disc, 255 - disc]  # none, unsure, two sure
    for image, teacher_map in zip(sorted((unlabelled / "im").iterdir()), made, strict=True):
        maps.map_path(image).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(maps.map_path(image)), teacher_map)  # cached: the teacher never runs
    both = [labelled, unlabelled]
    cfg = _cfg(tmp_path / "run", variant="pdseg-tiny", train_dir=both, teacher=tiny_teacher, max_unsure=0.35)
    notices: list[str] = []
    result = train(
        cfg, on_event=lambda e: notices.append(e.values["message"]) if e.kind == "notice" else None
    )
    assert load_checkpoint(result.last).provenance["train_images"] == 6  # 4 labelled + 2 sure
    assert (
        "--max-unsure 0.35: left out 2 of the 4 images without masks (1 where the teacher found no object, 1 "
        in (" ".join(notices))
    ), notices
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["max_unsure"] == 0.35
    # nothing to leave out: said, so that silence is not read as the option ignored
    sure = tmp_path / "sure"
    (sure / "im").mkdir(parents=True)
    for image in sorted((unlabelled / "im").iterdir())[2:]:
        (sure / "im" / image.name).write_bytes(image.read_bytes())  # the same content: the sure maps
    said: list[str] = []
    train(
        _cfg(
            tmp_path / "sure-run",
            variant="pdseg-tiny",
            train_dir=[sure],
            teacher=tiny_teacher,
            max_unsure=0.35,
        ),
        on_event=lambda e: said.append(e.values["message"]) if e.kind == "info" else None,
    )
    assert any(
        "--max-unsure 0.35: the teacher's maps of all 2 images without masks are confident; none left out"
        in m
        for m in said
    ), said
    # the first two photos again (same content, so the same cached maps): none is sure
    doubtful = _unlabelled(tmp_path / "doubtful", 2)
    with pytest.raises(DataError, match="--max-unsure 0.35 leaves none of the 2 training images") as err:
        train(
            _cfg(
                tmp_path / "none",
                variant="pdseg-tiny",
                train_dir=doubtful,
                teacher=tiny_teacher,
                max_unsure=0.35,
            )
        )
    assert "(1 where the teacher found no object, 1 where over 35% of its map is unsure)" in str(err.value)
    assert err.value.hint is not None and err.value.hint.startswith("raise --max-unsure")
    # the labelled folder alone with --teacher-weight 0: nothing for the teacher to do, and it says so
    notices.clear()
    only = _cfg(tmp_path / "lab-run", variant="pdseg-tiny", train_dir=[labelled], teacher=tiny_teacher)
    train(only, on_event=lambda e: notices.append(e.values["message"]) if e.kind == "notice" else None)
    assert any("the teacher is not used" in n for n in notices), notices


def test_init_takes_the_variant_from_the_file_and_names_conflicts(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "lab", 4)
    start = create_model("pdseg-tiny")
    start.normalization = {"color": "RGB", "scale": 255.0, "mean": (120.0,) * 3, "std": (60.0,) * 3}
    ckpt = tmp_path / "start.pt"
    save_checkpoint(start, ckpt, train_size=64, data="somewhere")
    with pytest.raises(InputError) as info:
        train(_cfg(tmp_path / "bad", variant="pdseg-t", train_dir=data, init=ckpt))
    assert "conflicts with --init" in info.value.message and "pdseg-tiny" in info.value.message
    result = train(_cfg(tmp_path / "run", train_dir=data, init=ckpt, lr=1e-9, ema_decay=0.0))
    loaded = load_checkpoint(result.last)
    assert loaded.variant == "pdseg-tiny" and loaded.normalization["mean"] == [120.0] * 3
    assert loaded.provenance["init"]["provenance"]["data"] == "somewhere"
    assert loaded.provenance["init"]["path"] == str(ckpt.resolve())  # absolute: followed from anywhere
    # lr ~0: the weights are the starting weights (same up to fp16 storage)
    key = next(k for k in loaded.state_dict if k.startswith("encoder.") and k.endswith("weight"))
    assert torch.allclose(loaded.state_dict[key].float(), start.state_dict()[key], atol=1e-3)


def test_cli_train_help_and_init_errors(tmp_path: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "200"})
    shown = runner.invoke(app, ["train", "--help"])
    assert "--teacher" in shown.output and "--init" in shown.output and "--teacher-weight" in shown.output
    bad = runner.invoke(
        app, ["train", "-e", "1", "--init", str(tmp_path / "none.pt"), "-o", str(tmp_path / "r")]
    )
    assert bad.exit_code == 2 and "none.pt" in bad.output and "Traceback" not in bad.output
    weight = runner.invoke(app, ["train", "-e", "1", "--teacher-weight", "0.5", "-o", str(tmp_path / "r")])
    assert weight.exit_code == 2 and "need --teacher" in weight.output
    ckpt = tiny_checkpoint(tmp_path / "t.pt")
    out = ["-o", str(tmp_path / "r")]
    init = ["--init", str(ckpt), "--backbone-weights", str(ckpt)]
    both = runner.invoke(app, ["train", "-e", "1", *init, *out])
    assert both.exit_code == 2 and "--init and --backbone-weights exclude each other" in both.output
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text('{"train": {"epochs": 1}}')
    run = ["-o", str(tmp_path / "run")]
    resumed = runner.invoke(app, ["train", "-e", "2", "--resume", "--init", str(ckpt), *run])
    assert resumed.exit_code == 2 and "drop --init to resume" in resumed.output


# ----------------------------------------------------------------------------------------------
# the real ISNet teacher, where it has been fetched (../shared/tools/get-isnet-teacher.sh)


@pytest.mark.slow
def test_isnet_teacher_on_davis16_eval(shared_data: Path, tmp_path: Path) -> None:
    isnet = Path(os.environ.get("PDSEG_ISNET", "isnet.onnx"))
    if not isnet.is_file():
        pytest.skip("set PDSEG_ISNET to the ISNet .onnx file")
    out = tmp_path / "isnet.json"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--split",
            str(shared_data / "davis16-eval"),
            "-w",
            str(isnet),
            "--json",
            str(out),
            "--no-cache",
        ],
    )
    assert result.exit_code == 0, result.output
    row = next(iter(json.loads(out.read_text())["splits"].values()))
    assert row["maxF"] > 0.8


# ----------------------------------------------------------------------------------------------
# a final map that cannot say "foreground" is named, not shipped silently


def test_final_map_ceiling_and_the_training_warning(tmp_path: Path) -> None:
    from pdseg_cli.model.pdseg import final_map_ceiling

    model = create_model("pdseg-tiny")
    classifier = model.decoder.levels[-1].classifier
    with torch.no_grad():
        classifier.weight.copy_(-classifier.weight.abs() - 0.01)  # the 0.1 demo weights' state
        classifier.bias.fill_(0.54)
    assert final_map_ceiling(model) == pytest.approx(1 / (1 + np.exp(-0.54)), abs=1e-6)
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64) * 3
        assert torch.sigmoid(model.eval()(x)).max() <= final_map_ceiling(model) + 1e-6
        classifier.weight[0, 0] = 0.5
    assert final_map_ceiling(model) is None
    # a run whose final level is in that state says so at every epoch end
    with torch.no_grad():
        classifier.weight.copy_(-classifier.weight.abs() - 0.01)
    start = tmp_path / "dead.pt"
    save_checkpoint(model, start, train_size=64)
    notices: list[str] = []
    data = make_dataset(tmp_path / "lab", 4)
    train(
        _cfg(tmp_path / "run", train_dir=data, init=start, lr=1e-9, ema_decay=0.0),
        on_event=lambda e: notices.append(e.values.get("message", "")) if e.kind == "notice" else None,
    )
    assert any("the final map cannot exceed p = 0.63 (byte 161)" in n for n in notices), notices


def test_a_teacher_folder_is_called_a_folder(tmp_path: Path) -> None:
    # the same check and words as --weights: a folder's model files are named
    with pytest.raises(WeightsError, match="--teacher .* is a folder, not a file") as err:
        TeacherMaps(tmp_path, tmp_path / "cache")
    assert err.value.hint == (
        "give the model file itself (.pt, .pth, .ckpt, .onnx, .ts, .torchscript, .jit), not its folder"
    )
    (tmp_path / "isnet.onnx").write_bytes(b"onnx")
    with pytest.raises(WeightsError, match="is a folder") as err:
        TeacherMaps(tmp_path, tmp_path / "cache")
    assert err.value.hint == f"it holds isnet.onnx: give one, e.g. {tmp_path / 'isnet.onnx'}"
    with pytest.raises(WeightsError, match="does not exist"):
        TeacherMaps(tmp_path / "isnet.onxx", tmp_path / "cache")


def _graph(path: Path, dims: list[int | str], maps: int = 1) -> Path:
    """A per-pixel graph whose one output "m" holds ``maps`` maps: sigmoid(w_k . x), k < maps."""
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    w = [0.5 * (k + 1) * v for k in range(maps) for v in (1.0, -1.0, 0.5)]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [maps, 3, 1, 1], w)]
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"]), helper.make_node("Sigmoid", ["z"], ["m"])]
    out = helper.make_tensor_value_info("m", TensorProto.FLOAT, [dims[0], maps, dims[2], dims[3]])
    model = helper.make_model(
        helper.make_graph(nodes, "g", [inp], [out], initializer=inits),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_an_output_of_several_maps_needs_a_channel(tmp_path: Path, photo: np.ndarray) -> None:
    # channel 0 of a (background, foreground) softmax was read in silence: an inverted mask
    two = _graph(tmp_path / "two.onnx", [1, 3, 32, 32], maps=2)
    with pytest.raises(WeightsError) as info:
        Predictor(two, device="cpu", onnx_spec="kind=probability")
    assert "output 'm' holds 2 maps" in info.value.message and "channel=1" in (info.value.hint or "")
    with pytest.raises(InputError, match="has 2 map"):
        Predictor(two, device="cpu", onnx_spec="channel=2")
    second = Predictor(two, device="cpu", onnx_spec="channel=1,mean=0,std=1,scale=1")
    assert "channel 1" in second.description
    x = cv2.resize(photo.astype(np.float32), (32, 32), interpolation=cv2.INTER_LINEAR) / 255.0
    session = ort.InferenceSession(str(two), providers=["CPUExecutionProvider"])
    (maps,) = session.run(["m"], {"x": x.transpose(2, 0, 1)[None]})
    second_map = torch.from_numpy(maps[:, 1:2])
    up = F.interpolate(second_map, size=photo.shape[:2], mode="bilinear", align_corners=False)
    want = (up[0, 0] * 255.0).to(torch.uint8).numpy()
    assert np.abs(second.predict(photo).astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("dims", "words"),
    [
        ([1, 3, 32, 48], "takes only 32x48 inputs"),
        ([2, 3, 32, 32], "batches of exactly 2"),
    ],
)
def test_inputs_pdseg_cannot_feed_are_refused_in_one_line(tmp_path: Path, dims: list, words: str) -> None:
    # they failed inside onnxruntime at the first image, with a traceback
    with pytest.raises(WeightsError, match=words.replace("?", r"\?")):
        Predictor(_graph(tmp_path / "g.onnx", dims), device="cpu", onnx_spec="kind=probability")


def test_bgr_mean_and_std_are_given_in_rgb_order() -> None:
    from pdseg_cli.data import transforms as T
    from pdseg_cli.engine.onnx_spec import Signature, resolve_spec

    # the help says R:G:B; with color=bgr they were applied in the graph's B:G:R order
    sig = Signature("x", (1, 3, 32, 32), (("m", (1, 1, 32, 32)),))
    for text in ("color=bgr,mean=10:20:30,std=1:2:4", "mean=10:20:30,std=1:2:4,color=bgr,scale=255"):
        spec = resolve_spec(sig, text, "g.onnx")
        assert spec.mean == (30.0, 20.0, 10.0) and spec.std == (4.0, 2.0, 1.0)
    pixel = np.array([[[100.0, 50.0, 40.0]]], np.float32)  # R, G, B
    got = T.normalize(
        pixel, resolve_spec(sig, "color=bgr,mean=10:20:30,std=1:2:4,scale=255", "g").normalization
    )
    np.testing.assert_allclose(got[0, 0], [(40 - 30) / 4, (50 - 20) / 2, (100 - 10) / 1])  # B, G, R
    # a mean left out keeps the default's colours: ImageNet's red mean stays on red
    default = resolve_spec(sig, "color=bgr", "g.onnx")
    assert default.mean == (0.406, 0.456, 0.485) and default.std == (0.225, 0.224, 0.229)


def test_info_takes_an_onnx_spec_and_shows_how_the_model_runs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pdseg_cli.cli import app

    # info's refusal said to pass --onnx-spec, an option info did not have; its rows showed RGB
    # 0..255 whatever the spec said
    two = _graph(tmp_path / "two.onnx", ["B", 3, "H", "W"], maps=2)
    runner = CliRunner(env={"COLUMNS": "300"})
    refused = runner.invoke(app, ["info", str(two)])
    assert refused.exit_code == 2 and "--onnx-spec" in refused.output
    shown = runner.invoke(app, ["info", str(two), "--onnx-spec", "channel=1,color=bgr,scale=1"])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert (
        "any size BGR, (x on 0..1 - R:G:B 0.485:0.456:0.406) / 0.229:0.224:0.225, output #0 channel 1" in text
    )
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    checkpoint = runner.invoke(app, ["info", str(ckpt), "--onnx-spec", "size=64"])
    assert checkpoint.exit_code == 2 and "--onnx-spec is for foreign ONNX models" in checkpoint.output


def test_a_batch_fixed_at_one_runs_image_by_image(tmp_path: Path, photo: np.ndarray) -> None:
    # a dynamic-size graph with its batch fixed at 1 failed in onnxruntime with --batch 2
    one = _graph(tmp_path / "one.onnx", [1, 3, "H", "W"])
    predictor = Predictor(one, device="cpu", size=64, onnx_spec="kind=probability")
    maps = predictor.predict_batch([photo, photo[::-1]], batch=2)
    assert [m.shape for m in maps] == [photo.shape[:2]] * 2
    np.testing.assert_array_equal(maps[0], predictor.predict(photo))
