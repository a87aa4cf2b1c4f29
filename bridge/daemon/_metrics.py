"""Prometheus metrics of the daemon, on a private registry.

A private ``CollectorRegistry`` (not prometheus_client's global one) keeps tests and
several daemons in one process independent, and makes ``/metrics`` show exactly what
this daemon registered. Other parts of the daemon register their own metrics on
``metrics.registry`` (the event dispatcher adds the callback/outbox ones).

Cost rule: a prometheus_client ``inc()`` takes a lock and costs around a microsecond;
``labels(...)`` costs several. Per-frame code paths (50 frames/s per direction per
stream, thousands of streams) must not touch these objects. The stream engine keeps
plain ``int`` counters on the stream and folds them in here per tick batch or at
stream end (``add_frames``, ``observe_*`` with a batch). Label children that are hit
often are bound once in ``__attrs_post_init__`` so the hot-ish helpers skip
``labels()``.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Iterable
from typing import Literal

import attrs
import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from bridge._version import __version__
from bridge.media import LatenessHistogram

__all__ = ["Direction", "Metrics"]

Direction = Literal["call_to_app", "app_to_call"]

#: Lateness of a paced frame behind its absolute deadline: 0.5 ms … 50 ms (2.5 frames).
PACING_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)
#: How late the event loop wakes the 20 ms ticker; the tail buckets catch a wedged loop.
TICKER_LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
#: Uplink buffer fill ratio (0..1); edges at the DegradedStream thresholds.
FILL_BUCKETS = (0.01, 0.1, 0.3, 0.6, 0.9, 1.0)
#: Stream setup: an app leg on loopback connects in ms; one across a region in 100s of ms;
#: a voice agent's first words take a second or more.
SETUP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

#: The stages of ``bridge_stream_setup_seconds``, each measured from the stream's start
#: (its call leg accepted and routed): the app leg connected (the start message sent),
#: and the app's first audio sent to the caller (so it includes the app's own answer time).
SETUP_STAGES = ("app_connected", "first_audio")

# Label values every labelled series is created with when the daemon starts (and on a
# reload, for new routes), so that each exists at 0 before its first event: a rate() or
# increase() over a series that appears mid-window misses its first increment, and a
# dashboard panel says "no data" instead of 0. The values each call-leg listener can
# produce today; a value not listed here still works, it is just created on first use.
#: Why a TCP listener closed a connection at accept (transports' admission policy).
ADMISSION_REFUSALS = ("too_many_pending_per_peer", "too_many_pending")
LISTENERS = ("audiosocket", "websocket", "rtp")
HANGUP_REASONS = (
    "api_request",
    "call_hangup",
    "app_hangup",
    "connection_error",
    "slow_connection",
    "stream_timeout",
    "shutdown",
)
REFUSAL_REASONS: dict[str, tuple[str, ...]] = {
    "audiosocket": ("max_streams", "draining", "no_route"),
    "websocket": (
        "max_streams",
        "draining",
        "no_route",
        "bad_token",
        "bad_signature",
        "unknown_stream",
    ),
    "rtp": ("max_streams", "draining", "rtp_ports_exhausted", "rtp_bind_failed"),
}
BAD_INPUT_KINDS: dict[str, tuple[str, ...]] = {
    "audiosocket": (
        "protocol_error",
        "message_too_big",
        "first_frame_timeout",
        "closed_before_uuid",
    ),
    "websocket": (
        "protocol_error",
        "message_too_big",
        "bad_handshake",
        "handshake_timeout",
        "no_start",
        "closed_before_start",
        "bad_frame",
        "invalid_utf8",
        "bad_close",
    ),
    "rtp": ("malformed_rtp",),
    "app": ("protocol_error", "message_too_big"),
}


class _ProcessCollector(ProcessCollector):
    """ProcessCollector that still works under systemd's ``ProcSubset=pid``.

    prometheus_client reads the boot time from ``/proc/stat`` and silently exports
    nothing when it cannot; the hardened unit hides ``/proc/stat``. The boot time is
    also "wall clock now minus CLOCK_BOOTTIME" (the clock ``/proc/<pid>/stat``'s start
    time counts in), which needs no file at all. (Overrides a private method: if a
    future prometheus_client renames it, we silently fall back to its own behaviour.)
    """

    def _boot_time(self) -> float:
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


@attrs.define(eq=False)
class Metrics:
    """Every daemon metric, registered on :attr:`registry`.

    Label conventions: ``listener`` is ``audiosocket|websocket|rtp``; ``route`` a
    configured route name; ``reason`` a hangup or refusal reason; ``leg`` is
    ``call|app``. All are bounded sets (never put a stream or call id in a label).
    """

    version: str = __version__
    registry: CollectorRegistry = attrs.field(init=False)

    build_info: Info = attrs.field(init=False)
    streams_active: Gauge = attrs.field(init=False)
    streams_started: Counter = attrs.field(init=False)
    streams_ended: Counter = attrs.field(init=False)
    streams_refused: Counter = attrs.field(init=False)
    bad_input: Counter = attrs.field(init=False)
    #: Connections closed before they became a call: over a listener's pending limits.
    admission_refused: Counter = attrs.field(init=False)
    #: Handshakes whose token or signature did not match (answered 401).
    auth_failures: Counter = attrs.field(init=False)
    app_reconnects: Counter = attrs.field(init=False)
    app_connect_failures: Counter = attrs.field(init=False)
    frames: Counter = attrs.field(init=False)
    frames_concealed: Counter = attrs.field(init=False)
    playout_trimmed_frames: Counter = attrs.field(init=False)
    playout_trimmed_seconds: Counter = attrs.field(init=False)
    playout_altered_frames: Counter = attrs.field(init=False)
    #: Every stream's paced-frame lateness, recorded by the streams' own clocks
    #: (``Stream.lateness_total``): exported as ``bridge_pacing_lateness_seconds``.
    lateness_total: LatenessHistogram = attrs.field(init=False)
    uplink_buffer_fill: Histogram = attrs.field(init=False)
    ticker_lag: Histogram = attrs.field(init=False)
    draining: Gauge = attrs.field(init=False)
    tasks: Gauge = attrs.field(init=False)
    setup: Histogram = attrs.field(init=False)
    #: Read at scrape time (set by the daemon): the route of every live stream, and the
    #: RTP port pool's (in use, total).
    live_routes: Callable[[], Iterable[str]] | None = attrs.field(init=False, default=None)
    rtp_ports: Callable[[], tuple[int, int]] | None = attrs.field(init=False, default=None)
    #: Whether ``/readyz`` answers 200 (``bridge_ready``).
    ready: Callable[[], bool] | None = attrs.field(init=False, default=None)
    _routes: set[str] = attrs.field(init=False, factory=set, repr=False)
    _setup: dict[str, Histogram] = attrs.field(init=False, repr=False)
    config_reloads: Counter = attrs.field(init=False)
    listener_failures: Counter = attrs.field(init=False)

    _frames_up: Counter = attrs.field(init=False, repr=False)
    _frames_down: Counter = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        _ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

        self.build_info = Info("bridge_build", "Build information of this bridge.", registry=r)
        self.build_info.info({"version": self.version, "python": platform.python_version()})

        self.streams_active = Gauge(
            "bridge_streams_active", "Streams currently live (any state before closed).", registry=r
        )
        self.streams_started = Counter(
            "bridge_streams_started",
            "Streams started, by call-leg listener and route.",
            ("listener", "route"),
            registry=r,
        )
        self.streams_ended = Counter(
            "bridge_streams_ended",
            "Streams ended, by route and hangup reason.",
            ("route", "reason"),
            registry=r,
        )
        self.streams_refused = Counter(
            "bridge_streams_refused",
            "New streams refused (max_streams, draining, no_route, ...).",
            ("listener", "reason"),
            registry=r,
        )
        self.bad_input = Counter(
            "bridge_bad_input",
            "Malformed, unknown or oversize input, by leg (audiosocket|websocket|rtp|app) and kind.",
            ("leg", "kind"),
            registry=r,
        )
        self.admission_refused = Counter(
            "bridge_admission_refused",
            "Connections closed at accept, before any byte was read: over the listener's "
            "pending limit per peer (too_many_pending_per_peer) or in all (too_many_pending).",
            ("listener", "reason"),
            registry=r,
        )
        self.auth_failures = Counter(
            "bridge_auth_failures",
            "Handshakes refused with 401: wrong or missing token or signature, by route.",
            ("listener", "route"),
            registry=r,
        )
        self.app_reconnects = Counter(
            "bridge_app_reconnects",
            "App-leg reconnect attempts after a drop or failed connect.",
            ("route",),
            registry=r,
        )
        self.app_connect_failures = Counter(
            "bridge_app_connect_failures",
            "App-leg connect attempts that failed.",
            ("route",),
            registry=r,
        )
        self.frames = Counter(
            "bridge_frames",
            "Audio frames moved, by direction (call_to_app|app_to_call).",
            ("direction",),
            registry=r,
        )
        self.frames_concealed = Counter(
            "bridge_frames_concealed",
            "Call-leg (RTP) frames synthesised to cover packets declared lost.",
            registry=r,
        )
        self.playout_trimmed_frames = Counter(
            "bridge_playout_trimmed_frames",
            "Whole frames of app audio dropped to remove standing latency (PlayoutPolicy).",
            registry=r,
        )
        self.playout_trimmed_seconds = Counter(
            "bridge_playout_trimmed_seconds",
            "App audio removed to keep latency down (whole frames and shortened ones), seconds.",
            registry=r,
        )
        self.playout_altered_frames = Counter(
            "bridge_playout_altered_frames",
            "Frames of app audio changed by a trim (cross-faded after a cut, or shortened).",
            registry=r,
        )
        self.lateness_total = LatenessHistogram()
        r.register(
            _LatenessCollector(
                self.lateness_total,
                "bridge_pacing_lateness_seconds",
                "Lateness of paced frames behind their absolute deadline (0.1 ms resolution).",
                PACING_BUCKETS,
            )
        )
        self.uplink_buffer_fill = Histogram(
            "bridge_uplink_buffer_fill_ratio",
            "Uplink buffer fill ratio (0..1); the stream engine observes each stream's peak at its end.",
            buckets=FILL_BUCKETS,
            registry=r,
        )
        self.ticker_lag = Histogram(
            "bridge_ticker_lag_seconds",
            "How late the event loop woke the pacing ticker.",
            buckets=TICKER_LAG_BUCKETS,
            registry=r,
        )
        self.draining = Gauge(
            "bridge_draining", "1 while the daemon drains before shutdown, else 0.", registry=r
        )
        self.draining.set(0)
        self.tasks = Gauge(
            "bridge_tasks",
            "Trio tasks alive in this process (the whole nursery tree), counted at scrape.",
            registry=r,
        )
        self.tasks.set_function(trio_task_count)
        self.setup = Histogram(
            "bridge_stream_setup_seconds",
            "Stream setup latency from the call leg accepted, by stage: app_connected (the app"
            " leg up, start sent), first_audio (the app's first audio sent to the caller).",
            ("stage",),
            buckets=SETUP_BUCKETS,
            registry=r,
        )
        self._setup = {stage: self.setup.labels(stage) for stage in SETUP_STAGES}
        r.register(_DaemonViewCollector(self))
        self.config_reloads = Counter(
            "bridge_config_reloads",
            "SIGHUP reloads, by result: applied, or rejected (a bad file or TLS certificate; "
            "the running config stayed).",
            ("result",),
            registry=r,
        )
        self.listener_failures = Counter(
            "bridge_listener_failures",
            "Failures of a listener's serve loop (admin, audiosocket, websocket, rtp), each"
            " contained and followed by a restart on the same socket.",
            ("listener",),
            registry=r,
        )

        # Pre-bound children: labels() is the expensive part of an increment.
        self._frames_up = self.frames.labels("call_to_app")
        self._frames_down = self.frames.labels("app_to_call")

    # -- cheap helpers for batch updates ---------------------------------------------

    def add_frames(self, direction: Direction, n: int) -> None:
        """Add a batch of ``n`` frames moved in ``direction`` (call it per batch, not per frame)."""
        if n > 0:
            (self._frames_up if direction == "call_to_app" else self._frames_down).inc(n)

    def observe_many(self, histogram: Histogram, values: Iterable[float]) -> None:
        """Observe a batch of samples (e.g. a tick batch's pacing lateness)."""
        for value in values:
            histogram.observe(value)

    def stream_started(self, listener: str, route: str) -> None:
        """A stream started: ``started_total`` +1 and ``active`` +1."""
        self.streams_started.labels(listener, route).inc()
        self.streams_active.inc()

    def stream_ended(self, route: str, reason: str) -> None:
        """A stream ended (final event emitted): ``ended_total`` +1 and ``active`` -1."""
        self.streams_ended.labels(route, reason).inc()
        self.streams_active.dec()

    def stream_refused(self, listener: str, reason: str) -> None:
        self.streams_refused.labels(listener, reason).inc()

    def observe_setup(self, stage: str, seconds: float) -> None:
        """One stream reached ``stage`` (``SETUP_STAGES``) ``seconds`` after it started."""
        self._setup[stage].observe(max(0.0, seconds))

    def init_series(self, listeners: Iterable[str], routes: Iterable[tuple[str, str]]) -> None:
        """Create every labelled series that the enabled ``listeners`` and the ``routes``
        (``(name, listener)``) can produce, at 0. Idempotent; a reload calls it again for
        new routes (the series of removed routes stay, as counters should)."""
        enabled = [x for x in listeners if x in LISTENERS]
        for listener in enabled:
            for reason in REFUSAL_REASONS[listener]:
                self.streams_refused.labels(listener, reason)
            for kind in BAD_INPUT_KINDS[listener]:
                self.bad_input.labels(listener, kind)
        for kind in BAD_INPUT_KINDS["app"]:
            self.bad_input.labels("app", kind)
        for result in ("applied", "rejected"):
            self.config_reloads.labels(result)
        for listener in enabled:
            if listener != "rtp":  # the TCP listeners admit connections
                for refusal in ADMISSION_REFUSALS:
                    self.admission_refused.labels(listener, refusal)
        for name, listener in routes:
            self._routes.add(name)
            self.streams_started.labels(listener, name)
            for reason in HANGUP_REASONS:
                self.streams_ended.labels(name, reason)
            self.app_reconnects.labels(name)
            self.app_connect_failures.labels(name)
            if listener == "websocket":  # routes with their own credentials
                self.auth_failures.labels(listener, name)

    def set_draining(self, draining: bool) -> None:
        self.draining.set(1 if draining else 0)

    # -- exposition ------------------------------------------------------------------

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition body and its content type.

        With no ``Accept`` header this is the classic text format 0.0.4
        (``generate_latest``); a scraper asking for OpenMetrics gets OpenMetrics.
        """
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _DaemonViewCollector(Collector):
    """Gauges read from the daemon's own state at scrape time (nothing to keep in step):
    readiness, live streams by route, and the RTP port pool."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Names only (auto_describe would otherwise call collect() at registration).
        yield GaugeMetricFamily("bridge_ready", "")
        yield GaugeMetricFamily("bridge_streams_live", "", labels=["route"])
        yield GaugeMetricFamily("bridge_rtp_ports_in_use", "")
        yield GaugeMetricFamily("bridge_rtp_ports_total", "")

    def collect(self) -> Iterable[GaugeMetricFamily]:
        m = self._metrics
        yield GaugeMetricFamily(
            "bridge_ready",
            "1 while /readyz answers 200; 0 while starting, draining or unable to persist"
            " events (bridge_draining, bridge_outbox_healthy say which).",
            value=1.0 if m.ready is not None and m.ready() else 0.0,
        )
        live = GaugeMetricFamily(
            "bridge_streams_live",
            "Streams live now, by route (every configured route, 0 included).",
            labels=["route"],
        )
        counts = dict.fromkeys(sorted(m._routes), 0)
        if m.live_routes is not None:
            for route in m.live_routes():
                counts[route] = counts.get(route, 0) + 1
        for route, n in counts.items():
            live.add_metric([route], float(n))
        yield live
        in_use, total = m.rtp_ports() if m.rtp_ports is not None else (0, 0)
        yield GaugeMetricFamily(
            "bridge_rtp_ports_in_use", "RTP ports of the pool bound to a stream now.", value=in_use
        )
        yield GaugeMetricFamily(
            "bridge_rtp_ports_total",
            "RTP ports the pool can hand out ([rtp] ports, even ports only; 0 when RTP is off).",
            value=total,
        )


class _LatenessCollector(Collector):
    """A Prometheus histogram read at scrape time from a ``LatenessHistogram`` that the
    streams record into directly: no prometheus call on the per-frame path."""

    def __init__(
        self, source: LatenessHistogram, name: str, doc: str, edges_s: tuple[float, ...]
    ) -> None:
        self._source = source
        self._name = name
        self._doc = doc
        self._edges_s = edges_s
        self._edges_ms = tuple(e * 1000.0 for e in edges_s)

    def collect(self) -> Iterable[HistogramMetricFamily]:
        source = self._source
        cumulative = source.cumulative(self._edges_ms)
        buckets = [(repr(e), float(n)) for e, n in zip(self._edges_s, cumulative, strict=True)]
        buckets.append(("+Inf", float(source.count)))
        yield HistogramMetricFamily(
            self._name, self._doc, buckets=buckets, sum_value=source.total_ms / 1000.0
        )


def trio_task_count() -> float:
    """Every task alive in the current Trio run, found by walking the nursery tree from
    the root task (NaN outside a run). O(tasks): a few µs per hundred, at scrape time
    only. A soak watches it come back to its idle value when calls end."""
    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:
        return math.nan
    if root is None:
        return math.nan
    count = 0
    stack = [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return float(count)
