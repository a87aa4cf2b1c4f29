"""The streams nursery: every live Stream, admission (max_streams, draining) and drain."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import attrs
import trio

from .._errors import StreamRefused
from ._stream import Stream
from ._ticker import Ticker

__all__ = ["StreamManager"]

logger = logging.getLogger("bridge.streams")


@attrs.define(slots=True, eq=False)
class StreamManager:
    """Owns the streams nursery. Run ``serve`` in the daemon nursery (``nursery.start``)."""

    ticker: Ticker
    max_streams: int = 1000
    #: Ended streams kept in memory for GET /v1/streams/{id} (the records DB has them all).
    keep_ended: int = 1000
    draining: bool = False
    _live: dict[str, Stream] = attrs.field(factory=dict)
    _ended: OrderedDict[str, dict[str, Any]] = attrs.field(factory=OrderedDict)
    _nursery: trio.Nursery | None = None
    _empty: trio.Event = attrs.field(factory=trio.Event)
    started_total: int = 0

    @property
    def live_count(self) -> int:
        return len(self._live)

    def get(self, stream_id: str) -> Stream | None:
        return self._live.get(stream_id)

    def live(self) -> list[Stream]:
        return list(self._live.values())

    def ended_snapshot(self, stream_id: str) -> dict[str, Any] | None:
        return self._ended.get(stream_id)

    def check_admission(self) -> None:
        """Raise ``StreamRefused`` when a new call may not start now."""
        if self.draining:
            raise StreamRefused("draining", "bridge is draining; new calls are refused")
        if len(self._live) >= self.max_streams:
            raise StreamRefused(
                "max_streams", f"max_streams ({self.max_streams}) live streams already"
            )
        if self._nursery is None:
            raise StreamRefused("not_ready", "the streams nursery is not running")

    def start(self, stream: Stream) -> None:
        """Admit ``stream`` and run it in the streams nursery. Raises ``StreamRefused``."""
        self.check_admission()
        if stream.stream_id in self._live:
            raise StreamRefused("duplicate", f"stream {stream.stream_id} is already live")
        assert self._nursery is not None
        self._live[stream.stream_id] = stream
        self.started_total += 1
        self._empty = trio.Event()
        self._nursery.start_soon(self._run, stream, name=f"stream {stream.stream_id}")

    async def _run(self, stream: Stream) -> None:
        try:
            await stream.run()
        finally:
            self._live.pop(stream.stream_id, None)
            self._ended[stream.stream_id] = stream.snapshot()
            while len(self._ended) > self.keep_ended:
                self._ended.popitem(last=False)
            if not self._live:
                self._empty.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def stop(self, stream_id: str, reason: str = "api_request") -> bool:
        stream = self._live.get(stream_id)
        if stream is None:
            return False
        stream.end(reason)
        return True

    async def wait_empty(self) -> None:
        while self._live:
            await self._empty.wait()

    async def drain(self, timeout_s: float) -> int:
        """Refuse new calls, give live ones ``timeout_s`` to end, then end the rest with
        ``shutdown``. Returns how many had to be ended."""
        self.draining = True
        with trio.move_on_after(timeout_s):
            await self.wait_empty()
        remaining = list(self._live.values())
        for stream in remaining:
            stream.end("shutdown")
        if remaining:
            logger.info("drain timeout: ending %d streams with reason shutdown", len(remaining))
        await self.wait_empty()
        return len(remaining)
