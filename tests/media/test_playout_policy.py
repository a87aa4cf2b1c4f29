"""The playout timing policy, frame by frame, judged at the caller's side (serial playout:
sending fast never lowers latency). See tests/media/playout_sim.py.

The figures in the issue that these pin down: a burst of K >= 4 frames (or a stall) left
(K-1) x 20 ms of latency for the rest of the call; a frozen daemon left 500, 940, 1380 ms.
"""

from __future__ import annotations

import itertools
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.media import PlayoutBuffer, PlayoutPolicy, splice

from .playout_sim import (
    FB,
    PTIME,
    Result,
    latency_by_frame,
    numbered,
    realtime,
    simulate,
)

T0 = 0.2


def recovery_s(result: Result, due: dict[int, float], after_s: float, tail: int = 25) -> float:
    """Seconds from ``after_s`` until every later frame's latency is within 5 ms of the
    steady state (the median of the last ``tail`` frames); inf if never."""
    lat = latency_by_frame(result, due)
    frames = sorted(lat)
    steady = statistics.median(lat[n] for n in frames[-tail:])
    bad = [due[n] for n in frames if due[n] >= after_s and lat[n] > steady + 0.005]
    if not bad:
        return 0.0
    last_bad = max(bad)
    if last_bad >= due[frames[-tail]]:
        return float("inf")
    return last_bad - after_s


def accounted(result: Result, frames: int) -> None:
    """Every app frame is played exactly once or counted as trimmed; order kept."""
    played = [n for _, n in result.played()]
    assert played == sorted(played), "out of order"
    assert len(played) == len(set(played)), "a frame played twice (fabricated)"
    assert len(played) + result.policy.trimmed_frames == frames


def test_clean_real_time_stream_is_sent_on_arrival() -> None:
    arrivals = realtime(250)
    due = {k: t for k, (t, _) in enumerate(arrivals)}
    result = simulate(arrivals, 6.0)
    lat = latency_by_frame(result, due)
    assert sorted(lat) == list(range(250))
    assert max(lat[k] for k in range(1, 250)) < 0.0016
    assert result.policy.trims == 0 and result.policy.holds <= 1
    accounted(result, 250)


@pytest.mark.parametrize("burst", [4, 6, 10, 50])
def test_burst_at_start_recovers(burst: int) -> None:
    """The call leg delivers the first K frames back-to-back (an echo app returns them at
    once), then one every 20 ms: the standing (K-1) x 20 ms is trimmed."""
    frames = 400
    arrivals = [
        (T0 + max(0, k - burst + 1) * PTIME, numbered(k)) for k in range(frames)
    ]
    due = {k: t for k, (t, _) in enumerate(arrivals)}
    result = simulate(arrivals, T0 + frames * PTIME + 1)
    assert recovery_s(result, due, T0) <= 2.0
    lat = latency_by_frame(result, due)
    assert statistics.median(lat[k] for k in range(frames - 50, frames)) < 0.002
    assert result.policy.trimmed_frames == burst - 1
    accounted(result, frames)


@pytest.mark.parametrize(("stall_s", "k0"), [(0.08, 100), (0.12, 100), (1.0, 100), (5.0, 100)])
def test_source_stall_mid_call_recovers(stall_s: float, k0: int) -> None:
    """The app's frames stop for ``stall_s`` and then all come at once (a network stall
    on either leg, or an app that paused): latency back within 5 ms of steady in 2 s."""
    frames = k0 + round(stall_s / PTIME) + 300
    held = round(stall_s / PTIME)
    release = T0 + (k0 + held) * PTIME

    def at(k: int) -> float:
        nominal = T0 + k * PTIME
        return release if k0 <= k < k0 + held else nominal

    arrivals = [(at(k), numbered(k)) for k in range(frames)]
    due = {k: t for k, (t, _) in enumerate(arrivals)}
    result = simulate(arrivals, T0 + frames * PTIME + 1)
    assert recovery_s(result, due, release) <= 2.0
    accounted(result, frames)


def test_frozen_daemon_three_times_recovers_each_time() -> None:
    """bridge's own event loop frozen for 500 ms three times (SIGSTOP/SIGCONT): what the
    caller sent meanwhile arrives at once when it resumes, and overdue slots are skipped,
    never crammed. Latency is back within 5 ms in 2 s after each freeze."""
    frames = 600
    arrivals = realtime(frames, t0=T0)
    due = {k: t for k, (t, _) in enumerate(arrivals)}
    stalls = [(2.0, 0.5), (5.0, 0.5), (8.0, 0.5)]
    result = simulate(arrivals, T0 + frames * PTIME + 1, stalls=stalls)
    lat = latency_by_frame(result, due)
    steady = statistics.median(lat[k] for k in range(frames - 50, frames))
    for i, (start, length) in enumerate(stalls):
        end = start + length
        until = stalls[i + 1][0] if i + 1 < len(stalls) else end + 3.0
        window = [k for k in lat if end + 2.0 < due[k] < until]
        assert window and all(lat[k] <= steady + 0.005 for k in window), [
            (round(due[k], 2), round(lat[k] * 1000, 1)) for k in window
        ]
    assert steady < 0.003
    # Skipped, not crammed: no two sends closer than half a ptime.
    times = [s.at for s in result.sent]
    assert min(b - a for a, b in itertools.pairwise(times)) >= PTIME / 2 - 1e-9


