"""The playout buffer: app audio of any chunk size, re-framed for a 20 ms clock, with marks.

Semantics (the app-leg protocols depend on them; PROTOCOLS.md §0 and "Design
implications" 2-3):

* **Framing.** ``push`` accepts any number of bytes. Complete frames are cut at once; the
  remainder waits for the next push and is joined to it, so an odd byte count never
  shifts the sample alignment of what follows.
* **Padding** happens in exactly two places, so the app's tail is never lost and
  audio that is still arriving is never split:

  1. ``pop`` finds no complete frame but a partial one (at least one whole sample): the
     partial frame is padded with silence and played. Audio pushed *before* that pop
     is joined to it; audio pushed after it starts a new frame.
  2. ``mark`` is called while a partial frame is queued: the partial frame is padded
     then, so that the mark sits on a frame boundary right after the audio before it.

  A lone odd byte (half a sample) is never padded or played: it stays queued to pair
  with the first byte of the next push (a mark placed meanwhile goes before it), and
  is not counted as queued audio.
* **Marks.** ``mark(name)`` records a position after all audio queued so far. ``pop``
  first releases the marks at the head of the queue, then takes the frame. So a mark is
  released by the pop *after* the one that returned the last frame before it, i.e. once
  that frame has had its 20 ms on the wire; a mark queued when the buffer is empty is
  released by the next pop. Marks come out in the order they went in.
* **Clear.** ``clear()`` drops all queued audio (including a partial frame and a lone odd
  byte) and returns every pending mark in order (Twilio semantics: a mark echo means
  "played or cleared").
* **Drained.** The first ``pop`` that finds nothing to play after at least one frame was
  returned sets a flag that ``take_drained()`` reads and resets: true once per
  transition from playing to empty, re-armed only by playing audio again. The pop that
  drains also releases any mark placed after the last frame, so a caller reports marks
  first, then ``drained``. ``clear()`` disarms it: a cleared buffer is not "drained".
* **Drop** (latency trimming, see ``PlayoutPolicy``). ``drop(n)`` removes ``n`` queued
  complete frames, either the oldest or the quietest (lowest RMS). Marks keep their
  place relative to the audio around them (a mark after a dropped frame is released one
  frame sooner). Each cut is spliced: the frame after a run of dropped frames fades in
  from the first dropped frame over ``fade_samples`` (see ``splice``), so the audio the
  caller hears stays continuous across the cut instead of clicking. A cut at the very
  end of the queue is spliced into the next frame that arrives.
"""

from __future__ import annotations

import array
from collections import deque

import attrs

from ._audioop import audioop

__all__ = ["PlayoutBuffer", "splice"]


def splice(before: bytes, after: bytes, fade_samples: int) -> bytes:
    """``after`` (PCM16LE), its first ``fade_samples`` cross-faded in from ``before``.

    For a cut in a stream of audio: ``before`` is the audio that would have followed
    what was already played (so it continues it without a jump), ``after`` is the
    audio that follows the cut. The result starts as ``before`` and ends as ``after``,
    with a linear cross-fade in between (a few ms are enough to turn the click of a hard
    cut into an inaudible transition). The length is ``len(after)``.
    """
    n = min(fade_samples, len(before) >> 1, len(after) >> 1)
    if n <= 0:
        return after
    a = array.array("h", before[: 2 * n])
    b = array.array("h", after[: 2 * n])
    step = 1.0 / (n + 1)
    for i in range(n):
        w = (i + 1) * step
        b[i] = int(a[i] * (1.0 - w) + b[i] * w)
    return b.tobytes() + after[2 * n :]


