"""The stream engine's timing policy on the autojump clock: pacing, retries, thresholds,
timeouts, replay. No sockets; the legs are in-memory fakes (tests/streams/fakes.py)."""

from __future__ import annotations

import itertools
import statistics
import struct
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from bridge.dialects import Audio, Clear, Dtmf, Hangup, Mark, Start
from bridge.media import Frame
from bridge.media._playout_policy import GRACE_S, PHASE_MARGIN_S, SEND_EARLY_S
from bridge.streams import (
    EchoConnector,
    LifecycleEvent,
    Stream,
    StreamSettings,
    StreamState,
    Ticker,
)

from .fakes import FakeAppConnection, FakeCallLeg, ScriptedConnector

FRAME_8K = 320


def numbered_frame(n: int, size: int = FRAME_8K) -> bytes:
    """A frame whose every sample carries its number: sample-exact identity checks."""
    return struct.pack("<h", (n + 1) % 32768) * (size // 2)  # never all-zero


def frame_number(pcm: bytes) -> int:
    return int(struct.unpack_from("<h", pcm)[0]) - 1


@attrs.define
class Recorder:
    events: list[tuple[float, str, dict[str, Any]]] = attrs.field(factory=list)
    states: list[str] = attrs.field(factory=list)
    closed: list[str] = attrs.field(factory=list)

    def stream_event(self, stream: Stream, event: LifecycleEvent) -> None:
        self.events.append((trio.current_time(), event.name, event.detail()))

    def stream_state(self, stream: Stream, state: StreamState) -> None:
        self.states.append(state.value)

    def stream_closed(self, stream: Stream) -> None:
        self.closed.append(stream.reason or "")

    def stream_bad_input(self, stream: Stream, leg: str, kind: str, message: str) -> None:
        self.events.append((trio.current_time(), "bad_input", {"leg": leg, "kind": kind}))

    def names(self) -> list[str]:
        return [name for _, name, _ in self.events]


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def run_stream(
    nursery: trio.Nursery, call: FakeCallLeg, connector: Any, **settings: Any
) -> tuple[Stream, Recorder, Ticker]:
    ticker = Ticker()
    nursery.start_soon(ticker.serve)
    rec = Recorder()
    stream = Stream(
        stream_id="s-1",
        call=call,
        connector=connector,
        ticker=ticker,
        settings=StreamSettings(**settings),
        route="r",
        observer=rec,
    )
    nursery.start_soon(stream.run)
    return stream, rec, ticker


async def feed_caller(call: FakeCallLeg, frames: int, start: int = 0) -> None:
    for n in range(start, start + frames):
        call.inject_audio(numbered_frame(n))
        await trio.sleep(0.02)


async def test_echo_plays_every_frame_back_paced(clock: trio.testing.MockClock) -> None:
    call = FakeCallLeg()
    async with trio.open_nursery() as nursery:
        stream, rec, _ = await run_stream(nursery, call, EchoConnector(8000))
        await trio.sleep(0.001)
        await feed_caller(call, 100)
        await trio.sleep(0.2)
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    numbers = [frame_number(pcm) for _, pcm in call.sent if any(pcm)]
    assert numbers == list(range(100))  # every frame back once, in order
    times = [t for t, _ in call.sent]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    # Paced on an exact 20 ms grid (each frame sent on arrival, PHASE_MARGIN_S before
    # its slot); the one exception is where the app stopped streaming: the next slot
    # waited its grace for a frame that never came.
    odd = [(i, g) for i, g in enumerate(gaps) if g != 0.02]
    assert odd == [(odd[0][0], round(0.02 + GRACE_S + PHASE_MARGIN_S, 6))] if odd else True, odd
    last_audio = max(i for i, (_, pcm) in enumerate(call.sent) if any(pcm))
    assert not odd or odd[0][0] == last_audio
    assert stream.reason == "call_hangup"
    assert rec.names() == ["StartStream", "StopStream"]
    assert rec.states == ["open", "streaming", "closing", "closed"]
    assert stream.lateness_ms()["max"] == 0.0
    # Every frame but the first (which phased the grid) went out on arrival.
    assert stream.playout.early_sends >= 99


async def test_grid_does_not_drift_in_one_simulated_hour(clock: trio.testing.MockClock) -> None:
    call = FakeCallLeg()
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(nursery, call, EchoConnector(8000), timeout_s=3600.0)
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    assert stream.reason == "stream_timeout"
    first, last = call.sent[0][0], call.sent[-1][0]
    n = len(call.sent)
    # Every frame on its deadline: the n-th frame is exactly n-1 ptimes after the first.
    assert last - first == pytest.approx((n - 1) * 0.02, abs=1e-6)
    # A silent caller: the grid starts 0.1 s in, and has a slot every 20 ms up to and
    # including t = 3600 s. Not one frame more or less over the hour.
    expected = round((3600.0 - first) / 0.02) + 1
    assert n == expected


async def test_unreachable_app_three_attempts_then_one_drop(clock: trio.testing.MockClock) -> None:
    call = FakeCallLeg()
    connector = ScriptedConnector()
    async with trio.open_nursery() as nursery:
        stream, rec, _ = await run_stream(nursery, call, connector, retries=2, backoff_s=0.5)
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    t0 = connector.attempts[0]
    # The first attempt plus 2 retries, backoff doubling from 0.5 s (each handshake 10 ms).
    assert [round(t - t0, 3) for t in connector.attempts] == [0.0, 0.51, 1.52]
    assert rec.names() == ["DroppedStream"]
    _, _, fields = rec.events[0]
    assert fields["reason"] == "connection_error"
    assert fields["attempts"] == 3
    assert "at initiation" in fields["error"]
    assert call.closed_reason == "connection_error"


async def test_degraded_at_each_threshold_then_dropped_for_slowness(
    clock: trio.testing.MockClock,
) -> None:
    call = FakeCallLeg()
    connector = ScriptedConnector()  # never reachable; retries outlast the buffer
    async with trio.open_nursery() as nursery:
        stream, rec, _ = await run_stream(
            nursery, call, connector, retries=100, backoff_s=0.1, buffer_s=1.0
        )
        nursery.start_soon(feed_caller, call, 200)
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    assert rec.names() == ["DegradedStream"] * 3 + ["DroppedStream"]
    assert [f["buffer_percent"] for _, n, f in rec.events if n == "DegradedStream"] == [30, 60, 90]
    times = [t for t, _, _ in rec.events]
    # 1 s of buffer holds 50 frames: 30/60/90 % are crossed by frames 15, 30, 45 and
    # frame 50 fills it, i.e. 0.3 s, 0.6 s and 0.7 s after the first crossing.
    frame_of = {30: 15, 60: 30, 90: 45, 100: 50}
    expected = [round((frame_of[p] - 15) * 0.02, 2) for p in (30, 60, 90, 100)]
    assert [round(t - times[0], 2) for t in times] == expected
    assert rec.events[-1][2]["reason"] == "slow_connection"


async def test_mid_stream_loss_replays_every_frame_once_in_order(
    clock: trio.testing.MockClock,
) -> None:
    call = FakeCallLeg()
    first, second = FakeAppConnection(), FakeAppConnection()
    connector = ScriptedConnector([first, None, second])  # one failed attempt between
    async with trio.open_nursery() as nursery:
        stream, rec, _ = await run_stream(nursery, call, connector, backoff_s=0.2)
        await trio.sleep(0.05)
        nursery.start_soon(feed_caller, call, 150)
        await trio.sleep(1.0)
        first.kill()
        await trio.sleep(2.5)
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    got = [frame_number(p) for p in first.audio()] + [frame_number(p) for p in second.audio()]
    assert got == list(range(150))
    starts = second.starts()
    assert len(starts) == 1 and starts[0].resumed and starts[0].replayed_ms > 0
    assert first.starts()[0].resumed is False
    assert stream.reconnects == 1
    assert rec.names() == ["StartStream", "StopStream"]  # an outage is not a drop


async def test_normal_close_and_hangup_end_with_app_hangup(clock: trio.testing.MockClock) -> None:
    for finish in ("close", "hangup"):
        call = FakeCallLeg()
        conn = FakeAppConnection()
        async with trio.open_nursery() as nursery:
            stream, rec, _ = await run_stream(nursery, call, ScriptedConnector([conn]))
            await trio.sleep(0.1)
            if finish == "close":
                conn.close_normally()
            else:
                conn.feed(Hangup())
            await stream.closed_event.wait()
            nursery.cancel_scope.cancel()
        assert stream.reason == "app_hangup", finish
        assert rec.events[-1][2]["reason"] == "app_hangup"
        assert call.closed_reason == "app_hangup"


async def test_stream_timeout(clock: trio.testing.MockClock) -> None:
    call = FakeCallLeg()
    async with trio.open_nursery() as nursery:
        stream, rec, _ = await run_stream(nursery, call, EchoConnector(8000), timeout_s=5.0)
        await stream.closed_event.wait()
        end = trio.current_time()
        nursery.cancel_scope.cancel()
    assert stream.reason == "stream_timeout"
    assert end == pytest.approx(5.0, abs=0.01)
    assert rec.events[-1][2]["reason"] == "stream_timeout"


async def test_marks_released_after_their_audio_and_clear_returns_pending(
    clock: trio.testing.MockClock,
) -> None:
    call = FakeCallLeg()
    conn = FakeAppConnection()
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(nursery, call, ScriptedConnector([conn]))
        await trio.sleep(0.2)
        conn.feed(Audio(Frame(numbered_frame(1) * 5, 8000)))  # 100 ms
        conn.feed(Mark("after-100ms"))
        await trio.sleep(0.05)
        assert conn.marks() == []  # not played yet
        await trio.sleep(0.1)
        assert conn.marks() == ["after-100ms"]
        conn.feed(Audio(Frame(numbered_frame(2) * 50, 8000)))  # 1 s
        conn.feed(Mark("late"))
        await trio.sleep(0.1)
        conn.feed(Clear())
        await trio.sleep(0.05)
        assert conn.marks() == ["after-100ms", "late"]  # returned by the clear
        before = len([p for _, p in call.sent if frame_number(p) == 2])
        await trio.sleep(0.2)
        after = len([p for _, p in call.sent if frame_number(p) == 2])
        assert after == before  # the cleared audio is not played
        conn.feed(Dtmf("5"))
        await trio.sleep(0.05)
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    assert any(isinstance(e, Dtmf) for e in call.events_sent)


async def test_start_carries_call_metadata_and_rate(clock: trio.testing.MockClock) -> None:
    call = FakeCallLeg()
    conn = FakeAppConnection()
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(
            nursery, call, ScriptedConnector([conn]), app_sample_rate=16000
        )
        nursery.start_soon(feed_caller, call, 10)
        await trio.sleep(0.5)
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    start = conn.starts()[0]
    assert isinstance(start, Start)
    assert (start.stream_id, start.call_id, start.sample_rate) == ("s-1", "call-1", 16000)
    assert start.metadata["fake"] is True
    # 8 kHz caller audio resampled to the route's 16 kHz: 640-byte frames.
    assert {len(p) for p in conn.audio()} == {640}


@attrs.define(eq=False)
class PolledCallLeg(FakeCallLeg):
    """Delivers caller audio from ``poll`` like the RTP leg's jitter buffer does."""

    queued: list[bytes] = attrs.field(factory=list)

    def poll(self, sink: Any, now_s: float) -> None:
        self.polls += 1
        if self.queued:
            sink.on_call_event(Audio(Frame(self.queued.pop(0), 8000)))


async def test_phase_alignment_never_crams_frames(clock: trio.testing.MockClock) -> None:
    call = PolledCallLeg()
    call.queued = [numbered_frame(n) for n in range(100)]
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(nursery, call, EchoConnector(8000))
        await trio.sleep(3.0)
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    times = [t for t, _ in call.sent]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.01  # never two frames within half a ptime
    # At most one re-phasing gap, and one grace gap where the app stopped streaming.
    assert sum(1 for g in gaps if g != 0.02) <= 2
    numbers = [frame_number(pcm) for _, pcm in call.sent if any(pcm)]
    assert numbers == list(range(100))


async def test_carrier_marks_are_answered_on_cleared(clock: trio.testing.MockClock) -> None:
    from bridge.dialects import Cleared

    call = FakeCallLeg(far_side_buffers=True)  # like Plivo: buffers, echoes played marks
    conn = FakeAppConnection()
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(nursery, call, ScriptedConnector([conn]))
        await trio.sleep(0.2)
        conn.feed(Audio(Frame(numbered_frame(1) * 2, 8000)))
        conn.feed(Mark("m1"))
        await trio.sleep(0.2)
        assert [e.name for e in call.events_sent if isinstance(e, Mark)] == ["m1"]
        assert conn.marks() == []  # forwarded to the carrier, not echoed by bridge
        call.inject(Cleared())  # the carrier dropped its queue (Plivo clearedAudio)
        await trio.sleep(0.05)
        assert conn.marks() == ["m1"]
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()


async def test_slow_app_degraded_then_recovered_in_order(clock: trio.testing.MockClock) -> None:
    call = FakeCallLeg()
    conn = FakeAppConnection()
    async with trio.open_nursery() as nursery:
        stream, rec, _ = await run_stream(
            nursery, call, ScriptedConnector([conn]), buffer_s=1.0
        )
        await trio.sleep(0.05)
        conn.backlog = 100_000  # the app stops taking frames: they queue in the uplink
        nursery.start_soon(feed_caller, call, 100)
        await trio.sleep(0.7)  # 35 frames: past 30 % and 60 % of 1 s
        assert [f["buffer_percent"] for _, n, f in rec.events if n == "DegradedStream"] == [30, 60]
        conn.unblock()  # it catches up: everything buffered goes out, in order
        await trio.sleep(1.5)
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    assert rec.names() == ["StartStream", "DegradedStream", "DegradedStream", "RecoveredStream", "StopStream"]
    assert [frame_number(p) for p in conn.audio()] == list(range(100))


async def test_hold_audio_plays_while_the_app_is_away(clock: trio.testing.MockClock) -> None:
    hold = b"".join(struct.pack("<h", 3000 + i) * 160 for i in range(5))  # 5 distinct frames
    call = FakeCallLeg()
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(
            nursery, call, ScriptedConnector(), retries=50, backoff_s=0.05, hold_pcm=hold
        )
        nursery.start_soon(feed_caller, call, 30)
        await trio.sleep(0.6)
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    played = [struct.unpack_from("<h", pcm)[0] - 3000 for _, pcm in call.sent]
    assert len(played) >= 20
    # The hold sound loops frame by frame while the app is unreachable.
    assert played[:12] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]



