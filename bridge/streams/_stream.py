"""One call: a Trio nursery holding a reader, a writer, a pacing clock and a reconnect
supervisor (ARCHITECTURE.md, "The nursery tree")::

    Stream.run()                      the stream's own nursery
    ├── call reader                   call leg -> decode -> forward to the app inline
    ├── call writer                   flushes the call leg's send backlog (idle normally)
    ├── pacing clock                  a registration on the process-wide Ticker, not a task
    └── reconnect supervisor          owns the app leg; first attempt + ``retries``
        └── app connection            one nursery per attempt
            ├── app reader            app leg -> decode -> playout buffer, marks, clear
            └── app writer            uplink buffer -> app leg (replay, backpressure)

The per-frame paths never hand a frame to another task:

* call -> app: the call reader decodes, resamples and sends to the app leg with a
  non-blocking send in the same step (the caller already paces its audio). Only when the
  app leg is down or backed up does the frame go into the uplink buffer.
* app -> call: the app reader decodes and resamples into the playout buffer; the shared
  Ticker calls ``on_tick`` at this stream's deadline, which pops exactly one frame
  (silence or the hold sound when there is none) and sends it without awaiting.

Closing is one cancel of the nursery plus an ordered, bounded ``closing`` step: send the
dialect's stop to the app, close both legs, emit the final event, write the record.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import attrs
import trio

from .._errors import ConnectionClosed, DialectError, MessageTooBig, TransportError
from ..dialects import (
    Audio,
    Clear,
    Cleared,
    Drained,
    Dtmf,
    Event,
    Hangup,
    Mark,
    Start,
    Stats,
    StatsRequest,
    Stop,
)
from ..media import LatenessHistogram, PacingClock, PlayoutBuffer, Resampler, frame_bytes
from ._legs import AppConnection, AppConnector, CallLeg
from ._ticker import Ticker, TickHandle
from ._uplink import UplinkBuffer

__all__ = ["Stream", "StreamObserver", "StreamSettings", "StreamState"]

logger = logging.getLogger("bridge.streams")

#: Reasons that end a stream normally (StopStream); the others are drops.
DROP_REASONS = frozenset({"connection_error", "slow_connection"})

#: How long the ordered closing step may take in all (stop message, close handshakes).
CLOSE_BUDGET_S = 3.0

#: Phase of this stream's playout grid after the app's first audio: a frame that arrives
#: from the app is sent this long after it arrived at the earliest. Small enough to add
#: little latency, large enough to absorb the ticker's 1 ms granularity.
PHASE_MARGIN_S = 0.0015

#: How long an empty slot of a streaming app holds (sends nothing) waiting for the late
#: frame, and what counts as streaming: audio from the app within GRACE_STREAMING_S.
#: Filling the slot with silence instead would make the late frame wait a whole ptime,
#: and every frame after it: latency that only ever grows under load. A hold is a short
#: gap in the packets, which the far side's jitter buffer and concealment absorb.
GRACE_S = 0.06
GRACE_STREAMING_S = 0.03

#: Phase tracking of a real-time app stream: over windows of this many frames, if even
#: the quickest frame waited more than PHASE_MARGIN_S + PHASE_SLACK_S, the grid moves
#: earlier by the excess (see ``_track_phase``).
PHASE_WINDOW_FRAMES = 10
PHASE_SLACK_S = 0.002

#: Catch-up and re-phasing apply only to an app streaming in real time: one frame per
#: message and a queue that stayed at most this many frames deep over the last window of
#: DEPTH_WINDOW_TICKS (a stall leaves 1-3 frames; a faster-than-real-time sender, many).
REAL_TIME_MAX_FRAMES = 3
DEPTH_WINDOW_TICKS = 50

#: A real-time app frame that arrives at most this long before its slot goes to the
#: caller on arrival (the slot is used up; the grid does not move) rather than waiting
#: for the tick. The grid sits a margin behind the app's phase so that arrival jitter
#: does not make frames late; without this, every frame would also pay that margin and
#: the ticker's quantum in latency. The caller sees a frame at most this much early,
#: which the far side takes like any network jitter.
SEND_EARLY_S = 0.005

#: If the app sends no audio, the grid starts anyway (silence or hold to the caller)
#: this long after the stream started; the app's first audio starts it earlier.
START_GRID_AFTER_S = 0.1


class StreamState(enum.StrEnum):
    CONNECTING = "connecting"
    OPEN = "open"
    STREAMING = "streaming"
    CLOSING = "closing"
    CLOSED = "closed"


@attrs.frozen(slots=True)
class StreamSettings:
    """The route's effective stream policy, in engine units."""

    app_sample_rate: int = 8000
    ptime_ms: int = 20
    retries: int = 2
    backoff_s: float = 0.5
    buffer_s: float = 40.0
    degraded_at: Sequence[int] = (30, 60, 90)
    timeout_s: float = 4 * 3600.0
    send_ahead_frames: int = 0
    #: PCM16LE mono played to the caller while the app leg is down, and its rate.
    hold_pcm: bytes = b""
    hold_sample_rate: int = 8000
    max_catch_up_frames: int = 3
    #: Carrier re-dial resume window for resumable call legs; 0 disables.
    reconnect_window_s: float = 0.0


