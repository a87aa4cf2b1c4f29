"""The admin HTTP API: health, readiness, metrics, stream control and the log level.

Routing, auth, validation, JSON bodies and status codes, as an HTTP handler
(:class:`AdminApp`) for :func:`bridge.transports.serve_http`, the small h11 server that
bounds every input (:func:`serve_admin`). The daemon implements :class:`AdminBackend` and
runs the server under its listener supervisor, so nothing sent to this port can end it.

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
- ``GET /v1/log-level``: ``{"level": "info", "loggers": {...}}``; ``PUT /v1/log-level``
  with ``{"level": "debug", "logger": "bridge.streams"}`` changes it at runtime.
- ``/v1/*`` requires ``Authorization: Bearer <token>`` when a token is configured.
- Every GET route answers HEAD; a known path with another method is 405 with ``Allow``;
  a known path with a trailing slash is a 307 to the path without it.

Every error is a JSON object with an ``error`` code and, where useful, a ``message``,
including the server's own (400 malformed, 408, 413, 429 rate-limited, 431, 503 busy).
"""

from __future__ import annotations

import hmac
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, Literal, NoReturn, Protocol

import attrs
import msgspec
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from bridge._errors import StreamNotFound, StreamRefused
from bridge.daemon._metrics import Metrics
from bridge.transports import (
    HttpLimits,
    HttpRequest,
    HttpResponse,
    HttpStats,
    open_tcp_listener,
    parse_host_port,
    serve_http,
)

__all__ = [
    "AdminApp",
    "AdminBackend",
    "LogLevelRequest",
    "OpenRtpRequest",
    "admin_error",
    "create_admin_app",
    "get_log_levels",
    "render_metrics",
    "serve_admin",
    "set_log_level",
]

logger = logging.getLogger("bridge.admin")
#: The HTTP server's own lines (bad requests, disconnects at DEBUG; handler failures).
http_logger = logging.getLogger("bridge.admin.http")
#: One DEBUG line per request when enabled (``PUT /v1/log-level`` can turn it on).
access_logger = logging.getLogger("bridge.admin.access")

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
#: The POST body is a handful of fields; anything larger is a mistake or an attack.
MAX_BODY_BYTES = 64 * 1024
#: /metrics is rendered at most this often (per format); requests in between get the
#: last rendering.
METRICS_MIN_INTERVAL_S = 0.1


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
JSON = "application/json"

#: The ``error`` code of each status the API or its server answers with.
_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    429: "too_many_requests",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
}


def _json(
    content: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()
) -> HttpResponse:
    return HttpResponse(status, _encoder.encode(content), JSON, headers)


def _error(status: int, error: str, message: str = "", **fields: Any) -> HttpResponse:
    body: dict[str, Any] = {"error": error}
    if message:
        body["message"] = message
    body.update(fields)
    return _json(body, status)


def admin_error(status: int, message: str) -> HttpResponse:
    """The JSON shape of the HTTP server's own errors (malformed, too slow, too big, …)."""
    return _error(status, _ERROR_CODES.get(status, "http_error"), message)


_NOT_FOUND = _error(404, "not_found", "Not Found")
_MISSING_TOKEN = _json(
    {"error": "unauthorized", "message": "missing bearer token"},
    401,
    (("WWW-Authenticate", 'Bearer realm="bridge"'),),
)
_INVALID_TOKEN = _json(
    {"error": "unauthorized", "message": "invalid bearer token"},
    401,
    (("WWW-Authenticate", 'Bearer realm="bridge", error="invalid_token"'),),
)
_HEALTHY = _json({"status": "ok"})
_READY = _json({"status": "ready"})
_DRAINING = _json({"status": "draining"}, 503)


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


# -- /metrics in slices ----------------------------------------------------------------

#: Longest stretch of collecting or encoding between two yields to the event loop.
METRICS_SLICE_S = 0.0005
_EOF = b"# EOF\n"


