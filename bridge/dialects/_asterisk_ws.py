"""Asterisk ``chan_websocket``: media over a WebSocket, both roles (PROTOCOLS.md §3).

Sources: [AST] ``asterisk/asterisk`` ``channels/chan_websocket.c`` (event and command
formats, the queue, marks, flush) and ``main/codec_builtin.c`` (format names, frame
sizes); [AST-DOC] ``asterisk/documentation`` ``docs/Configuration/Channel-Drivers/
WebSocket.md`` (= docs.asterisk.org), as summed up in PROTOCOLS.md §3; [LIVE] PROTOCOLS.md
§3 "Observed live against Asterisk 22.10.1". The driver exists since
20.16.0/21.11.0/22.6.0/23.0.0; JSON control messages and ``MARK_MEDIA`` since
20.18.0/22.8.0/23.2.0 (``git tag --contains`` on [AST], PROTOCOLS.md §3).

Wire
----
* WebSocket subprotocol ``media`` [AST-DOC, LIVE]. Asterisk dials the app for
  ``Dial(WebSocket/<client-id>/...)``; for ``Dial(WebSocket/INCOMING/...)`` the app dials
  Asterisk at ``/media/<connection_id>``. Either way Asterisk speaks first.
* BINARY: raw media in the channel's format, no header [AST]. TEXT: one control message,
  plain text (``NAME key:value key:value``, Asterisk's default) or JSON
  (``{"event":NAME,...}`` from Asterisk, ``{"command":NAME,...}`` to it), chosen by the
  dial option ``f(json|plain-text)`` [AST ``control_msg_format``]. Asterisk parses
  commands in the format it sends events in, so the app role answers in the form of the
  ``MEDIA_START`` it got (``command_format="auto"``) unless configured.
* A TEXT message to Asterisk longer than **128 bytes** is ignored with a log line
  (``MAX_TEXT_MESSAGE_LEN``) [AST]; commands are case-sensitive and stripped of
  surrounding whitespace; an unknown command gets no reply [AST, LIVE]. The app role
  never produces one over 128 bytes: marks go out under short generated correlation ids
  (``m1``, ``m2``, ...; see ``_marks``) that it maps back to the engine's names, so a
  mark name of any length or content is fine.

Asterisk -> app (the app role's ``receive``)
--------------------------------------------
* ``MEDIA_START`` first, once: ``connection_id`` (the ``websocket_client.conf`` section:
  the **same for every call** of that section [LIVE]), ``channel``, ``channel_id`` (the
  channel's uniqueid: **the call id**), ``format``, ``optimal_frame_size``, ``ptime``,
  and in JSON ``channel_variables`` [AST ``_create_event_MEDIA_START``]. Plain:
  ``MEDIA_START connection_id:<section> channel:WebSocket/<section>/0x… channel_id:<id>
  format:slin optimal_frame_size:320 ptime:20`` [LIVE]. -> ``Start(stream_id=channel_id,
  call_id=channel_id)``.
* Formats (``format`` = Asterisk's format name) [AST codec_builtin.c]: ``ulaw``,
  ``alaw`` (8 kHz, 160 B per 20 ms), ``slin`` (8 kHz, 320 B), ``slin12``, ``slin16``
  (640 B), ``slin24``, ``slin32``, ``slin44`` (44.1 kHz), ``slin48``, ``slin96``,
  ``slin192``. ``optimal_frame_size`` = ptime x codec bytes per ms. slin is
  little-endian (host order; confirmed by correlation [LIVE]). Codecs Asterisk cannot
  re-frame (opus, speex, g729: passthrough mode) and the others are refused
  (``DialectError``): dial with ``c(slin16)`` or similar.
* Media: one BINARY message per 20 ms frame; a last partial frame arrives as it is (e.g.
  276 B) and is passed on; **nothing is sent while the channel produces no audio**
  (``Wait``, ``SendDTMF``): a gap is not loss [LIVE]. ``Audio`` carries no seq/timestamp.
* ``MEDIA_XOFF`` / ``MEDIA_XON`` -> ``FlowControl(paused=True/False)``: Asterisk's queue
  of the app's frames reached 900 / fell under 800; at 1000 whole binary messages are
  discarded [AST QUEUE_LENGTH_*]. ``paused`` mirrors the last one.
* ``QUEUE_DRAINED`` (once, after ``REPORT_QUEUE_DRAINED``, when the queue runs out) ->
  ``Drained``. ``MEDIA_MARK_PROCESSED <id>`` (plain: the id bare, no key [AST, LIVE];
  ``correlation_id:<id>`` is accepted too) -> ``Mark(name)``. ``DTMF_END digit:1`` ->
  ``Dtmf``. ``STATUS`` -> ``Stats(queued_ms=queue_length x ptime, buffered_ms=0)`` (the
  flags are kept in ``last_status``). ``MEDIA_BUFFERING_COMPLETED`` and ``ERROR`` give no
  event: they are counted and kept (``last_buffering_completed``, ``last_error``); an
  ``ERROR`` answers a command Asterisk could not carry out and does not end the call.
* Unknown events are ignored and counted (``stats.unknown_events``): Asterisk adds
  events from release to release. Malformed known events raise ``DialectError``.

App -> Asterisk (the app role's ``send``)
-----------------------------------------
* Audio: BINARY in the channel's format, **whole multiples of** ``optimal_frame_size``:
  Asterisk cuts a message into frames and **drops a partial remainder** unless inside
  ``START_MEDIA_BUFFERING``…``STOP_MEDIA_BUFFERING`` [AST process_binary_message, LIVE
  (a 100-byte message was dropped)]. ``send(Audio)`` carries a remainder over to the next
  call; ``send_audio(pcm)`` is the fast path and takes whole frames only (``ValueError``
  otherwise: a caller bug). Do not mix the two on one stream.
* ``Mark`` -> ``MARK_MEDIA <id>``; ``Clear`` -> ``FLUSH_MEDIA``; ``Hangup`` -> ``HANGUP``
  (Asterisk hangs up and closes with 1000 [LIVE]); ``StatsRequest`` -> ``GET_STATUS``.
  ``Dtmf`` -> ``[]``: no command injects DTMF [AST]. ``Stop`` -> ``[]`` (close the socket:
  Asterisk answers 1001 and hangs up [LIVE]). Extra commands are methods: ``answer()``
  (needed with the ``n`` dial option; without it Asterisk answered before
  ``MEDIA_START`` [AST websocket_handoff_to_channel, LIVE]), ``start_media_buffering()``,
  ``stop_media_buffering(id)``, ``report_queue_drained()``, ``pause_media()``,
  ``continue_media()``; ``accept()`` gives the ``ANSWER`` of an ``answer=True`` role.

Marks and clear (Design implications 2 and 3)
---------------------------------------------
A mark is an element of Asterisk's frame queue: ``MEDIA_MARK_PROCESSED`` fires when it
reaches the head, i.e. every frame before it has been **handed to the core** (not
necessarily heard); control elements use no 20 ms slot [AST dequeue_frame].
``FLUSH_MEDIA`` frees every queued element **including pending marks and buffering
notices, with no event ever** [AST handle_command, LIVE]. So ``send(Clear())`` returns
the ``FLUSH_MEDIA`` and settles every mark in flight: ``take_events()`` then returns a
``Mark`` for each (in order) and ``Cleared()`` — Twilio's "played or cleared" semantics.
An echo for an id no longer in flight is dropped and counted (``marks.stale_echoes``).

Platform role (emulating Asterisk for tests and ``bridge call``)
----------------------------------------------------------------
:class:`AsteriskWsPlatform` checks what the app sends as Asterisk does: TEXT over 128
bytes, empty, or an unknown command is ignored (counted in ``stats.ignored_commands``,
the reason in ``stats.last_ignored``), like Asterisk's log-and-ignore; invalid JSON in
JSON mode, to which Asterisk answers ``ERROR``, is a ``DialectError``. BINARY is cut into
``optimal_frame_size`` frames (one ``Audio`` each) and a partial remainder is dropped
(counted) outside buffering mode, carried over inside it, and sent as a short frame at
``STOP_MEDIA_BUFFERING`` [AST]. Marks flushed by ``FLUSH_MEDIA`` are never echoed, even
when the engine returns them; ``QUEUE_DRAINED`` goes out only once after
``REPORT_QUEUE_DRAINED``. Not emulated (no clock in sans-IO code): the 1000-frame queue
limit, ``PAUSE_MEDIA`` (recorded in ``media_paused`` only), passthrough codecs.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs
import msgspec

from .._errors import DialectError, UnsupportedMessage
from ..media import Frame
from ._carrier import (
    NO_HOOKS,
    Codec,
    dumps,
    l16_codec,
    parse_digit,
    pcma_codec,
    pcmu_codec,
    short,
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
    Option,
    OptionValue,
    PlatformParams,
    WireFormat,
)

__all__ = [
    "FORMATS",
    "MAX_TEXT_BYTES",
    "SPEC",
    "SUBPROTOCOL",
    "AsteriskWsApp",
    "AsteriskWsPlatform",
    "AsteriskWsPlatformStats",
    "AsteriskWsStats",
]

_D: Final = "asterisk_ws"
SUBPROTOCOL: Final = "media"
MAX_TEXT_BYTES: Final = 128
"""Asterisk ignores a TEXT message longer than this (``MAX_TEXT_MESSAGE_LEN``) [AST]."""
_QUEUE_MAX: Final = 1000
_XOFF_LEVEL: Final = 900
_XON_LEVEL: Final = 800
_MAX_FRAME_BYTES: Final = 65500  # Asterisk's documented payload ceiling [AST-DOC]

ControlFormat = Literal["plain-text", "json"]

FORMATS: Final[Mapping[str, tuple[str, int]]] = {
    "ulaw": ("pcmu", 8000),
    "alaw": ("pcma", 8000),
    "slin": ("l16le", 8000),
    "slin12": ("l16le", 12000),
    "slin16": ("l16le", 16000),
    "slin24": ("l16le", 24000),
    "slin32": ("l16le", 32000),
    "slin44": ("l16le", 44100),
    "slin48": ("l16le", 48000),
    "slin96": ("l16le", 96000),
    "slin192": ("l16le", 192000),
}
"""Asterisk format name -> (bridge.media codec, sample rate) [AST codec_builtin.c]."""


def _check_word(value: OptionValue) -> None:
    text = f"{value}"
    if not text or len(text) > 64 or any(c.isspace() for c in text):
        raise ValueError(f"must be 1-64 characters without whitespace, got {value!r}")


def _check_query_name(value: OptionValue) -> None:
    if value:
        _check_word(value)


def _codec(name: str) -> Codec | None:
    known = FORMATS.get(name)
    if known is None:
        return None
    codec, rate = known
    if codec == "pcmu":
        return pcmu_codec(name)
    if codec == "pcma":
        return pcma_codec(name)
    return l16_codec(name, rate, "little")


def _frame_bytes(codec: Codec, ptime_ms: int) -> int:
    """``optimal_frame_size``: ptime x bytes per ms (Asterisk's default_ms x
    minimum_bytes / minimum_ms) [AST websocket_new]."""
    return codec.sample_rate * ptime_ms // 1000 * codec.width


SPEC: Final = DialectSpec(
    name=_D,
    platform=f"{__name__}:AsteriskWsPlatform",
    app=f"{__name__}:AsteriskWsApp",
    dialer="either",
    subprotocol=SUBPROTOCOL,
    greets_first="platform",
    start=("MEDIA_START",),
    stop=(
        "Asterisk hangs up: WebSocket close 1000 (no message); the app ends the call with "
        "the HANGUP command (close 1000) or by closing (Asterisk answers 1001 and hangs up)"
    ),
    formats=tuple(WireFormat(name, codec, rate) for name, (codec, rate) in FORMATS.items()),
    default_format="slin",
    format_choice=(
        "Asterisk: the channel's format (dial option c(codec), else the caller's), "
        "announced in MEDIA_START format/optimal_frame_size/ptime"
    ),
    ptime_ms=20,
    send_rule=ChunkRule(frames="whole", max_bytes=_MAX_FRAME_BYTES),
    capabilities=Capabilities(
        marks="handed_over",
        marks_on_clear="dropped",
        settles_marks=True,
        clear=True,
        cleared_ack=False,
        dtmf_in=True,
        dtmf_out=False,
        flow_control=True,
        drained=True,
        stats=True,
        hangup=True,
        resume=False,
    ),
    call_leg=CallLeg(
        listener="websocket",
        far_side_buffers=True,
        hangup_on_close=True,
        path="/asterisk",
        options=(
            Option(
                "answer",
                bool,
                False,
                "the dial string has the n option (no auto-answer): bridge sends ANSWER "
                "once it has taken the call",
            ),
            Option(
                "call_id_query",
                str,
                "",
                "the query parameter of the upgrade URL (set with the dial option v()) "
                "that carries the call id; empty: the channel_id of MEDIA_START",
                check=_check_query_name,
            ),
            Option(
                "command_format",
                str,
                "auto",
                "the form of bridge's commands: as MEDIA_START came (auto), or forced to "
                "the channel's f() option",
                choices=("auto", "json", "plain-text"),
            ),
        ),
    ),
    app_leg=AppLeg(
        default_codec="l16",
        options=(
            Option(
                "control_format",
                str,
                "plain-text",
                "the form of events and commands, as the f() dial option (Asterisk's "
                "default is plain-text)",
                choices=("plain-text", "json"),
            ),
            Option(
                "connection_id",
                str,
                "bridge",
                "the connection_id of MEDIA_START (the websocket_client.conf section)",
                check=_check_word,
            ),
        ),
    ),
    make_platform=f"{__name__}:platform_role",
    make_app=f"{__name__}:app_role",
)
"""The frame of ``send_rule`` is per call: the ``optimal_frame_size`` of ``MEDIA_START``
(``AsteriskWsApp.optimal_frame_size``)."""


# --------------------------------------------------------------------------- Asterisk -> app


class _Ev(msgspec.Struct, frozen=True, gc=False):
    channel_id: str | None = None


class _MediaStart(msgspec.Struct, frozen=True, gc=False):
    connection_id: str
    channel: str
    channel_id: str
    format: str
    optimal_frame_size: int
    ptime: int
    channel_variables: dict[str, Any] = msgspec.field(default_factory=dict)


class _Correlated(_Ev, frozen=True):
    correlation_id: str = ""


class _DtmfEnd(_Ev, frozen=True):
    digit: str = ""


class _Status(_Ev, frozen=True):
    queue_length: int = 0
    xon_level: int = _XON_LEVEL
    xoff_level: int = _XOFF_LEVEL
    queue_full: bool = False
    bulk_media: bool = False
    media_paused: bool = False


class _Error(_Ev, frozen=True):
    error_text: str = ""


_EVENTS: Final[dict[str, type[msgspec.Struct]]] = {
    "MEDIA_START": _MediaStart,
    "MEDIA_XOFF": _Ev,
    "MEDIA_XON": _Ev,
    "QUEUE_DRAINED": _Ev,
    "MEDIA_MARK_PROCESSED": _Correlated,
    "MEDIA_BUFFERING_COMPLETED": _Correlated,
    "DTMF_END": _DtmfEnd,
    "STATUS": _Status,
    "ERROR": _Error,
}
_POSITIONAL: Final = frozenset({"MEDIA_MARK_PROCESSED", "MEDIA_BUFFERING_COMPLETED"})
_COMMANDS: Final = frozenset(
    {
        "ANSWER",
        "HANGUP",
        "START_MEDIA_BUFFERING",
        "STOP_MEDIA_BUFFERING",
        "MARK_MEDIA",
        "FLUSH_MEDIA",
        "PAUSE_MEDIA",
        "CONTINUE_MEDIA",
        "REPORT_QUEUE_DRAINED",
        "GET_STATUS",
        "SET_MEDIA_DIRECTION",
    }
)


def _json_type(value: object) -> str:
    return "an array" if isinstance(value, list) else type(value).__name__


def _parse_json(text: str) -> tuple[str, dict[str, Any]]:
    """One JSON event -> (name, fields); DialectError for anything that is not one."""
    try:
        obj = msgspec.json.decode(text)
    except (msgspec.DecodeError, UnicodeError, RecursionError) as exc:
        raise DialectError(_D, f"message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DialectError(_D, f"expected a JSON object, got {_json_type(obj)}")
    name = obj.pop("event", None)
    if not isinstance(name, str):
        if "command" in obj:
            raise UnsupportedMessage(_D, "a JSON command: the app sends it, not Asterisk")
        raise DialectError(_D, 'JSON event has no string "event" field')
    return name, obj


def _parse_plain(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME key:value key:value`` -> (name, fields) [AST _create_event_*].

    ``MEDIA_MARK_PROCESSED``/``MEDIA_BUFFERING_COMPLETED`` carry the id bare after the
    name; ``ERROR``'s ``error_text`` is free text to the end of the line.
    """
    name, _, rest = text.strip().partition(" ")
    if name in _COMMANDS:
        raise UnsupportedMessage(_D, f"{name} is a command: the app sends it, not Asterisk")
    rest = rest.strip()
    fields: dict[str, Any] = {}
    if name in _POSITIONAL:
        if rest.startswith("correlation_id:"):
            rest = rest[len("correlation_id:") :]
        fields["correlation_id"] = rest
        return name, fields
    if name == "ERROR":
        head, sep, error_text = rest.partition("error_text:")
        if sep:
            fields["error_text"] = error_text
        rest = head
    for token in rest.split():
        key, sep, value = token.partition(":")
        if not sep or not key:
            raise DialectError(_D, f"{name}: expected key:value, got {short(token)}")
        fields[key] = value
    return name, fields


