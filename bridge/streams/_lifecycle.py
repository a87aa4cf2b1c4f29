"""A stream's lifecycle: its states, and the events it reports to its observer (the daemon).

States (ARCHITECTURE.md, "Lifecycle"): ``connecting -> open -> streaming -> closing ->
closed``, with ``connecting`` again while the app leg reconnects (:class:`StreamState`).

Events (ARCHITECTURE.md, "Reliability policy" and "Status callbacks"): a stream says what
happened to it once per occurrence, and the daemon turns each into a status callback
(``daemon._events.StreamEvent``), a log line and metrics. Each event is a small frozen
object, so the daemon dispatches on its type and every field is named and typed; the
stream's own event log (``Stream.log``, in ``GET /v1/streams/{id}`` and the record) takes
the event's :attr:`name` and :meth:`detail`.

They are rare (a handful per call), never on a per-frame path.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

import attrs

__all__ = [
    "DegradedStream",
    "DroppedStream",
    "LifecycleEvent",
    "RecoveredStream",
    "StartStream",
    "StopStream",
    "StreamState",
]


class StreamState(enum.StrEnum):
    CONNECTING = "connecting"
    OPEN = "open"
    STREAMING = "streaming"
    CLOSING = "closing"
    CLOSED = "closed"


@attrs.frozen(slots=True)
class StartStream:
    """The app leg is open and the dialect's start message is sent (once per stream: a
    reconnect is not a new start)."""

    name: ClassVar[str] = "StartStream"

    def detail(self) -> dict[str, Any]:
        return {}


@attrs.frozen(slots=True)
class StopStream:
    """The stream ended normally: a hangup on either side, the API, a timeout, a drain.

    ``error`` says more where there is more to say (a call leg that failed, a resumed
    carrier leg that never came back); it goes to the stream's log and record, not into
    the ``StopStream`` callback body."""

    name: ClassVar[str] = "StopStream"
    reason: str
    duration_s: float
    error: str | None = None

    def detail(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "duration_s": self.duration_s}
        if self.error:
            out["error"] = self.error
        return out


@attrs.frozen(slots=True)
class DroppedStream:
    """The stream ended because the app leg could not be kept: unreachable after every
    attempt (``connection_error``) or too slow to take the caller's audio
    (``slow_connection``). ``attempts``: app-leg attempts since it was last up."""

    name: ClassVar[str] = "DroppedStream"
    reason: str
    duration_s: float
    error: str | None
    attempts: int

    def detail(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "duration_s": self.duration_s,
            "error": self.error,
            "attempts": self.attempts,
        }


@attrs.frozen(slots=True)
class DegradedStream:
    """The uplink buffer crossed ``buffer_percent`` (one of ``degraded_at``) upwards."""

    name: ClassVar[str] = "DegradedStream"
    buffer_percent: int

    def detail(self) -> dict[str, Any]:
        return {"buffer_percent": self.buffer_percent}


@attrs.frozen(slots=True)
class RecoveredStream:
    """The uplink buffer fell back under the lowest ``degraded_at`` threshold."""

    name: ClassVar[str] = "RecoveredStream"

    def detail(self) -> dict[str, Any]:
        return {}


LifecycleEvent = StartStream | StopStream | DroppedStream | DegradedStream | RecoveredStream
