"""The rig's impairment schedules (bench/quality/impair.py): pure, seeded, exact."""

from __future__ import annotations

import pytest

from bench.quality import impair
from bench.quality.impair import caller_schedule, hold_delays, parse

P = 0.02


def _times(sched: impair.Schedule) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for s in sched.sends:
        out.setdefault(s.frame, []).append(s.t_s)
    return out


@pytest.mark.parametrize(
    "name",
    ["clean", "burst4", "burst10@0", "stall1s", "stall500ms", "jitter20", "jitter60exp", "loss1",
     "dup2", "reorder5", "freeze"],
)  # fmt: skip
def test_names_round_trip(name: str) -> None:
    assert parse(name).name == name


@pytest.mark.parametrize("name", ["", "burst", "stall1", "loss", "jitter-5", "nonsense"])
def test_unknown_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        parse(name)


def test_clean_is_the_grid() -> None:
    sched = caller_schedule(parse("clean"), 50, P)
    assert [(s.frame, s.t_s) for s in sched.sends] == [(k, pytest.approx(k * P)) for k in range(50)]


def test_burst_mid_call_sends_k_frames_at_once_then_runs_ahead() -> None:
    sched = caller_schedule(parse("burst4@1"), 100, P)
    t = _times(sched)
    m = 50
    assert all(t[k] == [pytest.approx(m * P)] for k in range(m, m + 4))
    assert t[m - 1] == [pytest.approx((m - 1) * P)]
    # After the burst the sender is 3 frames ahead of its old grid, 20 ms apart again.
    assert t[m + 4] == [pytest.approx((m + 1) * P)]
    assert t[99] == [pytest.approx((99 - 3) * P)]
    assert parse("burst4@1").windows(P) == [(pytest.approx(1.0), pytest.approx(1.0))]


def test_burst_at_start_as_the_issue_measured_it() -> None:
    t = _times(caller_schedule(parse("burst6@0"), 20, P))
    assert [t[k][0] for k in range(6)] == [0.0] * 6
    assert t[6][0] == pytest.approx(P)
    assert t[7][0] == pytest.approx(2 * P)


def test_stall_holds_frames_and_releases_them_together_on_the_old_grid() -> None:
    imp = parse("stall1s@2")
    t = _times(caller_schedule(imp, 200, P))
    held = [k for k in range(200) if t[k][0] == pytest.approx(3.0)]
    assert held == list(range(100, 151))  # 100..149 held, 150 due at 3.0 anyway
    assert t[99][0] == pytest.approx(1.98)
    assert t[151][0] == pytest.approx(3.02)
    assert imp.windows(P) == [(pytest.approx(2.0), pytest.approx(3.0))]


def test_jitter_on_a_stream_keeps_order_and_bounds() -> None:
    imp = parse("jitter60")
    sched = caller_schedule(imp, 500, P, seed=7, ordered=True)
    t = [_times(sched)[k][0] for k in range(500)]
    assert t == sorted(t)  # head-of-line blocking: no frame overtakes another
    assert all(k * P <= t[k] <= k * P + 0.06 + 1e-9 for k in range(500))
    assert sched.reordered == 0
    # Seeded: the same schedule again, another one with another seed.
    assert caller_schedule(imp, 500, P, seed=7).sends == sched.sends
    assert caller_schedule(imp, 500, P, seed=8).sends != sched.sends


def test_jitter_on_rtp_may_reorder() -> None:
    sched = caller_schedule(parse("jitter60"), 500, P, seed=1, ordered=False)
    order = [s.frame for s in sched.sends]
    assert sorted(order) == list(range(500))
    assert order != sorted(order)
    assert sched.reordered > 0


def test_loss_dup_reorder_only_on_datagrams() -> None:
    for name in ("loss1", "dup1", "reorder1"):
        with pytest.raises(ValueError, match="cannot lose"):
            caller_schedule(parse(name), 10, P, ordered=True)
        with pytest.raises(ValueError):
            hold_delays(parse(name), 10, P)


def test_loss_drops_about_p_and_says_which() -> None:
    sched = caller_schedule(parse("loss5"), 4000, P, seed=3, ordered=False)
    assert 140 < len(sched.dropped) < 260
    sent = {s.frame for s in sched.sends}
    assert sent.isdisjoint(sched.dropped)
    assert len(sent) + len(sched.dropped) == 4000


def test_dup_sends_copies_one_ms_later() -> None:
    sched = caller_schedule(parse("dup5"), 2000, P, seed=3, ordered=False)
    t = _times(sched)
    assert sched.duplicated and all(len(t[k]) == 2 for k in sched.duplicated)
    assert all(t[k][1] - t[k][0] == pytest.approx(0.001) for k in sched.duplicated)
    assert len(sched.sends) == 2000 + len(sched.duplicated)


def test_reorder_swaps_neighbours_and_keeps_every_frame_once() -> None:
    sched = caller_schedule(parse("reorder10"), 1000, P, seed=3, ordered=False)
    order = [s.frame for s in sched.sends]
    assert sorted(order) == list(range(1000))
    assert 50 < sched.reordered < 150
    assert all(abs(order[i] - i) <= 1 for i in range(1000))


def test_hold_delays_for_a_reactive_sender() -> None:
    d = hold_delays(parse("burst4@1"), 100, P)
    assert d[49] == 0 and d[54] == 0
    assert d[50:54] == [pytest.approx(3 * P), pytest.approx(2 * P), pytest.approx(P), 0.0]
    s = hold_delays(parse("stall1s@1"), 200, P)
    assert s[50] == pytest.approx(1.0) and s[99] == pytest.approx(P) and s[100] == 0
    j = hold_delays(parse("jitter20"), 300, P, seed=2)
    assert all(0 <= x <= 0.02 for x in j) and len(set(j)) > 100
    assert hold_delays(parse("clean"), 5, P) == [0.0] * 5


def test_freeze_windows() -> None:
    assert parse("freeze").windows() == [(2.0, 2.5), (4.0, 4.5), (6.0, 6.5)]
    assert caller_schedule(parse("freeze"), 10, P).sends == caller_schedule(parse("clean"), 10, P).sends


def test_recovery_counts_from_the_release_of_an_app_side_burst() -> None:
    # At the caller a burst is K frames sent at once: it ends where it starts. At the app
    # it is K-1 frames held and then sent with the last: it ends at that release, and the
    # latency it left can only start to recover from there (as after a stall).
    from bench.quality.run import Cell, recovery_windows

    caller = recovery_windows(Cell("as8", "sln8", "burst50"))
    app = recovery_windows(Cell("as8", "sln8", "burst50", where="app"))
    held = [d for d in hold_delays(parse("burst50"), 200) if d > 0]
    assert caller == [(2.0, 2.0)]
    assert app == [(2.0, pytest.approx(2.0 + max(held)))]
    assert recovery_windows(Cell("as8", "sln8", "stall1s", where="app")) == [(2.0, 3.0)]
