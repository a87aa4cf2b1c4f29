"""``bridge run`` on a corrupt records database starts (instead of exiting 1 and being
restarted by systemd in a loop): the file is moved aside with one ERROR line."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx

from .proc import BridgeProcess, write_config


def test_bridge_run_moves_a_corrupt_records_database_aside_and_starts(tmp_path: Path) -> None:
    db = tmp_path / "bridge.sqlite3"
    garbage = b"this is not an SQLite file\n" + os.urandom(4096)
    db.write_bytes(garbage)
    proc = BridgeProcess(write_config(tmp_path))
    try:
        proc.wait_ready()
        assert httpx.get(proc.url("/readyz"), timeout=2).status_code == 200
        proc.proc.send_signal(signal.SIGTERM)
        rc = proc.proc.wait(timeout=10)
    finally:
        proc.kill()
    assert rc == 0
    [line] = [ln for ln in proc.lines if str(ln.get("msg", "")).startswith("records database")]
    assert line["level"] == "error"
    moved = Path(line["moved_to"])
    assert moved.parent == tmp_path and moved.name.startswith("bridge.sqlite3.corrupt-")
    assert moved.read_bytes() == garbage
    assert "started a fresh one" in line["msg"] and str(moved) in line["msg"]
