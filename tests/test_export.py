"""`pdseg export`: ONNX and TorchScript files that match PyTorch at any shape, and carry their metadata.

All on pdseg-tiny (random weights, classifiers re-drawn with std 1 so the logits span about -12..+2
instead of sitting at 0) at small shapes; the whole file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import EXAMPLE_IMAGES, dead_pid, flat, no_space, run_cli, textured_image, tiny_checkpoint

from pdseg_cli.config import NORMALIZATION
from pdseg_cli.data import atomic
from pdseg_cli.engine import export as export_mod
from pdseg_cli.engine.export import ExportCheckError, ExportWriteError, export_checkpoint, parse_shape
from pdseg_cli.engine.onnx_backend import OnnxModel, TorchScriptModel, detect_format, load_exported
from pdseg_cli.errors import InputError, NotAvailableError
from pdseg_cli.model import PDSeg, load_model, save_checkpoint

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SMALL_CHECKS = [(1, 3, 64, 64), (2, 3, 72, 100)]
# batch 2 and 3, sides multiple of 32 and not (45, 70, 33, 130), one not even a multiple of 4
DYNAMIC_SHAPES = [(2, 3, 96, 160), (1, 3, 70, 45), (3, 3, 33, 130)]
TRAIN_SIZE = 256


def _probs(model: PDSeg, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.sigmoid(model(x))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return tiny_checkpoint(path, train_size=TRAIN_SIZE, classifier_std=1.0)


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> PDSeg:
    return load_model(checkpoint)


@pytest.fixture(scope="module")
def onnx_file(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    report = export_checkpoint(checkpoint, out, "onnx", check_shapes=SMALL_CHECKS)
    assert report.ok and len(report.checks) == 2
    return out


@pytest.fixture(scope="module")
def torchscript_file(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ts") / "tiny.torchscript"
    report = export_checkpoint(checkpoint, out, "torchscript", check_shapes=SMALL_CHECKS[1:])
    assert report.ok
    return out


def test_onnx_export_writes_only_the_checked_file(onnx_file: Path) -> None:
    assert onnx_file.is_file()
    assert [p.name for p in onnx_file.parent.iterdir()] == [onnx_file.name]  # no temporary left
    assert detect_format(onnx_file) == "onnx"


@pytest.mark.parametrize("shape", DYNAMIC_SHAPES)
def test_onnx_matches_pytorch_at_other_shapes(onnx_file: Path, model: PDSeg, shape: tuple[int, ...]) -> None:
    exported = OnnxModel(onnx_file)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits = model(x)
    probs, got_logits = exported.outputs(x)
    assert probs.shape == got_logits.shape == (shape[0], 1, *shape[2:])
    assert (probs - torch.sigmoid(logits)).abs().max() <= 1e-4
    # the logits output is exact too (not recovered from rounded probabilities)
    assert torch.allclose(got_logits, logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(exported(x), got_logits)


def test_onnx_metadata_round_trip(onnx_file: Path, model: PDSeg, checkpoint: Path) -> None:
    from pdseg_cli.data.teacher import file_sha256

    exported = load_exported(onnx_file)
    assert isinstance(exported, OnnxModel)
    meta = exported.metadata
    assert meta.variant == "pdseg-tiny" == exported.variant
    assert exported.config == model.config.to_dict()
    assert exported.train_size == TRAIN_SIZE
    assert exported.normalization["mean"] == pytest.approx(NORMALIZATION["mean"])
    assert exported.normalization["std"] == pytest.approx(NORMALIZATION["std"])
    assert (meta.output, meta.outputs) == ("probabilities", ("probabilities", "logits"))
    assert (meta.precision, meta.opset) == ("fp32", 18)
    assert meta.pdseg_version
    # plain ONNX tools see the same keys
    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert props["variant"] == "pdseg-tiny" and props["output"] == "probabilities" and props["opset"] == "18"
    # what a deployer needs besides the numbers: where the weights came from, and pdseg's own rules
    assert props["source"] == checkpoint.name and props["source_sha256"] == file_sha256(checkpoint)
    assert "bilinear" in props["resize"] and "floor(255 * sigmoid)" in props["maps"]


def test_onnx_graph_is_deterministic(onnx_file: Path) -> None:
    ops = {node.op_type for node in onnx.load(str(onnx_file)).graph.node}
    assert not {op for op in ops if op.startswith("Random")}, "the eval graph must use the fixed NMF bases"
    assert "Loop" not in ops
    x = torch.randn(2, 3, 64, 96)
    first = OnnxModel(onnx_file)(x)
    assert torch.equal(first, OnnxModel(onnx_file)(x))  # a fresh session
    assert torch.equal(first, OnnxModel(onnx_file)(x.clone()))


def test_torchscript_matches_pytorch_and_carries_metadata(torchscript_file: Path, model: PDSeg) -> None:
    assert detect_format(torchscript_file) == "torchscript"
    exported = load_exported(torchscript_file)
    assert isinstance(exported, TorchScriptModel)
    for shape in DYNAMIC_SHAPES[1:]:  # batch 1 and 3; sides not multiples of 32
        x = torch.randn(shape)
        probs, logits = exported.outputs(x)
        with torch.inference_mode():
            expected = model(x)
        assert (probs - torch.sigmoid(expected)).abs().max() <= 1e-4
        assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-4)
    assert exported.variant == "pdseg-tiny"
    assert exported.train_size == TRAIN_SIZE
    assert exported.metadata.opset is None and exported.metadata.output == "probabilities"
    # the plain TorchScript module returns probabilities and has a logits method
    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; it still loads
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(torchscript_file))
    x = torch.randn(1, 3, 40, 72)
    assert torch.allclose(torch.sigmoid(module.logits(x)), module(x), atol=1e-6)
    # an inference file: a plain call builds no autograd graph (memory), and .numpy() works
    assert not any(p.requires_grad for p in module.parameters())
    assert not module(x).requires_grad and module(x).numpy().shape == (1, 1, 40, 72)


def test_half_onnx_keeps_nmf_in_fp32_and_stays_finite(checkpoint: Path, model: PDSeg, tmp_path: Path) -> None:
    out = tmp_path / "tiny-fp16.onnx"
    report = export_checkpoint(checkpoint, out, "onnx", half=True, check_shapes=SMALL_CHECKS[1:])
    assert report.ok and report.metadata.precision == "fp16"
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(out))).graph
    elem = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    elem.update({init.name: init.data_type for init in graph.initializer})
    fp32, fp16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]  # all of them are the NMF's
    assert matmuls and all(elem[i] == fp32 for n in matmuls for i in n.input)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(elem[n.input[1]] == fp16 for n in convs)
    assert elem["input"] == fp32 and elem["probabilities"] == fp32
    x = torch.randn(2, 3, 96, 128) * 3  # larger activations than the check's
    probs = OnnxModel(out).probabilities(x)
    assert torch.isfinite(probs).all()
    assert (probs - _probs(model, x)).abs().max() <= export_mod.FP16_TOLERANCE
    # predict reports the file's own precision, and says when --precision cannot apply
    from pdseg_cli.engine.predict import Predictor

    assert Predictor(out, device="cpu").precision == "fp16"
    asked = Predictor(out, device="cpu", precision="fp32")
    assert asked.precision == "fp16"
    assert any("--precision fp32 ignored: tiny-fp16.onnx runs at the precision it was exported in" in n
               for n in asked.notes)  # fmt: skip


def test_failed_check_keeps_the_old_file(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous export")
    real_outputs = OnnxModel.outputs

    def drifted(self: OnnxModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs, logits = real_outputs(self, x)
        return (probs + 1e-3).clamp(0, 1), logits  # a quarter of a grey level: over 1e-4

    monkeypatch.setattr(OnnxModel, "outputs", drifted)
    with pytest.raises(ExportCheckError) as info:
        export_checkpoint(checkpoint, out, "onnx", check_shapes=[(1, 3, 64, 64)])
    assert "was not written" in info.value.message
    assert not info.value.report.ok
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    # the CLI: the table with FAILED, one error line, exit status 1 (not a usage error)
    result = run_cli("export", "-w", checkpoint, "-o", out, "--check-shape", "1x3x64x64", columns=250)
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "was not written" in result.output
    assert out.read_bytes() == b"previous export"
    # every trace of a pdseg model warns "Converting a tensor to a Python boolean"; the hint quoted
    # it as "a possible cause" of any failed check
    assert "tracer" not in (info.value.hint or "") and "while tracing" not in result.output
    assert not info.value.report.trace_warnings


def test_bad_options_are_input_errors(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="opset"):
        export_checkpoint(checkpoint, tmp_path / "a.onnx", "onnx", opset=11)
    with pytest.raises(InputError, match="format"):
        export_checkpoint(checkpoint, tmp_path / "a.onnx", "tflite")
    with pytest.raises(InputError, match="checkpoint itself"):
        export_checkpoint(checkpoint, checkpoint, "torchscript")
    # TorchScript under a name pdseg would refuse to run it by (it was written, then refused)
    with pytest.raises(InputError, match=r"--format torchscript, but --out .*ts\.pt ends in \.pt"):
        export_checkpoint(checkpoint, tmp_path / "ts.pt", "torchscript")
    with pytest.raises(InputError, match="no TorchScript name") as info:
        export_checkpoint(checkpoint, tmp_path / "e.ts2", "torchscript")
    assert info.value.hint == "name it e.ts (or .torchscript, .jit)"
    with pytest.raises(InputError, match="export_checkpoint: no option 'check_shape'") as info:
        export_checkpoint(checkpoint, tmp_path / "a.onnx", check_shape=[(1, 3, 64, 64)])
    assert "check_shapes" in (info.value.hint or "")
    assert parse_shape("2x3x384x640") == (2, 3, 384, 640)
    for bad in ("2x3x384", "1x1x64x64", "axbxcxd", "0x3x64x64"):
        with pytest.raises(InputError):
            parse_shape(bad)
    # the form is right and one number is not: that number is named, not the form again
    with pytest.raises(
        InputError, match="1x3x0x64: the height is 0; batch, height and width must be at least 1"
    ):
        parse_shape("1x3x0x64")
    with pytest.raises(InputError, match="0x3x64x64: the batch is 0"):
        parse_shape("0x3x64x64")
    with pytest.raises(InputError, match="4 channels; the model takes 3") as info:
        parse_shape("1x4x64x64")
    assert info.value.hint == "write 1x3x64x64"
    assert parse_shape("2x3x2048x2048") == (2, 3, 2048, 2048)
    with pytest.raises(InputError, match="larger than the check needs"):  # 24 GB, then the OOM killer
        parse_shape("1x3x20000x20000")


def _hide_modules(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``import name`` raise ImportError, as if the package were not installed."""
    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name.split(".")[0] in names:
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)


