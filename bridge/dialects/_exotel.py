"""Exotel AgentStream: the Stream and Voicebot applets' WebSocket, both roles.

Sources
-------
* [EX-WS] developer.exotel.com/docs/agentstream/websocket-protocol (read in full as its
  source, ``docs/agentstream/websocket-protocol.md`` of ``rahulkumar-exo/exotel-docs`` @
  e81e6285; the search copy of the live page matches it).
* [EX-APPLET] developer.exotel.com/docs/agentstream/stream-voicebot-applet (source
  ``docs/agentstream/stream-voicebot-applet.md``, same repository @ 204aabb9).
* [EX-REF] Exotel's own reference code, ``exotel/Agent-Stream``:
  ``docs/AGENTSTREAM_WSS_PROTOCOL.md`` ("exact field names can vary slightly by applet /
  Connect path; bridges should tolerate missing optional fields"),
  ``integrations/agents/_shared/{media,wss_server}.py`` (sends ``streamSid``, reads
  ``streamSid`` or ``stream_sid``).
* [EX-XML] developer.exotel.com/docs/exoml/verbs/stream (``StartStream`` of the newer
  CPaaS API defaults to ``audio/x-mulaw;rate=8000``).

Wire
----
* Exotel dials the app (``ws://``/``wss://``; Basic auth or IP allow-listing) [EX-APPLET].
  Every message both ways is one JSON object in a TEXT frame, audio base64 inside [EX-WS].
  Only the Voicebot applet is bidirectional (``dtmf`` and ``mark`` from Exotel, and
  anything from the app, are Voicebot-only) [EX-WS].
* Exotel -> app: ``connected`` (``{"event":"connected"}``; [EX-REF] adds ``protocol``,
  ``version``) -> ``Connected``; ``start`` {``sequence_number``, ``stream_sid``,
  ``start``{``stream_sid``, ``call_sid``, ``account_sid``, ``from``, ``to``,
  ``custom_parameters``, ``media_format``{``encoding``, ``sample_rate``, ``bit_rate``}}}
  -> ``Start(stream_id=stream_sid, call_id=call_sid)``; ``media`` {``sequence_number``,
  ``stream_sid``, ``media``{``chunk``, ``timestamp``, ``payload``}} -> ``Audio(seq=chunk,
  timestamp)``; ``dtmf`` {``dtmf``{``digit``, ``duration``}} -> ``Dtmf``; ``mark``
  {``mark``{``name``}} "when audio you previously sent has finished playing" -> ``Mark``;
  ``stop`` {``stop``{``call_sid``, ``account_sid``, ``reason``: ``stopped`` (applet ended)
  | ``callended`` (caller hung up)}} -> ``Stop(reason)`` [EX-WS].
* The documents disagree on types and spellings, so the app role is lenient where they
  do: counters are strings in [EX-WS] and numbers in [EX-APPLET] (both accepted);
  ``encoding`` is ``"audio/x-raw"`` [EX-WS], ``"raw"`` [EX-APPLET] or ``"linear16"``
  [EX-REF] (all linear PCM; ``bit_rate`` is ``"16"`` in one and ``"128"`` in the other,
  so it is not read); ``streamSid``/``callSid``/``accountSid``/``customParameters`` are
  accepted for their snake_case names [EX-REF]. An ``encoding`` naming µ-law or A-law
  (``audio/x-mulaw``, as [EX-XML]'s default suggests a stream can be) is decoded as such:
  UNCONFIRMED, no document shows that ``start``. Unknown events are ignored and counted.
* Audio: raw PCM 16-bit signed **little-endian**, mono, base64; 8000 Hz by default,
  16000 or 24000 with ``?sample-rate=`` on the URL [EX-WS, EX-APPLET]; the ``start``'s
  ``media_format.sample_rate`` decides. Exotel sends a chunk "every ~100 ms" [EX-WS]
  ([EX-REF] says 20 ms): any whole-sample length is passed on.
* App -> Exotel [EX-WS]: ``{"event":"media","stream_sid":S,"media":{"payload":B64}}``,
  ``{"event":"mark","stream_sid":S,"mark":{"name":N}}``, ``{"event":"clear",
  "stream_sid":S}`` (removes queued audio that has not started playing; a chunk already
  playing plays out [EX-APPLET]). No message ends the stream or sends DTMF: closing the
  socket hangs up [EX-REF]; ``send(Hangup/Stop/Dtmf)`` -> ``[]``.

Outbound chunk size (the app role's ``send``)
---------------------------------------------
Each ``media`` payload must be **3.2 KB to 100 KB, a multiple of 320 bytes**; "smaller
chunks risk audio distortion, larger chunks cause timeouts, non-compliant sizes create
gaps" [EX-APPLET, EX-WS]. :class:`ExotelApp` complies in ``send(Audio)``: it holds the
audio until ``min_chunk_bytes`` (3200) have gathered and sends them as one message (at
most ``max_chunk_bytes``); ``send(Mark)`` first sends what is held, padded with silence
to the minimum, so the mark follows its audio; ``send(Clear)`` drops what is held
(counted); ``flush()`` sends it on demand. ``send_audio(pcm)`` is the unbuffered path:
one message for exactly ``pcm`` (a multiple of 320 B, at most 100 KB; the minimum is not
enforced there, as pipecat's Exotel serializer sends 20 ms frames).

Latency this implies (UNCONFIRMED whether Exotel enforces the minimum at all, since
widely used integrations send 20 ms): 3200 bytes are **200 ms at 8 kHz** (the documents'
"3.2 KB (100 ms of data)" holds at 16 kHz only), 100 ms at 16 kHz, 67 ms at 24 kHz
(sent as 80 ms: four 960-byte frames). On a real-time stream the first frame of each
chunk waits for the rest: 180 ms at 8 kHz, 80 ms at 16 kHz, 60 ms at 24 kHz added to the
mouth-to-ear delay, and a barge-in ``clear`` cannot stop a chunk already playing. Set
``min_chunk_bytes=320`` to send every 20 ms frame at once.

Marks and clear (Design implications 2 and 3)
---------------------------------------------
Exotel echoes a mark when the audio before it has played [EX-WS]. What happens to pending
marks on ``clear`` is not documented (UNCONFIRMED), so :class:`ExotelApp` settles them
itself: marks go out under short ids (``m1``, ...; see ``_marks``), ``send(Clear())``
settles every one in flight and ``take_events()`` returns a ``Mark`` for each, then
``Cleared()`` (Exotel sends no acknowledgement); a later echo is dropped and counted.

Platform role (emulating Exotel toward an app written for it)
-------------------------------------------------------------
:class:`ExotelPlatform` greets with ``connected``, then ``start``, ``media``, ``dtmf``,
``mark`` and ``stop`` in the [EX-WS] form (counters as strings; ``media.timestamp`` is
the milliseconds of audio sent up to the end of the chunk, as [EX-WS]'s "chunk 2,
timestamp 200" of 100 ms chunks reads: UNCONFIRMED). It takes ``media``, ``mark`` and
``clear`` with ``stream_sid`` or ``streamSid`` (or neither: [EX-APPLET] marks it
optional; a wrong one is a ``DialectError``) and tolerates extra fields, as Exotel's own
samples send ``sequence_number``, ``chunk`` and ``timestamp``. A chunk outside the size
rule is counted (``stats.noncompliant_chunks``; Exotel plays it with gaps), or refused
with ``strict_chunks=True``.
"""

