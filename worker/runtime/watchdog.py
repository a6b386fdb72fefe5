"""The workers' automatic reconcile: objects no message will finish are sent again.

A Celery worker bootstep starts one thread in each worker's main process. Every
``tick`` it runs :func:`worker.runtime.reconcile.reconcile_stalled` (one worker at a
time, under a Redis lock): a batch with pending objects and no activity for
``DCMPRESS_RECONCILE_AFTER`` seconds is checked, and what has no live message,
unacknowledged delivery or claim is sent again. ``dcmpress reconcile`` runs the same
check; the worker hosts the automatic one, being the process that always runs.
"""

from __future__ import annotations

import logging
from typing import Any

from worker.runtime.threadstep import ThreadStep
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)
STOP_WAIT_SECONDS = 15.0  # for a check in progress at shutdown


def tick_seconds(reconcile_after: int) -> float:
    """How often a worker looks for stalled batches: a fifth of the idle time, at
    most a minute."""
    return min(60.0, max(1.0, reconcile_after / 5))


class ReconcileWatch(ThreadStep):
    """Runs the automatic reconcile check in a daemon thread of the worker.

    At shutdown a check in progress is let finish: killed with the process, it would
    keep the lock, and every worker's check, waiting for its expiry (up to
    ``DCMPRESS_RECONCILE_AFTER``, 300 s by default)."""

    thread_name = "dcmpress-reconcile"
    stop_wait = STOP_WAIT_SECONDS
    still_running = (
        "automatic reconcile check still running after %.0f s; its lock lapses by itself"
    )

    def wanted(self, settings: WorkerSettings) -> bool:
        if not settings.reconcile_after:
            log.info("automatic reconcile off (DCMPRESS_RECONCILE_AFTER=0)")
            return False
        log.info(
            "automatic reconcile: batches with no activity for %d s are checked for "
            "objects with no live message (every %.0f s)",
            settings.reconcile_after, tick_seconds(settings.reconcile_after),
        )  # fmt: skip
        return True

    def run(self, worker: Any, settings: WorkerSettings) -> None:
        from worker.runtime.ledger import Ledger
        from worker.runtime.reconcile import reconcile_stalled

        ledger = Ledger.from_url(settings.redis_url, settings.retention_seconds)
        while not self.stopped.wait(tick_seconds(settings.reconcile_after)):
            try:
                reconcile_stalled(worker.app, ledger, settings.queue, settings.reconcile_after)
            except Exception:  # Redis away, a bug: the next tick tries again
                log.warning("automatic reconcile check failed", exc_info=True)