@pytest.mark.parametrize("missing", [("onnxruntime",), ("onnx",), ("onnx", "onnxruntime")])
def test_missing_onnx_packages_give_the_install_hint(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: tuple[str, ...]
) -> None:
    _hide_modules(monkeypatch, *missing)
    out = tmp_path / "m.onnx"
    result = run_cli("export", "-w", checkpoint, "-o", out, columns=250)
    assert result.exit_code == 2, result.output
    assert "pip install onnx onnxruntime" in flat(result.output)
    assert "Traceback" not in result.output
    assert not out.exists()
    named = "the onnx package" if "onnx" in missing else "runs it with onnxruntime"
    assert named in flat(result.output)  # the package that is missing, not both
    if missing == ("onnxruntime",):  # exporting needs only onnx: the check is what runs the file
        assert "--no-check" in flat(result.output)
        unchecked = run_cli("export", "-w", checkpoint, "-o", out, "--no-check", columns=250)
        assert unchecked.exit_code == 0, unchecked.output
        assert out.is_file()
        assert "--check-shape has no effect" not in flat(unchecked.output)
        shaped = run_cli("export", "-w", checkpoint, "-o", out, "--no-check", "--check-shape", "1x3x64x64")
        assert shaped.exit_code == 0 and "--check-shape has no effect with --no-check" in flat(shaped.output)