async def feed_app_frames(
    conn: FakeAppConnection, frames: int, offset_s: Callable[[int], float]
) -> dict[int, float]:
    """Frame k of a real-time app arrives at t0 + 20 ms * k + offset_s(k); returns the
    arrival times."""
    t0 = trio.current_time()
    arrived: dict[int, float] = {}
    for k in range(frames):
        await trio.sleep_until(t0 + 0.02 * k + offset_s(k))
        arrived[k] = trio.current_time()
        conn.feed(Audio(Frame(numbered_frame(k), 8000)))
    return arrived


def far_side_play(sent: list[tuple[float, bytes]], bytes_per_s: float = 16000) -> list[float]:
    """When the caller's side plays each sent frame: in order, each for its length, from
    its arrival or the end of the one before, whichever is later (no jitter buffer)."""
    out = []
    ends = 0.0
    for at, pcm in sent:
        start = max(at, ends)
        ends = start + len(pcm) / bytes_per_s
        out.append(start)
    return out


async def test_late_frames_never_ratchet_latency(clock: trio.testing.MockClock) -> None:
    """An app whose frames are sometimes late by more than a slot: each late frame is
    held for (not replaced by silence), and the latency the caller hears settles at
    about the lateness instead of growing with every late frame."""
    call = FakeCallLeg()
    conn = FakeAppConnection()
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(nursery, call, ScriptedConnector([conn]))
        await trio.sleep(0.1)

        def late_s(k: int) -> float:
            return 0.035 if k % 30 == 29 else 0.0  # every 30th frame is 35 ms late

        arrived = await feed_app_frames(conn, 900, late_s)
        due = {k: t - late_s(k) for k, t in arrived.items()}  # when it was due
        await trio.sleep(0.3)
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    play = far_side_play(call.sent)
    played = {frame_number(p): t for t, (_, p) in zip(play, call.sent, strict=True) if any(p)}
    trimmed = stream.playout.trimmed_frames
    assert len(played) + trimmed == 900  # every frame played or counted as trimmed
    latency = {k: played[k] - due[k] for k in played}
    early = max(v for k, v in latency.items() if 150 <= k < 300)
    tail = max(v for k, v in latency.items() if k >= 750)
    assert tail <= 0.045 and tail <= early + 0.005, (early, tail)


