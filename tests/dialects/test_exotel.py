"""Exotel AgentStream (Voicebot applet) dialect: snake_case JSON, base64 PCM16LE, chunk rules."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge._errors import DialectError, UnsupportedMessage
from bridge.dialects import ExotelApp, ExotelPlatform
from bridge.dialects._events import (
    Audio,
    Clear,
    Cleared,
    Connected,
    Drained,
    Dtmf,
    FlowControl,
    Hangup,
    Mark,
    Start,
    Stats,
    StatsRequest,
    Stop,
)
from bridge.dialects._exotel import CHUNK_MAX_BYTES, CHUNK_MIN_BYTES, SPEC
from bridge.media import Frame, audioop

from .test_twilio import FUZZ, PROPS, check_decoder, fuzz_inputs, pcm_frames

SID = "MZxxxxxxxxxxxxxxxxxxxxxxxx"
CALL = "CAxxxxxxxxxxxxxxxxxxxxxxxx"
ACCOUNT = "ACxxxxxxxxxxxxxxxxxxxxxxxx"
PCM = bytes(range(256)) * 12 + bytes(range(128))  # 3200 bytes: 100 ms at 16 kHz
PAYLOAD = base64.b64encode(PCM).decode()

# --------------------------------------------------------------------------- golden vectors
# developer.exotel.com/docs/agentstream/websocket-protocol, verbatim (counters as strings).

CONNECTED = {"event": "connected"}
START = {
    "event": "start",
    "sequence_number": "1",
    "stream_sid": SID,
    "start": {
        "stream_sid": SID,
        "call_sid": CALL,
        "account_sid": ACCOUNT,
        "from": "+919876543210",
        "to": "+918047491899",
        "custom_parameters": {"key1": "value1"},
        "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"},
    },
}
MEDIA = {
    "event": "media",
    "sequence_number": "3",
    "stream_sid": SID,
    "media": {"chunk": "2", "timestamp": "200", "payload": PAYLOAD},
}
DTMF = {
    "event": "dtmf",
    "sequence_number": "7",
    "stream_sid": SID,
    "dtmf": {"digit": "5", "duration": "100"},
}
MARK = {"event": "mark", "sequence_number": "15", "stream_sid": SID, "mark": {"name": "m1"}}
STOP = {
    "event": "stop",
    "sequence_number": "20",
    "stream_sid": SID,
    "stop": {"call_sid": CALL, "account_sid": ACCOUNT, "reason": "callended"},
}
FROM_EXOTEL = [CONNECTED, START, MEDIA, DTMF, MARK, STOP]
APP_MEDIA = {"event": "media", "stream_sid": SID, "media": {"payload": PAYLOAD}}
APP_MARK = {"event": "mark", "stream_sid": SID, "mark": {"name": "turn-3-end"}}
APP_CLEAR = {"event": "clear", "stream_sid": SID}
FROM_APP = [APP_MEDIA, APP_MARK, APP_CLEAR]
EXOTEL_EVENTS = ["connected", "start", "media", "dtmf", "mark", "stop", "clear"]

# developer.exotel.com/docs/agentstream/stream-voicebot-applet shows numbers, "raw" and 128.
APPLET_START = {
    "event": "start",
    "sequence_number": 1,
    "stream_sid": SID,
    "start": {
        "stream_sid": SID,
        "call_sid": CALL,
        "account_sid": ACCOUNT,
        "from": "+919876543210",
        "to": "+911234567890",
        "custom_parameters": {"key1": "value1", "key2": "value2"},
        "media_format": {"encoding": "raw", "sample_rate": "8000", "bit_rate": "128"},
    },
}
APPLET_MEDIA = {
    "event": "media",
    "sequence_number": 3,
    "stream_sid": SID,
    "media": {"chunk": 2, "timestamp": "10", "payload": PAYLOAD},
}


def start_at(rate: int) -> dict[str, Any]:
    start = copy.deepcopy(START)
    start["start"]["media_format"]["sample_rate"] = str(rate)
    return start


def started(rate: int = 8000, **kwargs: Any) -> ExotelApp:
    app = ExotelApp(**kwargs)
    app.receive(json.dumps(start_at(rate)))
    return app


def platform(rate: int = 8000, **kwargs: Any) -> ExotelPlatform:
    return ExotelPlatform(
        SID, CALL, ACCOUNT, rate, "+919876543210", "+918047491899", {"key1": "value1"}, **kwargs
    )


def test_app_decodes_the_documented_sequence() -> None:
    app = ExotelApp()
    assert app.receive(json.dumps(CONNECTED)) == [Connected()]
    [start] = app.receive(json.dumps(START))
    assert start == Start(
        stream_id=SID,
        call_id=CALL,
        sample_rate=8000,
        encoding="audio/x-raw",
        metadata={
            "carrier": "exotel",
            "stream_sid": SID,
            "call_sid": CALL,
            "account_sid": ACCOUNT,
            "from": "+919876543210",
            "to": "+918047491899",
            "custom_parameters": {"key1": "value1"},
        },
    )
    assert app.receive(json.dumps(MEDIA)) == [Audio(Frame(PCM, 8000), 2, 200)]
    assert app.receive(json.dumps(DTMF)) == [Dtmf("5", 100)]
    app.marks.sent("my label")
    assert app.receive(json.dumps(MARK)) == [Mark("my label")]
    assert app.receive(json.dumps(STOP)) == [Stop("callended")]
    stats = app.stats
    assert (stats.messages_received, stats.chunks_received, stats.dtmf_received) == (6, 1, 1)


def test_app_accepts_the_applet_pages_variant_and_camel_case() -> None:
    app = ExotelApp()
    [start] = app.receive(json.dumps(APPLET_START))
    assert (start.sample_rate, start.encoding) == (8000, "raw")
    assert app.receive(json.dumps(APPLET_MEDIA)) == [Audio(Frame(PCM, 8000), 2, 10)]
    # Exotel's reference bridge reads streamSid as well (fields "vary by applet").
    camel = {
        "event": "start",
        "streamSid": "S2",
        "start": {
            "streamSid": "S2",
            "callSid": "C2",
            "accountSid": "A2",
            "customParameters": {"a": "b"},
        },
    }
    [start] = ExotelApp().receive(json.dumps(camel))
    assert (start.stream_id, start.call_id, start.metadata["account_sid"]) == ("S2", "C2", "A2")
    assert start.metadata["custom_parameters"] == {"a": "b"} and start.sample_rate == 8000
    assert ExotelApp().receive(
        '{"event":"connected","protocol":"Exotel Media Stream","version":"1.0.0"}'
    ) == [Connected({"protocol": "Exotel Media Stream", "version": "1.0.0"})]
    # Unknown events are ignored and counted.
    assert app.receive('{"event":"ping"}') == [] and app.stats.unknown_events == 1


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_app_rates(rate: int) -> None:
    app = started(rate)
    assert app.sample_rate == rate
    assert app.receive(json.dumps(MEDIA))[0].frame.sample_rate == rate


def test_app_decodes_g711_when_start_says_so() -> None:
    """UNCONFIRMED shape; the newer StartStream defaults to audio/x-mulaw;rate=8000."""
    start = copy.deepcopy(START)
    start["start"]["media_format"]["encoding"] = "audio/x-mulaw"
    app = ExotelApp()
    app.receive(json.dumps(start))
    media = copy.deepcopy(MEDIA)
    media["media"]["payload"] = base64.b64encode(b"\xff" * 160).decode()
    [audio] = app.receive(json.dumps(media))
    assert audio.frame.pcm == audioop.ulaw2lin(b"\xff" * 160, 2)
    start["start"]["media_format"]["sample_rate"] = "16000"
    with pytest.raises(DialectError, match="8000 Hz only"):
        ExotelApp().receive(json.dumps(start))


def test_app_holds_audio_until_a_compliant_chunk() -> None:
    """3.2 KB minimum, multiples of 320 B: 200 ms at 8 kHz, 10 frames."""
    app = started(8000)
    frame = b"\x01\x00" * 160  # 20 ms at 8 kHz
    out: list[Any] = []
    for _ in range(9):
        out += app.send(Audio(Frame(frame, 8000)))
    assert out == []
    [chunk] = app.send(Audio(Frame(frame, 8000)))
    assert json.loads(chunk) == {
        "event": "media",
        "stream_sid": SID,
        "media": {"payload": base64.b64encode(frame * 10).decode()},
    }
    # A mark first sends what is held, padded with silence to the minimum.
    app.send(Audio(Frame(frame, 8000)))
    media, mark = app.send(Mark("turn-3-end"))
    payload = base64.b64decode(json.loads(media)["media"]["payload"])
    assert payload == frame + bytes(CHUNK_MIN_BYTES - 320)
    assert json.loads(mark) == {"event": "mark", "stream_sid": SID, "mark": {"name": "m1"}}
    assert app.stats.padded_bytes == CHUNK_MIN_BYTES - 320
    # Nothing held: the mark alone.
    assert [json.loads(m) for m in app.send(Mark("again"))] == [
        {**json.loads(mark), "mark": {"name": "m2"}}
    ]
    assert app.flush() == []


def test_app_chunks_are_bounded_above() -> None:
    app = started(24000, max_chunk_bytes=9600)
    messages = app.send(Audio(Frame(b"\0" * 30_000, 24000)))
    sizes = [len(base64.b64decode(json.loads(m)["media"]["payload"])) for m in messages]
    assert sizes == [9600, 9600, 9600] and len(app.flush()) == 1
    with pytest.raises(ValueError, match="min_chunk_bytes"):
        ExotelApp(min_chunk_bytes=100)
    with pytest.raises(ValueError, match="min_chunk_bytes"):
        ExotelApp(min_chunk_bytes=6400, max_chunk_bytes=3200)
    with pytest.raises(ValueError, match="min_chunk_bytes"):
        ExotelApp(max_chunk_bytes=CHUNK_MAX_BYTES + 320)


def test_app_per_frame_chunks_when_configured() -> None:
    app = started(16000, min_chunk_bytes=320)
    assert len(app.send(Audio(Frame(b"\0" * 640, 16000)))) == 1


def test_app_send_audio_is_unbuffered_but_checked() -> None:
    app = started(16000)
    assert json.loads(app.send_audio(PCM))["media"]["payload"] == PAYLOAD
    assert json.loads(app.send_audio(b"\0" * 640))["media"]["payload"]  # below the minimum: allowed
    for bad in (b"", b"\0" * 100, b"\0" * (CHUNK_MAX_BYTES + 320)):
        with pytest.raises(ValueError, match="multiple of 320"):
            app.send_audio(bad)


def test_app_clear_drops_held_audio_and_settles_marks() -> None:
    app = started(8000)
    app.send(Mark("a"))
    app.send(Audio(Frame(b"\0" * 640, 8000)))
    app.send(Mark("b"))
    app.send(Audio(Frame(b"\0" * 640, 8000)))
    assert app.receive(json.dumps(MARK)) == [Mark("a")]
    assert [json.loads(m) for m in app.send(Clear())] == [APP_CLEAR]
    assert app.stats.tx_dropped_bytes == 640
    assert app.take_events() == [Mark("b"), Cleared()]
    assert app.receive(json.dumps({**MARK, "mark": {"name": "m2"}})) == []  # late echo dropped
    assert app.marks.stale_echoes == 1
    for event in (Hangup(), Stop(), Dtmf("1"), StatsRequest()):
        assert app.send(event) == []


def test_app_rejects_what_exotel_never_sends() -> None:
    app = ExotelApp()
    with pytest.raises(DialectError, match="'media' before 'start'"):
        app.receive(json.dumps(MEDIA))
    with pytest.raises(DialectError, match="'mark' before 'start'"):
        app.receive(json.dumps(MARK))
    with pytest.raises(DialectError, match="before Exotel's 'start'"):
        app.send(Mark("x"))
    with pytest.raises(DialectError, match="BINARY"):
        app.receive(b"\0" * 320)
    for rate in ("11025", "48000", "fast"):
        with pytest.raises(DialectError, match=r"sample rate|sample_rate"):
            ExotelApp().receive(
                json.dumps(
                    {**START, "start": {**START["start"], "media_format": {"sample_rate": rate}}}
                )
            )
    with pytest.raises(DialectError, match="no stream_sid"):
        ExotelApp().receive('{"event":"start","start":{}}')
    with pytest.raises(DialectError, match="differ"):
        ExotelApp().receive(json.dumps({**START, "stream_sid": "other"}))
    app = started()
    with pytest.raises(DialectError, match="second 'start'"):
        app.receive(json.dumps(START))
    with pytest.raises(DialectError, match="not this stream's"):
        app.receive(json.dumps({**MEDIA, "stream_sid": "other"}))
    with pytest.raises(DialectError, match="base64"):
        app.receive(json.dumps({**MEDIA, "media": {"payload": "!!"}}))
    with pytest.raises(DialectError, match="whole number"):
        app.receive(json.dumps({**MEDIA, "media": {"payload": "AA=="}}))
    with pytest.raises(DialectError, match="DTMF digit"):
        app.receive(json.dumps({**DTMF, "dtmf": {"digit": "x"}}))


# --------------------------------------------------------------------------- platform role


def test_platform_encodes_the_documented_sequence() -> None:
    exotel = platform()
    assert [json.loads(m) for m in exotel.send(Connected())] == [CONNECTED]
    assert [json.loads(m) for m in exotel.send(Start("x", "y"))] == [START]
    first = json.loads(exotel.send_audio(PCM))
    assert first == {
        "event": "media",
        "sequence_number": "2",
        "media": {"chunk": "1", "timestamp": "200", "payload": PAYLOAD},
        "stream_sid": SID,
    }
    [second] = exotel.send(Audio(Frame(PCM, 8000)))
    assert json.loads(second)["media"] == {"chunk": "2", "timestamp": "400", "payload": PAYLOAD}
    assert json.loads(exotel.send(Dtmf("5"))[0]) == {**DTMF, "sequence_number": "4"}
    assert json.loads(exotel.send(Mark("m1"))[0]) == {**MARK, "sequence_number": "5"}
    assert json.loads(exotel.send(Stop("call_hangup"))[0]) == {**STOP, "sequence_number": "6"}
    assert json.loads(exotel.send(Stop("api_request"))[0])["stop"]["reason"] == "stopped"
    for event in (Cleared(), Drained(), Stats(1, 2), FlowControl(False)):
        assert exotel.send(event) == []
    with pytest.raises(ValueError, match="ExotelPlatform cannot send Clear"):
        exotel.send(Clear())


def test_platform_decodes_app_messages_like_exotel() -> None:
    exotel = platform()
    assert exotel.receive(json.dumps(APP_MEDIA)) == [Audio(Frame(PCM, 8000))]
    assert exotel.receive(json.dumps(APP_MARK)) == [Mark("turn-3-end")]
    assert exotel.receive(json.dumps(APP_CLEAR)) == [Clear()]
    # Exotel's own samples: streamSid, extra counters; and no stream id at all.
    sample = {
        "event": "media",
        "streamSid": SID,
        "sequence_number": "1",
        "media": {"chunk": 1, "payload": PAYLOAD},
    }
    assert exotel.receive(json.dumps(sample)) == [Audio(Frame(PCM, 8000))]
    assert exotel.receive('{"event":"clear"}') == [Clear()]
    assert exotel.stats.noncompliant_chunks == 0
    small = {
        "event": "media",
        "stream_sid": SID,
        "media": {"payload": base64.b64encode(b"\0" * 640).decode()},
    }
    assert len(exotel.receive(json.dumps(small))) == 1
    assert exotel.stats.noncompliant_chunks == 1
    with pytest.raises(DialectError, match="3200-100000 bytes"):
        platform(strict_chunks=True).receive(json.dumps(small))


@pytest.mark.parametrize(
    ("message", "error", "match"),
    [
        ({**APP_MEDIA, "stream_sid": "MZ0"}, DialectError, "stream_sid 'MZ0'"),
        ({"event": "start", "start": {}}, UnsupportedMessage, "'start' is sent by Exotel"),
        ({"event": "hangup"}, UnsupportedMessage, "unknown event 'hangup'"),
        ({"event": "media", "media": {}}, DialectError, "payload"),
        ({"event": "mark", "mark": {"label": "x"}}, DialectError, "name"),
    ],
)
def test_platform_refuses(message: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        platform().receive(json.dumps(message))


# --------------------------------------------------------------------------- round trips


@PROPS
@given(
    rate=st.sampled_from([8000, 16000, 24000]),
    frames=st.lists(pcm_frames(960), max_size=12),
    min_chunk=st.sampled_from([320, CHUNK_MIN_BYTES, 6400]),
)
def test_audio_round_trip(rate: int, frames: list[bytes], min_chunk: int) -> None:
    exotel, app = platform(rate), ExotelApp(min_chunk_bytes=min_chunk)
    for message in exotel.send(Connected()) + exotel.send(Start("x", "y")):
        app.receive(message)
    sent = b""
    received = b""
    for pcm in frames:
        if pcm:
            [audio] = app.receive(exotel.send_audio(pcm))
            assert audio.frame == Frame(pcm, rate)
        sent += pcm
        for message in app.send(Audio(Frame(pcm, rate))):
            [event] = exotel.receive(message)
            assert isinstance(event, Audio)
            received += event.frame.pcm
    for message in app.flush():
        [event] = exotel.receive(message)
        assert isinstance(event, Audio)
        received += event.frame.pcm
    assert received[: len(sent)] == sent
    assert set(received[len(sent) :]) <= {0}  # the padding is silence
    if min_chunk >= CHUNK_MIN_BYTES:
        assert exotel.stats.noncompliant_chunks == 0


@PROPS
@given(
    names=st.lists(st.text(), max_size=5),
    echo_first=st.integers(0, 5),
    digits=st.lists(st.sampled_from("0123456789*#"), max_size=4),
    reason=st.sampled_from([None, "stopped", "callended", "call_hangup"]),
)
def test_marks_dtmf_and_stop_round_trip(
    names: list[str], echo_first: int, digits: list[str], reason: str | None
) -> None:
    exotel, app = platform(), ExotelApp()
    for message in exotel.send(Start("x", "y")):
        app.receive(message)
    back: list[str] = []
    for i, name in enumerate(names):
        [mark_message] = app.send(Mark(name))
        [mark] = exotel.receive(mark_message)
        if i < echo_first:
            back += [e.name for e in app.receive(exotel.send(mark)[0]) if isinstance(e, Mark)]
    assert exotel.receive(app.send(Clear())[0]) == [Clear()]
    back += [e.name for e in app.take_events() if isinstance(e, Mark)]
    assert back == names
    for digit in digits:
        assert app.receive(exotel.send(Dtmf(digit))[0]) == [Dtmf(digit, 100)]
    [stop] = app.receive(exotel.send(Stop(reason))[0])
    assert stop == Stop("callended" if reason in ("callended", "call_hangup") else "stopped")


# --------------------------------------------------------------------------- independent peers


def test_an_independent_bot_reads_the_platform() -> None:
    """The echo server of Exotel's docs, reduced: it must find what it needs."""
    exotel = platform(16000)
    messages = [json.loads(m) for m in exotel.send(Connected()) + exotel.send(Start("x", "y"))]
    assert [m["event"] for m in messages] == ["connected", "start"]
    stream_sid = messages[1]["start"]["stream_sid"]
    assert int(messages[1]["start"]["media_format"]["sample_rate"]) == 16000
    media = json.loads(exotel.send_audio((-2).to_bytes(2, "little", signed=True) * 1600))
    pcm = base64.b64decode(media["media"]["payload"])
    assert int.from_bytes(pcm[:2], "little", signed=True) == -2 and len(pcm) == 3200
    echo = json.dumps(
        {
            "event": "media",
            "stream_sid": stream_sid,
            "media": {"payload": media["media"]["payload"]},
        }
    )
    assert exotel.receive(echo) == [Audio(Frame(pcm, 16000))]


