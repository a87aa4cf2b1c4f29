"""``bridge call``: the call emulator and load generator.

::

    bridge call [--transport audiosocket|twilio|telnyx|plivo|rtp|sln|asterisk-ws|exotel|...]
                [--target ...]
                [--tls-ca FILE | --insecure]
                [--wav FILE | --tone HZ] [--record OUT.wav] [--duration 10s]
                [--calls 1] [--rate 10] [--sample-rate 8000] [--codec ...] [--json]

It plays the *platform* side of a call leg (Asterisk's AudioSocket or ``chan_websocket``,
a carrier's media stream, an RTP peer; any dialect the registry lists, by its native
transport) with the same sans-IO dialects bridge uses, sends a signal paced on
an absolute 20 ms grid, and measures what comes back frame by frame: every frame sent
carries its number as a watermark (``_callsignal``), so each frame that returns gives one
round-trip latency. ``docs/tools.md`` explains every figure.

Cost (PERFORMANCE.md): it must never be what limits a measurement of bridge, so

* one shared :class:`~bridge.streams.Ticker` paces every call (a per-call ``sleep_until``
  loop would cost more than the audio work), and each call's tick encodes and writes its
  frame synchronously (the transports' ``send_nowait`` on the TCP pipe and the
  WebSocket, which is one ``os.write`` on the fd while the kernel takes it all;
  ``sendto`` on the UDP socket): no task switch per frame on the send side;
* each call has one receive task that reads straight from the socket, decodes inline and
  does its bookkeeping in a few attribute updates; nothing is handed to another task.

The importable API: :class:`CallOptions`, :func:`place_calls` (and
:class:`CallGenerator` for a live view and a graceful stop), :class:`CallReport`,
:class:`CallResult`; :class:`Call` is one call.
"""

from __future__ import annotations

import argparse
import array
import functools
import gc
import ipaddress
import json
import logging
import math
import os
import signal
import socket as stdlib_socket
import ssl
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, cast, get_args

import attrs
import trio

from .._errors import ConnectionClosed, DialectError, TransportError
from ..dialects import (
    DEFAULT_TRANSPORT,
    Audio,
    Clear,
    Connected,
    Dialect,
    DialectSpec,
    FormatError,
    Hangup,
    Mark,
    Message,
    PlatformParams,
    Start,
    Stop,
    cli_name,
    dialect,
    transports,
)
from ..media import LatenessHistogram, PacingClock, frame_bytes, write_wav
from ..streams import Pipe, Ticker, TickHandle
from ..transports import (
    TcpPipe,
    format_peer,
    open_websocket_client,
    parse_host_port,
)
from ._args import at_least_1, duration, positive_float
from ._callsignal import MAX_FRAMES, Watermark, frames_of, speech_like, tone, wav_signal

if TYPE_CHECKING:
    import httpx
    from rich.console import Console, RenderableType

__all__ = [
    "Call",
    "CallGenerator",
    "CallOptions",
    "CallReport",
    "CallResult",
    "add_call_parser",
    "place_call",
    "place_calls",
    "render_report",
]

logger = logging.getLogger("bridge.call")

CallCodec = Literal["pcmu", "pcma", "l16"]
CODECS: Final = cast(tuple[str, ...], get_args(CallCodec))
TRANSPORTS: Final = tuple(cli_name(name) for name in transports())
"""``--transport`` choices: every dialect of the registry with a platform role."""

#: Where the default configuration (``bridge/default.toml``) and ``bridge echo-server``
#: listen, by native transport: a dialect's default target is built from these.
_DEFAULT_TCP: Final = "127.0.0.1:9092"
_DEFAULT_ADMIN: Final = "http://127.0.0.1:8081"
_DEFAULT_WEBSOCKET: Final = "ws://127.0.0.1:8080"
_DEFAULT_APP: Final = "ws://127.0.0.1:9000"


def default_target(spec: DialectSpec) -> str:
    """Where ``bridge call`` dials a dialect when no ``--target`` is given: its call leg
    on the default configuration, or ``bridge echo-server`` for an app-only dialect."""
    if spec.transport == "tcp":
        return _DEFAULT_TCP
    if spec.transport == "udp":
        return _DEFAULT_ADMIN  # POST /v1/streams allocates the RTP port
    if spec.call_leg is None:
        return _DEFAULT_APP
    return _DEFAULT_WEBSOCKET + spec.call_leg.path


def default_codec(spec: DialectSpec) -> str:
    """The codec of the dialect's own default format (Plivo: audio/x-l16)."""
    return spec.format(spec.default_format).config_codec


# Send times are kept for this many frames back (82 s at 20 ms): a frame that comes back
# later than that counts as echoed and late, without a latency figure.
_RING: Final = 4096
_MASK: Final = _RING - 1
# A TCP peer that has not read this much of what we sent is not reading: the call fails.
_MAX_PENDING: Final = 256 * 1024
_CLOSE_TIMEOUT_S: Final = 2.0


