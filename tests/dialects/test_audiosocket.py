"""AudioSocket (PROTOCOLS.md §2): golden frames, both roles, chunking, the kind trap, fuzzing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge._errors import DialectError, UnsupportedMessage
from bridge.dialects._audiosocket import (
    AUDIO_KIND_RATES,
    HANGUP_FRAME,
    AudioSocketApp,
    AudioSocketPlatform,
    audio_kind,
    error_reason,
)
from bridge.dialects._events import (
    Audio,
    Clear,
    Cleared,
    Connected,
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
from bridge.media import Frame

CALL = "40325ec2-5efd-4bd3-805f-53576e581d13"
UUID_FRAME = bytes.fromhex("01001040325ec25efd4bd3805f53576e581d13")
EVENT_TYPES = (
    Connected,
    Start,
    Audio,
    Dtmf,
    Mark,
    Clear,
    Cleared,
    Drained,
    StatsRequest,
    Stats,
    Hangup,
    Stop,
)
RATES = sorted(AUDIO_KIND_RATES.values())
FUZZ = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def frame(kind: int, payload: bytes = b"") -> bytes:
    return bytes((kind, len(payload) >> 8, len(payload) & 0xFF)) + payload


def app_with_uuid() -> AudioSocketApp:
    app = AudioSocketApp()
    app.receive(UUID_FRAME)
    return app


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


# ---------------------------------------------------------------------------- golden


def test_golden_frames() -> None:
    assert bytes.fromhex("000000") == HANGUP_FRAME
    platform = AudioSocketPlatform(CALL)
    assert platform.send(platform.start_event()) == [UUID_FRAME]
    pcm16k = bytes(range(256)) * 2 + bytes(128)  # 640 B = 20 ms at 16 kHz
    assert platform.send(Audio(Frame(pcm16k, 16000))) == [bytes.fromhex("120280") + pcm16k]
    assert AudioSocketApp(16000).send_audio(pcm16k) == bytes.fromhex("120280") + pcm16k
    pcm8k = bytes(320)
    assert AudioSocketApp().send_audio(pcm8k) == bytes.fromhex("100140") + pcm8k
    assert platform.send(Dtmf("5")) == [bytes.fromhex("03000135")]
    assert platform.send(Dtmf("#")) == [bytes.fromhex("03000123")]


def test_kind_table_0x11_is_12k_and_0x12_is_16k() -> None:
    assert AUDIO_KIND_RATES[0x11] == 12000
    assert AUDIO_KIND_RATES[0x12] == 16000
    assert [
        audio_kind(r) for r in (8000, 12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000)
    ] == list(range(0x10, 0x19))
    with pytest.raises(ValueError):
        audio_kind(11025)


# ------------------------------------------------------------------------- app receive


def test_app_receives_a_call() -> None:
    app = AudioSocketApp()
    assert app.receive(UUID_FRAME) == [Start(CALL, CALL, sample_rate=8000, encoding="slin")]
    assert app.uuid == CALL
    assert app.receive(frame(0x10, b"\x01\x02" * 160)) == [Audio(Frame(b"\x01\x02" * 160, 8000))]
    assert app.receive(frame(0x12, b"\x03\x04" * 320)) == [Audio(Frame(b"\x03\x04" * 320, 16000))]
    assert app.sample_rate == 16000  # follows the last audio kind
    assert app.send_audio(b"\x00\x00")[0] == 0x12
    assert app.receive(frame(0x11, b"\x00\x00")) == [Audio(Frame(b"\x00\x00", 12000))]
    assert app.sample_rate == 12000
    assert app.receive(frame(0x03, b"7")) == [Dtmf("7")]
    assert app.receive(frame(0x03, b"d")) == [Dtmf("D")]
    assert app.receive(frame(0x02, b"\x00" * 10)) == []  # "silence": ignored
    assert app.receive(frame(0x10)) == []  # zero-length audio: ignored
    assert app.receive(frame(0x00)) == [Stop("call_hangup")]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "error"),
        (b"\x01", "error 0x01: caller_hangup"),
        (b"\x02", "error 0x02: frame_forwarding"),
        (b"\x04", "error 0x04: memory"),
        (b"\x07", "error 0x07: caller_hangup, frame_forwarding, memory"),
        (b"\x00", "error 0x00: no flags"),
        (b"\x81", "error 0x81: caller_hangup, 0x80"),
    ],
)
def test_app_error_frame_stops_with_reason(payload: bytes, reason: str) -> None:
    app = app_with_uuid()
    assert app.receive(frame(0xFF, payload)) == [Stop(reason)]
    assert app.error_code == (payload[0] if payload else None)
    assert error_reason(app.error_code) == reason


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (frame(0x10, b"\x00\x00"), "before the UUID"),
        (frame(0x03, b"1"), "expected the UUID"),
        (frame(0x00), "expected the UUID"),
        (frame(0x01, b"\x00" * 15), "expected 16"),
        (UUID_FRAME + UUID_FRAME, "second UUID"),
        (UUID_FRAME + frame(0x03, b"12"), "expected 1"),
        (UUID_FRAME + frame(0x03, b"x"), "not one of"),
        (UUID_FRAME + frame(0x03), "expected 1"),
        (UUID_FRAME + frame(0x10, b"\x00\x00\x00"), "whole PCM16"),
        (UUID_FRAME + frame(0x04, b""), "unknown frame kind 0x04"),
        (UUID_FRAME + frame(0x19, b"\x00\x00"), "unknown frame kind 0x19"),
        (UUID_FRAME + bytes.fromhex("10ffff"), "over the limit"),
    ],
)
def test_app_rejects(data: bytes, match: str) -> None:
    with pytest.raises(DialectError, match=match) as info:
        AudioSocketApp().receive(data)
    assert info.value.dialect == "audiosocket"


def test_oversize_is_rejected_on_the_header_alone() -> None:
    app = AudioSocketApp(max_payload_bytes=100)
    app.receive(UUID_FRAME)
    assert app.receive(frame(0x10, bytes(100))) != []
    with pytest.raises(DialectError, match="101 payload bytes"):
        app.receive(bytes.fromhex("100065"))  # no payload yet


def test_failed_connection_stays_failed() -> None:
    app = AudioSocketApp()
    with pytest.raises(DialectError):
        app.receive(frame(0x10, b"\x00\x00"))
    with pytest.raises(DialectError, match="already failed"):
        app.receive(UUID_FRAME)


def test_text_is_not_audiosocket() -> None:
    with pytest.raises(DialectError, match="text"):
        AudioSocketApp().receive("hello")


def test_partial_and_coalesced_chunks() -> None:
    app = AudioSocketApp()
    stream = (
        UUID_FRAME
        + frame(0x10, b"\x01\x00" * 160)
        + frame(0x03, b"1")
        + frame(0x12, b"\x02\x00" * 320)
    )
    events: list[Event] = []
    for i in range(len(stream)):  # one byte at a time
        events += app.receive(stream[i : i + 1])
    assert app.buffered == 0
    assert events == [
        Start(CALL, CALL, sample_rate=8000, encoding="slin"),
        Audio(Frame(b"\x01\x00" * 160, 8000)),
        Dtmf("1"),
        Audio(Frame(b"\x02\x00" * 320, 16000)),
    ]
    assert AudioSocketApp().receive(stream) == events  # all at once
    app = AudioSocketApp()
    assert app.receive(stream[:5]) == []
    assert app.buffered == 5
    assert app.receive(bytearray(stream[5:])) == events  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- app send


def test_app_send() -> None:
    app = AudioSocketApp()
    assert app.send(Hangup()) == [HANGUP_FRAME]
    assert app.send(Stop("app_hangup")) == [HANGUP_FRAME]
    for event in (
        Dtmf("1"),
        Mark("m"),
        Clear(),
        Start(CALL, CALL),
        Cleared(),
        Drained(),
        Stats(1, 1),
        StatsRequest(),
    ):
        assert app.send(event) == []
    assert app.send(Audio(Frame(b"", 8000))) == []
    assert app.send_audio(b"") == b""
    assert app.send(Audio(Frame(b"\x01\x00", 48000))) == [frame(0x16, b"\x01\x00")]
    with pytest.raises(ValueError):
        app.send(Audio(Frame(b"\x01\x00", 11025)))
    with pytest.raises(ValueError):
        app.send_audio(b"\x01")


def test_app_send_splits_pcm_beyond_the_length_field() -> None:
    pcm = bytes(range(256)) * 300  # 76800 B > 65535
    data = AudioSocketApp().send_audio(pcm)
    platform = AudioSocketPlatform(CALL, max_payload_bytes=0xFFFF)
    events = platform.receive(data)
    assert [len(e.frame.pcm) for e in events if isinstance(e, Audio)] == [0xFFFE, len(pcm) - 0xFFFE]
    assert b"".join(e.frame.pcm for e in events if isinstance(e, Audio)) == pcm


any_event = st.one_of(
    st.builds(
        lambda pcm, rate: Audio(Frame(pcm, rate)),
        st.binary(max_size=2000).map(lambda b: b[: len(b) & ~1]),
        st.sampled_from(RATES),
    ),
    st.sampled_from("0123456789*#ABCD").map(Dtmf),
    st.text(max_size=5).map(Mark),
    st.sampled_from(
        [Clear(), Cleared(), Drained(), Hangup(), StatsRequest(), Connected(), Stats(1, 2)]
    ),
    st.builds(Stop, st.none() | st.text(max_size=5)),
    st.builds(Start, st.just(CALL), st.just(CALL)),
)


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        assert len(data) >= 3
        n = (data[1] << 8) | data[2]
        out.append((data[0], data[3 : 3 + n]))
        assert len(data) >= 3 + n
        data = data[3 + n :]
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(any_event, max_size=8), st.sampled_from(RATES))
def test_app_never_sends_what_asterisk_rejects(events: list[Event], rate: int) -> None:
    """Asterisk ends the session on any server kind but 0x00/0x10-0x18 or empty audio."""
    app = AudioSocketApp(rate)
    out = [m for e in events for m in app.send(e)]
    out.append(app.send_audio(b"\x00\x00" * 80))
    for message in out:
        assert isinstance(message, bytes)
        for kind, payload in parse_frames(message):
            assert kind == 0x00 or 0x10 <= kind <= 0x18
            if kind:
                assert payload
            else:
                assert payload == b""
        # ... and real-Asterisk emulation accepts every one of them.
        AudioSocketPlatform(CALL).receive(message)


# ------------------------------------------------------------------------------ platform


def test_platform_role() -> None:
    platform = AudioSocketPlatform(CALL.upper(), 16000)
    assert platform.call_uuid == CALL
    assert platform.send(Stop("call_hangup")) == []  # Asterisk just closes TCP
    assert platform.send(Mark("m")) == []
    assert platform.send_audio(b"\x01\x00") == frame(0x12, b"\x01\x00")
    assert platform.receive(frame(0x10, b"\x01\x00")) == [Audio(Frame(b"\x01\x00", 8000))]
    assert platform.receive(HANGUP_FRAME) == [Hangup()]
    with pytest.raises(DialectError, match="not a UUID"):
        platform.send(Start("not-a-uuid", "c"))
    with pytest.raises(DialectError):
        AudioSocketPlatform("nope")
    with pytest.raises(ValueError):
        platform.send(Dtmf("E"))


@pytest.mark.parametrize("kind", [0x01, 0x02, 0x03, 0xFF])
def test_platform_rejects_what_asterisk_rejects(kind: int) -> None:
    with pytest.raises(UnsupportedMessage, match=f"0x{kind:02x}"):
        AudioSocketPlatform(CALL).receive(frame(kind, b"1"))


def test_platform_rejects_empty_audio_and_unknown_kinds() -> None:
    with pytest.raises(DialectError, match="empty audio"):
        AudioSocketPlatform(CALL).receive(frame(0x12))
    with pytest.raises(DialectError, match="unknown"):
        AudioSocketPlatform(CALL).receive(frame(0x42))
    with pytest.raises(DialectError, match="whole PCM16"):
        AudioSocketPlatform(CALL).receive(frame(0x10, b"\x00"))


# -------------------------------------------------------------------------- round trips

pcm_lists = st.lists(
    st.binary(min_size=2, max_size=700).map(lambda b: b[: len(b) & ~1]), max_size=6
)


@settings(max_examples=250, deadline=None)
@given(
    st.sampled_from(RATES),
    pcm_lists,
    st.lists(st.sampled_from("0123456789*#ABCD"), max_size=4),
    st.lists(st.integers(0, 10**6), max_size=12),
)
def test_platform_to_app_round_trip_any_chunking(
    rate: int, pcms: list[bytes], digits: list[str], cuts: list[int]
) -> None:
    platform = AudioSocketPlatform(CALL, rate)
    sent: list[Event] = [platform.start_event()]
    sent += [Audio(Frame(p, rate)) for p in pcms]
    sent += [Dtmf(d) for d in digits]
    wire = b"".join(m for e in sent for m in platform.send(e) if isinstance(m, bytes))
    app = AudioSocketApp()
    received: list[Event] = []
    for chunk in split(wire, cuts):
        received += app.receive(chunk)
    assert received[0] == Start(CALL, CALL, sample_rate=8000, encoding="slin")
    assert received[1:] == sent[1:]
    assert app.buffered == 0
    if pcms:
        assert app.sample_rate == rate


@settings(max_examples=250, deadline=None)
@given(
    st.sampled_from(RATES), pcm_lists, st.booleans(), st.lists(st.integers(0, 10**6), max_size=12)
)
def test_app_to_platform_round_trip_any_chunking(
    rate: int, pcms: list[bytes], hangup: bool, cuts: list[int]
) -> None:
    app = AudioSocketApp(rate)
    wire = b"".join(app.send_audio(p) for p in pcms) + (HANGUP_FRAME if hangup else b"")
    assert app.send(Hangup()) == [HANGUP_FRAME]
    platform = AudioSocketPlatform(CALL)
    received: list[Event] = []
    for chunk in split(wire, cuts):
        received += platform.receive(chunk)
    assert received == [Audio(Frame(p, rate)) for p in pcms] + ([Hangup()] if hangup else [])


# ------------------------------------------------------------------------------ fuzzing

# Cheap strategies on purpose (generation dominates the cost of an example): raw bytes,
# and a few frames with interesting kinds, with or without the UUID frame first.
kinds = st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x10, 0x11, 0x12, 0x18, 0x19, 0x42, 0xFF])
frames = st.builds(frame, kinds, st.binary(max_size=24))
streams = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda a, b: a + b, frames, frames),
    st.builds(lambda a, b: UUID_FRAME + a + b, frames, frames),
)


def feed(conn: AudioSocketApp | AudioSocketPlatform, chunks: list[bytes]) -> None:
    for chunk in chunks:
        try:
            events = conn.receive(chunk)
        except DialectError as exc:
            assert exc.dialect == "audiosocket" and exc.message
            return
        assert all(isinstance(e, EVENT_TYPES) for e in events)


@FUZZ
@given(streams, st.integers(0, 200), st.integers(0, 200))
def test_fuzz_decoders_both_roles(data: bytes, cut1: int, cut2: int) -> None:
    """Any byte stream, whole or in pieces: events or a DialectError, never anything else."""
    chunks = split(data, [cut1, cut2])
    feed(AudioSocketApp(max_payload_bytes=16), chunks)
    feed(AudioSocketApp(), [data])
    feed(AudioSocketPlatform(CALL, max_payload_bytes=16), chunks)
    feed(AudioSocketPlatform(CALL), [data])


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=10))
def test_fuzz_text(text: str) -> None:
    for conn in (AudioSocketApp(), AudioSocketPlatform(CALL)):
        with pytest.raises(DialectError):
            conn.receive(text)
