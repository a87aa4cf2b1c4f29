"""The RTP call leg: one UDP port, one RTP session, a jitter buffer, latching.

RTP has no connection and no start or stop message (PROTOCOLS.md §7): the stream is
opened out of band (``POST /v1/streams``) and ends when the media stops
(``rtp_timeout``), when the API deletes it, or when the app hangs up.

The socket I/O is the transport's (``transports.DatagramSocket``: the batched
non-blocking receive loop, ``sendto`` that drops on EAGAIN, the counters of both); this
module is what RTP makes of the datagrams: latching, the session, the jitter buffer.

Receive path (the reader task, one per stream)::

    DatagramSocket.serve_reader (wait_readable, then a batch of non-blocking recvfrom)
        -> _on_datagram: latching -> RtpSession.receive
        -> Audio: JitterBuffer.push, then every frame it has ready -> sink (at once when
                  in order; a gap holds what follows for the buffer's adaptive wait)
        -> Dtmf:  sink.on_call_event(Dtmf)   (at once: RFC 4733 reports it at its end)

The app's side of the stream is not clocked by the playout grid (that grid is phased to
the *app's* audio and moves with it): the caller's audio goes on as it arrives in order,
and ``poll`` on the stream's tick only settles gaps whose wait has run out. So the app
gets every packet exactly once and concealment only where a packet was really lost.

Send path (the shared ticker, no task): ``poll`` pops one frame from the jitter buffer
for the app, then the Stream calls ``send_audio`` with the frame for the caller, which
goes out with ``DatagramSocket.send``: one synchronous non-blocking ``sendto`` (a Trio
``send`` costs two checkpoints, PERFORMANCE.md). A full send buffer (EAGAIN) drops the
packet and counts it: RTP is real-time, a late packet is worth nothing (RFC 3550 §2.1).

Latching (symmetric RTP, RFC 4961; the source-learning rule of Asterisk's strict RTP):

* Until a source is latched, a source (address) is accepted only after
  ``latch_packets`` sequential packets: same SSRC, each sequence number one more than the
  previous one (RFC 3550 A.1's probation). As in Asterisk's strict-RTP learning, the
  packets of the probation are not played: the one that completes it is the first to
  reach the app (``probation_dropped`` counts the others). Releasing them all at once
  instead would start the call ``latch_packets - 1`` ptimes late, and an app that
  answers in real time would carry that delay until it was trimmed.
* Once latched, packets from any other address are dropped (``foreign``). A new SSRC
  from the latched address is accepted at once: that is the same peer after a
  re-INVITE, transfer or bridge change (the jitter buffer resets on it).
* Re-latch, cautiously: a new address takes over only after ``latch_packets``
  sequential packets from it **and** after the latched source has been silent for at
  least ``relatch_silence_s`` (``RELATCH_SILENCE_S``, 1 s). A NAT rebinding or a moved
  media server gets the call back after a second; a stranger spraying packets at the
  port while the real peer talks never takes the call over. The jitter buffer resets
  when the new source has a new SSRC.

Destination: the ``remote`` given when the stream was opened, if any (the peer said
where it listens, e.g. Asterisk ExternalMedia); otherwise the latched source (symmetric
RTP / "comedia"). Before either is known, outgoing frames are dropped and counted.

Bad input: a datagram that is not RTP (``DialectError`` from the session) is counted,
logged once per stream and ignored. A hostile peer never ends the stream by sending
garbage; only the absence of accepted media for ``timeout_s`` does (``call_hangup``).
"""

from __future__ import annotations

import collections
import logging
import socket as stdlib_socket
import struct
from collections.abc import Callable
from typing import Any, Final

import attrs
import trio

from .._errors import DialectError
from ..dialects import Audio, Dtmf, Event, RtpSession
from ..dialects._rtp import SPEC as _RTP
from ..media import Frame, JitterBuffer
from ..transports import Address, DatagramSocket, format_peer
from ._legs import StreamSink

__all__ = ["RELATCH_SILENCE_S", "RtpCallLeg", "format_address"]

logger = logging.getLogger("bridge.streams.rtp")

#: How long the latched source must have been silent before another may take over
#: (long enough to ride out a burst of loss, short enough that a NAT rebinding or a
#: moved media server gets the call back before anyone hangs up).
RELATCH_SILENCE_S: Final = 1.0
# seq (bytes 2-3) and SSRC (bytes 8-11) of the fixed header (RFC 3550 §5.1).
_PEEK: Final = struct.Struct("!2xH4xI")


