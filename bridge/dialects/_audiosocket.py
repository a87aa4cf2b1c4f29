"""Asterisk AudioSocket over TCP (PROTOCOLS.md §2).

Framing: ``kind:u8 | length:u16 big-endian | payload[length]``; the header is always
3 bytes. TCP is a byte stream, so :meth:`receive` takes any chunk (partial headers,
several frames at once) and keeps the remainder; one whole frame per chunk, by far the
most common case, takes a short fast path.

Roles:

* :class:`AudioSocketApp` is bridge's side: Asterisk dials it (Asterisk is the TCP
  client, bridge the server; it is the *app* role because Asterisk owns the call).
* :class:`AudioSocketPlatform` emulates Asterisk, for the test caller and for the
  ``audiosocket`` WebSocket encapsulation toward apps.

What may cross the wire in each direction is the part of the protocol that ends calls,
so it is enforced on both sides:

* Asterisk -> server: ``0x01`` UUID (first, once), audio ``0x10``-``0x18``, ``0x03``
  DTMF, and the documented-but-never-sent ``0xFF`` error. ``0x02`` "silence" exists only
  in the Go library and is ignored.
* server -> Asterisk: **only** ``0x00`` hangup and audio ``0x10``-``0x18`` with a
  non-empty payload; Asterisk ends the session on anything else (§2 pitfalls, [AST]
  ``receive_frame``). ``AudioSocketApp.send`` therefore returns ``[]`` for every event
  the wire cannot carry (DTMF, marks, clear, start, ...) and never emits an empty audio
  frame.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Final, NoReturn

import attrs

from .._errors import DialectError, UnsupportedMessage
from ..media import Frame
from ._events import Audio, Dtmf, Event, Hangup, Message, Start, Stop
from ._sln import DTMF_DIGITS
from ._spec import (
    AppLeg,
    CallLeg,
    Capabilities,
    ChunkRule,
    DialectSpec,
    PlatformParams,
    WireFormat,
)

__all__ = [
    "AUDIO_KIND_RATES",
    "HANGUP_FRAME",
    "KIND_AUDIO_8K",
    "KIND_DTMF",
    "KIND_ERROR",
    "KIND_HANGUP",
    "KIND_SILENCE",
    "KIND_UUID",
    "RATE_AUDIO_KINDS",
    "SPEC",
    "AudioSocketApp",
    "AudioSocketPlatform",
    "audio_kind",
    "error_reason",
]

DIALECT: Final = "audiosocket"

KIND_HANGUP: Final = 0x00
KIND_UUID: Final = 0x01
KIND_SILENCE: Final = 0x02
KIND_DTMF: Final = 0x03
KIND_AUDIO_8K: Final = 0x10
KIND_ERROR: Final = 0xFF

AUDIO_KIND_RATES: Final[Mapping[int, int]] = {
    0x10: 8000,
    # 0x11 is 12 kHz, not 16 kHz: an early doc PR had it wrong; res_audiosocket.h and
    # the merged docs use 0x12 for 16 kHz (§2 pitfalls).
    0x11: 12000,
    0x12: 16000,
    0x13: 24000,
    0x14: 32000,
    0x15: 44100,
    0x16: 48000,
    0x17: 96000,
    0x18: 192000,
}
"""Audio kind -> sample rate (slin, PCM16 little-endian mono)."""

RATE_AUDIO_KINDS: Final[Mapping[int, int]] = {rate: kind for kind, rate in AUDIO_KIND_RATES.items()}
"""Sample rate -> audio kind."""

SPEC: Final = DialectSpec(
    name=DIALECT,
    platform=f"{__name__}:AudioSocketPlatform",
    app=f"{__name__}:AudioSocketApp",
    dialer="platform",
    subprotocol=None,
    greets_first="platform",
    start=("UUID (kind 0x01)",),
    stop=(
        "Asterisk closes the TCP connection (it never sends 0x00); the server sends "
        "00 00 00 or closes"
    ),
    formats=tuple(
        WireFormat("slin" if rate == 8000 else f"slin{rate // 1000}", "l16le", rate)
        for rate in AUDIO_KIND_RATES.values()
    ),
    default_format="slin",
    format_choice="Asterisk: the channel's slin rate, in the kind of every audio frame",
    ptime_ms=20,
    # Asterisk writes each server message to the channel as one frame, on arrival: the
    # server paces (any size is taken; a real-time frame per message is the rule).
    send_rule=ChunkRule(frames="any", multiple_of_bytes=2, min_bytes=2, max_bytes=0xFFFE),
    capabilities=Capabilities(
        marks="none",
        marks_on_clear="none",
        settles_marks=False,
        clear=False,
        cleared_ack=False,
        dtmf_in=True,
        dtmf_out=False,
        flow_control=False,
        drained=False,
        stats=False,
        hangup=True,
        resume=False,
    ),
    transport="tcp",
    call_leg=CallLeg(listener="audiosocket", far_side_buffers=False, hangup_on_close=True),
    app_leg=AppLeg(default_codec="l16"),
    # Over a WebSocket app leg: AudioSocket frames in BINARY, sln control in TEXT.
    make_platform="bridge.dialects._encapsulated:audiosocket_platform",
    make_app="bridge.dialects._encapsulated:audiosocket_app",
    make_native_platform=f"{__name__}:native_platform",
)
"""Capabilities are the TCP wire's; the WebSocket encapsulation adds sln's TEXT control
(marks, clear, stats, ...) beside the AudioSocket frames."""

# Indexed by kind - 0x10 on the per-frame path (a tuple index beats a dict lookup).
_RATES: Final = tuple(AUDIO_KIND_RATES[k] for k in range(0x10, 0x19))

HANGUP_FRAME: Final = b"\x00\x00\x00"
"""``kind 0x00, length 0``: the server ends the session (§2)."""

_MAX_WIRE_PAYLOAD: Final = 0xFFFF
# Largest even payload that fits the u16 length: longer PCM is split into several
# frames (still one bytes object, so still one send).
_MAX_AUDIO_CHUNK: Final = 0xFFFE

_ERROR_FLAGS: Final = ((0x01, "caller_hangup"), (0x02, "frame_forwarding"), (0x04, "memory"))


def audio_kind(sample_rate: int) -> int:
    """The AudioSocket audio kind for ``sample_rate``; ``ValueError`` if it has none."""
    try:
        return RATE_AUDIO_KINDS[sample_rate]
    except KeyError:
        raise ValueError(f"AudioSocket has no audio kind for {sample_rate} Hz") from None


def _check_rate(_inst: object, _attr: attrs.Attribute[int], value: int) -> None:
    audio_kind(value)


def error_reason(code: int | None) -> str:
    """``Stop.reason`` for a ``0xFF`` error frame: ``"error"`` plus the flags set.

    The bit flags (0x01 caller hangup, 0x02 frame forwarding, 0x04 memory) are from
    the Go library [CYC]; current Asterisk never sends 0xFF (§2).
    """
    if code is None:
        return "error"
    names = [name for bit, name in _ERROR_FLAGS if code & bit]
    rest = code & ~0x07
    if rest:
        names.append(f"0x{rest:02x}")
    return f"error 0x{code:02x}: {', '.join(names) if names else 'no flags'}"


def _audio_frames(kind: int, pcm: bytes) -> bytes:
    """Header + payload as ONE bytes object (one send: older Asterisk mishandled split
    reads, §2 "Robustness"). Empty PCM gives ``b""``: an empty audio frame would end
    the session."""
    n = len(pcm)
    if n & 1:
        raise ValueError(f"PCM16 of odd length {n}")
    if n <= _MAX_AUDIO_CHUNK:
        return bytes((kind, n >> 8, n & 0xFF)) + pcm if n else b""
    parts = []
    for i in range(0, n, _MAX_AUDIO_CHUNK):
        chunk = pcm[i : i + _MAX_AUDIO_CHUNK]
        parts.append(bytes((kind, len(chunk) >> 8, len(chunk) & 0xFF)))
        parts.append(chunk)
    return b"".join(parts)


@attrs.define(slots=True)
class _Parser:
    """The stream framing shared by both roles; subclasses handle complete frames."""

    max_payload_bytes: int = attrs.field(
        default=8192, kw_only=True, validator=attrs.validators.ge(1)
    )
    """Largest declared payload accepted (20 ms at 192 kHz is 7680 B)."""
    _buf: bytearray = attrs.field(factory=bytearray, init=False)
    _failed: str | None = attrs.field(default=None, init=False)

    def receive(self, message: Message) -> list[Event]:
        """Events of every complete frame in ``message`` (any TCP chunk).

        After a ``DialectError`` the stream position is lost: the connection stays
        failed and every later call raises again.
        """
        # Fast path: nothing buffered and exactly one whole frame.
        if message.__class__ is bytes and not self._buf and self._failed is None:
            assert isinstance(message, bytes)
            n = len(message)
            if n >= 3:
                length = (message[1] << 8) | message[2]
                if n == length + 3 and length <= self.max_payload_bytes:
                    return self._frame(message[0], message[3:])
        return self._receive_slow(message)

    def _receive_slow(self, message: Message) -> list[Event]:
        if self._failed is not None:
            raise DialectError(DIALECT, f"connection already failed: {self._failed}")
        if isinstance(message, str):
            self._fail("text message on a binary protocol")
        buf = self._buf
        buf += message
        events: list[Event] = []
        pos = 0
        n = len(buf)
        limit = self.max_payload_bytes
        try:
            while n - pos >= 3:
                length = (buf[pos + 1] << 8) | buf[pos + 2]
                if length > limit:
                    # Checked on the header alone: a hostile peer cannot make us buffer
                    # up to 64 KiB before we notice.
                    raise DialectError(
                        DIALECT,
                        f"frame kind 0x{buf[pos]:02x} declares {length} payload bytes, "
                        f"over the limit of {limit}",
                    )
                end = pos + 3 + length
                if end > n:
                    break
                events.extend(self._frame(buf[pos], bytes(buf[pos + 3 : end])))
                pos = end
        except DialectError as exc:
            self._failed = exc.message
            buf.clear()
            raise
        del buf[:pos]
        return events

    def _fail(self, message: str, cls: type[DialectError] = DialectError) -> NoReturn:
        self._failed = message
        self._buf.clear()
        raise cls(DIALECT, message)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held for the next chunk."""
        return len(self._buf)

    def _frame(self, kind: int, payload: bytes) -> list[Event]:  # pragma: no cover
        raise NotImplementedError


