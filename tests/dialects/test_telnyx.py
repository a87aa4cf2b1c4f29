"""Telnyx media streaming dialect (PROTOCOLS.md §5): snake_case, codecs, reordering."""

from __future__ import annotations

import base64
import copy
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
    Event,
    Hangup,
    Mark,
    Start,
    Stats,
    StatsRequest,
    Stop,
)
from bridge.dialects._telnyx import RESYNC_GAP, TelnyxApp, TelnyxError, TelnyxPlatform
from bridge.media import Frame, audioop

from .test_twilio import FUZZ, PROPS, check_decoder, fuzz_inputs, pcm_frames

STREAM = "32de0dea-53cb-4b21-89a4-9e1819c043bc"
CALL = "v3:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ"
USER = "3E6F995F-85F7-4705-9741-53B116D28237"
SILENCE = b"\xff" * 160
PAYLOAD = base64.b64encode(SILENCE).decode()

CONNECTED = {"event": "connected", "version": "1.0.0"}
START = {
    "event": "start",
    "sequence_number": "1",
    "start": {
        "user_id": USER,
        "call_control_id": CALL,
        "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
    },
    "stream_id": STREAM,
}
MEDIA = {
    "event": "media",
    "sequence_number": "4",
    "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": PAYLOAD},
    "stream_id": STREAM,
}
DTMF = {
    "event": "dtmf",
    "stream_id": STREAM,
    "occurred_at": "2022-09-28T14:37:04.880686Z",
    "sequence_number": "5",
    "dtmf": {"digit": "1"},
}
MARK = {"event": "mark", "sequence_number": "6", "stream_id": STREAM, "mark": {"name": "greeting"}}
STOP = {
    "event": "stop",
    "sequence_number": "7",
    "stop": {"user_id": USER, "call_control_id": CALL},
    "stream_id": STREAM,
}
ERROR = {
    "event": "error",
    "sequence_number": "8",
    "stream_id": STREAM,
    "payload": {"code": 100002, "title": "unknown_error", "detail": "An unknown error occurred"},
}
FROM_TELNYX = [CONNECTED, START, MEDIA, DTMF, MARK, STOP, ERROR]
TELNYX_EVENTS = ["connected", "start", "media", "dtmf", "mark", "stop", "error", "clear"]

APP_MEDIA = {"event": "media", "media": {"payload": PAYLOAD}}
APP_MARK = {"event": "mark", "mark": {"name": "greeting"}}
APP_CLEAR = {"event": "clear"}
FROM_APP = [APP_MEDIA, APP_MARK, APP_CLEAR, {**APP_MEDIA, "stream_id": STREAM}]

CODECS = [("PCMU", 8000), ("PCMA", 8000), ("L16", 8000), ("L16", 16000)]


def start_message(codec: str = "PCMU", rate: int = 8000) -> str:
    start = copy.deepcopy(START)
    start["start"]["media_format"] = {"encoding": codec, "sample_rate": rate, "channels": 1}
    return json.dumps(start)


def media(chunk: int | None, **fields: Any) -> str:
    message = copy.deepcopy(MEDIA)
    if chunk is None:
        del message["media"]["chunk"]
    else:
        message["media"]["chunk"] = str(chunk)
    for key, value in fields.items():
        if key in ("timestamp", "track", "payload"):
            if value is None:
                del message["media"][key]
            else:
                message["media"][key] = value
        elif value is None:
            del message[key]
        else:
            message[key] = value
    return json.dumps(message)


def started_app(**kwargs: Any) -> TelnyxApp:
    app = TelnyxApp(**kwargs)
    app.receive(json.dumps(CONNECTED))
    app.receive(json.dumps(START))
    return app


def chunks(events: list[Event]) -> list[int | None]:
    return [e.seq for e in events if isinstance(e, Audio)]


