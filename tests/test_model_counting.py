"""Parameter and multiply-add counts against ``docs/model.md`` and against torchprofile."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from pdseg_cli.config import VARIANTS, ModelConfig, get_config
from pdseg_cli.model import count_macs, count_params, create_model
from pdseg_cli.model.mscan import MSCAN

# Exact parameter counts. pdseg-b and segnext-b are docs/model.md's measured totals ('Variants');
# the others follow from the same per-module formulas (checked below) and are pinned here.
PARAMS = {
    "pdseg-t": 4_346_212,
    "pdseg-s": 15_211_972,
    "pdseg-b": 28_039_620,
    "pdseg-l": 46_398_660,
    "segnext-t": 4_225_121,  # docs/model.md, 'Counting': SegNeXt-T 4.225M
    "segnext-b": 27_559_873,
    "pdseg-tiny": 130_036,
}
# docs/model.md, 'Encoder' (MSCAN-B exact; T, S, L to the 1,000 given there)
BACKBONE = {"pdseg-t": 3.904e6, "pdseg-s": 13.450e6, "pdseg-b": 26_277_824, "pdseg-l": 44.637e6}
PAPER_PARAMS, PAPER_GMACS = 28.0e6, 129.2  # the paper's PDSeg at 1024x1024


def _backbone_formula(config: ModelConfig) -> int:
    """MSCAN parameters from the per-block formula (docs/model.md, 'Encoder') plus downsampling and norms."""
    total, prev = 0, 3
    for i, (c, depth, r) in enumerate(zip(config.embed_dims, config.depths, config.mlp_ratios, strict=True)):
        if i == 0:  # stem: conv 3->C/2 + BN, conv C/2->C + BN
            total += 9 * prev * (c // 2) + (c // 2) + 2 * (c // 2) + 9 * (c // 2) * c + c + 2 * c
        else:  # 3x3 stride-2 conv + BN
            total += 9 * prev * c + c + 2 * c
        total += depth * ((3 + 2 * r) * c * c + (120 + 11 * r) * c)
        total += 2 * c  # stage LayerNorm
        prev = c
    return total


def _decoder_formula(config: ModelConfig) -> int:
    enc = list(config.embed_dims)
    if config.decoder == "light_ham":
        c, c_in = config.decoder_widths[0], sum(enc[1:])
        # squeeze + GN, ham_in (bias), ham_out + GN, align + GN, classifier
        return c_in * c + 2 * c + c * c + c + c * c + 2 * c + c * c + 2 * c + c + 1
    total, prev = 0, None
    for e, c in zip(enc[::-1], config.decoder_widths, strict=True):
        c_in = e if prev is None else e + prev + 1
        total += c_in * c + 3 * c * c + 8 * c + 1  # docs/model.md, 'Decoder', per level
        prev = c
    return total


@pytest.mark.parametrize("name", list(VARIANTS))
def test_exact_parameter_counts(name: str) -> None:
    config = get_config(name)
    assert count_params(name) == PARAMS[name]
    assert count_params(config) == PARAMS[name]
    assert PARAMS[name] == _backbone_formula(config) + _decoder_formula(config)


@pytest.mark.parametrize("name", list(BACKBONE))
def test_backbone_parameters_match_model_md(name: str) -> None:
    config = get_config(name)
    with torch.device("meta"):
        encoder = MSCAN(config.embed_dims, config.depths, config.mlp_ratios)
    n = sum(p.numel() for p in encoder.parameters())
    assert n == _backbone_formula(config)
    assert n == pytest.approx(BACKBONE[name], abs=500)


def test_count_params_of_a_built_model() -> None:
    assert count_params(create_model("pdseg-tiny")) == PARAMS["pdseg-tiny"]


def test_pdseg_b_matches_the_paper() -> None:
    assert abs(PARAMS["pdseg-b"] / PAPER_PARAMS - 1) < 0.01
    macs = count_macs("pdseg-b", 1024)
    assert abs(macs / 1e9 / PAPER_GMACS - 1) < 0.03
    assert macs == 127_583_404_032  # docs/model.md, 'Variants': 127.58G, measured with torchprofile


def test_segnext_b_matches_segnext() -> None:
    assert count_macs("segnext-b", 1024) / 1e9 == pytest.approx(137.6, abs=0.05)


def test_segnext_t_matches_segnext() -> None:
    # docs/model.md, 'Counting', torchprofile reference: SegNeXt-T 25.11G at 1024x1024
    assert count_macs("segnext-t", 1024) / 1e9 == pytest.approx(25.11, abs=0.01)


def test_count_macs_accepts_name_config_model_and_sizes() -> None:
    config = get_config("pdseg-tiny")
    by_name = count_macs("pdseg-tiny", 128)
    assert count_macs(config, 128) == by_name
    assert count_macs(create_model("pdseg-tiny"), (128, 128)) == by_name
    assert count_macs("pdseg-tiny", (100, 120)) == count_macs("pdseg-tiny", (128, 128))  # padded inside
    assert count_macs("pdseg-tiny", 256) > 3.9 * by_name
    with pytest.raises(TypeError):
        count_macs(3.0, 128)  # type: ignore[arg-type]


def test_nmf_macs_follow_the_formula() -> None:
    # docs/model.md, 'Counting': the NMF's matrix products are N C R (2T+3) + (N+C) R^2 (2T+1)
    n, c, r, t = 128 * 128, 512, 64, 7
    by_op = count_macs("segnext-b", 1024, by_op=True)
    assert isinstance(by_op, dict)
    assert by_op["aten.bmm"] == n * c * r * (2 * t + 3) + (n + c) * r * r * (2 * t + 1)


def _torchprofile_macs(model: torch.nn.Module, size: tuple[int, int]) -> int:
    torchprofile = pytest.importorskip("torchprofile")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # "No handlers found: aten::pad" etc.
        return int(torchprofile.profile_macs(model.eval(), torch.randn(1, 3, *size)))


TINY_SINGLE_HEAD = dataclasses.replace(get_config("pdseg-tiny"), decoder="light_ham", decoder_widths=(32,))


@pytest.mark.parametrize(
    ("config", "size"),
    [
        (get_config("pdseg-tiny"), (97, 131)),  # padded inside
        (dataclasses.replace(get_config("pdseg-tiny"), residual_maps=True), (64, 96)),
        (TINY_SINGLE_HEAD, (64, 96)),
    ],
    ids=["progressive", "residual-maps", "single-head"],
)
def test_count_macs_equals_torchprofile(config: ModelConfig, size: tuple[int, int]) -> None:
    # the same operators as the full variants, in miniature (the full ones: the slow test below)
    assert count_macs(config, size) == _torchprofile_macs(create_model(config), size)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pdseg-b", "segnext-b"])
def test_count_macs_equals_torchprofile_at_1024(name: str) -> None:
    macs = count_macs(name, 1024)
    assert macs == pytest.approx(_torchprofile_macs(create_model(name), (1024, 1024)), rel=0.005)
