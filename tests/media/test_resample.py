"""The streaming resampler, held to its requirements at every pair of the usual rates:
one frame out per frame in, any chunking, group delay, passband, aliasing and images,
and round trips on real speech (espeak-ng + sox). Measured figures per pair and the
comparison with other resamplers: docs/audio-quality.md, "Resampler"."""

from __future__ import annotations

import math
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.media import Resampler, frame_samples, read_wav

RATES = (8000, 16000, 22050, 24000, 44100, 48000)
PAIRS = [(a, b) for a in RATES for b in RATES if a != b]
UP = [(a, b) for a, b in PAIRS if b > a]
FULL = 32767.0


def ids(pairs: list[tuple[int, int]]) -> list[str]:
    return [f"{a / 1000:g}k-{b / 1000:g}k" for a, b in pairs]


def passband_hz(in_rate: int, out_rate: int) -> float:
    """The band the resampler promises to keep flat (its docstring)."""
    low = min(in_rate, out_rate)
    return {8000: 3400.0, 16000: 7000.0}.get(low, 0.85 * low / 2)


def pcm_of(x: np.ndarray) -> bytes:
    return np.rint(np.clip(x, -32768, 32767)).astype(np.int16).tobytes()  # type: ignore[no-any-return]


def tone(rate: int, freq: float, seconds: float, level: float = 0.5) -> bytes:
    return pcm_of(level * FULL * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate))


def feed(rs: Resampler, pcm: bytes, chunk_bytes: int) -> np.ndarray:
    outs = [rs.process(pcm[i : i + chunk_bytes]) for i in range(0, len(pcm), chunk_bytes)]
    return np.frombuffer(b"".join(outs), np.int16).astype(np.float64)


def framed(in_rate: int, out_rate: int, pcm: bytes) -> np.ndarray:
    """``pcm`` through a new resampler in 20 ms frames, as the stream engine feeds it."""
    return feed(Resampler(in_rate, out_rate), pcm, 2 * frame_samples(in_rate))


def level_db(y: np.ndarray) -> float:
    """RMS of ``y`` relative to a full-scale sine."""
    return 10 * math.log10(max(float((y**2).mean()), 1e-12) / (FULL**2 / 2))


def tone_gain_db(y: np.ndarray, rate: int, freq: float, level: float = 0.5) -> float:
    t = np.arange(len(y)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], 1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return 20 * math.log10(float(np.hypot(*coef)) / (level * FULL))


def snr_db(ref: np.ndarray, y: np.ndarray) -> float:
    return 10 * math.log10(float((ref**2).sum()) / max(float(((y - ref) ** 2).sum()), 1e-12))


# -- output length ------------------------------------------------------------------


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS, ids=ids(PAIRS))
def test_every_frame_in_gives_one_frame_out(in_rate: int, out_rate: int) -> None:
    # From the very first frame: nothing is held back to make blocks (soxr's good
    # qualities hold 48-118 ms and release it in bursts; see the docs).
    rs = Resampler(in_rate, out_rate)
    pcm = tone(in_rate, 440.0, 2.0)
    fin, fout = 2 * frame_samples(in_rate), 2 * frame_samples(out_rate)
    for i in range(0, len(pcm), fin):
        assert len(rs.process(pcm[i : i + fin])) == fout


