"""The stream registry: which process owns which stream, its resume key, and who is
alive.

Every process holds a **lease** (``P:node:<node>``, PX = ``lease``) renewed every third
of it; a process that dies stops renewing and is dead ``lease`` later. Its streams are
listed in ``P:streams:<node>`` (no TTL of their own: they live as long as their node's
lease, so nothing per stream is ever refreshed). ``P:owner:<stream>`` and
``P:resume:<digest>`` find a stream's owner from a stream id (an app connecting in) or
from a carrier's resume key (a re-dial).

**Nothing here runs on the media path.** ``stream_started``/``stream_ended``/
``set_resume`` are O(1): they mark the stream dirty and wake the writer task, which
writes what changed in one pipeline. While Redis is down the dirty set simply grows and
is written when it is back. If the node's lease is gone when it renews it (Redis
restarted without persistence, or this process was cut off from it for longer than the
lease) every live stream is written again: registrations come back by themselves.

**Dead nodes.** Every node sweeps ``P:nodes`` once per lease for nodes whose lease has
expired, but only after its own link to Redis has been up for two leases (after a Redis
restart every live node gets the time to renew before anyone is declared dead). The
first survivor to ``SET P:takeover:<node> NX`` ends each of the dead node's streams
with a ``DroppedStream`` (``drop_stream``: a Lua script that claims ``P:dropped:<id>``
with ``SET NX`` first, so a stream is dropped exactly once however many survivors or
re-dials race for it) and then delivers the dead node's events (``_events``).

A carrier re-dial that finds its stream's owner dead calls the same ``drop_stream``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs
import coredis
import msgspec
import trio

from .._errors import ClusterUnavailable
from ._redis import Keys, RedisLink

__all__ = ["Lookup", "NodeInfo", "Registry", "StreamEntry", "host_key", "resume_digest"]

logger = logging.getLogger("bridge.cluster")

_json = msgspec.json.Encoder().encode


class NodeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a node's lease says about it."""

    node: str
    pid: int
    #: Processes with the same host key may pass descriptors (same kernel).
    host: str
    #: "host:port" of the internal cluster listener.
    advertise: str
    #: The Unix socket for descriptor passing ("" = none).
    unix: str = ""
    started: str = ""


class StreamEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One live stream in the registry: enough to list it, route to it, and end it
    with a DroppedStream if its process dies."""

    stream_id: str
    call_id: str
    route: str
    listener: str
    app_url: str = ""
    started_at: str = ""
    #: sha256 hex of the carrier resume key ("" = not resumable).
    resume: str = ""
    callback_url: str = ""
    callback_secret: str = ""


@attrs.frozen(slots=True)
class Lookup:
    """Where a stream lives, as Redis sees it now."""

    stream_id: str
    owner: str  # "" = unknown
    ended: bool
    node: NodeInfo | None  # None = the owner's lease has expired (or never was)
    entry: StreamEntry | None


_decode_node = msgspec.json.Decoder(NodeInfo).decode
_decode_entry = msgspec.json.Decoder(StreamEntry).decode


def resume_digest(route: str, call_id: str, carrier_stream_id: str) -> str:
    """The resume key (route, carrier call id, carrier stream id) as a bounded Redis key
    part: carriers' ids are any strings of any length."""
    return hashlib.sha256(_json([route, call_id, carrier_stream_id])).hexdigest()


def host_key() -> str:
    """The same on every process of one kernel: its boot id (containers included), so
    that a descriptor is only ever offered to a process that can receive it."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return socket.gethostname()


_LOOKUP = """
local prefix = ARGV[1]
local sid = ARGV[2]
if KEYS[1] ~= '' then
  sid = redis.call('GET', KEYS[1])
  if not sid then return false end
end
local owner = redis.call('GET', prefix .. ':owner:' .. sid)
if not owner then return {sid, '', '', ''} end
if string.sub(owner, 1, 6) == 'ended:' then return {sid, owner, '', ''} end
local lease = redis.call('GET', prefix .. ':node:' .. owner) or ''
local entry = redis.call('HGET', prefix .. ':streams:' .. owner, sid) or ''
return {sid, owner, lease, entry}
"""

# KEYS: dropped, owner, streams hash, events stream, ver, resume ("" key allowed)
# ARGV: stream id, claimer, dead node, ended ttl s, event document
_DROP = """
if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', 86400) then
  redis.call('XADD', KEYS[4], '*', 'd', ARGV[5])
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('SET', KEYS[2], 'ended:' .. ARGV[3], 'EX', ARGV[4])
  if KEYS[6] ~= '' then redis.call('DEL', KEYS[6]) end
  redis.call('INCR', KEYS[5])
  return 1
