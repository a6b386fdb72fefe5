"""One message body in, its object events out: the body loaded within its bounds and
routed to the parser for its shape."""

from __future__ import annotations

from collections.abc import Mapping

from producer.events import aws, gcs, records, seaweedfs
from producer.events.bounds import PARSING, load_body
from producer.events.fields import EventFormatError, JsonObject, ObjectEvent, RejectedRecord
from producer.events.seaweedfs import SEAWEEDFS_BUCKETS_DIR


def parse_message(
    body: str | bytes | Mapping[str, object],
    *,
    seaweedfs_buckets_dir: str = SEAWEEDFS_BUCKETS_DIR,
    rejected: list[RejectedRecord] | None = None,
) -> list[ObjectEvent]:
    """Parse one SQS message body or webhook request body into object events.

    ``body`` is the raw text or bytes (UTF-8 JSON) or an already-parsed JSON object.
    ``seaweedfs_buckets_dir`` is the filer folder holding S3 buckets, if not the default.
    Raises :class:`EventFormatError` for anything that is not a known event shape. With
    ``rejected`` given, one unreadable record of a ``Records`` message is appended there
    instead, so the records beside it are not lost with it.

    The cost is bounded: text of more than :data:`MAX_JSON_VALUES` values is refused
    before it is parsed, and a message of more than :data:`MAX_RECORDS` records as a
    whole (both are :class:`EventFormatError`).
    """
    with PARSING:
        try:
            return _dispatch(
                load_body(body), seaweedfs_buckets_dir, inside_sns=False, rejected=rejected
            )
        except EventFormatError as exc:
            reason = str(exc)
    # raised afresh: the caller keeps the error while it records the poison message, and
    # the first one's traceback holds the frames that hold everything parsed
    raise EventFormatError(reason)


def _dispatch(
    body: JsonObject,
    buckets_dir: str,
    *,
    inside_sns: bool,
    rejected: list[RejectedRecord] | None = None,
) -> list[ObjectEvent]:
    """Route one JSON object to the parser for its vendor shape."""
    if aws.is_sns_envelope(body):
        if inside_sns:
            raise EventFormatError("SNS Message holds another SNS envelope")
        inner = aws.unwrap_sns(body)
        if isinstance(inner, ObjectEvent):
            return [inner]
        return _dispatch(inner, buckets_dir, inside_sns=True, rejected=rejected)
    if aws.is_s3_test_event(body):
        return [aws.parse_s3_test_event(body)]
    if "Records" in body:
        return records.parse_records_message(body, rejected)
    if gcs.is_pubsub_push(body):
        return [gcs.parse_pubsub_push(body)]
    if gcs.is_cloudevent(body):
        return [gcs.parse_cloudevent(body)]
    if records.is_minio_key_only(body):
        return [records.parse_minio_key_only(body)]
    if aws.is_eventbridge(body):
        return [aws.parse_eventbridge(body)]
    notification = seaweedfs.find_seaweedfs_notification(body)
    if notification is not None:
        return seaweedfs.parse_seaweedfs(body, notification, buckets_dir)
    fields = ", ".join(sorted(str(name)[:40] for name in body)[:8]) or "none"
    raise EventFormatError(f"not a storage event notification this parser knows (fields: {fields})")
