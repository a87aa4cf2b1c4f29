"""Marks in flight to a far side that may never answer for them after a clear.

Asterisk ``chan_websocket`` frees pending marks on ``FLUSH_MEDIA`` without an event;
Vonage and Exotel do not document what happens to theirs on a clear. An app role that
must give the engine Twilio's "played *or* cleared" semantics therefore keeps its own
list: every mark goes out under a short wire id of the dialect's choosing (``m1``,
``m2``, ...), the far side's echo is mapped back to the engine's name, and a clear
settles whatever is still in flight as owed ``Mark`` events (``take()``). An echo that
arrives after its mark was settled (or for an id never sent) is dropped and counted, so
the engine hears of each mark exactly once.

Short generated ids also keep arbitrary names (spaces, any length, any characters) off
wires that cannot carry them: Asterisk ignores a TEXT message over 128 bytes and splits
plain-text commands on spaces.
"""

from __future__ import annotations

from typing import Final

import attrs

from ._carrier import NO_HOOKS
from ._events import Cleared, Event, Mark, MarkName

__all__ = ["MAX_PENDING_MARKS", "PendingMarks"]

MAX_PENDING_MARKS: Final = 4096
"""Marks in flight at most. Beyond it the oldest is settled at once (reported as
played-or-cleared and counted in ``overflowed``): the far side's buffer holds about a
minute of audio at most, so a real stream never gets near it; a peer that never echoes
must not grow this without bound."""


@attrs.define(slots=True, eq=False, on_setattr=NO_HOOKS)
class PendingMarks:
    """Wire id -> engine name of every mark sent and not yet echoed or settled."""

    prefix: str = "m"
    limit: int = MAX_PENDING_MARKS
    pending: dict[str, MarkName] = attrs.field(factory=dict, init=False)
    """In sending order (dicts keep insertion order)."""
    stale_echoes: int = attrs.field(default=0, init=False)
    """Echoes for an id not in flight: settled by a clear already, or never sent."""
    settled: int = attrs.field(default=0, init=False)
    """Marks settled locally by a clear."""
    overflowed: int = attrs.field(default=0, init=False)
    _next: int = attrs.field(default=0, init=False)
    _owed: list[Event] = attrs.field(factory=list, init=False)

    def sent(self, name: MarkName) -> str:
        """Record a mark going out; returns its wire id."""
        self._next += 1
        wire_id = f"{self.prefix}{self._next}"
        if len(self.pending) >= self.limit:
            oldest = next(iter(self.pending))
            self._owed.append(Mark(self.pending.pop(oldest)))
            self.overflowed += 1
        self.pending[wire_id] = name
        return wire_id

    def echoed(self, wire_id: str) -> MarkName | None:
        """The engine's name for an echoed wire id; ``None`` (counted) if not in flight."""
        name = self.pending.pop(wire_id, None)
        if name is None:
            self.stale_echoes += 1
        return name

    def clear(self, *, cleared: bool) -> None:
        """A clear went out: every mark in flight is owed as played-or-cleared, in order,
        followed by ``Cleared`` when the wire has no acknowledgement of its own."""
        owed = self._owed
        for name in self.pending.values():
            owed.append(Mark(name))
        self.settled += len(self.pending)
        self.pending.clear()
        if cleared:
            owed.append(Cleared())

    def take(self) -> list[Event]:
        """The owed events, once."""
        owed = self._owed
        if not owed:
            return []
        self._owed = []
        return owed