@attrs.define(slots=True)
class AudioSocketApp(_Parser):
    """bridge's (server) side of an AudioSocket connection.

    ``AudioSocketApp(sample_rate=8000, *, max_payload_bytes=8192)``. ``sample_rate`` is
    the rate :meth:`send_audio` labels its frames with; it follows the kind of the last
    audio frame received (Asterisk's kind follows its frame format, §2), and may be set.
    """

    sample_rate: int = attrs.field(default=8000, validator=_check_rate)
    uuid: str | None = attrs.field(default=None, init=False)
    """The call UUID from the first frame (canonical lower-case form)."""
    error_code: int | None = attrs.field(default=None, init=False)
    """The code byte of a received ``0xFF`` error frame, if it had one."""

    def _frame(self, kind: int, payload: bytes) -> list[Event]:
        if 0x10 <= kind <= 0x18:
            if self.uuid is None:
                self._fail(f"audio (kind 0x{kind:02x}) before the UUID frame")
            if not payload:
                return []  # nothing to play; never seen from Asterisk
            if len(payload) & 1:
                self._fail(f"audio frame of {len(payload)} bytes is not whole PCM16 samples")
            rate = _RATES[kind - 0x10]
            if rate != self.sample_rate:
                self.sample_rate = rate
            return [Audio(Frame(payload, rate))]
        if kind == KIND_UUID:
            if self.uuid is not None:
                self._fail("second UUID frame")
            if len(payload) != 16:
                self._fail(f"UUID frame of {len(payload)} bytes, expected 16")
            self.uuid = str(uuid.UUID(bytes=payload))
            return [
                Start(
                    stream_id=self.uuid,
                    call_id=self.uuid,
                    sample_rate=self.sample_rate,
                    encoding="slin",
                )
            ]
        if self.uuid is None:
            self._fail(f"first frame is kind 0x{kind:02x}, expected the UUID (0x01)")
        if kind == KIND_DTMF:
            if len(payload) != 1:
                self._fail(f"DTMF frame of {len(payload)} bytes, expected 1")
            digit = chr(payload[0]).upper()  # Asterisk may spell A-D in lower case
            if digit not in DTMF_DIGITS:
                self._fail(f"DTMF frame carries {payload!r}, not one of 0-9*#A-D")
            return [Dtmf(digit)]
        if kind == KIND_HANGUP:
            return [Stop("call_hangup")]
        if kind == KIND_ERROR:
            self.error_code = payload[0] if payload else None
            return [Stop(error_reason(self.error_code))]
        if kind == KIND_SILENCE:
            return []  # a Go-library constant only (§2); nothing to do
        self._fail(f"unknown frame kind 0x{kind:02x}")

    def send(self, event: Event) -> list[Message]:
        """Only hangup and audio may go to Asterisk; everything else gives ``[]``."""
        if isinstance(event, Audio):
            frame = event.frame
            data = _audio_frames(audio_kind(frame.sample_rate), frame.pcm)
            return [data] if data else []
        if isinstance(event, Stop | Hangup):
            return [HANGUP_FRAME]
        return []

    def send_audio(self, pcm: bytes) -> bytes:
        """One audio frame (kind from ``sample_rate``); ``b""`` for empty PCM (send nothing)."""
        n = len(pcm)
        if 0 < n <= _MAX_AUDIO_CHUNK and not n & 1:
            return bytes((_KINDS_BY_RATE[self.sample_rate], n >> 8, n & 0xFF)) + pcm
        return _audio_frames(audio_kind(self.sample_rate), pcm)


