"""Checkpoints: round trips, every bad-file case as one WeightsError, and MSCAN ImageNet weights."""

from __future__ import annotations

import argparse
import dataclasses
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import pdseg_cli
from pdseg_cli.config import get_config
from pdseg_cli.errors import WeightsError
from pdseg_cli.model import PDSeg, create_model, load_backbone, load_checkpoint, load_model, save_checkpoint
from pdseg_cli.model.build import FORMAT_NAME, FORMAT_VERSION

# the hint for an exported model given where a checkpoint is needed
RUNS_ELSEWHERE = (
    "runs only where a model is run (`pdseg predict`, `pdseg eval`, `train --teacher`; Predictor in Python)"
)


@pytest.fixture(scope="module")
def model() -> PDSeg:
    torch.manual_seed(0)
    net = create_model("pdseg-tiny").train()
    with torch.no_grad():  # move BN statistics off their defaults so they are tested too
        net(torch.randn(2, 3, 64, 64))
    return net.eval()


@pytest.fixture(scope="module")
def saved(model: PDSeg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(model, path, train_size=1024, data="DIS5K/DIS-TR", steps=12, seed=0)
    return path


def _outputs(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


def test_round_trip_gives_equal_outputs(model: PDSeg, saved: Path) -> None:
    x = torch.randn(2, 3, 70, 45)
    loaded = load_model(saved)
    assert not loaded.training
    assert torch.equal(_outputs(loaded, x), _outputs(model, x))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_checkpoint_describes_itself(model: PDSeg, saved: Path) -> None:
    ckpt = load_checkpoint(saved)
    assert ckpt.config == model.config
    assert ckpt.variant == "pdseg-tiny"
    assert ckpt.train_size == 1024
    assert ckpt.provenance == {"data": "DIS5K/DIS-TR", "steps": 12, "seed": 0}
    assert ckpt.pdseg_version == pdseg_cli.__version__
    assert ckpt.format_version == FORMAT_VERSION
    assert list(ckpt.normalization["mean"]) == [123.675, 116.28, 103.53]
    raw = torch.load(saved, weights_only=True)
    assert raw["format"] == FORMAT_NAME
    assert raw["dtype"] == "float32"
    loaded = load_model(saved)
    assert loaded.train_size == 1024
    assert list(loaded.normalization["std"]) == [58.395, 57.12, 57.375]


def test_half_storage_round_trip(model: PDSeg, saved: Path, tmp_path: Path) -> None:
    path = save_checkpoint(model, tmp_path / "half.pt", half=True)
    assert path.stat().st_size < 0.7 * saved.stat().st_size
    raw = torch.load(path, weights_only=True)
    assert raw["dtype"] == "float16"
    assert raw["state_dict"]["decoder.levels.0.classifier.weight"].dtype == torch.float16
    assert raw["state_dict"]["encoder.block1.0.norm1.num_batches_tracked"].dtype == torch.int64
    loaded = load_model(path)
    assert next(loaded.parameters()).dtype == torch.float32
    x = torch.randn(1, 3, 64, 64)
    ref = _outputs(model, x)
    torch.testing.assert_close(_outputs(loaded, x), ref, rtol=0, atol=1e-3 * (1 + ref.abs().max().item()))


def test_save_is_atomic_and_overwrites(model: PDSeg, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ckpt.pt"
    save_checkpoint(model, path, steps=1)
    save_checkpoint(model, path, steps=2)
    assert load_checkpoint(path).provenance == {"steps": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]  # no temporary file left


def test_save_keeps_the_model_unchanged(model: PDSeg, tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save_checkpoint(model, tmp_path / "h.pt", half=True)
    assert all(
        torch.equal(v, before[k]) and v.dtype == before[k].dtype for k, v in model.state_dict().items()
    )


def test_save_refuses_non_plain_provenance(model: PDSeg, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="plain values"):
        save_checkpoint(model, tmp_path / "x.pt", optimizer=object())
    save_checkpoint(model, tmp_path / "y.pt", data=tmp_path / "data", sizes=(1, 2))  # Path and tuple are fine
    assert load_checkpoint(tmp_path / "y.pt").provenance == {"data": str(tmp_path / "data"), "sizes": [1, 2]}


def test_public_api_is_complete_and_each_name_is_the_real_one(saved: Path) -> None:
    """Every name in ``__all__`` resolves to the object its module defines, and the names type
    checkers see (the TYPE_CHECKING imports) are those. That ``import pdseg_cli`` leaves torch out
    is test_cli's ``test_import_is_light``."""
    import ast
    import importlib

    assert isinstance(pdseg_cli.load_model(saved), PDSeg)
    assert isinstance(pdseg_cli.create_model("pdseg-tiny"), PDSeg)
    lazy = pdseg_cli._LAZY
    assert set(pdseg_cli.__all__) == {"__version__", *lazy}
    for name, module in lazy.items():
        assert getattr(pdseg_cli, name) is getattr(importlib.import_module(module), name)
    tree = ast.parse(Path(pdseg_cli.__file__).read_text())
    typed = {
        alias.asname: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pdseg_cli.")
        for alias in node.names
    }
    assert typed == lazy
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pdseg_cli.nope  # noqa: B018


# --- bad files: each gives one WeightsError naming the file ------------------------------------


def _write_bad(kind: str, good: Path, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.pt"
    raw = torch.load(good, weights_only=True)
    if kind == "missing":
        return path
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "image":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    elif kind == "plain-pickle":
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif kind == "python-objects":
        # timm saves its argparse Namespace in the checkpoint
        torch.save({"state_dict": raw["state_dict"], "args": argparse.Namespace(lr=1e-3)}, path)
    elif kind == "bare-state-dict":
        torch.save(raw["state_dict"], path)
    elif kind == "foreign-dict":
        torch.save({"epoch": 3, "model": raw["state_dict"]}, path)
    elif kind == "not-a-dict":
        torch.save([torch.ones(2)], path)
    elif kind == "other-format":
        torch.save({**raw, "format": "someone-else"}, path)
    elif kind == "newer-version":
        torch.save({**raw, "format_version": FORMAT_VERSION + 1}, path)
    elif kind == "bad-config":
        torch.save({**raw, "config": {**raw["config"], "embed_dims": [1, 2]}}, path)
    elif kind == "unknown-decoder":
        torch.save({**raw, "config": {**raw["config"], "decoder": "unet"}}, path)
    elif kind == "no-state-dict":
        torch.save({k: v for k, v in raw.items() if k != "state_dict"}, path)
    elif kind == "mismatched-keys":
        state = dict(raw["state_dict"])
        state.pop("decoder.levels.0.classifier.bias")
        state["decoder.levels.0.extra.weight"] = torch.ones(1)
        state["encoder.norm4.weight"] = torch.ones(5)
        torch.save({**raw, "state_dict": state}, path)
    else:
        raise AssertionError(kind)
    return path


BAD_CASES = {
    "missing": "does not exist",
    "folder": "is a folder",
    "empty": "is empty",
    "truncated": "truncated or damaged",
    "text": "not a PyTorch file",
    "image": "not a PyTorch file",
    "plain-pickle": "not a PyTorch file",
    "python-objects": "pickled Python objects",
    "bare-state-dict": "bare state_dict",
    "foreign-dict": "not a pdseg checkpoint",
    "not-a-dict": "holds a list",
    "other-format": "not a 'pdseg-checkpoint'",
    "newer-version": "newer pdseg",
    "bad-config": "invalid model config",
    "unknown-decoder": "invalid model config: unknown decoder 'unet' (known: progressive, light_ham)",
    "no-state-dict": "no state_dict",
    "mismatched-keys": "decoder.levels.0.classifier.bias",
}


@pytest.mark.parametrize("kind", list(BAD_CASES))
def test_bad_checkpoint_gives_one_line_weights_error(kind: str, saved: Path, tmp_path: Path) -> None:
    path = _write_bad(kind, saved, tmp_path)
    with pytest.raises(WeightsError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message
    assert BAD_CASES[kind] in message
    assert "\n" not in message


def test_a_whole_models_bare_state_dict_gets_the_way_to_a_checkpoint(
    model: PDSeg, saved: Path, tmp_path: Path
) -> None:
    # torch.save(model.state_dict()): the hint spoke of MSCAN ImageNet weights and load_backbone
    bare = _write_bad("bare-state-dict", saved, tmp_path)
    with pytest.raises(WeightsError) as info:
        load_model(bare)
    assert info.value.hint == (
        f"load it into its model and save that: m = pdseg_cli.create_model('pdseg-tiny'); "
        f"m.load_state_dict(torch.load({str(bare)!r})); "
        "pdseg_cli.save_checkpoint(m, 'model.pt', train_size=N)"
    )
    rebuilt = create_model("pdseg-tiny")  # the hint, followed
    rebuilt.load_state_dict(torch.load(bare))
    again = load_model(save_checkpoint(rebuilt, tmp_path / "model.pt", train_size=1024))
    # segnext-t shares pdseg-t's encoder: the decoder decides; DDP's prefix is named, not a dead end
    torch.save(
        {f"module.{k}": v for k, v in create_model("segnext-t").state_dict().items()}, tmp_path / "sn.pt"
    )
    with pytest.raises(WeightsError) as info:
        load_model(tmp_path / "sn.pt")
    assert "pdseg_cli.create_model('segnext-t')" in (info.value.hint or "")
    assert "without the module./_orig_mod. prefix" in (info.value.hint or "")
    pairs = zip(again.state_dict().values(), model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_mismatched_keys_are_all_named(saved: Path, tmp_path: Path) -> None:
    path = _write_bad("mismatched-keys", saved, tmp_path)
    message = str(pytest.raises(WeightsError, load_model, path).value)
    assert "1 missing: decoder.levels.0.classifier.bias" in message
    assert "1 unexpected: decoder.levels.0.extra.weight" in message
    assert "encoder.norm4.weight (5) vs (64)" in message


# --- MSCAN ImageNet weights -------------------------------------------------------------------


def _official_like_state(name: str = "pdseg-tiny", seed: int = 1) -> dict[str, torch.Tensor]:
    """A state dict under the official SegNeXt MSCAN key names, with random values."""
    torch.manual_seed(seed)
    encoder = create_model(dataclasses.replace(get_config(name))).encoder
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in encoder.state_dict().items()}
    for key in (
        "patch_embed1.proj.0.weight",
        "block1.0.attn.spatial_gating_unit.conv0_1.weight",
        "block3.0.mlp.dwconv.dwconv.weight",
        "norm4.weight",
    ):
        assert key in state
    return state


def _assert_encoder_equals(net: PDSeg, state: dict[str, torch.Tensor]) -> None:
    loaded = net.encoder.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize(
    "wrapping", ["bare", "state_dict", "module-prefix", "imagenet-head", "no-bn-counters"]
)
def test_load_backbone_accepts_official_files(wrapping: str, tmp_path: Path) -> None:
    state = _official_like_state()
    if wrapping == "bare":
        obj: object = state
    elif wrapping == "state_dict":
        obj = {"state_dict": state, "epoch": 300}
    elif wrapping == "module-prefix":
        obj = {"model": {f"module.{k}": v for k, v in state.items()}}
    elif wrapping == "imagenet-head":
        obj = {**state, "head.weight": torch.randn(1000, 64), "head.bias": torch.randn(1000)}
    else:
        obj = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "mscan.pth"
    torch.save(obj, path)
    net = create_model("pdseg-tiny")
    decoder_before = {k: v.clone() for k, v in net.decoder.state_dict().items()}
    assert load_backbone(net, path) == len(obj if wrapping in ("bare", "no-bn-counters") else state)
    expected = state if wrapping != "no-bn-counters" else {k: v for k, v in state.items() if k in obj}
    _assert_encoder_equals(net, expected)
    assert all(torch.equal(v, decoder_before[k]) for k, v in net.decoder.state_dict().items())


def test_load_backbone_from_segmentor_and_mmseg_names(tmp_path: Path) -> None:
    state = _official_like_state()
    segmentor = {f"backbone.{k}": v for k, v in state.items()}
    segmentor["decode_head.conv_seg.weight"] = torch.randn(19, 256, 1, 1)
    torch.save({"meta": {"epoch": 1}, "state_dict": segmentor}, tmp_path / "segnext.pth")
    net = create_model("pdseg-tiny")
    load_backbone(net, tmp_path / "segnext.pth")
    _assert_encoder_equals(net, state)
    renamed = {k.replace("mlp.dwconv.dwconv.", "mlp.dwconv."): v for k, v in state.items()}  # mmseg 1.x
    torch.save(renamed, tmp_path / "mmseg.pth")
    other = create_model("pdseg-tiny")
    load_backbone(other.encoder, tmp_path / "mmseg.pth")
    _assert_encoder_equals(other, state)


def test_load_backbone_from_a_pdseg_checkpoint(model: PDSeg, saved: Path) -> None:
    net = create_model("pdseg-tiny")
    load_backbone(net, saved)
    _assert_encoder_equals(net, model.encoder.state_dict())


def test_load_backbone_names_bad_keys(tmp_path: Path) -> None:
    state = _official_like_state()
    state["norm4.weight"] = torch.ones(7)
    state.pop("block2.0.attn.proj_2.bias")
    state["block9.0.extra"] = torch.ones(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as info:
        load_backbone(create_model("pdseg-tiny"), tmp_path / "bad.pth")
    message = str(info.value)
    assert str(tmp_path / "bad.pth") in message
    assert "norm4.weight (7) vs (64)" in message
    assert "1 missing: block2.0.attn.proj_2.bias" in message
    assert "1 unexpected: block9.0.extra" in message
    assert "\n" not in message


def test_load_backbone_of_another_variant_says_which(tmp_path: Path) -> None:
    torch.save(_official_like_state("pdseg-s"), tmp_path / "mscan_s.pth")
    with pytest.raises(WeightsError) as info:
        load_backbone(create_model("pdseg-b"), tmp_path / "mscan_s.pth")
    assert "missing: block1.2." in str(info.value)
    assert info.value.hint is not None and "pdseg-s" in info.value.hint


def test_load_backbone_bad_files(tmp_path: Path) -> None:
    net = create_model("pdseg-tiny")
    with pytest.raises(WeightsError, match="does not exist"):
        load_backbone(net, tmp_path / "nope.pth")
    torch.save({"epoch": 1, "note": "x"}, tmp_path / "nothing.pth")
    with pytest.raises(WeightsError, match="no state_dict"):
        load_backbone(net, tmp_path / "nothing.pth")


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # making the TorchScript file
def test_an_exported_model_given_as_a_checkpoint_says_where_it_runs(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x08\x07\x12\x07pytorch")  # how an ONNX protobuf starts
    with pytest.raises(WeightsError) as info:
        load_model(path)
    assert "not a PyTorch file" in str(info.value)
    assert RUNS_ELSEWHERE in (info.value.hint or "")
    named_pt = tmp_path / "m.pt"  # known by its first byte, as predict and eval know it
    named_pt.write_bytes(path.read_bytes())
    with pytest.raises(WeightsError) as info:
        load_model(named_pt)
    hint = info.value.hint or ""
    assert f"an ONNX model (named m.pt) {RUNS_ELSEWHERE}" in hint
    for name in ("m.ts", "m.bin"):  # a TorchScript archive is a zip, but not a damaged checkpoint
        torch.jit.save(torch.jit.script(torch.nn.Identity()), str(tmp_path / name))
        with pytest.raises(WeightsError) as info:
            load_model(tmp_path / name)
        assert "is a TorchScript export, not a pdseg checkpoint" in str(info.value), name
        assert RUNS_ELSEWHERE in (info.value.hint or "")


def test_resaving_a_loaded_model_keeps_its_provenance(tmp_path: Path) -> None:
    model = create_model("pdseg-tiny")
    save_checkpoint(model, tmp_path / "a.pt", train_size=64, data="my photos", steps=10)
    loaded = load_model(tmp_path / "a.pt")
    save_checkpoint(loaded, tmp_path / "b.pt", half=True, note="fp16 copy")
    assert load_checkpoint(tmp_path / "b.pt").provenance == {
        "data": "my photos",
        "steps": 10,
        "note": "fp16 copy",
    }


def test_an_unusable_normalisation_is_refused_on_save_and_on_load(tmp_path: Path) -> None:
    model = create_model("pdseg-tiny")
    for bad in ({"mean": [0, 0, 0], "std": [0, 1, 1]}, {"mean": [1, 2, 3]}, {"mean": [1, 2], "std": [1, 1]}):
        with pytest.raises(ValueError, match="normalization"):
            save_checkpoint(model, tmp_path / "bad.pt", normalization=bad)
    assert not (tmp_path / "bad.pt").exists()
    payload = torch.load(save_checkpoint(model, tmp_path / "ok.pt"), weights_only=True)
    payload["normalization"] = {"mean": [1, 2, 3]}  # a file written by other means
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(WeightsError, match="unusable input normalisation"):
        load_model(tmp_path / "edited.pt")


def test_damaged_weights_and_training_sizes_are_refused_on_load(tmp_path: Path) -> None:
    # nan weights wrote a black mask for every image; a negative size failed in every image's resize
    model = create_model("pdseg-tiny")
    payload = torch.load(save_checkpoint(model, tmp_path / "ok.pt", train_size=64), weights_only=True)
    for size in (-5, 0, "64", float("nan"), float("inf"), 64.5):
        torch.save({**payload, "train_size": size}, tmp_path / "size.pt")
        with pytest.raises(WeightsError, match="unusable training size"):
            load_model(tmp_path / "size.pt")
    state = dict(payload["state_dict"])
    key = next(k for k, t in state.items() if t.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    torch.save({**payload, "state_dict": state}, tmp_path / "nan.pt")
    with pytest.raises(WeightsError, match=f"not finite \\(nan or inf\\) in 1 tensor\\(s\\), e.g. {key}"):
        load_model(tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="at least 32"):
        save_checkpoint(model, tmp_path / "small.pt", train_size=16)
    big = create_model("pdseg-tiny")
    name, buffer = next((n, b) for n, b in big.named_buffers() if n.endswith("running_var"))
    buffer.fill_(1e5)  # fine in float32, inf in float16
    with pytest.raises(ValueError, match=f"{name} holds values beyond float16's range"):
        save_checkpoint(big, tmp_path / "half.pt", half=True)
    assert not (tmp_path / "half.pt").exists()
    assert load_model(save_checkpoint(big, tmp_path / "full.pt")) is not None  # float32 keeps it
    # a file an earlier pdseg wrote with half=True beyond the range: the hint says so
    old = torch.load(tmp_path / "full.pt", weights_only=True)
    old["dtype"] = "float16"
    old["state_dict"] = {k: t.half() if t.is_floating_point() else t for k, t in old["state_dict"].items()}
    torch.save(old, tmp_path / "old-half.pt")
    with pytest.raises(WeightsError) as info:
        load_model(tmp_path / "old-half.pt")
    assert "saved with half=True from values beyond float16's range" in (info.value.hint or "")


def test_load_model_takes_the_device_names_predictor_takes(tmp_path: Path) -> None:
    from pdseg_cli.errors import InputError, NotAvailableError

    path = save_checkpoint(create_model("pdseg-tiny"), tmp_path / "m.pt")
    assert next(load_model(path, device="auto").parameters()).device.type in ("cpu", "cuda")
    with pytest.raises(InputError, match="not a device"):
        load_model(path, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(NotAvailableError):
            load_model(path, device="cuda")
        with pytest.raises(NotAvailableError):  # a torch.device goes through the same check
            load_model(path, device=torch.device("cuda"))
    with pytest.raises(InputError, match="not a device"):  # was torch's RuntimeError from .to(1)
        load_model(path, device=1)  # type: ignore[arg-type]
    assert next(load_model(path, device=torch.device("cpu")).parameters()).device.type == "cpu"


@pytest.mark.parametrize("size", [(256, 320), "512", 512.0, True])
def test_save_refuses_a_train_size_that_is_not_one_side(model: PDSeg, tmp_path: Path, size: object) -> None:
    with pytest.raises(TypeError, match="train_size must be one side length"):
        save_checkpoint(model, tmp_path / "x.pt", train_size=size)  # type: ignore[arg-type]
    assert not (tmp_path / "x.pt").exists()


def test_an_image_given_as_weights_is_called_an_image(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(WeightsError) as err:
        load_checkpoint(photo)
    assert err.value.hint is not None and err.value.hint.startswith("it is an image, not a model")


def test_saving_onto_a_folder_names_the_file_to_give(tmp_path: Path) -> None:
    from pdseg_cli.model import create_model, save_checkpoint

    with pytest.raises(
        IsADirectoryError, match=r"is a folder; give the checkpoint's file name, e\.g\. .*model\.pt"
    ):
        save_checkpoint(create_model("pdseg-tiny"), tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written beside it


def test_a_whole_pickled_pdseg_model_gets_save_checkpoint_as_the_way(model: PDSeg, tmp_path: Path) -> None:
    # "re-save just the state_dict" led to the bare state_dict error next: a circle
    whole = tmp_path / "whole.pt"
    torch.save(model, whole)
    with pytest.raises(WeightsError, match=r"pickled Python objects \(pdseg_cli\.model\.") as info:
        load_model(whole)
    assert info.value.hint == (
        "a whole pdseg model saved with torch.save: load it where you trust it and save it with "
        "pdseg_cli.save_checkpoint(model, 'model.pt', train_size=N)"
    )
