"""`pdseg export --out mine.pt`: a weights-only checkpoint, checked like an export; the provenance
in ONNX and TorchScript exports; and the `--init` chain as `pdseg info` shows it.

All on pdseg-tiny at small shapes (seconds on 2 cores). The run files are built as ``pdseg train``
writes them (``write_checkpoint``, the ``init`` record of ``train_loop._provenance``), not trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import EXAMPLE_IMAGES, flat, run_cli, tiny_checkpoint

from pdseg_cli.data.teacher import file_sha256
from pdseg_cli.engine import export as export_mod
from pdseg_cli.engine.export import ExportCheckError, export_checkpoint, export_model
from pdseg_cli.engine.onnx_backend import ExportMetadata, load_exported
from pdseg_cli.engine.train_checkpoints import write_checkpoint
from pdseg_cli.engine.weights_info import describe_weights, provenance_rows
from pdseg_cli.errors import InputError
from pdseg_cli.model import load_model
from pdseg_cli.model.build import load_checkpoint

SMALL_CHECKS = [(1, 3, 64, 64), (2, 3, 72, 100)]
TRAIN_SIZE = 256
# the model card's line, as the bundled weights carry it
SUMMARY = "distilled from IS-Net on DAVIS 2016 and unlabelled photos; research use only (weights/README.md)"
# long enough to be clipped in a link's row
LONG_DATA = "davis16-train + davis16-train30 + people290 (932 masks) + unlabeled/imagenet1k, coco128, " * 4


def _chain(folder: Path) -> Path:
    """``run2/last.pt`` of ``pdseg train --init run1/last.pt``, itself ``--init card.pt``: a two-link
    chain, with a training state in ``last.pt`` as a run leaves it."""
    card = tiny_checkpoint(folder / "card.pt", train_size=TRAIN_SIZE, classifier_std=1.0)
    model = load_model(card)
    model.provenance = {"summary": SUMMARY, "data": "davis16-train", "teacher": "IS-Net (DIS5K)"}
    write_checkpoint(card, model, TRAIN_SIZE, {}, None)
    parent = card
    for run, data, steps, teacher in (
        ("run1", LONG_DATA, 518, "/t/isnet.onnx"),
        ("run2", "my-set", 60, None),
    ):
        model = load_model(parent)
        init = {
            "path": str(parent.resolve()),
            "provenance": {"sha256": file_sha256(parent), **model.provenance},
        }
        model.provenance = {}  # train_loop records the start in "init", not as the run's own keys
        provenance = {"init": init, "teacher": teacher, "data": data, "steps": steps, "size": TRAIN_SIZE}
        # the optimiser's moments, as last.pt carries them: what a shared file leaves out
        moments = {"exp_avg": [p.detach().clone() for p in model.parameters()]}
        state = {"version": 1, "optimizer": moments, "epoch": 1, "epochs": 1, "step_in_epoch": 0}
        state.update(global_step=steps, total_steps=steps)
        path = folder / run / "last.pt"
        path.parent.mkdir()
        write_checkpoint(path, model, TRAIN_SIZE, provenance, state)
        parent = path
    return parent


@pytest.fixture(scope="module")
def last(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _chain(tmp_path_factory.mktemp("runs"))


# --- A: a weights-only checkpoint ------------------------------------------------------------


@pytest.mark.parametrize(("name", "half"), [("mine.pt", False), ("mine.pth", True), ("mine.pt", True)])
def test_export_to_pt_writes_the_weights_alone_and_checks_them(
    last: Path, tmp_path: Path, name: str, half: bool
) -> None:
    out = tmp_path / name
    report = export_checkpoint(last, out, half=half, check_shapes=SMALL_CHECKS)  # the name decides
    assert report.ok and report.format == "checkpoint" and report.path == out
    assert [c.tolerance for c in report.checks] == [3e-2 if half else 1e-4] * 2
    assert report.metadata.opset is None and report.metadata.precision == ("fp16" if half else "fp32")
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left
    raw = torch.load(out, weights_only=True)
    assert "train_state" not in raw and "train_state" in torch.load(last, weights_only=True)
    assert raw["dtype"] == ("float16" if half else "float32")
    assert {t.dtype for t in raw["state_dict"].values() if t.is_floating_point()} == {
        torch.float16 if half else torch.float32
    }
    assert out.stat().st_size < last.stat().st_size / (2.5 if half else 1.5)
    # loaded back as fp32, with what the source says of itself, and where it came from
    source, loaded = load_checkpoint(last), load_model(out)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert loaded.train_size == TRAIN_SIZE and loaded.normalization == source.normalization
    assert loaded.provenance == {**source.provenance, "source": "last.pt", "source_sha256": file_sha256(last)}
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        diff = (torch.sigmoid(loaded(x)) - torch.sigmoid(load_model(last)(x))).abs().max()
    assert diff <= (export_mod.FP16_TOLERANCE if half else 0)  # fp32: the very same numbers


def test_cli_export_to_pt(last: Path, tmp_path: Path) -> None:
    out = tmp_path / "shared" / "mine.pt"
    result = run_cli("export", "-w", last, "-o", out, "--half", "--check-shape", "1x3x64x64", columns=250)
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "checkpoint (fp16 storage, loaded as fp32) vs PyTorch fp32" in text and "1x3x64x64" in text
    assert f"wrote {out}" in text and "weights only (no training state)" in text and "opset" not in text
    assert load_model(out).provenance["source"] == "last.pt"
    # any other name with --format checkpoint, and predict runs it like any checkpoint
    other = tmp_path / "weights.bin"
    named = run_cli("export", "-w", last, "-o", other, "-f", "checkpoint", "--no-check", columns=250)
    assert named.exit_code == 0 and load_model(other).config.name == "pdseg-tiny", named.output
    from pdseg_cli.engine.predict import Predictor

    assert Predictor(other, device="cpu").description == Predictor(last, device="cpu").description


def test_a_full_disk_under_export_to_pt_is_one_line(
    last: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch reports a full disk as a RuntimeError ("enforce fail ... unexpected pos"): training
    turned it into one line, ``pdseg export -o x.pt`` showed torch's traceback."""

    def full(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4416 vs 4312")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "mine.pt"
    result = run_cli("export", "-w", last, "-o", out, "--no-check", columns=250)
    text = flat(result.output)
    assert result.exit_code == 1 and "Traceback" not in text, result.output
    assert str(out) in text and "space" in text.lower() and not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if "tmp" in p.name]  # no temporary file left


