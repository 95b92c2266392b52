"""ONNX and TorchScript files pdseg cannot run: refused at load in one line, or, when the graph
fails only while running, one line naming the file, the input and onnxruntime's reason.

Every graph is a tiny one built here with the ``onnx`` helper API, as in test_distill.py.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import flat, make_dataset, run_cli, tiny_checkpoint

from pdseg_cli.engine.onnx_backend import ModelRunError, load_exported
from pdseg_cli.engine.onnx_spec import Signature, resolve_spec
from pdseg_cli.engine.predict import Predictor
from pdseg_cli.errors import WeightsError, clip_words

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402
from test_distill import _foreign_onnx, _graph  # noqa: E402

SPEC = "size=32,mean=0.5,std=1,scale=1,output=0,kind=probability"
FEEDS = "pdseg feeds one float32 (or float16) image tensor"


def _save(path: Path, nodes: list, inputs: list, outputs: list, inits: list | None = None) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _typed_input(path: Path, elem: int) -> Path:
    """A 1x3x32x32 graph whose input is of element type ``elem``, cast to float inside."""
    x = helper.make_tensor_value_info("x", elem, [1, 3, 32, 32])
    out = helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 1, 32, 32])
    nodes = [
        helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["r"], axes=[1], keepdims=1),
        helper.make_node("Sigmoid", ["r"], ["m"]),
    ]
    return _save(path, nodes, [x], [out])


def _two_inputs(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])
    out = helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 3, 32, 32])
    nodes = [helper.make_node("Add", ["x", "z"], ["a"]), helper.make_node("Sigmoid", ["a"], ["m"])]
    return _save(path, nodes, [x, z], [out])


def _width_64_only(path: Path) -> Path:
    """A dynamic-size graph that runs only on inputs 64 pixels wide: it adds a (1, 1, 1, 64) bias,
    which onnxruntime cannot broadcast onto another width (a size fixed inside a graph, as a bad
    Reshape fixes one)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, "H", "W"])
    out = helper.make_tensor_value_info("m", TensorProto.FLOAT, ["B", 1, "H", "W"])
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [1, 1, 1, 64], [0.0] * 64)
    nodes = [
        helper.make_node("Add", ["x", "bias"], ["a"]),
        helper.make_node("ReduceMean", ["a"], ["r"], axes=[1], keepdims=1),
        helper.make_node("Sigmoid", ["r"], ["m"]),
    ]
    return _save(path, nodes, [x], [out], [bias])


# ----------------------------------------------------------------------------------------------
# inputs pdseg cannot feed: refused at load (audit 1, 2)


@pytest.mark.parametrize(("elem", "name"), [(TensorProto.UINT8, "uint8"), (TensorProto.INT64, "int64")])
def test_an_input_of_another_type_is_refused_at_load(tmp_path: Path, elem: int, name: str) -> None:
    # it loaded, then failed at the first image with onnxruntime's INVALID_ARGUMENT and a traceback
    path = _typed_input(tmp_path / f"{name}.onnx", elem)
    for spec in (SPEC, None):  # with --onnx-spec, and without: no "--onnx-spec" hint, which cannot help
        with pytest.raises(WeightsError) as info:
            Predictor(path, device="cpu", onnx_spec=spec)
        assert f"cannot run in pdseg: its input 'x' is {name}; {FEEDS}" in info.value.message
        assert "--onnx-spec" not in (info.value.hint or "") and "float32 image input" in (
            info.value.hint or ""
        )


def test_a_map_output_of_strings_is_refused_at_load(tmp_path: Path) -> None:
    # it loaded, then its first image stopped the run with "TypeError: can't convert np.ndarray of
    # type numpy.object_" and a traceback
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
    words = helper.make_tensor_value_info("y", TensorProto.STRING, [1, 1, 32, 32])
    mask = helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 1, 32, 32])
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["r"], axes=[1], keepdims=1),
        helper.make_node("Cast", ["r"], ["y"], to=TensorProto.STRING),
        helper.make_node("Sigmoid", ["r"], ["m"]),
    ]
    path = _save(tmp_path / "words.onnx", nodes, [x], [words, mask])
    with pytest.raises(WeightsError) as info:
        Predictor(path, device="cpu", onnx_spec=SPEC.replace("output=0", "output=y"))
    assert info.value.message == f"{path}: its output 'y' holds string, not a map of numbers"
    assert info.value.hint == "choose another with --onnx-spec output=NAME: m (float32)"


