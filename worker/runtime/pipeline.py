"""One object, end to end: claim -> fetch -> compress + verify -> upload -> record.

Plain Python: the collaborators (storage, ledger) are arguments, so tests run it without
Celery and benchmarks time each stage. The Celery task is a thin wrapper around
:func:`process_object`; it maps :class:`~worker.errors.TransientError` to retries.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from worker import procfs
from worker.codec.engine import Result, process
from worker.errors import (
    TERMINAL,
    ClaimHeld,
    ClaimLost,
    DcmpressError,
    PermanentError,
    TransientError,
    check_interrupted,
    copied_when_failed,
)
from worker.runtime import contract
from worker.runtime.breaker import Breaker, Paused, parse_pause
from worker.runtime.contract import BatchSpec, JobMessage
from worker.runtime.ledger import Begun, Ledger
from worker.runtime.ledger_outages import cut_off_by_an_outage
from worker.runtime.records import Record, short_etag
from worker.runtime.storage import Fetched, Storage
from worker.timing import StageTimer

log = logging.getLogger(__name__)


# This worker's identity in claim owners: random per worker (main) process and
# inherited by its pool children, so "a process of mine that died" is decided only
# for our own children - never from a host name or PID that another container or
# machine may share.
WORKER_BOOT = secrets.token_hex(6)


@dataclass
class Job:
    """Everything one run of the pipeline needs."""

    message: JobMessage
    spec: BatchSpec
    storage: Storage
    ledger: Ledger
    worker: str
    claim_ttl: int
    max_attempts: int
    stage: StageTimer = field(default_factory=StageTimer)
    heartbeat: _Heartbeat | None = None  # while the object is claimed
    # the storage breaker: heeded at the start, told at the end (None: neither)
    breaker: Breaker | None = None
    owner: str = ""  # of the object's claim, while held
    released: bool = False  # the claim was given back with the outcome
    output: tuple[str, str] = field(init=False)  # (bucket, key) of the object's output

    def __post_init__(self) -> None:
        self.output = self.spec.output_key(self.message.key)

    @property
    def output_url(self) -> str:
        """``s3://bucket/key`` of the object's output."""
        return "s3://{}/{}".format(*self.output)

    @property
    def batch(self) -> str:
        """The batch id."""
        return self.message.batch

    @property
    def key(self) -> str:
        """The source object key."""
        return self.message.key


def process_object(job: Job) -> dict[str, Any]:
    """Run the pipeline for one object and return its outcome (also recorded).

    Raises ClaimHeld or TransientError for the caller to retry, Paused while storage
    fails across objects; records every permanent outcome itself. The ledger is called
    once to start (claim, breaker, record: Ledger.begin) and once to end (record,
    counters, claim, breaker: Ledger.finish).
    """
    bucket, key = job.message.bucket, job.key
    release_unreleased(job.ledger)
    owner = f"{WORKER_BOOT}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    begun = _begin(job, owner)
    if begun.verdict == "held":
        if not _holder_is_gone(begun.holder):
            raise ClaimHeld(f"s3://{bucket}/{key} is being processed by {begun.holder}")
        # a pool process of this very worker died (killed), or a delivery of this very
        # process ended without releasing (Redis away at the time): take over at once
        job.ledger.release(bucket, key, begun.holder)
        begun = _begin(job, owner)
        if begun.verdict == "held":
            raise ClaimHeld(f"s3://{bucket}/{key} was taken over by another worker")
    job.owner = owner
    job.heartbeat = _Heartbeat(job.ledger, bucket, key, owner, job.claim_ttl)
    job.heartbeat.start()
    _HELD.add(owner)
    try:
        return _run_claimed(job, begun)
    finally:
        _HELD.discard(owner)
        job.heartbeat.stop()
        if not job.released:
            try:
                job.ledger.release(bucket, key, owner)
            except Exception:
                _UNRELEASED.append((bucket, key, owner))  # given back by the next delivery
                raise


def _begin(job: Job, owner: str) -> Begun:
    """The delivery's start (Ledger.begin); Paused if the breaker is open."""
    breaker = job.breaker.key if job.breaker is not None else None
    begun = job.ledger.begin(
        job.batch, job.message.bucket, job.key, job.message.etag or "",
        (owner, job.claim_ttl), job.worker, breaker,
    )  # fmt: skip
    if begun.verdict == "paused":
        raise Paused(parse_pause(begun.breaker))
    return begun


