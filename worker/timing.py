"""Seconds per pipeline stage, so every stage can be timed and compared."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageTimer:
    """Accumulates wall seconds per named stage: ``with timer("encode"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.current = ""  # the stage entered last: where an error happened

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.current = name
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
