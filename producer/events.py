"""Object-storage event notifications, parsed into one normalised form (no I/O here).

:func:`parse_message` takes one message body exactly as it came off an SQS queue or an
HTTP webhook and returns zero or more :class:`ObjectEvent`. Anything it cannot read
with certainty raises :class:`EventFormatError`, naming what was wrong, so the caller
can dead-letter the message instead of guessing.

What is supported, and where each shape was learnt
==================================================

AWS S3 notifications (SQS, SNS, Lambda destinations)
    ``{"Records": [{"eventVersion": "2.x", "eventSource": "aws:s3", "eventName":
    "ObjectCreated:Put", "s3": {"bucket": {"name"}, "object": {"key", "size", "eTag",
    "versionId", "sequencer"}}}]}``. Any 2.x ``eventVersion`` is read (2.1-2.3, and the
    unified 2.4+ versions); AWS advises an equal-to test on the major version, so 3.x is
    refused. ``eventName`` has no ``s3:`` prefix. The key is form-URL-encoded (a space is
    ``+``, a plus is ``%2B``) and is decoded once with ``unquote_plus``.
    Source: Amazon S3 User Guide, "Event message structure"
    (notification-content-structure).

AWS S3 test event
    ``{"Service": "Amazon S3", "Event": "s3:TestEvent", "Time", "Bucket", "RequestId",
    "HostId"}``, sent when a notification configuration is saved: kind ``test``.
    Source: the same page, "Example messages".

SNS envelope (SNS -> SQS without raw message delivery, or an SNS HTTP subscription)
    ``{"Type": "Notification", "TopicArn", "Message": "<JSON text>", ...}``: the
    ``Message`` string is parsed as a message of its own (S3 records, test event or
    EventBridge event). ``SubscriptionConfirmation`` / ``UnsubscribeConfirmation`` give
    one event of kind ``other``. Source: Amazon SNS Developer Guide, "HTTP/HTTPS
    notification JSON format" and "subscription confirmation JSON format".

Amazon EventBridge (S3 -> EventBridge -> SQS)
    ``{"source": "aws.s3", "detail-type": "Object Created" | "Object Deleted" | ...,
    "detail": {"bucket": {"name"}, "object": {"key", "size", "etag", "version-id",
    "sequencer"}}}``. Source: Amazon S3 User Guide, "EventBridge event message
    structure" (ev-events). KEY ENCODING: that page, unlike the notification page, never
    says the key is URL-encoded, and its examples show plain keys. AWS's own sample
    "guidance-for-medialake-on-aws" (PR #21, tested with keys such as ``test+b.png`` and
    ``%2B++ %20.mp3``) had to stop decoding EventBridge keys to find those objects. So
    EventBridge keys are taken as sent, never decoded.

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

Google Cloud Storage through Pub/Sub push
    ``{"message": {"attributes": {"eventType": "OBJECT_FINALIZE", "bucketId",
    "objectId", "objectGeneration", "payloadFormat": "JSON_API_V1", ...}, "data":
    "<base64 object resource>"}, "subscription"}``: OBJECT_FINALIZE is ``created``,
    OBJECT_DELETE ``removed``, the rest ``other``; the object name is not encoded; the
    ETag is the hex of ``md5Hash`` (what the S3 interoperability API reports). Source:
    Cloud Storage docs, "Pub/Sub notifications for Cloud Storage"; Pub/Sub docs, "Push
    subscriptions".

Google Cloud Storage CloudEvents (Eventarc and other CloudEvents brokers)
    ``{"specversion": "1.0", "type": "google.cloud.storage.object.v1.finalized",
    "source": "//storage.googleapis.com/projects/_/buckets/<bucket>", "subject":
    "objects/<name>", "data": <object resource>}`` (structured mode; the webhook rebuilds
    binary mode, ``ce-*`` headers and the resource as the body, into this form).

SeaweedFS filer notifications posted by ``[notification.webhook]``
    Learnt from the SeaweedFS source (not from docs, which do not describe the body):

    * ``weed/notification/webhook/http.go`` (``sendMessageWithRetry``) POSTs
      ``{"key": <full filer path>, "event_type": "create"|"delete"|"update"|"rename",
      "message": <filer_pb.EventNotification>}``. The notification is marshalled with
      Go's ``encoding/json`` on the generated protobuf struct, so field names are the
      proto (snake_case) names, empty fields are omitted, ``bytes`` are base64 text and
      ``uint64`` sizes are JSON numbers.
    * ``weed/notification/webhook/types.go`` (``detectEventType``): create = new entry
      only, delete = old entry only, rename = both with ``new_parent_path``, else update.
    * ``weed/filer/filer_notify.go`` (``NotifyUpdateEvent``): ``key`` is the *old* entry's
      full path when there is an old entry, else the new one's; ``new_parent_path`` is
      the new entry's directory.
    * ``weed/pb/filer.proto``: ``EventNotification {old_entry, new_entry, delete_chunks,
      new_parent_path, is_from_other_cluster, signatures}``, ``Entry {name,
      is_directory, attributes: FuseAttributes {file_size, md5, ...}, extended:
      map<string, bytes>}``; ``SubscribeMetadataResponse {directory,
      event_notification, ts_ns}``.
    * The S3 gateway keeps an object's ETag in ``extended["Seaweed-X-Amz-ETag"]``
      (``s3_constants.ExtETagKey``) and stages multipart parts under
      ``<bucket>/.uploads/``.

    Also accepted, because they could not be ruled out from the sources: the
    notification under ``message_data``, ``event_notification`` or
    ``eventNotification`` (with an optional ``directory``), a bare EventNotification,
    and protobuf-JSON camelCase names (``newEntry``, ``isDirectory``, ``fileSize`` as a
    string). Paths under ``/buckets/<bucket>/<key>`` become bucket and key, taken as
    sent (filer paths are not URL-encoded). Directories, paths outside the buckets
    folder and multipart staging files are ``other``. A new entry gives ``created`` for
    its path; an old entry alone gives ``removed``; a rename also gives ``removed`` for
    the old path. ``size`` is ``attributes.file_size``; ``etag`` is the extended
    S3 ETag, else the hex of ``attributes.md5``, else None.
"""