# The claims deliveries running in this process hold now (owner strings), and those of
# ended deliveries that could not be given back (Redis away): a redelivery of such an
# object would otherwise wait for the claim to lapse
_HELD: set[str] = set()
_UNRELEASED: list[tuple[str, str, str]] = []


def release_unreleased(ledger: Ledger) -> None:
    """Give back the claims earlier deliveries of this process could not (Redis was
    away); those still held stay for the next try."""
    while _UNRELEASED:
        bucket, key, owner = _UNRELEASED[0]
        try:
            ledger.release(bucket, key, owner)
        except Exception:
            return  # still away: the next delivery tries again (or the claim lapses)
        _UNRELEASED.pop(0)


def _holder_is_gone(holder: str) -> bool:
    """True if the claim's owner was this process, in a delivery that has ended, or a
    process of this worker that no longer runs.

    Any other holder - another worker, here or elsewhere - keeps its claim until it
    lapses (``claim_ttl`` after its last heartbeat).
    """
    boot, _, rest = holder.partition(":")
    if boot == WORKER_BOOT and rest.partition(":")[0] == str(os.getpid()):
        return holder not in _HELD
    return _holder_was_my_child_and_died(holder)


def _holder_was_my_child_and_died(holder: str) -> bool:
    """True if the claim's owner was a process of this worker that no longer runs.

    Any other holder - another worker, here or elsewhere - keeps its claim until it
    lapses (``claim_ttl`` after its last heartbeat).
    """
    boot, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if boot != WORKER_BOOT or not pid_text.isdigit():
        return False
    try:
        stat = procfs.read_stat(int(pid_text))
    except OSError:  # /proc not readable: not known to be dead
        return False
    return stat is None or not stat.running  # gone, or a zombie


class _Heartbeat(threading.Thread):
    """Keeps the object's claim alive while it is processed; notices if it was lost.

    A claim that lapsed (a beat starved, Redis away for a while) is taken back if still
    free; one another delivery took meanwhile is lost, and the work stops.
    """

    def __init__(self, ledger: Ledger, bucket: str, key: str, owner: str, ttl: int) -> None:
        super().__init__(daemon=True, name="dcmpress-claim-heartbeat")
        self.args_ = (ledger, bucket, key, owner, ttl)
        self.stopped = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        ledger, bucket, key, owner, ttl = self.args_
        while not self.stopped.wait(ttl / 4):
            try:
                if not ledger.renew(bucket, key, owner, ttl):
                    log.warning("claim of s3://%s/%s taken over; this delivery stops", bucket, key)
                    self.lost.set()
                    return
            except Exception:  # a Redis hiccup: try again next beat
                log.warning("claim heartbeat failed", exc_info=True)

    def stop(self) -> None:
        self.stopped.set()

    def check(self) -> None:
        """Raise ClaimLost if another delivery now owns the object."""
        if self.lost.is_set():
            raise ClaimLost("another delivery took the object over; it will record it")


def _run_claimed(job: Job, begun: Begun) -> dict[str, Any]:
    previous = begun.record
    if begun.verdict == "duplicate" and previous is not None:
        # A duplicate delivery (redelivery, duplicate event): already finished.
        summary = outcome(job, previous, begun.message)
        summary["duplicate"] = True  # counted once already (ledger and metrics)
        return summary
    if begun.verdict == "cancelled":
        # acknowledged without work; `dcmpress resume` queues these objects again
        final = (previous or Record(state="queued")).stamped(
            state="skipped", code="cancelled", bytes_in=job.message.size or 0, bytes_out=0
        )
        message = "batch cancelled; not processed"
        if not record_end(job, final, message):
            return superseded(job, final)
        return outcome(job, final, message)
    if begun.verdict == "started" and begun.record is not None:
        running = begun.record
    else:  # was_running: the last delivery died, or was cut off by a Redis outage
        lost = previous.lost if previous else 0
        if previous and _died(job, previous):
            lost += 1  # the last delivery died without finishing (its claim lapsed)
            if lost >= job.max_attempts:
                return finish_failure(
                    job,
                    PermanentError(
                        "worker_lost",
                        f"the worker died {lost} times on this object (crash, out of memory "
                        "or hard time limit); not tried again",
                    ),
                    replace(previous, lost=lost),  # the record says as many deaths as the text
                )
        running = Record(
            state="running",
            attempts=(previous.attempts if previous else 0) + 1,
            lost=lost,
            worker=job.worker,
            etag=short_etag(job.message.etag),
        ).stamped()
        job.ledger.transition(job.batch, job.key, running)
    try:
        earlier = _written_before_fetch(job)
        if earlier is not None:
            return _finish_written(job, running, earlier)
        with job.stage("fetch"):
            fetched = job.storage.fetch(job.message.bucket, job.key, job.message.version_id)
        try:
            check_interrupted()  # botocore retries whatever it catches, a time limit too
            earlier = _written_after_fetch(job, running, fetched)
            if earlier is not None:
                return _finish_written(job, running, earlier)
            result = _compress(job, fetched)
            try:
                _check_claim(job)  # never write what another delivery is writing
                with job.stage("upload"):
                    output_url = _write(job, fetched, result)
            finally:
                result.close()
            _check_claim(job)
        finally:
            fetched.close()
    except TransientError as exc:
        # back to queued so a retry is not mistaken for a dead worker
        job.ledger.transition(
            job.batch, job.key, running.stamped(state="queued"), guard=_version(job)
        )
        log.warning("transient error", extra={"dcmpress": {
            "batch": job.batch, "key": job.key, "stage": job.stage.current,
            "attempts": running.attempts, "error": str(exc),
        }})  # fmt: skip
        raise
    except PermanentError as exc:
        return finish_failure(job, exc, running)
    return _finish(job, running, fetched, result, output_url)


