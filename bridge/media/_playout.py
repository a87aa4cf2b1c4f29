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
"""

from __future__ import annotations

from collections import deque

import attrs

__all__ = ["PlayoutBuffer"]


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

    @property
    def queued_ms(self) -> float:
        """Audio waiting to be played, in ms (a lone odd byte does not count)."""
        queued = len(self._frames) * self.frame_bytes + (len(self._partial) & ~1)
        return queued * self.ptime_ms / self.frame_bytes

    @property
    def pending_marks(self) -> int:
        return len(self._marks)

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
        return released

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
