"""The bulk publisher writes exactly the message Celery itself would write.

`worker/runtime/publish.py` copies the envelope Celery's own `as_task_v2` and kombu's Redis
channel build for the first message of a call. This test holds that copy against the
installed Celery and kombu (pinned to the tested minor release in pyproject.toml):
one message through `app.send_task`, one through the publisher, compared field by
field in a real Redis.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from worker.runtime.app import create_app
from worker.runtime.contract import TASK_COMPRESS
from worker.runtime.ledger import Ledger
from worker.runtime.publish import BulkPublisher
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration

PER_MESSAGE_HEADERS = {"id", "root_id"}  # differ between any two messages
PER_MESSAGE_PROPERTIES = {"correlation_id", "delivery_tag"}


def _pop(ledger: Ledger, queue: str) -> dict[str, Any]:
    raw = ledger.redis.rpop(queue)
    assert raw is not None, f"nothing in {queue}"
    return dict(json.loads(raw))


def test_bulk_messages_match_celerys_own(settings: WorkerSettings, ledger: Ledger) -> None:
    app = create_app(settings)
    payload = {"batch": "b", "bucket": "archive", "key": "a/ü b.dcm", "etag": "e", "size": 7}
    celery_queue, bulk_queue = (f"publish-{name}-{uuid.uuid4().hex[:6]}" for name in "cb")
    app.send_task(TASK_COMPRESS, args=(payload,), queue=celery_queue)
    assert BulkPublisher(app, bulk_queue).publish([payload]) == 1
    theirs, ours = _pop(ledger, celery_queue), _pop(ledger, bulk_queue)

    assert set(ours) == set(theirs)
    # one deliberate difference: argsrepr is the job as JSON (what Flower shows, as documented)
    assert ours["headers"]["argsrepr"] == json.dumps([payload], ensure_ascii=False)
    drop = PER_MESSAGE_HEADERS | {"argsrepr"}
    assert {k: v for k, v in ours["headers"].items() if k not in drop} == {
        k: v for k, v in theirs["headers"].items() if k not in drop
    }
    assert ours["headers"]["root_id"] == ours["headers"]["id"]
    ours_props, their_props = ours["properties"], theirs["properties"]
    assert set(ours_props) == set(their_props)
    for name in set(ours_props) - PER_MESSAGE_PROPERTIES - {"delivery_info"}:
        assert ours_props[name] == their_props[name], name
    assert ours_props["correlation_id"] == ours["headers"]["id"]
    assert ours_props["delivery_info"] == {
        **their_props["delivery_info"],
        "routing_key": bulk_queue,
    }
    for name in ("content-type", "content-encoding"):
        assert ours[name] == theirs[name]
    body = json.loads(base64.b64decode(ours["body"]))
    assert body == json.loads(base64.b64decode(theirs["body"]))
    assert body[0] == [payload]
