"""Twilio Media Streams dialect (PROTOCOLS.md §1).

Also home of the fuzzing strategies the Telnyx and Plivo tests import (``json_values``,
``fuzz_inputs``, ``check_decoder``): the three carriers share their failure modes.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import event as label
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge._errors import DialectError, UnsupportedMessage
from bridge.dialects._events import (
    Audio,
    Clear,
    Cleared,
    Connected,
    Drained,
    Dtmf,
    Event,
    FlowControl,
    Hangup,
    Mark,
    Start,
    Stats,
    StatsRequest,
    Stop,
)
from bridge.dialects._twilio import TwilioApp, TwilioPlatform
from bridge.media import Frame, audioop

FUZZ = settings(max_examples=3000, deadline=None)
PROPS = settings(max_examples=200, deadline=None)

EVENT_TYPES = (
    Connected,
    Start,
    Audio,
    Dtmf,
    Mark,
    Clear,
    Cleared,
    Drained,
    FlowControl,
    StatsRequest,
    Stats,
    Hangup,
    Stop,
)

# --------------------------------------------------------------------------- shared fuzzing

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
"""Any JSON value."""

BAD_VALUES = st.sampled_from(
    [
        "",
        "abc",  # bad base64 padding
        "!!!!",  # not base64
        "YQ=",
        "AA==",  # one byte: a torn L16 sample
        "AAEC",  # three bytes
        "é",
        "AAAA\n",
        "-1",
        "1.5",
        "1e3",
        "٣",
        "x" * 60,
        "9" * 5000,  # beyond int()'s digit limit
        "inbound",
        "outbound",
        "PCMU",
        "L16",
        "G722",
        "audio/x-l16",
        "audio/x-mulaw",
        "audio/x-mulaw;rate=16000",
        0,
        -1,
        16000,
        24000,
        2**70,
        1.5,
        True,
        None,
        [],
        {},
    ]
)
"""Values that are wrong in telling ways: bad base64, odd-length L16, bad counters, types."""


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            yield from _paths(value, (*prefix, index))


def _parent(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        obj = obj[key]
    return obj


@st.composite
def mutated(draw: st.DrawFn, valid: Sequence[dict[str, Any]], events: Sequence[str]) -> str:
    """A valid message with 1-3 things broken: a key dropped, a value swapped, a key
    added, the event renamed."""
    msg = copy.deepcopy(draw(st.sampled_from(valid)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(msg) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(msg, path)
        op = draw(st.sampled_from(("delete", "replace", "replace", "add", "event")))
        if op == "delete":
            del parent[path[-1]]
        elif op == "replace":
            parent[path[-1]] = draw(BAD_VALUES | json_values)
        elif op == "add":
            target = parent if isinstance(parent, dict) else msg
            target[draw(st.text(max_size=8))] = draw(json_values)
        else:
            msg["event"] = draw(st.sampled_from(events) | st.text(max_size=8))
    return json.dumps(msg)


def fuzz_inputs(valid: Sequence[dict[str, Any]], events: Sequence[str]) -> st.SearchStrategy[Any]:
    """Anything a peer could send: text, JSON, bytes, and near-valid messages."""
    return st.one_of(
        mutated(valid, events),
        mutated(valid, events),
        mutated(valid, events),
        st.sampled_from(valid).map(json.dumps),
        st.text(max_size=40),
        json_values.map(json.dumps),
        st.binary(max_size=40),
    )


def check_decoder(dialect: str, receive: Callable[[Any], list[Event]], message: Any) -> None:
    """``receive`` gives events or a DialectError saying what was wrong: nothing else."""
    try:
        events = receive(message)
    except DialectError as exc:
        assert exc.dialect == dialect
        assert exc.message
        label(type(exc).__name__)
        return
    label("accepted: " + ",".join(sorted({type(e).__name__ for e in events})))
    assert isinstance(events, list)
    for event in events:
        assert isinstance(event, EVENT_TYPES)
        if isinstance(event, Audio):
            assert len(event.frame.pcm) % 2 == 0


def pcm_frames(max_samples: int = 320) -> st.SearchStrategy[bytes]:
    return st.integers(0, max_samples).flatmap(lambda n: st.binary(min_size=2 * n, max_size=2 * n))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ulaw(pcm: bytes) -> bytes:
    return audioop.lin2ulaw(pcm, 2)


# --------------------------------------------------------------------------- golden vectors
# The documented sequence [TW], key for key, counters as strings.

SID = "MZXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
CALL = "CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
ACCOUNT = "ACXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"
SILENCE = b"\xff" * 160  # µ-law silence, 20 ms
PAYLOAD = b64(SILENCE)

CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": ACCOUNT,
        "streamSid": SID,
        "callSid": CALL,
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"},
    },
    "streamSid": SID,
}
MEDIA = {
    "event": "media",
    "sequenceNumber": "4",
    "media": {"track": "inbound", "chunk": "2", "timestamp": "5", "payload": PAYLOAD},
    "streamSid": SID,
}
OUTBOUND_MEDIA = {
    "event": "media",
    "sequenceNumber": "3",
    "media": {"track": "outbound", "chunk": "1", "timestamp": "5", "payload": PAYLOAD},
    "streamSid": SID,
}
DTMF = {
    "event": "dtmf",
    "streamSid": SID,
    "sequenceNumber": "5",
    "dtmf": {"track": "inbound_track", "digit": "1"},
}
MARK = {"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "my label"}}
STOP = {
    "event": "stop",
    "sequenceNumber": "5",
    "stop": {"accountSid": ACCOUNT, "callSid": CALL},
    "streamSid": SID,
}
FROM_TWILIO = [CONNECTED, START, MEDIA, OUTBOUND_MEDIA, DTMF, MARK, STOP]
TWILIO_EVENTS = ["connected", "start", "media", "dtmf", "mark", "stop", "clear"]

APP_MEDIA = {"event": "media", "streamSid": SID, "media": {"payload": PAYLOAD}}
APP_MARK = {"event": "mark", "streamSid": SID, "mark": {"name": "my label"}}
APP_CLEAR = {"event": "clear", "streamSid": SID}
FROM_APP = [APP_MEDIA, APP_MARK, APP_CLEAR]


def started_app() -> TwilioApp:
    app = TwilioApp()
    app.receive(json.dumps(CONNECTED))
    app.receive(json.dumps(START))
    return app


def platform() -> TwilioPlatform:
    return TwilioPlatform(SID, CALL, ACCOUNT, {"FirstName": "Jane"})


def test_app_decodes_the_documented_sequence() -> None:
    app = TwilioApp()
    assert app.receive(json.dumps(CONNECTED)) == [
        Connected({"protocol": "Call", "version": "1.0.0"})
    ]
    [start] = app.receive(json.dumps(START))
    assert start == Start(
        stream_id=SID,
        call_id=CALL,
        sample_rate=8000,
        encoding="audio/x-mulaw",
        metadata={
            "carrier": "twilio",
            "accountSid": ACCOUNT,
            "callSid": CALL,
            "streamSid": SID,
            "tracks": ["inbound"],
            "customParameters": {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"},
        },
    )
    assert app.stream_sid == SID and app.call_sid == CALL
    [audio] = app.receive(json.dumps(MEDIA))
    assert audio == Audio(Frame(audioop.ulaw2lin(SILENCE, 2), 8000), seq=2, timestamp=5)
    assert app.receive(json.dumps(OUTBOUND_MEDIA)) == []  # another track
    assert app.receive(json.dumps(DTMF)) == [Dtmf("1")]
    assert app.receive(json.dumps(MARK)) == [Mark("my label")]
    assert app.receive(json.dumps(STOP)) == [Stop()]
    stats = app.stats
    assert (stats.messages_received, stats.chunks_received, stats.other_track_chunks) == (7, 1, 1)
    assert (stats.marks_received, stats.dtmf_received) == (1, 1)


def test_app_selects_the_outbound_track() -> None:
    app = TwilioApp(track="outbound")
    app.receive(json.dumps(START))
    assert app.receive(json.dumps(MEDIA)) == []
    [audio] = app.receive(json.dumps(OUTBOUND_MEDIA))
    assert audio.seq == 1


def test_app_accepts_numeric_counters_and_extra_fields() -> None:
    app = started_app()
    media = copy.deepcopy(MEDIA)
    media["media"].update(chunk=7, timestamp=140, future="field")
    media["sequenceNumber"] = 9
    [audio] = app.receive(json.dumps(media))
    assert (audio.seq, audio.timestamp) == (7, 140)


def test_app_encodes_exactly_the_documented_messages() -> None:
    app = started_app()
    pcm = audioop.ulaw2lin(SILENCE, 2)
    assert json.loads(app.send_audio(pcm)) == APP_MEDIA
    assert [json.loads(m) for m in app.send(Audio(Frame(pcm, 8000)))] == [APP_MEDIA]
    assert [json.loads(m) for m in app.send(Mark("my label"))] == [APP_MARK]
    assert [json.loads(m) for m in app.send(Clear())] == [APP_CLEAR]
    # No message ends a Twilio stream (close the socket) and none carries DTMF or stats.
    for event in (Hangup(), Stop("app_hangup"), Dtmf("5"), StatsRequest()):
        assert app.send(event) == []


def test_app_escapes_the_stream_sid_in_its_media_template() -> None:
    start = copy.deepcopy(START)
    start["start"]["streamSid"] = start["streamSid"] = 'MZ"\\\n'
    app = TwilioApp()
    app.receive(json.dumps(start))
    assert json.loads(app.send_audio(b"\0\0"))["streamSid"] == 'MZ"\\\n'


def test_platform_encodes_the_documented_sequence() -> None:
    twilio = TwilioPlatform(
        SID, CALL, ACCOUNT, {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"}
    )
    sent = [json.loads(m) for e in (Connected(), Start(SID, CALL)) for m in twilio.send(e)]
    assert sent == [CONNECTED, START]
    pcm = audioop.ulaw2lin(SILENCE, 2)
    assert json.loads(twilio.send_audio(pcm)) == {
        "event": "media",
        "sequenceNumber": "2",
        "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": PAYLOAD},
        "streamSid": SID,
    }
    [media] = twilio.send(Audio(Frame(pcm, 8000)))
    assert json.loads(media)["media"] == {
        "track": "inbound",
        "chunk": "2",
        "timestamp": "20",
        "payload": PAYLOAD,
    }
    [dtmf] = twilio.send(Dtmf("1"))
    assert json.loads(dtmf) == {**DTMF, "sequenceNumber": "4"}
    [mark] = twilio.send(Mark("my label"))
    assert json.loads(mark) == {**MARK, "sequenceNumber": "5"}
    [stop] = twilio.send(Stop("call_hangup"))
    assert json.loads(stop) == {**STOP, "sequenceNumber": "6"}
    # Twilio returns marks rather than announcing a clear; the rest has no message.
    for event in (Cleared(), Drained(), Stats(0, 0)):
        assert twilio.send(event) == []


def test_platform_numbers_each_track_separately() -> None:
    twilio = TwilioPlatform(SID, CALL, ACCOUNT, tracks=("inbound", "outbound"))
    first = json.loads(twilio.send_audio(b"\0\0" * 160))
    other = json.loads(twilio.send_audio(b"\0\0" * 80, track="outbound"))
    second = json.loads(twilio.send_audio(b"\0\0" * 160))
    assert [m["sequenceNumber"] for m in (first, other, second)] == ["1", "2", "3"]
    assert (other["media"]["track"], other["media"]["chunk"]) == ("outbound", "1")
    assert (second["media"]["chunk"], second["media"]["timestamp"]) == ("2", "20")
    with pytest.raises(ValueError, match="track"):
        twilio.send_audio(b"", track="both")


def test_platform_decodes_app_messages() -> None:
    twilio = platform()
    [audio] = twilio.receive(json.dumps(APP_MEDIA))
    assert audio == Audio(Frame(audioop.ulaw2lin(SILENCE, 2), 8000))
    assert twilio.receive(json.dumps(APP_MARK)) == [Mark("my label")]
    assert twilio.receive(json.dumps(APP_CLEAR)) == [Clear()]


# --------------------------------------------------------------------------- what Twilio rejects


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (b'{"event":"clear"}', "BINARY.*31950"),
        ("not json", "not valid JSON"),
        ("[1]", "expected a JSON object, got an array"),
        ('{"streamSid":"x"}', 'no "event"'),
        ('{"event":7}', '"event" must be a string'),
        (json.dumps({**APP_MEDIA, "streamSid": "MZ0"}), "streamSid 'MZ0'.*31951"),
        (json.dumps({**APP_MEDIA, "extra": 1}), "unknown field `extra`"),
        (json.dumps({**APP_MEDIA, "media": {"payload": PAYLOAD, "track": "x"}}), r"\$\.media"),
        (json.dumps({"event": "media", "streamSid": SID}), "missing required field `media`"),
        (json.dumps({"event": "mark", "streamSid": SID, "mark": {}}), "`name`"),
        (json.dumps({**APP_MEDIA, "media": {"payload": "abc"}}), "base64"),
        (json.dumps({**APP_MEDIA, "media": {"payload": 5}}), "Expected `str`"),
    ],
)
def test_platform_rejects_like_twilio(message: Any, match: str) -> None:
    with pytest.raises(DialectError, match=match) as info:
        platform().receive(message)
    assert info.type is DialectError


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ({"event": "start", "streamSid": SID}, "'start' is sent by Twilio.*31951"),
        ({"event": "sendDigits", "streamSid": SID}, "unknown event 'sendDigits'.*31951"),
    ],
)
def test_platform_flags_unsupported_events(message: dict[str, Any], match: str) -> None:
    with pytest.raises(UnsupportedMessage, match=match):
        platform().receive(json.dumps(message))


def test_app_rejects_out_of_order_and_foreign_messages() -> None:
    app = TwilioApp()
    with pytest.raises(DialectError, match="'media' before 'start'"):
        app.receive(json.dumps(MEDIA))
    with pytest.raises(DialectError, match="'mark' before 'start'"):
        app.receive(json.dumps(MARK))
    with pytest.raises(DialectError, match="before Twilio's 'start'"):
        app.send_audio(b"\0\0")
    with pytest.raises(DialectError, match="no streamSid"):
        app.send(Mark("x"))
    app.receive(json.dumps(START))
    with pytest.raises(DialectError, match="second 'start'"):
        app.receive(json.dumps(START))
    with pytest.raises(DialectError, match="not this stream's"):
        app.receive(json.dumps({**MEDIA, "streamSid": "MZ0"}))
    with pytest.raises(UnsupportedMessage, match="'clear' is sent by the app"):
        app.receive(json.dumps(APP_CLEAR))
    with pytest.raises(DialectError, match="DTMF digit"):
        app.receive(json.dumps({**DTMF, "dtmf": {"digit": "12"}}))
    with pytest.raises(DialectError, match="chunk must be an integer"):
        app.receive(json.dumps({**MEDIA, "media": {**MEDIA["media"], "chunk": "two"}}))
    with pytest.raises(DialectError, match="BINARY"):
        app.receive(b"\xff" * 160)


def test_app_rejects_a_format_twilio_never_sends() -> None:
    start = copy.deepcopy(START)
    start["start"]["mediaFormat"]["sampleRate"] = 16000
    with pytest.raises(DialectError, match="unsupported mediaFormat"):
        TwilioApp().receive(json.dumps(start))


def test_roles_refuse_the_other_roles_events_and_wrong_rates() -> None:
    app = started_app()
    with pytest.raises(ValueError, match="TwilioApp cannot send Start"):
        app.send(Start("a", "b"))
    with pytest.raises(ValueError, match="16000 Hz"):
        app.send(Audio(Frame(b"\0\0", 16000)))
    with pytest.raises(ValueError, match="whole 2-byte samples"):
        app.send_audio(b"\0")
    with pytest.raises(ValueError, match="TwilioPlatform cannot send Clear"):
        platform().send(Clear())
    with pytest.raises(ValueError, match="tracks"):
        TwilioPlatform(SID, CALL, ACCOUNT, tracks=())


# --------------------------------------------------------------------------- round trips


@PROPS
@given(frames=st.lists(pcm_frames(), max_size=6))
def test_platform_to_app_audio_round_trip(frames: list[bytes]) -> None:
    twilio, app = platform(), TwilioApp()
    for message in twilio.send(Start(SID, CALL)):
        app.receive(message)
    samples = 0
    for chunk, pcm in enumerate(frames, start=1):
        [audio] = app.receive(twilio.send_audio(pcm))
        assert ulaw(audio.frame.pcm) == ulaw(pcm)  # G.711 re-encode equality
        assert (audio.frame.sample_rate, audio.seq, audio.timestamp) == (8000, chunk, samples // 8)
        samples += len(pcm) // 2


@PROPS
@given(frames=st.lists(pcm_frames(), max_size=6))
def test_app_to_platform_audio_round_trip(frames: list[bytes]) -> None:
    twilio, app = platform(), started_app()
    for pcm in frames:
        [audio] = twilio.receive(app.send_audio(pcm))
        assert ulaw(audio.frame.pcm) == ulaw(pcm)
        assert audio.frame.sample_rate == 8000


@PROPS
@given(
    names=st.lists(st.text(), max_size=4),
    digits=st.lists(st.sampled_from("0123456789*#ABCD"), max_size=4),
)
def test_marks_and_digits_round_trip(names: list[str], digits: list[str]) -> None:
    twilio, app = platform(), started_app()
    for name in names:
        assert app.receive(twilio.send(Mark(name))[0]) == [Mark(name)]
        assert twilio.receive(app.send(Mark(name))[0]) == [Mark(name)]
    for digit in digits:
        assert app.receive(twilio.send(Dtmf(digit))[0]) == [Dtmf(digit)]
    assert twilio.receive(app.send(Clear())[0]) == [Clear()]
    assert app.receive(twilio.send(Stop())[0]) == [Stop()]


@PROPS
@given(
    sid=st.text(min_size=1),
    call=st.text(min_size=1),
    account=st.text(),
    params=st.dictionaries(st.text(), st.text(), max_size=3),
    tracks=st.sampled_from([("inbound",), ("outbound",), ("inbound", "outbound")]),
)
def test_start_round_trip(
    sid: str, call: str, account: str, params: dict[str, str], tracks: tuple[str, ...]
) -> None:
    twilio = TwilioPlatform(sid, call, account, params, tracks)
    app = TwilioApp()
    assert app.receive(twilio.send(Connected())[0])[0] == Connected(
        {"protocol": "Call", "version": "1.0.0"}
    )
    [start] = app.receive(twilio.send(Start("ignored", "ignored"))[0])
    assert (start.stream_id, start.call_id) == (sid, call)
    assert start.metadata["accountSid"] == account
    assert start.metadata["customParameters"] == params
    assert start.metadata["tracks"] == list(tracks)
    assert app.send(Mark("x")) and twilio.receive(app.send(Mark("x"))[0]) == [Mark("x")]


# --------------------------------------------------------------------------- fuzzing


@FUZZ
@given(
    prelude=st.sampled_from([(), (CONNECTED, START), (START, MEDIA)]),
    message=fuzz_inputs(FROM_TWILIO + FROM_APP, TWILIO_EVENTS),
)
def test_fuzz_both_decoders(prelude: tuple[dict[str, Any], ...], message: Any) -> None:
    """Each input goes to both roles: mutations of either direction's messages."""
    check_decoder("twilio", platform().receive, message)
    app = TwilioApp()
    for valid in prelude:
        app.receive(json.dumps(valid))
    check_decoder("twilio", app.receive, message)
