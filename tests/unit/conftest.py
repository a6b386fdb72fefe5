"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.codec import parse


@pytest.fixture
def deferred(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pixel Data of these small files left in the file, as a large one's is."""
    monkeypatch.setattr(parse, "DEFER_SIZE", 1024)
    yield
