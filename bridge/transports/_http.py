"""A small HTTP/1.1 server on Trio and h11, with a hard limit on everything a client sends.

:func:`serve_http` runs ``await handler(request)`` for every request and knows nothing of
what the handler does. It exists because a management port must survive whatever the
network sends it, at a cost small enough not to disturb the media on the same event loop:

* **One task per connection**, in a nursery the :class:`HttpServer` owns, and that task is
  the only one that ever touches the connection's socket: no second task can be sending
  (an error response, an EOF) while another sends, so there is no ``BusyResourceError``
  race by construction. A failure inside one connection (a client's garbage, a handler
  bug, a bug here) is counted and logged and ends that connection only.
* **h11 parses** (sans-IO); the response is written here in one ``send_all`` (a status
  line, four headers and the body need no state machine, and h11's writer costs more than
  everything else per request). A fresh ``h11.Connection`` per request cycle carries the
  unparsed bytes over, so pipelined requests are answered in order.
* **Limits** (:class:`HttpLimits`): request head bytes (431), body bytes (413, checked
  against ``Content-Length`` before reading and while reading chunked bodies), the time
  from a request's first byte to its last (408), the wait for a request on an idle
  connection (closed quietly), the handler's time (503), the time to send a response (the
  connection is dropped), requests per connection, connections in total (503) and per
  client address (429), and a per-address token bucket of requests per second (429 with
  ``Retry-After``; a request over the rate on an open connection first waits for its
  token, nothing more read meanwhile). Refusals decided at ``accept`` (connection caps,
  an empty bucket) parse nothing and start no task: the socket waits in a bounded
  "tarpit" for a second, then gets a canned answer and is closed, so a client that
  reconnects as soon as it is answered is slowed down instead of spinning.
* **Closing**: after the last response the write side is shut and whatever the client
  still sends is read and dropped for a moment (RFC 9112 §9.6: closing with unread input
  makes the kernel send RST, which can destroy the response before the client reads it).

A client that disconnects mid-request or mid-response is a DEBUG line and a count, never
an ERROR. Counters live in :class:`HttpStats` (plain ints: the caller exports them).
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import os
import re
import socket as stdlib_socket
import time
from collections.abc import Awaitable, Callable, Sequence
from email.utils import formatdate
from http import HTTPStatus
from typing import NoReturn
from urllib.parse import parse_qsl, unquote

import attrs
import h11
import trio

from ._tcp import listener_addresses, open_tcp_listeners

__all__ = [
    "HttpLimits",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "HttpStats",
    "PeerLimiter",
    "render_response",
    "serve_http",
]

_log = logging.getLogger("bridge.transports.http")

#: Bytes asked of the kernel per receive: a whole admin request fits in one.
_RECEIVE_BYTES = 65536
#: accept() errors that mean "out of resources for now": back off instead of failing.
_ACCEPT_BACKOFF_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: accept() errors about a connection that died in the backlog (trio's list): skip it.
_IGNORABLE_ACCEPT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
    )
    if hasattr(errno, name)
)
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
# RFC 9110 §5.5: field values are visible ASCII, SP, HTAB and obs-text; a CR, LF or NUL
# in a header we were asked to send would split the response.
_BAD_FIELD = re.compile(rb"[\x00\r\n]")


@attrs.frozen
class HttpLimits:
    """What one client may send, and for how long. Defaults suit a management API."""

    #: Request line plus headers (h11's ``max_incomplete_event_size``): 431 beyond.
    max_header_bytes: int = 16 * 1024
    #: Request body, by Content-Length or as read (chunked): 413 beyond.
    max_body_bytes: int = 64 * 1024
    #: A connection with no request started (new, or kept alive) is closed after this.
    idle_timeout_s: float = 5.0
    #: From a request's first byte to its last (slow headers, slow bodies): 408 beyond.
    request_timeout_s: float = 5.0
    #: The handler's time to answer: 503 beyond.
    handler_timeout_s: float = 10.0
    #: Writing one response (a client that does not read): dropped beyond.
    send_timeout_s: float = 10.0
    #: Reading and dropping what a client still sends after our last response.
    linger_s: float = 1.0
    max_requests_per_connection: int = 100
    #: Open connections in total (503 beyond) and from one address (429 beyond).
    max_connections: int = 128
    max_connections_per_peer: int = 16
    #: Requests per second per client address (token bucket); 0 turns the limit off.
    rate_per_peer: float = 50.0
    burst_per_peer: int = 100
    #: A request over its peer's rate waits up to this long for a token (nothing more
    #: is read from that connection meanwhile); if none came, it is answered 429.
    max_throttle_s: float = 1.0
    #: Addresses whose buckets are remembered (a full bucket is forgotten first).
    max_tracked_peers: int = 4096
    #: A connection refused at accept (the caps, an empty bucket) gets its answer after
    #: this delay (a client that reconnects at once is slowed to the tarpit's pace)...
    refusal_delay_s: float = 1.0
    #: ... while at most this many wait; beyond, the answer goes out at once.
    tarpit_size: int = 256


@attrs.frozen(slots=True)
class HttpRequest:
    """One complete request: the head as h11 parsed it and the body (already read)."""

    method: str
    #: The request target as sent (``/v1/streams?limit=5``).
    target: str
    #: The path, percent-decoded; the query string, raw.
    path: str
    query_string: str
    #: Header names lower-case, values as bytes, in the order received.
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    peer: tuple[str, int] = ("", 0)
    http_version: str = "1.1"

    @classmethod
    def build(
        cls,
        method: str,
        target: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        peer: tuple[str, int] = ("", 0),
        http_version: str = "1.1",
    ) -> HttpRequest:
        raw_path, _, query = target.partition("?")
        return cls(
            method=method,
            target=target,
            path=unquote(raw_path),
            query_string=query,
            headers=tuple(headers),
            body=body,
            peer=peer,
            http_version=http_version,
        )

    def header(self, name: str, default: str = "") -> str:
        """The first value of header ``name`` (case-insensitive), or ``default``."""
        key = name.lower().encode()
        for k, v in self.headers:
            if k == key:
                return v.decode("latin-1")
        return default

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; a repeated one keeps its last value."""
        if not self.query_string:
            return {}
        return dict(parse_qsl(self.query_string, keep_blank_values=True))