def encode(codec: str, pcm: bytes) -> bytes:
    if codec == "PCMU":
        return audioop.lin2ulaw(pcm, 2)
    if codec == "PCMA":
        return audioop.lin2alaw(pcm, 2)
    return pcm


# --------------------------------------------------------------------------- golden vectors


def test_app_decodes_the_documented_sequence() -> None:
    app = TelnyxApp()
    assert app.receive(json.dumps(CONNECTED)) == [Connected({"version": "1.0.0"})]
    [start] = app.receive(json.dumps(START))
    assert start == Start(
        stream_id=STREAM,
        call_id=CALL,
        sample_rate=8000,
        encoding="PCMU",
        metadata={
            "carrier": "telnyx",
            "stream_id": STREAM,
            "call_control_id": CALL,
            "user_id": USER,
            "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
        },
    )
    assert (app.stream_id, app.call_control_id) == (STREAM, CALL)
    [audio] = app.receive(json.dumps(MEDIA))
    assert audio == Audio(Frame(audioop.ulaw2lin(SILENCE, 2), 8000), seq=1, timestamp=5)
    assert app.receive(json.dumps(DTMF)) == [Dtmf("1")]
    assert app.receive(json.dumps(MARK)) == [Mark("greeting")]
    assert app.receive(json.dumps(STOP)) == [Stop()]
    assert (app.stats.chunks_received, app.stats.marks_received, app.stats.dtmf_received) == (
        1,
        1,
        1,
    )


def test_app_surfaces_telnyx_errors_without_dying() -> None:
    app = started_app()
    with pytest.raises(TelnyxError) as info:
        app.receive(json.dumps(ERROR))
    error = info.value
    assert isinstance(error, UnsupportedMessage)  # the log-and-carry-on kind
    assert (error.code, error.title, error.detail) == (
        100002,
        "unknown_error",
        "An unknown error occurred",
    )
    assert "100002" in str(error) and "An unknown error occurred" in str(error)
    assert app.last_error is error and app.stats.errors_received == 1
    assert chunks(app.receive(media(1))) == [1]  # the stream goes on
    # The frame layout is UNCONFIRMED: other plausible shapes are read too.
    for shape in (
        {"event": "error", "error": {"code": 1, "title": "t", "detail": "d"}},
        {"event": "error", "payload": [{"code": 1, "title": "t", "detail": "d"}]},
        {"event": "error", "code": 1, "title": "t", "detail": "d"},
        {"event": "error", "payload": "just text"},
        {"event": "error"},
    ):
        with pytest.raises(TelnyxError):
            app.receive(json.dumps(shape))
    assert app.stats.errors_received == 6


def test_app_encodes_the_documented_messages() -> None:
    app = started_app()
    pcm = audioop.ulaw2lin(SILENCE, 2)
    assert json.loads(app.send_audio(pcm)) == APP_MEDIA
    assert [json.loads(m) for m in app.send(Audio(Frame(pcm, 8000)))] == [APP_MEDIA]
    assert [json.loads(m) for m in app.send(Mark("greeting"))] == [APP_MARK]
    assert [json.loads(m) for m in app.send(Clear())] == [APP_CLEAR]
    for event in (Hangup(), Stop(), Dtmf("1"), StatsRequest()):
        assert app.send(event) == []


