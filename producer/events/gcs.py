"""Google Cloud Storage notifications: Pub/Sub push requests and CloudEvents.

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
"""

from __future__ import annotations

from collections.abc import Mapping

from producer.events.bounds import load_json
from producer.events.fields import (
    EventFormatError,
    JsonObject,
    Kind,
    ObjectEvent,
    as_object,
    base64_bytes,
    byte_count,
    informational,
    md5_hex,
    optional_str,
    quoted,
    required_str,
)

_GCS_KINDS: dict[str, Kind] = {"OBJECT_FINALIZE": "created", "OBJECT_DELETE": "removed"}
_GCS_CLOUDEVENT_PREFIX = "google.cloud.storage.object.v1."
_GCS_CLOUDEVENT_KINDS: dict[str, Kind] = {"finalized": "created", "deleted": "removed"}
_GCS_SOURCE_PREFIX = "//storage.googleapis.com/projects/_/buckets/"


def is_pubsub_push(body: JsonObject) -> bool:
    """A Pub/Sub push request: ``{"message": {attributes, data, ...}, "subscription"}``."""
    message = body.get("message")
    return (
        "subscription" in body
        and isinstance(message, Mapping)
        and ("attributes" in message or "data" in message)
    )


def parse_pubsub_push(body: JsonObject) -> ObjectEvent:
    """A Cloud Storage notification pushed by Pub/Sub; the object name is not encoded.

    The attributes carry what happened (``eventType`` OBJECT_FINALIZE, OBJECT_DELETE,
    OBJECT_ARCHIVE, OBJECT_METADATA_UPDATE), ``bucketId``, ``objectId`` and
    ``objectGeneration``; ``data`` is the base64 object resource when ``payloadFormat``
    is JSON_API_V1 (size, md5Hash). Source: Cloud Storage docs, "Pub/Sub notifications
    for Cloud Storage"; Pub/Sub docs, "Push subscriptions" (the push request body).
    """
    message = as_object(body.get("message"), "message")
    attributes = as_object(message.get("attributes", {}), "message.attributes")
    if "bucketId" not in attributes:
        raise EventFormatError("Pub/Sub message has no bucketId: not a Cloud Storage notification")
    event_type = required_str(attributes, "eventType", "message.attributes")
    resource: JsonObject = {}
    if attributes.get("payloadFormat") == "JSON_API_V1" and message.get("data"):
        decoded = base64_bytes(message.get("data"))
        if decoded is None:
            raise EventFormatError("message.data is not base64 text")
        resource = as_object(load_json(decoded.decode("utf-8", "replace"), "message.data"),
                             "message.data")  # fmt: skip
    return ObjectEvent(
        kind=_GCS_KINDS.get(event_type, "other"),
        source="gcs",
        event_name=event_type,
        bucket=required_str(attributes, "bucketId", "message.attributes"),
        key=required_str(attributes, "objectId", "message.attributes"),
        size=byte_count(resource.get("size"), "message.data.size"),
        etag=md5_hex(resource.get("md5Hash")),  # composite objects have none
        version_id=None,  # a generation, which the S3 interoperability API does not take
        sequencer=informational(attributes.get("objectGeneration")),
    )


def is_cloudevent(body: JsonObject) -> bool:
    """A CloudEvent in structured mode (of any type; only Cloud Storage ones are read)."""
    return "specversion" in body


def parse_cloudevent(body: JsonObject) -> ObjectEvent:
    """A Cloud Storage CloudEvent (Eventarc; structured mode, or binary mode rebuilt).

    ``type`` is ``google.cloud.storage.object.v1.finalized|deleted|archived|
    metadataUpdated``, ``source`` names the bucket, ``subject`` is ``objects/<name>``,
    ``data`` the object resource. Source: Eventarc docs, "Cloud Storage events"; the
    CloudEvents 1.0 JSON format.
    """
    ce_type = required_str(body, "type", "CloudEvent")
    if not ce_type.startswith(_GCS_CLOUDEVENT_PREFIX):
        raise EventFormatError(
            f"CloudEvent type {quoted(ce_type)} is not a Cloud Storage object event"
        )
    action = ce_type.removeprefix(_GCS_CLOUDEVENT_PREFIX)
    data_value = body.get("data")
    if data_value is None and isinstance(body.get("data_base64"), str):
        decoded = base64_bytes(body.get("data_base64"))
        data_value = load_json((decoded or b"").decode("utf-8", "replace"), "data_base64")
    data = as_object(data_value, "CloudEvent data")
    source = str(body.get("source") or "")
    subject = str(body.get("subject") or "")
    bucket = optional_str(data.get("bucket"), "data.bucket") or source.removeprefix(
        _GCS_SOURCE_PREFIX
    )
    key = optional_str(data.get("name"), "data.name") or subject.removeprefix("objects/")
    if not bucket or not key or "/" in bucket:
        raise EventFormatError("CloudEvent names no bucket and object (data, source, subject)")
    return ObjectEvent(
        kind=_GCS_CLOUDEVENT_KINDS.get(action, "other"),
        source="gcs",
        event_name=ce_type,
        bucket=bucket,
        key=key,
        size=byte_count(data.get("size"), "data.size"),
        etag=md5_hex(data.get("md5Hash")),
        version_id=None,
        sequencer=informational(data.get("generation")),
    )
