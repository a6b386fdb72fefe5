"""``Records`` messages: the AWS S3 record shape, as AWS, MinIO, Ceph and other
``<vendor>:s3`` storages send it, and MinIO's record-less fallback.

AWS S3 notifications (SQS, SNS, Lambda destinations)
    ``{"Records": [{"eventVersion": "2.x", "eventSource": "aws:s3", "eventName":
    "ObjectCreated:Put", "s3": {"bucket": {"name"}, "object": {"key", "size", "eTag",
    "versionId", "sequencer"}}}]}``. Any 2.x ``eventVersion`` is read (2.1-2.3, and the
    unified 2.4+ versions); AWS advises an equal-to test on the major version, so 3.x is
    refused. ``eventName`` has no ``s3:`` prefix. The key is form-URL-encoded (a space is
    ``+``, a plus is ``%2B``) and is decoded once with ``unquote_plus``.
    Source: Amazon S3 User Guide, "Event message structure"
    (notification-content-structure).

MinIO bucket notifications (webhook and the other targets)
    ``{"EventName": "s3:ObjectCreated:Put", "Key": "bucket/key", "Records": [...]}``, the
    records in AWS shape with ``eventSource: "minio:s3"``, ``eventVersion: "2.0"``, an
    ``s3:``-prefixed ``eventName``, numeric ``size``, ``userMetadata``/``contentType``.
    Records win: their key is ``url.QueryEscape`` of the object name (``/`` becomes
    ``%2F``, space ``+``), decoded once. The top-level ``Key`` is *already decoded*
    (``bucket + "/" + url.QueryUnescape(record key)``), so it is only a fallback when no
    record is present, and is never decoded again. Very old releases named the top-level
    field ``EventType``. ``s3:ObjectCreated:PutTagging/DeleteTagging/PutRetention/
    PutLegalHold`` change metadata only, so they are ``other``. Sources: MinIO docs
    "Bucket notifications" / "Publish Events to Webhook"; MinIO source
    ``internal/event/target/webhook.go`` (``send``) and ``cmd/event-notification.go``
    (``ToEvent``); minio/minio issues #7665 and #15200 (real payloads).

Ceph RGW bucket notifications (HTTP, AMQP, Kafka endpoints)
    AWS-shaped records with ``eventSource: "ceph:s3"``, ``eventName`` with or without
    ``s3:``, ``size`` as a number or a string, ``eTag`` (``etag`` in some releases),
    ``versionId: ""`` when unversioned, and extra ``opaqueData``, ``metadata``, ``tags``,
    ``bucket.id``. Lifecycle names ``ObjectLifecycle:Expiration:Current|DeleteMarker``
    mean the object is gone; ``...:NonCurrent``, ``...:AbortMultipartUpload`` and
    transitions are ``other``. KEY ENCODING: RGW puts the raw object name in the record
    (``event.object_key = ... obj->get_name()`` in ``src/rgw/rgw_notify.cc``), and users
    see ``recordings/x.mp4`` unencoded (suitenumerique/meet PR #1455), so Ceph keys are
    taken as sent, never decoded. Sources: Ceph docs ``doc/radosgw/notifications.rst``
    ("Events"); IBM Storage Ceph "Event record"; ``rgw_pubsub.cc`` (record ``dump``).

Other ``<vendor>:s3`` event sources
    Read as AWS records (decoded once, as the S3 format prescribes); ``source`` is the
    vendor part of ``eventSource``. A record whose ``eventSource`` is not ``*:s3`` (for
    example a whole Lambda SQS event, ``aws:sqs``) is refused.
"""

from __future__ import annotations

from urllib.parse import unquote_plus

from producer.events.bounds import MAX_RECORDS
from producer.events.fields import (
    EventFormatError,
    JsonObject,
    Kind,
    ObjectEvent,
    RejectedRecord,
    as_object,
    byte_count,
    informational,
    json_type,
    optional_str,
    quoted,
    required_str,
    unquoted_etag,
)

# Event sources whose record keys are the raw object name, not URL-encoded (see above).
_RAW_KEY_SOURCES = frozenset({"ceph"})

# MinIO files these under ObjectCreated although the object's bytes did not change.
_METADATA_ONLY_CREATED = frozenset({"PutTagging", "DeleteTagging", "PutRetention", "PutLegalHold"})

# Ceph's lifecycle names for "the current object is gone".
_CEPH_LIFECYCLE_REMOVALS = frozenset(
    {"ObjectLifecycle:Expiration:Current", "ObjectLifecycle:Expiration:DeleteMarker"}
)


def is_minio_key_only(body: JsonObject) -> bool:
    """A MinIO log that names its object in the top-level ``Key``."""
    return "Key" in body and ("EventName" in body or "EventType" in body)