def test_platform_encodes_the_documented_sequence() -> None:
    telnyx = TelnyxPlatform(
        STREAM, CALL, start_extra={"user_id": USER, "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d"}
    )
    sent = [json.loads(m) for e in (Connected(), Start("x", "y")) for m in telnyx.send(e)]
    assert sent == [CONNECTED, START]
    pcm = audioop.ulaw2lin(SILENCE, 2)
    assert json.loads(telnyx.send_audio(pcm)) == {
        "event": "media",
        "sequence_number": "2",
        "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": PAYLOAD},
        "stream_id": STREAM,
    }
    [second] = telnyx.send(Audio(Frame(pcm, 8000)))
    assert json.loads(second)["media"]["timestamp"] == "20"
    assert json.loads(telnyx.send(Dtmf("1"))[0]) == {
        "event": "dtmf",
        "stream_id": STREAM,
        "sequence_number": "4",
        "dtmf": {"digit": "1"},
    }
    assert json.loads(telnyx.send(Mark("greeting"))[0]) == {**MARK, "sequence_number": "5"}
    assert json.loads(telnyx.send(Stop())[0]) == {
        "event": "stop",
        "sequence_number": "6",
        "stop": {"call_control_id": CALL},
        "stream_id": STREAM,
    }
    assert json.loads(telnyx.error_message(100002, "unknown_error", "x")) == {
        "event": "error",
        "sequence_number": "7",
        "stream_id": STREAM,
        "payload": {"code": 100002, "title": "unknown_error", "detail": "x"},
    }
    for event in (Cleared(), Drained(), Stats(1, 2)):
        assert telnyx.send(event) == []


def test_platform_decodes_app_messages() -> None:
    telnyx = TelnyxPlatform(STREAM, CALL)
    [audio] = telnyx.receive(json.dumps(APP_MEDIA))
    assert audio == Audio(Frame(audioop.ulaw2lin(SILENCE, 2), 8000))
    assert telnyx.receive(json.dumps({**APP_MARK, "stream_id": STREAM})) == [Mark("greeting")]
    assert telnyx.receive(json.dumps(APP_CLEAR)) == [Clear()]
    with pytest.raises(DialectError, match="stream_id 'other'"):
        telnyx.receive(json.dumps({**APP_CLEAR, "stream_id": "other"}))
    with pytest.raises(UnsupportedMessage, match="'start' is sent by Telnyx"):
        telnyx.receive(json.dumps(START))


def test_counters_may_be_numbers_or_strings() -> None:
    app = started_app()
    message = json.loads(media(1))
    message["media"].update(chunk=1, timestamp=5)
    message["sequence_number"] = 4
    [audio] = app.receive(json.dumps(message))
    assert (audio.seq, audio.timestamp) == (1, 5)
    start = json.loads(start_message("L16", 16000))
    start["start"]["media_format"]["sample_rate"] = "16000"
    assert TelnyxApp().receive(json.dumps(start))[0].sample_rate == 16000


@pytest.mark.parametrize(
    ("codec", "rate", "match"),
    [
        ("G722", 8000, "unsupported encoding 'G722'"),
        ("OPUS", 48000, "unsupported encoding"),
        ("PCMU", 16000, "PCMU is 8000 Hz only"),
        ("L16", 24000, "L16 sample rate 24000"),
    ],
)
def test_unsupported_formats(codec: str, rate: int, match: str) -> None:
    with pytest.raises(DialectError, match=match):
        TelnyxApp().receive(start_message(codec, rate))
    with pytest.raises(ValueError, match=match):
        TelnyxPlatform(STREAM, CALL, codec, rate)


def test_encoding_aliases() -> None:
    for alias, name in (("audio/x-mulaw", "PCMU"), ("pcma", "PCMA"), ("audio/L16", "L16")):
        assert TelnyxApp().receive(start_message(alias))[0].encoding == name


def test_send_codec_is_configurable_and_known_before_start() -> None:
    app = TelnyxApp(codec="L16", sample_rate=16000)
    pcm = b"\x01\x02" * 320
    payload = base64.b64decode(json.loads(app.send_audio(pcm))["media"]["payload"])
    assert payload == b"\x02\x01" * 320  # L16 is big-endian on the wire
    app.receive(json.dumps(START))  # PCMU in, L16/16000 out
    assert app.send(Audio(Frame(pcm, 16000)))
    with pytest.raises(ValueError, match="8000 Hz for a 16000 Hz stream"):
        app.send(Audio(Frame(pcm, 8000)))
    with pytest.raises(DialectError, match="not known before Telnyx's 'start'"):
        TelnyxApp().send_audio(pcm)
    with pytest.raises(DialectError, match="cannot send PCMU at sample_rate=16000"):
        TelnyxApp(sample_rate=16000).receive(json.dumps(START))
    with pytest.raises(ValueError, match="reorder_window"):
        TelnyxApp(reorder_window=-1)


