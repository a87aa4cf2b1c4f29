"""The one process-wide ticker that drives every stream's pacing clock.

PERFORMANCE.md: a per-task ``trio.sleep_until`` wake-up costs 50-75 µs of CPU, so 500
streams each pacing their own 20 ms loop saturate a core. Instead one task sleeps until
the earliest deadline of all registered clocks and calls each due clock's ``on_tick``
inline: no task switch per stream per frame.

Deadlines are not all on one global grid: each stream's grid is phase-aligned to its
caller (see ``Stream``), so that pacing does not add a random 0-20 ms to the round trip.
To bound the wake-up rate whatever the phases, the ticker serves every clock that is due
within ``quantum_s`` (1 ms, the resolution epoll gives anyway) in one wake-up: at most
1,000 wake-ups a second however many streams there are.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from typing import Protocol

import attrs
import trio

logger = logging.getLogger("bridge.streams")

__all__ = ["TickClient", "TickHandle", "Ticker"]


class TickClient(Protocol):
    """What the ticker drives: one stream's pacing clock."""

    def on_tick(self, now_s: float) -> float:
        """Do this tick's work; return the next deadline (``math.inf`` to pause)."""
        ...


@attrs.define(slots=True, eq=False)
class TickHandle:
    """A registration; ``cancel()`` it when the stream ends (``with`` does it for you)."""

    client: TickClient
    _ticker: Ticker
    deadline_s: float
    active: bool = True

    def cancel(self) -> None:
        self.active = False
        self._ticker._live -= 1

    def reschedule(self, deadline_s: float) -> None:
        """Move the next deadline (e.g. out of ``math.inf`` when audio arrives)."""
        if not self.active:
            return
        self.deadline_s = deadline_s
        self._ticker._push(self)

    def __enter__(self) -> TickHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self.cancel()


@attrs.define(slots=True, eq=False)
class Ticker:
    """Process-wide pacing scheduler. Run ``serve()`` in the daemon nursery."""

    quantum_s: float = 0.001
    # heap of (deadline, seq, handle); stale entries (cancelled or rescheduled) are
    # skipped lazily when popped, so cancel/reschedule are O(1)/O(log n).
    _heap: list[tuple[float, int, TickHandle]] = attrs.field(factory=list)
    _seq: itertools.count[int] = attrs.field(factory=itertools.count)
    _wakeup: trio.Event = attrs.field(factory=trio.Event)
    _live: int = 0
    _sleeping_until: float = math.inf
    # Health figures: wake-ups and how late they were (seconds), for metrics.
    wakeups: int = 0
    ticks: int = 0
    lag_max_s: float = 0.0
    lag_sum_s: float = 0.0

    @property
    def clients(self) -> int:
        return self._live

    def register(self, client: TickClient, first_deadline_s: float) -> TickHandle:
        handle = TickHandle(client, self, first_deadline_s)
        self._live += 1
        self._push(handle)
        return handle

    def _push(self, handle: TickHandle) -> None:
        deadline = handle.deadline_s
        if deadline == math.inf:
            return
        heapq.heappush(self._heap, (deadline, next(self._seq), handle))
        if deadline < self._sleeping_until:
            # The sleeper would wake too late for this one: wake it now.
            self._sleeping_until = deadline
            self._wakeup.set()

    def run_due(self, now_s: float) -> int:
        """Call ``on_tick`` of every client due by ``now_s + quantum_s``. Returns the count."""
        heap = self._heap
        horizon = now_s + self.quantum_s
        served = 0
        while heap and heap[0][0] <= horizon:
            deadline, _, handle = heapq.heappop(heap)
            if not handle.active or handle.deadline_s != deadline:
                continue  # stale entry
            lag = now_s - deadline
            if lag > self.lag_max_s:
                self.lag_max_s = lag
            if lag > 0:
                self.lag_sum_s += lag
            try:
                # A client served up to a quantum early is served *as of* its deadline:
                # asked at an earlier "now", its clock would find nothing due and hand
                # back the same deadline, to be served again in this very loop.
                nxt = handle.client.on_tick(now_s if now_s > deadline else deadline)
            except Exception:
                # A broken stream must not stop the clock of every other call. Its
                # registration is dropped; the stream notices (its clock stops) and
                # the traceback is logged here once.
                logger.exception("pacing clock failed; unregistering it")
                handle.active = False
                self._live -= 1
                continue
            served += 1
            if handle.active:
                if nxt <= deadline:
                    # By construction a served clock moves on; if one does not, it must
                    # not spin this loop: it gets the next quantum.
                    nxt = deadline + self.quantum_s
                handle.deadline_s = nxt
                if nxt != math.inf:
                    heapq.heappush(heap, (nxt, next(self._seq), handle))
        self.ticks += served
        return served

    async def serve(self) -> None:
        """Run forever: sleep until the earliest deadline, serve everything due."""
        while True:
            heap = self._heap
            # Drop stale heads so we don't wake for a cancelled stream.
            while heap and (not heap[0][2].active or heap[0][2].deadline_s != heap[0][0]):
                heapq.heappop(heap)
            target = heap[0][0] if heap else math.inf
            self._sleeping_until = target
            self._wakeup = trio.Event()
            with trio.move_on_at(target):
                await self._wakeup.wait()
            self._sleeping_until = -math.inf  # while serving, pushes need no wake-up
            now = trio.current_time()
            if heap and heap[0][0] <= now + self.quantum_s:
                self.wakeups += 1
                self.run_due(now)
