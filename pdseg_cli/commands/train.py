"""`pdseg train`."""

from __future__ import annotations

from pdseg_cli.commands._common import not_available


def train() -> None:
    """Not available yet (issue 5)."""
    not_available("train", "issue 5")
