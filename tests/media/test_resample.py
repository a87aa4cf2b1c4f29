"""Streaming resampler: frame sizes, totals, identity, and measured quality on sine tones."""

from __future__ import annotations

import array
import math
import random
import warnings

import pytest

from bridge.media import Resampler, frame_samples

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

AMPLITUDE = 10000.0


def sine(rate: int, freq: float, n: int, start: int = 0) -> bytes:
    w = 2 * math.pi * freq / rate
    return array.array(
        "h", [round(AMPLITUDE * math.sin(w * i)) for i in range(start, start + n)]
    ).tobytes()


def feed(rs: Resampler, pcm: bytes, chunk_bytes: int) -> list[bytes]:
    return [rs.process(pcm[i : i + chunk_bytes]) for i in range(0, len(pcm), chunk_bytes)]


def snr_db(out: list[int], rate: int, freq: float, skip: int) -> float:
    """SNR of ``out[skip:]`` against the analytic sine at the same instants."""
    w = 2 * math.pi * freq / rate
    signal = noise = 0.0
    for j in range(skip, len(out)):
        ref = AMPLITUDE * math.sin(w * j)
        signal += ref * ref
        noise += (out[j] - ref) ** 2
    return 10 * math.log10(signal / max(noise, 1e-9))


def linear_interp_snr_bound_db(freq: float, in_rate: int) -> float:
    """A lower bound on the SNR of linearly interpolating a sampled sine.

    ratecv interpolates linearly between input samples h = 1/in_rate apart. For
    x(t) = A sin(2πft) the interpolation error is at most h²/8 · max|x''| =
    A (πf/in_rate)² / 2 (the classic bound for linear interpolation). Add 2 LSB for the
    rounding of the input and of the output. The error's RMS is at most its peak, the
    signal's RMS is A/√2, so SNR >= 20 log10((A/√2) / peak error). This is a worst-case
    bound; downsampling by an integer ratio lands on input samples and does far better.
    Capped at 70 dB: 16-bit rounding alone is ~88 dB at this amplitude.
    """
    peak_error = AMPLITUDE * (math.pi * freq / in_rate) ** 2 / 2 + 2.0
    return min(20 * math.log10(AMPLITUDE / math.sqrt(2) / peak_error), 70.0)


CONVERSIONS = [(8000, 16000), (16000, 8000), (8000, 48000), (48000, 8000), (24000, 16000)]
CONVERSIONS += [(16000, 24000), (16000, 48000), (48000, 16000), (8000, 24000), (24000, 8000)]


