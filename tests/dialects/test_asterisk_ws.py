"""Asterisk chan_websocket dialect (PROTOCOLS.md §3): plain text and JSON, marks and flush."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge._errors import DialectError, UnsupportedMessage
from bridge.dialects import AsteriskWsApp, AsteriskWsPlatform
from bridge.dialects._asterisk_ws import FORMATS, MAX_TEXT_BYTES, SPEC
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
from bridge.media import Frame, audioop

from .test_twilio import BAD_VALUES, FUZZ, PROPS, check_decoder, fuzz_inputs, pcm_frames

CHANNEL_ID = "1733150000.42"
SECTION = "bridge_media"
CHANNEL = "WebSocket/bridge_media/0x7f3a2c001230"

# --------------------------------------------------------------------------- golden vectors
# Plain text exactly as observed from Asterisk 22.10.1 (PROTOCOLS.md §3) and as
# chan_websocket.c prints it; JSON as ast_json_pack builds it.

PLAIN_START = (
    f"MEDIA_START connection_id:{SECTION} channel:{CHANNEL} channel_id:{CHANNEL_ID} "
    "format:slin optimal_frame_size:320 ptime:20"
)
JSON_START = {
    "event": "MEDIA_START",
    "connection_id": SECTION,
    "channel": CHANNEL,
    "channel_id": CHANNEL_ID,
    "format": "slin16",
    "optimal_frame_size": 640,
    "ptime": 20,
    "channel_variables": {"CALLERID(num)": "1000", "MEDIA_WEBSOCKET_CONNECTION_ID": SECTION},
}
PLAIN_EVENTS = [
    f"DTMF_END digit:1 channel_id:{CHANNEL_ID}",
    "MEDIA_MARK_PROCESSED m1",
    "MEDIA_XOFF",
    "MEDIA_XON",
    "QUEUE_DRAINED",
    "MEDIA_BUFFERING_COMPLETED b7",
    f"STATUS channel_id:{CHANNEL_ID} queue_length:1000 xon_level:800 xoff_level:900 "
    "queue_full:true bulk_media:false media_paused:false",
    f"ERROR channel_id:{CHANNEL_ID} error_text:FLUSH_MEDIA not supported in passthrough mode",
]
JSON_EVENTS: list[dict[str, Any]] = [
    {"event": "DTMF_END", "channel_id": CHANNEL_ID, "digit": "1"},
    {"event": "MEDIA_MARK_PROCESSED", "channel_id": CHANNEL_ID, "correlation_id": "m1"},
    {"event": "MEDIA_XOFF", "channel_id": CHANNEL_ID},
    {"event": "MEDIA_XON", "channel_id": CHANNEL_ID},
    {"event": "QUEUE_DRAINED", "channel_id": CHANNEL_ID},
    {"event": "MEDIA_BUFFERING_COMPLETED", "channel_id": CHANNEL_ID, "correlation_id": "b7"},
    {
        "event": "STATUS",
        "channel_id": CHANNEL_ID,
        "queue_length": 1000,
        "xon_level": 800,
        "xoff_level": 900,
        "queue_full": True,
        "bulk_media": False,
        "media_paused": False,
    },
    {"event": "ERROR", "channel_id": CHANNEL_ID, "error_text": "Unable to parse JSON command"},
]
EVENT_NAMES = [
    "MEDIA_START",
    "MEDIA_XOFF",
    "MEDIA_XON",
    "QUEUE_DRAINED",
    "MEDIA_MARK_PROCESSED",
    "MEDIA_BUFFERING_COMPLETED",
    "DTMF_END",
    "STATUS",
    "ERROR",
    "MARK_MEDIA",
]
COMMANDS_PLAIN = [
    "ANSWER",
    "HANGUP",
    "MARK_MEDIA m1",
    "FLUSH_MEDIA",
    "START_MEDIA_BUFFERING",
    "STOP_MEDIA_BUFFERING b7",
    "REPORT_QUEUE_DRAINED",
    "GET_STATUS",
    "PAUSE_MEDIA",
    "CONTINUE_MEDIA",
]
COMMANDS_JSON: list[dict[str, Any]] = [
    {"command": "ANSWER"},
    {"command": "HANGUP"},
    {"command": "MARK_MEDIA", "correlation_id": "m1"},
    {"command": "FLUSH_MEDIA"},
    {"command": "STOP_MEDIA_BUFFERING", "correlation_id": "b7"},
    {"command": "GET_STATUS"},
    {"command": "SET_MEDIA_DIRECTION", "direction": "in"},
]


def started(start: str | dict[str, Any] = PLAIN_START, **kwargs: Any) -> AsteriskWsApp:
    app = AsteriskWsApp(**kwargs)
    app.receive(start if isinstance(start, str) else json.dumps(start))
    return app


def platform(control_format: str = "plain-text", fmt: str = "slin") -> AsteriskWsPlatform:
    return AsteriskWsPlatform(
        CHANNEL_ID, SECTION, fmt, control_format, CHANNEL, {"CALLERID(num)": "1000"}
    )


def test_app_decodes_the_observed_plain_text_start() -> None:
    app = AsteriskWsApp()
    assert app.receive(PLAIN_START) == [
        Start(
            stream_id=CHANNEL_ID,
            call_id=CHANNEL_ID,
            sample_rate=8000,
            encoding="slin",
            metadata={
                "carrier": "asterisk_ws",
                "connection_id": SECTION,
                "channel": CHANNEL,
                "channel_id": CHANNEL_ID,
                "format": "slin",
                "optimal_frame_size": 320,
                "ptime": 20,
                "control_format": "plain-text",
            },
        )
    ]
    # The call id is the channel's uniqueid, never the config section (the same for
    # every call of that section).
    assert (app.channel_id, app.connection_id, app.optimal_frame_size) == (CHANNEL_ID, SECTION, 320)
    assert app.control_format == "plain-text"
    assert app.send(Hangup()) == ["HANGUP"]


def test_app_decodes_the_json_start_and_answers_in_json() -> None:
    app = AsteriskWsApp()
    [start] = app.receive(json.dumps(JSON_START))
    assert (start.sample_rate, start.encoding, start.call_id) == (16000, "slin16", CHANNEL_ID)
    assert start.metadata["channel_variables"] == JSON_START["channel_variables"]
    assert start.metadata["control_format"] == "json"
    assert [json.loads(m) for m in app.send(Hangup())] == [{"command": "HANGUP"}]
    assert [json.loads(m) for m in app.send(StatsRequest())] == [{"command": "GET_STATUS"}]


def test_command_format_can_be_forced() -> None:
    app = started(command_format="json")
    assert json.loads(app.answer_command()) == {"command": "ANSWER"}
    app = started(JSON_START, command_format="plain-text")
    assert app.answer_command() == "ANSWER"
    with pytest.raises(ValueError, match="command_format"):
        AsteriskWsApp(command_format="xml")


@pytest.mark.parametrize(
    ("events", "start"), [(PLAIN_EVENTS, PLAIN_START), (JSON_EVENTS, JSON_START)]
)
def test_app_decodes_every_event(events: list[Any], start: Any) -> None:
    app = started(start)
    app.marks.sent("my label")  # -> m1 on the wire
    messages = [e if isinstance(e, str) else json.dumps(e) for e in events]
    out = [app.receive(m) for m in messages]
    ptime = 20
    assert out == [
        [Dtmf("1")],
        [Mark("my label")],
        [FlowControl(True)],
        [FlowControl(False)],
        [Drained()],
        [],
        [Stats(queued_ms=1000 * ptime, buffered_ms=0)],
        [],
    ]
    assert app.last_status == {
        "queue_length": 1000,
        "xon_level": 800,
        "xoff_level": 900,
        "queue_full": True,
        "bulk_media": False,
        "media_paused": False,
    }
    assert app.last_buffering_completed == "b7"
    assert app.last_error in (
        "FLUSH_MEDIA not supported in passthrough mode",
        "Unable to parse JSON command",
    )
    stats = app.stats
    assert (stats.dtmf_received, stats.marks_received, stats.xoff, stats.errors_received) == (
        1,
        1,
        1,
        1,
    )
    assert stats.buffering_completed == 1 and not app.paused


def test_app_accepts_the_keyed_mark_form_and_ignores_unknown_events() -> None:
    app = started()
    wire = app.marks.sent("x")
    assert app.receive(f"MEDIA_MARK_PROCESSED correlation_id:{wire}") == [Mark("x")]
    assert app.receive("MEDIA_SOMETHING_NEW foo:bar") == []
    assert app.receive('{"event":"MEDIA_FUTURE","channel_id":"1"}') == []
    assert (app.stats.unknown_events, app.stats.first_unknown_event) == (2, "'MEDIA_SOMETHING_NEW'")


def test_app_media_passes_partial_frames_and_decodes_each_format() -> None:
    app = started()
    pcm = bytes(range(256)) + bytes(range(64))  # 320 bytes of slin, little-endian
    assert app.receive(pcm) == [Audio(Frame(pcm, 8000))]
    # The last frame of a playback arrives short (observed: 276 B): passed on as is.
    assert app.receive(pcm[:276]) == [Audio(Frame(pcm[:276], 8000))]
    assert app.receive(b"") == []
    assert (app.stats.media_messages, app.stats.partial_frames, app.stats.media_bytes) == (
        2,
        1,
        596,
    )
    ulaw = started(PLAIN_START.replace("format:slin ", "format:ulaw ").replace(":320", ":160"))
    [audio] = ulaw.receive(b"\xff" * 160)
    assert audio.frame == Frame(audioop.ulaw2lin(b"\xff" * 160, 2), 8000)
    alaw = started(PLAIN_START.replace("format:slin ", "format:alaw ").replace(":320", ":160"))
    [audio] = alaw.receive(b"\xd5" * 160)
    assert audio.frame == Frame(audioop.alaw2lin(b"\xd5" * 160, 2), 8000)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_round_trips_at_its_rate(fmt: str) -> None:
    asterisk = platform("json", fmt)
    app = AsteriskWsApp()
    [start] = app.receive(asterisk.send(Start("x", "y"))[0])
    rate = FORMATS[fmt][1]
    assert (start.sample_rate, app.sample_rate) == (rate, rate)
    width = 1 if FORMATS[fmt][0] in ("pcmu", "pcma") else 2
    assert app.optimal_frame_size == rate // 50 * width == asterisk.optimal_frame_size
    pcm = b"\x10\x00" * (rate // 50)
    [audio] = asterisk.receive(app.send_audio(pcm))
    [back] = app.receive(asterisk.send_audio(audio.frame.pcm))
    assert back.frame.sample_rate == rate and len(back.frame.pcm) == len(pcm)


def test_app_encodes_commands_within_128_bytes_whatever_the_mark_name() -> None:
    app = started()
    name = "a very long mark name, with spaces: " + "x" * 500
    assert app.send(Mark(name)) == ["MARK_MEDIA m1"]
    assert app.send(Mark(name)) == ["MARK_MEDIA m2"]
    assert app.receive("MEDIA_MARK_PROCESSED m2") == [Mark(name)]
    assert app.receive("MEDIA_MARK_PROCESSED m1") == [Mark(name)]
    json_app = started(JSON_START)
    [cmd] = json_app.send(Mark(name))
    assert json.loads(cmd) == {"command": "MARK_MEDIA", "correlation_id": "m1"}
    assert len(cmd.encode()) <= MAX_TEXT_BYTES
    assert app.send(Clear()) == ["FLUSH_MEDIA"]
    assert app.send(StatsRequest()) == ["GET_STATUS"]
    assert [app.answer_command(), app.start_media_buffering(), app.stop_media_buffering("b1")] == [
        "ANSWER",
        "START_MEDIA_BUFFERING",
        "STOP_MEDIA_BUFFERING b1",
    ]
    assert [app.report_queue_drained(), app.pause_media(), app.continue_media()] == [
        "REPORT_QUEUE_DRAINED",
        "PAUSE_MEDIA",
        "CONTINUE_MEDIA",
    ]
    assert app.stop_media_buffering() == "STOP_MEDIA_BUFFERING"
    with pytest.raises(ValueError, match="correlation id"):
        app.stop_media_buffering("has space")
    with pytest.raises(ValueError, match="128"):
        app.stop_media_buffering("x" * 200)
    # No DTMF command exists, and Stop means: close the socket.
    assert app.send(Dtmf("5")) == [] and app.send(Stop()) == []


def test_flush_settles_pending_marks_played_or_cleared() -> None:
    """FLUSH_MEDIA drops pending marks without an event: the app role settles them."""
    app = started()
    app.send(Mark("a"))
    app.send(Mark("b"))
    app.send(Mark("c"))
    assert app.receive("MEDIA_MARK_PROCESSED m1") == [Mark("a")]
    assert app.take_events() == []
    assert app.send(Clear()) == ["FLUSH_MEDIA"]
    assert app.take_events() == [Mark("b"), Mark("c"), Cleared()]
    assert app.take_events() == []
    # A mark after the flush is a new one; a (never observed) late echo is dropped.
    app.send(Mark("d"))
    assert app.receive("MEDIA_MARK_PROCESSED m2") == []
    assert app.receive("MEDIA_MARK_PROCESSED m4") == [Mark("d")]
    assert (app.marks.settled, app.marks.stale_echoes) == (2, 1)


def test_app_audio_is_sent_in_whole_frames() -> None:
    app = started()
    frame = b"\x01\x00" * 160
    assert app.send_audio(frame) == frame
    assert app.send_audio(frame * 3) == frame * 3
    for bad in (b"", frame[:100], frame + b"\0\0", b"\0"):
        with pytest.raises(ValueError):
            app.send_audio(bad)
    # send(Audio) carries a partial frame over to the next call instead.
    assert app.send(Audio(Frame(frame[:200], 8000))) == []
    assert app.send(Audio(Frame(frame[:200], 8000))) == [frame[:200] + frame[:120]]
    assert app.send(Clear()) == ["FLUSH_MEDIA"]  # drops the 80 bytes held
    assert app.stats.tx_dropped_bytes == 80
    assert app.send(Audio(Frame(frame, 8000))) == [frame]
    ulaw = started(PLAIN_START.replace("format:slin ", "format:ulaw ").replace(":320", ":160"))
    assert ulaw.send_audio(b"\0\0" * 160) == audioop.lin2ulaw(b"\0\0" * 160, 2)
    with pytest.raises(ValueError, match="16000 Hz"):
        app.send(Audio(Frame(frame, 16000)))


def test_app_rejects_what_asterisk_never_sends() -> None:
    app = AsteriskWsApp()
    with pytest.raises(DialectError, match="before MEDIA_START"):
        app.receive(b"\0" * 320)
    with pytest.raises(DialectError, match="before MEDIA_START"):
        app.receive("MEDIA_XOFF")
    with pytest.raises(DialectError, match="before Asterisk's MEDIA_START"):
        app.send(Mark("x"))
    with pytest.raises(DialectError, match="unsupported channel format 'opus'"):
        AsteriskWsApp().receive(PLAIN_START.replace("format:slin", "format:opus"))
    with pytest.raises(DialectError, match="optimal_frame_size 321"):
        AsteriskWsApp().receive(PLAIN_START.replace(":320", ":321"))
    with pytest.raises(DialectError, match="malformed MEDIA_START"):
        AsteriskWsApp().receive("MEDIA_START channel_id:1 format:slin")
    with pytest.raises(DialectError, match="expected key:value"):
        AsteriskWsApp().receive(PLAIN_START + " oops")
    app = started()
    with pytest.raises(DialectError, match="second MEDIA_START"):
        app.receive(PLAIN_START)
    with pytest.raises(DialectError, match="not whole 16-bit samples"):
        app.receive(b"\0" * 275)
    with pytest.raises(DialectError, match="for channel '9'"):
        app.receive("DTMF_END digit:1 channel_id:9")
    with pytest.raises(DialectError, match="DTMF digit"):
        app.receive(f"DTMF_END digit:x channel_id:{CHANNEL_ID}")
    with pytest.raises(UnsupportedMessage, match="MARK_MEDIA is a command"):
        app.receive("MARK_MEDIA m1")
    with pytest.raises(UnsupportedMessage, match="JSON command"):
        app.receive('{"command":"HANGUP"}')
    with pytest.raises(DialectError, match="not valid JSON"):
        app.receive("{oops")
    with pytest.raises(DialectError, match='no string "event"'):
        app.receive('{"event": 5}')


# --------------------------------------------------------------------------- platform role


def test_platform_sends_what_asterisk_sends() -> None:
    asterisk = platform()
    assert asterisk.send(Connected()) == []
    assert asterisk.send(Start("ignored", "ignored")) == [PLAIN_START]
    assert asterisk.send(Dtmf("1")) == [PLAIN_EVENTS[0]]
    assert asterisk.send(FlowControl(True)) == ["MEDIA_XOFF"]
    assert asterisk.send(FlowControl(False)) == ["MEDIA_XON"]
    assert asterisk.send(Stats(queued_ms=20_000, buffered_ms=0)) == [PLAIN_EVENTS[6]]
    assert (
        asterisk.error_message("FLUSH_MEDIA not supported in passthrough mode") == PLAIN_EVENTS[7]
    )
    # QUEUE_DRAINED only once, and only after REPORT_QUEUE_DRAINED.
    assert asterisk.send(Drained()) == []
    assert asterisk.receive("REPORT_QUEUE_DRAINED") == []
    assert asterisk.send(Drained()) == ["QUEUE_DRAINED"]
    assert asterisk.send(Drained()) == []
    for event in (Cleared(), Stop("call_hangup")):
        assert asterisk.send(event) == []
    assert asterisk.send_audio(b"\x01\x02" * 160) == b"\x01\x02" * 160
    with pytest.raises(ValueError, match="AsteriskWsPlatform cannot send Clear"):
        asterisk.send(Clear())


def test_platform_json_events_are_asterisks() -> None:
    asterisk = platform("json", "slin16")
    start = json.loads(asterisk.send(Start("x", "y"))[0])
    assert start == {**JSON_START, "channel_variables": {"CALLERID(num)": "1000"}}
    sent = [
        json.loads(asterisk.send(e)[0]) for e in (Dtmf("1"), FlowControl(True), FlowControl(False))
    ]
    assert sent == JSON_EVENTS[0:1] + JSON_EVENTS[2:4]
    assert json.loads(asterisk.send(Stats(20_000, 0))[0]) == JSON_EVENTS[6]
    assert json.loads(asterisk.error_message("Unable to parse JSON command")) == JSON_EVENTS[7]
    assert asterisk.receive('{"command":"MARK_MEDIA","correlation_id":"m1"}') == [Mark("m1")]
    assert json.loads(asterisk.send(Mark("m1"))[0]) == JSON_EVENTS[1]


def test_platform_takes_commands_like_asterisk() -> None:
    asterisk = platform()
    assert asterisk.receive("  MARK_MEDIA m1 \n") == [Mark("m1")]
    assert asterisk.receive("HANGUP") == [Hangup()]
    assert asterisk.receive("GET_STATUS") == [StatsRequest()]
    assert asterisk.receive("ANSWER") == [] and asterisk.answered
    assert asterisk.receive("PAUSE_MEDIA") == [] and asterisk.media_paused
    assert asterisk.receive("CONTINUE_MEDIA") == [] and not asterisk.media_paused
    # Ignored, as Asterisk ignores them: unknown (case-sensitive), empty, over 128 bytes.
    for text in ("mark_media m1", "NOPE", "   ", "MARK_MEDIA " + "x" * 118, '{"command":"HANGUP"}'):
        assert asterisk.receive(text) == []
    assert asterisk.stats.ignored_commands == 5
    assert "exceeds 128" in (asterisk.stats.last_ignored or "") or asterisk.stats.last_ignored
    assert asterisk.receive("MARK_MEDIA " + "x" * 117) == [Mark("x" * 117)]  # exactly 128
    json_asterisk = platform("json")
    assert json_asterisk.receive('{"command":"FLUSH_MEDIA"}') == [Clear()]
    assert json_asterisk.receive('{"command":"MARK_MEDIA"}') == [Mark("")]
    assert json_asterisk.receive('{"command":"SET_MEDIA_DIRECTION","direction":"in"}') == []
    assert json_asterisk.receive("[1]") == [] and json_asterisk.receive('{"command":5}') == []
    # Asterisk answers ERROR "Unable to parse JSON command" to these (a plain-text
    # command on a JSON channel included): malformed input.
    for text in ("{oops", "HANGUP"):
        with pytest.raises(DialectError, match="unable to parse JSON command"):
            json_asterisk.receive(text)


def test_platform_frames_binary_media_and_drops_partial_frames() -> None:
    asterisk = platform()
    frame = bytes(range(160)) * 2
    assert asterisk.receive(frame * 2 + frame[:100]) == [Audio(Frame(frame, 8000))] * 2
    assert asterisk.stats.dropped_partial_bytes == 100
    # In media buffering the remainder is carried over, and sent short at the stop.
    assert asterisk.receive("START_MEDIA_BUFFERING") == []
    assert asterisk.receive(frame[:200]) == []
    assert asterisk.receive(frame[200:] + frame[:50]) == [Audio(Frame(frame, 8000))]
    out = asterisk.receive("STOP_MEDIA_BUFFERING b7")
    assert out[0] == Audio(Frame(frame[:50], 8000))
    [token] = out[1:]
    assert isinstance(token, Mark)
    assert asterisk.send(token) == ["MEDIA_BUFFERING_COMPLETED b7"]
    assert asterisk.receive(frame[:50]) == []  # buffering over: dropped again
    assert asterisk.stats.dropped_partial_bytes == 150
    # A torn last sample of slin cannot be played: the short frame is whole samples.
    asterisk.receive("START_MEDIA_BUFFERING")
    asterisk.receive(frame[:51])
    assert asterisk.receive("STOP_MEDIA_BUFFERING")[0] == Audio(Frame(frame[:50], 8000))


def test_platform_never_echoes_flushed_marks() -> None:
    asterisk = platform()
    assert asterisk.receive("MARK_MEDIA m1") == [Mark("m1")]
    assert asterisk.receive("MARK_MEDIA m2") == [Mark("m2")]
    assert asterisk.send(Mark("m1")) == ["MEDIA_MARK_PROCESSED m1"]
    asterisk.receive("START_MEDIA_BUFFERING")
    [token] = asterisk.receive("STOP_MEDIA_BUFFERING b1")
    assert isinstance(token, Mark)
    assert asterisk.receive("FLUSH_MEDIA") == [Clear()]
    # The engine answers pending marks on a clear; Asterisk never does.
    assert asterisk.send(Mark("m2")) == []
    assert asterisk.send(token) == []
    assert asterisk.stats.suppressed_marks == 2
    assert asterisk.send(Mark("m9")) == ["MEDIA_MARK_PROCESSED m9"]  # not the app's: echoed


def test_platform_refuses_ids_plain_text_cannot_carry() -> None:
    with pytest.raises(ValueError, match="channel_id"):
        AsteriskWsPlatform("a b")
    with pytest.raises(ValueError, match="format"):
        AsteriskWsPlatform("1", format="opus")
    with pytest.raises(ValueError, match="control_format"):
        AsteriskWsPlatform("1", control_format="xml")
    assert AsteriskWsPlatform("a b", control_format="json").sample_rate == 8000


# --------------------------------------------------------------------------- round trips


@PROPS
@given(
    control=st.sampled_from(["plain-text", "json"]),
    fmt=st.sampled_from(["slin", "slin16", "ulaw", "alaw"]),
    names=st.lists(st.text(), max_size=5),
    digits=st.lists(st.sampled_from("0123456789*#ABCD"), max_size=4),
    flush_after=st.integers(0, 5),
)
def test_marks_digits_and_flush_round_trip(
    control: str, fmt: str, names: list[str], digits: list[str], flush_after: int
) -> None:
    """App -> platform -> engine echo -> platform -> app: every mark comes back exactly
    once, in order, played or cleared."""
    asterisk, app = platform(control, fmt), AsteriskWsApp()
    app.receive(asterisk.send(Start("x", "y"))[0])
    echoed: list[str] = []
    for i, name in enumerate(names):
        [command] = app.send(Mark(name))
        assert len(command.encode()) <= MAX_TEXT_BYTES
        [mark] = asterisk.receive(command)
        assert isinstance(mark, Mark)
        if i < flush_after:
            for message in asterisk.send(mark):
                echoed += [e.name for e in app.receive(message) if isinstance(e, Mark)]
    [flush] = app.send(Clear())
    assert asterisk.receive(flush) == [Clear()]
    settled = app.take_events()
    assert settled[-1] == Cleared()
    echoed += [e.name for e in settled if isinstance(e, Mark)]
    assert echoed == names
    for digit in digits:
        assert app.receive(asterisk.send(Dtmf(digit))[0]) == [Dtmf(digit)]
    assert asterisk.receive(app.send(Hangup())[0]) == [Hangup()]


@PROPS
@given(frames=st.lists(pcm_frames(400), max_size=6), fmt=st.sampled_from(["slin", "ulaw"]))
def test_audio_round_trip(frames: list[bytes], fmt: str) -> None:
    asterisk, app = platform("plain-text", fmt), AsteriskWsApp()
    app.receive(asterisk.send(Start("x", "y"))[0])
    sent = b""
    received = b""
    for pcm in frames:
        for message in app.send(Audio(Frame(pcm, 8000))):
            for event in asterisk.receive(message):
                assert isinstance(event, Audio)
                received += event.frame.pcm
        sent += pcm
        if pcm:
            [audio] = app.receive(asterisk.send_audio(pcm))
            assert len(audio.frame.pcm) == len(pcm)
    whole = len(sent) - len(sent) % 320
    if fmt == "slin":
        assert received == sent[:whole]
    else:
        assert audioop.lin2ulaw(received, 2) == audioop.lin2ulaw(sent[:whole], 2)


# --------------------------------------------------------------------------- independent peers


def _parse_plain(text: str) -> tuple[str, dict[str, str]]:
    """A plain-text event parsed from the wire format alone (PROTOCOLS.md §3)."""
    name, *tokens = text.split(" ")
    return name, dict(token.split(":", 1) for token in tokens)


def test_an_independent_parser_reads_the_platform() -> None:
    asterisk = platform("plain-text", "slin16")
    name, fields = _parse_plain(asterisk.send(Start("x", "y"))[0])
    assert name == "MEDIA_START"
    assert fields == {
        "connection_id": SECTION,
        "channel": CHANNEL,
        "channel_id": CHANNEL_ID,
        "format": "slin16",
        "optimal_frame_size": "640",
        "ptime": "20",
    }
    assert _parse_plain(asterisk.send(Dtmf("#"))[0]) == (
        "DTMF_END",
        {"digit": "#", "channel_id": CHANNEL_ID},
    )
    name, fields = _parse_plain(asterisk.send(Stats(100, 0))[0])
    assert (name, fields["queue_length"], fields["queue_full"]) == ("STATUS", "5", "false")
    # slin16 is 16-bit little-endian PCM, 640 bytes per 20 ms.
    wire = asterisk.send_audio(b"\x34\x12" * 320)
    assert wire[:2] == b"\x34\x12" and len(wire) == 640


def test_the_app_reads_an_independent_peer() -> None:
    """Messages built by hand from the documented format, as Asterisk would send them."""
    app = AsteriskWsApp()
    start = {
        "event": "MEDIA_START",
        "connection_id": "c",
        "channel": "WebSocket/c/0x1",
        "channel_id": "42.1",
        "format": "ulaw",
        "optimal_frame_size": 160,
        "ptime": 20,
        "channel_variables": {},
    }
    [s] = app.receive(json.dumps(start, indent=2))
    assert (s.call_id, s.sample_rate) == ("42.1", 8000)
    [command] = app.send(Mark("done"))
    sent = json.loads(command)
    assert sent["command"] == "MARK_MEDIA" and len(command) <= 128
    reply = {
        "event": "MEDIA_MARK_PROCESSED",
        "channel_id": "42.1",
        "correlation_id": sent["correlation_id"],
    }
    assert app.receive(json.dumps(reply)) == [Mark("done")]


# --------------------------------------------------------------------------- fuzzing


@st.composite
def plain_mutations(draw: st.DrawFn) -> str:
    """A valid plain-text message or command with 1-3 tokens broken."""
    tokens = draw(st.sampled_from([PLAIN_START, *PLAIN_EVENTS, *COMMANDS_PLAIN])).split(" ")
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(tokens)))
        op = draw(st.sampled_from(("drop", "value", "insert", "name")))
        if op == "drop" and len(tokens) > 1 and i < len(tokens):
            del tokens[i]
        elif op == "value" and 0 < i < len(tokens):
            key = tokens[i].partition(":")[0]
            tokens[i] = f"{key}:{draw(BAD_VALUES.map(str) | st.text(max_size=8))}"
        elif op == "insert":
            tokens.insert(i, draw(st.text(max_size=10)))
        else:
            tokens[0] = draw(st.sampled_from(EVENT_NAMES) | st.text(max_size=8))
    return " ".join(tokens)


ASTERISK_INPUTS = st.one_of(
    plain_mutations(),
    plain_mutations(),
    fuzz_inputs([JSON_START, *JSON_EVENTS, *COMMANDS_JSON], EVENT_NAMES),
    st.sampled_from([PLAIN_START, *PLAIN_EVENTS, *COMMANDS_PLAIN]),
    st.binary(max_size=64),
    st.integers(0, 2000).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
)


@FUZZ
@given(
    prelude=st.sampled_from([(), (PLAIN_START,), (json.dumps(JSON_START),)]),
    message=ASTERISK_INPUTS,
)
def test_fuzz_app_decoder(prelude: tuple[str, ...], message: Any) -> None:
    app = AsteriskWsApp()
    for valid in prelude:
        app.receive(valid)
    app.marks.sent("x")
    check_decoder("asterisk_ws", app.receive, message)


@FUZZ
@given(control=st.sampled_from(["plain-text", "json"]), message=ASTERISK_INPUTS)
def test_fuzz_platform_decoder(control: str, message: Any) -> None:
    asterisk = platform(control)
    asterisk.receive(
        '{"command":"START_MEDIA_BUFFERING"}' if control == "json" else "START_MEDIA_BUFFERING"
    )
    check_decoder("asterisk_ws", asterisk.receive, message)


def test_spec_describes_the_dialect() -> None:
    assert SPEC.roles() == (AsteriskWsPlatform, AsteriskWsApp)
    assert SPEC.subprotocol == "media" and SPEC.greets_first == "platform"
    assert {f.name for f in SPEC.formats} == set(FORMATS)
    assert SPEC.format("slin16").sample_rate == 16000
    caps = SPEC.capabilities
    assert caps.marks_on_clear == "dropped" and caps.settles_marks and not caps.dtmf_out