def test_app_rejects_out_of_order_and_foreign_messages() -> None:
    app = TelnyxApp()
    with pytest.raises(DialectError, match="'media' before 'start'"):
        app.receive(json.dumps(MEDIA))
    with pytest.raises(DialectError, match="'dtmf' before 'start'"):
        app.receive(json.dumps(DTMF))
    with pytest.raises(DialectError, match="BINARY"):
        app.receive(b"{}")
    bad = copy.deepcopy(START)
    del bad["start"]["call_control_id"]
    with pytest.raises(DialectError, match="call_control_id"):
        app.receive(json.dumps(bad))
    bad = copy.deepcopy(START)
    del bad["stream_id"]
    with pytest.raises(DialectError, match="no stream_id"):
        app.receive(json.dumps(bad))
    app.receive(json.dumps(START))
    with pytest.raises(DialectError, match="second 'start'"):
        app.receive(json.dumps(START))
    with pytest.raises(DialectError, match="not this stream's"):
        app.receive(json.dumps({**MARK, "stream_id": "other"}))
    with pytest.raises(UnsupportedMessage, match="'clear' is sent by the app"):
        app.receive(json.dumps(APP_CLEAR))
    l16 = TelnyxApp()
    l16.receive(start_message("L16"))
    with pytest.raises(DialectError, match="3 bytes is not a whole number of 2-byte samples"):
        l16.receive(media(1, payload="AAEC"))


def test_other_tracks_are_counted_and_dropped() -> None:
    app = started_app()
    assert app.receive(media(1, track="outbound")) == []
    assert chunks(app.receive(media(1))) == [1]
    assert app.stats.other_track_chunks == 1


# --------------------------------------------------------------------------- codec round trips


@PROPS
@given(format=st.sampled_from(CODECS), frames=st.lists(pcm_frames(640), max_size=5))
def test_platform_to_app_audio_round_trip(format: tuple[str, int], frames: list[bytes]) -> None:
    codec, rate = format
    telnyx = TelnyxPlatform(STREAM, CALL, codec, rate)
    app = TelnyxApp()
    [start] = app.receive(telnyx.send(Start("x", "y"))[0])
    assert (start.encoding, start.sample_rate) == (codec, rate)
    samples = 0
    for chunk, pcm in enumerate(frames, start=1):
        [audio] = app.receive(telnyx.send_audio(pcm))
        assert encode(codec, audio.frame.pcm) == encode(codec, pcm)  # L16: exact
        assert (audio.frame.sample_rate, audio.seq) == (rate, chunk)
        assert audio.timestamp == samples * 1000 // rate
        samples += len(pcm) // 2


@PROPS
@given(format=st.sampled_from(CODECS), frames=st.lists(pcm_frames(640), max_size=5))
def test_app_to_platform_audio_round_trip(format: tuple[str, int], frames: list[bytes]) -> None:
    codec, rate = format
    telnyx = TelnyxPlatform(STREAM, CALL, codec, rate)
    app = TelnyxApp()
    app.receive(telnyx.send(Start("x", "y"))[0])
    for pcm in frames:
        [audio] = telnyx.receive(app.send_audio(pcm))
        assert encode(codec, audio.frame.pcm) == encode(codec, pcm)
        assert audio.frame.sample_rate == rate


def test_l16_is_big_endian_on_the_wire() -> None:
    telnyx = TelnyxPlatform(STREAM, CALL, "L16", 8000)
    wire = json.loads(telnyx.send_audio(b"\x01\x02\x03\x04"))["media"]["payload"]
    assert base64.b64decode(wire) == b"\x02\x01\x04\x03"


