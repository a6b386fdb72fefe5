"""SeaweedFS filer notifications posted by ``[notification.webhook]``.

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

from collections.abc import Mapping

from producer.events.fields import (
    EventFormatError,
    JsonObject,
    Kind,
    ObjectEvent,
    as_object,
    base64_bytes,
    byte_count,
    md5_hex,
    optional_str,
    required_str,
)

SEAWEEDFS_BUCKETS_DIR = "/buckets"  # the filer's default buckets folder

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


def find_seaweedfs_notification(body: JsonObject) -> JsonObject | None:
    """The filer EventNotification inside a webhook body, or the body itself, if any."""
    for wrapper in _SEAWEEDFS_WRAPPERS:
        inner = body.get(wrapper)
        if isinstance(inner, Mapping) and not _NOTIFICATION_FIELDS.isdisjoint(inner):
            return inner
    return body if not _NOTIFICATION_FIELDS.isdisjoint(body) else None


def parse_seaweedfs(
    body: JsonObject, notification: JsonObject, buckets_dir: str
) -> list[ObjectEvent]:
    """A filer change: created for a new entry, removed for an old one (and a rename's source).

    ``notification`` is what :func:`find_seaweedfs_notification` found in ``body``;
    ``buckets_dir`` is the filer folder holding S3 buckets.
    """
    old_entry = _entry(notification, "old_entry")
    new_entry = _entry(notification, "new_entry")
    if old_entry is None and new_entry is None:
        raise EventFormatError("SeaweedFS notification has neither old_entry nor new_entry")
    full_path = optional_str(body.get("key"), "SeaweedFS key")
    directory = optional_str(_pb_field(body, "directory"), "SeaweedFS directory")
    event_name = optional_str(body.get("event_type"), "SeaweedFS event_type")
    new_parent = optional_str(_pb_field(notification, "new_parent_path"), "new_parent_path")
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
        old_name = required_str(old_entry, "name", "SeaweedFS old_entry")
        old_path = full_path or (_join(directory, old_name) if directory else None)
    if new_entry is None:
        if old_path is None or old_entry is None:
            raise EventFormatError("SeaweedFS deletion carries no path (no key or directory)")
        return [_seaweedfs_event("removed", old_path, old_entry, event_name, buckets_dir)]

    new_name = required_str(new_entry, "name", "SeaweedFS new_entry")
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


def _pb_field(message: JsonObject, snake_name: str) -> object:
    """A protobuf field by its proto name (Go encoding/json) or camelCase (protojson)."""
    if snake_name in message:
        return message[snake_name]
    head, *rest = snake_name.split("_")
    return message.get(head + "".join(part.title() for part in rest))


def _entry(notification: JsonObject, field: str) -> JsonObject | None:
    """``old_entry`` or ``new_entry``, if present."""
    value = _pb_field(notification, field)
    return None if value is None else as_object(value, f"SeaweedFS {field}")


def _join(directory: str, name: str) -> str:
    """A filer path from a directory and an entry name."""
    return f"{directory.rstrip('/')}/{name}"


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
        attributes = as_object(raw_attributes, "SeaweedFS attributes")
    size = byte_count(_pb_field(attributes, "file_size"), "SeaweedFS attributes.file_size")
    etag = _seaweedfs_etag(entry, attributes)
    if not bucket or not key:  # the buckets folder itself, a bucket, or a non-S3 path
        return ObjectEvent("other", "seaweedfs", event_name, "", path, size, etag, None)
    if _pb_field(entry, "is_directory") is True or key.split("/", 1)[0] == _SEAWEEDFS_UPLOADS:
        kind = "other"  # folders and multipart staging parts are not objects
    return ObjectEvent(kind, "seaweedfs", event_name, bucket, key, size, etag, None)


def _seaweedfs_etag(entry: JsonObject, attributes: JsonObject) -> str | None:
    """The S3 ETag the gateway stored, else the hex MD5 of the content, else None."""
    extended = _pb_field(entry, "extended")
    if isinstance(extended, Mapping):
        stored = base64_bytes(extended.get(_SEAWEEDFS_ETAG))
        if stored is not None and stored.isascii():
            text = stored.decode("ascii").strip('"')
            if text.isprintable() and text:
                return text
    return md5_hex(_pb_field(attributes, "md5"))
