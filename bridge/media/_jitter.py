"""An adaptive jitter buffer for audio arriving as RTP packets (the RTP call leg's input).

``push`` is called for every packet as it arrives; ``pop`` hands out frames of
``ptime_ms`` of PCM16 **as soon as they are in order**, and ``None`` when nothing is ready.
Nothing here knows about sockets or time: ``now_s`` is passed in.

What it is for. The caller's audio goes to an application over a WebSocket, not to a
loudspeaker: nothing downstream needs it evenly spaced, but it must be in order, without
duplicates, and with real losses concealed rather than silently closed up. So the buffer
delays audio only where it must: an in-order packet goes out at once (no added latency
on a clean network, whatever its jitter), and only a *gap* in the sequence holds the
packets behind it, for at most the current **wait**, in case the missing packet was only
reordered. The design decisions, written down:

* **Ordering is by RTP sequence number** (RFC 3550 §5.1), unwrapped past the 16-bit wrap
  with serial-number arithmetic (RFC 3550 Appendix A.1). A timestamp jump without a
  sequence gap is silence suppression (DTX): nothing is missing and nothing is invented;
  the app simply gets no audio for the silence, as it would from a silent caller.
* **Concealment only for real loss.** When a gap's wait runs out, its packets are
  declared lost (``lost``) and covered: the last packet's audio is repeated at half
  amplitude, twice (-6, -12 dB; ``concealed`` counts these), and silence fills the rest
  of a short gap; a long gap (more than ``MAX_CONCEAL_PACKETS``) is covered for that many
  packets only and then left as a gap. A pause or a late packet is never concealed:
  nothing is synthesised while packets keep coming in order, and a packet that arrives
  after its gap was concealed is dropped (``late``), never played twice.
* **The wait adapts to the network** ("depth" in stats and records): it starts at
  ``start_ms`` and
  - grows at once when a packet comes late: to its lateness plus ``WAIT_MARGIN_S``;
  - follows the reordering it sees: a gap filled in time keeps the wait at least its
    delay plus the margin;
  - shrinks when the network is calm: toward the largest delay seen in the last
    ``CALM_WINDOW_S`` (plus the margin), by at most ``SHRINK_PER_S`` per second;
  - stays within ``min_ms`` .. ``max_depth_ms``.
* **Bounded.** Audio held behind a gap never exceeds ``max_depth_ms``: beyond it the gap
  is declared lost at once (``overflow`` counts those decisions).
* **Any packet size.** Packets are expected to carry one ptime of audio, but any whole
  number of samples is accepted: the output is a byte stream cut into frames; a tail
  shorter than a frame goes out padded once no more audio has come for two ptimes.
* **Probation.** A sequence number more than ``window`` packets from the newest one
  seen is not trusted at once (RFC 3550 A.1 ``MAX_DROPOUT``/``MAX_MISORDER``): it is
  dropped, and if the next packet continues from it the sender restarted its sequence
  and the buffer resets. An SSRC change resets at once.

Accounting: every pushed packet ends up in exactly one of ``played``, ``late``,
``duplicate``, ``discarded`` or is still held::

    received == played + late + duplicate + discarded + packets_queued
"""

from __future__ import annotations

import math
from collections import deque

import attrs

from ._audioop import audioop

__all__ = ["JitterBuffer", "JitterStats"]

_SEQ_MOD = 0x10000
_SEQ_HALF = 0x8000
_HISTORY_MASK = (1 << 64) - 1  # released-packet history, to tell duplicates from late
#: Faded repeats of the last packet before silence.
_MAX_REPEATS = 2
#: A longer loss is covered for this many packets, then left as a gap.
MAX_CONCEAL_PACKETS = 5
#: Headroom over the reordering delay seen, and how the wait relaxes when calm.
WAIT_MARGIN_S = 0.005
CALM_WINDOW_S = 10.0
SHRINK_PER_S = 0.01
#: Declared-lost sequence numbers remembered, to measure how late a late packet was.
_LOST_MEMORY = 64


