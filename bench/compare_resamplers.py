"""Streaming resamplers compared: cost, delay, output per frame, passband, aliasing, speech.

    .venv/bin/python bench/compare_resamplers.py            # candidates table (~2 min)
    .venv/bin/python bench/compare_resamplers.py --pairs    # bridge's Resampler, all 30 pairs
    .venv/bin/python bench/compare_resamplers.py --quick    # shorter timing runs

The source of the tables in docs/audio-quality.md ("Resampler"). Every candidate is fed
20 ms frames of PCM16 as bytes and returns bytes, as bridge's ``Resampler`` does, so the
cost includes the conversions each one needs. Needs the bench extras (``soxr``) plus
``samplerate`` and ``scipy`` for their rows (skipped when absent), and ``espeak-ng`` and
``sox`` (scripts/install-system-deps) for the speech material.

What is measured, per candidate and rate pair:
- µs per 20 ms frame: steady state, best of 5 timeit runs (bench/_harness.py).
- delay: the lag that best aligns the output with the exact input signal (a multi-tone
  in the passband, fractional lag refined), plus the most audio held back (in minus out)
  after any frame past the first: latency for a real-time path is the sum.
- frames: how many 20 ms frames in (of 100, after the first) did not give 20 ms out.
- passband: worst gain error of tones from 100 Hz to the passband edge.
- alias: downsampling, the worst level of full-scale tones between the stopband edge and
  the input's Nyquist frequency; upsampling, the worst image energy above the input's
  Nyquist frequency for passband tones; both in dB relative to full level.
- speech: SNR of a round trip low -> high -> low rate on espeak-ng speech, after
  aligning for the total delay (fractional, found by search).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench._harness import measure
from bridge.media import Resampler, read_wav

Stream = Callable[[bytes], bytes]
Factory = Callable[[int, int], Stream]

RATES = (8000, 16000, 22050, 24000, 44100, 48000)
TABLE_PAIRS = ((8000, 16000), (16000, 8000), (24000, 8000), (44100, 8000), (48000, 16000))
FULL = 32767.0

SPEECH_TEXT = (
    "Thank you for calling. Please say the number on your account, or press star to "
    "speak to an agent. She sells sea shells by the sea shore; six thick thistle sticks."
)


def passband_hz(in_rate: int, out_rate: int) -> float:
    low = min(in_rate, out_rate)
    return {8000: 3400.0, 16000: 7000.0}.get(low, 0.85 * low / 2)


# -- candidates ---------------------------------------------------------------------


def bridge_resampler(in_rate: int, out_rate: int) -> Stream:
    return Resampler(in_rate, out_rate).process


def old_resampler(in_rate: int, out_rate: int) -> Stream:
    """bridge's Resampler before this one: ``audioop.ratecv`` (linear interpolation),
    and plain decimation for integer downsampling ratios. Loaded from git history."""
    global _OLD_RESAMPLER
    if _OLD_RESAMPLER is None:
        source = subprocess.run(
            ["git", "show", f"{OLD_COMMIT}:bridge/media/_resample.py"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout
        namespace: dict[str, Any] = {"__name__": "old_resample"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            exec(compile(source, "old_resample.py", "exec"), namespace)
        _OLD_RESAMPLER = namespace["Resampler"]
    return _OLD_RESAMPLER(in_rate, out_rate).process  # type: ignore[no-any-return]


OLD_COMMIT = "aeeb323"  # the last commit with the ratecv resampler
_OLD_RESAMPLER: Any = None


def soxr_stream(quality: str | int) -> Factory:
    def factory(in_rate: int, out_rate: int) -> Stream:
        import soxr

        if isinstance(quality, int):  # a raw libsoxr recipe, e.g. with a phase flag
            from soxr import soxr_ext

            c = soxr_ext.CSoxr(in_rate, out_rate, 1, soxr_ext.SOXR_INT16_I, quality, False)

            def process_raw(pcm: bytes) -> bytes:
                x = np.frombuffer(pcm, np.int16)[:, None]
                return c.process_int16(x, False).tobytes()  # type: ignore[no-any-return]

            return process_raw
        s = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)

        def process(pcm: bytes) -> bytes:
            return s.resample_chunk(np.frombuffer(pcm, np.int16)).tobytes()  # type: ignore[no-any-return]

        return process

    return factory


def libsamplerate(converter: str) -> Factory:
    def factory(in_rate: int, out_rate: int) -> Stream:
        import samplerate

        r = samplerate.Resampler(converter, 1)
        ratio = out_rate / in_rate

        def process(pcm: bytes) -> bytes:
            x = np.frombuffer(pcm, np.int16).astype(np.float32)
            y = r.process(x, ratio, False)
            np.clip(y, -32768, 32767, out=y)
            return np.rint(y).astype(np.int16).tobytes()  # type: ignore[no-any-return]

        return process

    return factory


def scipy_upfirdn(in_rate: int, out_rate: int) -> Stream:
    """scipy.signal.upfirdn kept streaming by re-running it over the history (overlap)."""
    from scipy import signal

    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    nyq = min(in_rate, out_rate) / 2
    width = 2 * (nyq - passband_hz(in_rate, out_rate))
    fs = in_rate * up
    ntaps, beta = signal.kaiserord(70, width / (fs / 2))
    ntaps = -(-ntaps // up) * up
    h = (signal.firwin(ntaps, nyq, window=("kaiser", beta), fs=fs) * up).astype(np.float32)
    hist_n = ntaps // up + 1
    x_kept = np.zeros(0, np.float32)
    next_j = 0  # index, in upfirdn's output over x_kept + chunk, of the next new output

    def process(pcm: bytes) -> bytes:
        nonlocal x_kept, next_j
        x = np.concatenate((x_kept, np.frombuffer(pcm, np.int16).astype(np.float32)))
        # Output j of upfirdn(x) needs x up to j*down/up; emit those now complete. The
        # kept history starts a multiple of `down` samples later, so the grid stays put.
        last = -(-(len(x) * up) // down)
        out = signal.upfirdn(h, x, up, down)[next_j:last]
        start = max(0, len(x) - hist_n) // down * down
        x_kept = x[start:]
        next_j = last - start // down * up
        np.clip(out, -32768, 32767, out=out)
        return np.rint(out).astype(np.int16).tobytes()  # type: ignore[no-any-return]

    return process


CANDIDATES: list[tuple[str, Factory]] = [
    ("bridge Resampler (numpy polyphase)", bridge_resampler),
    ("bridge Resampler before (ratecv + decimation)", old_resampler),
    ("soxr QQ", soxr_stream("QQ")),
    ("soxr LQ", soxr_stream("LQ")),
    ("soxr MQ", soxr_stream("MQ")),
    ("soxr HQ", soxr_stream("HQ")),
    ("soxr VHQ", soxr_stream("VHQ")),
    ("soxr LQ minimum phase", soxr_stream(0x31)),
    ("soxr HQ minimum phase", soxr_stream(0x34)),
    ("libsamplerate sinc_fastest", libsamplerate("sinc_fastest")),
    ("libsamplerate sinc_medium", libsamplerate("sinc_medium")),
    ("libsamplerate sinc_best", libsamplerate("sinc_best")),
    ("scipy upfirdn + overlap", scipy_upfirdn),
]


def available(factory: Factory) -> bool:
    try:
        factory(8000, 16000)
    except ImportError:
        return False
    return True


# -- signals ------------------------------------------------------------------------


def to_pcm(x: np.ndarray) -> bytes:
    return np.rint(np.clip(x, -32768, 32767)).astype(np.int16).tobytes()  # type: ignore[no-any-return]


def run(stream: Stream, pcm: bytes, frame_bytes: int) -> tuple[np.ndarray, list[int]]:
    outs = [stream(pcm[i : i + frame_bytes]) for i in range(0, len(pcm), frame_bytes)]
    return np.frombuffer(b"".join(outs), np.int16).astype(np.float64), [len(o) // 2 for o in outs]


class MultiTone:
    """A sum of tones with fixed random frequencies and phases: exact at any rate/time."""

    def __init__(self, top_hz: float, n: int = 24, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.f = rng.uniform(100, top_hz, n)
        self.phi = rng.uniform(0, 2 * np.pi, n)
        self.a = 0.7 * FULL / n

    def at(self, t: np.ndarray) -> np.ndarray:
        return self.a * np.sin(2 * np.pi * self.f[None, :] * t[:, None] + self.phi).sum(1)


def snr_db(ref: np.ndarray, y: np.ndarray) -> float:
    """SNR in dB; inf when ``y`` is ``ref`` exactly."""
    err = float(((y - ref) ** 2).sum())
    return 10 * math.log10(float((ref**2).sum()) / err) if err else math.inf


def golden(f: Callable[[float], float], lo: float, hi: float, iters: int = 40) -> float:
    """The argument in [lo, hi] that maximises unimodal ``f``."""
    r = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc > fd:
            b, d, fd = d, c, fc
            c = b - r * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + r * (b - a)
            fd = f(d)
    return (a + b) / 2


def delay_and_flow(factory: Factory, in_rate: int, out_rate: int) -> dict[str, float]:
    """Signal delay (ms), most audio held back (ms), frames not giving 20 ms out."""
    sig = MultiTone(passband_hz(in_rate, out_rate))
    seconds = 2.0
    pcm = to_pcm(sig.at(np.arange(int(seconds * in_rate)) / in_rate))
    y, counts = run(factory(in_rate, out_rate), pcm, 2 * (in_rate // 50))
    fout = out_rate // 50
    emitted = np.cumsum(counts)
    expected = fout * np.arange(1, len(counts) + 1)
    held_ms = float((expected - emitted)[1:].max()) * 1000 / out_rate
    bad_frames = sum(1 for c in counts[1:101] if c != fout)
    # Integer lag by cross-correlation with the reference, then the fractional lag.
    t_out = np.arange(len(y)) / out_rate
    ref = sig.at(t_out)
    n = len(y)
    spec = np.fft.irfft(np.fft.rfft(y, 2 * n) * np.conj(np.fft.rfft(ref, 2 * n)))
    max_lag = int(0.25 * out_rate)
    lag = int(np.argmax(spec[:max_lag]))
    skip = lag + int(0.3 * out_rate)
    t_tail, y_tail = t_out[skip:], y[skip:]

    def score(d: float) -> float:
        return snr_db(sig.at(t_tail - d / out_rate), y_tail)

    best = golden(score, lag - 1.0, lag + 1.0)
    return {
        "delay_ms": best * 1000 / out_rate,
        "held_ms": held_ms,
        "bad_frames": bad_frames,
        "tone_snr": score(best),
    }


def tone_gain_db(y: np.ndarray, rate: int, f: float) -> float:
    t = np.arange(len(y)) / rate
    basis = np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], 1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return 20 * math.log10(max(float(np.hypot(*coef)), 1e-9) / (0.5 * FULL))


def passband_error_db(factory: Factory, in_rate: int, out_rate: int) -> float:
    top = passband_hz(in_rate, out_rate)
    worst = 0.0
    for f in [*np.linspace(100, top, 12)]:
        pcm = to_pcm(0.5 * FULL * np.sin(2 * np.pi * f * np.arange(in_rate // 2) / in_rate))
        y, _ = run(factory(in_rate, out_rate), pcm, 2 * (in_rate // 50))
        g = tone_gain_db(y[int(0.15 * out_rate) :], out_rate, f)
        worst = max(worst, abs(g))
    return worst


def alias_db(factory: Factory, in_rate: int, out_rate: int) -> tuple[float, float | None]:
    """(worst level, level of a 6 kHz tone to 8 kHz when that applies), dB re full."""
    nyq_in, nyq_out = in_rate / 2, out_rate / 2
    worst = -200.0
    six = None
    if out_rate < in_rate:
        stop = 2 * nyq_out - passband_hz(in_rate, out_rate)
        if stop >= 0.98 * nyq_in:
            # No stopband (24 -> 22.05k, 48 -> 44.1k): whatever the input holds above
            # the new Nyquist frequency aliases to above the passband edge.
            return math.nan, None
        freqs = [*np.linspace(stop, 0.98 * nyq_in, 16)]
        if out_rate == 8000 and in_rate >= 16000:
            freqs.append(6000.0)
        for f in freqs:
            pcm = to_pcm(FULL * np.sin(2 * np.pi * f * np.arange(in_rate // 2) / in_rate))
            y, _ = run(factory(in_rate, out_rate), pcm, 2 * (in_rate // 50))
            tail = y[int(0.15 * out_rate) :]
            level = 10 * math.log10(max(float((tail**2).mean()), 1e-12) / (FULL**2 / 2))
            worst = max(worst, level)
            if f == 6000.0:
                six = level
    else:
        for f in np.linspace(100, passband_hz(in_rate, out_rate), 8):
            pcm = to_pcm(FULL * np.sin(2 * np.pi * f * np.arange(in_rate // 2) / in_rate))
            y, _ = run(factory(in_rate, out_rate), pcm, 2 * (in_rate // 50))
            tail = y[int(0.15 * out_rate) :]
            spec = np.abs(np.fft.rfft(tail * np.hanning(len(tail)))) ** 2
            freqs_hz = np.fft.rfftfreq(len(tail), 1 / out_rate)
            image = spec[freqs_hz > nyq_in + 50].sum() / spec.sum()
            worst = max(worst, 10 * math.log10(max(float(image), 1e-20)))
    return worst, six


# -- speech -------------------------------------------------------------------------


def speech(rate: int, band_hz: float | None, workdir: str) -> bytes:
    """espeak-ng speech at ``rate`` via sox; low-passed at ``band_hz`` when given."""
    raw = os.path.join(workdir, "espeak.wav")
    if not os.path.exists(raw):
        subprocess.run(
            ["espeak-ng", "-v", "en-us", "-s", "150", "-w", raw, SPEECH_TEXT], check=True
        )
    out = os.path.join(workdir, f"speech-{rate}-{band_hz}.wav")
    effects = ["sinc", f"-{band_hz:g}"] if band_hz else []
    # -D: no dither, so the material is deterministic.
    subprocess.run(["sox", "-D", raw, "-r", str(rate), "-b", "16", out, *effects], check=True)
    pcm, got = read_wav(out)
    assert got == rate
    return pcm


def fractional_shift(x: np.ndarray, d: float) -> np.ndarray:
    """``x`` delayed by ``d`` samples (band-limited, via the FFT; x must be padded)."""
    n = len(x)
    f = np.fft.rfftfreq(n)
    return np.fft.irfft(np.fft.rfft(x) * np.exp(-2j * np.pi * f * d), n)


def aligned_snr(x: np.ndarray, y: np.ndarray, rate: int) -> tuple[float, float]:
    """(SNR dB, delay ms) of ``y`` against ``x`` delayed by the best fractional lag."""
    n = len(x) + len(y)
    spec = np.fft.irfft(np.fft.rfft(y, 2 * n) * np.conj(np.fft.rfft(x, 2 * n)))
    lag = int(np.argmax(spec[: int(0.3 * rate)]))
    pad = np.concatenate((x, np.zeros(len(y) + rate)))
    m = len(y)

    def score(d: float) -> float:
        return snr_db(fractional_shift(pad, d)[:m], y)

    best = golden(score, lag - 1.0, lag + 1.0, iters=30)
    return score(best), best * 1000 / rate


def round_trip_snr(factory: Factory, pcm: bytes, low: int, high: int) -> float:
    up, down = factory(low, high), factory(high, low)
    fin = 2 * (low // 50)
    # One second of silence after the speech flushes what the filters hold.
    padded = pcm + bytes((-len(pcm)) % fin) + bytes(2 * low)
    outs = [down(up(padded[i : i + fin])) for i in range(0, len(padded), fin)]
    y = np.frombuffer(b"".join(outs), np.int16).astype(np.float64)
    x = np.frombuffer(pcm, np.int16).astype(np.float64)
    return aligned_snr(x, y, low)[0]


def sox_round_trip_snr(pcm: bytes, low: int, high: int, workdir: str) -> float:
    src, mid, back = (os.path.join(workdir, f"rt-{i}.raw") for i in range(3))
    Path(src).write_bytes(pcm)
    fmt = ["-t", "raw", "-e", "signed", "-b", "16", "-c", "1"]
    subprocess.run(["sox", "-D", *fmt, "-r", str(low), src, *fmt, "-r", str(high), mid], check=True)
    subprocess.run(
        ["sox", "-D", *fmt, "-r", str(high), mid, *fmt, "-r", str(low), back], check=True
    )
    y = np.frombuffer(Path(back).read_bytes(), np.int16).astype(np.float64)
    x = np.frombuffer(pcm, np.int16).astype(np.float64)
    return aligned_snr(x, y, low)[0]


# -- tables -------------------------------------------------------------------------


def frame_cost_us(factory: Factory, in_rate: int, out_rate: int, quick: bool) -> float:
    return frame_cost_cpu_us(factory, in_rate, out_rate, quick)[0]


def frame_cost_cpu_us(
    factory: Factory, in_rate: int, out_rate: int, quick: bool
) -> tuple[float, float]:
    """(best-of-5 wall µs per frame, process CPU µs per frame over 5,000 frames): CPU
    above wall means a library used threads (OpenBLAS does for larger products)."""
    stream = factory(in_rate, out_rate)
    n = in_rate // 50
    pcm = to_pcm(0.3 * FULL * np.sin(2 * np.pi * 440 * np.arange(n) / in_rate))
    for _ in range(20):
        stream(pcm)
    wall = measure(lambda: stream(pcm), min_time_s=0.01 if quick else 0.05) / 1000
    frames = 1000 if quick else 5000
    t0 = time.process_time()  # every thread of the process, ns resolution
    for _ in range(frames):
        stream(pcm)
    cpu = (time.process_time() - t0) / frames * 1e6
    return wall, cpu


def candidates_table(quick: bool, workdir: str) -> None:
    phone = speech(8000, 3400, workdir)
    phone_full = speech(8000, None, workdir)
    wide = speech(16000, 7000, workdir)
    print("\nCandidates, 20 ms frames (cost in µs per frame; delay/held in ms; levels in dB)")
    head = " | ".join(f"{a // 1000}k->{b // 1000}k" for a, b in TABLE_PAIRS)
    print(
        f"candidate | µs/frame {head} | delay 8->16, 16->8 | held max | frames != 20 ms |"
        " passband err 8->16, 16->8 | 6 kHz 16->8 | worst alias 16->8, 48->16 |"
        " speech RT 8-16-8 (3.4k band / full band) | 8-24-8 | 16-48-16"
    )
    for name, factory in CANDIDATES:
        if not available(factory):
            print(f"{name} | not installed")
            continue
        costs = [frame_cost_us(factory, a, b, quick) for a, b in TABLE_PAIRS]
        up, down = delay_and_flow(factory, 8000, 16000), delay_and_flow(factory, 16000, 8000)
        held = max(up["held_ms"], down["held_ms"])
        bad = max(up["bad_frames"], down["bad_frames"])
        pb = (passband_error_db(factory, 8000, 16000), passband_error_db(factory, 16000, 8000))
        _, six = alias_db(factory, 16000, 8000)
        worst_a = (alias_db(factory, 16000, 8000)[0], alias_db(factory, 48000, 16000)[0])
        rt = round_trip_snr(factory, phone, 8000, 16000)
        rt_full = round_trip_snr(factory, phone_full, 8000, 16000)
        rt24 = round_trip_snr(factory, phone, 8000, 24000)
        rt48 = round_trip_snr(factory, wide, 16000, 48000)
        cost = " / ".join(f"{c:.1f}" for c in costs)
        print(
            f"{name} | {cost} | {up['delay_ms']:.2f}, {down['delay_ms']:.2f} | {held:.1f} |"
            f" {bad} | {pb[0]:.2f}, {pb[1]:.2f} | {six:.0f} | {worst_a[0]:.0f}, {worst_a[1]:.0f} |"
            f" {rt:.1f} / {rt_full:.1f} | {rt24:.1f} | {rt48:.1f}",
            flush=True,
        )
    if shutil.which("sox"):
        print(
            f"sox (files, rate -h, for reference) | round trip 8-16-8 "
            f"{sox_round_trip_snr(phone, 8000, 16000, workdir):.1f} / "
            f"{sox_round_trip_snr(phone_full, 8000, 16000, workdir):.1f} | 8-24-8 "
            f"{sox_round_trip_snr(phone, 8000, 24000, workdir):.1f} | 16-48-16 "
            f"{sox_round_trip_snr(wide, 16000, 48000, workdir):.1f}"
        )


def pairs_table(quick: bool) -> None:
    print("\nbridge Resampler, every pair (20 ms frames)")
    print(
        "pair | µs/frame | CPU µs/frame | delay ms (measured / nominal) | frames != 20 ms | held ms |"
        " passband to | passband err dB | worst alias/image dB | 6 kHz -> 8k dB"
    )
    for a in RATES:
        for b in RATES:
            if a == b:
                continue
            cost, cpu = frame_cost_cpu_us(bridge_resampler, a, b, quick)
            flow = delay_and_flow(bridge_resampler, a, b)
            pb = passband_error_db(bridge_resampler, a, b)
            worst, six = alias_db(bridge_resampler, a, b)
            print(
                f"{a / 1000:g}k -> {b / 1000:g}k | {cost:.1f} | {cpu:.1f} | {flow['delay_ms']:.3f} /"
                f" {Resampler(a, b).delay_s * 1000:.3f} | {flow['bad_frames']} |"
                f" {flow['held_ms']:.2f} | {passband_hz(a, b):.0f} | {pb:.3f} | {worst:.0f} |"
                f" {'' if six is None else f'{six:.0f}'}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing runs")
    parser.add_argument("--pairs", action="store_true", help="bridge's Resampler, all pairs")
    args = parser.parse_args()
    if args.pairs:
        pairs_table(args.quick)
        return
    with tempfile.TemporaryDirectory() as workdir:
        candidates_table(args.quick, workdir)


if __name__ == "__main__":
    main()
