"""The uplink buffer: caller audio the app has not taken yet, and its fill policy.

ARCHITECTURE.md reliability policy: while the app leg is down or slow the caller's audio
is held, up to ``buffer_s`` (40 s by default), and replayed in order when the app leg
returns; ``DegradedStream`` fires once per upward crossing of each ``degraded_at``
threshold, ``RecoveredStream`` once the fill falls back under the lowest one, and a full
buffer ends the stream with ``slow_connection`` (the Plivo model).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import attrs

from ..dialects import Event

__all__ = ["UplinkBuffer"]


@attrs.define(slots=True)
class UplinkBuffer:
    """FIFO of PCM frames (bytes) and the control events interleaved with them."""

    capacity_bytes: int
    bytes_per_ms: float
    thresholds: Sequence[int] = (30, 60, 90)
    _items: deque[bytes | Event] = attrs.field(factory=deque)
    _bytes: int = 0
    # Thresholds currently crossed (armed again when the fill drops back under them).
    _above: set[int] = attrs.field(factory=set)
    _degraded: bool = False
    max_percent: float = 0.0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def fill_bytes(self) -> int:
        return self._bytes

    @property
    def fill_ms(self) -> int:
        return int(self._bytes / self.bytes_per_ms) if self.bytes_per_ms else 0

    @property
    def percent(self) -> float:
        return 100.0 * self._bytes / self.capacity_bytes if self.capacity_bytes else 100.0

    @property
    def full(self) -> bool:
        return self._bytes >= self.capacity_bytes

    def append(self, item: bytes | Event) -> list[int]:
        """Queue one frame or event. Returns the thresholds crossed upward by it."""
        self._items.append(item)
        if type(item) is not bytes:
            return []
        self._bytes += len(item)
        pct = self.percent
        if pct > self.max_percent:
            self.max_percent = pct
        crossed = [t for t in self.thresholds if pct >= t and t not in self._above]
        if crossed:
            self._above.update(crossed)
            self._degraded = True
        return crossed

    def popleft(self) -> bytes | Event:
        item = self._items.popleft()
        if type(item) is bytes:
            self._bytes -= len(item)
        return item

    def check_recovered(self) -> bool:
        """True once, when the fill has fallen under the lowest threshold after a Degraded."""
        pct = self.percent
        if self._above:
            self._above = {t for t in self._above if pct >= t}
        if self._degraded and (not self.thresholds or pct < self.thresholds[0]):
            self._degraded = False
            return True
        return False