end
return 0
"""


@attrs.define(eq=False)
class Registry:
    link: RedisLink
    keys: Keys
    node_id: str
    lease_s: float
    ended_ttl_s: float
    info: NodeInfo
    #: Called with (dead node id) by the sweep when this node won its takeover.
    on_takeover: Callable[[str], None] | None = None
    #: Called on every registry flush failure/success, for metrics.
    local: dict[str, StreamEntry] = attrs.field(factory=dict)
    _ended: dict[str, StreamEntry] = attrs.field(factory=dict)
    _dirty: set[str] = attrs.field(factory=set)
    _wake: trio.Event = attrs.field(factory=trio.Event)
    _registered: bool = attrs.field(default=False)
    #: Remote streams by node, for the sync cluster-wide listing.
    _cache: dict[str, list[dict[str, Any]]] = attrs.field(factory=dict)
    _cache_ver: dict[str, bytes | None] = attrs.field(factory=dict)
    _lookup: Any = attrs.field(default=None)
    _drop: Any = attrs.field(default=None)
    taken_over: set[str] = attrs.field(factory=set)
    #: Streams of this node that a survivor dropped while this node was cut off.
    lost_while_cut_off: int = 0

    def __attrs_post_init__(self) -> None:
        self._lookup = self.link.script(_LOOKUP)
        self._drop = self.link.script(_DROP)

    # -- media-path-safe, synchronous ---------------------------------------------------

    def stream_started(self, entry: StreamEntry) -> None:
        self.local[entry.stream_id] = entry
        self._ended.pop(entry.stream_id, None)
        self._dirty.add(entry.stream_id)
        self._wake.set()

    def set_resume(self, stream_id: str, digest: str) -> None:
        entry = self.local.get(stream_id)
        if entry is None:
            return
        self.local[stream_id] = msgspec.structs.replace(entry, resume=digest)
        self._dirty.add(stream_id)
        self._wake.set()

    def stream_ended(self, stream_id: str) -> None:
        entry = self.local.pop(stream_id, None)
        if entry is None:
            return
        self._ended[stream_id] = entry
        self._dirty.add(stream_id)
        self._wake.set()

    @property
    def dirty_count(self) -> int:
        return len(self._dirty)

    # -- tasks --------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await self._heartbeat_once()
            nursery.start_soon(self._serve_heartbeat)
            nursery.start_soon(self._serve_writer)
            nursery.start_soon(self._serve_sweep)
            nursery.start_soon(self._serve_cache)
            task_status.started()

    async def _serve_heartbeat(self) -> None:
        while True:
            await trio.sleep(self.lease_s / 3)
            await self._heartbeat_once()

    async def _heartbeat_once(self) -> None:
        client = self.link.client
        doc = _json(self.info)
        px = int(self.lease_s * 1000)
        try:
            renewed = await self.link.call(
                "renew lease",
                lambda: client.set(
                    self.keys.node(self.node_id), doc, px=px, condition=coredis.PureToken.XX
                ),
            )
            if renewed:
                return

            # No lease: first start, Redis lost its data, or we were cut off for longer
            # than the lease (then a survivor may have declared us dead).
            async def register() -> bytes | None:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.set(self.keys.node(self.node_id), doc, px=px)
                    pipe.sadd(self.keys.nodes, [self.node_id])
                    taken = pipe.get(self.keys.takeover(self.node_id))
                return await taken

            claimer = await self.link.call("register", register)
        except ClusterUnavailable:
            return
        if self._registered:
            logger.warning(
                "cluster lease was gone (Redis restarted, or this process was cut off for "
                "more than %gs): registering again with %d live streams",
                self.lease_s,
                len(self.local),
                extra={"node": self.node_id},
            )
            if claimer is not None:
                logger.error(
                    "survivor %s declared this process dead while it was cut off from Redis; "
                    "its streams were reported dropped, though they kept running here",
                    claimer.decode(errors="replace"),
                    extra={"node": self.node_id},
                )
        self._registered = True
        self._dirty.update(self.local)
        self._wake.set()

    async def _serve_writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if not self._dirty:
                continue
            try:
                await self.flush()
            except ClusterUnavailable:
                # Kept dirty; the heartbeat's next success (or a new change) retries.
                await trio.sleep(min(1.0, self.lease_s / 3))
                self._wake.set()

    async def flush(self) -> None:
        """Write every dirty stream now (raises ``ClusterUnavailable``)."""
        if not self._dirty:
            return
        # Taken whole: a change made while the write is under way dirties it again.
        taken, self._dirty = self._dirty, set()
        dirty = list(taken)
        client = self.link.client
        ttl = max(1, int(self.ended_ttl_s))

        async def write() -> None:
            async with client.pipeline(transaction=False) as pipe:
                self._queue_writes(pipe, dirty, ttl)

        try:
            await self.link.call("registry write", write)
        except BaseException:
            self._dirty |= taken
            raise
        for sid in dirty:
            if sid not in self._dirty:
                self._ended.pop(sid, None)

    def _queue_writes(self, pipe: Any, dirty: list[str], ttl: int) -> None:
        k = self.keys
        for sid in dirty:
            live = self.local.get(sid)
            if live is not None:
                pipe.hset(k.streams(self.node_id), {sid: _json(live)})
                pipe.set(k.owner(sid), self.node_id)
                if live.resume:
                    pipe.set(k.resume(live.resume), sid)
            else:
                ended = self._ended.get(sid)
                pipe.hdel(k.streams(self.node_id), [sid])
                pipe.set(k.owner(sid), f"ended:{self.node_id}", ex=ttl)
                if ended is not None and ended.resume:
                    pipe.delete([k.resume(ended.resume)])
        pipe.incr(k.ver(self.node_id))

    # -- lookups ---------------------------------------------------------------------

    async def lookup_resume(self, digest: str) -> Lookup | None:
        return await self._lookup_by(self.keys.resume(digest), "")

    async def lookup_stream(self, stream_id: str) -> Lookup | None:
        return await self._lookup_by("", stream_id)

    async def _lookup_by(self, key: str, stream_id: str) -> Lookup | None:
        script = self._lookup
        found = await self.link.call(
            "lookup", lambda: script(keys=[key], args=[self.keys.prefix, stream_id])
        )
        if not found:
            return None
        sid, owner, lease, entry = (bytes(x) for x in found)
        owner_s = owner.decode()
        ended = owner_s.startswith("ended:")
        return Lookup(
            stream_id=sid.decode(),
            owner=owner_s[6:] if ended else owner_s,
            ended=ended,
            node=_decode_node(lease) if lease else None,
            entry=_decode_entry(entry) if entry else None,
        )

    async def node_info(self, node: str) -> NodeInfo | None:
        client = self.link.client
        raw = await self.link.call("node", lambda: client.get(self.keys.node(node)))
        return _decode_node(raw) if raw else None

    # -- dead nodes ---------------------------------------------------------------------

    def may_declare_dead(self) -> bool:
        """Only after two leases of uninterrupted contact with Redis: every live node has
        had the time to renew its lease since Redis came back."""
        return self.link.up_for() >= 2 * self.lease_s

    async def drop_stream(self, dead: str, entry: StreamEntry, event: bytes) -> bool:
        """End ``entry`` of the dead node ``dead`` with ``event`` (a DroppedStream document
        for the dead node's event stream). True if this call did it; False if someone
        already had (exactly once, whoever races)."""
        k = self.keys
        script = self._drop
        keys = [
            k.dropped(entry.stream_id),
            k.owner(entry.stream_id),
            k.streams(dead),
            k.events(dead),
            k.ver(dead),
            k.resume(entry.resume) if entry.resume else "",
        ]
        args = [entry.stream_id, self.node_id, dead, str(max(1, int(self.ended_ttl_s))), event]
        done = await self.link.call("drop stream", lambda: script(keys=keys, args=args))
        return bool(done)

    async def dead_streams(self, dead: str) -> list[StreamEntry]:
        client = self.link.client
        raw = await self.link.call("dead streams", lambda: client.hgetall(self.keys.streams(dead)))
        return [_decode_entry(v) for v in raw.values()]

    async def claim_takeover(self, dead: str) -> bool:
        client = self.link.client
        px = int(3 * self.lease_s * 1000)
        won = await self.link.call(
            "takeover",
            lambda: client.set(
                self.keys.takeover(dead), self.node_id, px=px, condition=coredis.PureToken.NX
            ),
        )
        return bool(won)

    async def renew_takeover(self, dead: str) -> None:
        client = self.link.client
        px = int(3 * self.lease_s * 1000)
        await self.link.call(
            "renew takeover", lambda: client.set(self.keys.takeover(dead), self.node_id, px=px)
        )

    async def forget_node(self, dead: str) -> None:
        """A dead node's cleanup is complete: remove what is left of it."""
        client = self.link.client
        k = self.keys

        async def forget() -> None:
            async with client.pipeline(transaction=False) as pipe:
                pipe.srem(k.nodes, [dead])
                pipe.delete([k.streams(dead), k.ver(dead), k.events(dead), k.takeover(dead)])

        await self.link.call("forget node", forget)

    async def _serve_sweep(self) -> None:
        while True:
            await trio.sleep(self.lease_s)
            if not self.may_declare_dead():
                continue
            try:
                await self.sweep()
            except ClusterUnavailable:
                continue

    async def sweep(self) -> list[str]:
        """Nodes whose lease expired and whose takeover this node won."""
        client = self.link.client
        members = await self.link.call("nodes", lambda: client.smembers(self.keys.nodes))
        others = sorted(m.decode() for m in members if m.decode() != self.node_id)
        if not others:
            return []
        alive = await self._leases(others)
        won: list[str] = []
        for node, present in zip(others, alive, strict=True):
            if present or node in self.taken_over:
                continue
            if await self.claim_takeover(node):
                logger.warning(
                    "cluster node %s is dead (its lease expired); taking over its streams "
                    "and events",
                    node,
                    extra={"node": self.node_id, "dead": node},
                )
                self.taken_over.add(node)
                won.append(node)
                if self.on_takeover is not None:
                    self.on_takeover(node)
        return won

    async def _leases(self, nodes: list[str]) -> list[bool]:
        client = self.link.client
        k = self.keys

        async def check() -> list[bool]:
            async with client.pipeline(transaction=False) as pipe:
                checks = [pipe.exists([k.node(n)]) for n in nodes]
            return [bool(await c) for c in checks]

        return await self.link.call("leases", check)

    # -- the cluster-wide listing ----------------------------------------------------------

    def remote_streams(self) -> list[dict[str, Any]]:
        """Every other live node's streams, as last read (at most about a second old)."""
        out: list[dict[str, Any]] = []
        for streams in self._cache.values():
            out.extend(streams)
        return out

    async def refresh_cache(self) -> None:
        client = self.link.client
        k = self.keys
        members = await self.link.call("nodes", lambda: client.smembers(k.nodes))
        others = sorted(m.decode() for m in members if m.decode() != self.node_id)
        if not others:
            self._cache.clear()
            self._cache_ver.clear()
            return
        ver_list = await self.link.call("versions", lambda: client.mget([k.ver(n) for n in others]))
        alive = await self._leases(others)
        keep: set[str] = set()
        for node, ver, present in zip(others, ver_list, alive, strict=True):
            if not present:
                continue
            keep.add(node)
            if node in self._cache and self._cache_ver.get(node) == ver:
                continue
            raw = await self.link.call(
                "streams", functools.partial(client.hgetall, k.streams(node))
            )
            entries = []
            for value in raw.values():
                e = _decode_entry(value)
                entries.append(
                    {
                        "stream_id": e.stream_id,
                        "call_id": e.call_id,
                        "route": e.route,
                        "listener": e.listener,
                        "app_url": e.app_url,
                        "started_at": e.started_at,
                        "state": "live",
                        "owner": node,
                    }
                )
            self._cache[node] = entries
            self._cache_ver[node] = ver
        for node in list(self._cache):
            if node not in keep:
                del self._cache[node]
                self._cache_ver.pop(node, None)

    async def _serve_cache(self) -> None:
        while True:
            try:
                await self.refresh_cache()
            except ClusterUnavailable:
                pass
            await trio.sleep(1.0)


def default_node_id() -> str:
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