from __future__ import annotations

import base64
import binascii
import json
import reprlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote_plus

__all__ = [
    "MAX_JSON_VALUES",
    "MAX_RECORDS",
    "EventFormatError",
    "Kind",
    "ObjectEvent",
    "RejectedRecord",
    "parse_message",
]

Kind = Literal["created", "removed", "test", "other"]

JsonObject = Mapping[str, object]

SEAWEEDFS_BUCKETS_DIR = "/buckets"  # the filer's default buckets folder

# What one message may cost, far above what a storage sends: one AWS, MinIO or Ceph
# record is 60-90 JSON values, and a sender batches a few hundred records at most.
# Parsing 250,000 values takes at most ~25 MB and ~0.15 s whatever their shape.
MAX_JSON_VALUES = 250_000  # values and keys in one message, counted before parsing
MAX_RECORDS = 10_000  # records of one message: its rejected ones are kept in memory

# json.loads holds the GIL, so parsing more messages at once (64 webhook requests) would
# add their memory without making anything faster
_PARSING = threading.BoundedSemaphore(2)


@dataclass(frozen=True)
class ObjectEvent:
    """One change to one object, in the same terms whichever storage reported it.

    ``key`` is the object key as stored (already decoded); ``event_name`` is the
    vendor's own name for what happened, for logs. Only ``created`` and ``removed``
    events name an object: ``bucket`` and ``key`` are empty for SNS subscription
    messages, ``key`` is empty for the S3 test event, and a SeaweedFS change outside any
    bucket has an empty ``bucket`` and the filer path as ``key``.
    """

    kind: Kind
    source: str
    event_name: str
    bucket: str
    key: str
    size: int | None
    etag: str | None
    version_id: str | None
    sequencer: str | None = None


@dataclass(frozen=True)
class RejectedRecord:
    """One record of a multi-record message that could not be read; the rest could."""

    where: str  # e.g. "Records[3]"
    reason: str
    record: object  # the record as sent, for the poison list


