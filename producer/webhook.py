"""The webhook of ``dcmpress listen --http``: Starlette on uvicorn, limits first.

MinIO, Ceph RGW, the SeaweedFS filer and Cloud Storage (Pub/Sub push, CloudEvents)
POST their event notifications here; :class:`~producer.listen.EventIntake` turns them
into jobs. The endpoint faces a network, so a real HTTP stack parses the requests
(uvicorn answers 400 itself to a malformed request line, header or Content-Length such
as ``abc``, ``-1`` or ``1e12``) and every limit is set:

* a body limit: 413 before reading when Content-Length says so, or once a chunked body
  grows past it;
* a body timeout (408: a body shorter than its Content-Length, a stalled sender) and a
  header timeout (the connection is closed when the headers do not arrive in time);
* a concurrency limit on the event requests being handled (a token checked, headers
  read), 503 above it, and a higher one on open connections (uvicorn answers 503 above
  it): a socket that sends no headers, or no token, holds no event slot;
* a token (``Authorization: Bearer T``, a bare ``T``, or ``?token=T`` for senders such
  as Pub/Sub push whose URL carries it), required by ``dcmpress listen`` for any bind
  off the loopback interface.

Answers: 200 after the jobs are enqueued (the body says how many, and how many records
were rejected on their own), or after the message is in the spool while Redis cannot
take it (:mod:`producer.spool`; many senders never retry a 503); 202 for a poison
message (kept in the poison list; a 2xx so the sender stops retrying what can never
succeed); 503 only when neither Redis nor the spool can take it (no internal detail in
the body).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import hmac
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from producer.listen import EventIntake
from producer.spool import SpoolFull

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebhookLimits:
    """How much a sender may ask of the webhook."""

    max_body_bytes: int = 4 * 1024 * 1024  # a notification is KBs; batches of records fit
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_concurrency: int = 64  # event requests handled at once (headers read); above: 503
    max_connections: int = 1024  # open connections, idle ones too; above: 503 (uvicorn)
    keep_alive: int = 5


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The whole body, chunked or not, refusing one longer than ``limit``."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def is_loopback(host: str) -> bool:
    """True for an address (or name) only this machine can reach: the webhook may
    listen there without a token."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _authorised(request: Request, token: str | None) -> bool:
    if not token:
        return True
    given = request.headers.get("authorization", "") or request.query_params.get("token", "")
    # MinIO sends auth_token as configured: accept "Bearer T" and a bare "T"
    candidate = given[7:] if given.lower().startswith("bearer ") else given
    return hmac.compare_digest(candidate.encode(), token.encode())


def _binary_cloudevent(headers: Mapping[str, str], body: bytes) -> bytes | None:
    """A binary-mode CloudEvent (``ce-*`` headers, the data as the body) as the JSON text
    of the same event in structured mode.

    The body is not parsed here, on the event loop, outside the bounds of
    :func:`~producer.events.parse_message`, which parses the whole text in a worker
    thread. A body that is not one JSON value makes the text invalid (a poison message)
    or, at worst, an event its sender could have sent structured.
    """
    if "ce-specversion" not in headers:
        return None
    attributes = {
        name: headers[f"ce-{name}"]
        for name in ("specversion", "type", "source", "subject", "id", "time")
        if f"ce-{name}" in headers
    }
    head = json.dumps(attributes).removesuffix("}").encode()
    return head + b', "data": ' + body.removeprefix(codecs.BOM_UTF8) + b"}"


