"""The obstore data path (worker/runtime/lean_s3.py) against the real S3 server: what it
serves, what it leaves to boto3, and how its errors map to outcomes."""

from __future__ import annotations

from typing import Any

import obstore
import pytest
from obstore.exceptions import GenericError, PermissionDeniedError, UnauthenticatedError

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import SeaweedS3
from tests.integration.test_pipeline_steps import make_job, spec_for
from worker.errors import PermanentError, TransientError
from worker.runtime import lean_s3
from worker.runtime.ledger import Ledger
from worker.runtime.pipeline import process_object
from worker.runtime.storage import Storage
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a/b.dcm", True),
        ("a b/ü #%+.dcm", True),
        ("/a.dcm", False),
        ("a/", False),
        ("a//b.dcm", False),
        ("a/./b.dcm", False),
        ("a/../b.dcm", False),
        ("a\nb.dcm", False),
        ("", False),
    ],
)
def test_only_keys_obstore_keeps_as_they_are_go_its_way(key: str, expected: bool) -> None:
    assert lean_s3.addressable(key) is expected


def test_its_errors_map_to_the_same_outcomes_as_boto3s() -> None:
    assert isinstance(lean_s3.classify(FileNotFoundError("x"), "get"), PermanentError)
    rejected = lean_s3.classify(GenericError("Client error with status code: 400 Bad"), "put")
    assert isinstance(rejected, PermanentError) and rejected.code == "storage_rejected"
    for text in ("Server error, status code: 503", "status code: 429", "connection refused"):
        assert isinstance(lean_s3.classify(GenericError(text), "get"), TransientError)
    assert lean_s3.answered_no_write(GenericError("status code: 503 Slow Down"))
    assert not lean_s3.answered_no_write(GenericError("status code: 500"))
    none = lean_s3.classify(
        UnauthenticatedError("External AWS credential provider: PermanentError: no S3 ..."), "get"
    )
    assert isinstance(none, PermanentError) and none.code == "storage_misconfigured"
    refresh = UnauthenticatedError("External AWS credential provider: CredentialRetrievalError")
    assert isinstance(lean_s3.classify(refresh, "get"), TransientError)
    denied = lean_s3.classify(PermissionDeniedError("403 Forbidden"), "get")
    assert isinstance(denied, PermanentError) and denied.code == "access_denied"
    with pytest.raises(lean_s3.Unsupported):
        lean_s3.classify(GenericError("InvalidMetadata { value: ... }"), "get")


def test_only_a_pool_process_serves_objects_through_obstore(settings: WorkerSettings) -> None:
    """obstore's runtime does not survive a fork (a child's first request hangs): the
    worker's main process, which forks pool processes at any time and calls storage
    itself (feeder, archiver, breaker probe), and every command keep to boto3."""
    assert Storage(settings).lean is None
    assert Storage(settings, serves_objects=True).lean is not None
    assert Storage(settings.model_copy(update={"s3_client": "boto3"}), True).lean is None


def test_keys_obstore_cannot_address_are_compressed_through_boto3(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    assert storage.lean is not None  # the default
    source, dest = bucket_pair
    lean_calls: list[str] = []
    for name in ("get", "head", "put"):
        real = getattr(storage.lean, name)

        def spy(*args: Any, real: Any = real, **kwargs: Any) -> Any:
            lean_calls.append(args[1])
            return real(*args, **kwargs)

        monkeypatch.setattr(storage.lean, name, spy)
    spec = spec_for(source, dest)
    for key in ("odd//double.dcm", "odd/tab\tkey.dcm", "plain.dcm"):
        s3_server.client().put_object(Bucket=source, Key=key, Body=to_bytes(make_image(32, 32)))
        etag = s3_server.client().head_object(Bucket=source, Key=key)["ETag"]
        result = process_object(make_job(ledger, storage, spec, key, etag))
        assert result["outcome"] == "done", result
        head = s3_server.client().head_object(Bucket=dest, Key=f"out/{key}")
        assert head["Metadata"]["dcmpress-outcome"] == "done/compressed"
    assert set(lean_calls) == {"plain.dcm", "out/plain.dcm"}  # the others: boto3 only


def test_an_object_whose_metadata_obstore_cannot_read_is_read_through_boto3(
    ledger: Ledger, storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str]
) -> None:
    """Some servers keep metadata bytes outside ASCII as they were sent; obstore then
    refuses every read of the object, boto3 reads it."""
    assert storage.lean is not None
    source, dest = bucket_pair
    data = to_bytes(make_image(32, 32))
    obstore.put(storage.lean.store(source, writing=True), "accent.dcm", data,
                attributes={"patient-note": "é"})  # fmt: skip
    fetched = storage.fetch(source, "accent.dcm")
    assert fetched.data == data
    assert storage.head(source, "accent.dcm").size == len(data)
    etag = s3_server.client().head_object(Bucket=source, Key="accent.dcm")["ETag"]
    result = process_object(make_job(ledger, storage, spec_for(source, dest), "accent.dcm", etag))
    assert result["outcome"] == "done", result


def test_a_write_obstore_refuses_before_sending_goes_through_boto3(
    storage: Storage, s3_server: SeaweedS3, bucket_pair: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    assert storage.lean is not None
    _, dest = bucket_pair

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("obstore refused an argument (injected)")

    monkeypatch.setattr(lean_s3.obstore, "put", refused)
    storage.put(dest, "out/k.dcm", b"DICM" * 10, {"dcmpress-outcome": "done/compressed"})
    head = s3_server.client().head_object(Bucket=dest, Key="out/k.dcm")
    assert head["Metadata"]["dcmpress-outcome"] == "done/compressed"
    assert head["ContentLength"] == 40


def test_a_missing_object_and_an_output_not_written_yet(
    storage: Storage, bucket_pair: tuple[str, str]
) -> None:
    source, _ = bucket_pair
    with pytest.raises(PermanentError) as missing:
        storage.fetch(source, "nothing-here.dcm")
    assert missing.value.code == "source_missing"
    assert storage.output_metadata(source, "nothing-here.dcm") is None
