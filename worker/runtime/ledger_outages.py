"""Outages of the ledger's Redis, so that they never count as dead workers.

A delivery whose Redis calls fail cannot record anything: it gives its message back
(``tasks.py``) and leaves the object's record ``running``. The next delivery would take
that for a worker that died with the object (``lost``, bounded by
``DCMPRESS_MAX_ATTEMPTS``). It is not one if the record was written before Redis last
came back: before the server started (a restart, which INFO tells), or before a worker
that could not reach it saw it answer again and noted so (an outage without a restart).

The price: a worker that really died shortly before an outage has that death
forgiven once. An outage shorter than the clocks' skew goes unrecognised; redis-py's
own retries ride out most of those.
"""

from __future__ import annotations

import logging
import time
from typing import cast

import redis

from worker.runtime.ledger import Keys, Ledger
from worker.runtime.records import Record

log = logging.getLogger(__name__)
NOTE_TTL = 86400  # a day: a running record older than that has long been sent again
PING_EVERY = 0.5  # seconds between looks while waiting for the ledger

# When this process found the ledger away and has not yet noted its return (None: it
# has nothing to note). Per process: each pool process notes what it saw itself.
_away_since: float | None = None


def found_away() -> None:
    """This process could not reach the ledger: note its return once it answers."""
    global _away_since
    if _away_since is None:
        _away_since = time.time()


def note_if_back(ledger: Ledger) -> None:
    """Note that the ledger answers again, if this process found it away; raises the
    Redis error if it still does not answer."""
    global _away_since
    if _away_since is None:
        return
    ledger.redis.set(Keys.ledger_back(), int(time.time()), ex=NOTE_TTL)
    log.info("the ledger's Redis answers again (away since %.0f s ago at least)",
             time.time() - _away_since)  # fmt: skip
    _away_since = None


def wait_until_back(ledger: Ledger, longest: float) -> bool:
    """Wait up to ``longest`` seconds for the ledger to answer, and note its return;
    True if it answers."""
    deadline = time.monotonic() + longest
    while True:
        try:
            ledger.redis.ping()
            note_if_back(ledger)
            return True
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() + PING_EVERY > deadline:
                return False
            time.sleep(PING_EVERY)


def cut_off_by_an_outage(ledger: Ledger, record: Record) -> bool:
    """True if ``record`` (``running``) was written before the ledger's Redis last came
    back (its start, or a noted return): its delivery may have ended in the outage,
    alive. Strictly before: a record written in the very second Redis came back was
    written after it."""
    with ledger.redis.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.info("server")
        pipe.get(Keys.ledger_back())
        (seconds, _), info, back = pipe.execute()
    started = int(seconds) - int(cast(dict[str, int], info).get("uptime_in_seconds", 0))
    returned = int(back) if back else 0
    return record.updated < max(started, returned)
