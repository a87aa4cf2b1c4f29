"""RtpCallLeg on real UDP sockets on 127.0.0.1, with a recording sink in place of the Stream.

The leg's reader runs in the test's nursery; the tests drive ``poll``/``send_audio`` by
hand, one call per tick, as the Stream's ticker would.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import trio

from bridge.dialects import Audio, Dtmf, Event
from bridge.dialects._rtp import RtpSession
from bridge.media import audioop
from bridge.streams._rtpleg import RtpCallLeg
from bridge.transports import open_udp_socket
from tests.daemon.rtpclient import RtpPeer, ulaw_frame


@attrs.define
class Sink:
    events: list[Event] = attrs.field(factory=list)

    def on_call_event(self, event: Event) -> None:
        self.events.append(event)

    def on_app_event(self, event: Event) -> None:
        raise AssertionError("a call leg never reports app events")

    def audio(self) -> list[bytes]:
        return [e.frame.pcm for e in self.events if isinstance(e, Audio)]

    def dtmf(self) -> list[Dtmf]:
        return [e for e in self.events if isinstance(e, Dtmf)]


@attrs.define(eq=False)
class Harness:
    leg: RtpCallLeg
    sink: Sink
    addr: tuple[str, int]
    released: list[int]
    bad: list[int]
    reader_result: list[str]
    nursery: trio.Nursery

    def poll(self, n: int = 1) -> None:
        for _ in range(n):
            self.leg.poll(self.sink, trio.current_time())


async def wait_until(pred: Callable[[], bool]) -> None:
    """Poll (the reader changes plain attributes, there is no event to wait on); every
    test bounds the whole run with ``trio.fail_after``."""
    while not pred():
        await trio.sleep(0.002)


def pcm_of(n: int) -> bytes:
    """The PCM16 that ``ulaw_frame(n)`` decodes to."""
    return audioop.ulaw2lin(ulaw_frame(n), 2)


@pytest.fixture
async def harness_factory() -> AsyncIterator[Callable[..., Any]]:
    legs: list[RtpCallLeg] = []
    async with trio.open_nursery() as nursery:

        async def make(**kw: Any) -> Harness:
            sock = await open_udp_socket("127.0.0.1", 0)
            released: list[int] = []
            bad: list[int] = []

            def release() -> None:
                released.append(1)
                sock.close()

            kw.setdefault("jitter_start_ms", 40)
            kw.setdefault("timeout_s", 10.0)
            leg = RtpCallLeg(
                sock=sock,
                session=kw.pop("session", None) or RtpSession("pcmu"),
                call_id="call-rtp",
                on_release=release,
                on_bad_input=lambda: bad.append(1),
                **kw,
            )
            legs.append(leg)
            h = Harness(leg, Sink(), leg.local_address[:2], released, bad, [], nursery)

            async def reader() -> None:
                h.reader_result.append(await leg.serve_reader(h.sink))

            nursery.start_soon(reader)
            return h

        yield make
        nursery.cancel_scope.cancel()
    for leg in legs:
        await leg.aclose("test over")


@pytest.fixture
async def open_peer() -> AsyncIterator[Callable[..., Any]]:
    """``await open_peer(...)``: an RtpPeer closed when the test ends."""
    peers: list[RtpPeer] = []

    async def make(*args: Any, **kw: Any) -> RtpPeer:
        peer = await RtpPeer.open(*args, **kw)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()


async def send_frames(peer: RtpPeer, to: tuple[str, int], frames: range) -> list[bytes]:
    return [await peer.send_ulaw(ulaw_frame(n), to) for n in frames]


# -- latching ---------------------------------------------------------------------------


async def test_latches_after_latch_packets_sequential_packets(
    harness_factory: Any, open_peer: Any
) -> None:
    with trio.fail_after(5):
        h = await harness_factory(latch_packets=4)
        a = await open_peer()
        await send_frames(a, h.addr, range(3))
        await trio.sleep(0.05)
        assert h.leg.latched is None
        assert h.leg.jitter_buffer.stats.received == 0  # held on probation
        h.leg.send_audio(pcm_of(0))
        assert h.leg.send_no_destination == 1  # no remote, nothing latched: dropped
        await send_frames(a, h.addr, range(3, 4))
        await wait_until(lambda: h.leg.latched == a.address)
        assert h.leg.destination == a.address
        # Strict-RTP learning: the packet that completed the probation is the first to
        # reach the app; the three before it are dropped and counted.
        assert h.leg.jitter_buffer.stats.received == 1
        assert h.leg.jitter_counters()["rtp_probation_dropped"] == 3
        assert h.sink.audio() == [pcm_of(3)]


async def test_second_source_before_latch_restarts_probation(
    harness_factory: Any, open_peer: Any
) -> None:
    with trio.fail_after(5):
        h = await harness_factory(latch_packets=3)
        a, b = await open_peer(), await open_peer()
        await send_frames(a, h.addr, range(2))
        await trio.sleep(0.02)
        await send_frames(b, h.addr, range(100, 103))
        await wait_until(lambda: h.leg.latched is not None)
        assert h.leg.latched == b.address
        # A's packets now are foreign, however sequential.
        await send_frames(a, h.addr, range(2, 10))
        await wait_until(lambda: h.leg.foreign == 8)
        assert h.leg.latched == b.address
        assert h.leg.jitter_buffer.stats.received == 1
        assert h.sink.audio() == [pcm_of(102)]


async def test_non_sequential_packets_never_latch(harness_factory: Any, open_peer: Any) -> None:
    with trio.fail_after(5):
        h = await harness_factory(latch_packets=4)
        a = await open_peer()
        for n in range(12):
            await a.send_ulaw(ulaw_frame(n), h.addr)
            a.session._seq = (a.session._seq + 1) & 0xFFFF  # every other seq: a gap each time
        await trio.sleep(0.05)
        assert h.leg.latched is None
        assert h.leg.jitter_buffer.stats.received == 0


async def test_second_source_after_latch_is_dropped_then_relatches_after_silence(
    harness_factory: Any,
    open_peer: Any,
) -> None:
    with trio.fail_after(5):
        h = await harness_factory(latch_packets=2, relatch_silence_s=0.3)
        a, b = await open_peer(), await open_peer()
        await send_frames(a, h.addr, range(4))
        await wait_until(lambda: h.leg.latched == a.address)
        # B talks while A is alive: dropped, even though it passes probation.
        await send_frames(b, h.addr, range(50, 56))
        await send_frames(a, h.addr, range(4, 6))
        await wait_until(lambda: h.leg.foreign == 6 and h.leg.packets_received == 5)
        assert h.leg.latched == a.address and h.leg.latches == 1
        h.leg.send_audio(pcm_of(1))
        # A falls silent for longer than relatch_silence_s: B's next packets take over.
        await trio.sleep(0.35)
        await send_frames(b, h.addr, range(56, 58))
        await wait_until(lambda: h.leg.latched == b.address)
        assert h.leg.latches == 2
        assert h.leg.destination == b.address  # symmetric RTP follows the source
        h.leg.send_audio(pcm_of(2))
        await trio.sleep(0.05)
        assert h.leg.packets_sent == 2
        # A is foreign now.
        before = h.leg.foreign
        await send_frames(a, h.addr, range(6, 7))
        await wait_until(lambda: h.leg.foreign == before + 1)


async def test_new_ssrc_from_latched_address_is_accepted_at_once(
    harness_factory: Any, open_peer: Any
) -> None:
    with trio.fail_after(5):
        h = await harness_factory(latch_packets=4)
        a = await open_peer()
        await send_frames(a, h.addr, range(4))
        await wait_until(lambda: h.leg.latched == a.address)
        a.session = RtpSession("pcmu")  # re-INVITE: new SSRC, new sequence numbers
        await send_frames(a, h.addr, range(4, 5))
        await wait_until(lambda: h.leg.packets_received == 2)
        assert h.leg.ssrc_changes == 1 and h.leg.foreign == 0


async def test_remote_is_the_destination_whatever_is_latched(
    harness_factory: Any, open_peer: Any
) -> None:
    with trio.fail_after(5):
        listener = await open_peer()
        h = await harness_factory(latch_packets=1, remote=listener.address)
        a = await open_peer()
        h.leg.send_audio(pcm_of(0))  # before anything arrived: remote is known already
        await send_frames(a, h.addr, range(1))
        await wait_until(lambda: h.leg.latched == a.address)
        h.leg.send_audio(pcm_of(1))
        with trio.fail_after(1):
            first, _ = await listener.sock.recvfrom(2048)
            second, _ = await listener.sock.recvfrom(2048)
        assert first[12:] == ulaw_frame(0) and second[12:] == ulaw_frame(1)
        assert h.leg.metadata()["remote"] == "{}:{}".format(*listener.address)
        with trio.move_on_after(0.05) as scope:
            await a.sock.recvfrom(2048)
        assert scope.cancelled_caught  # nothing went to the latched source


# -- jitter buffer, poll ------------------------------------------------------------------


async def test_reordered_packets_come_out_in_order(harness_factory: Any, open_peer: Any) -> None:
    with trio.fail_after(5):
        # 12 packets queued at once: 240 ms, so the maximum depth must allow that.
        h = await harness_factory(latch_packets=1, jitter_start_ms=60, jitter_max_ms=300)
        a = await open_peer()
        packets = [a.session.send_audio(pcm_of(n)) for n in range(12)]
        order = [0, 2, 1, 3, 5, 4, 7, 6, 8, 11, 10, 9]
        for i in order:
            await a.send_raw(packets[i], h.addr)
        await wait_until(lambda: h.leg.jitter_buffer.stats.received == 12)
        h.poll(12)
        assert h.sink.audio() == [pcm_of(n) for n in range(12)]
        assert h.leg.jitter_buffer.stats.reordered >= 4
        counters = h.leg.jitter_counters()
        assert counters["played"] == 12 and counters["received"] == 12
        assert counters["rtp_latches"] == 1


async def test_audio_goes_to_the_app_on_arrival_and_gaps_only_after_the_wait(
    harness_factory: Any, open_peer: Any
) -> None:
    """In-order packets reach the app at once (no start threshold, nothing clocked by
    the playout grid); a lost packet is concealed once its wait has run out (settled by
    ``poll`` on the stream's tick); a pause invents nothing."""
    with trio.fail_after(5):
        h = await harness_factory(latch_packets=1, jitter_start_ms=40)
        h.poll(5)
        assert h.sink.events == []
        a = await open_peer()
        packets = [a.session.send_audio(pcm_of(n)) for n in range(4)]
        for i in (0, 1):
            await a.send_raw(packets[i], h.addr)
        await wait_until(lambda: len(h.sink.audio()) == 2)
        assert h.sink.audio() == [pcm_of(0), pcm_of(1)]
        await a.send_raw(packets[3], h.addr)  # packet 2 is lost
        await wait_until(lambda: h.leg.jitter_buffer.stats.received == 3)
        h.poll(1)
        assert len(h.sink.audio()) == 2  # 3 is held while 2 may still come
        await trio.sleep(0.05)
        h.poll(1)
        audio = h.sink.audio()
        assert len(audio) == 4 and audio[3] == pcm_of(3)
        assert h.leg.jitter_buffer.stats.lost == 1 and h.leg.jitter_buffer.stats.concealed == 1
        await trio.sleep(0.2)
        h.poll(10)
        assert len(h.sink.audio()) == 4  # nothing invented for the pause


# -- rtp_timeout ------------------------------------------------------------------------


async def test_timeout_without_media_is_call_hangup(harness_factory: Any) -> None:
    with trio.fail_after(5):
        t0 = trio.current_time()
        h = await harness_factory(timeout_s=0.2)
        await wait_until(lambda: bool(h.reader_result))
        assert h.reader_result == ["call_hangup"]
        assert 0.19 <= trio.current_time() - t0 < 0.5


async def test_timeout_counts_from_the_last_accepted_packet(
    harness_factory: Any, open_peer: Any
) -> None:
    with trio.fail_after(5):
        h = await harness_factory(timeout_s=0.25, latch_packets=2)
        a, stranger = await open_peer(), await open_peer()
        start = trio.current_time()
        for n in range(30):  # 0.6 s of media: longer than the timeout
            await trio.sleep_until(start + n * 0.02)
            await a.send_ulaw(ulaw_frame(n), h.addr)
        last = trio.current_time()
        assert not h.reader_result
        # Garbage and foreign RTP are no media: they do not keep the stream alive.
        for n in range(30):
            await stranger.send_ulaw(ulaw_frame(n), h.addr)
            await stranger.send_raw(b"garbage!" * 3, h.addr)
            await trio.sleep(0.01)
        await wait_until(lambda: bool(h.reader_result))
        assert h.reader_result == ["call_hangup"]
        assert 0.24 <= trio.current_time() - last < 0.45
        assert h.leg.malformed == len(h.bad) > 10


# -- bad input --------------------------------------------------------------------------


async def test_garbage_is_counted_and_ignored(harness_factory: Any, open_peer: Any) -> None:
    with trio.fail_after(5):
        h = await harness_factory(latch_packets=2)
        a = await open_peer()
        await send_frames(a, h.addr, range(2))
        await wait_until(lambda: h.leg.latched == a.address)
        garbage = [
            b"",
            b"hello",
            bytes(20),  # version 0
            b"\x8f" + bytes(15),  # 15 CSRCs announced, 3 bytes of them
            b"\x90\x00" + bytes(10),  # X bit, no extension header
            b"\xa0\x00" + bytes(10) + b"\x00",  # P bit, pad count 0
            b"\x80\x65" + bytes(10) + b"\x01",  # telephone-event payload of 1 byte
        ]
        for g in garbage:
            await a.send_raw(g, h.addr)
        # An RTCP receiver report (RFC 5761 multiplexing) is not garbage: counted apart.
        await a.send_raw(b"\x80\xc9\x00\x01" + bytes(4), h.addr)
        await send_frames(a, h.addr, range(2, 4))
        await wait_until(lambda: h.leg.jitter_buffer.stats.received == 3)
        assert h.leg.malformed == len(garbage) == len(h.bad)
        assert h.leg.jitter_counters()["rtp_rtcp"] == 1
        assert not h.reader_result  # the stream goes on
        assert h.sink.audio() == [pcm_of(n) for n in range(1, 4)]


# -- DTMF -------------------------------------------------------------------------------


async def test_rfc4733_in_one_dtmf_per_event(harness_factory: Any, open_peer: Any) -> None:
    with trio.fail_after(5):
        h = await harness_factory(latch_packets=2)
        a = await open_peer()
        await send_frames(a, h.addr, range(2))
        await wait_until(lambda: h.leg.latched == a.address)
        await a.send_dtmf("5", h.addr, 100)  # 5 updates + 3 end packets
        await a.send_dtmf("#", h.addr, 60)
        await wait_until(lambda: len(h.sink.dtmf()) == 2)
        await trio.sleep(0.02)
        assert h.sink.dtmf() == [Dtmf("5", 100), Dtmf("#", 60)]
        assert h.leg.dtmf_received == 2


async def test_rfc4733_out_is_paced_one_packet_per_send_audio(
    harness_factory: Any, open_peer: Any
) -> None:
    with trio.fail_after(5):
        peer = await open_peer()
        h = await harness_factory(remote=peer.address)
        got: list[bytes] = []

        async def drain(expected: int) -> None:
            with trio.fail_after(1):
                while len(got) < expected:
                    got.append((await peer.sock.recvfrom(2048))[0])

        h.leg.send_audio(pcm_of(0))
        await drain(1)
        ts0 = struct.unpack_from("!I", got[0], 4)[0]
        assert h.leg.send_event(Dtmf("7", 100)) is True  # m = 5 updates of 20 ms
        for k in range(5):
            h.leg.send_audio(pcm_of(k + 1))
            await drain(2 + k)
            await trio.sleep(0.01)
            assert len(got) == 2 + k  # exactly one packet per tick, instead of audio
            assert got[-1][1] & 0x7F == 101
        h.leg.send_audio(pcm_of(6))  # tick m: the three end packets, then audio
        await drain(10)
        ends, audio = got[6:9], got[9]
        assert all(p[1] == 101 and p[13] & 0x80 for p in ends)
        assert audio[1] & 0x7F == 0 and audio[12:] == ulaw_frame(6)
        # All event packets carry the event's start timestamp (the next audio slot);
        # the audio after it is stamped m ptimes later (RFC 4733 §2.5.1.4).
        event_ts = {struct.unpack_from("!I", p, 4)[0] for p in got[1:9]}
        assert event_ts == {ts0 + 160}
        assert struct.unpack_from("!I", audio, 4)[0] == ts0 + 160 + 5 * 160
        seqs = [struct.unpack_from("!H", p, 2)[0] for p in got]
        assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(10)]
        decoder = RtpSession("pcmu")
        digits = [e for p in got for e in decoder.receive(p) if isinstance(e, Dtmf)]
        assert digits == [Dtmf("7", 100)]
        assert h.leg.dtmf_sent == 1


