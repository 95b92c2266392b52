"""Inference: one image in memory, or folders of files written safely to an output folder.

:class:`Predictor` is the one code path behind ``pdseg predict``, ``pdseg eval`` and Python users::

    from pdseg_cli import Predictor
    p = Predictor("weights.pt", device="auto", size="full")
    mask = p.predict(rgb)                       # (H, W, 3) any dtype -> (H, W) uint8
    summary = p.predict_paths(["imgs/"], "masks/")

How a map is made (``pdseg_cli.data.transforms`` documents the rule): the image goes to the model
resized to ``size`` x ``size`` (or at its native size with ``size="full"``; the model pads to a
multiple of 32 and crops back), the logits are resized bilinearly to the image's own (H, W), then
``floor(255 * sigmoid)`` (a model that gives probabilities only has its probabilities resized).

Folder runs are planned in :mod:`pdseg_cli.engine.predict_plan` (inputs, output clashes, this
process's share under torchrun), carried out in :mod:`pdseg_cli.engine.predict_run` (readers ahead of
the model, writers behind it, atomic writes) and reported by :mod:`pdseg_cli.engine.predict_summary`;
the ``--save`` kinds are the table in :mod:`pdseg_cli.engine.output_kinds`.
"""

from __future__ import annotations

import copy
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pdseg_cli import runtime
from pdseg_cli.config import DEFAULT_MAX_PIXELS, FULL_SIZE_NAMES, NORMALIZATION
from pdseg_cli.data import transforms as T
from pdseg_cli.data.colors import parse_color
from pdseg_cli.engine import predict_run
from pdseg_cli.engine.made_with import MadeWith
from pdseg_cli.engine.onnx_backend import _ExportedModel, detect_format, load_exported, refuse_spec_for
from pdseg_cli.engine.predict_plan import PredictPlan, plan_predict
from pdseg_cli.engine.predict_summary import PredictSummary
from pdseg_cli.errors import InputError, check_kind
from pdseg_cli.model.build import load_model, train_side, unwrap_model, weights_line
from pdseg_cli.model.optimize import optimize
from pdseg_cli.model.pdseg import PDSeg
from pdseg_cli.weights import MODEL_SUFFIXES, check_weights_file, default_weights, load_hashed

DEFAULT_SIZE = 1024  # used when a checkpoint does not record its training size (the paper's size)
Size = predict_run.Size

MAX_SIDE = 16384  # the largest working side --size takes: 8192x8192 peaks at 9.5 GB on the CPU
# the torch.compile modes that capture CUDA graphs on a GPU (torch._inductor.list_mode_options sets
# triton.cudagraphs in these): a replay writes its outputs where the last replay's were
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def parse_size(text: str | int | None) -> Size | None:
    """``None`` (the checkpoint's training size), ``"full"`` or a side length of at least 32.

    Raises:
        InputError: anything else.
    """
    if text is None:
        return None
    whole = isinstance(text, (int, np.integer)) or (isinstance(text, float) and text.is_integer())
    if whole and not isinstance(text, bool):  # True is an int to Python, never a size
        value = int(text)  # 512.0 from arithmetic is 512
    else:
        t = str(text).strip().lower()
        if t in FULL_SIZE_NAMES:
            return "full"
        try:
            value = int(t)
        except ValueError:
            raise InputError(
                f"--size {text!r} is not a whole number",
                hint="e.g. --size 1024, or --size full (each image at its own size)",
            ) from None
    if value < 32:
        raise InputError(
            f"--size {value} is too small: at least 32 (the model's stride)",
            hint="e.g. --size 1024, or leave --size out for the size the weights were trained at",
        )
    if value > MAX_SIDE:
        raise InputError(
            f"--size {value} is too large: at most {MAX_SIDE} ({MAX_SIDE}x{MAX_SIDE} already needs about "
            "40 GB)",
            hint="--size full runs each image at its own resolution",
        )
    return value


