"""A model's maps of DIS5K-layout splits, for ``pdseg eval --weights``: the checks made before the
model runs (so that nothing refuses the run after an hours-long model pass), the pass itself into
``--save-preds`` or a temporary folder, and the pairs it leaves to score (``evaluate.evaluate_plans``).
The maps are the bytes ``pdseg predict`` writes: the same :class:`~pdseg_cli.engine.predict.Predictor`."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdseg_cli import runtime
from pdseg_cli.config import DEFAULT_MAX_PIXELS
from pdseg_cli.data.dis5k import IMAGE_DIR, MASK_DIR, images_by_stem, misnamed_masks
from pdseg_cli.data.eval_splits import SPLIT_LAYOUT
from pdseg_cli.data.header import not_an_image
from pdseg_cli.data.images import check_writable_folder
from pdseg_cli.engine.eval_pairs import (
    PairPlan,
    list_gts,
    list_maps,
    listing,
    plan_pairs,
    unreadable_masks,
)
from pdseg_cli.engine.output_kinds import output_path
from pdseg_cli.engine.predict_plan import (
    OLDER_OUTPUTS_HINT,
    InputFile,
    not_an_output,
    other_inputs_outputs,
    unmarked_among,
)
from pdseg_cli.errors import DataError, RunFailed, counted

if TYPE_CHECKING:
    from pdseg_cli.engine.predict import Predictor

Progress = Callable[[str], contextlib.AbstractContextManager[Callable[[Any], None]]]


@dataclass(frozen=True)
class ModelPass:
    """What a model pass over the splits leaves for the scoring and the report.

    Attributes:
        plans: the pairs of each split: the model's maps against the GTs.
        settings: how the maps were made (:func:`prediction_settings`), for the report's settings.
        no_prediction: {split: one line per GT that got no map}, left out under ``allow_missing``.
    """

    plans: list[PairPlan]
    settings: dict[str, Any]
    no_prediction: dict[str, list[str]]


def lock_save_preds(save_preds: Path | None, stack: contextlib.ExitStack) -> None:
    """Hold ``save_preds``' lock for the run (``stack`` lets it go): two runs writing one folder
    scored each other's maps. Taken before the model loads, so that a refusal comes at once.

    Raises:
        InputError: another live pdseg process writes there.
    """
    from pdseg_cli.data.folder_lock import folder_lock

    if save_preds is not None:
        stack.enter_context(folder_lock(save_preds.expanduser(), f"--save-preds {save_preds}"))


def run_model(
    predictor: Predictor,
    splits: Sequence[tuple[str, Path]],
    save_preds: Path | None,
    stack: contextlib.ExitStack,
    *,
    no_gt: Mapping[str, list[str]] | None = None,
    batch: int = 1,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allow_missing: bool = False,
    progress: Progress | None = None,
) -> ModelPass:
    """The model's maps of each split into ``save_preds/<split>/``, or into a temporary folder that
    ``stack`` removes as it closes (after the scoring, which reads the maps), and the pairs to score.
    Call :func:`lock_save_preds` and :func:`check_split_gts` first, before the model loads: the
    one refuses a folder another run writes, the other what would stop the run after the pass.

    Args:
        no_gt: per split, the images without a GT (:func:`check_split_gts`), for the report's notes.
        max_pixels: images whose header says more pixels are not decoded (``--max-pixels``; None:
            no limit): each is a GT without a prediction.

    Raises:
        DataError: GTs without a prediction (unless ``allow_missing``).
        RunFailed: the disk the maps go to filled up.
    """
    from pdseg_cli.engine.predict_summary import OutputWriteStopped

    root = save_preds if save_preds is not None else Path(stack.enter_context(temporary_folder()))
    try:
        plans, problems = predict_splits(
            predictor,
            splits,
            root,
            batch=batch,
            max_pixels=max_pixels,
            allow_missing=allow_missing,
            progress=progress,
        )
    except OutputWriteStopped as exc:  # predict's hint names --out and --skip-existing: not eval's
        where = (
            f"--save-preds {save_preds}"
            if save_preds is not None
            else f"the temporary folder {root.parent} (set TMPDIR to a roomier disk, or pass --save-preds)"
        )
        hint = f"make room for the maps in {where}, then run the same command again"
        raise RunFailed(exc.message, hint=hint) from None
    no_gt = no_gt or {}
    plans = [replace(plan, no_gt=no_gt.get(plan.name, [])) for plan in plans]  # the JSON's notes
    return ModelPass(plans, {"predictions": prediction_settings(predictor, save_preds)}, problems)


def predict_split(
    predictor: Predictor,
    split_dir: Path,
    out_dir: Path,
    *,
    batch: int = 1,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    on_progress: Callable[[Any], None] | None = None,
) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Run the model on the split's images that have a GT, writing ``out_dir/<stem>.png``.

    The maps are the bytes ``pdseg predict`` writes (the same :class:`Predictor` code path).

    Returns:
        (GT stems without an image, {stem: (path, error)} for each image the model could not read).

    Raises:
        DataError: the split has no ``im/`` folder or no image matches a GT.
    """
    im_dir, gt_dir = split_dir / IMAGE_DIR, split_dir / MASK_DIR
    gts = list_maps(gt_dir, "GT")
    if not im_dir.is_dir():
        raise DataError(f"{split_dir} has no {IMAGE_DIR}/ subfolder: cannot run the model", hint=SPLIT_LAYOUT)
    images = list_maps(im_dir, "image")
    todo = [images[s] for s in sorted(gts.keys() & images.keys())]
    no_image = sorted(gts.keys() - images.keys())
    if not todo:
        raise DataError(f"no image in {im_dir} matches a GT in {gt_dir} by name", hint=SPLIT_LAYOUT)
    summary = predictor.predict_paths(
        todo, out_dir, batch=batch, on_progress=on_progress, max_pixels=max_pixels
    )
    failed = {Path(r.path).stem: (str(r.path), str(r.error)) for r in summary.failures}
    return no_image, failed


