"""The admin HTTP API: health, readiness, metrics and stream control.

A Starlette app served by hypercorn's Trio worker, as one task in the daemon nursery
(:func:`serve_admin`). The daemon implements :class:`AdminBackend`; this module only
speaks HTTP: routing, auth, validation, JSON bodies and status codes.

Contract (see docs/operations.md):

- ``GET /healthz``: 200 ``{"status": "ok"}`` while the event loop answers.
- ``GET /readyz``: 200 ``{"status": "ready"}``, or 503 ``{"status": "draining"}`` or
  ``{"status": "not_ready", "reason": "outbox_unwritable"}`` (or ``"starting"``).
- ``GET /metrics``: Prometheus text format.
- ``GET /v1/streams[?state=live|ended|all&since=…&limit=…]``: ``{"streams": [...]}``.
- ``GET /v1/events[?status=pending|delivered|failed|skipped&limit=…]``: ``{"events": [...]}``
  (status callbacks and their delivery state; failed ones are kept here).
- ``GET /v1/streams/{id}``: one stream, live or ended, or 404.
- ``DELETE /v1/streams/{id}``: 202 ``{"stream_id", "status": "stopping"}`` or 404.
- ``POST /v1/streams``: open an RTP stream; 201, 400 or 503.
- ``/v1/*`` requires ``Authorization: Bearer <token>`` when a token is configured.

Every error is a JSON object with an ``error`` code and, where useful, a ``message``.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, Literal, Protocol

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge._errors import StreamNotFound, StreamRefused
from bridge.daemon._metrics import Metrics
from bridge.transports import parse_host_port

__all__ = ["AdminBackend", "OpenRtpRequest", "create_admin_app", "serve_admin"]

logger = logging.getLogger("bridge.admin")

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
#: The POST body is a handful of fields; anything larger is a mistake or an attack.
MAX_BODY_BYTES = 64 * 1024


class AdminBackend(Protocol):
    """What the admin API needs from the daemon (implemented by the daemon)."""

    @property
    def ready(self) -> bool:
        """False while draining, before the listeners are bound, or while events cannot
        be persisted."""
        ...

    # Optional (read with getattr): ``not_ready_reason: str | None``, why ``ready`` is
    # False ("starting", "outbox_unwritable", ...), given in the /readyz body.

    def live_streams(self) -> list[dict[str, Any]]:
        """A snapshot of every live stream (JSON-able); serves the plain ``GET /v1/streams``."""
        ...

    async def get_stream(self, stream_id: str) -> dict[str, Any] | None:
        """One stream, live or ended, with its event log; None if unknown."""
        ...

    async def list_streams(
        self, *, state: str | None, since: datetime | None, limit: int
    ) -> list[dict[str, Any]]:
        """Streams by ``state`` ("live", "ended", None = both); ended ones that ended at or after ``since``
        (aware UTC), at most ``limit``."""
        ...

    async def stop_stream(self, stream_id: str) -> bool:
        """End a live stream with reason ``api_request``; False if it is not live."""
        ...

    async def list_events(self, *, status: str | None, limit: int) -> list[dict[str, Any]]:
        """Status-callback events by delivery status (pending, delivered, failed,
        skipped; None = all), newest first."""
        ...

    async def open_rtp_stream(self, request: dict[str, Any]) -> dict[str, Any]:
        """Open an RTP stream (``request`` holds the fields of :class:`OpenRtpRequest` that
        were given). Raises ValueError (→ 400) or StreamRefused (→ 503)."""
        ...


class OpenRtpRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The ``POST /v1/streams`` body. Omitted optional fields mean "the route's default"."""

    call_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    route: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")]
    codec: Literal["pcmu", "pcma", "l16"] | None = None
    sample_rate: Literal[8000, 16000, 24000, 48000] | None = None
    ptime: Literal[10, 20, 30, 40, 50, 60] | None = None
    #: "ip:port" ("[v6]:port") of the far end; omitted = latch onto the first sender.
    remote: str | None = None