def create_app(
    intake: EventIntake,
    token: str | None,
    health: Callable[[], bool],
    limits: WebhookLimits = WebhookLimits(),
) -> Starlette:
    """The ASGI app: POST events anywhere, GET/HEAD health."""

    in_flight = 0  # event requests being handled; counted on the event loop's thread only

    async def receive_events_within_limits(request: Request) -> Response:
        """The token, then one of ``max_concurrency`` slots, then :func:`receive_events`."""
        nonlocal in_flight
        if not _authorised(request, token):
            return JSONResponse({"error": "bad or missing token"}, status_code=401)
        if in_flight >= limits.max_concurrency:
            return JSONResponse(
                {"error": "too many requests in flight; retry later"},
                status_code=503,
                headers={"connection": "close"},  # its body is not read
            )
        in_flight += 1
        try:
            return await receive_events(request)
        finally:
            in_flight -= 1

    async def receive_events(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and "transfer-encoding" in request.headers:
            # both framings at once: a proxy and this server could read different bodies
            return JSONResponse(
                {"error": "Content-Length with Transfer-Encoding"},
                status_code=400,
                headers={"connection": "close"},
            )
        if declared is None and request.scope.get("http_version") == "1.0":
            # HTTP/1.0 has no chunked framing: without a length the body has no end
            return JSONResponse({"error": "Content-Length required"}, status_code=411)
        if declared is not None and int(declared) > limits.max_body_bytes:
            return _too_large(limits)
        try:
            body = await asyncio.wait_for(
                _read_body(request, limits.max_body_bytes), limits.body_timeout
            )
        except _BodyTooLarge:
            return _too_large(limits)
        except TimeoutError:
            return JSONResponse(
                {"error": f"the body did not arrive within {limits.body_timeout:g} s"},
                status_code=408,
                headers={"connection": "close"},
            )
        if not body.strip():
            return JSONResponse({"enqueued": 0})  # a sender's connectivity test
        source = f"http:{request.client.host if request.client else '?'}"
        message = _binary_cloudevent(request.headers, body) or body
        try:
            report = await run_in_threadpool(intake.accept, message, source)
        except SpoolFull as exc:
            log.error("webhook: %s; answering 503 until it drains", exc)
            return _unavailable()
        except Exception:
            log.exception("could not enqueue a webhook event; the sender will retry")
            return _unavailable()
        if report.poison:
            return JSONResponse({"enqueued": 0, "rejected": report.poison}, status_code=202)
        return JSONResponse({
            "enqueued": report.enqueued, "duplicates": report.duplicates,
            "ignored": report.ignored, "rejected": report.rejected,
            "spooled": report.spooled, "batches": sorted(report.batches),
        })  # fmt: skip

    async def healthz(request: Request) -> Response:
        ok = await run_in_threadpool(health)
        return JSONResponse(
            {"status": "ok" if ok else "redis unavailable"}, status_code=200 if ok else 503
        )

    async def alive(request: Request) -> Response:
        return Response(status_code=200)  # senders' liveness probes (HEAD anywhere)

    return Starlette(
        routes=[
            Route("/", healthz, methods=["GET"]),
            Route("/health", healthz, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/{path:path}", receive_events_within_limits, methods=["POST"]),
            Route("/{path:path}", alive, methods=["HEAD"]),
        ]
    )


def _unavailable() -> Response:
    # no internal detail for the sender; the log says what failed
    return JSONResponse({"error": "could not enqueue now; retry later"}, status_code=503)


def _too_large(limits: WebhookLimits) -> Response:
    return JSONResponse(
        {"error": f"body over {limits.max_body_bytes:,} bytes"},
        status_code=413,
        headers={"connection": "close"},
    )


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing connections whose headers never complete.

    uvicorn times out idle keep-alive connections but not a request whose headers
    trickle in (or stop); each such connection would hold a slot of the concurrency
    limit for ever.
    """

    header_timeout = WebhookLimits.header_timeout

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _awaiting_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers():
            self._arm()  # the first bytes of a request on a kept-alive connection
        super().data_received(data)
        if not self._awaiting_headers():
            self._disarm()

    def _expired(self) -> None:
        self._deadline = None
        if self._awaiting_headers() and not self.transport.is_closing():
            log.warning("webhook: request headers not received within %gs", self.header_timeout)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class WebhookServer:
    """uvicorn serving :func:`create_app` in a thread of its own."""

    def __init__(self, app: Starlette, host: str, port: int, limits: WebhookLimits) -> None:
        protocol = type(
            "DcmpressHttpProtocol",
            (HeaderTimeoutProtocol,),
            {"header_timeout": limits.header_timeout},
        )
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=protocol,
            lifespan="off",
            # open connections, idle ones too (each closed after header_timeout without
            # headers); uvicorn counts the one asking among them. Requests: create_app.
            limit_concurrency=limits.max_connections + 1,
            timeout_keep_alive=limits.keep_alive,
            log_config=None,  # the process's logging, not uvicorn's own
            server_header=False,
            access_log=False,
        )
        self.server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None

    @property
    def server_port(self) -> int:
        """The bound port (the one asked for, or the one the OS chose for 0)."""
        for server in self.server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.config.port

    def start(self, timeout: float = 10.0) -> None:
        """Serve in a daemon thread; return once the socket listens."""
        self._thread = threading.Thread(target=self.server.run, name="webhook", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the webhook did not start on {self.config.host}:{self.config.port} "
                    "(address in use? see the log)"
                )
            time.sleep(0.02)

    def alive(self) -> bool:
        """True while the server thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def shutdown(self) -> None:
        """Stop accepting, finish the requests in flight, and return."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)


def _return_freed_bodies_to_the_system() -> None:
    """Have glibc's malloc give every block of 128 KiB or more (a request body, its text)
    back to the system once freed.

    By default glibc raises that threshold to the largest block freed so far, so after a
    burst of 4 MiB bodies their memory stays with the process: 64 concurrent bodies of
    each hostile shape left RSS 443 MB above its start, and 63 MB with this. Other C
    libraries have no ``mallopt``: nothing is done there.
    """
    m_mmap_threshold = -3  # <malloc.h>; a fixed value also ends the raising
    with contextlib.suppress(AttributeError, OSError, TypeError):
        ctypes.CDLL(None).mallopt(m_mmap_threshold, 128 * 1024)


def serve_http(
    intake: EventIntake,
    host: str,
    port: int,
    token: str | None,
    health: Callable[[], bool],
    limits: WebhookLimits = WebhookLimits(),
) -> WebhookServer:
    """Start the webhook on ``host:port`` (0 for any free port) and return it."""
    _return_freed_bodies_to_the_system()
    server = WebhookServer(create_app(intake, token, health, limits), host, port, limits)
    server.start()
    return server