def grouped_failures(failed: Mapping[str, tuple[str, str]]) -> list[str]:
    """``{stem: (path, error)}`` as one line per distinct error, naming its images: a model that
    fails on every image (a graph of another input size) said its reason once per image, which
    made one line of thousands of characters."""
    by_error: dict[str, list[str]] = {}
    for path, error in failed.values():
        # a reader's message names its file: grouped by the reason alone, the path said once
        by_error.setdefault(error.removeprefix(f"{path}: "), []).append(path)
    return [
        f"{paths[0]}: {error}"
        if len(paths) == 1
        else f"{counted(len(paths), 'image')} ({listing(paths, 3)}): {error}"
        for error, paths in by_error.items()
    ]


def check_split_gts(
    splits: Sequence[tuple[str, Path]], save_preds: Path | None = None, *, allow_missing: bool = False
) -> tuple[dict[str, int], dict[str, list[str]]]:
    """The images to run per split, after refusing GTs that cannot be read or have no image (unless
    ``allow_missing``), splits without images or GTs, two images of one name, and a ``--save-preds``
    folder whose old files would clash with the new maps: checked before a model pass, which any
    of these would otherwise throw away at the end.

    Returns:
        (images with a GT per split: what the model runs on, per split the names of the images in
        ``im/`` without a GT: the model does not run on them and they are not scored, which a
        before/after comparison should hear of).

    Args:
        splits: (name, split folder with ``im/`` and ``gt/``).
        save_preds: ``--save-preds``, where the maps go (``<save_preds>/<split>/<stem>.png``).
        allow_missing: GTs without an image, and GTs that cannot be read, are left out (and said
            after the run), not refused.

    Raises:
        DataError: a split without ``im/`` or GT masks, naming the unreadable GT files, the GTs
            without an image, or the clashing files.
    """
    for _, folder in splits:
        if not (folder / IMAGE_DIR).is_dir():
            raise DataError(
                f"{folder} has no {IMAGE_DIR}/ subfolder: cannot run the model", hint=SPLIT_LAYOUT
            )
    gts = {name: list_gts(folder / MASK_DIR) for name, folder in splits}
    # with --allow-missing, the scoring leaves them out and lists them: not read here
    bad = [] if allow_missing else [line for maps in gts.values() for line in unreadable_masks(maps.values())]
    if bad:
        raise DataError(
            f"{len(bad)} GT file(s) cannot be read: {listing(bad, 5)}",
            hint="replace or remove them, or pass --allow-missing to score the others; the model has "
            "not run yet",
        )
    no_gt: dict[str, list[str]] = {}
    to_run: dict[str, int] = {}
    why: str | None  # a misnamed mask's reason, then (reused) why a file is not an image
    for name, folder in splits:
        # listed now, so that two images of one name in a later split stop the run before the
        # model pass over the earlier ones, not after it
        images = list_maps(folder / IMAGE_DIR, "image")
        no_image = sorted(gts[name].keys() - images.keys())
        scored = sorted(gts[name].keys() & images.keys())  # the images the model runs on
        if no_image and (not allow_missing or not scored):
            # GTs named otherwise than their images (cat_mask.png for cat.jpg) are said as train
            # says them, with the rename; --allow-missing is offered only where some would be scored
            misnamed = misnamed_masks(gts[name], images)
            if misnamed is not None:
                why, fix = misnamed
                match = "matches" if len(no_image) == 1 else "match"
                message = (
                    f"{name}: {counted(len(no_image), 'GT mask')} {match} no image name in {folder}{why}"
                )
            else:
                fix = "add the images" + (", or pass --allow-missing to score the others" if scored else "")
                message = (
                    f"{name}: {counted(len(no_image), 'GT mask')} without an image of the same name in "
                    f"{folder / IMAGE_DIR}: {listing([gts[name][stem].name for stem in no_image], 10)}"
                )
            raise DataError(message, hint=f"{fix}; the model has not run yet")
        if not allow_missing:  # from their first bytes: caught now, not after the model pass
            paths = [images[stem] for stem in scored]
            not_images = [f"{path}: {why}" for path in paths if (why := not_an_image(path))]
            if not_images:
                raise DataError(
                    f"{name}: {counted(len(not_images), 'image')} in {folder / IMAGE_DIR} cannot be "
                    f"read: {listing(not_images, 10)}",
                    hint="replace them, or pass --allow-missing to score the others; the model has not "
                    "run yet",
                )
        if save_preds is not None:  # the model writes a map for each image that has a GT
            check_save_folder(save_preds, name, {stem: images[stem] for stem in scored})
        extra = sorted(images.keys() - gts[name].keys())
        if extra:
            no_gt[name] = [images[stem].name for stem in extra]
        to_run[name] = len(scored)
    return to_run, no_gt


