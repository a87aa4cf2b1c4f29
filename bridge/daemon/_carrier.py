"""The WebSocket listener: carrier media streams (every dialect the registry lists with a
``websocket`` call leg: Twilio, Telnyx, Plivo, Asterisk ``chan_websocket``, Exotel, ...)
and inbound app connections (``app.mode = "accept"``).

* Carriers dial ``wss://<listen>/<route path>`` (``[websocket] tls_cert``; or ``ws://``
  behind a TLS-terminating proxy). bridge plays the *application* side of the carrier's
  protocol (the registry's app role for the route's ``carrier``, built with its
  ``carrier_options``): routes are picked by path, subprotocol, header and query where
  configured, authenticated per route, admitted against ``max_streams`` (HTTP 503 when
  full), and the carrier's start message opens a stream. The dialect's subprotocol is
  echoed when the carrier offers it (Asterisk's ``media``). Marks, clear, DTMF and flow
  control map across to the stream; what the dialect sends to accept a call (Asterisk's
  ``ANSWER`` for the ``n`` dial option) goes out once the stream is admitted.
* A carrier leg that drops and dials again within the route's ``reconnect_window``
  resumes the same stream, matched by the carrier's call and stream ids (dialects whose
  ``capabilities.resume`` allows it); the app leg stays up and only the gap is reported.
* Apps of accept-mode routes dial ``/v1/streams/{stream_id}/media?token=…`` and speak the
  route's encapsulation: 401 for a bad token, 404 for an unknown or ended stream.

A carrier connection is *pending* from TCP accept until its ``start`` message, all
within ``handshake_timeout``; at most ``max_handshakes_per_peer`` per source address and
``max_handshakes`` in all (``transports.serve_websocket``). Credentials are compared as
bytes (``_credentials``): a wrong one, whatever its characters, is a 401 and a count in
``bridge_auth_failures_total{listener,route}``. Every refusal is one log line and a
``bridge_streams_refused_total{listener,reason}``; every bad connection (a bad
handshake, a framing error, a malformed message, no ``start`` in time) exactly one
``bridge_bad_input_total{leg="websocket",kind}`` and one line within the daemon's
bad-peer budget.

Behind a proxy in ``[websocket] trusted_proxies`` the client address in those lines, and
the URL a Twilio signature is checked against, come from its ``X-Forwarded-*`` headers
(``_forwarded``); from any other peer those headers are ignored.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import msgspec
import trio

from .._errors import (
    ConnectionClosed,
    DialectError,
    FramingError,
    StreamRefused,
    TransportTimeout,
)
from ..dialects import (
    AppParams,
    Dialect,
    DialectSpec,
    Event,
    Message,
    Start,
    accept_messages,
    dialect,
)
from ..streams import PipeAppConnection, PipeCallLeg
from ..streams._wsapp import platform_dialect
from ..transports import WebSocketConnection, WebSocketRequest, serve_websocket
from ._admission import AcceptSlot, CallAdmission
from ._config import AuthConfig, RouteConfig, StreamConfig, WebSocketConfig
from ._credentials import as_bytes, matches, matches_any
from ._forwarded import Origin, resolve_origin

__all__ = [
    "AcceptConnector",
    "call_leg_role",
    "carrier_leg",
    "serve_carrier_websocket",
    "twilio_signature",
    "twilio_urls",
]

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
    # as_bytes: the URL holds the Host header as the peer sent it (any byte); never raise.
    mac = hmac.new(as_bytes(auth_token), as_bytes(data), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


_DEFAULT_PORTS = {"wss": "443", "ws": "80"}


def twilio_urls(
    target: str, host: str, schemes: tuple[str, ...], public_url: str = ""
) -> list[str]:
    """The URLs Twilio may have signed for a request to ``target`` (path and query as
    sent): ``public_url`` + target when the route sets one; else each scheme with the
    host, with and without the scheme's default port (Twilio's own validators try both:
    a proxy may add ``:443`` to the Host or drop it)."""
    if public_url:
        return [public_url.rstrip("/") + target]
    urls: list[str] = []
    for scheme in schemes:
        name, sep, port = host.rpartition(":")
        default = _DEFAULT_PORTS[scheme]
        if sep and port.isdigit() and (not name.startswith("[") or name.endswith("]")):
            # host:port, or [v6]:port
            variants = [host, name] if port == default else [host]
        else:
            variants = [host, f"{host}:{default}"]
        urls.extend(f"{scheme}://{h}{target}" for h in variants)
    return urls


def call_leg_role(
    route: RouteConfig,
    query: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[DialectSpec, Dialect]:
    """The registry entry of ``route.carrier`` and a fresh app role to answer its call,
    built with the route's ``carrier_options`` and the upgrade request's query and
    headers (a dialect may take the call id from them)."""
    assert route.carrier is not None
    spec = dialect(route.carrier)
    role: Dialect = spec.app_role(
        AppParams(
            options=route.carrier_options,
            query=query or {},
            headers=headers or {},
            call_id=str(uuid.uuid4()),  # for wires that carry no call id of their own
        )
    )
    return spec, role


def carrier_leg(
    spec: DialectSpec,
    role: Dialect,
    ws: WebSocketConnection,
    start: Start,
    pending: Sequence[Event],
    peer: str,
) -> PipeCallLeg:
    """The call leg of an answered carrier connection, shaped by its registry entry."""
    call_leg = spec.call_leg
    assert call_leg is not None
    return PipeCallLeg(
        kind=spec.name,
        dialect=role,
        pipe=ws,
        start=start,
        pending=tuple(pending),
        far_side_buffers=call_leg.far_side_buffers,
        # Otherwise closing the socket is how an app ends a carrier stream.
        hangup_on_close=call_leg.hangup_on_close,
        resumable=spec.capabilities.resume,
        peer=peer,
        sized_audio=not spec.send_rule.any_size,
    )


def offered_subprotocol(spec: DialectSpec, offered: Sequence[str]) -> str | None:
    """The dialect's subprotocol when the peer offered it (echoed in the 101; RFC 6455
    §4.2.2), else None (Asterisk also accepts a 101 without it)."""
    wanted = spec.subprotocol
    return wanted if wanted is not None and wanted in offered else None


def send_accept(ws: WebSocketConnection, role: Dialect) -> None:
    """What the dialect sends once bridge has taken the call (Asterisk: ``ANSWER``)."""
    messages: list[Message] = accept_messages(role)
    for message in messages:
        ws.send_nowait(message)


@attrs.define(slots=True, eq=False)
class AcceptConnector:
    """App connector of ``app.mode = "accept"``: each attempt waits up to
    ``accept_timeout`` for the app to connect to this stream's media URL."""

    admission: CallAdmission
    route: RouteConfig
    stream_id: str
    accept_timeout_s: float
    ptime_ms: int = 20

    @property
    def url(self) -> str:
        return f"accept:{MEDIA_PREFIX}{self.stream_id}{MEDIA_SUFFIX}"

    @asynccontextmanager
    async def open(self, stream_id: str, call_id: str) -> AsyncIterator[PipeAppConnection]:
        admission = self.admission
        slot = AcceptSlot(self.route)
        slot.waiting = True
        admission.open_accept_slot(stream_id, slot)
        try:
            with trio.move_on_after(self.accept_timeout_s):
                await slot.ready.wait()
            slot.waiting = False
            if slot.ws is None:
                raise TransportTimeout("accept", self.accept_timeout_s)
            app = self.route.app
            role = platform_dialect(
                app.encapsulation,
                stream_id=stream_id,
                call_id=call_id,
                sample_rate=app.sample_rate,
                codec=app.codec,
                ptime_ms=self.ptime_ms,
                options=app.options,
                route=self.route.name,
            )
            conn = PipeAppConnection(role, slot.ws, app.sample_rate)
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
            admission.close_accept_slot(stream_id, slot)


