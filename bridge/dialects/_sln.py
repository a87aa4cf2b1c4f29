"""``sln``: bridge's own app-leg protocol (PROTOCOLS.md §0).

Audio is BINARY PCM16 little-endian mono at the negotiated rate, both ways; control is
one JSON object per TEXT message, keyed by ``"event"``. Two roles:

* :class:`SlnPlatform` is bridge's side (it owns the call): it sends ``start``,
  audio, and the echoes (``mark``, ``cleared``, ``dtmf``, ``drained``, ``stats``,
  ``stop``) and receives the app's audio and commands.
* :class:`SlnApp` is the application's side (bridge's test client, or an app written
  in Python): the mirror image.

The control codec is exposed on its own (:func:`encode_control`,
:func:`decode_control`) because the binary app-leg encapsulations ``rtp`` and
``audiosocket`` carry exactly the same TEXT messages (PROTOCOLS.md §0, last paragraph;
see ``_encapsulated.py``).

Leniency, and where it stops (§0 "Unknown events are ignored ...; malformed JSON is a
protocol error"):

* an unknown ``event`` name is ignored (``[]``) and counted on the connection
  (``unknown_events``, ``first_unknown_event``) so the engine can log it once per
  stream; so is an event that only the *other* role sends (e.g. ``cleared`` sent to
  the platform), since to this role it is just as unknown;
* unknown *fields* in a known event are ignored too (forward compatibility of our own
  protocol; carrier dialects that demand exactness use ``forbid_unknown_fields``);
* anything else that is wrong (not JSON, not an object, no ``event``, a known event
  with a missing field or a wrong type, a bad DTMF digit) raises ``DialectError``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import attrs
import msgspec

from .._errors import DialectError
from ..media import Frame
from ._events import (
    Audio,
    Clear,
    Cleared,
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
)
from ._spec import (
    AppLeg,
    AppParams,
    Capabilities,
    ChunkRule,
    DialectSpec,
    PlatformParams,
    WireFormat,
)

__all__ = [
    "DTMF_DIGITS",
    "SPEC",
    "Role",
    "SlnApp",
    "SlnPlatform",
    "decode_control",
    "encode_control",
]

DIALECT: Final = "sln"

Role = Literal["platform", "app"]
"""Which side of the call a connection plays (see ``_events``)."""

DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
"""The sixteen DTMF keys (RFC 4733 events 0-15); ``flash`` is not a digit."""

SPEC: Final = DialectSpec(
    name=DIALECT,
    platform=f"{__name__}:SlnPlatform",
    app=f"{__name__}:SlnApp",
    dialer="either",
    subprotocol=None,
    greets_first="platform",
    start=("start",),
    stop=(
        "bridge sends stop {reason} and closes; the app sends hangup, or closes with 1000 "
        "(any other close is an outage: bridge reconnects)"
    ),
    formats=tuple(
        WireFormat("L16", "l16le", rate)
        for rate in (8000, 12000, 16000, 24000, 32000, 44100, 48000)
    ),
    default_format="L16",
    format_choice="the route's app.sample_rate, announced in start",
    ptime_ms=20,
    send_rule=ChunkRule(frames="any", multiple_of_bytes=2),
    capabilities=Capabilities(
        marks="played_or_cleared",
        marks_on_clear="echoed",
        settles_marks=False,
        clear=True,
        cleared_ack=True,
        dtmf_in=True,
        dtmf_out=True,
        flow_control=False,
        drained=True,
        stats=True,
        hangup=True,
        resume=True,
    ),
    app_leg=AppLeg(default_codec="l16"),
    make_platform=f"{__name__}:platform_role",
    make_app=f"{__name__}:app_role",
)
"""bridge's own app-leg protocol: never a call leg (nothing dials bridge speaking it)."""

# Sanity bounds on numbers an app-side decoder accepts from ``start``: enough for any
# real telephony rate, small enough that a bogus value cannot make a buffer size explode.
_MAX_RATE: Final = 384_000
_MAX_FRAME_MS: Final = 1000


# --------------------------------------------------------------------------------------
# Wire structs. Frozen msgspec Structs, tagged by "event" (a msgspec tagged union puts
# the tag first when encoding, which gives the documented key order). kw_only lets
# required and defaulted fields interleave in wire order.


