"""Run an exported pdseg model (ONNX through onnxruntime, or TorchScript) like the PyTorch model.

Both loaders give an object that is called on the same input as ``model(x)`` (the normalised float
tensor, (B, 3, H, W), any H and W) and returns LOGITS (B, 1, H, W) as a torch tensor, so the
predictor can use it in place of the PyTorch network. The file's metadata (see
:class:`ExportMetadata`) says which variant it is, how inputs are normalised and what it returns.

An exported graph has two outputs: ``probabilities`` (sigmoid of the map, the one deployment code
wants) and ``logits``. The loaders read ``logits`` directly; recovering logits from probabilities is
lossy where the model is confident (in fp32, sigmoid(l) rounds to exactly 1.0 for l > ~16.6), and a
predictor that resizes logits before the sigmoid would then blur confident edges. A file with
probabilities only (a foreign model, or a third-party export) still works through a clamped logit,
and the predictor resizes its probabilities, not those logits (``gives_probabilities``), so its maps
are what the model's own scripts make.

onnxruntime is optional (``pip install onnx onnxruntime``, or the clone's ``.[onnx]`` extra); it is
imported only when an ONNX file is opened, so this module imports without it.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pdseg_cli.data.header import looks_like_image
from pdseg_cli.engine.onnx_spec import (
    PDSEG_WITHOUT_METADATA,
    OnnxSpec,
    Signature,
    output_name,
    refuse_unfeedable,
    resolve_spec,
)
from pdseg_cli.errors import InputError, NotAvailableError, WeightsError, clip_words, first_line, shell_quote
from pdseg_cli.model.build import starts_like_onnx, weights_line
from pdseg_cli.runtime.memory import is_out_of_memory
from pdseg_cli.runtime.quiet_warnings import ignoring_warnings
from pdseg_cli.weights import SUFFIX_FORMATS

ONNX_INSTALL_HINT = "pip install onnx onnxruntime (from a clone: pip install -e '.[onnx]')"
METADATA_VERSION = 1
# TorchScript keeps the metadata as one JSON extra file inside the zip archive
TORCHSCRIPT_METADATA_FILE = "pdseg.json"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_LOGITS = "logits"
# Clamp for the lossy probabilities -> logits fallback: logit(1 - 1e-7) ~ 16.1, the most an fp32
# probability below 1.0 can say anyway.
_PROB_EPS = 1e-7
# onnxruntime's log levels: 3 keeps errors only (its warnings, e.g. graph.cc MergeShapeInfo, are
# about the file's own shape annotations and leaked to stderr in colour); a run's own failure is
# raised as ModelRunError, so its log line (4: fatal only) would only say it twice
_ORT_LOG_ERRORS = 3
_ORT_LOG_FATAL = 4


class ModelRunError(WeightsError):
    """An exported or foreign model that loaded but failed while running on an input (a graph whose
    Reshape fixes a size, say): one line naming the file, the input shape and onnxruntime's reason,
    so the image it was run on can be reported as failed rather than the run ending in a
    traceback."""


@dataclass(frozen=True)
class ExportMetadata:
    """What an exported file says about itself (ONNX ``metadata_props``, TorchScript extra file).

    Attributes:
        variant: model variant name, e.g. ``"pdseg-b"``.
        config: the full model config (``ModelConfig.to_dict()``).
        train_size: side length of the square images the weights were trained at, or None when the
            checkpoint does not say.
        mean: per-channel mean on the 0..``scale`` range, in ``color`` order; the input is
            ``(image * scale / 255 - mean) / std`` for an 8-bit ``color`` image.
        std: per-channel std, likewise.
        color: the channel order the graph takes, ``"RGB"`` or ``"BGR"`` (the checkpoint's).
        scale: the range mean and std are on, 255 or 1 (the checkpoint's).
        output: what the first (main) output holds: ``"probabilities"`` or ``"logits"``.
        outputs: every output name, in order.
        precision: ``"fp32"`` or ``"fp16"`` (weights and activations; inputs and outputs are fp32
            and the NMF runs in fp32 either way).
        pdseg_version: the pdseg version that wrote the file.
        torch_version: the torch version that wrote the file.
        opset: ONNX opset, or None for TorchScript.
        provenance: what produced the weights, as the source checkpoint recorded it (data, steps,
            teacher, the ``--init`` chain, the model card's summary); stored as JSON under the key
            ``provenance``, and empty for a file written before that key existed.
        extra: further string keys, written as they are (``source``, ``source_sha256``).
    """

    variant: str
    config: dict[str, Any]
    train_size: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output: str = OUTPUT_PROBABILITIES
    outputs: tuple[str, ...] = (OUTPUT_PROBABILITIES, OUTPUT_LOGITS)
    precision: str = "fp32"
    color: str = "RGB"  # files written before these two keys existed were all RGB 0-255
    scale: float = 255.0
    pdseg_version: str = ""
    torch_version: str = ""
    opset: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def normalization(self) -> dict[str, Any]:
        """The input normalisation in the form of ``pdseg_cli.config.NORMALIZATION``."""
        return {"color": self.color, "scale": self.scale, "mean": self.mean, "std": self.std}

    def input_note(self) -> str:
        """How to make the graph's input, as the file's ``input`` entry says it."""
        return f"float32 (B, 3, H, W), any B/H/W: ({self.color} 0-{self.scale:g} - mean) / std"

    def to_strings(self) -> dict[str, str]:
        """Flat string key/values (ONNX metadata_props hold strings only)."""
        out = {
            "pdseg_metadata_version": str(METADATA_VERSION),
            "variant": self.variant,
            "train_size": "" if self.train_size is None else str(self.train_size),
            "input": self.input_note(),
            "mean": ",".join(f"{v:g}" for v in self.mean),
            "std": ",".join(f"{v:g}" for v in self.std),
            "color": self.color,
            "scale": f"{self.scale:g}",
            "output": self.output,
            "outputs": ",".join(self.outputs),
            "precision": self.precision,
            "pdseg_version": self.pdseg_version,
            "torch_version": self.torch_version,
            "opset": "" if self.opset is None else str(self.opset),
            "config": json.dumps(self.config, sort_keys=True),
            # not sorted: the checkpoint's order (summary and data first) is the order pdseg info shows
            "provenance": json.dumps(self.provenance, ensure_ascii=False),
            # how pdseg predict feeds the graph and turns its output into a map (README, 'Deploy')
            "resize": "the float 0-255 image to train_size x train_size, before normalising: averaged "
            "(cv2.INTER_AREA) along an axis that shrinks, then bilinear (cv2.INTER_LINEAR) along one "
            "that grows; or at its own size (the graph pads to a multiple of 32 itself)",
            "maps": "logits resized bilinearly to the image's height and width, then "
            "byte = floor(255 * sigmoid)",
        }
        out.update(self.extra)
        return out

    @classmethod
    def from_strings(cls, data: dict[str, str], source: Path) -> ExportMetadata:
        """Parse what :meth:`to_strings` wrote.

        Raises:
            WeightsError: the file carries no pdseg metadata, or a newer version of it.
        """
        if "pdseg_metadata_version" not in data:
            raise WeightsError(
                f"{source} has no pdseg metadata (not written by `pdseg export`)",
                hint="export it again with `pdseg export`",
            )
        try:
            version = int(data["pdseg_metadata_version"])
            if version > METADATA_VERSION:
                raise WeightsError(
                    f"{source} was written by a newer pdseg (metadata version {version})",
                    hint="upgrade pdseg: pip install -U pdseg",
                )
            mean = tuple(float(v) for v in data["mean"].split(","))
            std = tuple(float(v) for v in data["std"].split(","))
            if len(mean) != 3 or len(std) != 3:
                raise ValueError("mean and std need 3 values")
            known = {
                "pdseg_metadata_version",
                "variant",
                "train_size",
                "input",
                "mean",
                "std",
                "color",
                "scale",
                "output",
                "outputs",
                "precision",
                "pdseg_version",
                "torch_version",
                "opset",
                "config",
                "resize",
                "maps",
                "provenance",
            }
            return cls(
                variant=data["variant"],
                config=json.loads(data["config"]),
                train_size=int(data["train_size"]) if data.get("train_size") else None,
                mean=mean,
                std=std,
                output=data.get("output", OUTPUT_PROBABILITIES),
                outputs=tuple(data.get("outputs", OUTPUT_PROBABILITIES).split(",")),
                precision=data.get("precision", "fp32"),
                color=data.get("color", "RGB").upper(),
                scale=float(data.get("scale", "255")),
                pdseg_version=data.get("pdseg_version", ""),
                torch_version=data.get("torch_version", ""),
                opset=int(data["opset"]) if data.get("opset") else None,
                provenance=_provenance_from(data.get("provenance", "")),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, ValueError) as exc:
            raise WeightsError(
                f"{source} has damaged pdseg metadata ({exc})", hint="export it again with `pdseg export`"
            ) from None


def _provenance_from(text: str) -> dict[str, Any]:
    """The ``provenance`` entry read back. Not needed to run the file, so an edited or damaged one
    does not refuse it: its text is kept whole under ``unreadable``, for ``pdseg info`` to show."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"unreadable": text}


def require_onnxruntime() -> Any:
    """Import onnxruntime, or say exactly what to install.

    Raises:
        NotAvailableError: onnxruntime is not installed.
    """
    try:
        import onnxruntime
    except ImportError:
        raise NotAvailableError(
            "running an ONNX model needs the onnxruntime package, which is not installed",
            hint=ONNX_INSTALL_HINT,
        ) from None
    return onnxruntime


class _ExportedModel:
    """What both loaders share: metadata attributes and the torch-model duck type."""

    metadata: ExportMetadata
    path: Path
    format: str

    @property
    def variant(self) -> str:
        return self.metadata.variant

    @property
    def config(self) -> dict[str, Any]:
        """The model config as a dict (``ModelConfig.from_dict`` rebuilds the dataclass)."""
        return self.metadata.config

    @property
    def train_size(self) -> int | None:
        return self.metadata.train_size

    @property
    def normalization(self) -> dict[str, Any]:
        return self.metadata.normalization

    @property
    def provenance(self) -> dict[str, Any]:
        """What produced the weights, as the source checkpoint recorded it (``model.provenance`` of
        a loaded checkpoint); empty for a foreign model or an export that predates the key."""
        return self.metadata.provenance

    def _describe_export(self) -> str:
        """``"ONNX export of pdseg-t, trained at 512x512: <summary>"``: the line a checkpoint gets
        (variant, training size, then the model card's summary or the data), so that an export
        says as much of where it came from."""
        kind = "ONNX" if self.format == "onnx" else "TorchScript"
        return f"{kind} export of {weights_line(self.variant, self.train_size, self.provenance)}"

    device: torch.device
    # the arguments the file was opened with: pickled in place of the open file, which is opened
    # again where it is unpickled (a joblib worker, say); neither an onnxruntime session nor a
    # loaded TorchScript module can be pickled
    _opened_with: dict[str, Any]

    def __getstate__(self) -> dict[str, Any]:
        return dict(self._opened_with)

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, **state)

    def eval(self) -> _ExportedModel:
        """No-op (an exported graph is always in eval mode); returns self like ``nn.Module.eval``."""
        return self

    def to(self, device: str | torch.device | None = None, **kwargs: Any) -> _ExportedModel:
        """Accepts what a predictor does to a torch model; the device is fixed when the file is opened.

        ``memory_format`` (e.g. channels_last) and other keyword arguments are ignored: the graph
        takes any layout.

        Raises:
            ValueError: ``device`` is another device type than the one the file was opened on.
        """
        del kwargs
        if device is not None and not isinstance(device, torch.dtype):
            wanted, have = torch.device(device), self.device
            other_index = wanted.index is not None and have.index is not None and wanted.index != have.index
            if wanted.type != have.type or other_index:
                raise ValueError(
                    f"this {self.format} model was opened on {self.device}; open it again on {wanted} "
                    "(load_exported(path, device=...)) instead of moving it"
                )
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class OnnxModel(_ExportedModel):
    """An exported ``.onnx`` file run by onnxruntime, callable like the PyTorch model.

    Args:
        path: the ``.onnx`` file written by ``pdseg export``.
        device: ``"cpu"`` or ``"cuda"``/``"cuda:N"`` (the CUDA provider needs ``onnxruntime-gpu``).
        threads: intra-op threads for onnxruntime, or None for torch's (``torch.get_num_threads()``).

    Raises:
        NotAvailableError: onnxruntime, or its CUDA provider, is not installed, or the CUDA provider
            cannot start (its CUDA or cuDNN libraries missing): never a silent CPU run.
        WeightsError: the file is empty, not ONNX, truncated, one onnxruntime cannot load, one with
            inputs pdseg cannot feed (a second input, or a uint8 one), or a foreign model whose spec
            is unknown.

    Running it raises :class:`ModelRunError` when onnxruntime fails inside the graph. It pickles
    as the arguments it was opened with, and is opened again where it is unpickled.
    """

    format = "onnx"

    def __init__(
        self,
        path: str | Path,
        device: str | torch.device = "cpu",
        threads: int | None = None,
        spec: str | None = None,
    ):
        self.path = Path(path).expanduser()
        self.device = torch.device(device)
        # the absolute path: a worker unpickling it may run in another folder
        self._opened_with = {
            "path": self.path.resolve(),
            "device": self.device,
            "threads": threads,
            "spec": spec,
        }
        ort = require_onnxruntime()
        if not self.path.is_file():
            raise WeightsError(f"{self.path} does not exist")
        providers: list[Any]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise NotAvailableError(
                    "running an ONNX model on CUDA needs onnxruntime's CUDA provider",
                    hint="pip uninstall onnxruntime && pip install onnxruntime-gpu, or use --device cpu",
                )
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0})]
        elif self.device.type == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise NotAvailableError(
                f"onnxruntime cannot run on device {str(device)!r}", hint="use --device cpu or cuda"
            )
        options = ort.SessionOptions()
        # the same thread count as torch (OMP_NUM_THREADS, --threads), so both obey one setting
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.log_severity_level = _ORT_LOG_ERRORS
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = _ORT_LOG_FATAL
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise _unreadable(self.path, "onnx", exc) from None
        _refuse_provider_fallback(ort, self.session, providers, self.device)
        # before anything reads the input: a second input or a uint8 one cannot be fed at all
        refuse_unfeedable(self.signature(), str(self.path))
        inp = self.session.get_inputs()[0]
        self._input_name = inp.name
        self._input_half = inp.type == "tensor(float16)"
        # a graph whose batch is fixed at 1 takes one image at a time, whatever --batch says
        self._one_at_a_time = bool(inp.shape) and inp.shape[0] == 1
        self._output_names = [o.name for o in self.session.get_outputs()]
        # runs of a spec'd logit output, and those whose values all lay within 0..1 (doubts())
        self._logit_runs = self._logit_runs_in_unit = 0
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.spec: OnnxSpec | None = None
        if "pdseg_metadata_version" in props:
            if spec:
                raise InputError(
                    f"{self.path} is a pdseg export, which says how to run it itself", hint="drop --onnx-spec"
                )
            self.metadata = ExportMetadata.from_strings(props, self.path)
        else:  # a foreign model: its spec comes from --onnx-spec or the table of known models
            self.spec = resolve_spec(self.signature(), spec, str(self.path))
            self.metadata = _foreign_metadata(self.spec, self._output_names)
            self._map_output = output_name(self.spec, self._output_names)
            _check_map_type(self.session, self._map_output, self.path)

    def signature(self) -> Signature:
        """The graph's inputs (with their element types) and outputs, as :func:`resolve_spec` reads them."""

        def dims(shape: Any) -> tuple[int | None, ...]:
            return tuple(d if isinstance(d, int) else None for d in (shape or ()))

        # get_inputs() lists the inputs a run must be given: initializers that may be overridden
        # are not among them, so every one after the first is one pdseg cannot feed
        first, *others = self.session.get_inputs()
        outs = tuple((o.name, dims(o.shape)) for o in self.session.get_outputs())
        return Signature(
            first.name,
            dims(first.shape),
            outs,
            input_type=_element_type(first.type),
            other_inputs=tuple((i.name, dims(i.shape), _element_type(i.type)) for i in others),
        )

    @property
    def fixed_size(self) -> int | None:
        """The only input side a foreign model with a fixed input takes, else None."""
        return self.spec.size if self.spec is not None else None

    @property
    def size_fixed_by_graph(self) -> bool:
        """Whether the graph's own input has a fixed height and width (else a fixed size comes from
        ``--onnx-spec size=N``, which ``size=dynamic`` lifts)."""
        return all(isinstance(d, int) for d in self.signature().input_shape[2:4])

    @property
    def normalization(self) -> dict[str, Any]:
        return self.spec.normalization if self.spec is not None else self.metadata.normalization

    def describe(self) -> str:
        """One line on what this file is and how it is run."""
        if self.spec is not None:
            # a pdseg export recognised by its signature (metadata stripped) is not foreign
            owner = "ONNX" if self.spec.name == PDSEG_WITHOUT_METADATA else "foreign ONNX"
            return f"{owner}, {self.spec.describe()}"
        return self._describe_export()

    def run(self, x: torch.Tensor, output: str) -> torch.Tensor:
        """One named output for input ``x`` (float (B, 3, H, W)), as a float32 CPU tensor."""
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self._input_half:
            arr = arr.astype("float16")
        if self.spec is not None and (self.spec.size is not None or self._one_at_a_time) and arr.shape[0] > 1:
            # fixed-size exports usually fix the batch at 1 too, and some dynamic-size ones do: run
            # the images one by one
            return torch.cat([self.run(x[i : i + 1], output) for i in range(arr.shape[0])])
        (result,) = self._session_run([output], arr)
        result = torch.from_numpy(result).float()
        if result.ndim == 3:  # (B, H, W) maps from some exports
            result = result[:, None]
        channel = self.spec.channel if self.spec is not None else 0
        return result[:, channel : channel + 1]

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, logits), each (B, 1, H, W) float32 on ``x``'s device, from one run."""
        names = [OUTPUT_PROBABILITIES, OUTPUT_LOGITS]
        if self.spec is not None or not set(names) <= set(self._output_names):
            logits = self(x)
            return torch.sigmoid(logits), logits
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self._input_half:
            arr = arr.astype("float16")
        probs, logits = self._session_run(names, arr)
        return torch.from_numpy(probs).float().to(x.device), torch.from_numpy(logits).float().to(x.device)

    def _session_run(self, names: list[str], arr: Any) -> list[Any]:
        """``session.run`` on the input array, with a failure inside the graph as one ModelRunError.

        Out-of-memory errors pass unchanged: the predictor fails the batch with its own advice
        (a smaller --batch or --size) when it sees one.

        Raises:
            ModelRunError: onnxruntime failed running the graph on ``arr``.
        """
        try:
            return list(self.session.run(names, {self._input_name: arr}, self._run_options))
        except Exception as exc:  # onnxruntime's Fail, InvalidArgument, RuntimeException, ...
            if is_out_of_memory(exc):
                raise
            shape = "x".join(str(d) for d in arr.shape)
            if self.spec is not None:
                hint = (
                    "the graph itself fails on this input: run it at the size it was made for "
                    "(--onnx-spec size=N, or --size N)"
                )
            else:
                hint = "export it again with `pdseg export` (its check runs the file before keeping it)"
            raise ModelRunError(
                f"{self.path} failed in onnxruntime on a {shape} input: {_ort_reason(exc)}", hint=hint
            ) from None

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Foreground probabilities (B, 1, H, W) in [0, 1]."""
        if self.spec is not None:
            return torch.sigmoid(self(x))
        if OUTPUT_PROBABILITIES in self._output_names:
            return self.run(x, OUTPUT_PROBABILITIES).to(x.device)
        return torch.sigmoid(self.run(x, OUTPUT_LOGITS)).to(x.device)

    def doubts(self) -> list[str]:
        """What the runs so far say against the spec: an output taken as a logit whose every value
        lay within 0..1, as a probability's do, gives grey maps (sigmoid(0..1) is bytes 127..186)
        with nothing else to tell the user why."""
        if not self._logit_runs or self._logit_runs_in_unit < self._logit_runs:
            return []
        given = self._opened_with["spec"]
        if given:  # the user's own spec with its kind changed: on its own, kind= resets the other keys
            spec = re.sub(r"\bkind=logits?\b", "kind=probability", given)
            if spec == given:
                spec = f"{given},kind=probability"
        else:
            spec = "kind=probability"
        return [
            f"{self.path}: every map it gave lay within 0..1, as probabilities do, but is read as a logit "
            "(kind=logit), so the maps come out grey (bytes 127..186); if it gives probabilities, pass "
            f"--onnx-spec {shell_quote(spec)}"
        ]

    @property
    def area_downscale(self) -> bool:
        """Whether pdseg shrinks this model's inputs by area averaging, as it does its own models'
        (a pdseg export, with or without its metadata); a foreign model is fed bilinearly throughout,
        as its own scripts feed it, so that its published numbers reproduce."""
        return self.spec is None or self.spec.name == PDSEG_WITHOUT_METADATA

    @property
    def gives_probabilities(self) -> bool:
        """True when the graph's map is a probability with no logit beside it (a foreign model whose
        spec says ``kind=probability``, or a file with one output): the predictor then resizes the
        probabilities, as the model's own scripts and a plain one do, not their clamped logits."""
        if self.spec is not None:
            return self.spec.kind != "logit"
        return OUTPUT_LOGITS not in self._output_names

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1, H, W), float32, on ``x``'s device, for input float (B, 3, H, W)."""
        if self.spec is not None:
            out = self.run(x, self._map_output)
            if self.spec.kind != "logit":
                return _logit(out).to(x.device)
            self._logit_runs += 1
            self._logit_runs_in_unit += bool(out.numel()) and bool(out.min() >= 0) and bool(out.max() <= 1)
            return out.to(x.device)
        if OUTPUT_LOGITS in self._output_names:
            return self.run(x, OUTPUT_LOGITS).to(x.device)
        return _logit(self.run(x, self._output_names[0])).to(x.device)