def check_save_folder(save_preds: Path, name: str, images: Mapping[str, Path]) -> None:
    """Refuse a ``--save-preds`` split folder whose files would leave two maps of one name once the
    model writes ``<stem>.png`` for ``images`` ({stem: image}): the pairing after the model pass
    (by file stem) would stop there, hours later on DIS5K. Said here, as the option typed, not by
    the predict step as ``--out``.

    Raises:
        DataError: the folder is a file, or naming the files that clash (old ones among themselves,
            or an old ``<stem>.jpg`` beside the ``<stem>.png`` to come), a ``<stem>.png`` there
            that is not a map pdseg wrote (a photo), or one pdseg made from another image of that
            name (another copy of the split).
        InputError: the folder cannot be made or written.
    """
    out_dir = save_preds.expanduser() / name
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(
            f"--save-preds {save_preds}: {out_dir} is a file, where the maps of {name} go",
            hint="move or remove it, or give --save-preds another folder; the model has not run yet",
        )
    if out_dir.is_dir():
        kept, clashes = images_by_stem(out_dir)
        names = [f"{first.name} and {second.name}" for first, second in clashes]
        foreign: list[str] = []
        for stem in sorted(images):
            new = output_path(out_dir, stem, "mask", high_depth=False)
            old = kept.get(stem)
            if old is not None and old.name != new.name:
                names.append(f"{old.name} and the new {new.name}")
            elif (what := not_an_output(new, "mask")) is not None:
                foreign.append(f"{new.name} ({what})")
        if foreign:
            raise DataError(
                f"--save-preds {save_preds}: {out_dir} holds {counted(len(foreign), 'file')} that pdseg "
                f"would replace and cannot take for its own outputs: {listing(foreign, 5, sep='; ')}",
                hint="move them, or give --save-preds another folder; pdseg replaces only its own "
                "earlier maps"
                + (OLDER_OUTPUTS_HINT if unmarked_among(foreign) else "")
                + "; the model has not "
                "run yet",
            )
        items = [InputFile(path, Path(".")) for _, path in sorted(images.items())]
        others = other_inputs_outputs(out_dir, items, ["mask"])
        if others:
            whose = "another image of the same name" if len(others) == 1 else "other images of the same names"
            raise DataError(
                f"--save-preds {save_preds}: {out_dir} holds {counted(len(others), 'map')} that pdseg "
                f"made from {whose}, which this run would replace: {listing(others, 5, sep='; ')}",
                hint="give --save-preds another folder for this copy of the split, or delete those maps; "
                "the model has not run yet",
            )
        if names:
            raise DataError(
                f"--save-preds {save_preds}: {out_dir} would hold several files per name: "
                f"{listing(names, 5)}",
                hint=f"remove the old files from {out_dir} (pdseg pairs maps with GTs by file name without "
                "extension), or give --save-preds an empty folder; the model has not run yet",
            )
    # proven writable now, so that a read-only disk is named as the option typed (--save-preds,
    # not the predict step's --out) and before the model runs; made only when the maps are written
    check_writable_folder(out_dir, f"--save-preds {save_preds}", create=False)


