"""pdseg: One-stage Progressive Dichotomous Segmentation.

Zhu, Ahmed, Li, Shen, Jin, "One-stage Progressive Dichotomous Segmentation", BMVC 2023.

The package root stays light: ``import pdseg_cli`` does not import torch. The public API
below is resolved lazily on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # type checkers see the real signatures; at run time they stay lazy (below)
    from pdseg_cli.engine.evaluate import evaluate as evaluate
    from pdseg_cli.engine.export import export_checkpoint as export_checkpoint
    from pdseg_cli.engine.predict import Predictor as Predictor
    from pdseg_cli.engine.train import TrainConfig as TrainConfig
    from pdseg_cli.engine.train import train as train
    from pdseg_cli.errors import DataError as DataError
    from pdseg_cli.errors import InputError as InputError
    from pdseg_cli.errors import NotAvailableError as NotAvailableError
    from pdseg_cli.errors import PdsegError as PdsegError
    from pdseg_cli.errors import RunFailed as RunFailed
    from pdseg_cli.errors import WeightsError as WeightsError
    from pdseg_cli.model.build import create_model as create_model
    from pdseg_cli.model.build import load_backbone as load_backbone
    from pdseg_cli.model.build import load_checkpoint as load_checkpoint
    from pdseg_cli.model.build import load_model as load_model
    from pdseg_cli.model.build import save_checkpoint as save_checkpoint
    from pdseg_cli.model.optimize import optimize as optimize

# public name -> module that defines it
_LAZY = {
    "create_model": "pdseg_cli.model.build",
    "load_model": "pdseg_cli.model.build",
    "save_checkpoint": "pdseg_cli.model.build",
    "load_checkpoint": "pdseg_cli.model.build",
    "load_backbone": "pdseg_cli.model.build",
    "evaluate": "pdseg_cli.engine.evaluate",
    "Predictor": "pdseg_cli.engine.predict",
    "optimize": "pdseg_cli.model.optimize",
    "export_checkpoint": "pdseg_cli.engine.export",
    "train": "pdseg_cli.engine.train",
    "TrainConfig": "pdseg_cli.engine.train",
    # the errors the docstrings' Raises sections name, catchable without a private import
    "PdsegError": "pdseg_cli.errors",
    "InputError": "pdseg_cli.errors",
    "WeightsError": "pdseg_cli.errors",
    "DataError": "pdseg_cli.errors",
    "NotAvailableError": "pdseg_cli.errors",
    "RunFailed": "pdseg_cli.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pdseg_cli' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    """The lazy public names too, so that ``dir()`` and tab completion find them."""
    return sorted({*globals(), *__all__})