def _frame_bytes_valid(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0 or value & 1:
        raise ValueError(f"frame_bytes must be a positive even number, not {value!r}")


def _ptime_valid(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise ValueError(f"ptime_ms must be positive, not {value!r}")


# Validators run in __init__ only: attrs' default on_setattr hooks would put a Python
# call on every attribute store of the per-frame path (measured: ~2x the whole cost).
#: A mark's name: what the app chose, a JSON string or number, kept as it came so that
#: its echo carries the same JSON value.
MarkName = str | int | float

@attrs.define(slots=True, on_setattr=attrs.setters.NO_OP)
class PlayoutBuffer:
    """Queue of app → call audio, popped one frame per tick. See the module docs."""

    frame_bytes: int = attrs.field(validator=_frame_bytes_valid)
    ptime_ms: int = attrs.field(default=20, validator=_ptime_valid)

    _frames: deque[bytes] = attrs.field(factory=deque, init=False, repr=False)
    # Bytes after the last complete frame (always fewer than frame_bytes).
    _partial: bytearray = attrs.field(factory=bytearray, init=False, repr=False)
    # Frame positions are absolute counts, so a mark is just "released once this many
    # frames have been popped" and pop never scans the queue.
    _pushed: int = attrs.field(default=0, init=False, repr=False)
    _popped: int = attrs.field(default=0, init=False, repr=False)
    _marks: deque[tuple[int, MarkName]] = attrs.field(factory=deque, init=False, repr=False)
    _armed: bool = attrs.field(default=False, init=False, repr=False)
    _drained: bool = attrs.field(default=False, init=False, repr=False)
    # A cut at the end of the queue: the next complete frame is spliced in from this.
    #: Frames whose audio a splice changed (the frame after each cut).
    spliced: int = attrs.field(default=0, init=False)
    _splice_from: bytes = attrs.field(default=b"", init=False, repr=False)
    _splice_at: int = attrs.field(default=0, init=False, repr=False)  # its absolute index
    _fade_samples: int = attrs.field(default=0, init=False, repr=False)

    @property
    def queued_ms(self) -> float:
        """Audio waiting to be played, in ms (a lone odd byte does not count)."""
        queued = len(self._frames) * self.frame_bytes + (len(self._partial) & ~1)
        return queued * self.ptime_ms / self.frame_bytes

    @property
    def pending_marks(self) -> int:
        return len(self._marks)

    @property
    def queued_bytes(self) -> int:
        """Bytes of audio waiting (complete frames and a partial one)."""
        return len(self._frames) * self.frame_bytes + len(self._partial)

    @property
    def queued_frames(self) -> int:
        """Complete frames queued (a partial frame does not count)."""
        return len(self._frames)

    def push(self, pcm: bytes) -> None:
        """Queue PCM16 (little-endian) of any length."""
        n = len(pcm)
        if not n:
            return
        frame_bytes = self.frame_bytes
        frames = self._frames
        partial = self._partial
        start = 0
        if partial:
            need = frame_bytes - len(partial)
            if n < need:
                partial += pcm
                return
            partial += pcm[:need]
            frames.append(bytes(partial))
            partial.clear()
            self._pushed += 1
            start = need
        whole = (n - start) // frame_bytes
        if whole:
            end = start + whole * frame_bytes
            if whole == 1 and start == 0 and n == frame_bytes:
                frames.append(bytes(pcm))  # bytes(b) of a bytes object is b itself: no copy
            else:
                frames.extend(
                    [bytes(pcm[i : i + frame_bytes]) for i in range(start, end, frame_bytes)]
                )
            self._pushed += whole
            start = end
        if start < n:
            partial += pcm[start:]
        if self._splice_from and self._pushed > self._splice_at:
            self._apply_pending_splice()

    def mark(self, name: MarkName) -> None:
        """Place a mark after all audio queued so far."""
        if len(self._partial) >= 2:
            self._pad_partial()
        self._marks.append((self._pushed, name))

    def pop(self) -> tuple[bytes | None, list[MarkName]]:
        """This tick's frame (``None`` when there is nothing to play) and the marks released."""
        released: list[MarkName] = []
        marks = self._marks
        if marks:
            popped = self._popped
            while marks and marks[0][0] <= popped:
                released.append(marks.popleft()[1])
        frames = self._frames
        if not frames:
            if len(self._partial) < 2:
                if self._armed:
                    self._armed = False
                    self._drained = True
                return None, released
            self._pad_partial()
        self._popped += 1
        self._armed = True
        self._drained = False
        return frames.popleft(), released

    def clear(self) -> list[MarkName]:
        """Drop all queued audio; return every pending mark, in order."""
        released = [name for _, name in self._marks]
        self._marks.clear()
        self._frames.clear()
        self._partial.clear()
        self._pushed = self._popped
        self._armed = False
        self._drained = False
        self._splice_from = b""
        return released

    def drop(self, count: int, *, quietest: bool = False, fade_samples: int = 0) -> int:
        """Remove up to ``count`` queued complete frames (the oldest, or the quietest);
        return how many were removed. See the module docs."""
        frames = self._frames
        n = min(count, len(frames))
        if n <= 0:
            return 0
        if quietest:
            rms = audioop.rms
            # Lowest RMS first; among equals the oldest (the most stale audio) first.
            order = sorted(range(len(frames)), key=lambda i: (rms(frames[i], 2), i))
            doomed = set(order[:n])
        else:
            doomed = set(range(n))
        kept: deque[bytes] = deque()
        run_first: bytes = b""
        for i, frame in enumerate(frames):
            if i in doomed:
                if not run_first:
                    run_first = frame
                continue
            if run_first:
                frame = splice(run_first, frame, fade_samples)
                self.spliced += 1
                run_first = b""
            kept.append(frame)
        self._frames = kept
        self._pushed -= n
        if run_first:
            # The cut is at the end of the queue: splice into the next frame to arrive.
            self._splice_from = run_first
            self._splice_at = self._pushed
            self._fade_samples = fade_samples
        # A mark at position p follows the frames with absolute index < p.
        popped = self._popped
        if self._marks:
            self._marks = deque(
                (p - sum(1 for i in doomed if popped + i < p), name) for p, name in self._marks
            )
        return n

    def _apply_pending_splice(self) -> None:
        # The first frame queued after the cut (absolute index _splice_at).
        i = self._splice_at - self._popped
        frames = self._frames
        if 0 <= i < len(frames):
            frames[i] = splice(self._splice_from, frames[i], self._fade_samples)
            self.spliced += 1
        self._splice_from = b""

    def take_drained(self) -> bool:
        """True once after the buffer ran out of audio (see the module docs)."""
        drained = self._drained
        self._drained = False
        return drained

    def _pad_partial(self) -> None:
        partial = self._partial
        whole = len(partial) & ~1  # a trailing odd byte stays for the next push
        frame = bytes(partial[:whole]) + bytes(self.frame_bytes - whole)
        del partial[:whole]
        self._frames.append(frame)
        self._pushed += 1
        if self._splice_from and self._pushed > self._splice_at:
            self._apply_pending_splice()