class _Families:
    """Already-collected metric families, for prometheus_client's encoders."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


async def render_metrics(metrics: Metrics, accept: str = "") -> tuple[bytes, str]:
    """What ``metrics.render(accept)`` returns, produced in slices of at most about
    METRICS_SLICE_S (or one collector, if longer) with a checkpoint between them: a
    rendering is 2-3 ms of CPU with 100 calls, longer than the pacing tolerates in one
    piece. The registry's lock is not held between families (it copies its collector
    list first), and each family is complete when collected."""
    encoder, content_type = choose_encoder(accept)
    families: list[Metric] = []
    began = time.perf_counter()
    for family in metrics.registry.collect():
        families.append(family)
        if time.perf_counter() - began > METRICS_SLICE_S:
            await trio.lowlevel.checkpoint()
            began = time.perf_counter()
    # Both formats are one block per family (OpenMetrics ends with "# EOF"): encode a
    # few families at a time.
    openmetrics = content_type.startswith("application/openmetrics-text")
    parts: list[bytes] = []
    step = 8
    for i in range(0, len(families), step):
        chunk = encoder(_Families(families[i : i + step]))
        if openmetrics and chunk.endswith(_EOF):
            chunk = chunk[: -len(_EOF)]
        parts.append(chunk)
        await trio.lowlevel.checkpoint()
    if openmetrics:
        parts.append(_EOF)
    return b"".join(parts), content_type


# -- the log level ------------------------------------------------------------------

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class LogLevelRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The ``PUT /v1/log-level`` body. ``level`` null on a named logger below ``bridge``
    makes it follow ``bridge`` again."""

    level: Literal["debug", "info", "warning", "error"] | None
    logger: Annotated[str, msgspec.Meta(max_length=128, pattern=r"^bridge(\.[A-Za-z0-9_]+)*$")] = (
        "bridge"
    )


def _level_name(level: int) -> str:
    return logging.getLevelName(level).lower()


def get_log_levels() -> dict[str, Any]:
    """``bridge``'s level and every ``bridge.*`` logger that has its own."""
    loggers = {
        name: _level_name(item.level)
        for name, item in sorted(logging.Logger.manager.loggerDict.items())
        if name.startswith("bridge.") and isinstance(item, logging.Logger) and item.level
    }
    return {
        "level": _level_name(logging.getLogger("bridge").getEffectiveLevel()),
        "loggers": loggers,
    }


def set_log_level(level: str | None, name: str = "bridge") -> None:
    """Set ``name``'s level (None: inherit again; not for ``bridge`` itself)."""
    if level is None and name == "bridge":
        raise ValueError('level null is only for a logger below "bridge"')
    if level is not None and level not in _LEVELS:
        raise ValueError(f"level {level!r}: expected debug, info, warning or error")
    logging.getLogger(name).setLevel(logging.NOTSET if level is None else _LEVELS[level])


# -- the app ------------------------------------------------------------------------

Endpoint = Callable[[HttpRequest, str], Awaitable[HttpResponse]]


