"""Media: frames, codecs, resampling, jitter and playout buffers, pacing arithmetic.

Pure code: no sockets, no tasks, and nothing else of bridge is imported here.
Bad arguments raise plain ``ValueError``.
"""

from ._audioop import audioop
from ._codecs import L16_BE, L16_LE, PCMA, PCMU, Codec, codec_for
from ._frame import Frame, frame_bytes, frame_samples
from ._jitter import JitterBuffer, JitterStats
from ._pacing import LatenessHistogram, PacingClock
from ._playout import MarkName, PlayoutBuffer, splice
from ._playout_policy import PlayoutPolicy
from ._resample import Resampler
from ._wav import read_wav, write_wav

__all__ = [
    "L16_BE",
    "L16_LE",
    "PCMA",
    "PCMU",
    "Codec",
    "Frame",
    "JitterBuffer",
    "JitterStats",
    "LatenessHistogram",
    "MarkName",
    "PacingClock",
    "PlayoutBuffer",
    "PlayoutPolicy",
    "Resampler",
    "audioop",
    "codec_for",
    "frame_bytes",
    "frame_samples",
    "read_wav",
    "splice",
    "write_wav",
]
