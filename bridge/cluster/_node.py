"""One process's membership of the cluster: :func:`open_cluster_node`.

Runs, in a nursery it owns (one task in the daemon nursery)::

    cluster node
    ├── redis client       coredis (anyio on Trio)
    ├── registry           lease heartbeat · registry writer · dead-node sweep · listing cache
    ├── events             writer (XADD) · delivery engine · XACK · takeovers of dead nodes
    └── cluster listener   TCP + Unix socket: hand-offs and forwarded admin requests

Redis being down never stops it: every task retries on its own and ``redis_up`` says
how it stands.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from .._errors import ClusterUnavailable, HandoffFailed
from ._events import ClusterEvents, EventDoc
from ._handoff import AdoptFn, ClusterClient, ClusterServer
from ._redis import Keys, RedisLink
from ._registry import (
    Lookup,
    NodeInfo,
    Registry,
    StreamEntry,
    default_node_id,
    host_key,
    now_iso,
    resume_digest,
)
from ._wire import Handoff

__all__ = ["ClusterMetrics", "ClusterNode", "ClusterSettings", "open_cluster_node"]

logger = logging.getLogger("bridge.cluster")


@attrs.frozen(kw_only=True)
class ClusterSettings:
    redis_url: str
    secret: bytes
    node_id: str = ""
    key_prefix: str = "bridge"
    lease_s: float = 5.0
    listen: tuple[str, int] = ("127.0.0.1", 0)
    advertise: str = ""
    socket_dir: str = ""
    ended_ttl_s: float = 3600.0
    # The callback delivery policy ([callbacks]).
    callback_timeout_s: float = 5.0
    backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    give_up_after_s: float = 86400.0
    concurrency: int = 16


class ClusterMetrics:
    """Prometheus series of cluster mode (``bridge_cluster_*``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._collectors: list[Any] = []
        c = self._counter
        self.redis_errors = c("bridge_cluster_redis_errors_total", "Redis calls that failed")
        self.handoffs = c(
            "bridge_cluster_handoffs_total",
            "Connections carried between processes: kind (carrier, app), via (fd, relay), "
            "outcome (sent, adopted, failed, busy)",
            ["kind", "via", "outcome"],
        )
        self.auth_failures = c(
            "bridge_cluster_auth_failures_total",
            "Cluster requests refused for a bad MAC (wrong secret, or not a bridge process)",
        )
        self.lookups_failed = c(
            "bridge_cluster_lookups_failed_total",
            "Registry lookups that failed because Redis was unreachable (the connection was "
            "then handled by the route's orphan policy, or answered 404)",
            ["kind"],
        )
        self.orphans = c(
            "bridge_cluster_orphans_dropped_total",
            "Streams of dead processes ended with a DroppedStream by this process",
        )
        self.takeovers = c(
            "bridge_cluster_takeovers_total", "Dead processes whose events this process took over"
        )
        self.events_lost = c(
            "bridge_cluster_events_lost_total",
            "Events lost: Redis unreachable and the in-memory hold full (each logged with its "
            "event_id)",
        )
        self.events_spilled = c(
            "bridge_cluster_events_spilled_total",
            "Events handed to the local SQLite outbox at stop because Redis was unreachable",
        )
        self.events_delivered = c(
            "bridge_cluster_events_delivered_total", "Events delivered from Redis (2xx)"
        )
        self.events_retried = c(
            "bridge_cluster_events_retried_total", "Callback attempts that failed and were retried"
        )
        self.events_failed = c(
            "bridge_cluster_events_failed_total", "Events given up on", ["cause"]
        )
        self.redis_up = self._gauge("bridge_cluster_redis_up", "1 while Redis answers")
        self.events_held = self._gauge(
            "bridge_cluster_events_held", "Events waiting in memory for their XADD"
        )
        self.registry_dirty = self._gauge(
            "bridge_cluster_registry_pending",
            "Streams whose registration is waiting to be written to Redis",
        )
        self.live_nodes = self._gauge(
            "bridge_cluster_nodes", "Other live processes in the cluster (as last listed)"
        )

    def _counter(self, name: str, doc: str, labels: list[str] | None = None) -> Counter:
        counter = Counter(name, doc, labels or [], registry=self._registry)
        self._collectors.append(counter)
        return counter

    def _gauge(self, name: str, doc: str) -> Gauge:
        gauge = Gauge(name, doc, registry=self._registry)
        self._collectors.append(gauge)
        return gauge

    def unregister(self) -> None:
        for collector in self._collectors:
            with contextlib.suppress(KeyError):
                self._registry.unregister(collector)
        self._collectors.clear()


#: make_dropped(entry, dead node): the DroppedStream of a stream whose process died.
MakeDropped = Callable[[StreamEntry, str], EventDoc]


@attrs.define(eq=False)
class ClusterNode:
    """This process in the cluster. The daemon's hooks call the synchronous methods
    (O(1), safe anywhere) and the async lookups / hand-offs at connection setup."""

    settings: ClusterSettings
    node_id: str
    link: RedisLink
    registry: Registry
    events: ClusterEvents
    server: ClusterServer
    client: ClusterClient
    metrics: ClusterMetrics
    make_dropped: MakeDropped

    # -- registry (synchronous, O(1)) --------------------------------------------------

    def stream_started(
        self,
        stream_id: str,
        *,
        call_id: str,
        route: str,
        listener: str,
        app_url: str = "",
        callback_url: str = "",
        callback_secret: str = "",
    ) -> None:
        self.registry.stream_started(
            StreamEntry(
                stream_id=stream_id,
                call_id=call_id,
                route=route,
                listener=listener,
                app_url=app_url,
                started_at=now_iso(),
                callback_url=callback_url,
                callback_secret=callback_secret,
            )
        )

    def set_resume(self, stream_id: str, route: str, call_id: str, carrier_stream_id: str) -> None:
        self.registry.set_resume(stream_id, resume_digest(route, call_id, carrier_stream_id))

    def stream_ended(self, stream_id: str) -> None:
        self.registry.stream_ended(stream_id)

    def emit(self, doc: EventDoc) -> None:
        self.events.emit(doc)

    # -- lookups and hand-offs (connection setup) ------------------------------------------

    async def lookup_resume(
        self, route: str, call_id: str, carrier_stream_id: str
    ) -> Lookup | None:
        """Raises ``ClusterUnavailable`` (counted)."""
        try:
            return await self.registry.lookup_resume(
                resume_digest(route, call_id, carrier_stream_id)
            )
        except ClusterUnavailable:
            self.metrics.lookups_failed.labels(kind="carrier").inc()
            raise

    async def lookup_stream(self, stream_id: str, *, kind: str = "app") -> Lookup | None:
        try:
            return await self.registry.lookup_stream(stream_id)
        except ClusterUnavailable:
            self.metrics.lookups_failed.labels(kind=kind).inc()
            raise

    async def hand_off(
        self, node: NodeInfo, handoff: Handoff, sock: trio.socket.SocketType, received: bytes
    ) -> str:
        """Carry a connection to ``node``: "fd" or "relay" (after the relay ended).
        Raises ``HandoffFailed`` (counted; ``sock`` stays the caller's)."""
        handoff = Handoff(**{**_fields(handoff), "via": self.node_id})
        unix = self.client.same_host(node)
        try:
            via = await self.client.hand_off(node, handoff, sock, received)
        except HandoffFailed:
            self.metrics.handoffs.labels(
                kind=handoff.kind, via="fd" if unix else "relay", outcome="failed"
            ).inc()
            raise
        self.metrics.handoffs.labels(kind=handoff.kind, via=via, outcome="sent").inc()
        return via

    async def wait_owner_dead(self, owner: str, deadline: float) -> bool:
        """After a failed hand-off: wait (until the Trio time ``deadline``) for the
        owner's lease to run out. True if it did (the owner is dead for the cluster),
        False if it is still alive or Redis cannot tell."""
        while True:
            try:
                info = await self.registry.node_info(owner)
            except ClusterUnavailable:
                return False
            if info is None and self.registry.may_declare_dead():
                return True
            if trio.current_time() >= deadline:
                return False
            await trio.sleep(min(0.25, max(0.0, deadline - trio.current_time())))

    async def drop_orphan(self, lookup: Lookup) -> bool:
        """End a dead owner's stream with its DroppedStream: True if this call did it,
        False if another process already had (exactly once)."""
        entry = lookup.entry
        if entry is None:
            return False
        done = await self.registry.drop_stream(
            lookup.owner, entry, _encode_doc(self.make_dropped(entry, lookup.owner))
        )
        if done:
            self.metrics.orphans.inc()
            logger.warning(
                "stream %s of dead node %s ended with DroppedStream",
                entry.stream_id,
                lookup.owner,
                extra={
                    "stream_id": entry.stream_id,
                    "dead": lookup.owner,
                    "call_id": entry.call_id,
                },
            )
        return done

    async def node_info(self, node: str) -> NodeInfo | None:
        return await self.registry.node_info(node)

    async def rpc(self, node: NodeInfo, op: str, stream_id: str = "") -> Any:
        return await self.client.rpc(node, op, stream_id)

    # -- dead nodes ---------------------------------------------------------------------------

    def _on_takeover(self, dead: str) -> None:
        self.metrics.takeovers.inc()
        assert self._nursery is not None
        self._nursery.start_soon(self._take_over, dead)

    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)

    async def _take_over(self, dead: str) -> None:
        """End the dead node's streams (DroppedStream each, exactly once), then deliver
        its events; keep the takeover claimed meanwhile."""

        async def keep_claim() -> None:
            while True:
                await trio.sleep(self.settings.lease_s)
                with contextlib.suppress(ClusterUnavailable):
                    await self.registry.renew_takeover(dead)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_claim)
            while True:
                try:
                    for entry in await self.registry.dead_streams(dead):
                        lookup = Lookup(entry.stream_id, dead, False, None, entry)
                        await self.drop_orphan(lookup)
                    break
                except ClusterUnavailable:
                    await trio.sleep(1.0)
            done = trio.Event()

            async def source_done(key: str) -> None:
                done.set()

            self.events.take_over_with(dead, source_done)
            await done.wait()
            while True:
                try:
                    await self.registry.forget_node(dead)
                    break
                except ClusterUnavailable:
                    await trio.sleep(1.0)
            logger.info("dead cluster node %s cleaned up", dead, extra={"dead": dead})
            nursery.cancel_scope.cancel()