class EventFormatError(ValueError):
    """A message that is not a storage event this module understands (a poison message).

    The message says which field was wrong and how, so the dead-lettered message can
    be fixed or the notification configuration corrected.
    """


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
    with _PARSING:
        try:
            return _dispatch(
                _load_body(body), seaweedfs_buckets_dir, inside_sns=False, rejected=rejected
            )
        except EventFormatError as exc:
            reason = str(exc)
    # raised afresh: the caller keeps the error while it records the poison message, and
    # the first one's traceback holds the frames that hold everything parsed
    raise EventFormatError(reason)


# --- loading -----------------------------------------------------------------------------


def _load_body(body: object) -> JsonObject:
    """The message as a JSON object, whatever form it arrived in."""
    if isinstance(body, Mapping):
        return body
    if not isinstance(body, str | bytes | bytearray):
        raise EventFormatError(
            f"message body is a {type(body).__name__}, expected text, bytes or a JSON object"
        )
    parsed = _load_json(body, "message body")
    if not isinstance(parsed, Mapping):
        shown = _json_type(parsed)
        del parsed  # a traceback keeps this frame: it must not keep a parsed poison body
        raise EventFormatError(f"message body is {shown}, expected an object")
    return parsed


def _load_json(data: str | bytes | bytearray, where: str) -> object:
    """JSON text (or UTF-8 bytes) parsed within :data:`MAX_JSON_VALUES`; every failure is
    an :class:`EventFormatError` naming ``where``.

    The values are counted on the text before parsing, so a body made to be expensive
    (``[{},{},...]``: 1.4 million objects, ~100 MB, in 4 MiB) costs a scan, not a parse.
    """
    text = data if isinstance(data, str) else _utf8_text(data, where)
    values = _json_values_at_most(text)
    if values > MAX_JSON_VALUES:
        raise EventFormatError(
            f"{where} holds up to {values:,} JSON values, more than any storage event "
            f"notification ({MAX_JSON_VALUES:,}); it was not parsed"
        )
    # the reason is built inside the handler and raised outside it, so the error chains no
    # parser frame (which holds the text) and nothing the parser built
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        reason = f"{where} is not JSON: {exc.msg} at character {exc.pos}"
    except ValueError as exc:  # e.g. an integer literal longer than Python accepts
        reason = f"{where} is not usable JSON: {exc}"
    except RecursionError:  # absurdly deep nesting is a poison message too
        reason = f"{where} is JSON nested too deeply to be an event"
    raise EventFormatError(reason)


def _utf8_text(data: bytes | bytearray, where: str) -> str:
    """Bytes as text; raised outside the handler, so the error chains no copy of them."""
    try:
        # utf-8-sig: a byte-order mark some HTTP clients add is not an error
        return bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        reason = f"{where} is not UTF-8 text ({exc.reason})"
    raise EventFormatError(reason)


def _json_values_at_most(text: str) -> int:
    """An upper bound of the values and keys in JSON text, without parsing it: each one
    but the first follows a ``{``, ``[``, ``,`` or ``:`` (those inside strings count
    too, so it never undercounts). Four scans of 4 MiB take about 12 ms."""
    return 1 + sum(text.count(mark) for mark in "{[,:")


def _dispatch(
    body: JsonObject,
    buckets_dir: str,
    *,
    inside_sns: bool,
    rejected: list[RejectedRecord] | None = None,
) -> list[ObjectEvent]:
    """Route one JSON object to the parser for its vendor shape."""
    if _is_sns_envelope(body):
        if inside_sns:
            raise EventFormatError("SNS Message holds another SNS envelope")
        return _parse_sns(body, buckets_dir, rejected)
    if body.get("Event") == "s3:TestEvent":
        return [_parse_s3_test_event(body)]
    if "Records" in body:
        return _parse_records_message(body, rejected)
    if _is_pubsub_push(body):
        return [_parse_pubsub_push(body)]
    if "specversion" in body:
        return [_parse_cloudevent(body)]
    if "Key" in body and ("EventName" in body or "EventType" in body):
        return [_parse_minio_key_only(body)]
    if "detail-type" in body:
        return [_parse_eventbridge(body)]
    notification = _find_seaweedfs_notification(body)
    if notification is not None:
        return _parse_seaweedfs(body, notification, buckets_dir)
    fields = ", ".join(sorted(str(name)[:40] for name in body)[:8]) or "none"
    raise EventFormatError(f"not a storage event notification this parser knows (fields: {fields})")


