"""Publishing job messages in bulk: the producer's hot path, and the reconcile's.

``app.send_task`` costs about 250 µs per message (routing, retry wrappers, a
``saferepr`` of the arguments, one Redis round trip each): 782 keys/s measured, far
from a manifest of millions. Here:

* Celery's own protocol function (``app.amqp.as_task_v2``) builds the headers,
  properties and body of the *first* message of each call; every other message copies
  them and changes only what differs between two of our messages (task id, root id,
  correlation id, ``argsrepr``, the argument) - checked by the tests against
  ``app.send_task``'s own message and a real worker, and by :func:`_check_template`
  at run time (Celery and kombu are pinned to the tested minor release);
* kombu's channel shapes the transport envelope (``prepare_message``, ``encode_body``)
  and the envelopes are pushed in one Redis pipeline per ``batch_size`` messages.

:class:`JobSender` makes a batch's job messages from object references and sends them:
the producer's enqueue once the ledger has marked the objects queued, the reconcile
check (:mod:`worker.runtime.reconcile`) for the objects it found without a message.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from celery import Celery
from kombu.entity import PERSISTENT_DELIVERY_MODE  # type: ignore[attr-defined]

from worker.runtime.contract import TASK_COMPRESS, BatchSpec, JobMessage, ObjectRef
from worker.runtime.ledger import Ledger

_VARYING_HEADERS = {"id", "root_id", "argsrepr"}


class BulkPublisher:
    """Sends ``compress_object`` messages to one queue, many per round trip."""

    def __init__(self, app: Celery, queue: str, batch_size: int = 1000) -> None:
        self.app = app
        self.queue = queue
        self.batch_size = batch_size

    def publish(self, payloads: Iterable[dict[str, Any]]) -> int:
        """Publish one message per payload; return how many were sent."""
        with self.app.connection_for_write() as connection:
            channel = _redis_channel(connection)
            with channel.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
                count = 0
                for envelope in self._envelopes(channel, payloads):
                    pipe.lpush(self.queue, envelope)  # what kombu's Redis _put does
                    count += 1
                    if count % self.batch_size == 0:
                        pipe.execute()
                pipe.execute()
        return count

    def envelopes(self, payloads: Iterable[dict[str, Any]]) -> list[str]:
        """The broker envelope of each payload, as :meth:`publish` would push it (for
        the ledger to push in the step that marks the objects queued)."""
        return list(self._envelopes(_shaper(self.app), payloads))

    def _envelopes(self, channel: Any, payloads: Iterable[dict[str, Any]]) -> Iterator[str]:
        template: Any = None
        embed = ""
        for payload in payloads:
            task_id = str(uuid.uuid4())
            argument = json.dumps(payload, ensure_ascii=False)
            argsrepr = f"[{argument}]"
            if template is None:
                # as send_task fills them: ignore_result None (the task's own setting
                # holds), reply_to this process's oid
                template = self.app.amqp.as_task_v2(
                    task_id, TASK_COMPRESS, args=(payload,), kwargs={},
                    argsrepr=argsrepr, kwargsrepr="{}",
                    ignore_result=None,  # type: ignore[arg-type]  # stubs say bool; Celery passes None
                    reply_to=self.app.thread_oid,
                )  # fmt: skip
                _check_template(template.headers, task_id)
                embed = json.dumps(template.body[2])
            headers = {**template.headers, "id": task_id, "root_id": task_id, "argsrepr": argsrepr}
            # kombu's Producer.publish adds the (default exchange's) delivery mode
            properties = {
                **template.properties,
                "correlation_id": task_id,
                "delivery_mode": PERSISTENT_DELIVERY_MODE,
            }
            body = f"[[{argument}], {{}}, {embed}]"  # (args, kwargs, embed): protocol 2
            message = channel.prepare_message(
                body, 0, "application/json", "utf-8", headers, properties
            )
            message["body"], encoding = channel.encode_body(message["body"], channel.body_encoding)
            message["properties"].update(
                body_encoding=encoding,
                delivery_tag=task_id,  # unique per message, like kombu's own tags
                delivery_info={"exchange": "", "routing_key": self.queue},
            )
            yield json.dumps(message)


# (broker URL, process id) -> the kombu connection and channel envelopes are shaped with
_SHAPERS: dict[tuple[str, int], tuple[Any, Any]] = {}
_SHAPERS_LOCK = threading.Lock()


def _shaper(app: Celery) -> Any:
    """A kombu Redis channel of ``app``'s broker, opened once per process and kept.

    Shaping an envelope (``prepare_message``, ``encode_body``) does no I/O, but opening
    a channel does, and kombu's connect retries take seconds while Redis is away: the
    listener must answer sooner than that.
    """
    slot = (str(app.conf.broker_url), os.getpid())
    with _SHAPERS_LOCK:
        if slot not in _SHAPERS:
            connection = app.connection_for_write()
            _SHAPERS[slot] = (connection, _redis_channel(connection))
        return _SHAPERS[slot][1]


def _redis_channel(connection: Any) -> Any:
    """kombu's Redis (virtual) channel of ``connection``; the stubs only know the
    abstract one."""
    channel = connection.default_channel
    if not hasattr(channel, "conn_or_acquire"):
        raise RuntimeError("bulk publishing needs a Redis broker (redis:// URL)")
    return channel


def _check_template(headers: dict[str, Any], task_id: str) -> None:
    """Refuse to copy headers if a Celery upgrade added a per-message field we'd miss."""
    per_message = {key for key, value in headers.items() if value == task_id}
    if not per_message <= _VARYING_HEADERS:
        raise RuntimeError(f"Celery message headers changed shape: {sorted(per_message)}")


class JobSender:
    """Sends the job messages of one batch to one queue, as they are: whether an object
    is to be sent is decided before (by the ledger, or by the reconcile check)."""

    def __init__(
        self, app: Celery, ledger: Ledger, spec: BatchSpec, queue: str, rewrite: bool = False
    ) -> None:
        self.publisher = BulkPublisher(app, queue)
        self.ledger = ledger
        self.spec = spec
        self.queue = queue
        self.rewrite = rewrite  # write outputs that exist already again
        self._queue_noted = ""

    def send(self, refs: Iterable[ObjectRef]) -> int:
        """Publish one job message per ref; return how many were sent."""
        self._note_queue()
        return self.publisher.publish(self._payloads(refs))

    def envelopes(self, refs: Iterable[ObjectRef]) -> list[str]:
        """The broker envelope of each ref's message, for the ledger to push in the step
        that marks the objects queued."""
        self._note_queue()
        return self.publisher.envelopes(self._payloads(refs))

    def _note_queue(self) -> None:
        if self._queue_noted != self.queue:
            # where the batch's messages go: the workers' automatic reconcile only
            # checks batches of the queue they consume
            self.ledger.note_queue(self.spec.batch, self.queue)
            self._queue_noted = self.queue

    def _payloads(self, refs: Iterable[ObjectRef]) -> Iterator[dict[str, Any]]:
        # informational (Flower): with a policy, its rules choose per object
        target = "policy" if self.spec.policy is not None else ",".join(self.spec.options.target)
        for ref in refs:
            yield JobMessage(
                batch=self.spec.batch,
                bucket=ref.bucket,
                key=ref.key,
                etag=ref.etag or None,
                size=ref.size,
                version_id=ref.version_id,
                target=target,
                rewrite=self.rewrite,
            ).model_dump(exclude_none=True, exclude_defaults=True)
