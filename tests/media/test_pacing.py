"""Pacing clock and lateness histogram: no drift, bounded catch-up, lead, percentiles."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.media import LatenessHistogram, PacingClock

PTIME = 0.02


def test_one_hour_of_jittery_ticks_drifts_zero_frames() -> None:
    # A monotonic clock can read a large value; pick one where float spacing is coarse.
    origin = 987_654.321
    clock = PacingClock(origin, ptime_s=PTIME)
    rng = random.Random(20240501)
    ticks = 180_000  # one hour of 20 ms
    sent = 0
    now = origin
    for k in range(ticks):
        # Wake-ups are up to 0.3 ms early (timer rounding) or up to 9 ms late.
        now = origin + k * PTIME + rng.uniform(-0.0003, 0.009)
        sent += clock.due(now)
        # Never more than the frames whose deadline has passed, never fewer than one
        # short of them (an early wake-up leaves its frame to the next tick).
        assert clock.frame_at(now) + 1 - sent in (0, 1)
    assert clock.skipped == 0
    final = clock.due(origin + ticks * PTIME)  # exactly on the next deadline
    sent += final
    assert sent == clock.index == ticks + 1
    # The grid is where exact rational arithmetic puts it (to float resolution at 1e6 s).
    exact = Fraction(origin) + (ticks + 1) * Fraction(PTIME)
    assert clock.next_deadline_s == pytest.approx(float(exact), rel=0, abs=1e-9)
    assert clock.count == sent


def test_deadline_is_computed_from_the_index() -> None:
    clock = PacingClock(0.0, ptime_s=0.02)
    # 0.02 * 3 == 0.06000000000000000 5 in binary: due() and next_deadline_s must agree.
    assert clock.due(0.0) == 1
    assert clock.due(0.02) == 1
    assert clock.due(0.04) == 1
    assert clock.next_deadline_s == 3 * 0.02
    assert clock.due(3 * 0.02) == 1
    assert clock.due(math.nextafter(4 * 0.02, 0.0)) == 0


def test_before_origin_nothing_is_due() -> None:
    clock = PacingClock(10.0)
    assert clock.due(9.99) == 0
    assert clock.frame_at(9.99) == -1
    assert clock.next_deadline_s == 10.0


def test_catch_up_is_bounded_and_the_rest_skipped() -> None:
    clock = PacingClock(0.0, max_catch_up=3)
    assert clock.due(0.0) == 1
    # A 200 ms stall: frames 1..10 are overdue; 3 go now, 7 slots are skipped.
    assert clock.due(0.2001) == 3
    assert clock.skipped == 7
    assert clock.index == 11
    assert clock.due(0.2201) == 1  # and the grid is unchanged
    assert clock.next_deadline_s == pytest.approx(0.24)


def test_small_delay_is_caught_up_in_full() -> None:
    clock = PacingClock(0.0, max_catch_up=3)
    clock.due(0.0)
    assert clock.due(0.0605) == 3  # frames 1, 2, 3
    assert clock.skipped == 0


def test_lateness_is_recorded_per_frame() -> None:
    clock = PacingClock(0.0, max_catch_up=5)
    clock.due(0.00155)  # frame 0, 1.55 ms late
    clock.due(0.0610)  # frames 1, 2, 3: 41, 21, 1 ms late
    assert clock.count == 4
    assert clock.max_ms == pytest.approx(41.0)
    assert clock.percentile(25) == pytest.approx(1.1)  # 1.0 ms lands in [1.0, 1.1)
    assert clock.percentile(50) == pytest.approx(1.6)  # [1.5, 1.6) -> upper edge 1.6
    assert clock.percentile(100) == pytest.approx(41.0)


def test_lead_frames_run_ahead_of_the_grid() -> None:
    clock = PacingClock(0.0, lead_frames=5)
    assert clock.due(0.0) == 6  # frame 0 and five ahead
    assert clock.next_deadline_s == pytest.approx(0.02)  # frame 6 may go at frame 1's time
    for k in range(1, 100):
        assert clock.due(k * PTIME + 0.001) == 1
    assert clock.index == 105
    # Every frame went out ahead of its grid deadline, so every lateness is 0.
    assert clock.count == 105
    assert clock.max_ms == 0.0


def test_available_forfeits_idle_slots_and_keeps_the_lead() -> None:
    clock = PacingClock(0.0, lead_frames=3)
    assert clock.due(0.0, available=0) == 0
    assert clock.due(0.02, available=0) == 0
    assert clock.idle == 2
    # Audio arrives: up to lead + 1 go at once, not the slots that passed idle.
    assert clock.due(0.04, available=10) == 4
    assert clock.due(0.06, available=10) == 1
    # A leg without a lead never bursts after idling.
    plain = PacingClock(0.0)
    for k in range(10):
        assert plain.due(k * PTIME, available=0) == 0
    assert plain.due(10 * PTIME, available=5) == 1
    assert plain.next_deadline_s == pytest.approx(11 * PTIME)


def test_time_going_backwards_sends_nothing() -> None:
    clock = PacingClock(0.0)
    assert clock.due(0.1) == 3
    assert clock.due(0.05) == 0


def test_rephase_moves_the_grid() -> None:
    clock = PacingClock(0.0)
    clock.due(0.0)
    clock.due(0.02)
    clock.rephase(0.0512)
    assert clock.next_deadline_s == pytest.approx(0.0512)
    assert clock.due(0.05) == 0
    assert clock.due(0.0512) == 1
    assert clock.next_deadline_s == pytest.approx(0.0712)


def test_take_early_uses_up_the_next_slot_only_when_it_is_near() -> None:
    clock = PacingClock(0.0)
    assert clock.due(0.0) == 1  # frame 0; frame 1 is due at 0.02
    assert not clock.take_early(0.010, 0.005)  # 10 ms ahead: too early
    assert clock.take_early(0.016, 0.005)  # 4 ms ahead: taken
    assert clock.index == 2
    assert clock.next_deadline_s == pytest.approx(0.04)
    assert clock.due(0.02) == 0  # the tick at frame 1's deadline finds it sent
    assert clock.due(0.04) == 1  # and the grid did not move
    assert clock.lateness.count == 3
    assert clock.max_ms == 0.0


def test_take_early_leaves_overdue_slots_to_due() -> None:
    clock = PacingClock(0.0)
    clock.due(0.0)
    assert not clock.take_early(0.021, 0.005)  # frame 1 is overdue: catch-up is due()'s
    assert clock.index == 1
    assert clock.due(0.021) == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ptime_s"):
        PacingClock(0.0, ptime_s=0.0)
    with pytest.raises(ValueError, match="max_catch_up"):
        PacingClock(0.0, max_catch_up=0)
    with pytest.raises(ValueError, match="lead_frames"):
        PacingClock(0.0, lead_frames=-1)
    with pytest.raises(ValueError, match="percentile"):
        LatenessHistogram().percentile(101)


def exact_percentile(values_ms: list[float], p: float) -> float:
    ordered = sorted(values_ms)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


@settings(max_examples=100, deadline=None)
@given(
    values_ms=st.lists(
        st.one_of(st.floats(0.0, 5.0), st.floats(0.0, 49.0), st.floats(50.0, 500.0)),
        min_size=1,
        max_size=300,
    ),
    p=st.sampled_from([0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0]),
)
def test_histogram_percentile_within_one_bucket(values_ms: list[float], p: float) -> None:
    hist = LatenessHistogram()
    for v in values_ms:
        hist.record(v / 1000.0)
    exact = exact_percentile(values_ms, p)
    got = hist.percentile(p)
    assert hist.count == len(values_ms)
    assert hist.max_ms == pytest.approx(max(values_ms))
    assert got <= hist.max_ms + 1e-9
    if exact < 50.0:
        # Reported as the upper edge of the bucket: never below, at most one bucket above.
        assert exact - 1e-9 <= got <= exact + 0.1 + 1e-9
    else:
        assert got == hist.max_ms  # beyond the buckets: the maximum is all we know


def test_histogram_on_uniform_data() -> None:
    hist = LatenessHistogram()
    rng = random.Random(7)
    values = [rng.uniform(0.0, 10.0) for _ in range(20_000)]
    for v in values:
        hist.record(v / 1000.0)
    for p in (50, 90, 99):
        assert hist.percentile(p) == pytest.approx(exact_percentile(values, p), abs=0.1)
    assert hist.mean_ms == pytest.approx(sum(values) / len(values))
    hist.reset()
    assert (hist.count, hist.max_ms, hist.percentile(50)) == (0, 0.0, 0.0)


def test_negative_lateness_counts_as_zero() -> None:
    hist = LatenessHistogram()
    hist.record(-0.001)
    assert hist.percentile(100) == 0.0
    assert hist.count == 1


def test_rephase_with_a_lead_sets_the_next_send_time() -> None:
    clock = PacingClock(0.0, lead_frames=2)
    assert clock.due(0.0) == 3
    clock.rephase(0.0305)
    assert clock.next_deadline_s == pytest.approx(0.0305)
    assert clock.due(0.03) == 0
    assert clock.due(0.0305) == 1


def test_parent_histogram_collects_every_child_and_cumulates_by_edge() -> None:
    total = LatenessHistogram()
    a, b = LatenessHistogram(), LatenessHistogram()
    a.attach(total)
    b.attach(total)
    for ms in (0.0, 0.3, 0.7):
        a.record(ms / 1000)
    for ms in (1.5, 4.0, 80.0):
        b.record(ms / 1000)
    assert (a.count, b.count, total.count) == (3, 3, 6)
    assert total.max_ms == 80.0
    assert total.total_ms == pytest.approx(0.0 + 0.3 + 0.7 + 1.5 + 4.0 + 80.0)
    # le 0.5 ms: 0.0, 0.3; le 1 ms: + 0.7; le 2: + 1.5; le 5: + 4.0; le 50: same.
    assert total.cumulative((0.5, 1.0, 2.0, 5.0, 50.0)) == [2, 3, 4, 5, 5]
    assert a.percentile(100) == 0.7  # each child keeps its own figures
    with pytest.raises(ValueError):
        LatenessHistogram(bucket_ms=1.0).attach(total)

