"""Event notifications from every supported store parse into the same ObjectEvent.

Fixtures are synthesised from each vendor's documented examples (named per fixture);
the values are ours, the shapes are theirs.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import traceback
from collections.abc import Iterator
from typing import Any

import pytest

from producer.events import MAX_RECORDS, EventFormatError, ObjectEvent, parse_message

# --- fixtures ----------------------------------------------------------------------------


def aws_record(
    key: str = "HappyFace.jpg",
    event_name: str = "ObjectCreated:Put",
    *,
    version: str = "2.1",
    source: str = "aws:s3",
    bucket: str = "mybucket",
    size: object = 1024,
    etag: object = "d41d8cd98f00b204e9800998ecf8427e",
    version_id: object = "096fKKXTRTtl3on89fVO.nfljtsv6qko",
    sequencer: object = "0055AED6DCD90281E5",
) -> dict[str, Any]:
    """One record shaped like Amazon S3 User Guide, "Event message structure" (PUT example)."""
    obj: dict[str, Any] = {"key": key, "size": size, "eTag": etag, "sequencer": sequencer}
    if version_id is not None:
        obj["versionId"] = version_id
    return {
        "eventVersion": version,
        "eventSource": source,
        "awsRegion": "us-west-2",
        "eventTime": "1970-01-01T00:00:00.000Z",
        "eventName": event_name,
        "userIdentity": {"principalId": "AIDAJDPLRKLG7UEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUV"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "testConfigRule",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": obj,
        },
    }


def aws_message(*records: dict[str, Any]) -> dict[str, Any]:
    """An S3 notification as SQS receives it."""
    return {"Records": list(records) or [aws_record()]}


# Amazon S3 User Guide, "Event message structure", "Amazon S3 test message".
S3_TEST_EVENT = {
    "Service": "Amazon S3",
    "Event": "s3:TestEvent",
    "Time": "2014-10-13T15:57:02.089Z",
    "Bucket": "bucketname",
    "RequestId": "5582815E1AEA5ADF",
    "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
}


def sns_envelope(message: object, sns_type: str = "Notification") -> dict[str, Any]:
    """Amazon SNS Developer Guide, "HTTP/HTTPS notification JSON format" (SQS sees the same)."""
    return {
        "Type": sns_type,
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
        "Subject": "Amazon S3 Notification",
        "Message": message if isinstance(message, str) else json.dumps(message),
        "Timestamp": "2012-05-02T00:54:06.655Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEw6JRN",
        "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService.pem",
        "UnsubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe",
    }


# Amazon SNS Developer Guide, "HTTP/HTTPS subscription confirmation JSON format".
SNS_SUBSCRIPTION_CONFIRMATION = {
    "Type": "SubscriptionConfirmation",
    "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
    "Token": "2336412f37",
    "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
    "Message": "You have chosen to subscribe to the topic. To confirm, visit the SubscribeURL.",
    "SubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription",
    "Timestamp": "2012-04-26T20:45:04.751Z",
    "SignatureVersion": "1",
    "Signature": "EXAMPLEpH+",
    "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService.pem",
}


def eventbridge_event(
    key: str = "example-key", detail_type: str = "Object Created", **object_fields: object
) -> dict[str, Any]:
    """Amazon S3 User Guide, "EventBridge event message structure" ("Object created")."""
    obj: dict[str, Any] = {
        "key": key,
        "size": 5,
        "etag": "b1946ac92492d2347c6235b4d2611184",
        "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
        "sequencer": "617f08299329d189",
    }
    obj.update(object_fields)
    return {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": detail_type,
        "source": "aws.s3",
        "account": "111122223333",
        "time": "2021-11-12T00:00:00Z",
        "region": "ca-central-1",
        "resources": ["arn:aws:s3:::amzn-s3-demo-bucket1"],
        "detail": {
            "version": "0",
            "bucket": {"name": "amzn-s3-demo-bucket1"},
            "object": obj,
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "source-ip-address": "1.2.3.4",
            "reason": "PutObject",
        },
    }


def minio_message(
    encoded_key: str = "j1.txt",
    event_name: str = "s3:ObjectCreated:Put",
    *,
    top_key: str | None = None,
    bucket: str = "play1",
) -> dict[str, Any]:
    """MinIO webhook body: "Publish Events to Webhook" docs and internal/event/target/webhook.go.

    ``encoded_key`` goes in the record (QueryEscape'd by MinIO); the top-level ``Key`` is
    the bucket plus the *unescaped* name, as MinIO builds it.
    """
    return {
        "EventName": event_name,
        "Key": top_key if top_key is not None else f"{bucket}/{encoded_key}",
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "minio:s3",
                "awsRegion": "",
                "eventTime": "2019-05-18T07:34:32Z",
                "eventName": event_name,
                "userIdentity": {"principalId": "minio"},
                "requestParameters": {"principalId": "minio", "region": "", "sourceIPAddress": ""},
                "responseElements": {
                    "x-amz-request-id": "159FB6B233B08AF0",
                    "x-minio-deployment-id": "cd7a0eb7-a1f9-48d9-b21a-56366d75cfdd",
                    "x-minio-origin-endpoint": "http://172.18.0.6:9000",
                },
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "Config",
                    "bucket": {
                        "name": bucket,
                        "ownerIdentity": {"principalId": "minio"},
                        "arn": f"arn:aws:s3:::{bucket}",
                    },
                    "object": {
                        "key": encoded_key,
                        "size": 488,
                        "eTag": "f22d66a7d0dbbc4a7cf1122eeeb1a106",
                        "contentType": "application/dicom",
                        "userMetadata": {"content-type": "application/dicom"},
                        "sequencer": "14E11E32397D42C4",
                    },
                },
                "source": {"host": "192.168.1.130", "port": "", "userAgent": "MinIO (linux)"},
            }
        ],
    }


def ceph_message(
    key: str = "myimage1.jpg", event_name: str = "ObjectCreated:Put", **object_fields: object
) -> dict[str, Any]:
    """Ceph docs doc/radosgw/notifications.rst "Events" / IBM Storage Ceph "Event record"."""
    obj: dict[str, Any] = {
        "key": key,
        "size": "1024",
        "eTag": "37b51d194a7513e45b56f6524f2d51f2",
        "versionId": "",
        "sequencer": "F7E6D75DC742D108",
        "metadata": [],
        "tags": [],
    }
    obj.update(object_fields)
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "ceph:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2019-11-22T13:47:35.124724Z",
                "eventName": event_name,
                "userIdentity": {"principalId": "tester"},
                "requestParameters": {"sourceIPAddress": ""},
                "responseElements": {
                    "x-amz-request-id": "503a4c37-85eb-47cd-8681-2817e80b4281.5330.903595",
                    "x-amz-id-2": "14d2-zone1-zonegroup1",
                },
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "mynotif1",
                    "bucket": {
                        "name": "mybucket1",
                        "ownerIdentity": {"principalId": "tester"},
                        "arn": "arn:aws:s3:us-east-1::mybucket1",
                        "id": "503a4c37-85eb-47cd-8681-2817e80b4281.5332.38",
                    },
                    "object": obj,
                },
                "eventId": "",
                "opaqueData": "me@example.com",
            }
        ]
    }


def b64(data: bytes) -> str:
    """How Go's encoding/json (and protojson) write a protobuf ``bytes`` value."""
    return base64.b64encode(data).decode("ascii")


MD5 = bytes.fromhex("0123456789abcdef0123456789abcdef")


def seaweed_entry(
    name: str, *, size: int | str = 2048, directory: bool = False, **extra: object
) -> dict[str, Any]:
    """A filer_pb.Entry as Go encoding/json writes it (weed/pb/filer.proto field names)."""
    entry: dict[str, Any] = {
        "name": name,
        "attributes": {"file_size": size, "mtime": 1700000000, "file_mode": 420, "md5": b64(MD5)},
    }
    if directory:
        entry["is_directory"] = True
    entry.update(extra)
    return entry


def seaweed_webhook(
    key: str,
    *,
    old: dict[str, Any] | None = None,
    new: dict[str, Any] | None = None,
    new_parent: str | None = None,
    event_type: str | None = None,
) -> dict[str, Any]:
    """SeaweedFS webhook body, per weed/notification/webhook/http.go and filer_notify.go."""
    message: dict[str, Any] = {"signatures": [-1843127339]}
    if old is not None:
        message["old_entry"] = old
    if new is not None:
        message["new_entry"] = new
    if new_parent is not None:
        message["new_parent_path"] = new_parent
    body: dict[str, Any] = {"key": key, "message": message}
    if event_type is not None:
        body["event_type"] = event_type
    return body


def only(events: list[ObjectEvent]) -> ObjectEvent:
    """The single event of a message that must hold exactly one."""
    assert len(events) == 1, events
    return events[0]


# --- AWS S3 ------------------------------------------------------------------------------


def test_aws_put_record_gives_a_created_event_with_every_field() -> None:
    event = only(parse_message(aws_message()))
    assert event == ObjectEvent(
        kind="created",
        source="aws",
        event_name="ObjectCreated:Put",
        bucket="mybucket",
        key="HappyFace.jpg",
        size=1024,
        etag="d41d8cd98f00b204e9800998ecf8427e",
        version_id="096fKKXTRTtl3on89fVO.nfljtsv6qko",
        sequencer="0055AED6DCD90281E5",
    )


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.2", "2.3", "2.6"])
def test_aws_event_versions_2_x_are_all_read(version: str) -> None:
    assert only(parse_message(aws_message(aws_record(version=version)))).kind == "created"


def test_aws_event_version_3_is_refused_because_the_major_breaks_the_shape() -> None:
    with pytest.raises(EventFormatError, match=r"eventVersion is '3\.0'"):
        parse_message(aws_message(aws_record(version="3.0")))


@pytest.mark.parametrize(
    ("encoded", "key"),
    [
        ("red+flower.jpg", "red flower.jpg"),  # the documented example: space is '+'
        ("c%2B%2B+notes.dcm", "c++ notes.dcm"),  # a real plus arrives as %2B
        ("study%2Fseries%2Fimage.dcm", "study/series/image.dcm"),
        ("study/series/image.dcm", "study/series/image.dcm"),  # AWS leaves '/' alone
        ("%C3%A9chographie/%E8%84%B3.dcm", "échographie/脳.dcm"),  # UTF-8 percent-encoded
        ("100%25+done.dcm", "100% done.dcm"),
        ("literal%252Fslash.dcm", "literal%2Fslash.dcm"),  # decoded once, never twice
        ("a%2525b", "a%25b"),
    ],
)
def test_aws_keys_are_form_decoded_exactly_once(encoded: str, key: str) -> None:
    assert only(parse_message(aws_message(aws_record(encoded)))).key == key


@pytest.mark.parametrize(
    ("event_name", "kind"),
    [
        ("ObjectCreated:Put", "created"),
        ("ObjectCreated:Post", "created"),
        ("ObjectCreated:Copy", "created"),
        ("ObjectCreated:CompleteMultipartUpload", "created"),
        ("ObjectRemoved:Delete", "removed"),
        ("ObjectRemoved:DeleteMarkerCreated", "removed"),
        ("LifecycleExpiration:Delete", "removed"),
        ("LifecycleExpiration:DeleteMarkerCreated", "removed"),
        ("ObjectRestore:Post", "other"),
        ("ObjectRestore:Completed", "other"),
        ("ObjectRestore:Delete", "other"),
        ("ReducedRedundancyLostObject", "other"),
        ("Replication:OperationFailedReplication", "other"),
        ("Replication:OperationReplicatedAfterThreshold", "other"),
        ("LifecycleTransition", "other"),
        ("IntelligentTiering", "other"),
        ("ObjectTagging:Put", "other"),
        ("ObjectTagging:Delete", "other"),
        ("ObjectAcl:Put", "other"),
    ],
)
def test_aws_event_names_map_to_kinds(event_name: str, kind: str) -> None:
    event = only(parse_message(aws_message(aws_record(event_name=event_name, version="2.3"))))
    assert (event.kind, event.event_name) == (kind, event_name)


def test_aws_removal_without_size_or_etag_leaves_them_none() -> None:
    record = aws_record("gone.dcm", "ObjectRemoved:Delete", size=None, etag=None, version_id=None)
    del record["s3"]["object"]["size"], record["s3"]["object"]["eTag"]
    event = only(parse_message(aws_message(record)))
    assert (event.kind, event.key, event.size, event.etag, event.version_id) == (
        "removed",
        "gone.dcm",
        None,
        None,
        None,
    )


def test_quoted_etags_lose_their_quotes() -> None:
    event = only(parse_message(aws_message(aws_record(etag='"abc-2"'))))
    assert event.etag == "abc-2"


def test_several_records_in_one_message_give_events_in_order() -> None:
    body = aws_message(
        aws_record("a.dcm"),
        aws_record("b+c.dcm", "ObjectRemoved:Delete"),
        aws_record("d.dcm", "ObjectRestore:Completed"),
    )
    events = parse_message(body)
    assert [(e.key, e.kind) for e in events] == [
        ("a.dcm", "created"),
        ("b c.dcm", "removed"),
        ("d.dcm", "other"),
    ]


def test_a_message_may_arrive_as_text_bytes_or_parsed_json() -> None:
    body = aws_message(aws_record("x+y.dcm"))
    text = json.dumps(body)
    expected = parse_message(body)
    assert parse_message(text) == expected
    assert parse_message(text.encode()) == expected
    assert parse_message(b"\xef\xbb\xbf" + text.encode()) == expected  # with a UTF-8 BOM
    assert expected[0].key == "x y.dcm"


def test_an_empty_records_array_is_zero_events() -> None:
    assert parse_message({"Records": []}) == []


def test_object_events_are_immutable() -> None:
    event = only(parse_message(aws_message()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.key = "other"  # type: ignore[misc]


# --- test event and SNS ------------------------------------------------------------------


def test_s3_test_event_gives_one_test_event_for_the_bucket() -> None:
    event = only(parse_message(S3_TEST_EVENT))
    assert event == ObjectEvent("test", "aws", "s3:TestEvent", "bucketname", "", None, None, None)


def test_sns_wrapped_test_event_is_unwrapped() -> None:
    event = only(parse_message(json.dumps(sns_envelope(S3_TEST_EVENT))))
    assert (event.kind, event.bucket, event.key) == ("test", "bucketname", "")


def test_sns_wrapped_records_are_unwrapped_and_decoded_once() -> None:
    body = sns_envelope(aws_message(aws_record("a%2Bb+c%25.dcm"), aws_record("z.dcm")))
    events = parse_message(body)
    assert [(e.source, e.key) for e in events] == [("aws", "a+b c%.dcm"), ("aws", "z.dcm")]


def test_sns_wrapped_eventbridge_event_is_unwrapped() -> None:
    event = only(parse_message(sns_envelope(eventbridge_event("a+b.dcm"))))
    assert (event.source, event.key) == ("eventbridge", "a+b.dcm")


@pytest.mark.parametrize("sns_type", ["SubscriptionConfirmation", "UnsubscribeConfirmation"])
def test_sns_subscription_messages_are_other_not_errors(sns_type: str) -> None:
    body = dict(SNS_SUBSCRIPTION_CONFIRMATION, Type=sns_type)
    event = only(parse_message(body))
    assert (event.kind, event.event_name, event.bucket, event.key) == ("other", sns_type, "", "")


def test_sns_message_that_is_not_json_is_refused() -> None:
    with pytest.raises(EventFormatError, match="SNS Message is not JSON"):
        parse_message(sns_envelope("hello from a human"))


def test_sns_inside_sns_is_refused() -> None:
    with pytest.raises(EventFormatError, match="another SNS envelope"):
        parse_message(sns_envelope(sns_envelope(S3_TEST_EVENT)))


def test_unknown_sns_type_is_refused() -> None:
    with pytest.raises(EventFormatError, match="Type 'Telegram'"):
        parse_message(sns_envelope(S3_TEST_EVENT, sns_type="Telegram"))


# --- EventBridge -------------------------------------------------------------------------


def test_eventbridge_object_created_reads_the_documented_fields() -> None:
    event = only(parse_message(eventbridge_event()))
    assert event == ObjectEvent(
        kind="created",
        source="eventbridge",
        event_name="Object Created",
        bucket="amzn-s3-demo-bucket1",
        key="example-key",
        size=5,
        etag="b1946ac92492d2347c6235b4d2611184",
        version_id="IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
        sequencer="617f08299329d189",
    )


def test_eventbridge_object_deleted_is_removed() -> None:
    # "Object deleted (using DeleteObject)" example: no size in the object.
    body = eventbridge_event(
        "example-key", "Object Deleted", etag="d41d8cd98f00b204e9800998ecf8427e"
    )
    del body["detail"]["object"]["size"]
    body["detail"].update({"reason": "DeleteObject", "deletion-type": "Delete Marker Created"})
    event = only(parse_message(body))
    assert (event.kind, event.size) == ("removed", None)


@pytest.mark.parametrize(
    "detail_type",
    ["Object Restore Completed", "Object Tags Added", "Object Storage Class Changed"],
)
def test_other_eventbridge_detail_types_are_other(detail_type: str) -> None:
    assert only(parse_message(eventbridge_event(detail_type=detail_type))).kind == "other"


@pytest.mark.parametrize("key", ["red flower.jpg", "c++.dcm", "%2B++ %20.mp3", "a%2Fb", "é.dcm"])
def test_eventbridge_keys_are_taken_as_sent_because_they_are_not_url_encoded(key: str) -> None:
    assert only(parse_message(eventbridge_event(key))).key == key


def test_eventbridge_event_from_another_service_is_refused() -> None:
    body = eventbridge_event()
    body["source"] = "aws.ec2"
    with pytest.raises(EventFormatError, match=r"source is 'aws\.ec2'"):
        parse_message(body)


# --- MinIO -------------------------------------------------------------------------------


def test_minio_webhook_record_gives_a_created_event() -> None:
    event = only(parse_message(minio_message()))
    assert event == ObjectEvent(
        kind="created",
        source="minio",
        event_name="s3:ObjectCreated:Put",
        bucket="play1",
        key="j1.txt",
        size=488,
        etag="f22d66a7d0dbbc4a7cf1122eeeb1a106",
        version_id=None,
        sequencer="14E11E32397D42C4",
    )


def test_minio_record_key_is_query_unescaped_once_and_wins_over_top_level_key() -> None:
    # MinIO escapes "photos/my summer+(2024) 100%.dcm" with Go's url.QueryEscape.
    body = minio_message(
        "photos%2Fmy+summer%2B%282024%29+100%25.dcm",
        top_key="play1/photos/my summer+(2024) 100%.dcm",
    )
    assert only(parse_message(body)).key == "photos/my summer+(2024) 100%.dcm"


def test_minio_top_level_key_alone_is_already_decoded_and_kept_as_is() -> None:
    body = {"EventName": "s3:ObjectRemoved:Delete", "Key": "play1/a+b%2F.dcm", "Records": None}
    event = only(parse_message(body))
    assert (event.kind, event.bucket, event.key) == ("removed", "play1", "a+b%2F.dcm")


def test_old_minio_event_type_field_is_read_too() -> None:
    body = {"EventType": "s3:ObjectCreated:Put", "Key": "play1/j1.txt"}
    assert only(parse_message(body)).key == "j1.txt"


@pytest.mark.parametrize(
    ("event_name", "kind"),
    [
        ("s3:ObjectCreated:CompleteMultipartUpload", "created"),
        ("s3:ObjectCreated:Copy", "created"),
        ("s3:ObjectCreated:PutTagging", "other"),
        ("s3:ObjectCreated:DeleteTagging", "other"),
        ("s3:ObjectCreated:PutRetention", "other"),
        ("s3:ObjectCreated:PutLegalHold", "other"),
        ("s3:ObjectRemoved:Delete", "removed"),
        ("s3:ObjectRemoved:DeleteMarkerCreated", "removed"),
        ("s3:ObjectAccessed:Get", "other"),
        ("s3:Replication:OperationCompletedReplication", "other"),
    ],
)
def test_minio_event_names_map_to_kinds(event_name: str, kind: str) -> None:
    assert only(parse_message(minio_message(event_name=event_name))).kind == kind


# --- Ceph RGW ----------------------------------------------------------------------------


def test_ceph_record_with_string_size_and_empty_version_is_read() -> None:
    event = only(parse_message(ceph_message()))
    assert event == ObjectEvent(
        kind="created",
        source="ceph",
        event_name="ObjectCreated:Put",
        bucket="mybucket1",
        key="myimage1.jpg",
        size=1024,
        etag="37b51d194a7513e45b56f6524f2d51f2",
        version_id=None,
        sequencer="F7E6D75DC742D108",
    )


@pytest.mark.parametrize("key", ["a+b.dcm", "a%20b.dcm", "dir/sub dir/é.dcm", "100%25"])
def test_ceph_keys_are_taken_as_sent_because_rgw_does_not_encode_them(key: str) -> None:
    assert only(parse_message(ceph_message(key))).key == key


def test_ceph_s3_prefixed_names_and_lowercase_etag_are_tolerated() -> None:
    body = ceph_message("x.dcm", "s3:ObjectRemoved:Delete", size=0, etag="abc")
    del body["Records"][0]["s3"]["object"]["eTag"]
    event = only(parse_message(body))
    assert (event.kind, event.size, event.etag) == ("removed", 0, "abc")


@pytest.mark.parametrize(
    ("event_name", "kind"),
    [
        ("ObjectLifecycle:Expiration:Current", "removed"),
        ("ObjectLifecycle:Expiration:DeleteMarker", "removed"),
        ("ObjectLifecycle:Expiration:NonCurrent", "other"),
        ("ObjectLifecycle:Expiration:AbortMultipartUpload", "other"),
        ("ObjectLifecycle:Transition:Current", "other"),
        ("ObjectSynced:Create", "other"),
    ],
)
def test_ceph_lifecycle_names_map_to_kinds(event_name: str, kind: str) -> None:
    assert only(parse_message(ceph_message(event_name=event_name))).kind == kind


# --- SeaweedFS ---------------------------------------------------------------------------


def test_seaweedfs_new_file_in_a_bucket_is_created_with_size_and_md5_etag() -> None:
    body = seaweed_webhook(
        "/buckets/archive/2019/ct 1+2%.dcm",
        new=seaweed_entry("ct 1+2%.dcm"),
        new_parent="/buckets/archive/2019",
        event_type="create",
    )
    event = only(parse_message(json.dumps(body)))
    assert event == ObjectEvent(
        kind="created",
        source="seaweedfs",
        event_name="create",
        bucket="archive",
        key="2019/ct 1+2%.dcm",
        size=2048,
        etag=MD5.hex(),
        version_id=None,
    )


def test_seaweedfs_s3_etag_in_extended_attributes_wins_over_md5() -> None:
    entry = seaweed_entry("big.dcm", extended={"Seaweed-X-Amz-ETag": b64(b'"abcdef-3"')})
    body = seaweed_webhook("/buckets/b/big.dcm", new=entry, new_parent="/buckets/b")
    assert only(parse_message(body)).etag == "abcdef-3"


def test_seaweedfs_deletion_is_removed_at_the_webhook_key() -> None:
    body = seaweed_webhook("/buckets/b/x/y.dcm", old=seaweed_entry("y.dcm"), event_type="delete")
    event = only(parse_message(body))
    assert (event.kind, event.bucket, event.key, event.event_name) == (
        "removed",
        "b",
        "x/y.dcm",
        "delete",
    )


def test_seaweedfs_update_in_place_is_one_created_event() -> None:
    body = seaweed_webhook(
        "/buckets/b/y.dcm",
        old=seaweed_entry("y.dcm", size=10),
        new=seaweed_entry("y.dcm", size=20),
        new_parent="/buckets/b",
    )
    event = only(parse_message(body))
    assert (event.kind, event.key, event.size, event.event_name) == (
        "created",
        "y.dcm",
        20,
        "rename",
    )


def test_seaweedfs_rename_removes_the_old_key_and_creates_the_new_one() -> None:
    body = seaweed_webhook(
        "/buckets/b/in/old.dcm",  # the filer sends the old path as key
        old=seaweed_entry("old.dcm"),
        new=seaweed_entry("new.dcm"),
        new_parent="/buckets/b/done",
        event_type="rename",
    )
    assert [(e.kind, e.key) for e in parse_message(body)] == [
        ("removed", "in/old.dcm"),
        ("created", "done/new.dcm"),
    ]


def test_seaweedfs_directories_are_other() -> None:
    body = seaweed_webhook(
        "/buckets/b/study", new=seaweed_entry("study", directory=True), new_parent="/buckets/b"
    )
    event = only(parse_message(body))
    assert (event.kind, event.bucket, event.key) == ("other", "b", "study")


@pytest.mark.parametrize(
    ("path", "bucket", "key"),
    [
        ("/home/me/notes.txt", "", "/home/me/notes.txt"),  # outside the buckets folder
        ("/buckets/b", "", "/buckets/b"),  # the bucket itself
        ("/buckets/b/.uploads/0a1b/0001_x.part", "b", ".uploads/0a1b/0001_x.part"),
    ],
)
def test_seaweedfs_paths_that_are_not_objects_are_other(path: str, bucket: str, key: str) -> None:
    parent, _, name = path.rpartition("/")
    body = seaweed_webhook(path, new=seaweed_entry(name), new_parent=parent)
    event = only(parse_message(body))
    assert (event.kind, event.bucket, event.key) == ("other", bucket, key)


def test_seaweedfs_buckets_folder_can_be_configured() -> None:
    body = seaweed_webhook("/s3/b/k.dcm", new=seaweed_entry("k.dcm"), new_parent="/s3")
    body["message"]["new_parent_path"] = "/s3/b"
    event = only(parse_message(body, seaweedfs_buckets_dir="/s3/"))
    assert (event.kind, event.bucket, event.key) == ("created", "b", "k.dcm")


def test_seaweedfs_protojson_camel_case_with_string_size_is_read() -> None:
    body = {
        "directory": "/buckets/b/dir",
        "eventNotification": {
            "newEntry": {
                "name": "k.dcm",
                "attributes": {"fileSize": "4096", "md5": b64(MD5)},
            },
            "newParentPath": "/buckets/b/dir",
            "signatures": [1],
        },
        "tsNs": "1700000000000000000",
    }
    event = only(parse_message(body))
    assert (event.kind, event.key, event.size, event.etag) == (
        "created",
        "dir/k.dcm",
        4096,
        MD5.hex(),
    )


def test_seaweedfs_metadata_event_deletion_uses_its_directory() -> None:
    body = {"directory": "/buckets/b/d", "event_notification": {"old_entry": seaweed_entry("k")}}
    event = only(parse_message(body))
    assert (event.kind, event.key, event.event_name) == ("removed", "d/k", "delete")


def test_seaweedfs_notification_without_entries_is_refused() -> None:
    with pytest.raises(EventFormatError, match="neither old_entry nor new_entry"):
        parse_message({"key": "/buckets/b/k", "message": {"delete_chunks": True}})


def test_seaweedfs_deletion_without_any_path_is_refused() -> None:
    with pytest.raises(EventFormatError, match="no path"):
        parse_message({"old_entry": seaweed_entry("k")})


# --- poison messages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("", "not JSON"),
        ("not json at all", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("[1, 2]", "an array, expected an object"),
        ("42", "a number, expected an object"),
        ("null", "null, expected an object"),
        ("1" * 5000, "not usable JSON"),
        ("[" * 100_000, "nested too deeply|not JSON"),
        ({}, "fields: none"),
        ({"hello": "world"}, r"fields: hello"),
        ({"Records": {"a": 1}}, "Records is an object, expected an array"),
        ({"Records": ["x"]}, r"Records\[0\] is a string"),
        ({"Records": [{"eventSource": "aws:s3"}]}, r"Records\[0\]\.eventName"),
        ({"Records": [{"eventSource": "aws:sqs", "body": "{}"}]}, "not an S3 event source"),
        (aws_message(aws_record(size="abc")), r"size is 'abc'"),
        (aws_message(aws_record(size=-1)), r"size is -1"),
        (aws_message(aws_record(size=True)), r"size is True"),
        (aws_message(aws_record(size=1.5)), r"size is 1\.5"),
        (aws_message(aws_record(size="9" * 30)), "expected a byte count"),
        (aws_message(aws_record(etag=7)), r"eTag is a number"),
        (aws_message(aws_record("")), r"key is an empty string"),
        (aws_message(aws_record("bad%FFutf8")), "not percent-encoded UTF-8"),
        (aws_message(aws_record(bucket="")), r"bucket\.name is an empty string"),
        ({"Service": "Amazon S3", "Event": "s3:TestEvent"}, "Bucket is null"),
        ({"detail-type": "Object Created", "detail": {}}, "source is None"),
        ({"EventName": "s3:ObjectCreated:Put", "Key": "nobucket"}, "expected 'bucket/key'"),
        (123, "message body is a int"),
    ],
)
def test_poison_messages_raise_event_format_error_saying_why(body: Any, reason: str) -> None:
    with pytest.raises(EventFormatError, match=reason):
        parse_message(body)


def test_event_format_error_is_a_value_error() -> None:
    assert issubclass(EventFormatError, ValueError)


VALID_MESSAGES = [
    aws_message(aws_record("a+b.dcm"), aws_record("c.dcm", "ObjectRemoved:Delete")),
    S3_TEST_EVENT,
    sns_envelope(aws_message()),
    SNS_SUBSCRIPTION_CONFIRMATION,
    eventbridge_event(),
    minio_message("a%2Fb.dcm"),
    ceph_message(),
    seaweed_webhook(
        "/buckets/b/in/old.dcm",
        old=seaweed_entry("old.dcm"),
        new=seaweed_entry("new.dcm", extended={"Seaweed-X-Amz-ETag": b64(b"e")}),
        new_parent="/buckets/b/done",
    ),
]

JUNK: list[object] = [None, True, -3, 2.5, "", "%FF", [], [None], {}, {"x": None}]


def mutations(value: object) -> Iterator[object]:
    """Copies of ``value`` with one nested value replaced by each piece of junk."""
    if isinstance(value, dict):
        for name, inner in value.items():
            for replaced in [*JUNK, *mutations(inner)]:
                changed_object = copy.copy(value)
                changed_object[name] = replaced
                yield changed_object
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            for replaced in [*JUNK, *mutations(inner)]:
                changed_array = list(value)
                changed_array[index] = replaced
                yield changed_array


@pytest.mark.parametrize("message", VALID_MESSAGES, ids=lambda m: next(iter(m)))
def test_damaged_messages_never_raise_anything_but_event_format_error(message: object) -> None:
    count = 0
    for damaged in mutations(message):
        count += 1
        try:
            events = parse_message(damaged)  # type: ignore[arg-type]
        except EventFormatError:
            continue
        assert all(isinstance(event, ObjectEvent) for event in events)
    assert count > 50


# --- Google Cloud Storage ------------------------------------------------------------------


def gcs_push(event_type: str = "OBJECT_FINALIZE", name: str = "scans/a b+c.dcm") -> dict[str, Any]:
    """A Pub/Sub push request for a Cloud Storage notification (JSON_API_V1 payload)."""
    resource = {
        "kind": "storage#object",
        "bucket": "gbucket",
        "name": name,
        "size": "2048",
        "md5Hash": base64.b64encode(bytes(range(16))).decode(),
        "generation": "17",
    }
    return {
        "message": {
            "attributes": {"eventType": event_type, "bucketId": "gbucket", "objectId": name,
                           "objectGeneration": "17", "payloadFormat": "JSON_API_V1",
                           "notificationConfig": "projects/_/buckets/gbucket/notif/1"},
            "data": base64.b64encode(json.dumps(resource).encode()).decode(),
            "messageId": "42", "publishTime": "2026-12-01T10:00:00Z",
        },
        "subscription": "projects/p/subscriptions/s",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("event_type", "kind"),
    [
        ("OBJECT_FINALIZE", "created"),
        ("OBJECT_DELETE", "removed"),
        ("OBJECT_ARCHIVE", "other"),
        ("OBJECT_METADATA_UPDATE", "other"),
    ],
)
def test_gcs_pubsub_push_notifications(event_type: str, kind: str) -> None:
    [event] = parse_message(gcs_push(event_type))
    assert event == ObjectEvent(
        kind, "gcs", event_type, "gbucket", "scans/a b+c.dcm", 2048,  # a name is never encoded
        bytes(range(16)).hex(), None, sequencer="17",
    )  # fmt: skip


def test_gcs_push_without_a_payload_still_names_the_object() -> None:
    body = gcs_push()
    body["message"]["attributes"]["payloadFormat"] = "NONE"
    del body["message"]["data"]
    [event] = parse_message(body)
    assert (event.key, event.size, event.etag) == ("scans/a b+c.dcm", None, None)


def test_a_pubsub_message_that_is_not_from_cloud_storage_is_refused() -> None:
    body = {"message": {"attributes": {"eventType": "x"}, "data": ""}, "subscription": "s"}
    with pytest.raises(EventFormatError, match="bucketId"):
        parse_message(body)


def gcs_cloudevent(**data: object) -> dict[str, Any]:
    """A structured-mode Cloud Storage CloudEvent for gbucket/x/y.dcm, ``data`` added."""
    return {
        "specversion": "1.0",
        "type": "google.cloud.storage.object.v1.finalized",
        "source": "//storage.googleapis.com/projects/_/buckets/gbucket",
        "subject": "objects/x/y.dcm",
        "id": "1",
        "data": {"bucket": "gbucket", "name": "x/y.dcm", **data},
    }


def test_gcs_cloudevents_in_structured_mode() -> None:
    body = gcs_cloudevent(size="9", generation="3")
    [event] = parse_message(body)  # fmt: skip
    assert (event.kind, event.bucket, event.key, event.size, event.sequencer) == (
        "created", "gbucket", "x/y.dcm", 9, "3")  # fmt: skip
    deleted = {**body, "type": "google.cloud.storage.object.v1.deleted", "data": {}}
    [gone] = parse_message(deleted)  # names from source and subject
    assert (gone.kind, gone.bucket, gone.key) == ("removed", "gbucket", "x/y.dcm")
    with pytest.raises(EventFormatError, match="not a Cloud Storage object event"):
        parse_message({**body, "type": "com.example.other"})


@pytest.mark.parametrize(("generation", "sequencer"), [(3, "3"), ("3", "3"), ({}, None)])
def test_a_field_the_job_does_not_need_never_loses_an_event(
    generation: object, sequencer: str | None
) -> None:
    """GCS sends int64 fields as JSON numbers or (protojson) strings; a generation of any
    shape is informational: the event is kept either way."""
    [event] = parse_message(gcs_cloudevent(size=9, generation=generation))
    assert (event.key, event.size, event.sequencer) == ("x/y.dcm", 9, sequencer)
    record = aws_record(key="a")
    record["s3"]["object"]["sequencer"] = 12
    [aws] = parse_message({"Records": [record]})
    assert (aws.key, aws.sequencer) == ("a", "12")


def test_one_bad_record_beside_good_ones_can_be_set_apart() -> None:
    body = {"Records": [aws_record(key="a"), {"eventSource": "aws:s3"}, aws_record(key="b")]}
    with pytest.raises(EventFormatError):
        parse_message(body)  # without a place for rejects, the message is refused whole
    rejected: list[Any] = []
    events = parse_message(body, rejected=rejected)
    assert [event.key for event in events] == ["a", "b"]
    assert [(r.where, r.record) for r in rejected] == [("Records[1]", {"eventSource": "aws:s3"})]
    with pytest.raises(EventFormatError):  # nothing readable at all: poison as a whole
        parse_message({"Records": [{"x": 1}, {"y": 2}]}, rejected=[])


# --- what one message may cost -----------------------------------------------------------

FOUR_MIB = 4 * 1024 * 1024


def pushed(resource: bytes) -> str:
    """A Pub/Sub push whose base64 ``data`` is ``resource``: its values hide from a count
    on the push request's own text."""
    body = gcs_push()
    body["message"]["data"] = base64.b64encode(resource).decode()
    return json.dumps(body)


EMPTY_OBJECTS = b"[" + b",".join([b"{}"] * ((FOUR_MIB - 2) // 3)) + b"]"  # 1.4 million


@pytest.mark.parametrize(
    ("body", "parses"),
    [
        (EMPTY_OBJECTS, 0),
        (json.dumps({"Records": [{}] * ((FOUR_MIB - 20) // 4)}, separators=(",", ":")), 0),
        (pushed(b"[" + b",".join([b"{}"] * 700_000) + b"]"), 1),  # the push request only
    ],
    ids=["array", "records", "pubsub-data"],
)
def test_a_body_of_more_values_than_any_notification_is_refused_without_parsing_it(
    body: str | bytes, parses: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 4 MiB ``[{},{},...]`` parses into ~100 MB of objects: it is refused on a count of
    its separators instead, so it costs a scan of the text."""
    parsed: list[object] = []
    loads = json.loads

    def counted_loads(text: str | bytes) -> Any:
        parsed.append(text)
        return loads(text)

    monkeypatch.setattr(json, "loads", counted_loads)
    with pytest.raises(EventFormatError, match="more than any storage event notification"):
        parse_message(body)
    assert len(parsed) == parses


def test_a_thousand_records_of_every_vendor_fit_the_bounds() -> None:
    """A real sender batches a few hundred records at most; 1,000 of the largest fit."""
    for message in (aws_message(aws_record()), minio_message(), ceph_message()):
        body = json.dumps({**message, "Records": message["Records"] * 1000}, indent=2)
        assert len(body) > 1_000_000
        assert len(parse_message(body)) == 1000


def test_more_records_than_any_storage_sends_are_poison_as_a_whole() -> None:
    most: dict[str, list[Any]] = {"Records": [{}] * (MAX_RECORDS - 1) + [aws_record()]}
    assert len(parse_message(most, rejected=[])) == 1
    with pytest.raises(EventFormatError, match="more than any storage sends in one message"):
        parse_message({"Records": [*most["Records"], aws_record()]}, rejected=[])


def test_a_reason_quotes_a_value_sent_in_80_characters_at_most() -> None:
    record = aws_record()
    record["eventSource"] = "x" * 1_000_000
    with pytest.raises(EventFormatError) as raised:
        parse_message(aws_message(record))
    assert len(str(raised.value)) < 250  # the reply, the log line and the poison list


def test_a_poison_error_keeps_nothing_the_parse_built() -> None:
    """The caller keeps the error while it records the poison message (a Redis round
    trip, or seconds while Redis hangs): its traceback holds no parser frame, which would
    hold every parsed object of the body, and it chains no other error."""
    body = json.dumps({"Records": [{"eventSource": "aws:s3", "padding": [{}] * 1000}]})
    with pytest.raises(EventFormatError) as raised:
        parse_message(body)
    frames = [frame.f_code.co_name for frame, _ in traceback.walk_tb(raised.value.__traceback__)]
    assert frames[1:] == ["parse_message"]  # [0] is this test's own frame
    assert raised.value.__context__ is None and raised.value.__cause__ is None