class Predictor:
    """A loaded model plus everything needed to turn images into 8-bit maps.

    Args:
        weights: a pdseg checkpoint path (``.pt``), an exported ``.onnx`` or ``.ts`` file, another
            DIS/SOD ONNX model (see ``onnx_spec``), a model (``nn.Module`` with ``normalization`` and
            ``train_size`` attributes, e.g. from :func:`pdseg_cli.create_model`; it is copied, so the
            caller's module keeps its mode, device and layout; a module of your own that maps
            (B, 3, H, W) to (B, 1, H, W) logits runs too, with the ImageNet normalisation and the
            size given; a pdseg ``.ts`` export goes by its path, not as the module
            ``torch.jit.load`` returns), or None for :func:`pdseg_cli.weights.default_weights`.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; under torchrun ``auto`` and
            ``cuda`` take the GPU of the process's LOCAL_RANK.
        precision: ``auto`` (bf16 on GPUs with native bf16, Ampere and newer; fp32 otherwise),
            ``fp32``, ``bf16``, ``fp16``.
        size: the working resolution: an int N (images resized to N x N, as in training),
            ``"full"`` (native resolution, one pass, no tiles), or None for the checkpoint's
            training size (1024 when the checkpoint does not record one).
        optimized: run :func:`pdseg_cli.optimize`'s inference form of a PyTorch model (the same
            logits within 1e-4, faster: see benchmarks/RESULTS.md); False runs the model as given.
        channels_last: run convolutions in channels-last layout (faster on CPU and GPU; results
            can differ from the default layout by float rounding).
        compile: ``torch.compile`` the optimised form: ``off``/False (default), True/``default``,
            ``reduce-overhead`` (CUDA graphs on a GPU) or ``max-autotune``. The first batch of each
            input shape compiles first, so it pays off on a GPU over many images of one working
            size. Needs a PyTorch checkpoint and ``optimized``.
        tta: test-time augmentation: each image also runs mirrored left-right, and the two logit
            maps (the mirrored one flipped back) are averaged. Twice the compute; training flips
            images at random, so both views are equally valid and their average is steadier
            (measured in docs/model.md, 'Test-time augmentation').
        local_rank: the GPU index for ``device`` ``auto``/``cuda``; None reads torchrun's LOCAL_RANK
            when WORLD_SIZE is above 1, else GPU 0.
        onnx_spec: for a foreign ONNX model pdseg does not recognise: how to feed it and read it
            (``pdseg predict --onnx-spec``'s form, e.g. ``"size=1024, mean=0.5, std=1, scale=1"``).
        scales: multi-scale inference: the model also runs at these multiples of the working size
            (each side rounded to a multiple of 32), and the logit maps, resized to the largest
            side, are averaged (e.g. ``(0.875, 1, 1.125)``: at 512, also 448 and 576; a pass per
            scale). None or empty: one pass at the working size. Not with ``size="full"`` or a
            fixed-size model (measured in benchmarks/RESULTS.md, 'Multi-scale inference').

    A predictor pickles (for joblib or multiprocessing workers): an ``.onnx`` or ``.ts`` file is
    opened again where it is unpickled, on the same device and with the same spec (at the
    worker's torch thread count).

    Attributes:
        model, device, precision, size, device_reason (how ``auto`` chose), notes (warnings about
        the set-up worth showing the user, e.g. a precision this CPU can only emulate),
        weights_path and weights_sha256 (the file loaded and the sha256 of the bytes loaded; None
        for a module).

    Raises:
        WeightsError: the checkpoint cannot be used.
        NotAvailableError: the device or precision is not available.
        InputError: a bad option value (a precision or compile mode of the wrong kind too), or a
            loaded pdseg TorchScript module.
        TypeError: ``tta``, ``channels_last`` or ``optimized`` is not a bool.
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] | nn.Module | None = None,
        device: str = "auto",
        precision: str = "auto",
        size: Size | str | None = None,
        *,
        channels_last: bool = True,
        optimized: bool = True,
        compile: str | bool | None = None,
        local_rank: int | None = None,
        onnx_spec: str | None = None,
        tta: bool = False,
        scales: Sequence[float] | None = None,
    ) -> None:
        compile_mode = runtime.resolve_compile(compile)
        if local_rank is not None:  # a Python caller's index: not "0", not -1 (torch fails on those later)
            check_kind("Predictor", "local_rank", local_rank, int)
            if local_rank < 0:
                raise InputError(f"Predictor local_rank={local_rank}: give a GPU index, 0 or more, or None")
        if local_rank is None:  # under torchrun each process takes its own GPU, as the commands do
            env = runtime.env_distributed(strict=False)
            local_rank = env.local_rank if env.enabled else None
        choice = runtime.resolve_device(device, local_rank=local_rank)
        self.device: torch.device = choice.device
        self.device_reason = choice.reason
        self.precision = runtime.resolve_precision(precision, self.device)
        self.channels_last = channels_last
        for name, value in (("tta", tta), ("channels_last", channels_last), ("optimized", optimized)):
            if not isinstance(value, bool | np.bool_):  # bool("no") is True: a typo would flip it on
                raise TypeError(f"{name} must be True or False, not {value!r}")
        self.tta = bool(tta)
        self._graph_outputs = compile_mode in CUDA_GRAPH_MODES
        self.weights_path: Path | None = None
        # the sha256 of the bytes loaded, not of whatever is at the path later (a run saving it)
        self.weights_sha256: str | None = None
        if isinstance(weights, nn.Module):
            kind = "module"
            if getattr(weights, "original_name", None) == "_TorchScriptGraph":
                # pdseg's TorchScript export: its forward gives probabilities (taken here as logits,
                # the sigmoid would be applied twice) and its normalisation and training size are in
                # the file beside the graph, which torch.jit.load does not hand over
                raise InputError(
                    "this TorchScript module is a pdseg export, whose forward gives probabilities and "
                    "whose settings are in its file",
                    hint="pass the .ts file's path instead: Predictor('model.ts')",
                )
        else:
            self.weights_path = Path(weights).expanduser() if weights is not None else default_weights()
            # before sniffing the format: the file, or what to give instead of a folder
            check_weights_file(self.weights_path, "weights", MODEL_SUFFIXES)
            kind = detect_format(self.weights_path)
        refuse_spec_for(kind, onnx_spec, self.weights_path or "the module")
        self._autocast = self.precision  # the autocast around the network
        ignored = None
        fix = "--precision fp32"  # the way out of an emulated precision
        model: nn.Module | _ExportedModel  # an exported file's model duck-types a torch one
        if isinstance(weights, nn.Module):
            # unwrapped (DataParallel, DDP, torch.compile), as save_checkpoint and optimize do, so its
            # training size and normalisation are found; copied, as eval() and .to() below change it
            model = copy.deepcopy(unwrap_model(weights))
        elif kind == "checkpoint":
            assert self.weights_path is not None  # set above for every weights but a module
            model, self.weights_sha256 = load_hashed(self.weights_path, lambda p: load_model(p, device="cpu"))
        else:
            # .onnx / TorchScript: fp32 in and out, the precision fixed in the file at export
            assert self.weights_path is not None  # set above for every weights but a module
            model, self.weights_sha256 = load_hashed(
                self.weights_path, lambda p: load_exported(p, device=self.device, onnx_spec=onnx_spec)
            )
            metadata = getattr(model, "metadata", None)
            self.precision = metadata.precision if metadata is not None else "fp32"
            self._autocast = "fp32"  # no autocast around an exported graph
            fix = "export the model again without --half"
            if precision not in ("auto", self.precision):
                ignored = (
                    f"--precision {precision} ignored: {self.weights_path.name} runs at the precision it was "
                    f"exported in ({self.precision})"
                )
        model = model.eval().to(self.device)
        self.description = describe_model(model)  # before optimize(), which keeps only the maths
        if compile_mode and not (optimized and isinstance(model, PDSeg)):
            raise InputError(
                f"--compile {compile_mode} needs a PyTorch checkpoint (.pt) run in its optimised form",
                hint="drop --compile for exported .onnx/.ts files",
            )
        if optimized and isinstance(model, PDSeg):
            model = optimize(model, channels_last=channels_last, compile=compile_mode)
        elif channels_last:
            # torch's stubs leave out Module.to's memory_format keyword
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = model
        # a module of the caller's own (not pdseg's), whose failures inside torch are said as such
        self._own_module = kind == "module" and not isinstance(unwrap_model(cast(nn.Module, weights)), PDSeg)
        # a model that gives probabilities only has its maps resized as probabilities (onnx_backend)
        self._resize_probabilities = bool(getattr(model, "gives_probabilities", False))
        # pdseg's own models average the pixels where an image shrinks; a foreign ONNX model is fed as
        # its own scripts feed it, bilinear throughout (OnnxModel.area_downscale)
        self.area_downscale = bool(getattr(model, "area_downscale", True))
        self.normalization: Mapping[str, Any] = getattr(model, "normalization", None) or NORMALIZATION
        self.train_size = train_side(getattr(model, "train_size", None))
        parsed = parse_size(size)
        fixed = getattr(model, "fixed_size", None)
        by_graph = getattr(model, "size_fixed_by_graph", True)
        if fixed is not None and parsed is not None and parsed != fixed:
            if not by_graph:
                raise InputError(
                    f"--onnx-spec size={fixed} runs {self.weights_path} at {fixed}x{fixed} only; --size "
                    f"{parsed} cannot be used with it",
                    hint=f"its graph takes any size: give --onnx-spec size=dynamic to run it at "
                    f"--size {parsed}, or drop --size",
                )
            raise InputError(
                f"{self.weights_path} takes only {fixed}x{fixed} inputs; --size {parsed} cannot be used",
                hint="drop --size: every image is resized to the model's input and the map back",
            )
        self.size_from_checkpoint = parsed is None
        self.size: Size = parsed if parsed is not None else (self.train_size or DEFAULT_SIZE)
        # the working sides of a multi-scale run, largest last; () for one pass at self.size
        self.scale_sides = scale_sides(scales, self.size, fixed)
        # what the outputs' marks record of the run (made_with): the options as asked, once checked
        self._asked_size = parsed
        # scale_sides is () for scales=None
        self._asked_scales = (
            tuple(float(s) for s in cast(Sequence[float], scales)) if self.scale_sides else None
        )
        self._onnx_spec = onnx_spec
        if parsed is not None:
            self.size_note = ""
        elif fixed is not None:
            self.size_note = "the model's fixed input size" if by_graph else f"--onnx-spec size={fixed}"
        else:
            # what records the training size, named as the user knows it: an .onnx/.ts file is not
            # a checkpoint, and a foreign one (a spec, no pdseg metadata) not a pdseg export either
            if kind == "checkpoint":
                owner = "the checkpoint"
            elif kind in ("onnx", "torchscript"):
                owner = "the model file" if getattr(model, "spec", None) is not None else "the export"
            else:
                owner = "the model"
            if self.train_size:
                self.size_note = f"{owner}'s training size"
            else:
                self.size_note = f"{owner} records no training size: {DEFAULT_SIZE} assumed, pass --size"
        slow = runtime.emulated_precision_note(
            self.device,
            self.precision,
            fix,
            cost="about 1.7 times slower" if kind == "onnx" else "several times slower",
        )
        # what the user should know: emulated precision, a full size far from the training one,
        # model parts run as built (not optimised)
        far = full_size_note(self.size, self.train_size)
        recompiles = compile_full_size_note(compile_mode, self.size)
        self.notes: list[str] = [n for n in (ignored, slow, far, recompiles) if n]
        self.notes += list(getattr(model, "notes", ()))

    def made_with(
        self,
        threshold: float | None = None,
        background: Sequence[int] | str = (255, 255, 255),
        refine_foreground: bool = True,
    ) -> MadeWith | None:
        """This predictor's model and settings, with those of a run, as an output's mark records
        them (:mod:`pdseg_cli.engine.made_with`); None for a model given as a module, which no file's
        hash names (its outputs' marks then record no settings)."""
        if self.weights_sha256 is None:
            return None
        return MadeWith(
            self.weights_sha256,
            size=self._asked_size,
            tta=self.tta,
            scales=self._asked_scales,
            onnx_spec=self._onnx_spec,
            threshold=threshold,
            background=background_colour(background),
            refine_foreground=refine_foreground,
        )

    @property
    def doubts(self) -> list[str]:
        """Warnings the runs so far raise about how the model is read (a foreign ONNX output taken
        as a logit that gives probabilities); said after a run, as they show only in its maps."""
        found = getattr(self.model, "doubts", None)
        return list(found()) if callable(found) else []

    def describe_setting(self) -> str:
        """The working size as the start line shows it, e.g. ``384 (the checkpoint's training size),
        mirrored too (--tta)``, or ``448+512+576 (--scales), ...``."""
        if not self.scale_sides:
            return predict_run.working_setting(self.size, self.tta, self.size_note)
        sides = "+".join(map(str, self.scale_sides))
        note = ", ".join(part for part in (f"--scales of {self.size}", self.size_note) if part)
        return predict_run.working_setting(sides, self.tta, note)  # type: ignore[arg-type]

    # -- one image -----------------------------------------------------------------------------

    def predict(self, image: np.ndarray, *, threshold: float | None = None) -> np.ndarray:
        """Segment one image.

        Args:
            image: (H, W, 3) RGB (or (H, W) gray, (H, W, 4) RGBA with alpha ignored). uint8 is
                0..255 and uint16 0..65535 by their type; bool, float and other integer samples go
                by their values (0..1, 0..255 or 0..65535); negative values read as 0 (see
                ``pdseg_cli.data.transforms.to_float_rgb``). A PIL image in any mode Pillow can
                convert to RGB (palette, CMYK, gray with alpha...) is taken too.
            threshold: None for the soft map ``floor(255 sigmoid)``; T in (0, 1) for 0/255 at
                ``sigmoid >= T``.

        Returns:
            (H, W) uint8, the same bytes ``pdseg predict`` writes as ``<stem>.png`` at the same torch
            thread count (another count sums in another order: a byte may then differ by 1).
        """
        check_threshold(threshold)
        logits, size = self._forward_one(image)
        return self.to_map(logits, size, threshold)

    def predict_prob(self, image: np.ndarray) -> np.ndarray:
        """The foreground probability of every pixel of one image, before :meth:`predict` quantises it.

        Args:
            image: as for :meth:`predict`.

        Returns:
            (H, W) float32 in [0, 1]: the sigmoid of the logits bilinearly resized to the image (the
                probabilities resized, for a model that gives probabilities only);
            :meth:`predict` returns ``floor(255 p)`` of exactly these values.
        """
        logits, size = self._forward_one(image)
        return self.to_prob(logits, size)[0, 0].cpu().numpy()

    def _forward_one(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """One image of any accepted dtype -> its (1, 1, h, w) logits and its own (H, W).

        Raises:
            TypeError: a file name instead of pixels.
        """
        refuse_file_name(image, "predict")
        x = T.to_float_rgb(image)
        h, w = x.shape[:2]
        return self.forward([self.prepare_array(x)]), (int(h), int(w))

    def predict_batch(
        self, images: Sequence[np.ndarray], *, threshold: float | None = None, batch: int = 8
    ) -> list[np.ndarray]:
        """:meth:`predict` over several images.

        Up to ``batch`` consecutive images of one working size share a forward pass; their bytes can
        differ from :meth:`predict`'s by float rounding (at most 1).

        Raises:
            ValueError: ``batch`` is below 1, ``images`` is one image, or an image or the model's
                output has the wrong shape.
            TypeError: a file name instead of pixels.
        """
        check_threshold(threshold)
        check_kind("predict_batch", "batch", batch, int)
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        if isinstance(images, np.ndarray) and (
            images.ndim < 3 or (images.ndim == 3 and images.shape[2] in (1, 3, 4))
        ):
            # one image: its rows would be taken as images, each an (W, 3) gray image, in silence
            raise ValueError(
                f"predict_batch takes a list of images (or an (N, H, W[, C]) array), not one {images.shape} "
                "image: use predict(image), or predict_batch([image])"
            )
        if not isinstance(images, np.ndarray):
            images = list(images)  # a generator is read once: the check below would use it up
        for im in images:  # before any work: a list of paths would fail on its first image's shape
            refuse_file_name(im, "predict_batch")
        xs = [T.to_float_rgb(im) for im in images]
        sizes = [x.shape[:2] for x in xs]
        arrays = [self.prepare_array(x) for x in xs]
        out: list[np.ndarray] = [np.empty(0, np.uint8)] * len(arrays)
        # with ``scales`` an image is a list of arrays, one per scale side (the same sides for all)
        shapes = [a[0].shape if isinstance(a, list) else a.shape for a in arrays]
        i = 0
        while i < len(arrays):
            j = i + 1
            while j < len(arrays) and j - i < batch and shapes[j] == shapes[i]:
                j += 1
            logits = self.forward(arrays[i:j])
            for k in range(i, j):
                out[k] = self.to_map(logits[k - i : k - i + 1], tuple(sizes[k]), threshold)
            i = j
        return out

    def prepare_array(self, x: np.ndarray) -> np.ndarray | list[np.ndarray]:
        """(H, W, 3) float32 0..255 -> normalised (h, w, 3) at the working size; with ``scales``, one
        such array per scale side, each resized from the image itself (not from another scale)."""
        resize = T.resize_image if self.area_downscale else T.resize_bilinear
        if self.scale_sides:
            return [T.normalize(resize(x, (side, side)), self.normalization) for side in self.scale_sides]
        if self.size != "full":
            x = resize(x, (int(self.size), int(self.size)))
        return T.normalize(x, self.normalization)

    @torch.inference_mode()
    def forward(self, arrays: Sequence[np.ndarray | list[np.ndarray]]) -> torch.Tensor:
        """Normalised (h, w, 3) arrays of one size -> logits (B, 1, h, w) float32 on the device; with
        ``scales``, each image's arrays (:meth:`prepare_array`) -> the mean of its scales' logits,
        each resized bilinearly to the largest side."""
        if self.scale_sides:
            top = self.scale_sides[-1]
            total: torch.Tensor | None = None
            for k in range(len(self.scale_sides)):
                logits = self._forward_one_size([a[k] for a in arrays])
                if logits.shape[-1] != top:
                    logits = F.interpolate(logits, size=(top, top), mode="bilinear", align_corners=False)
                total = logits if total is None else total.add_(logits)
            assert total is not None
            return total.div_(len(self.scale_sides))
        return self._forward_one_size(cast("Sequence[np.ndarray]", arrays))  # without scales: one array each

    def _forward_one_size(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Normalised (h, w, 3) arrays of one size -> logits (B, 1, h, w) float32 on the device."""
        # (B, h, w, 3) -> (B, 3, h, w) view with channels_last strides: no copy on the CPU
        if len(arrays) == 1:
            batch = torch.from_numpy(arrays[0])[None]
        else:
            batch = torch.from_numpy(np.stack(arrays))
        x = batch.permute(0, 3, 1, 2)
        x = x.to(self.device, non_blocking=True)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=layout)
        with runtime.autocast(self.device, self._autocast):
            try:
                logits = self.model(x).float()
            except RuntimeError as exc:
                # a module of another kind, given directly, fails inside torch ("mat1 and mat2 shapes
                # cannot be multiplied"): said as what Predictor needs of it, still a RuntimeError
                # (a caller's handler of torch's errors catches it); out-of-memory errors pass
                # unchanged, the batch's own fallback reads them
                if not self._own_module or runtime.is_out_of_memory(exc):
                    raise
                raise RuntimeError(
                    f"the model failed on an input of {tuple(x.shape)} ({str(exc).splitlines()[0]}): "
                    f"Predictor runs a module that maps (B, 3, H, W) images to (B, 1, H, W) logits"
                ) from exc
            if logits.ndim != 4 or logits.shape[1] != 1:  # a module of another kind, given directly
                raise ValueError(
                    f"the model gave {tuple(logits.shape)} for an input of {tuple(x.shape)}: a "
                    "segmentation model gives one map, (B, 1, H, W) logits"
                )
            if self.tta:  # a second pass, not a doubled batch: exported graphs may fix the batch at 1
                if self._graph_outputs:
                    # a CUDA graph's output lives in its memory pool, where the mirrored pass's replay
                    # writes its own: a copy of the (B, 1, h, w) map outlives it
                    logits = logits.clone()
                mirrored = self.model(x.flip(-1).contiguous(memory_format=layout)).float()
                logits = (logits + mirrored.flip(-1)) * 0.5
        return logits

    @torch.inference_mode()
    def to_map(self, logits: torch.Tensor, size: tuple[int, int], threshold: float | None) -> np.ndarray:
        """(1, 1, h, w) float32 logits -> (H, W) uint8: bilinear resize, sigmoid, floor(255 p) or 0/255."""
        prob = self.to_prob(logits, size)
        out = T.binarize(prob, threshold) if threshold is not None else T.quantize(prob, inplace=True)
        return out[0, 0].cpu().numpy()

    @torch.inference_mode()
    def to_prob(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(1, 1, h, w) float32 logits -> (1, 1, H, W) probabilities, in place where no resize is needed
        (the logits are not used again). The logits are resized, then the sigmoid taken; for a model
        that gives probabilities only, the probabilities are resized (as a plain script of it does)."""
        same = tuple(logits.shape[-2:]) == tuple(size)
        if self._resize_probabilities:  # a probability model: resized as its own scripts do
            prob = logits.sigmoid_()
            return prob if same else F.interpolate(prob, size=size, mode="bilinear", align_corners=False)
        if not same:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.sigmoid_()

    # -- folders -------------------------------------------------------------------------------

    def predict_paths(
        self,
        sources: Sequence[str | os.PathLike[str]],
        out_dir: str | os.PathLike[str],
        *,
        save: Sequence[str] | str = ("mask",),
        threshold: float | None = None,
        background: Sequence[int] | str = (255, 255, 255),
        recursive: bool = False,
        skip_existing: bool = False,
        batch: int = 1,
        on_progress: predict_run.ProgressCallback | None = None,
        dist: runtime.Distributed | None = None,
        refine_foreground: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> PredictSummary:
        """Segment files, folders and glob patterns into ``out_dir`` (see :func:`plan_predict`), as
        ``pdseg predict`` does with the same options: ``refine_foreground`` is
        ``--refine-foreground/--no-refine-foreground``, ``max_pixels`` ``--max-pixels`` (None: no
        limit).

        Returns:
            The summary; under torchrun every process gets the merged one.
        """
        for name, value in (
            ("recursive", recursive),
            ("skip_existing", skip_existing),
            ("refine_foreground", refine_foreground),
        ):
            check_kind("predict_paths", name, value, bool)  # bool("no") is True: a typo would flip it
        check_kind("predict_paths", "batch", batch, int)
        if max_pixels is not None:
            check_kind("predict_paths", "max_pixels", max_pixels, int)
            if max_pixels < 1:
                raise InputError(
                    f"predict_paths max_pixels={max_pixels}: give at least 1, or None for no limit"
                )
        plan = plan_predict(
            sources,
            out_dir,
            save=save,
            recursive=recursive,
            skip_existing=skip_existing,
            dist=dist,
            refine_foreground=refine_foreground,
            max_pixels=max_pixels,
            made=self.made_with(threshold, background, refine_foreground),
        )
        return self.run_plan(
            plan, threshold=threshold, background=background, batch=batch, on_progress=on_progress, dist=dist
        )

    def run_plan(
        self,
        plan: PredictPlan,
        *,
        threshold: float | None = None,
        background: Sequence[int] | str = (255, 255, 255),
        batch: int = 1,
        on_progress: predict_run.ProgressCallback | None = None,
        dist: runtime.Distributed | None = None,
        read_workers: int | None = None,
        write_workers: int | None = None,
        on_stopping: Callable[[int], None] | None = None,
    ) -> PredictSummary:
        """Carry out a :class:`PredictPlan`: read ahead, run the model in batches, write behind.

        Ctrl-C stops reading at once, lets the writes in progress finish (each one is atomic),
        drops the queued ones and re-raises KeyboardInterrupt; ``on_stopping(n)`` hears of the
        ``n`` images whose writes it waits for, when they take more than a second.

        Raises:
            InputError: a bad threshold or batch, or a --skip-existing plan into earlier outputs
                made with other weights or settings (:meth:`PredictPlan.refuse_otherwise_made`).
        """
        check_threshold(threshold)
        check_kind("run_plan", "batch", batch, int)
        if batch < 1:
            raise InputError(f"--batch {batch} must be at least 1")
        plan.refuse_otherwise_made()  # a --skip-existing plan into outputs made otherwise
        return predict_run.run_plan(
            self,
            plan,
            made=self.made_with(threshold, background, plan.refine_foreground),
            threshold=threshold,
            background=background_colour(background),
            batch=batch,
            on_progress=on_progress,
            dist=dist or runtime.Distributed(),
            read_workers=read_workers,
            write_workers=write_workers,
            on_stopping=on_stopping,
        )


MAX_SCALES = 4  # passes per image --scales may ask for


def scale_sides(scales: Sequence[float] | None, size: Size, fixed: int | None = None) -> tuple[int, ...]:
    """The working sides of ``scales`` (multiples of ``size``), each rounded to a multiple of 32 (the
    model's stride) and at least 32, without repeats, smallest first; () for None or no scales.

    Raises:
        InputError: a scale that is not a number in (0, 4], more than :data:`MAX_SCALES` of them, or
            scales with ``size="full"`` or a model of one fixed input size.
    """
    if scales is None or (not isinstance(scales, str) and len(scales) == 0):
        return ()
    if isinstance(scales, str | bytes) or not isinstance(scales, Sequence):
        raise InputError(f"--scales {scales!r}: give a list of numbers, e.g. --scales 0.875,1,1.125")
    for value in scales:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InputError(
                f"--scales {value!r}: each scale is a number", hint="e.g. --scales 0.875,1,1.125"
            )
        if not 0 < float(value) <= 4:
            raise InputError(
                f"--scales {value:g}: each scale is a multiple of the working size, in (0, 4]",
                hint="e.g. --scales 0.875,1,1.125",
            )
    if len(scales) > MAX_SCALES:
        raise InputError(
            f"--scales: {len(scales)} scales, at most {MAX_SCALES} (a pass of the model each)",
            hint="e.g. --scales 0.875,1,1.125",
        )
    if size == "full":
        raise InputError(
            "--scales multiplies a working size, and --size full runs each image at its own",
            hint="give --size N (or leave it out: the training size), or drop --scales",
        )
    if fixed is not None:
        raise InputError(
            f"--scales: this model takes only {fixed}x{fixed} inputs", hint="drop --scales for it"
        )
    sides = {max(32, round(int(size) * float(value) / 32) * 32) for value in scales}
    return tuple(sorted(sides))


def refuse_file_name(image: object, method: str) -> None:
    """Refuse a file name where pixels are wanted, naming the ways to read it or to run on files.

    Raises:
        TypeError: ``image`` is a ``str`` or path.
    """
    if isinstance(image, (str, os.PathLike)):
        raise TypeError(
            f"Predictor.{method} takes pixels, not a file name ({os.fspath(image)!r}): read it with "
            "pdseg_cli.data.images.read_image(path).pixels, or write maps for files with predict_paths"
        )


def background_colour(background: Sequence[int] | str) -> tuple[int, ...]:
    """The composite's background as bytes: (r, g, b) of 0..255, or a colour as ``--bg`` takes it
    (``"white"``, ``"#00ff00"``, ``"0,255,0"``).

    Raises:
        InputError: not a colour, or a channel outside 0..255 (it would be clipped in silence).
    """
    if isinstance(background, str):
        try:
            return parse_color(background)
        except ValueError as exc:
            raise InputError(f"background {exc}") from None
    colour = tuple(background)
    if len(colour) != 3 or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in colour):
        raise InputError(f"background {colour!r} is not a colour: give (r, g, b) of 0..255, or e.g. 'white'")
    return tuple(int(c) for c in colour)


FULL_SIZE_TRAINED = 1024  # a model trained at this side or more is what --size full is made for


def full_size_note(size: Size, train_size: int | None) -> str | None:
    """A warning for ``--size full`` with a model trained well below DIS's 1024: the model then
    sees objects at scales it never met (the bundled weights, trained at 512, give edge maps
    rather than objects on a 2000x1500 photo: IoU 0.14-0.42 with their maps at 512). No larger fixed
    size is offered instead: at 1024 the bundled weights score maxF 0.525 on davis16-eval, against
    0.735 at 512."""
    if size != "full" or not train_size or train_size >= FULL_SIZE_TRAINED:
        return None
    return (
        f"--size full runs the model at each image's own size, but it was trained at "
        f"{train_size}x{train_size}: on images much larger than that its maps get worse, often "
        f"only edges, and on much smaller ones they may be empty (leave --size out to work at "
        f"{train_size}, its training size)"
    )


def compile_full_size_note(compile_mode: str | None, size: Size) -> str | None:
    """A warning for ``--compile`` with ``--size full``: torch.compile specialises on the input shape,
    so each image size it has not met sets off another compilation (a minute or more) and, in the
    CUDA-graph modes, records graphs of its own; over a folder of mixed sizes that costs more than
    compiling saves. Said once, at the start, with the other notes."""
    if not compile_mode or size != "full":
        return None
    graphs = " and records new CUDA graphs for it" if compile_mode in CUDA_GRAPH_MODES else ""
    return (
        f"--compile {compile_mode} with --size full compiles the model again for image sizes it has not "
        f"met{graphs}: on images of mixed sizes this runs slower than without --compile (give a fixed "
        "--size, or drop --compile)"
    )


def check_threshold(threshold: float | None) -> None:
    """Refuse a threshold outside (0, 1): 0 or 1 would give an all-white or all-black mask.

    Raises:
        InputError: naming the value and an example.
    """
    number = isinstance(threshold, (int, float, np.number)) and not isinstance(threshold, bool)
    if threshold is not None and not number:
        raise InputError(f"threshold {threshold!r} is not a number: give a float in (0, 1), e.g. 0.5")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise InputError(
            f"--threshold {threshold} must lie strictly between 0 and 1", hint="e.g. --threshold 0.5"
        )


def describe_model(model: Any) -> str:
    """One line on what a loaded model is: a foreign ONNX model's spec, else its variant."""
    describe = getattr(model, "describe", None)
    if callable(describe):
        return str(describe())
    variant = getattr(model, "variant", None) or getattr(getattr(model, "config", None), "name", None)
    return weights_line(
        str(variant or type(model).__name__),
        getattr(model, "train_size", None),
        getattr(model, "provenance", None),
    )