class CallFailed(Exception):
    """Ends one call early; ``reason`` is its hangup reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


# ======================================================================================
# options
# ======================================================================================


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attr.name} must be positive, not {value!r}")


@attrs.frozen(slots=True)
class CallOptions:
    """Everything one run of ``bridge call`` needs; validated on construction."""

    transport: str = DEFAULT_TRANSPORT
    """A dialect of the registry (``-`` may stand for ``_``: ``asterisk-ws``)."""
    target: str | None = None
    """``host:port`` (TCP: audiosocket), ``ws://...`` (WebSocket dialects), or the admin
    URL (UDP: rtp); ``None``: :func:`default_target`."""
    route: str = "rtp-echo"
    """rtp: the route named in ``POST /v1/streams``."""
    token: str = ""
    """rtp: the admin API bearer token, if one is configured."""
    wav: str | None = None
    tone_hz: float | None = None
    record: str | None = None
    """Write what came back on the first call to this WAV file."""
    duration_s: float = attrs.field(default=10.0, validator=_positive)
    calls: int = attrs.field(default=1, validator=_positive)
    rate: float = attrs.field(default=10.0, validator=_positive)
    """Calls started per second."""
    sample_rate: int = attrs.field(default=8000, validator=_positive)
    codec: CallCodec | None = None
    ptime_ms: int = attrs.field(default=20, validator=_positive)
    tail_s: float = 1.0
    """After the last frame, wait at most this long for frames still in flight."""
    connect_timeout_s: float = attrs.field(default=5.0, validator=_positive)
    rtp_preamble: int = 3
    """rtp: silent packets sent (paced) before the first frame. bridge latches onto an RTP
    source after ``[rtp] latch_packets`` (4) sequential packets and, as Asterisk's
    strict RTP does, plays none of the probation's packets but the last: these carry it."""
    tls_ca: str | None = None
    """``wss://`` targets: trust this PEM CA bundle instead of the system store."""
    insecure: bool = False
    """``wss://`` targets: encrypt, but check neither the certificate nor the host name
    (a test listener with a self-signed certificate)."""

    def __attrs_post_init__(self) -> None:
        spec = self.spec  # UnknownDialect (a ValueError) names the known ones
        if spec.name not in transports():
            raise ValueError(f"unknown transport {self.transport!r} ({', '.join(TRANSPORTS)})")
        if self.wav is not None and self.tone_hz is not None:
            raise ValueError("give --wav or --tone, not both")
        if self.tone_hz is not None and not 0 < self.tone_hz < self.sample_rate / 2:
            raise ValueError(f"a {self.tone_hz:g} Hz tone does not fit {self.sample_rate} Hz audio")
        try:
            spec.resolve_format(self.wire_codec, self.sample_rate)
        except FormatError as exc:
            raise ValueError(exc.message) from None
        if self.tail_s < 0:
            raise ValueError(f"tail must not be negative, not {self.tail_s}")
        if self.sample_rate * self.ptime_ms % 1000:
            raise ValueError(f"{self.ptime_ms} ms at {self.sample_rate} Hz is not whole samples")
        if self.frames_per_call > MAX_FRAMES:
            raise ValueError(
                f"a call of {self.duration_s:g}s is {self.frames_per_call} frames;"
                f" the watermark counts to {MAX_FRAMES}"
            )
        wm = Watermark(self.sample_rate)
        if wm.samples > self.sample_rate * self.ptime_ms // 1000:
            raise ValueError(f"a {self.ptime_ms} ms frame is too short for the watermark")
        target = self.resolved_target
        if spec.transport == "tcp":
            parse_host_port(target)
        elif spec.transport == "udp":
            if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
                raise ValueError(
                    f"{self.transport} target {target!r}: expected the admin URL http://HOST:PORT"
                )
            if not self.route:
                raise ValueError(
                    f'{self.transport} needs --route (a route with listener = "{spec.name}")'
                )
        elif urllib.parse.urlsplit(target).scheme not in ("ws", "wss"):
            raise ValueError(
                f"{self.transport} target {target!r}: expected ws://HOST:PORT/PATH or wss://..."
            )
        if self.tls_ca is not None and self.insecure:
            raise ValueError("give --tls-ca or --insecure, not both")
        if (self.tls_ca is not None or self.insecure) and not target.startswith("wss://"):
            raise ValueError(f"--tls-ca and --insecure apply to wss:// targets, not {target!r}")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client context of a ``wss://`` target (None for any other). Raises
        ``ValueError`` for an unreadable or invalid ``tls_ca``."""
        if not self.resolved_target.startswith("wss://"):
            return None
        try:
            context = ssl.create_default_context(cafile=self.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "reason", None) or exc.strerror or exc
            raise ValueError(f"--tls-ca {self.tls_ca}: {reason}") from None
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        # A WebSocket upgrade is HTTP/1.1 (RFC 6455 §4.1); bridge's listener offers it.
        context.set_alpn_protocols(["http/1.1"])
        return context

    @property
    def spec(self) -> DialectSpec:
        """The registry entry of :attr:`transport`."""
        return dialect(self.transport)

    @property
    def resolved_target(self) -> str:
        return self.target or default_target(self.spec)

    @property
    def wire_codec(self) -> str:
        return self.codec or default_codec(self.spec)

    @property
    def frames_per_call(self) -> int:
        return max(1, round(self.duration_s * 1000 / self.ptime_ms))

    @property
    def signal_name(self) -> str:
        if self.wav is not None:
            return f"wav:{os.path.basename(self.wav)}"
        if self.tone_hz is not None:
            return f"tone:{self.tone_hz:g}Hz"
        return "speech-like"

    def signal_frames(self) -> list[bytes]:
        """The signal cut into frames at the wire rate (looped by the calls)."""
        rate = self.sample_rate
        if self.wav is not None:
            pcm = wav_signal(self.wav, rate)
        elif self.tone_hz is not None:
            pcm = tone(rate, self.tone_hz)
        else:
            pcm = speech_like(rate)
        return frames_of(pcm, frame_bytes(rate, self.ptime_ms))


# ======================================================================================
# results
# ======================================================================================


def _percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of sorted ``values``; None when empty."""
    if not values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(values)))
    return values[min(rank, len(values)) - 1]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@attrs.define(slots=True)
class CallResult:
    """One call's figures; :meth:`to_json` is its entry in ``--json`` output."""

    index: int
    call_id: str
    transport: str
    target: str
    connected: bool = False
    hangup: str = "cancelled"
    """``caller_hangup`` (we ended it as planned), ``remote_hangup`` (the far end ended
    it first), ``connect_failed``, ``send_failed``, ``protocol_error``, ``cancelled``."""
    error: str = ""
    stream_id: str = ""
    setup_ms: float | None = None
    first_audio_ms: float | None = None
    duration_s: float = 0.0
    frames_sent: int = 0
    frames_received: int = 0
    frames_echoed: int = 0
    lost: int = 0
    late: int = 0
    duplicates: int = 0
    unmatched: int = 0
    out_of_order: int = 0
    marks: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    latency_mean_ms: float | None = None
    jitter_ms: float | None = None
    pacing_late_p99_ms: float = 0.0
    pacing_skipped: int = 0
    latencies_ms: array.array[float] = attrs.field(factory=lambda: array.array("f"), repr=False)

    @property
    def ok(self) -> bool:
        """Connected, ended by us, and every frame came back."""
        return self.connected and self.hangup == "caller_hangup" and self.lost == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "call_id": self.call_id,
            "stream_id": self.stream_id or None,
            "transport": self.transport,
            "target": self.target,
            "ok": self.ok,
            "connected": self.connected,
            "hangup": self.hangup,
            "error": self.error or None,
            "setup_ms": _ms(self.setup_ms),
            "first_audio_ms": _ms(self.first_audio_ms),
            "duration_s": round(self.duration_s, 3),
            "frames_sent": self.frames_sent,
            "frames_received": self.frames_received,
            "frames_echoed": self.frames_echoed,
            "lost": self.lost,
            "late": self.late,
            "duplicates": self.duplicates,
            "unmatched": self.unmatched,
            "out_of_order": self.out_of_order,
            "marks": self.marks,
            "latency_ms": {
                "p50": _ms(self.latency_p50_ms),
                "p99": _ms(self.latency_p99_ms),
                "max": _ms(self.latency_max_ms),
                "mean": _ms(self.latency_mean_ms),
            },
            "jitter_ms": _ms(self.jitter_ms),
            "pacing": {
                "late_p99_ms": round(self.pacing_late_p99_ms, 2),
                "skipped": self.pacing_skipped,
            },
        }


