"""``bridge run`` as a real process: SIGTERM drain, readyz, a second signal, SIGHUP
reload and sd_notify (issue: foundation, "Must show")."""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from pathlib import Path

import httpx
import pytest

from .proc import BridgeProcess, write_config


def as_call(addr: tuple[str, int]) -> socket.socket:
    """A blocking AudioSocket caller: UUID frame, then one audio frame."""
    sock = socket.create_connection(addr, timeout=5)
    sock.sendall(b"\x01\x00\x10" + os.urandom(16))
    sock.sendall(b"\x10\x01\x40" + struct.pack("<h", 1000) * 160)
    return sock


def wait_live(proc: BridgeProcess, n: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        streams = httpx.get(proc.url("/v1/streams"), timeout=2).json()["streams"]
        if len(streams) == n:
            return
        time.sleep(0.05)
    raise AssertionError(f"expected {n} live streams")


def test_sigterm_with_no_streams_exits_0_within_a_second(tmp_path: Path) -> None:
    proc = BridgeProcess(write_config(tmp_path))
    try:
        proc.wait_ready()
        assert httpx.get(proc.url("/healthz"), timeout=2).status_code == 200
        t0 = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        rc = proc.proc.wait(timeout=5)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
    assert rc == 0
    assert elapsed < 1.0, elapsed


def test_drain_readyz_503_refuses_new_calls_then_shutdown(tmp_path: Path) -> None:
    proc = BridgeProcess(write_config(tmp_path, daemon='drain_timeout = "1500ms"'))
    try:
        proc.wait_ready()
        addr = proc.listeners["audiosocket"]
        call = as_call(addr)
        wait_live(proc, 1)
        stream_id = httpx.get(proc.url("/v1/streams"), timeout=2).json()["streams"][0]["stream_id"]
        proc.proc.send_signal(signal.SIGTERM)
        proc.wait_for("draining")
        r = httpx.get(proc.url("/readyz"), timeout=2)
        assert r.status_code == 503 and r.json()["status"] == "draining"
        assert httpx.get(proc.url("/healthz"), timeout=2).status_code == 200
        # A new call during the drain is refused with the AudioSocket hangup frame.
        late = as_call(addr)
        late.settimeout(3)
        data = b""
        while len(data) < 3:
            chunk = late.recv(3 - len(data))
            if not chunk:
                break
            data += chunk
        assert data == b"\x00\x00\x00"
        # The live call outlasts drain_timeout: closed with reason shutdown, exit 0.
        rc = proc.proc.wait(timeout=10)
        assert rc == 0
        closed = [ln for ln in proc.lines if ln.get("msg") == "stream closed"]
        proc.wait_for("drain complete")
        call.close()
        late.close()
    finally:
        proc.kill()
    assert any(ln.get("stream_id") == stream_id and ln.get("reason") == "shutdown" for ln in proc.lines + closed)


def test_second_signal_stops_at_once(tmp_path: Path) -> None:
    proc = BridgeProcess(write_config(tmp_path, daemon='drain_timeout = "60s"'))
    try:
        proc.wait_ready()
        call = as_call(proc.listeners["audiosocket"])
        wait_live(proc, 1)
        proc.proc.send_signal(signal.SIGTERM)
        proc.wait_for("draining")
        t0 = time.monotonic()
        proc.proc.send_signal(signal.SIGINT)
        rc = proc.proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
        call.close()
    finally:
        proc.kill()
    assert rc == 0
    assert elapsed < 5.0  # not the 60 s drain


def test_sighup_reload_applies_good_and_rejects_bad(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    proc = BridgeProcess(config)
    try:
        proc.wait_ready()
        good = config.read_text().replace('name = "as-echo"', 'name = "as-echo-v2"')
        config.write_text(good)
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for("reloaded")
        call = as_call(proc.listeners["audiosocket"])
        wait_live(proc, 1)
        streams = httpx.get(proc.url("/v1/streams"), timeout=2).json()["streams"]
        assert streams[0]["route"] == "as-echo-v2"  # new calls take the new route
        config.write_text(good + "\n[bogus]\nx = 1\n")
        proc.proc.send_signal(signal.SIGHUP)
        line = proc.wait_for("reload rejected")
        assert "bogus" in line["msg"]
        assert httpx.get(proc.url("/readyz"), timeout=2).status_code == 200
        # The live call was not touched by either reload.
        streams = httpx.get(proc.url("/v1/streams"), timeout=2).json()["streams"]
        assert len(streams) == 1 and streams[0]["state"] == "streaming"
        call.close()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=10) == 0
    finally:
        proc.kill()


def test_sd_notify_ready_status_stopping(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    notify.settimeout(10)
    proc = BridgeProcess(
        write_config(tmp_path),
        env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"},
    )
    try:
        messages: list[str] = []
        while not any("READY=1" in m for m in messages):
            messages.append(notify.recv(4096).decode())
        # READY=1 only once every listener is bound: the admin port answers right away.
        proc.wait_ready()
        assert httpx.get(proc.url("/healthz"), timeout=2).status_code == 200
        ready = next(m for m in messages if "READY=1" in m)
        assert "STATUS=0 live streams" in ready
        # WATCHDOG=1 at half of WATCHDOG_USEC (0.2 s): several within a second.
        t0 = time.monotonic()
        pings = 0
        while time.monotonic() - t0 < 1.0:
            if "WATCHDOG=1" in notify.recv(4096).decode():
                pings += 1
        assert 3 <= pings <= 7, pings
        proc.proc.send_signal(signal.SIGTERM)
        seen = ""
        while "STOPPING=1" not in seen:
            seen = notify.recv(4096).decode()
        assert proc.proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        notify.close()


@pytest.mark.parametrize("bad", ["[nope]\nx=1\n", '[stream]\nbuffer = "forty"\n'])
def test_bad_config_exits_2_with_field_path(tmp_path: Path, bad: str) -> None:
    import subprocess
    import sys

    path = tmp_path / "bad.toml"
    path.write_text(bad)
    out = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert str(path) in out.stderr
    assert ("nope" in out.stderr) or ("stream.buffer" in out.stderr)