async def test_faster_than_real_time_frames_are_paced_not_caught_up(
    clock: trio.testing.MockClock,
) -> None:
    """A TTS app sending 1 s of audio as 50 single-frame messages at once: played at
    exactly one frame per slot (catch-up is only for real-time streams)."""
    call = FakeCallLeg()
    conn = FakeAppConnection()
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(nursery, call, ScriptedConnector([conn]))
        await trio.sleep(0.2)
        for k in range(50):
            conn.feed(Audio(Frame(numbered_frame(k), 8000)))
        conn.feed(Mark("end"))
        await trio.sleep(1.5)
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    played = [(t, frame_number(p)) for t, p in call.sent if any(p)]
    assert [n for _, n in played] == list(range(50))
    gaps = {round(b[0] - a[0], 6) for a, b in itertools.pairwise(played)}
    assert gaps == {0.02}
    assert stream.playout.trims == 0 and stream.playout.trimmed_frames == 0


async def test_early_send_window_and_phase_shift_earlier(clock: trio.testing.MockClock) -> None:
    """A real-time app goes out on arrival. When its phase jumps 8 ms earlier (more than
    SEND_EARLY_S before its slot) the frames wait for their slots, one per slot, until the
    grid re-phases; then they go out on arrival again."""
    call = FakeCallLeg()
    conn = FakeAppConnection()
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(nursery, call, ScriptedConnector([conn]))
        await trio.sleep(0.1)
        sent_at = await feed_app_frames(conn, 130, lambda k: -0.008 if k >= 60 else 0.0)
        await trio.sleep(0.3)
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    played = {frame_number(p): t for t, p in call.sent if any(p)}
    # The grid starts where the filler frame sent just before the app's first audio ends
    # (never earlier: the app's frames would only wait at the far side instead, where
    # nothing could trim it). That standing slot is trimmed: one early frame dropped.
    p = stream.playout
    assert len(played) + p.trimmed_frames == 130 and p.trimmed_frames == 1, p
    assert all(k in played for k in range(40, 130))
    wait_ms = {k: round((played[k] - sent_at[k]) * 1000, 3) for k in played}
    # (At most the phase margin: a frame goes out early only once the far side has
    # finished the one before it.)
    assert all(wait_ms[k] <= PHASE_MARGIN_S * 1000 for k in range(50, 60)), wait_ms
    # 8 ms early is outside the 5 ms window: those frames wait for their slots...
    assert all(wait_ms[k] > SEND_EARLY_S * 1000 for k in range(60, 65)), wait_ms
    # ...until two windows of waits move the grid earlier (one frame shortened).
    assert p.trims >= 2
    assert all(wait_ms[k] <= PHASE_MARGIN_S * 1000 for k in range(115, 130)), wait_ms
    times = sorted(played.values())
    gaps = [round((b - a) * 1000, 3) for a, b in itertools.pairwise(times)]
    # The phase jump and the re-phasing never put two frames closer than half a ptime.
    assert min(gaps[2:]) > 9.9, gaps