def test_a_boolean_map_output_still_runs(tmp_path: Path) -> None:
    # a thresholded mask: read as 0 and 1, as before the check of the output's type
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
    mask = helper.make_tensor_value_info("m", TensorProto.BOOL, [1, 1, 32, 32])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.5])
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["r"], axes=[1], keepdims=1),
        helper.make_node("Greater", ["r", "zero"], ["m"]),
    ]
    path = _save(tmp_path / "bool.onnx", nodes, [x], [mask], [zero])
    predictor = Predictor(path, device="cpu", onnx_spec=SPEC)
    assert set(np.unique(predictor.predict(np.full((32, 32, 3), 255, np.uint8)))) <= {0, 254, 255}


def test_a_second_input_is_refused_at_load_with_every_input_named(tmp_path: Path) -> None:
    # it failed at the first image with "ValueError: Required inputs (['z']) are missing"
    path = _two_inputs(tmp_path / "two.onnx")
    for spec in (SPEC, None):
        with pytest.raises(WeightsError) as info:
            load_exported(path, onnx_spec=spec)
        assert f"takes 2 inputs ('x' 1x3x32x32, 'z' 1); {FEEDS}" in info.value.message
        assert "--onnx-spec" not in (info.value.hint or "")


def test_a_float16_input_still_loads(tmp_path: Path) -> None:
    path = _typed_input(tmp_path / "half.onnx", TensorProto.FLOAT16)
    model = load_exported(path, onnx_spec=SPEC)
    assert model.signature().input_type == "float16"  # type: ignore[union-attr]


def test_the_signature_names_every_input_and_types_other_than_float32() -> None:
    # the "matches no known model" line showed the first input alone, and no element type
    sig = Signature(
        "x",
        (1, 3, 320, 320),
        (("m", (1, 1, 320, 320)),),
        input_type="uint8",
        other_inputs=(("z", (1,), "float32"), ("k", (1,), "int64")),
    )
    assert (
        sig.text() == "input 'x' 1x3x320x320 uint8, input 'z' 1, input 'k' 1 int64, outputs 'm' 1x1x320x320"
    )
    with pytest.raises(WeightsError, match="takes 3 inputs"):
        resolve_spec(sig, None, "m.onnx")
    plain = Signature("x", (1, 3, 320, 320), (("m", (1, 1, 320, 320)),))
    assert plain.text() == "input 'x' 1x3x320x320, outputs 'm' 1x1x320x320"


def test_info_does_not_describe_a_model_it_cannot_run(tmp_path: Path) -> None:
    path = _typed_input(tmp_path / "u8.onnx", TensorProto.UINT8)
    result = run_cli("info", path, "--onnx-spec", SPEC, columns=250)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "cannot run in pdseg" in flat(result.output) and "run as" not in result.output


def test_an_unknown_models_signature_keeps_the_onnx_spec_hint(tmp_path: Path) -> None:
    path = _foreign_onnx(tmp_path / "f.onnx", 48)
    with pytest.raises(WeightsError) as info:
        load_exported(path)
    assert "input 'pixels' 1x3x48x48, outputs 'a' 1x1x48x48, 'b' 1x1x48x48" in info.value.message
    assert "--onnx-spec" in (info.value.hint or "")


# ----------------------------------------------------------------------------------------------
# a graph that fails while running (audit 1)


def test_a_graph_failing_at_run_time_is_one_model_run_error(tmp_path: Path) -> None:
    path = _width_64_only(tmp_path / "w64.onnx")
    predictor = Predictor(path, device="cpu", size="full", onnx_spec="size=dynamic,kind=probability")
    assert predictor.predict(np.zeros((20, 64, 3), np.uint8)).shape == (20, 64)
    with pytest.raises(ModelRunError) as info:
        predictor.predict(np.zeros((20, 50, 3), np.uint8))
    message = info.value.message
    assert f"{path} failed in onnxruntime on a 1x3x20x50 input: its Add node" in message
    assert "\n" not in message and "[ONNXRuntimeError]" not in message and "onnxruntime_src" not in message
    assert "--onnx-spec size=N" in (info.value.hint or "")


def _images(folder: Path, widths: list[int]) -> Path:
    folder.mkdir()
    for k, width in enumerate(widths):
        cv2.imwrite(str(folder / f"i{k}.png"), np.full((20, width, 3), 40 * k, np.uint8))
    return folder


def test_the_cli_says_a_run_time_failure_in_one_line(tmp_path: Path) -> None:
    path = _width_64_only(tmp_path / "w64.onnx")
    images = _images(tmp_path / "im", [50])
    args = ["-w", path, "--onnx-spec", "size=dynamic,kind=probability", "--size", "full"]
    result = run_cli("predict", images, "-o", tmp_path / "out", *args, columns=300)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "failed in onnxruntime on a 1x3x20x50 input" in flat(result.output)
    assert "[E:onnxruntime" not in result.output  # onnxruntime's own log line of the failure


