"""``bridge run`` with its records database on a full filesystem (a real one).

The daemon runs in a private mount namespace (``unshare --mount``, plus
``--map-root-user`` when not root) on a 1 MiB tmpfs of its own: nothing is mounted
on the host, and the mount goes away with the process. The test fills that filesystem
from outside through ``/proc/<pid>/root`` (the daemon's view of the mounts), so the
daemon's SQLite writes fail with the kernel's ENOSPC, as on a real full disk.

What it shows (nothing lost quietly): ``/readyz`` 503 with a reason within 5 s of the
first failed write, the outbox metrics, one ERROR line and not one per retry; recovery
by itself when space is freed (held events written and delivered); and when it is
stopped while the disk is still full, every undeliverable event logged with its
``event_id`` and exit status 3.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bridge.daemon._admin import METRICS_MIN_INTERVAL_S

from .asclient import AudioSocketCaller
from .callback_receiver import CallbackReceiver, open_callback_receiver
from .proc import REPO

EXIT_LOST = 3
PCM = b"\x10\x00" * 160


def unshare_argv() -> list[str]:
    """The command prefix that gives a process its own mount namespace, or skip."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs util-linux `unshare` to give the daemon a small tmpfs of its own")
    flags = ["--mount"] if os.geteuid() == 0 else ["--mount", "--map-root-user"]
    probe = subprocess.run(
        [unshare, *flags, "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', "/mnt"],
        capture_output=True,
        timeout=10,
    )
    if probe.returncode != 0:
        pytest.skip(
            "cannot mount a tmpfs in a private mount namespace here (no root and no"
            f" unprivileged user namespaces?): {probe.stderr.decode(errors='replace').strip()}"
        )
    return [unshare, *flags]


class Daemon:
    def __init__(self, proc: trio.Process, disk: Path) -> None:
        self.proc = proc
        self.disk = disk
        self.lines: list[dict[str, Any]] = []
        self.new_line = trio.Event()
        self.listeners: dict[str, tuple[str, int]] = {}

    async def read_lines(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        async for chunk in self.proc.stdout:
            buf += chunk
            *complete, buf = buf.split(b"\n")
            for raw in complete:
                try:
                    line = json.loads(raw)
                except ValueError:
                    line = {"msg": raw.decode(errors="replace")}
                self.lines.append(line)
            self.new_line.set()
            self.new_line = trio.Event()

    async def wait_for(self, msg: str) -> dict[str, Any]:
        while True:
            for line in self.lines:
                if str(line.get("msg", "")).startswith(msg):
                    return line
            if self.proc.returncode is not None:
                raise AssertionError(f"bridge exited before logging {msg!r}: {self.lines}")
            await self.new_line.wait()

    def logged(self, msg: str, level: str | None = None) -> list[dict[str, Any]]:
        return [
            ln
            for ln in self.lines
            if str(ln.get("msg", "")).startswith(msg) and (level is None or ln["level"] == level)
        ]

    def url(self, path: str) -> str:
        host, port = self.listeners["admin"]
        return f"http://{host}:{port}{path}"

    @property
    def filler(self) -> Path:
        # The daemon's mounts, seen from outside its namespace.
        return Path(f"/proc/{self.proc.pid}/root") / str(self.disk).lstrip("/") / "filler"

    def fill(self) -> None:
        block = b"\0" * 65536
        with open(self.filler, "wb", buffering=0) as f:
            while True:
                try:
                    f.write(block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    if len(block) == 1:
                        return
                    block = block[: len(block) // 2]

    def free(self) -> None:
        self.filler.unlink()


def config(tmp_path: Path, disk: Path, callback_url: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(f"""
[daemon]
log_level = "info"
log_format = "json"
drain_timeout = "1s"

[admin]
listen = "127.0.0.1:0"

[audiosocket]
listen = "127.0.0.1:0"

[websocket]
listen = ""

[records]
path = "{disk / "records.db"}"

[callbacks]
backoff = "50ms"
max_backoff = "200ms"

[[routes]]
name = "as-echo"
match = {{ listener = "audiosocket" }}
app = {{ url = "echo:" }}
callback = {{ url = "{callback_url}" }}
""")
    return path


@pytest.fixture
async def rx() -> AsyncIterator[CallbackReceiver]:
    async with open_callback_receiver() as receiver:
        yield receiver


async def metric(client: httpx.AsyncClient, d: Daemon, name: str) -> float:
    await trio.sleep(METRICS_MIN_INTERVAL_S)  # past the last rendering (see scrape.py)
    text = (await client.get(d.url("/metrics"))).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def call(d: Daemon) -> None:
    """One short call: connect, a few frames, hang up (StartStream and StopStream)."""
    caller = await AudioSocketCaller.connect(*d.listeners["audiosocket"])
    for _ in range(3):
        await caller.send_frame(PCM)
        await trio.sleep(0.02)
    await caller.aclose()


async def until(client: httpx.AsyncClient, d: Daemon, name: str, value: float) -> None:
    while await metric(client, d, name) < value:
        await trio.sleep(0.05)


async def test_full_disk_readyz_503_recovers_then_stop_logs_every_lost_event_and_exits_3(
    tmp_path: Path, rx: CallbackReceiver
) -> None:
    prefix = unshare_argv()
    disk = tmp_path / "disk"
    disk.mkdir()
    cfg = config(tmp_path, disk, rx.url)
    script = 'mount -t tmpfs -o size=1m,mode=0700 tmpfs "$0" && exec "$1" -m bridge run -c "$2"'
    proc = await trio.lowlevel.open_process(
        [*prefix, "sh", "-c", script, str(disk), sys.executable, str(cfg)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    d = Daemon(proc, disk)
    try:
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=5) as client:
            nursery.start_soon(d.read_lines)
            with trio.fail_after(15):
                ready = await d.wait_for("bridge ready")
            for name, addr in ready["listeners"].items():
                host, port = addr.rsplit(":", 1)
                d.listeners[name] = (host, int(port))

            with trio.fail_after(15):
                # 1. Normal: two calls, their four events written and delivered.
                for _ in range(2):
                    await call(d)
                await rx.wait_for(lambda r: len(r.unique_ids()) >= 4)
                assert (await client.get(d.url("/readyz"))).status_code == 200
                assert await metric(client, d, "bridge_outbox_healthy") == 1.0

                # 2. The filesystem fills up; the next events cannot be written.
                await trio.to_thread.run_sync(d.fill)
                t_fail = trio.current_time()
                await call(d)
                while (r := await client.get(d.url("/readyz"))).status_code == 200:
                    await trio.sleep(0.05)
                took = trio.current_time() - t_fail
                assert took < 5.0, took
                assert r.status_code == 503
                assert r.json() == {"status": "not_ready", "reason": "outbox_unwritable"}
                assert await metric(client, d, "bridge_outbox_healthy") == 0.0
                assert await metric(client, d, "bridge_ready") == 0.0
                await until(client, d, "bridge_events_emitted_total", 6)
                await trio.sleep(2.2)  # two more retries: still one ERROR line
                assert await metric(client, d, "bridge_outbox_write_errors_total") >= 3
                assert len(d.logged("outbox writes failing", "error")) == 1
                assert await metric(client, d, "bridge_outbox_held_items") >= 2
                assert len(rx.unique_ids()) == 4  # held ones are not sent before written

                # 3. Space is freed: it recovers by itself and sends what it held.
                await trio.to_thread.run_sync(d.free)
                await rx.wait_for(lambda r: len(r.unique_ids()) >= 6)
                while (await client.get(d.url("/readyz"))).status_code != 200:
                    await trio.sleep(0.05)
                assert await metric(client, d, "bridge_outbox_healthy") == 1.0
                assert len(d.logged("outbox writes succeed again", "warning")) == 1

                # 4. Full again, and stopped before it clears: three more calls lost.
                await trio.to_thread.run_sync(d.fill)
                for _ in range(3):
                    await call(d)
                await until(client, d, "bridge_events_emitted_total", 12)
                assert (await client.get(d.url("/readyz"))).status_code == 503
                delivered = set(rx.unique_ids())
                proc.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                rc = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.move_on_after(5):
                await proc.wait()

    assert rc == EXIT_LOST, d.lines[-20:]
    lost = d.logged("event lost", "error")
    lost_ids = [ln["event_id"] for ln in lost]
    assert len(lost_ids) == 6 == len(set(lost_ids))
    assert not set(lost_ids) & delivered
    assert len(delivered) == 6
    assert {ln["event"] for ln in lost} == {"StartStream", "StopStream"}
    assert all(ln["cause"] == "shutdown" and ln["stream_id"] for ln in lost)
    assert len(d.logged("stream record lost", "error")) == 3
    [total] = d.logged("event store closed", "error")
    assert (total["events_lost"], total["records_lost"]) == (6, 3)
    # One ERROR line per outage, not one per retry.
    assert len(d.logged("outbox writes failing", "error")) == 2
