"""A worker bootstep that runs one loop in a daemon thread of the worker's main process.

The automatic reconcile, the feeder, the archiver and the storage breaker each need a
loop beside the consumer, started with the worker and stopped at its shutdown; this is
that lifecycle once. A subclass says whether it runs (:meth:`ThreadStep.wanted`) and
what it does (:meth:`ThreadStep.run`, which returns once ``stopped`` is set).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class ThreadStep(bootsteps.StartStopStep):
    """Starts :meth:`run` in a daemon thread; at shutdown, lets it finish what it does
    for up to ``stop_wait`` seconds (say, a lock it holds, which would otherwise hold
    every other worker off until it lapses)."""

    thread_name = "dcmpress"
    stop_wait = 15.0
    # logged when the loop is still busy after stop_wait ("" for nothing; %.0f: the wait)
    still_running = ""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def wanted(self, settings: WorkerSettings) -> bool:
        """True to run the loop with these settings (log why not, if not)."""
        return True

    def run(self, worker: Any, settings: WorkerSettings) -> None:
        """The loop: until ``self.stopped`` is set."""
        raise NotImplementedError

    def start(self, parent: Any) -> None:
        settings: WorkerSettings = parent.app.conf.dcmpress_settings
        if not self.wanted(settings):
            return
        self.thread = threading.Thread(
            target=self.run, args=(parent, settings), daemon=True, name=self.thread_name
        )
        self.thread.start()

    def stop(self, parent: Any) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join(self.stop_wait)
            if self.thread.is_alive() and self.still_running:
                log.warning(self.still_running, self.stop_wait)