@attrs.define(slots=True)
class CallReport:
    """Every call's result and the summary over all of them."""

    options: CallOptions
    calls: list[CallResult]
    wall_s: float
    cpu_s: float

    @property
    def ok(self) -> bool:
        return bool(self.calls) and all(c.ok for c in self.calls)

    def summary(self) -> dict[str, Any]:
        calls = self.calls
        connected = [c for c in calls if c.connected]
        latencies = sorted(x for c in calls for x in c.latencies_ms)
        setups = sorted(c.setup_ms for c in connected if c.setup_ms is not None)
        firsts = sorted(c.first_audio_ms for c in connected if c.first_audio_ms is not None)
        jitters = [c.jitter_ms for c in connected if c.jitter_ms is not None]
        sent = sum(c.frames_sent for c in calls)
        hangups: dict[str, int] = {}
        for c in calls:
            hangups[c.hangup] = hangups.get(c.hangup, 0) + 1
        return {
            "transport": self.options.transport,
            "target": self.options.resolved_target,
            "codec": self.options.wire_codec,
            "sample_rate": self.options.sample_rate,
            "signal": self.options.signal_name,
            "calls": len(calls),
            "connected": len(connected),
            "ok": sum(1 for c in calls if c.ok),
            "failed": sum(1 for c in calls if not c.ok),
            "hangups": hangups,
            "frames_sent": sent,
            "frames_received": sum(c.frames_received for c in calls),
            "frames_echoed": sum(c.frames_echoed for c in calls),
            "lost": sum(c.lost for c in calls),
            "late": sum(c.late for c in calls),
            "duplicates": sum(c.duplicates for c in calls),
            "unmatched": sum(c.unmatched for c in calls),
            "latency_ms": {
                "p50": _ms(_percentile(latencies, 50)),
                "p99": _ms(_percentile(latencies, 99)),
                "max": _ms(latencies[-1] if latencies else None),
            },
            "setup_ms": {
                "p50": _ms(_percentile(setups, 50)),
                "p99": _ms(_percentile(setups, 99)),
                "max": _ms(setups[-1] if setups else None),
            },
            "first_audio_ms": {
                "p50": _ms(_percentile(firsts, 50)),
                "p99": _ms(_percentile(firsts, 99)),
                "max": _ms(firsts[-1] if firsts else None),
            },
            "jitter_ms": {
                "mean": _ms(sum(jitters) / len(jitters) if jitters else None),
                "max": _ms(max(jitters) if jitters else None),
            },
            # The generator's own health: if these are high, the measurement is suspect.
            "generator": {
                "wall_s": round(self.wall_s, 3),
                "cpu_s": round(self.cpu_s, 3),
                "cpu_percent": round(100 * self.cpu_s / self.wall_s, 1) if self.wall_s else 0.0,
                "cpu_us_per_call_frame": round(self.cpu_s * 1e6 / sent, 1) if sent else None,
                "pacing_late_p99_ms": round(
                    max((c.pacing_late_p99_ms for c in calls), default=0.0), 2
                ),
                "pacing_skipped": sum(c.pacing_skipped for c in calls),
            },
        }

    def to_json(self) -> dict[str, Any]:
        return {"calls": [c.to_json() for c in self.calls], "summary": self.summary()}


# ======================================================================================
# platform dialects
# ======================================================================================


@attrs.define(slots=True, eq=False)
class _Dialect:
    """The platform role of one transport, with what it says at the start and the end."""

    platform: Dialect
    start: list[Message]
    stop: list[Message]
    call_id: str


def _make_dialect(opts: CallOptions) -> _Dialect:
    """The registry's platform role on the dialect's native transport. One UUID is both
    the stream and the call id (AudioSocket has only one; dialects with ids of their own
    shape derive them from it: Twilio's ``CA`` + its hex)."""
    ident = str(uuid.uuid4())
    platform: Dialect = opts.spec.native_platform_role(
        PlatformParams(
            ident,
            ident,
            sample_rate=opts.sample_rate,
            codec=opts.wire_codec,
            ptime_ms=opts.ptime_ms,
            wall_clock_ms=int(time.time() * 1000),
        )
    )
    # The greeting (Twilio/Telnyx/Exotel connected), the start message, and what the
    # platform says when the caller hangs up (Twilio/Telnyx/Exotel stop, sln stop;
    # nothing where the close is the end: AudioSocket, Plivo, Asterisk, RTP).
    start = [*platform.send(Connected()), *platform.send(Start(ident, ident, opts.sample_rate))]
    return _Dialect(platform, start, platform.send(Stop("call_hangup")), ident)


# ======================================================================================
# legs: how bytes reach the target
# ======================================================================================


class _Leg(Protocol):
    def send_nowait(self, message: Message) -> None:
        """Write now, without awaiting; raise CallFailed if the leg is broken."""
        ...

    async def receive_loop(self, call: Call) -> None:
        """Feed every message to ``call.on_message`` until the far end hangs up."""
        ...

    async def serve(self) -> None:
        """Background work beside the receiver (a WebSocket backlog writer), if any."""
        ...


def _closed_why(exc: TransportError) -> str:
    # A TCP pipe closes with no close code: its reason ("EOF", "Broken pipe", "send
    # backlog over its limit") is the whole story, and str() would leave it out.
    if isinstance(exc, ConnectionClosed) and exc.code is None and exc.reason:
        return f"{exc}: {exc.reason}"
    return str(exc)


