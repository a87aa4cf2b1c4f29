"""Plivo audio streaming dialect (PROTOCOLS.md §4): number counters, L16 byte order."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge._errors import DialectError, UnsupportedMessage
from bridge.dialects._events import (
    Audio,
    Clear,
    Cleared,
    Connected,
    Drained,
    Dtmf,
    Hangup,
    Mark,
    Start,
    Stats,
    StatsRequest,
    Stop,
)
from bridge.dialects._plivo import CONTENT_TYPES, PlivoApp, PlivoPlatform
from bridge.media import Frame, audioop

from .test_twilio import FUZZ, PROPS, check_decoder, fuzz_inputs, pcm_frames

CALL = "12345678-1234-1234-1234-123456789abc"
STREAM = "87654321-4321-4321-4321-cba987654321"
ACCOUNT = "MAXXXXXXXXXXXXXXXXXX"
HEADERS = "userId=12345;sessionId=abc-xyz"
SILENCE = b"\xff" * 160
PAYLOAD = base64.b64encode(SILENCE).decode()

# The documented messages [PLV], counters as JSON numbers.
START = {
    "event": "start",
    "sequenceNumber": 1,
    "start": {
        "callId": CALL,
        "streamId": STREAM,
        "accountId": ACCOUNT,
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000},
    },
    "extra_headers": HEADERS,
}
MEDIA = {
    "event": "media",
    "sequenceNumber": 42,
    "streamId": STREAM,
    "media": {"track": "inbound", "timestamp": "1705312200000", "chunk": 41, "payload": PAYLOAD},
    "extra_headers": HEADERS,
}
DTMF = {
    "event": "dtmf",
    "sequenceNumber": 43,
    "streamId": STREAM,
    "dtmf": {"track": "inbound", "digit": "5", "timestamp": "1705312200500"},
}
PLAYED = {
    "event": "playedStream",
    "sequenceNumber": 44,
    "streamId": STREAM,
    "name": "customer greeting audio",
}
CLEARED = {"event": "clearedAudio", "sequenceNumber": 45, "streamId": STREAM}
STOP = {"event": "stop", "sequenceNumber": 46, "streamId": STREAM, "reason": "hangup"}
FROM_PLIVO = [START, MEDIA, DTMF, PLAYED, CLEARED, STOP]
PLIVO_EVENTS = [
    "start",
    "media",
    "dtmf",
    "playedStream",
    "played",
    "clearedAudio",
    "stop",
    "playAudio",
    "checkpoint",
    "clearAudio",
    "sendDTMF",
]

PLAY = {
    "event": "playAudio",
    "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": PAYLOAD},
}
CHECKPOINT = {"event": "checkpoint", "streamId": STREAM, "name": "customer greeting audio"}
CLEAR_AUDIO = {"event": "clearAudio", "streamId": STREAM}
SEND_DTMF = {"event": "sendDTMF", "dtmf": "12#"}
FROM_APP = [PLAY, CHECKPOINT, CLEAR_AUDIO, SEND_DTMF]

FORMATS = [(ct, bo) for ct in CONTENT_TYPES for bo in ("little", "big")]


def started_app(**kwargs: Any) -> PlivoApp:
    app = PlivoApp(**kwargs)
    app.receive(json.dumps(START))
    return app


def platform(
    content_type: str = "audio/x-mulaw;rate=8000", byteorder: str = "little"
) -> PlivoPlatform:
    return PlivoPlatform(STREAM, CALL, ACCOUNT, content_type, HEADERS, l16_byteorder=byteorder)


def start_for(content_type: str) -> dict[str, Any]:
    base, _, rate = content_type.partition(";rate=")
    return {
        **START,
        "start": {**START["start"], "mediaFormat": {"encoding": base, "sampleRate": int(rate)}},
    }


def encode(content_type: str, pcm: bytes) -> bytes:
    return audioop.lin2ulaw(pcm, 2) if "mulaw" in content_type else pcm


# --------------------------------------------------------------------------- golden vectors


def test_app_decodes_the_documented_sequence() -> None:
    app = PlivoApp()
    [start] = app.receive(json.dumps(START))
    assert start == Start(
        stream_id=STREAM,
        call_id=CALL,
        sample_rate=8000,
        encoding="audio/x-mulaw",
        metadata={
            "carrier": "plivo",
            "callId": CALL,
            "streamId": STREAM,
            "accountId": ACCOUNT,
            "tracks": ["inbound"],
            "extra_headers": HEADERS,
        },
    )
    [audio] = app.receive(json.dumps(MEDIA))
    assert audio == Audio(
        Frame(audioop.ulaw2lin(SILENCE, 2), 8000), seq=41, timestamp=1705312200000
    )
    assert app.receive(json.dumps(DTMF)) == [Dtmf("5")]
    assert app.receive(json.dumps(PLAYED)) == [Mark("customer greeting audio")]
    assert app.receive(json.dumps(CLEARED)) == [Cleared()]
    assert app.receive(json.dumps(STOP)) == [Stop("hangup")]
    stats = app.stats
    assert (stats.messages_received, stats.chunks_received, stats.marks_received) == (6, 1, 1)


def test_app_accepts_the_variants_seen_in_the_wild() -> None:
    app = started_app()
    # FAQ name for playedStream; streamId and sequenceNumber left out; string counters.
    assert app.receive('{"event":"played","name":"n"}') == [Mark("n")]
    assert app.receive('{"event":"playedStream","name":"n"}') == [Mark("n")]
    media = {**MEDIA, "sequenceNumber": "42", "media": {**MEDIA["media"], "chunk": "41"}}
    assert app.receive(json.dumps(media))[0].seq == 41
    assert app.receive('{"event":"stop","stop":{"reason":"timeout"}}') == [Stop("timeout")]
    assert app.receive('{"event":"stop"}') == [Stop()]
    start = {**START, "extra_headers": "{}", "sequenceNumber": 0}
    assert PlivoApp().receive(json.dumps(start))[0].metadata["extra_headers"] == "{}"
    del start["extra_headers"]
    assert PlivoApp().receive(json.dumps(start))[0].metadata["extra_headers"] == ""


def test_app_encodes_the_documented_messages() -> None:
    app = started_app()
    pcm = audioop.ulaw2lin(SILENCE, 2)
    assert json.loads(app.send_audio(pcm)) == PLAY
    assert [json.loads(m) for m in app.send(Audio(Frame(pcm, 8000)))] == [PLAY]
    assert [json.loads(m) for m in app.send(Mark("customer greeting audio"))] == [CHECKPOINT]
    assert [json.loads(m) for m in app.send(Clear())] == [CLEAR_AUDIO]
    # sendDTMF's fields are UNCONFIRMED; this is the shape bridge chose.
    assert [json.loads(m) for m in app.send(Dtmf("5"))] == [{"event": "sendDTMF", "dtmf": "5"}]
    for event in (Hangup(), Stop(), StatsRequest()):
        assert app.send(event) == []


def test_platform_encodes_the_documented_sequence() -> None:
    plivo = PlivoPlatform(
        STREAM, CALL, ACCOUNT, "audio/x-mulaw;rate=8000", HEADERS, timestamp_base_ms=1705312200000
    )
    assert plivo.send(Connected()) == []  # Plivo has no connected message
    assert [json.loads(m) for m in plivo.send(Start("x", "y"))] == [START]
    pcm = audioop.ulaw2lin(SILENCE, 2)
    first = json.loads(plivo.send_audio(pcm))
    assert first == {
        "event": "media",
        "sequenceNumber": 2,
        "streamId": STREAM,
        "media": {"track": "inbound", "timestamp": "1705312200000", "chunk": 1, "payload": PAYLOAD},
        "extra_headers": HEADERS,
    }
    assert type(first["sequenceNumber"]) is int and type(first["media"]["chunk"]) is int
    [second] = plivo.send(Audio(Frame(pcm, 8000)))
    assert json.loads(second)["media"]["timestamp"] == "1705312200020"
    assert json.loads(plivo.send(Dtmf("5"))[0]) == {
        "event": "dtmf",
        "sequenceNumber": 4,
        "streamId": STREAM,
        "dtmf": {"track": "inbound", "digit": "5", "timestamp": "1705312200040"},
    }
    assert json.loads(plivo.send(Mark("customer greeting audio"))[0]) == {
        **PLAYED,
        "sequenceNumber": 5,
    }
    assert json.loads(plivo.send(Cleared())[0]) == {**CLEARED, "sequenceNumber": 6}
    # No documented stop: the socket closes. Nothing for drained or stats either.
    for event in (Stop("call_hangup"), Drained(), Stats(1, 2)):
        assert plivo.send(event) == []


def test_platform_decodes_app_messages() -> None:
    plivo = platform()
    assert plivo.receive(json.dumps(PLAY)) == [Audio(Frame(audioop.ulaw2lin(SILENCE, 2), 8000))]
    assert plivo.receive(json.dumps(CHECKPOINT)) == [Mark("customer greeting audio")]
    assert plivo.receive(json.dumps(CLEAR_AUDIO)) == [Clear()]
    assert plivo.receive(json.dumps(SEND_DTMF)) == [Dtmf("1"), Dtmf("2"), Dtmf("#")]
    # playAudio declares its own format; each message is decoded as it says.
    l16 = {
        "event": "playAudio",
        "media": {"contentType": "audio/x-l16", "sampleRate": 16000, "payload": "AQI="},
    }
    assert plivo.receive(json.dumps(l16)) == [Audio(Frame(b"\x01\x02", 16000))]


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ({**CHECKPOINT, "streamId": "other"}, "streamId 'other'"),
        ({"event": "playAudio", "media": {**PLAY["media"], "sampleRate": 16000}}, "8000 Hz only"),
        (
            {"event": "playAudio", "media": {**PLAY["media"], "contentType": "audio/wav"}},
            "unsupported content type",
        ),
        (
            {"event": "playAudio", "media": {**PLAY["media"], "sampleRate": "fast"}},
            "sampleRate must be an integer",
        ),
        (
            {
                "event": "playAudio",
                "media": {"contentType": "audio/x-l16", "sampleRate": 8000, "payload": "AA=="},
            },
            "1 bytes is not a whole",
        ),
        (
            {"event": "playAudio", "media": {"payload": PAYLOAD}},
            "missing required field `contentType`",
        ),
        ({"event": "sendDTMF", "dtmf": ""}, "without digits"),
        ({"event": "sendDTMF", "dtmf": "1x"}, "DTMF digit"),
        ({"event": "checkpoint"}, "`name`"),
    ],
)
def test_platform_rejects_malformed_messages(message: dict[str, Any], match: str) -> None:
    with pytest.raises(DialectError, match=match):
        platform().receive(json.dumps(message))


def test_roles_flag_the_other_directions_events() -> None:
    with pytest.raises(UnsupportedMessage, match="'media' is sent by Plivo"):
        platform().receive(json.dumps(MEDIA))
    with pytest.raises(UnsupportedMessage, match="'playAudio' is sent by the app"):
        started_app().receive(json.dumps(PLAY))
    with pytest.raises(UnsupportedMessage, match="unknown event 'connected'"):
        PlivoApp().receive('{"event":"connected"}')
    with pytest.raises(DialectError, match="BINARY"):
        platform().receive(SILENCE)


def test_app_rejects_out_of_order_and_unsupported_streams() -> None:
    app = PlivoApp()
    with pytest.raises(DialectError, match="'media' before 'start'"):
        app.receive(json.dumps(MEDIA))
    with pytest.raises(DialectError, match="'PlayedStream' before 'start'"):
        app.receive(json.dumps(PLAYED))
    with pytest.raises(DialectError, match="no streamId"):
        app.send(Mark("x"))
    with pytest.raises(DialectError, match="before Plivo's 'start'"):
        app.send_audio(b"\0\0")
    with pytest.raises(DialectError, match="audio/x-l16 sample rate 24000"):
        PlivoApp().receive(json.dumps(start_for("audio/x-l16;rate=24000")))
    app.receive(json.dumps(START))
    with pytest.raises(DialectError, match="second 'start'"):
        app.receive(json.dumps(START))
    with pytest.raises(DialectError, match="not this stream's"):
        app.receive(json.dumps({**CLEARED, "streamId": "other"}))
    with pytest.raises(DialectError, match="base64"):
        app.receive(json.dumps({**MEDIA, "media": {**MEDIA["media"], "payload": "@@@@"}}))


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match='"little" or "big"'):
        PlivoApp("middle")
    with pytest.raises(ValueError, match='"little" or "big"'):
        PlivoPlatform(STREAM, CALL, ACCOUNT, l16_byteorder="native")
    with pytest.raises(ValueError, match="8000 Hz only"):
        PlivoPlatform(STREAM, CALL, ACCOUNT, "audio/x-mulaw;rate=16000")
    with pytest.raises(ValueError, match="bad rate"):
        PlivoApp(content_type="audio/x-l16;rate=fast")
    with pytest.raises(ValueError, match="PlivoApp cannot send Start"):
        started_app().send(Start("a", "b"))
    with pytest.raises(ValueError, match="PlivoPlatform cannot send Clear"):
        platform().send(Clear())


def test_play_format_is_configurable_and_known_before_start() -> None:
    app = PlivoApp("big", content_type="audio/x-l16;rate=16000")
    message = json.loads(app.send_audio(b"\x01\x02"))
    assert message == {
        "event": "playAudio",
        "media": {"contentType": "audio/x-l16", "sampleRate": 16000, "payload": "AgE="},
    }
    app.receive(json.dumps(START))  # mulaw in, L16/16000 out: allowed
    with pytest.raises(ValueError, match="8000 Hz for a 16000 Hz stream"):
        app.send(Audio(Frame(b"\0\0", 8000)))


# --------------------------------------------------------------------------- byte order, round trips


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_l16_byte_order_on_the_wire(byteorder: str) -> None:
    plivo = platform("audio/x-l16;rate=8000", byteorder)
    wire = base64.b64decode(json.loads(plivo.send_audio(b"\x01\x02\x03\x04"))["media"]["payload"])
    assert wire == (b"\x01\x02\x03\x04" if byteorder == "little" else b"\x02\x01\x04\x03")
    app = PlivoApp(byteorder)
    app.receive(plivo.send(Start("x", "y"))[0])
    played = base64.b64decode(json.loads(app.send_audio(b"\x01\x02"))["media"]["payload"])
    assert played == (b"\x01\x02" if byteorder == "little" else b"\x02\x01")


@PROPS
@given(format=st.sampled_from(FORMATS), frames=st.lists(pcm_frames(640), max_size=5))
def test_platform_to_app_audio_round_trip(format: tuple[str, str], frames: list[bytes]) -> None:
    content_type, byteorder = format
    plivo = platform(content_type, byteorder)
    app = PlivoApp(byteorder)
    [start] = app.receive(plivo.send(Start("x", "y"))[0])
    rate = plivo.sample_rate
    assert (start.encoding, start.sample_rate) == (content_type.split(";")[0], rate)
    samples = 0
    for chunk, pcm in enumerate(frames, start=1):
        [audio] = app.receive(plivo.send_audio(pcm))
        assert encode(content_type, audio.frame.pcm) == encode(content_type, pcm)  # L16: exact
        assert (audio.frame.sample_rate, audio.seq) == (rate, chunk)
        assert audio.timestamp == samples * 1000 // rate
        samples += len(pcm) // 2


@PROPS
@given(format=st.sampled_from(FORMATS), frames=st.lists(pcm_frames(640), max_size=5))
def test_app_to_platform_audio_round_trip(format: tuple[str, str], frames: list[bytes]) -> None:
    content_type, byteorder = format
    plivo = platform(content_type, byteorder)
    app = PlivoApp(byteorder)
    app.receive(plivo.send(Start("x", "y"))[0])
    for pcm in frames:
        [audio] = plivo.receive(app.send_audio(pcm))
        assert encode(content_type, audio.frame.pcm) == encode(content_type, pcm)
        assert audio.frame.sample_rate == plivo.sample_rate


@PROPS
@given(
    names=st.lists(st.text(), max_size=4),
    digits=st.text(alphabet="0123456789*#ABCD", max_size=5),
    ids=st.tuples(st.text(min_size=1), st.text(min_size=1), st.text()),
    headers=st.text(),
)
def test_control_and_start_round_trip(
    names: list[str], digits: str, ids: tuple[str, str, str], headers: str
) -> None:
    stream, call, account = ids
    plivo = PlivoPlatform(stream, call, account, extra_headers=headers)
    app = PlivoApp()
    [start] = app.receive(plivo.send(Start("x", "y"))[0])
    assert (start.stream_id, start.call_id) == (stream, call)
    assert start.metadata["accountId"] == account and start.metadata["extra_headers"] == headers
    for name in names:
        assert app.receive(plivo.send(Mark(name))[0]) == [Mark(name)]
        assert plivo.receive(app.send(Mark(name))[0]) == [Mark(name)]
    for digit in digits:
        assert app.receive(plivo.send(Dtmf(digit))[0]) == [Dtmf(digit)]
        assert plivo.receive(app.send(Dtmf(digit))[0]) == [Dtmf(digit)]
    assert plivo.receive(app.send(Clear())[0]) == [Clear()]
    assert app.receive(plivo.send(Cleared())[0]) == [Cleared()]


# --------------------------------------------------------------------------- fuzzing


@FUZZ
@given(
    format=st.sampled_from(FORMATS),
    started=st.booleans(),
    message=fuzz_inputs(FROM_PLIVO + FROM_APP, PLIVO_EVENTS),
)
def test_fuzz_both_decoders(format: tuple[str, str], started: bool, message: Any) -> None:
    """Each input goes to both roles, with each content type and byte order."""
    content_type, byteorder = format
    check_decoder("plivo", platform(content_type, byteorder).receive, message)
    app = PlivoApp(byteorder)
    if started:
        app.receive(json.dumps(start_for(content_type)))
    check_decoder("plivo", app.receive, message)
