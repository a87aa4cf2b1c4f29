"""Per-frame cost of the media layer: codecs, resampling, jitter/playout buffers, pacing.

One case = the work of one 20 ms frame, including bridge's resampler at every pair of
8, 16, 22.05, 24, 44.1 and 48 kHz. Also measures how much audio each ``soxr`` quality
holds back when fed 20 ms at a time (one reason bridge has its own resampler; the full
comparison of resamplers is bench/compare_resamplers.py).

    .venv/bin/python bench/bench_media.py            # ~10 s
    .venv/bin/python bench/bench_media.py --quick    # ~2 s
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import array

import numpy as np
import soxr

from bench._harness import Case, print_table, run_cases
from bridge.media import (
    L16_BE,
    PCMA,
    PCMU,
    JitterBuffer,
    PacingClock,
    PlayoutBuffer,
    Resampler,
    audioop,
)


def _speech_like(rate: int, ms: int = 20) -> bytes:
    """A 440 Hz + 1.3 kHz mix: non-trivial samples for the codecs and resamplers."""
    n = rate * ms // 1000
    return array.array(
        "h",
        [
            round(6000 * math.sin(2 * math.pi * 440 * i / rate))
            + round(3000 * math.sin(2 * math.pi * 1300 * i / rate))
            for i in range(n)
        ],
    ).tobytes()


PCM_8K = _speech_like(8000)  # 320 B
PCM_16K = _speech_like(16000)  # 640 B
ULAW = PCMU.encode(PCM_8K)
ALAW = PCMA.encode(PCM_8K)


def _jitter_case() -> Callable[[], object]:
    """Steady state: one packet in, one frame out, sequence numbers wrapping."""
    jb = JitterBuffer(8000)
    seq = 65000
    now = 0.0
    for _ in range(3):
        jb.push(seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, 1, PCM_8K, now)
        seq += 1
        now += 0.02

    def step() -> object:
        nonlocal seq, now
        # The API takes the arrival time (and pop the time now) since the jitter buffer
        # got its own clock; packets arrive on time, 20 ms apart.
        jb.push(seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, 1, PCM_8K, now)
        seq += 1
        now += 0.02
        return jb.pop(now)

    return step


def _playout_case() -> Callable[[], object]:
    pb = PlayoutBuffer(320)

    def step() -> object:
        pb.push(PCM_8K)
        return pb.pop()

    return step


def _playout_chunked_case() -> Callable[[], object]:
    """App sends 100 ms chunks (1600 B at 8 kHz); cost per 20 ms frame, amortised."""
    pb = PlayoutBuffer(320)
    chunk = PCM_8K * 5
    tick = 0

    def step() -> object:
        nonlocal tick
        if tick % 5 == 0:
            pb.push(chunk)
        tick += 1
        return pb.pop()

    return step


def _pacing_case() -> Callable[[], object]:
    clock = PacingClock(1000.0)
    k = 0

    def step() -> object:
        nonlocal k
        k += 1
        return clock.due(1000.0 + k * 0.02 + 0.0007)

    return step


RESAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
RESAMPLE_PAIRS = [(a, b) for a in RESAMPLE_RATES for b in RESAMPLE_RATES if a != b]


def resample_label(in_rate: int, out_rate: int) -> str:
    return f"resample {in_rate / 1000:g}k->{out_rate / 1000:g}k (Resampler)"


def _resample_case(in_rate: int, out_rate: int) -> Callable[[], object]:
    """Steady state: the filter history is full, the per-size views are built."""
    rs = Resampler(in_rate, out_rate)
    pcm = _speech_like(in_rate)
    for _ in range(3):
        rs.process(pcm)
    return lambda: rs.process(pcm)


def _ratecv_case(in_rate: int, out_rate: int, pcm: bytes) -> Callable[[], object]:
    """What bridge's resampler replaced (linear interpolation), for comparison."""
    state = None

    def step() -> object:
        nonlocal state
        out, state = audioop.ratecv(pcm, 2, 1, in_rate, out_rate, state)
        return out

    return step