@attrs.define(slots=True, eq=False)
class _PipeLeg:
    """AudioSocket (a :class:`~bridge.transports.TcpPipe`), carrier media streams and
    sln (a WebSocket): a transport pipe, written with its non-blocking writer as the
    daemon writes its own legs (``send_nowait``; a backlog only if the kernel refuses,
    flushed by ``serve_writer``)."""

    pipe: Pipe

    def send_nowait(self, message: Message) -> None:
        try:
            self.pipe.send_nowait(message)
        except TransportError as exc:
            raise CallFailed("send_failed", _closed_why(exc)) from None

    async def receive_loop(self, call: Call) -> None:
        receive = self.pipe.receive
        on_message = call.on_message
        while True:
            try:
                message = await receive()
            except TransportError as exc:
                raise CallFailed("remote_hangup", _closed_why(exc)) from None
            on_message(message, trio.current_time())

    async def serve(self) -> None:
        try:
            await self.pipe.serve_writer()
        except TransportError:
            pass  # the pipe is closed: the next send or the receiver reports why


def _tcp_leg(stream: trio.SocketStream) -> _PipeLeg:
    """AudioSocket's leg. No send timeout: the byte limit alone says the peer is not
    reading (a platform keeps writing to a slow AudioSocket server)."""
    return _PipeLeg(TcpPipe(stream, send_timeout_s=math.inf, max_backlog_bytes=_MAX_PENDING))


@attrs.define(slots=True, eq=False)
class _UdpLeg:
    """RTP: one UDP socket, sending to the port ``POST /v1/streams`` returned."""

    sock: stdlib_socket.socket
    dest: tuple[str, int]
    send_drops: int = 0
    strangers: int = 0

    def send_nowait(self, message: Message) -> None:
        assert isinstance(message, bytes)
        try:
            self.sock.sendto(message, self.dest)
        except BlockingIOError:
            self.send_drops += 1  # a full socket buffer loses the datagram, as UDP does
        except OSError as exc:
            raise CallFailed("send_failed", str(exc)) from None

    async def receive_loop(self, call: Call) -> None:
        sock = self.sock
        fd = sock.fileno()
        dest = self.dest
        on_message = call.on_message
        while True:
            await trio.lowlevel.wait_readable(fd)
            now = trio.current_time()
            while True:
                try:
                    data, addr = sock.recvfrom(4096)
                except BlockingIOError:
                    break
                except OSError:
                    break  # e.g. ICMP port unreachable reported on the socket: ignore
                if addr[0] != dest[0] or addr[1] != dest[1]:
                    self.strangers += 1  # symmetric RTP: only the stream's port answers
                    continue
                on_message(data, now)

    async def serve(self) -> None:
        return


# ======================================================================================
# one call
# ======================================================================================


@attrs.define(slots=True, eq=False)
class _Shared:
    """What every call of a run shares (the signal, the clock, the live figures)."""

    options: CallOptions
    frames: list[bytes]
    watermark: Watermark
    ticker: Ticker
    http: httpx.AsyncClient | None = None
    #: One client context for every call of a run (loading the CA store costs ms).
    ssl_context: ssl.SSLContext | None = None
    latency: LatenessHistogram = attrs.field(
        factory=lambda: LatenessHistogram(bucket_ms=0.5, limit_ms=2000.0)
    )
    live: int = 0
    finished: int = 0
    failed: int = 0
    frames_sent: int = 0
    frames_echoed: int = 0


