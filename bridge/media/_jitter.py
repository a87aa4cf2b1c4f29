"""A fixed-delay jitter buffer for audio arriving as RTP packets.

``push`` is called by the reader for every packet as it arrives; ``pop`` is called once
per 20 ms tick and returns exactly one frame of PCM16. Nothing here knows about sockets
or time: the caller's tick is the clock.

Design decisions (the lead asked for them to be written down):

* **Ordering is by RTP sequence number** (RFC 3550 §5.1), extended past the 16-bit
  wrap with serial-number arithmetic (the signed 16-bit distance from the newest
  sequence number seen, as in RFC 3550 Appendix A.1). ``timestamp`` is accepted but not
  used: a timestamp jump without a sequence gap is silence suppression, and playing the
  next packet straight away is the right thing to do for it.
* **Packets are expected to carry one ptime of audio**, but any whole number of samples
  is accepted. The queue is a byte stream in sequence order, so 10 ms or 30 ms packets
  play gap-free (a 30 ms packet fills one frame and the first half of the next). A
  frame that cannot be completed because the next packet is missing is padded with
  silence. A missing packet is concealed as one ptime of audio, and depth counts a
  missing packet as one ptime.
* **Start threshold.** ``pop`` returns ``None`` until ``start_ms`` of audio is queued.
* **Depth** is the playout delay of the newest packet: the audio queued plus one ptime
  for every gap between the playout point and the newest packet. Above ``max_depth_ms``
  the oldest audio is dropped (``overflow``; gaps skipped this way count as ``lost``).
* **Loss.** When the next packet is missing but later ones are queued, it is declared
  lost and concealed: the last frame is repeated at half the amplitude, twice (-6 dB,
  -12 dB), then silence follows. Exception: while the audio queued *behind* the gap
  still meets ``start_ms``, the gap is skipped with no concealment frame at all; that is
  where latency added by underruns (below) drains away again.
* **Underrun.** When nothing at all is queued, the stream may have paused (hold, silence
  suppression) or the next packet is just late. The buffer conceals up to two frames
  *without* moving the playout point (a late packet still plays, 20 ms later than
  planned), then goes **idle**: ``pop`` returns ``None`` and the start threshold applies
  again; playback resumes at the first packet then queued. This keeps a delay spike
  from turning every packet after it into a late one.
* **Probation.** A sequence number more than ``window`` packets from the newest one
  seen is not trusted at once (RFC 3550 A.1 ``MAX_DROPOUT``/``MAX_MISORDER``): it is
  dropped, and if the next packet continues from it the sender restarted its sequence
  and the buffer resets. An SSRC change resets at once.

Accounting: every pushed packet ends up in exactly one of ``played``, ``late``,
``duplicate``, ``overflow``, ``discarded`` or is still queued::

    received == played + late + duplicate + overflow + discarded + packets_queued

``lost`` counts sequence numbers the playout point passed with no packet, ``concealed``
counts frames synthesised by repetition (not silence), ``reordered`` counts packets
accepted although a newer one had arrived first.
"""

from __future__ import annotations

import warnings

import attrs

with warnings.catch_warnings():
    # audioop is deprecated on 3.11/3.12 (PEP 594) and provided by audioop-lts on 3.13+.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["JitterBuffer", "JitterStats"]

_SEQ_MOD = 0x10000
_SEQ_HALF = 0x8000
_HISTORY_MASK = (1 << 64) - 1  # played-packet history kept to tell duplicates from late
_MAX_CONCEAL = 2  # faded repeats before silence


@attrs.define(slots=True)
class JitterStats:
    """Counters of one jitter buffer (packets, except ``lost`` and ``concealed``)."""

    received: int = 0
    """Packets pushed."""
    played: int = 0
    """Packets whose audio has been (at least partly) returned by ``pop``."""
    late: int = 0
    """Packets that arrived after the playout point had passed them."""
    duplicate: int = 0
    """Copies of a packet already queued or played."""
    overflow: int = 0
    """Queued packets dropped because depth exceeded ``max_depth_ms``."""
    discarded: int = 0
    """Packets dropped by a reset (SSRC change, sequence restart) or on probation."""
    reordered: int = 0
    """Packets accepted although a later sequence number had arrived first."""
    lost: int = 0
    """Sequence numbers skipped by the playout point without a packet."""
    concealed: int = 0
    """Frames synthesised by repeating the previous frame at reduced amplitude."""
    resets: int = 0
    """Times the stream state was reset (SSRC change, sequence restart, ``reset()``)."""


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


