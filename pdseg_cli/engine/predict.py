"""Inference: one image in memory, or folders of files written safely to an output folder.

:class:`Predictor` is the one code path behind ``pdseg predict``, ``pdseg eval`` and Python users::

    from pdseg_cli import Predictor
    p = Predictor("weights.pt", device="auto", size="full")
    mask = p.predict(rgb)                       # (H, W, 3) any dtype -> (H, W) uint8
    summary = p.predict_paths(["imgs/"], "masks/")

How a map is made (``pdseg_cli.data.transforms`` documents the rule): the image goes to the model
resized to ``size`` x ``size`` (or at its native size with ``size="full"``; the model pads to a
multiple of 32 and crops back), the logits are resized bilinearly to the image's own (H, W), then
``floor(255 * sigmoid)``.

Folder runs: files are decoded and preprocessed by a pool of reader threads ahead of the model and
encoded and written by a pool of writer threads behind it, so the model does not wait on the disk.
Every file is written to a hidden temporary name and renamed into place. Unreadable files are
recorded and the run goes on. Under torchrun every process takes every world_size-th file.
"""

from __future__ import annotations

import collections
import difflib
import glob
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pdseg_cli import runtime
from pdseg_cli.data import images as imio
from pdseg_cli.data import transforms as T
from pdseg_cli.data.foreground import estimate_foreground
from pdseg_cli.errors import InputError, PdsegError

SAVE_KINDS = ("mask", "alpha", "composite")
DEFAULT_SIZE = 1024  # used when a checkpoint does not record its training size (the paper's size)
Size = int | Literal["full"]
_GLOB_MAGIC = frozenset("*?[")


# ----------------------------------------------------------------------------------------------
# options


def parse_save(values: Iterable[str] | str | None) -> tuple[str, ...]:
    """``["mask,alpha", "composite"]`` -> ``("mask", "alpha", "composite")`` (order kept, no repeats).

    Raises:
        InputError: an unknown kind (with the closest name as a hint).
    """
    if values is None:
        return ("mask",)
    if isinstance(values, str):
        values = [values]
    kinds: list[str] = []
    for value in values:
        for part in value.split(","):
            kind = part.strip().lower()
            if not kind:
                continue
            if kind not in SAVE_KINDS:
                close = difflib.get_close_matches(kind, SAVE_KINDS, n=1)
                raise InputError(
                    f"--save {part.strip()!r} is not an output kind (choose from {', '.join(SAVE_KINDS)})",
                    hint=f"did you mean {close[0]}?" if close else "e.g. --save mask,alpha",
                )
            if kind not in kinds:
                kinds.append(kind)
    return tuple(kinds) or ("mask",)


MAX_SIDE = 16384  # the largest working side --size takes: 8192x8192 peaks at 9.5 GB on the CPU


def parse_size(text: str | int | None) -> Size | None:
    """``None`` (the checkpoint's training size), ``"full"`` or a side length of at least 32.

    Raises:
        InputError: anything else.
    """
    if text is None:
        return None
    if isinstance(text, int):
        value = text
    else:
        t = str(text).strip().lower()
        if t in ("full", "native", "original"):
            return "full"
        try:
            value = int(t)
        except ValueError:
            raise InputError(
                f"--size {text!r} is neither a number nor 'full'", hint="e.g. --size 1024 or --size full"
            ) from None
    if value < 32:
        raise InputError(f"--size {value} is too small: at least 32 (the model's stride)")
    if value > MAX_SIDE:
        raise InputError(
            f"--size {value} is too large: at most {MAX_SIDE} ({MAX_SIDE}x{MAX_SIDE} already needs about "
            "40 GB)",
            hint="--size full runs each image at its own resolution",
        )
    return value


# ----------------------------------------------------------------------------------------------
# inputs and the output plan


@dataclass(frozen=True)
class InputFile:
    """One image to segment.

    Attributes:
        path: the file.
        rel_dir: the folder under ``--out`` its outputs go to ("." unless --recursive mirrors one).
        index: its position in the whole run (results are reported in this order).
    """

    path: Path
    rel_dir: Path
    index: int = 0


