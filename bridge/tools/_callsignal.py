"""The audio ``bridge call`` sends, and the watermark that numbers every frame of it.

Signal
------
:func:`speech_like` makes a built-in test signal that looks like speech to anything
between the caller and the app (VAD, jitter buffers, codecs): three formant-like sines
per syllable, buzzed at a falling voice pitch, under a 4 Hz syllable envelope, with
pauses between words and a longer one at the end of each 3.2 s phrase. :func:`tone`
and :func:`wav_signal` (a WAV file resampled to the wire rate) are the alternatives.
:func:`frames_of` cuts any of them into frames.

Watermark
---------
To measure the round trip frame by frame, each frame sent carries its own number. The
number is written into a few samples near the start of the frame with values that every
codec on the way reproduces exactly:

* The alphabet is the 16 PCM16 values ``±8, ±24, ... ±120`` (:data:`ALPHABET`): the
  only values that are fixed points of *both* G.711 laws (``lin -> µ-law -> lin`` and
  ``lin -> A-law -> lin`` give them back unchanged; found by exhaustive search), so they
  survive PCMU, PCMA, a PCMU<->PCMA transcode inside bridge, and of course L16 in either
  byte order. They are also quiet (below -48 dBFS): the watermark is barely audible.
* A stamp is 8 symbols: two magic symbols (``+120``, ``-120``), the frame number in 5
  base-16 digits (so 2^20 frames, 5.8 hours at 20 ms), and a check digit (odd weights,
  so any single wrong digit is caught). Each symbol is held for ``R = 4 * ceil(rate /
  8000)`` samples (4 at 8 kHz: the stamp is 32 of a frame's 160 samples) and the stamp
  starts ``R`` samples into the frame; the margin survives a shift of a few samples.
  **Not through a resampler**: bridge's band-limited resampler (a 70 dB linear-phase
  FIR) smears the steps between held values by tens to hundreds of LSB, so a stamp that
  crossed a rate change reads as "no stamp" (never as a wrong number: tested). On such
  a path compare the audio itself (the tests of resampled routes do), or use the
  media-quality rig (``make quality``), which identifies frames by correlation.
  The reader asks for the two middle samples of every symbol to agree, which makes a
  chance match in quiet noise (whose G.711 values can all be in the alphabet) vanishingly
  rare.
* :meth:`Watermark.read` tries the expected position first (one ``struct`` call), then
  searches the frame for the magic symbol, so a stamp that moved by a few samples is
  still found. A frame without a valid stamp (silence from bridge before the app
  answered, hold music, concealment) reads as ``-1``.

Pure code: no I/O, no clocks.
"""

from __future__ import annotations

import array
import math
import os
import struct
from collections.abc import Sequence
from typing import Final

import attrs

from ..media import PCMA, PCMU, Resampler, read_wav

__all__ = [
    "ALPHABET",
    "MAX_FRAMES",
    "Watermark",
    "frames_of",
    "speech_like",
    "tone",
    "wav_signal",
]


def _g711_fixed_points() -> tuple[int, ...]:
    """PCM16 values that both G.711 laws reproduce exactly (exhaustive over µ-law codes)."""
    found = set()
    for code in range(256):
        pcm = PCMU.decode(bytes((code,)))
        if PCMU.decode(PCMU.encode(pcm)) == pcm and PCMA.decode(PCMA.encode(pcm)) == pcm:
            found.add(struct.unpack("<h", pcm)[0])
    return tuple(sorted(found))


ALPHABET: Final[tuple[int, ...]] = _g711_fixed_points()
"""The 16 sample values of the watermark (exact through µ-law, A-law and L16)."""
assert len(ALPHABET) == 16, ALPHABET  # the stamp layout below assumes base 16

_DIGIT_OF: Final = {value: digit for digit, value in enumerate(ALPHABET)}
_MAGIC: Final = (ALPHABET[-1], ALPHABET[0])  # +120, -120: the largest swing available
_DIGITS: Final = 5
_SYMBOLS: Final = 2 + _DIGITS + 1
_WEIGHTS: Final = (1, 3, 5, 7, 9)  # odd, so coprime with 16: one bad digit always shows
MAX_FRAMES: Final = 16**_DIGITS
"""Frame numbers are stamped modulo this (2^20: 5.8 hours of 20 ms frames)."""


