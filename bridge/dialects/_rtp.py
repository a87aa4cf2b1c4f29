"""RTP media with RFC 4733 DTMF (PROTOCOLS.md §7; RFC 3550 §5.1, RFC 3551, RFC 4733).

RTP is symmetric, so one class, :class:`RtpSession`, serves both roles (``RtpPlatform``
and ``RtpApp`` are aliases). It has no start or stop message: the stream's lifetime
comes from outside (SIP/SDP or bridge's ``POST /v1/streams``), so ``receive`` never
emits ``Start``/``Stop`` and ``send`` gives ``[]`` for them.

Receive policy (a hostile peer must not crash it, and a real one sends more than we
negotiate):

* The fixed header, CSRC list, X extension and P padding are validated (RFC 3550
  §5.1, §5.3.1) and each failure is a ``DialectError`` naming the field.
* Audio of the configured payload type -> ``Audio`` (PCM16LE), with ``seq`` and
  ``timestamp`` for the jitter buffer above. ``last_ssrc``/``last_seq``/
  ``last_timestamp`` are updated by every valid packet, for latching.
* The configured telephone-event payload type -> RFC 4733 handling (below).
* Any other payload type (comfort noise PT 13, a codec we did not negotiate, RTCP
  multiplexed on the RTP port per RFC 5761) is **counted and ignored**:
  ``unknown_payload_types`` / ``first_unknown_payload_type`` / ``rtcp_packets``. A
  peer's SDP mismatch then shows as a metric instead of tearing the call down.

RFC 4733 receive: events are keyed on ``(ssrc, timestamp)``; one ``Dtmf(digit,
duration_ms)`` is emitted per event **when it ends** (the first E=1 packet), so the
duration is known; the two retransmissions of the end packet, late updates and
reordered packets of an event already reported are dropped. A lost end (all three end
packets lost) is resolved, as Asterisk does, by: a telephone-event packet with a new
timestamp from the same SSRC, or audio from that SSRC whose timestamp is more than
``dtmf_timeout`` samples past the event's end (Asterisk's ``dtmftimeout``, 3000 samples
at 8 kHz), or an explicit :meth:`RtpSession.flush_dtmf`. Long events split into
segments (RFC 4733 §2.5.1.3: a new timestamp right where the previous segment ended, same
event code) are reported once with the total duration. Events 16+ (flash, tones) are
ignored.

RFC 4733 send: see :meth:`RtpSession.send`.
"""

from __future__ import annotations

import collections
import secrets
import struct
from collections.abc import Callable
from typing import Final, Literal

import attrs

from .._errors import DialectError
from ..media import PCMU, Frame, audioop, codec_for
from ._events import Audio, Dtmf, Event, Message
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
    "DEFAULT_PAYLOAD_TYPES",
    "SPEC",
    "RtpApp",
    "RtpPlatform",
    "RtpSession",
]

DIALECT: Final = "rtp"

Codec = Literal["pcmu", "pcma", "l16"]

DEFAULT_PAYLOAD_TYPES: Final = {"pcmu": 0, "pcma": 8, "l16": 96}
"""RFC 3551 static PTs for G.711; L16 at 8/16 kHz needs a dynamic one (96-127)."""

ENCODING_NAMES: Final = {"pcmu": "PCMU", "pcma": "PCMA", "l16": "L16"}
"""RFC 3551 encoding names (``a=rtpmap``), as announced in an encapsulation's start."""

L16_RATES: Final = (8000, 12000, 16000, 24000, 32000, 44100, 48000)
"""L16 rates bridge offers on RTP (any rate is RTP; these are the ones worth naming)."""

