"""The WebSocket listener: carrier media streams (Twilio, Telnyx, Plivo) and inbound app
connections (``app.mode = "accept"``).

* Carriers dial ``ws://<listen>/<route path>``. bridge plays the *application* side of
  the carrier's protocol: routes are picked by path (and header/query where configured),
  authenticated per route, admitted against ``max_streams`` (HTTP 503 when full), and the
  carrier's ``start`` opens a stream. Marks, clear and DTMF map across to the app leg.
* A carrier leg that drops and dials again within the route's ``reconnect_window``
  resumes the same stream, matched by the carrier's call and stream ids; the app leg
  stays up and only the gap is reported.
* Apps of accept-mode routes dial ``/v1/streams/{stream_id}/media?token=…`` and speak the
  route's encapsulation: 401 for a bad token, 404 for an unknown or ended stream.

Every refusal is one log line and a ``bridge_streams_refused_total{listener,reason}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import msgspec
import trio

from .._errors import ConnectionClosed, DialectError, StreamRefused, TransportTimeout
from ..dialects import Event, Start
from ..streams import PipeAppConnection, PipeCallLeg
from ..streams._wsapp import platform_dialect
from ..transports import WebSocketConnection, WebSocketRequest, serve_websocket
from ._config import RouteConfig, StreamConfig, WebSocketConfig

if TYPE_CHECKING:
    from ._daemon import Daemon

__all__ = ["AcceptConnector", "serve_carrier_websocket", "twilio_signature"]

logger = logging.getLogger("bridge.daemon.websocket")

LISTENER = "websocket"
MEDIA_PREFIX = "/v1/streams/"
MEDIA_SUFFIX = "/media"


def _json(obj: dict[str, Any]) -> bytes:
    return msgspec.json.encode(obj)


def twilio_signature(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """Twilio's request signature: base64(HMAC-SHA1(auth token, URL + sorted POST
    params concatenated as key+value)). A WebSocket upgrade is a GET: no params."""
    data = url + "".join(k + v for k, v in sorted((params or {}).items()))
    mac = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def _carrier_app_dialect(carrier: str) -> Any:
    if carrier == "twilio":
        from ..dialects._twilio import TwilioApp

        return TwilioApp()
    if carrier == "telnyx":
        from ..dialects._telnyx import TelnyxApp

        return TelnyxApp()
    if carrier == "plivo":
        from ..dialects._plivo import PlivoApp

        return PlivoApp()
    raise ValueError(f"unknown carrier {carrier!r}")


@attrs.define(slots=True, eq=False)
class _AcceptSlot:
    """An accept-mode stream waiting for its app to dial in."""

    route: RouteConfig
    ready: trio.Event = attrs.field(factory=trio.Event)
    ws: WebSocketConnection | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    waiting: bool = False


@attrs.define(slots=True, eq=False)
class AcceptConnector:
    """App connector of ``app.mode = "accept"``: each attempt waits up to
    ``accept_timeout`` for the app to connect to this stream's media URL."""

    daemon: Daemon
    route: RouteConfig
    stream_id: str
    accept_timeout_s: float
    ptime_ms: int = 20

    @property
    def url(self) -> str:
        return f"accept:{MEDIA_PREFIX}{self.stream_id}{MEDIA_SUFFIX}"

    @asynccontextmanager
    async def open(self, stream_id: str, call_id: str) -> AsyncIterator[PipeAppConnection]:
        slots = self.daemon.accept_slots
        slot = _AcceptSlot(self.route)
        slot.waiting = True
        slots[stream_id] = slot
        try:
            with trio.move_on_after(self.accept_timeout_s):
                await slot.ready.wait()
            slot.waiting = False
            if slot.ws is None:
                raise TransportTimeout("accept", self.accept_timeout_s)
            app = self.route.app
            dialect = platform_dialect(
                app.encapsulation,
                stream_id=stream_id,
                call_id=call_id,
                sample_rate=app.sample_rate,
                codec=app.codec,
                ptime_ms=self.ptime_ms,
            )
            conn = PipeAppConnection(dialect, slot.ws, app.sample_rate)
            try:
                yield conn
            finally:
                ws = slot.ws
                if not ws.closed:
                    with trio.CancelScope(shield=True) as scope:
                        scope.deadline = trio.current_time() + 2.0
                        await ws.close(1011 if conn.failed else 1000)
        finally:
            slot.waiting = False
            slot.done.set()
            if slots.get(stream_id) is slot:
                del slots[stream_id]