TORCHSCRIPT_SUFFIXES = tuple(suffix for suffix, kind in SUFFIX_FORMATS.items() if kind == "torchscript")


def refuse_misnamed_torchscript(path: Path) -> None:
    """Refuse a TorchScript archive under a name other than a TorchScript one (``model.pt``).

    Loading TorchScript runs the code the archive holds (``torch.jit.load`` runs its
    ``__setstate__`` methods, which can read and write files), whereas a ``.pt`` weights file is
    loaded with ``weights_only`` and never runs code. A file named like weights must not be run as
    a program because of what it holds; one named ``.ts`` says what it is.

    Raises:
        WeightsError: ``path`` does not end in a TorchScript suffix.
    """
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        return
    named = f"named {path.suffix}" if path.suffix else "without a suffix"
    raise WeightsError(
        f"{path} is a TorchScript program {named}: loading TorchScript runs the code inside it, so pdseg "
        f"runs one only under a TorchScript name ({', '.join(TORCHSCRIPT_SUFFIXES)})",
        hint=f"if you trust where it came from, rename it to {path.with_suffix('.ts').name}; the .pt "
        "files pdseg writes hold weights only, no code",
    )


def torchscript_metadata(path: Path) -> ExportMetadata:
    """A TorchScript export's pdseg metadata, read from its archive without loading it (loading
    runs the code it holds: ``pdseg info`` must be safe to point at any file).

    Raises:
        WeightsError: the file is not a zip archive.
    """
    suffix = "/extra/" + TORCHSCRIPT_METADATA_FILE
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if name.endswith(suffix)]
            raw = archive.read(names[0])[: 1 << 20].decode("utf-8", "replace") if names else ""
    except (OSError, zipfile.BadZipFile) as exc:
        raise _unreadable(path, "torchscript", exc) from None
    return _torchscript_metadata_from(raw, path)