async def test_two_digits_queue_back_to_back(harness_factory: Any, open_peer: Any) -> None:
    with trio.fail_after(5):
        peer = await open_peer()
        h = await harness_factory(remote=peer.address)
        assert h.leg.send_event(Dtmf("1", 40))  # m = 2
        assert h.leg.send_event(Dtmf("2", 40))
        for k in range(5):
            h.leg.send_audio(pcm_of(k))
        got: list[bytes] = []
        with trio.fail_after(1):
            # tick 0,1: "1" updates; tick 2: "1" ends + "2" update; tick 3: "2" update;
            # tick 4: "2" ends + audio.
            while len(got) < 2 + 3 + 2 + 3 + 1:
                got.append((await peer.sock.recvfrom(2048))[0])
        decoder = RtpSession("pcmu")
        digits = [e for p in got for e in decoder.receive(p) if isinstance(e, Dtmf)]
        assert digits == [Dtmf("1", 40), Dtmf("2", 40)]
        assert got[-1][1] & 0x7F == 0


async def test_other_events_cannot_be_said(harness_factory: Any) -> None:
    from bridge.dialects import Clear, Mark

    h = await harness_factory()
    assert h.leg.send_event(Mark("m")) is False
    assert h.leg.send_event(Clear()) is False


# -- sending and ptime ------------------------------------------------------------------


