"""S3 access with boto3: fetch, write, copy, list; errors mapped to our taxonomy.

One client per process (boto3 clients are thread-safe but must not cross a fork).
Works with AWS S3 and S3-compatible servers (``DCMPRESS_S3_ENDPOINT_URL``);
credentials come from the standard AWS chain.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    InvalidRegionError,
    InvalidS3AddressingStyleError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
    UnknownSignatureVersionError,
)
from obstore.exceptions import BaseError as ObstoreError

from worker.codec.frames import FRAMES_ABOVE
from worker.errors import DcmpressError, PermanentError, TransientError
from worker.retry import Backoff
from worker.runtime import lean_s3
from worker.runtime.contract import META_WRITE_ID
from worker.runtime.lean_s3 import SPOOL_CHUNK, LeanS3, Unsupported, addressable, spool
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "OperationAborted", "RequestLimitExceeded",
}  # fmt: skip
_PERMANENT_CODES = {
    "NoSuchKey": "source_missing",
    "NotFound": "source_missing",
    "404": "source_missing",
    "AccessDenied": "access_denied",
    "403": "access_denied",
    "PreconditionFailed": "source_changed",
    "412": "source_changed",
    "InvalidObjectState": "source_unavailable",  # e.g. archived in Glacier
}


# botocore errors that say the client is configured wrongly, not that S3 was unhappy
_CONFIGURATION_ERRORS = (
    NoCredentialsError,
    PartialCredentialsError,
    NoRegionError,
    ParamValidationError,
    InvalidRegionError,
    InvalidS3AddressingStyleError,
    UnknownSignatureVersionError,
    ProfileNotFound,
)


def classify(exc: Exception, action: str) -> DcmpressError:
    """Turn a boto3/botocore (or obstore) error into a TransientError or a
    PermanentError."""
    if isinstance(exc, ObstoreError):
        return lean_s3.classify(exc, action)
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"{action}: {code or status} {exc.response.get('Error', {}).get('Message', '')}"
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientError(message.strip())
        outcome = _PERMANENT_CODES.get(code) or _PERMANENT_CODES.get(str(status))
        return PermanentError(outcome or "storage_rejected", message.strip())
    if isinstance(exc, _CONFIGURATION_ERRORS):
        # no retry makes credentials appear or a parameter valid: permanent at once
        return PermanentError("storage_misconfigured", f"{action}: {exc}")
    if isinstance(exc, BotoCoreError):
        return TransientError(f"{action}: {exc}")  # connection reset, timeout, DNS...
    raise exc


@dataclass
class Fetched:
    """A downloaded object: its bytes, or for a large one a temporary file that
    :meth:`close` removes."""

    data: bytes | BinaryIO
    etag: str
    version_id: str | None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """The object's length in bytes."""
        if isinstance(self.data, bytes):
            return len(self.data)
        return self.data.seek(0, io.SEEK_END)

    def close(self) -> None:
        """Remove the temporary file of a large object."""
        if not isinstance(self.data, bytes):
            self.data.close()


@dataclass(frozen=True)
class Listed:
    """One object of a listing (or a HEAD request, which also gives its metadata)."""

    key: str
    etag: str
    size: int
    metadata: dict[str, str] = field(default_factory=dict, compare=False)
    modified: float = field(default=0.0, compare=False)  # LastModified, epoch seconds


def _epoch(when: Any) -> float:
    """A listing's LastModified (a datetime) in epoch seconds; 0 if absent."""
    return float(when.timestamp()) if hasattr(when, "timestamp") else 0.0


def _answered_no_write(exc: Exception) -> bool:
    """True if S3 answered that it was too busy to take the write (503, 429).

    Anything else - a connection reset, a read timeout, a 500, even a 412 to a resent
    conditional write - may have come after the server stored the object: before
    writing again or giving up, look whether it did.
    """
    if isinstance(exc, ObstoreError):
        return lean_s3.answered_no_write(exc)
    if not isinstance(exc, ClientError):
        return False
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return status in (429, 503)


def _cannot_read(bucket: str, key: str) -> None:
    log.warning(
        "may not read s3://%s/%s: outputs written before cannot be recognised (grant "
        "s3:GetObject on the destination)", bucket, key,
    )  # fmt: skip


