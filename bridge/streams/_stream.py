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

The stream is the wiring and the per-frame paths; its policies are their own modules:
the playout timing (``media.PlayoutPolicy``, pure), the uplink buffer (``_uplink``), the
reconnect supervisor and its ``RetryPolicy`` (``_supervisor``), and the lifecycle it
reports to its observer as typed events (``_lifecycle``).

The per-frame paths never hand a frame to another task:

* call -> app: the call reader decodes, resamples and sends to the app leg with a
  non-blocking send in the same step (the caller already paces its audio). Only when the
  app leg is down or backed up does the frame go into the uplink buffer.
* app -> call: the app reader decodes and resamples into the playout policy
  (``media.PlayoutPolicy``: the buffer, the 20 ms grid and every timing decision, pure
  code); the shared Ticker calls ``on_tick`` at this stream's deadline, which sends the
  frame(s) the policy says are due (silence or the hold sound when there is none)
  without awaiting.

Closing is one cancel of the nursery plus an ordered, bounded ``closing`` step: send the
dialect's stop to the app, close both legs, emit the final event, write the record.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import attrs
import trio

from .._errors import ConnectionClosed, DialectError, FramingError, TransportError
from ..dialects import (
    DEFAULT_ENCAPSULATION,
    Audio,
    Clear,
    Cleared,
    Drained,
    Dtmf,
    Error,
    Event,
    FlowControl,
    Hangup,
    Mark,
    Stats,
    StatsRequest,
    Stop,
    mark_text,
)
from ..media import (
    LatenessHistogram,
    MarkName,
    PacingClock,
    PlayoutPolicy,
    Resampler,
    frame_bytes,
)
from ._legs import AppConnection, AppConnector, CallLeg
from ._lifecycle import (
    DegradedStream,
    DroppedStream,
    LifecycleEvent,
    RecoveredStream,
    StopStream,
    StreamState,
)
from ._supervisor import AppSupervisor, RetryPolicy
from ._ticker import Ticker, TickHandle
from ._uplink import UplinkBuffer

__all__ = ["Stream", "StreamObserver", "StreamSettings", "StreamState"]

logger = logging.getLogger("bridge.streams")

#: Reasons that end a stream normally (StopStream); the others are drops.
DROP_REASONS = frozenset({"connection_error", "slow_connection"})

#: How long the ordered closing step may take in all (stop message, close handshakes).
CLOSE_BUDGET_S = 3.0

#: If the app sends no audio, the grid starts anyway (silence or hold to the caller)
#: this long after the stream started; the app's first audio starts it earlier.
START_GRID_AFTER_S = 0.1


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
    #: Overdue slots sent at once after a stall of bridge itself; the rest are skipped
    #: (sending faster than real time only moves the backlog into the far side's queue).
    max_catch_up_frames: int = 1
    #: Trim standing latency of a real-time app stream (``PlayoutPolicy``).
    trim_latency: bool = True
    #: Carrier re-dial resume window for resumable call legs; 0 disables.
    reconnect_window_s: float = 0.0


class StreamObserver(Protocol):
    """The daemon side: events, records, metrics. Every call is synchronous and cheap."""

    def stream_event(self, stream: Stream, event: LifecycleEvent) -> None:
        """A lifecycle event (``_lifecycle``): the stream has already logged it."""
        ...

    def stream_state(self, stream: Stream, state: StreamState) -> None: ...

    def stream_closed(self, stream: Stream) -> None: ...

    def stream_bad_input(self, stream: Stream, leg: str, kind: str, message: str) -> None:
        """A peer of this stream sent something malformed: count it and log it (the
        daemon's log of bad peers is rate limited; the stream's event log has it too)."""
        ...


