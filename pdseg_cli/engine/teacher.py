"""Teacher maps for distillation: one map per training image, computed once and cached on disk.

A teacher is anything ``pdseg predict`` runs (a pdseg ``.pt``, an ``.onnx``/``.ts`` export, or a
foreign DIS/SOD ONNX model). Its map of an image is made from the whole image at the teacher's own
input size and resized back to the image, exactly as ``pdseg predict`` writes it (8-bit,
floor(255 p)), so a teacher map and a GT mask are interchangeable inputs to the training sample
cache (:mod:`pdseg_cli.data.dis5k`), which then resizes and augments them alike (the maps are
judged and blended with the GTs by :mod:`pdseg_cli.data.teacher`).

The cache key is the image file's content (sha256) and the teacher's identity (its file's sha256
plus the ``--onnx-spec`` that changes how it runs): a changed image or another teacher gives another
key, the same photo under another name reuses its map, and runs on the same data share the maps.
Each map is written through a temporary file and a rename, so an interrupted labelling pass leaves
only whole maps and resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pdseg_cli.data.teacher import file_sha256

if TYPE_CHECKING:  # imported lazily at run time (torch, onnxruntime)
    from pdseg_cli.engine.predict import Predictor

TEACHER_DIR = "teacher"  # under the cache root


@dataclass(frozen=True)
class TeacherInfo:
    """Who the teacher is: what runs and results record.

    Attributes:
        path: the teacher file.
        sha256: its content hash.
        spec: the ``--onnx-spec`` text it runs with ("" when none).
        description: one line on the model (e.g. the recognised foreign model and its input rule).
    """

    path: Path
    sha256: str
    spec: str
    description: str


def _cache_key(sha256: str, spec: str, onnx: bool = False) -> str:
    """The teacher's cache folder name: its file hash, plus the parsed spec's when one is given.

    The key is taken from the spec's values, not its text, so ``color=bgr,scale=1`` and
    ``scale=1, color=BGR`` share their maps and the display ``name`` changes nothing. The "rgb"
    marker keys these apart from the maps of pdseg versions that read a ``color=bgr`` spec's mean
    and std as B:G:R (they are R:G:B now). An ONNX teacher's key also carries the "probabilities
    resized" marker: pdseg versions before it resized a probability model's maps as clamped logits,
    which differ by tens of grey levels at sharp edges when a map is enlarged, and a cache must not
    mix the two.
    """
    from pdseg_cli.engine.onnx_spec import parse_spec

    fields = {k: v for k, v in parse_spec(spec).items() if k != "name"}
    if not fields and not onnx:
        return sha256[:24]
    canonical = (
        json.dumps(fields, sort_keys=True) + "|mean-std-rgb" + ("|probabilities-resized" if onnx else "")
    )
    return f"{sha256[:16]}-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


def _input_shrinks(image: Path, side: int | str) -> bool:
    """Whether a model working at ``side`` x ``side`` shrinks ``image`` along an axis (True when its
    header does not say its size for sure: a TIFF's first page may be a thumbnail)."""
    from pdseg_cli.data.header import TIFF_MAGICS, image_size, read_head

    if side == "full":
        return False
    head = read_head(image)
    size = None if head.startswith(TIFF_MAGICS) else image_size(image, head)
    # max(): an EXIF rotation swaps width and height, and the input is square
    return size is None or max(size) > int(side)


class TeacherMaps:
    """A teacher model and its map cache.

    The model is loaded on first need (:meth:`info`, or a map to compute); ``pdseg train`` asks
    for :meth:`info` before any work, so a teacher that cannot run fails first.

    Args:
        teacher: the teacher file.
        cache_root: pdseg's cache root; maps go to ``<cache_root>/teacher/<teacher key>/``.
        device: where the teacher runs (``auto``, ``cpu``, ``cuda``...).
        onnx_spec: ``--onnx-spec`` for a foreign ONNX teacher, or None.

    Raises:
        WeightsError: the teacher file does not exist, or is a folder.
    """

    def __init__(
        self,
        teacher: str | os.PathLike[str],
        cache_root: str | os.PathLike[str],
        *,
        device: str = "cpu",
        onnx_spec: str | None = None,
    ) -> None:
        from pdseg_cli.weights import MODEL_SUFFIXES, check_weights_file

        path = Path(teacher).expanduser()
        # what --weights says of a folder or a missing file: the model files in the folder to give
        check_weights_file(path, "--teacher", MODEL_SUFFIXES)
        self.path = path.resolve()  # recorded in runs: the file itself, wherever the link pointed
        self._given = path  # loaded under the name given: the name says whether it may run code
        self.device = device
        self.onnx_spec = onnx_spec or ""
        self._sha = file_sha256(self.path)
        self._predictor: Predictor | None = None
        self.cache_root = Path(cache_root)
        from pdseg_cli.engine.onnx_backend import detect_format

        onnx = detect_format(self.path) == "onnx"
        self.folder = self.cache_root / TEACHER_DIR / _cache_key(self._sha, self.onnx_spec, onnx=onnx)
        if self.folder.is_dir():
            from pdseg_cli.data.atomic import sweep_folder

            # what a killed labelling left half-written (its writer's process gone): nothing else
            # ever looks at these, and a folder of large images grew by one map each kill
            sweep_folder(self.folder)

    def _model(self):  # noqa: ANN202 - a Predictor, imported lazily (torch, onnxruntime)
        if self._predictor is None:
            from pdseg_cli.engine.predict import Predictor

            # size None: the teacher's own input size (a fixed-size ONNX input, or a .pt's training size)
            predictor = Predictor(
                self._given, device=self.device, precision="fp32", onnx_spec=self.onnx_spec or None
            )
            if predictor.weights_sha256 != self._sha:
                from pdseg_cli.errors import WeightsError

                # its maps would be cached, for good, under the key of the file it replaced
                raise WeightsError(
                    f"--teacher {self._given} changed after this run began (another file was copied or "
                    "saved over it)",
                    hint="run again: the new file's maps are made afresh",
                )
            self._predictor = predictor
        return self._predictor

    def doubts(self) -> list[str]:
        """What the maps made so far say against how the teacher is read (``Predictor.doubts``: an
        ONNX output taken as a logit that gives probabilities, whose maps are grey)."""
        return self._predictor.doubts if self._predictor is not None else []

    def info(self) -> TeacherInfo:
        """The teacher's identity and a description (loads the model)."""
        return TeacherInfo(self.path, self._sha, self.onnx_spec, self._model().description)

    def map_path(self, image: Path) -> Path:
        """Where the map of ``image`` is (or will be) cached.

        An image a pdseg teacher's input shrinks gets its own name ("-area"): since pdseg shrinks its
        own models' inputs by area averaging (:func:`pdseg_cli.data.transforms.resize_image`), such
        an image's map differs from what earlier versions cached under the bare name, while the maps
        of images that are only enlarged, and every map of a foreign ONNX teacher (fed bilinearly as
        before), are the same bytes as before and stay in use: no relabelling hours after an update.
        """
        name = file_sha256(image)[:32]
        model = self._model()
        if model.area_downscale and _input_shrinks(image, model.size):
            name += "-area"
        return self.folder / f"{name}.png"

    def compute(self, image: Path) -> np.ndarray:
        """The teacher's (H, W) uint8 map of one image, at the image's size (not cached)."""
        from pdseg_cli.data.images import read_image

        return self._model().predict(read_image(image).pixels)

    def ensure(self, image: Path) -> Path:
        """The cached map of ``image``, computing and storing it first if needed."""
        path = self.map_path(image)
        if not path.is_file():
            self._store(image, path)
        return path

    def _store(self, image: Path, path: Path) -> None:
        from pdseg_cli.data.images import write_png

        array = self.compute(image)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png(path, array)  # atomic: a temporary file, then a rename

    def ensure_all(
        self,
        images: Sequence[Path],
        on_progress: Callable[[int, int, int], None] | None = None,
    ) -> list[Path]:
        """Cached maps for every image, computing the missing ones (the slow part, once per image).

        Args:
            images: the images.
            on_progress: called as ``on_progress(done, total, computed)`` after each image.

        Returns:
            The map paths, in the order of ``images``.

        Raises:
            DataError: maps are missing and the cache folder cannot be written (a read-only cache
                that holds every map is used as it is).
            Interrupted: a Ctrl-C; the maps made before it stay cached, and its hint says so.
        """
        from pdseg_cli.errors import DataError, Interrupted
        from pdseg_cli.metrics.cache import CACHE_ENV, cache_root_problem

        out: list[Path] = []
        computed = 0
        try:
            for i, image in enumerate(images):
                path = self.map_path(image)
                if not path.is_file():
                    problem = cache_root_problem(self.folder) if computed == 0 else None
                    if problem:  # said before the first map is computed, not as a bare OSError at its write
                        raise DataError(
                            f"the teacher-map cache {self.cache_root} cannot be used: {problem}",
                            hint=f"point ${CACHE_ENV} (or TrainConfig.teacher_cache) to a folder that can be "
                            "written",
                        )
                    self._store(image, path)
                    computed += 1
                out.append(path)
                if on_progress is not None:
                    on_progress(i + 1, len(images), computed)
        except KeyboardInterrupt:
            # each map is stored atomically as it is made, so a rerun starts at the first missing one
            # counted as far as the loop got: later images may have maps from earlier runs too
            raise Interrupted(
                f"the teacher maps are cached in {self.folder}: {computed} made now, {len(out) - computed} "
                f"found from earlier runs, {len(images) - len(out)} not looked at yet; running the same "
                "command again goes on from there"
            ) from None
        return out