from __future__ import annotations

import binascii
import uuid
from collections.abc import Mapping
from typing import Any, Final

import attrs
import msgspec

from .._errors import DialectError, UnsupportedMessage
from ..media import Frame
from ._carrier import (
    NO_HOOKS,
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
    FlowControl,
    Hangup,
    Mark,
    Message,
    Start,
    Stats,
    StatsRequest,
    Stop,
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
    "CHUNK_MAX_BYTES",
    "CHUNK_MIN_BYTES",
    "CHUNK_MULTIPLE",
    "SAMPLE_RATES",
    "SPEC",
    "ExotelApp",
    "ExotelPlatform",
    "ExotelPlatformStats",
    "ExotelStats",
]

_D: Final = "exotel"
SAMPLE_RATES: Final = (8000, 16000, 24000)
CHUNK_MULTIPLE: Final = 320
CHUNK_MIN_BYTES: Final = 3200
CHUNK_MAX_BYTES: Final = 100_000
_ENCODING: Final = "audio/x-raw"
_b64: Final = binascii.b2a_base64

def _check_min_chunk(value: OptionValue) -> None:
    if not isinstance(value, int) or not CHUNK_MULTIPLE <= value <= CHUNK_MAX_BYTES or (
        value % CHUNK_MULTIPLE
    ):
        raise ValueError(
            f"must be a multiple of {CHUNK_MULTIPLE} from {CHUNK_MULTIPLE} to "
            f"{CHUNK_MAX_BYTES}, got {value!r}"
        )


