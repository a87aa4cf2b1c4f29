"""Reading and writing PCM16 WAV files (prompts, recordings, test fixtures) with ``wave``."""

from __future__ import annotations

import os
import wave

from ._audioop import audioop

__all__ = ["read_wav", "write_wav"]


def read_wav(path: str | os.PathLike[str]) -> tuple[bytes, int]:
    """Return ``(pcm, sample_rate)`` of a PCM16 WAV file, as mono little-endian PCM16.

    Stereo is down-mixed (the mean of both channels). Any sample rate is returned as
    is; resample with ``Resampler`` if the leg needs another. Any other format (8/24/32
    bit, float, compressed, WAVE_FORMAT_EXTENSIBLE on Python < 3.12, more than two
    channels, not a WAV file at all) raises ``ValueError`` naming the file and the reason.
    """
    try:
        with wave.open(os.fspath(path), "rb") as wav:
            channels = wav.getnchannels()
            width = wav.getsampwidth()
            rate = wav.getframerate()
            pcm = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{os.fspath(path)}: not a PCM WAV file bridge can read: {exc}") from None
    if width != 2:
        raise ValueError(
            f"{os.fspath(path)}: {8 * width}-bit samples; only 16-bit PCM is supported"
        )
    if channels == 2:
        # Truncate a torn last frame rather than fail: tomono needs whole frames.
        pcm = audioop.tomono(pcm[: len(pcm) & ~3], 2, 0.5, 0.5)
    elif channels != 1:
        raise ValueError(
            f"{os.fspath(path)}: {channels} channels; only mono or stereo is supported"
        )
    return pcm[: len(pcm) & ~1], rate


def write_wav(path: str | os.PathLike[str], pcm: bytes, sample_rate: int) -> None:
    """Write mono PCM16 little-endian ``pcm`` at ``sample_rate`` Hz as a WAV file."""
    if len(pcm) & 1:
        raise ValueError(f"{len(pcm)} bytes is not a whole number of 16-bit samples")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, not {sample_rate!r}")
    with wave.open(os.fspath(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
