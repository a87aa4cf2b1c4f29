"""A small RTP peer for tests, built on ``RtpSession`` (the same sans-IO code bridge uses,
in the other role). It sends from its own UDP socket, paced on absolute deadlines, and
records everything it receives with its arrival time.

    peer = await RtpPeer.open()                  # bound to 127.0.0.1:<free port>
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.receive_forever)
        await peer.play(frames, to=("127.0.0.1", port))   # paced 20 ms
    peer.payloads()                              # what came back, in order of arrival
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

import attrs
import trio

from bridge.dialects import Audio, Dtmf, Event
from bridge.dialects._rtp import RtpSession
from bridge.media import audioop

__all__ = ["Received", "RtpPeer", "ulaw_frame"]


def ulaw_frame(n: int, size: int = 160) -> bytes:
    """A recognisable µ-law payload for frame ``n``: no silence code (0xFF/0x7F), and it
    survives µ-law -> PCM16 -> µ-law unchanged, so an echo can be compared byte for byte."""
    out = bytearray(size)
    for i in range(size):
        code = (n * 7 + i * 13) % 0x70 + 0x08  # 0x08..0x77: loud enough, never silence
        out[i] = code | (0x80 if (i + n) & 1 else 0)
    # The first two codes spell n itself (the pattern repeats every 16 frames).
    out[0] = 0x08 + (n // 0x70) % 0x70
    out[1] = 0x08 + n % 0x70
    return bytes(out)


@attrs.define
class Received:
    at: float
    packet: bytes
    addr: Any
    events: list[Event]

    @property
    def seq(self) -> int:
        return int.from_bytes(self.packet[2:4], "big")

    @property
    def payload_type(self) -> int:
        return self.packet[1] & 0x7F

    @property
    def payload(self) -> bytes:
        return self.packet[12:]


@attrs.define(eq=False)
class RtpPeer:
    sock: trio.socket.SocketType
    session: RtpSession
    received: list[Received] = attrs.field(factory=list)
    garbage: int = 0

    @classmethod
    async def open(
        cls, codec: Any = "pcmu", sample_rate: int = 8000, host: str = "127.0.0.1", **kw: Any
    ) -> RtpPeer:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind((host, 0))
        return cls(sock, RtpSession(codec, sample_rate, **kw))

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def close(self) -> None:
        self.sock.close()

    # -- sending -------------------------------------------------------------------------

    async def send_raw(self, data: bytes, to: tuple[str, int]) -> None:
        await self.sock.sendto(data, to)

    async def send_pcm(self, pcm: bytes, to: tuple[str, int]) -> bytes:
        packet = self.session.send_audio(pcm)
        await self.sock.sendto(packet, to)
        return packet

    async def send_ulaw(self, payload: bytes, to: tuple[str, int]) -> bytes:
        return await self.send_pcm(audioop.ulaw2lin(payload, 2), to)

    async def send_dtmf(self, digit: str, to: tuple[str, int], duration_ms: int = 100) -> None:
        """The whole RFC 4733 train at once (a receiver must cope with that too)."""
        for packet in self.session.send(Dtmf(digit, duration_ms)):
            assert isinstance(packet, bytes)
            await self.sock.sendto(packet, to)

    async def play(
        self,
        payloads: Iterable[bytes],
        to: tuple[str, int],
        ptime_s: float = 0.02,
        *,
        ulaw: bool = True,
        preamble: int = 0,
    ) -> None:
        """Send one packet per ``ptime_s`` on an absolute grid (no drift), after
        ``preamble`` packets of silence: bridge latches after ``latch_packets`` (4)
        sequential packets and plays none of the probation's but the last, as Asterisk's
        strict RTP does, so a preamble of 3 makes the first payload the first played."""
        start = trio.current_time()
        silence = b"\xff" * 160 if ulaw else bytes(320)
        payloads = [silence] * preamble + list(payloads)
        for n, payload in enumerate(payloads):
            await trio.sleep_until(start + n * ptime_s)
            if ulaw:
                await self.send_ulaw(payload, to)
            else:
                await self.send_pcm(payload, to)

    # -- receiving -----------------------------------------------------------------------

    async def receive_forever(self, receiver: RtpSession | None = None) -> None:
        """Record every datagram; ``receiver`` decodes (default: a fresh session of the
        same codec, so RFC 4733 events come out as Dtmf)."""
        decoder = receiver or RtpSession(
            self.session.codec, self.session.sample_rate, ptime_ms=self.session.ptime_ms
        )
        while True:
            try:
                data, addr = await self.sock.recvfrom(65536)
            except (trio.ClosedResourceError, OSError):
                return
            now = trio.current_time()
            try:
                events = decoder.receive(data)
            except Exception:
                self.garbage += 1
                events = []
            self.received.append(Received(now, data, addr, events))

    def audio(self) -> list[Received]:
        return [r for r in self.received if any(isinstance(e, Audio) for e in r.events)]

    def payloads(self, *, skip_silence: bool = True) -> list[bytes]:
        """µ-law payloads of the audio packets received, in arrival order."""
        out = [r.payload for r in self.audio()]
        if skip_silence:
            out = [p for p in out if p.strip(b"\xff\x7f")]
        return out

    def dtmf(self) -> list[Dtmf]:
        return [e for r in self.received for e in r.events if isinstance(e, Dtmf)]