def _torchscript_metadata_from(raw: str, path: Path) -> ExportMetadata:
    """The metadata of a TorchScript export from the text of its extra file (empty or damaged text:
    none, which :meth:`ExportMetadata.from_strings` refuses in one line)."""
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {}
    return ExportMetadata.from_strings(data if isinstance(data, dict) else {}, path)


class TorchScriptModel(_ExportedModel):
    """A TorchScript file written by ``pdseg export --format torchscript``, with the same interface.

    Args:
        path: the TorchScript file; only under a TorchScript name (:func:`refuse_misnamed_torchscript`).
        device: torch device to run on.
        written_here: the file ``pdseg export`` has just written, checked under its temporary name.

    Raises:
        WeightsError: the file is not a TorchScript archive with pdseg metadata, or is named otherwise.
    """

    format = "torchscript"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", *, written_here: bool = False):
        self.path = Path(path).expanduser()
        self.device = torch.device(device)
        self._opened_with = {"path": self.path.resolve(), "device": self.device}
        if not self.path.is_file():
            raise WeightsError(f"{self.path} does not exist")
        if not written_here:  # export's check of the file it has just traced, under its temporary name
            refuse_misnamed_torchscript(self.path)
        extra = {TORCHSCRIPT_METADATA_FILE: ""}
        try:
            # torch 2.13 deprecates torch.jit.load; it still works
            with ignoring_warnings(DeprecationWarning):
                self.module = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra)
        except Exception as exc:  # torch raises RuntimeError with long C++ traces for bad archives
            raise _unreadable(self.path, "torchscript", exc) from None
        self.metadata = _torchscript_metadata_from(extra[TORCHSCRIPT_METADATA_FILE], self.path)
        self.module.eval()

    def describe(self) -> str:
        """One line on what this file is (see :meth:`_ExportedModel._describe_export`)."""
        return self._describe_export()

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Foreground probabilities (B, 1, H, W) in [0, 1]."""
        with torch.inference_mode():
            return self.module(x.to(self.device, torch.float32)).float()

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, logits), each (B, 1, H, W) float32."""
        return self.probabilities(x), self(x)

    @property
    def gives_probabilities(self) -> bool:
        """True when the module has no ``logits`` method: see :attr:`OnnxModel.gives_probabilities`."""
        return not hasattr(self.module, OUTPUT_LOGITS)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1, H, W), float32, for input float (B, 3, H, W)."""
        with torch.inference_mode():
            x = x.to(self.device, torch.float32)
            if hasattr(self.module, OUTPUT_LOGITS):
                return self.module.logits(x).float()
            return _logit(self.module(x).float())


def _refuse_provider_fallback(ort: Any, session: Any, providers: list[Any], device: torch.device) -> None:
    """Refuse a session that does not run on the provider asked for.

    onnxruntime-gpu whose CUDA or cuDNN libraries cannot be loaded (none installed, or another major
    version than it was built for) makes the session on the CPU instead, saying so only in a log
    line that ``_ORT_LOG_ERRORS`` keeps quiet; pdseg would then report a CUDA run that ran on the
    CPU. Never a silent fallback: the user asked for this device (as ``runtime.resolve_device`` does).

    Raises:
        NotAvailableError: naming what onnxruntime-gpu needs, or ``--device cpu``.
    """
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    got = list(session.get_providers())
    if got and got[0] == wanted:
        return
    cuda = getattr(ort, "cuda_version", "") or ""  # the CUDA this onnxruntime-gpu was built for
    built = f", built for CUDA {cuda}" if cuda else ""
    major = f" {cuda.split('.')[0]}" if cuda else ""
    raise NotAvailableError(
        f"onnxruntime could not start {wanted} on {device} (onnxruntime-gpu {ort.__version__}{built}), so "
        f"it would run on {got[0] if got else 'no provider'}: its CUDA or cuDNN libraries could not be "
        "loaded (missing, or of another version)",
        hint=f"install the CUDA{major} and cuDNN libraries it was built for where it can load them, as "
        "onnxruntime.ai's CUDA execution provider page lists them, or use --device cpu",
    )


def _foreign_metadata(spec: OnnxSpec, outputs: list[str]) -> ExportMetadata:
    """Metadata for a foreign ONNX model, so code that reads an export's metadata works on it too."""
    return ExportMetadata(
        variant=spec.name,
        config={},
        train_size=spec.size,
        mean=spec.mean,
        std=spec.std,
        color=spec.color,  # with scale: the defaults (RGB 0..255) described other specs wrongly
        scale=spec.scale,
        output=spec.kind,
        outputs=tuple(outputs),
        extra={"foreign": "1", "spec": spec.key()},
    )


