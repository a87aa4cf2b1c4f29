"""Vonage Voice API WebSocket dialect: websocket:connected, binary L16, notify and clear."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge._errors import DialectError, UnsupportedMessage
from bridge.dialects import VonageApp, VonagePlatform
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
from bridge.dialects._vonage import CONTENT_TYPES, SPEC
from bridge.media import Frame

from .test_twilio import FUZZ, PROPS, check_decoder, fuzz_inputs, pcm_frames

# --------------------------------------------------------------------------- golden vectors
# Vonage's documentation, verbatim (developer.vonage.com/voice/voice-api/concepts/websockets).

CONNECTED = {
    "event": "websocket:connected",
    "content-type": "audio/l16;rate=16000",
    "language": "en-GB",
    "caller-id": "447700900123",
}
DTMF = {"event": "websocket:dtmf", "digit": "5", "duration": 260}
CLEARED = {"event": "websocket:cleared"}
NOTIFY = {"event": "websocket:notify", "payload": {"mark": "m1"}}
FROM_VONAGE = [CONNECTED, DTMF, CLEARED, NOTIFY]
VONAGE_EVENTS = [
    "websocket:connected",
    "websocket:dtmf",
    "websocket:cleared",
    "websocket:notify",
]
CLEAR = {"action": "clear"}
NOTIFY_ACTION = {"action": "notify", "payload": {"customKey": "customValue"}}
FROM_APP = [CLEAR, NOTIFY_ACTION]


def started(connected: dict[str, Any] = CONNECTED, **kwargs: Any) -> VonageApp:
    app = VonageApp(**kwargs)
    app.receive(json.dumps(connected))
    return app


def test_app_decodes_the_documented_first_message() -> None:
    app = VonageApp(call_id="fallback")
    [start] = app.receive(json.dumps(CONNECTED))
    assert start == Start(
        stream_id="fallback",
        call_id="fallback",
        sample_rate=16000,
        encoding="audio/l16;rate=16000",
        metadata={
            "carrier": "vonage",
            "content-type": "audio/l16;rate=16000",
            "headers": {"language": "en-GB", "caller-id": "447700900123"},
        },
    )
    assert app.headers == {"language": "en-GB", "caller-id": "447700900123"}


def test_app_takes_the_call_id_from_the_ncco_headers() -> None:
    [start] = VonageApp().receive(json.dumps({**CONNECTED, "uuid": "aaaa-bbbb"}))
    assert (start.call_id, start.stream_id) == ("aaaa-bbbb", "aaaa-bbbb")
    [start] = VonageApp(call_id_keys=("call",)).receive(json.dumps({**CONNECTED, "call": "c1"}))
    assert start.call_id == "c1"


@pytest.mark.parametrize(
    ("content_type", "rate", "frame"), [(ct, r, r // 25) for ct, r in CONTENT_TYPES.items()]
)
def test_app_audio_is_one_20ms_frame_per_message(content_type: str, rate: int, frame: int) -> None:
    """320 bytes at 8 kHz, 640 at 16 kHz [Vonage], 960 at 24 kHz."""
    app = started({**CONNECTED, "content-type": content_type})
    pcm = bytes(range(256)) * (frame // 256) + bytes(frame % 256)
    assert len(pcm) == frame
    assert app.receive(pcm) == [Audio(Frame(pcm, rate))]
    assert app.send_audio(pcm) == pcm
    with pytest.raises(ValueError, match="one 20 ms frame"):
        app.send_audio(pcm + pcm)
    # send(Audio) cuts any length into frames and carries the rest over.
    assert app.send(Audio(Frame(pcm * 2 + pcm[:100], rate))) == [pcm, pcm]
    assert app.send(Audio(Frame(pcm[100:], rate))) == [pcm[:100] + pcm[100:]]
    assert app.stats.odd_size_messages == 0
    assert app.receive(pcm[:100]) == [Audio(Frame(pcm[:100], rate))]
    assert app.stats.odd_size_messages == 1


def test_app_decodes_dtmf_notify_and_cleared() -> None:
    app = started()
    assert app.receive(json.dumps(DTMF)) == [Dtmf("5", 260)]
    assert app.receive('{"event":"websocket:dtmf","digit":"#"}') == [Dtmf("#")]
    assert app.send(Mark("greeting done")) == ['{"action":"notify","payload":{"mark":"m1"}}']
    assert app.receive(json.dumps(NOTIFY)) == [Mark("greeting done")]
    assert app.receive(json.dumps(NOTIFY)) == []  # once only
    assert app.receive('{"event":"websocket:notify","payload":{"other":1}}') == []
    assert app.marks.stale_echoes == 2
    assert app.receive(json.dumps(CLEARED)) == [Cleared()]
    # Vonage may send other text messages: ignored, counted.
    assert app.receive('{"event":"websocket:something","x":1}') == []
    assert app.stats.unknown_events == 1


def test_app_clear_settles_the_marks_in_flight() -> None:
    app = started()
    for name in ("a", "b"):
        app.send(Mark(name))
    assert app.send(Clear()) == ['{"action":"clear"}']
    assert app.take_events() == [Mark("a"), Mark("b")]  # Cleared comes from Vonage
    assert app.take_events() == []
    # Should Vonage answer a cleared notify after all, it is dropped.
    assert app.receive('{"event":"websocket:notify","payload":{"mark":"m2"}}') == []
    assert app.receive(json.dumps(CLEARED)) == [Cleared()]


def test_app_sends_nothing_vonage_cannot_take() -> None:
    app = started()
    for event in (Hangup(), Stop(), Dtmf("1"), StatsRequest()):
        assert app.send(event) == []
    with pytest.raises(ValueError, match="VonageApp cannot send Start"):
        app.send(Start("a", "b"))
    with pytest.raises(ValueError, match="8000 Hz"):
        app.send(Audio(Frame(b"\0\0", 8000)))


def test_app_rejects_what_vonage_never_sends() -> None:
    with pytest.raises(DialectError, match="before websocket:connected"):
        VonageApp().receive(b"\0" * 640)
    with pytest.raises(DialectError, match="before websocket:connected"):
        VonageApp().receive(json.dumps(DTMF))
    with pytest.raises(DialectError, match="cannot send before"):
        VonageApp().send(Mark("x"))
    for bad in ("audio/l16;rate=44100", "audio/pcmu", "audio/l16", "audio/l16;rate=٣"):
        with pytest.raises(DialectError, match="unsupported content-type"):
            VonageApp().receive(json.dumps({**CONNECTED, "content-type": bad}))
    with pytest.raises(DialectError, match="content-type"):
        VonageApp().receive('{"event":"websocket:connected"}')
    app = started()
    with pytest.raises(DialectError, match="second websocket:connected"):
        app.receive(json.dumps(CONNECTED))
    with pytest.raises(DialectError, match="whole 16-bit samples"):
        app.receive(b"\0" * 639)
    with pytest.raises(DialectError, match="DTMF digit"):
        app.receive('{"event":"websocket:dtmf","digit":"55"}')
    with pytest.raises(DialectError, match="duration must be an integer"):
        app.receive('{"event":"websocket:dtmf","digit":"5","duration":"long"}')
    with pytest.raises(DialectError, match="not valid JSON"):
        app.receive("{")


def test_content_type_is_read_leniently() -> None:
    for text in ("AUDIO/L16;RATE=8000", "audio/l16; rate=8000", "audio/l16;foo=1;rate=8000"):
        assert started({**CONNECTED, "content-type": text}).sample_rate == 8000


# --------------------------------------------------------------------------- platform role


def test_platform_sends_what_vonage_sends() -> None:
    vonage = VonagePlatform(headers={"language": "en-GB", "caller-id": "447700900123"})
    assert vonage.send(Connected()) == []
    assert [json.loads(m) for m in vonage.send(Start("x", "y"))] == [CONNECTED]
    assert [json.loads(m) for m in vonage.send(Dtmf("5"))] == [DTMF]
    assert [json.loads(m) for m in vonage.send(Dtmf("5", 90))] == [{**DTMF, "duration": 90}]
    assert [json.loads(m) for m in vonage.send(Cleared())] == [CLEARED]
    assert vonage.send(Audio(Frame(b"\1\0" * 320, 16000))) == [b"\1\0" * 320]
    for event in (Stop(), Drained(), Stats(1, 2), FlowControl(True)):
        assert vonage.send(event) == []
    with pytest.raises(ValueError, match="VonagePlatform cannot send Clear"):
        vonage.send(Clear())


def test_platform_echoes_the_notify_payload_byte_for_byte() -> None:
    vonage = VonagePlatform()
    text = '{"action":"notify","payload": {"customKey": "customValue", "n": 2.50, "u": "\\u00e9"} }'
    [mark] = vonage.receive(text)
    assert isinstance(mark, Mark)
    [echo] = vonage.send(mark)
    assert (
        echo
        == '{"event":"websocket:notify","payload":{"customKey": "customValue", "n": 2.50, "u": "\\u00e9"}}'
    )
    assert json.loads(echo)["payload"] == {"customKey": "customValue", "n": 2.5, "u": "é"}
    # A mark that did not come from notify is echoed under "name".
    assert json.loads(vonage.send(Mark("plain"))[0]) == {
        "event": "websocket:notify",
        "payload": {"name": "plain"},
    }
    assert vonage.receive(json.dumps(CLEAR)) == [Clear()]


@pytest.mark.parametrize(
    ("message", "error", "match"),
    [
        ('{"action":"talk","text":"hi"}', UnsupportedMessage, "unknown action 'talk'"),
        (json.dumps(CONNECTED), UnsupportedMessage, "sent by Vonage"),
        ('{"action":"notify"}', DialectError, "malformed 'notify'"),
        ('{"action":"notify","payload":[1]}', DialectError, "JSON object"),
        ('{"action":"notify","payload":"x"}', DialectError, "JSON object"),
        ('{"text":1}', DialectError, 'no string "action"'),
        ("[1]", DialectError, "JSON object"),
        ("{", DialectError, "not valid JSON"),
        (b"\0\0\0", DialectError, "whole 16-bit samples"),
    ],
)
def test_platform_refuses_what_vonage_would(
    message: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        VonagePlatform().receive(message)


def test_platform_counts_audio_messages_that_are_not_one_frame() -> None:
    vonage = VonagePlatform("audio/l16;rate=8000")
    assert vonage.receive(b"\0" * 320) == [Audio(Frame(b"\0" * 320, 8000))]
    assert vonage.receive(b"\0" * 640) == [Audio(Frame(b"\0" * 640, 8000))]
    assert vonage.receive(b"") == []
    assert (vonage.stats.media_messages, vonage.stats.odd_size_messages) == (2, 1)


def test_platform_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="content_type"):
        VonagePlatform("audio/l16;rate=11025")
    with pytest.raises(ValueError, match="clash"):
        VonagePlatform(headers={"content-type": "x"})
    assert VonagePlatform("audio/l16;rate=24000").sample_rate == 24000


# --------------------------------------------------------------------------- round trips


@PROPS
@given(
    content_type=st.sampled_from(sorted(CONTENT_TYPES)),
    headers=st.dictionaries(
        st.text(min_size=1).filter(lambda k: k not in ("event", "content-type")),
        st.text(),
        max_size=3,
    ),
    frames=st.lists(pcm_frames(500), max_size=5),
)
def test_start_and_audio_round_trip(
    content_type: str, headers: dict[str, str], frames: list[bytes]
) -> None:
    vonage, app = VonagePlatform(content_type, headers), VonageApp(call_id="c")
    [start] = app.receive(vonage.send(Start("x", "y"))[0])
    rate = CONTENT_TYPES[content_type]
    assert start.sample_rate == rate and start.metadata["headers"] == headers
    sent = b""
    received = b""
    for pcm in frames:
        if pcm:
            assert app.receive(vonage.send_audio(pcm)) == [Audio(Frame(pcm, rate))]
        sent += pcm
        for message in app.send(Audio(Frame(pcm, rate))):
            assert len(message) == rate // 25
            [audio] = vonage.receive(message)
            assert isinstance(audio, Audio)
            received += audio.frame.pcm
    whole = len(sent) - len(sent) % (rate // 25)
    assert received == sent[:whole] and vonage.stats.odd_size_messages == 0


@PROPS
@given(
    names=st.lists(st.text(), max_size=5),
    echo_first=st.integers(0, 5),
    digits=st.lists(st.sampled_from("0123456789*#ABCD"), max_size=4),
)
def test_marks_and_clear_round_trip(names: list[str], echo_first: int, digits: list[str]) -> None:
    """Every mark comes back once, in order: echoed by the platform, or settled by a clear."""
    vonage, app = VonagePlatform(), VonageApp()
    app.receive(vonage.send(Start("x", "y"))[0])
    back: list[str] = []
    for i, name in enumerate(names):
        [notify] = app.send(Mark(name))
        [mark] = vonage.receive(notify)
        if i < echo_first:
            back += [e.name for e in app.receive(vonage.send(mark)[0]) if isinstance(e, Mark)]
    [clear] = app.send(Clear())
    assert vonage.receive(clear) == [Clear()]
    back += [e.name for e in app.take_events() if isinstance(e, Mark)]
    assert back == names
    assert app.receive(vonage.send(Cleared())[0]) == [Cleared()]
    for digit in digits:
        assert app.receive(vonage.send(Dtmf(digit))[0]) == [Dtmf(digit, 260)]


# --------------------------------------------------------------------------- independent peers


def test_an_independent_client_reads_the_platform() -> None:
    """What a Vonage app written from the docs does: json for text, raw LE PCM for binary."""
    vonage = VonagePlatform("audio/l16;rate=8000", {"uuid": "u1"})
    first = json.loads(vonage.send(Start("x", "y"))[0])
    assert (
        first["event"] == "websocket:connected" and first["content-type"] == "audio/l16;rate=8000"
    )
    assert first["uuid"] == "u1" and "headers" not in first
    samples = [1, -2, 300, -32768] * 40
    pcm = b"".join(s.to_bytes(2, "little", signed=True) for s in samples)
    wire = vonage.send(Audio(Frame(pcm, 8000)))[0]
    assert isinstance(wire, bytes) and len(wire) == 320
    assert [
        int.from_bytes(wire[i : i + 2], "little", signed=True) for i in range(0, 8, 2)
    ] == samples[:4]


def test_the_app_reads_an_independent_server() -> None:
    app = VonageApp()
    app.receive(
        json.dumps(
            {"event": "websocket:connected", "content-type": "audio/l16;rate=8000", "uuid": "u"}
        )
    )
    [notify] = app.send(Mark("end of prompt"))
    sent = json.loads(notify)
    assert sent["action"] == "notify" and isinstance(sent["payload"], dict)
    reply = json.dumps({"event": "websocket:notify", "payload": sent["payload"]}, indent=1)
    assert app.receive(reply) == [Mark("end of prompt")]
    assert json.loads(app.send(Clear())[0]) == {"action": "clear"}


# --------------------------------------------------------------------------- fuzzing

VONAGE_INPUTS = st.one_of(
    fuzz_inputs(FROM_VONAGE + FROM_APP, [*VONAGE_EVENTS, "clear", "notify"]),
    st.integers(0, 1500).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
)


@FUZZ
@given(prelude=st.sampled_from([(), (CONNECTED,)]), message=VONAGE_INPUTS)
def test_fuzz_both_decoders(prelude: tuple[dict[str, Any], ...], message: Any) -> None:
    check_decoder("vonage", VonagePlatform().receive, message)
    app = VonageApp()
    for valid in prelude:
        app.receive(json.dumps(valid))
    app.marks.sent("x")
    check_decoder("vonage", app.receive, message)


def test_spec_describes_the_dialect() -> None:
    assert SPEC.roles() == (VonagePlatform, VonageApp)
    assert SPEC.greets_first == "platform" and SPEC.start == ("websocket:connected",)
    assert [f.sample_rate for f in SPEC.formats] == [8000, 16000, 24000]
    assert SPEC.format(SPEC.default_format).sample_rate == 16000
    assert SPEC.capabilities.cleared_ack and not SPEC.capabilities.dtmf_out
