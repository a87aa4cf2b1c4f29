"""Fuzz the admin port while three calls run: the daemon stays up, the calls lose nothing.

A fast, seeded version of bench/admin_load.py part (a): every attack class of
tests/daemon/adminfuzz.py (malformed request lines, huge headers, bad chunked bodies,
slowloris, pipelining, half-closed sockets, mid-body and mid-response disconnects, …)
against an in-process daemon with three AudioSocket calls to the ``echo:`` route.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from bridge.daemon._daemon import Daemon

from .adminfuzz import ATTACKS, EchoCall, run_fuzz
from .conftest import make_config

TOKEN = "fuzz-token"
SEED = int(os.environ.get("BRIDGE_FUZZ_SEED", "20240501"))


@pytest.fixture
def bridge_logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(logging.getLogger("bridge"), "propagate", True)
    caplog.set_level(logging.INFO, logger="bridge")
    return caplog


async def test_admin_fuzz_while_three_calls_run(
    daemon_factory: Any, tmp_path: Path, bridge_logs: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path)
    # A 1 s request timeout: the slowloris class (2 s of trickled headers) hits it. No
    # rate limit, so every attack reaches the parser (the limit has its own tests in
    # tests/transports/test_http.py); the per-peer connection cap stays.
    admin = msgspec.structs.replace(config.admin, token=TOKEN, request_timeout="1s", rate_limit=0)
    config = msgspec.structs.replace(config, admin=admin)
    with trio.fail_after(60):
        daemon: Daemon = await daemon_factory(config)
        admin_host, admin_port = daemon.bound["admin"]
        stop = trio.Event()
        calls = [EchoCall(*daemon.bound["audiosocket"], frames=3000, stop=stop) for _ in range(3)]
        ran: dict[str, int] = {}
        async with trio.open_nursery() as nursery:
            for call in calls:
                nursery.start_soon(call.run)
            for call in calls:
                await call.streaming.wait()
            ran = await run_fuzz(admin_host, admin_port, seed=SEED, rounds=120, concurrency=8)
            await trio.sleep(0.5)
            stop.set()

        # ---- every attack class ran; the calls lost nothing and kept their order
        assert set(ran) == set(ATTACKS) and all(ran.values()), ran
        for call in calls:
            assert not call.hung_up
            assert call.sent > 100
            assert call.lost == 0, (call.sent, len(call.echoed))
            assert call.in_order

        # ---- the daemon is up, the admin listener never failed, and it still serves
        assert daemon.supervisors["admin"].failures == 0
        async with httpx.AsyncClient(base_url=f"http://{admin_host}:{admin_port}") as http:
            r = await http.get("/healthz")
            assert r.status_code == 200
            r = await http.get("/v1/streams", headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200
        stats = daemon.metrics.registry.get_sample_value
        # (Which other kinds show depends on what the slowloris round's per-peer cap
        # refused at the time; tests/transports/test_http.py covers each.)
        for kind in ("malformed", "timeout"):
            assert (stats("bridge_admin_connection_errors_total", {"kind": kind}) or 0) > 0, kind
        # Slowloris: 24 connections from one address, 16 allowed at once.
        assert (
            stats("bridge_admin_refused_total", {"reason": "max_connections_per_peer"}) or 0
        ) > 0
        assert (stats("bridge_admin_connection_errors_total", {"kind": "internal"}) or 0) == 0

    # ---- nothing the clients did is an ERROR or a traceback
    bad = [r for r in bridge_logs.records if r.levelno >= logging.ERROR or r.exc_info]
    assert bad == [], [r.getMessage() for r in bad]
