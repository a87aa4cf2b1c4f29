"""A frame-level simulation of one stream's app -> caller path, for the pure playout policy.

No Trio: the simulation advances time itself, calling ``on_audio`` at each app frame's
arrival and ``on_tick`` at ``next_deadline_s``, exactly as the Stream does. The caller's
side is modelled as it is judged (PROTOCOLS.md, AudioSocket and raw RTP): no jitter
buffer, frames played in order, each for its own length, from when it arrives or when
the one before it ends, whichever is later. So cramming frames never lowers latency.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence

import attrs

from bridge.media import PlayoutPolicy

RATE = 8000
FB = 320  # 20 ms at 8 kHz
PTIME = 0.02
BYTES_PER_S = 2 * RATE


def numbered(n: int, size: int = FB, level: int = 1000) -> bytes:
    """A frame that says which one it is: every sample is ``level + n`` (never silent)."""
    return struct.pack("<h", level + n) * (size // 2)


def number_of(pcm: bytes, level: int = 1000) -> int | None:
    """The frame number of a (possibly spliced or shortened) numbered frame: its last
    sample (a splice only touches the first few ms); None for silence."""
    if not any(pcm):
        return None
    return int(struct.unpack_from("<h", pcm, len(pcm) - 2)[0]) - level


@attrs.define
class Sent:
    at: float
    pcm: bytes | None  # None: filler (silence) sent because nothing was queued
    marks: list[str]


@attrs.define
class Result:
    sent: list[Sent]
    policy: PlayoutPolicy

    def played(self) -> list[tuple[float, int]]:
        """(far-side play time, frame number) of every app frame, serial playout."""
        out: list[tuple[float, int]] = []
        ends = -math.inf
        for s in self.sent:
            length = (len(s.pcm) if s.pcm is not None else FB) / BYTES_PER_S
            start = max(s.at, ends)
            ends = start + length
            if s.pcm is not None:
                n = number_of(s.pcm)
                if n is not None:
                    out.append((start, n))
        return out


def simulate(
    arrivals: Sequence[tuple[float, bytes]],
    until_s: float,
    *,
    policy: PlayoutPolicy | None = None,
    marks_at: dict[int, str] | None = None,
    app_up: Callable[[float], bool] = lambda t: True,
    start_grid_s: float = 0.1,
    stalls: Sequence[tuple[float, float]] = (),
) -> Result:
    """Run the policy over app frames arriving at the given times.

    ``marks_at[i]`` places a mark after arrival ``i``. ``stalls`` are (start, length)
    periods in which bridge itself does nothing (a frozen event loop): arrivals and
    ticks due in them happen at the stall's end, in order.
    """
    policy = policy or PlayoutPolicy(FB, PTIME)
    marks_at = marks_at or {}
    sent: list[Sent] = []

    def stalled(t: float) -> float:
        for start, length in stalls:
            if start <= t < start + length:
                return start + length
        return t

    def send(n: int, t: float) -> None:
        for _ in range(n):
            pcm, marks = policy.pop_frame(t)
            sent.append(Sent(t, pcm, marks))

    i = 0
    started = False
    t = 0.0
    while True:
        arrival = arrivals[i][0] if i < len(arrivals) else math.inf
        tick = policy.next_deadline_s
        if not started and policy.clock is None:
            tick = start_grid_s
        t_next = min(arrival, tick)
        if t_next > until_s:
            break
        t = max(stalled(t_next), t)
        if arrival <= tick:
            pcm = arrivals[i][1]
            send(policy.on_audio(pcm, t), t)
            if i in marks_at:
                policy.mark(marks_at[i])
            i += 1
        elif policy.clock is None:
            started = True
            policy.start(t)
        else:
            send(policy.on_tick(t, app_up=app_up(t)), t)
    return Result(sent, policy)


def realtime(
    frames: int, *, t0: float = 0.2, offset: Callable[[int], float] = lambda k: 0.0
) -> list[tuple[float, bytes]]:
    """A real-time app: frame k at t0 + 20 ms * k + offset(k), order kept (TCP)."""
    out = []
    last = -math.inf
    for k in range(frames):
        at = max(t0 + PTIME * k + offset(k), last)
        last = at
        out.append((at, numbered(k)))
    return out


def latency_by_frame(result: Result, due: dict[int, float]) -> dict[int, float]:
    """Far-side play time minus when the frame was due (its real-time arrival)."""
    return {n: at - due[n] for at, n in result.played() if n in due}
