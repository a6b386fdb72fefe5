"""The ledger in Redis: batch specs, per-object outcomes, batch counters, claims.

Every Redis key dcmpress uses is built by a function in this module's ``Keys`` class,
so the whole scheme is on one screen. All keys but the claims expire
``retention_days`` after their last update.

Key (type) - content - lifetime
- ``dcmpress:batches`` (zset) - batch ids scored by creation time - retention
- ``dcmpress:batch:{b}`` (hash) - ``spec`` (BatchSpec JSON), ``checkpoint`` (listing
  position), ``enqueued`` (keys sent), ``listing_done``, ``cancelled``,
  ``example:{code}`` (the latest key that failed with that code), ``queued_at`` (when
  objects were last queued), ``queue`` (where its messages were sent),
  ``reconciled_at``/``reconciled_sent`` (the automatic reconcile's last check,
  messages it sent) - retention
- ``dcmpress:batch:{b}:counts`` (hash) - objects per state (queued, running, done,
  skipped, failed), ``bytes_in``/``bytes_out`` of finished objects, ``written_in``
  (bytes_in of those with an output, the base of "saved"), ``code:{code}``
  counts, ``stage:{name}`` seconds, ``started_at``/``finished_at``, and with a policy
  per rule (its 1-based number in base 36) ``rule:{n}`` objects and
  ``rule_in:{n}``/``rule_out:{n}`` bytes of those written - retention
- ``dcmpress:batch:{b}:obj:{n}`` (hash, n < 8192) - object key -> compact record
  (see :class:`Record`); sharded so each hash stays small - retention
- ``dcmpress:batch:{b}:msg:{n}`` (hash) - object key -> one-line message, only for
  skipped and failed objects and done ones with notices (moved overlays, cleared
  high bits); other done objects' messages are derived - retention
- ``dcmpress:workers`` (hash) - worker tag -> worker name (records keep the tag) - none
- ``dcmpress:claim:{sha1(bucket/key)}`` (string) - owner (``worker-id:pid:nonce``) of the
  object while a worker processes it; renewed by a heartbeat, deleted at the end -
  ``claim_ttl``, so a killed worker's claim lapses within a minute
- ``dcmpress:lock:reconcile`` (string) - redis-py lock: one worker at a time runs the
  automatic reconcile check - released after it, or lapses
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.errors import TERMINAL, one_line
from worker.runtime.contract import BatchSpec

# Shards per batch: with Redis's default small-hash limits (128 entries in Redis 7,
# 512 in 6.2) a batch of up to ~1M objects stays in the compact listpack encoding.
SHARDS = 8192
STATES = ("queued", "running", *TERMINAL)
_STATE_CHAR = {state: state[0] for state in STATES}
_CHAR_STATE = {char: state for state, char in _STATE_CHAR.items()}


class Keys:
    """Builds every Redis key dcmpress uses."""

    prefix = "dcmpress"

    @classmethod
    def batches(cls) -> str:
        """Sorted set of batch ids by creation time."""
        return f"{cls.prefix}:batches"

    @classmethod
    def batch(cls, batch: str) -> str:
        """Hash: spec, checkpoint, enqueue progress."""
        return f"{cls.prefix}:batch:{batch}"

    @classmethod
    def counts(cls, batch: str) -> str:
        """Hash: counters of the batch."""
        return f"{cls.prefix}:batch:{batch}:counts"

    @classmethod
    def objects(cls, batch: str, shard: int) -> str:
        """Hash: object key -> record, one shard."""
        return f"{cls.prefix}:batch:{batch}:obj:{shard}"

    @classmethod
    def messages(cls, batch: str, shard: int) -> str:
        """Hash: object key -> message of a skipped or failed object, one shard."""
        return f"{cls.prefix}:batch:{batch}:msg:{shard}"

    @classmethod
    def workers(cls) -> str:
        """Hash: worker tag -> full worker name."""
        return f"{cls.prefix}:workers"

    @classmethod
    def reconcile_lock(cls) -> str:
        """String: the redis-py lock of the automatic reconcile check."""
        return f"{cls.prefix}:lock:reconcile"

    @classmethod
    def claim(cls, bucket: str, key: str) -> str:
        """String: the owner of an object being processed."""
        digest = hashlib.sha1(f"{bucket}/{key}".encode(), usedforsecurity=False).hexdigest()
        return f"{cls.prefix}:claim:{digest}"


def shard_of(key: str) -> int:
    """The shard holding ``key``'s record."""
    return zlib.crc32(key.encode()) % SHARDS


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_IMPLIED_CODE = {"done": "compressed"}  # not stored: the only code a done object has