SPEC: Final = DialectSpec(
    name=_D,
    platform=f"{__name__}:ExotelPlatform",
    app=f"{__name__}:ExotelApp",
    dialer="platform",
    subprotocol=None,
    greets_first="platform",
    start=("connected", "start"),
    stop="Exotel sends stop (reason stopped|callended) and closes; the app ends by closing",
    formats=tuple(WireFormat(_ENCODING, "l16le", rate) for rate in SAMPLE_RATES),
    default_format=_ENCODING,
    format_choice="the ?sample-rate= query of the app's URL (8000 default), echoed in start",
    ptime_ms=100,
    send_rule=ChunkRule(
        frames="any",
        multiple_of_bytes=CHUNK_MULTIPLE,
        min_bytes=CHUNK_MIN_BYTES,
        max_bytes=CHUNK_MAX_BYTES,
        accumulates=True,
    ),
    capabilities=Capabilities(
        marks="played",
        marks_on_clear="unconfirmed",
        settles_marks=True,
        clear=True,
        cleared_ack=False,
        dtmf_in=True,
        dtmf_out=False,
        flow_control=False,
        drained=False,
        stats=False,
        hangup=False,
        resume=False,
    ),
    call_leg=CallLeg(
        listener="websocket",
        far_side_buffers=True,
        hangup_on_close=False,
        path="/exotel",
        options=(
            Option(
                "min_chunk_bytes",
                int,
                CHUNK_MIN_BYTES,
                "bridge's media messages to Exotel carry at least this many bytes (a "
                "multiple of 320): Exotel asks for 3200, which holds back up to 180 ms at "
                "8 kHz; 320 sends every 20 ms frame at once (UNCONFIRMED whether Exotel "
                "enforces its minimum)",
                check=_check_min_chunk,
            ),
        ),
    ),
    app_leg=AppLeg(
        default_codec="l16",
        options=(
            Option(
                "account_sid",
                str,
                "bridge",
                "the account_sid in start and stop",
            ),
        ),
    ),
    make_platform=f"{__name__}:platform_role",
    make_app=f"{__name__}:app_role",
)
"""``formats`` differ by rate only (all are ``audio/x-raw``); ``ptime_ms`` is Exotel's
~100 ms chunk toward the app."""


def _codec(encoding: str, rate: int) -> Codec:
    """The codec of a ``media_format.encoding`` (linear PCM unless it names G.711)."""
    base = encoding.split(";", 1)[0].strip().lower()
    if base in ("audio/x-mulaw", "audio/mulaw", "mulaw", "ulaw", "pcmu"):
        return pcmu_codec(encoding)
    if base in ("audio/x-alaw", "audio/alaw", "alaw", "pcma"):
        return pcma_codec(encoding)
    return l16_codec(encoding, rate, "little")


# --------------------------------------------------------------------------- Exotel -> app
# Lenient: unknown fields ignored, numbers or strings, snake_case or camelCase ids.


class _Body(msgspec.Struct, frozen=True, gc=False):
    pass


class _Msg(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag_field="event"):
    stream_sid: str | None = None
    streamSid: str | None = None
    sequence_number: int | str | None = None