def test_tts_sender_ahead_of_real_time_loses_nothing() -> None:
    """A TTS-like app: 3 s utterances sent in 100 ms, each followed by a mark, the next one
    when the last is nearly played: every frame played, in order, exactly paced; marks
    released only after their audio was played."""
    arrivals: list[tuple[float, bytes]] = []
    marks_at: dict[int, str] = {}
    k = 0
    for utterance in range(4):
        start = T0 + utterance * 2.8
        for i in range(150):
            arrivals.append((start + i * (0.1 / 150), numbered(k)))
            k += 1
        marks_at[len(arrivals) - 1] = f"u{utterance}"
    result = simulate(arrivals, T0 + 4 * 3.0 + 2, marks_at=marks_at)
    played = result.played()
    assert [n for _, n in played] == list(range(k))
    assert result.policy.trimmed_frames == 0 and result.policy.trims == 0
    # Exactly paced within each utterance (no cram, no gap).
    # (The first frame of an utterance may go out on arrival, up to SEND_EARLY_S early.)
    by_n = dict((n, t) for t, n in played)
    for u in range(4):
        first, last = u * 150 + 1, u * 150 + 149
        assert by_n[last] - by_n[first] == pytest.approx(148 * PTIME, abs=1e-6)
    # Each mark goes out after the last frame of its utterance has had its 20 ms.
    mark_sent = {m: s.at for s in result.sent for m in s.marks}
    for u in range(4):
        assert mark_sent[f"u{u}"] >= by_n[u * 150 + 149] + PTIME - 1e-9


def test_tts_streaming_frame_by_frame_slightly_faster_than_real_time() -> None:
    """A sender 10 % faster than real time, frame by frame, for 6 s: its queue grows;
    it is not a real-time stream that fell behind, and nothing is trimmed."""
    arrivals = [(T0 + k * PTIME / 1.1, numbered(k)) for k in range(300)]
    result = simulate(arrivals, T0 + 8.0)
    assert [n for _, n in result.played()] == list(range(300))
    assert result.policy.trimmed_frames == 0


def test_jittery_app_latency_is_bounded_and_does_not_grow() -> None:
    """Every 30th frame 35 ms late (order kept): each one is held for, not filled with
    silence; the latency settles at about the jitter and stays there."""
    frames = 1500

    def late(k: int) -> float:
        return 0.035 if k % 30 == 29 else 0.0

    arrivals = realtime(frames, offset=late)
    due = {k: T0 + k * PTIME for k in range(frames)}
    result = simulate(arrivals, T0 + frames * PTIME + 1)
    lat = latency_by_frame(result, due)
    early = max(lat[k] for k in lat if 300 <= k < 600)
    tail = max(lat[k] for k in lat if k >= frames - 300)
    assert tail <= 0.045 and tail <= early + 0.005
    accounted(result, frames)


def test_phase_shift_earlier_is_followed_without_overlap() -> None:
    """The app's phase jumps 8 ms earlier: the 6.5 ms excess is cut from one frame and
    the grid moves by as much; the caller's side never queues (no overlap)."""
    arrivals = realtime(200, offset=lambda k: -0.008 if k >= 40 else 0.0)
    due = {k: t for k, (t, _) in enumerate(arrivals)}
    result = simulate(arrivals, T0 + 5.0)
    lat = latency_by_frame(result, due)
    assert all(lat[k] < 0.0016 for k in range(120, 200)), [round(lat[k], 4) for k in range(40, 200)]
    assert result.policy.trimmed_frames == 0 and result.policy.trims >= 1
    # The caller's side never queues more than an early send's worth.
    ends = 0.0
    for s in result.sent:
        assert s.at >= ends - 0.005 - 1e-9
        ends = max(s.at, ends) + (len(s.pcm) if s.pcm is not None else FB) / 16000


def test_trim_can_be_turned_off() -> None:
    frames = 300
    burst = 6
    arrivals = [(T0 + max(0, k - burst + 1) * PTIME, numbered(k)) for k in range(frames)]
    due = {k: t for k, (t, _) in enumerate(arrivals)}
    result = simulate(arrivals, T0 + 8.0, policy=PlayoutPolicy(FB, PTIME, trim=False))
    lat = latency_by_frame(result, due)
    assert min(lat[k] for k in range(frames - 50, frames)) >= (burst - 1) * PTIME
    assert result.policy.trimmed_frames == 0
    accounted(result, frames)