# the element types a map can be read from (as onnxruntime names them): numbers and booleans (a
# thresholded mask), not strings, complex numbers, sequences or maps
_MAP_TYPES = {
    f"tensor({t})"
    for t in (
        "float", "float16", "double", "bfloat16", "bool",
        "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
    )
}  # fmt: skip


def _check_map_type(session: Any, name: str, path: Path) -> None:
    """Refuse a foreign model whose map output holds no numbers (a string tensor's first image
    stopped the run with a traceback).

    Raises:
        WeightsError: naming the output, its type and the other outputs.
    """
    types = {o.name: o.type for o in session.get_outputs()}
    if types[name] in _MAP_TYPES:
        return
    others = [f"{n} ({_element_type(t)})" for n, t in types.items() if n != name and t in _MAP_TYPES]
    raise WeightsError(
        f"{path}: its output {name!r} holds {_element_type(types[name])}, not a map of numbers",
        hint=f"choose another with --onnx-spec output=NAME: {', '.join(others)}"
        if others
        else "this model has no output pdseg can read as a map",
    )


def _element_type(ort_type: str) -> str:
    """numpy's name for an onnxruntime type: ``tensor(float)`` -> ``float32``, ``tensor(uint8)`` ->
    ``uint8``; a type that is not a tensor (``seq(tensor(float))``) stays as onnxruntime says it."""
    inner = re.fullmatch(r"tensor\((\w+)\)", ort_type)
    if inner is None:
        return ort_type
    return {"float": "float32", "double": "float64"}.get(inner.group(1), inner.group(1))


