"""sln (PROTOCOLS.md §0): golden messages, both roles, round trips, fuzzing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge._errors import DialectError
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
from bridge.dialects._sln import SlnApp, SlnPlatform, decode_control, encode_control
from bridge.media import Frame

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
FUZZ = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def platform(rate: int = 8000) -> SlnPlatform:
    return SlnPlatform("st-1", "call-1", rate)


def started_app(rate: int = 8000) -> SlnApp:
    app = SlnApp()
    [text] = platform(rate).send(Start("st-1", "call-1", sample_rate=rate))
    app.receive(text)
    return app


# ---------------------------------------------------------------------------- golden


def test_start_golden_key_for_key() -> None:
    [text] = platform(16000).send(
        Start("st-1", "call-1", sample_rate=16000, metadata={"route": "r1", "n": 2})
    )
    assert isinstance(text, str)
    msg = json.loads(text)
    assert list(msg) == [
        "event",
        "stream_id",
        "call_id",
        "encoding",
        "sample_rate",
        "channels",
        "frame_ms",
        "resumed",
        "metadata",
    ]
    assert msg == {
        "event": "start",
        "stream_id": "st-1",
        "call_id": "call-1",
        "encoding": "L16",
        "sample_rate": 16000,
        "channels": 1,
        "frame_ms": 20,
        "resumed": False,
        "metadata": {"route": "r1", "n": 2},
    }


def test_start_resumed_carries_replayed_ms() -> None:
    conn = SlnPlatform("st-1", "call-1", 8000, ptime_ms=10)
    [text] = conn.send(Start("st-1", "call-1", resumed=True, replayed_ms=3400))
    assert json.loads(text) == {
        "event": "start",
        "stream_id": "st-1",
        "call_id": "call-1",
        "encoding": "L16",
        "sample_rate": 8000,
        "channels": 1,
        "frame_ms": 10,
        "resumed": True,
        "metadata": {},
        "replayed_ms": 3400,
    }


def test_start_must_match_the_connection() -> None:
    with pytest.raises(ValueError):
        platform().send(Start("other", "call-1"))
    with pytest.raises(ValueError):
        platform().send(Start("st-1", "call-1", sample_rate=16000))


@pytest.mark.parametrize(
    ("event", "wire"),
    [
        (Mark("m1"), {"event": "mark", "name": "m1"}),
        (Cleared(), {"event": "cleared"}),
        (Dtmf("5"), {"event": "dtmf", "digit": "5"}),
        (Drained(), {"event": "drained"}),
        (
            Stats(queued_ms=120, buffered_ms=40),
            {"event": "stats", "queued_ms": 120, "buffered_ms": 40},
        ),
        (Stop("call_hangup"), {"event": "stop", "reason": "call_hangup"}),
        (Stop(), {"event": "stop", "reason": None}),
    ],
)
def test_platform_control_golden(event: Event, wire: dict[str, Any]) -> None:
    [text] = platform().send(event)
    assert isinstance(text, str)
    assert json.loads(text) == wire
    assert next(iter(json.loads(text))) == "event"


@pytest.mark.parametrize(
    ("event", "wire"),
    [
        (Mark("m1"), {"event": "mark", "name": "m1"}),
        (Clear(), {"event": "clear"}),
        (Hangup(), {"event": "hangup"}),
        (Stop(), {"event": "hangup"}),
        (Dtmf("#"), {"event": "dtmf", "digits": "#"}),
        (StatsRequest(), {"event": "stats"}),
    ],
)
def test_app_control_golden(event: Event, wire: dict[str, Any]) -> None:
    [text] = SlnApp().send(event)
    assert isinstance(text, str)
    assert json.loads(text) == wire


def test_audio_is_passed_through_unchanged() -> None:
    pcm = bytes(range(256)) + bytes(64)
    conn = platform()
    assert conn.send_audio(pcm) is pcm
    assert conn.send(Audio(Frame(pcm, 8000))) == [pcm]
    assert SlnApp().send_audio(pcm) is pcm
    assert conn.receive(pcm) == [Audio(Frame(pcm, 8000))]


def test_events_without_wire_form_give_nothing() -> None:
    for event in (Clear(), Hangup(), StatsRequest(), Connected(), Audio(Frame(b"", 8000))):
        assert platform().send(event) == []
    for other in (
        Cleared(),
        Drained(),
        Stats(1, 2),
        Start("a", "b"),
        Connected(),
        Audio(Frame(b"", 8000)),
    ):
        assert SlnApp().send(other) == []


def test_bad_dtmf_send_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        platform().send(Dtmf("x"))
    with pytest.raises(ValueError):
        SlnApp().send(Dtmf("12"))


# ------------------------------------------------------------------- platform receive


def test_platform_receives_commands() -> None:
    conn = platform()
    assert conn.receive('{"event":"mark","name":"greeting"}') == [Mark("greeting")]
    assert conn.receive('{"event":"clear"}') == [Clear()]
    assert conn.receive('{"event":"hangup"}') == [Hangup()]
    assert conn.receive('{"event":"dtmf","digits":"12#A"}') == [
        Dtmf("1"),
        Dtmf("2"),
        Dtmf("#"),
        Dtmf("A"),
    ]
    assert conn.receive('{"event":"stats"}') == [StatsRequest()]
    # Unknown fields in a known event are tolerated (forward compatibility).
    assert conn.receive('{"name":"m","event":"mark","extra":[1]}') == [Mark("m")]
    assert conn.unknown_events == 0


def test_platform_counts_unknown_events() -> None:
    conn = platform()
    assert conn.receive('{"event":"dance","x":1}') == []
    assert conn.receive('{"event":"cleared"}') == []  # the other direction's event
    assert conn.receive('{"event":"dance"}') == []
    assert (conn.unknown_events, conn.first_unknown_event) == (3, "dance")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[1,2]",
        '"mark"',
        "null",
        "{}",
        '{"event":5}',
        '{"event":"mark"}',
        '{"event":"mark","name":true}',  # a number is a name (test_mark_names.py); true is not
        '{"event":"mark","name":{"a":1}}',
        '{"event":"dtmf","digits":""}',
        '{"event":"dtmf","digits":"1x"}',
        '{"event":"dtmf","digits":"a"}',
        '{"event":"dtmf","digit":"5"}',
        '{"event":"mark","name":"a"',
        "\ud800",
        '{"event":"mark","name":"\ud800"}',
        '{"event":"mark","name":"m","x":' + "[" * 100_000 + "]" * 100_000 + "}",
        "[" * 100_000,
    ],
)
def test_platform_rejects_malformed_control(text: str) -> None:
    with pytest.raises(DialectError) as info:
        platform().receive(text)
    assert info.value.dialect == "sln"
    assert info.value.message


def test_platform_rejects_odd_audio() -> None:
    with pytest.raises(DialectError, match="PCM16"):
        platform().receive(b"\x00\x01\x02")
    assert platform().receive(b"") == []
    transport_buffer: Any = bytearray(b"\x01\x02")  # what a transport may hand over
    assert platform().receive(transport_buffer) == [Audio(Frame(b"\x01\x02", 8000))]


# ------------------------------------------------------------------------ app receive


def test_app_receives_start_and_learns_the_stream() -> None:
    app = SlnApp()
    text = (
        '{"event":"start","stream_id":"s","call_id":"c","encoding":"L16","sample_rate":16000,'
        '"channels":1,"frame_ms":20,"resumed":true,"replayed_ms":1200,"metadata":{"k":[1,2]}}'
    )
    assert app.receive(text) == [
        Start(
            "s",
            "c",
            sample_rate=16000,
            encoding="L16",
            metadata={"k": [1, 2]},
            resumed=True,
            replayed_ms=1200,
        )
    ]
    assert (app.stream_id, app.call_id, app.sample_rate, app.frame_ms) == ("s", "c", 16000, 20)
    assert app.receive(b"\x01\x00") == [Audio(Frame(b"\x01\x00", 16000))]


def test_app_receives_control() -> None:
    app = started_app()
    assert app.receive('{"event":"mark","name":"m"}') == [Mark("m")]
    assert app.receive('{"event":"cleared"}') == [Cleared()]
    assert app.receive('{"event":"dtmf","digit":"*"}') == [Dtmf("*")]
    assert app.receive('{"event":"drained"}') == [Drained()]
    assert app.receive('{"event":"stats","queued_ms":5,"buffered_ms":0}') == [Stats(5, 0)]
    assert app.receive('{"event":"stop","reason":"shutdown"}') == [Stop("shutdown")]
    assert app.receive('{"event":"stop"}') == [Stop(None)]
    assert app.receive('{"event":"clear"}') == []  # the other direction's event
    assert (app.unknown_events, app.first_unknown_event) == (1, "clear")


@pytest.mark.parametrize(
    "text",
    [
        '{"event":"start","stream_id":"s","call_id":"c","encoding":"L16","sample_rate":0}',
        '{"event":"start","stream_id":"s","call_id":"c","encoding":"L16","sample_rate":8000,"channels":2}',
        '{"event":"start","stream_id":"s","call_id":"c","encoding":"L16","sample_rate":8000.5}',
        '{"event":"start","stream_id":"s","call_id":"c","encoding":"L16","sample_rate":8000,"frame_ms":0}',
        '{"event":"start","stream_id":"s","call_id":"c","encoding":"PCMU","sample_rate":8000}',
        '{"event":"start","stream_id":"s","call_id":"c","encoding":"L16","sample_rate":8000,"resumed":true,"replayed_ms":-1}',
        '{"event":"start","call_id":"c","encoding":"L16","sample_rate":8000}',
        '{"event":"start","stream_id":"s","call_id":"c","encoding":"L16","sample_rate":8000,"metadata":[]}',
        '{"event":"start","stream_id":"s","call_id":"c","encoding":"L16","sample_rate":8000,"metadata":{"a":'
        + "[" * 100_000
        + "]" * 100_000
        + "}}",
    ],
)
def test_app_rejects_bad_start(text: str) -> None:
    with pytest.raises(DialectError):
        SlnApp().receive(text)


def test_app_requires_start_first_and_once() -> None:
    with pytest.raises(DialectError, match="before start"):
        SlnApp().receive(b"\x00\x00")
    with pytest.raises(DialectError, match="before start"):
        SlnApp().receive('{"event":"mark","name":"m"}')
    app = started_app()
    with pytest.raises(DialectError, match="second start"):
        app.receive(platform().send(Start("st-1", "call-1"))[0])
    with pytest.raises(DialectError):
        app.receive('{"event":"stats","queued_ms":-1,"buffered_ms":0}')
    with pytest.raises(DialectError):
        app.receive('{"event":"dtmf","digit":"55"}')
    with pytest.raises(DialectError):
        app.receive(b"\x00")


def test_standalone_codec() -> None:
    assert encode_control(Mark("x"), "app") == '{"event":"mark","name":"x"}'
    assert encode_control(Dtmf("9"), "app") == '{"event":"dtmf","digits":"9"}'
    assert encode_control(Dtmf("9"), "platform") == '{"event":"dtmf","digit":"9"}'
    assert encode_control(Audio(Frame(b"", 8000)), "platform") is None
    assert encode_control(Clear(), "platform") is None
    assert decode_control('{"event":"dtmf","digits":"9"}', "platform") == [Dtmf("9")]
    assert decode_control('{"event":"nope"}', "platform") == []
    with pytest.raises(ValueError):
        encode_control(Start("a", "b", metadata={"x": object()}), "platform")


# ------------------------------------------------------------------------ round trips

idents = st.text(min_size=1, max_size=40)
metadata = st.dictionaries(
    st.text(max_size=10),
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=20)
    | st.lists(st.integers(), max_size=3),
    max_size=5,
)
pcm_bytes = st.binary(max_size=4000).map(lambda b: b[: len(b) & ~1])
digits = st.sampled_from("0123456789*#ABCD")


@settings(max_examples=300, deadline=None)
@given(
    stream_id=idents,
    call_id=idents,
    rate=st.sampled_from([8000, 16000, 24000, 48000]),
    ptime=st.sampled_from([10, 20, 30]),
    meta=metadata,
    resumed=st.booleans(),
    replayed=st.integers(0, 40_000),
)
def test_start_round_trip(
    stream_id: str,
    call_id: str,
    rate: int,
    ptime: int,
    meta: dict[str, Any],
    resumed: bool,
    replayed: int,
) -> None:
    conn = SlnPlatform(stream_id, call_id, rate, ptime)
    start = Start(
        stream_id,
        call_id,
        sample_rate=rate,
        metadata=meta,
        resumed=resumed,
        replayed_ms=replayed if resumed else 0,
    )
    app = SlnApp()
    [text] = conn.send(start)
    assert app.receive(text) == [start]
    assert app.frame_ms == ptime


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            pcm_bytes.filter(bool).map(lambda b: Audio(Frame(b, 8000))),
            idents.map(Mark),
            digits.map(Dtmf),
            st.just(Cleared()),
            st.just(Drained()),
            st.builds(Stats, st.integers(0, 10**6), st.integers(0, 10**6)),
            st.builds(Stop, st.none() | idents),
        ),
        max_size=20,
    )
)
def test_platform_to_app_round_trip(events: list[Event]) -> None:
    conn = platform()
    app = started_app()
    received: list[Event] = []
    for event in events:
        for message in conn.send(event):
            received.extend(app.receive(message))
    assert received == events


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            pcm_bytes.filter(bool).map(lambda b: Audio(Frame(b, 8000))),
            idents.map(Mark),
            digits.map(Dtmf),
            st.just(Clear()),
            st.just(Hangup()),
            st.just(StatsRequest()),
        ),
        max_size=20,
    ),
    st.text(alphabet="0123456789*#ABCD", min_size=1, max_size=12),
)
def test_app_to_platform_round_trip(events: list[Event], dial: str) -> None:
    conn = platform()
    app = started_app()
    received: list[Event] = []
    for event in events:
        for message in app.send(event):
            received.extend(conn.receive(message))
    assert received == events
    # A digit string sent in one message arrives as one Dtmf per digit.
    assert conn.receive(json.dumps({"event": "dtmf", "digits": dial})) == [Dtmf(d) for d in dial]


# ---------------------------------------------------------------------------- fuzzing

# Cheap strategies on purpose: hypothesis spends far more time generating a nested
# value than the decoder spends on it, and every decoder gets thousands of examples.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=8)
    | st.sampled_from(["L16", "5", "12#", "x", 8000, 20, 1, -1, 1.5, 2**70, [], {}, {"a": [1]}])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=4,
)
FIELDS = [
    "name",
    "digits",
    "digit",
    "stream_id",
    "call_id",
    "encoding",
    "sample_rate",
    "channels",
    "frame_ms",
    "resumed",
    "replayed_ms",
    "metadata",
    "queued_ms",
    "buffered_ms",
    "reason",
]
EVENTS = [
    "start",
    "mark",
    "clear",
    "cleared",
    "hangup",
    "dtmf",
    "drained",
    "stats",
    "stop",
    "bogus",
    "",
]
shaped = st.builds(
    lambda event, fields: json.dumps({**fields, "event": event}),
    st.sampled_from(EVENTS) | scalars,
    st.dictionaries(st.sampled_from(FIELDS), scalars, max_size=5),
)
messages = st.one_of(
    st.binary(max_size=64), st.text(max_size=64), json_values.map(json.dumps), shaped
)


def feed(conn: SlnPlatform | SlnApp, message: bytes | str) -> None:
    try:
        events = conn.receive(message)
    except DialectError as exc:
        assert exc.dialect == "sln" and exc.message
        return
    assert isinstance(events, list)
    assert all(isinstance(e, EVENT_TYPES) for e in events)


@FUZZ
@given(messages)
def test_fuzz_decoders_both_roles(message: bytes | str) -> None:
    """Any bytes, text or JSON: events or a DialectError, never anything else."""
    feed(platform(), message)
    feed(SlnApp(), message)
    feed(started_app(), message)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, categories=["Cs", "Lu", "Po"]), max_size=20))
def test_fuzz_surrogates(text: str) -> None:
    for message in (text, '{"event":"mark","name":"' + text + '"}'):
        for conn in (platform(), started_app()):
            feed(conn, message)
