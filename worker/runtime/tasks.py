"""The Celery task: parse the message, run the pipeline, map errors to retry or record."""

from __future__ import annotations

import logging
import os
import random
import socket
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)
from pydantic import ValidationError

from worker.errors import PermanentError, TransientError
from worker.runtime import logs, metrics
from worker.runtime.contract import TASK_COMPRESS, BatchSpec, JobMessage
from worker.runtime.ledger import Ledger
from worker.runtime.pipeline import ClaimHeld, Job, finish_failure, process_object
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


@dataclass
class Context:
    """Per-process clients: created after the fork, never shared across processes."""

    settings: WorkerSettings
    storage: Storage
    ledger: Ledger
    pid: int = field(default_factory=os.getpid)
    specs: dict[str, BatchSpec] = field(default_factory=dict)
    worker: str = ""  # this process's tag in the ledger

    def worker_tag(self, hostname: str | None) -> str:
        """Register this process (host/pid) once and return its short tag."""
        if not self.worker:
            name = f"{hostname or socket.gethostname()}/{self.pid}"
            self.worker = self.ledger.register_worker(name)
        return self.worker

    def spec(self, batch: str) -> BatchSpec | None:
        """The batch spec, cached for the life of the process (specs never change)."""
        if batch not in self.specs:
            spec = self.ledger.get_batch(batch)
            if spec is None:
                return None
            self.specs[batch] = spec
        return self.specs[batch]


_context: Context | None = None


def context() -> Context:
    """This process's context, built on first use (and again after a fork)."""
    global _context
    if _context is None or _context.pid != os.getpid():
        settings = WorkerSettings()
        _context = Context(
            settings=settings,
            storage=Storage(settings),
            ledger=Ledger.from_url(settings.redis_url, settings.retention_seconds),
        )
    return _context


@worker_process_init.connect
def _reset_context(**_: Any) -> None:
    global _context
    _context = None


@after_setup_logger.connect
@after_setup_task_logger.connect
def _structured_logs(logger: logging.Logger, **_: Any) -> None:
    if logs.wants_json(WorkerSettings().log_format):
        logs.use_json(logger)


@worker_init.connect
def _serve_metrics(**_: Any) -> None:
    settings = WorkerSettings()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, settings.metrics_address)


@worker_process_shutdown.connect
def _forget_process(pid: int | None = None, **_: Any) -> None:
    metrics.process_exited(pid or os.getpid())


@worker_shutdown.connect
def _remove_metrics_files(**_: Any) -> None:
    metrics.cleanup_directory()


def backoff(retries: int, cap: int) -> float:
    """Exponential backoff with full jitter: 1, 2, 4... seconds, at most ``cap``."""
    return float(random.uniform(0.5, 1.0) * min(cap, 2**retries))


@shared_task(name=TASK_COMPRESS, bind=True, acks_late=True, reject_on_worker_lost=True)
def compress_object(self: Task[Any, Any], message: dict[str, Any]) -> dict[str, Any]:
    """Compress one object of a batch; the outcome is recorded in the ledger."""
    with metrics.IN_FLIGHT.track_inprogress():
        return _compress_object(self, message)


def _compress_object(self: Task[Any, Any], message: dict[str, Any]) -> dict[str, Any]:
    ctx = context()
    try:
        job_message = JobMessage.model_validate(message)
    except ValidationError as exc:
        # not ours to record anywhere (no batch/key): log it and acknowledge it
        log.error("malformed job message dropped: %s", exc, extra={"dcmpress": {"job": message}})
        return {"outcome": "failed", "code": "invalid_message", "message": str(exc)}
    spec = ctx.spec(job_message.batch)
    worker = ctx.worker_tag(self.request.hostname)
    job = Job(
        message=job_message,
        spec=spec or BatchSpec(batch=job_message.batch, source={"bucket": job_message.bucket}),
        storage=ctx.storage,
        ledger=ctx.ledger,
        worker=worker,
        claim_ttl=ctx.settings.claim_ttl,
        max_attempts=ctx.settings.max_attempts,
    )
    summary = _run(self, ctx, job, spec is not None)
    metrics.record_outcome(summary, job.stage.seconds)
    return summary


def _run(self: Task[Any, Any], ctx: Context, job: Job, known_batch: bool) -> dict[str, Any]:
    """The pipeline with our retry policy around it."""
    if not known_batch:
        return finish_failure(
            job, PermanentError("unknown_batch", f"batch {job.batch!r} is not in the ledger"), None
        )
    try:
        try:
            return process_object(job)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # a Redis hiccup
            raise TransientError(f"redis: {exc}") from exc
    except ClaimHeld as exc:
        # another delivery of the same object is running; look again later
        metrics.RETRIES.labels("claim_held").inc()
        raise self.retry(exc=exc, countdown=backoff(4, 60), max_retries=None) from exc
    except TransientError as exc:
        if self.request.retries >= ctx.settings.max_retries:
            return finish_failure(
                job,
                PermanentError(
                    "retries_exhausted", f"{exc} (after {self.request.retries} retries)"
                ),
                job.ledger.get_record(job.batch, job.key),
            )
        delay = backoff(self.request.retries, ctx.settings.retry_backoff_max)
        log.warning("transient error, retrying in %.1fs: %s", delay, exc)
        metrics.RETRIES.labels("transient").inc()
        raise self.retry(exc=exc, countdown=delay, max_retries=None) from exc
    except SoftTimeLimitExceeded:
        return finish_failure(
            job,
            PermanentError(
                "time_limit", f"over task_soft_time_limit={ctx.settings.task_soft_time_limit}s"
            ),
            job.ledger.get_record(job.batch, job.key),
        )