@attrs.define(slots=True)
class JitterStats:
    """Counters of one jitter buffer (packets, except ``lost``, ``concealed`` and the
    ``wait_*`` figures, which are milliseconds)."""

    received: int = 0
    """Packets pushed."""
    played: int = 0
    """Packets whose audio has been released in order."""
    late: int = 0
    """Packets that arrived after their gap had been declared lost (dropped)."""
    duplicate: int = 0
    """Copies of a packet already held or released."""
    overflow: int = 0
    """Gaps declared lost early because the audio held behind them reached the maximum."""
    discarded: int = 0
    """Packets dropped by a reset (SSRC change, sequence restart) or on probation."""
    reordered: int = 0
    """Packets accepted although a later sequence number had arrived first."""
    lost: int = 0
    """Sequence numbers declared lost (their wait ran out)."""
    concealed: int = 0
    """Frames' worth of audio synthesised by repeating the previous packet."""
    resets: int = 0
    """Times the stream state was reset (SSRC change, sequence restart, ``reset()``)."""
    wait_ms: int = 0
    """The current wait for a missing packet (the buffer's depth)."""
    wait_max_ms: int = 0
    """The largest wait so far."""


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
    """Reorders RTP audio and releases it as soon as it is in order. See module docs."""

    sample_rate: int = attrs.field(validator=_positive)
    ptime_ms: int = attrs.field(default=20, validator=_positive)
    """Length of the frames ``pop`` returns. Packets may be longer or shorter."""
    start_ms: int = attrs.field(default=20, validator=_non_negative)
    """The wait for a missing packet at the start."""
    max_depth_ms: int = attrs.field(default=200, validator=_positive)
    """The longest wait, and the most audio held behind a gap."""
    min_ms: int = attrs.field(default=10, validator=_non_negative)
    """The shortest wait the buffer relaxes to."""
    window: int = attrs.field(default=100, validator=_positive)
    """Packets a sequence number may be from the newest one and still be trusted."""

    stats: JitterStats = attrs.field(factory=JitterStats, init=False)

    _frame_bytes: int = attrs.field(init=False, repr=False)
    _max_bytes: int = attrs.field(init=False, repr=False)
    _ptime_s: float = attrs.field(init=False, repr=False)
    _wait_s: float = attrs.field(init=False, repr=False)

    _ssrc: int | None = attrs.field(default=None, init=False, repr=False)
    # Extended (unwrapped) sequence number -> (PCM16, arrival time): packets held
    # behind a gap.
    _held: dict[int, tuple[bytes, float]] = attrs.field(factory=dict, init=False, repr=False)
    _held_bytes: int = attrs.field(default=0, init=False, repr=False)
    # Extended sequence number of the next packet to release.
    _next: int = attrs.field(default=0, init=False, repr=False)
    _highest: int = attrs.field(default=0, init=False, repr=False)
    _synced: bool = attrs.field(default=False, init=False, repr=False)
    # Bit i set: packet _next - 1 - i was released (tells a duplicate from a late one).
    _history: int = attrs.field(default=0, init=False, repr=False)
    _bad_seq: int | None = attrs.field(default=None, init=False, repr=False)
    # Released audio not yet cut into a frame, frames ready, when audio last came.
    _out: bytearray = attrs.field(factory=bytearray, init=False, repr=False)
    _ready: deque[bytes] = attrs.field(factory=deque, init=False, repr=False)
    _out_at: float = attrs.field(default=0.0, init=False, repr=False)
    _last_pcm: bytes = attrs.field(default=b"", init=False, repr=False)
    # Declared-lost sequence numbers -> when their gap was first seen.
    _lost_at: dict[int, float] = attrs.field(factory=dict, init=False, repr=False)
    # (time, delay) of reordering observed, for the calm-network shrink.
    _seen: deque[tuple[float, float]] = attrs.field(factory=deque, init=False, repr=False)
    _adapted_at: float = attrs.field(default=-math.inf, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.start_ms > self.max_depth_ms:
            raise ValueError(
                f"start_ms ({self.start_ms}) exceeds max_depth_ms ({self.max_depth_ms})"
            )
        if self.min_ms > self.max_depth_ms:
            raise ValueError(f"min_ms ({self.min_ms}) exceeds max_depth_ms ({self.max_depth_ms})")
        samples = self.sample_rate * self.ptime_ms // 1000
        if samples <= 0:
            raise ValueError(f"{self.ptime_ms} ms at {self.sample_rate} Hz is not one sample")
        self._frame_bytes = 2 * samples
        self._max_bytes = round(self.max_depth_ms * 2 * self.sample_rate / 1000)
        self._ptime_s = self.ptime_ms / 1000.0
        self._set_wait(self.start_ms / 1000.0)

    # -- properties ------------------------------------------------------------------

    @property
    def frame_bytes(self) -> int:
        """Bytes returned by every non-``None`` ``pop``."""
        return self._frame_bytes

    @property
    def depth_ms(self) -> float:
        """The current wait for a missing packet, in ms (the buffer's depth)."""
        return self._wait_s * 1000.0

    @property
    def held_ms(self) -> float:
        """Audio held behind a gap right now, in ms."""
        return self._held_bytes * 1000.0 / (2 * self.sample_rate)

    @property
    def packets_queued(self) -> int:
        return len(self._held)

    @property
    def next_deadline_s(self) -> float:
        """When ``pop`` will next have something to do without a new packet: a gap's
        wait running out, or a tail to flush (``math.inf`` when neither)."""
        deadline = math.inf
        if self._held and self._next not in self._held:
            deadline = self._gap_since() + self._wait_s
        if self._out:
            deadline = min(deadline, self._out_at + 2 * self._ptime_s)
        return deadline

    # -- input -----------------------------------------------------------------------

    def push(self, seq: int, timestamp: int, ssrc: int, pcm: bytes, now_s: float) -> None:
        """Take one packet's audio (PCM16 little-endian, already decoded)."""
        if not 0 <= seq < _SEQ_MOD:
            raise ValueError(f"RTP sequence number out of range: {seq!r}")
        if len(pcm) & 1:
            raise ValueError(f"{len(pcm)} bytes is not a whole number of 16-bit samples")
        stats = self.stats
        stats.received += 1
        if ssrc != self._ssrc:
            if self._ssrc is not None:
                # A new source: each SSRC numbers its packets from its own random start
                # (RFC 3550 §5.1, §8), so nothing held can be ordered against it.
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

        if ext < self._next:
            age = self._next - 1 - ext
            if age < 64 and (self._history >> age) & 1:
                stats.duplicate += 1
                return
            stats.late += 1
            gap_at = self._lost_at.pop(ext, None)
            if gap_at is not None:
                # It came, but after we gave up on it: wait longer from now on.
                self._grow(now_s - gap_at + WAIT_MARGIN_S, now_s)
            return
        held = self._held
        if ext in held:
            stats.duplicate += 1
            return
        if ext > self._highest:
            self._highest = ext
        elif ext < self._highest:
            stats.reordered += 1
            if ext == self._next and held:
                # A gap filled in time: remember how long it took.
                delay = now_s - self._gap_since()
                self._seen.append((now_s, delay))
                if delay + WAIT_MARGIN_S > self._wait_s:
                    self._grow(delay + WAIT_MARGIN_S, now_s)
        if ext == self._next and not held:
            self._release(pcm, now_s)  # the fast path: in order, nothing held
            self._next = ext + 1
            self._history = ((self._history << 1) | 1) & _HISTORY_MASK
            return
        held[ext] = (pcm, now_s)
        self._held_bytes += len(pcm)
        self._advance(now_s)

    # -- output ----------------------------------------------------------------------

    def pop(self, now_s: float) -> bytes | None:
        """The next frame (``frame_bytes`` of PCM16) ready now, or ``None``. Call it
        until it returns ``None``: after every ``push``, and from time to time (at
        ``next_deadline_s`` or on a regular tick) so that expired gaps are settled."""
        ready = self._ready
        if ready:
            return ready.popleft()
        if self._held:
            self._advance(now_s)
        out = self._out
        if out and not ready and now_s - self._out_at >= 2 * self._ptime_s:
            # The tail of a talkspurt: no more audio is coming for now.
            ready.append(bytes(out) + bytes(self._frame_bytes - len(out)))
            out.clear()
        if now_s - self._adapted_at >= 1.0:
            self._relax(now_s)
        return ready.popleft() if ready else None

    # -- internals -------------------------------------------------------------------

    def _release(self, pcm: bytes, now_s: float) -> None:
        self.stats.played += 1
        self._last_pcm = pcm
        self._out_at = now_s
        fb = self._frame_bytes
        out = self._out
        if not out and len(pcm) == fb:
            self._ready.append(pcm)
            return
        out += pcm
        while len(out) >= fb:
            self._ready.append(bytes(out[:fb]))
            del out[:fb]

    def _gap_since(self) -> float:
        """When the current gap was first seen: the arrival of the oldest packet held."""
        return min(at for _, at in self._held.values())

    def _advance(self, now_s: float) -> None:
        """Release what is in order; settle a gap whose wait ran out (or that holds too
        much audio behind it)."""
        held = self._held
        while held:
            nxt = self._next
            item = held.pop(nxt, None)
            if item is not None:
                pcm = item[0]
                self._held_bytes -= len(pcm)
                self._release(pcm, now_s)
                self._next = nxt + 1
                self._history = ((self._history << 1) | 1) & _HISTORY_MASK
                continue
            since = self._gap_since()
            if self._held_bytes > self._max_bytes:
                self.stats.overflow += 1
            elif now_s - since < self._wait_s:
                return
            first = min(held)
            self._declare_lost(first - nxt, since)

    def _declare_lost(self, n: int, since: float) -> None:
        stats = self.stats
        stats.lost += n
        lost_at = self._lost_at
        for ext in range(self._next, self._next + n):
            lost_at[ext] = since
        while len(lost_at) > _LOST_MEMORY:
            del lost_at[next(iter(lost_at))]
        self._next += n
        self._history = (self._history << n) & _HISTORY_MASK
        # Cover up to MAX_CONCEAL_PACKETS: faded repeats, then silence.
        last = self._last_pcm
        size = len(last) or self._frame_bytes
        for i in range(min(n, MAX_CONCEAL_PACKETS)):
            if i < _MAX_REPEATS and last:
                last = audioop.mul(last, 2, 0.5)
                stats.concealed += 1
                self._release_concealment(last)
            else:
                self._release_concealment(bytes(size))
        self._last_pcm = b""

    def _release_concealment(self, pcm: bytes) -> None:
        fb = self._frame_bytes
        out = self._out
        out += pcm
        while len(out) >= fb:
            self._ready.append(bytes(out[:fb]))
            del out[:fb]

    def _set_wait(self, wait_s: float) -> None:
        wait_s = min(max(wait_s, self.min_ms / 1000.0), self.max_depth_ms / 1000.0)
        self._wait_s = wait_s
        ms = round(wait_s * 1000)
        self.stats.wait_ms = ms
        if ms > self.stats.wait_max_ms:
            self.stats.wait_max_ms = ms

    def _grow(self, wait_s: float, now_s: float) -> None:
        if wait_s > self._wait_s:
            self._set_wait(wait_s)
        self._seen.append((now_s, wait_s - WAIT_MARGIN_S))

    def _relax(self, now_s: float) -> None:
        """Once a second: shrink the wait toward what the last CALM_WINDOW_S needed."""
        elapsed = now_s - self._adapted_at
        self._adapted_at = now_s
        seen = self._seen
        while seen and seen[0][0] < now_s - CALM_WINDOW_S:
            seen.popleft()
        target = max((d for _, d in seen), default=0.0) + WAIT_MARGIN_S
        if target < self._wait_s and elapsed != math.inf:
            self._set_wait(max(target, self._wait_s - SHRINK_PER_S * min(elapsed, 2.0)))

    # -- reset -----------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the stream (held packets count as ``discarded``); the next packet starts afresh."""
        self._reset()
        self._ssrc = None

    def _reset(self) -> None:
        self.stats.resets += 1
        self.stats.discarded += len(self._held)
        self._held.clear()
        self._held_bytes = 0
        self._synced = False
        self._history = 0
        self._bad_seq = None
        self._lost_at.clear()
        self._last_pcm = b""
