"""The storage circuit breaker: a storage outage pauses the workers; it fails no object.

A transient storage failure (a 5xx, a reset, a timeout) costs the object one of its
``DCMPRESS_MAX_RETRIES``, and an outage longer than those retries would fail every
object tried meanwhile. So every delivery notes what storage did for it in a short
Redis list all workers share: a failure, or an object that went through. When the
latest attempts of several distinct objects failed (:func:`storage_is_failing`), the
breaker opens: a Redis hash says since when and with which error (``dcmpress status``
shows it). While it is open,

- no worker takes new messages (:mod:`worker.runtime.breakerstep`, a bootstep);
- a delivery that starts, or fails on storage, gives its message back without using
  up a retry (``tasks.py``);
- one worker at a time probes storage every ``DCMPRESS_BREAKER_PROBE_INTERVAL``
  seconds: a HEAD request on the object that failed last, else a one-key listing of
  its bucket (:func:`probe`); the first answer closes the breaker and the workers take
  messages again.

One object failing on its own (a download cut short) never opens it: its failures
are one object's, and it keeps the retries it always had.
"""

from __future__ import annotations

import datetime as dt
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import redis
from redis.lock import Lock

from worker.errors import DcmpressError, TransientError, one_line
from worker.runtime.ledger import Keys, Note
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from worker.runtime.storage import Storage

OUTCOMES_KEPT = 200  # list entries kept (at least); each ~30 bytes
OUTCOMES_TTL = 3600  # the list goes an hour after the last outcome: a quiet fleet keeps none
ERROR_LENGTH = 300  # of the error text kept in the breaker's hash


