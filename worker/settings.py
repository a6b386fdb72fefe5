"""Typed settings. Every knob is a ``DCMPRESS_*`` environment variable.

:class:`WorkerSettings` holds the connections and queue behaviour of workers and
producers. How to compress is the codec's (:mod:`worker.codec.options`).
"""

from __future__ import annotations

import ssl
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.cores import usable_cores

_SECRET_QUERY_KEYS = ("password", "secret", "token", "key")


def masked(url: str) -> str:
    """``url`` with any password (in the user part, or a ``password=`` style query
    parameter) replaced by ``***``: safe to print, log or show in Flower."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 literal keeps its brackets
            host = f"[{host}]"
        if parts.port:
            host = f"{host}:{parts.port}"
        netloc = f"{parts.username or ''}:***@{host}"
    query = "&".join(
        f"{name}=***" if any(word in name.lower() for word in _SECRET_QUERY_KEYS) else pair
        for pair in parts.query.split("&")
        if pair
        for name in [pair.partition("=")[0]]
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_TLS_PARAMETERS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def tls_options(url: str) -> dict[str, Any] | None:
    """The TLS options of a ``rediss://`` URL, as Celery's ``broker_use_ssl`` takes them
    (None for another scheme): the certificate required unless the URL says otherwise.

    kombu connects to ``rediss://`` unverified unless told ("defaulting to insecure SSL
    behaviour"), and Flower's broker page reads only ``broker_use_ssl``, not the URL: so
    the URL's ``ssl_*`` parameters are given to Celery this way too.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = dict(parse_qsl(parts.query))
    wanted = query.get("ssl_cert_reqs", "required").lower().removeprefix("cert_")
    options: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS.get(wanted, ssl.CERT_REQUIRED)}
    options.update({name: query[name] for name in _TLS_PARAMETERS if query.get(name)})
    return options


