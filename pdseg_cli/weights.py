"""Where the bundled demo weights live, and how to override them."""

from __future__ import annotations

import os
from pathlib import Path

from pdseg_cli.errors import WeightsError

# The bundled checkpoint (weights/README.md is its model card).
BUNDLED_NAME = "pdseg-t-distilled.pt"
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
