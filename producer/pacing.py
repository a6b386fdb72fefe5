"""Pacing a feed: a rate limit (objects/s, bytes/s) and a daily schedule window.

A batch's feeder is the only process sending its listing or manifest to the queue at a
time, so what it lets through is what all workers together can take: a migration that
shares a production bucket's request rate, or may only run at night, is paced here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from worker.errors import ConfigurationError

_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Window:
    """A daily window ``HH:MM-HH:MM`` in a named time zone; it may span midnight."""

    start: int  # minutes after midnight
    end: int
    zone: str = "UTC"

    @classmethod
    def parse(cls, text: str, zone: str = "UTC") -> Window:
        """``20:00-06:00`` in ``zone`` (an IANA name such as ``Europe/Berlin``)."""
        start_text, sep, end_text = text.strip().partition("-")
        minutes = []
        for part in (start_text, end_text):
            match = _TIME.match(part.strip())
            if not sep or match is None:
                raise ConfigurationError(f"window {text!r}: expected HH:MM-HH:MM, e.g. 20:00-06:00")
            minutes.append(int(match[1]) * 60 + int(match[2]))
        if minutes[0] == minutes[1]:
            raise ConfigurationError(f"window {text!r} is empty (start equals end)")
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(
                f"unknown time zone {zone!r}: give an IANA name such as Europe/Berlin or UTC"
            ) from None
        return cls(minutes[0], minutes[1], zone)

    def __str__(self) -> str:
        start, end = (f"{m // 60:02d}:{m % 60:02d}" for m in (self.start, self.end))
        return f"{start}-{end} {self.zone}"

    def is_open(self, now: float) -> bool:
        """True if ``now`` (epoch seconds) falls inside the window, in its time zone."""
        local = datetime.fromtimestamp(now, ZoneInfo(self.zone))
        minute = local.hour * 60 + local.minute
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end  # spans midnight

    def opens_in(self, now: float) -> float:
        """Seconds until the window next opens (0 while it is open)."""
        if self.is_open(now):
            return 0.0
        local = datetime.fromtimestamp(now, ZoneInfo(self.zone))
        opening = local.replace(hour=self.start // 60, minute=self.start % 60, second=0,
                                microsecond=0)  # fmt: skip
        if opening <= local:
            opening += timedelta(days=1)
        return opening.timestamp() - now


@dataclass
class Pacer:
    """A token bucket of objects and bytes per second; 0 means no limit.

    The bucket holds at most one second of allowance, so a feeder that waited (a full
    queue, a closed window) does not send a burst afterwards.
    """

    objects_per_second: float = 0.0
    bytes_per_second: float = 0.0
    clock: Callable[[], float] = time.monotonic
    _objects: float = field(default=0.0, init=False)
    _bytes: float = field(default=0.0, init=False)
    _last: float | None = field(default=None, init=False)

    @property
    def limited(self) -> bool:
        """True if any limit is set."""
        return self.objects_per_second > 0 or self.bytes_per_second > 0

    def _refill(self) -> None:
        now = self.clock()
        if self._last is None:
            # a fresh pacer starts with one second of allowance
            self._objects, self._bytes = self.objects_per_second, self.bytes_per_second
        else:
            elapsed = max(0.0, now - self._last)
            self._objects = min(self.objects_per_second,
                                self._objects + elapsed * self.objects_per_second)  # fmt: skip
            self._bytes = min(self.bytes_per_second, self._bytes + elapsed * self.bytes_per_second)
        self._last = now

    def allowance(self, sizes: list[int]) -> int:
        """How many of the objects of ``sizes`` (in order) may go now."""
        if not self.limited:
            return len(sizes)
        self._refill()
        count = len(sizes)
        if self.objects_per_second > 0:
            count = min(count, int(self._objects))
        if self.bytes_per_second > 0:
            spent, allowed = 0, 0
            for size in sizes[:count]:
                if spent + size <= self._bytes:
                    spent += size
                    allowed += 1
                    continue
                if allowed == 0 and size > self.bytes_per_second <= self._bytes:
                    allowed = 1  # larger than a second's allowance: it goes alone, when full
                break
            count = allowed
        return count

    def spend(self, sizes: list[int]) -> None:
        """Take ``sizes`` (objects just sent) from the allowance."""
        if not self.limited:
            return
        self._objects -= len(sizes)
        self._bytes -= sum(sizes)


_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmg]?)b)?\s*(?:/\s*s)?\s*$", re.IGNORECASE)


def parse_rate(text: str) -> tuple[float, float]:
    """``50`` or ``50/s`` (objects per second), ``200MB/s`` (bytes per second, decimal
    units KB, MB, GB) -> (objects/s, bytes/s), the other one 0."""
    match = _RATE.match(text)
    if match is None or float(match[1]) <= 0:
        raise ConfigurationError(
            f"rate {text!r}: give objects per second (50, 50/s) or bytes (200MB/s)"
        )
    number = float(match[1])
    if match[2] is None:  # no unit of bytes: objects
        return number, 0.0
    return 0.0, number * _UNITS[(match[2] or "").lower()]
