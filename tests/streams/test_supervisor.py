"""The reconnect supervisor's RetryPolicy (pure, no Trio), and the supervisor following it
on the autojump clock."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from bridge.streams import RetryPolicy, Stream, StreamSettings, Ticker

from .fakes import FakeAppConnection, FakeCallLeg, ScriptedConnector


def test_default_policy_is_three_attempts_with_doubling_backoff() -> None:
    policy = RetryPolicy()
    assert (policy.retries, policy.backoff_s, policy.attempts) == (2, 0.5, 3)
    assert policy.delays() == (0.5, 1.0)
    assert [policy.delay_after(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, None, None]


def test_no_retries_gives_up_after_the_first_failure() -> None:
    policy = RetryPolicy(retries=0, backoff_s=1.0)
    assert policy.delays() == ()
    assert policy.delay_after(1) is None


@given(
    retries=st.integers(0, 10),
    backoff_s=st.floats(0.0, 60.0, allow_nan=False),
    factor=st.floats(1.0, 4.0, allow_nan=False),
)
def test_delay_after_is_the_sequence_then_none(retries: int, backoff_s: float, factor: float) -> None:
    policy = RetryPolicy(retries, backoff_s, factor)
    delays = policy.delays()
    assert len(delays) == retries == policy.attempts - 1
    assert [policy.delay_after(n) for n in range(1, retries + 1)] == list(delays)
    assert policy.delay_after(retries + 1) is None
    assert all(a <= b for a, b in itertools.pairwise(delays))


@pytest.mark.parametrize(
    "kwargs", [{"retries": -1}, {"backoff_s": -0.1}, {"factor": 0.5}]
)
def test_nonsense_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_failures_count_from_one() -> None:
    with pytest.raises(ValueError):
        RetryPolicy().delay_after(0)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def run_until_closed(connector: ScriptedConnector, **settings: float) -> Stream:
    async with trio.open_nursery() as nursery:
        ticker = Ticker()
        nursery.start_soon(ticker.serve)
        stream = Stream(
            stream_id="s-1",
            call=FakeCallLeg(),
            connector=connector,
            ticker=ticker,
            settings=StreamSettings(**settings),  # type: ignore[arg-type]
        )
        nursery.start_soon(stream.run)
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    return stream


async def test_the_supervisor_waits_what_the_policy_says(clock: trio.testing.MockClock) -> None:
    connector = ScriptedConnector()  # never reachable; each handshake takes 10 ms
    stream = await run_until_closed(connector, retries=4, backoff_s=0.25)
    t0 = connector.attempts[0]
    expected = [0.0]
    for delay in RetryPolicy(4, 0.25).delays():
        expected.append(expected[-1] + 0.01 + delay)
    assert [round(t - t0, 6) for t in connector.attempts] == [round(t, 6) for t in expected]
    assert (stream.reason, stream.attempts, stream.outage_attempts) == ("connection_error", 5, 5)
    assert stream.error is not None and "at initiation after 5 attempts" in stream.error


async def test_an_outage_gets_the_full_count_again(clock: trio.testing.MockClock) -> None:
    first = FakeAppConnection()
    # Up once, then lost; then every attempt fails: the policy's retries count anew.
    connector = ScriptedConnector([first])

    async def lose_it() -> None:
        await trio.sleep(1.0)
        first.kill()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lose_it)
        stream = await run_until_closed(connector, retries=2, backoff_s=0.5)
    assert len(connector.attempts) == 1 + 3
    assert (stream.reconnects, stream.outage_attempts, stream.attempts) == (1, 3, 4)
    assert stream.reason == "connection_error"
    assert stream.error is not None and "mid-stream after 3 attempts" in stream.error
