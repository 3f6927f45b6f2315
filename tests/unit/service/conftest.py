"""Fixtures shared by the service's unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from service.batcher import Batcher


@pytest.fixture
async def stoppable() -> AsyncIterator[list[Batcher]]:
    """Batchers created in a test, stopped (workers joined) after it."""
    created: list[Batcher] = []
    yield created
    for batcher in created:
        await batcher.stop()