def predict_splits(
    predictor: Predictor,
    splits: Sequence[tuple[str, Path]],
    root: Path,
    *,
    batch: int = 1,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allow_missing: bool = False,
    progress: Progress | None = None,
) -> tuple[list[PairPlan], dict[str, list[str]]]:
    """The model's maps of each split in ``root/<split>/``, and the pairs to score.

    Args:
        predictor: a :class:`~pdseg_cli.engine.predict.Predictor`.
        splits: (name, split folder with ``im/`` and ``gt/``).
        root: where the maps go (``--save-preds``, or a temporary folder).
        batch: images per forward pass.
        max_pixels: images whose header says more pixels are not decoded (None: no limit).
        allow_missing: score the others when some GTs get no prediction.
        progress: ``progress(name)`` gives a context that yields the per-image callback.

    Returns:
        (the pairs of each split, {split: one line per GT that got no prediction}). Those GTs are
        left out of the pairs even where ``root`` holds a map of theirs from an earlier run.

    Raises:
        DataError: GTs without a prediction (unless ``allow_missing``), naming them and why.
    """
    plans, problems = [], {}
    for name, folder in splits:
        out_dir = root / name
        with progress(name) if progress is not None else contextlib.nullcontext(None) as advance:
            no_image, failed = predict_split(
                predictor, folder, out_dir, batch=batch, max_pixels=max_pixels, on_progress=advance
            )
        gt_dir = folder / MASK_DIR
        images = list_maps(folder / IMAGE_DIR, "image")
        lines = [f"{gt_dir}/{stem}.*: no image of that name in {IMAGE_DIR}/" for stem in no_image]
        # named otherwise than their images (cat_mask.png): the rename, as train says it, on the
        # first line, which every listing shows
        misnamed = misnamed_masks(list_maps(gt_dir, "GT"), images) if no_image else None
        if misnamed is not None:
            lines[0] += f"; {misnamed[1]}"
        lines += grouped_failures(failed)
        if lines and not allow_missing:
            raise DataError(
                f"{name}: {counted(len(no_image) + len(failed), 'GT mask')} without a prediction: "
                f"{listing(lines, 10)}",
                hint="fix or add the images, or pass --allow-missing to score the others",
            )
        if lines:
            problems[name] = lines
        plan = plan_pairs(out_dir, gt_dir, name=name).without([*no_image, *failed])
        # each map has its image's size: a size unlike the GT's is the image's, which the notes name
        sources = {stem: images[stem] for stem, _, _ in plan.pairs if stem in images}
        plans.append(replace(plan, sources=sources))
    return plans, problems


def prediction_settings(predictor: Predictor, save_preds: Path | None) -> dict[str, Any]:
    """How the scored maps were made, for the report's settings."""
    weights = predictor.weights_path
    return {
        "weights": str(weights.resolve()) if weights else None,
        # the file's content: a path says little once weights are retrained or copied elsewhere.
        # Hashed as it was loaded: a training run may have saved over it since
        "weights_sha256": getattr(predictor, "weights_sha256", None),  # a Predictor-like of a script's
        "model": predictor.description,
        "device": str(predictor.device),
        "precision": predictor.precision,
        "size": str(predictor.size),
        "tta": predictor.tta,
        "scales": list(predictor.scale_sides) or None,  # the working sides, averaged
        # what the maps say against how the model is read (grey maps from a foreign ONNX's
        # probabilities read as logits): printed before the scores, kept with them for a script
        "model_warnings": predictor.doubts,
        # on a CPU the order of the sums, so a grey level here and there, follows the thread count
        # (the default follows the load): what --threads gives the same maps again
        "threads": runtime.maps_threads(predictor.device),
        "saved_to": str(save_preds.expanduser().resolve()) if save_preds is not None else None,
        # what ran the model: the maps depend on it (a --pred run's maps were made elsewhere)
        "versions": {
            name: getattr(sys.modules[name], "__version__", None)
            for name in ("torch", "onnxruntime")
            if name in sys.modules
        },
    }


_TEMPORARY = "pdseg-eval-"


def temporary_folder() -> tempfile.TemporaryDirectory[str]:
    """A temporary folder for predictions that are not kept, named after this process. Those that
    killed runs left (``kill -9`` skips the clean-up: a split's maps, hundreds of MB on DIS-TE) are
    removed first, where their process has died."""
    from pdseg_cli.data.atomic import writer_token, written_by_dead

    root = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for folder in root.glob(f"{_TEMPORARY}*-*-*"):
            token = folder.name[len(_TEMPORARY) :].rsplit("-", 1)[0]  # <pid>-<host>, then mkdtemp's part
            if written_by_dead(token) and folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f"{_TEMPORARY}{writer_token()}-")