class _Connected(_Msg, tag="connected", frozen=True):
    protocol: str = ""
    version: str = ""


class _MediaFormat(_Body, frozen=True):
    encoding: str = _ENCODING
    sample_rate: int | str = 8000
    bit_rate: int | str | None = None


class _StartBody(_Body, frozen=True):
    stream_sid: str | None = None
    streamSid: str | None = None
    call_sid: str | None = None
    callSid: str | None = None
    account_sid: str | None = None
    accountSid: str | None = None
    from_: str = msgspec.field(name="from", default="")
    to: str = ""
    custom_parameters: dict[str, Any] | None = None
    customParameters: dict[str, Any] | None = None
    media_format: _MediaFormat = msgspec.field(default_factory=_MediaFormat)


class _Start(_Msg, tag="start", frozen=True):
    start: _StartBody = msgspec.field(default_factory=_StartBody)


class _MediaBody(_Body, frozen=True):
    payload: str
    chunk: int | str | None = None
    timestamp: int | str | None = None


class _Media(_Msg, tag="media", frozen=True):
    media: _MediaBody


class _DtmfBody(_Body, frozen=True):
    digit: str
    duration: int | str | None = None


class _Dtmf(_Msg, tag="dtmf", frozen=True):
    dtmf: _DtmfBody


class _Name(_Body, frozen=True):
    name: str


class _Mark(_Msg, tag="mark", frozen=True):
    mark: _Name


class _StopBody(_Body, frozen=True):
    call_sid: str | None = None
    account_sid: str | None = None
    reason: str | None = None


class _Stop(_Msg, tag="stop", frozen=True):
    stop: _StopBody | None = None


_FromExotel = _Connected | _Start | _Media | _Dtmf | _Mark | _Stop
_decode_from_exotel: Final = JsonDecoder[_FromExotel](
    _D,
    _FromExotel,
    {
        "connected": None,
        "start": None,
        "media": None,
        "dtmf": None,
        "mark": None,
        "stop": None,
        "clear": "is sent by the app to Exotel, not by Exotel",
    },
    binary_note=" (Exotel sends TEXT frames only)",
)


def _sid(msg: _Msg | _StartBody) -> str | None:
    return msg.stream_sid if msg.stream_sid is not None else msg.streamSid


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class ExotelStats:
    """Counters the app role keeps as ``.stats``."""

    messages_received: int = 0
    chunks_received: int = 0
    marks_received: int = 0
    dtmf_received: int = 0
    unknown_events: int = 0
    first_unknown_event: str | None = None
    chunks_sent: int = 0
    padded_bytes: int = 0
    """Silence added to reach ``min_chunk_bytes`` before a mark or ``flush()``."""
    tx_dropped_bytes: int = 0
    """Wire bytes held for the next chunk and dropped by a clear or the end of the stream."""