@PROPS
@given(
    names=st.lists(st.text(), max_size=4),
    digits=st.lists(st.sampled_from("0123456789*#ABCD"), max_size=4),
    extra=st.dictionaries(st.sampled_from(["user_id", "client_state", "x"]), st.text()),
)
def test_control_and_start_round_trip(
    names: list[str], digits: list[str], extra: dict[str, str]
) -> None:
    telnyx = TelnyxPlatform(STREAM, CALL, start_extra=extra)
    app = TelnyxApp()
    assert app.receive(telnyx.send(Connected())[0]) == [Connected({"version": "1.0.0"})]
    [start] = app.receive(telnyx.send(Start("x", "y"))[0])
    assert start.metadata == {
        "carrier": "telnyx",
        "stream_id": STREAM,
        "call_control_id": CALL,
        **extra,
    }
    for name in names:
        assert app.receive(telnyx.send(Mark(name))[0]) == [Mark(name)]
        assert telnyx.receive(app.send(Mark(name))[0]) == [Mark(name)]
    for digit in digits:
        assert app.receive(telnyx.send(Dtmf(digit))[0]) == [Dtmf(digit)]
    assert telnyx.receive(app.send(Clear())[0]) == [Clear()]
    assert app.receive(telnyx.send(Stop())[0]) == [Stop()]


# --------------------------------------------------------------------------- reordering


@st.composite
def within_window(draw: st.DrawFn) -> tuple[int, list[int]]:
    """A window and chunk order where no chunk is overtaken by more than ``window`` others."""
    window = draw(st.integers(0, 5))
    n = draw(st.integers(0, 40))
    jitter = draw(
        st.lists(
            st.floats(0, window + 1, exclude_max=True, allow_nan=False), min_size=n, max_size=n
        )
    )
    return window, sorted(range(1, n + 1), key=lambda c: c + jitter[c - 1])


@PROPS
@given(case=within_window())
def test_reorder_within_the_window_restores_order(case: tuple[int, list[int]]) -> None:
    window, order = case
    app = started_app(reorder_window=window)
    out: list[int | None] = []
    expected_next = 1
    for chunk in order:
        released = chunks(app.receive(media(chunk)))
        if chunk == expected_next:  # in order: passes straight through, no added delay
            assert released[:1] == [chunk]
        if released:
            expected_next = max(c for c in released if c is not None) + 1
        out += released
    assert out == list(range(1, len(order) + 1))  # none lost, none duplicated
    stats = app.stats
    assert (stats.late_chunks, stats.skipped_chunks, stats.duplicate_chunks) == (0, 0, 0)


@PROPS
@given(
    window=st.integers(0, 4),
    arrivals=st.lists(st.integers(1, 30), max_size=40),
    stop=st.booleans(),
)
def test_reorder_beyond_the_window_skips_gaps_and_counts_late(
    window: int, arrivals: list[int], stop: bool
) -> None:
    app = started_app(reorder_window=window)
    out: list[int | None] = []
    for chunk in arrivals:
        out += chunks(app.receive(media(chunk)))
    out += chunks(app.receive(json.dumps(STOP)) if stop else app.flush())
    emitted = [c for c in out if c is not None]
    assert emitted == sorted(set(emitted))  # in order, no duplicates
    assert set(emitted) <= set(arrivals)
    stats = app.stats
    # Every chunk is released once, or counted as late or as a duplicate.
    assert len(emitted) + stats.late_chunks + stats.duplicate_chunks == len(arrivals)
    # What was jumped over is exactly what was given up.
    top = max(emitted, default=0)
    assert stats.skipped_chunks == top - len(emitted)