@attrs.define(eq=False)
class AdminApp:
    """The admin API as an HTTP handler: ``await app(request)`` → response.

    Routing is a dict lookup on the decoded path, then the method, then (on ``/v1/*``)
    the bearer token, in that order (unknown path 404, wrong method 405, then 401).
    Refusals are prebuilt responses: an unauthenticated flood costs a lookup and a
    constant-time compare per request.
    """

    backend: AdminBackend
    metrics: Metrics
    token: str = ""
    #: The HTTP server's counters (exported as ``bridge_admin_*`` on ``metrics``).
    stats: HttpStats = attrs.field(factory=HttpStats)
    _expected: bytes = attrs.field(init=False)
    _routes: dict[str, dict[str, Endpoint]] = attrs.field(init=False)
    _stream_routes: dict[str, Endpoint] = attrs.field(init=False)
    _allow: dict[int, tuple[tuple[str, str], ...]] = attrs.field(init=False)
    _metrics_cache: dict[bool, tuple[float, HttpResponse]] = attrs.field(init=False, factory=dict)
    _metrics_rendering: dict[bool, trio.Event] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self._expected = self.token.encode()
        self._routes = {
            "/healthz": {"GET": self._healthz},
            "/readyz": {"GET": self._readyz},
            "/metrics": {"GET": self._metrics},
            "/v1/streams": {"GET": self._list_streams, "POST": self._open_stream},
            "/v1/events": {"GET": self._list_events},
            "/v1/log-level": {"GET": self._get_log_level, "PUT": self._put_log_level},
        }
        self._stream_routes = {"GET": self._get_stream, "DELETE": self._delete_stream}
        self._allow = {}

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        response = await self._dispatch(request)
        if access_logger.isEnabledFor(logging.DEBUG):
            access_logger.debug(
                "%s %s %d",
                request.method,
                request.target,
                response.status,
                extra={"peer": f"{request.peer[0]}:{request.peer[1]}"},
            )
        return response

    async def _dispatch(self, request: HttpRequest) -> HttpResponse:
        path = request.path
        stream_id = ""
        methods = self._routes.get(path)
        if methods is None:
            if path.startswith(_STREAM_PREFIX) and len(path) > len(_STREAM_PREFIX):
                stream_id = path[len(_STREAM_PREFIX) :]
                if "/" not in stream_id:
                    methods = self._stream_routes
            if methods is None:
                return self._redirect_slash(request) or _NOT_FOUND
        method = request.method
        endpoint = methods.get("GET" if method == "HEAD" else method)
        if endpoint is None:
            return self._not_allowed(methods)
        if path.startswith("/v1/"):
            denied = self._authorize(request)
            if denied is not None:
                return denied
            try:
                return await endpoint(request, stream_id)
            except Exception:
                logger.exception(
                    "admin request failed", extra={"method": request.method, "path": path}
                )
                return _error(500, "internal_error", "the request failed; see the daemon log")
        return await endpoint(request, stream_id)

    def _redirect_slash(self, request: HttpRequest) -> HttpResponse | None:
        """``/healthz/`` → 307 ``/healthz`` (what clients that append a slash expect)."""
        path = request.path
        if len(path) < 2 or not path.endswith("/"):
            return None
        bare = path.rstrip("/")
        known = bare in self._routes or (
            bare.startswith(_STREAM_PREFIX) and "/" not in bare[len(_STREAM_PREFIX) :]
        )
        if not known or "//" in path:
            return None
        raw = request.target.partition("?")[0].rstrip("/")
        location = raw + ("?" + request.query_string if request.query_string else "")
        return HttpResponse(307, b"", "", (("Location", location),))

    def _not_allowed(self, methods: dict[str, Endpoint]) -> HttpResponse:
        # RFC 9110 §15.5.6: a 405 lists the methods the target supports.
        allow = self._allow.get(id(methods))
        if allow is None:
            names = set(methods) | ({"HEAD"} if "GET" in methods else set())
            allow = (("Allow", ", ".join(sorted(names))),)
            self._allow[id(methods)] = allow
        return _json({"error": "method_not_allowed", "message": "Method Not Allowed"}, 405, allow)

    def _authorize(self, request: HttpRequest) -> HttpResponse | None:
        """None if the request may proceed, else the 401 to send."""
        if not self._expected:
            return None
        scheme, _, given = request.header("authorization").partition(" ")
        if scheme.lower() == "bearer" and given.strip():
            # Constant-time compare: the token is the only thing between the network and
            # DELETE /v1/streams/{id}.
            if hmac.compare_digest(given.strip().encode(), self._expected):
                return None
            return _INVALID_TOKEN
        return _MISSING_TOKEN

    # -- endpoints --------------------------------------------------------------------

    async def _healthz(self, request: HttpRequest, _: str) -> HttpResponse:
        return _HEALTHY

    async def _readyz(self, request: HttpRequest, _: str) -> HttpResponse:
        if self.backend.ready:
            return _READY
        reason = getattr(self.backend, "not_ready_reason", None)
        if reason in (None, "draining"):
            return _DRAINING
        return _json({"status": "not_ready", "reason": reason}, 503)

    async def _metrics(self, request: HttpRequest, _: str) -> HttpResponse:
        # Rendering walks every collector (process stats from /proc, the task tree, the
        # streams' lateness): ~2.8 ms of CPU with 100 live calls. It is done in slices
        # (render_metrics) and at most once per METRICS_MIN_INTERVAL_S per format, shared
        # by the requests that arrive meanwhile; a real scraper (every 15 s) always gets
        # a fresh one.
        accept = request.header("accept")
        key = "application/openmetrics-text" in accept
        cached = self._metrics_cache.get(key)
        if cached is not None and trio.current_time() - cached[0] < METRICS_MIN_INTERVAL_S:
            return cached[1]
        rendering = self._metrics_rendering.get(key)
        if rendering is not None:
            # Another request is rendering this format right now: share its result.
            await rendering.wait()
            cached = self._metrics_cache.get(key)
            if cached is not None:
                return cached[1]
        done = self._metrics_rendering[key] = trio.Event()
        try:
            body, content_type = await render_metrics(self.metrics, accept)
            response = HttpResponse(200, body, content_type)
            self._metrics_cache[key] = (trio.current_time(), response)
        finally:
            del self._metrics_rendering[key]
            done.set()
        return response

    async def _list_streams(self, request: HttpRequest, _: str) -> HttpResponse:
        query = request.query
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
            streams = self.backend.live_streams()[:limit]
        else:
            streams = await self.backend.list_streams(
                state=None if state == "all" else (state or "live"), since=since, limit=limit
            )
        return _json({"streams": streams})

    async def _get_stream(self, request: HttpRequest, stream_id: str) -> HttpResponse:
        try:
            stream = await self.backend.get_stream(stream_id)
        except StreamNotFound:
            stream = None
        if stream is None:
            return _error(404, "not_found", "no such stream", stream_id=stream_id)
        return _json(stream)

    async def _delete_stream(self, request: HttpRequest, stream_id: str) -> HttpResponse:
        try:
            stopping = await self.backend.stop_stream(stream_id)
        except StreamNotFound:
            stopping = False
        if not stopping:
            return _error(404, "not_found", "no such live stream", stream_id=stream_id)
        return _json({"stream_id": stream_id, "status": "stopping"}, 202)

    async def _list_events(self, request: HttpRequest, _: str) -> HttpResponse:
        query = request.query
        status = query.get("status")
        try:
            limit = _parse_limit(query.get("limit"))
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))
        if status not in (None, "pending", "delivered", "failed", "skipped"):
            return _error(
                400,
                "bad_request",
                f"status={status!r}: expected pending, delivered, failed or skipped",
            )
        return _json({"events": await self.backend.list_events(status=status, limit=limit)})

    async def _open_stream(self, request: HttpRequest, _: str) -> HttpResponse:
        # The server has read the body, refusing more than MAX_BODY_BYTES (413).
        if len(request.body) > MAX_BODY_BYTES:
            return _error(413, "payload_too_large", f"body over {MAX_BODY_BYTES} bytes")
        try:
            parsed = msgspec.json.decode(request.body, type=OpenRtpRequest)
            if parsed.remote is not None:
                _parse_remote(parsed.remote)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            return _error(400, "bad_request", str(exc))
        fields = {k: v for k, v in msgspec.structs.asdict(parsed).items() if v is not None}
        try:
            answer = await self.backend.open_rtp_stream(fields)
        except StreamRefused as exc:
            return _error(503, "refused", str(exc), reason=exc.reason)
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))
        return _json(answer, 201)

    async def _get_log_level(self, request: HttpRequest, _: str) -> HttpResponse:
        return _json(get_log_levels())

    async def _put_log_level(self, request: HttpRequest, _: str) -> HttpResponse:
        try:
            parsed = msgspec.json.decode(request.body, type=LogLevelRequest)
            set_log_level(parsed.level, parsed.logger)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
            return _error(400, "bad_request", str(exc))
        # WARNING: the change must show whatever the level now is.
        logger.warning(
            "log level of %s set to %s",
            parsed.logger,
            parsed.level or "inherit",
            extra={"peer": f"{request.peer[0]}:{request.peer[1]}"},
        )
        return _json(get_log_levels())