@attrs.define(slots=True, eq=False)
class Call:
    """One emulated call: connect, send the paced signal, measure, hang up.

    Driven by :class:`CallGenerator`; ``on_tick`` is called by the shared ticker,
    ``on_message`` by the call's receive task.
    """

    index: int
    shared: _Shared
    record: bool = False
    dialect: _Dialect = attrs.field(init=False)
    result: CallResult = attrs.field(init=False)
    recording: list[bytes] | None = attrs.field(default=None, init=False)
    _leg: _Leg | None = attrs.field(default=None, init=False)
    _clock: PacingClock | None = attrs.field(default=None, init=False)
    _total: int = attrs.field(default=0, init=False)
    _preamble: int = attrs.field(default=0, init=False)
    _preamble_slots: int = attrs.field(default=0, init=False)
    _frame_bytes: int = attrs.field(default=320, init=False)
    _next: int = attrs.field(default=0, init=False)
    _sent_at: array.array[float] = attrs.field(
        factory=lambda: array.array("d", bytes(8 * _RING)), init=False
    )
    _seen: bytearray = attrs.field(factory=bytearray, init=False)
    _last_n: int = attrs.field(default=-1, init=False)
    _first_sent: float = attrs.field(default=0.0, init=False)
    _started: float = attrs.field(default=0.0, init=False)
    _prev_transit: float = attrs.field(default=-1.0, init=False)
    _jitter: float = attrs.field(default=0.0, init=False)
    _sending_done: trio.Event = attrs.field(factory=trio.Event, init=False)
    _all_back: trio.Event = attrs.field(factory=trio.Event, init=False)
    _failure: CallFailed | None = attrs.field(default=None, init=False)
    _stopped: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        opts = self.shared.options
        self.dialect = _make_dialect(opts)
        self.result = CallResult(
            index=self.index,
            call_id=self.dialect.call_id,
            transport=opts.transport,
            target=opts.resolved_target,
        )
        self._total = opts.frames_per_call
        # RTP: bridge latches onto a source after a few sequential packets (udp only).
        self._preamble = opts.rtp_preamble if opts.spec.transport == "udp" else 0
        self._frame_bytes = frame_bytes(opts.sample_rate, opts.ptime_ms)
        self._preamble_slots = self._preamble
        self._seen = bytearray(self._total)
        if self.record:
            self.recording = []

    # ----------------------------------------------------------------- lifecycle

    async def run(self) -> CallResult:
        """Place the call; never raises for anything the far end does."""
        shared = self.shared
        self._started = trio.current_time()
        shared.live += 1
        try:
            async with self._connect():
                await self._talk()
        except CallFailed as exc:
            self._fail(exc)
        except (TransportError, OSError) as exc:
            self._fail(
                CallFailed(
                    "connect_failed" if not self.result.connected else "remote_hangup", str(exc)
                )
            )
        finally:
            shared.live -= 1
            shared.finished += 1
            self._finish()
            if not self.result.ok:
                shared.failed += 1
        return self.result

    def stop(self, reason: str = "cancelled") -> None:
        """End the call now (Ctrl-C): no tail wait; it still hangs up properly."""
        self._stopped = True
        if self._failure is None:
            self._failure = CallFailed(reason)
        self._sending_done.set()

    def _fail(self, exc: CallFailed) -> None:
        if self._failure is None:
            self._failure = exc
        # Stop sending, and stop waiting for the tail: nothing more is coming.
        self._sending_done.set()
        self._all_back.set()

    async def _talk(self) -> None:
        result = self.result
        result.connected = True
        leg = self._leg
        assert leg is not None
        shared = self.shared
        opts = shared.options
        for message in self.dialect.start:
            leg.send_nowait(message)
        now = trio.current_time()
        self._clock = PacingClock(now, opts.ptime_ms / 1000.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive, leg)
            nursery.start_soon(leg.serve)
            handle: TickHandle = shared.ticker.register(self, now)
            try:
                await self._sending_done.wait()
                if self._failure is None and not self._stopped:
                    # The last frames are still on their way back: wait for them, but
                    # not forever (what has not come back by then is lost).
                    with trio.move_on_after(opts.tail_s):
                        await self._all_back.wait()
            finally:
                if handle.active:
                    handle.cancel()
                nursery.cancel_scope.cancel()
        if self._failure is None:
            self._failure = CallFailed("caller_hangup")
        if self._failure.reason in ("caller_hangup", "cancelled"):
            # We hang up: the platform's goodbye (Twilio/Telnyx stop, sln stop), then
            # _connect() closes the connection as it exits. After a remote hangup or a
            # broken leg there is nobody left to say it to.
            for message in self.dialect.stop:
                try:
                    leg.send_nowait(message)
                except CallFailed:
                    break

    async def _receive(self, leg: _Leg) -> None:
        try:
            await leg.receive_loop(self)
        except CallFailed as exc:
            self._fail(exc)
        except DialectError as exc:
            self._fail(CallFailed("protocol_error", str(exc)))

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[None]:
        opts = self.shared.options
        spec = opts.spec
        target = opts.resolved_target
        if spec.transport == "tcp":
            host, port = parse_host_port(target)
            try:
                with trio.fail_after(opts.connect_timeout_s):
                    stream = await trio.open_tcp_stream(host, port)
            except (OSError, trio.TooSlowError) as exc:
                raise CallFailed("connect_failed", f"{target}: {exc or 'timed out'}") from None
            async with stream:
                self._leg = _tcp_leg(stream)
                yield
        elif spec.transport == "udp":
            async with self._rtp_stream():
                yield
        else:
            async with AsyncExitStack() as stack:
                try:
                    ws = await stack.enter_async_context(
                        open_websocket_client(
                            target,
                            handshake_timeout_s=opts.connect_timeout_s,
                            # Carriers do not ping their app; keep the far end's view real.
                            ping_interval_s=None,
                            close_timeout_s=_CLOSE_TIMEOUT_S,
                            ssl_context=self.shared.ssl_context,
                            # Asterisk offers "media" (chan_websocket).
                            subprotocols=() if spec.subprotocol is None else (spec.subprotocol,),
                        )
                    )
                except (TransportError, OSError, ValueError) as exc:
                    raise CallFailed("connect_failed", f"{target}: {exc}") from None
                self._leg = _PipeLeg(ws)
                yield

    @asynccontextmanager
    async def _rtp_stream(self) -> AsyncIterator[None]:
        opts = self.shared.options
        http = self.shared.http
        assert http is not None
        admin = urllib.parse.urlsplit(opts.resolved_target)
        admin_host = admin.hostname or "127.0.0.1"
        sock = await _open_rtp_socket(admin_host)
        try:
            local_ip, local_port = sock.getsockname()[:2]
            remote = format_peer((local_ip, local_port))
            body = {
                "call_id": self.dialect.call_id,
                "route": opts.route,
                "codec": opts.wire_codec,
                "sample_rate": opts.sample_rate,
                "ptime": opts.ptime_ms,
                "remote": remote,
            }
            try:
                response = await http.post("/v1/streams", json=body)
            except Exception as exc:  # httpx.HTTPError and OSError alike
                raise CallFailed("connect_failed", f"POST /v1/streams: {exc!r}") from None
            if response.status_code != 201:
                raise CallFailed(
                    "connect_failed",
                    f"POST /v1/streams: HTTP {response.status_code} {response.text.strip()[:200]}",
                )
            answer = response.json()
            stream_id = str(answer["stream_id"])
            self.result.stream_id = stream_id
            host, port = parse_host_port(str(answer["local"]), ip_only=True)
            if ipaddress.ip_address(host).is_unspecified:
                host = local_ip  # bound to the wildcard: reachable where the admin API is
            self._leg = _UdpLeg(sock, (host, port))
            try:
                yield
            finally:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + _CLOSE_TIMEOUT_S
                    try:
                        deleted = await http.delete(f"/v1/streams/{stream_id}")
                    except Exception as exc:
                        logger.warning("DELETE /v1/streams/%s failed: %r", stream_id, exc)
                    else:
                        if (
                            deleted.status_code == 404
                            and self._failure is not None
                            and self._failure.reason == "caller_hangup"
                        ):
                            # Gone before we hung up: bridge (or the app) ended it.
                            self._failure = CallFailed(
                                "remote_hangup", "the stream had already ended"
                            )
        finally:
            sock.close()

    # ----------------------------------------------------------------- per frame

    def on_tick(self, now_s: float) -> float:
        """Ticker callback: send the frames due now; return the next deadline."""
        clock = self._clock
        assert clock is not None
        due = clock.due(now_s)
        if due:
            leg = self._leg
            assert leg is not None
            # The ticker may serve hundreds of calls in one wake-up: stamp the time this
            # call's frame really leaves, not when the wake-up began.
            sent_at = trio.current_time()
            total = self._total
            frames = self.shared.frames
            stamp = self.shared.watermark.stamp
            send_audio = self.dialect.platform.send_audio
            n = self._next
            try:
                for _ in range(due):
                    if self._preamble:
                        self._preamble -= 1
                        leg.send_nowait(send_audio(bytes(len(frames[0]))))
                        continue
                    if n >= total:
                        break
                    pcm = stamp(frames[n % len(frames)], n)
                    leg.send_nowait(send_audio(pcm))
                    self._sent_at[n & _MASK] = sent_at
                    if n == 0:
                        self._first_sent = sent_at
                    n += 1
            except CallFailed as exc:
                self._fail(exc)
            self.shared.frames_sent += n - self._next
            self._next = n
        if clock.index >= self._total + self._preamble_slots or self._failure is not None:
            self._sending_done.set()
            if self.result.frames_echoed >= self._next:
                self._all_back.set()
            return math.inf
        return clock.next_deadline_s

    def on_message(self, message: Message, now: float) -> None:
        """One message from the far end (receive task)."""
        for event in self.dialect.platform.receive(message):
            kind = type(event)
            if kind is Audio:
                assert isinstance(event, Audio)
                pcm = event.frame.pcm
                size = self._frame_bytes
                if len(pcm) <= size:
                    self._on_audio(pcm, now)
                else:
                    # Several frames in one message (Exotel's 3.2 KB chunks): each
                    # carries its own watermark.
                    for i in range(0, len(pcm), size):
                        self._on_audio(pcm[i : i + size], now)
            elif kind is Hangup:
                raise CallFailed("remote_hangup", "the server sent a hangup")
            elif kind is Mark or kind is Clear:
                self.result.marks += kind is Mark

    def _on_audio(self, pcm: bytes, now: float) -> None:
        result = self.result
        result.frames_received += 1
        if self.recording is not None:
            self.recording.append(pcm)
        n = self.shared.watermark.read(pcm)
        if n < 0 or n >= self._next:
            result.unmatched += 1  # silence, hold audio, or not one of ours
            return
        seen = self._seen
        if seen[n]:
            result.duplicates += 1
            return
        seen[n] = 1
        result.frames_echoed += 1
        self.shared.frames_echoed += 1
        if n < self._last_n:
            result.out_of_order += 1
        else:
            self._last_n = n
        if n > self._next - _RING:
            transit = now - self._sent_at[n & _MASK]
            result.latencies_ms.append(transit * 1000.0)
            self.shared.latency.record(transit)
            prev = self._prev_transit
            if prev >= 0.0:
                # RFC 3550 §6.4.1: J += (|D| - J) / 16, D the change in transit time.
                self._jitter += (abs(transit - prev) - self._jitter) / 16.0
            self._prev_transit = transit
            if result.first_audio_ms is None:
                result.first_audio_ms = (now - self._first_sent) * 1000.0
        if result.frames_echoed >= self._next and self._sending_done.is_set():
            self._all_back.set()

    # ----------------------------------------------------------------- the end

    def _finish(self) -> None:
        result = self.result
        failure = self._failure or CallFailed("cancelled")
        result.hangup = failure.reason
        result.error = failure.detail
        result.frames_sent = self._next
        result.duration_s = trio.current_time() - self._started
        if self._first_sent:
            result.setup_ms = (self._first_sent - self._started) * 1000.0
        result.lost = max(0, self._next - result.frames_echoed)
        clock = self._clock
        if clock is not None:
            result.pacing_late_p99_ms = clock.percentile(99)
            result.pacing_skipped = clock.skipped
        lat = sorted(result.latencies_ms)
        if lat:
            ptime = self.shared.options.ptime_ms
            median = _percentile(lat, 50)
            assert median is not None
            result.latency_p50_ms = median
            result.latency_p99_ms = _percentile(lat, 99)
            result.latency_max_ms = lat[-1]
            result.latency_mean_ms = sum(lat) / len(lat)
            result.late = sum(1 for x in lat if x > median + 2 * ptime)
            result.jitter_ms = self._jitter * 1000.0