_KINDS_BY_RATE: Final = dict(RATE_AUDIO_KINDS)


def _parse_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise DialectError(DIALECT, f"stream id {value!r} is not a UUID") from None


def _canonical_uuid(value: str) -> str:
    return str(_parse_uuid(value))


@attrs.define(slots=True)
class AudioSocketPlatform(_Parser):
    """Asterisk's side, emulated: ``AudioSocketPlatform(call_uuid, sample_rate=8000)``.

    Sends the UUID frame for ``Start``, audio with the kind of its rate, ``0x03`` DTMF.
    ``Stop`` gives ``[]``: Asterisk never sends ``0x00``, it just closes the TCP
    connection, so the caller closes the socket. Receives what a server may send:
    audio (``Audio``) and ``0x00`` (``Hangup``: the app ends the call); any other kind,
    or an empty audio payload, is something real Asterisk rejects by ending the session,
    so it raises (``UnsupportedMessage`` for kinds that exist but are not allowed from
    a server, ``DialectError`` otherwise).
    """

    call_uuid: str = attrs.field(converter=_canonical_uuid)
    sample_rate: int = attrs.field(default=8000, validator=_check_rate)

    def start_event(self, metadata: Mapping[str, object] | None = None) -> Start:
        """The ``Start`` this call sends (both ids are the UUID, as Asterisk has no other)."""
        return Start(
            stream_id=self.call_uuid,
            call_id=self.call_uuid,
            sample_rate=self.sample_rate,
            encoding="slin",
            metadata=dict(metadata or {}),
        )

    def _frame(self, kind: int, payload: bytes) -> list[Event]:
        if 0x10 <= kind <= 0x18:
            if not payload:
                self._fail(
                    f"empty audio frame (kind 0x{kind:02x}); Asterisk ends the session on one"
                )
            if len(payload) & 1:
                self._fail(f"audio frame of {len(payload)} bytes is not whole PCM16 samples")
            return [Audio(Frame(payload, _RATES[kind - 0x10]))]
        if kind == KIND_HANGUP:
            return [Hangup()]
        if kind in (KIND_UUID, KIND_SILENCE, KIND_DTMF, KIND_ERROR):
            self._fail(
                f"kind 0x{kind:02x} may not be sent to Asterisk (only 0x00 and 0x10-0x18)",
                UnsupportedMessage,
            )
        self._fail(f"unknown frame kind 0x{kind:02x}")

    def send(self, event: Event) -> list[Message]:
        if isinstance(event, Audio):
            frame = event.frame
            data = _audio_frames(audio_kind(frame.sample_rate), frame.pcm)
            return [data] if data else []
        if isinstance(event, Start):
            return [b"\x01\x00\x10" + _parse_uuid(event.stream_id).bytes]
        if isinstance(event, Dtmf):
            digit = event.digit
            if len(digit) != 1 or digit not in DTMF_DIGITS:
                raise ValueError(f"not a DTMF digit: {digit!r}")
            return [b"\x03\x00\x01" + digit.encode("ascii")]
        return []

    def send_audio(self, pcm: bytes) -> bytes:
        return _audio_frames(_KINDS_BY_RATE[self.sample_rate], pcm)


def native_platform(params: PlatformParams) -> AudioSocketPlatform:
    """Asterisk over TCP (``bridge call``): AudioSocket has one id, a UUID, for the call
    and the stream; ``params.stream_id`` must be one."""
    return AudioSocketPlatform(params.stream_id, params.sample_rate)
