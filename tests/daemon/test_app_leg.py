"""The WebSocket app leg with real sockets and an independent app server (trio-websocket
in its own process): reconnect and replay, retries exhausted, normal close."""

from __future__ import annotations

import functools
import json
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from .asclient import AudioSocketCaller
from .conftest import make_config

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AppServer:
    """The app server subprocess; ``lines`` fills as it prints."""

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self.args = args
        self.lines: list[dict[str, Any]] = []
        self.proc: trio.Process | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cmd = [sys.executable, str(HERE / "appserver.py"), str(self.port), *self.args]
        async with trio.open_nursery() as nursery:
            self.proc = await nursery.start(
                functools.partial(trio.run_process, cmd, stdout=subprocess.PIPE, check=False)
            )
            assert self.proc.stdout is not None
            buf = b""
            started = False
            async for chunk in self.proc.stdout:
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self.lines.append(json.loads(line))
                    if not started and "ready" in self.lines[-1]:
                        started = True
                        task_status.started()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def frames(self) -> list[int]:
        return [ln["frame"] for ln in self.lines if "frame" in ln]


def numbered(n: int) -> bytes:
    return struct.pack("<h", n + 1) * 160


def sln_route(port: int, stream: str = "") -> str:
    return f"""
[[routes]]
name = "as-app"
match = {{ listener = "audiosocket" }}
app = {{ url = "ws://127.0.0.1:{port}/agent", encapsulation = "sln", sample_rate = 8000 }}
stream = {{ {stream} }}
"""


async def wait_until(pred: Any, timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while not pred():
            await trio.sleep(0.01)


async def test_app_killed_and_restarted_every_frame_once_in_order(
    daemon_factory: Any, tmp_path: Path
) -> None:
    port = free_port()
    config = make_config(tmp_path, routes=sln_route(port, 'retries = 5, backoff = "100ms"'))
    with trio.fail_after(30):
        daemon = await daemon_factory(config)
        async with trio.open_nursery() as nursery:
            first = AppServer(port, "--echo")
            await nursery.start(first.run)
            caller = await AudioSocketCaller.connect(*daemon.bound["audiosocket"])
            nursery.start_soon(caller.receive_forever)

            async def talk() -> None:
                for n in range(250):
                    await caller.send_frame(numbered(n))
                    await trio.sleep(0.02)

            nursery.start_soon(talk)
            await wait_until(lambda: len(first.frames()) >= 60)
            first.kill()  # SIGKILL mid-stream, right after it logged a frame
            await trio.sleep(0.25)  # the app is away; bridge buffers the caller
            second = AppServer(port, "--echo")
            await nursery.start(second.run)
            await wait_until(lambda: len(first.frames()) + len(second.frames()) >= 250, 15)
            live = daemon.live_streams()
            # Both legs are read in poll mode, through the restart.
            assert daemon.poller is not None and daemon.poller.registered == 2
            assert daemon.poller.dispatched >= 250
            await caller.aclose()
            await wait_until(lambda: daemon.manager.live_count == 0)
            assert daemon.poller.registered == 0
            second.kill()
            nursery.cancel_scope.cancel()
    got = [f - 1 for f in first.frames() + second.frames()]
    assert got == list(range(250))  # every caller frame exactly once, in order
    starts = [ln["start"] for ln in first.lines + second.lines if "start" in ln]
    assert [s["resumed"] for s in starts] == [False, True]
    assert starts[1]["replayed_ms"] > 0 and starts[0]["stream_id"] == starts[1]["stream_id"]
    headers = next(ln["connect"] for ln in second.lines if "connect" in ln)
    assert headers["x-bridge-stream-id"] == live[0]["stream_id"]
    assert headers["x-bridge-route"] == "as-app"
    assert live[0]["legs"]["app"]["reconnects"] == 1


async def test_app_never_reachable_three_attempts_one_drop(
    daemon_factory: Any, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens here
    config = make_config(tmp_path, routes=sln_route(port, 'backoff = "50ms"'))
    with trio.fail_after(20):
        daemon = await daemon_factory(config)
        caller = await AudioSocketCaller.connect(*daemon.bound["audiosocket"])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller.receive_forever)
            for n in range(50):
                if not await caller.send_frame(numbered(n)):
                    break
                await trio.sleep(0.02)
            await wait_until(lambda: daemon.manager.live_count == 0)
            nursery.cancel_scope.cancel()
        assert daemon.store is not None
        await daemon.store.flush()
        ended = await daemon.list_streams(state="ended", since=None, limit=10)
        record = await daemon.get_stream(ended[0]["stream_id"])
    assert caller.hung_up  # the call leg was hung up the AudioSocket way (00 00 00)
    assert record is not None and record["reason"] == "connection_error"
    names = [e["event"] for e in record["events"]]
    assert names.count("connect_failed") == 3
    assert names.count("DroppedStream") == 1 and "StartStream" not in names
    dropped = next(e for e in record["events"] if e["event"] == "DroppedStream")
    assert dropped["attempts"] == 3


async def test_app_normal_close_is_app_hangup(daemon_factory: Any, tmp_path: Path) -> None:
    port = free_port()
    config = make_config(tmp_path, routes=sln_route(port))
    with trio.fail_after(20):
        daemon = await daemon_factory(config)
        async with trio.open_nursery() as nursery:
            app = AppServer(port, "--echo", "--hangup-after", "10")
            await nursery.start(app.run)
            caller = await AudioSocketCaller.connect(*daemon.bound["audiosocket"])
            nursery.start_soon(caller.receive_forever)
            for n in range(30):
                if not await caller.send_frame(numbered(n)):
                    break
                await trio.sleep(0.02)
            await wait_until(lambda: daemon.manager.live_count == 0)
            app.kill()
            nursery.cancel_scope.cancel()
        assert daemon.store is not None
        await daemon.store.flush()
        ended = await daemon.list_streams(state="ended", since=None, limit=10)
    assert ended[0]["reason"] == "app_hangup"
    assert caller.hung_up
