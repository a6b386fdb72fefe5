"""Typed settings. Every knob is a ``DCMPRESS_*`` environment variable.

:class:`CompressionOptions` is the plain, serialisable description of *how* to
compress: the CLI builds it from flags, a job message will carry it, and the engine
takes nothing else. :class:`EngineSettings` reads the same fields from the
environment.
"""

from __future__ import annotations

import ssl
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.codec.targets import AUTO, Target, auto_candidates, get_target
from worker.cores import usable_cores

# j2k-lossy's default ratio: the lowest upper limit of the German consensus (DRG, Loose
# et al., RöFo 2009; adopted by the SSK in 2011: CT brain 1:5, other CT 1:8, MR 1:7,
# RF/XA 1:6, CR/DR 1:10), and what readers found visually lossless in abdominal CT (Eur
# Radiol 2007;17:1529); counted against the stored bytes, as the record states it
DEFAULT_J2K_CR = (5.0,)
# The quality guard's default: the result's PSNR against the source's own value range
# (max - min) at least this, i.e. an RMS error of at most 1 % of that range
DEFAULT_MIN_PSNR = 40.0


def _split_list(value: Any) -> Any:
    """Accept ``"a,b"`` as well as ``["a", "b"]`` for list-valued settings."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class CompressionOptions(BaseModel):
    """How to compress one object. Field names match ``pydicom.pixels.compress``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: Annotated[list[str], NoDecode] = Field(
        default=["jpeg-ls"],
        min_length=1,
        description="Target names or transfer syntax UIDs; later ones are fallbacks for "
        "images the earlier ones cannot take. `auto` (alone): the smallest verified result "
        "of the auto candidates, image by image.",
    )
    auto_candidates: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Lossless targets `auto` tries on each image. Empty: every installed "
        "lossless target but jpegxl.",
    )
    prefer_speed: float | None = Field(
        default=None,
        ge=0,
        description="`auto`: the smallest result among the candidates that encoded within "
        "this many percent of the fastest one's time. Unset: the smallest of all.",
    )
    encoding_plugin: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Plugin to use: a name applied to every target that has it "
        "(`pylibjpeg`), or `target=plugin` pairs (`rle=gdcm`). Empty: the fastest "
        "safe installed plugin.",
    )
    jls_error: int = Field(
        default=2,
        ge=1,
        le=255,
        description="jpeg-ls-near: largest allowed pixel error, in stored values (2: 2 HU "
        "of a CT; verified for every pixel).",
    )
    j2k_cr: Annotated[list[float] | None, NoDecode] = Field(
        default=None,
        description="j2k-lossy: compression ratio per quality layer, against the stored "
        "pixel bytes (as the output's Lossy Image Compression Ratio says). Unset: 5, the "
        "lowest limit of the German consensus (CT brain 1:5).",
    )
    j2k_psnr: Annotated[list[float] | None, NoDecode] = Field(
        default=None,
        description="j2k-lossy: OpenJPEG's PSNR target in dB per quality layer (its peak "
        "is 2^Bits Stored - 1, not the image's range: on 12-bit values stored in 16 bits "
        "it keeps far less than it says; min_psnr still judges the result).",
    )
    max_error: int | None = Field(
        default=None,
        ge=0,
        description="Quality guard of lossy targets: a result whose largest pixel error "
        "exceeds this is discarded and the next target is tried. Unset: no limit.",
    )
    min_psnr: float | None = Field(
        default=DEFAULT_MIN_PSNR,
        ge=0,
        description="Quality guard of lossy targets: a result whose PSNR (dB, against the "
        "source's value range, max - min) is below this is discarded and the next target "
        "tried, else the source copied (skipped/quality_guard). 40: an RMS error of at "
        "most 1 % of the range. 0 turns the guard off.",
    )
    encapsulate_ext: bool = Field(
        default=False,
        description="Always add an Extended Offset Table (it is added anyway when the "
        "compressed data outgrow the Basic Offset Table's 4 GiB).",
    )
    generate_instance_uid: bool | None = Field(
        default=None,
        description="New SOP Instance UID? Unset: only for lossy targets, as DICOM asks.",
    )
    plugin_options: dict[str, Any] = Field(
        default={}, description="Extra keyword options passed to the encoding plugin."
    )
    verify: bool = Field(
        default=True, description="Decode every result and compare it with the source."
    )
    unsupported: Literal["skip", "fail"] = Field(
        default="skip",
        description="Images no target can take: copy unchanged and record `skipped`, "
        "or record `failed`.",
    )
    transcode: bool = Field(
        default=False,
        description="Decode and re-encode sources that are already losslessly compressed.",
    )
    no_pixel_data: Literal["copy", "skip"] = Field(
        default="copy",
        description="Objects without pixel data: copy unchanged, or skip without output.",
    )
    not_dicom: Literal["copy", "fail"] = Field(
        default="copy",
        description="Objects that are not DICOM: copy unchanged (`skipped/not_dicom`), so "
        "the destination stays a complete copy of the source, or record `failed`.",
    )
    viewer_safe: bool = Field(
        default=True,
        description="Refuse outputs that are valid but that OHIF's loader shows wrong "
        "(16-bit RGB under RLE, HTJ2K colour without the colour transform, 16-bit colour "
        "with a JPEG 2000 colour transform, signed 8-bit under RLE or JPEG 2000): the next "
        "target takes the image, else it is copied (`skipped/viewer_unsafe`); `auto` never "
        "picks them. false writes them.",
    )
    failed_output: Literal["copy", "none"] = Field(
        default="copy",
        description="Objects that fail because of what they contain (invalid_dicom, "
        "verification_failed, codec_crashed, worker_lost, time_limit...): `copy` the source "
        "unchanged to the destination (the record stays failed and says so), so it is a "
        "complete archive; `none` writes nothing. Storage failures never have an output.",
    )
    high_bits: Literal["clear", "keep"] = Field(
        default="clear",
        description="Bits set above High Bit that no overlay declares (not part of the "
        "pixel value): `clear` compresses without them and the record counts them; "
        "`keep` leaves such objects uncompressed (`skipped/high_bits_set`).",
    )
    min_ratio: float = Field(
        default=1.0,
        ge=0.0,
        description="Keep the source unchanged (`skipped/no_gain`) unless the result is "
        "at least this many times smaller. 0 keeps every result.",
    )
    max_inflated_mb: int | None = Field(
        default=None,
        ge=1,
        description="Deflated sources (Deflated Explicit VR Little Endian) are inflated "
        "into a temporary file; one whose data set inflates past this many MiB is "
        "stopped there and recorded `failed/inflated_too_large`, so a deflate bomb "
        "fills neither memory nor disk. Unset: sized on each worker from its memory "
        "(physical, or the cgroup limit) divided by its worker processes and by 8, as an "
        "object read whole costs about 6 times its size (a large multi-frame one, "
        "read frame group by frame group, far less).",
    )

    _split = field_validator(
        "target", "auto_candidates", "encoding_plugin", "j2k_cr", "j2k_psnr", mode="before"
    )(_split_list)

    @field_validator("target")
    @classmethod
    def _known_targets(cls, value: list[str]) -> list[str]:
        names = [AUTO if name.strip().lower() == AUTO else get_target(name).name for name in value]
        if AUTO in names and len(names) > 1:
            raise ValueError(
                f"{AUTO!r} tries its candidates itself: give it alone, with auto_candidates"
            )
        return names

    @field_validator("auto_candidates")
    @classmethod
    def _lossless_candidates(cls, value: list[str]) -> list[str]:
        targets = [get_target(name) for name in value]
        lossy = [target.name for target in targets if target.lossy]
        if lossy:
            raise ValueError(f"auto picks among lossless targets only, not {', '.join(lossy)}")
        return list(dict.fromkeys(target.name for target in targets))

    @model_validator(mode="after")
    def _one_j2k_quality_knob(self) -> CompressionOptions:
        if self.j2k_cr and self.j2k_psnr:
            raise ValueError("give j2k_cr or j2k_psnr, not both")
        return self

    @model_validator(mode="after")
    def _guard_needs_verify(self) -> CompressionOptions:
        # the default guard lapses with verification (the record says NOT verified); a
        # guard asked for does not
        asked = self.max_error is not None or self.min_psnr not in (None, 0, DEFAULT_MIN_PSNR)
        if asked and not self.verify:
            raise ValueError("max_error and min_psnr judge the decoded result: they need verify on")
        return self

    @property
    def auto(self) -> bool:
        """The target is ``auto``: the smallest of :meth:`targets` wins, image by image."""
        return self.target == [AUTO]

    def targets(self) -> list[Target]:
        """The targets in fallback order; for ``auto``, its candidates."""
        if self.auto:
            if self.auto_candidates:
                return [get_target(name) for name in self.auto_candidates]
            return auto_candidates()
        return [get_target(name) for name in self.target]

    def plugin_for(self, target: Target) -> str:
        """The plugin the user asked for on ``target`` ('' for automatic choice)."""
        plugin_names = {p.name for p in target.plugins}
        for entry in self.encoding_plugin:
            name, _, plugin = entry.partition("=")
            if plugin and get_target(name) == target:
                return plugin
            if not plugin and name in plugin_names:
                return name
        return ""


class EngineSettings(BaseSettings, CompressionOptions):
    """:class:`CompressionOptions` read from ``DCMPRESS_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="DCMPRESS_", extra="ignore", frozen=True)

    def compression_options(self) -> CompressionOptions:
        """The plain options, detached from the environment."""
        return CompressionOptions(**self.model_dump(include=set(CompressionOptions.model_fields)))


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

    @property
    def retention_seconds(self) -> int:
        """Record retention in seconds."""
        return int(self.retention_days * 86400)
