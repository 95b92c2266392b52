"""How to feed a foreign DIS/SOD ONNX model and read its map: size, colour order, scaling, output.

A file written by ``pdseg export`` says all of this in its metadata. Any other ONNX model (IS-Net,
U2-Net, BiRefNet exports, ...) does not, so pdseg takes it, in this order, from:

1. ``--onnx-spec`` (:func:`parse_spec`), given by the user; keys it leaves out come from 2 when the
   file is recognised, else from the defaults below;
2. :data:`KNOWN_MODELS`, a table of published models recognised by their input and output
   signature (:func:`recognise`);
3. nothing: :func:`resolve_spec` then says in one line what to pass.

The map a foreign model gives goes through pdseg's usual rule (resized to the image, floor(255 p)),
so ``pdseg eval --weights isnet.onnx`` scores a published model with the same code as pdseg's own.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from pdseg_cli.config import NORMALIZATION
from pdseg_cli.errors import InputError, WeightsError, listing

OutputKind = Literal["probability", "logit"]
_IMAGENET_MEAN_01 = (0.485, 0.456, 0.406)
_IMAGENET_STD_01 = (0.229, 0.224, 0.225)
SPEC_KEYS = ("size", "mean", "std", "scale", "color", "output", "channel", "kind", "name")  # parse_spec's
SPEC_HELP = (
    "size=N (or dynamic), mean=M or R:G:B, std=S or R:G:B, scale=255|1 (the range mean and std are "
    "on; R:G:B whatever color says), color=rgb|bgr, output=NAME|INDEX (a name first), channel=N (of an "
    "output with several maps), kind=probability|logit"
)


@dataclass(frozen=True)
class OnnxSpec:
    """What a foreign ONNX model takes and gives.

    Attributes:
        name: a label for the model, shown to the user and kept in reports.
        size: the fixed square input side, or None when the graph takes any size (then pdseg's
            ``--size`` applies, default 1024).
        color: ``"RGB"`` or ``"BGR"`` channel order.
        scale: the range the pixels are brought to before ``mean`` and ``std`` apply (255 keeps
            0..255; 1 divides by 255 first).
        mean: per-channel mean, on the ``scale`` range.
        std: per-channel std, on the ``scale`` range.
        output: which output holds the map: a name, or an index into the outputs.
        kind: whether that output is a probability (0..1) or a logit.
        channel: which map of that output, when it holds several (B, C, H, W), e.g. 1 for the
            foreground of a (background, foreground) softmax.
    """

    name: str
    size: int | None
    color: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output: str | int
    kind: OutputKind
    channel: int = 0

    @property
    def normalization(self) -> dict[str, Any]:
        """The input normalisation in the form of ``pdseg_cli.config.NORMALIZATION``."""
        return {"color": self.color, "scale": self.scale, "mean": self.mean, "std": self.std}

    def describe(self) -> str:
        """One line for the user: the name, input size, colour order, normalisation and output."""
        size = f"{self.size}x{self.size}" if self.size else "any size"
        order = 1 if self.color == "RGB" else -1  # shown R:G:B, as --onnx-spec takes them
        mean = ":".join(f"{v:g}" for v in self.mean[::order])
        std = ":".join(f"{v:g}" for v in self.std[::order])
        out = f"'{self.output}'" if isinstance(self.output, str) else f"#{self.output}"
        if self.channel:
            out += f" channel {self.channel}"
        return (
            f"{self.name}: {size} {self.color}, (x on 0..{self.scale:g} - R:G:B {mean}) / {std}, "
            f"output {out} ({self.kind})"
        )

    def key(self) -> str:
        """A stable text of everything that changes the map (for cache keys)."""
        key = f"{self.size}|{self.color}|{self.scale:g}|{self.mean}|{self.std}|{self.output}|{self.kind}"
        return key + (f"|{self.channel}" if self.channel else "")  # earlier keys (caches) unchanged


@dataclass(frozen=True)
class Signature:
    """What an ONNX graph shows about itself: its first input's name, shape and element type, any
    other inputs, and every output's name and shape.

    Dimensions that are not fixed numbers (named or missing) are None. Element types are numpy's
    names (``float32``, ``uint8``); a non-tensor input keeps onnxruntime's text (``seq(...)``).
    """

    input_name: str
    input_shape: tuple[int | None, ...]
    outputs: tuple[tuple[str, tuple[int | None, ...]], ...]
    input_type: str = "float32"
    # (name, shape, element type) of each input after the first: pdseg feeds one tensor, so any
    # here makes the model one it cannot run (:func:`refuse_unfeedable`)
    other_inputs: tuple[tuple[str, tuple[int | None, ...], str], ...] = ()

    @property
    def fixed_side(self) -> int | None:
        """The input's side when it is a fixed square (B, 3, N, N), else None."""
        shape = self.input_shape
        if len(shape) == 4 and shape[2] is not None and shape[2] == shape[3]:
            return int(shape[2])
        return None

    def inputs_text(self) -> list[str]:
        """``'x' 1x3x320x320 uint8`` for each input, the type said only where it is not float32."""
        inputs = [(self.input_name, self.input_shape, self.input_type), *self.other_inputs]
        return [f"'{n}' {_dims(s)}{'' if t == 'float32' else ' ' + t}" for n, s, t in inputs]

    def text(self) -> str:
        ins = listing([f"input {i}" for i in self.inputs_text()], 4)
        outs = listing([f"'{n}' {_dims(s)}" for n, s in self.outputs], 4)
        return f"{ins}, outputs {outs}"


