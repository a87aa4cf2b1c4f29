"""When each frame of the application's audio goes to the caller: the playout timing policy.

Pure code: no Trio, no sockets. Every method takes ``now_s``; the Stream calls
``on_audio`` when app audio arrives and ``on_tick`` at ``next_deadline_s``, and sends the
frames they say are due with ``pop_frame``. The policy is judged from the caller's side,
which has no jitter buffer of its own worth counting on (AudioSocket into Asterisk, raw
RTP): frames are played in order, each for one ptime, starting when it arrives or when
the one before it ends, whichever is later. So:

* **Never cram.** Two frames sent closer than a ptime do not reach the caller sooner;
  the second just waits at the far side. Whatever latency bridge "catches up" by sending
  fast only moves into the far side's queue. After a stall of bridge itself, overdue
  slots are skipped (at most ``max_catch_up`` frames go out at once, 1 by default), the
  grid restarts from the late send (a slot served more than ``LATE_FOLLOW_S`` late moves
  the grid, so the next frame is a full ptime after it), and the audio the skipped
  slots would have carried stays queued until it is trimmed (below).
* **A grid phased to the app.** The 20 ms grid starts just behind the app's first audio
  (``PHASE_MARGIN_S``), so a real-time app's frame waits about that long, not up to a
  ptime. A frame that arrives at most ``SEND_EARLY_S`` before its slot goes out on
  arrival (the slot is used up; the grid does not move) — but never before the far side
  has finished the frame sent before it (within ``EARLY_TOLERANCE_S``): sending it any
  sooner would only pass the app's timing jitter on to the far side, where it becomes
  latency nothing can take back.
* **Hold a late slot.** When a streaming app's frame is not there at its slot, the slot
  is held up to ``GRACE_S`` (nothing is sent: a gap, which the far side's concealment
  covers) and the frame goes out on arrival; the grid follows it. Filling the slot with
  silence instead would push that frame, and every later one, a whole ptime back.
* **Trim standing latency** (``trim``). A queue that never drains means added latency
  that will never go away by itself: after a burst or a stall on either side, the
  caller would hear everything late for the rest of the call. Over windows of
  ``TRIM_WINDOW_FRAMES`` slots the policy finds the shortest wait ahead of any app
  frame as it arrives (the audio queued before it, plus the time to the next slot):
  the latency that *every* frame of the window paid. When two consecutive windows show the app
  sending in real time (about one frame's audio per slot, in at least one message per
  ``RT_MESSAGE_SLOTS`` slots) and the shortest wait stayed put (within
  ``TRIM_STABLE_S``) and above the margin, the excess is removed:

  - whole ptimes by dropping queued frames at the next slot that has them: up to
    ``QUIET_DROP_MAX_FRAMES`` the quietest ones queued (pauses in speech), more than
    that the oldest ones in one cut (a clean jump to the present rather than a collage
    of stale fragments), each cut spliced with a ``SPLICE_FADE_S`` cross-fade. If that
    empties the queue, the slot is held for the next frame like a late one;
  - the rest (less than half a ptime; more counts as a whole frame) by shortening the
    next frame by that much, spliced the same way, and moving the grid that much
    earlier, so the far side gets exactly as much audio as time passes.

  An app that sends faster than real time (TTS sending seconds ahead, in bursts or
  frame by frame) or pauses is never trimmed: every frame it sends is played, in order.
  What the caller hears of a trim: the skipped audio, up to a few ptimes at quiet
  moments after a burst; after a long stall, a jump to the present. Everything trimmed
  is counted (``trims``, ``trimmed_frames``, ``trimmed_s``).

* **Flow control** (``pause``/``resume``). A far side that buffers may say its queue
  is full (Asterisk ``chan_websocket``'s ``MEDIA_XOFF`` at 900 frames; it then drops
  whole messages at 1000). While paused nothing is due: no slot is served, so nothing is
  sent, not even filler (the far side keeps playing what it holds), and the app's audio
  queues here, where a clear can still reach it and its marks stay in order. ``resume``
  puts the next slot at once and starts the trimming windows afresh: a backlog built up
  by a pause is not standing latency of the app's.

Limits of what can be told apart: an app that deliberately keeps a constant lead over
real time while sending at exactly real time looks the same as a real-time app that fell
behind. Turn ``trim`` off for such a route.
"""