def _advertise(bound: tuple[str, int], redis_url: str) -> str:
    """Where other processes reach this one when ``advertise`` is not configured: the
    bound address, or, for a wildcard listen (a pod), the local address this process
    uses to reach Redis (no packet is sent: a UDP connect only picks the route)."""
    host, port = bound
    if host not in ("0.0.0.0", "::", ""):
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    parsed = urllib.parse.urlsplit(redis_url)
    target = parsed.hostname or "127.0.0.1"
    try:
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((target, parsed.port or 6379))
            local = str(probe.getsockname()[0])
    except OSError:
        local = socket.gethostbyname(socket.gethostname())
    return f"[{local}]:{port}" if ":" in local else f"{local}:{port}"


def _fields(struct: Any) -> dict[str, Any]:
    return {name: getattr(struct, name) for name in struct.__struct_fields__}


def _encode_doc(doc: EventDoc) -> bytes:
    import msgspec

    return msgspec.json.encode(doc)


@contextlib.asynccontextmanager
async def open_cluster_node(
    settings: ClusterSettings,
    *,
    registry: CollectorRegistry,
    backend: Any,
    adopt: AdoptFn,
    make_dropped: MakeDropped,
    sign: Callable[[bytes, str, int], str],
    spill: Callable[[list[EventDoc]], None] | None = None,
    user_agent: str = "bridge",
) -> AsyncIterator[ClusterNode]:
    """Join the cluster; leave it (lease released, nothing else) on exit.

    ``backend``: the local admin backend (answers forwarded admin requests);
    ``adopt(handoff, sock, received)``: continue a connection carried here;
    ``make_dropped(entry, dead)``: the DroppedStream of a dead node's stream;
    ``sign``: the callback signature (``daemon._events.sign``); ``spill``: where events
    go that are not in Redis when the process stops (the local outbox).
    """
    node_id = settings.node_id or default_node_id()
    metrics = ClusterMetrics(registry)
    link = RedisLink(settings.redis_url)

    def on_change(up: bool) -> None:
        metrics.redis_up.set(1 if up else 0)
        if not up:
            metrics.redis_errors.inc()

    link.on_change = on_change
    keys = Keys(settings.key_prefix)
    unix_path = (
        os.path.join(settings.socket_dir, f"cluster-{node_id}.sock") if settings.socket_dir else ""
    )
    server = ClusterServer(
        node_id=node_id,
        secret=settings.secret,
        adopt=adopt,
        backend=backend,
        metrics=metrics,
        listen=settings.listen,
        unix_path=unix_path,
    )
    client = ClusterClient(
        node_id=node_id,
        secret=settings.secret,
        host=host_key(),
        metrics=metrics,
        use_unix=bool(settings.socket_dir),
    )
    events = ClusterEvents(
        link=link,
        keys=keys,
        node_id=node_id,
        sign=sign,
        metrics=metrics,
        lease_s=settings.lease_s,
        callback_timeout_s=settings.callback_timeout_s,
        backoff_s=settings.backoff_s,
        max_backoff_s=settings.max_backoff_s,
        give_up_after_s=settings.give_up_after_s,
        concurrency=settings.concurrency,
        spill=spill,
        user_agent=user_agent,
    )
    try:
        async with link.client, trio.open_nursery() as nursery:
            bound = await nursery.start(server.serve)
            advertise = settings.advertise or f"{bound[0]}:{bound[1]}"
            info = NodeInfo(
                node=node_id,
                pid=os.getpid(),
                host=client.host,
                advertise=advertise,
                unix=server.unix_path,
                started=now_iso(),
            )
            reg = Registry(
                link=link,
                keys=keys,
                node_id=node_id,
                lease_s=settings.lease_s,
                ended_ttl_s=settings.ended_ttl_s,
                info=info,
            )
            node = ClusterNode(
                settings=settings,
                node_id=node_id,
                link=link,
                registry=reg,
                events=events,
                server=server,
                client=client,
                metrics=metrics,
                make_dropped=make_dropped,
            )
            node._nursery = nursery
            reg.on_takeover = node._on_takeover
            metrics.events_held.set_function(lambda: events.held_count)
            metrics.registry_dirty.set_function(lambda: reg.dirty_count)
            metrics.live_nodes.set_function(lambda: len(reg._cache))
            await nursery.start(events.serve)
            await nursery.start(reg.serve)
            logger.info(
                "joined the cluster as %s (redis %s, lease %gs, advertise %s)",
                node_id,
                "up" if link.up else "DOWN",
                settings.lease_s,
                advertise,
                extra={"node": node_id},
            )
            try:
                yield node
            finally:
                nursery.cancel_scope.cancel()
                # Leave at once rather than a lease later: a survivor takes over
                # whatever events this process did not deliver.
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + 1.0
                    with contextlib.suppress(ClusterUnavailable):
                        await reg.flush()  # streams that ended during the drain
                        await link.call("leave", lambda: link.client.delete([keys.node(node_id)]))
    finally:
        metrics.unregister()
