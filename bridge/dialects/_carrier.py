"""What the three JSON carrier dialects share: Twilio (PROTOCOLS.md §1), Plivo (§4), Telnyx (§5).

All three carry every message, both ways, as one JSON object in one WebSocket TEXT frame,
with base64 audio inside. This module holds the parts that would otherwise be written three
times:

* :class:`JsonDecoder` turns one text frame into a frozen msgspec Struct of the role's tagged
  union (tagged on ``"event"``) and, when that fails, explains *what* was wrong in a
  :class:`~bridge.DialectError` (bad JSON, not an object, no ``event``, unknown event, an
  event that flows the other way, a missing/extra/mistyped field). It never lets another
  exception out: a hostile peer must not crash anything above the dialect.
* :class:`Codec`: one of ``bridge.media``'s codecs (G.711 µ-law/A-law, L16 in either byte
  order) under the wire's own name and at the stream's rate. The codecs themselves are
  implemented once, in ``bridge.media`` (``audioop``, the fastest option measured in
  PERFORMANCE.md); this module only names them.
* base64 payloads, counters and DTMF digits parsed with dialect-named errors, JSON
  helpers for the pre-built per-frame message templates, and :class:`CarrierStats`.

Pure code: no sockets, no tasks, no clocks.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from typing import Any, Final, Generic, TypeVar

import attrs
import msgspec

from .._errors import DialectError, UnsupportedMessage
from ..media import L16_BE, L16_LE, PCMA, PCMU, Frame
from ..media import Codec as MediaCodec

__all__ = [
    "DTMF_DIGITS",
    "NO_HOOKS",
    "CarrierStats",
    "Codec",
    "JsonDecoder",
    "decode_payload",
    "dumps",
    "encode_pcm",
    "json_str",
    "l16_codec",
    "parse_digit",
    "pcma_codec",
    "pcmu_codec",
    "short",
    "to_int",
    "wire_codec",
]

T = TypeVar("T")

_a2b = binascii.a2b_base64
_b2a = binascii.b2a_base64
_encode_json = msgspec.json.Encoder().encode

NO_HOOKS: Final = attrs.setters.NO_OP
"""``on_setattr`` for runtime classes: converters and validators run in ``__init__`` only.

attrs otherwise installs a ``__setattr__`` that re-runs them on every assignment once any
field has one, which made the per-frame counter updates cost ~1.3 µs (measured)."""

DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
"""The 16 DTMF keys (RFC 4733 events 0-15); carriers send ``0-9 * #`` and, rarely, ``A-D``."""