@pytest.mark.parametrize("freq", [440.0, 1000.0])
@pytest.mark.parametrize(("in_rate", "out_rate"), CONVERSIONS)
def test_sine_snr(in_rate: int, out_rate: int, freq: float) -> None:
    frames = 50  # one second
    fin = frame_samples(in_rate)
    pcm = sine(in_rate, freq, fin * frames)
    out = array.array("h", b"".join(feed(Resampler(in_rate, out_rate), pcm, 2 * fin))).tolist()
    assert len(out) == frame_samples(out_rate) * frames
    # ratecv's output sample j is the input signal at time j/out_rate, except that the
    # zero-padding of the first chunk delays everything by ceil(out/in) - 1 samples (the
    # interpolator's look-ahead of one input sample); the reference gets the same delay.
    delay = -(-out_rate // in_rate) - 1
    shifted = out[delay:]
    skip = 3 * frame_samples(out_rate)  # skip the start-up from the zero initial state
    measured = snr_db(shifted, out_rate, freq, skip)
    bound = linear_interp_snr_bound_db(freq, in_rate)
    assert measured >= bound, f"{measured:.1f} dB < {bound:.1f} dB"


def test_2x_upsampling_matches_linear_interpolation_theory() -> None:
    # 8k -> 16k with linear interpolation puts every other output sample halfway
    # between two inputs: the response is (1 + cos 2πf/16k)/2 at f and the image at
    # 8k - f is (1 - cos 2πf/16k)/2. For a pure tone the "noise" is the image plus the
    # amplitude loss; check both the amplitude and the total error against that model.
    freq = 1000.0
    fin = frame_samples(8000)
    pcm = sine(8000, freq, fin * 50)
    out = array.array("h", b"".join(feed(Resampler(8000, 16000), pcm, 2 * fin))).tolist()[1:]
    c = math.cos(2 * math.pi * freq / 16000)
    gain, image = (1 + c) / 2, (1 - c) / 2
    # Error power relative to the signal: (1 - gain)² + image² (both sines, orthogonal).
    predicted = -10 * math.log10((1 - gain) ** 2 + image**2)
    measured = snr_db(out, 16000, freq, skip=3 * 320)
    assert measured == pytest.approx(predicted, abs=0.5)


@pytest.mark.parametrize(("in_rate", "out_rate"), CONVERSIONS)
def test_every_frame_in_gives_one_frame_out(in_rate: int, out_rate: int) -> None:
    rs = Resampler(in_rate, out_rate)
    fin, fout = frame_samples(in_rate), frame_samples(out_rate)
    for i in range(100):
        out = rs.process(sine(in_rate, 440.0, fin, start=i * fin))
        assert len(out) == 2 * fout


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [*CONVERSIONS, (44100, 8000), (8000, 44100), (12000, 32000)]
)
@pytest.mark.parametrize("chunk_samples", [1, 37, 160, 1000])
def test_cumulative_total_exact_within_one_sample(
    in_rate: int, out_rate: int, chunk_samples: int
) -> None:
    rs = Resampler(in_rate, out_rate)
    chunk = sine(in_rate, 300.0, chunk_samples)
    total_in = total_out = 0
    for _ in range(max(1, 4000 // chunk_samples)):
        total_out += len(rs.process(chunk)) // 2
        total_in += chunk_samples
        assert abs(total_out - total_in * out_rate // in_rate) <= 1


def test_identity_returns_input_object() -> None:
    rs = Resampler(16000, 16000)
    pcm = sine(16000, 440.0, 320)
    assert rs.identity
    assert rs.process(pcm) is pcm
    with pytest.raises(ValueError):
        rs.process(b"\x00")


def test_state_is_continuous_across_frames() -> None:
    # Feeding one big chunk or 20 ms frames gives the same samples: nothing is lost or
    # restarted at frame edges.
    pcm = sine(8000, 440.0, 160 * 20)
    whole = Resampler(8000, 16000).process(pcm)
    framed = b"".join(feed(Resampler(8000, 16000), pcm, 320))
    assert framed == whole


def test_reset_restarts_from_zero_state() -> None:
    pcm = sine(8000, 440.0, 160)
    rs = Resampler(8000, 48000)
    first = rs.process(pcm)
    second = rs.process(pcm)
    assert first != second  # state carried over
    rs.reset()
    assert rs.process(pcm) == first


def test_empty_and_errors() -> None:
    rs = Resampler(8000, 16000)
    assert rs.process(b"") == b""
    with pytest.raises(ValueError, match="16-bit"):
        rs.process(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="in_rate"):
        Resampler(0, 8000)
    with pytest.raises(ValueError, match="out_rate"):
        Resampler(8000, -1)


@pytest.mark.parametrize(("in_rate", "out_rate"), [(16000, 8000), (48000, 8000), (48000, 16000)])
def test_integer_downsampling_is_plain_decimation(in_rate: int, out_rate: int) -> None:
    # Documented behaviour (no anti-alias filter): output j is input j*ratio, ±1 LSB of
    # integer rounding. In-band tones are therefore exact; out-of-band content aliases.
    ratio = in_rate // out_rate
    pcm = sine(in_rate, 1000.0, frame_samples(in_rate) * 10)
    out = array.array("h", b"".join(feed(Resampler(in_rate, out_rate), pcm, 640))).tolist()
    source = array.array("h", pcm).tolist()[::ratio]
    assert len(out) == len(source)
    assert max(abs(a - b) for a, b in zip(out, source, strict=True)) <= 1


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(16000, 8000), (48000, 8000), (48000, 16000), (24000, 8000)]
)
def test_decimation_path_is_bit_identical_to_ratecv(in_rate: int, out_rate: int) -> None:
    # Integer downsampling skips ratecv (5-20 times cheaper); it must give the same bytes,
    # also for chunks that are not a multiple of the ratio (the phase is carried over).
    rng = random.Random(in_rate + out_rate)
    data = array.array("h", [rng.randint(-32768, 32767) for _ in range(20_000)]).tobytes()
    rs = Resampler(in_rate, out_rate)
    state = None
    pos = 0
    while pos < len(data):
        n = 2 * rng.randint(1, 700)
        chunk = data[pos : pos + n]
        expected, state = audioop.ratecv(chunk, 2, 1, in_rate, out_rate, state)
        assert rs.process(chunk) == expected
        pos += n
    rs.reset()  # back to phase 0: the first sample of the next chunk is kept
    ratio = in_rate // out_rate
    assert rs.process(data[2 : 2 + 2 * ratio]) == data[2:4]