# -- the figures, through a whole Stream on the mock clock -------------------------


def echo_latency(call: FakeCallLeg, sent_at: dict[int, float]) -> dict[int, float]:
    """When the caller's side plays each echoed frame (serial playout) minus when the
    caller sent it."""
    play = far_side_play(call.sent)
    out = {}
    for t, (_, pcm) in zip(play, call.sent, strict=True):
        if any(pcm):
            n = frame_number(pcm)
            if n in sent_at and n not in out:
                out[n] = t - sent_at[n]
    return out


@pytest.mark.parametrize("burst", [4, 6, 10, 50])
async def test_call_leg_burst_at_start_does_not_leave_latency(
    clock: trio.testing.MockClock, burst: int
) -> None:
    """First K frames back-to-back, then one every 20 ms, AudioSocket-like leg -> echo:
    K=4 used to leave 62.7 ms for the whole call, K=6 102.6 ms. Now the standing
    latency is trimmed within 2 s, and what was trimmed is counted."""
    call = FakeCallLeg()
    frames = 300
    sent_at: dict[int, float] = {}
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(nursery, call, EchoConnector(8000))
        await trio.sleep(0.001)
        t0 = trio.current_time()
        for n in range(frames):
            at = t0 + max(0, n - burst + 1) * 0.02
            await trio.sleep_until(at)
            sent_at[n] = trio.current_time()
            call.inject_audio(numbered_frame(n))
        await trio.sleep(0.3)
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    lat = echo_latency(call, sent_at)
    steady = max(lat[n] for n in range(frames - 50, frames) if n in lat)
    assert steady < 0.002, steady
    late = [n for n in lat if sent_at[n] > t0 + 2.0 and lat[n] > steady + 0.005]
    assert not late, [(n, round(lat[n] * 1000, 1)) for n in late]
    p = stream.playout
    assert p.trimmed_frames == burst - 1 and len(lat) + p.trimmed_frames == frames