@attrs.frozen(slots=True)
class HttpResponse:
    status: int = 200
    body: bytes = b""
    #: "" sends no Content-Type (an empty body).
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    #: Close the connection after this response.
    close: bool = False


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]
ErrorResponder = Callable[[int, str], HttpResponse]


def plain_error(status: int, message: str) -> HttpResponse:
    return HttpResponse(status, (message + "\n").encode())


_date_second = -1
_date_value = b""


def _http_date() -> bytes:
    """The Date header value (RFC 9110 §6.6.1), formatted once a second."""
    global _date_second, _date_value
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_value = formatdate(now, usegmt=True).encode()
    return _date_value


def render_response(response: HttpResponse, *, head: bool = False, close: bool = False) -> bytes:
    """The bytes of ``response`` on an HTTP/1.1 connection. ``head``: the answer to a HEAD
    request (headers of the GET, no body; RFC 9110 §9.3.2). ``close`` adds
    ``Connection: close``. Raises ValueError for a header that would split the response."""
    body = response.body
    parts = [
        b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\ndate: %s\r\n"
        % (response.status, _REASONS.get(response.status, b""), len(body), _http_date())
    ]
    if response.content_type:
        parts.append(b"content-type: %s\r\n" % response.content_type.encode("latin-1"))
    for name, value in response.headers:
        if ":" in name or _BAD_FIELD.search(name.encode("latin-1") + value.encode("latin-1")):
            raise ValueError(f"invalid response header {name!r}: {value!r}")
        parts.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
    if close or response.close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if not head:
        parts.append(body)
    return b"".join(parts)


