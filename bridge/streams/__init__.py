"""Streams: the per-call nursery, its lifecycle and policies, and the process-wide ticker.

A stream reports to its ``StreamObserver`` (the daemon) with typed lifecycle events
(:class:`StartStream`, :class:`StopStream`, :class:`DroppedStream`,
:class:`DegradedStream`, :class:`RecoveredStream`).
"""

from ._echo import ECHO_URL, EchoConnection, EchoConnector
from ._legs import AppConnection, AppConnector, CallLeg, Pipe, StreamSink
from ._lifecycle import (
    DegradedStream,
    DroppedStream,
    LifecycleEvent,
    RecoveredStream,
    StartStream,
    StopStream,
    StreamState,
)
from ._manager import StreamManager
from ._pipelegs import PipeAppConnection, PipeCallLeg
from ._stream import Stream, StreamObserver, StreamSettings
from ._supervisor import AppSupervisor, RetryPolicy
from ._ticker import TickClient, Ticker, TickHandle
from ._uplink import UplinkBuffer

__all__ = [
    "ECHO_URL",
    "AppConnection",
    "AppConnector",
    "AppSupervisor",
    "CallLeg",
    "DegradedStream",
    "DroppedStream",
    "EchoConnection",
    "EchoConnector",
    "LifecycleEvent",
    "Pipe",
    "PipeAppConnection",
    "PipeCallLeg",
    "RecoveredStream",
    "RetryPolicy",
    "StartStream",
    "StopStream",
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
