"""Status-callback events through Redis, so that a lost process loses none.

In cluster mode every event that has a callback URL goes, instead of the local SQLite
outbox, through the node's Redis stream ``P:events:<node>`` with the consumer group
``deliver``::

    emit()  ── O(1), in memory ──►  writer task ── XADD (pipelined) ──►  P:events:<node>
                                                                              │
    receiver ◄── POST (signed) ── delivery engine ◄── XREADGROUP (consumer <node>)
                                         └── XACK + XDEL once delivered or given up

**The media path never waits**: ``emit`` appends to a deque and sets an event. While
Redis is down the writer keeps what it could not add, in order, up to ``max_held``
(``bridge_cluster_events_held``); past that a new event is lost, counted in
``bridge_cluster_events_lost_total`` and logged with its ``event_id``. What is still
held when the process stops is handed to the local SQLite outbox (``spill``), which
delivers it as a single process would (``bridge_cluster_events_spilled_total``).

**A dead node's events.** The survivor that wins a dead node's takeover
(``_registry``) runs a consumer on the dead node's stream: ``XAUTOCLAIM`` takes the
entries the dead consumer had read and not acknowledged (idle for at least a lease),
``XREADGROUP >`` the ones it never read, and the same engine delivers them. If that
survivor dies too, the next one claims the takeover after its PX runs out and
``XAUTOCLAIM`` hands it the first survivor's pending entries. When the dead node's stream
is empty the node is forgotten.

**Delivery policy** (as the SQLite outbox, ``daemon/_outbox.py``; one POST attempt and
the backoff are the outbox's own code, ``bridge/_callbackpost.py``): at least once, with
the same ``event_id`` on every attempt (duplicates only after a crash between the POST
and the XACK, or while a node cut off from Redis and its survivor both deliver); one
event per stream at a time, in order (a stream's events all live in one node's Redis
stream, in XADD order); retried with exponential backoff and full jitter on connect
errors, timeouts, 5xx, 408 and 429 (``Retry-After`` honoured, capped at
``max_backoff_s``), any other status fails it for good; given up ``give_up_after_s``
after its timestamp. Signed per attempt (``X-Bridge-Signature``). Given-up events are
added to the capped stream ``P:events-failed`` and logged with their ``event_id``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import coredis
import coredis.exceptions
import httpx
import msgspec
import trio
import trio.lowlevel

from .._callbackpost import CallbackOutcome, Sign, post_callback, retry_delay_s
from .._errors import ClusterUnavailable
from ._redis import Keys, RedisLink

__all__ = ["ClusterEvents", "EventDoc"]

logger = logging.getLogger("bridge.cluster.events")

GROUP = "deliver"
_BATCH = 256
_FAILED_MAXLEN = 10_000


class EventDoc(msgspec.Struct, frozen=True, kw_only=True):
    """One event as it travels through Redis: the exact body and where it goes."""

    event_id: str
    stream_id: str
    event: str
    #: The event's timestamp (unix seconds): the give-up deadline counts from it.
    created_at: float
    callback_url: str
    callback_secret: str = ""
    body: str


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(EventDoc).decode


@attrs.define(slots=True)
class _Item:
    source: str  # the Redis stream key it came from (acknowledged there)
    entry_id: bytes
    doc: EventDoc
    attempts: int = 0
    not_before: float = 0.0
    last_error: str = ""


@attrs.define(eq=False)
class ClusterEvents:
    link: RedisLink
    keys: Keys
    node_id: str
    sign: Sign
    metrics: Any  # _node.ClusterMetrics
    lease_s: float = 5.0
    callback_timeout_s: float = 5.0
    backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    give_up_after_s: float = 86400.0
    concurrency: int = 16
    max_held: int = 10_000
    user_agent: str = "bridge"
    #: Where held events go when the process stops with Redis down (the local outbox).
    spill: Callable[[list[EventDoc]], None] | None = None
    client: httpx.AsyncClient | None = None

    _held: deque[EventDoc] = attrs.field(factory=deque)
    _writer_wake: trio.Event = attrs.field(factory=trio.Event)
    _streams: dict[str, deque[_Item]] = attrs.field(factory=dict)
    _ready_send: trio.MemorySendChannel[str] = attrs.field(init=False)
    _ready_recv: trio.MemoryReceiveChannel[str] = attrs.field(init=False)
    _acks: list[tuple[str, bytes]] = attrs.field(factory=list)
    _ack_wake: trio.Event = attrs.field(factory=trio.Event)
    #: Entries of each source not yet acknowledged.
    _open: dict[str, int] = attrs.field(factory=dict)
    _nursery: trio.Nursery | None = None
    _accepting: bool = False
    delivered: int = 0
    lost: int = 0
    _progress: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self._ready_send, self._ready_recv = trio.open_memory_channel[str](math.inf)

    # -- emitting (media path) ---------------------------------------------------------

    def emit(self, doc: EventDoc) -> None:
        """Queue ``doc`` for the node's Redis stream. O(1), never awaits."""
        if len(self._held) >= self.max_held:
            self.lost += 1
            self.metrics.events_lost.inc()
            logger.error(
                "event lost: Redis unreachable and %d events already held in memory",
                self.max_held,
                extra={"event_id": doc.event_id, "stream_id": doc.stream_id, "event": doc.event},
            )
            return
        self._held.append(doc)
        self._writer_wake.set()

    @property
    def held_count(self) -> int:
        return len(self._held)

    @property
    def pending_count(self) -> int:
        """Events held or read and not yet delivered or given up (by this process)."""
        return len(self._held) + sum(len(q) for q in self._streams.values())

    async def wait_idle(self) -> None:
        """Until nothing is held, in delivery or waiting for its XACK (tests, benches)."""
        while self.pending_count or self._acks or any(self._open.values()):
            await self._progress.wait()

    def _notify(self) -> None:
        progress, self._progress = self._progress, trio.Event()
        progress.set()

    # -- running -------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        own_client = self.client is None
        client = self.client or httpx.AsyncClient(
            timeout=httpx.Timeout(self.callback_timeout_s),
            limits=httpx.Limits(
                max_connections=self.concurrency, max_keepalive_connections=self.concurrency
            ),
            follow_redirects=False,
        )
        self.client = client
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._accepting = True
                nursery.start_soon(self._serve_writer)
                nursery.start_soon(self._serve_acks)
                for _ in range(self.concurrency):
                    nursery.start_soon(self._serve_worker)
                nursery.start_soon(self._serve_source, self.keys.events(self.node_id), False)
                task_status.started()
        finally:
            self._accepting = False
            self._spill_held()
            if own_client:
                with trio.CancelScope(shield=True):
                    await client.aclose()

    def take_over_with(self, dead: str, on_done: Callable[[str], Awaitable[None]]) -> None:
        """Deliver the events of the dead node ``dead`` (this node won its takeover);
        ``await on_done(key)`` once its stream is drained and every entry handled."""
        assert self._nursery is not None
        self._nursery.start_soon(self._serve_source, self.keys.events(dead), True, on_done)

    def _spill_held(self) -> None:
        if not self._held:
            return
        docs = list(self._held)
        self._held.clear()
        if self.spill is not None:
            self.metrics.events_spilled.inc(len(docs))
            logger.warning(
                "stopping with %d events not yet in Redis: handing them to the local outbox",
                len(docs),
            )
            self.spill(docs)
        else:
            for doc in docs:
                self.metrics.events_lost.inc()
                logger.error(
                    "event lost: not in Redis when the process stopped",
                    extra={"event_id": doc.event_id, "stream_id": doc.stream_id},
                )

    # -- writer: memory -> Redis -----------------------------------------------------------

    async def _serve_writer(self) -> None:
        key = self.keys.events(self.node_id)
        client = self.link.client
        while True:
            if not self._held:
                await self._writer_wake.wait()
                self._writer_wake = trio.Event()
                continue
            batch = [self._held[i] for i in range(min(_BATCH, len(self._held)))]

            async def add(batch: list[EventDoc] = batch) -> None:
                async with client.pipeline(transaction=False) as pipe:
                    for doc in batch:
                        pipe.xadd(key, {"d": _encode(doc)})

            try:
                await self.link.call("event XADD", add)
            except ClusterUnavailable:
                # Kept, in order, and tried again; emit() keeps appending behind them.
                await trio.sleep(1.0)
                continue
            for _ in batch:
                self._held.popleft()
            self._notify()

    # -- sources: Redis -> engine -----------------------------------------------------------

    async def _ensure_group(self, key: str) -> None:
        client = self.link.client

        async def create() -> None:
            try:
                await client.xgroup_create(key, GROUP, identifier="0", mkstream=True)
            except coredis.exceptions.StreamDuplicateConsumerGroupError:
                pass

        await self.link.call("XGROUP CREATE", create)

    async def _serve_source(
        self,
        key: str,
        takeover: bool,
        on_done: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """Read one node's event stream into the engine, forever (own) or until it is
        drained (a dead node's, then ``on_source_done``)."""
        client = self.link.client
        self._open.setdefault(key, 0)
        min_idle_ms = int(self.lease_s * 1000)
        claimed_all = False
        own_pending_read = False
        while True:
            try:
                await self._ensure_group(key)
                if takeover and not claimed_all:
                    # The dead consumer's pending entries (and those of a survivor that
                    # died while it delivered them): XAUTOCLAIM, in id order.
                    cursor = b"0-0"
                    while True:
                        result = await self.link.call(
                            "XAUTOCLAIM",
                            lambda c=cursor: client.xautoclaim(  # type: ignore[misc]
                                key, GROUP, self.node_id, min_idle_ms, c, count=_BATCH
                            ),
                        )
                        cursor, entries = result[0], result[1]
                        self._submit(key, entries)
                        if cursor in (b"0-0", "0-0"):
                            break
                    claimed_all = True
                if not own_pending_read and not takeover:
                    # This node's own entries read and not acknowledged by a previous
                    # process with the same node id (a restart with a fixed node_id).
                    got = await self.link.call(
                        "XREADGROUP 0",
                        lambda: client.xreadgroup(
                            GROUP, self.node_id, streams={key: "0"}, count=10_000
                        ),
                    )
                    for entries in (got or {}).values():
                        self._submit(key, entries)
                    own_pending_read = True
                got = await self.link.call(
                    "XREADGROUP",
                    lambda: client.xreadgroup(
                        GROUP,
                        self.node_id,
                        streams={key: ">"},
                        count=_BATCH,
                        block=None if takeover else 1000,
                    ),
                )
            except ClusterUnavailable:
                await trio.sleep(1.0)
                continue
            entries = [e for batch in (got or {}).values() for e in batch]
            self._submit(key, entries)
            if takeover and not entries:
                # Drained: wait for what is in flight, then the node is gone for good.
                while self._open.get(key, 0):
                    await self._progress.wait()
                logger.info("events of dead node %s all handled", key)
                self._open.pop(key, None)
                if on_done is not None:
                    await on_done(key)
                return
            if takeover:
                await trio.lowlevel.checkpoint()

    def _submit(self, source: str, entries: Sequence[Any]) -> None:
        for entry in entries:
            raw = entry.field_values.get(b"d") if entry.field_values else None
            if raw is None:
                self._acks.append((source, entry.identifier))
                self._ack_wake.set()
                continue
            try:
                doc = _decode(raw)
            except msgspec.DecodeError:
                logger.error("undecodable event entry %r in %s; dropped", entry.identifier, source)
                self._acks.append((source, entry.identifier))
                self._ack_wake.set()
                continue
            self._open[source] = self._open.get(source, 0) + 1
            item = _Item(source, entry.identifier, doc)
            queue = self._streams.get(doc.stream_id)
            if queue is None:
                self._streams[doc.stream_id] = deque([item])
                self._ready_send.send_nowait(doc.stream_id)
            else:
                queue.append(item)

    # -- acknowledgements -------------------------------------------------------------

    async def _serve_acks(self) -> None:
        client = self.link.client
        while True:
            if not self._acks:
                await self._ack_wake.wait()
                self._ack_wake = trio.Event()
                continue
            batch, self._acks = self._acks, []

            async def ack(batch: list[tuple[str, bytes]] = batch) -> None:
                async with client.pipeline(transaction=False) as pipe:
                    for source, entry_id in batch:
                        pipe.xack(source, GROUP, [entry_id])
                        pipe.xdel(source, [entry_id])

            try:
                await self.link.call("XACK", ack)
            except ClusterUnavailable:
                self._acks[:0] = batch
                await trio.sleep(1.0)
                continue
            for source, _ in batch:
                if source in self._open:
                    self._open[source] -= 1
            self._notify()

    # -- delivery ---------------------------------------------------------------------------

    async def _serve_worker(self) -> None:
        async for stream_id in self._ready_recv:
            queue = self._streams.get(stream_id)
            if not queue:
                continue
            await self._attempt(stream_id, queue[0])

    def _finish(self, stream_id: str, item: _Item) -> None:
        queue = self._streams[stream_id]
        queue.popleft()
        self._acks.append((item.source, item.entry_id))
        self._ack_wake.set()
        if queue:
            self._ready_send.send_nowait(stream_id)
        else:
            del self._streams[stream_id]
        self._notify()

    async def _retry_later(self, stream_id: str, delay: float) -> None:
        await trio.sleep(delay)
        self._ready_send.send_nowait(stream_id)

    async def _attempt(self, stream_id: str, item: _Item) -> None:
        doc = item.doc
        item.attempts += 1
        outcome = await self._post(doc)
        extra = {
            "stream_id": stream_id,
            "event_id": doc.event_id,
            "event": doc.event,
            "callback_url": doc.callback_url,
            "attempt": item.attempts,
        }
        if outcome.kind == "delivered":
            self.delivered += 1
            self.metrics.events_delivered.inc()
            self._finish(stream_id, item)
            return
        if outcome.kind == "permanent":
            await self._give_up(stream_id, item, "permanent", outcome.error, extra)
            return
        remaining = doc.created_at + self.give_up_after_s - time.time()
        if remaining <= 0:
            await self._give_up(stream_id, item, "expired", outcome.error, extra)
            return
        self.metrics.events_retried.inc()
        item.last_error = outcome.error
        logger.debug("callback attempt failed, will retry: %s", outcome.error, extra=extra)
        delay = min(self._retry_delay(item.attempts, outcome.retry_after), remaining)
        assert self._nursery is not None
        self._nursery.start_soon(self._retry_later, stream_id, delay)

    async def _give_up(
        self, stream_id: str, item: _Item, cause: str, error: str, extra: dict[str, Any]
    ) -> None:
        self.metrics.events_failed.labels(cause=cause).inc()
        logger.warning("callback failed (%s): %s", cause, error, extra=extra)
        client = self.link.client
        record = {
            "d": _encode(item.doc),
            "cause": cause,
            "error": error[:500],
            "attempts": str(item.attempts),
            "node": self.node_id,
        }
        try:
            await self.link.call(
                "XADD failed",
                lambda: client.xadd(
                    self.keys.failed,
                    record,  # type: ignore[arg-type]
                    trim_strategy=coredis.PureToken.MAXLEN,
                    threshold=_FAILED_MAXLEN,
                    trim_operator=coredis.PureToken.APPROXIMATELY,
                ),
            )
        except ClusterUnavailable:
            pass  # logged above with its event_id
        self._finish(stream_id, item)

    def _retry_delay(self, attempts: int, retry_after: float | None) -> float:
        return retry_delay_s(
            attempts, retry_after, backoff_s=self.backoff_s, max_backoff_s=self.max_backoff_s
        )

    async def _post(self, doc: EventDoc) -> CallbackOutcome:
        assert self.client is not None
        # The same request and reading of the answer as the local outbox; whether the
        # receiver's whole origin is down (``origin_down``) is not used here: each
        # event backs off on its own.
        return await post_callback(
            self.client,
            doc.callback_url,
            doc.body.encode(),
            event_id=doc.event_id,
            secret=doc.callback_secret,
            sign=self.sign,
            user_agent=self.user_agent,
            timeout_s=self.callback_timeout_s,
            log=logger,
        )
