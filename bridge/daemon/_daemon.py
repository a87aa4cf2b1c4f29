"""The daemon: the top-level nursery of ``bridge run`` (ARCHITECTURE.md)::

    bridge run
    └── daemon nursery
        ├── admin HTTP server        /healthz /readyz /metrics /v1/streams
        ├── call-leg listeners       AudioSocket TCP · carrier WebSocket · RTP port pool
        ├── event dispatcher         status callbacks (httpx), stream records
        ├── signals + sd_notify      SIGTERM drain · SIGHUP reload · READY/WATCHDOG/STOPPING
        ├── ticker                   the one pacing clock of every stream
        ├── poller                   one epoll wake-up reads every ready media socket
        └── streams nursery          one Stream per call

``Daemon`` is also the admin API's backend (``_admin.AdminBackend``), the listeners'
``CallAdmission`` (``_admission``: routes, the one admission check, refusals, the resume
and accept registries, the cluster hooks) and every stream's observer (typed lifecycle
events, records, metrics), so neither the lower layers nor the listeners import it.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, assert_never, cast

import attrs
import trio

from .._errors import BridgeError, StreamRefused
from ..dialects import Start
from ..media import read_wav
from ..streams import (
    AppConnector,
    CallLeg,
    DegradedStream,
    DroppedStream,
    EchoConnector,
    LifecycleEvent,
    RecoveredStream,
    StartStream,
    StopStream,
    Stream,
    StreamManager,
    StreamSettings,
    StreamState,
    Ticker,
)
from ..streams._wsapp import WsAppConnector
from ..transports import (
    Poller,
    WebSocketConnection,
    WebSocketRequest,
    open_tcp_listener,
    open_tcp_listeners,
    raise_open_files_limit,
    use_poller,
)
from . import _clusterglue
from ._admin import admin_limits, bind_admin, create_admin_app, serve_admin
from ._admission import AcceptSlot, ResumeKey
from ._config import (
    AppConfig,
    Config,
    RouteConfig,
    StreamConfig,
    WebSocketConfig,
    load_config,
    match_route,
)
from ._events import HangupReason, StreamEvent, StreamRecord
from ._listeners import ListenerSupervisor, bind_listener, format_address
from ._logging import BadPeerLog, configure_logging
from ._metrics import Metrics
from ._notify import SdNotifier, serve_watchdog
from ._outbox import EventStore, open_event_store
from ._tls import ServerTls, load_server_context

__all__ = ["EXIT_LOST", "Daemon", "run_daemon"]

#: ``bridge run``'s exit status after a stop that lost events or stream records (they
#: could not be written to the records database; each is logged with its id).
EXIT_LOST = 3

logger = logging.getLogger("bridge.daemon")


@attrs.define(slots=True, eq=False)
class Daemon:
    config: Config
    config_path: str | None = None
    metrics: Metrics = attrs.field(factory=Metrics)
    ticker: Ticker = attrs.field(factory=Ticker)
    #: The read poller of this run's streams (``transports.Poller``), once running.
    poller: Poller | None = attrs.field(init=False, default=None)
    manager: StreamManager = attrs.field(init=False)
    notifier: SdNotifier = attrs.field(factory=SdNotifier.from_environ)
    store: EventStore | None = None
    #: Bound addresses by listener name, once they are bound (tests bind port 0).
    bound: dict[str, tuple[str, int]] = attrs.field(factory=dict)
    #: The supervisor of each listener (admin, audiosocket, websocket, rtp).
    supervisors: dict[str, ListenerSupervisor] = attrs.field(factory=dict)
    listening: bool = False
    stopping: bool = False
    ready_event: trio.Event = attrs.field(factory=trio.Event)
    #: ``POST /v1/streams``: the RTP listener's opener (``_rtp.RtpOpener``) while it runs.
    rtp_opener: Callable[[dict[str, Any]], Any] | None = None
    _hold_cache: dict[str, tuple[bytes, int]] = attrs.field(factory=dict)
    _routes_by_stream: dict[str, RouteConfig] = attrs.field(factory=dict)
    #: Carrier streams by (route, carrier call id, carrier stream id), for re-dial resume.
    _resumable: dict[ResumeKey, Stream] = attrs.field(factory=dict)
    _resumable_keys: dict[str, ResumeKey] = attrs.field(factory=dict)
    #: Accept-mode streams waiting for their app to dial in, by stream id.
    _accept_slots: dict[str, AcceptSlot] = attrs.field(factory=dict)
    #: The WebSocket listener's TLS context when it serves wss:// (SIGHUP swaps it).
    tls: ServerTls | None = None
    #: This process in the cluster (``bridge.cluster.ClusterNode``) while
    #: ``[cluster] enabled``; None otherwise.
    cluster: Any = None
    _cancel: trio.CancelScope | None = None
    #: Each live stream's counters as last moved into Prometheus (see _add_samples).
    _sampled: dict[str, tuple[int, int, int, float, int, int]] = attrs.field(factory=dict)
    started_monotonic: float = attrs.field(factory=time.monotonic)
    #: The rate limit of every bad-peer WARNING line (``[daemon] bad_input_log_*``).
    bad_peers: BadPeerLog = attrs.field(init=False)
    #: Streams whose first-audio setup time is already in the histogram.
    _first_audio_seen: set[str] = attrs.field(factory=set)
    #: This run's event store, kept after it closes: what it could not persist decides
    #: the exit status (``lost``).
    last_store: EventStore | None = None

    def __attrs_post_init__(self) -> None:
        self.manager = StreamManager(self.ticker, max_streams=self.config.daemon.max_streams)
        self.bad_peers = BadPeerLog.create(
            logger,
            self.config.daemon.bad_input_log_per_interval,
            self.config.daemon.bad_input_log_interval_s,
        )

    # ==================================================================================
    # running
    # ==================================================================================

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled or drained. ``task_status.started()`` once every listener
        is bound (that is also when READY=1 goes to systemd)."""
        cfg = self.config
        async with open_event_store(
            cfg.records.path,
            registry=self.metrics.registry,
            callback_timeout_s=cfg.callbacks.timeout_s,
            backoff_s=cfg.callbacks.backoff_s,
            max_backoff_s=cfg.callbacks.max_backoff_s,
            give_up_after_s=cfg.callbacks.give_up_after_s,
            concurrency=cfg.callbacks.concurrency,
            retention_s=cfg.records.retention_s,
        ) as store:
            self.store = self.last_store = store
            self._init_metrics()
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self.ticker.serve)
                nursery.start_soon(self.bad_peers.serve)
                if cfg.daemon.read_poller:
                    # Every stream's readers, started from here down, read through it.
                    self.poller = Poller()
                    use_poller(self.poller)
                    nursery.start_soon(self.poller.serve)
                await nursery.start(self.manager.serve)
                if cfg.cluster.enabled:  # cluster hook: join before the listeners open
                    await nursery.start(_clusterglue.serve_cluster, self)
                await self._start_listeners(nursery)
                self.listening = True
                self.notifier.ready(status=self._status())
                self.ready_event.set()
                nursery.start_soon(serve_watchdog, self.notifier, self._status)
                nursery.start_soon(self._serve_metrics_sampler)
                logger.info(
                    "bridge ready",
                    extra={
                        "listeners": {k: f"{h}:{p}" for k, (h, p) in self.bound.items()},
                        "pid": os.getpid(),
                        "startup_s": round(time.monotonic() - self.started_monotonic, 3),
                    },
                )
                task_status.started()
            self.store = None

    async def _start_listeners(self, nursery: trio.Nursery) -> None:
        """Bind every listener (a failure names it and its address and fails start-up),
        then run each under a :class:`ListenerSupervisor` in ``nursery``: from here on a
        listener's failure is logged, counted and restarted, never the daemon's end."""
        cfg = self.config
        admin_addr = cfg.admin.listen_addr
        if admin_addr is not None:
            acfg = cfg.admin
            backend = _clusterglue.admin_backend(self)  # cluster hook: cluster-wide API
            app = create_admin_app(backend, self.metrics, token=acfg.token)
            limits = admin_limits(
                max_connections=acfg.max_connections,
                max_connections_per_peer=acfg.max_connections_per_peer,
                rate_per_peer=float(acfg.rate_limit),
                burst_per_peer=acfg.rate_burst,
                request_timeout_s=acfg.request_timeout_s,
                idle_timeout_s=acfg.idle_timeout_s,
            )

            async def serve_admin_on(
                listeners: list[trio.SocketListener],
                *,
                task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                await serve_admin(app, listener=listeners[0], limits=limits, task_status=task_status)

            await self._supervise(
                nursery,
                "admin",
                admin_addr,
                lambda: _one(bind_admin(admin_addr[0], admin_addr[1])),
                serve_admin_on,
            )
        as_addr = cfg.audiosocket.listen_addr
        if as_addr is not None:
            from ._audiosocket import serve_audiosocket

            as_cfg = cfg.audiosocket

            async def serve_audiosocket_on(
                listeners: list[trio.SocketListener],
                *,
                task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                await serve_audiosocket(
                    self, as_cfg, listener=listeners[0], task_status=task_status
                )

            await self._supervise(
                nursery,
                "audiosocket",
                as_addr,
                lambda: _one(
                    open_tcp_listener(as_addr[0], as_addr[1], reuse_port=as_cfg.reuse_port)
                ),
                serve_audiosocket_on,
            )
        ws_addr = cfg.websocket.listen_addr
        if ws_addr is not None:
            from ._carrier import serve_carrier_websocket

            ws_cfg = cfg.websocket
            context = load_server_context(ws_cfg, file=self.config_path)
            if context is not None:
                self.tls = ServerTls(context, ws_cfg.tls_cert)

            async def serve_websocket_on(
                listeners: list[trio.SocketListener],
                *,
                task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                await serve_carrier_websocket(
                    self, ws_cfg, listeners=listeners, task_status=task_status
                )

            await self._supervise(
                nursery,
                "websocket",
                ws_addr,
                lambda: open_tcp_listeners(ws_addr[0], ws_addr[1], reuse_port=ws_cfg.reuse_port),
                serve_websocket_on,
            )
        if cfg.rtp.ports:
            from ._rtp import open_rtp_opener

            # A range without an even port disables RTP (logged by open_rtp_opener).
            first = open_rtp_opener(self, cfg.rtp)
            if first is not None:
                unused = [first]

                async def serve_rtp(
                    listeners: list[trio.SocketListener],
                    *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                ) -> None:
                    # A fresh pool for each restart: a failed one has closed its sockets.
                    opener = unused.pop() if unused else open_rtp_opener(self, cfg.rtp)
                    assert opener is not None
                    self.rtp_opener = opener
                    task_status.started()
                    await self._serve_rtp(opener)

                address = f"{cfg.rtp.bind} ports {cfg.rtp.ports}"
                supervisor = self._supervisor("rtp", address, serve_rtp, [])
                await nursery.start(supervisor.run)

    async def _serve_rtp(self, opener: Any) -> None:
        """Hold the RTP port pool; on the way out ``POST /v1/streams`` is refused
        (``rtp_disabled``) before the pool closes."""
        try:
            await opener.serve()
        finally:
            if self.rtp_opener is opener:
                self.rtp_opener = None

    def _supervisor(
        self,
        name: str,
        address: str,
        serve: Callable[..., Any],
        listeners: list[trio.SocketListener],
    ) -> ListenerSupervisor:
        failures = self.metrics.listener_failures.labels(listener=name)
        supervisor = ListenerSupervisor(
            name, address, serve, listeners, on_failure=failures.inc
        )
        self.supervisors[name] = supervisor
        return supervisor

    async def _supervise(
        self,
        nursery: trio.Nursery,
        name: str,
        addr: tuple[str, int],
        bind: Callable[[], Awaitable[list[trio.SocketListener]]],
        serve: Callable[..., Any],
    ) -> None:
        listeners = await bind_listener(name, format_address(addr), bind)
        bound = listeners[0].socket.getsockname()
        self.bound[name] = (str(bound[0]), int(bound[1]))
        supervisor = self._supervisor(name, format_address(self.bound[name]), serve, listeners)
        try:
            await nursery.start(supervisor.run)
        except BaseException:
            for listener in listeners:
                listener.socket.close()
            raise

    async def _serve_metrics_sampler(self) -> None:
        """Move the streams' plain counters into Prometheus once a second (the per-frame
        paths never touch prometheus objects: they cost microseconds each)."""
        m = self.metrics
        last_ticks = 0
        while True:
            await trio.sleep(1.0)
            seen: dict[str, tuple[int, int, int, float, int, int]] = {}
            for stream in self.manager.live():
                seen[stream.stream_id] = self._add_samples(stream)
            self._sampled = seen
            self._observe_first_audio()
            ticks = self.ticker.ticks
            if ticks != last_ticks and self.ticker.wakeups:
                m.ticker_lag.observe(self.ticker.lag_max_s)
                self.ticker.lag_max_s = 0.0
            last_ticks = ticks

    def _add_samples(self, stream: Stream) -> tuple[int, int, int, float, int, int]:
        """Move what ``stream`` counted since the last sample into Prometheus."""
        playout = stream.playout
        now = (
            stream.frames_in,
            stream.frames_out,
            playout.trimmed_frames,
            playout.trimmed_s,
            stream.jitter_counters().get("concealed", 0),
            playout.altered_frames,
        )
        prev = self._sampled.get(stream.stream_id, (0, 0, 0, 0.0, 0, 0))
        m = self.metrics
        m.add_frames("call_to_app", now[0] - prev[0])
        m.add_frames("app_to_call", now[1] - prev[1])
        if now[2] > prev[2]:
            m.playout_trimmed_frames.inc(now[2] - prev[2])
        if now[3] > prev[3]:
            m.playout_trimmed_seconds.inc(now[3] - prev[3])
        if now[4] > prev[4]:
            m.frames_concealed.inc(now[4] - prev[4])
        if now[5] > prev[5]:
            m.playout_altered_frames.inc(now[5] - prev[5])
        return now

    def _status(self) -> str:
        n = self.manager.live_count
        state = "draining" if self.manager.draining else "ready"
        return f"{n} live stream{'s' if n != 1 else ''}; {state}"

    # ==================================================================================
    # signals: drain and reload
    # ==================================================================================

    async def drain(self) -> int:
        """SIGTERM/SIGINT: readyz 503, refuse new calls, give live streams
        ``drain_timeout`` to end, then close the rest with ``shutdown``."""
        self.stopping = True
        self.metrics.set_draining(True)
        self.notifier.stopping(status=f"draining {self.manager.live_count} streams")
        logger.info(
            "draining: %d live streams, up to %gs",
            self.manager.live_count,
            self.config.daemon.drain_timeout_s,
        )
        ended = await self.manager.drain(self.config.daemon.drain_timeout_s)
        if self.store is not None and self.store.healthy:
            # (A store that cannot write makes its last attempts when it closes.)
            with trio.move_on_after(5.0):
                await self.store.flush()
        return ended

    def reload(self) -> bool:
        """SIGHUP: new routes and stream defaults for new calls; live calls keep theirs.
        The WebSocket listener's certificate is re-read and serves new handshakes.
        A bad file, or a certificate that does not load, is rejected with a log line
        and the old config (and certificate) stays."""
        if self.config_path is None:
            logger.warning("SIGHUP ignored: running on the embedded default config")
            return False
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
            # The listener's certificate is re-read even when the file names are the
            # same (a renewal replaces the files in place). A certificate that does not
            # load rejects the whole reload, as a bad config file does.
            context = (
                load_server_context(new.websocket, file=self.config_path)
                if self.tls is not None and new.websocket.tls
                else None
            )
        except Exception as exc:
            logger.error("reload rejected, keeping the running config: %s", exc)
            self.metrics.config_reloads.labels("rejected").inc()
            self.notifier.ready(status=self._status())
            return False
        old = self.config
        for section in ("admin", "audiosocket", "websocket", "rtp", "records", "callbacks"):
            before, after = getattr(old, section), getattr(new, section)
            if section == "websocket":
                # The certificate and the trusted proxies apply live (below).
                before, after = _without_live_keys(before), _without_live_keys(after)
            if before != after:
                logger.warning(
                    "reload: [%s] changed; it takes effect on restart (listeners and "
                    "stores are not rebound)",
                    section,
                )
        if (self.tls is not None) != new.websocket.tls:
            logger.warning(
                "reload: [websocket] TLS turned %s; it takes effect on restart",
                "on" if new.websocket.tls else "off",
            )
        if self.tls is not None and context is not None:
            self.tls.swap(context, new.websocket.tls_cert)
            logger.info(
                "reload: the WebSocket listener serves %s to new connections "
                "(live ones keep their session)",
                new.websocket.tls_cert,
            )
        # Only routes, stream defaults, the daemon's stream limit and the live
        # [websocket] keys apply now.
        self.config = _merge_reload(old, new, tls=self.tls is not None and context is not None)
        self.metrics.config_reloads.labels("applied").inc()
        self.manager.max_streams = new.daemon.max_streams
        self.bad_peers.configure(
            new.daemon.bad_input_log_per_interval, new.daemon.bad_input_log_interval_s
        )
        self._hold_cache.clear()
        self._init_metrics()
        logger.info("reloaded %s: %d routes", self.config_path, len(new.routes))
        self.notifier.ready(status=self._status())
        return True

    # ==================================================================================
    # streams
    # ==================================================================================

    def match_route(
        self,
        listener: str,
        path: str = "",
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        subprotocols: Sequence[str] = (),
    ) -> RouteConfig | None:
        return match_route(self.config, listener, path, headers, query, subprotocols)

    def check_admission(self) -> None:
        """The one admission check (``CallAdmission``): draining, then the stream
        manager's (``max_streams``, the streams nursery running). Raises StreamRefused."""
        if self.stopping:
            raise StreamRefused("draining", "bridge is draining; new calls are refused")
        self.manager.check_admission()

    def stream_settings(self, route: RouteConfig) -> tuple[StreamSettings, StreamConfig]:
        scfg = self.config.route_stream(route)
        hold_pcm, hold_rate = b"", 8000
        if scfg.hold_audio:
            cached = self._hold_cache.get(scfg.hold_audio)
            if cached is None:
                try:
                    cached = read_wav(scfg.hold_audio)
                except (OSError, ValueError) as exc:
                    logger.error(
                        "hold audio %s unusable, playing silence: %s", scfg.hold_audio, exc
                    )
                    cached = (b"", 8000)
                self._hold_cache[scfg.hold_audio] = cached
            hold_pcm, hold_rate = cached
        settings = StreamSettings(
            app_sample_rate=route.app.sample_rate,
            ptime_ms=round(scfg.ptime_s * 1000),
            retries=scfg.retries,
            backoff_s=scfg.backoff_s,
            buffer_s=scfg.buffer_s,
            degraded_at=tuple(scfg.degraded_at),
            timeout_s=scfg.timeout_s,
            send_ahead_frames=scfg.send_ahead,
            reconnect_window_s=scfg.reconnect_window_s,
            trim_latency=scfg.trim_latency,
            hold_pcm=hold_pcm,
            hold_sample_rate=hold_rate,
        )
        return settings, scfg

    def connector_for(self, route: RouteConfig, scfg: StreamConfig, stream_id: str) -> AppConnector:
        app: AppConfig = route.app
        if app.is_echo:
            return EchoConnector(app.sample_rate)
        factory = _CONNECTOR_FACTORIES.get(app.mode)
        if factory is None:
            raise StreamRefused("no_app_transport", f"app mode {app.mode!r} is not available")
        return factory(self, route, scfg, stream_id)

    def start_stream(
        self, call: CallLeg, route: RouteConfig, listener: str, stream_id: str | None = None
    ) -> Stream:
        """Admit and start a stream for ``call`` on ``route``. Raises ``StreamRefused``."""
        self.check_admission()
        stream_id = stream_id or str(uuid.uuid4())
        settings, scfg = self.stream_settings(route)
        stream = Stream(
            stream_id=stream_id,
            call=call,
            connector=self.connector_for(route, scfg, stream_id),
            ticker=self.ticker,
            settings=settings,
            route=route.name,
            listener=listener,
            encapsulation=route.app.encapsulation,
            observer=self,
            lateness_total=self.metrics.lateness_total,
        )
        self._routes_by_stream[stream_id] = route
        self.manager.start(stream)
        if self.cluster is not None:  # cluster hook: register the stream
            _clusterglue.stream_started(self, stream, route, listener)
        self.metrics.stream_started(listener, route.name)
        logger.info(
            "stream started",
            extra={
                "stream_id": stream_id,
                "call_id": call.call_id,
                "route": route.name,
                "listener": listener,
            },
        )
        return stream

    def stream_live(self, stream_id: str) -> bool:
        return self.manager.get(stream_id) is not None

    def refused(self, listener: str, reason: str, peer: str, *, call_id: str = "") -> None:
        self.metrics.stream_refused(listener, reason)
        extra = {"listener": listener, "reason": reason, "peer": peer, "call_id": call_id}
        message = "call refused on %s from %s: %s"
        if reason in _BAD_PEER_REFUSALS:  # a scanner's noise: within the bad-peer budget
            self.bad_peers.warning(reason, message, listener, peer, reason, extra=extra)
        else:
            logger.warning(message, listener, peer, reason, extra=extra)

    def bad_input(self, leg: str, kind: str, message: str, *, peer: str = "") -> None:
        """One bad connection on a listener: one count, and a line within the budget."""
        self.metrics.bad_input.labels(leg=leg, kind=kind).inc()
        self.bad_peers.warning(
            kind,
            "bad input on %s from %s (%s): %s",
            leg,
            peer or "?",
            kind,
            message,
            extra={"leg": leg, "kind": kind, "peer": peer},
        )

    def bad_input_counter(self, leg: str, kind: str) -> Callable[[], None]:
        """Bad input counted per packet (malformed RTP); the leg logs it once itself."""
        return self.metrics.bad_input.labels(leg=leg, kind=kind).inc

    def admission_refused(self, listener: str, reason: str, peer: str) -> None:
        """A connection closed at accept: over a pending limit (per peer or in all)."""
        self.metrics.admission_refused.labels(listener, reason).inc()
        self.bad_peers.warning(
            reason,
            "connection from %s closed at accept on %s: %s",
            peer,
            listener,
            reason,
            extra={"listener": listener, "reason": reason, "peer": peer},
        )

    def auth_failed(self, listener: str, route: str, reason: str, peer: str, path: str) -> None:
        """A handshake whose credentials did not match (answered 401)."""
        self.metrics.auth_failures.labels(listener, route).inc()
        self.metrics.stream_refused(listener, reason)
        self.bad_peers.warning(
            reason,
            "call refused on %s from %s %s: %s (route %s)",
            listener,
            peer,
            path,
            reason,
            route,
            extra={"listener": listener, "reason": reason, "peer": peer, "route": route},
        )

    # -- CallAdmission: re-dials, accept mode, cluster hooks ------------------------------

    def resumable_stream(self, key: ResumeKey) -> Stream | None:
        return self._resumable.get(key)

    def register_resumable(self, key: ResumeKey, stream: Stream) -> None:
        self._resumable[key] = stream
        self._resumable_keys[stream.stream_id] = key
        if self.cluster is not None:  # cluster hook: register the resume key
            self.cluster.set_resume(stream.stream_id, *key)

    def accept_slot(self, stream_id: str) -> AcceptSlot | None:
        return self._accept_slots.get(stream_id)

    def open_accept_slot(self, stream_id: str, slot: AcceptSlot) -> None:
        self._accept_slots[stream_id] = slot

    def close_accept_slot(self, stream_id: str, slot: AcceptSlot) -> None:
        if self._accept_slots.get(stream_id) is slot:
            del self._accept_slots[stream_id]

    @property
    def clustered(self) -> bool:
        return self.cluster is not None

    async def cluster_carrier_connected(
        self,
        route: RouteConfig,
        request: WebSocketRequest,
        ws: WebSocketConnection,
        start: Start,
        local: bool,
    ) -> bool:
        return await _clusterglue.carrier_connected(self, route, request, ws, start, local)

    async def cluster_app_connecting(self, request: WebSocketRequest, stream_id: str) -> bool:
        return await _clusterglue.app_connecting(self, request, stream_id)

    # -- StreamObserver ----------------------------------------------------------------

    def _event_source(self, stream: Stream) -> tuple[str, str]:
        route = self._routes_by_stream.get(stream.stream_id)
        if route is None or route.callback is None:
            return "", ""
        return route.callback.url, route.callback.secret

    def stream_event(self, stream: Stream, event: LifecycleEvent) -> None:
        """A stream's lifecycle event -> its status callback (``StreamEvent``), by type."""
        url, secret = self._event_source(stream)
        common: dict[str, Any] = {
            "stream_id": stream.stream_id,
            "call_id": stream.call_id,
            "app_url": stream.app_url,
            "route": stream.route,
            "callback_url": url,
            "callback_secret": secret,
        }
        match event:
            case StartStream():
                ev = StreamEvent.start(**common)
                self.metrics.observe_setup(
                    "app_connected", time.monotonic() - stream.created_monotonic
                )
            case StopStream():
                # (StreamEvent checks the reason against REASONS.) The callback has no
                # error for a normal stop; the record keeps it.
                reason = cast(HangupReason, event.reason)
                ev = StreamEvent.stop(**common, reason=reason, duration_s=event.duration_s)
            case DroppedStream():
                ev = StreamEvent.dropped(
                    **common,
                    reason=cast(HangupReason, event.reason),
                    error=event.error,
                    attempts=event.attempts,
                    duration_s=event.duration_s,
                )
            case DegradedStream():
                ev = StreamEvent.degraded(**common, buffer_percent=event.buffer_percent)
            case RecoveredStream():
                ev = StreamEvent.recovered(**common)
            case _:
                assert_never(event)
        if self.cluster is not None and ev.callback_url:  # cluster hook: events via Redis
            _clusterglue.emit(self, ev)
        elif self.store is not None:
            self.store.emit(ev)
        if isinstance(event, DroppedStream | DegradedStream):
            logger.warning(
                "%s",
                event.name,
                extra={"stream_id": stream.stream_id, "route": stream.route, **event.detail()},
            )

    def stream_state(self, stream: Stream, state: StreamState) -> None:
        pass

    def stream_bad_input(self, stream: Stream, leg: str, kind: str, message: str) -> None:
        self.metrics.bad_input.labels(leg=leg, kind=kind).inc()
        peer = getattr(stream.call, "peer", "") if leg != "app" else ""
        self.bad_peers.warning(
            kind,
            "bad input on the %s leg%s (%s): %s",
            leg,
            f" from {peer}" if peer else "",
            kind,
            message,
            extra={
                "stream_id": stream.stream_id,
                "call_id": stream.call_id,
                "leg": leg,
                "kind": kind,
                "peer": peer,
            },
        )

    def stream_closed(self, stream: Stream) -> None:
        route = self._routes_by_stream.pop(stream.stream_id, None)
        key = self._resumable_keys.pop(stream.stream_id, None)
        if key is not None:
            self._resumable.pop(key, None)
        if self.cluster is not None:  # cluster hook: unregister the stream
            self.cluster.stream_ended(stream.stream_id)
        reason = stream.reason or "shutdown"
        self.metrics.stream_ended(stream.route, reason)
        self._observe_first_audio(stream)
        self._first_audio_seen.discard(stream.stream_id)
        self.metrics.uplink_buffer_fill.observe(stream.max_buffer_percent / 100.0)
        self._add_samples(stream)
        self._sampled.pop(stream.stream_id, None)
        lat = stream.lateness_ms()
        started = stream.started_at
        ended = stream.ended_at or datetime.now(UTC)
        record = StreamRecord(
            stream_id=stream.stream_id,
            call_id=stream.call_id,
            route=stream.route,
            app_url=stream.app_url,
            listener=stream.listener,
            encapsulation=stream.encapsulation,
            started_at=started,
            ended_at=ended,
            reason=reason,  # type: ignore[arg-type]
            error=stream.error,
            frames_in=stream.frames_in,
            frames_out=stream.frames_out,
            bytes_in=stream.bytes_in,
            bytes_out=stream.bytes_out,
            reconnects=stream.reconnects,
            max_buffer_percent=round(stream.max_buffer_percent, 2),
            max_buffer_ms=int(stream.max_buffer_percent / 100.0 * stream.settings.buffer_s * 1000),
            lateness_p50_ms=float(lat["p50"]),
            lateness_p99_ms=float(lat["p99"]),
            lateness_max_ms=float(lat["max"]),
            jitter=stream.jitter_counters(),
            playout=stream.playout_counters(),
            events=tuple(stream.log),
        )
        if self.store is not None:
            self.store.record_stream(record)
        del route

    # -- AdminBackend --------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.not_ready_reason is None

    @property
    def not_ready_reason(self) -> str | None:
        """Why ``/readyz`` is 503: ``starting``, ``draining`` or ``outbox_unwritable``
        (events and records cannot be persisted: a full disk, an I/O error); None when
        ready."""
        if self.stopping:
            return "draining"
        if not self.listening:
            return "starting"
        if self.store is not None and not self.store.healthy:
            return "outbox_unwritable"
        return None

    @property
    def lost(self) -> int:
        """Events and stream records this run could not persist (each logged with its id)."""
        store = self.last_store
        return 0 if store is None else store.events_lost + store.records_lost

    def live_streams(self) -> list[dict[str, Any]]:
        out = []
        for stream in self.manager.live():
            snap = stream.snapshot()
            snap.pop("events", None)
            out.append(snap)
        return out

    async def get_stream(self, stream_id: str) -> dict[str, Any] | None:
        stream = self.manager.get(stream_id)
        if stream is not None:
            return stream.snapshot()
        if self.store is not None:
            found = await self.store.get_stream(stream_id)
            if found is not None:
                return found
        return self.manager.ended_snapshot(stream_id)

    async def list_streams(
        self, *, state: str | None, since: datetime | None, limit: int
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if state in (None, "live"):
            out.extend(self.live_streams()[:limit])
        if state in (None, "ended") and self.store is not None and len(out) < limit:
            out.extend(await self.store.list_streams(since=since, limit=limit - len(out)))
        return out

    async def stop_stream(self, stream_id: str) -> bool:
        return self.manager.stop(stream_id, "api_request")

    async def list_events(self, *, status: str | None, limit: int) -> list[dict[str, Any]]:
        if self.store is None:
            return []
        return await self.store.list_events(status=status, limit=limit)

    async def open_rtp_stream(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.rtp_opener is None:
            raise StreamRefused("rtp_disabled", "the RTP listener is not configured")
        result: dict[str, Any] = await self.rtp_opener(request)
        return result

    # -- metrics ---------------------------------------------------------------------------

    def _init_metrics(self) -> None:
        """Every labelled series the configuration can produce exists at 0 from the start,
        and the gauges read at scrape time know where to look."""
        cfg = self.config
        listeners = [
            name
            for name, on in (
                ("audiosocket", cfg.audiosocket.listen_addr is not None),
                ("websocket", cfg.websocket.listen_addr is not None),
                ("rtp", bool(cfg.rtp.ports)),
            )
            if on
        ]
        self.metrics.init_series(listeners, [(r.name, r.match.listener) for r in cfg.routes])
        self.metrics.live_routes = lambda: [s.route for s in self.manager.live()]
        self.metrics.rtp_ports = self._rtp_ports
        self.metrics.ready = lambda: self.ready

    def _rtp_ports(self) -> tuple[int, int]:
        pool = getattr(self.rtp_opener, "pool", None)
        if pool is None:
            return 0, 0
        return pool.in_use, pool.size

    def _observe_first_audio(self, only: Stream | None = None) -> None:
        """Setup time to the app's first audio, for streams that reached it since the
        last look (the stream stamps the time on its per-frame path; this reads it
        once a second, and at the stream's end)."""
        seen = self._first_audio_seen
        for stream in (only,) if only is not None else self.manager.live():
            at = stream.first_audio_monotonic
            if at is not None and stream.stream_id not in seen:
                seen.add(stream.stream_id)
                self.metrics.observe_setup("first_audio", at - stream.created_monotonic)


#: Refusal reasons that say more about the peer than about the call (unknown paths,
#: streams that do not exist): their lines share the bad-peer budget.
_BAD_PEER_REFUSALS = frozenset({"no_route", "unknown_stream"})


#: [websocket] keys a SIGHUP applies without a restart.
_LIVE_WEBSOCKET_KEYS = ("tls_cert", "tls_key", "tls_min_version", "trusted_proxies")


def _without_live_keys(ws: WebSocketConfig) -> WebSocketConfig:
    import msgspec

    defaults = WebSocketConfig()
    return msgspec.structs.replace(ws, **{k: getattr(defaults, k) for k in _LIVE_WEBSOCKET_KEYS})


async def _one(listener: Awaitable[trio.SocketListener]) -> list[trio.SocketListener]:
    return [await listener]


def _merge_reload(old: Config, new: Config, *, tls: bool = False) -> Config:
    """The running config with the reloadable parts of ``new``: routes, [stream],
    [daemon], the WebSocket listener's trusted proxies, and its certificate files when
    ``tls`` (the listener serves TLS and the new files loaded)."""
    import msgspec

    live = ("trusted_proxies", *(_LIVE_WEBSOCKET_KEYS[:3] if tls else ()))
    websocket = msgspec.structs.replace(
        old.websocket, **{k: getattr(new.websocket, k) for k in live}
    )
    return msgspec.structs.replace(
        old, routes=new.routes, stream=new.stream, daemon=new.daemon, websocket=websocket
    )


#: App connector factories by ``app.mode``: fn(daemon, route, stream_config, stream_id).
_CONNECTOR_FACTORIES: dict[str, Callable[[Daemon, RouteConfig, StreamConfig, str], AppConnector]] = {}


def _dial_out(daemon: Daemon, route: RouteConfig, scfg: StreamConfig, stream_id: str) -> AppConnector:
    app = route.app
    return WsAppConnector(
        app_url=app.url,
        encapsulation=app.encapsulation,
        sample_rate=app.sample_rate,
        codec=app.codec,
        route=route.name,
        headers=dict(app.headers),
        options=dict(app.options),
        ca_file=app.ca_file,
        ptime_ms=round(scfg.ptime_s * 1000),
        connect_timeout_s=scfg.connect_timeout_s,
        send_timeout_s=scfg.send_timeout_s,
        ping_interval_s=scfg.ping_interval_s,
        ping_timeout_s=scfg.ping_timeout_s,
        close_timeout_s=scfg.close_timeout_s,
        max_message_bytes=scfg.max_message_bytes,
    )


def _accept(daemon: Daemon, route: RouteConfig, scfg: StreamConfig, stream_id: str) -> AppConnector:
    from ._carrier import accept_connector

    return accept_connector(daemon, route, scfg, stream_id)


_CONNECTOR_FACTORIES["connect"] = _dial_out
_CONNECTOR_FACTORIES["accept"] = _accept


async def _main(config: Config, config_path: str | None) -> int:
    daemon = Daemon(config, config_path)
    exit_code = 0
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                await daemon.serve()

            nursery.start_soon(run)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    daemon.reload()
                    continue
                # First SIGTERM/SIGINT: drain. A second one while draining: stop now.
                logger.info("%s: draining", signal.Signals(signum).name)

                async def drain_then_stop() -> None:
                    ended = await daemon.drain()
                    logger.info("drain complete; %d streams ended with reason shutdown", ended)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(drain_then_stop)
                async for signum2 in signals:
                    if signum2 == signal.SIGHUP:
                        continue
                    logger.warning("%s during drain: stopping at once", signal.Signals(signum2).name)
                    for stream in daemon.manager.live():
                        stream.end("shutdown")
                    nursery.cancel_scope.cancel()
                    break
                break
    if daemon.lost:
        # Every one was logged with its id by the event store; the status tells systemd
        # (the unit shows as failed) and scripts that this stop lost data.
        exit_code = EXIT_LOST
    return exit_code


def open_files_needed(config: Config) -> int:
    """Descriptors a full daemon may hold: every pending connection the listeners admit,
    three per stream (call leg, app leg, an RTP socket or a callback connection), and a
    margin for the admin API, the records database and the event loop."""
    pending = 0
    if config.audiosocket.listen_addr is not None:
        pending += config.audiosocket.max_pending
    if config.websocket.listen_addr is not None:
        pending += config.websocket.max_handshakes
    return pending + 3 * config.daemon.max_streams + 256


def check_open_files_limit(config: Config) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (logged), and warn when even that
    is below what the configured limits can use: running out of descriptors fails new
    calls with EMFILE however well the pending limits hold."""
    before, after, hard = raise_open_files_limit()
    if after != before:
        logger.info("raised the open files limit (RLIMIT_NOFILE) from %d to %d", before, after)
    needed = open_files_needed(config)
    if 0 <= after < needed:  # RLIM_INFINITY is -1
        logger.warning(
            "open files limit %d (hard %d) is below the %d the configured limits can use "
            "(max_streams, max_pending, max_handshakes); raise LimitNOFILE",
            after,
            hard,
            needed,
        )


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def run_daemon(config: Config, *, config_path: str | None = None) -> int:
    configure_logging(config.daemon.log_level, config.daemon.log_format)
    check_open_files_limit(config)
    try:
        return trio.run(_main, config, config_path)
    except (OSError, BridgeError, BaseExceptionGroup) as exc:
        # A port in use, an unwritable records path: one clear line, exit 1. Anything
        # else is a bug and keeps its traceback.
        leaves = _leaves(exc)
        if not all(isinstance(leaf, OSError | BridgeError) for leaf in leaves):
            raise
        for leaf in leaves:
            logger.error("bridge could not start: %s", leaf)
        return 1