def to_base36(number: int) -> str:
    """Non-negative integer in base 36 (Lua reads it back with ``tonumber(s, 36)``)."""
    if number <= 0:
        return "0"
    digits = []
    while number:
        number, rest = divmod(number, 36)
        digits.append(_DIGITS[rest])
    return "".join(reversed(digits))


def worker_tag(name: str) -> str:
    """A short, stable tag for a worker name (the full name is kept once, globally)."""
    return to_base36(zlib.crc32(name.encode()))


# Short, stable tags the stored records use for codes, targets and plugins, so that a
# finished record stays within Redis's 64-byte listpack value limit
# (``hash-max-listpack-value``): one longer value turns its whole shard into a hash
# table, about 190 bytes per object instead of ~110. A tag is never reused for another
# name; a stored value that is no tag (a record of an older release) is the name itself.
CODE_TAGS: dict[str, str] = {
    "compressed": "ok", "already_compressed": "ac", "lossy_source": "ls",
    "unknown_transfer_syntax": "ut", "media_directory": "md", "not_an_instance": "ni",
    "no_pixel_data": "np", "no_decoder": "nd", "policy_copy": "pc", "policy_skip": "ps",
    "own_output": "oo", "cancelled": "ca", "no_gain": "ng",
    "unsupported_bits_allocated": "ba", "unsupported_bits_stored": "bs",
    "float_pixel_data": "fp", "unsupported_photometric": "up", "unsupported_samples": "us",
    "image_too_small": "it", "signed_near_lossless": "sn", "encoder_rejected": "er",
    "label_data": "ld", "high_bits_set": "hb", "unsupported_high_bit": "uh",
    "unsupported_overlay": "uo", "unwritable_dataset": "uw", "output_exists": "oe",
    "not_dicom": "nx", "invalid_dicom": "id", "invalid_pixel_data": "ip",
    "inflated_too_large": "il", "verification_failed": "vf", "codec_crashed": "cc",
    "out_of_memory": "om",
    "io_error": "io", "source_missing": "sm", "source_changed": "sc",
    "source_unavailable": "su", "access_denied": "ad", "storage_rejected": "sr",
    "storage_misconfigured": "sx", "retries_exhausted": "re", "worker_lost": "wl",
    "time_limit": "tl", "unknown_batch": "ub", "invalid_policy": "ix",
    "quality_guard": "qg", "internal_error": "ie", "viewer_unsafe": "vu",
}  # fmt: skip
TARGET_TAGS: dict[str, str] = {
    "jpeg-ls": "L", "jpeg-ls-near": "N", "j2k": "J", "j2k-lossy": "K", "rle": "R",
    "htj2k": "H", "htj2k-rpcl": "P", "jpegxl": "X",  # htj2k-rpcl: an earlier name
}  # fmt: skip
PLUGIN_TAGS: dict[str, str] = {
    "pyjpegls": "j", "pylibjpeg": "l", "imagecodecs": "i", "pydicom": "d", "gdcm": "g",
}  # fmt: skip
_CODE_NAMES = {tag: name for name, tag in CODE_TAGS.items()}
_TARGET_NAMES = {tag: name for name, tag in TARGET_TAGS.items()}
_PLUGIN_NAMES = {tag: name for name, tag in PLUGIN_TAGS.items()}