class Storage:
    """The S3 operations of the pipeline and the producer."""

    def __init__(self, settings: WorkerSettings, serves_objects: bool = False) -> None:
        """``serves_objects``: this is a pool process's client, whose objects' HEAD, GET
        and PUT go through obstore when the settings say so (lean_s3.py). Only there:
        obstore's runtime does not survive a fork, and a Celery worker's main process,
        which also calls storage (the feeder, the archiver, the breaker's probe), forks
        pool processes at any time (a replaced child's first request would hang)."""
        session = boto3.session.Session()

        def client(attempts: int) -> Any:
            config = Config(
                connect_timeout=settings.s3_connect_timeout,
                read_timeout=settings.s3_read_timeout,
                retries={"total_max_attempts": attempts, "mode": "standard"},
                s3={"addressing_style": settings.s3_addressing_style},
                max_pool_connections=10,
            )
            return session.client(
                "s3",
                endpoint_url=settings.s3_endpoint_url,
                region_name=settings.s3_region,
                config=config,
            )

        self.client: Any = client(settings.s3_max_attempts)
        # Writes are never resent blindly: botocore resends a PUT whose answer was lost
        # although the server stored it (a second write of the same output: a new
        # version, a second event downstream). _write_once looks first.
        self.writer: Any = client(1)
        # a write S3 answered with an error is tried again after up to 2, 4, 8... 20 s
        self.write_retries = Backoff(attempts=settings.s3_max_attempts, base=2.0, cap=20.0)
        chunk = settings.multipart_threshold_mb * 1024 * 1024
        self.threshold = chunk
        # objects at least this large are downloaded to a file, where the engine takes
        # a large multi-frame object a group of frames at a time
        self.spool_above = min(chunk, FRAMES_ABOVE)
        self.transfer = TransferConfig(
            multipart_threshold=chunk, multipart_chunksize=chunk, use_threads=False
        )
        # HEAD, GET and PUT of objects through obstore (lean_s3.py); None: all boto3
        lean = serves_objects and settings.s3_client == "obstore"
        self.lean = LeanS3(settings, session) if lean else None

    def _lean_for(self, key: str) -> LeanS3 | None:
        """The lean client if it may serve ``key`` (lean_s3.addressable), else None."""
        return self.lean if self.lean is not None and addressable(key) else None

    def fetch(self, bucket: str, key: str, version_id: str | None = None) -> Fetched:
        """Download an object in one request; a large one (the multipart threshold or
        ``FRAMES_ABOVE``, whichever is smaller) into a temporary file, in chunks: the
        engine reads it from there, and a large multi-frame object is never in memory
        whole."""
        lean = self._lean_for(key)
        if lean is not None:
            with contextlib.suppress(Unsupported):  # (boto3 below reads it)
                got = lean.get(bucket, key, version_id, self.spool_above,
                               f"fetch s3://{bucket}/{key}")  # fmt: skip
                return Fetched(got.data, got.etag, got.version_id, got.metadata)
        extra = {"VersionId": version_id} if version_id else {}
        data: bytes | BinaryIO = b""
        try:
            response = self.client.get_object(Bucket=bucket, Key=key, **extra)
            body = response["Body"]
            try:
                if int(response.get("ContentLength", 0)) >= self.spool_above:
                    data = spool(body.iter_chunks(chunk_size=SPOOL_CHUNK))
                else:
                    data = body.read()
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            if not isinstance(data, bytes):
                data.close()
            raise classify(exc, f"fetch s3://{bucket}/{key}") from exc
        except BaseException:
            if not isinstance(data, bytes):
                data.close()
            raise
        return Fetched(
            data=data,
            etag=str(response.get("ETag", "")).strip('"'),
            version_id=response.get("VersionId"),
            metadata=dict(response.get("Metadata", {})),
        )

    def read_range(self, bucket: str, key: str, length: int, start: int = 0) -> bytes:
        """Up to ``length`` bytes of an object from ``start`` (one ranged GET): a header
        without the Pixel Data behind it. Shorter if the object is."""
        try:
            response = self.client.get_object(
                Bucket=bucket, Key=key, Range=f"bytes={start}-{start + max(length, 1) - 1}"
            )
            body = response["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if status == 416:  # a range beyond an empty object: nothing to read
                return b""
            raise classify(exc, f"read s3://{bucket}/{key}") from exc
        except BotoCoreError as exc:
            raise classify(exc, f"read s3://{bucket}/{key}") from exc

    def open_stream(self, bucket: str, key: str) -> Any:
        """A file-like, streaming body of an object (for manifests), to be closed."""
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"]
        except (ClientError, BotoCoreError) as exc:
            raise classify(exc, f"open s3://{bucket}/{key}") from exc

    def head(self, bucket: str, key: str, version_id: str | None = None) -> Listed:
        """The ETag, size and user metadata of an object (one HEAD request)."""
        lean = self._lean_for(key)
        if lean is not None:
            with contextlib.suppress(Unsupported):
                got = lean.head(bucket, key, version_id, f"head s3://{bucket}/{key}")
                return Listed(key=key, etag=got.etag, size=got.size, metadata=got.metadata)
        extra = {"VersionId": version_id} if version_id else {}
        try:
            head = self.client.head_object(Bucket=bucket, Key=key, **extra)
        except (ClientError, BotoCoreError) as exc:
            raise classify(exc, f"head s3://{bucket}/{key}") from exc
        return Listed(
            key=key,
            etag=str(head.get("ETag", "")).strip('"'),
            size=int(head.get("ContentLength", 0) or 0),
            metadata=dict(head.get("Metadata", {})),
        )

    def output_metadata(self, bucket: str, key: str) -> dict[str, str] | None:
        """The user metadata of the object at ``key``; None if there is none, or if
        this worker may not read it (a write-only destination: nothing can be told)."""
        lean = self._lean_for(key)
        if lean is not None:
            with contextlib.suppress(Unsupported):
                try:
                    return lean.head(bucket, key, None, f"head s3://{bucket}/{key}").metadata
                except PermanentError as exc:
                    if exc.code == "source_missing":
                        return None
                    if exc.code == "access_denied":
                        _cannot_read(bucket, key)
                        return None
                    raise
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if status == 404:
                return None
            if status == 403:
                _cannot_read(bucket, key)
                return None
            raise classify(exc, f"head s3://{bucket}/{key}") from exc
        except BotoCoreError as exc:
            raise classify(exc, f"head s3://{bucket}/{key}") from exc
        return dict(head.get("Metadata", {}))

    def _write_once(
        self, bucket: str, key: str, metadata: dict[str, str], action: str,
        write: Callable[[dict[str, str]], None],
    ) -> None:  # fmt: skip
        """Run ``write(metadata)`` until it succeeds, never twice for one success.

        The metadata carries a fresh write id. After a failure that may have followed
        a stored write (a reset, a timeout, a 5xx), the object is looked at: if it
        carries our write id the write took place, and is not made again.
        """
        metadata = {**metadata, META_WRITE_ID: uuid.uuid4().hex}
        for attempt in itertools.count(1):  # ends in a return or a raise (its last try)
            try:
                write(metadata)
                return
            except (ClientError, BotoCoreError, ObstoreError) as exc:
                error = classify(exc, action)
                if not _answered_no_write(exc):
                    try:
                        landed = self._landed(bucket, key, metadata[META_WRITE_ID])
                    except DcmpressError as unknown:
                        # cannot tell whether it landed: writing again could store it
                        # twice. The task's retry looks for the output before anything
                        # else (pipeline.py) and records it if it is there
                        raise TransientError(
                            f"{action}: failed ({error}), and whether it was stored "
                            f"cannot be checked now ({unknown})"
                        ) from exc
                    if landed:
                        log.info("%s: stored although the answer was lost; not written "
                                 "again", action)  # fmt: skip
                        return
                if not isinstance(error, TransientError) or self.write_retries.last(attempt):
                    raise error from exc
                time.sleep(self.write_retries.delay(attempt))

    def _landed(self, bucket: str, key: str, write_id: str) -> bool:
        """True if the object carries ``write_id``; looked at up to three times
        within a second: a server without strict read-after-write consistency may show
        a write a moment after answering it, and a write stored twice costs more than
        a pause (one CI run, on a loaded machine, stored an output twice)."""
        for pause in (0.0, 0.25, 0.75):
            time.sleep(pause)
            landed = self.output_metadata(bucket, key)
            if landed is not None and landed.get(META_WRITE_ID) == write_id:
                return True
        return False

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes | BinaryIO,
        metadata: dict[str, str],
        if_match: str | None = None,
        content_type: str = "application/dicom",
    ) -> None:
        """Write ``data`` (bytes, or a seekable file read from its start) once;
        multipart above the threshold; conditional if ``if_match``."""
        size = len(data) if isinstance(data, bytes) else data.seek(0, io.SEEK_END)
        lean = self._lean_for(key)

        def write(metadata: dict[str, str]) -> None:
            if not isinstance(data, bytes):
                data.seek(0)  # every attempt sends the whole file
            if lean is not None:
                try:
                    lean.put(bucket, key, data, metadata, content_type, if_match, self.threshold)
                    return
                except Unsupported:  # refused before sending: boto3 below writes it
                    if not isinstance(data, bytes):
                        data.seek(0)
            if if_match is not None:
                # in-place replacement: only if nobody changed the source meanwhile
                self.writer.put_object(
                    Bucket=bucket, Key=key, Body=data, Metadata=metadata,
                    ContentType=content_type, IfMatch=f'"{if_match}"',
                )  # fmt: skip
            elif size > self.threshold:
                # parts may be sent again (they are not objects until the upload completes)
                self.client.upload_fileobj(
                    io.BytesIO(data) if isinstance(data, bytes) else data, bucket, key,
                    Config=self.transfer,
                    ExtraArgs={"Metadata": metadata, "ContentType": content_type},
                )  # fmt: skip
            else:
                self.writer.put_object(
                    Bucket=bucket, Key=key, Body=data, Metadata=metadata,
                    ContentType=content_type,
                )  # fmt: skip

        self._write_once(bucket, key, metadata, f"write s3://{bucket}/{key}", write)

    def copy(
        self,
        source_bucket: str,
        source_key: str,
        version_id: str | None,
        bucket: str,
        key: str,
        metadata: dict[str, str],
    ) -> None:
        """Server-side copy (multipart for large objects), replacing the metadata; once."""
        source: dict[str, str] = {"Bucket": source_bucket, "Key": source_key}
        if version_id:
            source["VersionId"] = version_id

        def write(metadata: dict[str, str]) -> None:
            self.writer.copy(
                source, bucket, key, Config=self.transfer,
                ExtraArgs={"Metadata": metadata, "MetadataDirective": "REPLACE"},
            )  # fmt: skip

        self._write_once(bucket, key, metadata, f"copy to s3://{bucket}/{key}", write)

    def clock(self, bucket: str, prefix: str = "") -> float:
        """The storage server's time now (the Date of a one-key listing), the clock its
        LastModified stamps are in; this machine's time if the answer has no Date."""
        try:
            reply = self.client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        except (ClientError, BotoCoreError) as exc:
            raise classify(exc, f"list s3://{bucket}/{prefix}") from exc
        date = reply.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date", "")
        try:
            return parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return time.time()

    def list_pages(
        self, bucket: str, prefix: str, start_after: str = "", page_size: int = 1000
    ) -> Iterator[list[Listed]]:
        """List ``prefix`` page by page, resuming after ``start_after``."""
        paginator = self.client.get_paginator("list_objects_v2")
        params: dict[str, Any] = {
            "Bucket": bucket, "Prefix": prefix, "PaginationConfig": {"PageSize": page_size},
        }  # fmt: skip
        if start_after:
            params["StartAfter"] = start_after
        try:
            for page in paginator.paginate(**params):
                yield [
                    Listed(
                        item["Key"],
                        str(item.get("ETag", "")).strip('"'),
                        int(item["Size"]),
                        modified=_epoch(item.get("LastModified")),
                    )
                    for item in page.get("Contents", [])
                ]
        except (ClientError, BotoCoreError) as exc:
            raise classify(exc, f"list s3://{bucket}/{prefix}") from exc