from __future__ import annotations

import math

import attrs

from ._pacing import LatenessHistogram, PacingClock
from ._playout import MarkName, PlayoutBuffer, splice

__all__ = ["PlayoutPolicy"]

#: Phase of the grid behind the app's first audio: small enough to add little latency,
#: large enough to absorb the ticker's 1 ms granularity.
PHASE_MARGIN_S = 0.0015
#: How long an empty slot of a streaming app holds, and what counts as streaming
#: (audio from the app within GRACE_STREAMING_S).
GRACE_S = 0.06
GRACE_STREAMING_S = 0.03
#: A frame that arrives at most this long before its slot goes out on arrival.
SEND_EARLY_S = 0.005
#: How much sooner than the end of the previous frame (at the far side) an early send
#: may go: the ticker's granularity, no more.
EARLY_TOLERANCE_S = 0.001
#: A slot served this much late (bridge itself stalled) moves the grid to the send.
LATE_FOLLOW_S = 0.005
#: Trimming: window length (slots), tolerance of the real-time test, stability and
#: slack of the shortest wait, and how a cut is made.
TRIM_WINDOW_FRAMES = 20
RT_TOLERANCE_FRAMES = 3
RT_MESSAGE_SLOTS = 3
TRIM_STABLE_S = 0.01
TRIM_SLACK_S = 0.002
QUIET_DROP_MAX_FRAMES = 3
SPLICE_FADE_S = 0.004