def _number(text: str) -> int:
    """A base-36 field; empty is 0."""
    return int(text, 36) if text else 0


@dataclass(frozen=True)
class Record:
    """One object's state, stored as a compact ``|``-separated string.

    Integers are base 36 (0 is left empty where noted), codes, targets and plugins are
    short tags (:data:`CODE_TAGS`...), the code of a done object is implied, the worker
    is a tag (see :meth:`Ledger.worker_name`), the ETag is cut to 12 characters, and
    empty fields at the end are left out: a finished record is about 55 bytes (60 with a
    lossy result's quality), so shards stay in Redis's compact listpack form.

    Fields, in order: state, code, bytes in, bytes out, attempts, target, plugin,
    milliseconds, worker, ETag, updated, lost, modality, rule, max error, PSNR (tenths
    of a dB), copied (``1``: the output is the source unchanged, a skipped or failed
    object's copy).
    """

    state: str
    code: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    attempts: int = 0
    target: str = ""
    plugin: str = ""
    millis: int = 0
    worker: str = ""
    etag: str = ""
    updated: int = 0
    lost: int = 0  # deliveries that died with their worker
    modality: str = ""  # (0008,0060) of the source, for reports
    rule: int = 0  # the batch policy's rule that decided (1-based); 0: no policy
    max_error: int | None = None  # a lossy result's largest pixel error
    psnr: float | None = None  # a lossy result's PSNR in dB (None: identical or lossless)
    copied: bool = False  # the output is the source unchanged (skipped or failed)

    def encode(self) -> str:
        """The stored form."""
        implied = _IMPLIED_CODE.get(self.state) == self.code
        fields = [
            _STATE_CHAR[self.state],
            "" if implied else CODE_TAGS.get(self.code, self.code),
            to_base36(self.bytes_in),
            to_base36(self.bytes_out),
            to_base36(self.attempts),
            TARGET_TAGS.get(self.target, self.target),
            PLUGIN_TAGS.get(self.plugin, self.plugin),
            to_base36(self.millis),
            self.worker,
            self.etag,
            to_base36(self.updated),
            to_base36(self.lost) if self.lost else "",
            self.modality,
            to_base36(self.rule) if self.rule else "",
            "" if self.max_error is None else to_base36(self.max_error),
            "" if self.psnr is None else to_base36(max(0, round(self.psnr * 10))),
            "1" if self.copied else "",
        ]
        while fields and not fields[-1]:
            fields.pop()
        return "|".join(fields)

    @classmethod
    def decode(cls, raw: str | bytes) -> Record:
        """Inverse of :meth:`encode` (and of the longer records of earlier releases)."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        parts = text.split("|")
        parts += [""] * (17 - len(parts))
        state = _CHAR_STATE[parts[0]]
        return cls(
            state=state,
            code=_CODE_NAMES.get(parts[1], parts[1]) if parts[1] else _IMPLIED_CODE.get(state, ""),
            bytes_in=_number(parts[2]),
            bytes_out=_number(parts[3]),
            attempts=_number(parts[4]),
            target=_TARGET_NAMES.get(parts[5], parts[5]),
            plugin=_PLUGIN_NAMES.get(parts[6], parts[6]),
            millis=_number(parts[7]),
            worker=parts[8],
            etag=parts[9],
            updated=_number(parts[10]),
            lost=_number(parts[11]),
            modality=parts[12],
            rule=_number(parts[13]),
            max_error=int(parts[14], 36) if parts[14] else None,
            psnr=int(parts[15], 36) / 10 if parts[15] else None,
            copied=parts[16] == "1",
        )

    @property
    def terminal(self) -> bool:
        """True once the object is done, skipped or failed."""
        return self.state in TERMINAL

    def stamped(self, **changes: Any) -> Record:
        """A copy with ``changes`` and the current time."""
        return replace(self, updated=int(time.time()), **changes)


def short_etag(etag: str | None) -> str:
    """The ETag without quotes, cut to 12 characters: enough to notice a change."""
    return (etag or "").strip('"')[:12]


# Moves one object's record from its old state to its new one and keeps the batch
# counters exact: the old state's contributions are removed, the new one's added.
# Lua shared by the scripts below: parse a record, and move one object from its old
# record to a new one while accumulating the batch counter changes in ``delta``.
_LUA_RECORDS = (
    "local code_names = {"
    + ", ".join(f"{tag}='{name}'" for name, tag in CODE_TAGS.items())
    + "}\n"
    + """
