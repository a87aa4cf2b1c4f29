"""In-memory legs and app connectors for engine tests (no sockets, autojump-clock safe)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from bridge import ConnectionClosed, HandshakeError
from bridge.dialects import Audio, Event, Hangup, Mark, Start, Stop
from bridge.media import Frame
from bridge.streams import StreamSink


@attrs.define(eq=False)
class FakeCallLeg:
    """A caller that sends what the test injects and records what the stream plays."""

    kind: str = "fake"
    far_side_buffers: bool = False
    rate: int = 8000
    sent: list[tuple[float, bytes]] = attrs.field(factory=list)
    events_sent: list[Event] = attrs.field(factory=list)
    closed_reason: str | None = None
    polls: int = 0
    _send: trio.MemorySendChannel[Event] = attrs.field(init=False)
    _recv: trio.MemoryReceiveChannel[Event] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._send, self._recv = trio.open_memory_channel(math.inf)

    @property
    def sample_rate(self) -> int:
        return self.rate

    @property
    def call_id(self) -> str:
        return "call-1"

    def metadata(self) -> dict[str, Any]:
        return {"fake": True}

    def inject(self, event: Event) -> None:
        self._send.send_nowait(event)

    def inject_audio(self, pcm: bytes) -> None:
        self.inject(Audio(Frame(pcm, self.rate)))

    def hang_up(self) -> None:
        self._send.close()

    def send_audio(self, pcm: bytes) -> None:
        self.sent.append((trio.current_time(), pcm))

    def send_event(self, event: Event) -> bool:
        self.events_sent.append(event)
        return self.far_side_buffers

    def poll(self, sink: StreamSink, now_s: float) -> None:
        self.polls += 1

    async def serve_reader(self, sink: StreamSink) -> str:
        async for event in self._recv:
            sink.on_call_event(event)
        return "call_hangup"

    async def serve_writer(self) -> None:
        await trio.sleep_forever()

    async def aclose(self, reason: str) -> None:
        self.closed_reason = reason


@attrs.define(eq=False)
class FakeAppConnection:
    """An app connection whose reader is fed by the test; records what bridge sent."""

    received: list[Event | bytes] = attrs.field(factory=list)
    _send: trio.MemorySendChannel[Event | BaseException | None] = attrs.field(init=False)
    _recv: trio.MemoryReceiveChannel[Event | BaseException | None] = attrs.field(init=False)
    dead: bool = False
    backlog: int = 0
    closed_with: int | None = None
    _on_drained: Callable[[], None] | None = None

    def __attrs_post_init__(self) -> None:
        self._send, self._recv = trio.open_memory_channel(math.inf)

    @property
    def backlog_bytes(self) -> int:
        return self.backlog

    def send_audio(self, pcm: bytes) -> None:
        if self.dead:
            raise ConnectionClosed(1006, "dead")
        self.received.append(pcm)

    def send_event(self, event: Event) -> None:
        if self.dead:
            raise ConnectionClosed(1006, "dead")
        self.received.append(event)

    def feed(self, event: Event) -> None:
        self._send.send_nowait(event)

    def kill(self) -> None:
        """The app dies abruptly (connection lost, not a normal close)."""
        self.dead = True
        self._send.send_nowait(ConnectionClosed(1006, "abnormal closure"))

    def close_normally(self) -> None:
        self._send.send_nowait(None)

    async def serve_reader(self, sink: StreamSink) -> None:
        async for item in self._recv:
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            sink.on_app_event(item)
            if type(item) in (Hangup, Stop):
                return

    async def serve_writer(self, on_drained: Callable[[], None]) -> None:
        self._on_drained = on_drained
        await trio.sleep_forever()

    def unblock(self) -> None:
        """A slow app catches up: its backlog empties and the writer says so."""
        self.backlog = 0
        if self._on_drained is not None:
            self._on_drained()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = code

    def audio(self) -> list[bytes]:
        return [x for x in self.received if isinstance(x, bytes)]

    def starts(self) -> list[Start]:
        return [x for x in self.received if isinstance(x, Start)]

    def marks(self) -> list[str]:
        return [x.name for x in self.received if isinstance(x, Mark)]


@attrs.define(eq=False)
class ScriptedConnector:
    """Each ``open`` takes the next outcome: a FakeAppConnection, or an exception."""

    outcomes: list[FakeAppConnection | BaseException | None] = attrs.field(factory=list)
    attempts: list[float] = attrs.field(factory=list)
    connections: list[FakeAppConnection] = attrs.field(factory=list)
    #: When outcomes run out: refuse (None) or accept with a new connection.
    default_refuse: bool = True

    @property
    def url(self) -> str:
        return "fake://app"

    @asynccontextmanager
    async def open(self, stream_id: str, call_id: str) -> AsyncIterator[FakeAppConnection]:
        self.attempts.append(trio.current_time())
        await trio.sleep(0.01)  # a handshake takes a moment
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is None:
            if self.default_refuse:
                raise HandshakeError("connection refused")
            outcome = FakeAppConnection()
        if isinstance(outcome, BaseException):
            raise outcome
        self.connections.append(outcome)
        try:
            yield outcome
        finally:
            await outcome.aclose()