def _dims(shape: tuple[int | None, ...]) -> str:
    """``1x3x?x?``: a shape as messages show it, ``?`` where a dimension is not fixed."""
    return "x".join("?" if d is None else str(d) for d in shape)


@dataclass(frozen=True)
class KnownModel:
    """A published model recognised by its signature: ``matches`` decides, ``spec`` says how to run it."""

    spec: OnnxSpec
    input_name: str | None  # None: any
    side: int | None  # the fixed input side it must have, or None: any
    min_outputs: int
    max_outputs: int
    first_output: str | None = None  # None: any
    output_names: tuple[str, ...] | None = None  # every output, in order; None: any

    def matches(self, sig: Signature) -> bool:
        if self.input_name is not None and sig.input_name != self.input_name:
            return False
        if self.output_names is not None and tuple(n for n, _ in sig.outputs) != self.output_names:
            return False
        if self.side is not None and sig.fixed_side != self.side:
            return False
        if self.first_output is not None and (not sig.outputs or sig.outputs[0][0] != self.first_output):
            return False
        return self.min_outputs <= len(sig.outputs) <= self.max_outputs


PDSEG_WITHOUT_METADATA = "pdseg export without metadata"  # the name of its KNOWN_MODELS entry

# The first match wins, so the narrower entries come first. Each entry's preprocessing is the one
# the model was trained with (its authors' inference code), not a guess from the file.
KNOWN_MODELS: tuple[KnownModel, ...] = (
    # pdseg's own export with its metadata stripped (by an optimiser or converter that drops
    # metadata_props): the names pdseg_cli.engine.export gives its graph, read as pdseg reads an
    # export (its logits output, pdseg's normalisation). The training size went with the metadata,
    # so none is assumed here: predict says so and asks for --size.
    KnownModel(
        OnnxSpec(
            PDSEG_WITHOUT_METADATA,
            None,
            NORMALIZATION["color"],
            NORMALIZATION["scale"],
            NORMALIZATION["mean"],
            NORMALIZATION["std"],
            "logits",
            "logit",
        ),
        input_name="input",
        side=None,
        min_outputs=2,
        max_outputs=2,
        output_names=("probabilities", "logits"),
    ),
    # IS-Net (Qin et al., ECCV 2022) as the @imgly/background-removal-data package ships it: input
    # "input", first output "output" is the sigmoid of the final side output; that package feeds
    # (x - 128) / 256.
    KnownModel(
        OnnxSpec("isnet (imgly)", 1024, "RGB", 255.0, (128.0,) * 3, (256.0,) * 3, "output", "probability"),
        input_name="input",
        side=1024,
        min_outputs=1,
        max_outputs=16,
        first_output="output",
    ),
    # BiRefNet (Zheng et al., CAAI AIR 2024) exports from its repository: "input_image" ->
    # "output_image", the final map's logits; ImageNet mean/std on 0..1.
    KnownModel(
        OnnxSpec("birefnet", 1024, "RGB", 1.0, _IMAGENET_MEAN_01, _IMAGENET_STD_01, 0, "logit"),
        input_name="input_image",
        side=None,
        min_outputs=1,
        max_outputs=1,
    ),
    # U2-Net / U2-NetP (Qin et al., PR 2020; rembg's u2net*.onnx): 320x320, seven side outputs d0..d6,
    # each a sigmoid; d0 is the fused map. ImageNet mean/std on 0..1.
    KnownModel(
        OnnxSpec("u2net", 320, "RGB", 1.0, _IMAGENET_MEAN_01, _IMAGENET_STD_01, 0, "probability"),
        input_name=None,
        side=320,
        min_outputs=7,
        max_outputs=7,
    ),
    # IS-Net as its authors' code exports it (rembg's isnet-general-use.onnx and the DIS repository):
    # 1024x1024, six side outputs, each a sigmoid, the first the finest; normalised
    # (x / 255 - 0.5) / 1.
    KnownModel(
        OnnxSpec("isnet", 1024, "RGB", 1.0, (0.5,) * 3, (1.0,) * 3, 0, "probability"),
        input_name=None,
        side=1024,
        min_outputs=6,
        max_outputs=6,
    ),
)

