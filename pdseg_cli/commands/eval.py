"""`pdseg eval`."""

from __future__ import annotations

from pdseg_cli.commands._common import not_available


def eval_() -> None:
    """Not available yet (issue 3)."""
    not_available("eval", "issue 3")
