"""Seeded network and sender impairments: frame index -> send time(s), drop, duplicate.

Pure code (no I/O, no clock): the rig's emulated caller and emulated app ask it when to
send each frame, and the analysis asks it where each impairment ended. Same seed, same
schedule.

Conditions (:func:`parse` takes their names):

=================  =====================================================================
``clean``          frame k at k x ptime
``burstK``         K frames back-to-back mid-call (at ``at_s``, 2 s by default); the sender
                   then goes on from there, K-1 frames ahead of its old grid.
                   ``burstK@0`` is the burst at the very start (finding 1 of the issue).
``stallS``         (``stall1s``, ``stall500ms``) nothing is sent for S seconds from
                   ``at_s``; the frames held meanwhile go at once when it ends, then the
                   old grid resumes.
``jitterJ``        (``jitter20``: J ms) each frame is delayed by a seeded random amount in
                   [0, J] ms (uniform; ``jitter20exp``: exponential with mean J/3, capped at
                   J). On TCP and WebSocket legs order is preserved: a delayed frame holds
                   back the ones behind it (head-of-line blocking), so no frame is ever
                   early. On RTP the frames may overtake each other.
``lossP``          (``loss1``: P %) each frame is dropped with probability P. **RTP only**
``dupP``           each frame is sent twice (the copy 1 ms later) with probability P. **RTP only**
``reorderP``       a frame swaps places with the next one with probability P. **RTP only**
``freeze``         the daemon (not the network) is frozen: SIGSTOP for 500 ms, three times
                   (at 2, 4 and 6 s); the send schedule is clean. Carried out by the rig.
=================  =====================================================================

TCP (AudioSocket) and WebSocket legs cannot lose, duplicate or reorder: the kernel's
stream delivers every byte once and in order. Those conditions are refused for them
(:func:`check_transport`).

Two ways to apply a condition:

* :func:`caller_schedule`: a *clocked* sender (the emulated caller, or a TTS-like app)
  sends frame k at the time the schedule says.
* :func:`hold_delays`: a *reactive* sender (the echo app, which can only send a frame
  after it has received it) delays frame k by ``delays[k] >= 0`` seconds after the
  moment it would have sent it. A burst there is "K-1 frames held, then K at once".
"""

from __future__ import annotations

import itertools
import math
import random
import re
from dataclasses import dataclass, field

__all__ = [
    "FREEZE_AT_S",
    "FREEZE_FOR_S",
    "Impairment",
    "Schedule",
    "Send",
    "caller_schedule",
    "check_transport",
    "hold_delays",
    "parse",
]

#: The freeze condition: SIGSTOP at these offsets into the call, for FREEZE_FOR_S each.
FREEZE_AT_S = (2.0, 4.0, 6.0)
FREEZE_FOR_S = 0.5

_DEFAULT_AT_S = 2.0
_ORDERLESS = {"loss", "dup", "reorder"}


