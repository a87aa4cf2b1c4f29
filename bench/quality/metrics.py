"""Objective measures of one call's audio: pure numpy (and ``pesq``), no I/O.

Each function is validated by ``tests/bench/test_quality_metrics.py`` on synthetic,
impaired signals whose answers are known.

Frame identity (:func:`identify`). Every signal the rig sends carries a band-limited
noise-like **watermark** (300-3400 Hz, about -40 dBFS, seeded, never repeating) mixed
under the speech, so every 20 ms of it is unique, pauses included. A returned frame is
found in the source by normalised cross-correlation at every sample offset (FFT), so the
identification survives G.711, any band-limiting resampler and its delay, and a gain
change. (``bridge/tools/_callsignal.py``'s ``Watermark`` is sample-exact and would
not.) A half-amplitude concealment copy of the previous frame matches that frame again:
that is how fabricated frames are told from real ones.

The caller's side (AudioSocket into Asterisk, raw RTP, a carrier's playout queue) is
modelled as **serial playout** with no jitter buffer of its own::

    play[j] = max(arrival[j], play[j-1] + ptime)

so a backlog that bridge moves to the caller by sending faster than real time still
counts as latency. **Added latency** of returned frame j, whose content starts at source
sample p (source frame k = round(p / N)), is::

    play[j] - sent[k] + (k*N - p) / rate

(the last term adds a resampler's own delay, which moves p a few samples back).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CallAnalysis",
    "Received",
    "analyze",
    "codec_chain",
    "frames_from_chunks",
    "identify",
    "level_db",
    "ncc_whole",
    "ncc_windows",
    "passband_gains_db",
    "pesq_score",
    "recovery_s",
    "resample",
    "serial_playout",
    "snr_db",
    "watermark",
]

#: A frame quieter than this (RMS, PCM16 units: -60 dBFS) is silence, not audio.
SILENCE_RMS = 33.0
#: Normalised correlation that identifies a frame at once at the predicted place (the
#: one after the previous frame's); that is enough there when no other place fits
#: better; and that identifies it anywhere.
NCC_SURE = 0.9
NCC_LOCAL = 0.4
NCC_GLOBAL = 0.6
#: identify()'s offset for a frame found nowhere.
UNMATCHED = -(1 << 30)
#: "Back within 5 ms of steady state".
RECOVERY_TOLERANCE_MS = 5.0


# ------------------------------------------------------------------------ signals


def _band_fir(rate: int, lo_hz: float, hi_hz: float, taps: int = 255) -> np.ndarray:
    """A linear-phase band-pass (windowed sinc, Kaiser beta 8): about -80 dB stop band."""
    n = np.arange(taps) - (taps - 1) / 2
    def lp(fc: float) -> np.ndarray:
        return 2 * fc / rate * np.sinc(2 * fc / rate * n)
    h = lp(hi_hz) - (lp(lo_hz) if lo_hz > 0 else 0)
    return h * np.kaiser(taps, 8.0)


def watermark(rate: int, seconds: float, *, seed: int = 1, rms_dbfs: float = -40.0) -> np.ndarray:
    """Seeded band-limited (300-3400 Hz) Gaussian noise at ``rms_dbfs`` RMS."""
    n = round(rate * seconds)
    rng = np.random.default_rng(seed)
    h = _band_fir(rate, 300.0, 3400.0)
    x = np.convolve(rng.standard_normal(n + len(h)), h, mode="same")[len(h) // 2 : len(h) // 2 + n]
    x *= 32767.0 * 10 ** (rms_dbfs / 20) / max(1e-9, float(np.sqrt(np.mean(x**2))))
    return x


def resample(x: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """High-quality resampling (polyphase, a long Kaiser-windowed FIR: pass band flat to
    0.9 x the lower Nyquist frequency, stop band below -90 dB): what an offline tool
    does, used for the codec-only reference and never to judge bridge's own."""
    if from_hz == to_hz:
        return np.asarray(x, dtype=np.float64)
    from scipy.signal import resample_poly

    g = math.gcd(from_hz, to_hz)
    up, down = to_hz // g, from_hz // g
    return np.asarray(resample_poly(x, up, down, window=_hq_filter(up, down)), dtype=np.float64)