# --- small typed readers -----------------------------------------------------------------

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80


def _quoted(value: object) -> str:
    """A value sent, as a reason quotes it: its repr cut to 80 characters (a reason goes
    into the reply, the log and the poison list, never a whole body again)."""
    return _SHORT.repr(value)


def _json_type(value: object) -> str:
    """The JSON name of a value's type, for error messages in the sender's terms."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def _as_object(value: object, where: str) -> JsonObject:
    """``value`` as a JSON object, or an error naming where one was expected."""
    if not isinstance(value, Mapping):
        raise EventFormatError(f"{where} is {_json_type(value)}, expected an object")
    return value


def _required_str(obj: JsonObject, field: str, where: str) -> str:
    """A field that must be a non-empty string."""
    value = obj.get(field)
    if not isinstance(value, str) or not value:
        shown = "an empty string" if value == "" else _json_type(value)
        raise EventFormatError(f"{where}.{field} is {shown}, expected a non-empty string")
    return value


def _optional_str(value: object, where: str) -> str | None:
    """A string that may be absent; empty counts as absent (Ceph sends ``versionId: ""``)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EventFormatError(f"{where} is {_json_type(value)}, expected a string")
    return value


def _informational(value: object) -> str | None:
    """A field the job does not need (a sequencer, a generation): kept as text when it is
    a string or an integer (int64 fields come as JSON numbers or, in protojson, strings),
    dropped otherwise. It never decides whether an event is kept."""
    if isinstance(value, bool) or value is None or value == "":
        return None
    if isinstance(value, str):
        return value[:64]
    if isinstance(value, int):
        return str(value)
    return None


def _size(value: object, where: str) -> int | None:
    """An object size sent as a number (AWS, MinIO) or a decimal string (Ceph)."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    # at most 20 digits: every real size fits, and int() never meets its digit limit
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)
    raise EventFormatError(f"{where} is {_quoted(value)}, expected a byte count")


def _etag(value: object, where: str) -> str | None:
    """An ETag without the double quotes some senders keep around it."""
    text = _optional_str(value, where)
    if text is None:
        return None
    return text.strip('"') or None


def _form_decoded(raw: str, where: str) -> str:
    """Decode a form-URL-encoded key exactly once (``+`` is a space, ``%2B`` a plus)."""
    try:
        return unquote_plus(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise EventFormatError(f"{where} {_quoted(raw)} is not percent-encoded UTF-8") from exc


# --- AWS-shaped records: AWS S3, MinIO, Ceph ---------------------------------------------

# Event sources whose record keys are the raw object name, not URL-encoded (see above).
_RAW_KEY_SOURCES = frozenset({"ceph"})

# MinIO files these under ObjectCreated although the object's bytes did not change.
_METADATA_ONLY_CREATED = frozenset({"PutTagging", "DeleteTagging", "PutRetention", "PutLegalHold"})

# Ceph's lifecycle names for "the current object is gone".
_CEPH_LIFECYCLE_REMOVALS = frozenset(
    {"ObjectLifecycle:Expiration:Current", "ObjectLifecycle:Expiration:DeleteMarker"}
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


def _parse_records_message(
    body: JsonObject, rejected: list[RejectedRecord] | None
) -> list[ObjectEvent]:
    """A ``Records`` message (AWS, MinIO, Ceph); MinIO's top-level Key only as a fallback."""
    records = body.get("Records")
    if (records is None or records == []) and "Key" in body:
        return [_parse_minio_key_only(body)]
    if not isinstance(records, list):
        raise EventFormatError(f"Records is {_json_type(records)}, expected an array")
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


