"""The per-object data path through obstore (Rust ``object_store``): HEAD, GET, PUT.

boto3 costs a worker about 5 ms of CPU for the HEAD, GET and PUT of a 0.5 MB object,
obstore about 1.2 (measured against SeaweedFS, ``docs/performance.md``); its calls
release the GIL. :class:`~worker.runtime.storage.Storage` sends those three requests
here and keeps boto3 for the rest (listings, server-side copies, manifests), and for
what obstore cannot do or say precisely:

* a key obstore cannot address as it is (:func:`addressable`: a leading or trailing
  ``/`` it would silently drop, ``//``, a ``.`` or ``..`` segment, a control
  character) goes through boto3;
* an object whose stored metadata obstore cannot read (bytes outside ASCII, which
  some servers keep) is read through boto3 (:class:`Unsupported`);
* errors: obstore types a 404, a 403 and a 412; anything else it reports as one
  generic error after its own retries. Here that is a TransientError, or a
  PermanentError for a 4xx status named in its text (:func:`classify`).

What is kept as boto3 keeps it: the AWS credential chain (the provider below asks
boto3's session, so profiles, SSO, web identity, instance and pod roles and their
refresh behave alike), ``AWS_CA_BUNDLE`` (its PEM handed to the client), path-style
or virtual-host addressing, user metadata, conditional writes (``If-Match``), and
writes sent once: the writing store never retries a request by itself, so a PUT whose
answer was lost is looked for (``Storage._write_once``), never resent blindly.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    InvalidPathError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from worker.errors import DcmpressError, PermanentError, TransientError

if TYPE_CHECKING:
    import boto3

    from worker.settings import WorkerSettings

# Attributes obstore returns that are headers of their own, not user metadata
_STANDARD_ATTRIBUTES = frozenset(
    {"content-type", "content-encoding", "content-disposition", "content-language",
     "cache-control"}
)  # fmt: skip
_STATUS = re.compile(r"(?i)status(?: code)?:? (\d{3})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CREDENTIALS_FOR = dt.timedelta(minutes=5)  # then boto3's session is asked again


SPOOL_CHUNK = 8 * 1024 * 1024  # bytes a large download is written to its file by


def spool(chunks: Iterable[Any]) -> BinaryIO:
    """A temporary file holding ``chunks`` (buffers), read from its start; closed (and
    so removed) if a chunk fails to arrive."""
    data = tempfile.TemporaryFile(prefix="dcmpress-fetch-")  # noqa: SIM115
    try:
        for chunk in chunks:
            data.write(chunk)
        data.flush()
        data.seek(0)
    except BaseException:
        data.close()
        raise
    return data


class Unsupported(Exception):
    """obstore cannot do this one request (an odd key, unreadable metadata): ask boto3."""


def addressable(key: str) -> bool:
    """True if obstore stores and reads ``key`` as it is (object_store's paths have no
    empty, ``.`` or ``..`` segments, and no control characters)."""
    if not key or key.startswith("/") or key.endswith("/") or _CONTROL.search(key):
        return False
    return all(part not in ("", ".", "..") for part in key.split("/"))


def status_of(exc: BaseException) -> int:
    """The HTTP status obstore's error names in its text; 0 if none."""
    match = _STATUS.search(str(exc))
    return int(match.group(1)) if match else 0