async def test_frozen_event_loop_three_times_does_not_ratchet(
    clock: trio.testing.MockClock,
) -> None:
    """bridge's own loop frozen for 500 ms three times (SIGSTOP/SIGCONT, a long GC pause):
    the echo delay went 0.5 -> 503 -> 943 -> 1,383 ms. Here the mock clock jumps 500 ms
    with nothing running: the caller's frames of that half second arrive at once, and
    the ticker wakes 25 slots late. After each freeze the latency is back within 2 s."""
    call = FakeCallLeg()
    frames = 600
    sent_at: dict[int, float] = {}
    freezes: list[float] = []
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(nursery, call, EchoConnector(8000))
        await trio.sleep(0.001)
        t0 = trio.current_time()
        for n in range(frames):
            if n in (100, 250, 400):
                clock.jump(0.5)  # the whole process was stopped
                freezes.append(trio.current_time())
            await trio.sleep_until(t0 + n * 0.02)
            sent_at[n] = t0 + n * 0.02  # when the caller sent it (its clock ran on)
            call.inject_audio(numbered_frame(n))
        await trio.sleep(0.3)
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    lat = echo_latency(call, sent_at)
    steady = statistics.median(lat[n] for n in range(frames - 50, frames) if n in lat)
    for i, end in enumerate(freezes):
        until = freezes[i + 1] - 0.55 if i + 1 < len(freezes) else end + 3.0
        after = [n for n in lat if end + 2.0 < sent_at[n] < until]
        assert after and all(lat[n] <= steady + 0.005 for n in after), [
            (n, round(lat[n] * 1000, 1)) for n in after if lat[n] > steady + 0.005
        ]