# Validators run in __init__ only: attrs' default on_setattr hooks would put a Python
# call on every attribute store of the per-frame path (measured: ~2x the whole cost).
@attrs.define(slots=True, on_setattr=attrs.setters.NO_OP)
class JitterBuffer:
    """Reorders RTP audio and hands out one ptime of PCM16 per tick. See module docs."""

    sample_rate: int = attrs.field(validator=_positive)
    ptime_ms: int = attrs.field(default=20, validator=_positive)
    """Length of the frame ``pop`` returns: the caller's tick. Packets may be longer or shorter."""
    start_ms: int = attrs.field(default=60, validator=_non_negative)
    max_depth_ms: int = attrs.field(default=200, validator=_positive)
    window: int = attrs.field(default=100, validator=_positive)
    """Packets a sequence number may be from the newest one and still be trusted."""

    stats: JitterStats = attrs.field(factory=JitterStats, init=False)

    _frame_bytes: int = attrs.field(init=False, repr=False)
    _start_bytes: int = attrs.field(init=False, repr=False)
    _max_bytes: int = attrs.field(init=False, repr=False)
    _silence: bytes = attrs.field(init=False, repr=False)

    _ssrc: int | None = attrs.field(default=None, init=False, repr=False)
    # Extended (unwrapped) sequence number -> PCM16.
    _queue: dict[int, bytes] = attrs.field(factory=dict, init=False, repr=False)
    # Bytes in _queue plus _carry.
    _queued_bytes: int = attrs.field(default=0, init=False, repr=False)
    # Unplayed tail of the last packet played (packets longer than a frame).
    _carry: bytes = attrs.field(default=b"", init=False, repr=False)
    # Extended sequence number of the next packet to play (the playout point).
    _next: int = attrs.field(default=0, init=False, repr=False)
    # Newest extended sequence number received.
    _highest: int = attrs.field(default=0, init=False, repr=False)
    # A packet has been received since the last reset.
    _synced: bool = attrs.field(default=False, init=False, repr=False)
    # The playout point has moved (a packet played or dropped) since the last reset.
    # Until then an older packet simply starts the stream earlier instead of being late.
    _committed: bool = attrs.field(default=False, init=False, repr=False)
    # pop() returns audio (start threshold reached and no underrun since).
    _started: bool = attrs.field(default=False, init=False, repr=False)
    # Bit i set: packet _next - 1 - i was played (tells a duplicate from a late packet).
    _history: int = attrs.field(default=0, init=False, repr=False)
    _last_frame: bytes | None = attrs.field(default=None, init=False, repr=False)
    _conceal_run: int = attrs.field(default=0, init=False, repr=False)
    # RFC 3550 A.1: the sequence number that would confirm a jump.
    _bad_seq: int | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.start_ms > self.max_depth_ms:
            raise ValueError(
                f"start_ms ({self.start_ms}) exceeds max_depth_ms ({self.max_depth_ms})"
            )
        samples = self.sample_rate * self.ptime_ms // 1000
        if samples <= 0:
            raise ValueError(f"{self.ptime_ms} ms at {self.sample_rate} Hz is not one sample")
        self._frame_bytes = 2 * samples
        bytes_per_ms = 2 * self.sample_rate / 1000
        self._start_bytes = round(self.start_ms * bytes_per_ms)
        self._max_bytes = round(self.max_depth_ms * bytes_per_ms)
        self._silence = bytes(self._frame_bytes)

    # -- properties ------------------------------------------------------------------

    @property
    def frame_bytes(self) -> int:
        """Bytes returned by every non-``None`` ``pop``."""
        return self._frame_bytes

    @property
    def depth_ms(self) -> float:
        """Playout delay of the newest packet, in ms (0 when nothing is queued)."""
        return self._depth_bytes() * self.ptime_ms / self._frame_bytes

    @property
    def packets_queued(self) -> int:
        return len(self._queue)

    @property
    def playing(self) -> bool:
        """``pop`` is returning audio (the start threshold was met, no underrun since)."""
        return self._started

    # -- input -----------------------------------------------------------------------

    def push(self, seq: int, timestamp: int, ssrc: int, pcm: bytes) -> None:
        """Queue one packet's audio (PCM16 little-endian, already decoded)."""
        if not 0 <= seq < _SEQ_MOD:
            raise ValueError(f"RTP sequence number out of range: {seq!r}")
        if len(pcm) & 1:
            raise ValueError(f"{len(pcm)} bytes is not a whole number of 16-bit samples")
        stats = self.stats
        stats.received += 1
        if ssrc != self._ssrc:
            if self._ssrc is not None:
                # A new source: each SSRC numbers its packets from its own random start
                # (RFC 3550 §5.1, §8), so nothing queued can be ordered against it.
                self._reset()
            self._ssrc = ssrc

        if not self._synced:
            ext = seq + _SEQ_MOD  # offset so that a few packets older than the first stay >= 0
            self._synced = True
            self._next = self._highest = ext
        else:
            highest = self._highest
            # Signed 16-bit distance from the newest sequence number: serial-number
            # arithmetic, so 65535 -> 0 is +1 and 0 -> 65535 is -1.
            delta = ((seq - highest + _SEQ_HALF) & 0xFFFF) - _SEQ_HALF
            if -self.window <= delta <= self.window:
                ext = highest + delta
            elif seq == self._bad_seq:
                # Two sequential packets after a jump: the sender restarted (RFC 3550 A.1).
                self._reset()
                ext = seq + _SEQ_MOD
                self._synced = True
                self._next = self._highest = ext
            else:
                self._bad_seq = (seq + 1) & 0xFFFF
                if delta < 0:
                    stats.late += 1
                else:
                    stats.discarded += 1
                return

        queue = self._queue
        if ext < self._next:
            if self._committed:
                age = self._next - 1 - ext
                if age < 64 and (self._history >> age) & 1:
                    stats.duplicate += 1
                else:
                    stats.late += 1
                return
            self._next = ext
        if ext in queue:
            stats.duplicate += 1
            return
        if ext > self._highest:
            self._highest = ext
        elif ext < self._highest:
            stats.reordered += 1
        queue[ext] = pcm
        queued = self._queued_bytes + len(pcm)
        self._queued_bytes = queued
        if self._started or not self._committed:
            # _depth_bytes() inlined: this runs for every packet.
            gaps = self._highest - self._next + 1 - len(queue)
            if queued + gaps * self._frame_bytes > self._max_bytes:
                self._trim()
        elif self._depth_bytes() > self._max_bytes:
            self._trim()

    # -- output ----------------------------------------------------------------------

    def pop(self) -> bytes | None:
        """One frame (``frame_bytes`` of PCM16) for this tick, or ``None``.

        ``None`` means there is nothing to play: the start threshold has not been met
        (at the beginning, after a reset, or after an underrun). Callers that must send
        a continuous stream send silence for it.
        """
        if not self._started and not self._start():
            return None
        frame_bytes = self._frame_bytes
        pcm: bytes | None = None
        if not self._carry:
            pcm = self._queue.pop(self._next, None)
            if pcm is not None and len(pcm) == frame_bytes:
                # The fast path: one packet is one frame.
                self._queued_bytes -= frame_bytes
                self._next += 1
                self._history = ((self._history << 1) | 1) & _HISTORY_MASK
                self.stats.played += 1
                self._last_frame = pcm
                self._conceal_run = 0
                return pcm
        return self._pop_slow(pcm)

    def _pop_slow(self, pcm: bytes | None) -> bytes | None:
        frame_bytes = self._frame_bytes
        queue = self._queue
        out = bytearray(self._carry)
        self._queued_bytes -= len(self._carry)
        self._carry = b""
        while True:
            if pcm is not None:
                out += pcm
                self._queued_bytes -= len(pcm)
                self._next += 1
                self._history = ((self._history << 1) | 1) & _HISTORY_MASK
                self.stats.played += 1
            if len(out) >= frame_bytes:
                break
            pcm = queue.pop(self._next, None)
            if pcm is None:
                break
        if not out:
            return self._missing()
        if len(out) < frame_bytes:
            # The next packet is not here (yet): finish this frame with silence rather than
            # delay the whole stream; the next pop deals with the missing packet.
            out += bytes(frame_bytes - len(out))
        elif len(out) > frame_bytes:
            self._carry = bytes(out[frame_bytes:])
            self._queued_bytes += len(self._carry)
            del out[frame_bytes:]
        frame = bytes(out)
        self._last_frame = frame
        self._conceal_run = 0
        return frame

    def _missing(self) -> bytes | None:
        """The packet at the playout point is not here."""
        queue = self._queue
        if queue:
            # Later packets are: this one is lost. Skip it; and while the audio behind
            # it still meets the start threshold, skip further gaps rather than conceal
            # them, so latency added by earlier underruns drains away here.
            while True:
                self.stats.lost += 1
                self._next += 1
                self._history = (self._history << 1) & _HISTORY_MASK
                self._committed = True
                if self._depth_bytes() < self._start_bytes:
                    return self._conceal()
                if self._next in queue:
                    return self._pop_slow(None)
        if self._conceal_run < _MAX_CONCEAL and self._last_frame is not None:
            # Underrun: cover the gap but keep the playout point, the packet may be late.
            return self._conceal()
        # Still nothing: the stream paused or stalled. Rebuild start_ms before resuming.
        self._started = False
        self._last_frame = None
        self._conceal_run = 0
        return None

    def _conceal(self) -> bytes:
        self._conceal_run += 1
        last = self._last_frame
        if self._conceal_run > _MAX_CONCEAL or last is None:
            return self._silence
        # Repeat the previous frame 6 dB quieter each time: cheap packet-loss concealment
        # that avoids the click of a hard cut to silence.
        frame = audioop.mul(last, 2, 0.5)
        self._last_frame = frame
        self.stats.concealed += 1
        return frame

    def _start(self) -> bool:
        if not self._queue or self._depth_bytes() < max(self._start_bytes, 1):
            return False
        self._skip_to_first()
        self._started = True
        self._committed = True
        return True

    def _skip_to_first(self) -> None:
        """Resuming after an underrun: packets missing before the first queued are lost."""
        if self._committed:
            first = min(self._queue)
            if first > self._next:
                skipped = first - self._next
                self.stats.lost += skipped
                self._history = (self._history << skipped) & _HISTORY_MASK
                self._next = first

    # -- depth -----------------------------------------------------------------------

    def _depth_bytes(self) -> int:
        queue = self._queue
        if not queue:
            return len(self._carry)
        first = self._next
        if not self._started and self._committed:
            # Idle after an underrun: playback resumes at the first packet queued, so
            # gaps before it add no delay (they are counted lost when it starts).
            first = min(queue)
        gaps = self._highest - first + 1 - len(queue)
        return self._queued_bytes + gaps * self._frame_bytes

    def _trim(self) -> None:
        """Drop the oldest audio until depth is within ``max_depth_ms``."""
        stats = self.stats
        queue = self._queue
        if not self._started:
            self._skip_to_first()
        self._committed = True
        depth = self._depth_bytes()
        while depth > self._max_bytes:
            if self._carry:
                depth -= len(self._carry)
                self._queued_bytes -= len(self._carry)
                self._carry = b""
                continue
            pcm = queue.pop(self._next, None)
            if pcm is None:
                stats.lost += 1
                depth -= self._frame_bytes
            else:
                stats.overflow += 1
                depth -= len(pcm)
                self._queued_bytes -= len(pcm)
            self._next += 1
            self._history = (self._history << 1) & _HISTORY_MASK

    # -- reset -----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the stream (queued packets count as ``discarded``); the next packet starts afresh."""
        self._reset()
        self._ssrc = None

    def _reset(self) -> None:
        self.stats.resets += 1
        self.stats.discarded += len(self._queue)
        self._queue.clear()
        self._queued_bytes = 0
        self._carry = b""
        self._synced = False
        self._committed = False
        self._started = False
        self._history = 0
        self._last_frame = None
        self._conceal_run = 0
        self._bad_seq = None
