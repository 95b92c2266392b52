"""The decoder registry: the model, ``pdseg info`` and ``optimize`` read it; an unknown name is one
line; a decoder registered without an inference form is kept plain by ``optimize`` with a note,
and ``Predictor`` and ``pdseg predict`` run a model that has one (pdseg-tiny's encoder, CPU)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from pdseg_cli.cli import app
from pdseg_cli.config import VARIANTS, ModelConfig, get_config
from pdseg_cli.engine.predict import Predictor
from pdseg_cli.errors import InputError
from pdseg_cli.model import PDSeg, create_model, load_model, save_checkpoint
from pdseg_cli.model.fusion import KeptPlain
from pdseg_cli.model.optimize import FastPDSeg, optimize
from pdseg_cli.model.registry import DECODERS, DecoderEntry, check_decoder, decoder_entry, register_decoder


class StrideEightConv(nn.Module):
    """A decoder with no inference form: one 1x1 conv on the stride-8 encoder map."""

    def __init__(self, encoder_channels: Sequence[int]) -> None:
        super().__init__()
        self.strides: tuple[int, ...] = (8,)
        self.conv = nn.Conv2d(encoder_channels[1], 1, 1)

    @classmethod
    def from_config(cls, config: ModelConfig, encoder_channels: Sequence[int]) -> StrideEightConv:
        return cls(encoder_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.conv(features[1])]


@pytest.fixture
def plain_decoder() -> Iterator[DecoderEntry]:
    entry = register_decoder(DecoderEntry("stride8", StrideEightConv, "1x1 conv (test)", widths=1, fast=None))
    yield entry
    del DECODERS[entry.name]


def _config() -> ModelConfig:
    return dataclasses.replace(
        get_config("pdseg-tiny"), name="tiny-stride8", decoder="stride8", decoder_widths=(8,)
    )


def _model(scale: float = 1.0) -> PDSeg:
    torch.manual_seed(0)
    model = create_model(_config())
    with torch.no_grad():  # scale 300: logits spread over 0..255 once quantised
        model.decoder.conv.weight.mul_(scale)
    return model


def test_the_registry_serves_every_variant() -> None:
    assert list(DECODERS) == ["progressive", "light_ham"]
    for config in VARIANTS.values():
        entry = check_decoder(config)
        assert isinstance(create_model(dataclasses.replace(config, depths=(1, 1, 1, 1))).decoder, entry.cls)
        assert entry.fast is not None
    assert decoder_entry("progressive").label == "progressive (P1)"
    assert decoder_entry("light_ham").label == "single (LightHam)"


def test_unknown_decoder_is_one_line_listing_the_known_ones() -> None:
    config = dataclasses.replace(get_config("pdseg-tiny"), decoder="progresive")
    with pytest.raises(InputError) as info:
        create_model(config)
    message = str(info.value)
    assert "unknown decoder 'progresive' (known: progressive, light_ham)" in message
    assert "did you mean progressive?" in message and "\n" not in message
    with pytest.raises(InputError, match=r"'light_ham' needs 1 decoder_widths"):
        create_model(dataclasses.replace(get_config("pdseg-tiny"), decoder="light_ham"))


def test_a_name_is_registered_once(plain_decoder: DecoderEntry) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_decoder(plain_decoder)


def test_optimize_keeps_a_decoder_without_fast_form_plain_with_a_note(plain_decoder: DecoderEntry) -> None:
    model = _model()
    fast = optimize(model)
    assert isinstance(fast, FastPDSeg) and isinstance(fast.decoder, KeptPlain)
    assert fast.notes == (
        "the decoder 'stride8' (StrideEightConv) has no inference form: it runs as built, "
        "with the same results and without the fast form's speed-ups",
    )
    assert not any(p.requires_grad for p in fast.parameters())
    own = {p.data_ptr() for p in model.parameters()}
    assert not own & {p.data_ptr() for p in fast.parameters()}
    fast.train()  # inference forms stay in eval mode
    assert not fast.decoder.module.training
    x = torch.randn(2, 3, 97, 131)
    with torch.inference_mode():
        assert float((fast(x) - model(x)).abs().max()) <= 1e-4
        levels = fast(x, return_levels=True)
    assert len(levels) == 1 and levels[0].shape == (2, 1, 97, 131)


def _image(h: int = 45, w: int = 70) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_predictor_runs_a_model_with_that_decoder(plain_decoder: DecoderEntry, tmp_path: Path) -> None:
    model = _model(scale=300.0)
    plain = Predictor(model, device="cpu", size=64, optimized=False, channels_last=False).predict(_image())
    predictor = Predictor(model, device="cpu", size=64)
    assert getattr(predictor.model, "notes", ()) != ()
    assert set(predictor.model.notes) <= set(predictor.notes)  # shown with the run's other notes
    got = predictor.predict(_image())
    assert got.shape == (45, 70) and np.abs(got.astype(int) - plain.astype(int)).max() <= 1
    # and from a checkpoint: the registered name is read back
    path = save_checkpoint(model, tmp_path / "stride8.pt", train_size=64)
    assert isinstance(load_model(path).decoder, StrideEightConv)
    np.testing.assert_array_equal(Predictor(path, device="cpu").predict(_image()), got)


def test_pdseg_predict_runs_a_model_with_that_decoder(plain_decoder: DecoderEntry, tmp_path: Path) -> None:
    path = save_checkpoint(_model(scale=300.0), tmp_path / "stride8.pt", train_size=64)
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), _image())
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["predict", str(folder), "-o", str(out), "-w", str(path), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(out / "a.png"), cv2.IMREAD_UNCHANGED).shape == (45, 70)
    assert "StrideEightConv) has no inference form" in " ".join(result.output.split())  # the note is shown