async def serve_carrier_websocket(
    daemon: Daemon,
    config: WebSocketConfig,
    *,
    listeners: list[trio.SocketListener] | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    addr = config.listen_addr
    assert addr is not None

    async def handler(request: WebSocketRequest) -> None:
        try:
            if request.path.startswith(MEDIA_PREFIX) and request.path.endswith(MEDIA_SUFFIX):
                await _handle_app(daemon, request)
            else:
                await _handle_carrier(daemon, config, request)
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        def bad_handshake(peer: str, why: str) -> None:
            daemon.bad_input(LISTENER, "bad_handshake", f"{peer}: {why}")

        bound: list[tuple[str, int]] = await nursery.start(
            _serve, handler, addr, config, bad_handshake, listeners
        )
        logger.info("WebSocket listening on %s:%d", bound[0][0], bound[0][1])
        task_status.started(bound[0])


async def _serve(
    handler: Callable[[WebSocketRequest], Any],
    addr: tuple[str, int],
    config: WebSocketConfig,
    on_bad_handshake: Callable[[str, str], None],
    listeners: list[trio.SocketListener] | None = None,
    *,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve_websocket(
        handler,
        addr[0],
        addr[1],
        task_status=task_status,
        handshake_timeout_s=config.handshake_timeout_s,
        max_handshakes=config.max_handshakes,
        max_message_bytes=config.max_message_bytes,
        reuse_port=config.reuse_port,
        listeners=listeners,
        # Carriers keep their own keepalive; a dead carrier shows as a failed send.
        ping_interval_s=20.0,
        ping_timeout_s=20.0,
        on_bad_handshake=on_bad_handshake,
    )


def _peer(request: WebSocketRequest) -> str:
    return f"{request.remote[0]}:{request.remote[1]}"


def _headers(request: WebSocketRequest) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.raw_items()}


def _authorized(route: RouteConfig, request: WebSocketRequest, headers: dict[str, str]) -> str | None:
    """None when the request may use ``route``; else the refusal reason."""
    auth = route.auth
    if auth is None:
        return None
    if auth.token:
        offered = [
            request.query.get("token", ""),
            headers.get("x-bridge-token", ""),
            headers.get("x-telnyx-streaming-auth-token", ""),
            request.path.rstrip("/").rsplit("/", 1)[-1],
        ]
        bearer = headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            offered.append(bearer[7:].strip())
        if not any(o and hmac.compare_digest(o, auth.token) for o in offered):
            return "bad_token"
    if auth.twilio_auth_token:
        given = headers.get("x-twilio-signature", "")
        host = headers.get("host", "")
        query = request.query
        path = request.path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
        # Twilio signs the URL it dialled; behind TLS termination that is wss://, and a
        # plain-ws test setup signs ws://: accept either form of the same URL.
        expected = [
            twilio_signature(auth.twilio_auth_token, f"{scheme}://{host}{path}")
            for scheme in ("wss", "ws")
        ]
        if not given or not any(hmac.compare_digest(given, e) for e in expected):
            return "bad_signature"
    return None


async def _handle_carrier(
    daemon: Daemon, config: WebSocketConfig, request: WebSocketRequest
) -> None:
    peer = _peer(request)
    headers = _headers(request)
    route = daemon.match_route(LISTENER, request.path, headers, dict(request.query))
    if route is None or route.carrier is None:
        daemon.refused(LISTENER, "no_route", f"{peer} {request.path}")
        await request.reject(404, _json({"error": "not_found", "message": "no route for this path"}))
        return
    why = _authorized(route, request, headers)
    if why is not None:
        daemon.refused(LISTENER, why, f"{peer} {request.path}")
        await request.reject(
            401, _json({"error": "unauthorized", "message": why}), [("WWW-Authenticate", "Bearer")]
        )
        return
    try:
        if daemon.stopping:
            raise StreamRefused("draining")
        daemon.manager.check_admission()
    except StreamRefused as exc:
        daemon.refused(LISTENER, exc.reason, f"{peer} {request.path}")
        await request.reject(503, _json({"error": "refused", "reason": exc.reason}))
        return
    ws = await request.accept()
    dialect = _carrier_app_dialect(route.carrier)
    start: Start | None = None
    pending: list[Event] = []
    try:
        with trio.move_on_after(config.handshake_timeout_s) as scope:
            while start is None:
                for event in dialect.receive(await ws.receive()):
                    if start is None and type(event) is Start:
                        start = event
                    elif start is not None:
                        pending.append(event)
        if scope.cancelled_caught or start is None:
            daemon.bad_input(LISTENER, "no_start", f"{peer}: no start within {config.handshake_timeout_s:g}s")
            await ws.close(1008, "no start message")
            return
    except DialectError as exc:
        daemon.bad_input(LISTENER, "protocol_error", f"{peer}: {exc}")
        await ws.close(1008, "protocol error")
        return
    leg = PipeCallLeg(
        kind=route.carrier,
        dialect=dialect,
        pipe=ws,
        start=start,
        pending=tuple(pending),
        far_side_buffers=True,
        hangup_on_close=False,  # closing the socket is how an app ends a carrier stream
        resumable=True,
    )
    key = (route.name, start.call_id, start.stream_id)
    existing = daemon.resumable.get(key)
    if existing is not None and existing.resume_call(leg):
        logger.info(
            "carrier leg resumed",
            extra={"stream_id": existing.stream_id, "call_id": start.call_id, "route": route.name},
        )
    else:
        try:
            stream = daemon.start_stream(leg, route, LISTENER)
        except StreamRefused as exc:
            daemon.refused(LISTENER, exc.reason, peer, call_id=start.call_id)
            await ws.close(1013, exc.reason)
            return
        daemon.resumable[key] = stream
        daemon.resumable_keys[stream.stream_id] = key
    # The connection lives in this handler's task: hold it until the stream is done
    # with the leg (closed, or replaced after a drop).
    await leg.released.wait()


async def _handle_app(daemon: Daemon, request: WebSocketRequest) -> None:
    peer = _peer(request)
    stream_id = request.path[len(MEDIA_PREFIX) : -len(MEDIA_SUFFIX)]
    slot = daemon.accept_slots.get(stream_id)
    if slot is None:
        known = daemon.manager.get(stream_id) is not None
        daemon.refused(LISTENER, "unknown_stream", f"{peer} {request.path}")
        status, error = (409, "not_waiting") if known else (404, "not_found")
        await request.reject(status, _json({"error": error, "stream_id": stream_id}))
        return
    token = slot.route.app.token
    offered = request.query.get("token", "")
    if not token or not hmac.compare_digest(offered, token):
        daemon.refused(LISTENER, "bad_token", f"{peer} {request.path}")
        await request.reject(
            401, _json({"error": "unauthorized"}), [("WWW-Authenticate", "Bearer")]
        )
        return
    if not slot.waiting or slot.ws is not None:
        await request.reject(409, _json({"error": "already_connected", "stream_id": stream_id}))
        return
    ws = await request.accept()
    slot.ws = ws
    slot.ready.set()
    await slot.done.wait()


def accept_connector(
    daemon: Daemon, route: RouteConfig, scfg: StreamConfig, stream_id: str
) -> AcceptConnector:
    return AcceptConnector(
        daemon, route, stream_id, scfg.accept_timeout_s, round(scfg.ptime_s * 1000)
    )