# What an unrecognised model gets for the keys --onnx-spec leaves out: the commonest convention
# (ImageNet mean/std on 0..1, RGB, first output, a probability) and the graph's own size.
_DEFAULT = OnnxSpec("onnx", None, "RGB", 1.0, _IMAGENET_MEAN_01, _IMAGENET_STD_01, 0, "probability")


def recognise(sig: Signature) -> OnnxSpec | None:
    """The spec of the first :data:`KNOWN_MODELS` entry that matches ``sig``, or None."""
    for known in KNOWN_MODELS:
        if known.matches(sig):
            spec = known.spec
            if spec.size is not None and sig.fixed_side is None:
                spec = replace(spec, size=None)  # a dynamic-size export of a known model
            return spec
    return None


def _three(key: str, text: str) -> tuple[float, float, float]:
    parts = [p for p in text.replace("/", ":").split(":") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise InputError(f"--onnx-spec {key}={text}: not a number", hint=f"e.g. {key}=0.5 or R:G:B") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise InputError(
            f"--onnx-spec {key}={text}: give one value or three (R:G:B)",
            hint=f"e.g. {key}=0.5 or {key}=0.485:0.456:0.406",
        )
    if key == "std" and any(v == 0 for v in values):
        raise InputError("--onnx-spec std cannot be 0", hint="e.g. std=1, or std=0.229:0.224:0.225")
    return values[0], values[1], values[2]


def parse_spec(text: str | None) -> dict[str, Any]:
    """Parse ``--onnx-spec`` (``key=value`` pairs, comma-separated) into :class:`OnnxSpec` fields.

    Raises:
        InputError: an unknown key or a bad value (the message names it and the form).
    """
    if not text or not text.strip():
        return {}
    fields: dict[str, Any] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            raise InputError(f"--onnx-spec: {item!r} is not key=value", hint=SPEC_HELP)
        if key == "size":
            if value.lower() in ("dynamic", "any", "none"):
                fields["size"] = None
            elif value.isdigit() and 32 <= int(value) <= 8192:
                fields["size"] = int(value)
            else:
                raise InputError(
                    f"--onnx-spec size={value}: a side from 32 to 8192, or dynamic",
                    hint="e.g. size=1024, or size=dynamic for a graph that takes any size",
                )
        elif key in ("mean", "std"):
            fields[key] = _three(key, value)
        elif key == "scale":
            if value not in ("1", "255", "1.0", "255.0"):
                raise InputError(
                    f"--onnx-spec scale={value}: 255 (mean/std on 0..255) or 1 (on 0..1)", hint="e.g. scale=1"
                )
            fields["scale"] = float(value)
        elif key == "color":
            if value.upper() not in ("RGB", "BGR"):
                raise InputError(f"--onnx-spec color={value}: rgb or bgr", hint="e.g. color=bgr")
            fields["color"] = value.upper()
        elif key == "output":
            # an index (-1: the last output, as Python counts), else a name
            fields["output"] = int(value) if value.lstrip("-").isdigit() else value
        elif key == "channel":
            if not value.isdigit():
                raise InputError(
                    f"--onnx-spec channel={value}: the map's index in the output, 0, 1, ...",
                    hint="e.g. channel=1",
                )
            fields["channel"] = int(value)
        elif key == "kind":
            kinds = {"probability": "probability", "prob": "probability", "logit": "logit", "logits": "logit"}
            if value.lower() not in kinds:
                raise InputError(f"--onnx-spec kind={value}: probability or logit", hint="e.g. kind=logit")
            fields["kind"] = kinds[value.lower()]
        elif key == "name":
            fields["name"] = value
        else:
            close = difflib.get_close_matches(key, SPEC_KEYS, n=1)
            raise InputError(
                f"--onnx-spec: unknown key {key!r}",
                hint=f"did you mean {close[0]}={value}?" if close else f"the keys: {SPEC_HELP}",
            )
    return fields


def resolve_spec(sig: Signature, user: str | None, source: str) -> OnnxSpec:
    """The spec to run a foreign ONNX model with: ``--onnx-spec`` over the recognised model.

    Args:
        sig: the graph's signature.
        user: the ``--onnx-spec`` text, or None.
        source: the file, for messages.

    Raises:
        WeightsError: the model has inputs pdseg cannot feed (:func:`refuse_unfeedable`), is not
            recognised and no ``--onnx-spec`` was given, or its input is not (B, 3, H, W).
        InputError: a bad ``--onnx-spec``, or a size the graph does not take.
    """
    refuse_unfeedable(sig, source)
    if len(sig.input_shape) != 4 or sig.input_shape[1] not in (3, None):
        raise WeightsError(
            f"{source} takes {sig.text()}, not a (B, 3, H, W) image: not a DIS/SOD model pdseg can run"
        )
    _refuse_input_shapes(sig, source)
    fields = parse_spec(user)
    known = recognise(sig)
    if known is None and not fields:
        raise WeightsError(
            f"{source} is not a pdseg export and its signature ({sig.text()}) matches no known model",
            hint=f"say how to run it: --onnx-spec {SPEC_HELP}",
        )
    base = known or replace(_DEFAULT, size=sig.fixed_side, name=f"onnx ({sig.input_name})")
    spec = replace(base, **_in_channel_order(base, fields))
    fixed = sig.fixed_side
    if fixed is not None and spec.size != fixed:
        given = "dynamic" if spec.size is None else spec.size
        raise InputError(
            f"{source} takes only {fixed}x{fixed} inputs (--onnx-spec size={given})",
            hint=f"drop size= from --onnx-spec, or give size={fixed}",
        )
    names = [name for name, _ in sig.outputs]
    if isinstance(spec.output, int) and str(spec.output) in names:
        # a name that is a number (PyTorch's exports name outputs so: "1890"): the name wins, as
        # the hint below offers such names
        spec = replace(spec, output=str(spec.output))
    if isinstance(spec.output, int) and not -len(names) <= spec.output < len(names):
        raise InputError(
            f"{source} has {len(names)} output(s); --onnx-spec output={spec.output} is not one",
            hint=f"give output=0..{len(names) - 1} or a name ({', '.join(names[:8])}), or drop output=",
        )
    if isinstance(spec.output, int) and spec.output < 0:
        spec = replace(spec, output=len(names) + spec.output)
    if isinstance(spec.output, str) and spec.output not in names:
        raise InputError(
            f"{source} has no output {spec.output!r}", hint=f"its outputs: {', '.join(names[:8])}"
        )
    chosen = output_name(spec, names)
    _check_channel(spec, (chosen, dict(sig.outputs)[chosen]), "channel" in fields, source)
    return spec


def _in_channel_order(base: OnnxSpec, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with mean and std in the graph's channel order, as a spec holds them: the user
    gives them R:G:B (the help's form) whatever ``color`` says, and a mean or std left out keeps
    ``base``'s values for the same colours when ``color`` changes the order."""
    color = fields.get("color", base.color)
    out = dict(fields)
    for key in ("mean", "std"):
        rgb = fields.get(key)
        if rgb is None:
            own: tuple[float, float, float] = getattr(base, key)
            rgb = own if base.color == "RGB" else own[::-1]
        out[key] = tuple(rgb) if color == "RGB" else tuple(rgb)[::-1]
    return out


# what pdseg can feed: the normalised image as float32, or cast to float16 for an fp16 graph
FEEDABLE_TYPES = ("float32", "float16")


def refuse_unfeedable(sig: Signature, source: str) -> None:
    """Refuse a graph pdseg cannot feed whatever ``--onnx-spec`` says: one with more than one input
    (pdseg gives it the image alone) or whose input is not a float32 or float16 tensor (a uint8 or
    int64 image input, say). Said at load, in one line, not as onnxruntime's error at the first
    image; no ``--onnx-spec`` can fix it, so none is hinted.

    Raises:
        WeightsError: naming every input and its element type.
    """
    feeds = "pdseg feeds one float32 (or float16) image tensor, (B, 3, H, W)"
    if sig.other_inputs:
        raise WeightsError(
            f"{source} cannot run in pdseg: it takes {1 + len(sig.other_inputs)} inputs "
            f"({listing(sig.inputs_text(), 4)}); {feeds}",
            hint="export the model with the image as its only input",
        )
    if sig.input_type not in FEEDABLE_TYPES:
        raise WeightsError(
            f"{source} cannot run in pdseg: its input '{sig.input_name}' is {sig.input_type}; {feeds}",
            hint=f"export the model with a float32 image input (a cast to {sig.input_type} can go "
            "inside the graph)",
        )


def _refuse_input_shapes(sig: Signature, source: str) -> None:
    """Refuse inputs pdseg cannot feed: a fixed batch other than 1 (it runs fixed-size models one
    image at a time) and a fixed height or width that is not one square side (it resizes images to
    N x N). Said here, in one line, not as an onnxruntime error at the first image.

    Raises:
        WeightsError: naming the input's shape.
    """
    batch, height, width = sig.input_shape[0], sig.input_shape[2], sig.input_shape[3]
    if batch not in (None, 1):
        raise WeightsError(
            f"{source} takes batches of exactly {batch} images ({sig.text()}); pdseg runs one at a time",
            hint="export the model with a batch of 1 or a dynamic batch",
        )
    if height is not None and width is not None and height != width:
        raise WeightsError(
            f"{source} takes only {height}x{width} inputs; pdseg feeds a model square N x N images",
            hint="export the model with a square or dynamic input size",
        )


def _check_channel(
    spec: OnnxSpec, output: tuple[str, tuple[int | None, ...]], given: bool, source: str
) -> None:
    """Refuse an output with several maps read without ``channel=`` (the first is often the
    background of a softmax: an inverted mask in silence), and a channel it does not have.

    Raises:
        WeightsError: several maps and no ``channel=``.
        InputError: ``channel=`` beyond the output's maps.
    """
    name, shape = output
    maps = shape[1] if len(shape) == 4 else 1
    if maps is None:
        return  # not known before a run
    if maps > 4 and shape[3] == 1:
        raise WeightsError(
            f"{source}: output {name!r} is {_dims(shape)}, "
            "channels last; pdseg reads (B, 1, H, W) or (B, H, W) maps",
            hint="export the model with its map channels first",
        )
    if spec.channel >= maps:
        raise InputError(
            f"{source}: output {name!r} has {maps} map(s); channel={spec.channel} is not one",
            hint="drop channel=" if maps == 1 else f"give channel=0..{maps - 1}",
        )
    if maps > 1 and not given:
        raise WeightsError(
            f"{source}: output {name!r} holds {maps} maps; which is the foreground?",
            hint="pass --onnx-spec channel=N, e.g. channel=1 for a (background, foreground) softmax",
        )


def output_name(spec: OnnxSpec, names: Sequence[str]) -> str:
    """The name of the output ``spec`` reads."""
    return names[spec.output] if isinstance(spec.output, int) else spec.output