@attrs.define(slots=True)
class HttpStats:
    """Plain counters of one server (or several, sharing it across restarts)."""

    connections: int = 0
    active: int = 0
    requests: int = 0
    #: Responses sent, by status code (a bounded set: the handler's and the server's own).
    responses: dict[int, int] = attrs.field(factory=dict)
    #: Connections refused at accept: ``max_connections``, ``max_connections_per_peer``,
    #: ``rate_limited``; requests over the rate on an open connection: ``throttled``
    #: (delayed until their token) or ``rate_limited`` (answered 429).
    refused: dict[str, int] = attrs.field(factory=dict)
    #: Connections that ended badly: ``malformed`` (400/431/501), ``too_large`` (413),
    #: ``timeout`` (408), ``disconnected`` (mid-request or mid-response),
    #: ``send_timeout``, ``handler_error`` (500), ``handler_timeout`` (503), ``internal``.
    errors: dict[str, int] = attrs.field(factory=dict)

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


@attrs.define(slots=True)
class PeerLimiter:
    """Connection caps and a token bucket per client address. Pure: the caller passes
    the time, so it is tested without a clock or a socket."""

    max_connections: int
    max_connections_per_peer: int
    rate_per_s: float
    burst: float
    max_tracked_peers: int = 4096
    active: int = 0
    _conns: dict[str, int] = attrs.field(factory=dict)
    #: peer -> [tokens, time of that count]
    _buckets: dict[str, list[float]] = attrs.field(factory=dict)

    @classmethod
    def from_limits(cls, limits: HttpLimits) -> PeerLimiter:
        return cls(
            max_connections=limits.max_connections,
            max_connections_per_peer=limits.max_connections_per_peer,
            rate_per_s=limits.rate_per_peer,
            burst=float(limits.burst_per_peer),
            max_tracked_peers=limits.max_tracked_peers,
        )

    def admit(self, peer: str, now: float) -> str | None:
        """Register a new connection from ``peer``; or the reason to refuse it."""
        if self.active >= self.max_connections:
            return "max_connections"
        held = self._conns.get(peer, 0)
        if held >= self.max_connections_per_peer:
            return "max_connections_per_peer"
        if self.rate_per_s > 0 and self._tokens(peer, now) < 1.0:
            return "rate_limited"
        self.active += 1
        self._conns[peer] = held + 1
        return None

    def release(self, peer: str) -> None:
        held = self._conns.get(peer, 0)
        if held <= 1:
            self._conns.pop(peer, None)
        else:
            self._conns[peer] = held - 1
        self.active = max(0, self.active - 1)

    def connections(self, peer: str) -> int:
        return self._conns.get(peer, 0)

    def take(self, peer: str, now: float) -> float:
        """Spend one request of ``peer``'s bucket: 0.0 if allowed, else the seconds until
        the next request would be."""
        if self.rate_per_s <= 0:
            return 0.0
        tokens = self._tokens(peer, now)
        if tokens >= 1.0:
            self._buckets[peer][0] = tokens - 1.0
            return 0.0
        return (1.0 - tokens) / self.rate_per_s

    def retry_after(self, peer: str, now: float) -> float:
        if self.rate_per_s <= 0:
            return 0.0
        return max(0.0, (1.0 - self._tokens(peer, now)) / self.rate_per_s)

    def tracked(self) -> int:
        return len(self._buckets)

    def _tokens(self, peer: str, now: float) -> float:
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) >= self.max_tracked_peers:
                self._prune(now)
            self._buckets[peer] = [self.burst, now]
            return self.burst
        tokens = min(self.burst, bucket[0] + max(0.0, now - bucket[1]) * self.rate_per_s)
        bucket[0] = tokens
        bucket[1] = now
        return tokens

    def _prune(self, now: float) -> None:
        # A bucket that has refilled is the same as none: forget those first. If every
        # tracked peer is still limited, forget the older half (insertion order): memory
        # stays bounded and the pruning cost is amortised over many new peers.
        rate, burst = self.rate_per_s, self.burst
        for peer in [p for p, (t, at) in self._buckets.items() if t + (now - at) * rate >= burst]:
            del self._buckets[peer]
        if len(self._buckets) >= self.max_tracked_peers:
            for peer in list(self._buckets)[: max(1, len(self._buckets) // 2)]:
                del self._buckets[peer]


@attrs.define(slots=True)
class _Throttle:
    """At most one log line per ``interval_s``; counts what it held back."""

    interval_s: float = 60.0
    last: float = -math.inf
    held: int = 0

    def allow(self) -> int | None:
        """None: stay quiet. Otherwise log now, mentioning the returned number held back."""
        now = time.monotonic()
        if now - self.last < self.interval_s:
            self.held += 1
            return None
        self.last = now
        held, self.held = self.held, 0
        return held


class _Close(Exception):
    """End this connection (after the response already sent, if any)."""


@attrs.define(eq=False)
class HttpServer:
    """The server behind :func:`serve_http`: its limits, counters and per-peer state,
    and (while :meth:`serve` runs) the nursery of its connection tasks."""

    handler: Handler
    limits: HttpLimits = attrs.field(factory=HttpLimits)
    stats: HttpStats = attrs.field(factory=HttpStats)
    error_response: ErrorResponder = plain_error
    logger: logging.Logger = _log
    peers: PeerLimiter = attrs.field(init=False)
    _canned: dict[tuple[int, str, float, bool], bytes] = attrs.field(factory=dict, init=False)
    _canned_second: int = attrs.field(default=-1, init=False)
    #: Refused connections waiting for their answer: (due time, socket, answer).
    _tarpit: collections.deque[tuple[float, trio.socket.SocketType, bytes]] = attrs.field(
        factory=collections.deque, init=False
    )
    _tarpit_wake: trio.Event | None = attrs.field(default=None, init=False)
    _error_log: _Throttle = attrs.field(factory=_Throttle, init=False)
    _accept_log: _Throttle = attrs.field(factory=lambda: _Throttle(5.0), init=False)

    def __attrs_post_init__(self) -> None:
        self.peers = PeerLimiter.from_limits(self.limits)

    async def serve(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Accept on every listener (and close them on the way out) until cancelled."""
        async with trio.open_nursery() as nursery:
            self._tarpit_wake = trio.Event()
            nursery.start_soon(self._serve_tarpit)
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started(listener_addresses(list(listeners)))
        raise AssertionError("unreachable: the accept loops never return")  # pragma: no cover

    # -- accepting ------------------------------------------------------------------

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        # The raw accept (what SocketListener.accept does, minus the SocketStream): the
        # peer address comes with it, and a refused connection costs no setsockopt, no
        # getpeername and no stream object.
        sock = listener.socket
        async with listener:
            while True:
                try:
                    conn, peer = await sock.accept()
                except OSError as exc:
                    if exc.errno in _CLOSED_ERRNOS:
                        raise trio.ClosedResourceError from None
                    if exc.errno in _IGNORABLE_ACCEPT_ERRNOS:
                        continue  # the client gave up before we accepted: next
                    if exc.errno not in _ACCEPT_BACKOFF_ERRNOS:
                        raise
                    held = self._accept_log.allow()
                    if held is not None:
                        self.logger.warning(
                            "HTTP accept failed, backing off: %s", exc, extra={"held_back": held}
                        )
                    await trio.sleep(0.1)
                    continue
                address = str(peer[0])
                now = trio.current_time()
                refusal = self.peers.admit(address, now)
                if refusal is not None:
                    self._refuse_at_accept(conn, address, refusal, now)
                    continue
                self.stats.connections += 1
                nursery.start_soon(
                    self._connection, trio.SocketStream(conn), address, (address, int(peer[1]))
                )

    def _refuse_at_accept(
        self, sock: trio.socket.SocketType, address: str, reason: str, now: float
    ) -> None:
        """A canned 503/429, no parsing and no task: the socket waits in the tarpit for
        ``refusal_delay_s``, then gets the answer and is closed. A client that reconnects
        as soon as it is answered is slowed to the tarpit's pace; when the tarpit is
        full, the answer goes out at once."""
        self.stats.count(self.stats.refused, reason)
        if reason == "max_connections":
            status, message, retry = 503, "too many connections; try again later", 1.0
        elif reason == "max_connections_per_peer":
            status, retry = 429, 1.0
            message = (
                f"more than {self.limits.max_connections_per_peer} connections from one address"
            )
        else:
            status, message = 429, "too many requests; slow down"
            retry = self.peers.retry_after(address, now)
        data = self._canned_error(status, message, retry)
        self.stats.responses[status] = self.stats.responses.get(status, 0) + 1
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("HTTP connection from %s refused: %s", address, reason)
        tarpit = self._tarpit
        if len(tarpit) < self.limits.tarpit_size and self._tarpit_wake is not None:
            tarpit.append((now + self.limits.refusal_delay_s, sock, data))
            if len(tarpit) == 1:
                self._tarpit_wake.set()
            return
        _answer_and_close(sock, data)

    async def _serve_tarpit(self) -> None:
        """Answer and close the refused connections whose delay is up (one task for
        them all; it sleeps while the tarpit is empty)."""
        tarpit = self._tarpit
        try:
            while True:
                if not tarpit:
                    self._tarpit_wake = wake = trio.Event()
                    await wake.wait()
                    continue
                due = tarpit[0][0]
                if trio.current_time() < due:
                    await trio.sleep_until(due)
                now = trio.current_time()
                # At most 16 per step (~0.5 ms): a backlog of due answers must not
                # become one long step of the event loop.
                for _ in range(16):
                    if not tarpit or tarpit[0][0] > now:
                        break
                    _, sock, data = tarpit.popleft()
                    _answer_and_close(sock, data)
                await trio.lowlevel.checkpoint()
        finally:
            while tarpit:
                tarpit.popleft()[1].close()

    def _canned_error(
        self, status: int, message: str, retry_after_s: float = 0.0, *, close: bool = True
    ) -> bytes:
        retry = float(math.ceil(retry_after_s)) if retry_after_s > 0 else 0.0
        key = (status, message, retry, close)
        second = int(time.time())
        if second != self._canned_second:
            # Their Date header is stale: render again (at most once a second each).
            self._canned.clear()
            self._canned_second = second
        data = self._canned.get(key)
        if data is None:
            response = self.error_response(status, message)
            if retry:
                response = attrs.evolve(
                    response, headers=(*response.headers, ("retry-after", f"{retry:.0f}"))
                )
            data = render_response(response, close=close)
            if len(self._canned) < 256:
                self._canned[key] = data
        return data

    # -- one connection -------------------------------------------------------------

    async def _connection(
        self, stream: trio.SocketStream, address: str, peer: tuple[str, int]
    ) -> None:
        stats = self.stats
        stats.active += 1
        try:
            await self._converse(stream, address, peer)
        except _Close:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            stats.count(stats.errors, "disconnected")
            if self.logger.isEnabledFor(logging.DEBUG):
                self.logger.debug(
                    "HTTP client %s:%d went away: %s", *peer, exc or type(exc).__name__
                )
        except Exception:
            # A bug here: contained to this connection, logged (throttled), counted.
            stats.count(stats.errors, "internal")
            held = self._error_log.allow()
            if held is not None:
                self.logger.exception(
                    "HTTP connection from %s:%d failed", *peer, extra={"held_back": held}
                )
        finally:
            stats.active -= 1
            self.peers.release(address)
            stream.socket.close()

    async def _converse(
        self, stream: trio.SocketStream, address: str, peer: tuple[str, int]
    ) -> None:
        # One cancel scope for the whole connection, its deadline moved at each phase
        # (idle, request, handler, send): a scope per phase costs more than the parsing.
        limits = self.limits
        stats = self.stats
        pending = b""
        eof = False
        phase = "idle"
        # Moving a deadline costs more than parsing a request line, so a deadline is only
        # moved when it changes by more than a tenth of the new limit.
        with trio.CancelScope(deadline=trio.current_time() + limits.idle_timeout_s) as scope:
            for served in range(limits.max_requests_per_connection):
                if not pending:
                    # Idle: no parser until a byte arrives (a client that closes after
                    # its answer costs one receive, nothing more).
                    phase = "idle"
                    _move(scope, limits.idle_timeout_s)
                    pending = await stream.receive_some(_RECEIVE_BYTES)
                    if not pending:
                        return
                # The peer's request rate: a request over it waits for its token (up
                # to max_throttle_s) with nothing read meanwhile, so a client that
                # keeps its connection is slowed by TCP backpressure at no cost to us;
                # if there is still no token then, it is answered 429.
                refused_wait_s = 0.0
                wait_s = self.peers.take(address, trio.current_time())
                if wait_s:
                    # Even a request that will be refused waits: a client answered at
                    # once would come straight back (at most one refusal per connection
                    # per max_throttle_s this way).
                    stats.count(stats.refused, "throttled")
                    phase = "throttle"
                    delay_s = min(wait_s, limits.max_throttle_s)
                    _move(scope, delay_s + 1.0)
                    await trio.sleep(delay_s)
                    wait_s = self.peers.take(address, trio.current_time())
                    if wait_s:
                        stats.count(stats.refused, "rate_limited")
                        refused_wait_s = wait_s
                phase = "request"
                _move(scope, limits.request_timeout_s)
                conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
                conn.receive_data(pending)
                if eof:
                    conn.receive_data(b"")
                head: h11.Request | None = None
                deferred: tuple[int, str, float] | None = None
                headers: list[tuple[bytes, bytes]] = []
                body = bytearray()
                continued = False
                while True:
                    try:
                        event = conn.next_event()
                    except h11.ProtocolError as exc:
                        if eof:
                            # The client closed mid-request: nobody to answer.
                            stats.count(stats.errors, "disconnected")
                            self._debug("HTTP client %s:%d closed mid-request: %s", peer, exc)
                            return
                        status = exc.error_status_hint
                        stats.count(stats.errors, "malformed")
                        self._debug("HTTP bad request from %s:%d: %s", peer, exc)
                        scope.deadline = math.inf  # _fail has its own limits
                        await self._fail(stream, status, str(exc) or HTTPStatus(status).phrase)
                        return
                    if event is h11.NEED_DATA:
                        if (
                            head is not None
                            and not continued
                            and conn.they_are_waiting_for_100_continue
                        ):
                            continued = True
                            await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        data = await stream.receive_some(_RECEIVE_BYTES)
                        if not data:
                            eof = True
                        conn.receive_data(data)
                        continue
                    kind = type(event)
                    if kind is h11.Data:
                        assert isinstance(event, h11.Data)
                        body += event.data
                        if len(body) > limits.max_body_bytes:
                            stats.count(stats.errors, "too_large")
                            scope.deadline = math.inf
                            await self._fail(
                                stream, 413, f"body over {limits.max_body_bytes} bytes"
                            )
                            return
                    elif kind is h11.EndOfMessage:
                        break
                    elif kind is h11.Request:
                        assert isinstance(event, h11.Request)
                        head = event
                        # One pass over the headers (h11's Headers iterate slowly).
                        headers = [(n.lower(), v) for n, v in event.headers.raw_items()]
                        refusal = self._check_head(event, headers)
                        if refusal is None and refused_wait_s:
                            refusal = (429, "too many requests; slow down", refused_wait_s)
                        if refusal is not None:
                            if refusal[0] == 429 and not _has_body(headers):
                                # Over the rate on a kept-alive connection: answer 429
                                # and keep the connection (a reconnect costs us more).
                                deferred = refusal
                                continue
                            scope.deadline = math.inf
                            await self._fail(stream, *refusal)
                            return
                    else:  # ConnectionClosed cannot come first on a fresh parser; PAUSED neither
                        return
                assert head is not None
                if deferred is not None:
                    data = self._canned_error(*deferred, close=eof or _wants_close(head, headers))
                    stats.responses[429] = stats.responses.get(429, 0) + 1
                    phase = "send"
                    _move(scope, limits.send_timeout_s)
                    await stream.send_all(data)
                    if eof or _wants_close(head, headers):
                        break
                    trailing, eof = conn.trailing_data
                    pending = bytes(trailing)
                    continue
                phase = "handler"
                _move(scope, limits.handler_timeout_s)
                response, close = await self._respond(head, headers, bytes(body), peer)
                close = (
                    close
                    or served + 1 >= limits.max_requests_per_connection
                    or eof
                    or _wants_close(head, headers)
                )
                try:
                    data = render_response(response, head=head.method == b"HEAD", close=close)
                except ValueError:
                    held = self._error_log.allow()
                    if held is not None:
                        self.logger.exception("HTTP handler returned a bad response")
                    stats.count(stats.errors, "handler_error")
                    response = self.error_response(500, "internal error")
                    data = render_response(response, close=True)
                    close = True
                stats.responses[response.status] = stats.responses.get(response.status, 0) + 1
                phase = "send"
                _move(scope, limits.send_timeout_s)  # a no-op when it equals the handler's
                await stream.send_all(data)
                if close:
                    break
                trailing, eof = conn.trailing_data
                pending = bytes(trailing)
        if scope.cancelled_caught:
            if phase == "request":
                stats.count(stats.errors, "timeout")
                self._debug("HTTP client %s:%d too slow: request incomplete", peer)
                await self._fail(
                    stream, 408, f"request not complete within {limits.request_timeout_s:g}s"
                )
            elif phase == "handler":
                stats.count(stats.errors, "handler_timeout")
                self.logger.warning(
                    "HTTP request from %s:%d took over %gs; answered 503",
                    *peer,
                    limits.handler_timeout_s,
                )
                await self._fail(stream, 503, "the request took too long")
            elif phase == "send":
                stats.count(stats.errors, "send_timeout")
            return  # idle: close quietly
        await self._linger(stream, eof)

    def _check_head(
        self, head: h11.Request, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, str, float] | None:
        """The refusal (status, message, retry-after) for a request head, if any."""
        limits = self.limits
        stats = self.stats
        # h11 enforces max_incomplete_event_size only on a head that is still
        # incomplete; one that arrived whole is measured here.
        size = len(head.target) + 16
        length = None
        for name, value in headers:
            size += len(name) + len(value) + 4
            if name == b"content-length":
                length = int(value)  # h11 has validated it
        if size > limits.max_header_bytes:
            stats.count(stats.errors, "malformed")
            return 431, f"request head over {limits.max_header_bytes} bytes", 0.0
        if length is not None and length > limits.max_body_bytes:
            stats.count(stats.errors, "too_large")
            return 413, f"body over {limits.max_body_bytes} bytes", 0.0
        return None

    async def _respond(
        self,
        head: h11.Request,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        peer: tuple[str, int],
    ) -> tuple[HttpResponse, bool]:
        """The handler's response, or the server's 500; and whether to close after.
        (The handler's time limit is the caller's cancel scope.)"""
        stats = self.stats
        stats.requests += 1
        request = HttpRequest.build(
            head.method.decode("ascii", "replace"),
            head.target.decode("ascii", "replace"),
            headers,
            body,
            peer,
            head.http_version.decode("ascii", "replace"),
        )
        try:
            return await self.handler(request), False
        except Exception:
            stats.count(stats.errors, "handler_error")
            held = self._error_log.allow()
            if held is not None:
                self.logger.exception(
                    "HTTP %s %s failed",
                    request.method,
                    request.path,
                    extra={"held_back": held},
                )
            return self.error_response(500, "internal error"), True

    async def _send(self, stream: trio.SocketStream, data: bytes) -> None:
        with trio.move_on_after(self.limits.send_timeout_s) as scope:
            await stream.send_all(data)
        if scope.cancelled_caught:
            self.stats.count(self.stats.errors, "send_timeout")
            raise _Close

    async def _fail(
        self, stream: trio.SocketStream, status: int, message: str, retry_after_s: float = 0.0
    ) -> None:
        """Answer a request we will not serve, then close."""
        data = self._canned_error(status, message, retry_after_s)
        self.stats.responses[status] = self.stats.responses.get(status, 0) + 1
        await self._send(stream, data)
        await self._linger(stream, False)

    async def _linger(self, stream: trio.SocketStream, eof: bool) -> None:
        """Half-close, then read and drop what the client still sends, briefly (RFC 9112
        §9.6), so that our close does not reset the connection under its response."""
        if eof:
            return
        with trio.move_on_after(self.limits.linger_s):
            try:
                await stream.send_eof()
                dropped = 0
                while dropped < self.limits.max_body_bytes:
                    data = await stream.receive_some(_RECEIVE_BYTES)
                    if not data:
                        return
                    dropped += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _debug(self, msg: str, peer: tuple[str, int], *detail: object) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(msg, peer[0], peer[1], *detail)


def _answer_and_close(sock: trio.socket.SocketType, data: bytes) -> None:
    """Write a canned answer straight to the socket and close it (no task, no wait)."""
    fd = sock.fileno()
    try:
        # What already arrived is read (and dropped) so that close() sends FIN, not RST.
        os.read(fd, _RECEIVE_BYTES)
    except OSError:
        pass
    try:
        os.write(fd, data)
        sock.shutdown(stdlib_socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


def _move(scope: trio.CancelScope, timeout_s: float) -> None:
    deadline = trio.current_time() + timeout_s
    if abs(scope.deadline - deadline) > 0.1 * timeout_s:
        scope.deadline = deadline


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def _wants_close(head: h11.Request, headers: list[tuple[bytes, bytes]]) -> bool:
    """RFC 9112 §9.3: HTTP/1.0 closes (we do not do 1.0 keep-alive); ``Connection: close``."""
    if head.http_version != b"1.1":
        return True
    return any(name == b"connection" and b"close" in value.lower() for name, value in headers)


async def serve_http(
    handler: Handler,
    host: str | None = None,
    port: int = 0,
    *,
    listeners: Sequence[trio.SocketListener] | None = None,
    limits: HttpLimits | None = None,
    stats: HttpStats | None = None,
    error_response: ErrorResponder = plain_error,
    logger: logging.Logger | None = None,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve HTTP/1.1 on ``host:port`` (or on ``listeners``, which it then owns and
    closes) until cancelled, answering every request with ``await handler(request)``.

    ``task_status.started`` reports the bound ``(host, port)`` list (bind port 0 and read
    it back). ``error_response(status, message)`` shapes the server's own answers (400,
    408, 413, 429, 431, 500, 503); ``stats`` collects the counters (pass one in to keep
    counting across restarts).
    """
    bound = (
        list(listeners)
        if listeners is not None
        else await open_tcp_listeners(host, port, reuse_port=reuse_port)
    )
    server = HttpServer(
        handler,
        limits=limits or HttpLimits(),
        stats=stats if stats is not None else HttpStats(),
        error_response=error_response,
        logger=logger or _log,
    )
    await server.serve(bound, task_status=task_status)
