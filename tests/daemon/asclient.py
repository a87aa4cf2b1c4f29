"""A minimal AudioSocket caller for tests (the real one is ``bridge call``)."""

from __future__ import annotations

import uuid

import trio

from bridge.dialects import Audio, Event, Hangup
from bridge.dialects._audiosocket import AudioSocketPlatform
from bridge.media import Frame


class AudioSocketCaller:
    def __init__(self, stream: trio.SocketStream, sample_rate: int = 8000) -> None:
        self.stream = stream
        self.dialect = AudioSocketPlatform(str(uuid.uuid4()), sample_rate)
        self.received: list[tuple[float, bytes]] = []
        self.hung_up = False

    @classmethod
    async def connect(
        cls, host: str, port: int, sample_rate: int = 8000, *, local_address: str | None = None
    ) -> AudioSocketCaller:
        stream = await trio.open_tcp_stream(host, port, local_address=local_address)
        caller = cls(stream, sample_rate)
        for message in caller.dialect.send(caller.dialect.start_event()):
            assert isinstance(message, bytes)
            await stream.send_all(message)
        return caller

    async def send_frame(self, pcm: bytes) -> bool:
        """Send one frame; False once the connection is gone (bridge hung up)."""
        msg = self.dialect.send_audio(pcm)
        assert isinstance(msg, bytes)
        try:
            await self.stream.send_all(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def receive_forever(self) -> None:
        """Record every audio frame with its arrival time until the server hangs up/EOF."""
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    return
                now = trio.current_time()
                for event in self.dialect.receive(data):
                    self._on(event, now)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    def _on(self, event: Event, now: float) -> None:
        if isinstance(event, Audio):
            self.received.append((now, event.frame.pcm))
        elif isinstance(event, Hangup):
            self.hung_up = True

    async def aclose(self) -> None:
        await self.stream.aclose()


__all__ = ["AudioSocketCaller", "Frame"]
