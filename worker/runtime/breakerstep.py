"""The worker's side of the storage breaker: take no message while it is open, probe.

A bootstep runs a daemon thread in the worker's main process. Every TICK_SECONDS it
reads the breaker (:mod:`worker.runtime.breaker`); while it is open, the worker's
consumer stops consuming its task queues (Celery's own ``cancel_task_queue``, as the
``cancel_consumer`` remote control does, so kombu's Redis transport stops its BRPOP on
them and prefetches nothing more), and the thread tries to be the one worker that
probes storage. Once the breaker is closed, the queues are consumed again
(``add_task_queue``). Both are handed to the consumer's event loop (``call_soon``,
thread-safe), never called from this thread. The state is applied at every tick, not
once, so a consumer that reconnected to the broker meanwhile is paused again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from worker.runtime.breaker import Breaker, Pause, probe
from worker.runtime.threadstep import ThreadStep
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)
TICK_SECONDS = 2.0  # how soon a worker pauses after the breaker opens, or resumes
REDIS_TIMEOUT = 5.0  # this thread's Redis calls: a Redis away must not hold it for long
STOP_WAIT_SECONDS = 15.0  # for a probe in progress at shutdown
# the probe's own S3 client: one attempt, short timeouts (a blackholed storage must not
# hold the probing worker longer than a probe interval or two)
PROBE_CONNECT_TIMEOUT = 5.0
PROBE_READ_TIMEOUT = 15.0


class Intake:
    """Whether this worker's consumer takes messages from its task queues."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker  # Celery's WorkController
        self.paused: set[str] = set()  # queues this worker stopped consuming

    def _consumer(self) -> tuple[Any, set[str]] | None:
        consumer = getattr(self.worker, "consumer", None)
        task_consumer = getattr(consumer, "task_consumer", None)
        if consumer is None or task_consumer is None:
            return None  # not connected yet, or reconnecting
        return consumer, {queue.name for queue in list(task_consumer.queues)}

    def pause(self) -> bool:
        """Stop consuming every task queue; True if any was consumed until now."""
        found = self._consumer()
        if found is None:
            return False
        consumer, consuming = found
        for name in consuming:
            consumer.call_soon(consumer.cancel_task_queue, name)
        self.paused |= consuming
        return bool(consuming)

    def resume(self) -> bool:
        """Consume again the queues paused; True if any was still paused."""
        found = self._consumer()
        if found is None:
            return False
        consumer, consuming = found
        self.paused -= consuming
        for name in self.paused:
            consumer.call_soon(consumer.add_task_queue, name)
        return bool(self.paused)


class BreakerWatch(ThreadStep):
    """Pauses this worker while storage fails across objects; probes it meanwhile."""

    thread_name = "dcmpress-breaker"
    stop_wait = STOP_WAIT_SECONDS

    def wanted(self, settings: WorkerSettings) -> bool:
        if not settings.breaker_min_objects:
            log.info("storage breaker off (DCMPRESS_BREAKER_MIN_OBJECTS=0)")
            return False
        return True

    def run(self, worker: Any, settings: WorkerSettings) -> None:
        from worker.runtime.ledger import Ledger

        ledger = Ledger.from_url(settings.redis_url, settings.retention_seconds, REDIS_TIMEOUT)
        breaker = Breaker.from_settings(ledger.redis, settings)
        watch = _Watch(Intake(worker), breaker, settings)
        while not self.stopped.wait(TICK_SECONDS):
            try:
                watch.tick()
            except redis.RedisError as exc:  # the ledger away: keep the state we have
                watch.redis_failed(exc)
            except Exception:  # a bug: the next tick tries again
                log.warning("storage breaker check failed", exc_info=True)


class _Watch:
    """One worker's view of the breaker, tick after tick."""

    def __init__(self, intake: Intake, breaker: Breaker, settings: WorkerSettings) -> None:
        self.intake = intake
        self.breaker = breaker
        self.settings = settings
        self.paused_at: float | None = None  # when this worker paused (monotonic)
        self.redis_away = False  # logged once per outage
        self._storage: Any = None  # the probe's client, made on first use

    def tick(self) -> None:
        pause = self.breaker.pause()
        self.redis_away = False
        if pause is None:
            if self.intake.resume() and self.paused_at is not None:
                log.warning("storage answers again: this worker takes messages again "
                            "(paused %.0f s)", time.monotonic() - self.paused_at)  # fmt: skip
                self.paused_at = None
            return
        if self.intake.pause() and self.paused_at is None:
            self.paused_at = time.monotonic()
            log.warning("paused, %s: this worker takes no message until storage answers a "
                        "probe (every %d s)", pause.describe(),
                        self.settings.breaker_probe_interval)  # fmt: skip
        self._probe(pause)

    def _probe(self, pause: Pause) -> None:
        """Probe storage if no worker did within the probe interval."""
        if not self.breaker.probe_lock(self.settings.breaker_probe_interval).acquire():
            return  # another worker probes (or did, within the interval)
        error = probe(self.breaker, self.storage)
        if error is None:
            log.warning("storage answered a probe of s3://%s/%s: the workers resume",
                        pause.bucket, pause.key)  # fmt: skip
        else:
            log.info("storage still failing (probe of s3://%s/%s): %s",
                     pause.bucket, pause.key, error)  # fmt: skip

    @property
    def storage(self) -> Any:
        """The probe's S3 client: one attempt, short timeouts."""
        if self._storage is None:
            from worker.runtime.storage import Storage

            self._storage = Storage(self.settings.model_copy(update={
                "s3_max_attempts": 1,
                "s3_connect_timeout": min(self.settings.s3_connect_timeout,
                                          PROBE_CONNECT_TIMEOUT),
                "s3_read_timeout": min(self.settings.s3_read_timeout, PROBE_READ_TIMEOUT),
            }))  # fmt: skip
        return self._storage

    def redis_failed(self, exc: Exception) -> None:
        if not self.redis_away:
            log.warning("storage breaker: the ledger's Redis did not answer (%s); this "
                        "worker keeps its current state", exc)  # fmt: skip
        self.redis_away = True