def classify(exc: Exception, action: str) -> DcmpressError:
    """Turn an obstore error into our taxonomy (as storage.classify does boto3's);
    raise Unsupported for what boto3 should try instead."""
    text = " ".join(str(exc).split())[:400]
    if isinstance(exc, FileNotFoundError | NotFoundError):
        return PermanentError("source_missing", f"{action}: 404 {text}")
    if "credential provider" in str(exc):
        # boto3's session, asked for credentials (SessionCredentials): none at all is a
        # configuration error, as boto3 says; a refresh that failed (STS away) is not
        if "storage_misconfigured" in str(exc) or "PermanentError" in str(exc):
            return PermanentError("storage_misconfigured", f"{action}: {text}")
        return TransientError(f"{action}: {text}")
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return PermanentError("access_denied", f"{action}: 403 {text}")
    if isinstance(exc, PreconditionError):
        return PermanentError("source_changed", f"{action}: 412 {text}")
    if isinstance(exc, AlreadyExistsError):
        return PermanentError("storage_rejected", f"{action}: 409 {text}")
    if isinstance(exc, InvalidPathError | ValueError) or "InvalidMetadata" in str(exc):
        raise Unsupported(text) from exc
    status = status_of(exc)
    if 400 <= status < 500 and status not in (408, 429):
        return PermanentError("storage_rejected", f"{action}: {status} {text}")
    return TransientError(f"{action}: {text}")  # 5xx, 429, resets, timeouts, refused


def answered_no_write(exc: BaseException) -> bool:
    """True if the server answered that it took no write (429, 503)."""
    return status_of(exc) in (429, 503)


def user_metadata(attributes: dict[str, Any]) -> dict[str, str]:
    """The user metadata (``x-amz-meta-*``, keys lower-case) among ``attributes``."""
    return {
        name.lower(): str(value)
        for name, value in attributes.items()
        if name.lower() not in _STANDARD_ATTRIBUTES
    }


class SessionCredentials:
    """obstore's credential provider: boto3's session, asked every few minutes (boto3
    refreshes expiring credentials itself, so its whole chain applies)."""

    def __init__(self, session: boto3.session.Session) -> None:
        self.session = session

    def __call__(self) -> dict[str, Any]:
        credentials = self.session.get_credentials()
        if credentials is None:
            raise PermanentError(
                "storage_misconfigured", "no S3 credentials found (environment, ~/.aws, role)"
            )
        frozen = credentials.get_frozen_credentials()
        return {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "token": frozen.token,
            "expires_at": dt.datetime.now(dt.UTC) + CREDENTIALS_FOR,
        }


@dataclass
class Got:
    """A GET's answer: the body (bytes, or a spool file from its start), ETag, version,
    user metadata; a HEAD's the same with no body and its size."""

    data: bytes | BinaryIO
    etag: str
    version_id: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    size: int = 0


