"""Jitter buffer: ordering, wraparound, start threshold, loss, concealment, accounting."""

from __future__ import annotations

import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.media import JitterBuffer, JitterStats

RATE = 8000
FB = 320  # bytes in 20 ms at 8 kHz
MAGIC = 12345  # first sample of every test packet: tells real audio from concealment


def packet(index: int, samples: int = 160) -> bytes:
    """A recognisable packet: [MAGIC, index, index, ...]."""
    return array.array("h", [MAGIC] + [index] * (samples - 1)).tobytes()


def ident(frame: bytes | None) -> int | None:
    """The packet index a played frame came from, or None for concealment/silence."""
    if frame is None:
        return None
    s = array.array("h", frame[:4])
    return s[1] if s[0] == MAGIC else None


def const_frame(value: int) -> bytes:
    return array.array("h", [value] * 160).tobytes()


def accounted(jb: JitterBuffer) -> int:
    s = jb.stats
    return s.played + s.late + s.duplicate + s.overflow + s.discarded + jb.packets_queued


def test_start_threshold_then_in_order() -> None:
    jb = JitterBuffer(RATE)  # start_ms=60: three 20 ms packets
    assert jb.frame_bytes == FB
    assert jb.pop() is None
    jb.push(1000, 0, 7, packet(0))
    jb.push(1001, 160, 7, packet(1))
    assert jb.pop() is None
    assert jb.depth_ms == 40
    jb.push(1002, 320, 7, packet(2))
    assert jb.depth_ms == 60
    played = []
    for i in range(3, 50):
        played.append(ident(jb.pop()))
        jb.push(1000 + i, 160 * i, 7, packet(i))
    assert played == list(range(47))
    assert jb.stats.received == 50
    assert jb.stats.played == 47
    assert jb.stats.lost == jb.stats.late == jb.stats.concealed == 0
    assert accounted(jb) == 50


def test_reorder_within_buffer() -> None:
    jb = JitterBuffer(RATE)
    for seq in (10, 12, 11, 14, 13):
        jb.push(seq, 0, 1, packet(seq))
    assert [ident(jb.pop()) for _ in range(5)] == [10, 11, 12, 13, 14]
    assert jb.stats.reordered == 2


def test_first_packets_out_of_order_start_earlier() -> None:
    # Before anything has played, an older packet is not late: it starts the stream.
    jb = JitterBuffer(RATE)
    for seq in (5, 3, 4):
        jb.push(seq, 0, 1, packet(seq))
    assert [ident(jb.pop()) for _ in range(3)] == [3, 4, 5]
    assert jb.stats.late == 0


@pytest.mark.parametrize("first", [65530, 65533, 65535])
def test_sequence_wraparound(first: int) -> None:
    jb = JitterBuffer(RATE)
    seqs = [(first + i) & 0xFFFF for i in range(12)]
    # Swap neighbours across the wrap so reordering straddles 65535 -> 0.
    arrival = seqs[:]
    arrival[4], arrival[5] = arrival[5], arrival[4]
    for i, seq in enumerate(arrival):
        jb.push(seq, 0, 1, packet(seqs.index(seq)))
        if i >= 2:
            assert ident(jb.pop()) == i - 2
    assert jb.stats.late == jb.stats.lost == 0
    assert jb.stats.reordered == 1


def test_duplicates_queued_and_played() -> None:
    jb = JitterBuffer(RATE)
    for seq in (0, 1, 1, 2):
        jb.push(seq, 0, 1, packet(seq))
    assert jb.stats.duplicate == 1
    assert ident(jb.pop()) == 0
    jb.push(0, 0, 1, packet(0))  # a copy of a packet already played
    assert jb.stats.duplicate == 2
    assert jb.stats.late == 0
    assert accounted(jb) == jb.stats.received