def test_reorder_skips_a_lost_chunk_and_drops_it_when_late() -> None:
    app = started_app(reorder_window=3)
    out = [chunks(app.receive(media(c))) for c in (1, 2, 4, 5, 6, 7, 3, 8)]
    assert out == [[1], [2], [], [], [], [4, 5, 6, 7], [], [8]]
    stats = app.stats
    # 4-7 arrived while chunk 3 was missing: all four went through the reorder buffer.
    assert (stats.skipped_chunks, stats.late_chunks, stats.reordered_chunks) == (1, 1, 4)


def test_reorder_window_zero_never_holds() -> None:
    app = started_app(reorder_window=0)
    assert [chunks(app.receive(media(c))) for c in (1, 3, 2, 4)] == [[1], [3], [], [4]]
    assert (app.stats.skipped_chunks, app.stats.late_chunks) == (1, 1)


def test_reorder_duplicates_and_stop_flush() -> None:
    app = started_app()
    assert chunks(app.receive(media(1))) == [1]
    assert chunks(app.receive(media(3))) == []
    assert chunks(app.receive(media(3))) == []
    assert chunks(app.receive(media(1))) == []
    events = app.receive(json.dumps(STOP))
    assert chunks(events) == [3] and events[-1] == Stop()
    stats = app.stats
    assert (stats.duplicate_chunks, stats.late_chunks, stats.skipped_chunks) == (1, 1, 1)


def test_reorder_accepts_zero_based_chunks() -> None:
    app = started_app()
    assert [chunks(app.receive(media(c))) for c in (0, 1, 2)] == [[0], [1], [2]]


def test_reorder_resyncs_when_the_numbering_restarts() -> None:
    app = started_app()
    for c in range(1, RESYNC_GAP + 10):
        app.receive(media(c))
    assert chunks(app.receive(media(1))) == [1]
    assert chunks(app.receive(media(2))) == [2]
    assert app.stats.late_chunks == 0


def test_order_falls_back_to_sequence_number() -> None:
    app = started_app()
    # Without chunk, the first media's sequence_number is the base; 11 is missing for now.
    out = [chunks(app.receive(media(None, sequence_number=str(n)))) for n in (10, 12)]
    assert out == [[10], []]
    assert app.order_key == "sequence_number"
    # A numbered non-media message fills its place, releasing what waited behind it.
    events = app.receive(json.dumps({**MARK, "sequence_number": "11"}))
    assert chunks(events) == [12] and events[-1] == Mark("greeting")
    assert chunks(app.receive(media(None, sequence_number="11"))) == []  # late
    assert app.stats.late_chunks == 1


def test_order_falls_back_to_timestamp_then_arrival() -> None:
    app = started_app()
    out = [
        chunks(app.receive(media(None, timestamp=str(t), sequence_number=None)))
        for t in (0, 40, 20, 60)
    ]
    assert out == [[None], [None], [], [None]]
    assert app.order_key == "timestamp" and app.stats.late_chunks == 1
    app = started_app()
    for _ in range(3):
        assert len(app.receive(media(None, timestamp=None, sequence_number=None))) == 1
    assert app.order_key == "none"


# --------------------------------------------------------------------------- fuzzing


def _codec_start(format: tuple[str, int]) -> dict[str, Any]:
    return json.loads(start_message(*format))


@FUZZ
@given(
    format=st.sampled_from(CODECS),
    prelude=st.sampled_from(["none", "start", "media"]),
    message=fuzz_inputs(FROM_TELNYX + FROM_APP, TELNYX_EVENTS),
)
def test_fuzz_both_decoders(format: tuple[str, int], prelude: str, message: Any) -> None:
    """Each input goes to both roles, with each codec (odd-length L16, bad base64, ...)."""
    check_decoder("telnyx", TelnyxPlatform(STREAM, CALL, *format).receive, message)
    app = TelnyxApp()
    if prelude != "none":
        app.receive(json.dumps(_codec_start(format)))
    if prelude == "media":
        app.receive(media(2, payload="AAAAAA=="))  # held: chunk 1 is missing
    check_decoder("telnyx", app.receive, message)
    check_decoder("telnyx", lambda _: app.flush(), None)