class StreamObserver(Protocol):
    """The daemon side: events, records, metrics. Every call is synchronous and cheap."""

    def stream_event(self, stream: Stream, event: str, fields: dict[str, Any]) -> None: ...

    def stream_state(self, stream: Stream, state: StreamState) -> None: ...

    def stream_closed(self, stream: Stream) -> None: ...

    def stream_bad_input(self, stream: Stream, leg: str, kind: str, message: str) -> None:
        """A peer of this stream sent something malformed (already logged by the stream)."""
        ...


class _NullObserver:
    def stream_event(self, stream: Stream, event: str, fields: dict[str, Any]) -> None:
        pass

    def stream_state(self, stream: Stream, state: StreamState) -> None:
        pass

    def stream_closed(self, stream: Stream) -> None:
        pass

    def stream_bad_input(self, stream: Stream, leg: str, kind: str, message: str) -> None:
        pass


def _utcnow() -> datetime:
    return datetime.now(UTC)


@attrs.define(slots=True, eq=False)
class Stream:
    """One call's media stream. Create it, then ``await stream.run()`` in a nursery."""

    stream_id: str
    call: CallLeg
    connector: AppConnector
    ticker: Ticker
    settings: StreamSettings = attrs.field(factory=StreamSettings)
    route: str = ""
    listener: str = ""
    encapsulation: str = "sln"
    observer: StreamObserver = attrs.field(factory=_NullObserver)
    #: Every paced frame's lateness is also recorded here (the daemon's process-wide
    #: ``bridge_pacing_lateness_seconds``).
    lateness_total: LatenessHistogram | None = None

    # -- lifecycle ---------------------------------------------------------------------
    state: StreamState = StreamState.CONNECTING
    #: (state, wall-clock UTC) in order: visible in GET /v1/streams.
    history: list[tuple[str, datetime]] = attrs.field(factory=list)
    #: The stream's event log (the Plivo "debug log"): time, name, detail.
    log: list[dict[str, Any]] = attrs.field(factory=list)
    started_at: datetime = attrs.field(factory=_utcnow)
    ended_at: datetime | None = None
    reason: str | None = None
    error: str | None = None
    attempts: int = 0  # app-leg connection attempts over the whole stream
    outage_attempts: int = 0  # attempts since the app leg was last up
    reconnects: int = 0
    closed_event: trio.Event = attrs.field(factory=trio.Event)

    # -- counters (plain ints: prometheus objects cost µs, the daemon reads these) -----
    frames_in: int = 0  # call -> app
    frames_out: int = 0  # app -> call
    bytes_in: int = 0
    bytes_out: int = 0
    app_frames_received: int = 0

    # -- internals ---------------------------------------------------------------------
    _cancel: trio.CancelScope | None = None
    _app: AppConnection | None = None
    _app_ever_up: bool = False
    _uplink: UplinkBuffer = attrs.field(init=False)
    _playout: PlayoutBuffer = attrs.field(init=False)
    _clock: PacingClock | None = None
    _tick: TickHandle | None = None
    _phased: bool = False
    _up_rs: Resampler | None = None
    _up_rate: int = 0
    _down_rs: Resampler | None = None
    _down_rate: int = 0
    _odd_rate_rs: Resampler | None = None  # app audio not at the route's rate
    _silence: bytes = b""
    _hold: bytes = b""
    _hold_pos: int = 0
    _call_rate: int = 0
    _logged_once: set[str] = attrs.field(factory=set)
    _t0: float = 0.0
    _call_stopped: bool = False
    _last_sent_s: float = -math.inf
    _grace_open: bool = False
    _app_audio_at: float = -math.inf
    grace_sends: int = 0
    catch_up_frames: int = 0
    rephases: int = 0
    early_sends: int = 0
    _depth_max: int = 0
    _depth_prev_max: int = 0
    _depth_ticks: int = 0
    _wait_n: int = 0
    _wait_min: float = math.inf
    # App audio bookkeeping for catch-up: (arrival time, bytes pushed up to then).
    _arrivals: deque[tuple[float, int]] = attrs.field(factory=deque)
    _pushed_bytes: int = 0
    _popped_bytes: int = 0
    _last_push_bytes: int = 0
    #: Marks forwarded to a carrier that has not echoed them yet.
    _carrier_marks: list[str] = attrs.field(factory=list)
    _awaiting_call: bool = False
    _call_resumed: trio.Event = attrs.field(factory=trio.Event)
    call_resumes: int = 0

    def __attrs_post_init__(self) -> None:
        s = self.settings
        app_rate = s.app_sample_rate
        bytes_per_ms = app_rate * 2 / 1000.0
        self._uplink = UplinkBuffer(
            capacity_bytes=int(s.buffer_s * 1000 * bytes_per_ms),
            bytes_per_ms=bytes_per_ms,
            thresholds=tuple(s.degraded_at),
        )
        self._set_call_rate(self.call.sample_rate)
        self.history.append((self.state.value, self.started_at))

    # ==================================================================================
    # public surface
    # ==================================================================================

    @property
    def call_id(self) -> str:
        return self.call.call_id

    @property
    def app_url(self) -> str:
        return self.connector.url

    @property
    def app_connected(self) -> bool:
        return self._app is not None

    @property
    def buffer_percent(self) -> float:
        return self._uplink.percent

    @property
    def max_buffer_percent(self) -> float:
        return self._uplink.max_percent

    @property
    def clock(self) -> PacingClock | None:
        return self._clock

    def end(self, reason: str, error: str | None = None) -> None:
        """End the stream with ``reason`` (the first reason given wins). Never blocks."""
        if self.reason is None:
            self.reason = reason
            self.error = error
        if self._cancel is not None:
            self._cancel.cancel()

    def snapshot(self) -> dict[str, Any]:
        """JSON-able view for the admin API."""
        return {
            "stream_id": self.stream_id,
            "call_id": self.call_id,
            "route": self.route,
            "listener": self.listener,
            "app_url": self.app_url,
            "encapsulation": self.encapsulation,
            "state": self.state.value,
            "states": [{"state": s, "at": t.isoformat()} for s, t in self.history],
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "reason": self.reason,
            "error": self.error,
            "legs": {
                "call": {"kind": self.call.kind, "sample_rate": self.call.sample_rate},
                "app": {
                    "url": self.app_url,
                    "connected": self.app_connected,
                    "sample_rate": self.settings.app_sample_rate,
                    "attempts": self.attempts,
                    "reconnects": self.reconnects,
                },
            },
            "counters": {
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
            },
            "buffer": {
                "fill_percent": round(self._uplink.percent, 2),
                "fill_ms": self._uplink.fill_ms,
                "max_percent": round(self._uplink.max_percent, 2),
                "playout_ms": self._playout.queued_ms,
            },
            "lateness_ms": self.lateness_ms(),
            "events": list(self.log),
        }

    def jitter_counters(self) -> dict[str, int]:
        """The call leg's jitter-buffer counters (RTP legs have them), else empty."""
        fn = getattr(self.call, "jitter_counters", None)
        return dict(fn()) if callable(fn) else {}

    def lateness_ms(self) -> dict[str, float]:
        clock = self._clock
        if clock is None or clock.count == 0:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0, "frames": 0}
        return {
            "p50": round(clock.percentile(50), 3),
            "p99": round(clock.percentile(99), 3),
            "max": round(clock.max_ms, 3),
            "frames": clock.count,
        }

    # ==================================================================================
    # the nursery
    # ==================================================================================

    async def run(self) -> None:
        """Run the stream until it ends, then close it in order. Never raises for
        anything a peer did; the outcome is in ``reason``/``error`` and the events."""
        self._t0 = trio.current_time()
        self._note("stream", {"listener": self.listener, "route": self.route})
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                if self.reason is not None:  # ended before it started
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._serve_call)
                nursery.start_soon(self._supervise)
                nursery.start_soon(self._serve_timers)
                self._tick = self.ticker.register(self, math.inf)
        except Exception as exc:  # a bug, not a peer: log it, and still close in order
            logger.exception("stream failed", extra={"stream_id": self.stream_id})
            if self.reason is None:
                self.reason = "connection_error"
                self.error = f"internal error: {exc!r}"
        finally:
            if self._tick is not None:
                self._tick.cancel()
                self._tick = None
            await self._close()

    async def _close(self) -> None:
        reason = self.reason or "shutdown"
        self.reason = reason
        self._set_state(StreamState.CLOSING)
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + CLOSE_BUDGET_S
            # The app leg was already stopped and closed by the supervisor on its way out.
            await self.call.aclose(reason)
        self.ended_at = _utcnow()
        duration_s = (self.ended_at - self.started_at).total_seconds()
        fields: dict[str, Any] = {"reason": reason, "duration_s": round(duration_s, 3)}
        if reason in DROP_REASONS:
            fields["error"] = self.error
            fields["attempts"] = self.outage_attempts
            self._emit("DroppedStream", fields)
        else:
            if self.error:
                fields["error"] = self.error
            self._emit("StopStream", fields)
        self._set_state(StreamState.CLOSED)
        logger.info(
            "stream closed",
            extra={"stream_id": self.stream_id, "reason": reason, "error": self.error},
        )
        self.observer.stream_closed(self)
        self.closed_event.set()

    # ==================================================================================
    # call leg
    # ==================================================================================

    async def _serve_call(self) -> None:
        """Run the call leg's reader and writer; when a resumable leg (a carrier
        WebSocket) drops, wait up to ``reconnect_window_s`` for the carrier to dial again
        (Mux's reconnect window, applied to the call leg): the app leg stays up and only
        the gap is reported."""
        while True:
            leg = self.call
            reason, error, dropped = await self._run_call_leg(leg)
            window = self.settings.reconnect_window_s
            if not (dropped and window > 0 and getattr(leg, "resumable", False)):
                self.end(reason, error)
                return
            self._awaiting_call = True
            self._call_resumed = trio.Event()
            lost_at = trio.current_time()
            self._note("call_lost", {"window_s": window, "error": error})
            logger.info(
                "call leg dropped; waiting %gs for the carrier to reconnect",
                window,
                extra={"stream_id": self.stream_id},
            )
            with trio.move_on_after(window):
                await self._call_resumed.wait()
            self._awaiting_call = False
            if self.call is leg:  # nobody came back in time
                self.end("call_hangup", f"call leg lost and not resumed within {window:g}s")
                return
            await leg.aclose("call_hangup")  # release the dead connection
            gap_ms = round((trio.current_time() - lost_at) * 1000)
            self.call_resumes += 1
            self._note("call_resumed", {"gap_ms": gap_ms})

    async def _run_call_leg(self, leg: CallLeg) -> tuple[str, str | None, bool]:
        """(reason, error, dropped): ``dropped`` when the leg ended without saying so
        (connection lost rather than a hangup message)."""
        result: list[tuple[str, str | None, bool]] = []

        async def reader(cancel: trio.CancelScope) -> None:
            try:
                reason = await leg.serve_reader(self)
                result.append((reason, None, not self._call_stopped))
            except (DialectError, MessageTooBig) as exc:
                # Malformed input ends this stream at most (ARCHITECTURE.md reliability
                # policy): one clear line, one count, and the call is hung up.
                kind = "message_too_big" if isinstance(exc, MessageTooBig) else "protocol_error"
                self._bad_input(self.listener or leg.kind, kind, str(exc))
                result.append(("call_hangup", f"call leg {kind.replace('_', ' ')}: {exc}", False))
            except (ConnectionClosed, TransportError) as exc:
                result.append(("call_hangup", str(exc), True))
            cancel.cancel()

        async def writer(cancel: trio.CancelScope) -> None:
            try:
                await leg.serve_writer()
            except TransportError as exc:
                result.append(("call_hangup", f"call leg send failed: {exc}", True))
                cancel.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, nursery.cancel_scope)
            nursery.start_soon(writer, nursery.cancel_scope)
        return result[0] if result else ("call_hangup", None, False)

    @property
    def awaiting_call(self) -> bool:
        """A resumable call leg dropped and the reconnect window is open."""
        return self._awaiting_call

    def resume_call(self, leg: CallLeg) -> bool:
        """Attach a re-dialled carrier leg; False when the window is not open."""
        if not self._awaiting_call:
            return False
        self.call = leg
        self._awaiting_call = False
        self._call_resumed.set()
        return True

    def _set_call_rate(self, rate: int) -> None:
        self._call_rate = rate
        s = self.settings
        fb = frame_bytes(rate, s.ptime_ms)
        old = getattr(self, "_playout", None)
        self._playout = PlayoutBuffer(fb, s.ptime_ms)
        self._popped_bytes = self._pushed_bytes  # the old queue's audio is gone
        self._arrivals.clear()
        if old is not None:
            # A rate change mid-call (AudioSocket kind switch) is rare; carry the marks.
            for name in old.clear():
                self._playout.mark(name)
        self._silence = bytes(fb)
        self._down_rs = Resampler(s.app_sample_rate, rate)
        self._down_rate = rate
        if s.hold_pcm:
            hold = s.hold_pcm
            if s.hold_sample_rate != rate:
                hold = Resampler(s.hold_sample_rate, rate).process(hold)
            # Whole frames only, so the loop point lands on a frame boundary.
            self._hold = hold[: len(hold) - len(hold) % fb] or b""
            self._hold_pos = 0

    def on_call_event(self, event: Event) -> None:
        """From the call reader: one decoded event of the caller's side."""
        if type(event) is Audio:
            frame = event.frame
            pcm = frame.pcm
            self.frames_in += 1
            self.bytes_in += len(pcm)
            rate = frame.sample_rate
            if rate != self._up_rate:
                self._up_rs = Resampler(rate, self.settings.app_sample_rate)
                self._up_rate = rate
                if rate != self._call_rate:
                    self._set_call_rate(rate)
            assert self._up_rs is not None
            self._to_app(self._up_rs.process(pcm))
            # The playout grid does not start here: it starts phase-aligned to the
            # app's first audio (or free-running if the app stays silent), so that the
            # app's answer never lands just behind a silence frame and waits a slot.
        elif type(event) is Dtmf:
            self._note("dtmf", {"digit": event.digit, "from": "call"})
            self._to_app(event)
        elif type(event) is Mark:
            # A carrier's echo of a mark we forwarded: now it really was played (or
            # cleared) on the far side, so the app learns it.
            try:
                self._carrier_marks.remove(event.name)
            except ValueError:
                pass
            self._app_event(event)
        elif type(event) is Cleared:
            # Plivo's clearedAudio: its cleared checkpoints are never answered
            # (PROTOCOLS.md "Design implications" 3), so bridge answers them itself. The
            # app already had its "cleared" when it asked.
            marks, self._carrier_marks = self._carrier_marks, []
            for name in marks:
                self._app_event(Mark(name))
        elif type(event) is Stop:
            self._call_stopped = True
            self.end("call_hangup")
        else:
            self._log_once(f"call:{type(event).__name__}", "ignored call-leg event %s", event)

    # ==================================================================================
    # call -> app (uplink)
    # ==================================================================================

    def _to_app(self, item: bytes | Event) -> None:
        app = self._app
        uplink = self._uplink
        if app is not None and not len(uplink) and not app.backlog_bytes:
            try:
                if type(item) is bytes:
                    app.send_audio(item)
                else:
                    app.send_event(item)  # type: ignore[arg-type]
                return
            except (ConnectionClosed, TransportError):
                pass  # the reader sees the failure; keep the frame for the replay
        crossed = uplink.append(item)
        for threshold in crossed:
            self._note("degraded", {"buffer_percent": threshold})
            self._emit("DegradedStream", {"buffer_percent": threshold})
        if uplink.full:
            self.end("slow_connection", f"uplink buffer full ({self.settings.buffer_s:g}s of audio)")

    def _drain_uplink(self) -> None:
        """Move buffered caller audio on to the app while the app leg takes it without
        blocking (called when a connection is up and whenever its backlog empties)."""
        app = self._app
        uplink = self._uplink
        if app is None:
            return
        try:
            # Stop at a modest backlog so the writer task paces the replay to the socket.
            while len(uplink) and app.backlog_bytes < 65536:
                item = uplink.popleft()
                if type(item) is bytes:
                    app.send_audio(item)
                else:
                    app.send_event(item)  # type: ignore[arg-type]
        except (ConnectionClosed, TransportError):
            return
        if uplink.check_recovered():
            self._note("recovered", {"buffer_percent": round(uplink.percent, 1)})
            self._emit("RecoveredStream", {})

    # ==================================================================================
    # app -> call (downlink)
    # ==================================================================================

    def on_app_event(self, event: Event) -> None:
        """From the app reader: one decoded event of the application's side."""
        if type(event) is Audio:
            frame = event.frame
            self.app_frames_received += 1
            pcm = frame.pcm
            if frame.sample_rate != self.settings.app_sample_rate:
                # Audio at another rate than the route's: one resampler for it, kept, so
                # its filter history runs on from frame to frame (a new one per message
                # would start every frame from silence).
                rs = self._odd_rate_rs
                if rs is None or (rs.in_rate, rs.out_rate) != (frame.sample_rate, self._call_rate):
                    rs = self._odd_rate_rs = Resampler(frame.sample_rate, self._call_rate)
                pcm = rs.process(pcm)
            else:
                assert self._down_rs is not None
                pcm = self._down_rs.process(pcm)
            self._playout.push(pcm)
            now = trio.current_time()
            self._app_audio_at = now
            self._pushed_bytes += len(pcm)
            self._arrivals.append((now, self._pushed_bytes))
            self._last_push_bytes = len(pcm)
            if self._grace_open:
                self._send_in_grace(now)
            else:
                if not self._phased:
                    self._phase_grid(now)
                self._send_early(now)
        elif type(event) is Mark:
            self._playout.mark(event.name)
        elif type(event) is Clear:
            pending = self._playout.clear()
            self._popped_bytes = self._pushed_bytes
            self._arrivals.clear()
            if self.call.far_side_buffers:
                self.call.send_event(Clear())
            for name in pending:
                self._app_event(Mark(name))
            self._app_event(Cleared())
            self._note("clear", {"marks_returned": len(pending)})
        elif type(event) is Dtmf:
            self._note("dtmf", {"digit": event.digit, "from": "app"})
            if not self.call.send_event(event):
                self._log_once("dtmf-out", "the call leg (%s) cannot send DTMF", self.call.kind)
        elif type(event) is Hangup:
            self._note("hangup", {"from": "app"})
            self.end("app_hangup")
        elif type(event) is StatsRequest:
            self._app_event(Stats(int(self._playout.queued_ms), self._uplink.fill_ms))
        elif type(event) is Stop:
            self.end("app_hangup")
        else:
            self._log_once(f"app:{type(event).__name__}", "ignored app-leg event %s", event)

    def _app_event(self, event: Event) -> None:
        app = self._app
        if app is None:
            return  # marks/cleared for a connection that is gone mean nothing to the next
        try:
            app.send_event(event)
        except (ConnectionClosed, TransportError):
            pass

    # ==================================================================================
    # pacing
    # ==================================================================================

    def _start_grid(self, now: float) -> None:
        s = self.settings
        self._clock = PacingClock(
            origin_s=now,
            ptime_s=s.ptime_ms / 1000.0,
            max_catch_up=s.max_catch_up_frames,
            lead_frames=s.send_ahead_frames if self.call.far_side_buffers else 0,
        )
        if self.lateness_total is not None:
            self._clock.lateness.attach(self.lateness_total)
        if self._tick is not None:
            self._tick.reschedule(self._clock.next_deadline_s)

    def _phase_grid(self, now: float) -> None:
        """Align the grid to the app's audio once, so a frame from the app waits at
        most PHASE_MARGIN_S, not up to a whole ptime, before it goes to the caller."""
        self._phased = True
        clock = self._clock
        if clock is None:
            self._start_grid(now + PHASE_MARGIN_S)
            return
        # Never put the next frame closer than half a ptime after the last one sent, so
        # the caller's side never sees two frames crammed together (AudioSocket writes
        # each message to the channel on arrival).
        # One slot then gets a gap of up to 1.5 ptimes instead (audio arriving in the
        # same tick as a send, an RTP poll answered at once, lands here).
        ptime = self.settings.ptime_ms / 1000.0
        target = now + PHASE_MARGIN_S
        if target - self._last_sent_s < ptime / 2:
            target += ptime
        if abs(clock.next_deadline_s - target) > 0.001:
            clock.rephase(target)
            if self._tick is not None:
                self._tick.reschedule(clock.next_deadline_s)

    async def _serve_timers(self) -> None:
        """The stream's two timers, as one sleeping task: start the grid if the caller
        stays silent, and ``stream_timeout``."""
        await trio.sleep_until(self._t0 + START_GRID_AFTER_S)
        if self._clock is None:
            self._start_grid(trio.current_time())
        await trio.sleep_until(self._t0 + self.settings.timeout_s)
        self._note("timeout", {"timeout_s": self.settings.timeout_s})
        self.end("stream_timeout")

    def on_tick(self, now_s: float) -> float:
        """Called by the Ticker at this stream's deadline: send the frame(s) due."""
        clock = self._clock
        if clock is None:
            return math.inf
        n = clock.due(now_s)
        call = self.call
        waited = 0.0
        if n:
            depth = self._pushed_bytes - self._popped_bytes
            if depth > self._depth_max:
                self._depth_max = depth
            self._depth_ticks += 1
            if self._depth_ticks >= DEPTH_WINDOW_TICKS:
                # A new window starts with the last one's maximum, so a deep queue (an
                # app sending faster than real time) keeps catch-up off for a window.
                self._depth_prev_max, self._depth_max = self._depth_max, depth
                self._depth_ticks = 0
        for i in range(n):
            # This slot's frame goes out below; mark it first, so that audio the poll
            # brings in (and an app answers at once) is phased after it, not before.
            self._last_sent_s = now_s
            call.poll(self, now_s)
            if (
                i == n - 1
                and not self._grace_open
                and self._app is not None
                and self._playout.queued_ms <= 0
                and now_s - self._app_audio_at < GRACE_STREAMING_S
            ):
                # The app is streaming but this slot's frame is not here yet: hold the
                # slot up to GRACE_S. If the frame comes it goes out on arrival and the
                # grid follows it (one gap of 20+δ ms, never a cram); if not, silence
                # resumes at the end of the hold. Without this, a frame a millisecond
                # late would wait a whole slot, and every later frame with it.
                self._grace_open = True
                clock.rephase(now_s + GRACE_S)
                break
            self._grace_open = False
            waited = self._send_frame(now_s)
        if n:
            self._track_phase(waited)
        if n and self._behind(waited):
            # A real-time stream is a full slot behind (after a stall, frames came in a
            # burst and the grid followed the late one): catch up by one frame in this
            # slot. No audio is dropped; the far side's jitter buffer takes the early
            # frame. Apps that queue audio on purpose (chunks, TTS) are never burst.
            self.catch_up_frames += 1
            self._send_frame(now_s)
        return clock.next_deadline_s

    def _real_time(self) -> bool:
        """The app streams in real time: one frame per message, and its queue has stayed
        shallow (at most REAL_TIME_MAX_FRAMES) for the last window. An app sending
        faster than real time (TTS, even frame by frame) queues on purpose: its audio
        is paced at exactly one frame per slot, never caught up or re-phased."""
        fb = len(self._silence)
        limit = REAL_TIME_MAX_FRAMES * fb
        return (
            self._last_push_bytes <= fb
            and self._depth_max <= limit
            and self._depth_prev_max <= limit
        )

    def _track_phase(self, waited_s: float) -> None:
        """Re-align a real-time stream's grid when every frame of the last window waited
        longer than the phase margin (the app's phase moved, or a stall left the grid
        behind): shift the grid earlier by the smallest wait's excess. One gap to the
        caller is shorter by that much; the far side's jitter buffer takes it."""
        if (
            waited_s <= 0.0
            or not self._real_time()
            or self._pushed_bytes - self._popped_bytes >= len(self._silence)
        ):
            # Only a steady real-time stream whose queue empties every slot is re-phased.
            self._wait_n = 0
            self._wait_min = math.inf
            return
        if waited_s < self._wait_min:
            self._wait_min = waited_s
        self._wait_n += 1
        if self._wait_n < PHASE_WINDOW_FRAMES:
            return
        excess = self._wait_min - PHASE_MARGIN_S
        self._wait_n = 0
        self._wait_min = math.inf
        clock = self._clock
        if clock is not None and excess > PHASE_SLACK_S:
            clock.rephase(clock.next_deadline_s - excess)
            self.rephases += 1
            if self._tick is not None:
                self._tick.reschedule(clock.next_deadline_s)

    def _behind(self, waited_s: float) -> bool:
        """The frame just sent waited a whole slot longer than it had to, the next one is
        already here, and the app streams one frame per message (real time)."""
        fb = len(self._silence)
        if not self._real_time() or self._pushed_bytes - self._popped_bytes < fb:
            return False
        return waited_s >= self.settings.ptime_ms / 1000.0 + PHASE_MARGIN_S

    def _send_frame(self, now_s: float = 0.0) -> float:
        """Pop one frame (silence or hold when there is none) and send it to the caller.
        Returns how long that frame waited in the playout buffer (0 for filler)."""
        call = self.call
        playout = self._playout
        arrivals = self._arrivals
        waited = now_s - arrivals[0][0] if arrivals and now_s else 0.0
        pcm, marks = playout.pop()
        if pcm is not None:
            self._popped_bytes += len(pcm)
            while arrivals and arrivals[0][1] <= self._popped_bytes:
                arrivals.popleft()
        else:
            waited = 0.0
            if self._app is None and self._hold:
                hold, pos = self._hold, self._hold_pos
                fb = len(self._silence)
                pcm = hold[pos : pos + fb]
                self._hold_pos = (pos + fb) % len(hold)
            else:
                pcm = self._silence
        call.send_audio(pcm)
        self.frames_out += 1
        self.bytes_out += len(pcm)
        for name in marks:
            if call.far_side_buffers and call.send_event(Mark(name)):
                self._carrier_marks.append(name)
                continue  # the carrier echoes it when it has played it
            self._app_event(Mark(name))
        if playout.take_drained():
            self._app_event(Drained())
        return waited

    def _send_early(self, now_s: float) -> None:
        """Send a real-time stream's frame on arrival if its slot is at most
        SEND_EARLY_S away (see there). Only when this one whole frame is queued, the
        last frame went out at least half a ptime ago (never a cram), and the far side
        plays on arrival (a buffering carrier leg already runs ahead by its lead)."""
        clock = self._clock
        fb = len(self._silence)
        if (
            clock is None
            or self.call.far_side_buffers
            or not fb <= self._pushed_bytes - self._popped_bytes < 2 * fb
            or now_s - self._last_sent_s < self.settings.ptime_ms / 2000.0
            or not self._real_time()
            or not clock.take_early(now_s, SEND_EARLY_S)
        ):
            return
        # As on_tick does for its slot: the leg's clocked input (RTP) is polled once per
        # slot, a little early here; the tick then finds this slot taken.
        self._last_sent_s = now_s
        self.call.poll(self, now_s)
        self._send_frame()
        self.early_sends += 1
        if self._tick is not None:
            # The ticker need not call on_tick for the slot just used (it would find
            # nothing due): its entry for that slot goes stale and is skipped with a
            # heap pop, and the next one is for the next slot.
            self._tick.reschedule(clock.next_deadline_s)

    def _send_in_grace(self, now_s: float) -> None:
        """The awaited frame arrived inside its grace: send it now; the grid follows."""
        clock = self._clock
        assert clock is not None
        self._grace_open = False
        self._last_sent_s = now_s
        self._send_frame()
        self.grace_sends += 1
        clock.rephase(now_s + self.settings.ptime_ms / 1000.0)
        if self._tick is not None:
            self._tick.reschedule(clock.next_deadline_s)

    # ==================================================================================
    # reconnect supervisor
    # ==================================================================================

    async def _supervise(self) -> None:
        """Own the app leg: the first attempt plus ``retries`` more with doubling
        backoff, at initiation and again after every mid-stream loss."""
        s = self.settings
        attempt = 0
        delay = s.backoff_s
        last_error = ""
        while True:
            attempt += 1
            self.attempts += 1
            self.outage_attempts = attempt
            self._set_state(StreamState.CONNECTING)
            outcome: str | None = None
            try:
                async with self.connector.open(self.stream_id, self.call_id) as conn:
                    attempt, delay = 0, s.backoff_s
                    try:
                        self._on_app_connected(conn)
                        outcome = await self._run_connection(conn)
                    finally:
                        self._app = None
                        if self.reason is not None:
                            # The stream is ending: the dialect's stop goes out before
                            # the close handshake that leaving this block performs.
                            try:
                                conn.send_event(Stop(self.reason))
                            except (ConnectionClosed, TransportError):
                                pass
            except (TransportError, OSError) as exc:
                last_error = str(exc) or type(exc).__name__
                self._note("connect_failed", {"attempt": self.outage_attempts, "error": last_error})
                logger.info(
                    "app connect attempt %d failed: %s",
                    self.outage_attempts,
                    last_error,
                    extra={"stream_id": self.stream_id, "route": self.route},
                )
                if attempt > s.retries:
                    when = "mid-stream" if self._app_ever_up else "at initiation"
                    self.end(
                        "connection_error",
                        f"app leg unreachable {when} after {attempt} attempts: {last_error}",
                    )
                    return
                await trio.sleep(delay)
                delay *= 2
                continue
            if outcome is None:
                self.end("app_hangup")
                return
            self.reconnects += 1
            self._note("app_lost", {"error": outcome})
            logger.warning(
                "app leg lost: %s; reconnecting",
                outcome,
                extra={"stream_id": self.stream_id, "route": self.route},
            )

    def _on_app_connected(self, conn: AppConnection) -> None:
        resumed = self._app_ever_up
        replayed_ms = self._uplink.fill_ms
        self._app = conn
        self._set_state(StreamState.OPEN)
        conn.send_event(
            Start(
                stream_id=self.stream_id,
                call_id=self.call_id,
                sample_rate=self.settings.app_sample_rate,
                encoding="L16",
                metadata=self.call.metadata(),
                resumed=resumed,
                replayed_ms=replayed_ms,
            )
        )
        if resumed:
            self._note("resumed", {"replayed_ms": replayed_ms})
        else:
            self._app_ever_up = True
            self._emit("StartStream", {})
        self._set_state(StreamState.STREAMING)
        self._drain_uplink()

    async def _run_connection(self, conn: AppConnection) -> str | None:
        """Run one connection's reader and writer. None = a normal end (the app hung up,
        or the stream is ending); otherwise the failure, and the supervisor reconnects."""
        failure: list[str] = []

        async def reader(cancel: trio.CancelScope) -> None:
            try:
                await conn.serve_reader(self)
            except (DialectError, MessageTooBig) as exc:
                # PROTOCOLS.md §0: malformed input from the app ends that connection;
                # the supervisor then reconnects.
                kind = "message_too_big" if isinstance(exc, MessageTooBig) else "protocol_error"
                self._bad_input("app", kind, str(exc))
                failure.append(f"app leg {kind.replace('_', ' ')}: {exc}")
            except (ConnectionClosed, TransportError) as exc:
                failure.append(str(exc) or type(exc).__name__)
            cancel.cancel()

        async def writer(cancel: trio.CancelScope) -> None:
            try:
                await conn.serve_writer(self._drain_uplink)
            except (ConnectionClosed, TransportError) as exc:
                failure.append(str(exc) or type(exc).__name__)
                cancel.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, nursery.cancel_scope)
            nursery.start_soon(writer, nursery.cancel_scope)
        return failure[0] if failure else None

    # ==================================================================================
    # bookkeeping
    # ==================================================================================

    def _set_state(self, state: StreamState) -> None:
        if state is self.state:
            return
        self.state = state
        self.history.append((state.value, _utcnow()))
        self.observer.stream_state(self, state)

    def _note(self, name: str, detail: dict[str, Any]) -> None:
        self.log.append({"at": _utcnow().isoformat(), "event": name, **detail})

    def _emit(self, event: str, fields: dict[str, Any]) -> None:
        self._note(event, fields)
        self.observer.stream_event(self, event, fields)

    def _bad_input(self, leg: str, kind: str, message: str) -> None:
        logger.warning(
            "bad input on the %s leg (%s): %s",
            leg,
            kind,
            message,
            extra={"stream_id": self.stream_id, "leg": leg, "kind": kind},
        )
        self._note("bad_input", {"leg": leg, "kind": kind, "error": message})
        self.observer.stream_bad_input(self, leg, kind, message)

    def _log_once(self, key: str, msg: str, *args: object) -> None:
        if key in self._logged_once:
            return
        self._logged_once.add(key)
        logger.info(msg, *args, extra={"stream_id": self.stream_id})