def _check_event_version(record: JsonObject, where: str) -> None:
    """Refuse a major version other than 2: AWS changes the major only to break the shape."""
    version = record.get("eventVersion")
    if version is None:
        return
    if not isinstance(version, str) or version.split(".", 1)[0] != "2":
        raise EventFormatError(
            f"{where}.eventVersion is {_quoted(version)}, expected a 2.x version"
        )


def _parse_record(value: object, where: str) -> ObjectEvent:
    """One AWS-shaped record; the event source decides how its key is encoded."""
    record = _as_object(value, where)
    event_source = _required_str(record, "eventSource", where)
    vendor, _, service = event_source.partition(":")
    if service != "s3" or not vendor:
        raise EventFormatError(
            f"{where}.eventSource is {_quoted(event_source)}, not an S3 event source "
            "(pass the queue message body, not a whole Lambda event)"
        )
    _check_event_version(record, where)
    event_name = _required_str(record, "eventName", where)
    s3 = _as_object(record.get("s3"), f"{where}.s3")
    bucket_info = _as_object(s3.get("bucket"), f"{where}.s3.bucket")
    bucket = _required_str(bucket_info, "name", f"{where}.s3.bucket")
    obj = _as_object(s3.get("object"), f"{where}.s3.object")
    raw_key = _required_str(obj, "key", f"{where}.s3.object")
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
        size=_size(obj.get("size"), f"{where}.s3.object.size"),
        etag=_etag(obj.get(etag_field), f"{where}.s3.object.{etag_field}"),
        version_id=_optional_str(obj.get("versionId"), f"{where}.s3.object.versionId"),
        sequencer=_informational(obj.get("sequencer")),
    )


def _parse_minio_key_only(body: JsonObject) -> ObjectEvent:
    """A MinIO log without records: ``Key`` is ``bucket/name``, already decoded by MinIO."""
    name_field = "EventName" if "EventName" in body else "EventType"
    event_name = _required_str(body, name_field, "message")
    bucket_and_key = _required_str(body, "Key", "message")
    bucket, _, key = bucket_and_key.partition("/")
    if not bucket or not key:
        raise EventFormatError(f"message.Key is {_quoted(bucket_and_key)}, expected 'bucket/key'")
    return ObjectEvent(
        _s3_event_kind(event_name), "minio", event_name, bucket, key, None, None, None
    )


# --- AWS test event, SNS envelope, EventBridge -------------------------------------------


def _parse_s3_test_event(body: JsonObject) -> ObjectEvent:
    """The message S3 sends once when a notification configuration is saved."""
    bucket = _required_str(body, "Bucket", "s3:TestEvent")
    return ObjectEvent("test", "aws", "s3:TestEvent", bucket, "", None, None, None)


def _is_sns_envelope(body: JsonObject) -> bool:
    """An SNS message as delivered without raw message delivery."""
    return isinstance(body.get("Type"), str) and "TopicArn" in body


def _parse_sns(
    body: JsonObject, buckets_dir: str, rejected: list[RejectedRecord] | None
) -> list[ObjectEvent]:
    """Unwrap an SNS notification; subscription bookkeeping is ``other``."""
    sns_type = body.get("Type")
    if sns_type == "Notification":
        message = body.get("Message")
        if not isinstance(message, str):
            raise EventFormatError(f"SNS Message is {_json_type(message)}, expected JSON text")
        inner = _as_object(_load_json(message, "SNS Message"), "SNS Message")
        return _dispatch(inner, buckets_dir, inside_sns=True, rejected=rejected)
    if sns_type in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
        return [ObjectEvent("other", "aws", str(sns_type), "", "", None, None, None)]
    raise EventFormatError(f"SNS message Type {_quoted(sns_type)} is not understood")


_EVENTBRIDGE_KINDS: dict[str, Kind] = {"Object Created": "created", "Object Deleted": "removed"}


