"""`pdseg info`: the model variants with their parameter and multiply-add counts."""

from __future__ import annotations

from pdseg_cli.commands._common import not_available


def info() -> None:
    """Not available yet (issue 2)."""
    not_available("info", "issue 2")
