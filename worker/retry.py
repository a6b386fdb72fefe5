"""Retry policy as data: how many tries, and how long to wait between them.

Every loop that tries again after a :class:`~worker.errors.TransientError` (the task's
retries, a write to S3, the estimate's reads, the listener's SQS polls) takes its waits
from one :class:`Backoff`: exponential, capped,
with full jitter so that many workers failing together do not come back together.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# 2**64 times any base is past every cap: the exponent stops there, the float stays finite
_MAX_EXPONENT = 64


@dataclass(frozen=True)
class Backoff:
    """A retry policy: ``attempts`` tries in all; after the n-th failed one, a wait of
    up to ``base * 2**(n - 1)`` seconds, never above ``cap``."""

    attempts: int | None  # tries in all, the first included; None: no limit
    base: float = 1.0  # the longest wait after the first try, in seconds
    cap: float = math.inf  # the longest wait of all, in seconds
    jitter: bool = True  # full jitter: uniform between 0 and the longest wait

    def delay(self, attempt: int) -> float:
        """Seconds to wait after try ``attempt`` (1 for the first) failed."""
        longest = min(self.cap, self.base * 2 ** min(attempt - 1, _MAX_EXPONENT))
        return random.uniform(0.0, longest) if self.jitter else float(longest)

    def last(self, attempt: int) -> bool:
        """True if try ``attempt`` (1 for the first) was the last one allowed."""
        return self.attempts is not None and attempt >= self.attempts