class _Msg(msgspec.Struct, frozen=True, kw_only=True, tag_field="event"):
    pass


# bridge -> app ------------------------------------------------------------------------


class _StartMsg(_Msg, frozen=True, tag="start"):
    stream_id: str
    call_id: str
    encoding: str
    sample_rate: Annotated[int, msgspec.Meta(gt=0, le=_MAX_RATE)]
    # Mono only: every dialect and the media layer are mono (Frame is PCM16 mono).
    channels: Literal[1] = 1
    frame_ms: Annotated[int, msgspec.Meta(gt=0, le=_MAX_FRAME_MS)] = 20
    resumed: bool = False
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    # Present only when resumed (§0); UNSET fields are left out when encoding.
    replayed_ms: Annotated[int, msgspec.Meta(ge=0)] | msgspec.UnsetType = msgspec.UNSET


class _MarkMsg(_Msg, frozen=True, tag="mark"):  # both directions: the request and its echo
    # Any JSON string or number, echoed as the same value (null, booleans, arrays and
    # objects are a protocol error, as any wrongly typed field is).
    name: str | int | float


class _ClearedMsg(_Msg, frozen=True, tag="cleared"):
    pass


class _DtmfDigitMsg(_Msg, frozen=True, tag="dtmf"):  # bridge -> app: one digit
    digit: str


class _DrainedMsg(_Msg, frozen=True, tag="drained"):
    pass


class _StatsMsg(_Msg, frozen=True, tag="stats", omit_defaults=True):
    queued_ms: Annotated[int, msgspec.Meta(ge=0)]
    buffered_ms: Annotated[int, msgspec.Meta(ge=0)]
    trimmed_ms: Annotated[int, msgspec.Meta(ge=0)] = 0
    jitter_ms: Annotated[int, msgspec.Meta(ge=0)] | None = None


class _StopMsg(_Msg, frozen=True, tag="stop"):
    reason: str | None = None


class _ErrorMsg(_Msg, frozen=True, tag="error"):
    # A request of the app's that could not be carried out; the stream goes on.
    error: str
    message: str = ""


# app -> bridge ------------------------------------------------------------------------


class _ClearMsg(_Msg, frozen=True, tag="clear"):
    pass


class _HangupMsg(_Msg, frozen=True, tag="hangup"):
    pass


class _DtmfDigitsMsg(_Msg, frozen=True, tag="dtmf"):  # app -> bridge: a string of digits
    digits: str


class _StatsRequestMsg(_Msg, frozen=True, tag="stats"):
    pass


class _Envelope(msgspec.Struct, frozen=True):
    """Just the tag: used on the error path to tell "unknown event" from "bad event"."""

    event: str


_ToApp = (
    _StartMsg
    | _MarkMsg
    | _ClearedMsg
    | _DtmfDigitMsg
    | _DrainedMsg
    | _StatsMsg
    | _StopMsg
    | _ErrorMsg
)
_ToPlatform = _MarkMsg | _ClearMsg | _HangupMsg | _DtmfDigitsMsg | _StatsRequestMsg

# Keyed by the *receiving* role.
_DECODERS: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    "platform": msgspec.json.Decoder(_ToPlatform),
    "app": msgspec.json.Decoder(_ToApp),
}
_KNOWN: Final[dict[str, frozenset[str]]] = {
    "platform": frozenset({"mark", "clear", "hangup", "dtmf", "stats"}),
    "app": frozenset({"start", "mark", "cleared", "dtmf", "drained", "stats", "stop", "error"}),
}
_ENVELOPE: Final = msgspec.json.Decoder(_Envelope)
_ENCODER: Final = msgspec.json.Encoder()


def _check_digits(digits: str) -> None:
    if not digits or not DTMF_DIGITS.issuperset(digits):
        raise DialectError(DIALECT, f"dtmf digits must be one or more of 0-9*#A-D, got {digits!r}")


