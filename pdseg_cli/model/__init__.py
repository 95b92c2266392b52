"""The PDSeg network: MSCAN encoder, hamburger decoders, checkpoints and MAC counting.

Importing this package imports torch; ``import pdseg_cli`` alone does not.
"""

from pdseg_cli.model.build import (
    Checkpoint,
    create_model,
    load_backbone,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from pdseg_cli.model.counting import count_macs, count_params
from pdseg_cli.model.pdseg import PDSeg

__all__ = [
    "Checkpoint",
    "PDSeg",
    "count_macs",
    "count_params",
    "create_model",
    "load_backbone",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
]
