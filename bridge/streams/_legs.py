"""The two sides of a stream, as the Stream sees them.

A *leg* pairs a dialect (sans-IO: events <-> wire messages) with a *pipe* (the I/O that
moves wire messages). The Stream never touches sockets: it calls ``send_audio`` and
``send_event`` on a leg from its per-frame path, which must not await, so every pipe
offers a non-blocking ``send_nowait`` backed by a writer task that only runs when the
kernel's send buffer is full (PERFORMANCE.md: no hand-offs per frame).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from ..dialects import Event, Message

__all__ = ["AppConnection", "AppConnector", "CallLeg", "Pipe", "StreamSink"]


class Pipe(Protocol):
    """Moves wire messages for one leg. Knows nothing of audio."""

    @property
    def backlog_bytes(self) -> int:
        """Bytes accepted by ``send_nowait`` that the kernel has not taken yet."""
        ...

    def send_nowait(self, message: Message) -> None:
        """Queue one message without awaiting. Raises ``ConnectionClosed`` once dead."""
        ...

    async def receive(self) -> Message:
        """The next message. Raises ``ConnectionClosed`` at the end."""
        ...

    async def serve_writer(self, on_drained: Callable[[], None] | None = None) -> None:
        """Flush the backlog whenever there is one, forever.

        Raises ``TransportTimeout("send")`` when a flush takes longer than the send
        timeout: a timed-out send means a dead connection. ``on_drained`` is called each
        time the backlog empties (the Stream then moves buffered uplink audio on).
        """
        ...

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close (bounded), idempotent."""
        ...


class StreamSink(Protocol):
    """What a leg reports to its Stream (implemented by ``Stream``)."""

    def on_call_event(self, event: Event) -> None: ...

    def on_app_event(self, event: Event) -> None: ...


class CallLeg(Protocol):
    """The telephone side of a stream (AudioSocket, carrier WebSocket, RTP, ...)."""

    #: The dialect's registry name, for records and metrics.
    kind: str
    #: The far side keeps its own playout queue (carrier WebSockets): send ahead, and
    #: let it echo marks, instead of pacing to the wire and echoing marks ourselves.
    far_side_buffers: bool

    @property
    def sample_rate(self) -> int:
        """Current wire rate of the call's audio (AudioSocket may change it mid-call)."""
        ...

    @property
    def call_id(self) -> str: ...

    def metadata(self) -> dict[str, Any]:
        """What the app's start message carries about the call."""
        ...

    def send_audio(self, pcm: bytes) -> None:
        """One frame of PCM16LE at ``sample_rate`` to the caller, without awaiting."""
        ...

    def send_event(self, event: Event) -> bool:
        """Mark/Clear/Dtmf/... toward the caller; False when the wire cannot say it."""
        ...

    def poll(self, sink: StreamSink, now_s: float) -> None:
        """Called on every tick of the stream's clock, just before ``send_audio``.

        Legs whose input must be clocked out (RTP: one frame from the jitter buffer per
        tick) deliver it here with ``sink.on_call_event``; the others do nothing. This
        keeps RTP's both directions on the one process-wide ticker, with no task of its
        own per frame.
        """
        ...

    async def serve_reader(self, sink: StreamSink) -> str:
        """Read until the call ends; return the hangup reason (normally ``call_hangup``)."""
        ...

    async def serve_writer(self) -> None:
        """Flush the send backlog whenever there is one (see ``Pipe.serve_writer``)."""
        ...

    async def aclose(self, reason: str) -> None:
        """Hang up the way the leg's protocol expects, then close. Bounded, idempotent."""
        ...


class AppConnection(Protocol):
    """One connection attempt's worth of app leg (the supervisor makes a new one per attempt)."""

    @property
    def backlog_bytes(self) -> int: ...

    def send_audio(self, pcm: bytes) -> None:
        """One frame of PCM16LE at the route's sample rate. Raises ``ConnectionClosed`` once dead."""
        ...

    def send_event(self, event: Event) -> None:
        """Start/Mark/Cleared/Dtmf/Drained/Stats/Stop toward the app (dropped if the
        encapsulation cannot say it)."""
        ...

    async def serve_reader(self, sink: StreamSink) -> None:
        """Read until the app leg ends. Returns on a normal close (code 1000) or a
        ``Hangup``; raises ``ConnectionClosed``/``TransportError``/``DialectError`` on a
        failure that the supervisor should retry."""
        ...

    async def serve_writer(self, on_drained: Callable[[], None]) -> None: ...

    async def aclose(self, code: int = 1000, reason: str = "") -> None: ...


class AppConnector(Protocol):
    """Opens app connections for one stream (dials out, or waits for the app to dial in)."""

    @property
    def url(self) -> str: ...

    def open(self, stream_id: str, call_id: str) -> AbstractAsyncContextManager[AppConnection]:
        """One attempt, bounded by the connect timeout; entering raises ``TransportError``.
        Leaving closes the connection (flushing what was queued, then the close
        handshake), bounded and shielded, so it works while the stream is cancelled."""
        ...
