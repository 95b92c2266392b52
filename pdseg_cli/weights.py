"""Where the bundled demo weights live, and how to override them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pdseg_cli.data.atomic import is_special
from pdseg_cli.errors import WeightsError, listing

# The bundled checkpoint (weights/README.md is its model card).
BUNDLED_NAME = "pdseg-t-distilled.pt"
CARD_IN_REPOSITORY = "weights/README.md"  # how the weights' stored summary names their model card
ENV_VAR = "PDSEG_WEIGHTS"

# the file names that say an exported format: export writes by them, format detection falls back on
# them, and a checkpoint loader names them when it is handed one. .torchscript and .jit are the
# names other tools give TorchScript files (`--out model.torchscript` wrote ONNX under that name).
SUFFIX_FORMATS = {".onnx": "onnx", ".ts": "torchscript", ".torchscript": "torchscript", ".jit": "torchscript"}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")  # what PyTorch checkpoints are called
MODEL_SUFFIXES = (*CHECKPOINT_SUFFIXES, *SUFFIX_FORMATS)  # every model file --weights takes


def bundled_weights_dir() -> Path:
    """Where the bundled weights are: ``pdseg_cli/bundled_weights/`` in an installed wheel (the
    repository's ``weights/`` folder packaged, see pyproject.toml), else the repository's
    ``weights/`` next to the package (a source checkout or an editable install)."""
    here = Path(__file__).resolve().parent
    packaged = here / "bundled_weights"
    return packaged if packaged.is_dir() else here.parent / "weights"


def card_reference(text: str) -> str:
    """``text`` (a weights summary) with its reference to the bundled model card, which names the
    repository's ``weights/README.md``, pointed at the card an installed wheel holds instead."""
    card = bundled_weights_dir() / "README.md"
    if card.parent.name != "bundled_weights" or not card.is_file():  # a clone: the name is right
        return text
    return text.replace(CARD_IN_REPOSITORY, str(card))


def is_bundled(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is the bundled demo checkpoint itself (not a copy of it elsewhere)."""
    try:
        return Path(path).resolve() == (bundled_weights_dir() / BUNDLED_NAME).resolve()
    except OSError:
        return False


def default_weights() -> Path:
    """The checkpoint used when ``--weights`` is not given.

    ``$PDSEG_WEIGHTS`` wins; otherwise the bundled demo checkpoint.

    Raises:
        WeightsError: the file does not exist.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            what = "a folder, not a weights file" if path.is_dir() else "which does not exist"
            raise WeightsError(
                f"${ENV_VAR} points to {path}, {what}",
                hint=f"unset {ENV_VAR} or point it to a weights file (.pt, .onnx, .ts)",
            )
        return path
    path = bundled_weights_dir() / BUNDLED_NAME
    if not path.is_file():
        raise WeightsError(
            f"no weights given and the bundled demo weights are missing ({path})",
            hint=f"pass --weights FILE or set ${ENV_VAR}",
        )
    return path


def check_weights_file(path: Path, what: str, suffixes: tuple[str, ...] = CHECKPOINT_SUFFIXES) -> None:
    """Raise a WeightsError naming the fix when ``path`` is not a file: the bundled file's place
    for its name given from elsewhere, or, for a folder (a run's folder, say), the model files in
    it that the option takes (``suffixes``)."""
    if path.is_file():
        return
    if path.is_symlink() and not path.exists():  # a link to nothing, or one of a loop
        raise WeightsError(f"{what} {path} is a link that leads to no file", hint="check the link")
    if is_special(path):  # a FIFO, a device: there, but no weights file
        raise WeightsError(
            f"{what} {path} is not a regular file (a pipe or a device)", hint="give the weights file itself"
        )
    if not path.is_dir():
        raise WeightsError(f"{what} {path} does not exist", hint=missing_weights_hint(path))
    inside = sorted(
        p.name
        for p in path.iterdir()
        # not a temp file, nor an empty one (a touch, a copy that failed): neither holds weights
        if p.suffix.lower() in suffixes and p.is_file() and not p.name.startswith(".") and p.stat().st_size
    )
    if inside:
        preferred = next((n for n in ("best.pt", "last.pt") if n in inside), inside[0])
        hint = f"it holds {listing(inside, 4)}: give one, e.g. {path / preferred}"
    else:
        hint = f"give the model file itself ({', '.join(suffixes)}), not its folder"
    raise WeightsError(f"{what} {path} is a folder, not a file", hint=hint)


def missing_weights_hint(path: Path) -> str:
    """The fix for a weights path that does not exist: where the bundled file is, when that is the
    name given (a README command run from outside the clone), else to check the path."""
    if path.name == BUNDLED_NAME and default_weights().is_file():
        return f"the bundled weights are at {default_weights()}"
    return "check the path"


T = TypeVar("T")
_LOAD_TRIES = 3


def load_hashed(path: Path, load: Callable[[Path], T], what: str = "weights") -> tuple[T, str]:
    """``load(path)`` and the sha256 of the file it loaded. The file's identity (device, inode,
    size, modification time) is taken before loading and again after hashing: a file replaced in
    between (a training run saving ``last.pt`` under an eval of it) is loaded again, rather than
    recorded with the hash of the file that replaced it (provenance, the teacher cache's key).

    Raises:
        WeightsError: the file changed on every try.
    """
    from pdseg_cli.data.teacher import file_sha256

    check_weights_file(path, what, MODEL_SUFFIXES)  # a missing file said as such, not as moved mid-run
    for _ in range(_LOAD_TRIES):
        before = _identity(path)
        loaded = load(path)
        digest = file_sha256(path)
        if _identity(path) == before:
            return loaded, digest
    raise WeightsError(
        f"{what} {path} changed while it was being read, {_LOAD_TRIES} times",
        hint="copy it first (cp last.pt snapshot.pt) and give the copy",
    )


def _identity(path: Path) -> tuple[int, ...]:
    found = os.stat(path)
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)