def _frame_bytes_valid(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0 or value & 1:
        raise ValueError(f"frame_bytes must be a positive even number, not {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


# Validators run in __init__ only: attrs' on_setattr hooks would cost a call per store
# on the per-frame path.
@attrs.define(slots=True, eq=False, on_setattr=attrs.setters.NO_OP)
class PlayoutPolicy:
    """The app → caller playout of one stream. See the module docs."""

    frame_bytes: int = attrs.field(validator=_frame_bytes_valid)
    ptime_s: float = attrs.field(default=0.02, validator=_positive)
    #: Frames a leg whose far side buffers (carrier WebSockets) may run ahead of the grid.
    lead_frames: int = 0
    #: The far side plays what it gets at once (AudioSocket, RTP): send on arrival.
    exact_pacing: bool = True
    trim: bool = True
    max_catch_up: int = 1
    #: Every paced frame's lateness is also recorded here (process-wide metrics).
    lateness_parent: LatenessHistogram | None = None

    buffer: PlayoutBuffer = attrs.field(init=False)
    clock: PacingClock | None = attrs.field(default=None, init=False)

    # -- counters -------------------------------------------------------------------------
    holds: int = attrs.field(default=0, init=False)
    """Slots held for a streaming app's late frame."""
    grace_sends: int = attrs.field(default=0, init=False)
    """Held slots whose frame arrived in time and went out on arrival."""
    early_sends: int = attrs.field(default=0, init=False)
    late_follows: int = attrs.field(default=0, init=False)
    """Slots served late (bridge stalled): the grid restarted from them."""
    trims: int = attrs.field(default=0, init=False)
    trimmed_frames: int = attrs.field(default=0, init=False)
    """Whole frames of app audio dropped by trimming."""
    trimmed_s: float = attrs.field(default=0.0, init=False)
    """All app audio trimmed (whole frames and shortened frames), in seconds."""
    shortened_frames: int = attrs.field(default=0, init=False)
    paused: bool = attrs.field(default=False, init=False)
    """The far side asked for no more audio for now (``pause``)."""
    pauses: int = attrs.field(default=0, init=False)

    @property
    def altered_frames(self) -> int:
        """Frames that went out changed by a trim: spliced after a cut, or shortened."""
        return self.buffer.spliced + self._spliced_before + self.shortened_frames


    # -- state ---------------------------------------------------------------------------
    _phased: bool = attrs.field(default=False, init=False)
    # When the far side has finished playing everything sent so far (serial playout).
    _end_s: float = attrs.field(default=-math.inf, init=False)
    _grace_open: bool = attrs.field(default=False, init=False)
    _app_audio_at: float = attrs.field(default=-math.inf, init=False)
    _bytes_per_s: float = attrs.field(default=0.0, init=False)
    _fade_samples: int = attrs.field(default=0, init=False)
    _shorten_bytes: int = attrs.field(default=0, init=False)
    _drop_debt: int = attrs.field(default=0, init=False)
    _spliced_before: int = attrs.field(default=0, init=False)  # by buffers replaced
    # The trimming window: where it started (grid index), messages and bytes received,
    # the shortest wait ahead of an arriving app frame; and the last window's verdict.
    _win_start: int = attrs.field(default=0, init=False)
    _win_msgs: int = attrs.field(default=0, init=False)
    _win_bytes: int = attrs.field(default=0, init=False)
    _win_min_wait: float = attrs.field(default=math.inf, init=False)
    _prev_rt: bool = attrs.field(default=False, init=False)
    _prev_min_wait: float = attrs.field(default=math.inf, init=False)

    def __attrs_post_init__(self) -> None:
        self.buffer = PlayoutBuffer(self.frame_bytes, round(self.ptime_s * 1000))
        self._set_rate()

    def _set_rate(self) -> None:
        self._bytes_per_s = self.frame_bytes / self.ptime_s
        self._fade_samples = round(SPLICE_FADE_S * self._bytes_per_s / 2)

    # ==================================================================================
    # queries
    # ==================================================================================

    @property
    def next_deadline_s(self) -> float:
        clock = self.clock
        if clock is None or self.paused:
            return math.inf
        return clock.next_deadline_s

    @property
    def queued_ms(self) -> float:
        return self.buffer.queued_ms

    @property
    def trimmed_ms(self) -> int:
        return round(self.trimmed_s * 1000)

    def streaming(self, now_s: float) -> bool:
        """The app sent audio within the last GRACE_STREAMING_S."""
        return now_s - self._app_audio_at < GRACE_STREAMING_S

    # ==================================================================================
    # the grid
    # ==================================================================================

    def start(self, now_s: float) -> None:
        """Start the grid free-running (the app sent no audio yet): filler to the caller."""
        if self.clock is None:
            self._start_grid(now_s)

    def _start_grid(self, now_s: float) -> None:
        self.clock = PacingClock(
            origin_s=now_s,
            ptime_s=self.ptime_s,
            max_catch_up=self.max_catch_up,
            lead_frames=self.lead_frames,
        )
        if self.lateness_parent is not None:
            self.clock.lateness.attach(self.lateness_parent)
        self._win_start = 0

    def _phase_grid(self, now_s: float) -> None:
        """Align the grid to the app's audio once, so a frame from the app waits about
        PHASE_MARGIN_S, not up to a whole ptime, before it goes to the caller."""
        self._phased = True
        clock = self.clock
        if clock is None:
            self._start_grid(now_s + PHASE_MARGIN_S)
            return
        # Never before the filler frame last sent has played out at the far side: the
        # app's frame would only wait there instead (and that wait could never be
        # trimmed). What it waits here instead is trimmed like any standing latency.
        target = max(now_s + PHASE_MARGIN_S, self._end_s)
        if abs(clock.next_deadline_s - target) > 0.001:
            clock.rephase(target)

    def set_frame_bytes(self, frame_bytes: int) -> None:
        """The call's rate changed mid-call (AudioSocket kind switch): a new queue at the
        new frame size; queued audio is dropped, marks are kept in order."""
        old = self.buffer
        self._spliced_before += old.spliced
        self.frame_bytes = frame_bytes
        self.buffer = PlayoutBuffer(frame_bytes, round(self.ptime_s * 1000))
        for name in old.clear():
            self.buffer.mark(name)
        self._shorten_bytes = 0
        self._drop_debt = 0
        self._set_rate()

    # ==================================================================================
    # input
    # ==================================================================================

    def on_audio(self, pcm: bytes, now_s: float) -> int:
        """Queue app audio (PCM16LE at the call's rate); return how many frames to send
        now with ``pop_frame`` (0 or 1)."""
        n = len(pcm)
        if not n:
            return 0
        if self.paused:
            # Queued only: nothing is sent, and no trimming decision is made on waits
            # the far side imposed.
            self.buffer.push(pcm)
            self._app_audio_at = now_s
            return 0
        buffer = self.buffer
        clock = self.clock
        ahead = buffer.queued_bytes
        if clock is not None:
            # How long this audio will wait: what is queued before it, plus the time to
            # the next slot (none when it is sent on arrival below; the minimum over a
            # window is what trimming looks at).
            wait = ahead / self._bytes_per_s
            to_slot = clock.next_deadline_s - now_s
            if to_slot > 0.0:
                wait += to_slot
            if wait < self._win_min_wait:
                self._win_min_wait = wait
        buffer.push(pcm)
        queued = ahead + n
        self._app_audio_at = now_s
        self._win_msgs += 1
        self._win_bytes += n
        if self._grace_open:
            # The awaited frame arrived inside its hold: it goes now, the grid follows.
            self._win_min_wait = 0.0
            self._grace_open = False
            self.grace_sends += 1
            if clock is not None:
                clock.rephase(now_s + self.ptime_s)
            return 1
        if not self._phased:
            self._phase_grid(now_s)
            clock = self.clock
        fb = self.frame_bytes
        if (
            self.exact_pacing
            and clock is not None
            and fb <= queued < 2 * fb
            and now_s >= self._end_s - EARLY_TOLERANCE_S
            and clock.take_early(now_s, SEND_EARLY_S)
        ):
            self.early_sends += 1
            if self._win_min_wait > 0.0:
                self._win_min_wait = 0.0  # it did not wait for the slot after all
            self._end_window_if_due()
            return 1
        return 0

    def pause(self) -> None:
        """The far side's queue is full: serve no slot until :meth:`resume`."""
        if self.paused:
            return
        self.paused = True
        self.pauses += 1
        self._grace_open = False

    def resume(self, now_s: float) -> None:
        """The far side has room again: the next slot is now, and the trimming windows
        start afresh (what queued during the pause is not the app's latency)."""
        if not self.paused:
            return
        self.paused = False
        clock = self.clock
        if clock is not None:
            clock.rephase(now_s)
            self._win_start = clock.index
        self._prev_rt = False
        self._prev_min_wait = math.inf
        self._win_msgs = 0
        self._win_bytes = 0
        self._win_min_wait = math.inf
        self._drop_debt = 0
        self._shorten_bytes = 0

    def mark(self, name: MarkName) -> None:
        self.buffer.mark(name)

    def clear(self) -> list[MarkName]:
        """Drop all queued app audio; return every pending mark, in order."""
        pending = self.buffer.clear()
        self._shorten_bytes = 0
        self._drop_debt = 0
        return pending

    def take_drained(self) -> bool:
        return self.buffer.take_drained()

    # ==================================================================================
    # the tick
    # ==================================================================================

    def on_tick(self, now_s: float, *, app_up: bool) -> int:
        """At ``next_deadline_s``: how many frames to send now with ``pop_frame``."""
        clock = self.clock
        if clock is None or self.paused:
            return 0
        n = clock.due(now_s)
        if not n:
            return 0
        if now_s - clock.deadline_s(clock.index - 1) > LATE_FOLLOW_S and not self.lead_frames:
            # Served late: the next slot a full ptime after this send, never sooner.
            clock.rephase(now_s + self.ptime_s)
            self.late_follows += 1
        self._end_window_if_due()
        buffer = self.buffer
        if self._drop_debt and buffer.queued_frames:
            self._pay_debt()
        if (
            not self._grace_open
            and app_up
            and not buffer.queued_frames
            and len(buffer._partial) < 2
            and now_s - self._app_audio_at < GRACE_STREAMING_S
        ):
            # The app is streaming but this slot's frame is not here yet (it is late, or
            # a trim just dropped the one queued): hold the last slot (see the module
            # docs). The frames before it go out as filler.
            self._grace_open = True
            self.holds += 1
            clock.rephase(now_s + GRACE_S)
            n -= 1
        else:
            self._grace_open = False
        return n

    def pop_frame(self, now_s: float) -> tuple[bytes | None, list[MarkName]]:
        """The next frame to send (None: nothing queued, send filler) and the marks it
        releases. Call it exactly as many times as ``on_tick``/``on_audio`` said."""
        pcm, marks = self.buffer.pop()
        if pcm is not None and self._shorten_bytes:
            pcm = self._shorten(pcm)
        end = self._end_s
        self._end_s = (now_s if now_s > end else end) + (
            len(pcm) / self._bytes_per_s if pcm is not None else self.ptime_s
        )
        return pcm, marks

    # ==================================================================================
    # trimming
    # ==================================================================================

    def _end_window_if_due(self) -> None:
        clock = self.clock
        if clock is None or clock.index - self._win_start < TRIM_WINDOW_FRAMES:
            return
        slots = clock.index - self._win_start
        frames_in = self._win_bytes / self.frame_bytes
        min_wait = self._win_min_wait
        real_time = (
            min_wait != math.inf
            and self._win_msgs * RT_MESSAGE_SLOTS >= slots
            and abs(frames_in - slots) <= max(RT_TOLERANCE_FRAMES, slots / 8)
        )
        self._drop_debt = 0  # a trim not paid within its window is void: judge afresh
        if (
            self.trim
            and real_time
            and self._prev_rt
            and abs(min_wait - self._prev_min_wait) <= TRIM_STABLE_S
        ):
            excess = min(min_wait, self._prev_min_wait) - PHASE_MARGIN_S
            if excess > TRIM_SLACK_S:
                self._trim(excess)
                real_time = False  # judge afresh: two new windows before the next trim
        self._prev_rt = real_time
        self._prev_min_wait = min_wait
        self._win_start = clock.index
        self._win_msgs = 0
        self._win_bytes = 0
        self._win_min_wait = math.inf

    def _trim(self, excess_s: float) -> None:
        """Schedule removing ``excess_s`` of latency: whole frames are dropped at the
        next slots that have them queued (``_pay_debt``), the rest by shortening the
        next frame sent. Most of a ptime counts as a whole frame: its slot is then held
        for the next frame (a gap of the difference at the far side) rather than a
        sliver of a frame being sent."""
        ptime = self.ptime_s
        whole = int((excess_s + 1e-9) / ptime)
        rest = excess_s - whole * ptime
        if rest > ptime / 2:
            whole, rest = whole + 1, 0.0
        self._drop_debt = whole
        if rest > TRIM_SLACK_S:
            self._shorten_bytes = 2 * round(rest * self._bytes_per_s / 2)
        self.trims += 1

    def _pay_debt(self) -> None:
        """Drop the frames a trim asked for, as far as they are queued (see the module
        docs for which ones)."""
        want = self._drop_debt
        dropped = self.buffer.drop(
            want, quietest=want <= QUIET_DROP_MAX_FRAMES, fade_samples=self._fade_samples
        )
        self._drop_debt = want - dropped
        self.trimmed_frames += dropped
        self.trimmed_s += dropped * self.ptime_s

    def _shorten(self, pcm: bytes) -> bytes:
        """Play ``pcm`` shortened by the pending amount, and move the grid earlier by
        as much: the far side hears one shorter frame and then continues on time."""
        cut = min(self._shorten_bytes, len(pcm) - 2)
        self._shorten_bytes = 0
        clock = self.clock
        if cut <= 0 or clock is None:
            return pcm
        out = splice(pcm, pcm[cut:], self._fade_samples)
        clock.rephase(clock.next_deadline_s - cut / self._bytes_per_s)
        self.trimmed_s += cut / self._bytes_per_s
        self.shortened_frames += 1
        return out
