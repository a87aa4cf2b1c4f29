"""The dialect registry: every dialect described once, and usable from its entry alone.

The wiring (configuration, listeners, app leg, ``bridge call``, ``bridge echo-server``)
builds dialects only through ``DialectSpec.platform_role``/``app_role``; these tests hold
every entry to that: the two roles a factory builds talk to each other, in every format
the entry lists.
"""

from __future__ import annotations

import struct
import uuid
from typing import Any

import attrs
import pytest

from bridge.dialects import (
    DEFAULT_ENCAPSULATION,
    SPECS,
    AppParams,
    Audio,
    Connected,
    DialectSpec,
    Error,
    FormatError,
    Mark,
    OptionError,
    PlatformParams,
    Start,
    Stop,
    UnknownDialect,
    carriers,
    cli_name,
    dialect,
    encapsulations,
    transports,
)
from bridge.dialects._plivo import PlivoPlatform
from bridge.dialects._sln import SlnApp, SlnPlatform
from bridge.dialects._twilio import twilio_sid
from bridge.media import PCMA, PCMU, Frame, codec_for

APP_LEGS = [s for s in SPECS if s.app_leg is not None]
FORMATS = [(s, f) for s in APP_LEGS for f in s.formats]


def test_names_are_unique_and_looked_up_in_either_spelling() -> None:
    names = [s.name for s in SPECS]
    assert len(set(names)) == len(names)
    for spec in SPECS:
        assert dialect(spec.name) is spec
        assert dialect(cli_name(spec.name)) is spec
    with pytest.raises(UnknownDialect, match="asterisk-ws"):
        dialect("g729")
    assert DEFAULT_ENCAPSULATION == "sln"


def test_the_lists_the_wiring_reads() -> None:
    assert set(carriers()) >= {"twilio", "telnyx", "plivo", "asterisk_ws", "exotel"}
    assert set(encapsulations()) >= {"sln", "audiosocket", "rtp", "twilio", "asterisk_ws"}
    assert set(transports()) == {s.name for s in SPECS}
    for name in carriers():
        spec = dialect(name)
        assert spec.call_leg is not None and spec.call_leg.listener == "websocket"
        assert spec.call_leg.path.startswith("/")
        assert spec.transport == "websocket"


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_entry_is_complete(spec: DialectSpec) -> None:
    platform, app = spec.roles()
    for role in (platform, app):
        for method in ("receive", "send", "send_audio"):
            assert callable(getattr(role, method))
    assert spec.format(spec.default_format) in spec.formats
    for fmt in spec.formats:
        codec_for(fmt.codec)
        assert fmt.config_codec in ("pcmu", "pcma", "l16")
    if spec.app_leg is not None:
        assert spec.app_leg.default_codec in spec.codecs()
        assert spec.make_platform and spec.make_app
    if spec.call_leg is not None and spec.transport != "websocket":
        assert spec.make_native_platform
    assert (spec.transport == "websocket") == (spec.call_leg is None or spec.call_leg.listener == "websocket")


def _exact() -> list[int]:
    """Sample values both G.711 laws reproduce exactly."""
    out = []
    for code in range(256):
        pcm = PCMU.decode(bytes((code,)))
        if PCMU.decode(PCMU.encode(pcm)) == pcm and PCMA.decode(PCMA.encode(pcm)) == pcm:
            out.append(struct.unpack("<h", pcm)[0])
    return out


EXACT = _exact()


def _pcm(rate: int, ptime_ms: int = 20) -> bytes:
    # Values G.711 reproduces exactly: every codec round-trips them.
    n = rate * ptime_ms // 1000
    return b"".join(struct.pack("<h", EXACT[i % len(EXACT)]) for i in range(n))


def _start_of(events: list[Any]) -> Start:
    starts = [e for e in events if isinstance(e, Start)]
    assert len(starts) == 1, events
    return starts[0]


@pytest.mark.parametrize(("spec", "fmt"), FORMATS, ids=lambda v: getattr(v, "name", ""))
def test_the_factories_pair_up_in_every_format(spec: DialectSpec, fmt: Any) -> None:
    """bridge's app leg (platform role) and an app written for the dialect (app role),
    both built from the entry: start, audio both ways, a mark."""
    ident = str(uuid.uuid4())
    platform = spec.platform_role(
        PlatformParams(ident, ident, sample_rate=fmt.sample_rate, codec=fmt.config_codec)
    )
    app = spec.app_role(AppParams())
    greeting = [*platform.send(Connected()), *platform.send(Start(ident, ident, fmt.sample_rate))]
    events = [e for m in greeting for e in app.receive(m)]
    start = _start_of(events)
    assert start.sample_rate == fmt.sample_rate
    pcm = _pcm(fmt.sample_rate)
    (got,) = [e for e in app.receive(platform.send_audio(pcm)) if isinstance(e, Audio)]
    assert got.frame.sample_rate == fmt.sample_rate and got.frame.pcm == pcm
    back = [e for m in app.send(Audio(Frame(pcm, fmt.sample_rate))) for e in platform.receive(m)]
    back += [e for m in getattr(app, "flush", list)() for e in platform.receive(m)]
    audio = b"".join(e.frame.pcm for e in back if isinstance(e, Audio))
    assert audio[: len(pcm)] == pcm
    # A mark goes out and its echo comes back to the app under the same name.
    marks = [e for m in app.send(Mark("m-1")) for e in platform.receive(m)]
    assert [e for e in marks if isinstance(e, Mark)]
    echoed = [
        e
        for ev in marks
        if isinstance(ev, Mark)
        for m in platform.send(Mark(ev.name))
        for e in app.receive(m)
    ]
    assert Mark("m-1") in echoed