def record_end(
    job: Job, final: Record, message: str, stages: dict[str, float] | None = None,
    served: bool = True,
) -> bool:  # fmt: skip
    """Record the delivery's outcome in one step (Ledger.finish): the record (False if
    a newer version superseded it), ``stages`` seconds, the claim given back, and for
    the breaker that storage ``served`` the object."""
    claim = None
    if job.heartbeat is not None and job.owner:
        job.heartbeat.stop()  # no beat may take the claim back once it is given back
        job.heartbeat.join(timeout=1.0)
        claim = (job.message.bucket, job.owner)
    note = job.breaker.served(job.message.bucket, job.key) if job.breaker and served else None
    written = job.ledger.finish(
        job.batch, job.key, final, message, guard=_version(job), stages=stages, claim=claim,
        note=note,
    )  # fmt: skip
    job.released = claim is not None
    return written


def _died(job: Job, previous: Record) -> bool:
    """True if the delivery that left the record ``running`` died with its worker; not
    if the ledger's Redis was away meanwhile: that delivery gave its message back alive,
    and a Redis outage never counts against ``max_attempts``."""
    if cut_off_by_an_outage(job.ledger, previous):
        log.info("the last delivery ended in a Redis outage; not counted as a lost worker",
                 extra={"dcmpress": {"batch": job.batch, "key": job.key}})  # fmt: skip
        return False
    return True


def _version(job: Job) -> str:
    """The version (ETag) this delivery was sent for: the guard of its records."""
    return job.message.etag or ""


def superseded(job: Job, final: Record) -> dict[str, Any]:
    """The outcome of a delivery whose object was queued again for a newer version
    while it ran: its record is left to that version's job, which runs next."""
    message = (
        f"a newer version of the object arrived while this one ran ({final.state}/"
        f"{final.code}); the newer version is queued and its outcome will be recorded"
    )
    log.info("object superseded", extra={"dcmpress": {
        "batch": job.batch, "key": job.key, "etag": short_etag(job.message.etag),
    }})  # fmt: skip
    return {"batch": job.batch, "key": job.key, "outcome": "superseded", "message": message}


def _check_claim(job: Job) -> None:
    if job.heartbeat is not None:
        job.heartbeat.check()


def _same_output(job: Job, metadata: dict[str, str] | None, source_etag: str) -> bool:
    """True if ``metadata`` is that of our output of this very source (its ETag) made
    with this batch's options: writing it again would write the same thing twice."""
    return bool(
        metadata
        and metadata.get(contract.META_MARKER)
        and source_etag
        and short_etag(metadata.get(contract.META_SOURCE_ETAG)) == short_etag(source_etag)
        and metadata.get(contract.META_OPTIONS) == job.spec.digest()
        and metadata.get(contract.META_OUTCOME, "").partition("/")[0] in TERMINAL
    )