async def test_flow_control_stops_media_and_queues_the_apps_audio(
    clock: trio.testing.MockClock,
) -> None:
    """Asterisk chan_websocket says MEDIA_XOFF when its queue of bridge's frames reaches
    900 and drops whole messages at 1000: while paused nothing goes out, not even filler,
    and the app's audio waits in bridge's playout, in order, with its marks."""
    from bridge.dialects import FlowControl

    call = FakeCallLeg(far_side_buffers=True)
    conn = FakeAppConnection()
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(nursery, call, ScriptedConnector([conn]))
        await trio.sleep(0.2)
        assert call.sent, "filler goes out before the pause"
        call.inject(FlowControl(True))
        await trio.sleep(0.01)
        paused_at = trio.current_time()
        sent_before = len(call.sent)
        for n in range(25):  # half a second of the app's audio, in real time
            conn.feed(Audio(Frame(numbered_frame(n), 8000)))
            if n == 9:
                conn.feed(Mark("after-10"))
            await trio.sleep(0.02)
        assert len(call.sent) == sent_before  # nothing at all while paused
        assert stream.playout.queued_ms == 500
        assert [e for e in call.events_sent if isinstance(e, Mark)] == []
        call.inject(FlowControl(False))
        await trio.sleep(0.6)
        resumed = [(t, pcm) for t, pcm in call.sent if t > paused_at]
        numbers = [frame_number(pcm) for _, pcm in resumed if any(pcm)]
        assert numbers == list(range(25))  # every frame, once, in order
        # Paced again on the 20 ms grid (the far side buffers: one frame per slot).
        times = [t for t, pcm in resumed if any(pcm)]
        assert all(b - a == pytest.approx(0.02, abs=0.002) for a, b in itertools.pairwise(times))
        assert [e.name for e in call.events_sent if isinstance(e, Mark)] == ["after-10"]
        assert stream.playout_counters()["flow_pauses"] == 1
        assert [e["event"] for e in stream.log if e["event"].startswith("flow_")] == [
            "flow_paused",
            "flow_resumed",
        ]
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()