class _NullObserver:
    def stream_event(self, stream: Stream, event: LifecycleEvent) -> None:
        pass

    def stream_state(self, stream: Stream, state: StreamState) -> None:
        pass

    def stream_closed(self, stream: Stream) -> None:
        pass

    def stream_bad_input(self, stream: Stream, leg: str, kind: str, message: str) -> None:
        logger.warning(
            "bad input on the %s leg (%s): %s",
            leg,
            kind,
            message,
            extra={"stream_id": stream.stream_id, "leg": leg, "kind": kind},
        )


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
    encapsulation: str = DEFAULT_ENCAPSULATION
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
    #: ``time.monotonic()`` when the stream was made (its call leg accepted and routed)
    #: and when the app's first audio went out to the caller: the daemon's setup-latency
    #: histogram (``bridge_stream_setup_seconds``) reads them.
    created_monotonic: float = attrs.field(factory=time.monotonic)
    first_audio_monotonic: float | None = None

    # -- internals ---------------------------------------------------------------------
    _cancel: trio.CancelScope | None = None
    _app: AppConnection | None = None
    _uplink: UplinkBuffer = attrs.field(init=False)
    _policy: PlayoutPolicy = attrs.field(init=False)
    _tick: TickHandle | None = None
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
    #: Marks forwarded to a carrier that has not echoed them yet.
    _carrier_marks: list[MarkName] = attrs.field(factory=list)
    _paused_at: float = 0.0
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
        return self._policy.clock

    @property
    def playout(self) -> PlayoutPolicy:
        """The app -> caller playout policy (its counters: holds, trims, ...)."""
        return self._policy

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
                "playout_ms": self._policy.queued_ms,
            },
            "playout": self.playout_counters(),
            "lateness_ms": self.lateness_ms(),
            "events": list(self.log),
        }

    def jitter_counters(self) -> dict[str, int]:
        """The call leg's jitter-buffer counters (RTP legs have them), else empty."""
        fn = getattr(self.call, "jitter_counters", None)
        return dict(fn()) if callable(fn) else {}

    def playout_counters(self) -> dict[str, int]:
        """What the playout policy did to the app's audio (for records and the API)."""
        p = self._policy
        return {
            "trims": p.trims,
            "trimmed_frames": p.trimmed_frames,
            "trimmed_ms": p.trimmed_ms,
            "altered_frames": p.altered_frames,
            "holds": p.holds,
            "grace_sends": p.grace_sends,
            "early_sends": p.early_sends,
            "skipped_slots": p.clock.skipped if p.clock is not None else 0,
            "flow_pauses": p.pauses,
        }

    def lateness_ms(self) -> dict[str, float]:
        clock = self._policy.clock
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
                s = self.settings
                supervisor = AppSupervisor(self, RetryPolicy(s.retries, s.backoff_s))
                nursery.start_soon(supervisor.run)
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
        duration_s = round((self.ended_at - self.started_at).total_seconds(), 3)
        if reason in DROP_REASONS:
            self._emit(DroppedStream(reason, duration_s, self.error, self.outage_attempts))
        else:
            self._emit(StopStream(reason, duration_s, self.error))
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
            except (DialectError, FramingError) as exc:
                # Malformed input ends this stream at most (ARCHITECTURE.md reliability
                # policy): one clear line, one count, and the call is hung up (a framing
                # error is bad input, not a dropped leg to wait for).
                kind = exc.kind if isinstance(exc, FramingError) else "protocol_error"
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
        if not hasattr(self, "_policy"):
            self._policy = PlayoutPolicy(
                fb,
                ptime_s=s.ptime_ms / 1000.0,
                lead_frames=s.send_ahead_frames if self.call.far_side_buffers else 0,
                exact_pacing=not self.call.far_side_buffers,
                trim=s.trim_latency,
                max_catch_up=s.max_catch_up_frames,
                lateness_parent=self.lateness_total,
            )
        else:
            # A rate change mid-call (AudioSocket kind switch) is rare; marks are kept.
            self._policy.set_frame_bytes(fb)
        self._odd_rate_rs = None
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
            # cleared) on the far side, so the app learns it, under the name it chose:
            # a carrier's names are strings, so a number went out as its JSON text.
            self._app_event(Mark(self._carrier_mark_echoed(event.name)))
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
        elif type(event) is FlowControl:
            self._flow_control(event.paused)
        else:
            self._log_once(f"call:{type(event).__name__}", "ignored call-leg event %s", event)

    def _flow_control(self, paused: bool) -> None:
        """The call leg's far side says its queue is full (Asterisk ``MEDIA_XOFF``) or has
        room again (``MEDIA_XON``): stop sending it media, and queue the app's audio in
        the playout (where ``clear`` still reaches it), until it has room."""
        policy = self._policy
        if paused == policy.paused:
            return
        now = trio.current_time()
        if paused:
            policy.pause()
            self._paused_at = now
            self._note("flow_paused", {"playout_ms": int(policy.queued_ms)})
        else:
            policy.resume(now)
            self._note(
                "flow_resumed",
                {
                    "paused_ms": round((now - self._paused_at) * 1000),
                    "playout_ms": int(policy.queued_ms),
                },
            )
        tick = self._tick
        if tick is not None:
            tick.reschedule(policy.next_deadline_s)

    def _carrier_mark_echoed(self, echoed: MarkName) -> MarkName:
        """The pending forwarded mark a carrier's echo answers (the first with the same
        text), taken off the list; the echo itself if none matches."""
        text = mark_text(echoed)
        marks = self._carrier_marks
        for i, name in enumerate(marks):
            if mark_text(name) == text:
                return marks.pop(i)
        return echoed

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
            self._emit(DegradedStream(threshold))
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
            self._emit(RecoveredStream())

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
            policy = self._policy
            before = policy.next_deadline_s
            now = trio.current_time()
            if policy.on_audio(pcm, now):
                self._send_frame(now)
            tick = self._tick
            if tick is not None and policy.next_deadline_s != before:
                tick.reschedule(policy.next_deadline_s)
        elif type(event) is Mark:
            self._policy.mark(event.name)
        elif type(event) is Clear:
            pending = self._policy.clear()
            if self.call.far_side_buffers:
                self.call.send_event(Clear())
            for name in pending:
                self._app_event(Mark(name))
            self._app_event(Cleared())
            self._note("clear", {"marks_returned": len(pending)})
        elif type(event) is Dtmf:
            self._note("dtmf", {"digit": event.digit, "from": "app"})
            if not self.call.send_event(event):
                # Say so instead of dropping it in silence: the app can act on it (play
                # a prompt instead, use the carrier's REST API, ...).
                self._log_once("dtmf-out", "the call leg (%s) cannot send DTMF", self.call.kind)
                self._note("dtmf_unsupported", {"digit": event.digit})
                self._app_event(
                    Error(
                        "dtmf_unsupported",
                        f"the {self.call.kind} call leg cannot send DTMF to the caller",
                    )
                )
        elif type(event) is Hangup:
            self._note("hangup", {"from": "app"})
            self.end("app_hangup")
        elif type(event) is StatsRequest:
            self._app_event(
                Stats(
                    int(self._policy.queued_ms),
                    self._uplink.fill_ms,
                    trimmed_ms=self._policy.trimmed_ms,
                    jitter_ms=self._jitter_depth_ms(),
                )
            )
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

    def _jitter_depth_ms(self) -> int | None:
        """The call leg's jitter-buffer depth (RTP), else None."""
        depth = getattr(self.call, "jitter_depth_ms", None)
        return round(depth) if isinstance(depth, int | float) else None

    async def _serve_timers(self) -> None:
        """The stream's two timers, as one sleeping task: start the grid if the app
        stays silent (filler to the caller), and ``stream_timeout``."""
        await trio.sleep_until(self._t0 + START_GRID_AFTER_S)
        policy = self._policy
        if policy.clock is None:
            policy.start(trio.current_time())
            if self._tick is not None:
                self._tick.reschedule(policy.next_deadline_s)
        await trio.sleep_until(self._t0 + self.settings.timeout_s)
        self._note("timeout", {"timeout_s": self.settings.timeout_s})
        self.end("stream_timeout")

    def on_tick(self, now_s: float) -> float:
        """Called by the Ticker at this stream's deadline: send the frame(s) due."""
        policy = self._policy
        # Legs with clocked input (RTP: loss deadlines of the jitter buffer) look at the
        # time once per tick, first: audio it releases (and an app answers at once) is
        # in the playout before this slot is decided, never sent beside it.
        self.call.poll(self, now_s)
        n = policy.on_tick(now_s, app_up=self._app is not None)
        for _ in range(n):
            self._send_frame(now_s)
        return policy.next_deadline_s

    def _send_frame(self, now_s: float) -> None:
        """Send the policy's next frame to the caller (silence or the hold sound when
        nothing is queued), with the marks and ``drained`` it releases."""
        call = self.call
        policy = self._policy
        pcm, marks = policy.pop_frame(now_s)
        if pcm is not None:
            if self.first_audio_monotonic is None:
                self.first_audio_monotonic = time.monotonic()
        else:
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
        if policy.take_drained():
            self._app_event(Drained())

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

    def _emit(self, event: LifecycleEvent) -> None:
        self._note(event.name, event.detail())
        self.observer.stream_event(self, event)

    def _bad_input(self, leg: str, kind: str, message: str) -> None:
        # The observer logs it: the daemon within its bad-peer line budget.
        self._note("bad_input", {"leg": leg, "kind": kind, "error": message})
        self.observer.stream_bad_input(self, leg, kind, message)

    def _log_once(self, key: str, msg: str, *args: object) -> None:
        if key in self._logged_once:
            return
        self._logged_once.add(key)
        logger.info(msg, *args, extra={"stream_id": self.stream_id})

