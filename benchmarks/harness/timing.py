"""How each number is taken: an untimed warm-up, then the median of up to N timed runs
within a time budget; and the progress notes a long run prints."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

MB = 1e6  # MB/s is megabytes (10^6 bytes) of input file per wall second
MIB = 1024 * 1024


@dataclass(frozen=True)
class Protocol:
    """How each number is taken."""

    repeats: int
    budget: float  # stop repeating once a measurement has used this many seconds

    def describe(self) -> str:
        """One line for the table and the results file."""
        if self.repeats == 1:
            return "one timed run after an untimed warm-up"
        return (
            f"median of up to {self.repeats} timed runs after an untimed warm-up; "
            f"fewer once a measurement has used {self.budget:g} s"
        )


@dataclass(frozen=True)
class Timing:
    """Wall seconds of the timed runs of one measurement."""

    runs: tuple[float, ...]

    JSON_KEYS: ClassVar[tuple[str, ...]] = (
        "mb_per_s", "seconds", "runs", "seconds_min", "seconds_max",
    )  # fmt: skip

    @property
    def median(self) -> float:
        """The reported number."""
        return statistics.median(self.runs)

    def as_json(self, megabytes: float) -> dict[str, Any]:
        """MB/s and the spread of the runs."""
        return {
            "mb_per_s": round(megabytes / self.median, 3),
            "seconds": round(self.median, 4),
            "runs": len(self.runs),
            "seconds_min": round(min(self.runs), 4),
            "seconds_max": round(max(self.runs), 4),
        }


def measure(run_once: Callable[[], float], protocol: Protocol) -> Timing:
    """Time ``run_once`` (which returns its own seconds) per the protocol."""
    runs: list[float] = []
    while len(runs) < protocol.repeats and sum(runs) < protocol.budget:
        runs.append(run_once())
    return Timing(tuple(runs))


class Progress:
    """Elapsed-time notes on stderr, so a long run shows where it is."""

    def __init__(self, quiet: bool) -> None:
        self.started = time.perf_counter()
        self.quiet = quiet

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.started

    def note(self, text: str) -> None:
        """One line on stderr."""
        if not self.quiet:
            print(f"[{self.elapsed():6.1f} s] {text}", file=sys.stderr, flush=True)
