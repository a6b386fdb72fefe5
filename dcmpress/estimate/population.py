"""Phase 1 of an estimate, the population: every object's size, in log-scale classes.

Objects fall in size classes of a factor 4; each class keeps its count, its bytes and a
uniform random reservoir of its objects (memory does not grow with the prefix).
:func:`allocate` shares a number of draws among classes (or strata).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TypeVar

S = TypeVar("S")

SMALLEST_CLASS = 16 * 1024  # the first size class is everything below 16 KiB
CLASS_FACTOR = 4  # each class spans a factor 4 of sizes


@dataclass(frozen=True)
class Entry:
    """One listed object: its key (or path) and size."""

    key: str
    size: int


def size_class(size: int) -> int:
    """The log-scale size class of ``size`` bytes: 0 below 16 KiB, then factor 4 each."""
    if size < SMALLEST_CLASS:
        return 0
    return 1 + int(math.log(size / SMALLEST_CLASS, CLASS_FACTOR) + 1e-9)


def size_class_label(index: int) -> str:
    """``"64K-256K"`` and the like (K = KiB, M = MiB, G = GiB)."""
    if index == 0:
        return f"<{binary_size(SMALLEST_CLASS)}"
    low = SMALLEST_CLASS * CLASS_FACTOR ** (index - 1)
    return f"{binary_size(low)}-{binary_size(low * CLASS_FACTOR)}"


def binary_size(value: float) -> str:
    """``value`` bytes in binary units, shortest form: ``16K``, ``4M``."""
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:g}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass
class SizeClass:
    """The objects of one size class: count, bytes, and a uniform random reservoir."""

    index: int
    objects: int = 0
    bytes: int = 0
    reservoir: list[Entry] = field(default_factory=list)


class Population:
    """Every listed object, kept as per-class counts, bytes and a reservoir of at most
    ``keep`` objects each (Algorithm R: each object equally likely to be in it)."""

    def __init__(self, keep: int, rng: random.Random) -> None:
        self.keep, self.rng = max(1, keep), rng
        self.classes: dict[int, SizeClass] = {}

    def add(self, entry: Entry) -> None:
        """Count ``entry`` in its class; maybe keep it in the reservoir."""
        group = self.classes.setdefault(size_class(entry.size), SizeClass(size_class(entry.size)))
        group.objects += 1
        group.bytes += entry.size
        if len(group.reservoir) < self.keep:
            group.reservoir.append(entry)
        else:
            slot = self.rng.randrange(group.objects)
            if slot < self.keep:
                group.reservoir[slot] = entry

    @property
    def objects(self) -> int:
        """Objects listed."""
        return sum(group.objects for group in self.classes.values())

    @property
    def bytes(self) -> int:
        """Bytes listed."""
        return sum(group.bytes for group in self.classes.values())


def allocate(
    weights: dict[S, float], available: dict[S, int], total: int, minimum: int
) -> dict[S, int]:
    """How many of ``total`` draws each stratum gets: ``minimum`` first (or what it
    has), the rest in proportion to ``weights`` (largest remainders), never more than
    ``available``. The counts add up to ``min(total, sum(available))``.

    When ``total`` cannot give every stratum its minimum, the heaviest strata get one
    each first, then a second, and so on.
    """
    total = min(total, sum(available.values()))
    order = sorted(available, key=lambda s: (-weights.get(s, 0.0), str(s)))
    given = dict.fromkeys(available, 0)
    left = total
    for _ in range(minimum):
        for stratum in order:
            if left and given[stratum] < available[stratum]:
                given[stratum] += 1
                left -= 1
    while left > 0:
        open_ = [s for s in order if given[s] < available[s]]
        weight = sum(max(weights.get(s, 0.0), 0.0) for s in open_)
        shares = {
            s: left * (max(weights.get(s, 0.0), 0.0) / weight if weight else 1 / len(open_))
            for s in open_
        }
        added = 0
        for stratum in open_:
            extra = min(int(shares[stratum]), available[stratum] - given[stratum])
            given[stratum] += extra
            added += extra
        left -= added
        # the remainder one by one, largest fraction first
        for stratum in sorted(open_, key=lambda s: (-(shares[s] % 1), str(s))):
            if left and given[stratum] < available[stratum]:
                given[stratum] += 1
                left -= 1
                added += 1
        if not added:
            break
    return given
