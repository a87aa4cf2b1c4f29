"""Nothing lost quietly: the outbox when its database cannot be written, and when it is
corrupt.

A full disk is simulated inside SQLite with ``PRAGMA max_page_count``: past it every
write fails with ``SQLITE_FULL`` ("database or disk is full"), the very error a full
filesystem gives, and raising it again is "the operator freed some space". (The real
full filesystem, with a daemon process, is in ``test_full_disk.py``.)
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry

from bridge.daemon import _outbox as outbox_module
from bridge.daemon._events import EventSource, StreamEvent
from bridge.daemon._outbox import EventStore, open_event_store

from .callback_receiver import CallbackReceiver, open_callback_receiver
from .test_outbox import FAST, sample

LOGGER = "bridge.events"


@pytest.fixture
async def rx() -> AsyncIterator[CallbackReceiver]:
    async with open_callback_receiver() as receiver:
        yield receiver


def source(rx: CallbackReceiver, n: int) -> EventSource:
    return EventSource(
        stream_id=f"s{n}", call_id=f"c{n}", app_url="ws://app", callback_url=rx.url
    )


async def fill_disk(store: EventStore) -> None:
    """No room for one more page: the next transaction fails with SQLITE_FULL."""

    def cap(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    await store._db(cap)


async def free_disk(store: EventStore) -> None:
    await store._db(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))


def big_event(rx: CallbackReceiver, n: int) -> StreamEvent:
    # The app_url makes the row larger than a page: it cannot fit in free space.
    return StreamEvent.start(
        stream_id=f"s{n}",
        call_id=f"c{n}",
        app_url="ws://app/" + "x" * 5000,
        callback_url=rx.url,
        event_id=f"big-{n}",
    )


def messages(caplog: pytest.LogCaptureFixture, level: int, start: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == LOGGER and r.levelno == level and r.getMessage().startswith(start)
    ]


async def test_write_failure_is_unhealthy_held_counted_and_recovers_by_itself(
    rx: CallbackReceiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    registry = CollectorRegistry()
    async with open_event_store(str(tmp_path / "r.db"), registry=registry, **FAST) as store:
        store.emit(source(rx, 0).start())
        await store.flush()
        assert store.healthy and sample(registry, "bridge_outbox_healthy") == 1.0

        await fill_disk(store)
        events = [big_event(rx, n) for n in range(3)]
        for ev in events:
            store.emit(ev)
        with trio.fail_after(5):
            while store.healthy:
                await trio.sleep(0.01)
        assert "database or disk is full" in (store.problem or "")
        assert sample(registry, "bridge_outbox_healthy") == 0.0
        assert sample(registry, "bridge_outbox_held_items") == 3.0
        # Retried every second; logged once at the transition, not once per retry.
        await trio.sleep(2.5)
        assert sample(registry, "bridge_outbox_write_errors_total") >= 3
        assert len(messages(caplog, logging.ERROR, "outbox writes failing")) == 1
        assert not messages(caplog, logging.ERROR, "outbox writes still failing")
        assert not store.events_lost
        # Nothing of the held events went out: an event is written before it is sent.
        assert not set(rx.unique_ids()) & {e.event_id for e in events}

        await free_disk(store)
        with trio.fail_after(5):
            await store.wait_delivered()
        assert store.healthy and sample(registry, "bridge_outbox_healthy") == 1.0
        assert sample(registry, "bridge_outbox_held_items") == 0.0
        assert {e.event_id for e in events} <= set(rx.unique_ids())
        assert len(messages(caplog, logging.WARNING, "outbox writes succeed again")) == 1
        assert sample(registry, "bridge_events_lost_total", cause="held_full") == 0.0
    assert store.events_lost == 0


async def test_past_the_hold_new_events_are_lost_counted_and_logged_with_their_ids(
    rx: CallbackReceiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    registry = CollectorRegistry()
    async with open_event_store(
        str(tmp_path / "r.db"), registry=registry, max_held=3, **FAST
    ) as store:
        await store.flush()
        await fill_disk(store)
        events = [big_event(rx, n) for n in range(5)]
        for ev in events:
            store.emit(ev)
        assert store.held_count == 3
        lost = messages(caplog, logging.ERROR, "event lost")
        assert [r.__dict__["event_id"] for r in lost] == ["big-3", "big-4"]
        assert {r.__dict__["cause"] for r in lost} == {"held_full"}
        assert sample(registry, "bridge_events_lost_total", cause="held_full") == 2.0
        assert sample(registry, "bridge_events_lost_total", cause="shutdown") == 0.0

        # The held ones are written and sent once the disk has room again.
        with trio.fail_after(5):
            while store.healthy:
                await trio.sleep(0.01)
        await free_disk(store)
        with trio.fail_after(5):
            await store.wait_delivered()
        assert set(rx.unique_ids()) == {"big-0", "big-1", "big-2"}
    assert store.events_lost == 2


async def test_close_while_writes_fail_logs_every_unwritten_event_id(
    rx: CallbackReceiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    registry = CollectorRegistry()
    path = str(tmp_path / "r.db")
    events = [big_event(rx, n) for n in range(4)]
    async with open_event_store(path, registry=registry, close_timeout_s=5.0, **FAST) as store:
        store.emit(source(rx, 9).start())
        await store.flush()
        await fill_disk(store)
        for ev in events:
            store.emit(ev)
        with trio.fail_after(5):
            while store.healthy:
                await trio.sleep(0.01)
        t0 = trio.current_time()
    closed_in = trio.current_time() - t0
    # Three final attempts half a second apart, not the whole close_timeout.
    assert closed_in < 3.0, closed_in
    lost = messages(caplog, logging.ERROR, "event lost")
    assert sorted(r.__dict__["event_id"] for r in lost) == sorted(e.event_id for e in events)
    assert {r.__dict__["cause"] for r in lost} == {"shutdown"}
    assert store.events_lost == 4
    total = messages(caplog, logging.ERROR, "event store closed: 4 events")
    assert len(total) == 1

    # The one event that was written is still there (pending) for the next start.
    conn = sqlite3.connect(path)
    try:
        ids = [r[0] for r in conn.execute("SELECT event_id FROM events")]
    finally:
        conn.close()
    assert len(ids) == 1 and not set(ids) & {e.event_id for e in events}


# --------------------------------------------------------------------------- corruption


def corrupt_files(path: Path) -> list[Path]:
    """The moved database files (not their -wal/-shm companions)."""
    return sorted(
        p for p in path.parent.glob(path.name + ".corrupt-*") if not p.name.endswith(("-wal", "-shm"))
    )


async def test_a_file_that_is_not_a_database_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, rx: CallbackReceiver
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    path = tmp_path / "records.db"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    async with open_event_store(str(path), registry=CollectorRegistry(), **FAST) as store:
        store.emit(source(rx, 1).start())
        with trio.fail_after(5):
            await store.wait_delivered()
        assert store.moved_aside is not None
    [moved] = corrupt_files(path)
    assert str(moved) == store.moved_aside
    assert moved.read_bytes() == garbage  # kept as it was, for inspection
    [line] = messages(caplog, logging.ERROR, "records database")
    text = line.getMessage()
    assert str(moved) in text and "is corrupt" in text and "started a fresh one" in text
    assert "an unknown number of undelivered events" in text
    # The fresh file is a working database.
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
    finally:
        conn.close()


async def test_a_damaged_database_with_pending_events_is_moved_aside_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    path = tmp_path / "records.db"
    async with open_callback_receiver(up=False) as down, open_event_store(
        str(path), registry=CollectorRegistry(), **FAST
    ) as store:
        for n in range(200):
            store.emit(
                StreamEvent.start(
                    stream_id=f"s{n}", call_id="c", app_url="ws://a", callback_url=down.url
                )
            )
        await store.flush()
    # Checkpointed at close: every row is in the main file. Damage the events index
    # pages (the tail of the file), keep the header and the schema page intact.
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())
    for page in range(2, pages):
        off = page * page_size
        data[off : off + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))

    async with open_event_store(str(path), registry=CollectorRegistry(), **FAST) as store:
        assert store.moved_aside is not None
        assert store.pending_count == 0
    [moved] = corrupt_files(path)
    [line] = messages(caplog, logging.ERROR, "records database")
    assert str(moved) in line.getMessage()
    assert "malformed" in line.getMessage() or "not a database" in line.getMessage()


async def test_other_open_errors_do_not_move_the_file(tmp_path: Path) -> None:
    # A directory where the file should be: not corruption, nothing is moved.
    path = tmp_path / "records.db"
    path.mkdir()
    with pytest.raises(Exception, match="cannot open"):
        async with open_event_store(str(path), registry=CollectorRegistry()):
            pass  # pragma: no cover
    assert path.is_dir() and not corrupt_files(path)


async def test_events_queued_by_a_cancelled_daemons_closing_steps_are_written(
    tmp_path: Path, rx: CallbackReceiver
) -> None:
    # A second SIGTERM cancels the whole daemon, the store's writer task included; the
    # streams' closing steps then emit their StopStream and record. They used to stay
    # in memory and vanish without a word.
    path = str(tmp_path / "r.db")
    src = source(rx, 1)
    with trio.CancelScope() as cancelled:
        async with open_event_store(path, registry=CollectorRegistry(), **FAST) as store:
            store.emit(src.start())
            await store.flush()
            cancelled.cancel()
            try:
                await trio.sleep_forever()
            finally:
                store.emit(src.stop(reason="shutdown", duration_s=1.0))
    assert store.events_lost == 0
    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute("SELECT event FROM events ORDER BY seq")]
    finally:
        conn.close()
    assert names == ["StartStream", "StopStream"]


async def test_while_writes_keep_failing_a_summary_comes_periodically(
    rx: CallbackReceiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outbox_module, "_SUMMARY_INTERVAL_S", 1.0)
    caplog.set_level(logging.DEBUG, LOGGER)
    async with open_event_store(
        str(tmp_path / "r.db"), registry=CollectorRegistry(), max_held=1, **FAST
    ) as store:
        await store.flush()
        await fill_disk(store)
        store.emit(big_event(rx, 0))
        store.emit(big_event(rx, 1))  # lost: the hold is full
        await trio.sleep(3.5)
        await free_disk(store)
        with trio.fail_after(5):
            await store.wait_delivered()
    assert len(messages(caplog, logging.ERROR, "outbox writes failing")) == 1
    summaries = messages(caplog, logging.ERROR, "outbox writes still failing")
    assert 2 <= len(summaries) <= 4
    assert "1 items held in memory, 1 events and 0 records lost so far" in (
        summaries[-1].getMessage()
    )


async def test_a_write_that_hangs_makes_the_store_unhealthy_until_it_finishes(
    rx: CallbackReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "_WRITE_STALL_S", 0.3)
    path = str(tmp_path / "r.db")
    async with open_event_store(path, registry=CollectorRegistry(), **FAST) as store:
        await store.flush()
        # Another connection holds the write lock: the store's write waits for it (up to
        # SQLite's busy timeout, 5 s) the way a write on a stalled disk waits.
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            store.emit(source(rx, 1).start())
            with trio.fail_after(3):
                while store.healthy:
                    await trio.sleep(0.05)
            assert "a write has been running for" in (store.problem or "")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        with trio.fail_after(5):
            await store.wait_delivered()
        assert store.healthy
