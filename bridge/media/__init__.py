"""Media: frames, codecs, resampling, jitter and playout buffers, pacing arithmetic.

Pure code: no sockets, no tasks, and nothing else of bridge is imported here.
"""

from ._frame import Frame, frame_bytes, frame_samples

__all__ = ["Frame", "frame_bytes", "frame_samples"]
