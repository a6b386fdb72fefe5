"""S3 access with boto3: fetch, write, copy, list; errors mapped to our taxonomy.

One client per process (boto3 clients are thread-safe but must not cross a fork).
Works with AWS S3 and S3-compatible servers (``DCMPRESS_S3_ENDPOINT_URL``);
credentials come from the standard AWS chain.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

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

from worker.errors import DcmpressError, PermanentError, TransientError
from worker.settings import WorkerSettings

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
    """Turn a boto3/botocore error into a TransientError or a PermanentError."""
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
    """A downloaded object."""

    data: bytes
    etag: str
    version_id: str | None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Listed:
    """One object of a listing (or a HEAD request, which also gives its metadata)."""

    key: str
    etag: str
    size: int
    metadata: dict[str, str] = field(default_factory=dict, compare=False)


class Storage:
    """The S3 operations of the pipeline and the producer."""

    def __init__(self, settings: WorkerSettings) -> None:
        config = Config(
            connect_timeout=settings.s3_connect_timeout,
            read_timeout=settings.s3_read_timeout,
            retries={"max_attempts": settings.s3_max_attempts, "mode": "standard"},
            s3={"addressing_style": settings.s3_addressing_style},
            max_pool_connections=10,
        )
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            config=config,
        )
        chunk = settings.multipart_threshold_mb * 1024 * 1024
        self.threshold = chunk
        self.transfer = TransferConfig(
            multipart_threshold=chunk, multipart_chunksize=chunk, use_threads=False
        )

    def fetch(self, bucket: str, key: str, version_id: str | None = None) -> Fetched:
        """Download an object in one request; a large one is spooled through a
        temporary file in chunks, so the body is never buffered twice."""
        extra = {"VersionId": version_id} if version_id else {}
        try:
            response = self.client.get_object(Bucket=bucket, Key=key, **extra)
            body = response["Body"]
            try:
                if int(response.get("ContentLength", 0)) > self.threshold:
                    with tempfile.TemporaryFile() as spool:
                        for chunk in body.iter_chunks(chunk_size=8 * 1024 * 1024):
                            spool.write(chunk)
                        spool.seek(0)
                        data = spool.read()
                else:
                    data = body.read()
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            raise classify(exc, f"fetch s3://{bucket}/{key}") from exc
        return Fetched(
            data=data,
            etag=str(response.get("ETag", "")).strip('"'),
            version_id=response.get("VersionId"),
            metadata=dict(response.get("Metadata", {})),
        )

    def open_stream(self, bucket: str, key: str) -> Any:
        """A file-like, streaming body of an object (for manifests), to be closed."""
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"]
        except (ClientError, BotoCoreError) as exc:
            raise classify(exc, f"open s3://{bucket}/{key}") from exc

    def head(self, bucket: str, key: str, version_id: str | None = None) -> Listed:
        """The ETag, size and user metadata of an object (one HEAD request)."""
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

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        metadata: dict[str, str],
        if_match: str | None = None,
        content_type: str = "application/dicom",
    ) -> None:
        """Write ``data``; multipart above the threshold; conditional if ``if_match``."""
        try:
            if if_match is not None:
                # in-place replacement: only if nobody changed the source meanwhile
                self.client.put_object(
                    Bucket=bucket, Key=key, Body=data, Metadata=metadata,
                    ContentType=content_type, IfMatch=f'"{if_match}"',
                )  # fmt: skip
            elif len(data) > self.threshold:
                self.client.upload_fileobj(
                    io.BytesIO(data), bucket, key, Config=self.transfer,
                    ExtraArgs={"Metadata": metadata, "ContentType": content_type},
                )  # fmt: skip
            else:
                self.client.put_object(
                    Bucket=bucket, Key=key, Body=data, Metadata=metadata,
                    ContentType=content_type,
                )  # fmt: skip
        except (ClientError, BotoCoreError) as exc:
            raise classify(exc, f"write s3://{bucket}/{key}") from exc

    def copy(
        self,
        source_bucket: str,
        source_key: str,
        version_id: str | None,
        bucket: str,
        key: str,
        metadata: dict[str, str],
    ) -> None:
        """Server-side copy (multipart for large objects), replacing the metadata."""
        source: dict[str, str] = {"Bucket": source_bucket, "Key": source_key}
        if version_id:
            source["VersionId"] = version_id
        try:
            self.client.copy(
                source, bucket, key, Config=self.transfer,
                ExtraArgs={"Metadata": metadata, "MetadataDirective": "REPLACE"},
            )  # fmt: skip
        except (ClientError, BotoCoreError) as exc:
            raise classify(exc, f"copy to s3://{bucket}/{key}") from exc

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
                    Listed(item["Key"], str(item.get("ETag", "")).strip('"'), int(item["Size"]))
                    for item in page.get("Contents", [])
                ]
        except (ClientError, BotoCoreError) as exc:
            raise classify(exc, f"list s3://{bucket}/{prefix}") from exc