async def _open_rtp_socket(admin_host: str) -> stdlib_socket.socket:
    """A non-blocking UDP socket on the local address that reaches ``admin_host``.

    ``POST /v1/streams`` wants ``remote`` (where bridge should send) before it says
    where to send to, so the address must be a real one, not the wildcard: connecting a
    scratch UDP socket (no packet is sent) asks the kernel which source address it
    would use.
    """
    infos = await trio.socket.getaddrinfo(admin_host, 9, type=stdlib_socket.SOCK_DGRAM)
    family, _, _, _, addr = infos[0]
    probe = stdlib_socket.socket(family, stdlib_socket.SOCK_DGRAM)
    try:
        probe.connect(addr)
        local_ip = probe.getsockname()[0]
    finally:
        probe.close()
    sock = stdlib_socket.socket(family, stdlib_socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((local_ip, 0))
    except BaseException:
        sock.close()
        raise
    return sock


# ======================================================================================
# many calls
# ======================================================================================


@attrs.define(slots=True, eq=False)
class CallGenerator:
    """Places ``options.calls`` calls at ``options.rate`` calls/s; see :func:`place_calls`.

    Read its live figures (``started``, ``live``, ``finished``, ``latency``...) while
    :meth:`run` is running; :meth:`stop` ends every call now (they still hang up and
    are reported).
    """

    options: CallOptions
    calls: list[Call] = attrs.field(factory=list)
    shared: _Shared | None = None
    started_at: float = 0.0
    _stop: trio.Event = attrs.field(factory=trio.Event)

    @property
    def started(self) -> int:
        return len(self.calls)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        for call in self.calls:
            call.stop()

    async def run(self) -> CallReport:
        opts = self.options
        frames = opts.signal_frames()  # before any timing starts: a WAV read is slow
        shared = _Shared(
            opts, frames, Watermark(opts.sample_rate), Ticker(), ssl_context=opts.ssl_context()
        )
        self.shared = shared
        # A full collection of the heap built so far (modules, the signal) takes 8-10 ms
        # on the project VM: one landing mid-call stalls every call's pacing (measured:
        # a 12 ms late frame, which bridge rightly treats as standing latency and trims).
        # Collect once now and freeze what is left, so later collections never scan it.
        gc.collect()
        gc.freeze()
        cpu0 = time.process_time()
        self.started_at = start = trio.current_time()
        try:
            async with _http_client(opts) as http, trio.open_nursery() as outer:
                shared.http = http
                outer.start_soon(shared.ticker.serve, name="bridge call ticker")
                async with trio.open_nursery() as calls:
                    for i in range(opts.calls):
                        with trio.move_on_at(start + i / opts.rate):
                            await self._stop.wait()
                        if self._stop.is_set():
                            break
                        call = Call(i, shared, record=opts.record is not None and i == 0)
                        self.calls.append(call)
                        calls.start_soon(call.run, name=f"call {i}")
                outer.cancel_scope.cancel()
        finally:
            gc.unfreeze()  # an embedding process (a test run) gets its collector back
        wall = trio.current_time() - start
        report = CallReport(opts, [c.result for c in self.calls], wall, time.process_time() - cpu0)
        if opts.record is not None and self.calls and self.calls[0].recording is not None:
            write_wav(opts.record, b"".join(self.calls[0].recording), opts.sample_rate)
        return report


@asynccontextmanager
async def _http_client(opts: CallOptions) -> AsyncIterator[httpx.AsyncClient | None]:
    if opts.spec.transport != "udp":
        yield None
        return
    import httpx

    headers = {"Authorization": f"Bearer {opts.token}"} if opts.token else {}
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(
        base_url=opts.resolved_target.rstrip("/"),
        headers=headers,
        timeout=opts.connect_timeout_s,
        limits=limits,
    ) as client:
        yield client


async def place_calls(options: CallOptions) -> CallReport:
    """Place ``options.calls`` calls (N at R calls/s, each ``duration_s`` long) and report."""
    return await CallGenerator(options).run()


async def place_call(options: CallOptions) -> CallResult:
    """Place one call and return its result."""
    report = await place_calls(attrs.evolve(options, calls=1))
    return report.calls[0]


# ======================================================================================
# output
# ======================================================================================


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_report(report: CallReport, console: Console, *, per_call_limit: int = 20) -> None:
    """The end-of-run tables: one row per call (up to ``per_call_limit``) and a summary."""
    from rich.table import Table

    summary = report.summary()
    calls = report.calls
    if calls and len(calls) <= per_call_limit:
        table = Table(title="calls (times in ms)", title_justify="left")
        for name in (
            "#",
            "hangup",
            "setup",
            "1st audio",
            "sent",
            "echoed",
            "lost",
            "late",
            "dup",
            "p50",
            "p99",
            "max",
            "jitter",
        ):
            table.add_column(name, justify="left" if name == "hangup" else "right")
        for c in calls:
            style = None if c.ok else "red"
            table.add_row(
                str(c.index),
                c.hangup + (f" ({c.error})" if c.error and not c.ok else ""),
                _fmt(c.setup_ms),
                _fmt(c.first_audio_ms),
                str(c.frames_sent),
                str(c.frames_echoed),
                str(c.lost),
                str(c.late),
                str(c.duplicates),
                _fmt(c.latency_p50_ms),
                _fmt(c.latency_p99_ms),
                _fmt(c.latency_max_ms),
                _fmt(c.jitter_ms, 2),
                style=style,
            )
        console.print(table)
    lat, setup, first, gen = (
        summary["latency_ms"],
        summary["setup_ms"],
        summary["first_audio_ms"],
        summary["generator"],
    )
    table = Table(title="summary", title_justify="left", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="left")
    opts = report.options
    table.add_row(
        "target",
        f"{opts.transport} {opts.resolved_target} ({opts.wire_codec}/{opts.sample_rate} Hz, {opts.signal_name})",
    )
    table.add_row(
        "calls",
        f"{summary['calls']} placed, {summary['connected']} connected, {summary['ok']} ok,"
        f" {summary['failed']} failed  "
        + ", ".join(f"{k} {v}" for k, v in sorted(summary["hangups"].items())),
    )
    table.add_row(
        "frames",
        f"{summary['frames_sent']} sent, {summary['frames_echoed']} echoed, {summary['lost']} lost,"
        f" {summary['late']} late, {summary['duplicates']} duplicate, {summary['unmatched']} unmatched",
    )
    table.add_row(
        "round trip ms", f"p50 {_fmt(lat['p50'])}  p99 {_fmt(lat['p99'])}  max {_fmt(lat['max'])}"
    )
    table.add_row(
        "jitter ms",
        f"mean {_fmt(summary['jitter_ms']['mean'], 2)}  max {_fmt(summary['jitter_ms']['max'], 2)}",
    )
    table.add_row(
        "setup ms", f"p50 {_fmt(setup['p50'])}  p99 {_fmt(setup['p99'])}  max {_fmt(setup['max'])}"
    )
    table.add_row(
        "first audio ms",
        f"p50 {_fmt(first['p50'])}  p99 {_fmt(first['p99'])}  max {_fmt(first['max'])}",
    )
    table.add_row(
        "generator",
        f"cpu {gen['cpu_percent']}% of a core, {_fmt(gen['cpu_us_per_call_frame'])} µs per call-frame,"
        f" pacing p99 {gen['pacing_late_p99_ms']} ms late, {gen['pacing_skipped']} skipped",
    )
    console.print(table)


def _live_view(gen: CallGenerator) -> RenderableType:
    from rich.table import Table

    opts = gen.options
    shared = gen.shared
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("bridge call", f"{opts.transport} {opts.resolved_target}")
    if shared is None:
        table.add_row("", "preparing the signal...")
        return table
    total = opts.calls
    width = 24
    done = width * shared.finished // total
    started = width * gen.started // total
    bar = "█" * done + "▒" * (started - done) + "·" * (width - started)
    elapsed = trio.current_time() - gen.started_at
    table.add_row("calls", f"{bar} {shared.finished}/{total} done  {elapsed:.1f}s")
    table.add_row("", f"{shared.live} live, {shared.failed} failed")
    table.add_row("frames", f"{shared.frames_sent} sent, {shared.frames_echoed} echoed")
    lat = shared.latency
    table.add_row(
        "round trip",
        f"p50 {lat.percentile(50):.1f} ms  p99 {lat.percentile(99):.1f} ms  max {lat.max_ms:.1f} ms"
        if lat.count
        else "waiting for the first echo...",
    )
    return table


async def _show_live(gen: CallGenerator, console: Console) -> None:
    from rich.live import Live

    # No auto refresh: rich would refresh from its own thread; a Trio task is cheaper
    # and reads the figures from the thread that writes them.
    with Live(
        _live_view(gen),
        console=console,
        auto_refresh=False,
        transient=True,
        redirect_stdout=False,
        redirect_stderr=False,
    ) as live:
        while True:
            await trio.sleep(0.25)
            live.update(_live_view(gen), refresh=True)


# ======================================================================================
# CLI
# ======================================================================================


def _transport(text: str) -> str:
    try:
        name = dialect(text).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if name not in transports():
        raise argparse.ArgumentTypeError(f"{text!r} has no platform role to emulate")
    return name


def add_call_parser(
    subparsers: Any, *, configure_logging: Callable[[str], None]
) -> argparse.ArgumentParser:
    """Add ``bridge call`` to the CLI's subparsers; ``configure_logging(level)`` sends
    the ``bridge`` logger to the console (the CLI's set-up: the tools do not import the
    daemon)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "call",
        help="place test calls / generate load and measure the round trip",
        description=(
            "Emulate the platform side of a call leg (Asterisk AudioSocket, a carrier media "
            "stream, an RTP peer), send a signal paced at 20 ms, and measure what comes back "
            "frame by frame (every frame is watermarked with its number). Exit status: 0 when "
            "every call connected, was ended by us and lost no frame; 1 otherwise; 2 for "
            "usage errors."
        ),
    )
    p.add_argument(
        "--transport",
        type=_transport,
        default=DEFAULT_TRANSPORT,
        metavar="|".join(TRANSPORTS),
        help="the call leg to emulate (sln: straight to an app such as bridge "
        "echo-server) (default: %(default)s)",
    )
    p.add_argument(
        "--target",
        help=(
            f"audiosocket HOST:PORT ({_DEFAULT_TCP}); WebSocket dialects ws://HOST:PORT/PATH "
            f"or wss://... ({_DEFAULT_WEBSOCKET}/<dialect>, e.g. /twilio, /asterisk); rtp: "
            f"the admin URL ({_DEFAULT_ADMIN}); sln {_DEFAULT_APP}"
        ),
    )
    tls = p.add_mutually_exclusive_group()
    tls.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="wss:// targets: trust this PEM CA bundle instead of the system store",
    )
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="wss:// targets: do not verify the server certificate (self-signed test setups)",
    )
    p.add_argument(
        "--route",
        default="rtp-echo",
        help="rtp: the route for POST /v1/streams (default: %(default)s)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("BRIDGE_ADMIN_TOKEN", ""),
        help="rtp: admin API bearer token (default: $BRIDGE_ADMIN_TOKEN)",
    )
    signal_group = p.add_mutually_exclusive_group()
    signal_group.add_argument("--wav", metavar="FILE", help="play this PCM16 WAV file (looped)")
    signal_group.add_argument(
        "--tone",
        metavar="HZ",
        type=positive_float,
        help="play a sine tone (default: a built-in speech-like signal)",
    )
    p.add_argument(
        "--record",
        metavar="OUT.wav",
        help="write the audio that came back (the first call's) to a WAV file",
    )
    p.add_argument(
        "--duration",
        type=duration,
        default=10.0,
        metavar="D",
        help="how long each call sends audio: 10s, 500ms, 2m (default: 10s)",
    )
    p.add_argument(
        "--calls",
        type=at_least_1,
        default=1,
        metavar="N",
        help="number of calls (default: %(default)s)",
    )
    p.add_argument(
        "--rate",
        type=positive_float,
        default=10.0,
        metavar="R",
        help="calls started per second (default: %(default)s)",
    )
    p.add_argument(
        "--sample-rate",
        type=at_least_1,
        default=8000,
        metavar="HZ",
        help="wire sample rate (default: %(default)s)",
    )
    p.add_argument(
        "--codec",
        choices=CODECS,
        default=None,
        help="wire codec (default: pcmu for twilio/telnyx/rtp, l16 for plivo; "
        "audiosocket and sln are always l16)",
    )
    p.add_argument(
        "--ptime",
        type=at_least_1,
        default=20,
        metavar="MS",
        help="frame length in ms (default: %(default)s)",
    )
    p.add_argument(
        "--tail",
        type=duration,
        default=1.0,
        metavar="D",
        help="after the last frame, wait this long at most for the echo (default: 1s)",
    )
    p.add_argument(
        "--connect-timeout",
        type=duration,
        default=5.0,
        metavar="D",
        help="connect/handshake/POST timeout (default: 5s)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--json", action="store_true", help="print one JSON document {calls: [...], summary: {...}}"
    )
    out.add_argument("--quiet", action="store_true", help="print nothing; use the exit status")
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="(default: %(default)s)",
    )
    p.set_defaults(handler=functools.partial(_main, configure_logging=configure_logging))
    return p


def _main(args: argparse.Namespace, *, configure_logging: Callable[[str], None]) -> int:
    try:
        options = CallOptions(
            transport=args.transport,
            target=args.target,
            route=args.route,
            token=args.token,
            wav=args.wav,
            tone_hz=args.tone,
            record=args.record,
            duration_s=args.duration,
            calls=args.calls,
            rate=args.rate,
            sample_rate=args.sample_rate,
            codec=args.codec,
            ptime_ms=args.ptime,
            tail_s=args.tail,
            connect_timeout_s=args.connect_timeout,
            tls_ca=args.tls_ca,
            insecure=args.insecure,
        )
        options.ssl_context()  # an unreadable or invalid --tls-ca is a usage error
        if options.wav is not None:
            options.signal_frames()  # a missing or unreadable file is a usage error
        if options.record is not None:
            folder = os.path.dirname(os.path.abspath(options.record))
            if not os.access(folder, os.W_OK):
                raise ValueError(f"--record {options.record}: cannot write in {folder}")
    except (ValueError, OSError) as exc:
        print(f"bridge call: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)

    from rich.console import Console

    err = Console(stderr=True)
    live = not (args.json or args.quiet) and err.is_terminal
    report: list[CallReport] = []

    async def run() -> None:
        gen = CallGenerator(options)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, gen, nursery.cancel_scope)
            if live:
                nursery.start_soon(_show_live, gen, err)
            report.append(await gen.run())
            nursery.cancel_scope.cancel()

    trio.run(run)
    if not report:
        print("bridge call: interrupted", file=sys.stderr)
        return 130
    result = report[0]
    if args.json:
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
    elif not args.quiet:
        out = Console()
        if not out.is_terminal:
            out = Console(width=120)  # a file or a pipe: don't squeeze the tables into 80
        render_report(result, out)
    return 0 if result.ok else 1


async def _stop_on_signal(gen: CallGenerator, scope: trio.CancelScope) -> None:
    """Ctrl-C/SIGTERM: hang every call up properly and report what was measured; a
    second one gives up at once."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if gen.stopping:
                scope.cancel()
                return
            gen.stop()
