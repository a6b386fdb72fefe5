"""Flower against the real stack: `celery -A worker flower` shows our tasks readably.

A real Flower process is started with the same ``DCMPRESS_*`` environment as the
worker, *before* anything is enqueued (Flower only knows tasks from the events it
receives). The task is then looked up through Flower's HTTP API: its name, its
argument (batch, key, target - never a credential) and its result (outcome, code,
sizes, ratio). Results come from the ``task-succeeded`` event, as Celery's
``saferepr`` of the returned dict: the app stores no results (``task_ignore_result``).
"""

from __future__ import annotations

import ast
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dcmpress.stack.samples import make_image, to_bytes
from dcmpress.stack.services import CeleryWorker, SeaweedS3
from tests.conftest import run_cli, wait_for_batch
from tests.flower import Flower, ok, running_flower
from worker.runtime.contract import TASK_COMPRESS
from worker.runtime.ledger import Ledger

pytestmark = pytest.mark.integration


@pytest.fixture
def flower(
    stack_env: dict[str, str], celery_worker: CeleryWorker, tmp_path: Path
) -> Iterator[Flower]:
    """A real Flower on a free loopback port with basic auth, ready and receiving events."""
    with running_flower(stack_env, tmp_path, worker=celery_worker.hostname) as server:
        yield server


def succeeded(flower: Flower, batch: str) -> Callable[[], dict[str, Any] | None]:
    """A probe for a succeeded task of ``batch`` with a result, as Flower lists it."""

    def probe() -> dict[str, Any] | None:
        body = ok(flower.get("/api/tasks", taskname=TASK_COMPRESS, state="SUCCESS"))
        if body is None:
            return None
        for task in json.loads(body).values():
            if batch in (task.get("args") or "") and task.get("result"):
                return dict(task)
        return None

    return probe


def test_flower_shows_our_task_with_arguments_and_result(
    flower: Flower,
    stack_env: dict[str, str],
    s3_server: SeaweedS3,
    bucket_pair: tuple[str, str],
    ledger: Ledger,
    tmp_path: Path,
) -> None:
    source, dest = bucket_pair
    key = "flower/ct.dcm"
    client = s3_server.client()
    client.put_object(
        Bucket=source, Key=key, Body=to_bytes(make_image(96, 96, bits_stored=12, seed=3))
    )
    client.close()
    batch = f"flower-{uuid.uuid4().hex[:8]}"
    proc = run_cli(
        stack_env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/",
        "--target", "jpeg-ls", "--batch", batch,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    counts = wait_for_batch(ledger, batch, 1)
    assert counts.get("done") == 1, counts

    task = flower.poll(f"a succeeded task of batch {batch}", succeeded(flower, batch))

    assert task["name"] == TASK_COMPRESS
    assert task["state"] == "SUCCESS"
    assert task["worker"]
    # args: the producer's argsrepr, a JSON list holding the one message
    (message,) = json.loads(task["args"])
    assert message["batch"] == batch
    assert (message["bucket"], message["key"]) == (source, key)
    assert message["target"] == "jpeg-ls"
    assert message["size"] > 0 and message["etag"]
    assert task["kwargs"] == "{}"
    # result: Celery's saferepr of the returned dict (a Python literal, not JSON)
    result = ast.literal_eval(task["result"])
    assert (result["batch"], result["key"]) == (batch, key)
    assert (result["outcome"], result["code"]) == ("done", "compressed")
    assert result["bytes_in"] == message["size"]
    assert 0 < result["bytes_out"] < result["bytes_in"]
    assert result["ratio"] == round(result["bytes_in"] / result["bytes_out"], 3)
    assert result["target"] == "jpeg-ls"
    assert result["rule"] is None  # no policy
    # Flower's task search finds it by batch and outcome code
    status, body = flower.get("/api/tasks", search=f"args:{batch} result:compressed")
    assert status == 200 and list(json.loads(body)) == [task["uuid"]]
    # the same task through the single-task API
    status, body = flower.get(f"/api/task/info/{task['uuid']}")
    assert status == 200
    assert json.loads(body)["args"] == task["args"]
    # no credential anywhere in what Flower shows
    secret = stack_env["AWS_SECRET_ACCESS_KEY"]
    assert secret
    for shown in (json.dumps(task), body):
        assert secret not in shown

    # under a policy, the result names the rule that decided
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\nname = "lossless, by policy"\ntarget = ["rle"]\n')
    ruled = f"flower-policy-{uuid.uuid4().hex[:8]}"
    proc = run_cli(
        stack_env, "enqueue", f"s3://{source}/", "--dest", f"s3://{dest}/ruled/",
        "--policy", str(policy), "--batch", ruled,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    wait_for_batch(ledger, ruled, 1)
    task = flower.poll(f"a succeeded task of batch {ruled}", succeeded(flower, ruled))
    assert json.loads(task["args"])[0]["target"] == "policy"
    result = ast.literal_eval(task["result"])
    assert (result["rule"], result["target"]) == ("lossless, by policy", "rle")


def test_flower_api_needs_auth_and_metrics_are_exposed(
    flower: Flower, celery_worker: CeleryWorker
) -> None:
    status, body = flower.get("/api/tasks", auth=False)
    assert status == 401, body
    assert flower.get("/api/workers", auth=False)[0] == 401
    status, body = flower.get("/api/tasks")
    assert status == 200 and isinstance(json.loads(body), dict)
    # /metrics is Prometheus text and needs no auth (Flower does not protect it)
    status, metrics = flower.get("/metrics", auth=False)
    assert status == 200
    for name in (
        "flower_events_total",
        "flower_worker_online",
        "flower_task_runtime_seconds",
        "flower_worker_number_of_currently_executing_tasks",
    ):
        assert f"# TYPE {name} " in metrics, name
    assert f'flower_worker_online{{worker="{celery_worker.hostname}"}} 1.0' in metrics