EXOTIC = [(44100, 8000), (8000, 44100), (12000, 32000), (44056, 8000), (8000, 44056)]
EXOTIC += [(192000, 8000), (8000, 11025), (96000, 44100)]


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [*PAIRS[::3], *EXOTIC], ids=ids([*PAIRS[::3], *EXOTIC])
)
@pytest.mark.parametrize("chunk_samples", [1, 37, 160, 1000])
def test_any_chunking_tracks_the_ratio_within_one_sample(
    in_rate: int, out_rate: int, chunk_samples: int
) -> None:
    rs = Resampler(in_rate, out_rate)
    chunk = tone(in_rate, 300.0, 1.0)[: 2 * chunk_samples]
    total_in = total_out = 0
    for _ in range(max(2, 3000 // chunk_samples)):
        total_out += len(rs.process(chunk)) // 2
        total_in += chunk_samples
        assert 0 <= total_out - total_in * out_rate / in_rate < 1


@settings(max_examples=40, deadline=None)
@given(
    pair=st.sampled_from([*PAIRS, (8000, 44056)]),
    sizes=st.lists(st.integers(0, 2000), min_size=1, max_size=30),
)
def test_chunking_never_changes_the_output(pair: tuple[int, int], sizes: list[int]) -> None:
    # Any chunk sizes (including empty chunks) give the same samples as 20 ms frames,
    # within one LSB (float rounding of a different summation order): nothing is lost,
    # repeated or restarted at chunk edges.
    in_rate, out_rate = pair
    rng = np.random.default_rng(len(sizes))
    pcm = pcm_of(rng.normal(0, 6000, sum(sizes) + 1))
    rs = Resampler(in_rate, out_rate)
    outs, pos = [], 0
    for n in [*sizes, 1]:
        outs.append(rs.process(pcm[2 * pos : 2 * (pos + n)]))
        pos += n
    chunked = np.frombuffer(b"".join(outs), np.int16).astype(np.float64)
    reference = framed(in_rate, out_rate, pcm)
    assert len(chunked) == len(reference)
    assert np.abs(chunked - reference).max(initial=0) <= 1


def test_a_long_chunk_is_the_same_as_frames() -> None:
    # A whole WAV file in one call (the hold sound, the tools) is cut into pieces inside.
    pcm = pcm_of(np.random.default_rng(1).normal(0, 6000, 44100 * 3))
    whole = np.frombuffer(Resampler(44100, 8000).process(pcm), np.int16)
    assert len(whole) == 8000 * 3
    assert np.abs(whole - framed(44100, 8000, pcm)).max() <= 1


# -- delay --------------------------------------------------------------------------


class MultiTone:
    """24 tones at random frequencies across the passband: exact at any rate and time."""

    def __init__(self, top_hz: float) -> None:
        rng = np.random.default_rng(3)
        self.f = rng.uniform(100, top_hz, 24)
        self.phi = rng.uniform(0, 2 * np.pi, 24)

    def at(self, t: np.ndarray) -> np.ndarray:
        return 0.7 * FULL / 24 * np.sin(2 * np.pi * self.f * t[:, None] + self.phi).sum(1)


def measured_delay_s(in_rate: int, out_rate: int) -> float:
    """Delay that best aligns the output with the exact input: cross-correlation for the
    whole samples, then a golden-section search for the fraction."""
    sig = MultiTone(passband_hz(in_rate, out_rate))
    y = framed(in_rate, out_rate, pcm_of(sig.at(np.arange(in_rate // 2) / in_rate)))
    t = np.arange(len(y)) / out_rate
    n = len(y)
    xc = np.fft.irfft(np.fft.rfft(y, 2 * n) * np.conj(np.fft.rfft(sig.at(t), 2 * n)))
    lag = int(np.argmax(xc[: out_rate // 50]))
    keep = slice(lag + out_rate // 20, lag + out_rate // 20 + 2048)

    def score(d: float) -> float:
        return snr_db(sig.at(t[keep] - d / out_rate), y[keep])

    a, b = lag - 1.0, lag + 1.0
    r = (math.sqrt(5) - 1) / 2
    for _ in range(30):
        c, d = b - r * (b - a), a + r * (b - a)
        a, b = (a, d) if score(c) > score(d) else (c, b)
    return (a + b) / 2 / out_rate


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS, ids=ids(PAIRS))
def test_group_delay_is_under_3_ms_and_as_documented(in_rate: int, out_rate: int) -> None:
    delay = measured_delay_s(in_rate, out_rate)
    assert delay <= 0.003
    assert delay == pytest.approx(Resampler(in_rate, out_rate).delay_s, abs=2e-6)


@pytest.mark.parametrize(
    ("in_rate", "out_rate"),
    SIMPLE := [
        (8000, 16000),
        (16000, 8000),
        (8000, 48000),
        (48000, 8000),
        (24000, 8000),
        (16000, 24000),
    ],
    ids=ids(SIMPLE),
)
def test_delay_is_whole_samples_on_both_sides_for_simple_ratios(
    in_rate: int, out_rate: int
) -> None:
    # So a round trip such as 8 -> 16 -> 8 kHz is a whole-sample delay of the original.
    delay = Resampler(in_rate, out_rate).delay_s
    for rate in (in_rate, out_rate):
        assert delay * rate == pytest.approx(round(delay * rate), abs=1e-9)


# -- passband, aliasing, images -----------------------------------------------------


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS, ids=ids(PAIRS))
def test_passband_is_flat(in_rate: int, out_rate: int) -> None:
    # The requirement is ±0.5 dB up to 3.4 kHz (8 kHz legs), 7 kHz (16 kHz legs) and
    # 85 % of the lower Nyquist frequency otherwise; the design gives about ±0.002 dB.
    skip = out_rate // 10
    for freq in np.linspace(100, passband_hz(in_rate, out_rate), 9):
        y = framed(in_rate, out_rate, tone(in_rate, freq, 0.4))
        gain = tone_gain_db(y[skip:], out_rate, freq)
        assert abs(gain) < 0.05, f"{freq:.0f} Hz: {gain:+.3f} dB"


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS, ids=ids(PAIRS))
def test_passband_tones_come_out_clean(in_rate: int, out_rate: int) -> None:
    # A sine in, the same sine (delayed) out: everything else (aliases, images, ripple,
    # rounding) at least 60 dB down. ratecv managed 10-12 dB at 3 kHz when upsampling.
    rs = Resampler(in_rate, out_rate)
    freq = 0.8 * passband_hz(in_rate, out_rate)
    y = feed(rs, tone(in_rate, freq, 0.4), 2 * frame_samples(in_rate))
    t = np.arange(len(y)) / out_rate - rs.delay_s
    ref = 0.5 * FULL * np.sin(2 * np.pi * freq * t)
    skip = out_rate // 10
    assert snr_db(ref[skip:], y[skip:]) >= 60


def test_6_khz_at_16_khz_does_not_alias_into_an_8_khz_call() -> None:
    # The finding: plain decimation passed it as a full-level 2 kHz tone.
    y = framed(16000, 8000, tone(16000, 6000.0, 0.5, level=1.0))
    assert level_db(y[800:]) <= -60


DOWN_TO_CALL_RATES = [(a, b) for a in RATES for b in (8000, 16000) if a > b]


@pytest.mark.parametrize(("in_rate", "out_rate"), DOWN_TO_CALL_RATES, ids=ids(DOWN_TO_CALL_RATES))
def test_nothing_above_the_new_nyquist_aliases_into_the_band(in_rate: int, out_rate: int) -> None:
    # Full-level tones from the stopband edge (as far above the output's Nyquist
    # frequency as the passband ends below it) up to the input's Nyquist frequency.
    stop = out_rate - passband_hz(in_rate, out_rate)
    for freq in [*np.linspace(stop, 0.98 * in_rate / 2, 10), 6000.0]:
        if freq < stop:
            continue
        y = framed(in_rate, out_rate, tone(in_rate, freq, 0.3, level=1.0))
        assert level_db(y[out_rate // 20 :]) <= -60, f"{freq:.0f} Hz"


@pytest.mark.parametrize(("in_rate", "out_rate"), UP, ids=ids(UP))
def test_upsampling_makes_no_images(in_rate: int, out_rate: int) -> None:
    # Linear interpolation left the image of a 3 kHz tone at 8 -> 16 kHz about 20 dB down.
    for freq in np.linspace(200, passband_hz(in_rate, out_rate), 5):
        y = framed(in_rate, out_rate, tone(in_rate, freq, 0.5, level=1.0))[out_rate // 20 :]
        spectrum = np.abs(np.fft.rfft(y * np.blackman(len(y)))) ** 2
        hz = np.fft.rfftfreq(len(y), 1 / out_rate)
        image = spectrum[hz > in_rate / 2].sum() / spectrum.sum()
        assert 10 * math.log10(image) <= -60, f"{freq:.0f} Hz"


def test_overshoot_is_clipped_not_wrapped() -> None:
    # A full-scale square wave rings above full scale after a sharp filter; the output
    # must saturate, never wrap around to the opposite sign.
    n = 16000
    square = np.where((np.arange(n) // 40) % 2 == 0, 32767.0, -32768.0)
    rs = Resampler(16000, 8000)
    y = feed(rs, pcm_of(square), 640)
    delay = round(rs.delay_s * 8000)
    expected_sign = np.sign(square[::2][: len(y) - delay])
    middle = np.abs(np.arange(len(expected_sign)) % 20 - 10) < 5  # away from the edges
    assert (np.sign(y[delay:])[middle] == expected_sign[middle]).all()
    assert y.max() == 32767


# -- speech -------------------------------------------------------------------------

SPEECH_TEXT = (
    "Thank you for calling. Please say the number on your account, or press star to "
    "speak to an agent. She sells sea shells by the sea shore; six thick thistle sticks."
)
needs_speech_tools = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox are not installed (scripts/install-system-deps installs them)",
)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[int, bytes]:
    """espeak-ng speech (22.05 kHz) taken by sox to a telephone call's band (8 kHz,
    low-passed at 3.4 kHz as the PSTN's G.712 channel is) and to wide-band (16 kHz,
    7 kHz). sox -D: no dither, so the material is the same on every run."""
    work = tmp_path_factory.mktemp("speech")
    raw = work / "espeak.wav"
    run = ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), SPEECH_TEXT]
    subprocess.run(run, check=True)
    out: dict[int, bytes] = {}
    for rate, band in ((8000, 3400), (16000, 7000)):
        path = work / f"{rate}.wav"
        run = ["sox", "-D", str(raw), "-r", str(rate), "-b", "16", str(path), "sinc", f"-{band}"]
        subprocess.run(run, check=True)
        pcm, got = read_wav(Path(path))
        assert got == rate
        out[rate] = pcm
    return out


def round_trip_snr_db(pcm: bytes, low: int, high: int) -> float:
    up, down = Resampler(low, high), Resampler(high, low)
    frame = 2 * frame_samples(low)
    padded = pcm + bytes(-len(pcm) % frame) + bytes(frame * 5)
    y = np.frombuffer(
        b"".join(
            down.process(up.process(padded[i : i + frame])) for i in range(0, len(padded), frame)
        ),
        np.int16,
    ).astype(np.float64)
    delay = (up.delay_s + down.delay_s) * low  # whole samples (tested above)
    assert delay == round(delay)
    x = np.frombuffer(pcm, np.int16).astype(np.float64)
    return snr_db(x, y[round(delay) : round(delay) + len(x)])


@needs_speech_tools
@pytest.mark.parametrize(
    ("low", "high"),
    TRIPS := [(8000, 16000), (8000, 24000), (8000, 48000), (16000, 48000)],
    ids=ids(TRIPS),
)
def test_speech_round_trip(speech: dict[int, bytes], low: int, high: int) -> None:
    # 8 -> 16 -> 8 kHz is the ASR-on-phone-calls path. ratecv gave 9.3 dB; sox's own
    # round trip on this material gives ~73 dB; measured here: ~58-62 dB (docs).
    assert round_trip_snr_db(speech[low], low, high) >= 40


# -- the rest of the API ------------------------------------------------------------


def test_identity_returns_its_argument() -> None:
    rs = Resampler(16000, 16000)
    pcm = tone(16000, 440.0, 0.02)
    assert rs.identity and rs.delay_s == 0
    assert rs.process(pcm) is pcm
    with pytest.raises(ValueError):
        rs.process(b"\x00")


def test_reset_forgets_the_history() -> None:
    pcm = tone(8000, 440.0, 0.02)
    rs = Resampler(8000, 48000)
    first = rs.process(pcm)
    second = rs.process(pcm)
    assert first != second  # the history carried over
    rs.reset()
    assert rs.process(pcm) == first


def test_reset_mid_period_restarts_the_phase() -> None:
    rs = Resampler(44100, 8000)
    rs.process(tone(44100, 440.0, 0.001))  # 44 samples: part of a period
    rs.reset()
    pcm = tone(44100, 440.0, 0.02)
    assert rs.process(pcm) == Resampler(44100, 8000).process(pcm)


def test_empty_and_errors() -> None:
    rs = Resampler(8000, 16000)
    assert rs.process(b"") == b""
    with pytest.raises(ValueError, match="16-bit"):
        rs.process(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="in_rate"):
        Resampler(0, 8000)
    with pytest.raises(ValueError, match="out_rate"):
        Resampler(8000, -1)
    with pytest.raises(ValueError, match="in_rate"):
        Resampler(10_000_000, 8000)


def test_resamplers_of_one_pair_share_nothing_mutable() -> None:
    a, b = Resampler(8000, 16000), Resampler(8000, 16000)
    x = tone(8000, 440.0, 0.02)
    silence = bytes(len(x))
    out_a = a.process(x)
    assert b.process(silence) == bytes(2 * len(silence))  # b's history is its own
    assert Resampler(8000, 16000).process(x) == out_a


def test_chunk_sizes_seen_are_bounded() -> None:
    # Per-chunk-size caches must not grow with an app that sends every size once.
    rs = Resampler(16000, 8000)
    rng = random.Random(5)
    for _ in range(300):
        rs.process(bytes(2 * 2 * rng.randint(1, 2000)))
    assert len(rs._fast) <= 4  # type: ignore[attr-defined]
