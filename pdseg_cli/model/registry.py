"""The decoder registry: every decoder a :class:`~pdseg_cli.config.ModelConfig` can name.

One :class:`DecoderEntry` per decoder gives the name used in ``ModelConfig.decoder``, the class, the
label ``pdseg info`` shows, how many ``decoder_widths`` it takes, and its inference form. The model
constructor, ``pdseg info`` and :func:`~pdseg_cli.model.optimize.optimize` all read it; adding a
decoder is writing its class and one :func:`register_decoder` call (``docs/model.md``, 'Inference
form').

A registered class must provide ``from_config(config, encoder_channels)`` (a classmethod building it
for encoder maps of those channels, stride 4 first), a ``strides`` attribute (its levels' strides,
coarse to fine), and ``forward(features) -> list of (B, 1, H / s, W / s) logits``, coarse to fine.
Its inference form, when it has one, is built from the decoder alone and is called
``forward(features, fused)`` with the same result.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from pdseg_cli.config import ModelConfig
from pdseg_cli.errors import InputError
from pdseg_cli.model.decoder import FastLightHamHead, FastProgressiveDecoder, LightHamHead, ProgressiveDecoder


@dataclass(frozen=True)
class DecoderEntry:
    """One registered decoder.

    Attributes:
        name: the value of ``ModelConfig.decoder`` that selects it.
        cls: the decoder class (see the module docstring for what it must provide).
        label: how ``pdseg info`` names it.
        widths: how many ``decoder_widths`` it takes.
        fast: builds its inference form from a built decoder, or None when it has none (the
            optimised model then runs it as built and says so in its ``notes``).
    """

    name: str
    cls: type[nn.Module]
    label: str
    widths: int
    fast: Callable[[Any], nn.Module] | None


DECODERS: dict[str, DecoderEntry] = {}


def register_decoder(entry: DecoderEntry) -> DecoderEntry:
    """Add a decoder to :data:`DECODERS`.

    Raises:
        ValueError: the name is taken.
    """
    if entry.name in DECODERS:
        raise ValueError(f"a decoder named {entry.name!r} is already registered")
    DECODERS[entry.name] = entry
    return entry


def decoder_entry(name: str) -> DecoderEntry:
    """The registered decoder called ``name``.

    Raises:
        InputError: no such decoder; the message lists the known ones.
    """
    entry = DECODERS.get(name)
    if entry is not None:
        return entry
    close = difflib.get_close_matches(str(name), list(DECODERS), n=2, cutoff=0.5)
    raise InputError(
        f"unknown decoder {name!r} (known: {', '.join(DECODERS)})",
        hint=f"did you mean {' or '.join(close)}?" if close else None,
    )


def check_decoder(config: ModelConfig) -> DecoderEntry:
    """The entry of ``config.decoder``, after checking that ``config`` gives it its number of widths.

    Raises:
        InputError: an unknown decoder, or the wrong number of ``decoder_widths`` for it.
    """
    entry = decoder_entry(config.decoder)
    if len(config.decoder_widths) != entry.widths:
        raise InputError(
            f"decoder {entry.name!r} needs {entry.widths} decoder_widths, got {config.decoder_widths}"
        )
    return entry


# our P1 (docs/model.md, 'Decoder') and SegNeXt's single head (docs/model.md, 'Single head')
register_decoder(
    DecoderEntry("progressive", ProgressiveDecoder, "progressive (P1)", widths=4, fast=FastProgressiveDecoder)
)
register_decoder(
    DecoderEntry("light_ham", LightHamHead, "single (LightHam)", widths=1, fast=FastLightHamHead)
)
