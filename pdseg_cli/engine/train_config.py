"""The configuration of a training run: :class:`TrainConfig`, its checks, and its ``config.json`` form.

The defaults are the recipe of ``docs/model.md``, 'Training recipe'.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pdseg_cli import runtime
from pdseg_cli.config import DEFAULT_VARIANT, get_config
from pdseg_cli.data import dis5k
from pdseg_cli.engine import losses
from pdseg_cli.errors import InputError, check_kind

CONFIG = "config.json"  # the run folder's record of the configuration (see TrainConfig.to_dict)
RUNS_DIR = Path("runs")  # default run folders: runs/<variant>
DEFAULT_SIZE = 1024  # the training side without --size or --init: DIS5K's images, the recipe's

Supervision = losses.Supervision
Loss = losses.Loss
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PathArg = str | os.PathLike[str]  # what a path field takes; __post_init__ makes it a Path

# Fields that shape the trajectory: a resumed run must keep them, or it is another experiment.
TRAJECTORY_FIELDS = (
    "variant",
    "size",
    "batch",
    "seed",
    "supervision",
    "loss",
    "lr",
    "decoder_lr_mult",
    "weight_decay",
    "clip_grad",
    "ema_decay",
    "ema_tau",
    "augment",
    "zoom",
    "paste",
    "teacher_weight",
    "max_unsure",
    "harden_teacher",
)
# What a start stopped during its setup leaves in the run folder: the decoded samples
# (train_folder.CACHE_DIR), which a new start reuses
_SETUP_LEFTOVERS = ("cache",)
_PATH_FIELDS = ("out", "data_root", "val_dir", "backbone_weights", "cache_dir", "teacher", "init")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; ``config.json`` in the run folder stores it.

    Args:
        out: the run folder (``last.pt``, ``best.pt``, ``results.csv``, ``config.json``).
        epochs: train until this many epochs are complete (also when resuming).
        variant: the model, a name from ``pdseg_cli.config.VARIANTS`` (``pdseg-t/s/b/l``;
            ``segnext-b``/``segnext-t``, the ablation's single head; ``pdseg-tiny``, for tests);
            None: ``init``'s variant, else ``pdseg-b``.
        size: square training side in pixels; a multiple of 32. None: ``init``'s training size (the
            nearest multiple of 32), else 1024, the DIS recipe's (:data:`DEFAULT_SIZE`).
        batch: images per step and process (the global batch is ``batch * world_size``).
        workers: DataLoader worker processes per training process (0 loads in the main process);
            None: :func:`default_workers`.
        seed: seeds the initial weights, the data order, the augmentation and the model's RNG.
        data_root: DIS5K root (default ``$PDSEG_DATA``, else ``./DIS5K``); unused when both
            ``train_dir`` and ``val_dir`` are given.
        train_dir: a folder with ``im/`` and ``gt/`` to train on, or several (a list); default
            ``<root>/DIS-TR``. With a ``teacher``, a folder may hold images without masks.
        val_dir: a folder to validate on; default ``<root>/DIS-VD`` when ``train_dir`` is not
            given, else no validation (and no ``best.pt``).
        supervision: ``multi`` (loss on every decoder level) or ``single`` (final map only).
        loss: ``bce-iou`` (the paper's BCE + IoU) or ``structure`` (both weighted per pixel, up to 6x
            near the mask's edges: :func:`pdseg_cli.engine.losses.edge_weight`).
        lr: the encoder's peak learning rate (SegNeXt: 6e-5).
        decoder_lr_mult: the decoder's learning rate is this times ``lr`` (SegNeXt: 10).
        weight_decay: AdamW weight decay, not applied to norms, biases and layer scales.
        warmup: linear-warmup iterations; None means ``min(1500, total_iterations // 10)``.
        clip_grad: clip the global gradient norm to this; 0 turns clipping off.
        precision: ``auto`` (bf16 on GPUs with native bf16, Ampere and newer, else fp32), ``fp32``,
            ``bf16`` or ``fp16``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        ema_decay: final decay of the weight EMA; None: 0.9999, or ``1 - 10 / total_iterations`` if
            that is smaller, so the average spans at most a tenth of the run.
        ema_tau: iterations over which the EMA decay ramps up; None: ``min(2000, total_iterations / 20)``.
        val_every: validate every this many epochs (and after the last); 0 never validates.
        save_every_steps: also write ``last.pt`` every this many iterations; 0 only at epoch ends.
        backbone_weights: ImageNet MSCAN weights for the encoder (ignored when resuming).
        cache: keep decoded, resized samples on ``disk`` (``.npy``), in ``ram``, or ``off``.
        cache_dir: where the disk cache lives; default ``<out>/cache``. Share it between runs.
        augment: flip, rotation, crop-and-resize and colour jitter on training samples.
        zoom: probability that an augmented sample is also zoomed in or out by up to 1.6x
            (:class:`pdseg_cli.data.augment.AugmentConfig`); 0, the default, never zooms.
        paste: probability that an augmented sample's object is put on another sample's background,
            whose own object is filled in (:func:`pdseg_cli.data.augment.paste_object`); 0, the
            default, never pastes.
        freeze_bn: keep the encoder's BatchNorm layers in eval mode while training: their running
            statistics stay as the starting weights have them (their affine weights still train).
            None: :func:`default_freeze_bn` (frozen when a BatchNorm sees at most
            :data:`FREEZE_BN_BATCH` images a step and the encoder starts from trained weights).
            A resumed run keeps the value it resolved.
        resume: continue the run in ``out`` from its ``last.pt``.
        overwrite: replace a run already in ``out`` (its cache is kept).
        teacher: a model ``pdseg predict`` runs (``.pt``, ``.onnx``, ``.ts``, a foreign ONNX) whose
            maps are the targets of images without masks (distillation).
        teacher_weight: the teacher's share of the target where an image has a mask too (0..1).
        max_unsure: leave out images without masks whose teacher map is doubtful
            (:func:`pdseg_cli.data.teacher.map_doubt`: no object, or more than this share of its
            pixels unsure); None keeps every image.
        harden_teacher: make the teacher maps' nearly sure pixels sure before training on them
            (:func:`pdseg_cli.data.teacher.harden_map`); their soft edges stay.
        onnx_spec: ``--onnx-spec`` for a foreign ONNX teacher (see :mod:`pdseg_cli.engine.onnx_spec`).
        teacher_cache: where teacher maps are cached; default pdseg's cache root
            (``$PDSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/pdseg``, else ``~/.cache/pdseg``), shared by runs.
        init: start from this pdseg checkpoint's weights (variant and normalisation from the file)
            with a fresh optimiser and schedule (fine-tuning; ignored when resuming).
        from_record: made by :meth:`for_resume` from the run's record, so exact (an option given
            equal to its default is a change to judge); a ``TrainConfig(resume=True)`` made by
            hand is not, and :func:`~pdseg_cli.engine.train.train` fills its defaults from the
            run (:meth:`resumed`).
    """

    out: Path
    epochs: int
    variant: str | None = None
    size: int | None = None
    batch: int = 8
    workers: int | None = None
    seed: int = 0
    data_root: Path | None = None
    train_dir: Path | tuple[Path, ...] | None = None  # several --train folders: a tuple
    val_dir: Path | None = None
    supervision: Supervision = "multi"
    loss: Loss = "bce-iou"
    lr: float = 6e-5
    decoder_lr_mult: float = 10.0
    weight_decay: float = 0.01
    warmup: int | None = None
    clip_grad: float = 5.0
    precision: Precision = "auto"
    device: str = "auto"
    ema_decay: float | None = None
    ema_tau: float | None = None
    val_every: int = 1
    save_every_steps: int = 0
    backbone_weights: Path | None = None
    cache: dis5k.CacheMode = "disk"
    cache_dir: Path | None = None
    augment: bool = True
    zoom: float = 0.0
    paste: float = 0.0
    freeze_bn: bool | None = None
    resume: bool = False
    overwrite: bool = False
    teacher: Path | None = None
    teacher_weight: float = 0.0
    max_unsure: float | None = None
    harden_teacher: bool = False
    onnx_spec: str | None = None
    teacher_cache: Path | None = None
    init: Path | None = None
    # set by for_resume (a field, so that dataclasses.replace keeps it; never in config.json)
    from_record: bool = dataclasses.field(default=False, repr=False, compare=False)

    if TYPE_CHECKING:
        # What the generated __init__ takes, for type checkers: path fields take any path (a str,
        # `~` expanded) and train_dir a list of them too, as __post_init__ converts them; the fields
        # themselves hold Paths. The names and order are the fields' (a test compares them).
        def __init__(
            self,
            out: PathArg,
            epochs: int,
            variant: str | None = ...,
            size: int | None = ...,
            batch: int = ...,
            workers: int | None = ...,
            seed: int = ...,
            data_root: PathArg | None = ...,
            train_dir: PathArg | list[PathArg] | tuple[PathArg, ...] | None = ...,
            val_dir: PathArg | None = ...,
            supervision: Supervision = ...,
            loss: Loss = ...,
            lr: float = ...,
            decoder_lr_mult: float = ...,
            weight_decay: float = ...,
            warmup: int | None = ...,
            clip_grad: float = ...,
            precision: Precision = ...,
            device: str = ...,
            ema_decay: float | None = ...,
            ema_tau: float | None = ...,
            val_every: int = ...,
            save_every_steps: int = ...,
            backbone_weights: PathArg | None = ...,
            cache: dis5k.CacheMode = ...,
            cache_dir: PathArg | None = ...,
            augment: bool = ...,
            zoom: float = ...,
            paste: float = ...,
            freeze_bn: bool | None = ...,
            resume: bool = ...,
            overwrite: bool = ...,
            teacher: PathArg | None = ...,
            teacher_weight: float = ...,
            max_unsure: float | None = ...,
            harden_teacher: bool = ...,
            onnx_spec: str | None = ...,
            teacher_cache: PathArg | None = ...,
            init: PathArg | None = ...,
            from_record: bool = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        # str paths from Python callers, and `~` expanded as a shell would (a literal ~ folder is
        # never meant, and config.json stores the path absolute)
        for name in (*_PATH_FIELDS, "teacher_cache"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).expanduser())
        folders = self.train_dir
        if isinstance(folders, (list, tuple)):  # several --train folders; one stays a plain path
            paths = tuple(Path(f).expanduser() for f in folders)
            object.__setattr__(self, "train_dir", paths[0] if len(paths) == 1 else (paths or None))
        elif folders is not None:
            object.__setattr__(self, "train_dir", Path(folders).expanduser())

    @property
    def train_dirs(self) -> list[Path]:
        """The training folders given (empty: DIS-TR under the data root)."""
        if self.train_dir is None:
            return []
        return list(self.train_dir) if isinstance(self.train_dir, tuple) else [self.train_dir]

    @property
    def model_variant(self) -> str:
        """The variant to build: the one given, else the default (``init`` sets it when the run starts)."""
        return self.variant or DEFAULT_VARIANT

    def _check_types(self) -> None:
        """Refuse a value of the wrong kind for a number or switch field (``epochs="2"``,
        ``batch=2.5``) in one line, before a comparison or the data loader fails on it deep down.

        Raises:
            InputError: naming the first such field and what it takes.
        """
        import typing

        for name, hint in typing.get_type_hints(type(self)).items():
            base = next((k for k in (int, float, bool) if hint in (k, k | None)), None)
            value = getattr(self, name, None)
            if base is None or value is None:
                continue
            # plain Python numbers only: the run's config.json is written from them
            check_kind("TrainConfig", name, value, base)
            if base is not bool and type(value) not in (int, float):
                raise InputError(f"TrainConfig {name}={value!r}: give a plain Python number")

    def check(self) -> None:
        """Reject values that cannot work, with the fix in the message.

        Raises:
            InputError: the first bad value.
        """
        self._check_types()
        get_config(self.model_variant)  # unknown names get a did-you-mean hint
        rules: list[tuple[bool, str, str | None]] = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}", "e.g. --epochs 20"),
            (
                self.epochs <= MAX_EPOCHS,  # a typo's extra digits: an ETA of centuries, not a run
                f"--epochs must be at most {MAX_EPOCHS} (more than any run needs), got {self.epochs}",
                "e.g. --epochs 20",
            ),
            (
                self.size is None or (self.size >= 32 and self.size % 32 == 0),
                f"--size must be at least 32 and a multiple of 32 (the model's total stride), got "
                f"{self.size}",
                "e.g. --size 1024 (the DIS recipe), 512 or 320",
            ),
            (
                self.batch >= 1,
                f"--batch must be at least 1, got {self.batch}",
                "e.g. --batch 4 (images per step and process), or leave --batch out for 8",
            ),
            (
                self.workers is None or self.workers >= 0,
                f"--workers must be 0 or more, got {self.workers}",
                "e.g. --workers 2 (0 decodes in the training process), or leave --workers out",
            ),
            (
                self.workers is None or self.workers <= MAX_WORKERS,  # each one a forked process
                f"--workers {self.workers} is more than any machine runs well (at most {MAX_WORKERS})",
                "e.g. --workers 4 (one per core to spare), or leave --workers out",
            ),
            (self.seed >= 0, f"--seed must be 0 or more, got {self.seed}", "e.g. --seed 1"),
            (
                self.seed < 2**64,  # torch's generators take 64 bits (larger: its overflow traceback)
                f"--seed {self.seed} is too large (below 2^64)",
                "e.g. --seed 1",
            ),
            (
                0 < self.lr < math.inf,
                f"--lr must be a positive, finite number, got {self.lr}",
                "e.g. --lr 6e-5 (the default), or 1e-5 to fine-tune gently",
            ),
            (
                0 < self.decoder_lr_mult < math.inf,
                f"the decoder lr multiplier must be positive, got {self.decoder_lr_mult}",
                None,
            ),
            (
                0 <= self.weight_decay < math.inf,
                f"weight decay must be 0 or more, got {self.weight_decay}",
                None,
            ),
            (
                self.warmup is None or self.warmup >= 0,
                f"--warmup must be 0 or more, got {self.warmup}",
                "e.g. --warmup 500 (iterations), --warmup 0 for none, or leave it out for the default",
            ),
            (
                0 <= self.clip_grad < math.inf,  # inf: JSON has no such number (config, checkpoints)
                f"--clip-grad must be 0 (off) or a positive finite number, got {self.clip_grad}",
                "e.g. --clip-grad 5 (the default), or --clip-grad 0 to turn clipping off",
            ),
            (
                self.ema_decay is None or 0.0 <= self.ema_decay < 1.0,
                f"--ema-decay must be in [0, 1), got {self.ema_decay}",
                "e.g. --ema-decay 0.999, or leave it out for the default",
            ),
            (self.ema_tau is None or self.ema_tau > 0, f"EMA tau must be positive, got {self.ema_tau}", None),
            (
                self.val_every >= 0,
                f"--val-every must be 0 (never) or more, got {self.val_every}",
                "e.g. --val-every 5 (every 5 epochs and after the last), or --val-every 0 for never",
            ),
            (
                self.save_every_steps >= 0,
                f"--save-every-steps must be 0 or more, got {self.save_every_steps}",
                "e.g. --save-every-steps 1000, or 0 for epoch ends only",
            ),
            (
                self.supervision in ("multi", "single"),
                f"--supervision must be multi or single, got {self.supervision!r}",
                "e.g. --supervision single (final map only); multi, the default, supervises every level",
            ),
            (
                self.loss in losses.PIXEL_WEIGHTS,
                f"--loss must be {' or '.join(losses.PIXEL_WEIGHTS)}, got {self.loss!r}",
                "e.g. --loss structure (edges weighted); bce-iou, the default, is the paper's",
            ),
            (
                self.precision in runtime.PRECISIONS,
                f"--precision must be one of {', '.join(runtime.PRECISIONS)}, got {self.precision!r}",
                "e.g. --precision bf16, or leave it out for auto",
            ),
            (
                self.cache in ("disk", "ram", "off"),
                f"--cache must be disk, ram or off, got {self.cache!r}",
                "e.g. --cache ram (decoded samples kept in memory), or --cache off",
            ),
            (
                not (self.resume and self.overwrite),
                "--resume and --overwrite contradict each other (resume goes on with the run in --out; "
                "overwrite starts it again)",
                "drop --overwrite to go on with the run, or drop --resume to start it again",
            ),
            (
                self.init is None or self.backbone_weights is None,
                "--init and --backbone-weights exclude each other (--init gives every weight, the encoder's)",
                "drop --backbone-weights",
            ),
            (0.0 <= self.zoom <= 1.0, f"--zoom must be a probability in [0, 1], got {self.zoom}", "e.g. 0.5"),
            (self.augment or self.zoom == 0.0, "--zoom needs augmentation", "leave out --no-augment"),
            (
                0.0 <= self.paste <= 1.0,
                f"--paste must be a probability in [0, 1], got {self.paste}",
                "e.g. 0.3",
            ),
            (self.augment or self.paste == 0.0, "--paste needs augmentation", "leave out --no-augment"),
            (
                # asked for by name, as eval's: said before samples are decoded (else: exit 1, later)
                self.cache_dir is None or not self.cache_dir.exists() or self.cache_dir.is_dir(),
                f"--cache-dir {self.cache_dir} is a file",
                "give a folder (runs may share one), or leave --cache-dir out for <out>/cache",
            ),
            (
                0.0 <= self.teacher_weight <= 1.0,
                f"--teacher-weight must be in [0, 1], got {self.teacher_weight}",
                "0: the GT where an image has one; 1: the teacher everywhere",
            ),
            (
                self.max_unsure is None or 0.0 <= self.max_unsure <= 1.0,
                f"--max-unsure must be a share in [0, 1], got {self.max_unsure}",
                "e.g. 0.35: leave out teacher maps with more than 35% unsure pixels",
            ),
            (
                self.teacher is not None
                or (
                    self.teacher_weight == 0.0
                    and not self.onnx_spec
                    and self.max_unsure is None
                    and not self.harden_teacher
                ),
                "--teacher-weight, --max-unsure, --harden-teacher and --onnx-spec need --teacher",
                "pass --teacher MODEL (a .pt, .onnx or .ts file)",
            ),
        ]
        for ok, message, hint in rules:
            if not ok:
                raise InputError(message, hint=hint)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for ``config.json``. Paths are stored absolute: ``--resume`` reads them
        back, perhaps from another working folder, where a relative ``--data-root DIS5K`` would
        name another folder or none."""
        out = dataclasses.asdict(self)
        for name in (*_PATH_FIELDS, "teacher_cache"):
            if out[name] is not None:
                out[name] = str(Path(out[name]).absolute())
        dirs = [str(d.absolute()) for d in self.train_dirs]
        out["train_dir"] = None if not dirs else dirs[0] if len(dirs) == 1 else dirs
        out["variant"] = self.model_variant
        del out["from_record"]  # how this object was made, not a setting of the run
        return out

    def resumed(self) -> TrainConfig:
        """This configuration as a resume of the run in ``out``, as a Python caller means
        ``TrainConfig(out="runs/a", epochs=3, resume=True)``: the fields left at their defaults
        take the run's own values (as options left out do on the command line), the others are
        changes :func:`pdseg_cli.engine.train_folder.refuse_other_settings` judges; ``init`` and
        ``backbone_weights``, a new run's starting weights, are ignored (the run goes on from its
        ``last.pt``).

        Raises:
            InputError: ``out`` holds no run to resume.
        """
        ignored = ("out", "resume", "init", "backbone_weights", "from_record")
        changes = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ignored and getattr(self, f.name) != f.default
        }
        return TrainConfig.for_resume(self.out, **changes)

    @classmethod
    def for_resume(cls, out: str | os.PathLike[str], **changes: Any) -> TrainConfig:
        """The configuration stored in ``out/config.json``, with ``changes`` applied, to resume.

        Raises:
            InputError: ``out`` holds no run to resume.
        """
        out = Path(out).expanduser()  # as __post_init__ does: `--out=~/run` reaches here unexpanded
        path = out / CONFIG
        if not path.is_file():
            left = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
            if left and set(left) <= set(_SETUP_LEFTOVERS):
                raise InputError(
                    f"nothing to resume in {out}: the run there never started (it was stopped while setting "
                    f"up, before writing {CONFIG}; only its {', '.join(n + '/' for n in left)} is there)",
                    hint="run the same command without --resume to start it; the samples decoded so far are "
                    "reused",
                )
            others = (
                sorted(str(p.parent) for p in out.parent.glob(f"*/{CONFIG}")) if out.parent.is_dir() else []
            )
            runs = f"; runs beside it: {', '.join(others[:5])}" if others else ""
            raise InputError(
                f"nothing to resume in {out}: {CONFIG} is missing",
                hint=f"check --out (the default is runs/<variant>){runs}, or start the run without --resume",
            )
        try:
            record = json.loads(path.read_text())
            stored = record["train"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path} is not a pdseg run configuration ({exc})") from None
        for name in ("init", "backbone_weights"):  # the starting weights are the run's own: last.pt
            if changes.get(name) is not None:
                flag = "--" + name.replace("_", "-")
                raise InputError(
                    f"{flag} gives a new run its starting weights; --resume continues {out} from its last.pt",
                    hint=f"drop {flag} to resume, or drop --resume to start a new run (another --out)",
                )
        from pdseg_cli.engine.train_checkpoints import LAST_NAME, saved_config

        # the options of the session that saved last.pt: a later one that stopped before its first
        # save (a kill, a full disk) had written config.json already, and its --epochs (say) became
        # the run's without a word, where a plain --resume keeps the run's own
        stored = saved_config(out / LAST_NAME) or stored
        names = {f.name for f in dataclasses.fields(cls)} - {"from_record"}
        values = {k: v for k, v in stored.items() if k in names}
        resolved = record.get("resolved")
        resolved = resolved if isinstance(resolved, dict) else {}  # a damaged record: the defaults
        if values.get("warmup") is None:  # keep the warmup the run resolved, not a new default
            values["warmup"] = resolved.get("warmup")
        if values.get("freeze_bn") is None:  # likewise the BatchNorm mode (older runs: last.pt says)
            values["freeze_bn"] = resolved.get("freeze_bn")
        values.update(changes)  # an --overwrite among them is refused by check()
        values.update(out=out, resume=True, overwrite=bool(changes.get("overwrite", False)))
        # exact: an option given with its default value (val_every=1 on a run that had 0) is a
        # change to judge, not a field left out for the run to fill (:meth:`resumed`)
        values.update(from_record=True)
        return cls(**values)


MAX_WORKERS = 256  # DataLoader processes per training process; more only fork without end
MAX_EPOCHS = 100_000  # a run of 10 images at batch 1 takes a million steps at this count

# At most this many images a step per BatchNorm, its batch statistics are too noisy to refit the
# running ones (docs/model.md, 'Batch norm'; the design spec's pitfall 5)
FREEZE_BN_BATCH = 4


def default_freeze_bn(images_per_norm: int, pretrained: bool) -> bool:
    """Whether a run freezes the encoder's BatchNorm statistics when ``--freeze-bn`` is not given:
    when each BatchNorm sees at most :data:`FREEZE_BN_BATCH` images a step and the encoder starts
    from trained weights, whose statistics a few images a step would only blur. Never from random
    weights, whose statistics (mean 0, variance 1) describe no data.

    Args:
        images_per_norm: the images one BatchNorm normalises over in a step: the batch per process,
            or the global batch under SyncBatchNorm (torchrun on GPUs).
        pretrained: the encoder starts from ``--init`` or ``--backbone-weights``.
    """
    return pretrained and images_per_norm <= FREEZE_BN_BATCH


def default_workers(cores: int | None = None) -> int:
    """DataLoader workers when ``--workers`` is not given: none on 2 cores or fewer, else up to 4.

    An augmented item costs a small fraction of a CPU step per image (benchmarks/RESULTS.md, 'CPU
    training speed'), so on a small machine worker processes only take cores from the step; on a
    GPU machine they keep decoding and augmentation off the step's thread.
    """
    cores = cores if cores is not None else runtime.usable_cores()
    return 0 if cores <= 2 else min(4, cores - 1)


def init_variant(init: Path | None) -> str | None:
    """The variant of an ``--init`` checkpoint, for the run folder ``runs/<variant>`` when
    ``--out`` is left out. None without ``--init``, or for one that cannot be read (the run then
    reports it)."""
    if init is None:
        return None
    from pdseg_cli.errors import PdsegError
    from pdseg_cli.model.build import load_checkpoint

    try:
        return load_checkpoint(init).variant
    except PdsegError:
        return None


def default_run_folder(variant: str | None) -> Path:
    """``--out``'s default, ``runs/<variant>`` (the default variant's when None)."""
    return RUNS_DIR / (variant or DEFAULT_VARIANT)
