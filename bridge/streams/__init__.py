"""Streams: the per-call nursery, its lifecycle and policies, and the process-wide ticker."""

from ._echo import ECHO_URL, EchoConnection, EchoConnector
from ._legs import AppConnection, AppConnector, CallLeg, Pipe, StreamSink
from ._manager import StreamManager
from ._pipelegs import PipeAppConnection, PipeCallLeg
from ._stream import Stream, StreamObserver, StreamSettings, StreamState
from ._ticker import TickClient, Ticker, TickHandle
from ._uplink import UplinkBuffer

__all__ = [
    "ECHO_URL",
    "AppConnection",
    "AppConnector",
    "CallLeg",
    "EchoConnection",
    "EchoConnector",
    "Pipe",
    "PipeAppConnection",
    "PipeCallLeg",
    "Stream",
    "StreamManager",
    "StreamObserver",
    "StreamSettings",
    "StreamSink",
    "StreamState",
    "TickClient",
    "TickHandle",
    "Ticker",
    "UplinkBuffer",
]
