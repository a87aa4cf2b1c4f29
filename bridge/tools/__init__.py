"""bridge.tools: the programs beside the daemon, for tests, demos and benchmarks.

* ``bridge call`` (:mod:`._call`): the call emulator and load generator. It plays the
  platform side of a call leg with the same sans-IO dialects the daemon uses and
  measures the round trip frame by frame (:class:`CallOptions`, :func:`place_calls`,
  :func:`place_call`, :class:`CallGenerator`, :class:`CallReport`,
  :class:`CallResult`, :func:`render_report`).
* The signal it sends and the watermark that numbers every frame (:mod:`._callsignal`:
  :class:`Watermark`, :func:`speech_like`, :func:`tone`, :func:`wav_signal`,
  :func:`frames_of`).
* ``bridge echo-server`` (:mod:`._echoserver`): a standalone WebSocket echo application
  (:class:`EchoOptions`, :func:`serve_echo`, :class:`EchoServer`, :class:`EchoStats`).

The tools stand on ``transports``, ``dialects``, ``media`` and ``streams``; the daemon
never imports them. ``add_call_parser`` and ``add_echo_server_parser`` add the commands
to the ``bridge`` CLI (``bridge/_cli.py``, above both).
"""

from ._call import (
    Call,
    CallGenerator,
    CallOptions,
    CallReport,
    CallResult,
    add_call_parser,
    place_call,
    place_calls,
    render_report,
)
from ._callsignal import ALPHABET, MAX_FRAMES, Watermark, frames_of, speech_like, tone, wav_signal
from ._echoserver import EchoOptions, EchoServer, EchoStats, add_echo_server_parser, serve_echo

__all__ = [
    "ALPHABET",
    "MAX_FRAMES",
    "Call",
    "CallGenerator",
    "CallOptions",
    "CallReport",
    "CallResult",
    "EchoOptions",
    "EchoServer",
    "EchoStats",
    "Watermark",
    "add_call_parser",
    "add_echo_server_parser",
    "frames_of",
    "place_call",
    "place_calls",
    "render_report",
    "serve_echo",
    "speech_like",
    "tone",
    "wav_signal",
]