def _hq_filter(up: int, down: int) -> np.ndarray:
    from scipy.signal import firwin

    m = max(up, down)
    # Cut-off at 0.93 of the lower Nyquist frequency, 128 taps per phase, Kaiser beta 10
    # (stop band about -100 dB): flat to 3.4 kHz at 8 kHz, to 7 kHz at 16 kHz.
    return np.asarray(firwin(2 * 64 * m + 1, 0.93 / m, window=("kaiser", 10.0)))


def _to_pcm16(x: np.ndarray) -> bytes:
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


def _from_pcm16(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype="<i2").astype(np.float64)


def _g711(x: np.ndarray, law: str) -> np.ndarray:
    from bridge.media import audioop
    pcm = _to_pcm16(x)
    if law == "pcmu":
        return _from_pcm16(audioop.ulaw2lin(audioop.lin2ulaw(pcm, 2), 2))
    if law == "pcma":
        return _from_pcm16(audioop.alaw2lin(audioop.lin2alaw(pcm, 2), 2))
    return _from_pcm16(pcm)


def codec_chain(x: np.ndarray, steps: Sequence[tuple[str, int]], rate: int) -> np.ndarray:
    """The codec-only reference: ``x`` at ``rate`` through each (codec, rate) step in
    turn, offline and without bridge: resample (high quality) to the step's rate, then
    encode and decode with the step's codec (``pcmu``, ``pcma`` or ``l16``). E.g. an
    8 kHz PCMU call through a 16 kHz sln app and back::

        codec_chain(x, [("pcmu", 8000), ("l16", 16000), ("pcmu", 8000)], 8000)
    """
    y = np.asarray(x, dtype=np.float64)
    cur = rate
    for codec, r in steps:
        y = resample(y, cur, r)
        cur = r
        y = _g711(y, codec)
    return resample(y, cur, rate)


# ------------------------------------------------------------------------ frames


@dataclass
class Received:
    """Audio a peer received, frame by frame: ``pcm[j]`` (float, N samples) began to
    arrive at ``arrival[j]`` seconds (the rig's clock) and, at a caller with no jitter
    buffer, begins to play at ``play[j]`` (None: work it out frame by frame with
    :func:`serial_playout`)."""

    pcm: list[np.ndarray]
    arrival: list[float]
    play: list[float] | None = None


def frames_from_chunks(chunks: Sequence[tuple[float, bytes]], frame_samples: int, *,
                       ptime_s: float = 0.02) -> Received:  # fmt: skip
    """Cut received PCM16 chunks (any sizes) into frames of ``frame_samples``. A trailing
    partial frame is dropped.

    The caller is modelled sample by sample, as a channel with no jitter buffer plays
    what it is given: each chunk plays from when it arrived or when the one before it
    has finished, whichever is later; a frame arrived with the chunk holding its first
    sample, and plays when that sample does. (Cutting frames out of the byte stream and
    dating each by its *last* sample would make one shortened chunk, the way bridge
    trims standing latency, date every later frame a whole chunk late: frame j's last
    samples then come in chunk j + 1.)"""
    pcm: list[np.ndarray] = []
    arrival: list[float] = []
    play: list[float] = []
    rate = frame_samples / ptime_s
    buf = np.zeros(0)
    # Every chunk still (partly) in buf: (index of its first sample in the whole received
    # stream, when it arrived, when it starts to play).
    chunk_starts: deque[tuple[int, float, float]] = deque()
    total = 0  # samples received so far
    first = 0  # stream index of buf[0]
    end = -math.inf  # when everything received so far has played
    for t, chunk in chunks:
        samples = _from_pcm16(chunk)
        if not samples.size:
            continue
        begin = max(t, end)
        end = begin + samples.size / rate
        chunk_starts.append((total, t, begin))
        total += samples.size
        buf = np.concatenate([buf, samples]) if buf.size else samples
        while buf.size >= frame_samples:
            while len(chunk_starts) > 1 and chunk_starts[1][0] <= first:
                chunk_starts.popleft()
            index, arrived, begins = chunk_starts[0]
            pcm.append(buf[:frame_samples])
            arrival.append(arrived)
            play.append(begins + (first - index) / rate)
            buf = buf[frame_samples:]
            first += frame_samples
    return Received(pcm, arrival, play)