def test_a_run_time_failure_fails_that_image_and_the_run_goes_on(tmp_path: Path) -> None:
    path = _width_64_only(tmp_path / "w64.onnx")
    images = _images(tmp_path / "im", [50, 64])  # i0 fails, i1 runs
    args = ["-w", path, "--onnx-spec", "size=dynamic,kind=probability", "--size", "full"]
    result = run_cli("predict", images, "-o", tmp_path / "out", *args, columns=300)
    assert result.exit_code == 1, result.output
    assert "i0" in result.output and "failed in onnxruntime" in flat(result.output)
    assert (tmp_path / "out" / "i1.png").is_file() and not (tmp_path / "out" / "i0.png").exists()


def test_eval_ends_a_run_time_failure_in_one_line(tmp_path: Path) -> None:
    split = make_dataset(tmp_path / "set", 2, size=40)
    path = _width_64_only(tmp_path / "w64.onnx")
    args = ["--split", split, "--jobs", "1", "--no-cache", "-w", path, "--onnx-spec", "size=dynamic"]
    result = run_cli("eval", *args, "--size", "full", columns=300)
    assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output
    assert "failed in onnxruntime on a 1x3x40x40 input" in flat(result.output)
    # the reason once for the images it failed on, not once per image
    assert flat(result.output).count("failed in onnxruntime") == 1
    assert "2 GT masks without a prediction: 2 images (" in flat(result.output)


# ----------------------------------------------------------------------------------------------
# files that are not a model at all (audit 5)


def _pdseg_onnx(tmp_path: Path) -> bytes:
    from pdseg_cli.engine.export import export_checkpoint

    out = tmp_path / "tiny.onnx"
    export_checkpoint(tiny_checkpoint(tmp_path / "tiny.pt"), out, "onnx", check=False)
    return out.read_bytes()