@pytest.mark.parametrize("spec", APP_LEGS, ids=lambda s: s.name)
def test_every_platform_takes_the_events_the_stream_sends(spec: DialectSpec) -> None:
    """The stream sends these to any app connection: no platform may raise on them."""
    platform = spec.platform_role(PlatformParams("s-1", "c-1"))
    for event in (Error("dtmf_unsupported", "x"), Stop("call_hangup")):
        assert isinstance(platform.send(event), list)


@pytest.mark.parametrize(
    ("codec", "rate", "field", "words"),
    [
        ("pcma", 8000, "codec", 'carries "pcmu", not \'pcma\''),
        ("", 16000, "sample_rate", "runs at 8000 Hz, not 16000"),
    ],
)
def test_format_errors_name_the_field(codec: str, rate: int, field: str, words: str) -> None:
    with pytest.raises(FormatError) as info:
        dialect("twilio").resolve_format(codec, rate)
    assert info.value.field == field and words in info.value.message


def test_a_default_codec_that_cannot_run_at_the_rate_suggests_one_that_can() -> None:
    with pytest.raises(FormatError) as info:
        dialect("plivo").resolve_format("", 16000)
    assert info.value.field == "codec" and 'use codec = "l16"' in info.value.message
    assert dialect("plivo").resolve_format("l16", 16000).name == "audio/x-l16;rate=16000"


def test_options_are_checked_by_the_entry() -> None:
    leg = dialect("asterisk_ws").call_leg
    assert leg is not None
    resolved = leg.resolve_options({"answer": True})
    assert resolved == {"answer": True, "call_id_query": "", "command_format": "auto"}
    for given, words in (
        ({"anwser": True}, "unknown key 'anwser'; allowed keys: answer"),
        ({"answer": "yes"}, "must be a bool"),
        ({"answer": 1}, "must be a bool"),
        ({"command_format": "xml"}, "must be one of"),
        ({"call_id_query": "two words"}, "without whitespace"),
    ):
        with pytest.raises(OptionError) as info:
            leg.resolve_options(given)
        assert words in info.value.message
    exotel = dialect("exotel").call_leg
    assert exotel is not None
    with pytest.raises(OptionError, match="multiple of 320"):
        exotel.resolve_options({"min_chunk_bytes": 1000})
    twilio = dialect("sln").app_leg
    assert twilio is not None
    with pytest.raises(OptionError, match="none are allowed"):
        twilio.resolve_options({"x": 1})


# ---------------------------------------------------------------- carrier-shaped app legs


def test_twilio_app_leg_ids_have_twilio_shapes() -> None:
    stream_id, call_id = str(uuid.uuid4()), "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
    spec = dialect("twilio")
    one = spec.platform_role(PlatformParams(stream_id, call_id, route="agent"))
    two = spec.platform_role(PlatformParams(str(uuid.uuid4()), "any call id", route="agent"))
    for role in (one, two):
        for sid, prefix in ((role.stream_sid, "MZ"), (role.call_sid, "CA"), (role.account_sid, "AC")):
            assert sid.startswith(prefix) and len(sid) == 34
            int(sid[2:], 16)
    assert one.stream_sid == "MZ" + uuid.UUID(stream_id).hex
    assert one.call_sid == "CA6ba7b8109dad11d180b400c04fd430c8"
    assert one.account_sid == two.account_sid  # one account per route
    assert twilio_sid("CA", one.call_sid) == one.call_sid  # a real SID passes through
    custom = spec.platform_role(
        PlatformParams("s", "c", options={"account_sid": "AC" + "ab" * 16})
    )
    assert custom.account_sid == "AC" + "ab" * 16
    assert spec.app_leg is not None
    with pytest.raises(OptionError, match="AC and 32 hex"):
        spec.app_leg.resolve_options({"account_sid": "ACnope"})


def test_plivo_media_timestamps_are_unix_milliseconds() -> None:
    now_ms = 1_767_000_000_000
    role = dialect("plivo").platform_role(
        PlatformParams("s", "c", codec="pcmu", wall_clock_ms=now_ms)
    )
    assert isinstance(role, PlivoPlatform)
    import json

    first = json.loads(role.send_audio(_pcm(8000)))
    second = json.loads(role.send_audio(_pcm(8000)))
    assert [int(m["media"]["timestamp"]) for m in (first, second)] == [now_ms, now_ms + 20]


def test_dtmf_unsupported_reaches_an_sln_app_as_an_error_event() -> None:
    platform, app = SlnPlatform("s", "c", 8000), SlnApp()
    app.receive(platform.send(Start("s", "c", 8000))[0])
    (text,) = platform.send(Error("dtmf_unsupported", "the twilio call leg cannot send DTMF"))
    assert text == (
        '{"event":"error","error":"dtmf_unsupported",'
        '"message":"the twilio call leg cannot send DTMF"}'
    )
    assert app.receive(text) == [Error("dtmf_unsupported", "the twilio call leg cannot send DTMF")]
    plivo = dialect("plivo").platform_role(PlatformParams("s", "c"))
    import json

    (msg,) = plivo.send(Error("dtmf_unsupported", "no"))
    assert json.loads(msg) == {
        "event": "error",
        "sequenceNumber": 1,
        "streamId": "s",
        "error": "dtmf_unsupported",
        "message": "no",
    }


def test_params_are_frozen_and_copied() -> None:
    options = {"a": 1}
    params = PlatformParams("s", "c", options=options)
    options["a"] = 2
    assert params.options == {"a": 1}
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        params.codec = "x"  # type: ignore[misc]