def test_a_failed_checkpoint_check_writes_nothing(
    last: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "mine.pt"
    out.write_bytes(b"previous")
    with pytest.raises(ExportCheckError) as info:
        export_checkpoint(last, out, half=True, tolerance=1e-9, check_shapes=SMALL_CHECKS[:1])
    assert "the exported checkpoint does not match PyTorch at 1x3x64x64" in info.value.message
    assert "was not written" in info.value.message and not info.value.report.ok
    assert out.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["mine.pt"]
    # the CLI: the table with FAILED, one error line, exit 1, no traceback
    monkeypatch.setattr(export_mod, "FP16_TOLERANCE", 1e-9)
    result = run_cli("export", "-w", last, "-o", out, "--half", "--check-shape", "1x3x64x64", columns=250)
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "was not written" in flat(result.output)
    assert "Traceback" not in result.output and out.read_bytes() == b"previous"


def test_checkpoint_refusals(last: Path, tmp_path: Path) -> None:
    opset = run_cli("export", "-w", last, "-o", tmp_path / "m.pt", "--opset", "17", columns=250)
    assert opset.exit_code == 2, opset.output
    assert f"--opset is for ONNX files; {tmp_path / 'm.pt'} is a pdseg checkpoint" in flat(opset.output)
    before = last.read_bytes()
    for args in (["-o", last], ["-o", last, "-f", "checkpoint"]):
        same = run_cli("export", "-w", last, *args, columns=250)
        assert same.exit_code == 2 and "is the checkpoint itself" in flat(same.output), same.output
    assert last.read_bytes() == before
    with pytest.raises(InputError, match="checkpoint itself"):
        export_checkpoint(last, last)
    clash = run_cli("export", "-w", last, "-o", tmp_path / "m.onnx", "-f", "checkpoint", columns=250)
    assert clash.exit_code == 2 and "name the file .pt" in flat(clash.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_half_beyond_float16_and_the_fast_form_are_one_line(tmp_path: Path) -> None:
    from pdseg_cli.model.optimize import optimize

    model = load_model(tiny_checkpoint(tmp_path / "t.pt"))
    options: dict[str, Any] = {"variant": "pdseg-tiny", "config": model.config.to_dict()}
    options["normalization"] = dict(model.normalization)
    with pytest.raises(
        InputError, match="cannot write a checkpoint: .*save the model you passed to optimize"
    ):
        export_model(optimize(model, channels_last=False), tmp_path / "fast.pt", "checkpoint", **options)
    with torch.no_grad():
        next(model.parameters()).fill_(1e6)
    with pytest.raises(InputError, match="beyond float16's range"):
        export_model(model, tmp_path / "big.pt", "checkpoint", half=True, **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.pt"]


# --- B: provenance in ONNX and TorchScript exports --------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exports_carry_the_provenance_and_show_it(last: Path, tmp_path: Path, fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.ts")
    assert export_checkpoint(last, out, check_shapes=SMALL_CHECKS[:1]).ok
    exported, source = load_exported(out), load_checkpoint(last)
    assert exported.provenance == source.provenance  # the whole chain, in its order
    strings = exported.metadata.to_strings()
    assert json.loads(strings["provenance"]) == source.provenance
    # every key of before keeps its meaning
    assert strings["source"] == "last.pt" and strings["source_sha256"] == file_sha256(last)
    assert strings["variant"] == "pdseg-tiny" and strings["train_size"] == str(TRAIN_SIZE)
    if fmt == "onnx":  # plain ONNX tools see it too
        import onnx

        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(props["provenance"])["init"]["path"] == source.provenance["init"]["path"]
    # pdseg info: the provenance rows a checkpoint gets, after the export's own keys
    described = [row for row in describe_weights(out).rows if row[0].startswith("provenance")]
    assert described == [row for row in describe_weights(last).rows if row[0].startswith("provenance")]
    shown = flat(run_cli("info", out, columns=250).output)
    assert "provenance: init │ fine-tuned from" in shown and "research use only" in shown


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_predicts_start_line_says_where_an_export_came_from(tmp_path: Path, fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from pdseg_cli.engine.predict import Predictor

    card = tiny_checkpoint(tmp_path / "card.pt", train_size=TRAIN_SIZE)
    model = load_model(card)
    model.provenance = {"summary": SUMMARY}
    write_checkpoint(card, model, TRAIN_SIZE, {}, None)
    out = tmp_path / ("card.onnx" if fmt == "onnx" else "card.ts")
    export_checkpoint(card, out, check=False)
    expected = Predictor(card, device="cpu").description
    assert expected == f"pdseg-tiny, trained at {TRAIN_SIZE}x{TRAIN_SIZE}: {SUMMARY}"
    kind = "ONNX" if fmt == "onnx" else "TorchScript"
    assert Predictor(out, device="cpu").description == f"{kind} export of {expected}"
    images = tmp_path / "in"
    images.mkdir()
    (images / "chelsea.jpg").write_bytes((EXAMPLE_IMAGES / "chelsea.jpg").read_bytes())
    result = run_cli("predict", images, "-w", out, "--out", tmp_path / "masks", "--size", "64", columns=400)
    assert result.exit_code == 0, result.output
    assert f"{kind} export of pdseg-tiny, trained at 256x256: {SUMMARY}" in flat(result.output)


def test_metadata_without_or_with_a_damaged_provenance_still_loads() -> None:
    meta = ExportMetadata(variant="pdseg-tiny", config={}, train_size=None, mean=(1, 2, 3), std=(1, 1, 1))
    strings = meta.to_strings()
    del strings["provenance"]  # a file written before the key existed
    assert ExportMetadata.from_strings(strings, Path("old.onnx")).provenance == {}
    strings["provenance"] = '{"data": "cut off'  # edited by hand: kept whole, for info to show
    assert ExportMetadata.from_strings(strings, Path("x.onnx")).provenance == {
        "unreadable": '{"data": "cut off'
    }


# --- C: the --init chain in pdseg info ----------------------------------------------------------


def test_info_shows_the_init_chain_one_row_per_link(last: Path) -> None:
    rows = dict(describe_weights(last).rows)
    first, second = rows["provenance: init"], rows["provenance: init 2"]
    assert "provenance: init 3" not in rows and not any("{" in v for v in (first, second))
    run1, card = last.parent.parent / "run1" / "last.pt", last.parent.parent / "card.pt"
    # newest first: the file this one started from, then the file that one started from
    assert first.startswith(f"fine-tuned from {run1.resolve()} (sha256 {file_sha256(run1)[:8]}…): ")
    assert f"trained 518 steps at {TRAIN_SIZE} on davis16-train + " in first
    assert second == f"fine-tuned from {card.resolve()} (sha256 {file_sha256(card)[:8]}…): {SUMMARY}"
    # the long data clipped at a word, so that the teacher after it still shows
    clipped, after = first.rsplit("…", 1)  # the first "…" ends the short sha256
    assert clipped.split()[-1] in {word.rstrip(",") for word in LONG_DATA.split()}
    assert after == "; teacher /t/isnet.onnx" and len(first) <= 240
    text = flat(run_cli("info", last, columns=250).output)
    assert "provenance: init │ fine-tuned from" in text and "provenance: init 2 │ fine-tuned from" in text
    assert rows["provenance: data"] == "my-set" and rows["provenance: steps"] == "60"


def test_a_long_chain_is_cut_to_a_count_and_nothing_mid_word() -> None:
    link: Any = None
    for n in range(9):  # 9 links: 6 shown, then how many more
        parent = {"sha256": str(n) * 64, "data": f"set-{n}", "steps": n}
        if link is not None:
            parent["init"] = link
        link = {"path": f"/runs/r{n}/last.pt", "provenance": parent}
    rows = provenance_rows({"init": link, "notes": "word " * 200})
    labels = [label for label, _ in rows]
    assert labels[:7] == [
        "provenance: init",
        *(f"provenance: init {i}" for i in range(2, 7)),
        "provenance: init …",
    ]
    assert rows[0][1] == "fine-tuned from /runs/r8/last.pt (sha256 88888888…): trained 8 steps on set-8"
    assert rows[6][1] == "3 earlier link(s), in the file"
    notes = dict(rows)["provenance: notes"]
    assert notes.endswith("word…") and len(notes) <= 400