def _written_before_fetch(job: Job) -> dict[str, str] | None:
    """The metadata of the output already written for this source, found with one HEAD
    request before anything is fetched (to a destination, when the source ETag is
    known): a delivery whose record was lost (Redis restarted empty, a failed final
    write) or an `enqueue` run again finds it and does not write it again."""
    if job.message.rewrite or job.spec.in_place or not job.message.etag:
        return None
    with job.stage("fetch"):
        metadata = job.storage.output_metadata(*job.output)
    return metadata if _same_output(job, metadata, job.message.etag) else None


def _written_after_fetch(job: Job, running: Record, fetched: Fetched) -> dict[str, str] | None:
    """The same, once the object is fetched: in place the object itself may be the
    output this batch wrote (its record lost); elsewhere, an output of the version
    fetched, when the message did not name it (no ETag, or an older version's)."""
    if job.message.rewrite:
        return None
    if job.spec.in_place:
        # the source's ETag, as this batch knew it before replacing it
        return fetched.metadata if _same_output(job, fetched.metadata, running.etag) else None
    if job.message.etag and short_etag(fetched.etag) == short_etag(job.message.etag):
        return None  # looked before the fetch
    # the message's ETag is unknown, or no longer the object's: a newer version (whose
    # own message may have written it already) or a late event of an older one
    with job.stage("fetch"):
        metadata = job.storage.output_metadata(*job.output)
    return metadata if _same_output(job, metadata, fetched.etag) else None


def _finish_written(job: Job, running: Record, metadata: dict[str, str]) -> dict[str, Any]:
    """Record the outcome an earlier delivery wrote to storage (and not to the ledger)."""
    state, _, code = metadata[contract.META_OUTCOME].partition("/")
    target, _, plugin = metadata.get(contract.META_CODEC, "").partition("/")
    source_etag = metadata.get(contract.META_SOURCE_ETAG, "")

    def number(name: str) -> int:
        value = metadata.get(name, "")
        return int(value) if value.isdigit() else 0

    final = running.stamped(
        state=state,
        code=code,
        bytes_in=number(contract.META_BYTES_IN),
        bytes_out=number(contract.META_BYTES_OUT),
        target=target,
        plugin=plugin,
        millis=int(sum(job.stage.seconds.values()) * 1000),
        etag=short_etag(source_etag),
        modality=metadata.get(contract.META_MODALITY, ""),
        rule=number(contract.META_RULE),
        copied=metadata.get(contract.META_COPIED) == "1",
        **contract.quality_from_metadata(metadata),
    )
    message = (
        f"{state}/{code}: the output of this source (ETag {short_etag(source_etag)}) with "
        "these options was written already, by an earlier delivery; not written again"
    )
    with job.stage("record"):
        if not record_end(job, final, message):
            return superseded(job, final)
    summary = outcome(job, final, message)
    summary["output"] = job.output_url
    log.info("object finished", extra={"dcmpress": summary})
    return summary


def _compress(job: Job, fetched: Fetched) -> Result:
    if fetched.metadata.get(contract.META_MARKER):
        # our own output (destination inside the source): never compress it again
        return Result("skipped", "own_output", contract.OWN_OUTPUT_MESSAGE, fetched.size)
    result = process(fetched.data, job.spec.options, policy=job.spec.rules(), key=job.key)
    job.stage.seconds.update(result.timings)
    return result


def _write(job: Job, fetched: Fetched, result: Result) -> str | None:
    """Upload the result or copy the source as the result says; return the output URL."""
    spec = job.spec
    bucket, key = job.output
    metadata = contract.output_metadata(
        source_etag=fetched.etag,
        source_key=job.key,
        bytes_in=result.bytes_in,
        bytes_out=result.bytes_out,
        outcome=f"{result.state}/{result.code}",
        options_digest=spec.digest(),
        rule=spec.rule_number(result.rule),
        transfer_syntax=result.transfer_syntax,  # the output's, or the copied source's own
        codec=f"{result.target}/{result.plugin}" if result.target and result.plugin else "",
        modality=result.modality,
        copied=result.copied,
        **_quality(result),
    )
    if result.output is not None:
        if_match = fetched.etag if spec.in_place else None
        job.storage.put(bucket, key, result.output, metadata, if_match=if_match)
        return job.output_url
    if result.copy_source and not spec.in_place:
        job.storage.copy(job.message.bucket, job.key, fetched.version_id, bucket, key, metadata)
        return job.output_url
    return None  # in place: the source stays as it is; or nothing to write


