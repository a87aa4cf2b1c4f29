"""The unit of audio that moves through bridge."""

from __future__ import annotations

import attrs

__all__ = ["Frame", "frame_bytes", "frame_samples"]


def frame_samples(sample_rate: int, ptime_ms: int = 20) -> int:
    """Samples in one frame of ``ptime_ms`` at ``sample_rate`` Hz."""
    return sample_rate * ptime_ms // 1000


def frame_bytes(sample_rate: int, ptime_ms: int = 20) -> int:
    """Bytes of PCM16 mono in one frame of ``ptime_ms`` at ``sample_rate`` Hz."""
    return 2 * frame_samples(sample_rate, ptime_ms)


@attrs.frozen(slots=True)
class Frame:
    """PCM16 mono, native little-endian, at ``sample_rate`` Hz.

    Normally exactly one ptime (20 ms) long; the app leg may hand over any length and
    the playout buffer re-frames it. ``pcm`` is never converted implicitly: every
    byte-order or codec change is an explicit codec call (PROTOCOLS.md "Design
    implications" 1).
    """

    pcm: bytes
    sample_rate: int

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) * 500.0 / self.sample_rate

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2