def _convert(name: str, fields: dict[str, Any]) -> msgspec.Struct | None:
    cls = _EVENTS.get(name)
    if cls is None:
        return None
    try:
        # strict=False: plain text carries numbers and booleans as text ("320", "true").
        return msgspec.convert(fields, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise DialectError(_D, f"malformed {name}: {exc}") from None


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class AsteriskWsStats:
    """Counters the app role keeps as ``.stats``."""

    messages_received: int = 0
    media_messages: int = 0
    media_bytes: int = 0
    partial_frames: int = 0
    """Media messages that were not a whole ``optimal_frame_size`` (passed on as they are)."""
    marks_received: int = 0
    dtmf_received: int = 0
    xoff: int = 0
    buffering_completed: int = 0
    errors_received: int = 0
    unknown_events: int = 0
    first_unknown_event: str | None = None
    tx_dropped_bytes: int = 0
    """Wire bytes of a partial frame held by ``send(Audio)`` and dropped by a clear."""


def _check_command_format(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("auto", "json", "plain-text"):
        raise ValueError(f'{attribute.name} must be "auto", "json" or "plain-text", not {value!r}')


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class AsteriskWsApp:
    """The application side of a ``chan_websocket`` channel (bridge's call leg).

    ``command_format``: ``"auto"`` answers in the form of ``MEDIA_START``; ``"json"`` or
    ``"plain-text"`` force one (it must match the channel's ``f()`` option: Asterisk
    parses commands in that format only). ``call_id``: the call id ``Start`` carries
    (e.g. a ``v()`` parameter of the upgrade URL) instead of ``channel_id`` (which stays
    the stream id). ``answer``: :meth:`accept` gives ``ANSWER`` (the ``n`` dial option).
    ``pad_partial_frames``: a media message shorter than ``optimal_frame_size`` (the
    last piece of a playback) is padded with silence to a whole frame, as Asterisk pads
    the short frames it is sent [AST webchan_read], so that the audio passed on keeps a
    frame per ptime.
    """

    command_format: str = attrs.field(default="auto", validator=_check_command_format)
    call_id: str | None = None
    answer: bool = False
    pad_partial_frames: bool = False
    stats: AsteriskWsStats = attrs.field(factory=AsteriskWsStats, init=False)
    marks: PendingMarks = attrs.field(factory=PendingMarks, init=False)
    channel_id: str | None = attrs.field(default=None, init=False)
    """The channel's uniqueid from ``MEDIA_START``: the call id."""
    connection_id: str | None = attrs.field(default=None, init=False)
    format: str | None = attrs.field(default=None, init=False)
    sample_rate: int | None = attrs.field(default=None, init=False)
    optimal_frame_size: int | None = attrs.field(default=None, init=False)
    ptime_ms: int | None = attrs.field(default=None, init=False)
    control_format: str | None = attrs.field(default=None, init=False)
    """How ``MEDIA_START`` came: ``"json"`` or ``"plain-text"``."""
    paused: bool = attrs.field(default=False, init=False)
    """Asterisk's last flow-control word was ``MEDIA_XOFF``."""
    last_status: Mapping[str, Any] | None = attrs.field(default=None, init=False)
    last_error: str | None = attrs.field(default=None, init=False)
    last_buffering_completed: str | None = attrs.field(default=None, init=False)
    _codec: Codec | None = attrs.field(default=None, init=False, repr=False)
    _json: bool = attrs.field(default=False, init=False, repr=False)
    _tx_rest: bytes = attrs.field(default=b"", init=False, repr=False)

    # ----------------------------------------------------------------- receive

    def receive(self, message: Message) -> list[Event]:
        """One WebSocket message from Asterisk -> events. DialectError on malformed input."""
        if isinstance(message, str):
            return self._text(message)
        # A transport may hand over a bytearray or memoryview.
        message = message if message.__class__ is bytes else bytes(message)
        codec = self._codec
        if codec is None:
            raise DialectError(_D, f"a BINARY message of {len(message)} bytes before MEDIA_START")
        n = len(message)
        if n % codec.width:
            raise DialectError(_D, f"{codec.name} media of {n} bytes is not whole 16-bit samples")
        stats = self.stats
        stats.messages_received += 1
        if not n:
            return []
        stats.media_messages += 1
        stats.media_bytes += n
        size = self.optimal_frame_size
        if n != size:
            stats.partial_frames += 1  # e.g. the last 276 bytes of a playback [LIVE]
            if self.pad_partial_frames and size is not None and n < size:
                pcm = codec.decode(message) + bytes((size - n) // codec.width * 2)
                return [Audio(Frame(pcm, codec.sample_rate))]
        return [Audio(Frame(codec.decode(message), codec.sample_rate))]

    def _text(self, text: str) -> list[Event]:
        is_json = text.lstrip()[:1] == "{"
        name, fields = _parse_json(text) if is_json else _parse_plain(text)
        msg = _convert(name, fields)
        self.stats.messages_received += 1
        if msg is None:
            self._unknown(name)
            return []
        if isinstance(msg, _MediaStart):
            return [self._start(msg, is_json)]
        if self._codec is None:
            raise DialectError(_D, f"{name} before MEDIA_START")
        channel_id = getattr(msg, "channel_id", None)
        if channel_id is not None and channel_id != self.channel_id:
            raise DialectError(_D, f"{name} for channel {short(channel_id)}, not this one")
        if isinstance(msg, _Correlated):
            if name == "MEDIA_MARK_PROCESSED":
                mark = self.marks.echoed(msg.correlation_id)
                if mark is None:
                    return []
                self.stats.marks_received += 1
                return [Mark(mark)]
            self.stats.buffering_completed += 1
            self.last_buffering_completed = msg.correlation_id
            return []
        if isinstance(msg, _DtmfEnd):
            self.stats.dtmf_received += 1
            return [Dtmf(parse_digit(_D, msg.digit))]
        if isinstance(msg, _Status):
            return [self._status(msg)]
        if isinstance(msg, _Error):
            self.stats.errors_received += 1
            self.last_error = msg.error_text
            return []
        if name == "QUEUE_DRAINED":
            return [Drained()]
        paused = name == "MEDIA_XOFF"
        if paused:
            self.stats.xoff += 1
        self.paused = paused
        return [FlowControl(paused)]

    def _unknown(self, name: str) -> None:
        self.stats.unknown_events += 1
        if self.stats.first_unknown_event is None:
            self.stats.first_unknown_event = short(name)

    def _start(self, msg: _MediaStart, is_json: bool) -> Start:
        if self._codec is not None:
            raise DialectError(_D, "a second MEDIA_START on one channel")
        codec = _codec(msg.format)
        if codec is None:
            raise DialectError(
                _D,
                f"unsupported channel format {short(msg.format)} (supported: "
                f"{', '.join(FORMATS)}; dial with c(slin16) or similar)",
            )
        size, ptime = msg.optimal_frame_size, msg.ptime
        if not 0 < ptime <= 1000:
            raise DialectError(_D, f"ptime {ptime} out of range")
        if not 0 < size <= _MAX_FRAME_BYTES or size % codec.width:
            raise DialectError(_D, f"optimal_frame_size {size} is not a frame of {codec.name}")
        self._codec = codec
        self.channel_id = msg.channel_id
        self.connection_id = msg.connection_id
        self.format = msg.format
        self.sample_rate = codec.sample_rate
        self.optimal_frame_size = size
        self.ptime_ms = ptime
        self.control_format = "json" if is_json else "plain-text"
        mode = self.command_format
        self._json = is_json if mode == "auto" else mode == "json"
        metadata: dict[str, Any] = {
            "carrier": _D,
            "connection_id": msg.connection_id,
            "channel": msg.channel,
            "channel_id": msg.channel_id,
            "format": msg.format,
            "optimal_frame_size": size,
            "ptime": ptime,
            "control_format": self.control_format,
        }
        if is_json:
            metadata["channel_variables"] = dict(msg.channel_variables)
        return Start(
            stream_id=msg.channel_id,
            call_id=self.call_id or msg.channel_id,
            sample_rate=codec.sample_rate,
            encoding=msg.format,
            metadata=metadata,
        )

    def _status(self, msg: _Status) -> Stats:
        self.last_status = {
            "queue_length": msg.queue_length,
            "xon_level": msg.xon_level,
            "xoff_level": msg.xoff_level,
            "queue_full": msg.queue_full,
            "bulk_media": msg.bulk_media,
            "media_paused": msg.media_paused,
        }
        return Stats(queued_ms=max(msg.queue_length, 0) * (self.ptime_ms or 20), buffered_ms=0)

    def take_events(self) -> list[Event]:
        """Events owed without a wire message: after ``send(Clear())``, a ``Mark`` for
        every mark the flush dropped, then ``Cleared()`` (module docstring)."""
        return self.marks.take()

    # ----------------------------------------------------------------- send

    def send_audio(self, pcm: bytes) -> Message:
        """PCM16LE at the channel's rate -> one BINARY message of whole frames.

        ``pcm`` must encode to a non-zero multiple of ``optimal_frame_size`` (Asterisk
        drops a partial frame): anything else is a caller bug, ``ValueError``.
        """
        codec = self._started()
        if len(pcm) & 1:
            raise ValueError(f"PCM16 audio must be whole 2-byte samples, got {len(pcm)} bytes")
        data = codec.encode(pcm)
        size = self.optimal_frame_size
        assert size is not None
        if not data or len(data) % size:
            raise ValueError(
                f"{len(data)} bytes of {codec.name} is not a whole number of "
                f"{size}-byte frames (Asterisk drops partial frames): use send(Audio(...))"
            )
        return data

    def send(self, event: Event) -> list[Message]:
        """Event -> messages to Asterisk; ``[]`` for what ``chan_websocket`` cannot carry."""
        if isinstance(event, Audio):
            return self._audio(event.frame)
        if isinstance(event, Mark):
            self._started()
            return [self._command("MARK_MEDIA", self.marks.sent(event.name))]
        if isinstance(event, Clear):
            self._started()
            self.stats.tx_dropped_bytes += len(self._tx_rest)
            self._tx_rest = b""
            self.marks.clear(cleared=True)  # FLUSH_MEDIA drops them without a word [AST]
            return [self._command("FLUSH_MEDIA")]
        if isinstance(event, Hangup):
            return [self._command("HANGUP")]
        if isinstance(event, StatsRequest):
            return [self._command("GET_STATUS")]
        if isinstance(event, Stop | Dtmf):
            # Stop: close the socket (Asterisk hangs up). Dtmf: no command sends it [AST].
            return []
        raise _other_role("AsteriskWsApp", event)

    def _audio(self, frame: Frame) -> list[Message]:
        codec = self._started()
        pcm = _check_rate(frame, codec.sample_rate)
        if len(pcm) & 1:
            raise ValueError(f"PCM16 audio must be whole 2-byte samples, got {len(pcm)} bytes")
        size = self.optimal_frame_size
        assert size is not None
        data = self._tx_rest + codec.encode(pcm) if self._tx_rest else codec.encode(pcm)
        whole = len(data) - len(data) % size
        self._tx_rest = data[whole:]
        return [data[:whole]] if whole else []

    def answer_command(self) -> Message:
        """``ANSWER``: needed when Asterisk dialled with the ``n`` option."""
        return self._command("ANSWER")

    def accept(self) -> list[Message]:
        """What bridge sends once it has taken the call (after ``MEDIA_START``): ``ANSWER``
        when :attr:`answer` is set (the ``n`` dial option), else nothing: without ``n``
        Asterisk answered before ``MEDIA_START`` [AST websocket_handoff_to_channel, LIVE]."""
        return [self.answer_command()] if self.answer else []

    def start_media_buffering(self) -> Message:
        """``START_MEDIA_BUFFERING``: partial frames are carried over until stopped."""
        return self._command("START_MEDIA_BUFFERING")

    def stop_media_buffering(self, correlation_id: str | None = None) -> Message:
        """``STOP_MEDIA_BUFFERING [id]``: Asterisk answers ``MEDIA_BUFFERING_COMPLETED id``
        once the buffered media has been handed on."""
        if correlation_id is not None and (
            not correlation_id or any(c.isspace() for c in correlation_id)
        ):
            raise ValueError(f"a correlation id is non-empty, without spaces: {correlation_id!r}")
        return self._command("STOP_MEDIA_BUFFERING", correlation_id)

    def report_queue_drained(self) -> Message:
        """``REPORT_QUEUE_DRAINED``: one ``QUEUE_DRAINED`` (-> ``Drained``) when the queue empties."""
        return self._command("REPORT_QUEUE_DRAINED")

    def pause_media(self) -> Message:
        return self._command("PAUSE_MEDIA")

    def continue_media(self) -> Message:
        return self._command("CONTINUE_MEDIA")

    def _started(self) -> Codec:
        codec = self._codec
        if codec is None:
            raise DialectError(_D, "cannot send before Asterisk's MEDIA_START")
        return codec

    def _command(self, name: str, arg: str | None = None) -> str:
        self._started()
        if self._json:
            obj: dict[str, str] = {"command": name}
            if arg is not None:
                obj["correlation_id"] = arg
            text = dumps(obj)
        else:
            text = name if arg is None else f"{name} {arg}"
        if len(text.encode()) > MAX_TEXT_BYTES:
            # Asterisk would ignore it (MAX_TEXT_MESSAGE_LEN): never produce one.
            raise ValueError(
                f"{name} would be {len(text.encode())} bytes: Asterisk ignores more than "
                f"{MAX_TEXT_BYTES}"
            )
        return text


# --------------------------------------------------------------------------- platform role


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class AsteriskWsPlatformStats:
    """Counters the platform role keeps as ``.stats``."""

    media_messages: int = 0
    frames_received: int = 0
    dropped_partial_bytes: int = 0
    """Bytes of partial frames dropped outside media buffering, as Asterisk does."""
    commands: int = 0
    ignored_commands: int = 0
    """Commands Asterisk would ignore: unknown, empty, or over 128 bytes."""
    last_ignored: str | None = None
    suppressed_marks: int = 0
    """Marks the engine echoed that a FLUSH_MEDIA had dropped: not sent."""


def _check_format(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in FORMATS:
        raise ValueError(f"{attribute.name} must be one of {', '.join(FORMATS)}, not {value!r}")


def _check_control(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("plain-text", "json"):
        raise ValueError(f'{attribute.name} must be "plain-text" or "json", not {value!r}')


def _vars(value: Mapping[str, str] | None) -> dict[str, str]:
    return dict(value) if value else {}


_BUFFERING_TOKEN: Final = "\x00buffering:"
"""Mark names the platform makes for STOP_MEDIA_BUFFERING (an app id cannot start so:
Asterisk's plain-text commands cannot carry NUL, and bridge never forwards one)."""


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class AsteriskWsPlatform:
    """Emulates Asterisk ``chan_websocket`` toward an application.

    ``channel_id`` is the call id (Asterisk's uniqueid); ``connection_id`` the
    ``websocket_client.conf`` section; ``format`` one of :data:`FORMATS`;
    ``control_format`` the ``f()`` option (Asterisk's default is plain text);
    ``channel_variables`` go into the JSON ``MEDIA_START`` only. In plain text no id may
    contain whitespace (it would break the ``key:value`` form).
    """

    channel_id: str
    connection_id: str = "bridge"
    format: str = attrs.field(default="slin", validator=_check_format)
    control_format: str = attrs.field(default="plain-text", validator=_check_control)
    channel: str = ""
    channel_variables: Mapping[str, str] = attrs.field(factory=dict, converter=_vars)
    ptime_ms: int = 20
    stats: AsteriskWsPlatformStats = attrs.field(factory=AsteriskWsPlatformStats, init=False)
    answered: bool = attrs.field(default=False, init=False)
    buffering: bool = attrs.field(default=False, init=False)
    media_paused: bool = attrs.field(default=False, init=False)
    report_drained: bool = attrs.field(default=False, init=False)
    _codec: Codec = attrs.field(init=False, repr=False)
    _frame: int = attrs.field(default=0, init=False, repr=False)
    _leftover: bytes = attrs.field(default=b"", init=False, repr=False)
    _in_flight: list[str] = attrs.field(factory=list, init=False, repr=False)
    _flushed: list[str] = attrs.field(factory=list, init=False, repr=False)
    _tokens: dict[str, str] = attrs.field(factory=dict, init=False, repr=False)
    _next_token: int = attrs.field(default=0, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        codec = _codec(self.format)
        assert codec is not None  # validated
        self._codec = codec
        self._frame = _frame_bytes(codec, self.ptime_ms)
        if not self.channel:
            # Asterisk names the channel WebSocket/<section>/0x<address> [LIVE].
            self.channel = (
                f"WebSocket/{self.connection_id}/0x{zlib.crc32(self.channel_id.encode()):x}"
            )
        if self.control_format == "plain-text":
            for what in ("channel_id", "connection_id", "channel"):
                value = getattr(self, what)
                if not value or any(c.isspace() for c in value):
                    raise ValueError(f"{what} {value!r} cannot be sent in plain text")

    @property
    def sample_rate(self) -> int:
        return self._codec.sample_rate

    @property
    def optimal_frame_size(self) -> int:
        return self._frame

    # ----------------------------------------------------------------- receive

    def receive(self, message: Message) -> list[Event]:
        """One message from the app: BINARY -> one ``Audio`` per whole frame; TEXT -> a
        command's events (``Mark``, ``Clear``, ``Hangup``, ``StatsRequest``, ...)."""
        if isinstance(message, str):
            return self._command(message)
        message = message if message.__class__ is bytes else bytes(message)
        stats = self.stats
        stats.media_messages += 1
        data = self._leftover + message if self._leftover else message
        size = self._frame
        whole = len(data) - len(data) % size
        rest = data[whole:]
        if self.buffering:
            self._leftover = rest
        else:
            self._leftover = b""
            stats.dropped_partial_bytes += len(rest)
        return self._frames(data[:whole])

    def _frames(self, data: bytes) -> list[Event]:
        codec = self._codec
        size = self._frame
        out: list[Event] = []
        for i in range(0, len(data), size):
            out.append(Audio(Frame(codec.decode(data[i : i + size]), codec.sample_rate)))
        self.stats.frames_received += len(out)
        return out

    def _ignore(self, why: str) -> list[Event]:
        self.stats.ignored_commands += 1
        self.stats.last_ignored = why
        return []

    def _command(self, text: str) -> list[Event]:
        size = len(text.encode(errors="surrogatepass"))
        if size > MAX_TEXT_BYTES:
            return self._ignore(f"TEXT message of {size} bytes exceeds {MAX_TEXT_BYTES}")
        text = text.strip()
        if not text:
            return self._ignore("empty TEXT message")
        arg: str | None
        if self.control_format == "json":
            try:
                obj = msgspec.json.decode(text)
            except (msgspec.DecodeError, UnicodeError, RecursionError):
                # Asterisk answers ERROR "Unable to parse JSON command" [AST handle_command].
                raise DialectError(_D, f"unable to parse JSON command {short(text)}") from None
            name = obj.get("command") if isinstance(obj, dict) else None
            value = obj.get("correlation_id") if isinstance(obj, dict) else None
            arg = value if isinstance(value, str) else None
            if not isinstance(name, str):
                return self._ignore(f"JSON command without a string command: {short(text)}")
        else:
            name, sep, rest = text.partition(" ")
            arg = rest if sep else None
        self.stats.commands += 1
        return self._run(name, arg)

    def _run(self, name: str, arg: str | None) -> list[Event]:
        if name == "MARK_MEDIA":
            mark = arg or ""
            self._in_flight.append(mark)
            return [Mark(mark)]
        if name == "FLUSH_MEDIA":
            # Frees every queued element, marks and buffering notices included, with no
            # event; ends bulk mode and un-pauses [AST handle_command].
            self._flushed.extend(self._in_flight)
            self._in_flight.clear()
            self._leftover = b""
            self.buffering = False
            self.media_paused = False
            return [Clear()]
        if name == "HANGUP":
            return [Hangup()]
        if name == "GET_STATUS":
            return [StatsRequest()]
        if name == "ANSWER":
            self.answered = True
            return []
        if name == "START_MEDIA_BUFFERING":
            self.buffering = True
            return []
        if name == "STOP_MEDIA_BUFFERING":
            self.buffering = False
            return self._stop_buffering(arg or "")
        if name == "REPORT_QUEUE_DRAINED":
            self.report_drained = True
            return []
        if name == "PAUSE_MEDIA":
            self.media_paused = True
            return []
        if name == "CONTINUE_MEDIA":
            self.media_paused = False
            return []
        if name == "SET_MEDIA_DIRECTION" and self.control_format == "json":
            return []
        return self._ignore(f"unknown command {short(name)}")

    def _stop_buffering(self, correlation_id: str) -> list[Event]:
        out: list[Event] = []
        leftover, self._leftover = self._leftover, b""
        # A torn last sample cannot be played (wire codecs take whole samples only).
        leftover = leftover[: len(leftover) - len(leftover) % self._codec.width]
        if leftover:
            # At STOP_MEDIA_BUFFERING the remainder goes out as a short frame [AST].
            self.stats.frames_received += 1
            out.append(Audio(Frame(self._codec.decode(leftover), self._codec.sample_rate)))
        self._next_token += 1
        token = f"{_BUFFERING_TOKEN}{self._next_token}"
        self._tokens[token] = correlation_id
        self._in_flight.append(token)
        out.append(Mark(token))
        return out

    # ----------------------------------------------------------------- send

    def send_audio(self, pcm: bytes) -> Message:
        """PCM16LE at the channel's rate -> one BINARY message (Asterisk sends one per frame)."""
        if len(pcm) & 1:
            raise ValueError(f"PCM16 audio must be whole 2-byte samples, got {len(pcm)} bytes")
        return self._codec.encode(pcm)

    def send(self, event: Event) -> list[Message]:
        """Event -> messages to the app; ``[]`` for what Asterisk has no message for."""
        if isinstance(event, Audio):
            return [self.send_audio(_check_rate(event.frame, self._codec.sample_rate))]
        if isinstance(event, Mark):
            return self._mark(mark_text(event.name))
        if isinstance(event, Dtmf):
            if self._json:
                return [self._event("DTMF_END", digit=event.digit)]
            return [f"DTMF_END digit:{event.digit} channel_id:{self.channel_id}"]
        if isinstance(event, Start):
            return [self._media_start()]
        if isinstance(event, FlowControl):
            return [self._nodata("MEDIA_XOFF" if event.paused else "MEDIA_XON")]
        if isinstance(event, Drained):
            if not self.report_drained:
                return []  # QUEUE_DRAINED is one-shot, on request only [AST dequeue_frame]
            self.report_drained = False
            return [self._nodata("QUEUE_DRAINED")]
        if isinstance(event, Stats):
            return [self._status(event)]
        if isinstance(event, Connected | Cleared | Stop | Error):
            # No greeting but MEDIA_START; FLUSH_MEDIA has no answer; the end is a close.
            return []
        raise _other_role("AsteriskWsPlatform", event)

    def error_message(self, error_text: str) -> Message:
        """An ``ERROR`` event, as Asterisk sends for a command it cannot carry out."""
        if self._json:
            return self._event("ERROR", error_text=error_text)
        return f"ERROR channel_id:{self.channel_id} error_text:{error_text}"

    @property
    def _json(self) -> bool:
        return self.control_format == "json"

    def _event(self, name: str, **fields: Any) -> str:
        return dumps({"event": name, "channel_id": self.channel_id, **fields})

    def _nodata(self, name: str) -> str:
        # Plain-text events without data are the bare name [AST _create_event_nodata].
        return self._event(name) if self._json else name

    def _mark(self, name: str) -> list[Message]:
        try:
            self._in_flight.remove(name)
        except ValueError:
            try:
                self._flushed.remove(name)
            except ValueError:
                pass  # not one the app sent: echo it anyway
            else:
                # FLUSH_MEDIA dropped it: Asterisk never answers it.
                self.stats.suppressed_marks += 1
                self._tokens.pop(name, None)
                return []
        correlation_id = self._tokens.pop(name, None)
        event = "MEDIA_MARK_PROCESSED" if correlation_id is None else "MEDIA_BUFFERING_COMPLETED"
        ident = name if correlation_id is None else correlation_id
        if self._json:
            return [self._event(event, correlation_id=ident)]
        return [f"{event} {ident}" if ident else event]

    def _media_start(self) -> str:
        if self._json:
            return dumps(
                {
                    "event": "MEDIA_START",
                    "connection_id": self.connection_id,
                    "channel": self.channel,
                    "channel_id": self.channel_id,
                    "format": self.format,
                    "optimal_frame_size": self._frame,
                    "ptime": self.ptime_ms,
                    "channel_variables": dict(self.channel_variables),
                }
            )
        return (
            f"MEDIA_START connection_id:{self.connection_id} channel:{self.channel} "
            f"channel_id:{self.channel_id} format:{self.format} "
            f"optimal_frame_size:{self._frame} ptime:{self.ptime_ms}"
        )

    def _status(self, stats: Stats) -> str:
        ptime = self.ptime_ms
        length = min(-(-max(stats.queued_ms, 0) // ptime), _QUEUE_MAX)
        full = length >= _XOFF_LEVEL
        if self._json:
            return self._event(
                "STATUS",
                queue_length=length,
                xon_level=_XON_LEVEL,
                xoff_level=_XOFF_LEVEL,
                queue_full=full,
                bulk_media=self.buffering,
                media_paused=self.media_paused,
            )

        def word(flag: bool) -> str:
            return "true" if flag else "false"

        return (
            f"STATUS channel_id:{self.channel_id} queue_length:{length} "
            f"xon_level:{_XON_LEVEL} xoff_level:{_XOFF_LEVEL} queue_full:{word(full)} "
            f"bulk_media:{word(self.buffering)} media_paused:{word(self.media_paused)}"
        )


def _channel_id(params: PlatformParams) -> str:
    """The emulated channel_id: the call id when plain text can carry it, else the
    stream id's (a uniqueid has no spaces, and neither may anything in plain text)."""
    for value in (params.call_id, params.stream_id):
        if value and len(value) <= 64 and not any(c.isspace() for c in value):
            return value
    return str(uuid.uuid5(uuid.NAMESPACE_URL, params.stream_id))


def platform_role(params: PlatformParams) -> AsteriskWsPlatform:
    """bridge as Asterisk ``chan_websocket`` toward an app (``SPEC.make_platform``): the
    channel's format is the route's codec at its rate (``slin16``, ``ulaw``, ...)."""
    fmt = SPEC.resolve_format(params.codec, params.sample_rate)
    options = params.options
    return AsteriskWsPlatform(
        _channel_id(params),
        connection_id=str(options.get("connection_id") or "bridge"),
        format=fmt.name,
        control_format=str(options.get("control_format") or "plain-text"),
        channel_variables={"BRIDGE_STREAM_ID": params.stream_id, "BRIDGE_CALL_ID": params.call_id},
        ptime_ms=params.ptime_ms,
    )


def app_role(params: AppParams) -> AsteriskWsApp:
    """bridge's call leg toward Asterisk (``SPEC.make_app``), or an app written for
    ``chan_websocket`` (``bridge echo-server``). As a call leg: the call id from the
    ``call_id_query`` parameter when configured and present, ``ANSWER`` with ``answer``,
    partial frames padded."""
    options = params.options
    query_name = str(options.get("call_id_query") or "")
    call_id = params.query.get(query_name) if query_name else None
    return AsteriskWsApp(
        command_format=str(options.get("command_format") or "auto"),
        call_id=call_id or None,
        answer=bool(options.get("answer", False)),
        pad_partial_frames=True,
    )
