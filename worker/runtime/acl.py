"""The Redis ACL dcmpress needs: one user for workers, producer, listener and Flower.

Derived from a whole job run against a fresh ``redis-server`` (``INFO commandstats``
and ``MONITOR``): ``enqueue``, workers as deployed (gossip and mingle on), ``status``,
``report``, ``retry``, ``cancel``, ``resume``, ``reconcile``, the automatic reconcile,
a message kombu's sweep of unacknowledged ones redelivered, ``listen --http`` with an event and a
poison body, and Flower's broker page and API. Added from the code, as such a run
rarely reaches them: ``exists`` (kombu's Lua script that sweeps expired bindings) and
``unwatch`` (redis-py after a failed transaction). Left out on purpose: ``config``
(``CONFIG GET`` reads every setting, passwords included; without it the workers cannot
tell whether a Redis without AOF saves RDB snapshots, and say nothing about it), and
``client|setinfo``, with which redis-py names its connections on Redis 7.2 and later and
does without when refused (Redis 7.0 refuses the rule itself).

ACL checks the commands and keys of Lua scripts too, so their commands are listed.
``tests/faults/test_acl.py`` runs the whole job as a user with exactly these rules;
docs/guides/security.md quotes :func:`acl_rules`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import redis
from redis.exceptions import NoPermissionError

# Every command, by what needs it.
COMMANDS = (
    # the Celery queue (kombu): take, put back, count; unacknowledged messages and
    # their sweep; exchange bindings (sets, and a sorted set of their deadlines)
    "brpop", "lpush", "rpush", "llen", "del", "exists", "get", "set",
    "hget", "hset", "hdel", "zadd", "zrange", "zrangebyscore", "zrem",
    "sadd", "srem", "smembers", "watch", "unwatch", "multi", "exec",
    # task events (Flower, gossip) and remote control (Flower's inspect, mingle)
    "publish", "psubscribe", "punsubscribe",
    # the ledger; reconcile reads the queue (lrange) and kombu's unacked hash (hscan)
    "hgetall", "hmget", "hexists", "hsetnx", "hincrby", "hincrbyfloat", "expire",
    "zscore", "lrange", "ltrim", "hscan",
    # Lua scripts: the ledger's, kombu's, redis-py's locks (renewed with pexpire)
    "evalsha", "script|load", "script|exists", "time", "pexpire",
    # connection checks; the workers' persistence check (INFO persistence)
    "ping", "info",
)  # fmt: skip

# Key patterns (globs), with what each covers.
KEY_PATTERNS = (
    "dcmpress*",  # the ledger (dcmpress:...) and the default queue with its priority lists
    "_kombu.*",  # kombu's exchange bindings
    "unacked*",  # kombu's unacknowledged messages: unacked, unacked_index, unacked_mutex
    "*.celery.pidbox*",  # remote-control queues: each worker's, and each reply's
    "celeryev.*",  # the event queues of Flower's receivers
)


def channel_patterns(db: int = 0) -> tuple[str, ...]:
    """The Pub/Sub channels of Celery's events and remote control in Redis database
    ``db`` (kombu prefixes them ``/db.``). Redis compares the patterns PSUBSCRIBE asks
    for literally, so each pattern kombu subscribes to is listed as it is."""
    return f"/{db}.celeryev/*", f"/{db}.celeryev/worker.*", f"/{db}.celery.pidbox"


def acl_rules(queue: str = "dcmpress", db: int = 0) -> str:
    """The ACL rules of the dcmpress user, for ``ACL SETUSER NAME reset on >PASSWORD``
    (or after ``user NAME on >PASSWORD`` in an ACL file): queue ``queue`` in database
    ``db`` (``DCMPRESS_QUEUE`` and the URL's database number)."""
    keys = list(KEY_PATTERNS)
    if not queue.startswith("dcmpress"):
        keys.append(re.sub(r"([*?\[\]\\])", r"\\\1", queue) + "*")
    commands = [*COMMANDS, "select"] if db else list(COMMANDS)  # redis-py selects db > 0
    return " ".join(
        [f"~{key}" for key in keys]
        # Redis 6.2 gives a new user every channel unless told (acl-pubsub-default)
        + ["resetchannels", *(f"&{channel}" for channel in channel_patterns(db))]
        + [f"+{command}" for command in commands]
    )


class Refusal(NamedTuple):
    """What a Redis ACL refused."""

    kind: str  # "command", "key", "channel", or "script" (a command a Lua script called)
    command: str = ""  # the command, when Redis names it

    def describe(self) -> str:
        """In words: ``the 'hset' command``, ``a key``..."""
        if self.command:
            return f"the '{self.command}' command"
        return {"key": "a key", "channel": "a Pub/Sub channel"}.get(
            self.kind, "a command of a Lua script"
        )


def refusal(error: BaseException) -> Refusal | None:
    """What a Redis ACL refused, from the error it raised; None if it is no ACL
    refusal. Redis versions word refusals differently, and 7.0 neither names the command
    a Lua script was refused nor calls it NOPERM."""
    if not isinstance(error, redis.ResponseError):
        return None
    # a pipeline's error quotes the command with its arguments: read only Redis's reason
    reason = str(error).rsplit("caused error: ", 1)[-1].split(" script: ", 1)[0].lower()
    in_script = "user executing the script" in reason
    if not (isinstance(error, NoPermissionError) or in_script):
        return None
    command = re.search(r"'([^']+)' command", reason)
    if command:
        return Refusal("command", command[1])
    for kind in ("key", "channel"):
        if kind in reason:
            return Refusal(kind)
    return Refusal("script")