def test_loss_is_concealed_with_fade_then_silence() -> None:
    jb = JitterBuffer(RATE, start_ms=100)
    for seq in range(5):
        jb.push(seq, 0, 1, const_frame(1000))
    assert [jb.pop() for _ in range(5)] == [const_frame(1000)] * 5
    jb.push(9, 0, 1, packet(9))  # 5..8 missing, a later packet is here
    # Each repeat halves the amplitude (audioop.mul by 0.5): 1000 -> 500 -> 250.
    assert jb.pop() == const_frame(1000 // 2)
    assert jb.pop() == const_frame(1000 // 4)
    assert jb.pop() == bytes(FB)
    assert jb.pop() == bytes(FB)
    assert ident(jb.pop()) == 9
    assert (jb.stats.lost, jb.stats.concealed) == (4, 2)
    jb.push(7, 0, 1, packet(7))  # arrives after its slot was given up
    assert jb.stats.late == 1


def test_underrun_keeps_playout_point_then_rebuffers() -> None:
    jb = JitterBuffer(RATE)  # start 60 ms
    for seq in range(3):
        jb.push(seq, 0, 1, const_frame(800 + 2 * seq))
    assert [jb.pop() for _ in range(3)] == [const_frame(800 + 2 * seq) for seq in range(3)]
    # Nothing queued: a faded repeat that does not consume a sequence number...
    assert jb.pop() == const_frame(804 // 2)
    jb.push(3, 0, 1, const_frame(1000))  # ...so packet 3, arriving late, still plays
    assert jb.pop() == const_frame(1000)
    assert jb.pop() == const_frame(1000 // 2)
    assert jb.pop() == const_frame(1000 // 4)
    assert jb.playing
    assert jb.pop() is None  # two repeats, then idle: the start threshold applies again
    assert not jb.playing
    jb.push(4, 0, 1, packet(4))
    jb.push(5, 0, 1, packet(5))
    assert jb.pop() is None
    jb.push(6, 0, 1, packet(6))
    assert [ident(jb.pop()) for _ in range(3)] == [4, 5, 6]
    assert (jb.stats.lost, jb.stats.late, jb.stats.concealed) == (0, 0, 3)


def test_restart_after_idle_skips_missing_head() -> None:
    jb = JitterBuffer(RATE, start_ms=40)
    for seq in range(2):
        jb.push(seq, 0, 1, packet(seq))
    assert [ident(jb.pop()) for _ in range(2)] == [0, 1]
    while jb.pop() is not None:
        pass
    for seq in (4, 5):  # 2 and 3 never come
        jb.push(seq, 0, 1, packet(seq))
    assert ident(jb.pop()) == 4
    assert jb.stats.lost == 2
    jb.push(3, 0, 1, packet(3))
    assert jb.stats.late == 1


def test_overflow_drops_oldest() -> None:
    jb = JitterBuffer(RATE, max_depth_ms=200)
    for seq in range(15):
        jb.push(seq, 0, 1, packet(seq))
    assert jb.depth_ms == 200
    assert jb.stats.overflow == 5
    assert [ident(jb.pop()) for _ in range(10)] == list(range(5, 15))
    assert accounted(jb) == 15


def test_gap_counts_toward_depth_and_is_trimmed_as_lost() -> None:
    jb = JitterBuffer(RATE, max_depth_ms=200)
    for seq in range(3):
        jb.push(seq, 0, 1, packet(seq))
    assert jb.depth_ms == 60
    jb.push(50, 0, 1, packet(50))  # 47 missing packets: ~1 s of delay if waited for
    # Depth is measured to the newest packet: only positions 41..50 (200 ms) may stay,
    # so the three queued packets go as overflow and the 38 gaps before 41 as lost.
    assert (jb.stats.overflow, jb.stats.lost) == (3, 38)
    # Nothing is playing, so playback will resume at 50: the gaps before it add no delay.
    assert jb.depth_ms == 20
    assert jb.pop() is None
    jb.push(51, 0, 1, packet(51))
    jb.push(52, 0, 1, packet(52))
    assert [ident(jb.pop()) for _ in range(3)] == [50, 51, 52]
    assert jb.stats.lost == 47  # every one of 3..49
    assert accounted(jb) == jb.stats.received


def test_latency_added_by_an_underrun_drains_at_the_next_gap() -> None:
    jb = JitterBuffer(RATE)  # start 60 ms
    for seq in range(3):
        jb.push(seq, 0, 1, packet(seq))
    assert [ident(jb.pop()) for _ in range(3)] == [0, 1, 2]
    assert ident(jb.pop()) is None  # underrun: concealed, playout point held at 3
    assert ident(jb.pop()) is None
    # 3 and 4 were lost; 5..7 arrive. Waiting for 3 and 4 added 40 ms of latency; with
    # 60 ms queued behind them they are skipped at once.
    for seq in (5, 6, 7):
        jb.push(seq, 0, 1, packet(seq))
    assert ident(jb.pop()) == 5
    assert jb.stats.lost == 2
    assert jb.depth_ms == 40


def test_ssrc_change_resets() -> None:
    jb = JitterBuffer(RATE)
    for seq in range(4):
        jb.push(seq, 0, 1, packet(seq))
    assert ident(jb.pop()) == 0
    jb.push(9000, 0, 2, packet(100))
    assert jb.stats.resets == 1
    assert jb.stats.discarded == 3
    assert jb.pop() is None  # start threshold again
    jb.push(9001, 0, 2, packet(101))
    jb.push(9002, 0, 2, packet(102))
    assert [ident(jb.pop()) for _ in range(3)] == [100, 101, 102]
    assert accounted(jb) == jb.stats.received == 7


def test_sequence_restart_needs_two_packets() -> None:
    # RFC 3550 A.1: a jump beyond the window is confirmed by the next packet in sequence.
    jb = JitterBuffer(RATE, window=100)
    for seq in range(4):
        jb.push(seq, 0, 1, packet(seq))
    jb.push(30000, 0, 1, packet(30000 % 1000))  # a stray: dropped, on probation
    assert jb.stats.discarded == 1
    assert jb.stats.resets == 0
    jb.push(4, 0, 1, packet(4))  # the real stream continues undisturbed
    jb.push(31000, 0, 1, packet(1))  # another jump...
    jb.push(31001, 0, 1, packet(2))  # ...confirmed: the sender restarted
    assert jb.stats.resets == 1
    jb.push(31002, 0, 1, packet(3))
    jb.push(31003, 0, 1, packet(4))
    assert [ident(jb.pop()) for _ in range(3)] == [2, 3, 4]


def test_far_behind_packet_is_late() -> None:
    jb = JitterBuffer(RATE, window=50)
    for seq in range(100, 104):
        jb.push(seq, 0, 1, packet(seq))
    jb.push(10, 0, 1, packet(10))
    assert jb.stats.late == 1


@pytest.mark.parametrize("packet_ms", [10, 30, 40])
def test_other_packet_sizes_play_as_a_continuous_stream(packet_ms: int) -> None:
    # Packets of another ptime, sent in real time: packet i arrives at i * packet_ms,
    # the buffer is popped every 20 ms. The byte stream must come out unbroken.
    jb = JitterBuffer(RATE)
    samples = RATE * packet_ms // 1000
    count = 600 // packet_ms
    packets = [
        array.array("h", range(i * samples, (i + 1) * samples)).tobytes() for i in range(count)
    ]
    out = bytearray()
    sent = 0
    for now_ms in range(0, 2000, 20):
        while sent < count and sent * packet_ms <= now_ms:
            jb.push(sent, sent * samples, 1, packets[sent])
            sent += 1
        frame = jb.pop()
        if frame is not None:
            assert len(frame) == FB
            out += frame
    stream = b"".join(packets)
    # Everything plays in order; after the end come concealment and silence.
    assert bytes(out[: len(stream)]) == stream
    assert jb.stats.played == count
    assert jb.stats.lost == 0


def test_depth_ms_and_counters_type() -> None:
    jb = JitterBuffer(16000, ptime_ms=20)
    assert jb.frame_bytes == 640
    jb.push(1, 0, 1, bytes(640))
    jb.push(3, 0, 1, bytes(640))
    assert jb.depth_ms == 60  # two packets and one gap
    assert isinstance(jb.stats, JitterStats)


def test_reset_discards() -> None:
    jb = JitterBuffer(RATE)
    jb.push(1, 0, 1, packet(1))
    jb.reset()
    assert jb.stats.discarded == 1
    assert jb.stats.resets == 1
    assert jb.depth_ms == 0
    jb.push(500, 0, 9, packet(5))  # any SSRC and sequence: a fresh stream
    assert jb.stats.resets == 1


def test_bad_arguments() -> None:
    jb = JitterBuffer(RATE)
    with pytest.raises(ValueError, match="sequence"):
        jb.push(65536, 0, 1, bytes(FB))
    with pytest.raises(ValueError, match="sequence"):
        jb.push(-1, 0, 1, bytes(FB))
    with pytest.raises(ValueError, match="16-bit"):
        jb.push(1, 0, 1, bytes(3))
    with pytest.raises(ValueError, match="start_ms"):
        JitterBuffer(RATE, start_ms=300, max_depth_ms=200)
    with pytest.raises(ValueError, match="sample_rate"):
        JitterBuffer(0)


# -- properties -------------------------------------------------------------------------


# One record per packet: (lose it?, delay in ticks, duplicate delay or None, tie-breaker).
def packet_plans(max_delay: int) -> st.SearchStrategy[list[tuple[bool, int, int | None, int]]]:
    return st.lists(
        st.tuples(
            st.integers(0, 9).map(lambda r: r == 0),  # ~10 % loss
            st.integers(0, max_delay),
            st.one_of(st.none(), st.none(), st.integers(0, max_delay)),  # ~1/3 duplicated
            st.integers(0, 1 << 16),
        ),
        min_size=1,
        max_size=150,
    )


FIRST_SEQ = st.one_of(st.integers(0, 65535), st.integers(65400, 65535))


def simulate(
    jb: JitterBuffer, plans: list[tuple[bool, int, int | None, int]], first_seq: int
) -> tuple[list[int], set[int], int]:
    """Packet i is sent at tick i and arrives at tick i + delay; pushes, then one pop per tick.

    Returns the indices played (in order), the indices delivered and the copies pushed.
    """
    arrivals: list[tuple[int, int, int]] = []  # (tick, tie-breaker, index)
    delivered: set[int] = set()
    for i, (lost, delay, dup_delay, tie) in enumerate(plans):
        if lost:
            continue
        delivered.add(i)
        arrivals.append((i + delay, tie, i))
        if dup_delay is not None:
            arrivals.append((i + dup_delay, tie + 1, i))
    arrivals.sort()
    played: list[int] = []
    pos = 0
    last_tick = (arrivals[-1][0] if arrivals else 0) + 20
    for tick in range(last_tick + 1):
        while pos < len(arrivals) and arrivals[pos][0] <= tick:
            i = arrivals[pos][2]
            jb.push((first_seq + i) & 0xFFFF, 160 * i, 42, packet(i))
            pos += 1
        frame = jb.pop()
        if frame is not None:
            assert len(frame) == FB
            index = ident(frame)
            if index is not None:
                played.append(index)
    return played, delivered, len(arrivals)


@settings(max_examples=150, deadline=None)
@given(plans=packet_plans(max_delay=2), first_seq=FIRST_SEQ)
def test_property_bounded_jitter_plays_every_packet_once_in_order(
    plans: list[tuple[bool, int, int | None, int]], first_seq: int
) -> None:
    # Jitter of at most 2 ptimes fits in the 60 ms start threshold: nothing may be late,
    # every delivered packet plays exactly once, in order, and loss is counted exactly.
    jb = JitterBuffer(RATE, start_ms=60, max_depth_ms=10_000)
    played, delivered, copies = simulate(jb, plans, first_seq)
    s = jb.stats
    assert played == sorted(set(played))  # in order, each at most once
    assert s.late == 0
    assert s.overflow == 0
    assert s.duplicate == copies - len(delivered)
    assert set(played) <= delivered
    # What has not played is still queued (a tail shorter than the start threshold).
    assert len(played) + jb.packets_queued == len(delivered)
    if jb.packets_queued:
        assert all(i > max(played, default=-1) for i in delivered - set(played))
    assert s.received == copies == accounted(jb)
    if played:
        never = {i for i in range(played[0], played[-1]) if i not in delivered}
        assert s.lost == len(never)


@settings(max_examples=150, deadline=None)
@given(
    plans=packet_plans(max_delay=12),
    first_seq=FIRST_SEQ,
    start_ms=st.sampled_from([0, 20, 40, 60]),
    max_depth_ms=st.sampled_from([60, 100, 200]),
)
def test_property_heavy_jitter_keeps_order_and_accounts_for_every_packet(
    plans: list[tuple[bool, int, int | None, int]], first_seq: int, start_ms: int, max_depth_ms: int
) -> None:
    jb = JitterBuffer(RATE, start_ms=start_ms, max_depth_ms=max_depth_ms)
    played, delivered, copies = simulate(jb, plans, first_seq)
    s = jb.stats
    assert played == sorted(set(played))
    assert set(played) <= delivered
    assert s.received == copies == accounted(jb)
    assert s.played == len(played)
    # Every delivered packet that did not play was counted late or overflow (or is queued).
    unplayed = len(delivered) - len(played)
    assert s.late + s.overflow + jb.packets_queued >= unplayed
    assert jb.depth_ms <= max_depth_ms
    # Positions between the first and last packet played that did not play were skipped
    # either as lost (no packet) or as overflow.
    if played:
        skipped = played[-1] - played[0] + 1 - len(played)
        assert skipped <= s.lost + s.overflow
