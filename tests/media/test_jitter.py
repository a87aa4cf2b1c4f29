"""Jitter buffer: in order at once, gaps held for an adaptive wait, concealment only for
real loss, wraparound, probation, accounting. Time is passed in (no clock here)."""

from __future__ import annotations

import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.media import JitterBuffer, JitterStats

RATE = 8000
FB = 320  # bytes in 20 ms at 8 kHz
PT = 0.02
MAGIC = 12345  # first sample of every test packet: tells real audio from concealment


def packet(index: int, samples: int = 160) -> bytes:
    """A recognisable packet: [MAGIC, index, index, ...]."""
    return array.array("h", [MAGIC] + [index] * (samples - 1)).tobytes()


def ident(frame: bytes | None) -> int | None:
    """The packet index a frame came from, or None for concealment/silence."""
    if frame is None:
        return None
    s = array.array("h", frame[:4])
    return s[1] if s[0] == MAGIC else None


def drain(jb: JitterBuffer, now: float) -> list[bytes]:
    out = []
    while (frame := jb.pop(now)) is not None:
        out.append(frame)
    return out


def accounted(jb: JitterBuffer) -> int:
    s = jb.stats
    return s.played + s.late + s.duplicate + s.discarded + jb.packets_queued


def test_in_order_packets_go_out_at_once() -> None:
    """No start threshold, no added delay: each packet is ready the moment it arrives."""
    jb = JitterBuffer(RATE)
    for i in range(50):
        jb.push(1000 + i, 160 * i, 7, packet(i), i * PT)
        assert [ident(f) for f in drain(jb, i * PT)] == [i]
    s = jb.stats
    assert s.played == 50 and s.lost == 0 and s.concealed == 0
    assert jb.next_deadline_s == float("inf")


def test_reordered_packet_within_the_wait_is_put_back_in_order() -> None:
    jb = JitterBuffer(RATE, start_ms=40)
    jb.push(10, 0, 7, packet(0), 0.0)
    jb.push(12, 320, 7, packet(2), 0.04)  # 11 is missing: 12 is held
    assert [ident(f) for f in drain(jb, 0.04)] == [0]
    assert jb.next_deadline_s == pytest.approx(0.08)
    jb.push(11, 160, 7, packet(1), 0.05)  # in time
    assert [ident(f) for f in drain(jb, 0.05)] == [1, 2]
    s = jb.stats
    assert s.reordered == 1 and s.lost == 0 and s.concealed == 0 and s.late == 0