@dataclass(frozen=True)
class Impairment:
    """One condition. ``kind`` is one of clean, burst, stall, jitter, loss, dup,
    reorder, freeze; the other fields are what that kind uses."""

    kind: str
    frames: int = 0
    """burst: K."""
    seconds: float = 0.0
    """stall: S; jitter: J (the largest delay)."""
    probability: float = 0.0
    """loss, dup, reorder: per frame."""
    at_s: float = _DEFAULT_AT_S
    """burst, stall: where in the call it happens."""
    distribution: str = "uniform"
    """jitter: uniform or exp."""
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("clean", "burst", "stall", "jitter", "loss", "dup", "reorder", "freeze"):
            raise ValueError(f"unknown impairment kind {self.kind!r}")
        if self.kind == "burst" and self.frames < 1:
            raise ValueError("a burst needs at least 1 frame")
        if self.kind in ("stall", "jitter") and not self.seconds > 0:
            raise ValueError(f"{self.kind} needs a positive duration")
        if self.kind in _ORDERLESS and not 0 <= self.probability <= 1:
            raise ValueError("probability must be in [0, 1]")
        if self.distribution not in ("uniform", "exp"):
            raise ValueError(f"unknown jitter distribution {self.distribution!r}")
        if not self.name:
            object.__setattr__(self, "name", self._default_name())

    def _default_name(self) -> str:
        k = self.kind
        if k == "burst":
            return f"burst{self.frames}" + ("@0" if self.at_s == 0 else "")
        if k == "stall":
            return f"stall{self.seconds:g}s"
        if k == "jitter":
            return f"jitter{self.seconds * 1000:g}" + ("exp" if self.distribution == "exp" else "")
        if k in _ORDERLESS:
            return f"{k}{self.probability * 100:g}"
        return k

    @property
    def needs_datagrams(self) -> bool:
        """Only a datagram transport (RTP) can lose, duplicate or reorder."""
        return self.kind in _ORDERLESS

    def windows(self, ptime_s: float = 0.02) -> list[tuple[float, float]]:
        """(start, end) offsets of each disturbance, for time-to-recover: measured from
        each end. Empty for conditions that last the whole call (jitter, loss) or none."""
        if self.kind == "burst":
            t = round(self.at_s / ptime_s) * ptime_s
            return [(t, t)]
        if self.kind == "stall":
            t = round(self.at_s / ptime_s) * ptime_s
            return [(t, t + self.seconds)]
        if self.kind == "freeze":
            return [(t, t + FREEZE_FOR_S) for t in FREEZE_AT_S]
        return []


_NAME = re.compile(
    r"^(?:(?P<clean>clean)|(?P<freeze>freeze)"
    r"|burst(?P<burst>\d+)(?:@(?P<burst_at>[\d.]+))?"
    r"|stall(?P<stall>[\d.]+)(?P<stall_unit>ms|s)(?:@(?P<stall_at>[\d.]+))?"
    r"|jitter(?P<jitter>[\d.]+)(?P<jitter_dist>exp)?"
    r"|(?P<pkind>loss|dup|reorder)(?P<p>[\d.]+))$"
)


def parse(name: str) -> Impairment:
    """``clean``, ``burst4``, ``burst4@0``, ``stall1s``, ``stall500ms@3``, ``jitter20``,
    ``jitter60exp``, ``loss1`` (percent), ``dup1``, ``reorder5``, ``freeze``."""
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"unknown condition {name!r}")
    g = m.groupdict()
    if g["clean"]:
        return Impairment("clean", name=name)
    if g["freeze"]:
        return Impairment("freeze", name=name)
    if g["burst"]:
        at = float(g["burst_at"]) if g["burst_at"] is not None else _DEFAULT_AT_S
        return Impairment("burst", frames=int(g["burst"]), at_s=at, name=name)
    if g["stall"]:
        s = float(g["stall"]) / (1000.0 if g["stall_unit"] == "ms" else 1.0)
        at = float(g["stall_at"]) if g["stall_at"] is not None else _DEFAULT_AT_S
        return Impairment("stall", seconds=s, at_s=at, name=name)
    if g["jitter"]:
        dist = "exp" if g["jitter_dist"] else "uniform"
        return Impairment("jitter", seconds=float(g["jitter"]) / 1000.0, distribution=dist, name=name)
    return Impairment(g["pkind"], probability=float(g["p"]) / 100.0, name=name)


def check_transport(imp: Impairment, *, datagrams: bool) -> None:
    """Refuse loss/dup/reorder on a stream transport (TCP, WebSocket)."""
    if imp.needs_datagrams and not datagrams:
        raise ValueError(f"{imp.name}: a TCP or WebSocket leg cannot lose, duplicate or reorder frames")


@dataclass(frozen=True)
class Send:
    """Send source frame ``frame`` at ``t_s`` seconds after the call's first frame."""

    t_s: float
    frame: int


@dataclass
class Schedule:
    """Every send, in time order, and what the impairment did."""

    sends: list[Send]
    dropped: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    reordered: int = 0

    def first_send(self) -> dict[int, float]:
        """Source frame -> the time it was first sent."""
        out: dict[int, float] = {}
        for s in self.sends:
            out.setdefault(s.frame, s.t_s)
        return out


def _jitter_delays(imp: Impairment, n: int, rng: random.Random) -> list[float]:
    j = imp.seconds
    if imp.distribution == "uniform":
        return [rng.uniform(0.0, j) for _ in range(n)]
    return [min(j, rng.expovariate(3.0 / j)) for _ in range(n)]