def collect_inputs(
    sources: Sequence[str | os.PathLike[str]], *, recursive: bool = False, exclude: Path | None = None
) -> tuple[list[InputFile], list[Path]]:
    """Expand files, folders and glob patterns into images, and list the other files met.

    Args:
        sources: files, folders, or glob patterns (``**`` matches subfolders).
        recursive: descend into subfolders of folders (and of a pattern's base folder); their
            relative folders are mirrored under ``--out``.
        exclude: a folder never listed (the output folder, so old outputs are not read as inputs).

    Returns:
        (images in a stable order, files that are not images). Hidden files are ignored.

    Raises:
        InputError: a source that is neither a file, a folder nor a pattern matching anything.
    """
    found: list[InputFile] = []
    not_images: list[Path] = []
    seen: set[Path] = set()
    exclude_r = exclude.resolve() if exclude is not None else None

    def add(path: Path, rel_dir: Path) -> None:
        key = path.resolve()
        if key in seen:
            return
        seen.add(key)
        if imio.is_image_file(path):
            found.append(InputFile(path, rel_dir, len(found)))
        else:
            not_images.append(path)

    def walk(root: Path, base: Path) -> None:
        if recursive:
            files = []
            for dirpath, dirnames, filenames in os.walk(root):
                d = Path(dirpath)
                dirnames[:] = sorted(
                    n
                    for n in dirnames
                    if not n.startswith(".") and (exclude_r is None or (d / n).resolve() != exclude_r)
                )
                files.extend(d / n for n in sorted(filenames))
        else:
            files = sorted(p for p in root.iterdir() if p.is_file())
        for p in files:
            if p.name.startswith("."):
                continue
            add(p, p.parent.relative_to(base) if recursive else Path("."))

    for source in sources:
        text = os.fspath(source)
        path = Path(text).expanduser()
        if path.is_dir():
            walk(path, path)
        elif path.is_file():
            add(path, Path("."))
        elif any(c in text for c in _GLOB_MAGIC):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                raise InputError(
                    f"no file matches the pattern {text!r}",
                    hint="quote the pattern so the shell leaves it to pdseg",
                )
            base = _glob_base(text)
            for m in matches:
                p = Path(m)
                if p.is_file() and not p.name.startswith("."):
                    add(
                        p,
                        p.parent.relative_to(base) if recursive and _is_under(p.parent, base) else Path("."),
                    )
                elif p.is_dir():
                    walk(p, p if not recursive else base)
        elif path.exists():
            raise InputError(f"{path} is neither a file nor a folder")
        else:
            raise InputError(f"{path}: no such file, folder or pattern")
    return found, not_images


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _glob_base(pattern: str) -> Path:
    """The folder part of a pattern before its first wildcard ('data/*/x.png' -> 'data')."""
    parts = Path(os.path.expanduser(pattern)).parts
    base: list[str] = []
    for part in parts:
        if any(c in part for c in _GLOB_MAGIC):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def _is_under(path: Path, base: Path) -> bool:
    try:
        path.resolve().relative_to(base.resolve())
        return True
    except ValueError:
        return False


def output_path(out_dir: Path, item: InputFile, kind: str, high_depth: bool) -> Path:
    """Where output ``kind`` of ``item`` goes.

    ``mask``: ``<stem>.png``; ``alpha``: ``<stem>_alpha.png`` (8-bit inputs) or ``<stem>_alpha.tif``
    (16-bit and float inputs, same sample type); ``composite``: ``<stem>_composite.png`` or ``.tif``
    likewise.
    """
    stem = item.path.stem
    folder = out_dir / item.rel_dir
    if kind == "mask":
        return folder / f"{stem}.png"
    ext = ".tif" if high_depth else ".png"
    return folder / f"{stem}_{kind}{ext}"


def _candidates(out_dir: Path, item: InputFile, save: Sequence[str]) -> dict[str, list[Path]]:
    """Every path each requested output of ``item`` may take (before its bit depth is known)."""
    out: dict[str, list[Path]] = {}
    for kind in save:
        paths = {output_path(out_dir, item, kind, False), output_path(out_dir, item, kind, True)}
        out[kind] = sorted(paths)
    return out