async def test_wire_ptime_longer_than_the_tick_repacketises(
    harness_factory: Any, open_peer: Any
) -> None:
    with trio.fail_after(5):
        peer = await open_peer()
        h = await harness_factory(remote=peer.address, session=RtpSession("pcmu", ptime_ms=40))
        assert h.leg.tick_ms == 40
        h2 = await harness_factory(
            remote=peer.address, session=RtpSession("pcmu", ptime_ms=40), tick_ms=20
        )
        h2.leg.send_audio(pcm_of(0))
        await trio.sleep(0.02)
        assert h2.leg.packets_sent == 0
        h2.leg.send_audio(pcm_of(1))
        with trio.fail_after(1):
            packet, _ = await peer.sock.recvfrom(2048)
        assert packet[12:] == ulaw_frame(0) + ulaw_frame(1)
        assert h.leg.packets_sent == 0


async def test_a_short_frame_goes_as_a_short_packet_at_once(
    harness_factory: Any, open_peer: Any
) -> None:
    """The playout trims standing latency by sending one frame a few ms short. It goes
    at once as a short packet (RFC 3551 §4.2), its timestamp step its own samples, and
    the next frame as a whole packet at once: held to fill a packet instead, it (and
    every packet after it) waited a tick, a standing +15-20 ms the quality rig saw."""
    with trio.fail_after(5):
        peer = await open_peer()
        h = await harness_factory(remote=peer.address)
        cut = 40  # 5 ms at 8 kHz
        h.leg.send_audio(pcm_of(0)[: 2 * (160 - cut)])
        with trio.fail_after(1):
            first, _ = await peer.sock.recvfrom(2048)
        assert first[12:] == ulaw_frame(0)[: 160 - cut]
        h.leg.send_audio(pcm_of(1))
        with trio.fail_after(1):
            second, _ = await peer.sock.recvfrom(2048)
        assert second[12:] == ulaw_frame(1)
        ts = [struct.unpack("!I", p[4:8])[0] for p in (first, second)]
        assert (ts[1] - ts[0]) & 0xFFFFFFFF == 160 - cut
        assert h.leg.packets_sent == 2


