"""Pacing arithmetic: an absolute 20 ms grid per stream, and a lateness histogram.

One shared ticker wakes every stream (PERFORMANCE.md: a per-stream ``sleep_until`` costs
more than all the audio work). On each wake-up a stream asks its ``PacingClock`` how
many frames are due and sends that many. The clock never sleeps and never reads a
clock itself: ``now_s`` is passed in, which keeps it deterministic and testable.

Deadlines are ``origin_s + n * ptime_s`` computed from the integer frame index ``n``, so
no floating-point error accumulates: after an hour the grid is exactly where it should
be, however jittery the wake-ups were.
"""

from __future__ import annotations

import math

import attrs

__all__ = ["LatenessHistogram", "PacingClock"]


@attrs.define(slots=True)
class LatenessHistogram:
    """Fixed-bucket histogram of lateness: ``bucket_ms`` wide up to ``limit_ms``, plus overflow.

    Recording is O(1) and allocation-free; ``percentile`` walks the buckets (O(buckets),
    meant for a stats request, not for every tick).
    """

    bucket_ms: float = 0.1
    limit_ms: float = 50.0
    #: Every observation is also recorded here (a process-wide total for metrics, with
    #: the same buckets): O(1) more per record, and nothing to fold at scrape time.
    parent: LatenessHistogram | None = None
    count: int = attrs.field(default=0, init=False)
    max_ms: float = attrs.field(default=0.0, init=False)
    total_ms: float = attrs.field(default=0.0, init=False)
    _per_ms: float = attrs.field(init=False, repr=False)
    _overflow: int = attrs.field(init=False, repr=False)
    # _counts[_overflow] counts everything at or above limit_ms.
    _counts: list[int] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.bucket_ms <= 0 or self.limit_ms < self.bucket_ms:
            raise ValueError("need 0 < bucket_ms <= limit_ms")
        self._per_ms = 1.0 / self.bucket_ms
        self._overflow = math.ceil(self.limit_ms / self.bucket_ms)
        self._counts = [0] * (self._overflow + 1)

    def record(self, lateness_s: float) -> None:
        """Count one observation; negative lateness (early) counts as 0."""
        ms = lateness_s * 1000.0
        if ms < 0.0:
            ms = 0.0
        i = int(ms * self._per_ms)
        if i > self._overflow:
            i = self._overflow
        self._counts[i] += 1
        self.count += 1
        self.total_ms += ms
        if ms > self.max_ms:
            self.max_ms = ms
        parent = self.parent
        if parent is not None:
            parent._counts[i] += 1
            parent.count += 1
            parent.total_ms += ms
            if ms > parent.max_ms:
                parent.max_ms = ms

    def attach(self, parent: LatenessHistogram) -> None:
        """Also record every later observation into ``parent`` (same buckets)."""
        if parent.bucket_ms != self.bucket_ms or parent.limit_ms != self.limit_ms:
            raise ValueError("a parent histogram needs the same buckets")
        self.parent = parent

    def cumulative(self, edges_ms: tuple[float, ...]) -> list[int]:
        """Observations at or below each edge (Prometheus ``le`` buckets), at bucket
        resolution: bucket ``i`` holds [i, i+1) * bucket_ms and counts toward an edge
        when its lower end is below the edge."""
        out = []
        counts = self._counts
        for edge in edges_ms:
            n = min(math.ceil(edge * self._per_ms - 1e-9), self._overflow)
            out.append(sum(counts[:n]))
        return out

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.count if self.count else 0.0

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (0-100) in ms, nearest-rank, at bucket resolution.

        Reported as the upper edge of the bucket holding that rank (never below the true
        value, at most one bucket above it), capped at ``max_ms``; ranks in the overflow
        bucket report ``max_ms``. 0.0 when nothing was recorded.
        """
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"percentile must be within 0..100, not {p!r}")
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(p / 100.0 * self.count))
        seen = 0
        for i, n in enumerate(self._counts):
            seen += n
            if seen >= rank:
                if i == self._overflow:
                    return self.max_ms
                return min((i + 1) * self.bucket_ms, self.max_ms)
        return self.max_ms  # not reached: the counts sum to count

    def reset(self) -> None:
        self._counts = [0] * (self._overflow + 1)
        self.count = 0
        self.max_ms = 0.0
        self.total_ms = 0.0


def _non_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


def _positive_float(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value!r}")


# Validators run in __init__ only: attrs' default on_setattr hooks would put a Python
# call on every attribute store of the per-frame path (measured: ~2x the whole cost).
@attrs.define(slots=True, on_setattr=attrs.setters.NO_OP)
class PacingClock:
    """When to send each frame of one stream: frame ``n`` is due at ``origin_s + n * ptime_s``.

    ``due(now_s)`` returns how many frames to send now and moves the clock past them.

    * **Catch-up.** After a stall, at most ``max_catch_up`` overdue frames are sent in
      one call. If more are overdue, the oldest slots are **skipped** (``skipped``
      counts them): the grid index jumps forward, the grid itself does not move. The
      clock holds no audio, so skipping drops nothing by itself; it *delays*: the
      caller's next frames go out in the current slots, later than first scheduled.
      A caller that would rather keep latency constant drops ``skipped`` frames itself.
    * **Lead.** ``lead_frames`` lets a leg whose far side buffers (carrier WebSockets,
      chan_websocket) run up to N frames ahead of the grid; legs with no far-side buffer
      (AudioSocket, raw RTP) use 0 for exact pacing. A lead adds to ``max_catch_up``.
    * **Idle.** ``due(now_s, available=k)`` says only ``k`` frames are queued. Fewer are
      then sent, overdue slots with nothing to send are given up (``idle`` counts them;
      audio arriving later is not burst out to "catch up"), and unused lead stays
      available, so a burst after a pause can again go out ``lead_frames`` ahead.

    Lateness of each sent frame (``now_s`` minus its grid deadline; 0 for a frame sent
    ahead of its deadline) goes into ``lateness``.
    """

    origin_s: float
    ptime_s: float = attrs.field(default=0.02, validator=_positive_float)
    max_catch_up: int = attrs.field(default=3, validator=_at_least_one)
    lead_frames: int = attrs.field(default=0, validator=_non_negative)
    index: int = attrs.field(default=0, init=False)
    """The next frame to send (frames sent, skipped or idle so far)."""
    skipped: int = attrs.field(default=0, init=False)
    idle: int = attrs.field(default=0, init=False)
    lateness: LatenessHistogram = attrs.field(factory=LatenessHistogram, init=False)

    # Newest grid frame whose deadline had passed at the last due() call.
    _last_frame: int = attrs.field(default=-1, init=False, repr=False)

    @property
    def next_deadline_s(self) -> float:
        """When to call ``due`` next: the time the next frame may be sent.

        With ``lead_frames=0`` this is the grid deadline of frame ``index``. With a lead it
        is ``lead_frames`` ptimes earlier, but never before the next grid tick (when the
        lead is unused because nothing was available, waking earlier would only spin).
        """
        slot = max(self.index - self.lead_frames, self._last_frame + 1)
        return self.origin_s + slot * self.ptime_s

    def deadline_s(self, n: int) -> float:
        """Grid deadline of frame ``n``."""
        return self.origin_s + n * self.ptime_s

    def rephase(self, next_deadline_s: float) -> None:
        """Shift the whole grid so that ``next_deadline_s`` becomes the given time.

        For aligning the grid once to the phase of audio arriving from elsewhere. The
        grid stays exact (deadlines are still computed from the index), only shifted.
        """
        self.origin_s += next_deadline_s - self.next_deadline_s

    # Lateness shortcuts (the histogram is ``lateness``).

    @property
    def count(self) -> int:
        """Frames sent (lateness observations)."""
        return self.lateness.count

    @property
    def max_ms(self) -> float:
        return self.lateness.max_ms

    def percentile(self, p: float) -> float:
        """Lateness percentile in ms; see ``LatenessHistogram.percentile``."""
        return self.lateness.percentile(p)

    def frame_at(self, now_s: float) -> int:
        """Index of the newest frame whose deadline is ``<= now_s`` (negative before the origin)."""
        origin = self.origin_s
        ptime = self.ptime_s
        k = math.floor((now_s - origin) / ptime)
        # The division can land one off right at a deadline; settle it with the same
        # expression next_deadline_s uses, so the two always agree.
        if origin + (k + 1) * ptime <= now_s:
            k += 1
        elif origin + k * ptime > now_s:
            k -= 1
        return k

    def take_early(self, now_s: float, early_s: float) -> bool:
        """Account the next frame as sent now if its deadline is at most ``early_s`` away.

        For a frame that is already here just before its slot (a real-time source whose
        phase sits a little ahead of the grid): sending it on arrival saves it the wait
        for the tick, and the grid is unchanged. Returns False, taking nothing, if the
        slot is further away, or if the next slot is overdue (that is ``due``'s work:
        catch-up and skipping).
        """
        deadline = self.origin_s + self.index * self.ptime_s
        if not 0.0 <= deadline - now_s <= early_s:
            return False
        self.lateness.record(0.0)
        self.index += 1
        return True

    def due(self, now_s: float, available: int | None = None) -> int:
        """How many frames to send now; the caller sends exactly that many."""
        k = self.frame_at(now_s)
        self._last_frame = k
        index = self.index
        overdue = k - index + 1
        if overdue > self.max_catch_up:
            skip = overdue - self.max_catch_up
            index += skip
            self.skipped += skip
        # Never negative, even if now_s went backwards.
        count = max(k + self.lead_frames - index + 1, 0)
        if available is not None and available < count:
            count = max(available, 0)
        if count > 0:
            origin = self.origin_s
            ptime = self.ptime_s
            record = self.lateness.record
            for n in range(index, index + count):
                record(now_s - (origin + n * ptime))
            index += count
        if available is not None and index <= k:
            self.idle += k + 1 - index
            index = k + 1
        self.index = index
        return count