def check_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` and prove a file can be written there, before any work.

    Raises:
        InputError: it is a file, cannot be created, or is not writable.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file, not a folder")
    imio.check_writable_folder(out_dir, f"--out {out_dir}")


@dataclass
class PredictPlan:
    """What a folder run will do; made before the model is loaded.

    Attributes:
        out_dir: the output folder.
        save: the output kinds.
        todo: this process's images still to segment.
        skipped: this process's images whose outputs all exist (with --skip-existing).
        not_images: files met that are not images (the same list in every process).
        total: images in the whole run, all processes together.
        max_pixels: images whose header says more pixels are refused before decoding.
        refine_foreground: alpha and composite outputs put the estimated colour of the object
            (:func:`pdseg_cli.data.foreground.estimate_foreground`) under fractional alpha instead
            of the original pixels, which carry the old background's colour.
    """

    out_dir: Path
    save: tuple[str, ...]
    todo: list[InputFile]
    skipped: list[InputFile]
    not_images: list[Path]
    total: int
    refine_foreground: bool = True
    max_pixels: int | None = imio.DEFAULT_MAX_PIXELS


def plan_predict(
    sources: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    save: Sequence[str] = ("mask",),
    recursive: bool = False,
    skip_existing: bool = False,
    dist: runtime.Distributed | None = None,
    refine_foreground: bool = True,
    max_pixels: int | None = imio.DEFAULT_MAX_PIXELS,
) -> PredictPlan:
    """Find the inputs, check ``out_dir``, refuse clashes, and take this process's share.

    Raises:
        InputError: no images found, ``out_dir`` unusable, an output that would overwrite an
            input, or two inputs that would write the same output file.
    """
    dist = dist or runtime.Distributed()
    out = Path(out_dir).expanduser()
    save = parse_save(list(save))
    inputs, not_images = collect_inputs(sources, recursive=recursive, exclude=out)
    if not inputs:
        extra = f" ({len(not_images)} other files skipped)" if not_images else ""
        raise InputError(
            f"no images found in {', '.join(map(os.fspath, sources)) or '(nothing given)'}{extra}",
            hint="pdseg reads "
            + ", ".join(sorted(s.lstrip(".") for s in imio.IMAGE_SUFFIXES))
            + ("" if recursive else "; add --recursive to look in subfolders"),
        )
    check_out_dir(out)
    input_keys = {item.path.resolve(): item for item in inputs}
    input_ids = {_file_id(item.path): item for item in inputs}  # also catches case-insensitive file systems
    owner: dict[Path, InputFile] = {}
    for item in inputs:
        for paths in _candidates(out, item, save).values():
            for p in paths:
                key = p.resolve()
                same = input_keys.get(key) or (input_ids.get(_file_id(p)) if p.exists() else None)
                if same is not None:
                    raise InputError(
                        f"--out {out} would overwrite the input {same.path} (with the output of {item.path})",
                        hint="choose an --out folder apart from the inputs",
                    )
                other = owner.get(key)
                if other is not None and other is not item:
                    raise InputError(
                        f"{other.path} and {item.path} would both write {p}",
                        hint="rename one of them, run them separately"
                        + ("" if recursive else ", or use --recursive to mirror subfolders"),
                    )
                owner[key] = item
    mine = dist.shard(inputs)
    todo: list[InputFile] = []
    skipped: list[InputFile] = []
    for item in mine:
        if skip_existing and all(
            any(p.is_file() for p in paths) for paths in _candidates(out, item, save).values()
        ):
            skipped.append(item)
        else:
            todo.append(item)
    return PredictPlan(out, save, todo, skipped, not_images, len(inputs), refine_foreground, max_pixels)


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class FileResult:
    """What happened to one input file.

    Attributes:
        path: the input.
        status: "done", "skipped" or "failed".
        outputs: the files written.
        error: why it failed (one line), or None.
        warnings: things to tell the user (e.g. multi-page TIFF).
        index: its position in the whole run.
    """

    path: Path
    status: Literal["done", "skipped", "failed"]
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    index: int = 0


@dataclass
class PeakMemory:
    """One process's peak memory."""

    rank: int
    device: str
    bytes: int
    what: str


@dataclass
class PredictSummary:
    """The outcome of a folder run (merged over all torchrun processes).

    Attributes:
        results: one per image, in input order.
        not_images: files that are not images (skipped, counted).
        wall_seconds: from the first read to the last write (slowest process).
        peak_memory: one entry per process.
        device, precision, size: how the model ran ("size" is "full" or the side length).
        world_size: number of processes.
    """

    results: list[FileResult]
    not_images: list[Path]
    wall_seconds: float
    peak_memory: list[PeakMemory]
    device: str
    precision: str
    size: str
    world_size: int = 1

    def _count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def done(self) -> int:
        return self._count("done")

    @property
    def skipped(self) -> int:
        return self._count("skipped")

    @property
    def failed(self) -> int:
        return self._count("failed")

    @property
    def failures(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def images_per_second(self) -> float:
        return self.done / self.wall_seconds if self.wall_seconds > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# the predictor


@dataclass
class _Prepared:
    """An image read and preprocessed by a reader thread."""

    item: InputFile
    array: np.ndarray | None  # (h, w, 3) float32, normalised, at the working size
    orig_size: tuple[int, int]  # (H, W)
    pixels: np.ndarray | None  # the decoded image, kept only when alpha/composite are wanted
    warnings: list[str]
    error: str | None = None

    @property
    def work_size(self) -> tuple[int, int]:
        assert self.array is not None
        return int(self.array.shape[0]), int(self.array.shape[1])


class Predictor:
    """A loaded model plus everything needed to turn images into 8-bit maps.

    Args:
        weights: a pdseg checkpoint path, a model (``nn.Module`` with ``normalization`` and
            ``train_size`` attributes, e.g. from :func:`pdseg_cli.create_model`), or None for
            :func:`pdseg_cli.weights.default_weights`.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; under torchrun ``auto`` and
            ``cuda`` take the GPU of the process's LOCAL_RANK.
        precision: ``auto`` (bf16 on GPUs that have it, fp32 otherwise), ``fp32``, ``bf16``, ``fp16``.
        size: the working resolution: an int N (images resized to N x N, as in training),
            ``"full"`` (native resolution, one pass, no tiles), or None for the checkpoint's
            training size (1024 when the checkpoint does not record one).
        optimized: run :func:`pdseg_cli.optimize`'s inference form of a PyTorch model (the same
            logits within 1e-4, 1.5-2x faster on CPU); False runs the model as given.
        channels_last: run convolutions in channels-last layout (faster on CPU and GPU; results
            can differ from the default layout by float rounding).
        compile: ``torch.compile`` the optimised form: ``off``/False (default), True/``default``,
            ``reduce-overhead`` (CUDA graphs on a GPU) or ``max-autotune``. The first batch of each
            input shape compiles (a minute or more); it pays off on a GPU over many images of one
            working size. Needs a PyTorch checkpoint and ``optimized``.

    Attributes:
        model, device, precision, size, device_reason (how ``auto`` chose), notes (warnings about
        the set-up worth showing the user, e.g. a precision this CPU can only emulate).

    Raises:
        WeightsError: the checkpoint cannot be used.
        NotAvailableError: the device or precision is not available.
        InputError: a bad option value.
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
    ) -> None:
        compile_mode = runtime.resolve_compile(compile)
        choice = runtime.resolve_device(device, local_rank=local_rank)
        self.device: torch.device = choice.device
        self.device_reason = choice.reason
        self.precision = runtime.resolve_precision(precision, self.device)
        self.channels_last = channels_last
        from pdseg_cli.engine.onnx_backend import detect_format, load_exported
        from pdseg_cli.model.build import load_model
        from pdseg_cli.weights import default_weights

        self.weights_path: Path | None = None
        if isinstance(weights, nn.Module):
            kind = "module"
        else:
            self.weights_path = Path(weights) if weights is not None else default_weights()
            kind = detect_format(self.weights_path)
        if onnx_spec and kind != "onnx":  # checked before loading: these say how to run them
            raise InputError("--onnx-spec is for foreign ONNX models", hint="drop --onnx-spec")
        if isinstance(weights, nn.Module):
            model = weights
        elif kind == "checkpoint":
            model = load_model(self.weights_path, device="cpu")
        else:  # .onnx / TorchScript: fp32 in and out, precision fixed in the file
            model = load_exported(self.weights_path, device=self.device, onnx_spec=onnx_spec)
            self.precision = "fp32"  # no autocast around an exported graph
        model = model.eval().to(self.device)
        self.description = describe_model(model)  # before optimize(), which keeps only the maths
        from pdseg_cli.model.pdseg import PDSeg

        if compile_mode and not (optimized and isinstance(model, PDSeg)):
            raise InputError(
                f"--compile {compile_mode} needs a PyTorch checkpoint (.pt) run in its optimised form",
                hint="drop --compile for exported .onnx/.ts files",
            )
        if optimized and isinstance(model, PDSeg):
            from pdseg_cli.model.optimize import optimize

            model = optimize(model, channels_last=channels_last, compile=compile_mode)
        elif channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.normalization: Mapping[str, Any] = (
            getattr(model, "normalization", None) or _default_normalization()
        )
        self.train_size = _side(getattr(model, "train_size", None))
        parsed = parse_size(size)
        fixed = getattr(model, "fixed_size", None)
        if fixed is not None and parsed is not None and parsed != fixed:
            raise InputError(
                f"{self.weights_path} takes only {fixed}x{fixed} inputs; --size {parsed} cannot be used",
                hint="drop --size: every image is resized to the model's input and the map back",
            )
        self.size_from_checkpoint = parsed is None
        self.size: Size = parsed if parsed is not None else (self.train_size or DEFAULT_SIZE)
        if parsed is not None:
            self.size_note = ""
        elif self.train_size:
            self.size_note = "the checkpoint's training size"
        else:
            self.size_note = f"the checkpoint records no training size: {DEFAULT_SIZE} assumed, pass --size"
        slow = runtime.emulated_precision_note(self.device, self.precision)
        self.notes: list[str] = [slow] if slow else []

    # -- one image -----------------------------------------------------------------------------

    def predict(self, image: np.ndarray, *, threshold: float | None = None) -> np.ndarray:
        """Segment one image.

        Args:
            image: (H, W, 3) RGB (or (H, W) gray, (H, W, 4) RGBA with alpha ignored); uint8,
                uint16, bool or float (0..1) samples.
            threshold: None for the soft map ``floor(255 sigmoid)``; T in (0, 1) for 0/255 at
                ``sigmoid >= T``.

        Returns:
            (H, W) uint8, the same bytes ``pdseg predict`` writes as ``<stem>.png``.
        """
        _check_threshold(threshold)
        logits, size = self._forward_one(image)
        return self._to_map(logits, size, threshold)

    def predict_prob(self, image: np.ndarray) -> np.ndarray:
        """The foreground probability of every pixel of one image, before :meth:`predict` quantises it.

        Args:
            image: as for :meth:`predict`.

        Returns:
            (H, W) float32 in [0, 1]: the sigmoid of the logits bilinearly resized to the image;
            :meth:`predict` returns ``floor(255 p)`` of exactly these values.
        """
        logits, size = self._forward_one(image)
        return self._to_prob(logits, size)[0, 0].cpu().numpy()

    def _forward_one(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """One image of any accepted dtype -> its (1, 1, h, w) logits and its own (H, W)."""
        x = T.to_float_rgb(image)
        h, w = x.shape[:2]
        return self._forward([self._prepare_array(x)]), (int(h), int(w))

    def predict_batch(
        self, images: Sequence[np.ndarray], *, threshold: float | None = None, batch: int = 8
    ) -> list[np.ndarray]:
        """:meth:`predict` over several images.

        Up to ``batch`` consecutive images of one working size share a forward pass; their bytes can
        differ from :meth:`predict`'s by float rounding (at most 1).
        """
        _check_threshold(threshold)
        xs = [T.to_float_rgb(im) for im in images]
        sizes = [x.shape[:2] for x in xs]
        arrays = [self._prepare_array(x) for x in xs]
        out: list[np.ndarray] = [np.empty(0, np.uint8)] * len(arrays)
        i = 0
        while i < len(arrays):
            j = i + 1
            while j < len(arrays) and j - i < batch and arrays[j].shape == arrays[i].shape:
                j += 1
            logits = self._forward(arrays[i:j])
            for k in range(i, j):
                out[k] = self._to_map(logits[k - i : k - i + 1], tuple(sizes[k]), threshold)  # type: ignore[arg-type]
            i = j
        return out

    def _prepare_array(self, x: np.ndarray) -> np.ndarray:
        """(H, W, 3) float32 0..255 -> normalised (h, w, 3) at the working size."""
        if self.size != "full":
            x = T.resize_image(x, (int(self.size), int(self.size)))
        return T.normalize(x, self.normalization)

    @torch.inference_mode()
    def _forward(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Normalised (h, w, 3) arrays of one size -> logits (B, 1, h, w) float32 on the device."""
        # (B, h, w, 3) -> (B, 3, h, w) view with channels_last strides: no copy on the CPU
        if len(arrays) == 1:
            batch = torch.from_numpy(arrays[0])[None]
        else:
            batch = torch.from_numpy(np.stack(arrays))
        x = batch.permute(0, 3, 1, 2)
        x = x.to(self.device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        with runtime.autocast(self.device, self.precision):
            logits = self.model(x)
        return logits.float()

    @torch.inference_mode()
    def _to_map(self, logits: torch.Tensor, size: tuple[int, int], threshold: float | None) -> np.ndarray:
        """(1, 1, h, w) float32 logits -> (H, W) uint8: bilinear resize, sigmoid, floor(255 p) or 0/255."""
        prob = self._to_prob(logits, size)
        out = T.binarize(prob, threshold) if threshold is not None else T.quantize(prob, inplace=True)
        return out[0, 0].cpu().numpy()

    @torch.inference_mode()
    def _to_prob(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(1, 1, h, w) float32 logits -> (1, 1, H, W) probabilities, in place where no resize is needed
        (the logits are not used again)."""
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.sigmoid_()

    # -- folders -------------------------------------------------------------------------------

    def predict_paths(
        self,
        sources: Sequence[str | os.PathLike[str]],
        out_dir: str | os.PathLike[str],
        *,
        save: Sequence[str] = ("mask",),
        threshold: float | None = None,
        background: Sequence[int] = (255, 255, 255),
        recursive: bool = False,
        skip_existing: bool = False,
        batch: int = 1,
        on_progress: Callable[[FileResult], None] | None = None,
        dist: runtime.Distributed | None = None,
    ) -> PredictSummary:
        """Segment files, folders and glob patterns into ``out_dir`` (see :func:`plan_predict`).

        Returns:
            The summary; under torchrun every process gets the merged one.
        """
        plan = plan_predict(
            sources, out_dir, save=save, recursive=recursive, skip_existing=skip_existing, dist=dist
        )
        return self.run_plan(
            plan, threshold=threshold, background=background, batch=batch, on_progress=on_progress, dist=dist
        )

    def run_plan(
        self,
        plan: PredictPlan,
        *,
        threshold: float | None = None,
        background: Sequence[int] = (255, 255, 255),
        batch: int = 1,
        on_progress: Callable[[FileResult], None] | None = None,
        dist: runtime.Distributed | None = None,
        read_workers: int | None = None,
        write_workers: int | None = None,
    ) -> PredictSummary:
        """Carry out a :class:`PredictPlan`: read ahead, run the model in batches, write behind.

        Ctrl-C stops reading at once, lets the writes in progress finish (each one is atomic),
        drops the queued ones and re-raises KeyboardInterrupt.
        """
        _check_threshold(threshold)
        if batch < 1:
            raise InputError(f"--batch {batch} must be at least 1")
        dist = dist or runtime.Distributed()
        background = tuple(int(c) for c in background)
        cpus = os.cpu_count() or 2
        n_read = read_workers or max(1, min(4, cpus))
        n_write = write_workers or max(1, min(4, cpus))
        keep_pixels = any(k in plan.save for k in ("alpha", "composite"))
        # full resolution images are big: read just enough ahead to fill the next batch
        depth = batch if self.size == "full" else max(2 * batch, 2 * n_read)
        max_writes = 2 * n_write + batch

        results: list[FileResult] = [FileResult(i.path, "skipped", index=i.index) for i in plan.skipped]
        for r in results:
            _call(on_progress, r)
        runtime.reset_peak_memory(self.device)
        t0 = time.perf_counter()

        readers = ThreadPoolExecutor(n_read, thread_name_prefix="pdseg-read")
        writers = ThreadPoolExecutor(n_write, thread_name_prefix="pdseg-write")
        reads: collections.deque[Future[_Prepared]] = collections.deque()
        writes: collections.deque[Future[FileResult]] = collections.deque()
        todo = iter(plan.todo)

        def refill() -> None:
            while len(reads) < depth:
                item = next(todo, None)
                if item is None:
                    return
                reads.append(readers.submit(self._prepare_file, item, keep_pixels, plan.max_pixels))

        def finish(result: FileResult) -> None:
            results.append(result)
            _call(on_progress, result)

        def collect_writes(block_until: int) -> None:
            # finished writes in order; block while more than block_until are outstanding
            while writes and (writes[0].done() or len(writes) > block_until):
                finish(writes.popleft().result())

        def run_group(group: list[_Prepared]) -> None:
            try:
                logits = self._forward([g.array for g in group])  # type: ignore[misc]
                maps = [self._to_map(logits[k : k + 1], g.orig_size, threshold) for k, g in enumerate(group)]
            except RuntimeError as exc:  # torch.cuda.OutOfMemoryError included
                if not runtime.is_out_of_memory(exc):
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                for g in group:
                    finish(
                        _failed(
                            g.item, "out of memory on " + str(self.device) + _oom_hint(self.size, len(group))
                        )
                    )
                return
            for g, m in zip(group, maps, strict=True):
                g.array = None  # free the model input before the write
                writes.append(writers.submit(_write_outputs, plan, g, m, background))
            collect_writes(max_writes)

        completed = False
        try:
            refill()
            group: list[_Prepared] = []
            while reads:
                prepared = reads.popleft().result()
                refill()
                if prepared.error is not None:
                    finish(_failed(prepared.item, prepared.error, prepared.warnings))
                    continue
                if group and (group[0].work_size != prepared.work_size or len(group) >= batch):
                    run_group(group)
                    group = []
                group.append(prepared)
                if len(group) >= batch:
                    run_group(group)
                    group = []
                collect_writes(max_writes)
            if group:
                run_group(group)
            collect_writes(0)
            completed = True
        finally:
            if not completed:
                for f in reads:
                    f.cancel()
            readers.shutdown(wait=True, cancel_futures=True)
            writers.shutdown(wait=True, cancel_futures=not completed)

        wall = time.perf_counter() - t0
        peak, what = runtime.peak_memory(self.device)
        local = PredictSummary(
            results=sorted(results, key=lambda r: r.index),
            not_images=plan.not_images,
            wall_seconds=wall,
            peak_memory=[PeakMemory(dist.rank, str(self.device), peak, what)],
            device=str(self.device),
            precision=self.precision,
            size=str(self.size),
            world_size=dist.world_size,
        )
        return merge_summaries(dist.all_gather(local)) if dist.enabled else local

    def _prepare_file(self, item: InputFile, keep_pixels: bool, max_pixels: int | None) -> _Prepared:
        """Reader thread: decode and preprocess one file; failures are returned, not raised."""
        try:
            loaded = imio.read_image(item.path, max_pixels)
            x = T.to_float_rgb(loaded.pixels)
            array = self._prepare_array(x)
            del x
            return _Prepared(
                item, array, loaded.size, loaded.pixels if keep_pixels else None, loaded.warnings
            )
        except PdsegError as exc:
            return _Prepared(item, None, (0, 0), None, [], error=exc.message)
        except MemoryError:
            return _Prepared(item, None, (0, 0), None, [], error="out of memory while decoding")
        except Exception as exc:  # a decoder bug or an odd file must not stop the run
            return _Prepared(item, None, (0, 0), None, [], error=f"cannot read ({type(exc).__name__}: {exc})")


def _write_outputs(
    plan: PredictPlan, prepared: _Prepared, byte_map: np.ndarray, background: tuple[int, ...]
) -> FileResult:
    """Writer thread: encode and write every requested output of one image, atomically."""
    item = prepared.item
    written: list[Path] = []
    path = plan.out_dir
    pixels = prepared.pixels
    high_depth = pixels is not None and pixels.dtype != np.uint8
    fg: np.ndarray | None = None  # the estimated foreground colour, made once for both kinds
    try:
        for kind in plan.save:
            path = output_path(plan.out_dir, item, kind, high_depth)
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "mask":
                imio.write_png(path, byte_map)
            else:
                assert pixels is not None
                if plan.refine_foreground and fg is None:
                    fg = estimate_foreground(pixels, byte_map)
                source = fg if fg is not None else pixels
                data = (
                    T.cutout(source, byte_map)
                    if kind == "alpha"
                    else T.composite(source, byte_map, background)
                )
                if path.suffix == ".tif":
                    imio.write_tiff(path, data)
                else:
                    imio.write_png(path, data)
            written.append(path)
    except OSError as exc:
        why = f"cannot write {path} ({exc.strerror or exc})"
        return FileResult(item.path, "failed", written, why, prepared.warnings, item.index)
    except Exception as exc:  # an encoder error must not stop the run
        why = f"cannot write {path} ({type(exc).__name__}: {exc})"
        return FileResult(item.path, "failed", written, why, prepared.warnings, item.index)
    return FileResult(item.path, "done", written, None, prepared.warnings, item.index)


def _failed(item: InputFile, error: str, warnings: list[str] | None = None) -> FileResult:
    return FileResult(item.path, "failed", [], error, list(warnings or []), item.index)


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise InputError(
            f"--threshold {threshold} must lie strictly between 0 and 1", hint="e.g. --threshold 0.5"
        )


def _oom_hint(size: Size, batch: int) -> str:
    if batch > 1:
        return f" (batch of {batch}; try --batch 1)"
    if size == "full":
        return " (try --size 2048, or --device cpu; README lists the memory each size needs)"
    return " (try a smaller --size)"


def _call(callback: Callable[[FileResult], None] | None, result: FileResult) -> None:
    if callback is not None:
        callback(result)


def merge_summaries(parts: Sequence[PredictSummary]) -> PredictSummary:
    """One summary from every torchrun process's (results in input order, slowest wall time)."""
    first = parts[0]
    results = sorted((r for p in parts for r in p.results), key=lambda r: r.index)
    return PredictSummary(
        results=results,
        not_images=first.not_images,
        wall_seconds=max(p.wall_seconds for p in parts),
        peak_memory=[m for p in parts for m in p.peak_memory],
        device=", ".join(dict.fromkeys(p.device for p in parts)),
        precision=first.precision,
        size=first.size,
        world_size=len(parts),
    )


def describe_model(model: Any) -> str:
    """One line on what a loaded model is: a foreign ONNX model's spec, else its variant."""
    describe = getattr(model, "describe", None)
    if callable(describe):
        return str(describe())
    variant = getattr(model, "variant", None) or getattr(getattr(model, "config", None), "name", None)
    text = str(variant or type(model).__name__)
    size = getattr(model, "train_size", None)
    if size:
        text += f", trained at {size}x{size}"
    provenance = getattr(model, "provenance", None) or {}
    if provenance.get("summary"):  # the model card's one line, stored with the weights
        return f"{text}: {provenance['summary']}"
    if provenance.get("data"):
        return f"{text} on {provenance['data']}"
    return text


def _side(train_size: Any) -> int | None:
    """A checkpoint's training size (an int, or an (H, W) pair) as one side length."""
    if train_size is None:
        return None
    if isinstance(train_size, (tuple, list)):
        return int(max(train_size)) if train_size else None
    return int(train_size)


def _default_normalization() -> Mapping[str, Any]:
    from pdseg_cli.config import NORMALIZATION

    return NORMALIZATION
