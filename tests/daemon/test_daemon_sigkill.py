"""``bridge run`` SIGKILLed with undelivered events, then restarted: all are delivered."""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from pathlib import Path

import httpx
import trio

from .callback_receiver import open_callback_receiver
from .proc import BridgeProcess, write_config


def one_call(addr: tuple[str, int]) -> None:
    with socket.create_connection(addr, timeout=5) as sock:
        sock.sendall(b"\x01\x00\x10" + os.urandom(16))
        for _ in range(5):
            sock.sendall(b"\x10\x01\x40" + struct.pack("<h", 500) * 160)
            time.sleep(0.02)


def pending_ids(proc: BridgeProcess, n: int) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = httpx.get(proc.url("/v1/events"), params={"status": "pending"}, timeout=2)
        ids = [e["event_id"] for e in events.json()["events"]]
        if len(ids) >= n:
            return ids
        time.sleep(0.05)
    raise AssertionError("events never became pending")


async def test_sigkill_with_pending_events_then_restart(tmp_path: Path) -> None:
    async with open_callback_receiver(up=False) as rx:
        routes = f"""
[[routes]]
name = "as-cb"
match = {{ listener = "audiosocket" }}
app = {{ url = "echo:" }}
callback = {{ url = "{rx.url}", secret = "s" }}
"""
        config = write_config(tmp_path, extra_routes="").read_text()
        # The callback route must win over the default echo route: put it first.
        config = config.replace("[[routes]]", routes.strip() + "\n\n[[routes]]", 1)
        path = tmp_path / "bridge.toml"
        path.write_text(config + '\n[callbacks]\nbackoff = "100ms"\nmax_backoff = "200ms"\n')

        def first_life() -> list[str]:
            proc = BridgeProcess(path)
            try:
                proc.wait_ready()
                for _ in range(3):
                    one_call(proc.listeners["audiosocket"])
                ids = pending_ids(proc, 6)  # 3 calls x (StartStream + StopStream), committed
                proc.proc.send_signal(signal.SIGKILL)
                proc.proc.wait(timeout=5)
                return ids
            finally:
                proc.kill()

        with trio.fail_after(60):
            pending = await trio.to_thread.run_sync(first_life)
            assert rx.requests == []  # nothing could be delivered before the kill
            await rx.up()

            def second_life() -> None:
                proc = BridgeProcess(path)
                try:
                    proc.wait_ready()
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline and len(rx.unique_ids()) < len(pending):
                        time.sleep(0.05)
                    proc.proc.send_signal(signal.SIGTERM)
                    proc.proc.wait(timeout=10)
                finally:
                    proc.kill()

            await trio.to_thread.run_sync(second_life)
    assert set(pending) <= rx.unique_ids()
    assert len(pending) == 6