SPEC: Final = DialectSpec(
    name=DIALECT,
    platform=f"{__name__}:RtpSession",
    app=f"{__name__}:RtpSession",
    dialer="either",
    subprotocol=None,
    greets_first="none",
    start=(),
    stop="no message: the stream's life comes from signalling (SDP, POST/DELETE /v1/streams)",
    formats=(
        WireFormat("PCMU", "pcmu", 8000),
        WireFormat("PCMA", "pcma", 8000),
        *(WireFormat("L16", "l16be", rate) for rate in L16_RATES),
    ),
    default_format="PCMU",
    format_choice="signalling: SDP, or the codec and sample_rate of POST /v1/streams",
    ptime_ms=20,
    send_rule=ChunkRule(frames="any", multiple_of_bytes=1),
    capabilities=Capabilities(
        marks="none",
        marks_on_clear="none",
        settles_marks=False,
        clear=False,
        cleared_ack=False,
        dtmf_in=True,
        dtmf_out=True,
        flow_control=False,
        drained=False,
        stats=False,
        hangup=False,
        resume=False,
    ),
    transport="udp",
    call_leg=CallLeg(listener="rtp", far_side_buffers=False, hangup_on_close=False),
    app_leg=AppLeg(default_codec="pcmu"),
    # Over a WebSocket app leg: RTP packets in BINARY, sln control in TEXT.
    make_platform="bridge.dialects._encapsulated:rtp_platform",
    make_app="bridge.dialects._encapsulated:rtp_app",
    make_native_platform=f"{__name__}:native_platform",
)
"""Capabilities are the UDP wire's (DTMF both ways as RFC 4733); the WebSocket
encapsulation adds sln's TEXT control beside the packets."""

_HEADER: Final = struct.Struct("!BBHII")
_DTMF_PACKET: Final = struct.Struct("!BBHIIBBH")
_EVENT: Final = struct.Struct("!BBH")
_EXT: Final = struct.Struct("!HH")

_SEQ_MASK: Final = 0xFFFF
_TS_MASK: Final = 0xFFFFFFFF
_DTMF_VOLUME: Final = 10  # -dBm0; what Asterisk sends (0xa in res_rtp_asterisk.c)
_MAX_EVENT_DURATION: Final = 0xFFFF  # u16 timestamp units (RFC 4733 §2.3.5)
_DEFAULT_DTMF_MS: Final = 100  # Asterisk's default emulated digit length
_DTMF_TIMEOUT_8K: Final = 3000  # Asterisk's default dtmftimeout, in 8 kHz samples
_EVENT_DIGITS: Final = "0123456789*#ABCD"  # RFC 4733 §3.2: events 0-15
_DIGIT_EVENTS: Final = {d: i for i, d in enumerate(_EVENT_DIGITS)}
_DONE_KEYS: Final = 16  # how many finished (ssrc, timestamp) keys to remember


def _random_bits(bits: int) -> int:
    return secrets.randbits(bits)


