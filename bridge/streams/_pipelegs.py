"""Legs made of a dialect and a pipe: AudioSocket and carrier WebSocket call legs, and
WebSocket app connections. (RTP has its own leg: it needs a jitter buffer and latching.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from .._errors import ConnectionClosed, TransportError
from ..dialects import Audio, Dialect, Event, Hangup, Message, Start, Stop
from ..media import Frame
from ._legs import Pipe, StreamSink
from ._polled import poller_for, serve_polled

__all__ = ["PipeAppConnection", "PipeCallLeg"]

logger = logging.getLogger("bridge.streams")


def _rate_of(dialect: Dialect, default: int) -> int:
    rate = getattr(dialect, "sample_rate", None)
    return rate if isinstance(rate, int) and rate > 0 else default


@attrs.define(slots=True, eq=False)
class PipeCallLeg:
    """A call leg where bridge plays the *app* role of the call's protocol."""

    kind: str
    dialect: Dialect
    pipe: Pipe
    start: Start
    #: Events that arrived with the start (e.g. audio in the same TCP chunk as the UUID).
    pending: Sequence[Event] = ()
    far_side_buffers: bool = False
    #: Send the dialect's hangup message before closing (AudioSocket ``00 00 00``).
    hangup_on_close: bool = True
    #: A dropped connection may be replaced within the route's reconnect window
    #: (carrier WebSockets; an AudioSocket EOF is the hangup itself).
    resumable: bool = False
    #: The caller's "host:port", for log lines about this leg (bad input).
    peer: str = ""
    #: The far side takes audio in messages of its own sizes (whole frames of its own,
    #: chunks of a minimum size: the dialect's ``send_rule``), so each frame goes through
    #: ``send(Audio)``, which cuts, carries over and gathers, instead of ``send_audio``.
    sized_audio: bool = False
    #: Set once the stream is done with this leg (closed or replaced): whoever accepted
    #: the connection holds it open until then.
    released: trio.Event = attrs.field(factory=trio.Event)
    _closed: bool = False
    _sink: StreamSink | None = None
    #: The dialect's ``take_events`` (events owed without a wire message: the marks a
    #: clear settled), or None.
    _take_events: Callable[[], list[Event]] | None = None

    def __attrs_post_init__(self) -> None:
        take = getattr(self.dialect, "take_events", None)
        self._take_events = take if callable(take) else None

    @property
    def sample_rate(self) -> int:
        return _rate_of(self.dialect, self.start.sample_rate)

    @property
    def call_id(self) -> str:
        return self.start.call_id

    def metadata(self) -> dict[str, Any]:
        meta = dict(self.start.metadata)
        meta.setdefault("call_leg", self.kind)
        if self.start.stream_id != self.start.call_id:
            meta.setdefault("call_stream_id", self.start.stream_id)
        return meta

    def send_audio(self, pcm: bytes) -> None:
        if self._closed:
            return
        try:
            if self.sized_audio:
                for message in self.dialect.send(Audio(Frame(pcm, self.sample_rate))):
                    self.pipe.send_nowait(message)
            else:
                self.pipe.send_nowait(self.dialect.send_audio(pcm))
        except (ConnectionClosed, TransportError):
            # The reader sees the same failure and ends the stream with call_hangup.
            self._closed = True

    def send_event(self, event: Event) -> bool:
        if self._closed:
            return False
        messages = self.dialect.send(event)
        try:
            for message in messages:
                self.pipe.send_nowait(message)
        except (ConnectionClosed, TransportError):
            self._closed = True
            return False
        take = self._take_events
        if take is not None:
            owed = take()
            if owed:
                self._deliver(owed)
        return bool(messages)

    def _deliver(self, events: list[Event]) -> None:
        """Events the dialect owes the stream without a wire message (Asterisk's
        ``FLUSH_MEDIA`` drops pending marks silently: the dialect settles them, and they
        reach the stream here as if echoed)."""
        sink = self._sink
        if sink is None:
            self.pending = (*self.pending, *events)
            return
        for event in events:
            sink.on_call_event(event)

    def poll(self, sink: StreamSink, now_s: float) -> None:
        pass  # input is event-driven: the reader forwards each message as it arrives

    async def serve_reader(self, sink: StreamSink) -> str:
        self._sink = sink
        for event in self.pending:
            sink.on_call_event(event)
        self.pending = ()
        receive = self.pipe.receive
        decode = self.dialect.receive
        on_event = sink.on_call_event
        poller = poller_for(self.pipe)

        def handle(message: Message) -> bool:
            for event in decode(message):
                on_event(event)
            return False

        try:
            while True:
                if poller is not None:
                    await serve_polled(self.pipe, poller, handle)
                handle(await receive())
        except ConnectionClosed:
            return "call_hangup"

    async def serve_writer(self) -> None:
        await self.pipe.serve_writer(None)

    async def aclose(self, reason: str) -> None:
        if not self._closed and self.hangup_on_close and reason != "call_hangup":
            # The app side ends the call: say so the way the protocol expects.
            self.send_event(Hangup())
        self._closed = True
        try:
            await self.pipe.aclose(1000, reason)
        finally:
            self.released.set()


@attrs.define(slots=True, eq=False)
class PipeAppConnection:
    """One app-leg connection: bridge plays the *platform* role of the encapsulation."""

    dialect: Dialect
    pipe: Pipe
    sample_rate: int
    #: The connection failed (as opposed to ending normally): close with 1011.
    failed: bool = False

    @property
    def backlog_bytes(self) -> int:
        return self.pipe.backlog_bytes

    def send_audio(self, pcm: bytes) -> None:
        self.pipe.send_nowait(self.dialect.send_audio(pcm))

    def send_event(self, event: Event) -> None:
        for message in self.dialect.send(event):
            self.pipe.send_nowait(message)

    async def serve_reader(self, sink: StreamSink) -> None:
        receive = self.pipe.receive
        decode = self.dialect.receive
        on_event = sink.on_app_event
        poller = poller_for(self.pipe)

        def handle(message: Message) -> bool:
            """True once the app has hung up."""
            for event in decode(message):
                on_event(event)
                if type(event) is Hangup or type(event) is Stop:
                    return True
            return False

        try:
            while True:
                if poller is not None and await serve_polled(self.pipe, poller, handle):
                    return
                if handle(await receive()):
                    return
        except ConnectionClosed as exc:
            # RFC 6455 §7.4.1: 1000 is a normal closure, the app's way of hanging up.
            # Everything else (1001 going away on a deploy, 1006 abnormal, 1011 error)
            # is an outage the supervisor rides through.
            if exc.code == 1000:
                return
            self.failed = True
            raise
        except Exception:  # not Cancelled: a stream that ends cancels this reader
            self.failed = True
            raise

    async def serve_writer(self, on_drained: Callable[[], None]) -> None:
        try:
            await self.pipe.serve_writer(on_drained)
        except Exception:  # not Cancelled: a stream that ends cancels this reader
            self.failed = True
            raise

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await self.pipe.aclose(code, reason)

