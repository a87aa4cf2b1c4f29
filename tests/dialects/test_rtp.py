"""RTP (PROTOCOLS.md §7, RFC 3550/3551/4733): golden packets, validation, DTMF, fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge._errors import DialectError
from bridge.dialects._events import (
    Audio,
    Clear,
    Connected,
    Dtmf,
    Event,
    Hangup,
    Mark,
    Start,
    Stop,
)
from bridge.dialects._rtp import RtpApp, RtpPlatform, RtpSession
from bridge.media import Frame, audioop

SSRC = 0x12345678
FUZZ = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sender(codec: str = "pcmu", rate: int = 8000, **kw: int) -> RtpSession:
    return RtpSession(codec, rate, ssrc=SSRC, initial_seq=1000, initial_timestamp=160000, **kw)  # type: ignore[arg-type]


def packet(
    pt: int = 0,
    seq: int = 1,
    ts: int = 0,
    ssrc: int = SSRC,
    payload: bytes = b"",
    *,
    b0: int = 0x80,
    marker: bool = False,
) -> bytes:
    return struct.pack("!BBHII", b0, pt | (0x80 if marker else 0), seq, ts, ssrc) + payload


def event_packet(
    code: int, end: bool, duration: int, ts: int, seq: int = 1, ssrc: int = SSRC, pt: int = 101
) -> bytes:
    return packet(pt, seq, ts, ssrc, struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration))


# ---------------------------------------------------------------------------- golden


def test_pcmu_packet_golden() -> None:
    session = sender()
    first = session.send_audio(bytes(320))
    # V=2, M=1 PT=0, seq 1000, ts 160000, SSRC; payload: 160 x u-law silence (0xFF).
    assert first == bytes.fromhex("808003e80002710012345678") + b"\xff" * 160
    second = session.send_audio(bytes(320))
    assert second[:12] == bytes.fromhex("800003e9000271a012345678")
    session.start_talkspurt()
    assert session.send_audio(b"") == b""  # nothing to send, nothing consumed
    assert session.send_audio(bytes(2))[:2] == b"\x80\x80"
    assert (session.next_seq, session.next_timestamp) == (1003, 160000 + 160 + 160 + 1)


def test_pcma_and_l16_golden() -> None:
    assert sender("pcma").send_audio(bytes(4)) == bytes.fromhex("808803e80002710012345678d5d5")
    l16 = sender("l16", 16000)
    # L16 is big-endian on the wire (RFC 3551 §4.5.11); PT 96 by default.
    assert l16.send_audio(b"\x01\x02\x03\x04") == bytes.fromhex("80e003e8000271001234567802010403")
    assert l16.next_timestamp == 160002


def test_decodes_a_real_looking_pcmu_packet() -> None:
    session = RtpSession("pcmu")
    data = bytes.fromhex("80001f400000a0a0deadbeef") + bytes([0x00, 0x80, 0xFF, 0x7F])
    [audio] = session.receive(data)
    assert audio == Audio(
        Frame(bytes.fromhex("84827c7d00000000"), 8000), seq=0x1F40, timestamp=0xA0A0
    )
    assert (session.last_ssrc, session.last_seq, session.last_timestamp) == (
        0xDEADBEEF,
        0x1F40,
        0xA0A0,
    )


def test_decodes_pcma_and_l16() -> None:
    [audio] = RtpSession("pcma").receive(packet(8, payload=bytes([0xD5, 0x55])))
    assert isinstance(audio, Audio) and audio.frame.pcm == bytes.fromhex("0800f8ff")
    [audio] = RtpSession("l16", 16000).receive(packet(96, payload=b"\x02\x01"))
    assert isinstance(audio, Audio) and audio.frame == Frame(b"\x01\x02", 16000)


def test_sequence_and_timestamp_wrap() -> None:
    session = RtpSession("pcmu", initial_seq=0xFFFF, initial_timestamp=0xFFFFFFF0, ssrc=1)
    a = session.send_audio(bytes(320))
    b = session.send_audio(bytes(320))
    assert struct.unpack("!HI", a[2:8]) == (0xFFFF, 0xFFFFFFF0)
    assert struct.unpack("!HI", b[2:8]) == (0, 0x90)


def test_constructor_defaults_and_checks() -> None:
    assert RtpSession("pcmu").payload_type == 0
    assert RtpSession("pcma").payload_type == 8
    assert RtpSession("l16", 16000).payload_type == 96
    assert RtpPlatform is RtpSession and RtpApp is RtpSession
    a, b = RtpSession("pcmu"), RtpSession("pcmu")
    assert (a.ssrc, a.next_seq, a.next_timestamp) != (
        b.ssrc,
        b.next_seq,
        b.next_timestamp,
    )  # random
    for bad in (
        lambda: RtpSession("g729"),  # type: ignore[arg-type]
        lambda: RtpSession("pcmu", 16000),
        lambda: RtpSession("pcmu", payload_type=128),
        lambda: RtpSession("pcmu", payload_type=101),
        lambda: RtpSession("l16", 0),
    ):
        with pytest.raises(ValueError):
            bad()  # type: ignore[no-untyped-call]


def test_send_other_events() -> None:
    session = sender()
    for event in (
        Start("a", "b"),
        Stop(),
        Hangup(),
        Mark("m"),
        Clear(),
        Connected(),
        Audio(Frame(b"", 8000)),
    ):
        assert session.send(event) == []
    assert session.send(Audio(Frame(bytes(320), 8000))) == [sender().send_audio(bytes(320))]
    with pytest.raises(ValueError):
        session.send(Audio(Frame(bytes(320), 16000)))
    with pytest.raises(ValueError):
        session.send_audio(b"\x00")
    with pytest.raises(ValueError):
        session.send(Dtmf("E"))
    assert sender(dtmf_payload_type=None).send(Dtmf("1")) == []  # type: ignore[arg-type]


# ------------------------------------------------------------------------ validation


def test_csrc_extension_and_padding_are_skipped() -> None:
    payload = bytes(range(160))
    data = (
        struct.pack("!BBHII", 0xB2, 0x00, 7, 8, SSRC)  # V=2 P=1 X=1 CC=2
        + struct.pack("!II", 1, 2)  # two CSRCs
        + struct.pack("!HH", 0xBEDE, 1)
        + b"\xaa\xbb\xcc\xdd"  # one-word extension
        + payload
        + b"\x00\x00\x03"  # 3 bytes of padding
    )
    [audio] = RtpSession("pcmu").receive(data)
    assert isinstance(audio, Audio) and audio.frame.pcm == audioop.ulaw2lin(payload, 2)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "shorter than the 12-byte"),
        (packet()[:11], "shorter than the 12-byte"),
        (packet(b0=0x40), "version 1"),
        (packet(b0=0x00), "version 0"),
        (packet(b0=0x8F, payload=bytes(20)), "CSRC count 15"),
        (packet(b0=0x90, payload=b"\x00\x00"), "extension header is truncated"),
        (packet(b0=0x90, payload=b"\x00\x00\x00\x05" + bytes(8)), "extension of 5 words"),
        (packet(b0=0xA0, payload=b"\x01\x00"), "pad count is 0"),
        (packet(b0=0xA0, payload=b"\x01\x09"), "pad count 9"),
        (packet(b0=0xA0), "pad count"),
        (packet(pt=101, payload=b"\x01\x02"), "telephone-event payload of 2 bytes"),
        ("text", "text message"),
    ],
)
def test_rejects_malformed_packets(data: bytes | str, match: str) -> None:
    with pytest.raises(DialectError, match=match) as info:
        RtpSession("pcmu").receive(data)
    assert info.value.dialect == "rtp"


def test_l16_odd_payload_is_rejected() -> None:
    with pytest.raises(DialectError, match="L16 payload of 3 bytes"):
        RtpSession("l16", 16000).receive(packet(96, payload=b"\x00\x01\x02"))


def test_unknown_payload_types_and_rtcp_are_counted_and_ignored() -> None:
    session = RtpSession("pcmu")
    assert session.receive(packet(13, payload=b"\x40")) == []  # comfort noise
    assert session.receive(packet(8, payload=b"\xd5")) == []  # PCMA on a PCMU session
    assert (session.unknown_payload_types, session.first_unknown_payload_type) == (2, 13)
    assert session.receive(bytes.fromhex("80c90001deadbeef")) == []  # RTCP RR, 8 bytes
    assert session.receive(bytes.fromhex("80c80006") + bytes(24)) == []  # RTCP SR
    assert session.receive(bytes.fromhex("81c90007") + bytes(28)) == []  # RR with a block
    assert session.rtcp_packets == 3
    assert session.receive(packet(0)) == []  # empty audio payload
    assert session.last_seq == 1


# ------------------------------------------------------------------------- RFC 4733


def test_rfc4733_train_golden() -> None:
    session = sender()
    session.send_audio(bytes(320))
    session.send_audio(bytes(320))
    train = session.send(Dtmf("5", 100))
    expected = [
        # V=2 | M+PT 101 | seq | ts = 160320 for all | SSRC | event 5, E/vol 10, duration
        "80e503ea0002724012345678050a00a0",  # M bit, 160
        "806503eb0002724012345678050a0140",  # 320
        "806503ec0002724012345678050a01e0",  # 480
        "806503ed0002724012345678050a0280",  # 640
        "806503ee0002724012345678050a0320",  # 800 = 100 ms
        "806503ef0002724012345678058a0320",  # E=1, three times, same duration
        "806503f00002724012345678058a0320",
        "806503f10002724012345678058a0320",
    ]
    assert [p.hex() for p in train if isinstance(p, bytes)] == expected
    # All share the start timestamp; M only on the first; the end x3 with one duration.
    assert train[0][1] == 0xE5 and all(p[1] == 0x65 for p in train[1:])
    # Audio resumes after the event, timestamps skipped past it, sequence continued.
    assert session.next_seq == 1010
    assert session.send_audio(bytes(320))[:8] == bytes.fromhex("800003f200027560")


def test_rfc4733_train_receives_as_one_digit() -> None:
    train = sender().send(Dtmf("#", 250))
    assert len(train) == 13 + 3
    receiver = RtpSession("pcmu")
    events = [e for p in train for e in receiver.receive(p)]
    assert events == [Dtmf("#", 260)]  # 13 whole 20 ms packets
    assert [e for p in train for e in receiver.receive(p)] == []  # a full replay: dropped


def test_end_duplicates_and_late_updates_are_dropped() -> None:
    receiver = RtpSession("pcmu")
    ts = 5000
    assert receiver.receive(event_packet(1, False, 160, ts)) == []
    assert receiver.receive(event_packet(1, False, 320, ts)) == []
    assert receiver.receive(event_packet(1, True, 480, ts)) == [Dtmf("1", 60)]
    assert receiver.receive(event_packet(1, True, 480, ts)) == []
    assert receiver.receive(event_packet(1, True, 480, ts)) == []
    assert receiver.receive(event_packet(1, False, 320, ts)) == []  # reordered update


def test_end_packets_only() -> None:
    receiver = RtpSession("pcmu")
    assert receiver.receive(event_packet(11, True, 800, 42)) == [Dtmf("#", 100)]
    assert receiver.receive(event_packet(11, True, 800, 42)) == []


def test_lost_end_is_closed_by_the_next_event() -> None:
    receiver = RtpSession("pcmu")
    assert receiver.receive(event_packet(2, False, 160, 1000)) == []
    assert receiver.receive(event_packet(2, False, 320, 1000)) == []
    # All three end packets lost; the next digit starts.
    assert receiver.receive(event_packet(3, False, 160, 4000)) == [Dtmf("2", 40)]
    assert receiver.receive(event_packet(3, True, 400, 4000)) == [Dtmf("3", 50)]
    assert receiver.receive(event_packet(2, True, 400, 1000)) == []  # a very late end


def test_lost_end_is_closed_by_audio_after_the_timeout() -> None:
    receiver = RtpSession("pcmu")
    pcmu = b"\xff" * 160
    assert receiver.receive(event_packet(4, False, 480, 1000)) == []
    # Audio within Asterisk's dtmftimeout (3000 samples past the event's end) waits ...
    assert len(receiver.receive(packet(0, 2, 1000 + 480 + 3000, payload=pcmu))) == 1
    # ... audio from another SSRC does not count ...
    assert len(receiver.receive(packet(0, 3, 1000 + 480 + 3160, ssrc=7, payload=pcmu))) == 1
    # ... and audio beyond it reports the digit first.
    events = receiver.receive(packet(0, 4, 1000 + 480 + 3160, payload=pcmu))
    assert events[0] == Dtmf("4", 60) and isinstance(events[1], Audio)
    assert receiver.receive(event_packet(4, True, 800, 1000)) == []


def test_flush_reports_an_open_event_once() -> None:
    receiver = RtpSession("pcmu")
    assert receiver.flush_dtmf() == []
    receiver.receive(event_packet(12, False, 160, 9))
    assert receiver.flush_dtmf() == [Dtmf("A", 20)]
    assert receiver.flush_dtmf() == []
    assert receiver.receive(event_packet(12, True, 320, 9)) == []


def test_long_event_segments_are_one_digit() -> None:
    receiver = RtpSession("pcmu")
    t0 = 0xFFFF0000  # and across the timestamp wrap
    assert receiver.receive(event_packet(1, False, 30000, t0)) == []
    assert receiver.receive(event_packet(1, False, 0xFFFF, t0)) == []
    t1 = (t0 + 0xFFFF) & 0xFFFFFFFF
    assert receiver.receive(event_packet(1, False, 160, t1)) == []
    assert receiver.receive(event_packet(1, True, 8000, t1)) == [Dtmf("1", (0xFFFF + 8000) // 8)]
    assert receiver.receive(event_packet(1, False, 0xFFFF, t0)) == []  # a late first-segment packet


def test_flash_and_other_events_are_ignored() -> None:
    receiver = RtpSession("pcmu")
    assert receiver.receive(event_packet(16, True, 800, 1)) == []
    assert receiver.receive(event_packet(70, True, 800, 2)) == []
    assert receiver.flush_dtmf() == []


def test_two_ssrcs() -> None:
    receiver = RtpSession("pcmu")
    assert receiver.receive(event_packet(1, False, 160, 100, ssrc=1)) == []
    # Another source's event closes the open one too (a source switch mid-digit).
    assert receiver.receive(event_packet(2, True, 160, 100, ssrc=2)) == [
        Dtmf("1", 20),
        Dtmf("2", 20),
    ]


# ---------------------------------------------------------------------- round trips

pcm_bytes = st.binary(min_size=2, max_size=1000).map(lambda b: b[: len(b) & ~1])
DIGITS = "0123456789*#ABCD"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["pcmu", "pcma", "l16"]), st.lists(pcm_bytes, max_size=5))
def test_audio_round_trip(codec: str, pcms: list[bytes]) -> None:
    rate = 16000 if codec == "l16" else 8000
    tx = RtpSession(codec, rate)  # type: ignore[arg-type]
    rx = RtpSession(codec, rate)  # type: ignore[arg-type]
    seq, ts = tx.next_seq, tx.next_timestamp
    for pcm in pcms:
        [audio] = rx.receive(tx.send_audio(pcm))
        assert isinstance(audio, Audio)
        assert (audio.seq, audio.timestamp, audio.frame.sample_rate) == (seq, ts, rate)
        seq, ts = (seq + 1) & 0xFFFF, (ts + len(pcm) // 2) & 0xFFFFFFFF
        if codec == "l16":
            assert audio.frame.pcm == pcm
        else:  # G.711 is lossy once, then stable
            [again] = rx.receive(tx.send_audio(audio.frame.pcm))
            assert isinstance(again, Audio) and again.frame.pcm == audio.frame.pcm
            seq, ts = (seq + 1) & 0xFFFF, (ts + len(pcm) // 2) & 0xFFFFFFFF
        assert rx.last_ssrc == tx.ssrc


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(DIGITS), st.none() | st.integers(0, 9000)), min_size=1, max_size=4
    ),
    st.sampled_from([(8000, 20), (8000, 10), (16000, 20), (16000, 30)]),
)
def test_dtmf_round_trip(presses: list[tuple[str, int | None]], clock: tuple[int, int]) -> None:
    rate, ptime = clock
    tx = RtpSession("l16", rate, ptime_ms=ptime)
    rx = RtpSession("l16", rate, ptime_ms=ptime)
    step = rate * ptime // 1000
    expected = []
    received: list[Event] = []
    for digit, ms in presses:
        wanted = min(max((100 if ms is None else ms) * rate // 1000, step), 0xFFFF)
        m = min(-(-wanted // step), 0xFFFF // step)
        expected.append(Dtmf(digit, m * step * 1000 // rate))
        for p in tx.send(Dtmf(digit, ms)):
            received += rx.receive(p)
        received += rx.receive(tx.send_audio(bytes(2 * step)))[:-1]
    assert received == expected


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(DIGITS), st.integers(20, 600), st.data())
def test_any_order_and_duplication_of_a_train_gives_one_digit(
    digit: str, ms: int, data: st.DataObject
) -> None:
    train = RtpSession("pcmu").send(Dtmf(digit, ms))
    packets = [p for p in train if isinstance(p, bytes)]
    order = data.draw(st.lists(st.sampled_from(packets), min_size=1, max_size=3 * len(packets)))
    if not any(p[13] & 0x80 for p in order):  # no end packet arrived at all
        order.append(packets[-1])
    rx = RtpSession("pcmu")
    events = [e for p in order for e in rx.receive(p)] + rx.flush_dtmf()
    assert len(events) == 1
    assert isinstance(events[0], Dtmf) and events[0].digit == digit


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 160, 800, 0xFFFF, 0x1FFFE]),
            st.integers(0, 20),
            st.booleans(),
            st.sampled_from([0, 160, 800, 0xFFFF]),
            st.sampled_from([1, 2]),
        ),
        max_size=12,
    )
)
def test_at_most_one_digit_per_event_key(packets: list[tuple[int, int, bool, int, int]]) -> None:
    rx = RtpSession("pcmu")
    events: list[Event] = []
    for ts, code, end, duration, ssrc in packets:
        events += rx.receive(event_packet(code, end, duration, ts, ssrc=ssrc))
    events += rx.flush_dtmf()
    keys = {(ssrc, ts) for ts, code, _e, _d, ssrc in packets if code < 16}
    assert all(isinstance(e, Dtmf) for e in events)
    assert len(events) <= len(keys)


# -------------------------------------------------------------------------- fuzzing

headers = st.builds(
    lambda b0, pt, rest: bytes([b0, pt]) + rest,
    st.sampled_from([0x80, 0x81, 0x90, 0xA0, 0xB2, 0x9F, 0x40, 0xC0]) | st.integers(0, 255),
    st.sampled_from([0x00, 0x80, 0x08, 0x60, 0x65, 0xE5, 0x0D, 0xC8, 0xC9]) | st.integers(0, 255),
    st.binary(max_size=40),
)


@FUZZ
@given(st.one_of(st.binary(max_size=60), headers))
def test_fuzz_decoder_every_codec(data: bytes) -> None:
    """Any datagram: events or a DialectError, never anything else."""
    for session in (RtpSession("pcmu"), RtpSession("pcma"), RtpSession("l16", 16000)):
        try:
            events = session.receive(data)
        except DialectError as exc:
            assert exc.dialect == "rtp" and exc.message
            continue
        assert all(isinstance(e, Audio | Dtmf) for e in events)
