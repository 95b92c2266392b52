"""Shared test fixtures: where the shared sample data lives, and the slow-test switch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The sample data is research-only (shared/data/README.md): tests read it in place beside the
# checkout and never copy it into the repository.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PDSEG_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set PDSEG_RUN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder ../shared/data beside the checkout (skips the test where it is absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"sample data not found at {SHARED_DATA}")
    return SHARED_DATA