def _parse(text: str, role: Role) -> _Msg | str:
    """Parse one TEXT message as ``role`` receives it.

    Returns the wire struct, or the event name (a ``str``) when the event is unknown to
    ``role`` so that the connection can count it.
    """
    try:
        msg: _Msg = _DECODERS[role].decode(text)
    except msgspec.ValidationError as exc:
        # Either a known event with bad fields, or an event name this role does not
        # know. Only the second is allowed (ignored); tell them apart by the tag alone.
        try:
            event = _ENVELOPE.decode(text).event
        except (msgspec.DecodeError, UnicodeError, RecursionError):
            raise DialectError(DIALECT, f"invalid control message: {exc}") from None
        if event not in _KNOWN[role]:
            return event
        raise DialectError(DIALECT, f"invalid {event!r} message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise DialectError(DIALECT, f"control message is not JSON: {exc}") from None
    except UnicodeError:
        # A str with lone surrogates cannot be UTF-8; a real WebSocket never delivers
        # one, but a decoder must not raise anything but DialectError.
        raise DialectError(DIALECT, "control message is not valid Unicode") from None
    except RecursionError:
        # msgspec bounds its recursion and raises this for absurdly nested JSON, even
        # inside a field it would skip.
        raise DialectError(DIALECT, "control message is nested too deeply") from None
    return msg


def _events(msg: _Msg) -> list[Event]:
    """The events of one parsed message (the struct type says which direction)."""
    # The most frequent control messages first.
    if isinstance(msg, _MarkMsg):
        return [Mark(msg.name)]
    if isinstance(msg, _ClearMsg):
        return [Clear()]
    if isinstance(msg, _DtmfDigitsMsg):
        _check_digits(msg.digits)
        return [Dtmf(d) for d in msg.digits]
    if isinstance(msg, _DtmfDigitMsg):
        if len(msg.digit) != 1:
            raise DialectError(DIALECT, f"dtmf digit must be one character, got {msg.digit!r}")
        _check_digits(msg.digit)
        return [Dtmf(msg.digit)]
    if isinstance(msg, _StartMsg):
        return [
            Start(
                stream_id=msg.stream_id,
                call_id=msg.call_id,
                sample_rate=msg.sample_rate,
                encoding=msg.encoding,
                metadata=msg.metadata,
                resumed=msg.resumed,
                replayed_ms=0
                if isinstance(msg.replayed_ms, msgspec.UnsetType)
                else msg.replayed_ms,
            )
        ]
    if isinstance(msg, _HangupMsg):
        return [Hangup()]
    if isinstance(msg, _StatsRequestMsg):
        return [StatsRequest()]
    if isinstance(msg, _ClearedMsg):
        return [Cleared()]
    if isinstance(msg, _DrainedMsg):
        return [Drained()]
    if isinstance(msg, _StatsMsg):
        return [
            Stats(
                queued_ms=msg.queued_ms,
                buffered_ms=msg.buffered_ms,
                trimmed_ms=msg.trimmed_ms,
                jitter_ms=msg.jitter_ms,
            )
        ]
    if isinstance(msg, _StopMsg):
        return [Stop(msg.reason)]
    if isinstance(msg, _ErrorMsg):
        return [Error(msg.error, msg.message)]
    raise AssertionError(f"unhandled sln message {msg!r}")  # pragma: no cover


def decode_control(text: str, role: Role) -> list[Event]:
    """Decode one sln TEXT control message as received by ``role``.

    ``role="platform"`` decodes what an app sends (``mark``, ``clear``, ``hangup``,
    ``dtmf`` with ``digits`` -> one ``Dtmf`` per digit, ``stats`` -> ``StatsRequest``);
    ``role="app"`` decodes what bridge sends (``start``, ``mark``, ``cleared``,
    ``dtmf``, ``drained``, ``stats``, ``stop``, ``error``). Unknown events give ``[]``; use a
    connection object to have them counted. Malformed input raises ``DialectError``.
    """
    msg = _parse(text, role)
    return [] if isinstance(msg, str) else _events(msg)


def encode_control(event: Event, role: Role, *, frame_ms: int = 20) -> str | None:
    """Encode ``event`` as the sln TEXT message ``role`` sends, or ``None`` if it has none.

    ``frame_ms`` goes into ``start`` only. ``Audio`` is not control (it is BINARY) and
    gives ``None``. An invalid DTMF digit is a caller bug: ``ValueError``.
    """
    msg: _Msg
    if isinstance(event, Mark):
        msg = _MarkMsg(name=event.name)
    elif isinstance(event, Dtmf):
        if len(event.digit) != 1 or event.digit not in DTMF_DIGITS:
            raise ValueError(f"not a DTMF digit: {event.digit!r}")
        msg = (
            _DtmfDigitMsg(digit=event.digit)
            if role == "platform"
            else _DtmfDigitsMsg(digits=event.digit)
        )
    elif role == "platform":
        if isinstance(event, Start):
            msg = _StartMsg(
                stream_id=event.stream_id,
                call_id=event.call_id,
                encoding=event.encoding,
                sample_rate=event.sample_rate,
                frame_ms=frame_ms,
                resumed=event.resumed,
                metadata=dict(event.metadata),
                replayed_ms=event.replayed_ms if event.resumed else msgspec.UNSET,
            )
        elif isinstance(event, Cleared):
            msg = _ClearedMsg()
        elif isinstance(event, Drained):
            msg = _DrainedMsg()
        elif isinstance(event, Stats):
            msg = _StatsMsg(
                queued_ms=event.queued_ms,
                buffered_ms=event.buffered_ms,
                trimmed_ms=event.trimmed_ms,
                jitter_ms=event.jitter_ms,
            )
        elif isinstance(event, Stop):
            msg = _StopMsg(reason=event.reason)
        elif isinstance(event, Error):
            msg = _ErrorMsg(error=event.code, message=event.message)
        else:
            return None
    elif isinstance(event, Clear):
        msg = _ClearMsg()
    elif isinstance(event, Hangup):
        msg = _HangupMsg()
    elif isinstance(event, StatsRequest):
        msg = _StatsRequestMsg()
    else:
        return None
    try:
        return _ENCODER.encode(msg).decode()
    except (TypeError, msgspec.EncodeError) as exc:  # e.g. metadata that is not JSON
        raise ValueError(f"cannot encode {type(event).__name__}: {exc}") from None


def _odd_audio(n: int) -> DialectError:
    return DialectError(DIALECT, f"audio message of {n} bytes is not whole PCM16 samples")


@attrs.define(slots=True)
class SlnPlatform:
    """bridge's side of an sln app leg.

    ``SlnPlatform(stream_id, call_id, sample_rate, ptime_ms=20)``. The ``start``
    message takes its ids and rate from the connection (the ``Start`` event passed to
    :meth:`send` must agree: a mismatch is a caller bug, ``ValueError``) and its
    ``metadata``/``resumed``/``replayed_ms`` from the event. ``encoding`` is what
    ``start`` announces: ``"L16"`` for sln itself; the encapsulations announce their
    binary codec.
    """

    stream_id: str
    call_id: str
    sample_rate: int = attrs.field(validator=attrs.validators.gt(0))
    ptime_ms: int = attrs.field(default=20, validator=attrs.validators.gt(0))
    encoding: str = attrs.field(default="L16", kw_only=True)
    unknown_events: int = attrs.field(default=0, init=False)
    """How many TEXT messages carried an event this role does not know (ignored)."""
    first_unknown_event: str | None = attrs.field(default=None, init=False)
    """The first such event name, for a log-once line."""

    def receive(self, message: Message) -> list[Event]:
        """BINARY -> ``Audio`` (any even length; empty gives ``[]``); TEXT -> control events."""
        if message.__class__ is bytes:
            assert isinstance(message, bytes)
            if len(message) & 1:
                raise _odd_audio(len(message))
            return [Audio(Frame(message, self.sample_rate))] if message else []
        if isinstance(message, str):
            msg = _parse(message, "platform")
            if isinstance(msg, str):
                self._unknown(msg)
                return []
            return _events(msg)
        return self.receive(bytes(message))  # bytearray / memoryview from a transport

    def _unknown(self, name: str) -> None:
        self.unknown_events += 1
        if self.first_unknown_event is None:
            self.first_unknown_event = name

    def send(self, event: Event) -> list[Message]:
        """Wire messages for ``event``; ``[]`` for events the platform never sends."""
        if isinstance(event, Audio):
            if event.frame.sample_rate != self.sample_rate:
                raise ValueError(
                    f"frame at {event.frame.sample_rate} Hz on a {self.sample_rate} Hz sln leg"
                )
            return [event.frame.pcm] if event.frame.pcm else []
        if isinstance(event, Start):
            if (event.stream_id, event.call_id, event.sample_rate) != (
                self.stream_id,
                self.call_id,
                self.sample_rate,
            ):
                raise ValueError(
                    "Start does not match this sln connection's stream_id/call_id/sample_rate"
                )
            event = attrs.evolve(event, encoding=self.encoding)
        text = encode_control(event, "platform", frame_ms=self.ptime_ms)
        return [] if text is None else [text]

    def send_audio(self, pcm: bytes) -> bytes:
        """PCM16LE goes out as-is: one BINARY message per frame (§0)."""
        return pcm


@attrs.define(slots=True)
class SlnApp:
    """The application's side of an sln leg: ``SlnApp()``.

    Learns ``stream_id``, ``call_id``, ``sample_rate`` and ``frame_ms`` from ``start``,
    which must come before any audio or other control. ``encoding`` is the codec this
    app accepts in ``start`` (``None``: any); a mismatch is a ``DialectError``.
    """

    encoding: str | None = attrs.field(default="L16", kw_only=True)
    stream_id: str | None = attrs.field(default=None, init=False)
    call_id: str | None = attrs.field(default=None, init=False)
    sample_rate: int = attrs.field(default=0, init=False)
    """0 until ``start`` arrives."""
    frame_ms: int = attrs.field(default=0, init=False)
    unknown_events: int = attrs.field(default=0, init=False)
    first_unknown_event: str | None = attrs.field(default=None, init=False)

    @property
    def started(self) -> bool:
        return self.sample_rate != 0

    def receive(self, message: Message) -> list[Event]:
        """BINARY -> ``Audio`` at the ``start`` rate; TEXT -> control events."""
        if message.__class__ is bytes:
            assert isinstance(message, bytes)
            rate = self.sample_rate
            if not rate:
                raise DialectError(DIALECT, "audio before start")
            if len(message) & 1:
                raise _odd_audio(len(message))
            return [Audio(Frame(message, rate))] if message else []
        if isinstance(message, str):
            return self._receive_text(message)
        return self.receive(bytes(message))

    def _receive_text(self, text: str) -> list[Event]:
        msg = _parse(text, "app")
        if isinstance(msg, str):
            self.unknown_events += 1
            if self.first_unknown_event is None:
                self.first_unknown_event = msg
            return []
        events = _events(msg)
        if isinstance(msg, _StartMsg):
            if self.started:
                raise DialectError(DIALECT, "second start on one connection")
            if self.encoding is not None and msg.encoding != self.encoding:
                raise DialectError(
                    DIALECT,
                    f"start announces encoding {msg.encoding!r}, expected {self.encoding!r}",
                )
            self.stream_id = msg.stream_id
            self.call_id = msg.call_id
            self.sample_rate = msg.sample_rate
            self.frame_ms = msg.frame_ms
        elif not self.started:
            raise DialectError(DIALECT, f"{msg.__struct_config__.tag!s} before start")
        return events

    def send(self, event: Event) -> list[Message]:
        """Wire messages for ``event``; ``[]`` for events the app never sends."""
        if isinstance(event, Audio):
            return [event.frame.pcm] if event.frame.pcm else []
        if isinstance(event, Stop):  # an app ends the stream by hanging up
            event = Hangup()
        text = encode_control(event, "app")
        return [] if text is None else [text]

    def send_audio(self, pcm: bytes) -> bytes:
        """PCM16LE as-is; any length (bridge re-frames what apps send)."""
        return pcm


def platform_role(params: PlatformParams) -> SlnPlatform:
    """bridge toward an sln app (``SPEC.make_platform``)."""
    return SlnPlatform(params.stream_id, params.call_id, params.sample_rate, params.ptime_ms)


def app_role(params: AppParams) -> SlnApp:
    """An sln application (``SPEC.make_app``: ``bridge echo-server``)."""
    return SlnApp()