def test_quiet_frames_are_dropped_first() -> None:
    pb = PlayoutBuffer(FB)
    loud = [numbered(k, level=8000) for k in range(5)]
    quiet = numbered(99, level=10)
    for frame in (loud[0], loud[1], quiet, loud[2], loud[3]):
        pb.push(frame)
    assert pb.drop(1, quietest=True, fade_samples=32) == 1
    out = [pb.pop()[0] for _ in range(4)]
    assert out[0] == loud[0] and out[1] == loud[1] and out[3] == loud[3]
    # The frame after the cut fades in from the dropped one and ends as itself.
    assert out[2] is not None and out[2][-2:] == loud[2][-2:] and out[2][:2] != loud[2][:2]


def test_drop_keeps_marks_with_their_audio() -> None:
    pb = PlayoutBuffer(FB)
    pb.push(numbered(0) + numbered(1))
    pb.mark("after-1")
    pb.push(numbered(2))
    pb.mark("after-2")
    assert pb.drop(2) == 2  # the oldest two
    frame, marks = pb.pop()
    assert marks == ["after-1"] and frame is not None
    frame, marks = pb.pop()
    assert frame is None and marks == ["after-2"]


def test_drop_at_the_end_splices_into_the_next_arrival() -> None:
    pb = PlayoutBuffer(FB)
    a, b, c = numbered(1, level=5000), numbered(2, level=9000), numbered(3, level=-9000)
    pb.push(a)
    pb.push(b)
    assert pb.drop(1, quietest=True, fade_samples=16) == 1  # a is quieter
    assert pb.drop(1, fade_samples=16) == 1  # b: the queue is empty now
    pb.push(c)
    out, _ = pb.pop()
    assert out is not None and out[:2] != c[:2] and out[-2:] == c[-2:]


@given(
    st.binary(min_size=2, max_size=400).filter(lambda b: len(b) % 2 == 0),
    st.binary(min_size=2, max_size=400).filter(lambda b: len(b) % 2 == 0),
    st.integers(0, 64),
)
@settings(max_examples=300)
def test_splice_is_a_crossfade(before: bytes, after: bytes, fade: int) -> None:
    out = splice(before, after, fade)
    assert len(out) == len(after)
    n = min(fade, len(before) // 2, len(after) // 2)
    assert out[2 * n :] == after[2 * n :]


@given(
    st.lists(
        st.tuples(st.floats(0.0, 0.08), st.integers(1, 3)), min_size=50, max_size=300
    ),
    st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_any_arrival_pattern_plays_each_frame_at_most_once_in_order(
    gaps: list[tuple[float, int]], trim: bool
) -> None:
    """Whatever the arrival pattern (gaps, bursts of several frames): no frame is played
    twice, none out of order, and every frame is played or counted as trimmed."""
    arrivals: list[tuple[float, bytes]] = []
    t = T0
    k = 0
    for gap, count in gaps:
        t += gap
        for _ in range(count):
            arrivals.append((t, numbered(k)))
            k += 1
    result = simulate(arrivals, t + k * PTIME + 1, policy=PlayoutPolicy(FB, PTIME, trim=trim))
    accounted(result, k)


def _frame(n: int) -> bytes:
    return bytes([n % 250 + 1]) * 320


def test_pause_serves_no_slot_and_resume_plays_everything_in_order() -> None:
    """Flow control (Asterisk MEDIA_XOFF/XON): nothing is due while paused, the app's
    audio and marks wait here, and resume puts the next slot at once."""
    policy = PlayoutPolicy(320, lead_frames=0, exact_pacing=False)
    policy.start(0.0)
    now = 0.0
    sent: list[bytes] = []
    for _ in range(3):
        now = policy.next_deadline_s
        for _ in range(policy.on_tick(now, app_up=True)):
            pcm, _ = policy.pop_frame(now)
            sent.append(pcm or b"")
    policy.pause()
    assert policy.paused and policy.pauses == 1
    assert policy.next_deadline_s == float("inf")
    for n in range(10):
        now += 0.02
        assert policy.on_audio(_frame(n), now) == 0
        if n == 4:
            policy.mark("m")
        assert policy.on_tick(now, app_up=True) == 0
    assert policy.queued_ms == 200
    now += 1.0
    policy.resume(now)
    assert policy.next_deadline_s == pytest.approx(now)
    played: list[bytes] = []
    marks: list[object] = []
    while len(played) < 10:
        t = policy.next_deadline_s
        assert t < now + 0.5
        for _ in range(policy.on_tick(t, app_up=True)):
            pcm, released = policy.pop_frame(t)
            assert pcm is not None
            played.append(pcm)
            marks.extend((len(played), name) for name in released)
    assert played == [_frame(n) for n in range(10)]
    assert marks == [(6, "m")]  # after the 5 frames queued before it
    assert policy.trimmed_frames == 0
    policy.resume(now)  # idempotent
    assert policy.pauses == 1
