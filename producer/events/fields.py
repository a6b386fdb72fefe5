"""The normalised event, the error for what cannot be read, and the typed field readers
every event shape uses.

A reader takes a value as sent and returns it typed, or raises :class:`EventFormatError`
naming where the value was and what was expected, in the sender's JSON terms.
"""

from __future__ import annotations

import base64
import binascii
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Kind = Literal["created", "removed", "test", "other"]

JsonObject = Mapping[str, object]


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
    """A message that is not a storage event this package understands (a poison message).

    The message says which field was wrong and how, so the dead-lettered message can
    be fixed or the notification configuration corrected.
    """


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80


def quoted(value: object) -> str:
    """A value sent, as a reason quotes it: its repr cut to 80 characters (a reason goes
    into the reply, the log and the poison list, never a whole body again)."""
    return _SHORT.repr(value)


def json_type(value: object) -> str:
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


def as_object(value: object, where: str) -> JsonObject:
    """``value`` as a JSON object, or an error naming where one was expected."""
    if not isinstance(value, Mapping):
        raise EventFormatError(f"{where} is {json_type(value)}, expected an object")
    return value


def required_str(obj: JsonObject, field: str, where: str) -> str:
    """A field that must be a non-empty string."""
    value = obj.get(field)
    if not isinstance(value, str) or not value:
        shown = "an empty string" if value == "" else json_type(value)
        raise EventFormatError(f"{where}.{field} is {shown}, expected a non-empty string")
    return value


def optional_str(value: object, where: str) -> str | None:
    """A string that may be absent; empty counts as absent (Ceph sends ``versionId: ""``)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EventFormatError(f"{where} is {json_type(value)}, expected a string")
    return value


def informational(value: object) -> str | None:
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


def byte_count(value: object, where: str) -> int | None:
    """An object size sent as a number (AWS, MinIO) or a decimal string (Ceph)."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    # at most 20 digits: every real size fits, and int() never meets its digit limit
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)
    raise EventFormatError(f"{where} is {quoted(value)}, expected a byte count")


def unquoted_etag(value: object, where: str) -> str | None:
    """An ETag without the double quotes some senders keep around it."""
    text = optional_str(value, where)
    if text is None:
        return None
    return text.strip('"') or None


def base64_bytes(value: object) -> bytes | None:
    """Bytes from base64 text (a protobuf ``bytes`` field, a Pub/Sub payload), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def md5_hex(value: object) -> str | None:
    """The hex of a base64 MD5 digest (the ETag S3 reports for it), or None if it is not one."""
    md5 = base64_bytes(value)
    return md5.hex() if md5 is not None and len(md5) == 16 else None
