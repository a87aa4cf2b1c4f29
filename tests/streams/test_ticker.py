"""The process-wide ticker: serving within a quantum, ordering, cancellation."""

from __future__ import annotations

import attrs
import trio

from bridge.media import PacingClock
from bridge.streams import Ticker


@attrs.define
class ClockClient:
    """A pacing clock like a Stream's: due() decides, next_deadline_s is returned."""

    clock: PacingClock
    sent: list[float] = attrs.field(factory=list)

    def on_tick(self, now_s: float) -> float:
        for _ in range(self.clock.due(now_s)):
            self.sent.append(now_s)
        return self.clock.next_deadline_s


async def test_clients_within_one_quantum_do_not_spin() -> None:
    # Phases 0.3 ms apart: one wake-up serves both, each as of its own deadline.
    ticker = Ticker()
    now = trio.current_time()
    a = ClockClient(PacingClock(origin_s=now + 0.010))
    b = ClockClient(PacingClock(origin_s=now + 0.0103))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker.serve)
            ticker.register(a, a.clock.next_deadline_s)
            ticker.register(b, b.clock.next_deadline_s)
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()
    # ~50 frames each in one second, never more than one per slot.
    assert 45 <= len(a.sent) <= 51 and 45 <= len(b.sent) <= 51
    assert ticker.wakeups <= 60  # shared wake-ups, not one per client per frame


async def test_a_client_that_does_not_advance_cannot_spin(autojump_clock: trio.abc.Clock) -> None:
    calls = []

    class Stuck:
        def on_tick(self, now_s: float) -> float:
            calls.append(now_s)
            return 0.0  # a broken client: always "due at t=0"

    ticker = Ticker()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker.serve)
            ticker.register(Stuck(), trio.current_time())
            await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert 5 <= len(calls) <= 12  # once per quantum, not an infinite loop


async def test_cancelled_handles_are_not_served(autojump_clock: trio.abc.Clock) -> None:
    ticker = Ticker()
    now = trio.current_time()
    a = ClockClient(PacingClock(origin_s=now))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker.serve)
        handle = ticker.register(a, now)
        await trio.sleep(0.1)
        handle.cancel()
        served = len(a.sent)
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert served >= 5 and len(a.sent) == served
    assert ticker.clients == 0