def test_gap_is_declared_lost_after_the_wait_and_concealed() -> None:
    jb = JitterBuffer(RATE, start_ms=20)
    jb.push(1, 0, 7, packet(0), 0.0)
    drain(jb, 0.0)
    jb.push(3, 320, 7, packet(2), 0.04)
    assert drain(jb, 0.05) == []  # still waiting for 2
    frames = drain(jb, 0.061)
    assert [ident(f) for f in frames] == [None, 2]
    # The concealment is the last packet at half amplitude.
    assert frames[0] == array.array("h", [x // 2 for x in array.array("h", packet(0))]).tobytes()
    s = jb.stats
    assert s.lost == 1 and s.concealed == 1


def test_long_loss_is_concealed_for_a_few_packets_only() -> None:
    jb = JitterBuffer(RATE, start_ms=20)
    jb.push(1, 0, 7, packet(0), 0.0)
    drain(jb, 0.0)
    jb.push(41, 6400, 7, packet(40), 0.8)  # 39 packets lost
    frames = drain(jb, 1.0)
    assert [ident(f) for f in frames] == [None] * 5 + [40]
    assert jb.stats.lost == 39 and jb.stats.concealed == 2
    assert frames[2] == bytes(FB)  # after two faded repeats: silence


def test_late_packet_is_dropped_and_the_wait_grows() -> None:
    jb = JitterBuffer(RATE, start_ms=20)
    jb.push(1, 0, 7, packet(0), 0.0)
    jb.push(3, 320, 7, packet(2), 0.04)
    drain(jb, 0.07)  # 2 declared lost at 0.06
    jb.push(2, 160, 7, packet(1), 0.10)  # 60 ms after its gap was seen: late
    assert drain(jb, 0.10) == []
    s = jb.stats
    assert s.late == 1 and s.played == 2
    assert jb.depth_ms == pytest.approx(65, abs=0.5)  # lateness + margin
    assert s.wait_max_ms == 65


def test_wait_shrinks_when_the_network_is_calm() -> None:
    jb = JitterBuffer(RATE, start_ms=100, min_ms=10)
    t = 0.0
    for i in range(1500):  # 30 s of clean packets
        t = i * PT
        jb.push(i, 160 * i, 7, packet(i), t)
        drain(jb, t)
    assert jb.depth_ms <= 15


def test_duplicates_are_dropped_whether_held_or_played() -> None:
    jb = JitterBuffer(RATE)
    jb.push(5, 0, 7, packet(0), 0.0)
    jb.push(5, 0, 7, packet(0), 0.001)
    jb.push(7, 320, 7, packet(2), 0.04)
    jb.push(7, 320, 7, packet(2), 0.041)
    jb.push(6, 160, 7, packet(1), 0.045)
    assert [ident(f) for f in drain(jb, 0.05)] == [0, 1, 2]
    assert jb.stats.duplicate == 2 and jb.stats.received == 5 == accounted(jb)


@pytest.mark.parametrize("first", [65530, 65535])
def test_sequence_wraparound(first: int) -> None:
    jb = JitterBuffer(RATE)
    got = []
    for i in range(12):
        jb.push((first + i) & 0xFFFF, 160 * i, 7, packet(i), i * PT)
        got += [ident(f) for f in drain(jb, i * PT)]
    assert got == list(range(12))


def test_overflow_declares_the_gap_lost_early() -> None:
    jb = JitterBuffer(RATE, start_ms=100, max_depth_ms=100)
    jb.push(0, 0, 7, packet(0), 0.0)
    for i in range(2, 9):  # 1 missing; 7 packets (140 ms) pile up behind it
        jb.push(i, 160 * i, 7, packet(i), i * PT)
    frames = [ident(f) for f in drain(jb, 8 * PT)]
    assert frames[0] == 0 and frames[1] is None and frames[2:] == list(range(2, 9))
    assert jb.stats.overflow == 1 and jb.stats.lost == 1


def test_ssrc_change_resets() -> None:
    jb = JitterBuffer(RATE)
    jb.push(100, 0, 1, packet(0), 0.0)
    jb.push(102, 320, 1, packet(2), 0.04)  # held behind the gap
    jb.push(5000, 0, 2, packet(9), 0.05)  # a new source
    assert [ident(f) for f in drain(jb, 0.05)] == [0, 9]
    assert jb.stats.discarded == 1 and jb.stats.resets == 1


def test_sequence_restart_needs_two_packets() -> None:
    jb = JitterBuffer(RATE)
    jb.push(100, 0, 1, packet(0), 0.0)
    jb.push(30000, 0, 1, packet(1), 0.02)  # a jump: not trusted yet
    assert [ident(f) for f in drain(jb, 0.02)] == [0]
    jb.push(30001, 160, 1, packet(2), 0.04)  # it continues: the sender restarted
    assert [ident(f) for f in drain(jb, 0.04)] == [2]
    assert jb.stats.discarded == 1 and jb.stats.resets == 1


def test_dtx_timestamp_jump_is_not_loss() -> None:
    """Silence suppression: the timestamp jumps, the sequence does not. Nothing is lost
    and nothing is invented for the silence."""
    jb = JitterBuffer(RATE)
    got = []
    for i, ts in enumerate([0, 160, 320, 8000, 8160]):
        jb.push(i, ts, 7, packet(i), i * PT + (1.0 if i >= 3 else 0.0))
        got += drain(jb, i * PT + (1.0 if i >= 3 else 0.0))
    assert [ident(f) for f in got] == [0, 1, 2, 3, 4]
    assert jb.stats.lost == 0 and jb.stats.concealed == 0


@pytest.mark.parametrize("packet_ms", [10, 30, 60])
def test_other_packet_sizes_become_whole_frames(packet_ms: int) -> None:
    samples = RATE * packet_ms // 1000
    jb = JitterBuffer(RATE)
    out = bytearray()
    for i in range(12):
        jb.push(i, i * samples, 7, bytes([i + 1]) * 2 * samples, i * packet_ms / 1000)
        for f in drain(jb, i * packet_ms / 1000):
            assert len(f) == FB
            out += f
    out += b"".join(drain(jb, 12 * packet_ms / 1000 + 1.0))  # the padded tail
    audio = bytes(out).rstrip(b"\0")
    assert audio == b"".join(bytes([i + 1]) * 2 * samples for i in range(12))


def test_stats_and_reset() -> None:
    jb = JitterBuffer(RATE)
    assert isinstance(jb.stats, JitterStats) and jb.stats.wait_ms == 20
    jb.push(1, 0, 7, packet(0), 0.0)
    jb.push(3, 320, 7, packet(2), 0.01)
    jb.reset()
    assert jb.stats.discarded == 1 and jb.packets_queued == 0


def test_bad_arguments() -> None:
    jb = JitterBuffer(RATE)
    with pytest.raises(ValueError, match="sequence"):
        jb.push(65536, 0, 1, bytes(FB), 0.0)
    with pytest.raises(ValueError, match="sequence"):
        jb.push(-1, 0, 1, bytes(FB), 0.0)
    with pytest.raises(ValueError, match="16-bit"):
        jb.push(1, 0, 1, bytes(3), 0.0)
    with pytest.raises(ValueError, match="start_ms"):
        JitterBuffer(RATE, start_ms=300, max_depth_ms=200)
    with pytest.raises(ValueError, match="sample_rate"):
        JitterBuffer(0)


# -- properties -------------------------------------------------------------------------


# One record per packet: (lose it?, delay in ms, duplicate delay or None, tie-breaker).
def packet_plans(max_delay_ms: int) -> st.SearchStrategy[list[tuple[bool, int, int | None, int]]]:
    return st.lists(
        st.tuples(
            st.integers(0, 9).map(lambda r: r == 0),  # ~10 % loss
            st.integers(0, max_delay_ms),
            st.one_of(st.none(), st.none(), st.integers(0, max_delay_ms)),  # ~1/3 duplicated
            st.integers(0, 1 << 16),
        ),
        min_size=1,
        max_size=150,
    )


FIRST_SEQ = st.one_of(st.integers(0, 65535), st.integers(65400, 65535))


def run(
    jb: JitterBuffer, plans: list[tuple[bool, int, int | None, int]], first_seq: int
) -> tuple[list[int | None], set[int], int]:
    """Packet i is sent at i * 20 ms and arrives ``delay`` ms later; the buffer is polled
    after every arrival and every 20 ms. Returns what came out (index or None for
    concealment), the indices delivered and the copies pushed."""
    events: list[tuple[float, int, int]] = []  # (time, tie-breaker, index)
    delivered: set[int] = set()
    for i, (lost, delay, dup_delay, tie) in enumerate(plans):
        if lost:
            continue
        delivered.add(i)
        events.append((i * PT + delay / 1000, tie, i))
        if dup_delay is not None:
            events.append((i * PT + dup_delay / 1000, tie + 1, i))
    events.sort()
    out: list[int | None] = []
    pos = 0
    end = (events[-1][0] if events else 0) + 2.0
    tick = 0.0
    while tick <= end:
        while pos < len(events) and events[pos][0] <= tick:
            t, _, i = events[pos]
            jb.push((first_seq + i) & 0xFFFF, 160 * i, 42, packet(i), t)
            out += [ident(f) for f in drain(jb, t)]
            pos += 1
        out += [ident(f) for f in drain(jb, tick)]
        tick += PT / 4
    return out, delivered, len(events)


@settings(max_examples=150, deadline=None)
@given(plans=packet_plans(max_delay_ms=15), first_seq=FIRST_SEQ)
def test_property_jitter_within_the_wait_plays_every_packet_once_in_order(
    plans: list[tuple[bool, int, int | None, int]], first_seq: int
) -> None:
    # Reordering of at most 15 ms fits the 20 ms starting wait: nothing may be late,
    # every delivered packet comes out exactly once, in order, and loss is exact.
    jb = JitterBuffer(RATE, start_ms=20, max_depth_ms=10_000)
    out, delivered, copies = run(jb, plans, first_seq)
    played = [i for i in out if i is not None]
    s = jb.stats
    assert played == sorted(set(played))
    assert s.late == 0
    assert s.duplicate == copies - len(delivered)
    assert set(played) == delivered
    assert s.received == copies == accounted(jb)
    never = {i for i in range(min(delivered, default=0), max(delivered, default=0)) if i not in delivered}
    assert s.lost == len(never)
    # Concealment exactly where packets were lost (at most MAX_CONCEAL_PACKETS per gap).
    assert out.count(None) <= 5 * len(never)
    assert s.concealed <= s.lost


@settings(max_examples=150, deadline=None)
@given(
    plans=packet_plans(max_delay_ms=250),
    first_seq=FIRST_SEQ,
    start_ms=st.sampled_from([0, 20, 60]),
    max_depth_ms=st.sampled_from([60, 100, 200]),
)
def test_property_heavy_jitter_keeps_order_and_accounts_for_every_packet(
    plans: list[tuple[bool, int, int | None, int]], first_seq: int, start_ms: int, max_depth_ms: int
) -> None:
    jb = JitterBuffer(RATE, start_ms=start_ms, max_depth_ms=max_depth_ms, min_ms=0)
    out, delivered, copies = run(jb, plans, first_seq)
    played = [i for i in out if i is not None]
    s = jb.stats
    assert played == sorted(set(played))  # never out of order, never twice
    assert set(played) <= delivered
    assert s.received == copies == accounted(jb)
    assert s.played == len(played)
    assert jb.depth_ms <= max_depth_ms
    # What did not come out was late (after its gap was given up), or is still held.
    assert s.late + jb.packets_queued >= len(delivered) - len(played)