def serial_playout(arrival: Sequence[float], ptime_s: float) -> list[float]:
    """play[j] = max(arrival[j], play[j-1] + ptime): a caller with no jitter buffer."""
    play: list[float] = []
    last = -math.inf
    for a in arrival:
        last = max(a, last + ptime_s)
        play.append(last)
    return play


class _Finder:
    """Normalised cross-correlation of one frame against every offset of the source."""

    def __init__(self, source: np.ndarray, n: int) -> None:
        # n zeros in front: a frame that starts a few samples before the source (a
        # resampler's delay on the very first frame) is still found, at p < 0.
        self.src = np.concatenate([np.zeros(n), np.asarray(source, dtype=np.float64), np.zeros(n)])
        self.n = n
        c = np.concatenate([[0.0], np.cumsum(self.src**2)])
        # |src[p:p+n]| for each p, floored at the norm of a frame at the silence level: a
        # window of the source quieter than that is no frame's match, and dividing by its
        # near-zero norm would turn the FFT's rounding noise into a "correlation" far
        # above 1 (seen: 4.15, which made a loaded run's first frame land in silence).
        self.norms = np.sqrt(np.maximum(c[n:] - c[:-n], n * SILENCE_RMS**2))
        size = 1 << math.ceil(math.log2(len(self.src) + n))
        self.size = size
        self.S = np.fft.rfft(self.src, size)

    def at(self, frame: np.ndarray, lo: int, hi: int) -> tuple[int, float]:
        lo, hi = max(0, lo), min(len(self.norms) - 1, hi)
        if hi < lo:
            return -1, 0.0
        fn = float(np.linalg.norm(frame)) or 1e-9
        best_p, best = -1, -2.0
        for p in range(lo, hi + 1):
            v = float(np.dot(frame, self.src[p : p + self.n])) / (fn * self.norms[p])
            if v > best:
                best_p, best = p, v
        return best_p, best

    def anywhere(self, frame: np.ndarray) -> tuple[int, float]:
        fn = float(np.linalg.norm(frame)) or 1e-9
        corr = np.fft.irfft(self.S * np.conj(np.fft.rfft(frame, self.size)), self.size)
        corr = corr[: len(self.norms)] / (fn * self.norms)
        p = int(np.argmax(corr))
        return p, float(corr[p])