_STREAM_PREFIX = "/v1/streams/"


# -- the server's counters as metrics ---------------------------------------------------


class _AdminHttpCollector(Collector):
    """``bridge_admin_*`` from the server's plain counters, read at scrape time (the
    request path increments ints, never a prometheus object)."""

    def __init__(self, stats: HttpStats) -> None:
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        st = self.stats
        yield CounterMetricFamily(
            "bridge_admin_connections", "Admin API connections accepted", value=st.connections
        )
        yield GaugeMetricFamily(
            "bridge_admin_connections_active", "Admin API connections open", value=st.active
        )
        responses = CounterMetricFamily(
            "bridge_admin_responses", "Admin API responses by status code", labels=["status"]
        )
        for status, n in sorted(st.responses.items()):
            responses.add_metric([str(status)], n)
        yield responses
        refused = CounterMetricFamily(
            "bridge_admin_refused",
            "Admin API connections or requests refused by a limit (429/503), or delayed"
            " to the per-address rate (throttled)",
            labels=["reason"],
        )
        for reason in _REFUSALS:
            refused.add_metric([reason], st.refused.get(reason, 0))
        yield refused
        errors = CounterMetricFamily(
            "bridge_admin_connection_errors",
            "Admin API connections that ended badly (client errors, timeouts, disconnects)",
            labels=["kind"],
        )
        for kind in sorted(set(_ERRORS) | set(st.errors)):
            errors.add_metric([kind], st.errors.get(kind, 0))
        yield errors


