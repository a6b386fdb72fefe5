"""A fault-injecting HTTP/1.1 proxy on loopback, between workers and the S3 server.

Each request is parsed with h11 and forwarded as it came (the Host header too, so
SigV4 signatures stay valid); a rule chosen per request decides what the client gets:

- ``pass``: the server's answer.
- ``reset_before``: the connection is reset before anything is forwarded (the server
  never sees the request).
- ``reset_after``: the request is forwarded and fully answered by the server, then the
  client's connection is reset instead of answered (a write stored, its answer lost).
- ``truncate``: the server's answer with its full Content-Length, but only half of
  the body, then the connection closes (an ``IncompleteRead``).
- ``delay:SECONDS``: the answer, that much later.
- ``status:CODE``: the proxy answers that HTTP status itself with an S3 error body
  (``503``: ``ServiceUnavailable``), and the server never sees the request (an outage
  behind a load balancer that still answers).

Every request is logged (method, path, server status, fault) so tests can count what
the server really received - e.g. how many times an output was written.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

from dcmpress.stack.services import HOST

_HOP_BY_HOP = {
    b"connection", b"keep-alive", b"transfer-encoding", b"proxy-connection", b"expect",
}  # fmt: skip


@dataclass(frozen=True)
class Request:
    """What a rule sees of one request."""

    method: str
    path: str  # without the query string
    query: str
    seen: int  # how many requests with this method and path came before this one


@dataclass(frozen=True)
class Exchange:
    """One logged request and what became of it."""

    method: str
    path: str
    query: str
    status: int  # the server's answer; 0 if it was never forwarded
    fault: str


Rule = Callable[[Request], str]


def passes(request: Request) -> str:
    """The rule of a proxy that injects nothing."""
    return "pass"


def sometimes(fault: str, probability: float, method: str, seed: int = 7) -> Rule:
    """A rule injecting ``fault`` into that share of ``method`` requests (seeded)."""
    chance = random.Random(seed)
    lock = threading.Lock()

    def rule(request: Request) -> str:
        if request.method != method:
            return "pass"
        with lock:
            return fault if chance.random() < probability else "pass"

    return rule


def mixture(faults: dict[str, list[tuple[str, float]]], seed: int = 11) -> Rule:
    """A rule drawing, for each request on an object, one fault of its method's list
    (``{"GET": [("truncate", 0.3)], ...}``, shares of requests) or none (seeded);
    bucket-level requests (listings) pass."""
    chance = random.Random(seed)
    lock = threading.Lock()

    def rule(request: Request) -> str:
        if request.path.count("/") < 2:
            return "pass"
        with lock:
            draw = chance.random()
        for fault, share in faults.get(request.method, []):
            if draw < share:
                return fault
            draw -= share
        return "pass"

    return rule


def first_of_each(fault: str, method: str, times: int = 1, path_contains: str = "") -> Rule:
    """A rule injecting ``fault`` into the first ``times`` requests of ``method`` on each
    path (containing ``path_contains``); bucket-level requests (listings) pass."""

    def rule(request: Request) -> str:
        on_object = request.path.count("/") >= 2 and path_contains in request.path
        if request.method == method and on_object and request.seen < times:
            return fault
        return "pass"

    return rule


@dataclass
class FaultProxy:
    """The proxy; a context manager serving on 127.0.0.1:<random port>."""

    upstream: str  # e.g. http://127.0.0.1:8333
    rule: Rule = passes
    log: list[Exchange] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the proxy's own failures

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        self._upstream = (parts.hostname or HOST, parts.port or 80)
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.2)  # accept() wakes up to notice the stop
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], int] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def endpoint_url(self) -> str:
        """The URL clients use instead of the server's."""
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def requests(self, method: str, path_contains: str = "") -> list[Exchange]:
        """The logged requests of ``method`` whose path contains ``path_contains``."""
        with self._lock:
            return [e for e in self.log if e.method == method and path_contains in e.path]

    def stored_writes(self, path: str) -> int:
        """How many PUTs (plain or copies) to exactly ``path`` the server answered 200."""
        with self._lock:
            return sum(
                1
                for e in self.log
                if e.method == "PUT" and e.path == path and e.status == 200
                and "partNumber" not in e.query and "uploadId" not in e.query
            )  # fmt: skip

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = http.client.HTTPConnection(*self._upstream, timeout=60)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = self._read_request(client, conn)
                if request is None:
                    return
                head, body = request
                if not self._answer(client, conn, upstream, head, body):
                    return
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (OSError, h11.ProtocolError, http.client.HTTPException):
            return  # a peer went away: what a network does
        except Exception as exc:  # a bug of the proxy itself: tests check there is none
            with self._lock:
                self.errors.append(repr(exc))
        finally:
            upstream.close()
            client.close()

    @staticmethod
    def _read_request(
        client: socket.socket, conn: h11.Connection
    ) -> tuple[h11.Request, bytes] | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = client.recv(65536)
                conn.receive_data(data)
                if not data and head is None:
                    return None
                continue
            if isinstance(event, h11.Request):
                head = event
                if conn.they_are_waiting_for_100_continue:
                    client.sendall(
                        conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return head, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None

    def _answer(
        self,
        client: socket.socket,
        conn: h11.Connection,
        upstream: http.client.HTTPConnection,
        head: h11.Request,
        body: bytes,
    ) -> bool:
        """Forward one request and answer it as the rule says; False: connection over."""
        method = head.method.decode()
        target = head.target.decode()
        path, _, query = target.partition("?")
        with self._lock:
            seen = self._seen.get((method, path), 0)
            self._seen[(method, path)] = seen + 1
        fault = self.rule(Request(method, path, query, seen))
        if fault == "reset_before":
            self._record(method, path, query, 0, fault)
            _reset(client)
            return False
        if fault.startswith("status:"):
            self._record(method, path, query, 0, fault)
            _send_error(client, conn, int(fault.partition(":")[2]), bodiless=method == "HEAD")
            return True
        headers = {
            name.decode(): value.decode()
            for name, value in head.headers
            if name.lower() not in _HOP_BY_HOP and name.lower() != b"content-length"
        }
        upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            upstream.putheader(name, value)
        if body or method in ("PUT", "POST"):
            upstream.putheader("Content-Length", str(len(body)))
        upstream.endheaders(body or None)
        response = upstream.getresponse()
        payload = response.read()
        self._record(method, path, query, response.status, fault)
        if fault == "reset_after":
            _reset(client)
            return False
        if fault.startswith("delay:"):
            time.sleep(float(fault.partition(":")[2]))
        bodiless = method == "HEAD" or response.status in (204, 304)
        out_headers = [
            (name, value)
            for name, value in response.getheaders()
            if name.lower().encode() not in _HOP_BY_HOP
            and (bodiless or name.lower() != "content-length")  # a HEAD's tells the size
        ]
        if not bodiless:
            out_headers.append(("Content-Length", str(len(payload))))
        client.sendall(conn.send(h11.Response(status_code=response.status, headers=out_headers)))
        if fault == "truncate" and method == "GET" and len(payload) > 1:
            client.sendall(conn.send(h11.Data(data=payload[: len(payload) // 2])))
            client.shutdown(socket.SHUT_RDWR)
            return False
        if payload and not bodiless:
            client.sendall(conn.send(h11.Data(data=payload)))
        client.sendall(conn.send(h11.EndOfMessage()))
        return True

    def _record(self, method: str, path: str, query: str, status: int, fault: str) -> None:
        with self._lock:
            self.log.append(Exchange(method, path, query, status, fault))


_ERROR_CODES = {500: "InternalError", 503: "ServiceUnavailable"}


def _send_error(client: socket.socket, conn: h11.Connection, status: int, bodiless: bool) -> None:
    """Answer ``status`` with the XML error body S3 sends (none to a HEAD)."""
    code = _ERROR_CODES.get(status, "InternalError")
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            "<Message>injected by the fault proxy</Message></Error>").encode()  # fmt: skip
    headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
    client.sendall(conn.send(h11.Response(status_code=status, headers=headers)))
    if not bodiless:
        client.sendall(conn.send(h11.Data(data=body)))
    client.sendall(conn.send(h11.EndOfMessage()))


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed peer or a load balancer does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
