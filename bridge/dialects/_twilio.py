"""Twilio Media Streams, both roles (PROTOCOLS.md §1).

Every message both ways is one JSON object in a WebSocket TEXT frame; a BINARY frame is a
:class:`~bridge.DialectError` (Twilio answers one with warning 31950). Counters
(``sequenceNumber``, ``chunk``, ``timestamp``) are JSON *strings*. Audio is always µ-law at
8000 Hz mono, base64, no header; the ``Audio`` events here carry PCM16LE at 8000 Hz.

Roles
-----
* :class:`TwilioApp` is what Twilio dials: bridge's call leg toward a real Twilio stream.
  It receives ``connected``, ``start``, ``media``, ``dtmf``, ``mark``, ``stop`` and sends
  ``media``, ``mark``, ``clear``. It is lenient about fields Twilio may add, strict about
  the ones it reads.
* :class:`TwilioPlatform` emulates Twilio: bridge's app leg toward an application written
  for Twilio, and ``bridge call``. It checks what the app sends the way Twilio does
  (warning 31951): only ``media``/``mark``/``clear``, exactly the documented fields, and
  this stream's ``streamSid``.

Marks and clear (Design implications 2 and 3)
---------------------------------------------
* A ``mark`` sent after ``media`` is echoed with the same name once all audio queued before
  it has played, **or** when a ``clear`` discards it: on Twilio an echo means "played or
  cleared", never "heard". Whether a mark sent with nothing queued is echoed at once is
  UNCONFIRMED for Twilio (Telnyx documents it).
* ``clear`` empties Twilio's buffer and makes Twilio return every pending mark. There is
  no "cleared" message, so :class:`TwilioApp` never emits ``Cleared`` (the engine sees
  the ``Mark`` echoes instead), and ``TwilioPlatform.send(Cleared())`` returns ``[]``: to
  emulate Twilio the engine sends each pending mark as a ``Mark`` after a ``Clear``.

Ending, DTMF
------------
* Twilio -> app: ``stop`` (stream stopped or call ended) -> ``Stop(reason=None)``, then the
  socket closes. App -> Twilio: no message ends a stream. ``TwilioApp.send(Hangup())`` and
  ``send(Stop())`` return ``[]``: the caller ends a ``<Connect><Stream>`` by closing the
  WebSocket (Twilio logs 31921 even then, and moves on to the next TwiML verb). Hanging
  up the call itself is a REST API call, not a dialect matter.
* DTMF flows Twilio -> app only (bidirectional streams). Nothing sends DTMF into a Twilio
  stream, so ``TwilioApp.send(Dtmf(...))`` returns ``[]``.

``Start.metadata`` from :class:`TwilioApp` (stable keys)
--------------------------------------------------------
``carrier`` (``"twilio"``), ``accountSid``, ``callSid``, ``streamSid``, ``tracks`` (list
of ``"inbound"``/``"outbound"``), ``customParameters`` (the ``<Parameter>`` values, a
dict). ``Start.stream_id``/``call_id`` are the streamSid/callSid; ``encoding`` is
``"audio/x-mulaw"``, ``sample_rate`` 8000.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs
import msgspec

from .._errors import DialectError
from ..media import Frame
from ._carrier import (
    NO_HOOKS,
    CarrierStats,
    JsonDecoder,
    decode_payload,
    dumps,
    encode_pcm,
    json_str,
    parse_digit,
    pcmu_codec,
    short,
    to_int,
)
from ._carrier import (
    check_rate as _check_rate,
)
from ._carrier import (
    other_role as _other_role,
)
from ._events import (
    Audio,
    Clear,
    Cleared,
    Connected,
    Drained,
    Dtmf,
    Error,
    Event,
    Hangup,
    Mark,
    Message,
    Start,
    Stats,
    StatsRequest,
    Stop,
    mark_text,
)
from ._spec import (
    AppLeg,
    AppParams,
    CallLeg,
    Capabilities,
    ChunkRule,
    DialectSpec,
    Option,
    OptionValue,
    PlatformParams,
    WireFormat,
)

__all__ = ["SPEC", "TwilioApp", "TwilioPlatform", "twilio_sid"]

_D: Final = "twilio"
_RATE: Final = 8000
_ENCODING: Final = "audio/x-mulaw"
_PCMU: Final = pcmu_codec(_ENCODING)
_TRACKS: Final = frozenset({"inbound", "outbound"})



def _check_account_sid(value: OptionValue) -> None:
    if value and not _SID.fullmatch(f"{value}"):
        raise ValueError(f"a Twilio AccountSid is AC and 32 hex digits, got {value!r}")


SPEC: Final = DialectSpec(
    name=_D,
    platform=f"{__name__}:TwilioPlatform",
    app=f"{__name__}:TwilioApp",
    dialer="platform",
    subprotocol=None,
    greets_first="platform",
    start=("connected", "start"),
    stop=(
        "Twilio sends stop and closes; the app ends a <Connect><Stream> by closing the "
        "socket (Twilio then runs the next TwiML verb)"
    ),
    formats=(WireFormat(_ENCODING, "pcmu", _RATE),),
    default_format=_ENCODING,
    format_choice="fixed: µ-law 8000 Hz mono (mediaFormat in start)",
    ptime_ms=20,
    send_rule=ChunkRule(frames="any"),
    capabilities=Capabilities(
        marks="played_or_cleared",
        marks_on_clear="echoed",
        settles_marks=False,
        clear=True,
        cleared_ack=False,
        dtmf_in=True,
        dtmf_out=False,
        flow_control=False,
        drained=False,
        stats=False,
        hangup=False,
        resume=True,
    ),
    call_leg=CallLeg(
        listener="websocket",
        far_side_buffers=True,
        hangup_on_close=False,
        path="/twilio",
        signs_handshake=True,
    ),
    app_leg=AppLeg(
        default_codec="pcmu",
        options=(
            Option(
                "account_sid",
                str,
                "",
                "the AccountSid in start/stop (AC + 32 hex digits); empty: one derived "
                "from the route's name, the same for every call of the route",
                check=_check_account_sid,
            ),
        ),
    ),
    make_platform=f"{__name__}:platform_role",
    make_app=f"{__name__}:app_role",
)
"""``resume``: a re-dial with the same streamSid/callSid within the route's
``reconnect_window`` resumes the stream (Twilio itself never re-dials)."""

_SID: Final = re.compile(r"(AC|MZ|CA)[0-9a-f]{32}")


def twilio_sid(prefix: str, value: str) -> str:
    """A Twilio SID (``prefix`` + 32 lowercase hex digits) for one of bridge's ids:
    ``value`` itself when it already is one, the UUID's hex when it is a UUID, else a
    stable hash of it (so the same id always gives the same SID)."""
    if _SID.fullmatch(value) and value.startswith(prefix):
        return value
    try:
        return prefix + uuid.UUID(value).hex
    except ValueError:
        return prefix + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


# --------------------------------------------------------------------------- Twilio -> app
# Lenient: unknown fields are ignored (Twilio may add some); the fields read are typed.
# Counters are strings per the docs, numbers are accepted too (Design implications 7).


class _Body(msgspec.Struct, frozen=True, gc=False):
    pass


class _Msg(msgspec.Struct, frozen=True, gc=False, tag_field="event"):
    pass


class _MediaFormat(_Body, frozen=True):
    encoding: str = _ENCODING
    sampleRate: int = _RATE
    channels: int = 1


class _StartBody(_Body, frozen=True):
    streamSid: str
    callSid: str
    accountSid: str = ""
    tracks: list[str] = msgspec.field(default_factory=lambda: ["inbound"])
    customParameters: dict[str, Any] = msgspec.field(default_factory=dict)
    mediaFormat: _MediaFormat = msgspec.field(default_factory=_MediaFormat)


class _Connected(_Msg, tag="connected", frozen=True):
    protocol: str = ""
    version: str = ""


class _Start(_Msg, tag="start", frozen=True):
    start: _StartBody
    sequenceNumber: int | str | None = None
    streamSid: str | None = None


class _MediaBody(_Body, frozen=True):
    payload: str
    track: str = "inbound"
    chunk: int | str | None = None
    timestamp: int | str | None = None


class _Media(_Msg, tag="media", frozen=True):
    media: _MediaBody
    streamSid: str | None = None
    sequenceNumber: int | str | None = None


class _DtmfBody(_Body, frozen=True):
    digit: str
    track: str = "inbound_track"


class _Dtmf(_Msg, tag="dtmf", frozen=True):
    dtmf: _DtmfBody
    streamSid: str | None = None
    sequenceNumber: int | str | None = None


class _Name(_Body, frozen=True):
    name: str


class _Mark(_Msg, tag="mark", frozen=True):
    mark: _Name
    streamSid: str | None = None
    sequenceNumber: int | str | None = None


class _StopBody(_Body, frozen=True):
    accountSid: str = ""
    callSid: str = ""


class _Stop(_Msg, tag="stop", frozen=True):
    stop: _StopBody | None = None
    streamSid: str | None = None
    sequenceNumber: int | str | None = None


_FROM_APP: Final = "is sent by the app to Twilio, not by Twilio"
_decode_from_twilio: Final = JsonDecoder[_Connected | _Start | _Media | _Dtmf | _Mark | _Stop](
    _D,
    _Connected | _Start | _Media | _Dtmf | _Mark | _Stop,
    {
        "connected": None,
        "start": None,
        "media": None,
        "dtmf": None,
        "mark": None,
        "stop": None,
        "clear": _FROM_APP,
    },
    binary_note=" (Twilio sends TEXT frames only)",
)

# --------------------------------------------------------------------------- app -> Twilio
# Strict, as Twilio is: "anything else, an unknown/wrong streamSid, or missing/extra fields"
# is warning 31951 [TW-E31951]. So: no unknown fields anywhere, every field required.


class _StrictBody(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    pass


class _StrictMsg(
    msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True, tag_field="event"
):
    pass


class _AppPayload(_StrictBody, frozen=True):
    payload: str


class _AppMedia(_StrictMsg, tag="media", frozen=True):
    streamSid: str
    media: _AppPayload


class _AppName(_StrictBody, frozen=True):
    # An app may name its marks with numbers too; they are echoed as sent (Twilio's own
    # names are strings: toward Twilio a number goes as its JSON text, ``mark_text``).
    name: str | int | float


class _AppMark(_StrictMsg, tag="mark", frozen=True):
    streamSid: str
    mark: _AppName


class _AppClear(_StrictMsg, tag="clear", frozen=True):
    streamSid: str


_FROM_TWILIO: Final = "is sent by Twilio, not by the app (Twilio warning 31951)"
_decode_from_app: Final = JsonDecoder[_AppMedia | _AppMark | _AppClear](
    _D,
    _AppMedia | _AppMark | _AppClear,
    {
        "media": None,
        "mark": None,
        "clear": None,
        "connected": _FROM_TWILIO,
        "start": _FROM_TWILIO,
        "dtmf": _FROM_TWILIO,
        "stop": _FROM_TWILIO,
    },
    binary_note=" (Twilio warning 31950)",
    unknown_note=" (Twilio warning 31951)",
)


# --------------------------------------------------------------------------- app role


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class TwilioApp:
    """The application side of a Twilio Media Stream (bridge's call leg toward Twilio).

    ``track`` selects which ``media`` track becomes ``Audio`` (``"inbound"``, the caller);
    media of other tracks (a ``both_tracks`` fork) is dropped and counted in
    ``stats.other_track_chunks``, because ``Audio`` has no track field.
    """

    track: str = "inbound"
    stats: CarrierStats = attrs.field(factory=CarrierStats, init=False)
    stream_sid: str | None = attrs.field(default=None, init=False)
    """The streamSid from ``start``; ``None`` until then."""
    call_sid: str | None = attrs.field(default=None, init=False)
    _media_prefix: str = attrs.field(default="", init=False, repr=False)

    def receive(self, message: Message) -> list[Event]:
        """One text frame from Twilio -> events. Raises DialectError on malformed input."""
        msg = _decode_from_twilio(message)
        self.stats.messages_received += 1
        if isinstance(msg, _Media):
            return self._media(msg)
        if isinstance(msg, _Connected):
            return [Connected({"protocol": msg.protocol, "version": msg.version})]
        if isinstance(msg, _Start):
            return [self._start(msg)]
        sid = self.stream_sid
        if sid is None:
            raise DialectError(_D, f"{type(msg).__name__[1:].lower()!r} before 'start'")
        if msg.streamSid is not None and msg.streamSid != sid:
            raise DialectError(_D, f"streamSid {short(msg.streamSid)} is not this stream's")
        if isinstance(msg, _Mark):
            self.stats.marks_received += 1
            return [Mark(msg.mark.name)]
        if isinstance(msg, _Dtmf):
            self.stats.dtmf_received += 1
            return [Dtmf(parse_digit(_D, msg.dtmf.digit))]
        return [Stop()]

    def _start(self, msg: _Start) -> Start:
        if self.stream_sid is not None:
            raise DialectError(_D, "a second 'start' message on one stream")
        body = msg.start
        fmt = body.mediaFormat
        if fmt.encoding != _ENCODING or fmt.sampleRate != _RATE or fmt.channels != 1:
            # Twilio documents this format as fixed; anything else is not Twilio.
            raise DialectError(
                _D,
                f"unsupported mediaFormat {short(fmt.encoding)}/{fmt.sampleRate}/"
                f"{fmt.channels}: Twilio streams are audio/x-mulaw/8000/1",
            )
        if msg.streamSid is not None and msg.streamSid != body.streamSid:
            raise DialectError(_D, "start.streamSid and streamSid differ")
        self.stream_sid = body.streamSid
        self.call_sid = body.callSid
        self._media_prefix = (
            '{"event":"media","streamSid":' + json_str(body.streamSid) + ',"media":{"payload":"'
        )
        return Start(
            stream_id=body.streamSid,
            call_id=body.callSid,
            sample_rate=_RATE,
            encoding=_ENCODING,
            metadata={
                "carrier": _D,
                "accountSid": body.accountSid,
                "callSid": body.callSid,
                "streamSid": body.streamSid,
                "tracks": list(body.tracks),
                "customParameters": dict(body.customParameters),
            },
        )

    def _media(self, msg: _Media) -> list[Event]:
        sid = self.stream_sid
        if sid is None:
            raise DialectError(_D, "'media' before 'start'")
        if msg.streamSid is not None and msg.streamSid != sid:
            raise DialectError(_D, f"streamSid {short(msg.streamSid)} is not this stream's")
        media = msg.media
        if media.track != self.track:
            self.stats.other_track_chunks += 1
            return []
        pcm = decode_payload(_D, _PCMU, media.payload)
        chunk = media.chunk
        ts = media.timestamp
        self.stats.chunks_received += 1
        return [
            Audio(
                Frame(pcm, _RATE),
                None if chunk is None else to_int(_D, chunk, "media.chunk"),
                None if ts is None else to_int(_D, ts, "media.timestamp"),
            )
        ]

    def send_audio(self, pcm: bytes) -> Message:
        """PCM16LE at 8000 Hz -> one ``media`` message (exactly event/streamSid/media.payload)."""
        if self.stream_sid is None:
            raise DialectError(_D, "cannot send media before Twilio's 'start': no streamSid yet")
        return self._media_prefix + encode_pcm(_PCMU, pcm) + '"}}'

    def send(self, event: Event) -> list[Message]:
        """Event -> messages to Twilio; ``[]`` for what a Twilio stream cannot carry."""
        if isinstance(event, Audio):
            return [self.send_audio(_check_rate(event.frame, _RATE))]
        if isinstance(event, Mark):
            return [
                dumps(
                    {
                        "event": "mark",
                        "streamSid": self._sid(),
                        "mark": {"name": mark_text(event.name)},
                    }
                )
            ]
        if isinstance(event, Clear):
            return [dumps({"event": "clear", "streamSid": self._sid()})]
        if isinstance(event, Hangup | Stop | Dtmf | StatsRequest):
            # Hangup/Stop: close the WebSocket instead. Dtmf, stats: no such message.
            return []
        raise _other_role("TwilioApp", event)

    def _sid(self) -> str:
        if self.stream_sid is None:
            raise DialectError(_D, "cannot send before Twilio's 'start': no streamSid yet")
        return self.stream_sid


# --------------------------------------------------------------------------- platform role


def _params(value: Mapping[str, str] | None) -> dict[str, str]:
    return dict(value) if value else {}


def _track_tuple(value: Iterable[str]) -> tuple[str, ...]:
    tracks = tuple(value)
    if not tracks or not set(tracks) <= _TRACKS:
        raise ValueError(
            f'tracks must be a non-empty subset of ("inbound", "outbound"), not {tracks}'
        )
    return tracks


@attrs.define(slots=True, on_setattr=NO_HOOKS)
class _TrackCounter:
    chunk: int = 0
    samples: int = 0


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class TwilioPlatform:
    """Emulates Twilio toward an application (bridge's app leg, ``bridge call``).

    ``send_audio`` numbers media like Twilio: ``chunk`` from "1" per track, ``timestamp`` in
    ms since the stream start derived from the audio sent on that track (pure code has no
    clock), ``sequenceNumber`` across all messages after ``connected`` (``start`` is "1").
    The ids come from the constructor; ``send(Start(...))`` uses them, not the event's.
    """

    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: Mapping[str, str] = attrs.field(factory=dict, converter=_params)
    tracks: tuple[str, ...] = attrs.field(default=("inbound",), converter=_track_tuple)
    _seq: int = attrs.field(default=0, init=False)
    _counters: dict[str, _TrackCounter] = attrs.field(factory=dict, init=False, repr=False)
    _sid_json: str = attrs.field(default="", init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._counters = {track: _TrackCounter() for track in self.tracks}
        self._sid_json = json_str(self.stream_sid)

    def receive(self, message: Message) -> list[Event]:
        """One text frame from the app -> ``Audio``, ``Mark`` or ``Clear``; 31951 rules."""
        msg = _decode_from_app(message)
        if msg.streamSid != self.stream_sid:
            raise DialectError(
                _D, f"streamSid {short(msg.streamSid)} is not this stream's (Twilio warning 31951)"
            )
        if isinstance(msg, _AppMedia):
            return [Audio(Frame(decode_payload(_D, _PCMU, msg.media.payload), _RATE))]
        if isinstance(msg, _AppMark):
            return [Mark(msg.mark.name)]
        return [Clear()]

    def send_audio(self, pcm: bytes, track: str = "inbound") -> Message:
        """PCM16LE at 8000 Hz -> one ``media`` message on ``track``."""
        try:
            counter = self._counters[track]
        except KeyError:
            raise ValueError(f"track {track!r} is not one of this stream's {self.tracks}") from None
        payload = encode_pcm(_PCMU, pcm)
        self._seq += 1
        counter.chunk += 1
        ms = counter.samples // 8  # 8 samples per ms at 8000 Hz
        counter.samples += len(pcm) >> 1
        return (
            f'{{"event":"media","sequenceNumber":"{self._seq}","media":{{"track":"{track}",'
            f'"chunk":"{counter.chunk}","timestamp":"{ms}","payload":"{payload}"}},'
            f'"streamSid":{self._sid_json}}}'
        )

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    def send(self, event: Event) -> list[Message]:
        """Event -> messages to the app; ``[]`` for what Twilio has no message for."""
        if isinstance(event, Audio):
            return [self.send_audio(_check_rate(event.frame, _RATE))]
        if isinstance(event, Mark):
            return [
                dumps(
                    {
                        "event": "mark",
                        "sequenceNumber": self._next_seq(),
                        "streamSid": self.stream_sid,
                        "mark": {"name": event.name},
                    }
                )
            ]
        if isinstance(event, Dtmf):
            return [
                dumps(
                    {
                        "event": "dtmf",
                        "streamSid": self.stream_sid,
                        "sequenceNumber": self._next_seq(),
                        "dtmf": {"track": "inbound_track", "digit": event.digit},
                    }
                )
            ]
        if isinstance(event, Start):
            return [self._start()]
        if isinstance(event, Connected):
            return [dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})]
        if isinstance(event, Stop):
            return [
                dumps(
                    {
                        "event": "stop",
                        "sequenceNumber": self._next_seq(),
                        "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
                        "streamSid": self.stream_sid,
                    }
                )
            ]
        if isinstance(event, Cleared | Drained | Stats | Error):
            # Twilio has no such messages: after a clear it returns the pending marks,
            # which the engine sends as Mark events.
            return []
        raise _other_role("TwilioPlatform", event)

    def _start(self) -> str:
        return dumps(
            {
                "event": "start",
                "sequenceNumber": self._next_seq(),
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": list(self.tracks),
                    "mediaFormat": {"encoding": _ENCODING, "sampleRate": _RATE, "channels": 1},
                    "customParameters": dict(self.custom_parameters),
                },
                "streamSid": self.stream_sid,
            }
        )


def platform_role(params: PlatformParams) -> TwilioPlatform:
    """bridge as Twilio toward an app (``SPEC.make_platform``): SIDs in Twilio's shapes,
    derived from bridge's ids (``X-Bridge-Stream-Id``/``X-Bridge-Call-Id`` carry those)."""
    account = str(params.options.get("account_sid") or "")
    return TwilioPlatform(
        twilio_sid("MZ", params.stream_id),
        twilio_sid("CA", params.call_id),
        account or twilio_sid("AC", f"bridge-account:{params.route}"),
    )


def app_role(params: AppParams) -> TwilioApp:
    """bridge's call leg toward Twilio, or an app written for Twilio (``SPEC.make_app``)."""
    return TwilioApp()
