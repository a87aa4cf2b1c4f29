"""Crash safety: a process SIGKILLed with undelivered events loses none of them.

The child opens the store with a callback URL whose port is bound but not listening
(connection refused), emits events, waits for the commit, says "ready" and sleeps while
its delivery workers keep failing and retrying (so the kill lands mid-write more often
than not). After the SIGKILL the same port starts listening and the store is reopened
here: every event must arrive, in order per stream.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry

from bridge.daemon._outbox import open_event_store

from .callback_receiver import open_callback_receiver

CHILD = r"""
import sys
import trio
from prometheus_client import CollectorRegistry
from bridge.daemon._events import StreamEvent
from bridge.daemon._outbox import open_event_store

async def main(path, url, streams, per_stream):
    async with open_event_store(
        path, registry=CollectorRegistry(), backoff_s=0.01, max_backoff_s=0.05
    ) as store:
        for i in range(per_stream):
            for s in range(streams):
                store.emit(StreamEvent.degraded(
                    stream_id=f"s{s}", call_id=f"c{s}", app_url="ws://app", buffer_percent=i,
                    event_id=f"s{s}-{i:03d}", callback_url=url, callback_secret="k",
                ))
            await trio.sleep(0)  # several write batches, not one
        await store.flush()
        print("ready", store.pending_count, flush=True)
        await trio.sleep_forever()

trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
"""

STREAMS, PER_STREAM = 5, 40


async def read_line(stream: trio.abc.ReceiveStream) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(1024)
        if not chunk:
            break
        data += chunk
    return data.decode()


async def test_sigkill_with_pending_events_then_restart_delivers_all(tmp_path: Path) -> None:
    db = str(tmp_path / "crash.sqlite3")
    async with open_callback_receiver(up=False) as rx:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", CHILD, db, rx.url, str(STREAMS), str(PER_STREAM)],
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            with trio.fail_after(20):
                line = await read_line(proc.stdout)
            assert line.split() == ["ready", str(STREAMS * PER_STREAM)]
            await trio.sleep(0.2)  # let it retry (and write attempt counts) for a while
        finally:
            proc.send_signal(signal.SIGKILL)
            with trio.move_on_after(5):
                await proc.wait()
        assert proc.returncode == -signal.SIGKILL

        # Independent look at the file the dead process left: all still pending.
        conn = sqlite3.connect(db)
        try:
            (pending,) = conn.execute(
                "SELECT COUNT(*) FROM events WHERE status = 'pending'"
            ).fetchone()
        finally:
            conn.close()
        assert pending == STREAMS * PER_STREAM

        await rx.up()
        with trio.fail_after(15):
            async with open_event_store(
                db, registry=CollectorRegistry(), backoff_s=0.01, max_backoff_s=0.05
            ) as store:
                assert store.pending_count == STREAMS * PER_STREAM
                await store.wait_delivered()
                rows = await store.list_events(limit=1000)

    expected = {f"s{s}-{i:03d}" for s in range(STREAMS) for i in range(PER_STREAM)}
    assert rx.unique_ids() == expected
    per_stream: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()
    for eid in rx.event_ids():
        if eid not in seen:
            seen.add(eid)
            per_stream[eid.split("-")[0]].append(eid)
    for s in range(STREAMS):
        assert per_stream[f"s{s}"] == sorted(per_stream[f"s{s}"])  # ids sort in emit order
    assert {r["status"] for r in rows} == {"delivered"}
    # The attempts the dead process made (refused) were persisted and are counted.
    assert max(r["attempts"] for r in rows) >= 2