def _finish(
    job: Job, running: Record, fetched: Fetched, result: Result, output_url: str | None
) -> dict[str, Any]:
    final = running.stamped(
        state=result.state,
        code=result.code,
        bytes_in=result.bytes_in,
        bytes_out=result.bytes_out if output_url else 0,
        target=result.target or "",
        plugin=result.plugin or "",
        millis=int(sum(job.stage.seconds.values()) * 1000),
        etag=short_etag(fetched.etag),
        modality=result.modality,
        rule=job.spec.rule_number(result.rule),
        copied=bool(output_url) and result.copied,
        **_quality(result),
    )
    # a done object's message is derived from its record, unless it carries notices
    message = "" if result.state == "done" and not result.notices else result.message
    with job.stage("record"):
        # (the record stage's own time is the next object's: it is being measured)
        if not record_end(job, final, message, stages=dict(job.stage.seconds)):
            return superseded(job, final)
    summary = outcome(job, final, result.message)
    summary["output"] = output_url
    if result.state == "failed":
        # the engine stage it stopped in is the last one it timed
        stage = next(reversed(result.timings), "compress")
        log.warning("object failed", extra={"dcmpress": {**summary, "stage": stage}})
    else:
        log.info("object finished", extra={"dcmpress": summary})
    return summary


def _quality(result: Result) -> dict[str, Any]:
    """The max error and PSNR a record keeps: a lossy result's (its PSNR is None when
    the pixels came out identical); lossless results are identical by definition."""
    if result.output is None or not result.lossy:
        return {}
    return {"max_error": result.max_error, "psnr": result.psnr}


def finish_failure(
    job: Job, error: PermanentError, previous: Record | None, served: bool = True
) -> dict[str, Any]:
    """Record a permanent failure and return the outcome. A failure about the object's
    content (a lost worker, a time limit) copies the source unchanged first, as the
    batch's ``failed_output`` says; storage failures have no output. ``served``: storage
    answered for this object (the breaker counts it a success), not so for a failure
    the task decides (retries used up, a time limit)."""
    base = previous or Record(state="running")
    message, copied_bytes, output_url = error.message, 0, None
    if _copies_failures(job, error.code):
        try:
            output_url, copied_bytes = _copy_failed(job, error)
            message = f"{message}; copied unchanged"
        except DcmpressError as exc:
            # storage refuses the copy (or is away, after botocore's own retries): the
            # failure is recorded without an output; `dcmpress retry` copies it later
            message = f"{message}; not copied: {exc}"
    final = base.stamped(
        state="failed",
        code=error.code,
        bytes_in=copied_bytes or job.message.size or 0,
        bytes_out=copied_bytes,
        copied=output_url is not None,
        millis=int(sum(job.stage.seconds.values()) * 1000),
    )
    if not record_end(job, final, message, served=served):
        return superseded(job, final)
    summary = outcome(job, final, message)
    summary["output"] = output_url
    log.warning("object failed", extra={"dcmpress": {**summary, "stage": job.stage.current}})
    return summary


def _copies_failures(job: Job, code: str) -> bool:
    return (
        job.spec.options.failed_output == "copy"
        and copied_when_failed(code)
        and not job.spec.in_place
        and job.spec.dest is not None
    )


def _copy_failed(job: Job, error: PermanentError) -> tuple[str, int]:
    """Copy the source of an object that failed outside the engine (a lost worker, a
    time limit) unchanged to its output key; return the URL and the bytes copied."""
    source = job.storage.head(job.message.bucket, job.key, job.message.version_id)
    bucket, key = job.output
    metadata = contract.output_metadata(
        source_etag=source.etag,
        source_key=job.key,
        bytes_in=source.size,
        bytes_out=source.size,
        outcome=f"failed/{error.code}",
        options_digest=job.spec.digest(),
        copied=True,
    )
    job.storage.copy(job.message.bucket, job.key, job.message.version_id, bucket, key, metadata)
    return job.output_url, source.size


def outcome(job: Job, record: Record, message: str) -> dict[str, Any]:
    """The task's return value: readable in Flower, JSON-serialisable."""
    ratio = round(record.bytes_in / record.bytes_out, 3) if record.bytes_out else None
    return {
        "batch": job.batch,
        "key": job.key,
        "outcome": record.state,
        "code": record.code,
        "message": message or f"{record.target}/{record.plugin}",
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "ratio": ratio,
        "target": record.target or None,
        "copied": record.copied,
        "max_error": record.max_error,
        "psnr": record.psnr,
        "rule": job.spec.rule_name(record.rule),
        "attempts": record.attempts,
        "seconds": round(record.millis / 1000, 3),
    }
