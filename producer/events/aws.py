"""The AWS messages around S3 records: the test event, the SNS envelope and EventBridge.

AWS S3 test event
    ``{"Service": "Amazon S3", "Event": "s3:TestEvent", "Time", "Bucket", "RequestId",
    "HostId"}``, sent when a notification configuration is saved: kind ``test``.
    Source: Amazon S3 User Guide, "Event message structure", "Example messages".

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
"""

from __future__ import annotations

from producer.events.bounds import load_json
from producer.events.fields import (
    EventFormatError,
    JsonObject,
    Kind,
    ObjectEvent,
    as_object,
    byte_count,
    informational,
    json_type,
    optional_str,
    quoted,
    required_str,
    unquoted_etag,
)

_EVENTBRIDGE_KINDS: dict[str, Kind] = {"Object Created": "created", "Object Deleted": "removed"}


def is_s3_test_event(body: JsonObject) -> bool:
    """The message S3 sends once when a notification configuration is saved."""
    return body.get("Event") == "s3:TestEvent"


def parse_s3_test_event(body: JsonObject) -> ObjectEvent:
    """The test event: kind ``test``, naming only its bucket."""
    bucket = required_str(body, "Bucket", "s3:TestEvent")
    return ObjectEvent("test", "aws", "s3:TestEvent", bucket, "", None, None, None)


def is_sns_envelope(body: JsonObject) -> bool:
    """An SNS message as delivered without raw message delivery."""
    return isinstance(body.get("Type"), str) and "TopicArn" in body


def unwrap_sns(body: JsonObject) -> JsonObject | ObjectEvent:
    """The message an SNS notification carries, to be parsed as a message of its own; or,
    for subscription bookkeeping, its one event of kind ``other``."""
    sns_type = body.get("Type")
    if sns_type == "Notification":
        message = body.get("Message")
        if not isinstance(message, str):
            raise EventFormatError(f"SNS Message is {json_type(message)}, expected JSON text")
        return as_object(load_json(message, "SNS Message"), "SNS Message")
    if sns_type in ("SubscriptionConfirmation", "UnsubscribeConfirmation"):
        return ObjectEvent("other", "aws", str(sns_type), "", "", None, None, None)
    raise EventFormatError(f"SNS message Type {quoted(sns_type)} is not understood")


def is_eventbridge(body: JsonObject) -> bool:
    """An EventBridge event (of any source; only ``aws.s3`` is read)."""
    return "detail-type" in body


def parse_eventbridge(body: JsonObject) -> ObjectEvent:
    """An S3 event delivered through EventBridge; its key is not URL-encoded."""
    source = body.get("source")
    if source != "aws.s3":
        raise EventFormatError(f"EventBridge event source is {quoted(source)}, expected 'aws.s3'")
    detail_type = required_str(body, "detail-type", "event")
    detail = as_object(body.get("detail"), "detail")
    bucket = required_str(as_object(detail.get("bucket"), "detail.bucket"), "name", "detail.bucket")
    obj = as_object(detail.get("object"), "detail.object")
    return ObjectEvent(
        kind=_EVENTBRIDGE_KINDS.get(detail_type, "other"),
        source="eventbridge",
        event_name=detail_type,
        bucket=bucket,
        key=required_str(obj, "key", "detail.object"),  # taken as sent: see module docstring
        size=byte_count(obj.get("size"), "detail.object.size"),
        etag=unquoted_etag(obj.get("etag"), "detail.object.etag"),
        version_id=optional_str(obj.get("version-id"), "detail.object.version-id"),
        sequencer=informational(obj.get("sequencer")),
    )
