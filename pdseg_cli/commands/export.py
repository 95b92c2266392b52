"""`pdseg export`."""

from __future__ import annotations

from pdseg_cli.commands._common import not_available


def export() -> None:
    """Not available yet (issue 6)."""
    not_available("export", "issue 6")
