"""The built-in echo application, ``echo:``: the caller hears their own voice.

It runs in-process with no socket: audio "sent" to it is handed straight back to the
stream as app audio in the same call, so the default config answers a call at once and
costs no more than the stream itself. Marks come back when the audio before them has
been played (the stream's playout buffer does that); ``hangup`` is never sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import trio

from ..dialects import Audio, Event, Start
from ..media import Frame
from ._legs import StreamSink

__all__ = ["ECHO_URL", "EchoConnection", "EchoConnector"]

ECHO_URL = "echo:"


@attrs.define(slots=True, eq=False)
class EchoConnection:
    sample_rate: int = 8000
    _sink: StreamSink | None = None
    _closed: trio.Event = attrs.field(factory=trio.Event)
    # Audio sent before the reader attached (the uplink replay on connect): played back
    # as soon as it does, so nothing sent to the echo is ever lost.
    _early: list[bytes] = attrs.field(factory=list)
    frames: int = 0

    @property
    def backlog_bytes(self) -> int:
        return 0

    def send_audio(self, pcm: bytes) -> None:
        self.frames += 1
        sink = self._sink
        if sink is None:
            self._early.append(pcm)
            return
        sink.on_app_event(Audio(Frame(pcm, self.sample_rate)))

    def send_event(self, event: Event) -> None:
        if type(event) is Start:
            self.sample_rate = event.sample_rate
        elif type(event) is Audio:
            self.send_audio(event.frame.pcm)
        # Nothing else (marks, dtmf, stop) means anything to an echo.

    async def serve_reader(self, sink: StreamSink) -> None:
        self._sink = sink
        early, self._early = self._early, []
        for pcm in early:
            sink.on_app_event(Audio(Frame(pcm, self.sample_rate)))
        try:
            await self._closed.wait()
        finally:
            self._sink = None

    async def serve_writer(self, on_drained: Callable[[], None]) -> None:
        await trio.sleep_forever()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        self._closed.set()


@attrs.define(slots=True)
class EchoConnector:
    """Connects a stream to the built-in echo. Never fails."""

    sample_rate: int = 8000
    connections: int = 0

    @property
    def url(self) -> str:
        return ECHO_URL

    @asynccontextmanager
    async def open(self, stream_id: str, call_id: str) -> AsyncIterator[EchoConnection]:
        self.connections += 1
        conn = EchoConnection(self.sample_rate)
        try:
            yield conn
        finally:
            await conn.aclose()
