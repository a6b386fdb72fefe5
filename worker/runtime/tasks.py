"""The Celery task: parse the message, run the pipeline, map errors to retry or record."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

import boto3
import redis
from celery import Task, shared_task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_after_setup,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)
from pydantic import ValidationError

from worker.errors import (
    INTERRUPTION_PROBES,
    INTERRUPTIONS,
    ClaimHeld,
    ClaimLost,
    ConfigurationError,
    PermanentError,
    TransientError,
    one_line,
)
from worker.retry import Backoff
from worker.runtime import ledger_outages, logs, metrics
from worker.runtime.breaker import Breaker, Pause, Paused, unreachable
from worker.runtime.contract import TASK_COMPRESS, BatchSpec, JobMessage
from worker.runtime.ledger import Ledger, is_out_of_memory
from worker.runtime.pipeline import Job, finish_failure, process_object, release_unreleased
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings, masked

log = logging.getLogger(__name__)
# longest wait for the ledger before a message it could not serve goes back (below the
# 20 s a warm shutdown gives a task: the message must be back before the worker exits)
LEDGER_AWAY_PAUSE = 5.0
STORAGE_AWAY_PAUSE = 5.0  # seconds before a message goes back while storage is failing
# a delivery that found its object claimed looks again as late as after this failed try
# (up to 16 s), without using up a retry
CLAIM_WAIT_AFTER = 5


class SoftLimitWatch:
    """Stops an object cooperatively when the soft time limit fires.

    billiard's SIGUSR1 handler raises SoftTimeLimitExceeded wherever the pool process
    happens to be: inside a codec's Cython code that checks for signals, this was seen
    to crash the process (SIGSEGV); and pydicom, botocore and others swallow broad
    exceptions and report something else. The watch replaces that handler (installed
    after worker_process_init, so it is replaced at each task's start) with one that
    only takes note; the engine and the pipeline ask at every stage boundary (the
    interruption probe) and stop there, recorded ``time_limit``. A codec stuck in one
    call is still killed by the hard time limit.
    """

    def __init__(self) -> None:
        self.fired = False

    def arm(self) -> None:
        """Start watching for this task."""
        self.fired = False
        if (
            hasattr(signal, "SIGUSR1")
            and signal.getsignal(signal.SIGUSR1) is not self._on_soft_limit
        ):
            signal.signal(signal.SIGUSR1, self._on_soft_limit)

    def _on_soft_limit(self, signum: int, frame: Any) -> None:
        self.fired = True  # no exception raised into whatever code runs now

    def probe(self) -> BaseException | None:
        """SoftTimeLimitExceeded if the limit fired during this task."""
        return SoftTimeLimitExceeded() if self.fired else None


soft_limit = SoftLimitWatch()
# a soft time limit is recorded failed/time_limit wherever it strikes (errors.py)
if SoftTimeLimitExceeded not in INTERRUPTIONS:
    INTERRUPTIONS.append(SoftTimeLimitExceeded)
    INTERRUPTION_PROBES.append(soft_limit.probe)


@dataclass
class Context:
    """Per-process clients: created after the fork, never shared across processes."""

    settings: WorkerSettings
    storage: Storage
    ledger: Ledger
    pid: int = field(default_factory=os.getpid)
    specs: dict[str, BatchSpec] = field(default_factory=dict)
    worker: str = ""  # this process's tag in the ledger
    breaker: Breaker = field(init=False)  # the storage breaker, on the ledger's Redis

    def __post_init__(self) -> None:
        self.breaker = Breaker.from_settings(self.ledger.redis, self.settings)

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

    @property
    def retries(self) -> Backoff:
        """The retry policy of transient failures: ``max_retries`` retries, waits up to
        ``retry_backoff_max`` seconds."""
        return Backoff(attempts=self.settings.max_retries + 1, cap=self.settings.retry_backoff_max)


_context: Context | None = None


def context() -> Context:
    """This process's context, built on first use (and again after a fork)."""
    global _context
    if _context is None or _context.pid != os.getpid():
        settings = WorkerSettings()
        _context = Context(
            settings=settings,
            storage=Storage(settings, serves_objects=True),  # (a pool process)
            ledger=Ledger.from_url(
                settings.redis_url, settings.retention_seconds, outbox=settings.archive
            ),
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


def pool_refusal(pool: Any) -> str | None:
    """Why a worker must not run with the Celery ``pool`` (an alias, a "module:class"
    path or the class); None for the prefork pool.

    Every other pool breaks a guarantee: threads, gevent and eventlet run several
    tasks in one process, and pylibjpeg-openjpeg crashes the process when two encode at
    once (measured: a segmentation fault on the first pair of JPEG 2000 encodes); solo
    runs the task in the worker itself, where no time limit can stop a codec that
    hangs and a codec that crashes takes the whole worker with it.
    """
    from celery import concurrency
    from celery.concurrency.prefork import TaskPool as PreforkPool

    aliases: dict[str, str] = getattr(concurrency, "ALIASES", {})  # not in celery-types

    chosen = concurrency.get_implementation(pool)
    if isinstance(chosen, type) and issubclass(chosen, PreforkPool):
        return None
    path = f"{chosen.__module__}:{chosen.__qualname__}"
    name = next((alias for alias, target in aliases.items() if target == path), path)
    return (
        f"dcmpress workers run only with the prefork pool, not {name!r}: its codecs are "
        "not thread-safe, and only pool processes enforce time limits and contain a "
        "codec crash. Leave --pool unset (a single process: --concurrency 1)"
    )


@worker_init.connect
def _require_prefork_pool(sender: Any = None, **_: Any) -> None:
    """Refuse to start with a pool that would run codecs unsafely (see pool_refusal)."""
    refusal = pool_refusal(getattr(sender, "pool_cls", None) or "prefork")
    if refusal is not None:
        log.critical(refusal)
        raise SystemExit(refusal)  # Celery's signal dispatch logs and swallows Exception


@worker_init.connect
def _check_storage_credentials(**_: Any) -> None:
    """Say at start-up what every object would otherwise fail with, one by one."""
    if boto3.session.Session().get_credentials() is None:
        log.error(
            "no S3 credentials found (environment, ~/.aws, instance or pod role): every "
            "object will fail storage_misconfigured; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY or give the workers a role"
        )


@celeryd_after_setup.connect
def _require_the_ledger(**_: Any) -> None:
    """Take no message unless the ledger answers: a task that cannot reach it would be
    taken from the broker only to fail. Then say whether a Redis restart would lose the
    queue and the ledger. (Sent once logging is set up, before the pool and the
    consumer start.)"""
    settings = WorkerSettings()
    ledger = Ledger.from_url(settings.redis_url, settings.retention_seconds, timeout=10)
    try:
        ledger.redis.ping()
        kind = ledger.persistence()
    except redis.RedisError as exc:
        log.critical(ledger_refusal(exc, settings.redis_url))
        raise SystemExit(1) from exc  # Celery's signal dispatch swallows Exception
    finally:
        ledger.redis.close()
    if kind == "none":
        log.warning(
            "the ledger's Redis keeps nothing on disk (no AOF, no RDB snapshots): a "
            "restart loses the queue and every record; afterwards run each unfinished "
            "batch's `dcmpress enqueue` again (outputs written already are recognised, "
            "not written again), or run Redis with appendonly yes"
        )


def ledger_refusal(exc: Exception, url: str) -> str:
    """One line for a worker whose ledger does not answer: what failed, what to do."""
    text = str(exc)
    if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text:
        what, todo = "refused the credentials", "put its user and password in DCMPRESS_REDIS_URL"
    elif "certificate" in text.lower():
        what, todo = "failed TLS verification", "name its CA in DCMPRESS_REDIS_URL (ssl_ca_certs)"
    elif isinstance(exc, redis.ResponseError):
        what, todo = "refused a command", "allow the workers' commands to its user"
    else:
        what, todo = "cannot be reached", "check DCMPRESS_REDIS_URL's host and port, the network"
    return one_line(
        f"the ledger's Redis at {masked(url)} {what} ({exc}): this worker exits and takes "
        f"no message; {todo}, then start it again"
    )


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


# max_retries=None: Celery itself never gives up on a retry (its default of 3 would drop
# the message after the fourth failure, with no record); our own bound is
# DCMPRESS_MAX_RETRIES, and reaching it records failed/retries_exhausted.
@shared_task(
    name=TASK_COMPRESS, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None
)
def compress_object(self: Task[Any, Any], message: dict[str, Any]) -> dict[str, Any]:
    """Compress one object of a batch; the outcome is recorded in the ledger."""
    soft_limit.arm()
    with metrics.IN_FLIGHT.track_inprogress():
        try:
            return _compress_object(self, message)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            _give_back(exc)
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
            # (a full Redis refuses whole Lua steps: nothing half-recorded; the message
            # waits in the queue, or among the unacknowledged ones, until it has room)
            _give_back(exc)


def _give_back(exc: Exception) -> NoReturn:
    """Put the message back in the queue, without using up a retry: the ledger did not
    answer (to read the batch, record a step or the outcome). A task that raises has its
    message rejected without requeue, which on Redis drops it.

    It first waits up to LEDGER_AWAY_PAUSE for the ledger, so that a worker whose ledger
    is away does not take the same message again at once. Once it answers, its return
    is noted (the object's record, left ``running``, is then not taken for a dead
    worker's: ledger_outages.py) and the claims this process left are given back (the
    next delivery need not wait for them to lapse).
    """
    log.warning(
        "the ledger's Redis did not answer (%s); the message goes back to the queue in "
        "%.0f s at most, no retry used", one_line(str(exc)), LEDGER_AWAY_PAUSE,
    )  # fmt: skip
    ledger_outages.found_away()
    ledger = context().ledger
    if ledger_outages.wait_until_back(ledger, LEDGER_AWAY_PAUSE):
        with contextlib.suppress(redis.RedisError):  # away again: the next delivery tries
            release_unreleased(ledger)
    raise Reject(str(exc), requeue=True) from exc


def _wait_for_storage(job: Job, pause: Pause) -> NoReturn:
    """Put the message back in the queue, without using up a retry: storage is failing
    across objects (the breaker is open, breaker.py), so this object's turn waits until
    it answers. Meanwhile the worker takes no new message (breakerstep.py); the pause
    keeps it from taking this one again at once."""
    metrics.RETRIES.labels("storage_paused").inc()
    log.warning(
        "paused, %s; the message goes back to the queue in %.0f s, no retry used",
        pause.describe(), STORAGE_AWAY_PAUSE,
        extra={"dcmpress": {"batch": job.batch, "key": job.key}},
    )  # fmt: skip
    time.sleep(STORAGE_AWAY_PAUSE)
    raise Reject(f"paused: {pause.error}", requeue=True)


def _compress_object(self: Task[Any, Any], message: dict[str, Any]) -> dict[str, Any]:
    ctx = context()
    ledger_outages.note_if_back(ctx.ledger)  # if this process found the ledger away
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
        breaker=ctx.breaker,
    )
    summary = _run(self, ctx, job, spec is not None)
    if not summary.get("duplicate") and summary["outcome"] not in ("taken_over", "superseded"):
        metrics.record_outcome(summary, job.stage.seconds)  # each object counted once
    return summary


def _run(self: Task[Any, Any], ctx: Context, job: Job, known_batch: bool) -> dict[str, Any]:
    """The pipeline with our retry policy around it."""
    if not known_batch:
        return finish_failure(
            job,
            PermanentError("unknown_batch", f"batch {job.batch!r} is not in the ledger"),
            None,
            served=False,
        )
    try:
        job.spec.rules()  # parsed once per process
    except ConfigurationError as exc:  # e.g. a policy written for a newer release
        return finish_failure(job, PermanentError("invalid_policy", str(exc)), None, served=False)
    # (a Redis error goes up to compress_object, which gives the message back: a Redis
    # outage never uses up a retry)
    try:
        return process_object(job)
    except Paused as paused:  # storage is failing: not this object's turn
        _wait_for_storage(job, paused.pause)
    except ClaimLost as exc:
        # the delivery that took the object over writes and records it; nothing to do
        log.warning("%s: s3://%s/%s", exc, job.message.bucket, job.key)
        return {"batch": job.batch, "key": job.key, "outcome": "taken_over", "message": str(exc)}
    except ClaimHeld as exc:
        # another delivery of the same object is running; look again later, without
        # using up a retry of its own
        metrics.RETRIES.labels("claim_held").inc()
        waiting = job.message.model_copy(update={"claim_waits": job.message.claim_waits + 1})
        # (capped like any countdown: a wait longer than half the visibility timeout
        # would be delivered again meanwhile)
        _retry(self, exc, ctx.retries.delay(CLAIM_WAIT_AFTER), waiting.model_dump(mode="json"))
    except TransientError as exc:
        # noted for the breaker: if storage fails across objects, wait without a retry
        pause = ctx.breaker.failed(job.message.bucket, job.key, str(exc))
        if pause is not None:
            _wait_for_storage(job, pause)
        retries = self.request.retries - job.message.claim_waits
        if ctx.retries.last(retries + 1):
            # the last try: an outage too few objects met to open the breaker (a batch
            # of one, a trickle of events) must not fail them either; if storage does
            # not answer a listing of its own, it is away, not this object's trouble
            down = unreachable(ctx.storage, job.message.bucket) if ctx.breaker.enabled else None
            pause = ctx.breaker.open(job.message.bucket, job.key, down) if down else None
            if pause is not None:
                _wait_for_storage(job, pause)
            return finish_failure(
                job,
                PermanentError("retries_exhausted", f"{exc} (after {retries} retries)"),
                job.ledger.get_record(job.batch, job.key),
                served=False,
            )
        delay = ctx.retries.delay(retries + 1)
        log.warning("transient error, retrying in %.1fs: %s", delay, exc)
        metrics.RETRIES.labels("transient").inc()
        _retry(self, exc, delay, job.message.model_dump(mode="json"))
    except SoftTimeLimitExceeded:
        return finish_failure(
            job,
            PermanentError(
                "time_limit", f"over task_soft_time_limit={ctx.settings.task_soft_time_limit}s"
            ),
            job.ledger.get_record(job.batch, job.key),
            served=False,
        )


def _retry(task: Task[Any, Any], exc: Exception, delay: float, message: dict[str, Any]) -> NoReturn:
    """Schedule the object again in ``delay`` seconds with ``message`` as its argument.

    If the retry cannot be published (the broker is away), Celery rejects the message
    without requeueing it: the object would be lost with no record. It is rejected
    *with* requeue instead, so the broker delivers it again once it is back (an
    unacknowledged message also survives in Redis until its visibility timeout).
    """
    try:
        raise task.retry(args=(message,), exc=exc, countdown=delay)
    except Reject as rejected:
        reason = getattr(rejected, "reason", rejected)  # the publishing error
        log.warning("could not publish the retry (%s); the message goes back to the queue",
                    reason)  # fmt: skip
        raise Reject(reason, requeue=True) from exc
