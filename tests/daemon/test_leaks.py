"""After 1,000 streams opened and closed, tasks and file descriptors are back to baseline."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import trio

from .asclient import AudioSocketCaller
from .conftest import make_config


def count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for n in task.child_nurseries for child in n.child_tasks)

    return walk(trio.lowlevel.current_root_task())


def count_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_thousand_streams_leave_nothing_behind(daemon_factory: Any, tmp_path: Path) -> None:
    frame = struct.pack("<h", 1000) * 160
    with trio.fail_after(120):
        daemon = await daemon_factory(make_config(tmp_path))
        host, port = daemon.bound["audiosocket"]
        # Warm up once so lazily created things (imports, pools, DB pages) exist.
        caller = await AudioSocketCaller.connect(host, port)
        await caller.send_frame(frame)
        await trio.sleep(0.1)
        await caller.aclose()
        while daemon.manager.live_count:
            await trio.sleep(0.01)
        await trio.sleep(0.2)
        base_tasks, base_fds = count_tasks(), count_fds()

        async def one_call() -> None:
            caller = await AudioSocketCaller.connect(host, port)
            for _ in range(3):
                await caller.send_frame(frame)
                await trio.sleep(0.02)
            await caller.aclose()

        limiter = trio.CapacityLimiter(50)

        async def limited() -> None:
            async with limiter:
                await one_call()

        async with trio.open_nursery() as nursery:
            for _ in range(1000):
                nursery.start_soon(limited)
        while daemon.manager.live_count:
            await trio.sleep(0.01)
        assert daemon.store is not None
        await daemon.store.flush()
        await trio.sleep(0.5)  # closing handshakes and the writer's last batch
        tasks, fds = count_tasks(), count_fds()
        ended = await daemon.list_streams(state="ended", since=None, limit=1000)
    assert daemon.manager.started_total == 1001
    assert len(ended) == 1000
    assert tasks == base_tasks, (base_tasks, tasks)
    assert fds <= base_fds, (base_fds, fds)
    assert daemon.ticker.clients == 0