def _parse_eventbridge(body: JsonObject) -> ObjectEvent:
    """An S3 event delivered through EventBridge; its key is not URL-encoded."""
    source = body.get("source")
    if source != "aws.s3":
        raise EventFormatError(f"EventBridge event source is {_quoted(source)}, expected 'aws.s3'")
    detail_type = _required_str(body, "detail-type", "event")
    detail = _as_object(body.get("detail"), "detail")
    bucket = _required_str(
        _as_object(detail.get("bucket"), "detail.bucket"), "name", "detail.bucket"
    )
    obj = _as_object(detail.get("object"), "detail.object")
    return ObjectEvent(
        kind=_EVENTBRIDGE_KINDS.get(detail_type, "other"),
        source="eventbridge",
        event_name=detail_type,
        bucket=bucket,
        key=_required_str(obj, "key", "detail.object"),  # taken as sent: see module docstring
        size=_size(obj.get("size"), "detail.object.size"),
        etag=_etag(obj.get("etag"), "detail.object.etag"),
        version_id=_optional_str(obj.get("version-id"), "detail.object.version-id"),
        sequencer=_informational(obj.get("sequencer")),
    )


# --- Google Cloud Storage: Pub/Sub push, CloudEvents ---------------------------------------

_GCS_KINDS: dict[str, Kind] = {"OBJECT_FINALIZE": "created", "OBJECT_DELETE": "removed"}
_GCS_CLOUDEVENT_PREFIX = "google.cloud.storage.object.v1."
_GCS_CLOUDEVENT_KINDS: dict[str, Kind] = {"finalized": "created", "deleted": "removed"}
_GCS_SOURCE_PREFIX = "//storage.googleapis.com/projects/_/buckets/"


def _is_pubsub_push(body: JsonObject) -> bool:
    """A Pub/Sub push request: ``{"message": {attributes, data, ...}, "subscription"}``."""
    message = body.get("message")
    return (
        "subscription" in body
        and isinstance(message, Mapping)
        and ("attributes" in message or "data" in message)
    )


def _parse_pubsub_push(body: JsonObject) -> ObjectEvent:
    """A Cloud Storage notification pushed by Pub/Sub; the object name is not encoded.

    The attributes carry what happened (``eventType`` OBJECT_FINALIZE, OBJECT_DELETE,
    OBJECT_ARCHIVE, OBJECT_METADATA_UPDATE), ``bucketId``, ``objectId`` and
    ``objectGeneration``; ``data`` is the base64 object resource when ``payloadFormat``
    is JSON_API_V1 (size, md5Hash). Source: Cloud Storage docs, "Pub/Sub notifications
    for Cloud Storage"; Pub/Sub docs, "Push subscriptions" (the push request body).
    """
    message = _as_object(body.get("message"), "message")
    attributes = _as_object(message.get("attributes", {}), "message.attributes")
    if "bucketId" not in attributes:
        raise EventFormatError("Pub/Sub message has no bucketId: not a Cloud Storage notification")
    event_type = _required_str(attributes, "eventType", "message.attributes")
    resource: JsonObject = {}
    if attributes.get("payloadFormat") == "JSON_API_V1" and message.get("data"):
        decoded = _base64_bytes(message.get("data"))
        if decoded is None:
            raise EventFormatError("message.data is not base64 text")
        resource = _as_object(_load_json(decoded.decode("utf-8", "replace"), "message.data"),
                              "message.data")  # fmt: skip
    return ObjectEvent(
        kind=_GCS_KINDS.get(event_type, "other"),
        source="gcs",
        event_name=event_type,
        bucket=_required_str(attributes, "bucketId", "message.attributes"),
        key=_required_str(attributes, "objectId", "message.attributes"),
        size=_size(resource.get("size"), "message.data.size"),
        etag=_gcs_etag(resource),
        version_id=None,  # a generation, which the S3 interoperability API does not take
        sequencer=_informational(attributes.get("objectGeneration")),
    )


