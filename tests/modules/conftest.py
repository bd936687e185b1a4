"""Fixtures of the module tests: the store backend (in process, or real Redis)."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["memory", "redis"])
def backend_url(request: pytest.FixtureRequest) -> str | None:
    """``None`` (in-process store) or the test Redis URL (skips without Redis)."""
    if request.param == "memory":
        return None
    return str(request.getfixturevalue("redis_url"))