_REFUSALS = ("max_connections", "max_connections_per_peer", "rate_limited", "throttled")
_ERRORS = (
    "disconnected",
    "handler_error",
    "handler_timeout",
    "internal",
    "malformed",
    "send_timeout",
    "timeout",
    "too_large",
)
#: One collector (and one HttpStats) per metrics registry.
_STATS_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, HttpStats] = (
    weakref.WeakKeyDictionary()
)


def create_admin_app(backend: AdminBackend, metrics: Metrics, *, token: str = "") -> AdminApp:
    """The admin API. ``token`` != "" requires ``Authorization: Bearer <token>`` on /v1/*.
    The server's counters are registered on ``metrics`` once (shared by later apps)."""
    stats = _STATS_BY_REGISTRY.get(metrics.registry)
    if stats is None:
        stats = HttpStats()
        metrics.registry.register(_AdminHttpCollector(stats))
        _STATS_BY_REGISTRY[metrics.registry] = stats
    return AdminApp(backend, metrics, token, stats)


# -- serving ------------------------------------------------------------------------


def admin_limits(
    *,
    max_connections: int = 128,
    max_connections_per_peer: int = 16,
    rate_per_peer: float = 50.0,
    burst_per_peer: int = 100,
    request_timeout_s: float = 5.0,
    idle_timeout_s: float = 5.0,
) -> HttpLimits:
    """The HTTP limits of the admin port (``[admin]`` in the config)."""
    return HttpLimits(
        max_body_bytes=MAX_BODY_BYTES,
        max_connections=max_connections,
        max_connections_per_peer=max_connections_per_peer,
        rate_per_peer=rate_per_peer,
        burst_per_peer=burst_per_peer,
        request_timeout_s=request_timeout_s,
        idle_timeout_s=idle_timeout_s,
    )


async def bind_admin(host: str, port: int, *, reuse_port: bool = False) -> trio.SocketListener:
    """The admin listening socket (``SO_REUSEADDR``; ``SO_REUSEPORT`` on request)."""
    return await open_tcp_listener(host or None, port, reuse_port=reuse_port)


async def serve_admin(
    app: AdminApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    listener: trio.SocketListener | None = None,
    limits: HttpLimits | None = None,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``app`` on ``host:port`` (or on ``listener``, which it then owns and closes)
    until cancelled. ``task_status.started((host, port))`` reports the bound address, so
    port 0 works; an address in use fails ``nursery.start()`` with a plain OSError."""
    if listener is None:
        listener = await bind_admin(host, port, reuse_port=reuse_port)

    async with trio.open_nursery() as nursery:
        addresses: list[tuple[str, int]] = await nursery.start(
            partial(
                serve_http,
                app,
                listeners=[listener],
                limits=limits or admin_limits(),
                stats=app.stats,
                error_response=admin_error,
                logger=http_logger,
            )
        )
        http_logger.info("admin API listening on http://%s:%d", *addresses[0])
        task_status.started(addresses[0])
    raise AssertionError("unreachable: serve_http never returns")  # pragma: no cover
