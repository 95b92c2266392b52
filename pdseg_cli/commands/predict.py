"""`pdseg predict`."""

from __future__ import annotations

from pdseg_cli.commands._common import not_available


def predict() -> None:
    """Not available yet (issue 4)."""
    not_available("predict", "issue 4")