class LeanS3:
    """HEAD, GET and PUT through obstore, one store per bucket and use (reading with
    retries, writing without), made on first use in this process."""

    def __init__(self, settings: WorkerSettings, session: boto3.session.Session) -> None:
        self.endpoint = settings.s3_endpoint_url
        self.region = settings.s3_region or session.region_name or "us-east-1"
        self.style = settings.s3_addressing_style
        self.attempts = settings.s3_max_attempts
        self.credentials = SessionCredentials(session)
        options: dict[str, Any] = {
            "connect_timeout": dt.timedelta(seconds=settings.s3_connect_timeout),
            "read_timeout": dt.timedelta(seconds=settings.s3_read_timeout),
            # object_store's default is 30 s for a whole request, a large object's too
            "timeout": dt.timedelta(seconds=settings.task_time_limit),
            "allow_http": bool(self.endpoint and self.endpoint.startswith("http://")),
        }
        bundle = os.environ.get("AWS_CA_BUNDLE")
        if bundle:
            with open(bundle, "rb") as pem:  # botocore's custom CA bundle, for obstore too
                options["root_certificate"] = pem.read()
        self.options = options
        self.stores: dict[tuple[str, bool], S3Store] = {}

    def store(self, bucket: str, writing: bool = False) -> S3Store:
        """The store of ``bucket``; ``writing``: one that never resends a request."""
        slot = (bucket, writing)
        if slot not in self.stores:
            retries = 0 if writing else self.attempts - 1
            virtual = self.style == "virtual" or (self.style == "auto" and not self.endpoint)
            endpoint = self.endpoint
            if endpoint and virtual:  # object_store wants the bucket in a virtual endpoint
                scheme, _, host = endpoint.partition("://")
                endpoint = f"{scheme}://{bucket}.{host}"
            self.stores[slot] = S3Store(
                bucket,
                endpoint=endpoint,
                region=self.region,
                virtual_hosted_style_request=virtual,
                credential_provider=self.credentials,  # type: ignore[arg-type]
                client_options=self.options,  # type: ignore[arg-type]
                retry_config={
                    "max_retries": retries,
                    "backoff": {
                        "init_backoff": dt.timedelta(milliseconds=100),
                        "max_backoff": dt.timedelta(seconds=20),
                        "base": 2,
                    },
                    "retry_timeout": dt.timedelta(minutes=3),
                },
            )
        return self.stores[slot]

    def get(
        self, bucket: str, key: str, version_id: str | None, spool_above: int, action: str
    ) -> Got:
        """GET the object; one at least ``spool_above`` bytes long into a temporary file."""
        options: dict[str, Any] = {"version": version_id} if version_id else {}
        data: bytes | BinaryIO = b""
        try:
            result = obstore.get(self.store(bucket), key, options=options or None)  # type: ignore[arg-type]
            meta = result.meta
            if meta["size"] >= spool_above:
                data = spool(result.stream(min_chunk_size=SPOOL_CHUNK))
            else:
                data = bytes(result.bytes())
            attributes = dict(result.attributes)
        except Exception as exc:
            if not isinstance(data, bytes):
                data.close()
            if isinstance(exc, DcmpressError | Unsupported):
                raise
            raise classify(exc, action) from exc
        return Got(
            data=data,
            etag=(meta.get("e_tag") or "").strip('"'),
            version_id=meta.get("version"),
            metadata=user_metadata(attributes),
            size=int(meta["size"]),
        )

    def head(self, bucket: str, key: str, version_id: str | None, action: str) -> Got:
        """HEAD the object: ETag, size and user metadata (a GET's options with ``head``,
        which obstore answers with the attributes its own HEAD leaves out)."""
        options: dict[str, Any] = {"head": True}
        if version_id:
            options["version"] = version_id
        try:
            result = obstore.get(self.store(bucket), key, options=options)  # type: ignore[arg-type]
            meta, attributes = result.meta, dict(result.attributes)
        except Exception as exc:
            raise classify(exc, action) from exc
        return Got(
            data=b"",
            etag=(meta.get("e_tag") or "").strip('"'),
            version_id=meta.get("version"),
            metadata=user_metadata(attributes),
            size=int(meta["size"]),
        )

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes | BinaryIO,
        metadata: dict[str, str],
        content_type: str,
        if_match: str | None,
        multipart_above: int,
    ) -> None:
        """One PUT (multipart above ``multipart_above``, one part at a time, unless
        conditional); raises obstore's own error for Storage._write_once to judge, or
        Unsupported for what obstore refused before sending anything."""
        size = len(data) if isinstance(data, bytes) else data.seek(0, os.SEEK_END)
        if not isinstance(data, bytes):
            data.seek(0)
        attributes: dict[str, str] = {"Content-Type": content_type, **metadata}
        store = self.store(bucket, writing=True)
        try:
            if if_match is not None:
                # in-place replacement, only if nobody changed the source meanwhile
                obstore.put(
                    store, key, data, attributes=attributes, mode={"e_tag": f'"{if_match}"'},
                    use_multipart=False,
                )  # fmt: skip
                return
            obstore.put(
                store, key, data, attributes=attributes, use_multipart=size > multipart_above,
                chunk_size=max(multipart_above, 5 * 1024 * 1024), max_concurrency=1,
            )  # fmt: skip
        except (ValueError, InvalidPathError) as exc:
            # refused before anything was sent (a path, an argument): boto3 writes it
            raise Unsupported(str(exc)) from exc
