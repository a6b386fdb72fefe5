"""The workers' feeder: a batch's listing or manifest keeps being fed with no
``enqueue`` running.

A Celery worker bootstep starts one thread in each worker's main process. Every second
it looks for batches not yet fed in full (``dcmpress:feeds``) that no process feeds
(their feed lock is free), takes the lock of each it can, and feeds those batches
(:class:`producer.feeder.Feeder`): the queue is topped up to its mark as it drains, the
lock renewed at every step. A worker that stops (or dies) gives its batches up: the
lock is released, or lapses within a minute, and another worker goes on from the
checkpoint. A manifest on local disk is fed only by its ``enqueue --follow``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any

from redis.exceptions import LockError

from worker.errors import DcmpressError, one_line
from worker.runtime.threadstep import ThreadStep
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)
TICK_SECONDS = 1.0
STEPS_PER_TICK = 20  # chunks one batch may be sent per tick (a full queue stops sooner)
STOP_WAIT_SECONDS = 15.0
RETRY_SECONDS = 30.0  # a failing source (storage away) is read again after this


class FeedWatch(ThreadStep):
    """Feeds batches whose feed no process holds, in a daemon thread of the worker; at
    shutdown it releases their locks, so another worker goes on at once."""

    thread_name = "dcmpress-feed"
    stop_wait = STOP_WAIT_SECONDS

    def run(self, worker: Any, settings: WorkerSettings) -> None:
        from worker.runtime.ledger import Ledger
        from worker.runtime.storage import Storage

        ledger = Ledger.from_url(settings.redis_url, settings.retention_seconds)
        storage = Storage(settings)
        feeds = Feeds(worker.app, ledger, storage, settings)
        while not self.stopped.wait(TICK_SECONDS):
            try:
                feeds.tick(self.stopped)
            except Exception:  # Redis away, a bug: the next tick tries again
                log.warning("feeding failed; trying again", exc_info=True)
                feeds.drop_all()
        feeds.drop_all()


class Feeds:
    """The batches this worker feeds: each with its lock and its feeder."""

    def __init__(self, app: Any, ledger: Any, storage: Any, settings: WorkerSettings) -> None:
        self.app, self.ledger, self.storage, self.settings = app, ledger, storage, settings
        self.held: dict[str, tuple[Any, Any]] = {}  # batch -> (lock, feeder)
        self.failing: dict[str, float] = {}  # batch -> when to try its source again

    def tick(self, stopped: threading.Event) -> None:
        """Take the feeds nobody holds, and feed each one held until it waits."""
        from producer.feeder import LOCK_SECONDS, feeding

        now = time.monotonic()
        for batch in feeding(self.ledger):
            if batch not in self.held and self.failing.get(batch, 0) <= now:
                lock = self.ledger.feed_lock(batch, LOCK_SECONDS)
                if lock.acquire():
                    self._guarded(batch, partial(self._take, batch, lock), lock)
        for batch in list(self.held):
            if not stopped.is_set():
                self._guarded(batch, partial(self._feed, batch), self.held[batch][0])

    def _guarded(self, batch: str, action: Callable[[], None], lock: Any) -> None:
        """Run ``action``; a source that fails (storage away, a manifest gone) is said
        in the batch's feed state and tried again in a while, from its checkpoint."""
        from producer.feeder import note_state

        try:
            action()
        except DcmpressError as exc:
            line = one_line(f"failing: {exc}; trying again in {RETRY_SECONDS:.0f} s")
            log.warning("feed of batch %s %s", batch, line)
            note_state(self.ledger, batch, line)
            self.failing[batch] = time.monotonic() + RETRY_SECONDS
            self.held.pop(batch, None)
            with suppress(LockError):
                lock.release()

    def _take(self, batch: str, lock: Any) -> None:
        from producer.feeder import load_plan, make_feeder
        from producer.manifests import read_manifest, storage_opener

        spec = self.ledger.get_batch(batch)
        plan = load_plan(self.ledger, batch)
        if (
            spec is None or plan is None or not plan.workers_can_feed
            or plan.queue != self.settings.queue
        ):  # fmt: skip
            # expired, a local manifest only its enqueue can read, or another queue's
            lock.release()
            return
        feeder = make_feeder(
            self.app, self.ledger, self.storage, spec, self.settings.queue,
            self.settings.feed_high_water,
            lambda location: read_manifest(location, storage_opener(self.storage)),
        )  # fmt: skip
        log.info("feeding batch %s from its checkpoint", batch)
        self.held[batch] = (lock, feeder)

    def _feed(self, batch: str) -> None:
        from producer.feeder import Step, still_held

        lock, feeder = self.held[batch]
        for _ in range(STEPS_PER_TICK):
            if not still_held(lock):  # lapsed (this process stalled): another one feeds
                log.warning("gave up feeding batch %s: its lock lapsed", batch)
                del self.held[batch]
                return
            step = feeder.step()
            if step is Step.FINISHED:
                self._drop(batch)
                return
            if step is not Step.FED:
                return

    def _drop(self, batch: str) -> None:
        lock, _ = self.held.pop(batch)
        with suppress(LockError):
            lock.release()

    def drop_all(self) -> None:
        """Give every feed up (after an error, or at shutdown): the next holder goes on
        from the checkpoint."""
        for batch in list(self.held):
            with suppress(Exception):
                self._drop(batch)