def identify(frames: Sequence[np.ndarray], source: np.ndarray) -> list[tuple[int, float] | None]:
    """For each received frame: (source sample offset p, correlation), or None for
    silence. A frame that matches nowhere gets (UNMATCHED, best correlation). p may be
    slightly negative (the first frame through a delaying resampler)."""
    if not frames:
        return []
    n = len(frames[0])
    finder = _Finder(source, n)
    out: list[tuple[int, float] | None] = []
    prev = -1
    for f in frames:
        if float(np.sqrt(np.mean(f**2))) < SILENCE_RMS:
            out.append(None)
            continue
        local_p, local_v = (-1, -2.0)
        if prev >= 0:
            local_p, local_v = finder.at(f, prev + n - 3, prev + n + 3)
            if local_v >= NCC_SURE:
                out.append((local_p - n, local_v))
                prev = local_p
                continue
        p, v = finder.anywhere(f)
        if local_v >= NCC_LOCAL and (abs(p - local_p) < n // 2 or local_v >= v - 0.1):
            # A distorted frame (a poor resampler) that still fits where the stream says
            # it should: a best match less than half a frame away is the same place
            # (a pitch period of voiced speech, not a discontinuity), and one nearly as
            # good as anywhere else keeps the stream's order. A repeat (a whole frame
            # back) or a jump still wins when it fits clearly better.
            p, v = local_p, local_v
        if v >= NCC_GLOBAL or (p == local_p and v >= NCC_LOCAL):
            out.append((p - n, v))
            prev = p
        else:
            out.append((UNMATCHED, v))
    return out


# ------------------------------------------------------------------------ per call


@dataclass
class CallAnalysis:
    frames_out: int = 0
    """Frames the caller received (silence included)."""
    silent: int = 0
    matched: int = 0
    fabricated: int = 0
    """Non-silent frames out that never went in: repeats of a frame already played
    (concealment copies included) and audio matching no source frame."""
    repeated: int = 0
    unmatched: int = 0
    lost: int = 0
    """Source frames sent (and not dropped by the network impairment) that never came
    back, between the first and the last one that did."""
    network_dropped: int = 0
    tail_missing: int = 0
    """Source frames after the last one that came back (still in flight at hangup)."""
    out_of_order: int = 0
    latency: list[tuple[float, float, int]] = field(default_factory=list)
    """(source frame's send time from the call's start s, added latency ms, source frame)."""
    steady_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_max_ms: float | None = None
    final_ms: float | None = None
    """Median added latency over the last second of returned frames."""
    final_arrival_ms: float | None = None
    """The same measured at arrival instead of at (serial) play: what a measurement
    that ignores the caller's playout sees. The difference is backlog that bridge moved
    into the caller's buffer by sending faster than real time."""
    recovery: list[float | None] = field(default_factory=list)
    """Per impairment window: seconds from its end until back within 5 ms for good
    (None: never)."""
    steady_arrival_ms: float | None = None
    recovery_arrival: list[float | None] = field(default_factory=list)
    """``recovery`` measured at arrival. The serial-playout figure above also moves
    whenever the *rig* reads a frame late (its own event loop stalled on a loaded
    machine: every later frame then plays that much later in the model); at arrival a
    stall of the rig touches only the frames it held. What the at-play figure adds is
    backlog sent faster than real time, which the playout policy never does (tested
    frame by frame in tests/media/test_playout_policy.py)."""

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "latency"}
        for k, v in list(d.items()):
            if isinstance(v, float):
                d[k] = round(v, 3)
        d["recovery"] = [None if r is None else round(r, 3) for r in self.recovery]
        d["recovery_arrival"] = [
            None if r is None else round(r, 3) for r in self.recovery_arrival
        ]
        return d


def _rolling_median(x: np.ndarray, w: int) -> np.ndarray:
    if len(x) < w:
        return x.copy()
    pad = w // 2
    xp = np.pad(x, (pad, w - 1 - pad), mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(xp, w), axis=1)


def recovery_s(series: Sequence[tuple[float, float]], end_s: float, steady_ms: float, *,
               until_s: float = math.inf, tolerance_ms: float = RECOVERY_TOLERANCE_MS,
               smooth: int = 5) -> float | None:  # fmt: skip
    """Seconds from ``end_s`` until the added latency (``(t, ms)`` by send time t) is
    within ``tolerance_ms`` of ``steady_ms`` and stays so until ``until_s``; a rolling
    median over ``smooth`` frames keeps one late frame from counting. None: never."""
    pts = sorted((t, v) for t, v in series if t < until_s)
    if not pts:
        return None
    t = np.array([p[0] for p in pts])
    v = _rolling_median(np.array([p[1] for p in pts]), smooth)
    ok = np.abs(v - steady_ms) <= tolerance_ms
    after = t >= end_s - 1e-9
    if not after.any():
        return None
    idx = np.nonzero(after)[0]
    bad = idx[~ok[idx]]
    if len(bad) == 0:
        return 0.0
    last_bad = bad[-1]
    if last_bad == len(t) - 1:
        return None
    return max(0.0, float(t[last_bad + 1] - end_s))


