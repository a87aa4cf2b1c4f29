"""The durable outbox against a real HTTP receiver on loopback."""

from __future__ import annotations

import gc
import hashlib
import hmac
import json
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import pytest
import trio
from prometheus_client import CollectorRegistry

from bridge import OutboxError, __version__
from bridge.daemon._events import (
    EventSource,
    StreamEvent,
    StreamRecord,
    log_entry,
    verify_signature,
)
from bridge.daemon._outbox import EventStore, open_event_store

from .callback_receiver import CallbackReceiver, ReceivedRequest, open_callback_receiver

HERE = Path(__file__).parent
SCHEMA = json.loads((HERE.parents[1] / "docs" / "callback.schema.json").read_text())
SCHEMA_EVENTS = set(SCHEMA["properties"]["event"]["enum"])
_RELAXED = json.loads(json.dumps(SCHEMA))
_RELAXED["properties"]["event"] = {"type": "string"}  # names outside the enum: see test_events.py

T = TypeVar("T")
SECRET = "whsec-test"
FAST: dict[str, Any] = {"backoff_s": 0.02, "max_backoff_s": 0.2, "callback_timeout_s": 2.0}


def validate_body(body: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(body)
    schema = SCHEMA if data["event"] in SCHEMA_EVENTS else _RELAXED
    jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)
    return data


def lifecycle(src: EventSource) -> list[StreamEvent]:
    return [
        src.start(),
        src.degraded(buffer_percent=30),
        src.degraded(buffer_percent=60),
        src.recovered(buffer_percent=0),
        src.stop(reason="call_hangup", duration_s=3.5),
    ]


def interleave(per_stream: Iterable[list[StreamEvent]]) -> list[StreamEvent]:
    lists = list(per_stream)
    out: list[StreamEvent] = []
    for i in range(max(len(x) for x in lists)):
        out.extend(x[i] for x in lists if i < len(x))
    return out


def by_stream(ids_in_order: Iterable[str], events: Iterable[StreamEvent]) -> dict[str, list[str]]:
    """Group event ids by stream, keeping the first arrival of each (dedupe)."""
    stream_of = {e.event_id: e.stream_id for e in events}
    seen: set[str] = set()
    out: dict[str, list[str]] = defaultdict(list)
    for eid in ids_in_order:
        if eid in seen:
            continue
        seen.add(eid)
        out[stream_of[eid]].append(eid)
    return dict(out)