def _check_chunks(instance: ExotelApp, _: attrs.Attribute[int], value: int) -> None:
    lo, hi = instance.min_chunk_bytes, instance.max_chunk_bytes
    if not (CHUNK_MULTIPLE <= lo <= hi <= CHUNK_MAX_BYTES) or lo % CHUNK_MULTIPLE:
        raise ValueError(
            f"need {CHUNK_MULTIPLE} <= min_chunk_bytes <= max_chunk_bytes <= {CHUNK_MAX_BYTES}, "
            f"min a multiple of {CHUNK_MULTIPLE}: got {lo}, {hi}"
        )


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class ExotelApp:
    """The application side of an Exotel Voicebot stream (bridge's call leg toward Exotel).

    ``min_chunk_bytes``/``max_chunk_bytes``: the size of the ``media`` messages
    ``send(Audio)`` builds (module docstring: Exotel's 3.2 KB minimum and its latency).
    """

    min_chunk_bytes: int = CHUNK_MIN_BYTES
    max_chunk_bytes: int = attrs.field(default=CHUNK_MAX_BYTES, validator=_check_chunks)
    stats: ExotelStats = attrs.field(factory=ExotelStats, init=False)
    marks: PendingMarks = attrs.field(factory=PendingMarks, init=False)
    stream_sid: str | None = attrs.field(default=None, init=False)
    call_sid: str | None = attrs.field(default=None, init=False)
    sample_rate: int | None = attrs.field(default=None, init=False)
    _codec: Codec | None = attrs.field(default=None, init=False, repr=False)
    _prefix: str = attrs.field(default="", init=False, repr=False)
    _held: bytes = attrs.field(default=b"", init=False, repr=False)
    _silence: bytes = attrs.field(default=b"", init=False, repr=False)

    def receive(self, message: Message) -> list[Event]:
        """One text frame from Exotel -> events. DialectError on malformed input."""
        try:
            msg = _decode_from_exotel(message)
        except UnsupportedMessage as exc:
            self.stats.unknown_events += 1
            if self.stats.first_unknown_event is None:
                self.stats.first_unknown_event = exc.message
            return []
        self.stats.messages_received += 1
        if isinstance(msg, _Media):
            return self._media(msg)
        if isinstance(msg, _Connected):
            meta = {k: v for k, v in (("protocol", msg.protocol), ("version", msg.version)) if v}
            return [Connected(meta)]
        if isinstance(msg, _Start):
            return [self._start(msg)]
        if self._codec is None:
            raise DialectError(_D, f"{type(msg).__name__[1:].lower()!r} before 'start'")
        self._check_sid(msg)
        if isinstance(msg, _Mark):
            name = self.marks.echoed(msg.mark.name)
            if name is None:
                return []
            self.stats.marks_received += 1
            return [Mark(name)]
        if isinstance(msg, _Dtmf):
            self.stats.dtmf_received += 1
            body = msg.dtmf
            duration = None if body.duration is None else to_int(_D, body.duration, "dtmf.duration")
            return [Dtmf(parse_digit(_D, body.digit), duration)]
        self.stats.tx_dropped_bytes += len(self._held)
        self._held = b""
        return [Stop(msg.stop.reason if msg.stop is not None else None)]

    def _check_sid(self, msg: _Msg) -> None:
        sid = _sid(msg)
        if sid is not None and sid != self.stream_sid:
            raise DialectError(_D, f"stream_sid {short(sid)} is not this stream's")

    def _start(self, msg: _Start) -> Start:
        if self._codec is not None:
            raise DialectError(_D, "a second 'start' message on one stream")
        body = msg.start
        top, inner = _sid(msg), _sid(body)
        if top is not None and inner is not None and top != inner:
            raise DialectError(_D, "start.stream_sid and stream_sid differ")
        stream_sid = inner if inner is not None else top
        if not stream_sid:
            raise DialectError(_D, "'start' message has no stream_sid")
        fmt = body.media_format
        rate = to_int(_D, fmt.sample_rate, "media_format.sample_rate")
        if rate not in SAMPLE_RATES:
            raise DialectError(
                _D, f"unsupported sample rate {rate} (Exotel streams 8000, 16000 or 24000 Hz)"
            )
        codec = _codec(fmt.encoding, rate)
        if codec.sample_rate != rate:
            raise DialectError(_D, f"{short(fmt.encoding)} at {rate} Hz: G.711 is 8000 Hz only")
        call_sid = body.call_sid if body.call_sid is not None else body.callSid
        account_sid = body.account_sid if body.account_sid is not None else body.accountSid
        params = (
            body.custom_parameters if body.custom_parameters is not None else body.customParameters
        )
        self._codec = codec
        self.stream_sid = stream_sid
        self.call_sid = call_sid or stream_sid
        self.sample_rate = rate
        self._silence = codec.encode(b"\0\0")
        self._prefix = (
            '{"event":"media","stream_sid":' + json_str(stream_sid) + ',"media":{"payload":"'
        )
        return Start(
            stream_id=stream_sid,
            call_id=self.call_sid,
            sample_rate=rate,
            encoding=fmt.encoding,
            metadata={
                "carrier": _D,
                "stream_sid": stream_sid,
                "call_sid": call_sid or "",
                "account_sid": account_sid or "",
                "from": body.from_,
                "to": body.to,
                "custom_parameters": dict(params or {}),
            },
        )

    def _media(self, msg: _Media) -> list[Event]:
        codec = self._codec
        if codec is None:
            raise DialectError(_D, "'media' before 'start'")
        self._check_sid(msg)
        media = msg.media
        pcm = decode_payload(_D, codec, media.payload)
        chunk = None if media.chunk is None else to_int(_D, media.chunk, "media.chunk")
        ts = None if media.timestamp is None else to_int(_D, media.timestamp, "media.timestamp")
        self.stats.chunks_received += 1
        return [Audio(Frame(pcm, codec.sample_rate), chunk, ts)]

    def take_events(self) -> list[Event]:
        """Events owed without a wire message: after ``send(Clear())``, a ``Mark`` for
        every mark still in flight, then ``Cleared()`` (module docstring)."""
        return self.marks.take()

    # ----------------------------------------------------------------- send

    def send_audio(self, pcm: bytes) -> Message:
        """PCM16LE -> one ``media`` message for exactly ``pcm``, unbuffered.

        Its wire size must be a multiple of 320 bytes and at most 100 KB (``ValueError``
        otherwise: a caller bug). For Exotel's 3.2 KB minimum use ``send(Audio(...))``.
        """
        codec = self._started()
        if len(pcm) & 1:
            raise ValueError(f"PCM16 audio must be whole 2-byte samples, got {len(pcm)} bytes")
        data = codec.encode(pcm)
        if not data or len(data) % CHUNK_MULTIPLE or len(data) > CHUNK_MAX_BYTES:
            raise ValueError(
                f"an Exotel media payload is a multiple of {CHUNK_MULTIPLE} bytes up to "
                f"{CHUNK_MAX_BYTES}, not {len(data)}"
            )
        return self._message(data)

    def _message(self, data: bytes) -> str:
        self.stats.chunks_sent += 1
        return self._prefix + _b64(data, newline=False).decode("ascii") + '"}}'

    def send(self, event: Event) -> list[Message]:
        """Event -> messages to Exotel; ``[]`` for what the stream cannot carry."""
        if isinstance(event, Audio):
            return self._audio(event.frame)
        if isinstance(event, Mark):
            sid = self._sid_json()
            out = self.flush()
            wire_id = self.marks.sent(event.name)
            out.append(
                '{"event":"mark","stream_sid":' + sid + ',"mark":{"name":"' + wire_id + '"}}'
            )
            return out
        if isinstance(event, Clear):
            sid = self._sid_json()
            self.stats.tx_dropped_bytes += len(self._held)
            self._held = b""
            self.marks.clear(cleared=True)  # no acknowledgement on Exotel's wire
            return ['{"event":"clear","stream_sid":' + sid + "}"]
        if isinstance(event, Hangup | Stop):
            # Close the socket to end the stream [EX-REF]; held audio would not play.
            self.stats.tx_dropped_bytes += len(self._held)
            self._held = b""
            return []
        if isinstance(event, Dtmf | StatsRequest):
            return []
        raise _other_role("ExotelApp", event)

    def _audio(self, frame: Frame) -> list[Message]:
        codec = self._started()
        rate = self.sample_rate
        assert rate is not None
        pcm = _check_rate(frame, rate)
        if len(pcm) & 1:
            raise ValueError(f"PCM16 audio must be whole 2-byte samples, got {len(pcm)} bytes")
        held = self._held + codec.encode(pcm) if self._held else codec.encode(pcm)
        out: list[Message] = []
        lo = self.min_chunk_bytes
        hi = self.max_chunk_bytes - self.max_chunk_bytes % CHUNK_MULTIPLE
        while len(held) >= lo:
            take = min(len(held) - len(held) % CHUNK_MULTIPLE, hi)
            out.append(self._message(held[:take]))
            held = held[take:]
        self._held = held
        return out

    def flush(self) -> list[Message]:
        """Send the audio ``send(Audio)`` holds, padded with silence to a compliant size."""
        held = self._held
        if not held:
            return []
        self._started()
        size = max(self.min_chunk_bytes, -(-len(held) // CHUNK_MULTIPLE) * CHUNK_MULTIPLE)
        pad = size - len(held)
        silence = self._silence
        held += silence * (pad // len(silence))
        self.stats.padded_bytes += pad
        self._held = b""
        return [self._message(held)]

    def _started(self) -> Codec:
        codec = self._codec
        if codec is None:
            raise DialectError(_D, "cannot send before Exotel's 'start': no stream_sid yet")
        return codec

    def _sid_json(self) -> str:
        self._started()
        assert self.stream_sid is not None
        return json_str(self.stream_sid)


# --------------------------------------------------------------------------- platform role
# The app's messages: documented fields required, extras tolerated (Exotel's own samples
# add sequence_number, chunk and timestamp), stream_sid or streamSid optional.


class _AppMedia(_Msg, tag="media", frozen=True):
    media: _MediaBody


class _AppMark(_Msg, tag="mark", frozen=True):
    mark: _Name


class _AppClear(_Msg, tag="clear", frozen=True):
    pass


_FROM_EXOTEL: Final = "is sent by Exotel, not by the app"
_decode_from_app: Final = JsonDecoder[_AppMedia | _AppMark | _AppClear](
    _D,
    _AppMedia | _AppMark | _AppClear,
    {
        "media": None,
        "mark": None,
        "clear": None,
        "connected": _FROM_EXOTEL,
        "start": _FROM_EXOTEL,
        "dtmf": _FROM_EXOTEL,
        "stop": _FROM_EXOTEL,
    },
    binary_note=" (Exotel takes TEXT frames only)",
)


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class ExotelPlatformStats:
    """Counters the platform role keeps as ``.stats``."""

    chunks_received: int = 0
    noncompliant_chunks: int = 0
    """``media`` payloads outside 3.2-100 KB or not a multiple of 320 bytes."""


def _params(value: Mapping[str, str] | None) -> dict[str, str]:
    return dict(value) if value else {}


def _check_rate_value(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value not in SAMPLE_RATES:
        raise ValueError(f"{attribute.name} must be one of {SAMPLE_RATES}, not {value!r}")


_STOP_REASONS: Final = frozenset({"stopped", "callended"})


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class ExotelPlatform:
    """Emulates Exotel's Voicebot applet toward an application written for it.

    Counters are JSON strings as in [EX-WS]: ``sequence_number`` over every message
    after ``connected`` (``start`` is "1"), ``media.chunk`` from "1", ``media.timestamp``
    the ms of audio sent up to the end of the chunk. ``send(Stop(reason))`` sends
    Exotel's ``callended`` for bridge's ``call_hangup`` and ``stopped`` for anything else
    (Exotel's own words pass through).
    """

    stream_sid: str
    call_sid: str
    account_sid: str
    sample_rate: int = attrs.field(default=8000, validator=_check_rate_value)
    from_number: str = ""
    to_number: str = ""
    custom_parameters: Mapping[str, str] = attrs.field(factory=dict, converter=_params)
    dtmf_duration_ms: int = 100
    strict_chunks: bool = False
    stats: ExotelPlatformStats = attrs.field(factory=ExotelPlatformStats, init=False)
    _codec: Codec = attrs.field(init=False, repr=False)
    _seq: int = attrs.field(default=0, init=False)
    _chunk: int = attrs.field(default=0, init=False)
    _samples: int = attrs.field(default=0, init=False)
    _tail: str = attrs.field(default="", init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._codec = l16_codec(_ENCODING, self.sample_rate, "little")
        self._tail = '"},"stream_sid":' + json_str(self.stream_sid) + "}"

    def receive(self, message: Message) -> list[Event]:
        """One text frame from the app -> ``Audio``, ``Mark`` or ``Clear``."""
        msg = _decode_from_app(message)
        sid = _sid(msg)
        if sid is not None and sid != self.stream_sid:
            raise DialectError(_D, f"stream_sid {short(sid)} is not this stream's")
        if isinstance(msg, _AppMedia):
            pcm = decode_payload(_D, self._codec, msg.media.payload)
            self._check_chunk(len(pcm))
            return [Audio(Frame(pcm, self.sample_rate))]
        if isinstance(msg, _AppMark):
            return [Mark(msg.mark.name)]
        return [Clear()]

    def _check_chunk(self, n: int) -> None:
        self.stats.chunks_received += 1
        if n % CHUNK_MULTIPLE or not CHUNK_MIN_BYTES <= n <= CHUNK_MAX_BYTES:
            self.stats.noncompliant_chunks += 1
            if self.strict_chunks:
                raise DialectError(
                    _D,
                    f"media payload of {n} bytes: Exotel takes {CHUNK_MIN_BYTES}-{CHUNK_MAX_BYTES} "
                    f"bytes, a multiple of {CHUNK_MULTIPLE}",
                )

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    def send_audio(self, pcm: bytes) -> Message:
        """PCM16LE at the stream's rate -> one ``media`` message."""
        payload = encode_pcm(self._codec, pcm)
        self._chunk += 1
        self._samples += len(pcm) >> 1
        ms = self._samples * 1000 // self.sample_rate
        return (
            f'{{"event":"media","sequence_number":"{self._next_seq()}","media":{{"chunk":'
            f'"{self._chunk}","timestamp":"{ms}","payload":"{payload}' + self._tail
        )

    def send(self, event: Event) -> list[Message]:
        """Event -> messages to the app; ``[]`` for what Exotel has no message for."""
        if isinstance(event, Audio):
            return [self.send_audio(_check_rate(event.frame, self.sample_rate))]
        if isinstance(event, Mark):
            return [self._message("mark", mark={"name": event.name})]
        if isinstance(event, Dtmf):
            duration = event.duration_ms if event.duration_ms is not None else self.dtmf_duration_ms
            return [self._message("dtmf", dtmf={"digit": event.digit, "duration": str(duration)})]
        if isinstance(event, Start):
            return [self._start()]
        if isinstance(event, Connected):
            return ['{"event":"connected"}']
        if isinstance(event, Stop):
            reason = event.reason
            if reason not in _STOP_REASONS:
                reason = "callended" if reason == "call_hangup" else "stopped"
            stop = {"call_sid": self.call_sid, "account_sid": self.account_sid, "reason": reason}
            return [self._message("stop", stop=stop)]
        if isinstance(event, Cleared | Drained | Stats | FlowControl | Error):
            return []  # Exotel has no such messages
        raise _other_role("ExotelPlatform", event)

    def _message(self, event: str, **body: Any) -> str:
        return dumps(
            {
                "event": event,
                "sequence_number": self._next_seq(),
                "stream_sid": self.stream_sid,
                **body,
            }
        )

    def _start(self) -> str:
        return self._message(
            "start",
            start={
                "stream_sid": self.stream_sid,
                "call_sid": self.call_sid,
                "account_sid": self.account_sid,
                "from": self.from_number,
                "to": self.to_number,
                "custom_parameters": dict(self.custom_parameters),
                "media_format": {
                    "encoding": _ENCODING,
                    "sample_rate": str(self.sample_rate),
                    "bit_rate": "16",
                },
            },
        )


def _hex_id(value: str) -> str:
    try:
        return uuid.UUID(value).hex
    except ValueError:
        return value


def platform_role(params: PlatformParams) -> ExotelPlatform:
    """bridge as Exotel's Voicebot applet toward an app (``SPEC.make_platform``)."""
    return ExotelPlatform(
        _hex_id(params.stream_id),
        _hex_id(params.call_id),
        str(params.options.get("account_sid") or "bridge"),
        sample_rate=params.sample_rate,
    )


def app_role(params: AppParams) -> ExotelApp:
    """bridge's call leg toward Exotel, or an app written for it (``SPEC.make_app``)."""
    chunk = params.options.get("min_chunk_bytes", CHUNK_MIN_BYTES)
    return ExotelApp(min_chunk_bytes=int(chunk))