@dataclass(frozen=True)
class Outcome:
    """What storage did for one object, once."""

    at: float  # epoch seconds (the noting worker's clock)
    failed: bool
    target: str  # a short digest of bucket/key: only told apart, never shown

    def encode(self) -> str:
        """The list entry."""
        return f"{self.at:.3f}|{int(self.failed)}|{self.target}"

    @classmethod
    def decode(cls, raw: bytes | str) -> Outcome | None:
        """The entry as an outcome; None for an entry that is not one."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        at, _, rest = text.partition("|")
        failed, _, target = rest.partition("|")
        try:
            return cls(float(at), failed == "1", target)
        except ValueError:
            return None


class Paused(Exception):
    """Raised where a delivery finds the breaker open: its message waits for storage."""

    def __init__(self, pause: Pause) -> None:
        super().__init__(pause.error)
        self.pause = pause


def target_of(bucket: str, key: str) -> str:
    """The short digest an outcome names its object by."""
    return format(zlib.crc32(f"{bucket}/{key}".encode()), "x")


@dataclass(frozen=True)
class Thresholds:
    """When storage counts as failing as a whole (``DCMPRESS_BREAKER_*``)."""

    min_objects: int  # distinct objects whose latest attempt failed; 0: breaker off
    failure_ratio: float  # their share of the objects tried most recently
    window: float  # seconds within which an attempt is recent

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> Thresholds:
        """The thresholds the settings give."""
        return cls(
            settings.breaker_min_objects, settings.breaker_failure_ratio, settings.breaker_window
        )

    @property
    def sample(self) -> int:
        """How many of the most recently tried objects are looked at: twice the failures
        needed tells a pattern from a few bad objects, and few enough that the objects
        done just before an outage do not outvote its failures for long."""
        return 2 * self.min_objects


def storage_is_failing(outcomes: Iterable[Outcome], now: float, thresholds: Thresholds) -> bool:
    """True if the latest attempts of at least ``min_objects`` distinct objects failed,
    and they are at least ``failure_ratio`` of the ``sample`` objects tried most recently
    (within ``window`` seconds): storage fails across objects, not one object."""
    if thresholds.min_objects <= 0:
        return False
    latest: dict[str, bool] = {}  # object -> whether its latest attempt failed
    for outcome in sorted(outcomes, key=lambda o: o.at, reverse=True):
        if now - outcome.at > thresholds.window or len(latest) == thresholds.sample:
            break
        latest.setdefault(outcome.target, outcome.failed)
    failing = sum(latest.values())
    return failing >= thresholds.min_objects and failing >= thresholds.failure_ratio * len(latest)


@dataclass(frozen=True)
class Pause:
    """An open breaker: the workers wait for storage."""

    since: float  # when it opened (epoch seconds)
    error: str  # the failure that opened it, or the latest probe's
    bucket: str  # the object that failed last when it opened: what the probe asks for
    key: str
    probed: float = 0.0  # the latest failed probe (epoch seconds); 0: none yet

    def describe(self) -> str:
        """One line for people: since when storage fails, and how."""
        since = dt.datetime.fromtimestamp(self.since)
        lasted = dt.timedelta(seconds=max(0, round(time.time() - self.since)))
        return f"storage failing since {since:%Y-%m-%d %H:%M:%S} ({lasted}): {self.error}"


class Breaker:
    """The breaker's state in Redis, shared by every worker (and read by ``status``)."""

    def __init__(
        self, client: redis.Redis, thresholds: Thresholds, queue: str = "dcmpress"
    ) -> None:
        self.redis = client
        self.thresholds = thresholds
        self.queue = queue  # the workers of one queue share a breaker (and an endpoint)
        self.kept = max(OUTCOMES_KEPT, 10 * thresholds.min_objects)

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: WorkerSettings) -> Breaker:
        """The breaker with the settings' thresholds."""
        return cls(client, Thresholds.from_settings(settings), settings.queue)

    @property
    def enabled(self) -> bool:
        """False with ``DCMPRESS_BREAKER_MIN_OBJECTS=0``: failures only spend retries."""
        return self.thresholds.min_objects > 0

    def succeeded(self, bucket: str, key: str) -> None:
        """Note that storage served an object (whatever its outcome)."""
        if self.enabled:
            with self.redis.pipeline(transaction=False) as pipe:
                self._note(pipe, Outcome(time.time(), False, target_of(bucket, key)))
                pipe.execute()

    def served(self, bucket: str, key: str) -> Note | None:
        """What :meth:`succeeded` pushes, for a caller that writes it in a step of its
        own (the ledger's end of a delivery); None with the breaker off."""
        if not self.enabled:
            return None
        entry = Outcome(time.time(), False, target_of(bucket, key)).encode()
        return Note(Keys.breaker_outcomes(self.queue), entry, self.kept, OUTCOMES_TTL)

    @property
    def key(self) -> str | None:
        """The breaker hash a delivery looks at before it starts; None with it off."""
        return Keys.breaker(self.queue) if self.enabled else None

    def failed(self, bucket: str, key: str, error: str) -> Pause | None:
        """Note a storage failure of an object; the pause if the breaker is open now
        (opened by this failure or before it), else None."""
        if not self.enabled:
            return None
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            self._note(pipe, Outcome(now, True, target_of(bucket, key)))
            pipe.lrange(Keys.breaker_outcomes(self.queue), 0, -1)
            replies = pipe.execute()
        pause = read_pause(self.redis, self.queue)
        if pause is not None:
            return pause
        decoded = (Outcome.decode(raw) for raw in cast(list[bytes], replies[-1]))
        recent = [outcome for outcome in decoded if outcome is not None]
        if not storage_is_failing(recent, now, self.thresholds):
            return None
        return self.open(bucket, key, error)

    def open(self, bucket: str, key: str, error: str) -> Pause | None:
        """Open the breaker (storage fails across objects, or does not answer a probe
        of its own); the pause."""
        with self.redis.pipeline() as pipe:  # MULTI: the first to open sets since
            pipe.hsetnx(Keys.breaker(self.queue), "since", f"{time.time():.3f}")
            pipe.hset(Keys.breaker(self.queue), mapping={
                "error": one_line(error, ERROR_LENGTH), "bucket": bucket, "key": key,
            })  # fmt: skip
            pipe.execute()
        return read_pause(self.redis, self.queue)

    def _note(self, pipe: redis.client.Pipeline, outcome: Outcome) -> None:
        """Queue the outcome on ``pipe``: the newest first, the list bounded."""
        pipe.lpush(Keys.breaker_outcomes(self.queue), outcome.encode())
        pipe.ltrim(Keys.breaker_outcomes(self.queue), 0, self.kept - 1)
        pipe.expire(Keys.breaker_outcomes(self.queue), OUTCOMES_TTL)

    def pause(self) -> Pause | None:
        """The open breaker, or None while storage is deemed to work."""
        if not self.enabled:
            return None
        return read_pause(self.redis, self.queue)

    def note_probe(self, error: str) -> None:
        """Keep a failed probe's time and error (what ``status`` shows)."""
        if self.redis.exists(Keys.breaker(self.queue)):  # closed meanwhile: leave it closed
            self.redis.hset(Keys.breaker(self.queue), mapping={
                "probed": f"{time.time():.3f}", "error": one_line(error, ERROR_LENGTH),
            })  # fmt: skip

    def close(self) -> None:
        """Storage answers again: resume, and forget the outage's failures (else the
        first failure after it would find them recent and open the breaker again)."""
        self.redis.delete(Keys.breaker(self.queue), Keys.breaker_outcomes(self.queue))

    def probe_lock(self, interval: float) -> Lock:
        """The lock one worker at a time takes to probe; never released, it lapses
        after ``interval`` seconds, which spaces the probes of all workers."""
        lock = self.redis.lock(
            Keys.breaker_probe_lock(self.queue), timeout=interval, blocking=False
        )
        return cast(Lock, lock)