def test_the_app_reads_an_independent_exotel() -> None:
    app = ExotelApp()
    start = {
        "event": "start",
        "stream_sid": "S",
        "start": {
            "stream_sid": "S",
            "call_sid": "C",
            "media_format": {"encoding": "audio/x-raw", "sample_rate": 8000, "bit_rate": 16},
        },
    }
    app.receive(json.dumps(start))
    [mark] = app.send(Mark("bye"))
    sent = json.loads(mark)
    assert sent == {"event": "mark", "stream_sid": "S", "mark": {"name": sent["mark"]["name"]}}
    echo = {"event": "mark", "sequence_number": 9, "stream_sid": "S", "mark": sent["mark"]}
    assert app.receive(json.dumps(echo)) == [Mark("bye")]


# --------------------------------------------------------------------------- fuzzing


@FUZZ
@given(
    prelude=st.sampled_from([(), (CONNECTED, START), (APPLET_START, APPLET_MEDIA)]),
    message=fuzz_inputs(FROM_EXOTEL + FROM_APP + [APPLET_START, APPLET_MEDIA], EXOTEL_EVENTS),
)
def test_fuzz_both_decoders(prelude: tuple[dict[str, Any], ...], message: Any) -> None:
    check_decoder("exotel", platform().receive, message)
    check_decoder("exotel", platform(strict_chunks=True).receive, message)
    app = ExotelApp()
    for valid in prelude:
        app.receive(json.dumps(valid))
    app.marks.sent("x")
    check_decoder("exotel", app.receive, message)


def test_spec_describes_the_dialect() -> None:
    assert SPEC.roles() == (ExotelPlatform, ExotelApp)
    assert SPEC.start == ("connected", "start") and SPEC.greets_first == "platform"
    rule = SPEC.send_rule
    assert (rule.multiple_of_bytes, rule.min_bytes, rule.max_bytes, rule.accumulates) == (
        320,
        3200,
        100_000,
        True,
    )
    assert not SPEC.capabilities.cleared_ack and SPEC.capabilities.settles_marks