class _NoSink:
    """The sink before ``serve_reader`` runs (datagrams are only read by it: unused)."""

    def on_call_event(self, event: Event) -> None:
        pass

    def on_app_event(self, event: Event) -> None:
        pass


_NO_SINK: Final = _NoSink()


def format_address(addr: Address | None) -> str | None:
    """``ip:port`` (``[v6]:port``) of a socket address, or None."""
    if addr is None:
        return None
    return format_peer((str(addr[0]), int(addr[1])))


@attrs.define(slots=True, eq=False, on_setattr=attrs.setters.NO_OP)
class RtpCallLeg:
    """A ``CallLeg`` on a bound UDP socket speaking RTP with RFC 4733 DTMF.

    ``sock`` is bound (``UdpPortPool.allocate``, or a stdlib socket); the leg takes it
    over (``transports.DatagramSocket.take``: a Trio socket is detached, one owner means
    no double close of a reused descriptor number) and closes it in ``aclose``, then
    calls ``on_release`` once (``lambda: pool.release(port)`` frees the port).
    ``on_bad_input`` is called for every datagram that is not RTP (the daemon's
    metric). ``tick_ms`` is the stream's ptime (the size of the frames ``poll`` delivers
    and ``send_audio`` gets); packets on the wire carry ``session.ptime_ms`` each, and
    any packet size is accepted on receive.
    """

    sock: trio.socket.SocketType | stdlib_socket.socket
    session: RtpSession
    _call_id: str
    remote: Address | None = None
    latch_packets: int = 4
    timeout_s: float = 10.0
    jitter_start_ms: int = 20
    jitter_max_ms: int = 200
    tick_ms: int | None = None
    relatch_silence_s: float = RELATCH_SILENCE_S
    on_release: Callable[[], None] | None = None
    on_bad_input: Callable[[], None] | None = None
    stream_id: str = ""

    kind: str = attrs.field(default=_RTP.name, init=False)
    #: Raw RTP has no playout queue at the far end: the Stream paces to the wire.
    far_side_buffers: bool = attrs.field(default=False, init=False)

    # -- counters (plain ints; the record picks them up through jitter_counters) --------
    malformed: int = attrs.field(default=0, init=False)
    """Datagrams that were not valid RTP (ignored)."""
    foreign: int = attrs.field(default=0, init=False)
    """Valid RTP from an address other than the latched one, dropped."""
    latches: int = attrs.field(default=0, init=False)
    """Times a source was latched (1 normally; more after re-latching)."""
    probation_dropped: int = attrs.field(default=0, init=False)
    """Packets of a probation that succeeded, dropped (all but its last)."""
    ssrc_changes: int = attrs.field(default=0, init=False)
    packets_received: int = attrs.field(default=0, init=False)
    """Datagrams accepted from the latched source (audio, DTMF, RTCP, others)."""
    dtmf_received: int = attrs.field(default=0, init=False)
    dtmf_sent: int = attrs.field(default=0, init=False)

    # -- internals -------------------------------------------------------------------------
    _io: DatagramSocket = attrs.field(init=False)
    #: The sink of the running ``serve_reader`` (where ``_on_datagram`` delivers).
    _sink: StreamSink = attrs.field(factory=lambda: _NO_SINK, init=False)
    _jb: JitterBuffer = attrs.field(init=False)
    _rate: int = attrs.field(init=False)
    _src: Address | None = attrs.field(default=None, init=False)
    _src_ssrc: int = attrs.field(default=-1, init=False)
    _last_media: float = attrs.field(default=0.0, init=False)
    # The source on probation: address, SSRC, last sequence number, how many in a row.
    _cand: Address | None = attrs.field(default=None, init=False)
    _cand_ssrc: int = attrs.field(default=-1, init=False)
    _cand_seq: int = attrs.field(default=-1, init=False)
    _cand_count: int = attrs.field(default=0, init=False)
    _held: list[bytes] = attrs.field(factory=list, init=False)
    # Outgoing: bytes of PCM16 per wire packet, a partial packet when tick != ptime.
    _wire_bytes: int = attrs.field(init=False)
    _same_ptime: bool = attrs.field(init=False)
    _pending: bytearray = attrs.field(factory=bytearray, init=False)
    # RFC 4733 trains waiting to go out, and the position in the first one.
    _trains: collections.deque[list[bytes]] = attrs.field(factory=collections.deque, init=False)
    _train_pos: int = attrs.field(default=0, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _released: bool = attrs.field(default=False, init=False)
    _logged: set[str] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        if self.latch_packets < 1:
            raise ValueError(f"latch_packets must be at least 1, not {self.latch_packets}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {self.timeout_s}")
        session = self.session
        self._rate = session.sample_rate
        tick = self.tick_ms or session.ptime_ms
        self.tick_ms = tick
        self._jb = JitterBuffer(
            sample_rate=self._rate,
            ptime_ms=tick,
            start_ms=self.jitter_start_ms,
            max_depth_ms=self.jitter_max_ms,
        )
        self._wire_bytes = 2 * (self._rate * session.ptime_ms // 1000)
        self._same_ptime = tick == session.ptime_ms
        self._io = DatagramSocket.take(
            self.sock, destination=self.remote, on_error=self._on_socket_error
        )

    # ==================================================================================
    # CallLeg: identity
    # ==================================================================================

    @property
    def sample_rate(self) -> int:
        return self._rate

    @property
    def call_id(self) -> str:
        return self._call_id

    @property
    def local_address(self) -> Address:
        return self._io.local_address

    @property
    def latched(self) -> Address | None:
        """The source address media is accepted from (None until latched)."""
        return self._src

    @property
    def destination(self) -> Address | None:
        """Where packets go: ``remote`` if given, else the latched source."""
        return self._io.destination

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def socket(self) -> stdlib_socket.socket | None:
        """The leg's UDP socket until ``aclose`` (then None; the object is closed)."""
        return self._io.socket

    # -- send counters: the transport's ---------------------------------------------------

    @property
    def packets_sent(self) -> int:
        return self._io.sent

    @property
    def send_no_destination(self) -> int:
        """Packets dropped because no remote was given and nothing was latched yet."""
        return self._io.no_destination

    @property
    def send_dropped(self) -> int:
        """Packets dropped because the kernel's send buffer was full (EAGAIN)."""
        return self._io.dropped

    @property
    def send_errors(self) -> int:
        return self._io.errors

    @property
    def jitter_buffer(self) -> JitterBuffer:
        return self._jb

    @property
    def jitter_depth_ms(self) -> float:
        """The jitter buffer's current wait for a missing packet (its depth)."""
        return self._jb.depth_ms

    def metadata(self) -> dict[str, Any]:
        s = self.session
        return {
            "call_leg": self.kind,
            "codec": s.codec,
            "sample_rate": s.sample_rate,
            "ptime": s.ptime_ms,
            "payload_type": s.payload_type,
            "local": format_address(self._io.local_address),
            "remote": format_address(self._io.destination),
        }

    def jitter_counters(self) -> dict[str, int]:
        """The jitter buffer's counters plus this leg's ``rtp_*`` ones (for the record)."""
        out = attrs.asdict(self._jb.stats)
        out.update(
            rtp_malformed=self.malformed,
            rtp_foreign=self.foreign,
            rtp_latches=self.latches,
            rtp_probation_dropped=self.probation_dropped,
            rtp_ssrc_changes=self.ssrc_changes,
            rtp_packets_received=self.packets_received,
            rtp_packets_sent=self.packets_sent,
            rtp_send_no_destination=self.send_no_destination,
            rtp_send_dropped=self.send_dropped,
            rtp_send_errors=self.send_errors,
            rtp_dtmf_received=self.dtmf_received,
            rtp_dtmf_sent=self.dtmf_sent,
            rtp_rtcp=self.session.rtcp_packets,
            rtp_unknown_payload_types=self.session.unknown_payload_types,
        )
        return out

    # ==================================================================================
    # receive
    # ==================================================================================

    def poll(self, sink: StreamSink, now_s: float) -> None:
        """On the stream's tick: settle gaps whose wait ran out (their packets are
        declared lost and concealed) and hand over what that releases."""
        jb = self._jb
        if jb.next_deadline_s <= now_s:
            self._deliver(sink, now_s)

    def _deliver(self, sink: StreamSink, now_s: float) -> None:
        pop = self._jb.pop
        rate = self._rate
        on_event = sink.on_call_event
        while (pcm := pop(now_s)) is not None:
            on_event(Audio(Frame(pcm, rate)))

    async def serve_reader(self, sink: StreamSink) -> str:
        """Read until no media has been accepted for ``timeout_s``: ``call_hangup``.

        The timeout is one cancel scope per period, not a timer per packet: each
        accepted packet only moves ``_last_media``; when the scope fires, the loop
        re-enters with the new deadline unless the media really stopped.
        """
        timeout = self.timeout_s
        self._last_media = trio.current_time()
        # The socket's loop calls _on_datagram for each datagram; it delivers to ``sink``.
        self._sink = sink
        serve, on_datagram = self._io.serve_reader, self._on_datagram
        while True:
            try:
                with trio.move_on_at(self._last_media + timeout):
                    await serve(on_datagram)
            except trio.ClosedResourceError:
                # Closed under us (the daemon shutting the pool down): the call is gone.
                return "call_hangup"
            if trio.current_time() >= self._last_media + timeout:
                logger.info(
                    "no RTP for %gs: the call is over",
                    timeout,
                    extra={"stream_id": self.stream_id, "call_id": self._call_id},
                )
                return "call_hangup"

    def _on_socket_error(self, op: str, exc: OSError) -> None:
        # Reported once each; the socket stays usable (an ICMP error for an earlier send
        # surfacing on a receive, a send with no route).
        if op == "send":
            dest = format_address(self._io.destination)
            self._log_once("send", "RTP send to %s failed: %s", dest, exc)
        else:
            self._log_once("recv", "RTP receive error ignored: %s", exc)

    def _on_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """One datagram from the socket (``DatagramSocket.serve_reader`` calls it)."""
        sink = self._sink
        if len(data) >= 12 and data[0] >> 6 == 2 and not 192 <= data[1] <= 223:
            seq, ssrc = _PEEK.unpack_from(data)
            if addr == self._src:
                if ssrc != self._src_ssrc:
                    # Same address, new SSRC: the same peer re-originating its stream
                    # (RFC 3550 §8.2); the jitter buffer resets on the SSRC change.
                    self._src_ssrc = ssrc
                    self.ssrc_changes += 1
                self._last_media = now
                self.packets_received += 1
                self._decode(data, sink, now)
                return
            self._probation(data, addr, seq, ssrc, now, sink)
            return
        # RTCP (RFC 5761 multiplexing) or not RTP at all: the session counts the first
        # and raises DialectError for the second. Neither counts as media.
        self._decode(data, sink, now)

    def _probation(
        self, data: bytes, addr: Address, seq: int, ssrc: int, now: float, sink: StreamSink
    ) -> None:
        """A packet from an address that is not the latched one (RFC 4961 latching)."""
        if self._src is not None:
            self.foreign += 1
        if addr == self._cand and ssrc == self._cand_ssrc and seq == (self._cand_seq + 1) & 0xFFFF:
            self._cand_count += 1
        else:
            # A new candidate, or the old one broke its sequence: probation restarts.
            self._cand = addr
            self._cand_ssrc = ssrc
            self._cand_count = 1
            self._held.clear()
        self._cand_seq = seq
        held = self._held
        held.append(data)
        if len(held) > self.latch_packets:
            del held[0]
        if self._cand_count < self.latch_packets:
            return
        if self._src is not None and now - self._last_media < self.relatch_silence_s:
            # The latched source is alive: a second sender does not take the call over.
            self._log_once(
                "foreign",
                "RTP from %s ignored: latched to %s",
                format_address(addr),
                format_address(self._src),
            )
            return
        self._latch(addr, ssrc, now)
        # Only the packet that completed the probation goes on; the earlier ones are
        # dropped (and counted), as Asterisk's strict-RTP learning does. Releasing them
        # all now would hand the app a burst of audio already ``latch_packets - 1``
        # ptimes old, and an app that answers in real time would carry that as latency
        # (until trimmed, at the cost of audio later in the call).
        packets, self._held = held, []
        self.probation_dropped += len(packets) - 1
        self.packets_received += 1
        self._decode(packets[-1], sink, now)

    def _latch(self, addr: Address, ssrc: int, now: float) -> None:
        previous = self._src
        self._src = addr
        self._src_ssrc = ssrc
        self._last_media = now
        self.latches += 1
        self._cand = None
        self._cand_count = 0
        if self.remote is None:
            self._io.destination = addr  # symmetric RTP: answer where the media comes from
        what = f"re-latched from {format_address(previous)} to" if previous else "latched to"
        logger.info(
            "RTP %s %s (ssrc %08x)",
            what,
            format_address(addr),
            ssrc,
            extra={"stream_id": self.stream_id, "call_id": self._call_id},
        )

    def _decode(self, data: bytes, sink: StreamSink, now: float) -> None:
        session = self.session
        try:
            events = session.receive(data)
        except DialectError as exc:
            self.malformed += 1
            if self.on_bad_input is not None:
                self.on_bad_input()
            self._log_once(
                "malformed", "malformed RTP ignored (further ones are only counted): %s", exc
            )
            return
        for event in events:
            if type(event) is Audio:
                assert event.seq is not None and event.timestamp is not None
                ssrc = session.last_ssrc
                assert ssrc is not None
                self._jb.push(event.seq, event.timestamp, ssrc, event.frame.pcm, now)
                self._deliver(sink, now)
            elif type(event) is Dtmf:
                # RFC 4733 reports a digit when it ends; hand it over at once rather than
                # through the jitter buffer: it is an event, not a frame of audio.
                self.dtmf_received += 1
                sink.on_call_event(event)

    # ==================================================================================
    # send
    # ==================================================================================

    def send_audio(self, pcm: bytes) -> None:
        """One tick's frame toward the caller (or the next RFC 4733 packet instead)."""
        if self._closed:
            return
        wire = self._wire_bytes
        if not self._pending and (len(pcm) == wire or (len(pcm) < wire and self._same_ptime)):
            # A frame shorter than the ptime is the playout trimming standing latency: it
            # goes as one short packet (RFC 3551 §4.2: a receiver accepts packets of any
            # duration up to 200 ms; the timestamp advances by its samples). Holding it
            # to fill a whole packet would make it, and every packet after it, wait for
            # the next tick: a standing ptime minus the cut, the opposite of the trim.
            self._send_slot(pcm)
            return
        # The stream's tick and the wire's ptime differ: repacketise to the wire's ptime.
        pending = self._pending
        pending += pcm
        while len(pending) >= wire:
            chunk = bytes(pending[:wire])
            del pending[:wire]
            self._send_slot(chunk)

    def _send_slot(self, pcm: bytes) -> None:
        """One packet time on the wire: audio, or the DTMF train's packet for it.

        RtpSession.send documents the pacing of a train of ``m`` updates and 3 ends:
        update ``k`` goes at slot ``k`` instead of audio; at slot ``m`` the three end
        packets go together, followed by this slot's audio, whose timestamp the session
        has already moved past the event (RFC 4733 §2.5.1.4, §2.5.2.2).
        """
        trains = self._trains
        while trains:
            train = trains[0]
            pos = self._train_pos
            if len(train) - pos > 3:
                self._io.send(train[pos])
                self._train_pos = pos + 1
                return
            for packet in train[pos:]:
                self._io.send(packet)
            trains.popleft()
            self._train_pos = 0
            # A queued next digit starts in this slot: its timestamp is this slot's.
        self._io.send(self.session.send_audio(pcm))

    def send_event(self, event: Event) -> bool:
        """DTMF goes out as an RFC 4733 train paced by ``send_audio``; nothing else can be
        said on raw RTP (marks and clears are the Stream's own business)."""
        if type(event) is not Dtmf or self._closed:
            return False
        try:
            train = self.session.send(event)
        except ValueError:
            return False
        if not train:
            return False  # telephone-event disabled on this session
        self._trains.append([p for p in train if isinstance(p, bytes)])
        self.dtmf_sent += 1
        return True

    async def serve_writer(self) -> None:
        # Nothing is ever queued: a packet the kernel cannot take now is dropped.
        await trio.sleep_forever()

    # ==================================================================================
    # close
    # ==================================================================================

    async def aclose(self, reason: str = "") -> None:
        """Let go of the socket and give the port back. Idempotent, never blocks.

        RTP has no hangup of its own (the signalling that opened the stream ends the
        call; RTCP BYE is not sent because bridge does not run RTCP).
        """
        self.close_now()
        await trio.lowlevel.checkpoint()

    def close_now(self) -> None:
        """Synchronous ``aclose`` (the daemon uses it when the pool shuts down)."""
        self._closed = True
        self._trains.clear()
        if self._released:
            return
        self._released = True
        # A reader still blocked on the socket wakes (ClosedResourceError) and returns.
        self._io.close()
        if self.on_release is not None:
            self.on_release()

    # ==================================================================================

    def _log_once(self, key: str, msg: str, *args: object) -> bool:
        if key in self._logged:
            return False
        self._logged.add(key)
        logger.warning(msg, *args, extra={"stream_id": self.stream_id, "call_id": self._call_id})
        return True
