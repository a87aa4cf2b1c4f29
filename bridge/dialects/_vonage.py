"""Vonage Voice API WebSocket (NCCO ``connect`` to a ``websocket`` endpoint), both roles.

Sources
-------
* [VG-WS] developer.vonage.com/en/voice/voice-api/concepts/websockets (the stored copy
  read in full is the 2023 revision, ``_documentation/en/voice/voice-api/concepts/
  websockets.md`` of Vonage's former docs repository ``Nexmo/nexmo-developer``, mirrored
  as ``nvmwill/nexmo-developer`` @ 299be70b; the current page opens the same way).
* [VG-TUT] developer.vonage.com/en/tutorials/play-audio-into-a-websocket/
  create-the-websocket/node (the buffer limit; ``Uint16Array`` audio, i.e. host =
  little-endian order).
* [VG-SDK] Vonage's own Python SDK, ``vonage-python-sdk`` ``voice/src/vonage_voice/
  models/connect_endpoints.py`` (``content-type`` values incl. 24 kHz; PR #342 "add
  support for 24k audio in Websocket") and Node SDK ``WebsocketBitrate`` (8/16 kHz).
* [VG-ASYNC] the AsyncAPI transcription of [VG-WS] by ``api-evangelist/vonage``
  ``asyncapi/vonage-asyncapi.yml`` (x-generated-from documentation, validated
  2026-05-29): the ``clear`` and ``notify`` actions. Third-party, corroborated by
  pipecat's ``VonageFrameSerializer`` and several production bridges; **the part of
  Vonage's page that describes them could not be read here**, so their exact behaviour
  is marked UNCONFIRMED below.

Wire
----
* Vonage dials the app (``wss://``): Vonage is the WebSocket *client* [VG-WS]. The NCCO
  endpoint is ``{"type":"websocket","uri":…,"content-type":"audio/l16;rate=16000",
  "headers":{…}}``; ``headers`` is at most 512 bytes [VG-WS].
* First message, TEXT JSON: ``{"event":"websocket:connected","content-type":
  "audio/l16;rate=16000", …}`` where every key of the NCCO ``headers`` appears **at the
  top level** of the object (there is no ``headers`` key) [VG-WS]. -> ``Start``.
  Vonage's message has no call id of its own: put the call's ``uuid`` in the NCCO
  headers. :class:`VonageApp` takes ``call_id`` from the first of ``call_id_keys``
  present (``uuid``, ``call_uuid``, ``conversation_uuid``), else its constructor's
  ``call_id``.
* Audio both ways: BINARY, linear PCM 16-bit, **little-endian** [VG-TUT; AsyncAPI], mono,
  ``audio/l16;rate=8000`` (320 B per message), ``rate=16000`` (640 B) [VG-WS] or
  ``rate=24000`` (960 B) [VG-SDK], **20 ms per message**. Vonage -> app: "each message
  will be a 20 ms sample" [VG-WS]. App -> Vonage: "it is important that each message is
  320 or 640 bytes … and contains 20ms of audio" [VG-WS]: :class:`VonageApp` sends exactly
  one frame per message (``send(Audio)`` cuts and carries a remainder; ``send_audio``
  takes exactly one 20 ms frame, ``ValueError`` otherwise).
* Buffering: the app may send faster than real time; Vonage buffers **3072 messages**
  (about 60 s) [VG-TUT] (older revisions of [VG-WS]: 1024, about 20 s). Beyond it,
  what Vonage does is UNCONFIRMED (presumably dropped): bridge paces anyway.
* TEXT from Vonage: "Various JSON text-based messages may be sent at any point in the
  call … examine the ``event`` field to determine the message type and if it is of
  interest" [VG-WS]: unknown events are ignored and counted (``stats.unknown_events``).
* DTMF: ``{"event":"websocket:dtmf","digit":"5","duration":260}``, one event per key,
  ``digit`` ``0-9 * #``, ``duration`` in ms [VG-WS] -> ``Dtmf(digit, duration_ms)``.
  Nothing sends DTMF into the call on this socket (the REST API ``PUT
  /v1/calls/{uuid}/dtmf`` does): ``send(Dtmf)`` -> ``[]``.
* Ending: no message. Vonage closes the socket when the call ends. An app that closes
  it gets a ``disconnected`` event on its event webhook, and Vonage advises hanging up
  through the REST API instead when the end is intended [VG-WS]: ``send(Hangup())`` /
  ``send(Stop())`` -> ``[]`` (close the socket; the REST hangup is not a dialect matter).

Marks and clear (Design implications 2 and 3)
---------------------------------------------
* ``{"action":"notify","payload":{…}}`` -> Vonage answers ``{"event":"websocket:notify",
  "payload":{…}}`` (the payload echoed) once the audio buffered before it has played
  [VG-ASYNC]. That is a mark: ``send(Mark(name))`` sends ``notify`` with the payload
  ``{"mark":"m<n>"}`` (a short generated id, see ``_marks``) and the echo gives
  ``Mark(name)``.
* ``{"action":"clear"}`` -> Vonage stops playback, discards its buffer and answers
  ``{"event":"websocket:cleared"}`` [VG-ASYNC] -> ``Cleared``. Whether Vonage answers the
  ``notify`` requests the clear discarded is UNCONFIRMED; so ``send(Clear())`` settles every
  mark in flight itself (``take_events()`` returns a ``Mark`` for each, in order: played
  or cleared, as on Twilio), and a later echo for one of them is dropped and counted.

Platform role (emulating Vonage toward an app written for it)
-------------------------------------------------------------
:class:`VonagePlatform` sends ``websocket:connected`` (its headers at the top level),
BINARY audio, ``websocket:dtmf``, ``websocket:notify`` (the app's payload echoed byte
for byte) and ``websocket:cleared``. It takes BINARY audio (a message that is not exactly
one 20 ms frame is counted in ``stats.odd_size_messages``: Vonage's reaction to one is
UNCONFIRMED) and the ``clear`` and ``notify`` actions; any other TEXT is an
``UnsupportedMessage`` (``DialectError`` when malformed). ``notify`` -> ``Mark`` whose name
is the payload's JSON text, so that the echo returns it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs
import msgspec

from .._errors import DialectError, UnsupportedMessage
from ..media import Frame
from ._carrier import (
    NO_HOOKS,
    JsonDecoder,
    dumps,
    parse_digit,
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
    FlowControl,
    Hangup,
    Mark,
    Message,
    Start,
    Stats,
    StatsRequest,
    Stop,
    mark_text,
)
from ._marks import PendingMarks
from ._spec import (
    AppLeg,
    AppParams,
    CallLeg,
    Capabilities,
    ChunkRule,
    DialectSpec,
    PlatformParams,
    WireFormat,
)

__all__ = [
    "BUFFER_MESSAGES",
    "CONTENT_TYPES",
    "SPEC",
    "VonageApp",
    "VonagePlatform",
    "VonagePlatformStats",
    "VonageStats",
]

_D: Final = "vonage"
_PTIME_MS: Final = 20
BUFFER_MESSAGES: Final = 3072
"""Messages Vonage buffers from the app, about 60 s of audio [VG-TUT]."""
CONTENT_TYPES: Final[Mapping[str, int]] = {
    "audio/l16;rate=8000": 8000,
    "audio/l16;rate=16000": 16000,
    "audio/l16;rate=24000": 24000,
}
"""The NCCO ``content-type`` values and their rates [VG-WS, VG-SDK]."""

SPEC: Final = DialectSpec(
    name=_D,
    platform=f"{__name__}:VonagePlatform",
    app=f"{__name__}:VonageApp",
    dialer="platform",
    subprotocol=None,
    greets_first="platform",
    start=("websocket:connected",),
    stop="the socket closes (Vonage at the call's end; an app ends by closing or by REST hangup)",
    formats=tuple(WireFormat(name, "l16le", rate) for name, rate in CONTENT_TYPES.items()),
    default_format="audio/l16;rate=16000",
    format_choice="the app's NCCO endpoint content-type, echoed in websocket:connected",
    ptime_ms=_PTIME_MS,
    send_rule=ChunkRule(frames="one", min_bytes=320, max_bytes=960),
    capabilities=Capabilities(
        marks="played_or_cleared",
        marks_on_clear="unconfirmed",
        settles_marks=True,
        clear=True,
        cleared_ack=True,
        dtmf_in=True,
        dtmf_out=False,
        flow_control=False,
        drained=False,
        stats=False,
        hangup=False,
        resume=False,
    ),
    call_leg=CallLeg(
        listener="websocket", far_side_buffers=True, hangup_on_close=False, path="/vonage"
    ),
    app_leg=AppLeg(default_codec="l16"),
    make_platform=f"{__name__}:platform_role",
    make_app=f"{__name__}:app_role",
)
"""``send_rule``: exactly one 20 ms frame per message: 320, 640 or 960 bytes by rate."""


def _content_rate(content_type: str) -> int | None:
    """``audio/l16;rate=16000`` (any case, spaces around ``;``/``=``) -> 16000."""
    base, _, params = content_type.partition(";")
    if base.strip().lower() != "audio/l16":
        return None
    rate: int | None = None
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "rate":
            value = value.strip()
            rate = int(value) if value.isascii() and value.isdigit() and len(value) < 7 else None
    return rate if rate in CONTENT_TYPES.values() else None


def _frame_bytes(rate: int) -> int:
    return rate * _PTIME_MS // 1000 * 2


# --------------------------------------------------------------------------- Vonage -> app


class _Msg(msgspec.Struct, frozen=True, gc=False, tag_field="event"):
    pass


class _Connected(_Msg, tag="websocket:connected", frozen=True):
    content_type: str = msgspec.field(name="content-type")


class _Dtmf(_Msg, tag="websocket:dtmf", frozen=True):
    digit: str
    duration: int | str | None = None


class _Notify(_Msg, tag="websocket:notify", frozen=True):
    payload: msgspec.Raw


class _Cleared(_Msg, tag="websocket:cleared", frozen=True):
    pass


_decode_from_vonage: Final = JsonDecoder[_Connected | _Dtmf | _Notify | _Cleared](
    _D,
    _Connected | _Dtmf | _Notify | _Cleared,
    {
        "websocket:connected": None,
        "websocket:dtmf": None,
        "websocket:notify": None,
        "websocket:cleared": None,
    },
)
_decode_any: Final = msgspec.json.Decoder()


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class VonageStats:
    """Counters the app role keeps as ``.stats``."""

    messages_received: int = 0
    media_messages: int = 0
    media_bytes: int = 0
    odd_size_messages: int = 0
    """Media messages that were not exactly one 20 ms frame (passed on as they are)."""
    marks_received: int = 0
    dtmf_received: int = 0
    cleared_received: int = 0
    unknown_events: int = 0
    first_unknown_event: str | None = None
    tx_dropped_bytes: int = 0
    """PCM bytes of a partial frame held by ``send(Audio)`` and dropped by a clear."""


def _call_keys(value: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class VonageApp:
    """The application side of a Vonage Voice WebSocket (bridge's call leg toward Vonage).

    ``call_id``: the call id when ``websocket:connected`` carries none of
    ``call_id_keys`` (NCCO headers such as ``{"uuid": …}``).
    """

    call_id: str = ""
    call_id_keys: tuple[str, ...] = attrs.field(
        default=("uuid", "call_uuid", "conversation_uuid"), converter=_call_keys
    )
    stats: VonageStats = attrs.field(factory=VonageStats, init=False)
    marks: PendingMarks = attrs.field(factory=PendingMarks, init=False)
    sample_rate: int | None = attrs.field(default=None, init=False)
    content_type: str | None = attrs.field(default=None, init=False)
    headers: Mapping[str, Any] | None = attrs.field(default=None, init=False)
    """The NCCO headers, as they came at the top level of ``websocket:connected``."""
    _frame: int = attrs.field(default=0, init=False, repr=False)
    _tx_rest: bytes = attrs.field(default=b"", init=False, repr=False)

    def receive(self, message: Message) -> list[Event]:
        """One WebSocket message from Vonage -> events. DialectError on malformed input."""
        if not isinstance(message, str):
            return self._media(message if message.__class__ is bytes else bytes(message))
        try:
            msg = _decode_from_vonage(message)
        except UnsupportedMessage as exc:
            # [VG-WS]: other text messages may come; handle the ones of interest.
            self.stats.messages_received += 1
            self.stats.unknown_events += 1
            if self.stats.first_unknown_event is None:
                self.stats.first_unknown_event = exc.message
            return []
        self.stats.messages_received += 1
        if isinstance(msg, _Connected):
            return [self._start(message, msg)]
        if self.sample_rate is None:
            raise DialectError(_D, f"{type(msg).__name__[1:].lower()!r} before websocket:connected")
        if isinstance(msg, _Dtmf):
            self.stats.dtmf_received += 1
            duration = None if msg.duration is None else to_int(_D, msg.duration, "duration")
            return [Dtmf(parse_digit(_D, msg.digit), duration)]
        if isinstance(msg, _Notify):
            return self._notify(msg.payload)
        self.stats.cleared_received += 1
        return [Cleared()]

    def _media(self, data: bytes) -> list[Event]:
        rate = self.sample_rate
        if rate is None:
            raise DialectError(
                _D, f"a BINARY message of {len(data)} bytes before websocket:connected"
            )
        n = len(data)
        if n & 1:
            raise DialectError(_D, f"audio of {n} bytes is not whole 16-bit samples")
        stats = self.stats
        stats.messages_received += 1
        if not n:
            return []
        stats.media_messages += 1
        stats.media_bytes += n
        if n != self._frame:
            stats.odd_size_messages += 1
        return [Audio(Frame(data, rate))]

    def _start(self, text: str, msg: _Connected) -> Start:
        if self.sample_rate is not None:
            raise DialectError(_D, "a second websocket:connected")
        rate = _content_rate(msg.content_type)
        if rate is None:
            raise DialectError(
                _D,
                f"unsupported content-type {short(msg.content_type)} "
                f"(supported: {', '.join(CONTENT_TYPES)})",
            )
        obj = _decode_any.decode(text)  # decoded once already: cannot fail
        headers = {k: v for k, v in obj.items() if k not in ("event", "content-type")}
        call_id = self.call_id
        for key in self.call_id_keys:
            value = headers.get(key)
            if isinstance(value, str) and value:
                call_id = value
                break
        self.sample_rate = rate
        self._frame = _frame_bytes(rate)
        self.content_type = msg.content_type
        self.headers = headers
        return Start(
            stream_id=call_id,
            call_id=call_id,
            sample_rate=rate,
            encoding=msg.content_type,
            metadata={"carrier": _D, "content-type": msg.content_type, "headers": headers},
        )

    def _notify(self, payload: msgspec.Raw) -> list[Event]:
        try:
            obj = _decode_any.decode(payload)
        except (msgspec.DecodeError, RecursionError):  # pragma: no cover - it parsed once
            raise DialectError(_D, "websocket:notify payload is not JSON") from None
        wire_id = obj.get("mark") if isinstance(obj, dict) else None
        if not isinstance(wire_id, str):
            # Not one of bridge's notify requests: nothing to map it back to.
            self.marks.stale_echoes += 1
            return []
        name = self.marks.echoed(wire_id)
        if name is None:
            return []
        self.stats.marks_received += 1
        return [Mark(name)]

    def take_events(self) -> list[Event]:
        """Events owed without a wire message: after ``send(Clear())``, a ``Mark`` for
        every mark still in flight (``Cleared`` comes from ``websocket:cleared``)."""
        return self.marks.take()

    # ----------------------------------------------------------------- send

    def send_audio(self, pcm: bytes) -> Message:
        """Exactly one 20 ms frame of PCM16LE at the stream's rate -> one BINARY message."""
        frame = self._started()
        if len(pcm) != frame:
            raise ValueError(
                f"Vonage takes one 20 ms frame ({frame} bytes) per message, not {len(pcm)} "
                "bytes: use send(Audio(...))"
            )
        return pcm

    def send(self, event: Event) -> list[Message]:
        """Event -> messages to Vonage; ``[]`` for what the socket cannot carry."""
        if isinstance(event, Audio):
            return self._audio(event.frame)
        if isinstance(event, Mark):
            self._started()
            payload = {"mark": self.marks.sent(event.name)}
            return [dumps({"action": "notify", "payload": payload})]
        if isinstance(event, Clear):
            self._started()
            self.stats.tx_dropped_bytes += len(self._tx_rest)
            self._tx_rest = b""
            self.marks.clear(cleared=False)  # Cleared comes from websocket:cleared
            return ['{"action":"clear"}']
        if isinstance(event, Hangup | Stop | Dtmf | StatsRequest):
            # Hangup/Stop: close the socket (or hang up through the REST API). DTMF:
            # the REST API. Stats: no such message.
            return []
        raise _other_role("VonageApp", event)

    def _audio(self, frame: Frame) -> list[Message]:
        size = self._started()
        rate = self.sample_rate
        assert rate is not None
        pcm = _check_rate(frame, rate)
        if len(pcm) & 1:
            raise ValueError(f"PCM16 audio must be whole 2-byte samples, got {len(pcm)} bytes")
        data = self._tx_rest + pcm if self._tx_rest else pcm
        whole = len(data) - len(data) % size
        self._tx_rest = data[whole:]
        return [data[i : i + size] for i in range(0, whole, size)]

    def _started(self) -> int:
        if self.sample_rate is None:
            raise DialectError(_D, "cannot send before Vonage's websocket:connected")
        return self._frame


# --------------------------------------------------------------------------- platform role


class _Action(msgspec.Struct, frozen=True, gc=False, tag_field="action"):
    pass


class _ClearAction(_Action, tag="clear", frozen=True):
    pass


class _NotifyAction(_Action, tag="notify", frozen=True):
    payload: msgspec.Raw


_decode_actions: Final = msgspec.json.Decoder(_ClearAction | _NotifyAction)
_ACTIONS: Final = frozenset({"clear", "notify"})


def _explain_action(text: str, exc: msgspec.ValidationError) -> DialectError:
    try:
        obj = _decode_any.decode(text)
    except (msgspec.DecodeError, RecursionError):  # pragma: no cover - it parsed once
        return DialectError(_D, f"invalid message: {exc}")
    if not isinstance(obj, dict):
        return DialectError(_D, f"expected a JSON object, got {type(obj).__name__}")
    action = obj.get("action")
    if action is None and isinstance(obj.get("event"), str):
        return UnsupportedMessage(_D, f"{short(obj['event'])} is sent by Vonage, not by the app")
    if not isinstance(action, str):
        return DialectError(_D, 'message has no string "action" field')
    if action not in _ACTIONS:
        return UnsupportedMessage(_D, f"unknown action {short(action)}")
    return DialectError(_D, f"malformed {action!r} action: {exc}")


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class VonagePlatformStats:
    """Counters the platform role keeps as ``.stats``."""

    media_messages: int = 0
    odd_size_messages: int = 0
    """BINARY messages from the app that were not exactly one 20 ms frame."""
    actions: int = 0


def _headers(value: Mapping[str, Any] | None) -> dict[str, Any]:
    headers = dict(value) if value else {}
    for key in ("event", "content-type"):
        if key in headers:
            raise ValueError(f"header {key!r} would clash with websocket:connected's own field")
    return headers


def _check_content_type(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if _content_rate(value) is None:
        raise ValueError(
            f"{attribute.name} must be one of {', '.join(CONTENT_TYPES)}, not {value!r}"
        )


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class VonagePlatform:
    """Emulates Vonage toward an application written for its WebSocket.

    ``content_type`` is the stream's (:data:`CONTENT_TYPES`); ``headers`` the NCCO
    endpoint headers, sent at the top level of ``websocket:connected``;
    ``dtmf_duration_ms`` the ``duration`` of a ``websocket:dtmf`` whose ``Dtmf`` has none
    (Vonage's example shows 260; "on most digital phone systems this will be a fixed
    length" [VG-WS]).
    """

    content_type: str = attrs.field(default="audio/l16;rate=16000", validator=_check_content_type)
    headers: Mapping[str, Any] = attrs.field(factory=dict, converter=_headers)
    dtmf_duration_ms: int = 260
    stats: VonagePlatformStats = attrs.field(factory=VonagePlatformStats, init=False)
    _rate: int = attrs.field(default=0, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        rate = _content_rate(self.content_type)
        assert rate is not None  # validated
        self._rate = rate

    @property
    def sample_rate(self) -> int:
        return self._rate

    def receive(self, message: Message) -> list[Event]:
        """BINARY -> ``Audio``; TEXT ``clear`` -> ``Clear``, ``notify`` -> ``Mark``."""
        if isinstance(message, str):
            return self._action(message)
        data = message if message.__class__ is bytes else bytes(message)
        n = len(data)
        if n & 1:
            raise DialectError(_D, f"audio of {n} bytes is not whole 16-bit samples")
        if not n:
            return []
        self.stats.media_messages += 1
        if n != _frame_bytes(self._rate):
            self.stats.odd_size_messages += 1
        return [Audio(Frame(data, self._rate))]

    def _action(self, text: str) -> list[Event]:
        try:
            msg = _decode_actions.decode(text)
        except msgspec.ValidationError as exc:
            raise _explain_action(text, exc) from None
        except (msgspec.DecodeError, UnicodeError, RecursionError) as exc:
            raise DialectError(_D, f"message is not valid JSON: {exc}") from None
        self.stats.actions += 1
        if isinstance(msg, _ClearAction):
            return [Clear()]
        raw = bytes(msg.payload)
        if raw.lstrip()[:1] != b"{":
            raise DialectError(_D, "notify payload must be a JSON object")
        return [Mark(raw.decode())]

    def send_audio(self, pcm: bytes) -> Message:
        """PCM16LE at the stream's rate -> one BINARY message."""
        if len(pcm) & 1:
            raise ValueError(f"PCM16 audio must be whole 2-byte samples, got {len(pcm)} bytes")
        return pcm

    def send(self, event: Event) -> list[Message]:
        """Event -> messages to the app; ``[]`` for what Vonage has no message for."""
        if isinstance(event, Audio):
            return [self.send_audio(_check_rate(event.frame, self._rate))]
        if isinstance(event, Mark):
            return [_notify_event(mark_text(event.name))]
        if isinstance(event, Dtmf):
            duration = event.duration_ms if event.duration_ms is not None else self.dtmf_duration_ms
            return [dumps({"event": "websocket:dtmf", "digit": event.digit, "duration": duration})]
        if isinstance(event, Cleared):
            return ['{"event":"websocket:cleared"}']
        if isinstance(event, Start):
            return [
                dumps(
                    {
                        "event": "websocket:connected",
                        "content-type": self.content_type,
                        **self.headers,
                    }
                )
            ]
        if isinstance(event, Connected | Stop | Drained | Stats | FlowControl | Error):
            # The greeting is websocket:connected (on Start); the end is the close; an
            # app written for Vonage has no way to send DTMF, so never needs an error.
            return []
        raise _other_role("VonagePlatform", event)


def _notify_event(name: str) -> str:
    """``websocket:notify`` echoing ``name``: the app's payload text byte for byte when
    ``name`` is one JSON object (a mark that came from ``notify``), else
    ``{"name": name}``."""
    try:
        obj = _decode_any.decode(name)
    except (msgspec.DecodeError, UnicodeError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        return '{"event":"websocket:notify","payload":' + name + "}"
    return dumps({"event": "websocket:notify", "payload": {"name": name}})


def platform_role(params: PlatformParams) -> VonagePlatform:
    """bridge as Vonage toward an app (``SPEC.make_platform``): the route's rate as the
    content-type, the call's id as the ``uuid`` header (where an NCCO would put it)."""
    fmt = SPEC.resolve_format(params.codec, params.sample_rate)
    return VonagePlatform(content_type=fmt.name, headers={"uuid": params.call_id})


def app_role(params: AppParams) -> VonageApp:
    """bridge's call leg toward Vonage, or an app written for it (``SPEC.make_app``): the
    call id from the NCCO headers (``uuid``, ...), else ``params.call_id``."""
    return VonageApp(call_id=params.call_id)