def _parse_cloudevent(body: JsonObject) -> ObjectEvent:
    """A Cloud Storage CloudEvent (Eventarc; structured mode, or binary mode rebuilt).

    ``type`` is ``google.cloud.storage.object.v1.finalized|deleted|archived|
    metadataUpdated``, ``source`` names the bucket, ``subject`` is ``objects/<name>``,
    ``data`` the object resource. Source: Eventarc docs, "Cloud Storage events"; the
    CloudEvents 1.0 JSON format.
    """
    ce_type = _required_str(body, "type", "CloudEvent")
    if not ce_type.startswith(_GCS_CLOUDEVENT_PREFIX):
        raise EventFormatError(
            f"CloudEvent type {_quoted(ce_type)} is not a Cloud Storage object event"
        )
    action = ce_type.removeprefix(_GCS_CLOUDEVENT_PREFIX)
    data_value = body.get("data")
    if data_value is None and isinstance(body.get("data_base64"), str):
        decoded = _base64_bytes(body.get("data_base64"))
        data_value = _load_json((decoded or b"").decode("utf-8", "replace"), "data_base64")
    data = _as_object(data_value, "CloudEvent data")
    source = str(body.get("source") or "")
    subject = str(body.get("subject") or "")
    bucket = _optional_str(data.get("bucket"), "data.bucket") or source.removeprefix(
        _GCS_SOURCE_PREFIX
    )
    key = _optional_str(data.get("name"), "data.name") or subject.removeprefix("objects/")
    if not bucket or not key or "/" in bucket:
        raise EventFormatError("CloudEvent names no bucket and object (data, source, subject)")
    return ObjectEvent(
        kind=_GCS_CLOUDEVENT_KINDS.get(action, "other"),
        source="gcs",
        event_name=ce_type,
        bucket=bucket,
        key=key,
        size=_size(data.get("size"), "data.size"),
        etag=_gcs_etag(data),
        version_id=None,
        sequencer=_informational(data.get("generation")),
    )


def _gcs_etag(resource: JsonObject) -> str | None:
    """The S3-interoperability ETag of a GCS object: the hex MD5 (composites have none)."""
    md5 = _base64_bytes(resource.get("md5Hash"))
    return md5.hex() if md5 is not None and len(md5) == 16 else None


# --- SeaweedFS filer notifications -------------------------------------------------------

_SEAWEEDFS_WRAPPERS = ("message", "message_data", "event_notification", "eventNotification")
_NOTIFICATION_FIELDS = frozenset(
    {
        "old_entry",
        "new_entry",
        "new_parent_path",
        "delete_chunks",
        "is_from_other_cluster",
        "oldEntry",
        "newEntry",
        "newParentPath",
        "deleteChunks",
        "isFromOtherCluster",
    }
)
_SEAWEEDFS_ETAG = "Seaweed-X-Amz-ETag"  # s3_constants.ExtETagKey
_SEAWEEDFS_UPLOADS = ".uploads"  # s3_constants.MultipartUploadsFolder, per bucket


def _find_seaweedfs_notification(body: JsonObject) -> JsonObject | None:
    """The filer EventNotification inside a webhook body, or the body itself, if any."""
    for wrapper in _SEAWEEDFS_WRAPPERS:
        inner = body.get(wrapper)
        if isinstance(inner, Mapping) and not _NOTIFICATION_FIELDS.isdisjoint(inner):
            return inner
    return body if not _NOTIFICATION_FIELDS.isdisjoint(body) else None


def _pb_field(message: JsonObject, snake_name: str) -> object:
    """A protobuf field by its proto name (Go encoding/json) or camelCase (protojson)."""
    if snake_name in message:
        return message[snake_name]
    head, *rest = snake_name.split("_")
    return message.get(head + "".join(part.title() for part in rest))


def _entry(notification: JsonObject, field: str) -> JsonObject | None:
    """``old_entry`` or ``new_entry``, if present."""
    value = _pb_field(notification, field)
    return None if value is None else _as_object(value, f"SeaweedFS {field}")


def _join(directory: str, name: str) -> str:
    """A filer path from a directory and an entry name."""
    return f"{directory.rstrip('/')}/{name}"