def _soxr_case(in_rate: int, out_rate: int, pcm: bytes) -> Callable[[], object]:
    stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="QQ")

    def step() -> object:
        return stream.resample_chunk(np.frombuffer(pcm, dtype=np.int16)).tobytes()

    return step


def _cases() -> list[Case]:
    resample: list[Case] = [(resample_label(a, b), _resample_case(a, b)) for a, b in RESAMPLE_PAIRS]
    return [
        ("µ-law encode (PCMU.encode)", lambda: PCMU.encode(PCM_8K)),
        ("µ-law decode (PCMU.decode)", lambda: PCMU.decode(ULAW)),
        ("A-law encode (PCMA.encode)", lambda: PCMA.encode(PCM_8K)),
        ("A-law decode (PCMA.decode)", lambda: PCMA.decode(ALAW)),
        ("L16 BE swap 16 kHz (L16_BE.encode)", lambda: L16_BE.encode(PCM_16K)),
        *resample,
        ("resample 8k->16k (old: audioop.ratecv)", _ratecv_case(8000, 16000, PCM_8K)),
        ("resample 16k->8k (old: audioop.ratecv)", _ratecv_case(16000, 8000, PCM_16K)),
        ("resample 8k->16k (soxr QQ, bytes in/out)", _soxr_case(8000, 16000, PCM_8K)),
        ("resample 16k->8k (soxr QQ, bytes in/out)", _soxr_case(16000, 8000, PCM_16K)),
        ("jitter buffer push + pop", _jitter_case()),
        ("playout buffer push 20 ms + pop", _playout_case()),
        ("playout buffer push 100 ms/5 + pop", _playout_chunked_case()),
        ("pacing clock due()", _pacing_case()),
    ]


CASES = _cases()


def soxr_held_back_ms(
    quality: str, in_rate: int, out_rate: int, frames: int = 250
) -> tuple[float, float, float]:
    """Feed 20 ms frames; return (min, max) ms of audio held back in steady state, and
    the share of frames that produced no output at all.

    Held back = audio that went in minus audio that came out so far, measured after each
    frame from frame 50 on (past the start-up). A real-time path has to add the max as
    latency; frames with no output are the bursts.
    """
    stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)
    frame = np.frombuffer(_speech_like(in_rate), dtype=np.int16)
    out_per_frame = out_rate // 50
    emitted = 0
    held: list[int] = []
    empty = 0
    for i in range(1, frames + 1):
        n = len(stream.resample_chunk(frame))
        emitted += n
        if i > 50:
            held.append(i * out_per_frame - emitted)
            empty += n == 0
    ms = 1000 / out_rate
    return min(held) * ms, max(held) * ms, empty / len(held)


def print_soxr_latency() -> None:
    print("\nsoxr.ResampleStream fed 20 ms frames: audio held back inside it (steady state)")
    print(
        f"{'quality':<8}  {'8k->16k min-max ms':>19}  {'16k->8k min-max ms':>19}  {'empty frames':>12}"
    )
    for quality in ("QQ", "LQ", "MQ", "HQ", "VHQ"):
        lo_up, hi_up, empty = soxr_held_back_ms(quality, 8000, 16000)
        lo_down, hi_down, _ = soxr_held_back_ms(quality, 16000, 8000)
        print(
            f"{quality:<8}  {lo_up:>8.2f} - {hi_up:>7.2f}  {lo_down:>8.2f} - {hi_down:>7.2f}"
            f"  {empty:>11.0%}"
        )
    print(
        "Only QQ releases its output every frame (< 1 ms held back). LQ/MQ/HQ/VHQ emit\n"
        "nothing for 2-5 frames, then a burst: up to 60-120 ms held back, which a 20 ms\n"
        "real-time path would have to add as latency. bridge's own Resampler holds back\n"
        "nothing (bench/compare_resamplers.py; docs/audio-quality.md)."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short run (~2 s)")
    args = parser.parse_args()
    print_table("media layer, one 20 ms frame", run_cases(CASES, quick=args.quick))
    print_soxr_latency()