def _check(digits: Sequence[int]) -> int:
    return (7 + sum(w * d for w, d in zip(_WEIGHTS, digits, strict=True))) & 15


@attrs.define(slots=True, eq=False)
class Watermark:
    """Stamps frame numbers into PCM16LE frames at ``sample_rate`` and reads them back."""

    sample_rate: int
    run: int = attrs.field(init=False)
    """Samples per symbol (``R``)."""
    offset: int = attrs.field(init=False)
    """Samples before the stamp (one symbol of margin)."""
    _runs: tuple[bytes, ...] = attrs.field(init=False, repr=False)
    _magic: bytes = attrs.field(init=False, repr=False)
    _first: bytes = attrs.field(init=False, repr=False)
    _reader: struct.Struct = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, not {self.sample_rate}")
        run = 4 * -(-self.sample_rate // 8000)
        self.run = run
        self.offset = run
        self._runs = tuple(struct.pack("<h", v) * run for v in ALPHABET)
        self._magic = self._runs[_DIGIT_OF[_MAGIC[0]]] + self._runs[_DIGIT_OF[_MAGIC[1]]]
        self._first = struct.pack("<h", _MAGIC[0])
        # One struct call reads the two middle samples of every symbol: the middle is
        # where a resampled run is still exact, and asking for two equal samples makes a
        # chance match in quiet noise (whose G.711 values may all be in the alphabet)
        # 16 times less likely per symbol.
        mid = run // 2
        self._reader = struct.Struct(
            "<" + ("x" * (2 * mid - 2) + "hh" + "x" * (2 * (run - mid - 1))) * _SYMBOLS
        )

    @property
    def samples(self) -> int:
        """Samples a frame needs to hold a stamp (margin included)."""
        return self.offset + _SYMBOLS * self.run

    def stamp(self, pcm: bytes, number: int) -> bytes:
        """``pcm`` with frame ``number`` (modulo :data:`MAX_FRAMES`) written into it."""
        n = number % MAX_FRAMES
        digits = [(n >> shift) & 15 for shift in (16, 12, 8, 4, 0)]
        runs = self._runs
        start = 2 * self.offset
        mark = b"".join(
            (
                self._magic,
                runs[digits[0]],
                runs[digits[1]],
                runs[digits[2]],
                runs[digits[3]],
                runs[digits[4]],
                runs[_check(digits)],
            )
        )
        end = start + len(mark)
        if len(pcm) < end:
            raise ValueError(f"a frame of {len(pcm) // 2} samples is too short for a watermark")
        return pcm[:start] + mark + pcm[end:]

    def read(self, pcm: bytes) -> int:
        """The frame number stamped in ``pcm``, or -1 if it carries no valid stamp."""
        number = self._decode(pcm, 2 * self.offset)
        if number >= 0:
            return number
        # Not where it was written: search for the first magic symbol (bytes.find runs
        # in C, so a silent frame costs next to nothing) and try around each hit.
        first = self._first
        run = self.run
        tries = 0
        pos = pcm.find(first)
        while pos >= 0 and tries < 8:
            if not pos & 1:
                tries += 1
                # pos is some sample of the first magic run; back up to where the run
                # starts, then allow one sample of blur at the edge either way.
                sample = pos >> 1
                while sample > 0 and pcm[2 * sample - 2 : 2 * sample] == first:
                    sample -= 1
                for base in (sample, sample - 1, sample + 1):
                    if base >= 0:
                        number = self._decode(pcm, 2 * base)
                        if number >= 0:
                            return number
                # Skip the rest of this run.
                pos = 2 * (sample + run)
            else:
                pos += 1
            pos = pcm.find(first, pos)
        return -1

    def _decode(self, pcm: bytes, at: int) -> int:
        if at + self._reader.size > len(pcm):
            return -1
        values = self._reader.unpack_from(pcm, at)
        if values[0] != _MAGIC[0] or values[2] != _MAGIC[1]:
            return -1
        if values[0::2] != values[1::2]:
            return -1
        get = _DIGIT_OF.get
        d0, d1, d2, d3, d4, check = (get(v, -1) for v in values[4::2])
        # _check() written out: this runs for every frame received.
        if (
            min(d0, d1, d2, d3, d4, check) < 0
            or (7 + d0 + 3 * d1 + 5 * d2 + 7 * d3 + 9 * d4) & 15 != check
        ):
            return -1
        return (d0 << 16) | (d1 << 12) | (d2 << 8) | (d3 << 4) | d4


# ------------------------------------------------------------------------------ signals


def _clip(x: float) -> int:
    return 32767 if x > 32767 else -32768 if x < -32768 else int(x)


# Vowel-ish formant triples (Hz), roughly /a/ /e/ /i/ /o/ /u/ /ae/ of an adult voice.
_VOWELS: Final = (
    (730, 1090, 2440),
    (530, 1840, 2480),
    (270, 2290, 3010),
    (570, 840, 2410),
    (300, 870, 2240),
    (660, 1720, 2410),
)
# One phrase: 12 syllable slots of 250 ms (4 Hz), 0 = a pause between words, then a
# 200 ms breath: 3.2 s in all.
_PHRASE: Final = (1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0)
_SYLLABLE_S: Final = 0.25
_BREATH_S: Final = 0.2


def speech_like(sample_rate: int, *, level: float = 0.3) -> bytes:
    """One 3.2 s phrase of the built-in speech-like signal (PCM16LE), for looping.

    Each syllable is three formant sines (weights 1, 1/2, 1/4, above the Nyquist
    frequency left out) amplitude-modulated at the voice pitch (falling 140 -> 100 Hz over
    the phrase), under a sin² envelope 250 ms long: 4 syllables a second. ``level`` is the
    peak as a fraction of full scale.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, not {sample_rate}")
    out = array.array("h")
    syl_n = round(_SYLLABLE_S * sample_rate)
    two_pi = 2.0 * math.pi
    nyquist = sample_rate / 2
    peak = level * 32767 / 1.75
    total = len(_PHRASE) * syl_n
    for index, voiced in enumerate(_PHRASE):
        if not voiced:
            out.frombytes(bytes(2 * syl_n))
            continue
        formants = [f for f in _VOWELS[(index * 5) % len(_VOWELS)] if f < nyquist * 0.9]
        weights = (1.0, 0.5, 0.25)[: len(formants)]
        steps = [two_pi * f / sample_rate for f in formants]
        for i in range(syl_n):
            t = index * syl_n + i
            f0 = 140.0 - 40.0 * t / total
            env = math.sin(math.pi * i / syl_n) ** 2
            buzz = 0.6 + 0.4 * math.sin(two_pi * f0 * t / sample_rate)
            x = sum(w * math.sin(s * t) for w, s in zip(weights, steps, strict=True))
            out.append(_clip(peak * env * buzz * x))
    out.frombytes(bytes(2 * round(_BREATH_S * sample_rate)))
    return out.tobytes()


def tone(sample_rate: int, hz: float, *, seconds: float = 1.0, level: float = 0.3) -> bytes:
    """A sine of ``hz`` (PCM16LE), a whole number of cycles long where possible, for looping."""
    if not 0 < hz < sample_rate / 2:
        raise ValueError(f"a {hz:g} Hz tone does not fit a {sample_rate} Hz signal")
    n = round(seconds * sample_rate)
    cycles = max(1, round(seconds * hz))
    step = 2.0 * math.pi * cycles / n  # exactly `cycles` periods in n samples: no click
    amp = level * 32767
    return array.array("h", (_clip(amp * math.sin(step * i)) for i in range(n))).tobytes()


def wav_signal(path: str | os.PathLike[str], sample_rate: int) -> bytes:
    """A WAV file as PCM16LE mono at ``sample_rate`` (resampled if it is at another rate)."""
    pcm, rate = read_wav(path)
    if not pcm:
        raise ValueError(f"{os.fspath(path)}: no audio")
    if rate != sample_rate:
        pcm = Resampler(rate, sample_rate).process(pcm)
    return pcm


def frames_of(pcm: bytes, frame_bytes: int) -> list[bytes]:
    """``pcm`` cut into frames of ``frame_bytes`` (the last one padded with silence)."""
    if frame_bytes <= 0 or frame_bytes & 1:
        raise ValueError(f"frame_bytes must be positive and even, not {frame_bytes}")
    if not pcm:
        return [bytes(frame_bytes)]
    tail = len(pcm) % frame_bytes
    if tail:
        pcm += bytes(frame_bytes - tail)
    return [pcm[i : i + frame_bytes] for i in range(0, len(pcm), frame_bytes)]