def parse_records_message(
    body: JsonObject, rejected: list[RejectedRecord] | None
) -> list[ObjectEvent]:
    """A ``Records`` message (AWS, MinIO, Ceph); MinIO's top-level Key only as a fallback.

    With ``rejected`` given, an unreadable record is appended there instead of failing
    the message, unless it is the only record or no record could be read.
    """
    records = body.get("Records")
    if (records is None or records == []) and "Key" in body:
        return [parse_minio_key_only(body)]
    if not isinstance(records, list):
        raise EventFormatError(f"Records is {json_type(records)}, expected an array")
    if len(records) > MAX_RECORDS:
        raise EventFormatError(
            f"Records holds {len(records):,} records, more than any storage sends in one "
            f"message ({MAX_RECORDS:,})"
        )
    events = []
    for index, record in enumerate(records):
        where = f"Records[{index}]"
        try:
            events.append(_parse_record(record, where))
        except EventFormatError as exc:
            if rejected is None or len(records) == 1:
                raise  # a message of one bad record is a poison message as a whole
            rejected.append(RejectedRecord(where, str(exc), record))
    if rejected and not events:
        raise EventFormatError("no record of the message could be read: " + rejected[0].reason)
    return events


def parse_minio_key_only(body: JsonObject) -> ObjectEvent:
    """A MinIO log without records: ``Key`` is ``bucket/name``, already decoded by MinIO."""
    name_field = "EventName" if "EventName" in body else "EventType"
    event_name = required_str(body, name_field, "message")
    bucket_and_key = required_str(body, "Key", "message")
    bucket, _, key = bucket_and_key.partition("/")
    if not bucket or not key:
        raise EventFormatError(f"message.Key is {quoted(bucket_and_key)}, expected 'bucket/key'")
    return ObjectEvent(
        _s3_event_kind(event_name), "minio", event_name, bucket, key, None, None, None
    )


def _s3_event_kind(event_name: str) -> Kind:
    """Classify an S3-style event name, with or without the ``s3:`` prefix."""
    name = event_name.removeprefix("s3:")
    family, _, detail = name.partition(":")
    if family == "ObjectCreated":
        return "other" if detail in _METADATA_ONLY_CREATED else "created"
    if family in ("ObjectRemoved", "LifecycleExpiration") or name in _CEPH_LIFECYCLE_REMOVALS:
        return "removed"
    return "other"  # restore, replication, transition, tiering, tagging, ACL, access...


def _check_event_version(record: JsonObject, where: str) -> None:
    """Refuse a major version other than 2: AWS changes the major only to break the shape."""
    version = record.get("eventVersion")
    if version is None:
        return
    if not isinstance(version, str) or version.split(".", 1)[0] != "2":
        raise EventFormatError(f"{where}.eventVersion is {quoted(version)}, expected a 2.x version")


def _parse_record(value: object, where: str) -> ObjectEvent:
    """One AWS-shaped record; the event source decides how its key is encoded."""
    record = as_object(value, where)
    event_source = required_str(record, "eventSource", where)
    vendor, _, service = event_source.partition(":")
    if service != "s3" or not vendor:
        raise EventFormatError(
            f"{where}.eventSource is {quoted(event_source)}, not an S3 event source "
            "(pass the queue message body, not a whole Lambda event)"
        )
    _check_event_version(record, where)
    event_name = required_str(record, "eventName", where)
    s3 = as_object(record.get("s3"), f"{where}.s3")
    bucket_info = as_object(s3.get("bucket"), f"{where}.s3.bucket")
    bucket = required_str(bucket_info, "name", f"{where}.s3.bucket")
    obj = as_object(s3.get("object"), f"{where}.s3.object")
    raw_key = required_str(obj, "key", f"{where}.s3.object")
    key = (
        raw_key if vendor in _RAW_KEY_SOURCES else _form_decoded(raw_key, f"{where}.s3.object.key")
    )
    etag_field = "eTag" if "eTag" in obj else "etag"  # some Ceph releases spell it etag
    return ObjectEvent(
        kind=_s3_event_kind(event_name),
        source=vendor,
        event_name=event_name,
        bucket=bucket,
        key=key,
        size=byte_count(obj.get("size"), f"{where}.s3.object.size"),
        etag=unquoted_etag(obj.get(etag_field), f"{where}.s3.object.{etag_field}"),
        version_id=optional_str(obj.get("versionId"), f"{where}.s3.object.versionId"),
        sequencer=informational(obj.get("sequencer")),
    )


def _form_decoded(raw: str, where: str) -> str:
    """Decode a form-URL-encoded key exactly once (``+`` is a space, ``%2B`` a plus)."""
    try:
        return unquote_plus(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise EventFormatError(f"{where} {quoted(raw)} is not percent-encoded UTF-8") from exc
