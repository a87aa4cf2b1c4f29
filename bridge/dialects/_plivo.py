"""Plivo Audio Streaming, both roles (PROTOCOLS.md §4).

Every message is a JSON TEXT frame (camelCase keys; a BINARY frame is a
:class:`~bridge.DialectError`). Unlike Twilio, ``sequenceNumber`` and ``chunk`` are JSON
**numbers**; ``media.timestamp`` is a string of ms (strings and numbers are accepted for
all three). The stream's ``contentType`` is ``audio/x-l16;rate=8000`` (Plivo's default),
``audio/x-l16;rate=16000`` or ``audio/x-mulaw;rate=8000``. The **byte order of Plivo's L16
is UNCONFIRMED**: both roles take ``l16_byteorder="little"`` (default) or ``"big"``.

Roles
-----
* :class:`PlivoApp` is what Plivo dials (bridge's call leg). It receives ``start``,
  ``media``, ``dtmf``, ``playedStream``, ``clearedAudio`` (and an optional ``stop``) and
  sends ``playAudio``, ``checkpoint``, ``clearAudio``, ``sendDTMF``.
* :class:`PlivoPlatform` emulates Plivo toward an application (bridge's app leg,
  ``bridge call``).

Marks and clear (Design implications 2 and 3)
---------------------------------------------
* ``checkpoint`` (<- ``Mark``) is answered by ``playedStream`` (-> ``Mark``) **only if the
  audio before it played successfully**. A checkpoint discarded by ``clearAudio`` is never
  answered. (Plivo's FAQ calls the answer ``played``; it is accepted as well.)
* ``clearAudio`` (<- ``Clear``) flushes everything buffered and is answered by
  ``clearedAudio`` (-> ``Cleared``). Pending marks are *not* returned: on this carrier the
  engine resolves them itself on ``Cleared``. Emulating Plivo, the engine drops the marks
  queued behind a clear without an echo and sends ``Cleared`` (-> ``clearedAudio``).

Ending, DTMF
------------
* Plivo documents no ``stop``; the WebSocket closing is the end of the stream. A ``stop``
  (modelled by Plivo's Java SDK) is accepted as ``Stop(reason)``, with ``reason`` read from
  ``reason`` or ``stop.reason``. ``PlivoPlatform.send(Stop())`` returns ``[]`` (close the
  socket); so does ``PlivoApp.send(Hangup())``/``send(Stop())``.
* DTMF Plivo -> app: ``dtmf{track, digit, timestamp}``. App -> Plivo: ``sendDTMF`` exists
  but its fields are UNCONFIRMED; bridge sends ``{"event": "sendDTMF", "dtmf": "<digits>"}``
  and, emulating Plivo, accepts that shape (each digit becomes one ``Dtmf``).

``Start.metadata`` from :class:`PlivoApp` (stable keys)
-------------------------------------------------------
``carrier`` (``"plivo"``), ``callId``, ``streamId``, ``accountId``, ``tracks`` (list),
``extra_headers`` (Plivo's string as sent, e.g. ``"userId=12345;sessionId=abc"``; its
format is not pinned down, so it is not parsed). ``Start.stream_id``/``call_id`` are
streamId/callId; ``encoding`` is ``audio/x-l16`` or ``audio/x-mulaw``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import attrs
import msgspec

from .._errors import DialectError
from ..media import Frame
from ._carrier import (
    NO_HOOKS,
    CarrierStats,
    Codec,
    JsonDecoder,
    decode_payload,
    dumps,
    encode_pcm,
    json_str,
    l16_codec,
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
    PlatformParams,
    WireFormat,
)

__all__ = ["CONTENT_TYPES", "SPEC", "PlivoApp", "PlivoPlatform"]

_D: Final = "plivo"
_L16: Final = "audio/x-l16"
_MULAW: Final = "audio/x-mulaw"
CONTENT_TYPES: Final = (
    "audio/x-l16;rate=8000",
    "audio/x-l16;rate=16000",
    "audio/x-mulaw;rate=8000",
)


_BYTEORDER: Final = Option(
    "l16_byteorder",
    str,
    "little",
    "byte order of audio/x-l16 both ways (UNCONFIRMED by Plivo: little-endian is what "
    "its SDKs and the pipecat serializer assume)",
    choices=("little", "big"),
)

SPEC: Final = DialectSpec(
    name=_D,
    platform=f"{__name__}:PlivoPlatform",
    app=f"{__name__}:PlivoApp",
    dialer="platform",
    subprotocol=None,
    greets_first="platform",
    start=("start",),
    stop="no stop message is documented: the socket closes (Plivo retries a drop twice)",
    formats=(
        WireFormat("audio/x-l16;rate=8000", "l16le", 8000),
        WireFormat("audio/x-l16;rate=16000", "l16le", 16000),
        WireFormat("audio/x-mulaw;rate=8000", "pcmu", 8000),
    ),
    default_format="audio/x-l16;rate=8000",
    format_choice="the <Stream> contentType, echoed in start.mediaFormat",
    ptime_ms=20,
    send_rule=ChunkRule(frames="any"),
    capabilities=Capabilities(
        marks="played",
        marks_on_clear="dropped",
        settles_marks=False,
        clear=True,
        cleared_ack=True,
        dtmf_in=True,
        dtmf_out=True,
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
        path="/plivo",
        options=(_BYTEORDER,),
    ),
    app_leg=AppLeg(
        default_codec="pcmu",
        options=(
            _BYTEORDER,
            Option(
                "account_id",
                str,
                "",
                "the accountId in start; empty: one derived from the route's name",
            ),
        ),
    ),
    make_platform=f"{__name__}:platform_role",
    make_app=f"{__name__}:app_role",
)
"""Checkpoints discarded by clearAudio are never answered (``marks_on_clear``
"dropped"): bridge answers them on ``clearedAudio`` (the Stream does, on ``Cleared``)."""


def _codec(encoding: str, sample_rate: int, byteorder: str) -> Codec | str:
    """The codec for a Plivo encoding and rate, or why there is none (PROTOCOLS.md §4)."""
    base = encoding.split(";", 1)[0].strip().lower()
    if base == _L16:
        if sample_rate not in (8000, 16000):
            return f"unsupported audio/x-l16 sample rate {sample_rate} (8000 and 16000 are)"
        return l16_codec(_L16, sample_rate, byteorder)
    if base == _MULAW:
        if sample_rate != 8000:
            return f"audio/x-mulaw is 8000 Hz only, not {sample_rate}"
        return pcmu_codec(_MULAW)
    return f"unsupported content type {short(encoding)} (audio/x-l16 and audio/x-mulaw are)"


def _content_type(content_type: str, byteorder: str) -> Codec:
    """``audio/x-l16;rate=16000`` -> its codec, or ValueError (configuration, not wire)."""
    base, _, params = content_type.partition(";")
    rate = 8000
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "rate":
            try:
                rate = int(value)
            except ValueError:
                raise ValueError(f"bad rate in content type {content_type!r}") from None
    codec = _codec(base, rate, byteorder)
    if isinstance(codec, str):
        raise ValueError(codec)
    return codec


def _check_byteorder(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("little", "big"):
        raise ValueError(f'{attribute.name} must be "little" or "big", not {value!r}')


# --------------------------------------------------------------------------- Plivo -> app
# Lenient: extra fields ignored, and streamId/sequenceNumber optional (third-party Plivo
# clones omit them on some events); the fields read are typed. Numbers or strings.


class _Body(msgspec.Struct, frozen=True, gc=False):
    pass


class _Msg(msgspec.Struct, frozen=True, gc=False, tag_field="event"):
    pass


class _MediaFormat(_Body, frozen=True):
    encoding: str
    sampleRate: int | str = 8000


class _StartBody(_Body, frozen=True):
    callId: str
    streamId: str
    mediaFormat: _MediaFormat
    accountId: str = ""
    tracks: list[str] = msgspec.field(default_factory=lambda: ["inbound"])


class _Start(_Msg, tag="start", frozen=True):
    start: _StartBody
    sequenceNumber: int | str | None = None
    extra_headers: str | dict[str, Any] | None = None


class _MediaBody(_Body, frozen=True):
    payload: str
    track: str = "inbound"
    chunk: int | str | None = None
    timestamp: int | str | None = None


class _Media(_Msg, tag="media", frozen=True):
    media: _MediaBody
    streamId: str | None = None
    sequenceNumber: int | str | None = None


class _DtmfBody(_Body, frozen=True):
    digit: str
    track: str = "inbound"
    timestamp: int | str | None = None


class _Dtmf(_Msg, tag="dtmf", frozen=True):
    dtmf: _DtmfBody
    streamId: str | None = None
    sequenceNumber: int | str | None = None


class _PlayedStream(_Msg, tag="playedStream", frozen=True):
    name: str
    streamId: str | None = None
    sequenceNumber: int | str | None = None


class _Played(_Msg, tag="played", frozen=True):
    # The name Plivo's FAQ uses for playedStream.
    name: str
    streamId: str | None = None
    sequenceNumber: int | str | None = None


class _ClearedAudio(_Msg, tag="clearedAudio", frozen=True):
    streamId: str | None = None
    sequenceNumber: int | str | None = None


class _StopBody(_Body, frozen=True):
    reason: str | None = None


class _Stop(_Msg, tag="stop", frozen=True):
    reason: str | None = None
    stop: _StopBody | None = None
    streamId: str | None = None
    sequenceNumber: int | str | None = None


_FromPlivo = _Start | _Media | _Dtmf | _PlayedStream | _Played | _ClearedAudio | _Stop
_FROM_APP: Final = "is sent by the app to Plivo, not by Plivo"
_decode_from_plivo: Final = JsonDecoder[_FromPlivo](
    _D,
    _FromPlivo,
    {
        "start": None,
        "media": None,
        "dtmf": None,
        "playedStream": None,
        "played": None,
        "clearedAudio": None,
        "stop": None,
        "playAudio": _FROM_APP,
        "checkpoint": _FROM_APP,
        "clearAudio": _FROM_APP,
        "sendDTMF": _FROM_APP,
    },
    binary_note=" (Plivo sends TEXT frames only)",
)

# --------------------------------------------------------------------------- app -> Plivo


class _PlayMedia(_Body, frozen=True):
    contentType: str
    sampleRate: int | str
    payload: str


class _PlayAudio(_Msg, tag="playAudio", frozen=True):
    media: _PlayMedia
    streamId: str | None = None


class _Checkpoint(_Msg, tag="checkpoint", frozen=True):
    # An app may name its checkpoints with numbers too; they are echoed as sent (toward
    # Plivo a number goes as its JSON text, ``mark_text``).
    name: str | int | float
    streamId: str | None = None


class _ClearAudio(_Msg, tag="clearAudio", frozen=True):
    streamId: str | None = None


class _SendDtmf(_Msg, tag="sendDTMF", frozen=True):
    dtmf: str  # UNCONFIRMED field (module docstring)
    streamId: str | None = None


_FromApp = _PlayAudio | _Checkpoint | _ClearAudio | _SendDtmf
_FROM_PLIVO: Final = "is sent by Plivo, not by the app"
_decode_from_app: Final = JsonDecoder[_FromApp](
    _D,
    _FromApp,
    {
        "playAudio": None,
        "checkpoint": None,
        "clearAudio": None,
        "sendDTMF": None,
        "start": _FROM_PLIVO,
        "media": _FROM_PLIVO,
        "dtmf": _FROM_PLIVO,
        "playedStream": _FROM_PLIVO,
        "played": _FROM_PLIVO,
        "clearedAudio": _FROM_PLIVO,
        "stop": _FROM_PLIVO,
    },
    binary_note=" (Plivo takes TEXT frames only)",
)


# --------------------------------------------------------------------------- app role


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class PlivoApp:
    """The application side of a Plivo audio stream (bridge's call leg toward Plivo).

    ``l16_byteorder`` is Plivo's L16 byte order both ways (UNCONFIRMED, so configurable).
    ``content_type`` is the ``playAudio`` format (one of :data:`CONTENT_TYPES`); ``None``
    sends what the stream receives. Plivo advises against switching formats mid-stream, so
    it is fixed per connection. ``track`` selects the media track that becomes ``Audio``.
    """

    l16_byteorder: str = attrs.field(default="little", validator=_check_byteorder)
    content_type: str | None = None
    track: str = "inbound"
    stats: CarrierStats = attrs.field(factory=CarrierStats, init=False)
    stream_id: str | None = attrs.field(default=None, init=False)
    call_id: str | None = attrs.field(default=None, init=False)
    _rx: Codec | None = attrs.field(default=None, init=False, repr=False)
    _tx: Codec | None = attrs.field(default=None, init=False, repr=False)
    _play_prefix: str = attrs.field(default="", init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.content_type is not None:
            self._set_tx(_content_type(self.content_type, self.l16_byteorder))

    def _set_tx(self, codec: Codec) -> None:
        self._tx = codec
        self._play_prefix = (
            '{"event":"playAudio","media":{"contentType":"'
            f'{codec.name}","sampleRate":{codec.sample_rate},"payload":"'
        )

    def receive(self, message: Message) -> list[Event]:
        """One text frame from Plivo -> events. Raises DialectError on malformed input."""
        msg = _decode_from_plivo(message)
        self.stats.messages_received += 1
        if isinstance(msg, _Media):
            return self._media(msg)
        if isinstance(msg, _Start):
            return [self._start(msg)]
        if self._rx is None:
            raise DialectError(_D, f"{type(msg).__name__[1:]!r} before 'start'")
        if msg.streamId is not None and msg.streamId != self.stream_id:
            raise DialectError(_D, f"streamId {short(msg.streamId)} is not this stream's")
        if isinstance(msg, _PlayedStream | _Played):
            self.stats.marks_received += 1
            return [Mark(msg.name)]
        if isinstance(msg, _ClearedAudio):
            return [Cleared()]
        if isinstance(msg, _Dtmf):
            self.stats.dtmf_received += 1
            return [Dtmf(parse_digit(_D, msg.dtmf.digit))]
        reason = msg.reason if msg.reason is not None else msg.stop.reason if msg.stop else None
        return [Stop(reason)]

    def _start(self, msg: _Start) -> Start:
        if self._rx is not None:
            raise DialectError(_D, "a second 'start' message on one stream")
        body = msg.start
        rate = to_int(_D, body.mediaFormat.sampleRate, "mediaFormat.sampleRate")
        rx = _codec(body.mediaFormat.encoding, rate, self.l16_byteorder)
        if isinstance(rx, str):
            raise DialectError(_D, rx)
        self._rx = rx
        if self._tx is None:
            self._set_tx(rx)
        self.stream_id = body.streamId
        self.call_id = body.callId
        return Start(
            stream_id=body.streamId,
            call_id=body.callId,
            sample_rate=rx.sample_rate,
            encoding=rx.name,
            metadata={
                "carrier": _D,
                "callId": body.callId,
                "streamId": body.streamId,
                "accountId": body.accountId,
                "tracks": list(body.tracks),
                "extra_headers": msg.extra_headers if msg.extra_headers is not None else "",
            },
        )

    def _media(self, msg: _Media) -> list[Event]:
        rx = self._rx
        if rx is None:
            raise DialectError(_D, "'media' before 'start'")
        if msg.streamId is not None and msg.streamId != self.stream_id:
            raise DialectError(_D, f"streamId {short(msg.streamId)} is not this stream's")
        media = msg.media
        if media.track != self.track:
            self.stats.other_track_chunks += 1
            return []
        pcm = decode_payload(_D, rx, media.payload)
        chunk = media.chunk
        ts = media.timestamp
        self.stats.chunks_received += 1
        return [
            Audio(
                Frame(pcm, rx.sample_rate),
                None if chunk is None else to_int(_D, chunk, "media.chunk"),
                None if ts is None else to_int(_D, ts, "media.timestamp"),
            )
        ]

    def send_audio(self, pcm: bytes) -> Message:
        """PCM16LE at the play rate -> one ``playAudio`` message."""
        tx = self._tx
        if tx is None:
            raise DialectError(_D, "the playAudio format is not known before Plivo's 'start'")
        return self._play_prefix + encode_pcm(tx, pcm) + '"}}'

    def send(self, event: Event) -> list[Message]:
        """Event -> messages to Plivo; ``[]`` for what the stream cannot carry."""
        if isinstance(event, Audio):
            tx = self._tx
            rate = tx.sample_rate if tx is not None else event.frame.sample_rate
            return [self.send_audio(_check_rate(event.frame, rate))]
        if isinstance(event, Mark):
            name = mark_text(event.name)
            return [dumps({"event": "checkpoint", "streamId": self._sid(), "name": name})]
        if isinstance(event, Clear):
            return [dumps({"event": "clearAudio", "streamId": self._sid()})]
        if isinstance(event, Dtmf):
            return [dumps({"event": "sendDTMF", "dtmf": event.digit})]
        if isinstance(event, Hangup | Stop | StatsRequest):
            return []  # close the socket to end the stream
        raise _other_role("PlivoApp", event)

    def _sid(self) -> str:
        if self.stream_id is None:
            raise DialectError(_D, "cannot send before Plivo's 'start': no streamId yet")
        return self.stream_id


# --------------------------------------------------------------------------- platform role


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class PlivoPlatform:
    """Emulates Plivo toward an application (bridge's app leg, ``bridge call``).

    ``content_type`` is the stream's (:data:`CONTENT_TYPES`), ``extra_headers`` the string
    put in ``start`` and every ``media``. Counters are JSON numbers: ``sequenceNumber`` over
    every message (``start`` is 1), ``chunk`` from 1; ``media.timestamp`` is a string of
    ``timestamp_base_ms`` plus the ms of audio sent (Plivo's docs say Unix epoch ms, its
    SDK says since the stream start: pass an epoch base for the former). ``playAudio`` is
    accepted in any supported format, each message decoded as it declares.
    """

    stream_id: str
    call_id: str
    account_id: str
    content_type: str = "audio/x-l16;rate=8000"
    extra_headers: str = ""
    l16_byteorder: str = attrs.field(default="little", validator=_check_byteorder)
    track: str = "inbound"
    timestamp_base_ms: int = 0
    _codec: Codec = attrs.field(init=False, repr=False)
    _play_codecs: dict[tuple[str, int | str], Codec] = attrs.field(
        factory=dict, init=False, repr=False
    )
    _seq: int = attrs.field(default=0, init=False)
    _chunk: int = attrs.field(default=0, init=False)
    _samples: int = attrs.field(default=0, init=False)
    _tail: str = attrs.field(default="", init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._codec = _content_type(self.content_type, self.l16_byteorder)
        self._tail = (
            '"},"extra_headers":'
            + json_str(self.extra_headers)
            + ',"streamId":'
            + json_str(self.stream_id)
            + "}"
        )

    @property
    def sample_rate(self) -> int:
        return self._codec.sample_rate

    def receive(self, message: Message) -> list[Event]:
        """One text frame from the app -> ``Audio``, ``Mark``, ``Clear`` or ``Dtmf`` events."""
        msg = _decode_from_app(message)
        if msg.streamId is not None and msg.streamId != self.stream_id:
            raise DialectError(_D, f"streamId {short(msg.streamId)} is not this stream's")
        if isinstance(msg, _PlayAudio):
            media = msg.media
            codec = self._play_codecs.get((media.contentType, media.sampleRate))
            if codec is None:
                codec = self._play_codec(media.contentType, media.sampleRate)
            return [Audio(Frame(decode_payload(_D, codec, media.payload), codec.sample_rate))]
        if isinstance(msg, _Checkpoint):
            return [Mark(msg.name)]
        if isinstance(msg, _ClearAudio):
            return [Clear()]
        if not msg.dtmf:
            raise DialectError(_D, "sendDTMF without digits")
        return [Dtmf(parse_digit(_D, digit)) for digit in msg.dtmf]

    def _play_codec(self, content_type: str, sample_rate: int | str) -> Codec:
        rate = to_int(_D, sample_rate, "media.sampleRate")
        codec = _codec(content_type, rate, self.l16_byteorder)
        if isinstance(codec, str):
            raise DialectError(_D, f"playAudio: {codec}")
        if len(self._play_codecs) < 16:  # a hostile app must not grow this without bound
            self._play_codecs[content_type, sample_rate] = codec
        return codec

    def _now_ms(self) -> int:
        return self.timestamp_base_ms + self._samples * 1000 // self._codec.sample_rate

    def send_audio(self, pcm: bytes) -> Message:
        """PCM16LE at the stream rate -> one ``media`` message."""
        payload = encode_pcm(self._codec, pcm)
        self._seq += 1
        self._chunk += 1
        ms = self._now_ms()
        self._samples += len(pcm) >> 1
        return (
            f'{{"event":"media","sequenceNumber":{self._seq},"media":{{"track":"{self.track}",'
            f'"timestamp":"{ms}","chunk":{self._chunk},"payload":"{payload}' + self._tail
        )

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def send(self, event: Event) -> list[Message]:
        """Event -> messages to the app; ``[]`` for what Plivo has no message for."""
        if isinstance(event, Audio):
            return [self.send_audio(_check_rate(event.frame, self._codec.sample_rate))]
        if isinstance(event, Mark):
            # Only for marks whose audio played: Plivo never answers a cleared checkpoint.
            return [
                dumps(
                    {
                        "event": "playedStream",
                        "sequenceNumber": self._next_seq(),
                        "streamId": self.stream_id,
                        "name": event.name,
                    }
                )
            ]
        if isinstance(event, Cleared):
            return [
                dumps(
                    {
                        "event": "clearedAudio",
                        "sequenceNumber": self._next_seq(),
                        "streamId": self.stream_id,
                    }
                )
            ]
        if isinstance(event, Dtmf):
            return [
                dumps(
                    {
                        "event": "dtmf",
                        "sequenceNumber": self._next_seq(),
                        "streamId": self.stream_id,
                        "dtmf": {
                            "track": self.track,
                            "digit": event.digit,
                            "timestamp": str(self._now_ms()),
                        },
                    }
                )
            ]
        if isinstance(event, Start):
            return [self._start()]
        if isinstance(event, Error):
            # Plivo documents no error event toward the app: this one is bridge's, in
            # Plivo's shape (an app that dispatches on "event" can ignore it).
            return [
                dumps(
                    {
                        "event": "error",
                        "sequenceNumber": self._next_seq(),
                        "streamId": self.stream_id,
                        "error": event.code,
                        "message": event.message,
                    }
                )
            ]
        if isinstance(event, Connected | Stop | Drained | Stats):
            # No connected message on Plivo; no documented stop (the socket closes).
            return []
        raise _other_role("PlivoPlatform", event)

    def _start(self) -> str:
        codec = self._codec
        return dumps(
            {
                "event": "start",
                "sequenceNumber": self._next_seq(),
                "start": {
                    "callId": self.call_id,
                    "streamId": self.stream_id,
                    "accountId": self.account_id,
                    "tracks": [self.track],
                    "mediaFormat": {"encoding": codec.name, "sampleRate": codec.sample_rate},
                },
                "extra_headers": self.extra_headers,
            }
        )


def _account_id(route: str) -> str:
    # Plivo auth ids are MA + 18 upper-case letters and digits.
    digest = hashlib.sha256(f"bridge-account:{route}".encode()).hexdigest()[:18]
    return "MA" + digest.upper()


def platform_role(params: PlatformParams) -> PlivoPlatform:
    """bridge as Plivo toward an app (``SPEC.make_platform``). ``media.timestamp`` is
    Unix time in ms, as Plivo documents it: ``params.wall_clock_ms`` plus the audio sent."""
    fmt = SPEC.resolve_format(params.codec, params.sample_rate)
    options = params.options
    return PlivoPlatform(
        params.stream_id,
        params.call_id,
        str(options.get("account_id") or "") or _account_id(params.route),
        content_type=fmt.name,
        l16_byteorder=str(options.get("l16_byteorder", "little")),
        timestamp_base_ms=params.wall_clock_ms,
    )


def app_role(params: AppParams) -> PlivoApp:
    """bridge's call leg toward Plivo, or an app written for Plivo (``SPEC.make_app``);
    ``params.codec`` makes the app answer in that codec at 8000 Hz."""
    content_type = None
    if params.codec:
        content_type = SPEC.resolve_format(params.codec, 8000).name
    return PlivoApp(
        l16_byteorder=str(params.options.get("l16_byteorder", "little")),
        content_type=content_type,
    )
