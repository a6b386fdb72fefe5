"""Object-storage event notifications, parsed into one normalised form (no I/O here).

:func:`parse_message` takes one message body exactly as it came off an SQS queue or an
HTTP webhook and returns zero or more :class:`ObjectEvent`. Anything it cannot read
with certainty raises :class:`EventFormatError`, naming what was wrong, so the caller
can dead-letter the message instead of guessing.

Each family of shapes has its module, whose docstring says what is read and where each
shape was learnt:

* :mod:`~producer.events.records`: ``Records`` messages from AWS S3, MinIO, Ceph RGW
  and other ``<vendor>:s3`` sources;
* :mod:`~producer.events.aws`: the S3 test event, the SNS envelope, EventBridge;
* :mod:`~producer.events.gcs`: Google Cloud Storage through Pub/Sub push or CloudEvents;
* :mod:`~producer.events.seaweedfs`: SeaweedFS filer notifications.

:mod:`~producer.events.bounds` holds what one message may cost, and
:mod:`~producer.events.fields` the event, the error and the typed field readers.
"""

from producer.events.bounds import MAX_JSON_VALUES, MAX_RECORDS
from producer.events.fields import EventFormatError, Kind, ObjectEvent, RejectedRecord
from producer.events.parse import parse_message

__all__ = [
    "MAX_JSON_VALUES",
    "MAX_RECORDS",
    "EventFormatError",
    "Kind",
    "ObjectEvent",
    "RejectedRecord",
    "parse_message",
]