_NODE_FAILED = r"Non-zero status code returned while running (\w+) node\. Name:'([^']*)' Status Message: "


def _ort_reason(exc: BaseException) -> str:
    """The part of an onnxruntime error a user can read: without the ``[ONNXRuntimeError] : 2 :
    INVALID_ARGUMENT :`` code, the ``Load model from X failed:`` prefix, the C++ source location
    and function signature, and the internal assertion, clipped to one line."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"^Load model from .*? failed: ?", "", text)
    # file:line function(signature) and the assertion that failed, which the words after it explain
    text = re.sub(r"/onnxruntime_src/\S+:\d+ [^(]*\([^)]*\)\s*(?:[^.]*? was false\.\s*)?", "", text)
    node = re.match(_NODE_FAILED, text)
    if node is not None:
        name = f" '{node.group(2)}'" if node.group(2) else ""
        text = f"its {node.group(1)} node{name}: " + text[node.end() :]
    return clip_words(text).rstrip(".") or type(exc).__name__


# what each loader's files start with (an ONNX protobuf's field 1 is ir_version; TorchScript is a zip)
_FORMAT_NAMES = {"onnx": "an ONNX model", "torchscript": "a TorchScript file"}


def _unreadable(path: Path, fmt: str, exc: BaseException) -> WeightsError:
    """The one-line error for a file the ONNX or TorchScript loader could not open, by what the file
    is: empty, an image, not that format at all, or that format but truncated or damaged (only
    then is the loader's own reason worth quoting).

    ``fmt``: ``"onnx"`` or ``"torchscript"``, the loader that failed.
    """
    what = _FORMAT_NAMES[fmt]
    size = path.stat().st_size
    if size == 0:
        return WeightsError(f"{path} is empty (0 bytes)", hint="the download, copy or export was interrupted")
    if looks_like_image(path):
        return WeightsError(
            f"{path} is an image, not {what}",
            hint="give the model file: a pdseg checkpoint (.pt), a pdseg export (.onnx, .ts) or a DIS/SOD "
            "ONNX model",
        )
    with open(path, "rb") as f:
        head = f.read(64)
    starts_right = head[:1] == b"\x08" if fmt == "onnx" else head[:4] == b"PK\x03\x04"
    if not starts_right:
        text = all(32 <= b < 127 or b in b"\t\r\n" for b in head)  # a note or an HTML error page, say
        return WeightsError(
            f"{path} is not {what} ({'it holds text' if text else 'it starts as no such file does'})",
            hint="check the path: give a pdseg checkpoint (.pt), a pdseg export (.onnx, .ts) or a DIS/SOD "
            "ONNX model",
        )
    reason = _ort_reason(exc) if fmt == "onnx" else clip_words(first_line(exc))
    damaged = ("Protobuf parsing failed", "No graph was found", "zip archive", "central directory")
    if any(word in reason for word in damaged):
        return WeightsError(
            f"{path} is truncated or damaged ({reason})", hint="download, copy or export it again"
        )
    # a whole file the loader still refuses: an operator or opset this onnxruntime lacks, say
    return WeightsError(
        f"{path} is {what} that cannot be loaded ({reason})",
        hint="pdseg export writes files this version loads; for another model, check the onnxruntime "
        "or torch version it needs",
    )


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.logit(p.float().clamp(_PROB_EPS, 1.0 - _PROB_EPS))


def detect_format(path: str | Path) -> str:
    """``"onnx"``, ``"torchscript"`` or ``"checkpoint"`` (a ``torch.save`` file), by content.

    TorchScript archives and checkpoints are both zip files; TorchScript ones have a ``code/``
    folder. A file that is not a zip is ONNX when it starts as an ONNX protobuf does (field 1,
    ``ir_version``: byte 0x08) or is named ``.onnx``; else it goes by its name, ``.ts`` to the
    TorchScript loader and anything else to the checkpoint loader (old-style pickles), so that the
    loader the name promises gives the error message.
    """
    path = Path(path).expanduser()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any("/code/" in name for name in names[:2000]):
            return "torchscript"
        return "checkpoint"
    named = SUFFIX_FORMATS.get(path.suffix.lower())
    if starts_like_onnx(path) or named == "onnx":
        return "onnx"
    return named or "checkpoint"


def refuse_spec_for(kind: str, onnx_spec: str | None, path: str | Path) -> None:
    """Refuse ``--onnx-spec`` for a file of ``kind`` (:func:`detect_format`) other than ONNX: a
    checkpoint or TorchScript file says how to run it itself. Checked before loading.

    Raises:
        InputError: ``onnx_spec`` given and ``kind`` is not ``"onnx"``.
    """
    if onnx_spec and kind != "onnx":
        raise InputError(
            f"--onnx-spec is for foreign ONNX models; {path} is not one", hint="drop --onnx-spec"
        )


def load_exported(
    path: str | Path, device: str | torch.device = "cpu", onnx_spec: str | None = None
) -> OnnxModel | TorchScriptModel:
    """Open an exported ONNX or TorchScript file, or a foreign DIS/SOD ONNX model.

    Args:
        path: the file.
        device: where to run it.
        onnx_spec: ``--onnx-spec`` for a foreign ONNX model (see :mod:`pdseg_cli.engine.onnx_spec`).

    Raises:
        WeightsError: the file is a plain checkpoint, or unreadable, or a foreign model that needs
            ``--onnx-spec``.
        NotAvailableError: the file is ONNX and onnxruntime is not installed.
        InputError: ``onnx_spec`` given for a file that is not a foreign ONNX model, or malformed.
    """
    kind = detect_format(path)
    if kind == "onnx":
        return OnnxModel(path, device=device, spec=onnx_spec)
    refuse_spec_for(kind, onnx_spec, path)
    if kind == "torchscript":
        return TorchScriptModel(path, device=device)
    raise WeightsError(f"{path} is a checkpoint, not an exported model", hint="load it with load_model")