def analyze(
    source: np.ndarray,
    rate: int,
    sent_at: dict[int, float],
    received: Received,
    *,
    ptime_s: float = 0.02,
    t0: float,
    windows: Sequence[tuple[float, float]] = (),
    network_dropped: Sequence[int] = (),
    baseline_ms: float | None = None,
) -> CallAnalysis:
    """Everything about one direction of one call.

    ``source`` is the signal as sent (float PCM16 units at ``rate``), cut into frames of
    ``rate * ptime_s`` samples; ``sent_at[k]`` the time source frame k was first sent;
    ``t0`` the call's reference time (its first frame's nominal send time); ``windows``
    the impairment windows as offsets from ``t0``. ``baseline_ms``: the steady state to
    recover to when there is no clean stretch before the first impairment (a burst at
    the start); otherwise the median over 0.5 s .. the first impairment.
    """
    n = round(rate * ptime_s)
    a = CallAnalysis(frames_out=len(received.pcm), network_dropped=len(network_dropped))
    ids = identify(received.pcm, source)
    play = received.play if received.play is not None else serial_playout(received.arrival, ptime_s)
    seen: set[int] = set()
    last_k = -1
    arrival_ms: list[float] = []
    for j, ident in enumerate(ids):
        if ident is None:
            a.silent += 1
            continue
        p, _v = ident
        if p == UNMATCHED:
            a.unmatched += 1
            continue
        k = round(p / n)
        if k in seen or k not in sent_at:
            a.repeated += 1
            continue
        seen.add(k)
        a.matched += 1
        if k < last_k:
            a.out_of_order += 1
        last_k = max(last_k, k)
        lat_ms = (play[j] - sent_at[k] + (k * n - p) / rate) * 1000.0
        a.latency.append((sent_at[k] - t0, lat_ms, k))
        arrival_ms.append((received.arrival[j] - sent_at[k] + (k * n - p) / rate) * 1000.0)
    a.fabricated = a.repeated + a.unmatched
    dropped = set(network_dropped)
    if seen:
        lo, hi = min(seen), max(seen)
        a.lost = sum(1 for k in range(lo, hi + 1) if k not in seen and k not in dropped and k in sent_at)
        a.tail_missing = sum(1 for k in sent_at if k > hi and k not in dropped)
    else:
        a.tail_missing = len([k for k in sent_at if k not in dropped])
    if a.latency:
        lats = np.array([x[1] for x in a.latency])
        ts = np.array([x[0] for x in a.latency])
        a.latency_p50_ms = float(np.percentile(lats, 50))
        a.latency_p95_ms = float(np.percentile(lats, 95))
        a.latency_max_ms = float(lats.max())
        a.final_ms = float(np.median(lats[ts >= ts.max() - 1.0]))
        a.final_arrival_ms = float(np.median(np.array(arrival_ms)[ts >= ts.max() - 1.0]))
        first = min((w[0] for w in windows), default=math.inf)
        pre = lats[(ts >= 0.5) & (ts < first)]
        if len(pre) >= 10:
            a.steady_ms = float(np.median(pre))
        elif baseline_ms is not None:
            a.steady_ms = baseline_ms
        elif not windows:
            a.steady_ms = float(np.median(lats))
        series = [(x[0], x[1]) for x in a.latency]
        arr = np.array(arrival_ms)
        pre_arr = arr[(ts >= 0.5) & (ts < first)]
        if len(pre_arr) >= 10:
            a.steady_arrival_ms = float(np.median(pre_arr))
        elif a.steady_ms is not None and baseline_ms is None and not windows:
            a.steady_arrival_ms = float(np.median(arr))
        elif a.steady_ms is not None:
            # A burst at the start: the same offset from the at-play baseline as the
            # call's end shows between the two measures.
            a.steady_arrival_ms = a.steady_ms - (a.final_ms - a.final_arrival_ms)
        arrival_series = [(x[0], v) for x, v in zip(a.latency, arrival_ms, strict=True)]
        if a.steady_ms is not None:
            ends = sorted(windows)
            for i, (_s, e) in enumerate(ends):
                until = ends[i + 1][0] if i + 1 < len(ends) else math.inf
                a.recovery.append(recovery_s(series, e, a.steady_ms, until_s=until))
                if a.steady_arrival_ms is not None:
                    a.recovery_arrival.append(
                        recovery_s(arrival_series, e, a.steady_arrival_ms, until_s=until)
                    )
    return a


# ------------------------------------------------------------------------ whole-signal


def played_signal(received: Received, play: Sequence[float], t0: float, rate: int) -> np.ndarray:
    """What the caller heard on its own timeline from ``t0``: the frames back to back in
    the order played, with silence only for whole frame times nothing was there to play
    (a sub-frame wobble of arrival times is not a gap: a real player plays whole frames
    on its own clock)."""
    if not received.pcm:
        return np.zeros(0)
    n = len(received.pcm[0])
    ptime = n / rate
    pos = []
    cur = max(0, round((play[0] - t0) * rate))
    for j in range(len(play)):
        if j:
            idle = play[j] - (play[j - 1] + ptime)
            cur += n + n * math.floor(idle / ptime + 0.25)
        pos.append(cur)
    out = np.zeros(pos[-1] + n)
    for f, i in zip(received.pcm, pos, strict=True):
        out[i : i + n] = f
    return out