local function split(s)
  local out = {}
  for part in (s .. '|'):gmatch('([^|]*)|') do out[#out + 1] = part end
  return out
end
local names = {q='queued', r='running', d='done', s='skipped', f='failed'}
local function terminal(c) return c == 'd' or c == 's' or c == 'f' end
local function code(r)
  if r[2] == '' and r[1] == 'd' then return 'compressed' end
  return code_names[r[2]] or r[2]
end
local delta = {}
local examples = {}
local finished, started = false, false
local function add(field, n) delta[field] = (delta[field] or 0) + n end
-- per policy rule (record field 14, base 36): objects, and bytes of those written
local function rule(r, sign)
  local id = r[14]
  if id == nil or id == '' then return end
  add('rule:' .. id, sign)
  if tonumber(r[4], 36) > 0 then
    add('rule_in:' .. id, sign * tonumber(r[3], 36))
    add('rule_out:' .. id, sign * tonumber(r[4], 36))
  end
end
local function move(objects, messages, field, old, value, message, retention)
  if old then
    local o = split(old)
    add(names[o[1]], -1)
    if terminal(o[1]) then
      add('bytes_in', -tonumber(o[3], 36))
      add('bytes_out', -tonumber(o[4], 36))
      if tonumber(o[4], 36) > 0 then add('written_in', -tonumber(o[3], 36)) end
      add('code:' .. code(o), -1)
      rule(o, -1)
    end
  end
  local n = split(value)
  redis.call('HSET', objects, field, value)
  redis.call('EXPIRE', objects, retention)
  add(names[n[1]], 1)
  if terminal(n[1]) then
    add('bytes_in', tonumber(n[3], 36))
    add('bytes_out', tonumber(n[4], 36))
    if tonumber(n[4], 36) > 0 then add('written_in', tonumber(n[3], 36)) end
    add('code:' .. code(n), 1)
    rule(n, 1)
    finished = true
    if n[1] == 'f' then examples['example:' .. code(n)] = field end
  end
  if n[1] == 'r' then started = true end
  if message ~= '' then
    redis.call('HSET', messages, field, message)
    redis.call('EXPIRE', messages, retention)
  elseif old then
    redis.call('HDEL', messages, field)
  end
end
local function flush(counts, batch, now, retention)
  for field, n in pairs(delta) do
    if n ~= 0 then redis.call('HINCRBY', counts, field, n) end
  end
  for field, key in pairs(examples) do redis.call('HSET', batch, field, key) end
  if finished then redis.call('HSET', counts, 'finished_at', now) end
  if started then redis.call('HSETNX', counts, 'started_at', now) end
  redis.call('EXPIRE', counts, retention)
end
"""
)

# Sets records (KEYS: counts, batch, then objects/messages shard per item; ARGV:
# retention, now, then field/value/message/guard per item), keeping the counters exact
# and the latest failed key per code as an example (batch hash, ``example:{code}``).
# A guard (``=`` and the ETag a delivery started with) leaves a record alone that a
# newer version of the object queued meanwhile: that version is the object's job now.
# Returns per item 1 (set) or 0 (superseded, left alone).
_TRANSITION = (
    _LUA_RECORDS
    + """
local retention, now = ARGV[1], ARGV[2]
local result = {}
for i = 1, (#KEYS - 2) / 2 do
  local objects = KEYS[2 * i + 1]
  local field, guard = ARGV[4 * i - 1], ARGV[4 * i + 2]
  local old = redis.call('HGET', objects, field)
  result[i] = 1
  if old and guard ~= '' then
    local o = split(old)
    if o[1] == 'q' and o[10] ~= guard:sub(2) then result[i] = 0 end
  end
  if result[i] == 1 then
    move(objects, KEYS[2 * i + 2], field, old, ARGV[4 * i], ARGV[4 * i + 1], retention)
  end
end
flush(KEYS[1], KEYS[2], ARGV[2], retention)
return result
"""
)

# The producer's check-and-queue, atomic per call (KEYS: counts, batch, the broker's
# queue list, then objects/messages shard per item; ARGV: retention, now, now in base
# 36, force, resend_queued, then field/etag/message per item). An item queued now gets
# its message pushed in the same step when one is given (the broker is this Redis), so
# a queued record always has its message, even when the caller never hears the reply.
# Returns per item: 0 queued now (send it, unless pushed), 1 already finished for this
# ETag, 2 already queued or running for this ETag. Another ETag is a new version of the
# object, a new job: the newest version wins.
_QUEUE = (
    _LUA_RECORDS
    + """
local retention, now, now36 = ARGV[1], ARGV[2], ARGV[3]
local force, resend = ARGV[4] == '1', ARGV[5] == '1'
local result = {}
for i = 1, (#KEYS - 3) / 2 do
  local objects = KEYS[2 * i + 2]
  local field, etag, message = ARGV[3 * i + 3], ARGV[3 * i + 4], ARGV[3 * i + 5]
  local old = redis.call('HGET', objects, field)
  local verdict, attempts, lost = 0, '0', '0'
  if old then
    local o = split(old)
    local same = etag == '' or o[10] == etag
    if same then
      attempts = o[5]
      -- deaths so far count on when a message is only sent again; a forced retry or
      -- resume gives the object its attempts afresh
      if not force then lost = o[12] or '0' end
    end
    -- a running object is never queued twice for one version (an orphan: `dcmpress
    -- reconcile`); a new version waits for the running delivery's claim
    if o[1] == 'r' and same then verdict = 2
    elseif same and not force and terminal(o[1]) then verdict = 1
    elseif same and not force and not resend then verdict = 2 end
  end
  if verdict == 0 then
    local value = 'q||0|0|' .. attempts .. '|||0||' .. etag .. '|' .. now36 .. '|' .. lost
    move(objects, KEYS[2 * i + 3], field, old, value, '', retention)
    if message ~= '' then redis.call('LPUSH', KEYS[3], message) end
  end
  result[i] = verdict
end
-- when objects were last queued: the messages follow at once, so the automatic
-- reconcile leaves a batch alone for a while after it
redis.call('HSET', KEYS[2], 'queued_at', now)
flush(KEYS[1], KEYS[2], now, retention)
return result
"""
)

# Deletes a claim only if we still own it (it may have lapsed and been re-taken).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Extends a claim we own, takes it back if it lapsed and nobody took it; 0 if another
# owner holds it now.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""

MAX_MESSAGE = 500
QUEUED, ALREADY_DONE, ALREADY_QUEUED = 0, 1, 2  # verdicts of Ledger.queue_many


class Ledger:
    """Typed access to the ledger; one instance per process."""

    def __init__(self, client: redis.Redis, retention_seconds: int, url: str | None = None) -> None:
        self.redis = client
        self.retention = retention_seconds
        self.url = url  # where it connects (None: a client given as is)
        self._transition = client.register_script(_TRANSITION)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._queue = client.register_script(_QUEUE)

    @classmethod
    def from_url(cls, url: str, retention_seconds: int, timeout: float = 30) -> Ledger:
        """Connect with sane socket timeouts (``timeout`` for each call) and redis-py's
        retries on connection errors."""
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=min(10, timeout),
            socket_timeout=timeout,
            health_check_interval=30,
        )
        return cls(client, retention_seconds, url)

    @classmethod
    def for_events(cls, url: str, retention_seconds: int, timeout: float) -> Ledger:
        """A ledger whose every call gives up within about ``timeout`` seconds, for a
        caller someone waits on (the listener: a sender holds its request open).

        redis-py retries a timed-out or broken connection 10 times with backoff by
        default (minutes against a hung server); here a broken connection is retried
        once at once (a restarted server), a timeout not at all.
        """
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        return cls(client, retention_seconds, url)

    def persistence(self) -> str:
        """How the server keeps its data across a restart: ``aof``, ``rdb``, ``none``,
        or ``""`` if it does not say (a managed Redis refusing CONFIG)."""
        try:
            info = self.redis.info("persistence")
            if int(info.get("aof_enabled", 0)):
                return "aof"
            reply = cast(dict[Any, Any], self.redis.config_get("save"))
        except redis.RedisError:
            return ""
        save = next(iter(reply.values()), b"") if reply else b""
        text = save.decode() if isinstance(save, bytes) else str(save)
        return "rdb" if text.strip() else "none"

    # -- batches ---------------------------------------------------------------------

    def save_batch(self, spec: BatchSpec) -> None:
        """Store a batch spec (idempotent: the same id keeps its first creation time)."""
        with self.redis.pipeline() as pipe:
            pipe.hset(Keys.batch(spec.batch), "spec", spec.to_json())
            pipe.zadd(Keys.batches(), {spec.batch: spec.created}, nx=True)
            pipe.expire(Keys.batch(spec.batch), self.retention)
            pipe.execute()

    def get_batch(self, batch: str) -> BatchSpec | None:
        """The spec of ``batch``, or None if unknown (or expired)."""
        raw = self.redis.hget(Keys.batch(batch), "spec")
        return BatchSpec.from_json(cast(bytes, raw)) if raw else None

    def batch_ids(self) -> list[str]:
        """All known batches, oldest first."""
        return [b.decode() for b in cast(list[bytes], self.redis.zrange(Keys.batches(), 0, -1))]

    def batch_info(self, batch: str) -> dict[str, str]:
        """Checkpoint and enqueue progress fields of the batch hash."""
        raw = cast(dict[bytes, bytes], self.redis.hgetall(Keys.batch(batch)))
        return {k.decode(): v.decode() for k, v in raw.items() if k != b"spec"}

    def set_cancelled(self, batch: str, cancelled: bool) -> None:
        """Cancel a batch (its queued objects are then recorded cancelled) or resume it."""
        if cancelled:
            self.redis.hset(Keys.batch(batch), "cancelled", int(time.time()))
        else:
            self.redis.hdel(Keys.batch(batch), "cancelled")

    def is_cancelled(self, batch: str) -> bool:
        """True while the batch is cancelled."""
        return bool(self.redis.hexists(Keys.batch(batch), "cancelled"))

    def set_checkpoint(self, batch: str, start_after: str, enqueued: int) -> None:
        """Remember how far the listing got, after its keys were durably enqueued."""
        self.redis.hset(
            Keys.batch(batch), mapping={"checkpoint": start_after, "enqueued": enqueued}
        )

    def mark_listing_done(self, batch: str, enqueued: int) -> None:
        """The whole listing was enqueued."""
        self.redis.hset(
            Keys.batch(batch),
            mapping={"listing_done": int(time.time()), "enqueued": enqueued},
        )

    def counts(self, batch: str) -> dict[str, float]:
        """The batch counters (states, bytes, codes, stage seconds, timestamps)."""
        raw = cast(dict[bytes, bytes], self.redis.hgetall(Keys.counts(batch)))
        return {k.decode(): float(v) for k, v in raw.items()}

    def activity(self, batches: list[str]) -> list[tuple[float, float, str]]:
        """(pending objects, time of the latest activity, queue its messages went to)
        of each batch, in one round trip. Activity: an object started or finished,
        objects queued, a reconcile check, or else the batch's creation. The queue is
        "" for a batch queued by a release that did not note it."""
        fields = ("queued", "running", "started_at", "finished_at")
        with self.redis.pipeline(transaction=False) as pipe:
            for batch in batches:
                pipe.hmget(Keys.counts(batch), *fields)
                pipe.hmget(Keys.batch(batch), "queued_at", "reconciled_at", "queue")
                pipe.zscore(Keys.batches(), batch)
            replies = pipe.execute()
        result = []
        for index in range(len(batches)):
            counts, (queued_at, checked_at, queue), created = replies[3 * index : 3 * index + 3]
            queued, running, started, finished = (float(v or 0) for v in counts)
            times = [started, finished, float(queued_at or 0), float(checked_at or 0),
                     float(created or 0)]  # fmt: skip
            result.append((queued + running, max(times), (queue or b"").decode()))
        return result

    def note_queue(self, batch: str, queue: str) -> None:
        """Remember the queue the batch's messages are sent to."""
        self.redis.hset(Keys.batch(batch), "queue", queue)

    def note_reconciled(self, batch: str, sent: int, at: float) -> None:
        """Remember a reconcile check of the batch and add the messages it sent."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(Keys.batch(batch), "reconciled_at", int(at))
            pipe.hincrby(Keys.batch(batch), "reconciled_sent", sent)
            pipe.execute()

    def reconcile_lock(self, timeout: float) -> Any:
        """The lock that lets one worker at a time run the automatic reconcile."""
        return self.redis.lock(Keys.reconcile_lock(), timeout=timeout, blocking=False)

    def add_stage_seconds(self, batch: str, timings: dict[str, float]) -> None:
        """Accumulate per-stage seconds for the batch."""
        with self.redis.pipeline(transaction=False) as pipe:
            for stage, seconds in timings.items():
                pipe.hincrbyfloat(Keys.counts(batch), f"stage:{stage}", seconds)
            pipe.execute()

    # -- objects ---------------------------------------------------------------------

    def get_record(self, batch: str, key: str) -> Record | None:
        """The record of one object."""
        raw = self.redis.hget(Keys.objects(batch, shard_of(key)), key)
        return Record.decode(cast(bytes, raw)) if raw else None

    def get_records(self, batch: str, keys: list[str]) -> list[Record | None]:
        """Records of many objects in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(Keys.objects(batch, shard_of(key)), key)
            raws = pipe.execute()
        return [Record.decode(raw) if raw else None for raw in raws]

    def get_message(self, batch: str, key: str) -> str:
        """The stored message of a skipped or failed object ('' if none)."""
        raw = self.redis.hget(Keys.messages(batch, shard_of(key)), key)
        return cast(bytes, raw).decode() if raw else ""

    def transition(
        self, batch: str, key: str, record: Record, message: str = "", guard: str | None = None
    ) -> bool:
        """Set ``key``'s record, keeping the batch counters exact (atomic).

        With ``guard`` (the ETag a delivery started with, "" if it had none), a record
        that a newer version queued meanwhile is left alone: False (superseded).
        """
        return self.transition_many(batch, [(key, record, message)], guard) == 1

    def transition_many(
        self, batch: str, items: Iterable[tuple[str, Record, str]], guard: str | None = None
    ) -> int:
        """Several transitions, one Lua call per 500 (each call atomic); returns how
        many records were set (the others were superseded, see :meth:`transition`)."""
        now = str(int(time.time()))
        chunk: list[tuple[str, Record, str]] = []
        written = 0
        for item in items:
            chunk.append(item)
            if len(chunk) == 500:
                written += self._transition_chunk(batch, chunk, now, guard)
                chunk = []
        if chunk:
            written += self._transition_chunk(batch, chunk, now, guard)
        return written

    def _transition_chunk(
        self, batch: str, chunk: list[tuple[str, Record, str]], now: str, guard: str | None
    ) -> int:
        keys = [Keys.counts(batch), Keys.batch(batch)]
        args: list[str | int] = [self.retention, now]
        guarded = "" if guard is None else "=" + short_etag(guard)
        for key, record, message in chunk:
            shard = shard_of(key)
            keys += [Keys.objects(batch, shard), Keys.messages(batch, shard)]
            args += [key, record.encode(), one_line(message, MAX_MESSAGE), guarded]
        return sum(int(v) for v in cast(list[int], self._transition(keys=keys, args=args)))

    def queue_many(
        self,
        batch: str,
        items: list[tuple[str, str]],
        force: bool,
        resend_queued: bool,
        messages: list[str] | None = None,
        queue: str = "",
    ) -> list[int]:
        """Mark (key, etag) items queued unless already done or queued for that ETag.

        Returns one verdict per item: QUEUED (send it), ALREADY_DONE, ALREADY_QUEUED.
        With ``messages`` (one broker envelope per item, when the broker is this Redis)
        each item queued is pushed onto ``queue`` in the same atomic step: nothing is
        left to send. A running object is never queued again for the same ETag, not
        even with ``force``; another ETag is a new version, queued behind it.
        """
        if messages is not None and (len(messages) != len(items) or not queue):
            raise ValueError("one message per item, and the queue they go to")
        now = int(time.time())
        verdicts: list[int] = []
        for start in range(0, len(items), 500):
            # (the queue's slot is never touched without messages)
            keys = [Keys.counts(batch), Keys.batch(batch), queue or Keys.prefix]
            args: list[str | int] = [
                self.retention, now, to_base36(now), int(force), int(resend_queued),
            ]  # fmt: skip
            for index, (key, etag) in enumerate(items[start : start + 500], start):
                shard = shard_of(key)
                keys += [Keys.objects(batch, shard), Keys.messages(batch, shard)]
                args += [key, short_etag(etag), messages[index] if messages else ""]
            verdicts += [int(v) for v in cast(list[int], self._queue(keys=keys, args=args))]
        return verdicts

    def iter_records(self, batch: str) -> Iterator[tuple[str, Record, str]]:
        """Every (key, record, message) of the batch, shard by shard (no KEYS scan)."""
        group = 256  # shards fetched per round trip; each shard is small
        for first in range(0, SHARDS, group):
            with self.redis.pipeline(transaction=False) as pipe:
                for shard in range(first, min(first + group, SHARDS)):
                    pipe.hgetall(Keys.objects(batch, shard))
                    pipe.hgetall(Keys.messages(batch, shard))
                replies = pipe.execute()
            for records, messages in zip(replies[::2], replies[1::2], strict=True):
                for raw_key, raw in sorted(records.items()):
                    message = messages.get(raw_key, b"").decode()
                    yield raw_key.decode(), Record.decode(raw), message

    # -- workers ---------------------------------------------------------------------

    def register_worker(self, name: str) -> str:
        """Remember ``name`` under its short tag; return the tag."""
        tag = worker_tag(name)
        self.redis.hset(Keys.workers(), tag, name)
        return tag

    def worker_names(self) -> dict[str, str]:
        """Worker tag -> full name."""
        raw = cast(dict[bytes, bytes], self.redis.hgetall(Keys.workers()))
        return {k.decode(): v.decode() for k, v in raw.items()}

    # -- claims ----------------------------------------------------------------------

    def claim(self, bucket: str, key: str, owner: str, ttl: int) -> bool:
        """Take the object for ``owner`` unless another worker holds it."""
        return bool(self.redis.set(Keys.claim(bucket, key), owner, nx=True, ex=ttl))

    def claim_owner(self, bucket: str, key: str) -> str | None:
        """Who holds the claim, if anyone."""
        raw = self.redis.get(Keys.claim(bucket, key))
        return cast(bytes, raw).decode() if raw else None

    def release(self, bucket: str, key: str, owner: str) -> None:
        """Give the claim back if we (``owner``) still hold it."""
        self._release(keys=[Keys.claim(bucket, key)], args=[owner])

    def renew(self, bucket: str, key: str, owner: str, ttl: int) -> bool:
        """Extend our claim by ``ttl`` seconds (taking it back if it lapsed unclaimed);
        False if another owner holds it now."""
        return bool(self._renew(keys=[Keys.claim(bucket, key)], args=[owner, ttl]))