@attrs.define(slots=True, init=False)
class RtpSession:
    """One RTP media stream, both directions.

    ``RtpSession(codec, sample_rate=8000, payload_type=None, dtmf_payload_type=101,
    ssrc=None, ptime_ms=20, initial_seq=None, initial_timestamp=None)``; ``None`` means
    the RFC 3551 default PT (0 PCMU, 8 PCMA, 96 L16) or a random value (RFC 3550 §5.1:
    SSRC, sequence number and timestamp start random). ``dtmf_payload_type=None``
    disables RFC 4733 both ways.
    """

    codec: Codec
    sample_rate: int
    payload_type: int
    dtmf_payload_type: int | None
    ssrc: int
    ptime_ms: int
    dtmf_timeout: int
    """Samples after an event's last known end before audio resolves a lost E bit."""

    last_ssrc: int | None = attrs.field(default=None)
    """SSRC of the last valid packet received (for latching above)."""
    last_seq: int | None = attrs.field(default=None)
    last_timestamp: int | None = attrs.field(default=None)
    unknown_payload_types: int = attrs.field(default=0)
    """Valid packets ignored because of their payload type."""
    first_unknown_payload_type: int | None = attrs.field(default=None)
    rtcp_packets: int = attrs.field(default=0)
    """RTCP packets seen on this port (RFC 5761 demultiplexing) and ignored."""

    _seq: int = attrs.field(default=0)
    _ts: int = attrs.field(default=0)
    _marker: int = attrs.field(default=0x80)  # the first packet starts a talkspurt
    # The payload codec (bridge.media: G.711, or L16 big-endian per RFC 3551 §4.5.11).
    _encode: Callable[[bytes, int], bytes] = attrs.field(default=PCMU.raw_encode)
    _decode: Callable[[bytes], bytes] = attrs.field(default=PCMU.decode)
    # RFC 4733 receive state: the event in progress, and recently finished keys.
    _ev_key: tuple[int, int] | None = attrs.field(default=None)
    _ev_code: int = attrs.field(default=0)
    _ev_duration: int = attrs.field(default=0)
    _ev_before: int = attrs.field(default=0)  # duration of earlier segments (long events)
    _ev_done: collections.deque[tuple[int, int]] = attrs.field(
        factory=lambda: collections.deque(maxlen=_DONE_KEYS)
    )

    def __init__(
        self,
        codec: Codec,
        sample_rate: int = 8000,
        payload_type: int | None = None,
        dtmf_payload_type: int | None = 101,
        ssrc: int | None = None,
        ptime_ms: int = 20,
        initial_seq: int | None = None,
        initial_timestamp: int | None = None,
    ) -> None:
        if codec not in DEFAULT_PAYLOAD_TYPES:
            raise ValueError(f"unknown RTP codec {codec!r} (pcmu, pcma, l16)")
        if codec != "l16" and sample_rate != 8000:
            raise ValueError(f"{codec} has an 8000 Hz RTP clock (RFC 3551), not {sample_rate}")
        if sample_rate <= 0 or ptime_ms <= 0:
            raise ValueError("sample_rate and ptime_ms must be positive")
        pt = DEFAULT_PAYLOAD_TYPES[codec] if payload_type is None else payload_type
        for name, value in (("payload_type", pt), ("dtmf_payload_type", dtmf_payload_type)):
            if value is not None and not 0 <= value <= 127:
                raise ValueError(f"{name} {value} is not 0-127")
        if pt == dtmf_payload_type:
            raise ValueError(f"audio and telephone-event share payload type {pt}")
        self.__attrs_init__(
            codec=codec,
            sample_rate=sample_rate,
            payload_type=pt,
            dtmf_payload_type=dtmf_payload_type,
            ssrc=(_random_bits(32) if ssrc is None else ssrc) & _TS_MASK,
            ptime_ms=ptime_ms,
            dtmf_timeout=_DTMF_TIMEOUT_8K * sample_rate // 8000,
            seq=(_random_bits(16) if initial_seq is None else initial_seq) & _SEQ_MASK,
            ts=(_random_bits(32) if initial_timestamp is None else initial_timestamp) & _TS_MASK,
            encode=codec_for(codec).raw_encode,
            decode=codec_for(codec).decode,
        )

    # ---------------------------------------------------------------------- sending

    @property
    def next_seq(self) -> int:
        """Sequence number of the next packet sent."""
        return self._seq

    @property
    def next_timestamp(self) -> int:
        """RTP timestamp of the next audio packet sent."""
        return self._ts

    def start_talkspurt(self) -> None:
        """Set the marker bit on the next audio packet (after a send gap, RFC 3551 §4.1)."""
        self._marker = 0x80

    def send_audio(self, pcm: bytes) -> bytes:
        """One RTP packet: 12-byte header + encoded ``pcm`` (PCM16LE at ``sample_rate``).

        Empty ``pcm`` gives ``b""`` (nothing to send: a payload-less packet would only
        confuse the peer's jitter buffer).
        """
        if not pcm:
            return b""
        try:
            # The codec's audioop function itself: the per-frame path saves a call.
            payload = self._encode(pcm, 2)
        except audioop.error:
            raise ValueError(f"PCM16 of odd length {len(pcm)}") from None
        seq = self._seq
        ts = self._ts
        packet = _HEADER.pack(0x80, self._marker | self.payload_type, seq, ts, self.ssrc) + payload
        self._marker = 0
        self._seq = (seq + 1) & _SEQ_MASK
        self._ts = (ts + (len(pcm) >> 1)) & _TS_MASK
        return packet

    def send(self, event: Event) -> list[Message]:
        """``Audio`` -> one packet; ``Dtmf`` -> an RFC 4733 packet train; else ``[]``.

        The DTMF train follows Asterisk (res_rtp_asterisk.c) in shape: every packet
        carries the event's start timestamp (the timestamp the next audio packet would
        have had), the first has the M bit, volume is 10, and each ptime adds one
        ptime of samples to the duration; the end packet (E=1) is sent three times with
        the same final duration. With ``m = ceil(duration / ptime)`` (duration from the
        event, 100 ms when ``None``, at least one ptime, at most 0xFFFF units), the
        train is ``m`` update packets with durations ``ptime, 2 ptime, ... m ptime``
        followed by three end packets with duration ``m ptime``: ``m + 3`` packets.

        Pacing belongs to the caller: packet ``k < m`` goes out at tick ``k`` *instead
        of* audio, and the three end packets together at tick ``m``. Audio timestamps
        skip ahead past the event: the next audio packet is stamped ``start + m ptime``
        (so it belongs to tick ``m``), and sequence numbers continue after the train.
        """
        if isinstance(event, Audio):
            frame = event.frame
            if frame.sample_rate != self.sample_rate:
                raise ValueError(
                    f"frame at {frame.sample_rate} Hz on a {self.sample_rate} Hz RTP session"
                )
            return [self.send_audio(frame.pcm)] if frame.pcm else []
        if isinstance(event, Dtmf):
            return self._dtmf_train(event)
        return []

    def _dtmf_train(self, event: Dtmf) -> list[Message]:
        pt = self.dtmf_payload_type
        if pt is None:
            return []
        code = _DIGIT_EVENTS.get(event.digit)
        if code is None or len(event.digit) != 1:
            raise ValueError(f"not a DTMF digit: {event.digit!r}")
        step = self.sample_rate * self.ptime_ms // 1000
        ms = _DEFAULT_DTMF_MS if event.duration_ms is None else event.duration_ms
        wanted = min(max(ms * self.sample_rate // 1000, step), _MAX_EVENT_DURATION)
        m = max(1, min(-(-wanted // step), _MAX_EVENT_DURATION // step))
        ts = self._ts
        seq = self._seq
        ssrc = self.ssrc
        packets: list[Message] = []
        for k in range(m):
            marker = 0x80 if k == 0 else 0
            packets.append(
                _DTMF_PACKET.pack(
                    0x80, marker | pt, seq, ts, ssrc, code, _DTMF_VOLUME, (k + 1) * step
                )
            )
            seq = (seq + 1) & _SEQ_MASK
        end_flags = 0x80 | _DTMF_VOLUME
        for _ in range(3):  # "that's the magical number" (Asterisk); RFC 4733 §2.5.1.4
            packets.append(_DTMF_PACKET.pack(0x80, pt, seq, ts, ssrc, code, end_flags, m * step))
            seq = (seq + 1) & _SEQ_MASK
        self._seq = seq
        self._ts = (ts + m * step) & _TS_MASK
        return packets

    # -------------------------------------------------------------------- receiving

    def receive(self, message: Message) -> list[Event]:
        """Events of one datagram: ``Audio``, ``Dtmf`` (once per event), or ``[]``."""
        if message.__class__ is not bytes:
            if isinstance(message, str):
                raise DialectError(DIALECT, "text message on a binary protocol")
            message = bytes(message)
        assert isinstance(message, bytes)
        if len(message) < 12:
            return self._short(message)
        b0, b1, seq, ts, ssrc = _HEADER.unpack_from(message)
        if b0 == 0x80:  # version 2, no padding, extension or CSRCs: the usual packet
            payload = message[12:]
        else:
            if 192 <= b1 <= 223 and b0 >> 6 == 2:  # RTCP SR/RR/SDES/BYE/APP (RFC 5761 §4)
                self.rtcp_packets += 1
                return []
            payload = _payload(message, b0)
        self.last_ssrc = ssrc
        self.last_seq = seq
        self.last_timestamp = ts
        pt = b1 & 0x7F
        if pt == self.payload_type:
            events: list[Event] = []
            if self._ev_key is not None and self._ev_key[0] == ssrc:
                # Audio long past the event's end: its E packets were all lost.
                end = self._ev_key[1] + self._ev_duration + self.dtmf_timeout
                if 0 < (ts - end) & _TS_MASK < 0x80000000:
                    events.append(self._finish_event())
            if payload:
                try:
                    pcm = self._decode(payload)
                except ValueError:  # L16 only: G.711 is one byte per sample
                    raise DialectError(
                        DIALECT, f"L16 payload of {len(payload)} bytes is not whole samples"
                    ) from None
                events.append(Audio(Frame(pcm, self.sample_rate), seq, ts))
            return events
        if pt == self.dtmf_payload_type:
            return self._telephone_event(ssrc, ts, payload)
        if 192 <= b1 <= 223:
            self.rtcp_packets += 1
            return []
        self.unknown_payload_types += 1
        if self.first_unknown_payload_type is None:
            self.first_unknown_payload_type = pt
        return []

    def _short(self, message: bytes) -> list[Event]:
        # An RTCP packet can be 8 bytes (RR with no report blocks, RFC 3550 §6.4.2).
        if len(message) >= 8 and message[0] >> 6 == 2 and 192 <= message[1] <= 223:
            self.rtcp_packets += 1
            return []
        raise DialectError(
            DIALECT, f"packet of {len(message)} bytes is shorter than the 12-byte RTP header"
        )

    def _telephone_event(self, ssrc: int, ts: int, payload: bytes) -> list[Event]:
        if len(payload) < 4:
            raise DialectError(
                DIALECT, f"telephone-event payload of {len(payload)} bytes, expected 4"
            )
        code, flags, duration = _EVENT.unpack_from(payload)
        if code >= 16:
            return []  # flash and tones: not DTMF digits (RFC 4733 §3.2); receivers may ignore
        key = (ssrc, ts)
        if key in self._ev_done:
            return []  # end retransmission, or a late update of a reported event
        events: list[Event] = []
        current = self._ev_key
        if current is not None and current != key:
            if (
                current[0] == ssrc
                and code == self._ev_code
                and ts == (current[1] + self._ev_duration) & _TS_MASK
                and self._ev_duration > 0
            ):
                # The next segment of a long event (RFC 4733 §2.5.1.3): same digit.
                self._ev_done.append(current)
                self._ev_before += self._ev_duration
                self._ev_key = key
                self._ev_duration = duration
            else:
                # A new event while one is open: the open one lost its end packets.
                events.append(self._finish_event())
        if self._ev_key is None:
            self._ev_key = key
            self._ev_code = code
            self._ev_duration = duration
            self._ev_before = 0
        elif duration > self._ev_duration:
            self._ev_duration = duration
        if flags & 0x80:  # E bit
            events.append(self._finish_event())
        return events

    def _finish_event(self) -> Dtmf:
        assert self._ev_key is not None
        self._ev_done.append(self._ev_key)
        total = self._ev_before + self._ev_duration
        self._ev_key = None
        self._ev_before = 0
        return Dtmf(_EVENT_DIGITS[self._ev_code], total * 1000 // self.sample_rate)

    def flush_dtmf(self) -> list[Event]:
        """Report the event still open (its end never came), e.g. when the stream ends."""
        return [self._finish_event()] if self._ev_key is not None else []


def _payload(message: bytes, b0: int) -> bytes:
    """The payload of a packet with CSRCs, an extension or padding (RFC 3550 §5.1, §5.3.1)."""
    if b0 >> 6 != 2:
        raise DialectError(DIALECT, f"RTP version {b0 >> 6}, expected 2")
    n = len(message)
    start = 12 + 4 * (b0 & 0x0F)
    if start > n:
        raise DialectError(DIALECT, f"CSRC count {b0 & 0x0F} needs {start} bytes, packet has {n}")
    if b0 & 0x10:
        if start + 4 > n:
            raise DialectError(DIALECT, "X bit set but the extension header is truncated")
        _profile, words = _EXT.unpack_from(message, start)
        start += 4 + 4 * words
        if start > n:
            raise DialectError(
                DIALECT, f"extension of {words} words runs past the end of the packet"
            )
    end = n
    if b0 & 0x20:
        pad = message[-1]
        if pad == 0:
            raise DialectError(DIALECT, "P bit set but the pad count is 0")
        if pad > n - start:
            raise DialectError(
                DIALECT, f"pad count {pad} exceeds the {n - start} bytes after the header"
            )
        end -= pad
    return message[start:end]


RtpPlatform = RtpSession
RtpApp = RtpSession


def native_platform(params: PlatformParams) -> RtpSession:
    """An RTP peer over UDP (``bridge call``), in the resolved codec (``pcmu``/``pcma``/
    ``l16``) and rate."""
    codec = params.codec
    assert codec in DEFAULT_PAYLOAD_TYPES
    return RtpSession(codec, params.sample_rate, ptime_ms=params.ptime_ms)  # type: ignore[arg-type]
