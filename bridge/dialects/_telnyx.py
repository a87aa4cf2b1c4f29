"""Telnyx Media Streaming over WebSocket, both roles (PROTOCOLS.md §5).

Twilio-like, but keys are snake_case (``sequence_number``, ``stream_id``,
``media_format{encoding, sample_rate, channels}``, ``start{call_control_id, ...}``) and the
counters may come as JSON strings or numbers (both are parsed). Every message is a JSON
TEXT frame; a BINARY frame is a :class:`~bridge.DialectError`. Audio is the RTP *payload*
(no header), base64, in the stream codec: ``PCMU`` (default) or ``PCMA`` at 8000 Hz, or
``L16`` at 8000/16000 Hz **big-endian** (network order, RFC 2586/3551; per pipecat, not
read in Telnyx's own docs). G722, OPUS, AMR-WB and mp3 bidirectional mode are not handled.

Roles
-----
* :class:`TelnyxApp` is what Telnyx dials (bridge's call leg). It receives ``connected``,
  ``start``, ``media``, ``dtmf``, ``mark``, ``stop``, ``error`` and sends ``media``,
  ``mark``, ``clear`` (``stream_bidirectional_mode=rtp``).
* :class:`TelnyxPlatform` emulates Telnyx toward an application (bridge's app leg,
  ``bridge call``).

Media order (§5: "order of media frames is not guaranteed")
----------------------------------------------------------
:class:`TelnyxApp` restores order by ``media.chunk`` (numbered from 1, as Twilio does —
UNCONFIRMED for Telnyx; a 0-based stream is recognised from its first chunk). An in-order
chunk passes straight through. An early one is held until the gap fills, or until more
than ``reorder_window`` chunks are held; then the gap is given up (``stats.skipped_chunks``)
and what follows is released in order. A chunk whose place has passed is dropped
(``stats.late_chunks``). A jump back by more than :data:`RESYNC_GAP` chunks is taken as a
restarted numbering rather than thousands of late chunks. Without ``chunk`` the order key
falls back to ``sequence_number`` (every message numbered then fills its place), then to
``timestamp`` (only a non-increasing timestamp is dropped as late); without any of them
media passes in arrival order. ``stop`` releases what is held, then ``Stop``;
:meth:`TelnyxApp.flush` does the same when the socket closes without a ``stop``.

Marks and clear (Design implications 2 and 3)
---------------------------------------------
A ``mark`` is echoed when the media queued before it has finished playing, **immediately
if nothing is queued**; ``clear`` stops playback, drops the queue and returns the queued
marks. So an echo means "played or cleared", and there is no "cleared" message: the app
role never emits ``Cleared`` and ``TelnyxPlatform.send(Cleared())`` returns ``[]`` (the
engine sends the returned marks as ``Mark`` events, at once when nothing was queued).

Ending, DTMF, errors
--------------------
* Telnyx -> app ``stop`` -> ``Stop(reason=None)``. Nothing in the stream protocol ends it
  from the app: ``TelnyxApp.send(Hangup())``/``send(Stop())`` return ``[]``; close the
  socket (or hang up through Call Control). DTMF goes Telnyx -> app only;
  ``TelnyxApp.send(Dtmf(...))`` returns ``[]`` (Call Control ``send_dtmf`` is REST).
* An ``error`` frame from Telnyx is surfaced, not swallowed and not fatal: ``receive``
  raises :class:`TelnyxError`, a subclass of :class:`~bridge.UnsupportedMessage` (so the
  usual "log, count and carry on" handling of unsupported messages applies) carrying
  ``code``/``title``/``detail``; it is also kept as ``last_error`` and counted in
  ``stats.errors_received``. The frame layout is UNCONFIRMED: the fields are looked for in
  ``payload`` (as in Telnyx's API errors), then ``error``, then at the top level.

``Start.metadata`` from :class:`TelnyxApp` (stable keys)
--------------------------------------------------------
``carrier`` (``"telnyx"``), ``stream_id``, ``call_control_id``, plus every other field of
``start{}`` under Telnyx's own name (``user_id``, ``client_state``, ``call_session_id``,
``custom_parameters``, ...) except ``media_format``, which becomes ``Start.encoding``
(``PCMU``/``PCMA``/``L16``) and ``Start.sample_rate``.
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
    CarrierStats,
    Codec,
    JsonDecoder,
    decode_payload,
    dumps,
    encode_pcm,
    json_str,
    l16_codec,
    parse_digit,
    pcma_codec,
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
    PlatformParams,
    WireFormat,
)

__all__ = ["RESYNC_GAP", "SPEC", "TelnyxApp", "TelnyxError", "TelnyxPlatform"]

_D: Final = "telnyx"

SPEC: Final = DialectSpec(
    name=_D,
    platform=f"{__name__}:TelnyxPlatform",
    app=f"{__name__}:TelnyxApp",
    dialer="platform",
    subprotocol=None,
    greets_first="platform",
    start=("connected", "start"),
    stop="Telnyx sends stop; the app ends the stream by closing (or through Call Control)",
    formats=(
        WireFormat("PCMU", "pcmu", 8000),
        WireFormat("PCMA", "pcma", 8000),
        WireFormat("L16", "l16be", 8000),
        WireFormat("L16", "l16be", 16000),
    ),
    default_format="PCMU",
    format_choice="the call's stream_bidirectional_codec/sampling_rate, in start.media_format",
    ptime_ms=20,
    send_rule=ChunkRule(frames="any", max_bytes=None),
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
        listener="websocket", far_side_buffers=True, hangup_on_close=False, path="/telnyx"
    ),
    app_leg=AppLeg(default_codec="pcmu"),
    make_platform=f"{__name__}:platform_role",
    make_app=f"{__name__}:app_role",
)

RESYNC_GAP: Final = 500
"""A chunk this far (10 s of 20 ms chunks) behind the expected one restarts the numbering."""

# The encodings Telnyx names in media_format, and aliases seen in the wild.
_ENCODINGS: Final = {
    "PCMU": "PCMU",
    "AUDIO/X-MULAW": "PCMU",
    "PCMA": "PCMA",
    "AUDIO/X-ALAW": "PCMA",
    "L16": "L16",
    "AUDIO/L16": "L16",
    "AUDIO/X-L16": "L16",
}


def _codec(encoding: str, sample_rate: int) -> Codec | str:
    """The codec for a Telnyx encoding and rate, or why there is none."""
    name = _ENCODINGS.get(encoding.upper())
    if name is None:
        return f"unsupported encoding {short(encoding)} (PCMU, PCMA and L16 are)"
    if name == "L16":
        if sample_rate not in (8000, 16000):
            return f"unsupported L16 sample rate {sample_rate} (8000 and 16000 are)"
        return l16_codec(name, sample_rate, "big")
    if sample_rate != 8000:
        return f"{name} is 8000 Hz only, not {sample_rate}"
    return pcmu_codec(name) if name == "PCMU" else pcma_codec(name)


def _config_codec(encoding: str, sample_rate: int) -> Codec:
    codec = _codec(encoding, sample_rate)
    if isinstance(codec, str):
        raise ValueError(codec)
    return codec


class TelnyxError(UnsupportedMessage):
    """Telnyx sent an ``error`` frame: surfaced, not fatal (see the module docstring)."""

    def __init__(self, code: object, title: str, detail: str) -> None:
        self.code = code
        self.title = title
        self.detail = detail
        label = " ".join(p for p in ("error", "" if code is None else short(code), title) if p)
        super().__init__(_D, f"Telnyx reported {label}" + (f": {detail}" if detail else ""))


# --------------------------------------------------------------------------- Telnyx -> app


class _Body(msgspec.Struct, frozen=True, gc=False):
    pass


class _Msg(msgspec.Struct, frozen=True, gc=False, tag_field="event"):
    pass


class _MediaFormat(_Body, frozen=True):
    encoding: str
    sample_rate: int | str = 8000
    channels: int | str = 1


class _StartBody(_Body, frozen=True):
    call_control_id: str
    media_format: _MediaFormat
    stream_id: str | None = None


class _Connected(_Msg, tag="connected", frozen=True):
    version: str = ""
    auth_token: str | None = msgspec.field(default=None, name="x-telnyx-streaming-auth-token")


class _Start(_Msg, tag="start", frozen=True):
    # Kept as a dict so that every field lands in Start.metadata; validated by convert().
    start: dict[str, Any]
    stream_id: str | None = None
    sequence_number: int | str | None = None


class _MediaBody(_Body, frozen=True):
    payload: str
    track: str = "inbound"
    chunk: int | str | None = None
    timestamp: int | str | None = None


class _Media(_Msg, tag="media", frozen=True):
    media: _MediaBody
    stream_id: str | None = None
    sequence_number: int | str | None = None


class _DtmfBody(_Body, frozen=True):
    digit: str


class _Dtmf(_Msg, tag="dtmf", frozen=True):
    dtmf: _DtmfBody
    stream_id: str | None = None
    sequence_number: int | str | None = None


class _Name(_Body, frozen=True):
    # An app may name its marks with numbers too; they are echoed as sent (toward Telnyx
    # a number goes as its JSON text, ``mark_text``).
    name: str | int | float


class _Mark(_Msg, tag="mark", frozen=True):
    mark: _Name
    stream_id: str | None = None
    sequence_number: int | str | None = None


class _Stop(_Msg, tag="stop", frozen=True):
    stop: dict[str, Any] | None = None
    stream_id: str | None = None
    sequence_number: int | str | None = None


class _Error(_Msg, tag="error", frozen=True):
    payload: Any = None
    error: Any = None
    code: Any = None
    title: Any = None
    detail: Any = None
    stream_id: str | None = None
    sequence_number: int | str | None = None


_FromTelnyx = _Connected | _Start | _Media | _Dtmf | _Mark | _Stop | _Error
_FROM_APP: Final = "is sent by the app to Telnyx, not by Telnyx"
_decode_from_telnyx: Final = JsonDecoder[_FromTelnyx](
    _D,
    _FromTelnyx,
    {
        "connected": None,
        "start": None,
        "media": None,
        "dtmf": None,
        "mark": None,
        "stop": None,
        "error": None,
        "clear": _FROM_APP,
    },
    binary_note=" (Telnyx sends TEXT frames only)",
)

# --------------------------------------------------------------------------- app -> Telnyx
# Lenient about extra fields: Telnyx documents no strict checking, and apps commonly add
# "stream_id". A stream_id that is present must be this stream's.


class _AppPayload(_Body, frozen=True):
    payload: str


class _AppMedia(_Msg, tag="media", frozen=True):
    media: _AppPayload
    stream_id: str | None = None


class _AppMark(_Msg, tag="mark", frozen=True):
    mark: _Name
    stream_id: str | None = None


class _AppClear(_Msg, tag="clear", frozen=True):
    stream_id: str | None = None


_FROM_TELNYX: Final = "is sent by Telnyx, not by the app"
_decode_from_app: Final = JsonDecoder[_AppMedia | _AppMark | _AppClear](
    _D,
    _AppMedia | _AppMark | _AppClear,
    {
        "media": None,
        "mark": None,
        "clear": None,
        "connected": _FROM_TELNYX,
        "start": _FROM_TELNYX,
        "dtmf": _FROM_TELNYX,
        "stop": _FROM_TELNYX,
        "error": _FROM_TELNYX,
    },
    binary_note=" (Telnyx takes TEXT frames only)",
)


def _error_fields(msg: _Error) -> tuple[object, str, str]:
    for source in (msg.payload, msg.error):
        if isinstance(source, dict):
            return (
                source.get("code"),
                str(source.get("title") or ""),
                str(source.get("detail") or ""),
            )
        if isinstance(source, list) and source and isinstance(source[0], dict):
            first = source[0]  # {"errors": [...]}-style, as Telnyx's REST API answers
            return first.get("code"), str(first.get("title") or ""), str(first.get("detail") or "")
    detail = msg.detail if msg.detail is not None else msg.payload or msg.error or ""
    return msg.code, str(msg.title or ""), str(detail)


# --------------------------------------------------------------------------- reordering


@attrs.define(slots=True, on_setattr=NO_HOOKS)
class _Reorderer:
    """Releases numbered items in order within a window (see the module docstring).

    ``None`` items are placeholders: numbers that must pass (``sequence_number`` of a
    non-media message) but release nothing.
    """

    window: int
    stats: CarrierStats
    next: int | None
    """The next number expected; ``None`` until the first item sets it."""
    started: bool = False
    """Something was released or given up: numbers below ``next`` are late from now on."""
    held: dict[int, Audio | None] = attrs.field(factory=dict)

    def push(self, key: int, item: Audio | None) -> list[Event]:
        nxt = self.next
        if nxt is None or (key < nxt and not self.started):
            nxt = key  # the first number seen, or a stream numbered below the default
        if key == nxt:
            out: list[Event] = [] if item is None else [item]
            nxt += 1
            if self.held:
                nxt = self._drain(nxt, out)
            self.next = nxt
            self.started = True
            return out
        if key < nxt:
            if nxt - key > RESYNC_GAP:
                out = self.flush()  # the numbering restarted: carry on from here
                self.next = None
                return out + self.push(key, item)
            if item is not None:
                self.stats.late_chunks += 1
            return []
        held = self.held
        if key in held:
            if item is not None:
                self.stats.duplicate_chunks += 1
            return []
        held[key] = item
        self.next = nxt
        if len(held) <= self.window:
            return []
        first = min(held)  # the window overflowed: give up on the gap
        self.stats.skipped_chunks += first - nxt
        out = []
        self.next = self._drain(first, out)
        self.started = True
        return out

    def _drain(self, nxt: int, out: list[Event]) -> int:
        held = self.held
        while nxt in held:
            item = held.pop(nxt)
            if item is not None:
                out.append(item)
                self.stats.reordered_chunks += 1
            nxt += 1
        return nxt

    def flush(self) -> list[Event]:
        """Release everything held, in order, giving up on the gaps."""
        out: list[Event] = []
        while self.held:
            first = min(self.held)
            if self.next is not None and first > self.next:
                self.stats.skipped_chunks += first - self.next
            self.next = self._drain(first, out)
            self.started = True
        return out


_BY_CHUNK: Final = "chunk"
_BY_SEQUENCE: Final = "sequence_number"
_BY_TIMESTAMP: Final = "timestamp"
_UNORDERED: Final = "none"


# --------------------------------------------------------------------------- app role


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class TelnyxApp:
    """The application side of a Telnyx media stream (bridge's call leg toward Telnyx).

    ``codec``/``sample_rate`` are what bridge *sends* (Telnyx's
    ``stream_bidirectional_codec``/``_sampling_rate``); ``None`` means the same as the
    ``start`` message's ``media_format``, which always decides how received audio is
    decoded. ``reorder_window`` is how many early chunks may wait for a missing one.
    ``track`` selects the media track that becomes ``Audio``; others are counted in
    ``stats.other_track_chunks`` and dropped.
    """

    codec: str | None = None
    sample_rate: int | None = None
    reorder_window: int = 3
    track: str = "inbound"
    stats: CarrierStats = attrs.field(factory=CarrierStats, init=False)
    stream_id: str | None = attrs.field(default=None, init=False)
    call_control_id: str | None = attrs.field(default=None, init=False)
    last_error: TelnyxError | None = attrs.field(default=None, init=False)
    order_key: str | None = attrs.field(default=None, init=False)
    """What media is ordered by, decided by the first media message: ``"chunk"``,
    ``"sequence_number"``, ``"timestamp"`` or ``"none"``."""
    _rx: Codec | None = attrs.field(default=None, init=False, repr=False)
    _tx: Codec | None = attrs.field(default=None, init=False, repr=False)
    _reorder: _Reorderer = attrs.field(init=False, repr=False)
    _last_ts: int | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.reorder_window < 0:
            raise ValueError(f"reorder_window must be >= 0, not {self.reorder_window}")
        if self.codec is not None:
            self._tx = _config_codec(self.codec, self.sample_rate or 8000)
        self._reorder = _Reorderer(self.reorder_window, self.stats, None)

    def receive(self, message: Message) -> list[Event]:
        """One text frame from Telnyx -> events (media possibly held back for order)."""
        msg = _decode_from_telnyx(message)
        self.stats.messages_received += 1
        if isinstance(msg, _Media):
            return self._media(msg)
        if isinstance(msg, _Connected):
            meta: dict[str, Any] = {"version": msg.version}
            if msg.auth_token is not None:
                meta["x-telnyx-streaming-auth-token"] = msg.auth_token
            return [Connected(meta)]
        if isinstance(msg, _Error):
            code, title, detail = _error_fields(msg)
            self.stats.errors_received += 1
            self.last_error = TelnyxError(code, title, detail)
            raise self.last_error
        if isinstance(msg, _Start):
            return [self._start(msg)]
        if self._rx is None:
            raise DialectError(_D, f"{type(msg).__name__[1:].lower()!r} before 'start'")
        self._check_stream(msg.stream_id)
        # In sequence_number order, every numbered message fills its place.
        held: list[Event] = []
        if self.order_key == _BY_SEQUENCE and msg.sequence_number is not None:
            held = self._reorder.push(to_int(_D, msg.sequence_number, "sequence_number"), None)
        if isinstance(msg, _Mark):
            self.stats.marks_received += 1
            return [*held, Mark(msg.mark.name)]
        if isinstance(msg, _Dtmf):
            self.stats.dtmf_received += 1
            return [*held, Dtmf(parse_digit(_D, msg.dtmf.digit))]
        return [*held, *self.flush(), Stop()]

    def flush(self) -> list[Event]:
        """Release the media held for reordering (call when the socket closes)."""
        return self._reorder.flush()

    def _check_stream(self, stream_id: str | None) -> None:
        if stream_id is not None and stream_id != self.stream_id:
            raise DialectError(_D, f"stream_id {short(stream_id)} is not this stream's")

    def _start(self, msg: _Start) -> Start:
        if self._rx is not None:
            raise DialectError(_D, "a second 'start' message on one stream")
        try:
            body = msgspec.convert(msg.start, _StartBody)
        except msgspec.ValidationError as exc:
            raise DialectError(_D, f"malformed 'start' message: {exc} (in `$.start`)") from None
        stream_id = msg.stream_id if msg.stream_id is not None else body.stream_id
        if stream_id is None:
            raise DialectError(_D, "'start' message has no stream_id")
        fmt = body.media_format
        rate = to_int(_D, fmt.sample_rate, "media_format.sample_rate")
        channels = to_int(_D, fmt.channels, "media_format.channels")
        rx = _codec(fmt.encoding, rate)
        if isinstance(rx, str) or channels != 1:
            raise DialectError(_D, rx if isinstance(rx, str) else f"{channels} channels, not 1")
        if self._tx is None:  # send what we receive, at the configured rate if any
            tx = _codec(rx.name, self.sample_rate or rx.sample_rate)
            if isinstance(tx, str):
                raise DialectError(
                    _D, f"cannot send {rx.name} at sample_rate={self.sample_rate}: {tx}"
                )
            self._tx = tx
        self._rx = rx
        self.stream_id = stream_id
        self.call_control_id = body.call_control_id
        metadata: dict[str, Any] = {"carrier": _D, "stream_id": stream_id}
        metadata.update((k, v) for k, v in msg.start.items() if k != "media_format")
        return Start(
            stream_id=stream_id,
            call_id=body.call_control_id,
            sample_rate=rx.sample_rate,
            encoding=rx.name,
            metadata=metadata,
        )

    def _media(self, msg: _Media) -> list[Event]:
        rx = self._rx
        if rx is None:
            raise DialectError(_D, "'media' before 'start'")
        if msg.stream_id is not None and msg.stream_id != self.stream_id:
            raise DialectError(_D, f"stream_id {short(msg.stream_id)} is not this stream's")
        media = msg.media
        if media.track != self.track:
            self.stats.other_track_chunks += 1
            return []
        frame = Frame(decode_payload(_D, rx, media.payload), rx.sample_rate)
        chunk = None if media.chunk is None else to_int(_D, media.chunk, "media.chunk")
        ts = None if media.timestamp is None else to_int(_D, media.timestamp, "media.timestamp")
        self.stats.chunks_received += 1
        order = self.order_key or self._choose_order(msg)
        if chunk is not None and order == _BY_CHUNK:  # the normal case
            return self._reorder.push(chunk, Audio(frame, chunk, ts))
        if order == _BY_SEQUENCE and msg.sequence_number is not None:
            number = to_int(_D, msg.sequence_number, "sequence_number")
            return self._reorder.push(number, Audio(frame, number, ts))
        if order == _BY_TIMESTAMP and ts is not None:
            if self._last_ts is not None and ts <= self._last_ts:
                self.stats.late_chunks += 1
                return []
            self._last_ts = ts
        # No usable order key on this message: pass it on in arrival order.
        return [Audio(frame, chunk, ts)]

    def _choose_order(self, msg: _Media) -> str:
        """The first media message decides what the stream is ordered by."""
        if msg.media.chunk is not None:
            order = _BY_CHUNK
            self._reorder.next = 1  # chunks count from 1 (module docstring)
        elif msg.sequence_number is not None:
            order = _BY_SEQUENCE  # the first one sets the base
        elif msg.media.timestamp is not None:
            order = _BY_TIMESTAMP
        else:
            order = _UNORDERED
        self.order_key = order
        return order

    def send_audio(self, pcm: bytes) -> Message:
        """PCM16LE at the send rate -> one ``media`` message ``{"event","media":{"payload"}}``."""
        tx = self._tx
        if tx is None:
            raise DialectError(_D, "the send codec is not known before Telnyx's 'start'")
        return '{"event":"media","media":{"payload":"' + encode_pcm(tx, pcm) + '"}}'

    def send(self, event: Event) -> list[Message]:
        """Event -> messages to Telnyx; ``[]`` for what the stream cannot carry."""
        if isinstance(event, Audio):
            tx = self._tx
            rate = tx.sample_rate if tx is not None else event.frame.sample_rate
            return [self.send_audio(_check_rate(event.frame, rate))]
        if isinstance(event, Mark):
            return [dumps({"event": "mark", "mark": {"name": mark_text(event.name)}})]
        if isinstance(event, Clear):
            return ['{"event":"clear"}']
        if isinstance(event, Hangup | Stop | Dtmf | StatsRequest):
            return []
        raise _other_role("TelnyxApp", event)


# --------------------------------------------------------------------------- platform role


def _extra(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value) if value else {}


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class TelnyxPlatform:
    """Emulates Telnyx toward an application (bridge's app leg, ``bridge call``).

    ``codec``/``sample_rate`` are the stream's, both ways. ``start_extra`` adds fields to
    ``start{}`` (e.g. ``user_id``, ``client_state``). Counters are sent as strings, like
    Telnyx's examples: ``sequence_number`` over every message after ``connected`` (``start``
    is "1"), ``chunk`` from "1", ``timestamp`` in ms derived from the audio sent.
    """

    stream_id: str
    call_control_id: str
    codec: str = "PCMU"
    sample_rate: int = 8000
    track: str = "inbound"
    start_extra: Mapping[str, Any] = attrs.field(factory=dict, converter=_extra)
    _codec: Codec = attrs.field(init=False, repr=False)
    _seq: int = attrs.field(default=0, init=False)
    _chunk: int = attrs.field(default=0, init=False)
    _samples: int = attrs.field(default=0, init=False)
    _tail: str = attrs.field(default="", init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._codec = _config_codec(self.codec, self.sample_rate)
        self.codec = self._codec.name
        self._tail = '"},"stream_id":' + json_str(self.stream_id) + "}"

    def receive(self, message: Message) -> list[Event]:
        """One text frame from the app -> ``Audio``, ``Mark`` or ``Clear``."""
        msg = _decode_from_app(message)
        if msg.stream_id is not None and msg.stream_id != self.stream_id:
            raise DialectError(_D, f"stream_id {short(msg.stream_id)} is not this stream's")
        if isinstance(msg, _AppMedia):
            codec = self._codec
            return [Audio(Frame(decode_payload(_D, codec, msg.media.payload), codec.sample_rate))]
        if isinstance(msg, _AppMark):
            return [Mark(msg.mark.name)]
        return [Clear()]

    def send_audio(self, pcm: bytes) -> Message:
        """PCM16LE at the stream rate -> one ``media`` message."""
        payload = encode_pcm(self._codec, pcm)
        self._seq += 1
        self._chunk += 1
        ms = self._samples * 1000 // self.sample_rate
        self._samples += len(pcm) >> 1
        return (
            f'{{"event":"media","sequence_number":"{self._seq}","media":{{"track":'
            f'"{self.track}","chunk":"{self._chunk}","timestamp":"{ms}","payload":"{payload}'
            + self._tail
        )

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    def send(self, event: Event) -> list[Message]:
        """Event -> messages to the app; ``[]`` for what Telnyx has no message for."""
        if isinstance(event, Audio):
            return [self.send_audio(_check_rate(event.frame, self.sample_rate))]
        if isinstance(event, Mark):
            return [
                dumps(
                    {
                        "event": "mark",
                        "sequence_number": self._next_seq(),
                        "stream_id": self.stream_id,
                        "mark": {"name": event.name},
                    }
                )
            ]
        if isinstance(event, Dtmf):
            return [
                dumps(
                    {
                        "event": "dtmf",
                        "stream_id": self.stream_id,
                        "sequence_number": self._next_seq(),
                        "dtmf": {"digit": event.digit},
                    }
                )
            ]
        if isinstance(event, Start):
            start = {"call_control_id": self.call_control_id, **self.start_extra}
            start["media_format"] = {
                "encoding": self.codec,
                "sample_rate": self.sample_rate,
                "channels": 1,
            }
            return [
                dumps(
                    {
                        "event": "start",
                        "sequence_number": self._next_seq(),
                        "start": start,
                        "stream_id": self.stream_id,
                    }
                )
            ]
        if isinstance(event, Connected):
            return [dumps({"event": "connected", "version": "1.0.0"})]
        if isinstance(event, Stop):
            return [
                dumps(
                    {
                        "event": "stop",
                        "sequence_number": self._next_seq(),
                        "stop": {"call_control_id": self.call_control_id},
                        "stream_id": self.stream_id,
                    }
                )
            ]
        if isinstance(event, Cleared | Drained | Stats | Error):
            # Telnyx answers a clear with the queued marks (sent as Mark events), nothing else.
            return []
        raise _other_role("TelnyxPlatform", event)

    def error_message(self, code: int, title: str, detail: str) -> Message:
        """An ``error`` frame, for telling an app its message was refused, as Telnyx would.

        The layout (``payload{code, title, detail}``) is UNCONFIRMED (PROTOCOLS.md §5).
        """
        return dumps(
            {
                "event": "error",
                "sequence_number": self._next_seq(),
                "stream_id": self.stream_id,
                "payload": {"code": code, "title": title, "detail": detail},
            }
        )


def platform_role(params: PlatformParams) -> TelnyxPlatform:
    """bridge as Telnyx toward an app (``SPEC.make_platform``)."""
    fmt = SPEC.resolve_format(params.codec, params.sample_rate)
    return TelnyxPlatform(params.stream_id, params.call_id, fmt.name, params.sample_rate)


def app_role(params: AppParams) -> TelnyxApp:
    """bridge's call leg toward Telnyx, or an app written for Telnyx (``SPEC.make_app``);
    ``params.codec`` makes the app answer in that codec (at 8000 Hz)."""
    return TelnyxApp(codec=params.codec.upper() if params.codec else None)
