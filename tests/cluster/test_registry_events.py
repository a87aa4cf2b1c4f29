"""The registry and the event stream against a real Redis: orphans dropped exactly
once, a dead node's events delivered by a survivor, registrations and events surviving
a Redis restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio

from bridge.cluster import ClusterSettings, EventDoc, StreamEntry, open_cluster_node, resume_digest
from bridge.cluster._redis import Keys, RedisLink
from bridge.cluster._registry import Lookup, NodeInfo, Registry
from bridge.daemon._events import StreamEvent, sign, verify_signature
from bridge.daemon._metrics import Metrics

from ..daemon.callback_receiver import open_callback_receiver
from .conftest import SECRET
from .redis_server import running_redis


def _entry(sid: str, callback_url: str = "") -> StreamEntry:
    return StreamEntry(
        stream_id=sid,
        call_id=f"call-{sid}",
        route="r",
        listener="websocket",
        callback_url=callback_url,
        callback_secret="cb-secret" if callback_url else "",
    )


def _doc(sid: str, n: int, url: str, event: str = "StartStream") -> EventDoc:
    ev = (
        StreamEvent.start(stream_id=sid, call_id=f"call-{sid}", app_url="ws://x", callback_url=url)
        if event == "StartStream"
        else StreamEvent.degraded(
            stream_id=sid, call_id=f"call-{sid}", app_url="ws://x", buffer_percent=n, callback_url=url
        )
    )
    return EventDoc(
        event_id=ev.event_id,
        stream_id=sid,
        event=ev.event,
        created_at=time.time(),
        callback_url=url,
        callback_secret="cb-secret",
        body=ev.body().decode(),
    )


def _registry(link: RedisLink, prefix: str, node: str, lease_s: float = 1.0) -> Registry:
    info = NodeInfo(node=node, pid=0, host="h", advertise="127.0.0.1:1")
    return Registry(link, Keys(prefix), node, lease_s, 60.0, info)


class _Backend:
    ready = True

    def live_streams(self) -> list[dict[str, Any]]:
        return []

    async def get_stream(self, stream_id: str) -> None:
        return None

    async def stop_stream(self, stream_id: str) -> bool:
        return False


def _make_dropped(entry: StreamEntry, dead: str) -> EventDoc:
    ev = StreamEvent.dropped(
        stream_id=entry.stream_id,
        call_id=entry.call_id,
        app_url=entry.app_url,
        reason="connection_error",
        error=f"process {dead} lost",
        callback_url=entry.callback_url,
        callback_secret=entry.callback_secret,
    )
    return EventDoc(
        event_id=ev.event_id,
        stream_id=ev.stream_id,
        event=ev.event,
        created_at=time.time(),
        callback_url=entry.callback_url,
        callback_secret=entry.callback_secret,
        body=ev.body().decode(),
    )


async def _noadopt(*args: Any) -> None:
    raise AssertionError("no hand-off expected")


def _settings(redis_url: str, prefix: str, node: str) -> ClusterSettings:
    return ClusterSettings(
        redis_url=redis_url,
        secret=SECRET.encode(),
        node_id=node,
        key_prefix=prefix,
        lease_s=1.0,
        backoff_s=0.05,
        max_backoff_s=0.2,
    )


async def test_an_orphan_is_dropped_exactly_once(redis_url: str, prefix: str) -> None:
    link = RedisLink(redis_url)
    async with link.client:
        dead = _registry(link, prefix, "dead")
        await dead._heartbeat_once()
        dead.stream_started(_entry("s1"))
        await dead.flush()
        survivors = [_registry(link, prefix, f"s{i}") for i in range(3)]
        found = await survivors[0].lookup_stream("s1")
        assert found is not None and found.owner == "dead" and found.node is not None
        await trio.sleep(1.2)  # the dead node's lease runs out
        found = await survivors[0].lookup_stream("s1")
        assert found is not None and found.node is None and found.entry is not None
        results: list[bool] = []

        async def claim(reg: Registry) -> None:
            assert found is not None and found.entry is not None
            results.append(await reg.drop_stream("dead", found.entry, b'{"x": 1}'))

        async with trio.open_nursery() as nursery:
            for reg in survivors * 3:
                nursery.start_soon(claim, reg)
        assert sorted(results) == [False] * 8 + [True]
        entries = await link.client.xrange(Keys(prefix).events("dead"))
        assert len(entries) == 1
        after = await survivors[1].lookup_stream("s1")
        assert after is not None and after.ended and after.owner == "dead"


async def test_a_dead_nodes_events_are_delivered_by_a_survivor(
    redis_url: str, prefix: str
) -> None:
    keys = Keys(prefix)
    with trio.fail_after(30):
        async with open_callback_receiver() as rx:
            link = RedisLink(redis_url)
            async with link.client:
                dead = _registry(link, prefix, "dead")
                await dead._heartbeat_once()
                dead.stream_started(_entry("live-1", rx.url))
                await dead.flush()
                # Its events: 3 read by the dead consumer and never acknowledged (it died
                # delivering them), 3 it never read.
                from bridge.cluster._events import GROUP

                await link.client.xgroup_create(keys.events("dead"), GROUP, identifier="0", mkstream=True)
                docs = [_doc("live-1", 0, rx.url)] + [
                    _doc("live-1", 10 * n, rx.url, "DegradedStream") for n in (1, 2)
                ] + [_doc("other", 0, rx.url)] + [
                    _doc("other", 10 * n, rx.url, "DegradedStream") for n in (1, 2)
                ]
                import msgspec

                for doc in docs[:3]:
                    await link.client.xadd(keys.events("dead"), {"d": msgspec.json.encode(doc)})
                await link.client.xreadgroup(GROUP, "dead", streams={keys.events("dead"): ">"})
                for doc in docs[3:]:
                    await link.client.xadd(keys.events("dead"), {"d": msgspec.json.encode(doc)})
            metrics = Metrics()
            async with open_cluster_node(
                _settings(redis_url, prefix, "survivor"),
                registry=metrics.registry,
                backend=_Backend(),
                adopt=_noadopt,
                make_dropped=_make_dropped,
                sign=sign,
            ) as node:
                # Dead after its lease (1 s), declared after two leases of contact (2 s).
                await rx.wait_for(lambda rx: len(rx.unique_ids()) >= 7)
                await node.events.wait_idle()
                with trio.fail_after(10):
                    while await node.link.client.exists([keys.events("dead")]):
                        await trio.sleep(0.05)
                assert not await node.link.client.sismember(keys.nodes, "dead")
                reg = metrics.registry
                assert reg.get_sample_value("bridge_cluster_takeovers_total") == 1
                assert reg.get_sample_value("bridge_cluster_orphans_dropped_total") == 1
    bodies = rx.delivered_bodies()
    assert {b["event_id"] for b in bodies} >= {d.event_id for d in docs}
    dropped = [b for b in bodies if b["event"] == "DroppedStream"]
    assert [b["stream_id"] for b in dropped] == ["live-1"]
    # Per stream, in order: the dropped stream's own events first, the drop last.
    order = [b["event_id"] for b in bodies if b["stream_id"] == "live-1"]
    assert order[:3] == [d.event_id for d in docs[:3]]
    assert order[-1] == dropped[0]["event_id"]
    for req in rx.requests:
        assert verify_signature(req.headers["x-bridge-signature"], req.body, "cb-secret")


async def test_redis_restart_registrations_come_back_and_held_events_are_delivered(
    tmp_path: Path,
) -> None:
    with running_redis() as redis, trio.fail_after(40):
        async with open_callback_receiver() as rx:
            metrics = Metrics()
            async with open_cluster_node(
                _settings(redis.url, "rr", "n1"),
                registry=metrics.registry,
                backend=_Backend(),
                adopt=_noadopt,
                make_dropped=_make_dropped,
                sign=sign,
            ) as node:
                node.stream_started("s1", call_id="c1", route="r", listener="websocket")
                node.set_resume("s1", "r", "c1", "MZ1")
                while node.registry.dirty_count:
                    await trio.sleep(0.01)
                assert (await node.lookup_resume("r", "c1", "MZ1")) is not None
                node.emit(_doc("s1", 0, rx.url))
                await rx.wait_for(lambda rx: len(rx.unique_ids()) == 1)
                # Redis dies and comes back empty (no persistence): events wait in memory.
                redis.kill()
                held = [_doc("s1", 10 * n, rx.url, "DegradedStream") for n in (1, 2, 3)]
                for doc in held:
                    node.emit(doc)
                await trio.sleep(1.5)
                assert node.events.held_count == 3
                assert metrics.registry.get_sample_value("bridge_cluster_redis_up") == 0
                lookup_failed = False
                try:
                    await node.lookup_resume("r", "c1", "MZ1")
                except Exception:
                    lookup_failed = True
                assert lookup_failed
                assert (
                    metrics.registry.get_sample_value(
                        "bridge_cluster_lookups_failed_total", {"kind": "carrier"}
                    )
                    == 1
                )
                redis.start()
                await rx.wait_for(lambda rx: len(rx.unique_ids()) == 4)
                # The lease was gone: the heartbeat registered everything again.
                with trio.fail_after(5):
                    while True:
                        found = await node.registry.lookup_resume(resume_digest("r", "c1", "MZ1"))
                        if found is not None:
                            break
                        await trio.sleep(0.1)
                assert isinstance(found, Lookup) and found.owner == "n1"
    order = [b["event_id"] for b in rx.delivered_bodies()]
    assert order[1:] == [d.event_id for d in held]  # in order, after the outage
