"""The admin port cannot end the daemon: the external test's crash request, repeated,
against a real ``bridge run`` process with a live call (finding 1 of the external test).

On the hypercorn admin server this request killed the daemon after 4-17 requests: h11
rejected the malformed chunk footer, hypercorn sent its 400 while another task's
``send_eof`` held the socket, and the ``trio.BusyResourceError`` escaped into the daemon
nursery (exit status 1, every call cut).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .proc import BridgeProcess, write_config

CRASH = (
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc\r\n0\r\n\r\n"
)
TOKEN = "crash-test-token"


class Follower:
    """Reads the daemon's JSON log lines in a thread (a full pipe would stall it)."""

    def __init__(self, proc: BridgeProcess) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = list(proc.lines)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stdout = self.proc.proc.stdout
        assert stdout is not None
        for raw in stdout:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                self.lines.append({"msg": raw.decode(errors="replace").rstrip()})


def crash_request(addr: tuple[str, int], auth: bool) -> None:
    """Send the request on a fresh connection, read once, close (as the finding did)."""
    request = CRASH
    if auth:
        request = request.replace(
            b"Host: x\r\n", f"Host: x\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
        )
    with socket.create_connection(addr, timeout=5) as sock:
        sock.sendall(request)
        try:
            sock.recv(65536)
        except OSError:
            pass


def test_crash_request_repeated_does_not_end_the_daemon_or_its_call(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("[admin]\n", f'[admin]\ntoken = "{TOKEN}"\n'))
    proc = BridgeProcess(config)
    try:
        proc.wait_ready()
        follower = Follower(proc)
        admin = proc.listeners["admin"]
        # A live call on the echo: route, echoing a frame before and after the barrage.
        call = socket.create_connection(proc.listeners["audiosocket"], timeout=5)
        call.sendall(b"\x01\x00\x10" + os.urandom(16))
        frame = b"\x10\x01\x40" + struct.pack("<h", 1000) * 160

        def echoed_one() -> bool:
            call.sendall(frame)
            data = b""
            while len(data) < len(frame):
                chunk = call.recv(len(frame) - len(data))
                if not chunk:
                    return False
                data += chunk
            return data[:3] == frame[:3]

        assert echoed_one()
        sent = 0
        for i in range(200):
            assert proc.proc.poll() is None, f"bridge exited after {sent} requests"
            try:
                crash_request(admin, auth=bool(i % 2))
            except ConnectionRefusedError:
                time.sleep(0.5)
                assert proc.proc.poll() is None, f"bridge exited after {sent} requests"
                raise
            sent += 1
            time.sleep(0.01)
        time.sleep(0.3)
        assert proc.proc.poll() is None, f"bridge exited after {sent} requests"
        with httpx.Client(base_url=proc.url(""), timeout=5) as http:
            assert http.get("/healthz").status_code == 200
            streams = http.get("/v1/streams", headers={"Authorization": f"Bearer {TOKEN}"})
            assert [s["state"] for s in streams.json()["streams"]] == ["streaming"]
        assert echoed_one()
        call.close()
        errors = [ln for ln in follower.lines if ln.get("level") in ("error", "critical")]
        assert errors == []
    finally:
        proc.kill()
