"""The ``audiosocket`` and ``rtp`` app-leg encapsulations over WebSocket (PROTOCOLS.md §0)."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge._errors import DialectError
from bridge.dialects._audiosocket import HANGUP_FRAME
from bridge.dialects._encapsulated import (
    STREAM_UUID_NAMESPACE,
    AudioSocketWsApp,
    AudioSocketWsPlatform,
    RtpWsApp,
    RtpWsPlatform,
    stream_uuid,
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
from bridge.dialects._rtp import RtpSession
from bridge.media import Frame

CALL = "40325ec2-5efd-4bd3-805f-53576e581d13"
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
FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Platform = AudioSocketWsPlatform | RtpWsPlatform
App = AudioSocketWsApp | RtpWsApp


def connect(platform: Platform, app: App, start: Start) -> list[Event]:
    return [e for m in platform.send(start) for e in app.receive(m)]


# --------------------------------------------------------------------- audiosocket


def test_audiosocket_start_is_text_then_uuid_frame() -> None:
    platform = AudioSocketWsPlatform(CALL, "call-1", 16000)
    text, binary = platform.send(Start(CALL, "call-1", sample_rate=16000, metadata={"a": 1}))
    assert isinstance(text, str) and isinstance(binary, bytes)
    assert json.loads(text) == {
        "event": "start",
        "stream_id": CALL,
        "call_id": "call-1",
        "encoding": "L16",
        "sample_rate": 16000,
        "channels": 1,
        "frame_ms": 20,
        "resumed": False,
        "metadata": {"a": 1},
    }
    assert binary == b"\x01\x00\x10" + uuid.UUID(CALL).bytes


def test_audiosocket_non_uuid_stream_ids_get_a_stable_uuid() -> None:
    assert stream_uuid(CALL.upper()) == CALL
    assert (
        stream_uuid("MZ123")
        == str(uuid.uuid5(STREAM_UUID_NAMESPACE, "MZ123"))
        == stream_uuid("MZ123")
    )
    platform = AudioSocketWsPlatform("MZ123", "CA9")
    _text, binary = platform.send(Start("MZ123", "CA9"))
    assert binary == b"\x01\x00\x10" + uuid.UUID(stream_uuid("MZ123")).bytes
    app = AudioSocketWsApp()
    assert connect(AudioSocketWsPlatform("MZ123", "CA9"), app, Start("MZ123", "CA9")) == [
        Start("MZ123", "CA9")
    ]


def test_audiosocket_both_ways() -> None:
    platform = AudioSocketWsPlatform(CALL, "c", 16000)
    app = AudioSocketWsApp()
    assert connect(platform, app, Start(CALL, "c", sample_rate=16000)) == [
        Start(CALL, "c", sample_rate=16000)
    ]
    pcm = bytes(range(200)) * 2
    # bridge -> app: binary AudioSocket frames, control as sln TEXT.
    assert platform.send_audio(pcm) == b"\x12\x01\x90" + pcm
    assert app.receive(platform.send_audio(pcm)) == [Audio(Frame(pcm, 16000))]
    for event in (Mark("m"), Cleared(), Dtmf("9"), Drained(), Stats(1, 2), Stop("shutdown")):
        [message] = platform.send(event)
        assert isinstance(message, str)
        assert app.receive(message) == [event]
    # app -> bridge: binary audio at the start's rate, control as sln TEXT.
    assert app.send_audio(pcm)[0] == 0x12
    assert platform.receive(app.send_audio(pcm)) == [Audio(Frame(pcm, 16000))]
    for command in (Mark("m"), Clear(), Dtmf("1"), StatsRequest(), Hangup()):
        [message] = app.send(command)
        assert isinstance(message, str)
        assert platform.receive(message) == [command]
    assert app.send(Stop()) == ['{"event":"hangup"}']
    # An app reusing AudioSocket code may hang up with 0x00; it means the same.
    assert platform.receive(HANGUP_FRAME) == [Hangup()]
    assert platform.receive('{"event":"whatever"}') == []
    assert (platform.unknown_events, platform.first_unknown_event) == (1, "whatever")
    assert app.receive('{"event":"whatever"}') == []
    assert (app.unknown_events, app.first_unknown_event) == (1, "whatever")


def test_audiosocket_app_errors() -> None:
    with pytest.raises(DialectError, match="before the start"):
        AudioSocketWsApp().receive(b"\x01\x00\x10" + uuid.UUID(CALL).bytes)
    app = AudioSocketWsApp()
    app.receive(AudioSocketWsPlatform(CALL, "c").send(Start(CALL, "c"))[0])
    with pytest.raises(DialectError, match="does not match"):
        app.receive(b"\x01\x00\x10" + uuid.uuid4().bytes)
    with pytest.raises(DialectError, match="not an AudioSocket rate"):
        AudioSocketWsApp().receive(
            '{"event":"start","stream_id":"s","call_id":"c","encoding":"L16","sample_rate":11025}'
        )
    with pytest.raises(ValueError):
        AudioSocketWsPlatform(CALL, "c", 11025)
    with pytest.raises(DialectError):  # a server may not send DTMF to "Asterisk"
        AudioSocketWsPlatform(CALL, "c").receive(b"\x03\x00\x011")


# ----------------------------------------------------------------------------- rtp


def test_rtp_start_is_text_only() -> None:
    platform = RtpWsPlatform("s", "c", "pcma")
    [text] = platform.send(Start("s", "c"))
    assert isinstance(text, str)
    assert json.loads(text)["encoding"] == "PCMA"
    assert (
        json.loads(
            RtpWsPlatform("s", "c", "l16", 16000).send(Start("s", "c", sample_rate=16000))[0]
        )["encoding"]
        == "L16"
    )


def test_rtp_both_ways() -> None:
    platform = RtpWsPlatform("s", "c", "l16", 16000, ssrc=5, initial_seq=0, initial_timestamp=0)
    app = RtpWsApp("l16", 16000, ssrc=6)
    assert connect(platform, app, Start("s", "c", sample_rate=16000)) == [
        Start("s", "c", sample_rate=16000, encoding="L16")
    ]
    pcm = bytes(range(64)) * 10
    packet = platform.send_audio(pcm)
    assert isinstance(packet, bytes) and packet[:12] == bytes.fromhex("80e000000000000000000005")
    assert app.receive(packet) == [Audio(Frame(pcm, 16000), seq=0, timestamp=0)]
    [dtmf] = platform.send(Dtmf("5"))
    assert dtmf == '{"event":"dtmf","digit":"5"}'  # control is TEXT, not an RFC 4733 train
    assert app.receive(dtmf) == [Dtmf("5")]
    [audio] = platform.receive(app.send_audio(pcm))
    assert isinstance(audio, Audio) and audio.frame.pcm == pcm
    assert platform.receive(app.send(Mark("m"))[0]) == [Mark("m")]
    # An app with RTP code may send RFC 4733 instead: reported once.
    train = RtpSession("l16", 16000).send(Dtmf("7", 60))
    assert [e for p in train for e in platform.receive(p)] == [Dtmf("7", 60)]
    assert app.send(Stop()) == ['{"event":"hangup"}']


def test_rtp_app_errors() -> None:
    with pytest.raises(DialectError, match="before the start"):
        RtpWsApp().receive(RtpSession("pcmu").send_audio(bytes(320)))
    with pytest.raises(DialectError, match="encoding"):
        RtpWsApp("pcmu").receive(RtpWsPlatform("s", "c", "pcma").send(Start("s", "c"))[0])
    with pytest.raises(DialectError, match="16000 Hz"):
        RtpWsApp("l16", 8000).receive(
            RtpWsPlatform("s", "c", "l16", 16000).send(Start("s", "c", sample_rate=16000))[0]
        )


# ------------------------------------------------------------------------ round trips

pcm_bytes = st.binary(min_size=2, max_size=640).map(lambda b: b[: len(b) & ~1])
control_down = st.one_of(
    st.text(max_size=8).map(Mark),
    st.sampled_from("0123456789*#ABCD").map(Dtmf),
    st.sampled_from([Cleared(), Drained(), Stats(3, 4), Stop("call_hangup"), Stop()]),
)
control_up = st.one_of(
    st.text(max_size=8).map(Mark),
    st.sampled_from("0123456789*#ABCD").map(Dtmf),
    st.sampled_from([Clear(), Hangup(), StatsRequest()]),
)


def pair(kind: str, rate: int) -> tuple[Platform, App]:
    if kind == "audiosocket":
        return AudioSocketWsPlatform("s-1", "c-1", rate), AudioSocketWsApp()
    codec = "l16" if kind == "rtp-l16" else kind[4:]
    return RtpWsPlatform("s-1", "c-1", codec, rate), RtpWsApp(codec, rate)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        [("audiosocket", 8000), ("audiosocket", 16000), ("rtp-l16", 16000), ("rtp-pcmu", 8000)]
    ),
    st.builds(
        Start,
        st.just("s-1"),
        st.just("c-1"),
        metadata=st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    ),
    st.lists(st.one_of(pcm_bytes, control_down), max_size=8),
    st.lists(st.one_of(pcm_bytes, control_up), max_size=8),
)
def test_round_trip(
    kind_rate: tuple[str, int], start: Start, down: list[bytes | Event], up: list[bytes | Event]
) -> None:
    kind, rate = kind_rate
    platform, app = pair(kind, rate)
    start = Start(start.stream_id, start.call_id, sample_rate=rate, metadata=start.metadata)
    [got] = connect(platform, app, start)
    assert isinstance(got, Start) and (
        got.stream_id,
        got.call_id,
        got.sample_rate,
        got.metadata,
    ) == (
        "s-1",
        "c-1",
        rate,
        start.metadata,
    )
    lossless = kind != "rtp-pcmu"
    for item in down:
        messages = [platform.send_audio(item)] if isinstance(item, bytes) else platform.send(item)
        events = [e for m in messages for e in app.receive(m)]
        if isinstance(item, bytes):
            [audio] = events
            assert isinstance(audio, Audio) and audio.frame.sample_rate == rate
            assert audio.frame.pcm == item if lossless else len(audio.frame.pcm) == len(item)
        else:
            assert events == [item]
    for item in up:
        messages = [app.send_audio(item)] if isinstance(item, bytes) else app.send(item)
        events = [e for m in messages for e in platform.receive(m)]
        if isinstance(item, bytes):
            [audio] = events
            assert isinstance(audio, Audio) and audio.frame.sample_rate == rate
            assert audio.frame.pcm == item if lossless else len(audio.frame.pcm) == len(item)
        else:
            assert events == [item]


# -------------------------------------------------------------------------- fuzzing

messages = st.one_of(
    st.binary(max_size=48),
    st.text(max_size=48),
    st.sampled_from(
        [
            '{"event":"mark","name":"m"}',
            '{"event":"dtmf","digits":"1"}',
            '{"event":"dtmf","digit":"1"}',
            '{"event":"start","stream_id":"s-1","call_id":"c","encoding":"L16","sample_rate":8000}',
            '{"event":"start","stream_id":"s-1","call_id":"c","encoding":"PCMU","sample_rate":8000}',
            '{"event":"stop"}',
            "{}",
        ]
    ),
    st.builds(
        lambda kind, body: bytes([kind, 0, len(body)]) + body,
        st.sampled_from([0, 1, 3, 0x10, 0x12, 0xFF]),
        st.binary(max_size=20),
    ),
)


def feed(conn: Platform | App, sequence: list[bytes | str]) -> None:
    for message in sequence:
        try:
            events = conn.receive(message)
        except DialectError as exc:
            assert exc.message
            return
        assert all(isinstance(e, EVENT_TYPES) for e in events)


@FUZZ
@given(st.lists(messages, min_size=1, max_size=3))
def test_fuzz_all_four(sequence: list[bytes | str]) -> None:
    """Any mix of binary and text messages: events or a DialectError, in every class."""
    feed(AudioSocketWsPlatform("s-1", "c"), sequence)
    feed(AudioSocketWsApp(), sequence)
    feed(RtpWsPlatform("s-1", "c"), sequence)
    feed(RtpWsApp(), sequence)