async def test_clear_while_paused_drops_the_queue_and_returns_its_marks(
    clock: trio.testing.MockClock,
) -> None:
    from bridge.dialects import Cleared, FlowControl

    call = FakeCallLeg(far_side_buffers=True)
    conn = FakeAppConnection()
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(nursery, call, ScriptedConnector([conn]))
        await trio.sleep(0.1)
        call.inject(FlowControl(True))
        await trio.sleep(0.01)
        conn.feed(Audio(Frame(numbered_frame(1) * 10, 8000)))
        conn.feed(Mark("m1"))
        conn.feed(Clear())
        await trio.sleep(0.05)
        assert stream.playout.queued_ms == 0
        assert conn.marks() == ["m1"]
        assert any(isinstance(e, Cleared) for e in conn.received)
        assert any(isinstance(e, Clear) for e in call.events_sent)  # to the far side too
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()


async def test_dtmf_the_call_leg_cannot_send_is_answered_with_an_error(
    clock: trio.testing.MockClock,
) -> None:
    from bridge.dialects import Error

    call = FakeCallLeg()  # send_event returns False: the wire cannot say it
    conn = FakeAppConnection()
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(nursery, call, ScriptedConnector([conn]))
        await trio.sleep(0.1)
        conn.feed(Dtmf("5"))
        await trio.sleep(0.05)
        errors = [e for e in conn.received if isinstance(e, Error)]
        assert errors == [Error("dtmf_unsupported", "the fake call leg cannot send DTMF to the caller")]
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