def read_pause(client: redis.Redis, queue: str) -> Pause | None:
    """The open breaker of ``queue`` in the Redis ``client`` talks to, or None
    (``dcmpress status`` reads it so, without the workers' settings)."""
    raw = cast(dict[bytes, bytes], client.hgetall(Keys.breaker(queue)))
    if not raw:
        return None
    return parse_pause({name.decode(): value.decode() for name, value in raw.items()})


def parse_pause(fields: dict[str, str]) -> Pause:
    """The pause the breaker hash's ``fields`` describe."""

    def number(name: str) -> float:
        try:
            return float(fields.get(name, "0"))
        except ValueError:
            return 0.0

    return Pause(
        since=number("since") or number("probed") or time.time(),
        error=fields.get("error", ""),
        bucket=fields.get("bucket", ""),
        key=fields.get("key", ""),
        probed=number("probed"),
    )


def unreachable(storage: Storage, bucket: str) -> str | None:
    """The error if storage does not answer a one-key listing of ``bucket`` (a failure
    of its own, not of one object); None if it answers, whatever the answer."""
    try:
        next(iter(storage.list_pages(bucket, "", page_size=1)), None)
    except TransientError as exc:
        return str(exc)
    except DcmpressError:
        pass  # an answer (a 403: storage works, this role may not list)
    return None


def probe(breaker: Breaker, storage: Storage) -> str | None:
    """Ask storage for the object that failed last (HEAD), and if that fails, for the
    first key of its bucket (a one-key listing: an object storage cannot serve must not
    keep the fleet paused); close the breaker on the first answer, whatever it is (a 404
    or a 403 is an answer: storage works, and an object fails on its own). None if
    storage answered, else the error."""
    pause = breaker.pause()
    if pause is None:
        return None
    try:
        try:
            storage.head(pause.bucket, pause.key)
        except TransientError:
            next(iter(storage.list_pages(pause.bucket, "", page_size=1)), None)
    except TransientError as exc:
        breaker.note_probe(str(exc))
        return str(exc)
    except DcmpressError:
        pass  # an answer
    breaker.close()
    return None