async def serve_carrier_websocket(
    admission: CallAdmission,
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
                await _handle_app(admission, request)
            else:
                await _handle_carrier(admission, config, request)
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:

        def bad_handshake(peer: str, kind: str, why: str) -> None:
            admission.bad_input(LISTENER, kind, why, peer=peer)

        def refused(peer: str, reason: str) -> None:
            admission.admission_refused(LISTENER, reason, peer)

        def tls_error(peer: str, kind: str, why: str) -> None:
            admission.bad_input(LISTENER, kind, why, peer=peer)

        tls = admission.tls
        bound: list[tuple[str, int]] = await nursery.start(
            functools.partial(
                _serve,
                ssl_context=None if tls is None else tls.current,
                on_tls_error=tls_error,
            ),
            handler,
            addr,
            config,
            bad_handshake,
            refused,
            listeners,
        )
        logger.info(
            "WebSocket listening on %s:%d%s (handshakes at most %d, %d per peer)",
            bound[0][0],
            bound[0][1],
            "" if tls is None else f" (TLS, {tls.cert_file})",
            config.max_handshakes,
            min(config.max_handshakes_per_peer, config.max_handshakes),
        )
        task_status.started(bound[0])


async def _serve(
    handler: Callable[[WebSocketRequest], Any],
    addr: tuple[str, int],
    config: WebSocketConfig,
    on_bad_handshake: Callable[[str, str, str], None],
    on_refused: Callable[[str, str], None],
    listeners: list[trio.SocketListener] | None = None,
    *,
    ssl_context: Callable[[], ssl.SSLContext] | None = None,
    on_tls_error: Callable[[str, str, str], None] | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve_websocket(
        handler,
        addr[0],
        addr[1],
        task_status=task_status,
        handshake_timeout_s=config.handshake_timeout_s,
        max_handshakes=config.max_handshakes,
        max_handshakes_per_peer=config.max_handshakes_per_peer,
        max_message_bytes=config.max_message_bytes,
        reuse_port=config.reuse_port,
        listeners=listeners,
        # Carriers keep their own keepalive; a dead carrier shows as a failed send.
        ping_interval_s=20.0,
        ping_timeout_s=20.0,
        on_bad_handshake=on_bad_handshake,
        on_refused=on_refused,
        ssl_context=ssl_context,
        tls_handshake_timeout_s=config.tls_handshake_timeout_s,
        on_tls_error=on_tls_error,
    )


def _origin(admission: CallAdmission, request: WebSocketRequest) -> Origin:
    """The client behind the request (``X-Forwarded-*`` from a trusted proxy only)."""
    return resolve_origin(
        request.remote,
        request.headers.raw_items(),
        admission.config.websocket.trusted_networks,
    )


def _headers(request: WebSocketRequest) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.raw_items()}


def _signed_urls(
    auth: AuthConfig, request: WebSocketRequest, headers: dict[str, str], origin: Origin, tls: bool
) -> list[str]:
    """What Twilio may have signed: the public URL it dialled, as far as it is known.

    Scheme: a trusted proxy's ``X-Forwarded-Proto``; else ``wss`` on a TLS listener;
    else either (Twilio only dials ``wss://``, so a plain listener is behind something
    that terminated TLS, or a test that signs ``ws://``). Host: a trusted proxy's
    ``X-Forwarded-Host``, else the Host header. ``auth.public_url`` replaces both.
    """
    if origin.scheme is not None:
        schemes: tuple[str, ...] = (origin.scheme,)
    elif tls:
        schemes = ("wss",)
    else:
        schemes = ("wss", "ws")
    host = origin.host or headers.get("host", "")
    return twilio_urls(request.target, host, schemes, auth.public_url)


def _authorized(
    route: RouteConfig,
    request: WebSocketRequest,
    headers: dict[str, str],
    origin: Origin,
    tls: bool,
) -> str | None:
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
        # Bytes, not str: compare_digest(str, str) raises TypeError on non-ASCII (a 500).
        if not matches_any(offered, auth.token):
            return "bad_token"
    if auth.twilio_auth_token:
        given = headers.get("x-twilio-signature", "")
        # Twilio signs the URL it dialled (a GET: no POST parameters).
        expected = [
            twilio_signature(auth.twilio_auth_token, url)
            for url in _signed_urls(auth, request, headers, origin, tls)
        ]
        if not given or not matches_any(expected, given):
            return "bad_signature"
    return None


async def _handle_carrier(
    admission: CallAdmission, config: WebSocketConfig, request: WebSocketRequest
) -> None:
    origin = _origin(admission, request)
    peer = origin.label
    headers = _headers(request)
    route = admission.match_route(
        LISTENER, request.path, headers, dict(request.query), request.subprotocols
    )
    if route is None or route.carrier is None:
        admission.refused(LISTENER, "no_route", f"{peer} {request.path}")
        await request.reject(404, _json({"error": "not_found", "message": "no route for this path"}))
        return
    why = _authorized(route, request, headers, origin, config.tls)
    if why is not None:
        path = request.path
        if why == "bad_signature" and origin.ignored:
            # The usual cause behind a proxy: it is not in trusted_proxies, so the URL
            # it forwarded (the one Twilio signed) was not used.
            path += " (X-Forwarded-* headers from a peer not in [websocket] trusted_proxies were ignored)"
        admission.auth_failed(LISTENER, route.name, why, peer, path)
        await request.reject(
            401, _json({"error": "unauthorized", "message": why}), [("WWW-Authenticate", "Bearer")]
        )
        return
    try:
        admission.check_admission()
    except StreamRefused as exc:
        admission.refused(LISTENER, exc.reason, f"{peer} {request.path}")
        await request.reject(503, _json({"error": "refused", "reason": exc.reason}))
        return
    spec, role = call_leg_role(route, request.query, headers)
    # Still pending (against max_handshakes and the per-peer limit) until the start
    # message: a carrier that upgrades and then says nothing is a slowloris too.
    ws = await request.accept(offered_subprotocol(spec, request.subprotocols), keep_pending=True)
    if admission.clustered:  # cluster hook: keep what is read, for a hand-off
        ws.record_input()
    start: Start | None = None
    pending: list[Event] = []
    messages = 0
    try:
        with trio.move_on_at(request.deadline) as scope:
            while start is None:
                message = await ws.receive()
                messages += 1
                for event in role.receive(message):
                    if start is None and type(event) is Start:
                        start = event
                    elif start is not None:
                        pending.append(event)
        if scope.cancelled_caught or start is None:
            admission.bad_input(
                LISTENER,
                "no_start",
                f"no start message within {config.handshake_timeout_s:g}s of connecting "
                f"({messages} messages on {request.path})",
                peer=peer,
            )
            await ws.close(1008, "no start message")
            return
    except DialectError as exc:
        admission.bad_input(LISTENER, "protocol_error", str(exc), peer=peer)
        await ws.close(1008, "protocol error")
        return
    except FramingError as exc:
        # The connection is already failed (1002/1007/1009 sent); nothing to close.
        admission.bad_input(LISTENER, exc.kind, f"{exc} (before start)", peer=peer)
        return
    except ConnectionClosed as exc:
        admission.bad_input(
            LISTENER,
            "closed_before_start",
            f"closed after {messages} messages, before its start message: {exc}",
            peer=peer,
        )
        return
    request.release_pending()
    leg = carrier_leg(spec, role, ws, start, pending, peer)
    key = (route.name, start.call_id, start.stream_id)
    existing = admission.resumable_stream(key) if leg.resumable else None
    if admission.clustered and await admission.cluster_carrier_connected(
        route, request, ws, start, existing is not None
    ):  # cluster hook: the stream lives (or died) in another process
        return
    if existing is not None and existing.resume_call(leg):
        logger.info(
            "carrier leg resumed",
            extra={"stream_id": existing.stream_id, "call_id": start.call_id, "route": route.name},
        )
    else:
        try:
            stream = admission.start_stream(leg, route, LISTENER)
        except StreamRefused as exc:
            admission.refused(LISTENER, exc.reason, peer, call_id=start.call_id)
            await ws.close(1013, exc.reason)
            return
        if leg.resumable:
            admission.register_resumable(key, stream)  # (cluster mode: in the registry too)
    # Taken: now the dialect may say so (Asterisk's ANSWER for the n dial option; a
    # call refused above was never answered).
    send_accept(ws, role)
    # The connection lives in this handler's task: hold it until the stream is done
    # with the leg (closed, or replaced after a drop).
    await leg.released.wait()


async def _handle_app(admission: CallAdmission, request: WebSocketRequest) -> None:
    peer = _origin(admission, request).label
    stream_id = request.path[len(MEDIA_PREFIX) : -len(MEDIA_SUFFIX)]
    slot = admission.accept_slot(stream_id)
    if (
        slot is None
        and admission.clustered
        and await admission.cluster_app_connecting(request, stream_id)
    ):  # cluster hook: the stream lives in another process
        return
    if slot is None:
        known = admission.stream_live(stream_id)
        admission.refused(LISTENER, "unknown_stream", f"{peer} {request.path}")
        status, error = (409, "not_waiting") if known else (404, "not_found")
        await request.reject(status, _json({"error": error, "stream_id": stream_id}))
        return
    token = slot.route.app.token
    # Bytes, not str: a non-ASCII ?token= is a 401 like any other wrong token.
    if not token or not matches(request.query.get("token", ""), token):
        admission.auth_failed(LISTENER, slot.route.name, "bad_token", peer, request.path)
        await request.reject(
            401, _json({"error": "unauthorized"}), [("WWW-Authenticate", "Bearer")]
        )
        return
    if not slot.waiting or slot.ws is not None:
        await request.reject(409, _json({"error": "already_connected", "stream_id": stream_id}))
        return
    spec = dialect(slot.route.app.encapsulation)
    ws = await request.accept(offered_subprotocol(spec, request.subprotocols))
    slot.ws = ws
    slot.ready.set()
    await slot.done.wait()


def accept_connector(
    admission: CallAdmission, route: RouteConfig, scfg: StreamConfig, stream_id: str
) -> AcceptConnector:
    return AcceptConnector(
        admission, route, stream_id, scfg.accept_timeout_s, round(scfg.ptime_s * 1000)
    )