def _xcorr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Full cross-correlation c[lag] = sum a[i + lag] b[i], lags -(len b - 1) .. len a - 1."""
    size = 1 << math.ceil(math.log2(len(a) + len(b)))
    c = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    return np.concatenate([c[size - (len(b) - 1) :], c[: len(a)]])


def ncc_whole(out: np.ndarray, ref: np.ndarray) -> tuple[float, int]:
    """Peak normalised cross-correlation of ``out`` against ``ref`` over every lag, and
    that lag (samples ``out`` is behind ``ref``). 1.0: the same signal, shifted."""
    if len(out) == 0 or len(ref) == 0:
        return 0.0, 0
    c = _xcorr(out, ref)
    i = int(np.argmax(c))
    denom = float(np.linalg.norm(out) * np.linalg.norm(ref)) or 1e-9
    return float(c[i] / denom), i - (len(ref) - 1)


def ncc_windows(out: np.ndarray, ref: np.ndarray, rate: int, window_s: float = 1.0) -> list[float]:
    """Per ``window_s`` window of ``ref``: the peak normalised correlation of that window
    against ``out`` (every lag; the norm of the part of ``out`` it lines up with)."""
    w = round(rate * window_s)
    res = []
    if len(out) < w:
        return res
    c2 = np.concatenate([[0.0], np.cumsum(out**2)])
    seg_norm = np.sqrt(np.maximum(c2[w:] - c2[:-w], 1e-9))
    for s in range(0, len(ref) - w + 1, w):
        seg = ref[s : s + w]
        sn = float(np.linalg.norm(seg))
        if sn < SILENCE_RMS * math.sqrt(w):
            continue
        c = _xcorr(out, seg)[len(seg) - 1 :][: len(seg_norm)]
        res.append(float(np.max(c / (seg_norm * sn))))
    return res


def _fractional_shift(x: np.ndarray, shift: float) -> np.ndarray:
    """Delay ``x`` by ``shift`` samples (band-limited, FFT phase)."""
    n = len(x)
    f = np.fft.rfftfreq(n)
    return np.fft.irfft(np.fft.rfft(x) * np.exp(-2j * np.pi * f * shift), n)


def snr_db(out: np.ndarray, ref: np.ndarray, *, edge: int = 400) -> float:
    """SNR of ``out`` against ``ref`` after the best delay (integer, then fractional by
    parabolic interpolation of the correlation peak); no gain fitting, so a level
    error counts as noise. ``edge`` samples at each end are left out."""
    c = _xcorr(out, ref)
    i = int(np.argmax(c))
    lag = i - (len(ref) - 1)
    frac = 0.0
    if 0 < i < len(c) - 1:
        y0, y1, y2 = c[i - 1], c[i], c[i + 1]
        d = y0 - 2 * y1 + y2
        if d != 0:
            frac = 0.5 * (y0 - y2) / d
    if lag < 0:
        # out leads ref: compare out[0:] with ref[-lag:]
        r = ref[-lag:]
        o = out
    else:
        r = ref
        o = out[lag:]
    m = min(len(r), len(o))
    r, o = r[:m], o[:m]
    o = _fractional_shift(o, -frac)
    r, o = r[edge : m - edge], o[edge : m - edge]
    noise = float(np.sum((o - r) ** 2))
    sig = float(np.sum(r**2))
    if noise <= 0:
        return math.inf
    return 10 * math.log10(sig / noise)


def snr_longest_run(frames: Sequence[np.ndarray], source: np.ndarray) -> float | None:
    """:func:`snr_db` over the longest stretch of received frames that follow each other
    in the source (each one frame after the last, +-1 sample: a half-sample delay
    flips between two offsets), so an inserted or lost frame elsewhere does not turn
    the whole call into noise. None if no stretch of 1 s or more."""
    if not frames:
        return None
    n = len(frames[0])
    ids = identify(frames, source)
    best: tuple[int, int] = (0, 0)
    start = 0
    for j in range(1, len(ids) + 1):
        cont = (j < len(ids) and ids[j] is not None and ids[j - 1] is not None
                and ids[j][0] != UNMATCHED and ids[j - 1][0] != UNMATCHED
                and abs(ids[j][0] - ids[j - 1][0] - n) <= 1)  # fmt: skip
        if not cont:
            if j - start > best[1] - best[0]:
                best = (start, j)
            start = j
    a, b = best
    if b - a < 50:
        return None
    first = ids[a]
    assert first is not None
    p0 = first[0]
    out = np.concatenate(frames[a:b])
    # The same stretch of the source, one frame more on each side for the delay search.
    lo = max(0, p0 - n)
    ref = source[lo : p0 + (b - a) * n + n]
    run = snr_db(out, ref)
    # Frame by frame at the offsets found (integer): exact for a bit-exact path even
    # where the delay search above is fooled; the better of the two is the answer.
    sig = noise = 0.0
    for j in range(a, b):
        ident = ids[j]
        assert ident is not None
        p = ident[0]
        if p < 0 or p + n > len(source):
            continue
        r = source[p : p + n]
        sig += float(np.sum(r**2))
        noise += float(np.sum((frames[j] - r) ** 2))
    framewise = math.inf if noise <= 0 else 10 * math.log10(max(sig, 1e-9) / noise)
    return max(run, framewise)


def level_db(out: np.ndarray, ref: np.ndarray) -> float:
    """RMS of ``out`` relative to the RMS of ``ref``, dB."""
    ro = float(np.sqrt(np.mean(out**2))) if len(out) else 0.0
    rr = float(np.sqrt(np.mean(ref**2))) or 1e-9
    return 20 * math.log10(max(ro, 1e-9) / rr)


def passband_gains_db(out: np.ndarray, ref: np.ndarray, rate: int, freqs: Sequence[float],
                      step_s: float) -> dict[float, float]:  # fmt: skip
    """Gain at each frequency of a stepped multitone ``ref`` (see
    ``material.multitone_steps``) as found in ``out``: align the whole by
    cross-correlation, then each step on its own within +-100 ms (a gap or an inserted
    frame between steps moves the later ones), and project the middle 60 % of each step
    onto its frequency."""
    _, lag = ncc_whole(out, ref)
    step = round(rate * step_s)
    search = round(0.1 * rate)
    gains = {}
    for i, f in enumerate(freqs):
        a = i * step + step // 5
        b = (i + 1) * step - step // 5
        r = ref[a:b]
        lo, hi = max(0, a + lag - search), min(len(out), b + lag + search)
        if hi - lo < len(r):
            continue
        seg = out[lo:hi]
        c = _xcorr(seg, r)[len(r) - 1 : len(r) - 1 + len(seg) - len(r) + 1]
        off = int(np.argmax(c))
        o = seg[off : off + len(r)]
        t = np.arange(len(r)) / rate
        basis = np.exp(-2j * np.pi * f * t)
        ar = abs(np.dot(r, basis))
        ao = abs(np.dot(o, basis))
        gains[float(f)] = 20 * math.log10(max(ao, 1e-9) / max(ar, 1e-9))
    return gains


def pesq_score(ref: np.ndarray, deg: np.ndarray, rate: int) -> float | None:
    """ITU-T P.862 (``pesq`` package): 'nb' at 8 kHz, 'wb' at 16 kHz. None when PESQ
    cannot score it (no utterance found, e.g. the call returned silence)."""
    try:
        from pesq import pesq
    except ImportError:  # pragma: no cover - the quality extra is missing
        return None
    mode = {8000: "nb", 16000: "wb"}.get(rate)
    if mode is None:
        raise ValueError(f"PESQ scores 8 or 16 kHz, not {rate}")
    m = min(len(ref), len(deg))
    if m < rate // 4:
        return None
    r = np.asarray(ref, dtype=np.float32) / 32768.0
    d = np.asarray(deg[: max(len(deg), len(ref))], dtype=np.float32) / 32768.0
    if len(d) < len(r):
        d = np.concatenate([d, np.zeros(len(r) - len(d), dtype=np.float32)])
    try:
        return float(pesq(rate, r, d[: len(r) + rate * 2], mode))
    except Exception:  # pesq.NoUtterancesError, cypesq errors
        return None