@pytest.mark.parametrize("suffix", [".onnx", ".ts"])
def test_unreadable_exports_say_what_the_file_is(tmp_path: Path, suffix: str) -> None:
    what = "an ONNX model" if suffix == ".onnx" else "a TorchScript file"
    empty = tmp_path / f"empty{suffix}"
    empty.write_bytes(b"")
    photo = tmp_path / f"photo{suffix}"
    photo.write_bytes(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    text = tmp_path / f"notes{suffix}"
    text.write_text("<html>404 not found</html>\n")
    cases = {
        empty: ("is empty (0 bytes)", "interrupted"),
        photo: (f"is an image, not {what}", "give the model file"),
        text: (f"is not {what} (it holds text)", "check the path"),
    }
    for path, (words, hint) in cases.items():
        with pytest.raises(WeightsError) as info:
            load_exported(path)
        assert f"{path} {words}" in info.value.message, info.value.message
        assert hint in (info.value.hint or "") and "export it again" not in (info.value.hint or "")


def test_a_truncated_onnx_file_is_called_truncated(tmp_path: Path) -> None:
    whole = _pdseg_onnx(tmp_path)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(WeightsError) as info:
        load_exported(cut)
    assert "is truncated or damaged (Protobuf parsing failed)" in info.value.message
    assert info.value.hint == "download, copy or export it again"


def test_a_truncated_torchscript_file_is_called_truncated(tmp_path: Path) -> None:
    from pdseg_cli.engine.export import export_checkpoint

    out = tmp_path / "tiny.ts"
    export_checkpoint(tiny_checkpoint(tmp_path / "tiny.pt"), out, "torchscript", check=False)
    whole = out.read_bytes()
    out.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(WeightsError) as info:
        load_exported(out)
    assert "is truncated or damaged" in info.value.message and "…" not in info.value.message


def test_a_graph_onnxruntime_refuses_quotes_its_reason_whole_words(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    path = _save(tmp_path / "op.onnx", [helper.make_node("Frobnicate", ["x"], ["y"])], [x], [y])
    with pytest.raises(WeightsError) as info:
        load_exported(path)
    assert "cannot be loaded" in info.value.message and "Frobnicate" in info.value.message
    assert "[ONNXRuntimeError]" not in info.value.message


def test_clip_words_cuts_at_a_word_with_an_ellipsis() -> None:
    text = "PytorchStreamReader failed reading zip archive: not a ZIP archive " * 5
    clipped = clip_words(text, 60)
    assert len(clipped) <= 60 and clipped.endswith("…")
    assert text.startswith(clipped[:-1]) and text[len(clipped) - 1] == " "  # cut where a word ended
    assert clip_words("short", 60) == "short"


# ----------------------------------------------------------------------------------------------
# a pdseg export whose metadata was stripped (audit 6)


def test_a_pdseg_export_without_metadata_runs_as_one_and_asks_for_size(tmp_path: Path) -> None:
    whole = tmp_path / "whole.onnx"
    whole.write_bytes(_pdseg_onnx(tmp_path))
    proto = onnx.load(str(whole))
    del proto.metadata_props[:]
    stripped = tmp_path / "stripped.onnx"
    onnx.save(proto, str(stripped))
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    by_export = Predictor(whole, device="cpu", size=64)
    by_signature = Predictor(stripped, device="cpu", size=64)
    assert "pdseg export without metadata" in by_signature.description
    np.testing.assert_array_equal(by_export.predict(image), by_signature.predict(image))
    assert Predictor(stripped, device="cpu").size_note == (
        "the model file records no training size: 1024 assumed, pass --size"
    )
    assert (
        Predictor(whole, device="cpu").size_note
        == "the export records no training size: 1024 assumed, pass --size"
    )


def test_a_foreign_models_size_note_does_not_say_checkpoint(tmp_path: Path) -> None:
    path = _graph(tmp_path / "g.onnx", ["B", 3, "H", "W"])
    assert "checkpoint" not in Predictor(path, device="cpu", onnx_spec="kind=probability").size_note


def _one_at_a_time(path: Path) -> Path:
    """A graph that declares any batch but runs on one image only: a Reshape to (1, C, H, W)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, "H", "W"])
    out = helper.make_tensor_value_info("m", TensorProto.FLOAT, ["B", 1, "H", "W"])
    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [1, 0, 0, 0])  # 0: the input's own
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["one"]),
        helper.make_node("ReduceMean", ["one"], ["r"], axes=[1], keepdims=1),
        helper.make_node("Sigmoid", ["r"], ["m"]),
    ]
    return _save(path, nodes, [x], [out], [shape])


def test_a_graph_of_one_image_at_a_time_runs_a_batch_image_by_image(tmp_path: Path) -> None:
    # every image of a --batch 4 group failed with the same line, and nothing said --batch
    path = _one_at_a_time(tmp_path / "one.onnx")
    images = _images(tmp_path / "im", [64, 64, 64, 50])  # three of one size share a batch
    args = ["-w", path, "--onnx-spec", "size=dynamic,kind=probability", "--size", "full", "--batch", "4"]
    result = run_cli("predict", images, "-o", tmp_path / "out", *args, columns=300)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["i0.png", "i1.png", "i2.png", "i3.png"]


# ----------------------------------------------------------------------------------------------
# onnxruntime-gpu without its CUDA libraries: a CPU session, refused rather than reported as cuda


def test_a_cuda_session_that_fell_back_to_the_cpu_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    from pdseg_cli.errors import NotAvailableError

    path = _typed_input(tmp_path / "m.onnx", TensorProto.FLOAT)
    real = ort.InferenceSession
    asked: list[object] = []

    def without_cuda_libraries(
        file: str, sess_options: object = None, providers: list | None = None
    ) -> object:
        # what onnxruntime-gpu does when libcudnn or libcublas cannot be loaded: a CPU session
        asked.append(providers)
        return real(file, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(ort, "InferenceSession", without_cuda_libraries)
    monkeypatch.setattr(ort, "cuda_version", "12.8", raising=False)
    with pytest.raises(NotAvailableError) as caught:
        load_exported(path, device="cuda:1", onnx_spec=SPEC)
    assert asked == [[("CUDAExecutionProvider", {"device_id": 1})]]
    text = str(caught.value)
    assert "could not start CUDAExecutionProvider on cuda:1" in text and "built for CUDA 12.8" in text
    assert "run on CPUExecutionProvider" in text and "CUDA 12 and cuDNN" in text and "--device cpu" in text
    assert "\n" not in text
    # the CPU asked for is the CPU got: loads as before
    assert load_exported(path, device="cpu", onnx_spec=SPEC) is not None


def test_a_session_on_the_provider_asked_for_is_kept() -> None:
    from types import SimpleNamespace

    import onnxruntime as ort

    from pdseg_cli.engine.onnx_backend import _refuse_provider_fallback

    on_gpu = SimpleNamespace(get_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    asked = [("CUDAExecutionProvider", {"device_id": 0})]
    _refuse_provider_fallback(ort, on_gpu, asked, torch.device("cuda"))  # no error