def _parse_seaweedfs(
    body: JsonObject, notification: JsonObject, buckets_dir: str
) -> list[ObjectEvent]:
    """A filer change: created for a new entry, removed for an old one (and a rename's source)."""
    old_entry = _entry(notification, "old_entry")
    new_entry = _entry(notification, "new_entry")
    if old_entry is None and new_entry is None:
        raise EventFormatError("SeaweedFS notification has neither old_entry nor new_entry")
    full_path = _optional_str(body.get("key"), "SeaweedFS key")
    directory = _optional_str(_pb_field(body, "directory"), "SeaweedFS directory")
    event_name = _optional_str(body.get("event_type"), "SeaweedFS event_type")
    new_parent = _optional_str(_pb_field(notification, "new_parent_path"), "new_parent_path")
    if event_name is None:  # same rule as detectEventType in weed/notification/webhook
        if old_entry is None:
            event_name = "create"
        elif new_entry is None:
            event_name = "delete"
        else:
            event_name = "rename" if new_parent else "update"

    # The webhook key (and a metadata event's directory) describe the old entry if any.
    old_path: str | None = None
    if old_entry is not None:
        old_name = _required_str(old_entry, "name", "SeaweedFS old_entry")
        old_path = full_path or (_join(directory, old_name) if directory else None)
    if new_entry is None:
        if old_path is None or old_entry is None:
            raise EventFormatError("SeaweedFS deletion carries no path (no key or directory)")
        return [_seaweedfs_event("removed", old_path, old_entry, event_name, buckets_dir)]

    new_name = _required_str(new_entry, "name", "SeaweedFS new_entry")
    if new_parent:
        new_path = _join(new_parent, new_name)
    elif old_entry is None and full_path:
        new_path = full_path
    elif old_entry is None and directory:
        new_path = _join(directory, new_name)
    elif old_entry is not None and old_path and old_entry.get("name") == new_name:
        new_path = old_path  # an in-place update from a sender that omits new_parent_path
    else:
        raise EventFormatError("SeaweedFS notification does not say where the new entry is")
    events = []
    if old_entry is not None and old_path is not None and old_path != new_path:
        events.append(_seaweedfs_event("removed", old_path, old_entry, event_name, buckets_dir))
    events.append(_seaweedfs_event("created", new_path, new_entry, event_name, buckets_dir))
    return events


def _seaweedfs_event(
    kind: Kind, path: str, entry: JsonObject, event_name: str, buckets_dir: str
) -> ObjectEvent:
    """An event for one filer path; only files inside a bucket are objects."""
    prefix = buckets_dir.rstrip("/") + "/"
    bucket, key = "", ""
    if path.startswith(prefix):
        bucket, _, key = path.removeprefix(prefix).partition("/")
    raw_attributes = _pb_field(entry, "attributes")
    attributes: JsonObject = {}
    if raw_attributes is not None:
        attributes = _as_object(raw_attributes, "SeaweedFS attributes")
    size = _size(_pb_field(attributes, "file_size"), "SeaweedFS attributes.file_size")
    etag = _seaweedfs_etag(entry, attributes)
    if not bucket or not key:  # the buckets folder itself, a bucket, or a non-S3 path
        return ObjectEvent("other", "seaweedfs", event_name, "", path, size, etag, None)
    if _pb_field(entry, "is_directory") is True or key.split("/", 1)[0] == _SEAWEEDFS_UPLOADS:
        kind = "other"  # folders and multipart staging parts are not objects
    return ObjectEvent(kind, "seaweedfs", event_name, bucket, key, size, etag, None)


def _base64_bytes(value: object) -> bytes | None:
    """Bytes from a protobuf ``bytes`` field (base64 text in both JSON mappings)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _seaweedfs_etag(entry: JsonObject, attributes: JsonObject) -> str | None:
    """The S3 ETag the gateway stored, else the hex MD5 of the content, else None."""
    extended = _pb_field(entry, "extended")
    if isinstance(extended, Mapping):
        stored = _base64_bytes(extended.get(_SEAWEEDFS_ETAG))
        if stored is not None and stored.isascii():
            text = stored.decode("ascii").strip('"')
            if text.isprintable() and text:
                return text
    md5 = _base64_bytes(_pb_field(attributes, "md5"))
    return md5.hex() if md5 is not None and len(md5) == 16 else None