class WorkerSettings(BaseSettings):
    """Connections and queue behaviour of workers and producers (``DCMPRESS_*``).

    The time settings are chosen together. Redis redelivers an unacknowledged message
    after ``visibility_timeout``: short, so a worker killed as a whole loses nothing for
    long. A task still running then is safe: the per-object claim, kept alive by a
    heartbeat, makes the second delivery wait instead of working too, and a dead
    worker's claim lapses ``claim_ttl`` after its last beat, before its message returns.
    A retry's countdown waits in a worker unacknowledged, so it must stay well below the
    visibility timeout (else the message comes back while it waits, twice).
    """

    model_config = SettingsConfigDict(env_prefix="DCMPRESS_", extra="ignore", frozen=True)

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Redis for the ledger and the broker."
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker URL; defaults to redis_url."
    )
    redis_insecure_tls: bool = Field(
        default=False,
        description="Allow a `rediss://` URL with `ssl_cert_reqs=none` (or `optional`): the "
        "server's certificate is then not verified and a man in the middle can read the "
        "password and the jobs. Off: such a URL is refused; every process verifies "
        "`rediss://` against the system CAs (or `ssl_ca_certs`).",
    )
    queue: str = Field(default="dcmpress", description="Celery queue name.")
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, Ceph, SeaweedFS); unset = AWS."
    )
    s3_region: str | None = Field(default=None, description="S3 region; unset = AWS chain.")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto", description="Bucket addressing; `path` for most S3-compatible servers."
    )
    s3_client: Literal["obstore", "boto3"] = Field(
        default="obstore",
        description="The client of each object's HEAD, GET and PUT: `obstore` (a quarter of "
        "boto3's CPU; keys it cannot address, and listings, copies and manifests, still go "
        "through boto3) or `boto3` for all.",
    )
    s3_connect_timeout: float = Field(default=10.0, gt=0, description="Seconds.")
    s3_read_timeout: float = Field(default=120.0, gt=0, description="Seconds.")
    s3_max_attempts: int = Field(
        default=3, ge=1, description="botocore attempts per S3 call before the task retries."
    )
    multipart_threshold_mb: int = Field(
        default=64,
        ge=5,
        description="Objects above this are downloaded to a temporary file and uploaded "
        "in multipart chunks of this size.",
    )
    task_soft_time_limit: int = Field(
        default=1800, ge=1, description="Seconds before a task is asked to stop."
    )
    task_time_limit: int = Field(
        default=2100, ge=1, description="Seconds before a task's process is killed."
    )
    visibility_timeout: int = Field(
        default=120,
        ge=10,
        description="Seconds an unacknowledged message waits before Redis redelivers it "
        "(how long a whole worker's death holds its objects); more than claim_ttl.",
    )
    max_retries: int = Field(
        default=8, ge=0, description="Retries of transient failures (S3 5xx, throttling...)."
    )
    retry_backoff_max: int = Field(
        default=60,
        ge=1,
        description="Longest retry delay (exponential backoff, full jitter); at most half "
        "the visibility timeout.",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Deliveries of one object that may die with their worker (crash, "
        "kill, hard time limit) before it is recorded failed/worker_lost.",
    )
    retention_days: float = Field(
        default=30, gt=0, description="Days ledger records live after their last update."
    )
    worker_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="Worker processes per `celery worker`. Unset: the usable cores (the "
        "affinity mask and the cgroup CPU quota, not the host's count) plus one, so one "
        "process's download or upload overlaps the others' compression.",
    )

    def __repr_args__(self) -> Any:
        """Every URL with its password masked: a repr reaches logs, Celery's
        configuration and Flower's pages (Celery censors only the keys it knows)."""
        for name, value in super().__repr_args__():
            yield name, masked(value) if isinstance(value, str) and "://" in value else value

    @property
    def concurrency(self) -> int:
        """Worker processes: ``worker_concurrency``, else the usable cores plus one."""
        return self.worker_concurrency or usable_cores() + 1

    @model_validator(mode="after")
    def _tls_is_verified(self) -> WorkerSettings:
        for url in (self.redis_url, self.broker_url or ""):
            options = tls_options(url) or {}
            unverified = options.get("ssl_cert_reqs", ssl.CERT_REQUIRED) != ssl.CERT_REQUIRED
            if unverified and not self.redis_insecure_tls:
                raise ValueError(
                    f"{masked(url)} turns off the verification of Redis's TLS certificate: "
                    "give its CA with ssl_ca_certs=PATH (or none, for the system CAs), or "
                    "set DCMPRESS_REDIS_INSECURE_TLS=true to accept that"
                )
        return self

    @model_validator(mode="after")
    def _limits_fit_together(self) -> WorkerSettings:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("task_soft_time_limit must be below task_time_limit")
        if self.visibility_timeout <= self.claim_ttl:
            raise ValueError("visibility_timeout must exceed claim_ttl")
        if self.retry_backoff_max * 2 > self.visibility_timeout:
            raise ValueError(
                "retry_backoff_max must be at most half of visibility_timeout: a retry "
                "waiting longer is delivered again meanwhile"
            )
        return self

    metrics_port: int | None = Field(
        default=None,
        description="Port where each `celery worker` serves Prometheus `/metrics` "
        "(all its pool processes aggregated); unset: no metrics server.",
    )
    metrics_address: str = Field(
        default="0.0.0.0", description="Address the metrics server binds to."
    )
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto",
        description="Worker logs: one JSON object per line (`json`), Celery's text "
        "(`text`), or JSON unless writing to a terminal (`auto`).",
    )
    claim_ttl: int = Field(
        default=60,
        ge=5,
        description="Seconds a per-object claim outlives its last heartbeat (renewed every "
        "quarter of it while the object is processed).",
    )
    reconcile_after: int = Field(
        default=300,
        ge=0,
        description="Seconds a batch may have pending objects and no activity before the "
        "workers look for objects with no live message and send them again (as "
        "`dcmpress reconcile` does); 0: never by themselves.",
    )
    feed_high_water: int = Field(
        default=10_000,
        ge=1,
        description="Messages a batch's feeder keeps in the queue (the high-water mark): "
        "the listing or manifest is the backlog, and the queue holds minutes of work, not "
        "the archive (about 1.5 KB of Redis per message).",
    )

    report_prefix: str = Field(
        default="dcmpress-reports/",
        pattern=r"^[^/].*/$",
        description="Where the workers write finished outcomes out of Redis: "
        "`s3://{output bucket}/{prefix}{batch}/outcomes-NNNNNNNN.ndjson.gz` (the source "
        "bucket for in-place batches). Ends with `/`; never listed as input.",
    )
    archive: bool = Field(
        default=True,
        description="Workers move done records out of Redis into shards under "
        "report_prefix (the counters stay); false: they stay in Redis for retention_days.",
    )
    archive_keep: int = Field(
        default=60,
        ge=0,
        description="Seconds a done record stays in Redis at least before it is archived.",
    )
    archive_shard_size: int = Field(
        default=10_000,
        ge=1,
        le=100_000,
        description="Records per shard (one PUT, one Redis step each); a batch's last "
        "shard, or one of records older than 10 minutes, may hold fewer.",
    )
    archive_interval: float = Field(
        default=30.0, gt=0, description="Seconds between the workers' archive runs."
    )

    # the storage circuit breaker (worker/runtime/breaker.py): an outage pauses the
    # workers instead of spending every object's retries
    breaker_min_objects: int = Field(
        default=5,
        ge=0,
        description="Distinct objects whose latest storage attempt failed (a 5xx, a reset, "
        "a timeout) that, being breaker_failure_ratio of the objects tried most recently, "
        "make the workers pause and probe storage instead of spending retries; 0: no "
        "breaker, every failure spends a retry.",
    )
    breaker_failure_ratio: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Share of the objects tried most recently (twice breaker_min_objects, "
        "within breaker_window) whose latest storage attempt failed that pauses the workers.",
    )
    breaker_window: int = Field(
        default=60, ge=1, description="Seconds a storage attempt counts as recent for the breaker."
    )
    breaker_probe_interval: int = Field(
        default=15,
        ge=1,
        description="Seconds between probes of storage while the workers pause (one worker "
        "at a time: a HEAD request on the object that failed last, else a one-key listing "
        "of its bucket); the first answer resumes them.",
    )

    @property
    def retention_seconds(self) -> int:
        """Record retention in seconds."""
        return int(self.retention_days * 86400)