def test_onnx_model_without_onnxruntime(onnx_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_modules(monkeypatch, "onnxruntime")
    with pytest.raises(NotAvailableError) as info:
        OnnxModel(onnx_file)
    assert "pip install onnx onnxruntime" in (info.value.hint or "")


def test_cli_export_onnx(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "folder" / "cli.onnx"  # created, as predict and train create theirs
    args = ["export", "-w", checkpoint, "-o", out, "--check-shape", "1x3x64x64", "--opset", "17"]
    result = run_cli(*args, columns=250)
    assert result.exit_code == 0, result.output
    assert "max |dp|" in flat(result.output) and "1x3x64x64" in result.output
    assert f"wrote {out}" in flat(result.output)
    assert OnnxModel(out).metadata.opset == 17


def test_cli_export_errors(checkpoint: Path, tmp_path: Path) -> None:
    bad_shape = run_cli(
        "export", "-w", checkpoint, "-o", tmp_path / "a.onnx", "--check-shape", "64x64", columns=250
    )
    assert bad_shape.exit_code == 2 and "bad check shape" in flat(bad_shape.output)
    same = run_cli("export", "-w", checkpoint, "-o", checkpoint, "-f", "torchscript", columns=250)
    assert same.exit_code == 2 and "ends in .pt, a PyTorch checkpoint name" in flat(same.output)
    same = run_cli("export", "-w", checkpoint, "-o", checkpoint, columns=250)  # .pt: a checkpoint, itself
    assert same.exit_code == 2 and "is the checkpoint itself" in flat(same.output)
    ts_opset = run_cli("export", "-w", checkpoint, "-o", tmp_path / "m.ts", "--opset", "17", columns=250)
    assert ts_opset.exit_code == 2 and "--opset is for ONNX files" in flat(ts_opset.output)
    low = run_cli("export", "-w", checkpoint, "-o", tmp_path / "m.onnx", "--opset", "16", columns=250)
    assert low.exit_code == 2 and "choose 17 to" in flat(low.output)  # as for one too high
    renamed = tmp_path / "weights.bin"  # a checkpoint under another name is still not overwritten
    renamed.write_bytes(checkpoint.read_bytes())
    same = run_cli("export", "-w", renamed, "-o", renamed, "-f", "checkpoint", columns=250)
    assert same.exit_code == 2 and "checkpoint itself" in flat(same.output)
    ts = run_cli("export", "-w", renamed, "-o", tmp_path / "e.ts2", "-f", "torchscript", columns=250)
    assert ts.exit_code == 2 and "no TorchScript name: pdseg would refuse to run it" in flat(ts.output)
    not_ckpt = tmp_path / "x.pt"
    not_ckpt.write_bytes(b"not a checkpoint")
    wrong = run_cli("export", "-w", not_ckpt, "-o", tmp_path / "b.onnx", columns=250)
    assert wrong.exit_code == 2 and "x.pt" in flat(wrong.output)
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_predictor_maps_through_exported_files_equal_pytorch(
    fmt: str, onnx_file: Path, torchscript_file: Path, model: PDSeg
) -> None:
    """pdseg's Predictor (resize, normalise, logits resized to the image, floor(255 p)) with the
    exported file swapped in for the network gives the same bytes within one grey level."""
    import cv2

    from pdseg_cli.engine.predict import Predictor

    path = EXAMPLE_IMAGES / "chelsea.jpg"  # 300x451
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    exported = load_exported(onnx_file if fmt == "onnx" else torchscript_file)
    # size="full": the native 300x451 (not multiples of 32) goes through the graph's pad and crop
    predictor = Predictor(model, device="cpu", precision="fp32", size="full")
    expected = predictor.predict(rgb)
    predictor.model = exported.eval().to(predictor.device, memory_format=torch.channels_last)
    got = predictor.predict(rgb)
    assert got.shape == expected.shape == rgb.shape[:2]
    assert expected.std() > 10  # a real map, not a flat one
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_cli_predict_with_an_onnx_file_equals_the_checkpoint(
    checkpoint: Path, onnx_file: Path, tmp_path: Path
) -> None:
    """`pdseg predict --weights model.onnx` writes the same maps (within one grey level)."""
    import cv2

    src = tmp_path / "in"
    src.mkdir()
    (src / "chelsea.jpg").write_bytes((EXAMPLE_IMAGES / "chelsea.jpg").read_bytes())
    maps = {}
    for name, weights in (("torch", checkpoint), ("onnx", onnx_file)):
        out = tmp_path / name
        result = run_cli(
            "predict", src, "--out", out, "--weights", weights, "--size", "full", "--device", "cpu"
        )
        assert result.exit_code == 0, result.output
        maps[name] = cv2.imread(str(out / "chelsea.png"), cv2.IMREAD_UNCHANGED)
    assert maps["onnx"].shape == maps["torch"].shape == (300, 451)
    assert np.abs(maps["onnx"].astype(int) - maps["torch"].astype(int)).max() <= 1


def test_unwritable_outputs_are_one_line_errors(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for fmt, name in (("onnx", "/proc/x.model"), ("torchscript", "/proc/x.ts")):
        result = run_cli("export", "-w", checkpoint, "-o", name, "--format", fmt, columns=250)
        assert result.exit_code == 2 and "cannot be written" in result.output, result.output
        assert "Traceback" not in result.output
    # the disk fills up while the graph is written: exit 1, the previous file kept, no temporaries
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_mod, "_export_onnx", full)
    result = run_cli("export", "-w", checkpoint, "-o", out, "--check-shape", "1x3x64x64", columns=250)
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert "free some space or choose another --out" in flat(result.output)
    assert out.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]

    def refused(*args: object, **kwargs: object) -> None:  # an immutable file (chattr +i)
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(export_mod, "_export_onnx", refused)
    result = run_cli("export", "-w", checkpoint, "-o", out, "--check-shape", "1x3x64x64", columns=250)
    assert result.exit_code == 1, result.output
    # not "free some space", the fix of a full disk
    assert "check the permissions of that file and folder or choose another --out" in flat(result.output)


# a file-size limit makes a write fail at a known size, as a full disk does, without filling one
_LIMITED_EXPORT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
from pdseg_cli.cli import main
sys.argv = ["pdseg", "export", *sys.argv[1:]]
main()
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file-size limits")
@pytest.mark.parametrize(
    ("fmt", "name"), [("torchscript", "m.ts"), ("checkpoint", "m.pt"), ("onnx", "m.onnx")]
)
def test_a_write_that_fails_midway_is_one_error_line_with_nothing_left(
    checkpoint: Path, tmp_path: Path, fmt: str, name: str
) -> None:
    # torch.jit.save's own file writer aborted the process (SIGABRT, exit 134, no message) and left
    # its temporary filling the disk
    if fmt == "onnx":
        pytest.importorskip("onnx")
    out = tmp_path / "out"
    out.mkdir()
    ran = subprocess.run(
        [sys.executable, "-c", _LIMITED_EXPORT, "-w", str(checkpoint), "-o", str(out / name), "--format", fmt,
         "--no-check"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "250"}, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 1, ran.stderr
    assert f"cannot write {out / name} (File too large); nothing was written" in flat(ran.stderr)
    assert "Traceback" not in ran.stderr and list(out.iterdir()) == []


def test_a_killed_exports_temporary_is_removed_by_the_next_export(checkpoint: Path, tmp_path: Path) -> None:
    # a SIGKILL (or a power cut) mid-write leaves a hidden temporary beside --out, as big as the model
    out = tmp_path / "m.onnx"
    stale = tmp_path / atomic.temp_name(out).replace(f".{os.getpid()}-", f".{dead_pid()}-")
    stale.write_bytes(b"half a graph")
    report = export_checkpoint(checkpoint, out, "onnx", check=False)
    assert report.path == out and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_an_out_that_is_a_link_stays_a_link(checkpoint: Path, tmp_path: Path) -> None:
    # deploy/model.onnx -> releases/v2.onnx: the release is replaced, the link still points at it
    (tmp_path / "releases").mkdir()
    (tmp_path / "deploy").mkdir()
    target = tmp_path / "releases" / "v2.onnx"
    target.write_bytes(b"an older export")
    link = tmp_path / "deploy" / "model.onnx"
    link.symlink_to(Path("..") / "releases" / "v2.onnx")
    assert export_checkpoint(checkpoint, link, "onnx", check=False).path == link
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert target.read_bytes() != b"an older export" and OnnxModel(link) is not None
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deploy", "model.onnx", "releases", "v2.onnx"]
    # a link into a folder that is gone: one error naming the link, nothing written
    (tmp_path / "dangling.onnx").symlink_to(tmp_path / "gone" / "m.onnx")
    with pytest.raises(ExportWriteError, match=r"cannot write .*dangling\.onnx \(it is a link to .*gone"):
        export_checkpoint(checkpoint, tmp_path / "dangling.onnx", "onnx", check=False)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_keeps_a_checkpoints_scale_and_colour_order(model: PDSeg, tmp_path: Path, fmt: str) -> None:
    # a checkpoint normalised on 0..1 in BGR order: the exported file must say so, and pdseg run it so
    from pdseg_cli.engine.predict import Predictor
    from pdseg_cli.model import save_checkpoint

    norm = {"color": "BGR", "scale": 1.0, "mean": [0.4, 0.45, 0.5], "std": [0.25, 0.22, 0.23]}
    ckpt = save_checkpoint(model, tmp_path / "unit.pt", train_size=TRAIN_SIZE, normalization=norm)
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.ts")
    assert export_checkpoint(ckpt, out, fmt, check_shapes=SMALL_CHECKS[:1]).ok
    meta = load_exported(out).metadata
    assert meta.normalization == {
        "color": "BGR",
        "scale": 1.0,
        "mean": (0.4, 0.45, 0.5),
        "std": (0.25, 0.22, 0.23),
    }
    assert meta.to_strings()["input"] == "float32 (B, 3, H, W), any B/H/W: (BGR 0-1 - mean) / std"
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    want = Predictor(ckpt, device="cpu", size=64, optimized=False).predict(image)
    got = Predictor(out, device="cpu", size=64).predict(image)
    assert np.abs(want.astype(int) - got.astype(int)).max() <= 1
    if fmt == "onnx":  # the channel axis is a plain 1, as the README's (B, 1, H, W) says
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        assert [o.shape[1] for o in session.get_outputs()] == [1, 1]


def test_the_file_name_decides_the_format_and_content_beats_a_wrong_name(
    onnx_file: Path, tmp_path: Path
) -> None:
    from pdseg_cli.engine.export import format_for

    assert format_for("m.ts", None) == "torchscript" and format_for("m.onnx", None) == "onnx"
    # the names other tools give TorchScript files: `--out model.torchscript` wrote ONNX
    assert format_for("m.torchscript", None) == "torchscript" and format_for("m.JIT", None) == "torchscript"
    with pytest.raises(InputError, match="ends in .torchscript, a TorchScript name"):
        format_for("m.torchscript", "onnx")
    assert format_for("model.bin", None) == "onnx" and format_for("model.bin", "checkpoint") == "checkpoint"
    with pytest.raises(InputError, match="model.bin has no TorchScript name"):  # written, then refused
        format_for("model.bin", "torchscript")
    with pytest.raises(InputError, match=r"--format onnx, but --out m.ts ends in .ts"):
        format_for("m.ts", "onnx")
    # a checkpoint's name writes a weights-only checkpoint, never ONNX under it (it misled every reader)
    assert format_for("m.pt", None) == format_for("m.PTH", None) == "checkpoint"
    with pytest.raises(
        InputError, match=r"--format onnx, but --out m.pt ends in .pt, a PyTorch checkpoint name"
    ):
        format_for("m.pt", "onnx")
    with pytest.raises(
        InputError, match=r"--format checkpoint, but --out m.ts ends in .ts, a TorchScript name"
    ):
        format_for("m.ts", "checkpoint")
    for name in ("photo.jpg", "scores.csv", "mask.PNG"):  # `-o photo.jpg` would replace the photo
        with pytest.raises(InputError, match="names an image or data file"):
            format_for(name, None)
    for folder in ("exports/", str(tmp_path)):  # a folder not made yet, and one that exists
        with pytest.raises(InputError, match="is a folder, and export writes one file"):
            format_for(folder, None)


def test_export_out_naming_a_folder_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """`--out exports/` once wrote an ONNX file named `exports` (Path drops the slash)."""
    result = run_cli("export", "--weights", tmp_path / "nope.pt", "--out", f"{tmp_path}/exp/")
    assert result.exit_code == 2 and "is a folder" in result.output
    assert "exp/pdseg.onnx" in no_space(result.output) and not (tmp_path / "exp").exists()


def test_an_export_named_torchscript_is_torchscript(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.torchscript"
    result = run_cli("export", "-w", checkpoint, "-o", out, "--no-check", columns=250)
    assert result.exit_code == 0, result.output
    assert detect_format(out) == "torchscript" and isinstance(load_exported(out), TorchScriptModel)
    broken = tmp_path / "b.jit"
    broken.write_text("junk")
    assert detect_format(broken) == "torchscript"  # its own loader names the problem


def test_expected_tracer_warnings_are_not_reported() -> None:
    def caught(message: str, filename: str, category: type[Warning]) -> warnings.WarningMessage:
        return warnings.WarningMessage(message, category, filename, 1)

    boolean = "Converting a tensor to a Python boolean might cause the trace to be incorrect."
    tracer = torch.jit.TracerWarning
    kept = export_mod._collect(
        [
            caught(boolean, "/x/pdseg_cli/model/layers.py", tracer),
            caught(boolean, "/x/site-packages/torch/nn/functional.py", tracer),
            caught(boolean, "/x/my_plugin/block.py", tracer),  # a layer pdseg does not know
            caught(
                "Iterating over a tensor might cause the trace to be incorrect.",
                "/x/pdseg_cli/model/ham.py",
                tracer,
            ),
        ]
    )
    assert kept == (
        f"TracerWarning: {boolean}",
        "TracerWarning: Iterating over a tensor might cause the trace to be incorrect.",
    )


def test_content_beats_a_wrong_name(onnx_file: Path, tmp_path: Path) -> None:
    misnamed = tmp_path / "m.ts"  # an ONNX file under a TorchScript name still runs as ONNX
    misnamed.write_bytes(onnx_file.read_bytes())
    assert detect_format(misnamed) == "onnx"
    broken = tmp_path / "b.ts"
    broken.write_text("junk")
    assert detect_format(broken) == "torchscript"  # its own loader names the problem


@pytest.mark.parametrize("depth", [8, 16])
def test_the_readme_onnx_recipe_gives_predicts_masks(
    onnx_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, depth: int
) -> None:
    """The README's standalone onnxruntime snippet, run as printed, matches `pdseg predict`, on a
    16-bit file too (it read one as its high bytes: up to 6 grey levels off)."""
    import cv2
    from helpers import REPO

    from pdseg_cli.data.images import read_image
    from pdseg_cli.engine.predict import Predictor

    readme = (REPO / "README.md").read_text()
    after = readme.split("The same masks as `pdseg predict` in your own code", 1)[1]
    snippet = after.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "pdseg.onnx").write_bytes(onnx_file.read_bytes())
    photo = tmp_path / "photo.jpg"  # the snippet's name; OpenCV reads a file by its content
    if depth == 8:
        photo.write_bytes((EXAMPLE_IMAGES / "chelsea.jpg").read_bytes())
    else:  # a 16-bit PNG whose low bytes matter
        wide = cv2.imread(str(EXAMPLE_IMAGES / "chelsea.jpg")).astype(np.uint16) * 257
        wide += np.random.default_rng(0).integers(0, 257, wide.shape, dtype=np.uint16)
        photo.write_bytes(cv2.imencode(".png", wide)[1].tobytes())
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 (the documented code itself)
    expected = Predictor(tmp_path / "pdseg.onnx", device="cpu").predict(read_image(photo).pixels)
    diff = np.abs(scope["mask"].astype(int) - expected)  # type: ignore[union-attr]
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_info_describes_a_checkpoint_and_an_export(checkpoint: Path, onnx_file: Path, tmp_path: Path) -> None:
    from pdseg_cli.data.teacher import file_sha256

    ckpt = run_cli("info", checkpoint, columns=250)
    assert ckpt.exit_code == 0, ckpt.output
    text = flat(ckpt.output)
    assert file_sha256(checkpoint) in text and "pdseg checkpoint" in text
    assert f"training size │ {TRAIN_SIZE}" in text and "pdseg-tiny" in text  # and the variant's own row
    exported = run_cli("info", onnx_file, columns=250)
    assert exported.exit_code == 0, exported.output
    text = flat(exported.output)
    assert "ONNX export (fp32)" in text and f"source_sha256 │ {file_sha256(checkpoint)}" in text
    marked = tmp_path / "w [red].pt"  # brackets in names and values are text, not markup
    save_checkpoint(load_model(checkpoint), marked, data="photos [bold]kept[/bold] and [x]")
    shown = flat(run_cli("info", marked, columns=250).output)
    assert "w [red].pt" in shown and "photos [bold]kept[/bold] and [x]" in shown
    missing = run_cli("info", tmp_path / "nope.pt", columns=250)
    assert missing.exit_code == 2 and "no such file" in flat(missing.output)


def test_torchscript_runs_only_under_a_torchscript_name(torchscript_file: Path, tmp_path: Path) -> None:
    """Loading TorchScript runs the code it holds (its __setstate__ can read and write files): a
    file named like weights (.pt, loaded with weights_only, which runs nothing) is never run as one."""
    from pdseg_cli.engine.predict import Predictor
    from pdseg_cli.errors import WeightsError

    for name in ("weights.pt", "model.bin", "model"):
        disguised = tmp_path / name
        disguised.write_bytes(torchscript_file.read_bytes())
        with pytest.raises(WeightsError, match="TorchScript program .*runs the code inside it") as err:
            Predictor(disguised, device="cpu")
        assert "rename it to" in (err.value.hint or "")
        for command in (
            ["info", disguised],
            ["predict", EXAMPLE_IMAGES, "-w", disguised, "-o", tmp_path / "o"],
        ):
            result = run_cli(*command, columns=250)
            assert result.exit_code == 2 and "runs the code inside it" in flat(result.output), result.output


def test_info_reads_a_torchscript_file_without_running_it(
    torchscript_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pdseg info loaded the TorchScript program")

    monkeypatch.setattr(torch.jit, "load", refuse)
    result = run_cli("info", torchscript_file, columns=250)
    text = flat(result.output)
    assert result.exit_code == 0 and "TorchScript export (fp32)" in text and "pdseg-tiny" in text, (
        result.output
    )
    assert "opset" not in text  # TorchScript has none: no empty row


def test_a_teacher_is_judged_by_the_name_it_is_given(torchscript_file: Path, tmp_path: Path) -> None:
    """The teacher resolved links before the name check: disguised.pt -> model.ts ran as TorchScript,
    and a cache's model.ts -> blobs/<hash> (no suffix) was refused."""
    from pdseg_cli.engine.teacher import TeacherMaps
    from pdseg_cli.errors import WeightsError

    disguised = tmp_path / "disguised.pt"
    disguised.symlink_to(torchscript_file)
    with pytest.raises(WeightsError, match="TorchScript program named .pt"):
        TeacherMaps(disguised, tmp_path / "cache").info()
    blob = tmp_path / "blobs" / "abc123"
    blob.parent.mkdir()
    blob.write_bytes(torchscript_file.read_bytes())
    (tmp_path / "model.ts").symlink_to(blob)
    assert "TorchScript" in TeacherMaps(tmp_path / "model.ts", tmp_path / "cache").info().description


def test_a_loaded_pdseg_torchscript_module_is_refused_with_its_path_as_the_way(
    torchscript_file: Path,
) -> None:
    # its forward gives probabilities and its settings live in the file: taken as a module of
    # logits it gave maps of 127..182 in silence
    from pdseg_cli.engine.predict import Predictor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit.load
        module = torch.jit.load(str(torchscript_file))
    with pytest.raises(InputError, match="is a pdseg export") as info:
        Predictor(module, device="cpu")
    assert info.value.hint == "pass the .ts file's path instead: Predictor('model.ts')"
    assert Predictor(torchscript_file, device="cpu").predict(np.zeros((8, 8, 3), np.uint8)).shape == (8, 8)


def test_export_takes_threads_as_the_other_commands_do(checkpoint: Path, tmp_path: Path) -> None:
    # its trace and parity check run on the CPU: on a shared machine only OMP_NUM_THREADS limited them
    result = run_cli("export", "-w", checkpoint, "-o", tmp_path / "m.pt", "--threads", "1", columns=200)
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 1
    assert run_cli("export", "--threads", "0", "-o", tmp_path / "n.pt").exit_code == 2


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_predictor_of_an_exported_file_pickles_for_joblib_workers(
    fmt: str, onnx_file: Path, torchscript_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """joblib sends a bound ``predictor.predict`` to its workers pickled; an onnxruntime session
    cannot be pickled, so the file is opened again where it is unpickled, with the same settings."""
    import pickle

    from pdseg_cli.engine.predict import Predictor

    path = onnx_file if fmt == "onnx" else torchscript_file
    monkeypatch.chdir(path.parent)
    predictor = Predictor(path.name, device="cpu", size=64)  # a relative path
    image = textured_image(40, 52)
    data = pickle.dumps(predictor)
    monkeypatch.chdir(path.parent.parent)  # a worker that runs in another folder
    copy = pickle.loads(data)
    assert copy.model is not predictor.model and copy.model.path == path
    assert copy.size == 64 and copy.normalization == predictor.normalization
    assert np.array_equal(copy.predict(image), predictor.predict(image))
