"""The Celery application: all of its configuration in one place.

Tuned for long, CPU-bound, idempotent tasks (Celery's own guidance): late acks and
reject-on-worker-lost so a killed worker's object is redelivered, prefetch 1 so a slow
object does not hold others hostage, JSON only, a short visibility timeout with a fast
sweep so a dead worker's messages return in minutes (claims keep that safe), and task
events on for Flower.
"""

from __future__ import annotations

from celery import Celery

from worker.settings import WorkerSettings, tls_options


def create_app(settings: WorkerSettings | None = None) -> Celery:
    """Build the Celery app from ``settings`` (default: ``DCMPRESS_*`` variables)."""
    settings = settings or WorkerSettings()
    app = Celery("dcmpress", broker=settings.broker_url or settings.redis_url)
    app.conf.update(
        imports=["worker.runtime.tasks"],
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # outcomes live in the ledger; Flower sees them in events
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # the task records every outcome itself. A task that still raises has its message
        # rejected without requeue, which on Redis drops it like an ack: a task that
        # cannot reach the ledger gives its message back itself (tasks._give_back)
        task_acks_on_failure_or_timeout=False,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # sweep for messages of dead workers every 5 s (kombu: 10 s x 10 by default)
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        worker_max_tasks_per_child=1000,  # bounds slow leaks in native codec libraries
        worker_concurrency=settings.concurrency,
        worker_hijack_root_logger=False,
    )
    broker_tls = tls_options(settings.broker_url or settings.redis_url)
    if broker_tls is not None:
        app.conf.broker_use_ssl = broker_tls
    app.conf.dcmpress_settings = settings
    from worker.runtime.watchdog import ReconcileWatch

    app.steps["worker"].add(ReconcileWatch)  # the automatic reconcile (watchdog.py)
    from worker.runtime.breakerstep import BreakerWatch

    app.steps["worker"].add(BreakerWatch)  # pause while storage fails (breakerstep.py)
    from worker.runtime.archive_watch import ArchiveWatch

    app.steps["worker"].add(ArchiveWatch)  # done records out of Redis (archive_watch.py)
    from worker.runtime.feedstep import FeedWatch

    app.steps["worker"].add(FeedWatch)  # batches fed from their cursors (feedstep.py)
    return app