async def test_l16_is_big_endian_on_the_wire(harness_factory: Any, open_peer: Any) -> None:
    with trio.fail_after(5):
        peer = await open_peer("l16", 16000)
        h = await harness_factory(
            remote=peer.address, session=RtpSession("l16", 16000), latch_packets=1
        )
        assert h.leg.sample_rate == 16000
        pcm = struct.pack("<320h", *range(320))  # 20 ms at 16 kHz
        h.leg.send_audio(pcm)
        with trio.fail_after(1):
            packet, _ = await peer.sock.recvfrom(4096)
        assert packet[12:] == struct.pack(">320h", *range(320))  # RFC 3551 §4.5.11
        await peer.send_pcm(pcm, h.addr)
        await peer.send_pcm(pcm, h.addr)
        await peer.send_pcm(pcm, h.addr)
        await wait_until(lambda: h.leg.jitter_buffer.stats.received == 3)
        assert h.sink.audio() == [pcm, pcm, pcm]


# -- close ------------------------------------------------------------------------------


async def test_aclose_releases_the_port_once_and_closes_the_socket(
    harness_factory: Any, open_peer: Any
) -> None:
    with trio.fail_after(5):
        peer = await open_peer()
        h = await harness_factory(remote=peer.address)
        h.leg.send_audio(pcm_of(0))
        sock = h.leg.socket
        assert sock is not None
        await trio.sleep(0.01)
        # Closed while the reader runs (the daemon's pool shutting down): it ends quietly.
        await h.leg.aclose("api_request")
        await wait_until(lambda: bool(h.reader_result))
        assert h.reader_result == ["call_hangup"]
        await h.leg.aclose("api_request")
        assert h.released == [1]
        assert sock.fileno() == -1 and h.leg.socket is None and h.leg.closed
        h.leg.send_audio(pcm_of(1))  # after close: nothing, no error
        assert h.leg.send_event(Dtmf("1")) is False
        assert h.leg.packets_sent == 1


async def test_closed_before_the_reader_starts(harness_factory: Any) -> None:
    with trio.fail_after(5):
        sock = await open_udp_socket("127.0.0.1", 0)
        leg = RtpCallLeg(sock=sock, session=RtpSession("pcma"), call_id="c")
        owned = leg.socket
        assert sock.fileno() == -1 and owned is not None  # the leg took the descriptor over
        await leg.aclose("shutdown")
        assert owned.fileno() == -1  # no on_release: closing is the leg's own business
        assert await leg.serve_reader(Sink()) == "call_hangup"
        assert leg.metadata()["codec"] == "pcma"