def expected_order(events: Iterable[StreamEvent]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for e in events:
        out[e.stream_id].append(e.event_id)
    return dict(out)


Snapshot = dict[tuple[str, frozenset[tuple[str, str]]], float]


def snapshot(registry: CollectorRegistry) -> Snapshot:
    """Every sample now. Taken inside the store's context: closing unregisters them."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
    }


def sample(source: CollectorRegistry | Snapshot, name: str, **labels: str) -> float:
    snap = snapshot(source) if isinstance(source, CollectorRegistry) else source
    return snap.get((name, frozenset(labels.items())), 0.0)


async def until(query: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> None:
    """Poll store state that has no event to wait on. Wrap in ``trio.fail_after``."""
    while True:
        if done(await query()):
            return
        await trio.sleep(0.01)


@pytest.fixture
async def rx() -> AsyncIterator[CallbackReceiver]:
    async with open_callback_receiver() as receiver:
        yield receiver


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "bridge.sqlite3")


# --------------------------------------------------------------------------- happy path


async def test_delivers_signed_schema_valid_events_in_order_per_stream(
    rx: CallbackReceiver, db: str
) -> None:
    # Random-ish receiver latency so concurrent streams overtake each other on the
    # wire; per stream the order must hold regardless.
    rx.latency = lambda req: (hash(req.event_id) % 7) / 1000
    registry = CollectorRegistry()
    sources = [
        EventSource(
            stream_id=f"st-{i}",
            call_id=f"call-{i}",
            app_url="wss://app/ws",
            route="agents",
            callback_url=rx.url,
            callback_secret=SECRET if i != 0 else "",  # stream 0: unsigned
        )
        for i in range(6)
    ]
    events = interleave(lifecycle(s) for s in sources)
    with trio.fail_after(10):
        async with open_event_store(db, registry=registry, concurrency=4, **FAST) as store:
            for ev in events:
                store.emit(ev)
            await store.wait_delivered()
            rows = await store.list_events(limit=1000)
            metrics = snapshot(registry)

    assert len(rx.requests) == len(events)  # no retries were needed
    assert by_stream(rx.event_ids(), events) == expected_order(events)
    streams_seen_interleaved = [json.loads(r.body)["stream_id"] for r in rx.requests]
    assert streams_seen_interleaved != sorted(streams_seen_interleaved)  # really concurrent

    for req in rx.requests:
        data = validate_body(req.body)
        assert req.method == "POST" and req.path == "/events"
        assert req.headers["content-type"] == "application/json"
        assert req.headers["user-agent"] == f"bridge/{__version__}"
        assert req.headers["x-bridge-event-id"] == data["event_id"]
        if data["stream_id"] == "st-0":
            assert "x-bridge-signature" not in req.headers
            continue
        header = req.headers["x-bridge-signature"]
        assert verify_signature(header, req.body, SECRET)
        # ...and independently, the way a receiver in another language would.
        parts = dict(p.split("=", 1) for p in header.split(","))
        mac = hmac.new(SECRET.encode(), parts["t"].encode() + b"." + req.body, hashlib.sha256)
        assert hmac.compare_digest(mac.hexdigest(), parts["v1"])
        assert abs(int(parts["t"]) - time.time()) < 60

    assert {r["status"] for r in rows} == {"delivered"}
    assert all(r["attempts"] == 1 and r["delivered_at"] for r in rows)
    assert sample(metrics, "bridge_events_emitted_total", event="DegradedStream") == 12
    assert sample(metrics, "bridge_events_delivered_total", event="StartStream") == 6
    assert sample(metrics, "bridge_events_delivered_total", event="RecoveredStream") == 6
    assert sample(metrics, "bridge_events_retried_total") == 0


# --------------------------------------------------------------------------- outages


async def test_receiver_down_then_up_delivers_everything_at_least_once(db: str) -> None:
    registry = CollectorRegistry()
    async with open_callback_receiver(up=False) as rx:
        sources = [
            EventSource(stream_id=f"s{i}", call_id=f"c{i}", app_url="ws://a", callback_url=rx.url)
            for i in range(5)
        ]
        per_stream = [lifecycle(s) for s in sources]
        emitted: list[StreamEvent] = []
        with trio.fail_after(15):
            async with open_event_store(
                db, registry=registry, **{**FAST, "callback_timeout_s": 0.25}
            ) as store:
                # First half while the receiver is down (connection refused).
                for ev in interleave(p[:3] for p in per_stream):
                    store.emit(ev)
                    emitted.append(ev)
                    await trio.sleep(0.005)
                await trio.sleep(0.4)
                assert rx.requests == []
                assert store.pending_count == 15
                await store.flush()
                assert sample(registry, "bridge_events_pending") == 15
                assert sample(registry, "bridge_outbox_depth") == 15
                assert sample(registry, "bridge_outbox_oldest_pending_age_seconds") > 0.2
                assert sample(registry, "bridge_events_retried_total") >= 5
                pending = await store.list_events(status="pending")
                assert len(pending) == 15
                assert any("ConnectError" in (r["last_error"] or "") for r in pending)

                # Up again, but the first answers come after the sender has given up
                # (processed, yet unacknowledged): those events will arrive twice.
                slowed: set[str] = set()

                def slow_first(req: ReceivedRequest) -> float:
                    if req.event_id in slowed or len(slowed) >= 3:
                        return 0.0
                    slowed.add(req.event_id)
                    return 0.5

                rx.latency = slow_first
                await rx.up()
                for ev in interleave(p[3:] for p in per_stream):
                    store.emit(ev)
                    emitted.append(ev)
                await store.wait_delivered()
                metrics = snapshot(registry)

        assert len(rx.event_ids()) > len(emitted)  # duplicates happened...
        assert rx.unique_ids() == {e.event_id for e in emitted}  # ...nothing lost
        assert by_stream(rx.event_ids(), emitted) == expected_order(emitted)
        for body in rx.delivered_bodies():
            validate_body(json.dumps(body).encode())
        assert sample(metrics, "bridge_events_pending") == 0
        assert sample(metrics, "bridge_outbox_depth") == 0


async def test_a_down_receiver_gets_one_probe_at_a_time(db: str) -> None:
    """40 streams with a backlog for a dead receiver do not each retry on their own:
    one probe at a time tests it, and its first success releases every stream."""
    registry = CollectorRegistry()
    async with open_callback_receiver(up=False) as rx:
        sources = [
            EventSource(stream_id=f"s{i}", call_id="c", app_url="ws://a", callback_url=rx.url)
            for i in range(40)
        ]
        evs = interleave([s.start(), s.stop(reason="call_hangup", duration_s=1)] for s in sources)
        with trio.fail_after(10):
            async with open_event_store(
                db, registry=registry, backoff_s=0.05, max_backoff_s=0.3, concurrency=8
            ) as store:
                for ev in evs:
                    store.emit(ev)
                await trio.sleep(1.0)
                failed_attempts = sample(registry, "bridge_events_retried_total")
                await rx.up()
                up_at = trio.current_time()
                await store.wait_delivered()
                recovery_s = trio.current_time() - up_at
        print(f"\n40 streams, 1 s outage: {failed_attempts:.0f} failed attempts, "
              f"all delivered {recovery_s:.2f} s after the receiver came back")  # fmt: skip
        # Per-stream retries would be ~40 x 8; gated it is the first wave (<= 8 in
        # flight) plus about one probe per backoff period.
        assert failed_attempts < 40
        assert recovery_s < 0.3 + 1.0  # one probe delay at most, then everything
        assert by_stream(rx.event_ids(), evs) == expected_order(evs)


async def test_a_hanging_receiver_does_not_hold_up_another(db: str) -> None:
    async with open_callback_receiver() as hanging, open_callback_receiver() as healthy:
        hanging.respond("hang")
        stuck = [
            StreamEvent.start(
                stream_id=f"h{i}", call_id="c", app_url="ws://a", callback_url=hanging.url
            )
            for i in range(10)
        ]
        fine = interleave(
            lifecycle(
                EventSource(
                    stream_id=f"ok{i}", call_id="c", app_url="ws://a", callback_url=healthy.url
                )
            )
            for i in range(6)
        )
        with trio.fail_after(10):
            async with open_event_store(
                db, registry=CollectorRegistry(), callback_timeout_s=0.5, backoff_s=0.05,
                max_backoff_s=0.5, concurrency=4,
            ) as store:  # fmt: skip
                started = trio.current_time()
                for ev in [*stuck, *fine]:
                    store.emit(ev)
                await healthy.wait_for(lambda r: r.unique_ids() >= {e.event_id for e in fine})
                took = trio.current_time() - started

                async def pending() -> int:
                    return store.pending_count

                await until(pending, lambda n: n == len(stuck))  # only the hung ones left
        # The first wave (4 workers) waits out one timeout; after that the hanging
        # receiver gets one probe at a time and the workers serve the healthy one.
        assert took < 0.5 + 1.0
        assert len(hanging.requests) <= 4 + 3
        assert by_stream(healthy.event_ids(), fine) == expected_order(fine)


async def test_500_and_429_retry_400_fails_and_later_events_still_go(
    rx: CallbackReceiver, db: str
) -> None:
    registry = CollectorRegistry()
    a, b, c = (
        lifecycle(EventSource(stream_id=s, call_id=s, app_url="ws://a", callback_url=rx.url))
        for s in ("A", "B", "C")
    )
    answers: dict[str, list[Any]] = {
        a[0].event_id: [500, 500],  # then 200
        b[0].event_id: [(429, {"Retry-After": "0.1"})],
        c[1].event_id: [400, 400, 400],  # permanent: must be tried once only
    }
    arrivals: dict[str, list[float]] = defaultdict(list)

    def responder(req: ReceivedRequest) -> Any:
        arrivals[req.event_id].append(req.received_at)
        script = answers.get(req.event_id)
        return script.pop(0) if script else 200

    rx.responder = responder
    with trio.fail_after(10):
        async with open_event_store(
            db, registry=registry, backoff_s=0.01, max_backoff_s=0.5
        ) as store:
            for ev in interleave([a, b, c]):
                store.emit(ev)
            await store.wait_delivered()
            failed = await store.list_events(status="failed")
            a_rows = {r["event_id"]: r for r in await store.list_events(stream_id="A")}
            metrics = snapshot(registry)

    assert len(arrivals[a[0].event_id]) == 3
    assert a_rows[a[0].event_id]["attempts"] == 3 and a_rows[a[0].event_id]["status"] == "delivered"
    # Retry-After honoured: the retry waited (at least about) the 0.1 s asked for.
    first, second = arrivals[b[0].event_id]
    assert second - first >= 0.09
    # 400: tried once, kept as failed, visible through the API, with the cause.
    assert len(arrivals[c[1].event_id]) == 1
    assert [r["event_id"] for r in failed] == [c[1].event_id]
    assert failed[0]["failed_cause"] == "permanent"
    assert failed[0]["last_error"].startswith("HTTP 400")
    assert failed[0]["attempts"] == 1
    # The rest of stream C still went out, in order.
    delivered = by_stream(rx.event_ids(), a + b + c)
    assert delivered["C"] == [e.event_id for e in c if e is not c[1]]
    assert delivered["A"] == [e.event_id for e in a] and delivered["B"] == [e.event_id for e in b]
    assert sample(metrics, "bridge_events_retried_total") == 3
    assert sample(metrics, "bridge_events_failed_total", cause="permanent") == 1
    assert sample(metrics, "bridge_events_failed_total", cause="expired") == 0


async def test_events_past_give_up_age_fail_as_expired(rx: CallbackReceiver, db: str) -> None:
    registry = CollectorRegistry()
    rx.respond(503)
    old = StreamEvent.start(
        stream_id="old", call_id="c", app_url="ws://a", callback_url=rx.url,
        timestamp=datetime.now(UTC) - timedelta(seconds=10),
    )  # fmt: skip
    with trio.fail_after(10):
        async with open_event_store(
            db, registry=registry, backoff_s=0.02, max_backoff_s=0.05, give_up_after_s=0.5
        ) as store:
            started = trio.current_time()
            young = StreamEvent.start(
                stream_id="young", call_id="c", app_url="ws://a", callback_url=rx.url
            )
            store.emit(old)
            store.emit(young)
            await store.wait_delivered()
            elapsed = trio.current_time() - started
            failed = {r["stream_id"]: r for r in await store.list_events(status="failed")}
            metrics = snapshot(registry)

    # Already older than the limit: one attempt, then expired.
    assert failed["old"]["failed_cause"] == "expired" and failed["old"]["attempts"] == 1
    # Young: retried until the deadline (its last attempt lands on it), then expired.
    assert failed["young"]["failed_cause"] == "expired"
    assert failed["young"]["attempts"] > 3
    assert failed["young"]["last_error"].startswith("HTTP 503")
    assert 0.45 <= elapsed < 3
    assert sample(metrics, "bridge_events_failed_total", cause="expired") == 2


# --------------------------------------------------------------------------- media path


async def test_hanging_receiver_never_slows_emit_or_the_clock(
    rx: CallbackReceiver, db: str, record_property: Any
) -> None:
    rx.respond("hang")
    lateness: list[float] = []
    emit_ns: list[int] = []  # wall clock
    emit_cpu_ns: list[int] = []  # this thread's CPU time: immune to the OS preempting us
    tick = 0.020

    async def ticker(store: EventStore, stop: trio.Event) -> None:
        # The shape of the media path: a 20 ms clock that emits events on the way.
        deadline = trio.current_time()
        n = 0
        while not stop.is_set():
            deadline += tick
            await trio.sleep_until(deadline)
            lateness.append(trio.current_time() - deadline)
            for _ in range(10):
                n += 1
                ev = StreamEvent.degraded(
                    stream_id=f"s{n % 40}", call_id="c", app_url="ws://a", buffer_percent=30,
                    callback_url=rx.url, callback_secret=SECRET,
                )  # fmt: skip
                c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
                store.emit(ev)
                emit_ns.append(time.perf_counter_ns() - t0)
                emit_cpu_ns.append(time.thread_time_ns() - c0)

    # The pytest process holds every earlier test's garbage: one full collection of it
    # cost 77 ms of this thread's CPU inside an emit once (a clean-clone CI run). That
    # is the test process's heap, not emit's work, so the collector waits it out.
    gc.collect()
    gc.disable()
    try:
        with trio.fail_after(15):
            async with open_event_store(
                db, registry=CollectorRegistry(), callback_timeout_s=0.3, backoff_s=0.02,
                max_backoff_s=0.1, concurrency=16,
            ) as store:  # fmt: skip
                stop = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ticker, store, stop)
                    await trio.sleep(2.0)
                    stop.set()
                hung = len(rx.requests)
                pending = store.pending_count
    finally:
        gc.enable()

    lateness.sort()
    p50 = lateness[len(lateness) // 2] * 1000
    p99 = lateness[math.ceil(len(lateness) * 0.99) - 1] * 1000
    max_emit_us = max(emit_ns) / 1000
    mean_emit_us = sum(emit_ns) / len(emit_ns) / 1000
    max_emit_cpu_us = max(emit_cpu_ns) / 1000
    figures = {
        "emits": len(emit_ns),
        "max_emit_us": round(max_emit_us, 1),
        "mean_emit_us": round(mean_emit_us, 2),
        "max_emit_cpu_us": round(max_emit_cpu_us, 1),
        "tick_lateness_p50_ms": round(p50, 2),
        "tick_lateness_p99_ms": round(p99, 2),
        "tick_lateness_max_ms": round(lateness[-1] * 1000, 2),
        "hung_requests": hung,
    }
    for key, value in figures.items():
        record_property(key, value)
    print(f"\nhanging receiver: {figures}")
    assert hung >= 16  # the receiver really was hanging requests
    assert pending > 0
    # Generous: it is microseconds (see the printed figures). The CPU-time bound holds
    # even when other processes preempt this one mid-call, which wall time would count.
    assert max_emit_cpu_us < 5000
    assert sorted(emit_ns)[len(emit_ns) * 99 // 100] < 5_000_000
    # Generous too: idle, p99 is ~1.5 ms; with the 2 vCPUs saturated by other processes
    # ~20 ms. A loop blocked by the hung POSTs would show the 300 ms callback timeout.
    assert p99 < 50


# --------------------------------------------------------------------------- storage


async def test_events_without_callback_url_are_kept_not_sent(rx: CallbackReceiver, db: str) -> None:
    src = EventSource(stream_id="quiet", call_id="c", app_url="ws://a")
    with trio.fail_after(5):
        async with open_event_store(db, registry=CollectorRegistry(), **FAST) as store:
            evs = lifecycle(src)
            for ev in evs:
                store.emit(ev)
            await store.flush()
            assert store.pending_count == 0
            got = await store.get_stream("quiet")
    assert rx.requests == []
    assert got is not None and got["state"] == "unrecorded"
    assert [c["status"] for c in got["callbacks"]] == ["skipped"] * 5
    assert [c["event_id"] for c in got["callbacks"]] == [e.event_id for e in evs]


def make_record(stream_id: str, ended: datetime, **kw: Any) -> StreamRecord:
    return StreamRecord(
        stream_id=stream_id,
        call_id=f"call-{stream_id}",
        route="r",
        app_url="ws://a",
        listener="audiosocket",
        encapsulation="sln",
        started_at=ended - timedelta(seconds=61.5),
        ended_at=ended,
        reason="call_hangup",
        frames_in=3075,
        frames_out=3070,
        bytes_in=984000,
        bytes_out=982400,
        reconnects=2,
        max_buffer_percent=61.0,
        max_buffer_ms=24400,
        lateness_p50_ms=0.8,
        lateness_p99_ms=1.6,
        lateness_max_ms=9.0,
        jitter={"received": 3075, "late": 1, "lost": 0, "concealed": 1, "reordered": 2},
        events=[log_entry("open"), log_entry("app_dropped", {"code": 1011}), log_entry("closed")],
        **kw,
    )


async def test_records_round_trip_and_listing(rx: CallbackReceiver, db: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    records = [make_record(f"r{i}", now - timedelta(minutes=10 * i)) for i in range(5)]
    src = EventSource(stream_id="r0", call_id="call-r0", app_url="ws://a", callback_url=rx.url)
    registry = CollectorRegistry()
    with trio.fail_after(5):
        async with open_event_store(db, registry=registry, **FAST) as store:
            start, stop = src.start(), src.stop(reason="call_hangup", duration_s=61.5)
            store.emit(start)
            store.emit(stop)
            for rec in reversed(records):
                store.record_stream(rec)
            await store.wait_delivered()
            one = await store.get_stream("r0")
            newest_first = await store.list_streams()
            recent = await store.list_streams(since=now - timedelta(minutes=25))
            limited = await store.list_streams(limit=2)
            missing = await store.get_stream("nope")
            metrics = snapshot(registry)

    assert one is not None
    callbacks = one.pop("callbacks")
    assert one.pop("state") == "ended"
    assert one == records[0].to_dict()
    assert StreamRecord.from_dict(one) == records[0]
    assert [(c["event"], c["status"]) for c in callbacks] == [
        ("StartStream", "delivered"),
        ("StopStream", "delivered"),
    ]
    assert "callback_secret" not in callbacks[0]
    assert [r["stream_id"] for r in newest_first] == ["r0", "r1", "r2", "r3", "r4"]
    assert [r["stream_id"] for r in recent] == ["r0", "r1", "r2"]
    assert [r["stream_id"] for r in limited] == ["r0", "r1"]
    for r in newest_first:
        assert r.pop("state") == "ended"
    assert newest_first == [r.to_dict() for r in records]
    assert missing is None
    assert sample(metrics, "bridge_stream_records_total") == 5


async def test_retention_prunes_old_history_but_never_pending_events(
    rx: CallbackReceiver, db: str
) -> None:
    # Times are chosen so the store's own startup prune (real clock, retention 1 h)
    # deletes nothing, and the explicit prune(now=+20 min) has a cutoff of -40 min.
    real = time.time()
    now = datetime.fromtimestamp(real, UTC)
    old = now - timedelta(minutes=50)
    recent = now - timedelta(minutes=10)
    keep = {"retention_s": 3600, "give_up_after_s": 30 * 86400, **FAST}

    def start(stream_id: str, url: str, ts: datetime) -> StreamEvent:
        return StreamEvent.start(
            stream_id=stream_id, call_id="c", app_url="ws://a", callback_url=url, timestamp=ts
        )

    async with open_callback_receiver(up=False) as dead:
        delivered_old = start("old", rx.url, old)
        delivered_recent = start("recent", rx.url, recent)
        skipped_old = start("old2", "", old)
        pending_old = start("stuck", dead.url, old)
        fresh = start("new", "", now)
        with trio.fail_after(10):
            async with open_event_store(db, registry=CollectorRegistry(), **keep) as store:
                store.record_stream(make_record("old", old))
                store.record_stream(make_record("new", now))
                for ev in (delivered_old, delivered_recent, skipped_old, pending_old, fresh):
                    store.emit(ev)
                await until(lambda: store.list_events(status="delivered"), lambda r: len(r) == 2)
                assert await store.prune(now=real + 20 * 60) == (1, 2)
                assert await store.get_stream("old") is None
                assert await store.get_stream("new") is not None
                left = {r["event_id"]: r["status"] for r in await store.list_events()}
                assert left == {
                    delivered_recent.event_id: "delivered",
                    pending_old.event_id: "pending",
                    fresh.event_id: "skipped",
                }

            # The next open's startup prune, with a 1-minute retention: everything but the
            # fresh event is past it, and the pending one must survive anyway.
            async with open_event_store(
                db, registry=CollectorRegistry(), **{**keep, "retention_s": 60}
            ) as store:
                # Wait for the startup prune to have run.
                await until(lambda: store.get_stream("recent"), lambda r: r is None)
                left = {r["event_id"]: r["status"] for r in await store.list_events()}
                assert left == {pending_old.event_id: "pending", fresh.event_id: "skipped"}
                assert store.pending_count == 1


# --------------------------------------------------------------------------- lifecycle


async def test_close_commits_queued_events_and_reopen_delivers_them(db: str) -> None:
    async with open_callback_receiver(up=False) as rx:
        evs = lifecycle(
            EventSource(stream_id="s", call_id="c", app_url="ws://a", callback_url=rx.url)
        )
        with trio.fail_after(5):
            async with open_event_store(db, registry=CollectorRegistry(), **FAST) as store:
                for ev in evs:
                    store.emit(ev)  # and leave at once: nothing committed yet
            with pytest.raises(OutboxError):
                store.emit(evs[0])
        await rx.up()
        with trio.fail_after(5):
            async with open_event_store(db, registry=CollectorRegistry(), **FAST) as store:
                assert store.pending_count == 5
                await store.wait_delivered()
        assert rx.event_ids() == [e.event_id for e in evs]


async def test_close_cancels_hung_posts_which_stay_pending(rx: CallbackReceiver, db: str) -> None:
    rx.respond("hang")
    ev = StreamEvent.start(stream_id="s", call_id="c", app_url="ws://a", callback_url=rx.url)
    with trio.fail_after(10):
        async with open_event_store(
            db,
            registry=CollectorRegistry(),
            callback_timeout_s=30,
            **{k: v for k, v in FAST.items() if k != "callback_timeout_s"},
        ) as store:
            store.emit(ev)
            await rx.wait_for(lambda r: len(r.requests) == 1)
            closing = trio.current_time()
        close_s = trio.current_time() - closing
        assert close_s < 2.5  # 1 s in-flight grace, then cancelled
        rx.respond(200)
        async with open_event_store(db, registry=CollectorRegistry(), **FAST) as store:
            assert store.pending_count == 1
            await store.wait_delivered()
            row = (await store.list_events())[0]
    # The cancelled POST left no outcome, so it is not counted; the receiver saw it though.
    assert row["status"] == "delivered" and row["attempts"] == 1
    assert [r.status for r in rx.requests] == [None, 200]
    assert rx.requests[0].event_id == rx.requests[1].event_id


async def test_second_process_cannot_open_the_same_file(db: str) -> None:
    async with open_event_store(db, registry=CollectorRegistry()):
        with pytest.raises(OutboxError, match="in use"):
            async with open_event_store(db, registry=CollectorRegistry()):
                pass  # pragma: no cover


async def test_body_exception_is_not_wrapped_and_metrics_are_released(db: str) -> None:
    registry = CollectorRegistry()
    with pytest.raises(KeyError):
        async with open_event_store(db, registry=registry):
            raise KeyError("boom")
    # Unregistered on close, so the same registry can host the store again.
    async with open_event_store(db, registry=registry) as store:
        store.emit(StreamEvent.start(stream_id="s", call_id="c", app_url="ws://a"))
        await store.flush()
    assert (
        registry.get_sample_value("bridge_events_emitted_total", {"event": "StartStream"}) is None
    )