def short(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: peer data goes into error messages and logs."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dumps(obj: object) -> str:
    """Encode one JSON message as text (a WebSocket TEXT frame)."""
    return _encode_json(obj).decode()


def json_str(value: str) -> str:
    """``value`` as a quoted, escaped JSON string, for splicing into message templates."""
    return _encode_json(value).decode()


def to_int(dialect: str, value: int | str, what: str) -> int:
    """A counter that may arrive as a JSON number or a decimal string (Design implications 7)."""
    if type(value) is int:
        return value
    try:
        return int(value)
    except ValueError:
        raise DialectError(dialect, f"{what} must be an integer, got {short(value)}") from None


def parse_digit(dialect: str, digit: str) -> str:
    """Validate one DTMF key; lower-case ``a-d`` are accepted and upper-cased."""
    if len(digit) == 1:
        upper = digit.upper()
        if upper in DTMF_DIGITS:
            return upper
    raise DialectError(dialect, f"DTMF digit must be one of 0-9 * # A-D, got {short(digit)}")


# --------------------------------------------------------------------------- codecs


@attrs.frozen(slots=True)
class Codec:
    """A ``bridge.media`` codec as one wire carries it: under the wire's ``name``
    (``PCMU``, ``audio/x-mulaw``, ``slin16``, ...) and at the stream's ``sample_rate``.

    ``width`` is the number of wire bytes per sample: a 2-byte format must arrive in whole
    samples, and every caller checks that before ``decode``/``encode`` (and raises its
    own error): they are the media codec's ``decode_whole``/``encode_whole``, copied here
    so that the per-frame call is one attribute load.
    """

    name: str
    sample_rate: int
    width: int
    decode: Callable[[bytes], bytes] = attrs.field(repr=False)
    encode: Callable[[bytes], bytes] = attrs.field(repr=False)


def wire_codec(name: str, codec: MediaCodec, sample_rate: int) -> Codec:
    """``codec`` under the wire's ``name`` at ``sample_rate``."""
    return Codec(
        name, sample_rate, codec.bytes_per_sample, codec.decode_whole, codec.encode_whole
    )


def pcmu_codec(name: str) -> Codec:
    """G.711 µ-law at 8000 Hz (the only rate G.711 has)."""
    return wire_codec(name, PCMU, 8000)


def pcma_codec(name: str) -> Codec:
    """G.711 A-law at 8000 Hz."""
    return wire_codec(name, PCMA, 8000)


def l16_codec(name: str, sample_rate: int, byteorder: str) -> Codec:
    """Linear PCM16 at ``sample_rate``; ``byteorder`` is the wire's: ``"big"`` or ``"little"``.

    Byte order is an explicit codec property (Design implications 1): RTP-style L16 is
    big-endian (RFC 3551 §4.5.11; Telnyx per pipecat), Plivo's is UNCONFIRMED.
    """
    if byteorder == "big":
        return wire_codec(name, L16_BE, sample_rate)
    if byteorder == "little":
        return wire_codec(name, L16_LE, sample_rate)
    raise ValueError(f'l16 byte order must be "little" or "big", not {byteorder!r}')


def decode_payload(dialect: str, codec: Codec, payload: str) -> bytes:
    """base64 wire audio -> PCM16LE, or DialectError (bad base64, a torn 16-bit sample).

    base64 is decoded strictly (padding, alphabet, no whitespace): carriers send canonical
    base64, and anything else is a malformed message rather than audio to guess at (Twilio
    31951/31924: a payload is raw base64 audio, nothing more).
    """
    try:
        data = _a2b(payload, strict_mode=True)
    except ValueError as exc:
        raise DialectError(dialect, f"media payload is not valid base64: {exc}") from None
    if len(data) % codec.width:
        raise DialectError(
            dialect,
            f"{codec.name} payload of {len(data)} bytes is not a whole number of "
            f"{codec.width}-byte samples",
        )
    return codec.decode(data)


def encode_pcm(codec: Codec, pcm: bytes) -> str:
    """PCM16LE -> base64 wire audio. ``pcm`` comes from bridge, so a torn sample is a bug."""
    if len(pcm) & 1:
        raise ValueError(f"PCM16 audio must be whole 2-byte samples, got {len(pcm)} bytes")
    return _b2a(codec.encode(pcm), newline=False).decode("ascii")


# --------------------------------------------------------------------------- decoding

_MISSING: Final = object()


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


class JsonDecoder(Generic[T]):
    """Decode one role's incoming text frames into its tagged union of frozen Structs.

    ``events`` maps every event name of the dialect to ``None`` when this role receives it,
    or to a short reason when it flows the other way (``"is sent by Twilio, not by the
    app"``). On failure the message is decoded a second time, generically, only to say what
    was wrong, so the valid path pays for nothing:

    * not a str (a BINARY frame), invalid JSON, not an object, no string ``event``:
      :class:`DialectError`;
    * an unknown event, or one this role does not receive: :class:`UnsupportedMessage`
      (well-formed, and safe for a caller to log and skip);
    * a known event with missing, extra or mistyped fields: :class:`DialectError` quoting
      msgspec's path (`` `$.media.payload` ``).
    """

    __slots__ = ("_binary_note", "_decode", "_dialect", "_events", "_unknown_note")

    def __init__(
        self,
        dialect: str,
        union: Any,
        events: Mapping[str, str | None],
        *,
        binary_note: str = "",
        unknown_note: str = "",
    ) -> None:
        self._dialect = dialect
        self._decode: Callable[[str], T] = msgspec.json.Decoder(union).decode
        self._events = dict(events)
        self._binary_note = binary_note
        self._unknown_note = unknown_note

    def __call__(self, message: object) -> T:
        if not isinstance(message, str):
            raise self._not_text(message)
        try:
            return self._decode(message)
        except msgspec.ValidationError as exc:
            raise self._explain(message, exc) from None
        except (msgspec.DecodeError, UnicodeError, RecursionError) as exc:
            raise DialectError(self._dialect, f"message is not valid JSON: {exc}") from None

    def _not_text(self, message: object) -> DialectError:
        if isinstance(message, bytes | bytearray | memoryview):
            what = f"a BINARY message of {len(message)} bytes"
        else:
            what = f"a {type(message).__name__}"
        return DialectError(
            self._dialect, f"expected a JSON TEXT message, got {what}{self._binary_note}"
        )

    def _explain(self, message: str, exc: msgspec.ValidationError) -> DialectError:
        dialect = self._dialect
        try:
            obj = msgspec.json.decode(message)
        except (msgspec.DecodeError, RecursionError):  # pragma: no cover - it parsed once
            return DialectError(dialect, f"invalid message: {exc}")
        if not isinstance(obj, dict):
            return DialectError(dialect, f"expected a JSON object, got {_json_type(obj)}")
        event = obj.get("event", _MISSING)
        if event is _MISSING:
            return DialectError(dialect, 'message has no "event" field')
        if not isinstance(event, str):
            return DialectError(dialect, f'"event" must be a string, got {_json_type(event)}')
        reason = self._events.get(event, _MISSING)
        if reason is _MISSING:
            return UnsupportedMessage(dialect, f"unknown event {short(event)}{self._unknown_note}")
        if reason is not None:
            return UnsupportedMessage(dialect, f"{short(event)} {reason}")
        return DialectError(dialect, f"malformed {event!r} message: {exc}")


# --------------------------------------------------------------------------- bookkeeping


@attrs.define(slots=True, on_setattr=NO_HOOKS)
class CarrierStats:
    """Counters an app role keeps as ``.stats`` (for metrics and the stream record)."""

    messages_received: int = 0
    """Every text frame that decoded (any event)."""
    chunks_received: int = 0
    """``media`` messages of the selected track that were decoded."""
    other_track_chunks: int = 0
    """``media`` of another track (a ``both_tracks`` fork): dropped."""
    late_chunks: int = 0
    """Telnyx: arrived after their place had been passed; dropped."""
    duplicate_chunks: int = 0
    """Telnyx: a chunk number already waiting in the reorder window; dropped."""
    reordered_chunks: int = 0
    """Telnyx: arrived while an earlier chunk was missing, so went through the reorder
    buffer instead of straight through."""
    skipped_chunks: int = 0
    """Telnyx: chunk numbers given up on when the reorder window overflowed (lost)."""
    marks_received: int = 0
    dtmf_received: int = 0
    errors_received: int = 0
    """Telnyx ``error`` frames."""


def other_role(cls: str, event: object) -> ValueError:
    """The local-misuse error for sending an event that only the other role sends."""
    return ValueError(f"{cls} cannot send {type(event).__name__}: the other role sends it")


def check_rate(frame: Frame, rate: int) -> bytes:
    """``frame``'s PCM, after checking it is at the stream's rate (a caller bug if not)."""
    if frame.sample_rate != rate:
        raise ValueError(
            f"audio at {frame.sample_rate} Hz for a {rate} Hz stream: resample before send()"
        )
    return frame.pcm
