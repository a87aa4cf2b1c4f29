"""The rig's metrics (bench/quality/metrics.py), each fed a synthetic impaired signal
whose answer is known: frames found through G.711 and a resampler, concealment copies
counted as fabricated, serial playout turning a burst into lasting latency, time to
recover, SNR, cross-correlation, pass band, PESQ against a codec-only reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.quality import material
from bench.quality import metrics as M
from bridge.media import audioop

RATE = 8000
N = 160
P = 0.02


def _source(seconds: float = 4.0, seed: int = 1) -> np.ndarray:
    sp = material.speech(RATE)[: round(seconds * RATE)]
    sp = sp[: len(sp) // N * N]
    return sp + M.watermark(RATE, len(sp) / RATE, seed=seed)


def _frames(x: np.ndarray) -> list[np.ndarray]:
    return [x[i * N : (i + 1) * N] for i in range(len(x) // N)]


def _linear_round_trip(x: np.ndarray) -> np.ndarray:
    """8 -> 16 -> 8 kHz the way audioop.ratecv and plain decimation do it (no filter)."""
    pcm = np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()
    up, _ = audioop.ratecv(pcm, 2, 1, 8000, 16000, None)
    # bridge pads the first chunk by one sample, so its decimation keeps what were the odd
    # samples: the midpoints, i.e. a half-sample delay and a (1 + z^-1)/2 low-pass.
    return np.frombuffer(bytes(2) + up, dtype="<i2").astype(np.float64)[0::2]


def test_watermark_level_and_band() -> None:
    w = M.watermark(RATE, 2.0, seed=3)
    assert 20 * math.log10(np.sqrt(np.mean(w**2)) / 32767) == pytest.approx(-40, abs=0.1)
    spec = np.abs(np.fft.rfft(w)) ** 2
    f = np.fft.rfftfreq(len(w), 1 / RATE)
    out_of_band = spec[(f < 200) | (f > 3600)].sum() / spec.sum()
    assert out_of_band < 1e-3
    assert not np.allclose(w, M.watermark(RATE, 2.0, seed=4))


def test_serial_playout_keeps_a_burst_as_latency() -> None:
    # Four frames at once, then one every 20 ms: the caller cannot play faster.
    arrival = [0.0, 0.0, 0.0, 0.0] + [P * k for k in range(1, 10)]
    play = M.serial_playout(arrival, P)
    assert play[:5] == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08])
    assert play[-1] - arrival[-1] == pytest.approx(0.06)


def _pcm16(x: np.ndarray) -> bytes:
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def test_a_shortened_chunk_does_not_date_later_frames_a_chunk_late() -> None:
    # bridge trims standing latency by sending one frame short (here by 40 samples, 5 ms)
    # and the rest on time: a caller hears every later sample 5 ms sooner, never 15 ms
    # later. The old cut dated a frame by its last sample, which from then on came in
    # the next chunk: every later frame looked a whole chunk late.
    src = _source(1.0)
    frames = _frames(src)
    cut = 40
    chunks: list[tuple[float, bytes]] = []
    pos, t = 0, 0.0
    for k in range(len(frames)):
        size = N - cut if k == 10 else N
        chunks.append((t, _pcm16(src[pos : pos + size])))
        pos += size
        t += size / RATE
    sent_at = {k: P * k for k in range(len(frames))}
    rx = M.frames_from_chunks(chunks, N, ptime_s=P)
    assert rx.play is not None
    a = M.analyze(src, RATE, sent_at, rx, t0=0.0)
    lat = [ms for _t, ms, _k in a.latency]
    assert a.matched >= len(frames) - 2
    assert max(lat) < 1.0  # nothing is late
    # A pause between chunks (an underrun) delays everything after it, sample by sample.
    late = [(t + (0.03 if i >= 20 else 0.0), c) for i, (t, c) in enumerate(chunks)]
    rx2 = M.frames_from_chunks(late, N, ptime_s=P)
    b = M.analyze(src, RATE, sent_at, rx2, t0=0.0)
    tail = [ms for t_s, ms, _k in b.latency if t_s > 0.5]
    assert min(tail) == pytest.approx(30.0, abs=1.0)


def test_identify_through_g711_and_a_linear_resampler() -> None:
    src = _source()
    rx = _frames(M._g711(_linear_round_trip(src), "pcmu"))
    ids = M.identify(rx, src)
    ks = [round(i[0] / N) for i in ids if i is not None and i[0] != M.UNMATCHED]
    assert ks == list(range(len(rx)))


def test_identify_finds_a_resampler_delayed_first_frame() -> None:
    src = _source(1.0)
    rx = _frames(np.concatenate([np.zeros(5), src]))
    first = M.identify(rx, src)[0]
    assert first is not None and first[0] == -5


def _echo(src: np.ndarray, *, drop: set[int] = frozenset(), copies_after: set[int] = frozenset(),
          noise_after: set[int] = frozenset(), codec: str = "pcmu") -> M.Received:  # fmt: skip
    """A perfect real-time echo of ``src`` 1 ms behind, with frames dropped, half-level
    copies of a frame inserted after it (concealment), or noise inserted."""
    y = M._g711(src, codec)
    rng = np.random.default_rng(5)
    pcm, arr = [], []
    t = 0.001
    for k, f in enumerate(_frames(y)):
        if k not in drop:
            pcm.append(f)
            arr.append(t)
            t += P
        else:
            t += P
        if k in copies_after:
            pcm.append(0.5 * f)
            arr.append(t)
            t += P
        if k in noise_after:
            pcm.append(rng.normal(0, 2000, N))
            arr.append(t)
            t += P
    return M.Received(pcm, arr)


def test_concealment_copies_and_strange_audio_are_fabricated_drops_are_lost() -> None:
    src = _source()
    sent_at = {k: k * P for k in range(len(src) // N)}
    rx = _echo(src, drop={50, 120}, copies_after={80, 81, 150}, noise_after={170})
    a = M.analyze(src, RATE, sent_at, rx, t0=0.0)
    assert a.repeated == 3
    assert a.unmatched == 1
    assert a.fabricated == 4
    assert a.lost == 2
    assert a.matched == len(sent_at) - 2
    # Each inserted frame delays everything after it by one frame time, for good (the
    # synthetic echo keeps a dropped frame's time slot empty, so drops give none back).
    assert a.latency_p50_ms is not None
    last = a.latency[-1]
    assert last[1] == pytest.approx(1.0 + 20.0 * 4, abs=0.01)


def test_network_drops_are_not_counted_as_lost() -> None:
    src = _source(2.0)
    sent_at = {k: k * P for k in range(len(src) // N) if k != 30}
    rx = _echo(src, drop={30})
    a = M.analyze(src, RATE, sent_at, rx, t0=0.0, network_dropped=[30])
    assert a.lost == 0 and a.network_dropped == 1 and a.fabricated == 0


def test_burst_latency_never_recovers_unless_audio_is_dropped() -> None:
    src = _source(6.0)
    n = len(src) // N
    m = 100  # a burst of 4 at 2 s: frames 100..103 at once, then 20 ms apart again
    sent_at = {k: (k * P if k < m else (m * P if k < m + 4 else (k - 3) * P)) for k in range(n)}
    y = M._g711(src, "pcmu")
    frames = _frames(y)
    # An echo that returns every frame 1 ms after it was sent: the backlog lands on
    # the caller, whose serial playout keeps 60 ms of it for the rest of the call.
    rx = M.Received(frames, [sent_at[k] + 0.001 for k in range(n)])
    a = M.analyze(src, RATE, sent_at, rx, t0=0.0, windows=[(2.0, 2.0)])
    assert a.steady_ms == pytest.approx(1.0, abs=0.01)
    assert a.final_ms == pytest.approx(61.0, abs=0.01)
    assert a.recovery == [None]
    # The same, but the echo drops three frames 0.5 s later (latency trimming): back
    # within 5 ms by then, and lost counts the three.
    keep = [k for k in range(n) if k not in (125, 126, 127)]
    rx2 = M.Received([frames[k] for k in keep], [sent_at[k] + 0.001 for k in keep])
    b = M.analyze(src, RATE, sent_at, rx2, t0=0.0, windows=[(2.0, 2.0)])
    assert b.lost == 3
    assert b.final_ms == pytest.approx(1.0, abs=0.01)
    assert b.recovery[0] == pytest.approx(0.5, abs=0.05)


def test_recovery_needs_to_stay_recovered_and_ignores_one_late_frame() -> None:
    series = [(k * P, 1.0) for k in range(100)]
    series += [(2 + k * P, 40.0 - k) for k in range(40)]  # back in by k = 35 (5 ms)
    series += [(2.8 + k * P, 1.0) for k in range(100)]
    series[170] = (series[170][0], 30.0)  # one late frame: the rolling median ignores it
    assert M.recovery_s(series, 2.0, 1.0) == pytest.approx(0.7, abs=0.03)
    bad = [*series, (10.0, 50.0), (10.02, 50.0), (10.04, 50.0), (10.06, 50.0)]
    assert M.recovery_s(bad, 2.0, 1.0) is None
    assert M.recovery_s(bad, 2.0, 1.0, until_s=9.0) == pytest.approx(0.7, abs=0.03)


def test_snr_of_known_noise_and_a_fractional_delay() -> None:
    sp = material.speech(RATE)
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, len(sp))
    noise *= np.sqrt(np.mean(sp**2) / np.mean(noise**2)) * 10 ** (-40 / 20)
    assert M.snr_db(sp + noise, sp) == pytest.approx(40.0, abs=0.3)
    # Delayed by 12.5 samples (band-limited): found and undone.
    delayed = M._fractional_shift(np.concatenate([np.zeros(12), sp, np.zeros(100)]), 0.5)
    assert M.snr_db(delayed, sp) > 45
    # The linear resampler's round trip: far below 40 dB; the offline reference: far above.
    assert M.snr_db(_linear_round_trip(sp), sp) < 30
    assert M.snr_db(M.resample(M.resample(sp, 8000, 16000), 16000, 8000), sp) > 60


def test_cross_correlation_whole_and_windowed() -> None:
    src = _source()
    shifted = np.concatenate([np.zeros(321), src])
    ncc, lag = M.ncc_whole(shifted, src)
    assert ncc == pytest.approx(1.0, abs=1e-6) and lag == 321
    # Eight inserted frames shift everything after each: the whole call no longer lines up.
    rx = _echo(src, copies_after={20, 40, 60, 80, 100, 120, 140, 160}, codec="l16")
    out = np.concatenate(rx.pcm)
    assert M.ncc_whole(out, src)[0] < 0.6
    wins = M.ncc_windows(out, src, RATE, 0.5)
    assert len(wins) == 8 and min(wins) < 0.9 and max(wins) > 0.99


def test_played_signal_ignores_sub_frame_wobble_and_keeps_real_gaps() -> None:
    frames = [np.full(N, float(k + 1)) for k in range(6)]
    arrival = [0.0, 0.0203, 0.0398, 0.06, 0.18, 0.2]
    rx = M.Received(frames, arrival)
    out = M.played_signal(rx, M.serial_playout(arrival, P), 0.0, RATE)
    assert list(out[::N]) == [1, 2, 3, 4, 0, 0, 0, 0, 0, 5, 6]


def test_passband_gains() -> None:
    freqs = (300.0, 1000.0, 3000.0)
    ref = material.multitone_steps(RATE, freqs, 0.3)
    out = ref.copy()
    step = round(0.3 * RATE)
    out[step : 2 * step] *= 0.5  # 1 kHz: -6.02 dB
    out = np.concatenate([np.zeros(37), out])
    g = M.passband_gains_db(out, ref, RATE, freqs, 0.3)
    assert g[300.0] == pytest.approx(0.0, abs=0.01)
    assert g[1000.0] == pytest.approx(-6.02, abs=0.02)
    assert g[3000.0] == pytest.approx(0.0, abs=0.01)


def test_level_db() -> None:
    x = material.tone(RATE, 1000, 1.0)
    assert M.level_db(x * 0.001, x) == pytest.approx(-60, abs=0.01)


def test_codec_chain_and_pesq() -> None:
    sp = material.speech(RATE)
    same = M.pesq_score(sp, sp, RATE)
    assert same is not None and same > 4.4
    ref = M.pesq_score(sp, M.codec_chain(sp, [("pcmu", 8000), ("l16", 16000), ("pcmu", 8000)], RATE), RATE)
    assert ref is not None and 3.8 < ref <= same
    rng = np.random.default_rng(1)
    noisy = sp + rng.normal(0, 0.05 * np.sqrt(np.mean(sp**2)) * 10, len(sp))
    bad = M.pesq_score(sp, noisy, RATE)
    assert bad is not None and bad < ref - 1.0
    assert M.pesq_score(sp, np.zeros_like(sp), RATE) is None
    assert np.array_equal(M.codec_chain(sp, [("l16", 8000)], RATE), sp)
    wide = material.speech(16000)
    wb = M.pesq_score(wide, wide, 16000)
    assert wb is not None and wb > 4.4


def test_hq_resampler_is_flat_and_rejects_aliases() -> None:
    for f in (300.0, 1000.0, 3400.0):
        x = material.tone(8000, f, 1.0)
        y = M.resample(M.resample(x, 8000, 16000), 16000, 8000)
        assert M.level_db(y[800:-800], x[800:-800]) == pytest.approx(0.0, abs=0.01)
    x = material.tone(16000, 6000, 1.0)
    assert M.level_db(M.resample(x, 16000, 8000)[400:-400], x) < -90


def test_snr_longest_run_is_not_spoilt_by_one_inserted_frame() -> None:
    src = _source()
    rx = _echo(src, copies_after={60}, codec="l16")
    # The whole stream against the source: one shifted stretch ruins it...
    assert M.snr_db(np.concatenate(rx.pcm), src) < 20
    # ...the longest run of consecutive frames does not.
    snr = M.snr_longest_run(rx.pcm, src)
    assert snr is not None and snr > 70
    # Through the linear resampler (the 8 -> 16 -> 8 kHz round trip): far below 40.
    lin = _frames(_linear_round_trip(src))
    low = M.snr_longest_run(lin, src)
    assert low is not None and low < 30