def caller_schedule(imp: Impairment, n_frames: int, ptime_s: float = 0.02, *, seed: int = 0,
                    ordered: bool = True) -> Schedule:  # fmt: skip
    """When a clocked sender sends each of ``n_frames`` frames under ``imp``.

    ``ordered``: the transport keeps order (TCP, WebSocket), so no frame leaves before
    the one in front of it; loss/dup/reorder then raise ``ValueError``.
    """
    check_transport(imp, datagrams=not ordered)
    rng = random.Random(f"{seed}:{imp.name}")
    grid = [k * ptime_s for k in range(n_frames)]
    times = list(grid)
    sched = Schedule([])
    kind = imp.kind
    if kind == "burst":
        m = min(n_frames, round(imp.at_s / ptime_s))
        ahead = (imp.frames - 1) * ptime_s
        for k in range(m, n_frames):
            times[k] = grid[m] if k < m + imp.frames else grid[k] - ahead
    elif kind == "stall":
        m = round(imp.at_s / ptime_s)
        release = grid[m] + imp.seconds if m < n_frames else math.inf
        for k in range(m, n_frames):
            if grid[k] < release - 1e-9:
                times[k] = release
    elif kind == "jitter":
        times = [t + d for t, d in zip(grid, _jitter_delays(imp, n_frames, rng), strict=True)]
    sends: list[Send] = []
    if kind == "loss":
        for k in range(n_frames):
            if rng.random() < imp.probability:
                sched.dropped.append(k)
            else:
                sends.append(Send(times[k], k))
    elif kind == "dup":
        for k in range(n_frames):
            sends.append(Send(times[k], k))
            if rng.random() < imp.probability:
                sched.duplicated.append(k)
                sends.append(Send(times[k] + 0.001, k))
    elif kind == "reorder":
        order = list(range(n_frames))
        k = 0
        while k < n_frames - 1:
            if rng.random() < imp.probability:
                order[k], order[k + 1] = order[k + 1], order[k]
                sched.reordered += 1
                k += 2
            else:
                k += 1
        # Position i keeps its time slot; the frame in it may be the next one.
        sends = [Send(grid[i], order[i]) for i in range(n_frames)]
    else:
        sends = [Send(times[k], k) for k in range(n_frames)]
    if ordered:
        last = -math.inf
        fixed = []
        for s in sends:  # in frame order: head-of-line blocking
            last = max(last, s.t_s)
            fixed.append(Send(last, s.frame))
        sends = fixed
    else:
        sched.reordered += sum(1 for a, b in itertools.pairwise(sends) if b.t_s < a.t_s)
    sends.sort(key=lambda s: s.t_s)  # stable: equal times keep frame order
    sched.sends = sends
    return sched


def hold_delays(imp: Impairment, n_frames: int, ptime_s: float = 0.02, *, seed: int = 0) -> list[float]:
    """Extra delay (>= 0 s) for each frame of a reactive, ordered sender (the echo app
    over its WebSocket): frame k goes ``delays[k]`` after the moment it would have gone,
    and never before the frame in front of it (the caller of this function enforces
    that with the real send times).

    burst K: frames m..m+K-1 are held and go together with the last of them; stall S:
    frames due in [at, at+S) go at at+S; jitter: seeded random delays as for the caller.
    """
    check_transport(imp, datagrams=False)
    delays = [0.0] * n_frames
    if imp.kind == "burst":
        m = round(imp.at_s / ptime_s)
        last = min(n_frames, m + imp.frames) - 1
        for k in range(m, last + 1):
            delays[k] = (last - k) * ptime_s
    elif imp.kind == "stall":
        m = round(imp.at_s / ptime_s)
        for k in range(m, n_frames):
            due = k * ptime_s
            release = m * ptime_s + imp.seconds
            if due < release - 1e-9:
                delays[k] = release - due
    elif imp.kind == "jitter":
        rng = random.Random(f"{seed}:{imp.name}:app")
        delays = _jitter_delays(imp, n_frames, rng)
    return delays