def _parse_remote(value: str) -> None:
    """Raise ValueError unless ``value`` is ``ip:port`` or ``[ipv6]:port``."""
    try:
        parse_host_port(value, ip_only=True)
    except ValueError as exc:
        raise ValueError(f"remote {value!r}: {exc}") from None


# -- JSON responses -----------------------------------------------------------------

_encoder = msgspec.json.Encoder(enc_hook=str)


class JSONResponse(Response):
    """Starlette's JSONResponse with msgspec: backend snapshots may hold datetimes."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encoder.encode(content)


def _error(status: int, error: str, message: str = "", **fields: Any) -> JSONResponse:
    body: dict[str, Any] = {"error": error}
    if message:
        body["message"] = message
    body.update(fields)
    return JSONResponse(body, status_code=status)


_HTTP_ERRORS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


async def _http_exception(request: Request, exc: Exception) -> Response:
    # Starlette's own 404/405 (unknown path or method) are plain text; keep JSON everywhere.
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        {"error": _HTTP_ERRORS.get(exc.status_code, "http_error"), "message": exc.detail},
        status_code=exc.status_code,
        headers=exc.headers,  # 405 carries Allow
    )


# -- query parsing ------------------------------------------------------------------


def _parse_since(value: str) -> datetime:
    """ISO 8601 (naive means UTC) or unix seconds → aware UTC datetime."""
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"since={value!r}: not a time")
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"since={value!r}: out of range") from None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"since={value!r}: expected ISO 8601 or unix seconds") from None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _parse_limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise ValueError(f"limit={value!r}: expected an integer 1..{MAX_LIMIT}")
    return int(value)


# -- the app ------------------------------------------------------------------------

Endpoint = Callable[[Request], Awaitable[Response]]


def create_admin_app(backend: AdminBackend, metrics: Metrics, *, token: str = "") -> Starlette:
    """The admin ASGI app. ``token`` != "" requires ``Authorization: Bearer <token>`` on /v1/*."""
    expected = token.encode()

    def authorized(request: Request) -> Response | None:
        """None if the request may proceed, else the 401 to send."""
        if not expected:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given:
            # Constant-time compare: the token is the only thing between the network and
            # DELETE /v1/streams/{id}.
            if hmac.compare_digest(given.strip().encode(), expected):
                return None
            challenge = 'Bearer realm="bridge", error="invalid_token"'
            message = "invalid bearer token"
        else:
            challenge = 'Bearer realm="bridge"'
            message = "missing bearer token"
        return JSONResponse(
            {"error": "unauthorized", "message": message},
            status_code=401,
            headers={"WWW-Authenticate": challenge},
        )

    def v1(handler: Endpoint) -> Endpoint:
        """Auth check, plus a JSON 500 for unexpected backend errors (logged here once)."""

        async def endpoint(request: Request) -> Response:
            denied = authorized(request)
            if denied is not None:
                return denied
            try:
                return await handler(request)
            except Exception:
                logger.exception(
                    "admin request failed",
                    extra={"method": request.method, "path": request.url.path},
                )
                return _error(500, "internal_error", "the request failed; see the daemon log")

        return endpoint

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if backend.ready:
            return JSONResponse({"status": "ready"})
        reason = getattr(backend, "not_ready_reason", None)
        if reason in (None, "draining"):
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept", ""))
        return Response(body, headers={"Content-Type": content_type})

    async def list_streams(request: Request) -> Response:
        query = request.query_params
        state = query.get("state")
        since_text = query.get("since")
        try:
            limit = _parse_limit(query.get("limit"))
            since = _parse_since(since_text) if since_text else None
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))
        if state not in (None, "live", "ended", "all"):
            return _error(400, "bad_request", f"state={state!r}: expected live, ended or all")
        if state is None and since is None:
            # The common "what is live now" query: a synchronous snapshot, no await.
            streams = backend.live_streams()[:limit]
        else:
            streams = await backend.list_streams(
                state=None if state == "all" else (state or "live"), since=since, limit=limit
            )
        return JSONResponse({"streams": streams})

    async def get_stream(request: Request) -> Response:
        stream_id = request.path_params["stream_id"]
        try:
            stream = await backend.get_stream(stream_id)
        except StreamNotFound:
            stream = None
        if stream is None:
            return _error(404, "not_found", "no such stream", stream_id=stream_id)
        return JSONResponse(stream)

    async def delete_stream(request: Request) -> Response:
        stream_id = request.path_params["stream_id"]
        try:
            stopping = await backend.stop_stream(stream_id)
        except StreamNotFound:
            stopping = False
        if not stopping:
            return _error(404, "not_found", "no such live stream", stream_id=stream_id)
        return JSONResponse({"stream_id": stream_id, "status": "stopping"}, status_code=202)

    async def list_events(request: Request) -> Response:
        query = request.query_params
        status = query.get("status")
        try:
            limit = _parse_limit(query.get("limit"))
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))
        if status not in (None, "pending", "delivered", "failed", "skipped"):
            return _error(
                400, "bad_request", f"status={status!r}: expected pending, delivered, failed or skipped"
            )
        return JSONResponse({"events": await backend.list_events(status=status, limit=limit)})

    async def open_stream(request: Request) -> Response:
        too_big = _error(413, "payload_too_large", f"body over {MAX_BODY_BYTES} bytes")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            return too_big
        body = bytearray()
        # Read with a cap instead of request.body(): no unbounded buffering of a
        # chunked upload. aclosing() so an early return finalizes the generator now.
        async with aclosing(request.stream()) as chunks:
            async for chunk in chunks:
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return too_big
        try:
            parsed = msgspec.json.decode(bytes(body), type=OpenRtpRequest)
            if parsed.remote is not None:
                _parse_remote(parsed.remote)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            return _error(400, "bad_request", str(exc))
        fields = {k: v for k, v in msgspec.structs.asdict(parsed).items() if v is not None}
        try:
            answer = await backend.open_rtp_stream(fields)
        except StreamRefused as exc:
            return _error(503, "refused", str(exc), reason=exc.reason)
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))
        return JSONResponse(answer, status_code=201)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/v1/streams", v1(list_streams), methods=["GET"]),
            Route("/v1/streams", v1(open_stream), methods=["POST"]),
            Route("/v1/streams/{stream_id}", v1(get_stream), methods=["GET"]),
            Route("/v1/streams/{stream_id}", v1(delete_stream), methods=["DELETE"]),
            Route("/v1/events", v1(list_events), methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_exception},
    )


# -- serving ------------------------------------------------------------------------


async def _bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A bound (not yet listening) TCP socket for ``host:port``; port 0 picks a free one."""
    infos = await trio.socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(f"cannot resolve admin address {host!r}")
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_admin(
    app: Starlette,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    reuse_port: bool = False,
    access_log: bool = False,
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled.

    ``task_status.started((host, port))`` reports the address actually bound, so port 0
    works: we bind the socket ourselves and hand hypercorn a duplicate of its fd
    (``fd://N``), instead of parsing hypercorn's "http://…" strings. Binding here also
    makes an address in use fail ``nursery.start()`` with a plain OSError.

    Hypercorn logs through ``bridge.admin.http`` (so it follows ``configure_logging``);
    its per-request access log is off unless ``access_log`` (then on
    ``bridge.admin.access`` at INFO).
    """
    sock = await _bind(host, port, reuse_port=reuse_port)
    with sock:
        bound_host, bound_port = sock.getsockname()[:2]
        config = HypercornConfig()
        # hypercorn wraps the fd in its own socket object and closes it when its
        # listener closes; the dup keeps the two owners from closing one fd twice.
        config.bind = [f"fd://{os.dup(sock.fileno())}"]
        config.errorlog = logging.getLogger("bridge.admin.http")
        config.accesslog = logging.getLogger("bridge.admin.access") if access_log else None
        config.include_server_header = False
        # The daemon cancels us at the very end of a drain; in-flight admin requests
        # get no grace beyond that.
        config.graceful_timeout = 1.0
        async with trio.open_nursery() as nursery:
            await nursery.start(
                # hypercorn's ASGI callable type is narrower than Starlette's signature.
                partial(hypercorn_serve, app, config, shutdown_trigger=trio.sleep_forever)  # type: ignore[arg-type]
            )
            task_status.started((bound_host, bound_port))
