"""The listeners' one admission check (``CallAdmission.check_admission``): once the daemon
drains (SIGTERM), every listener refuses a new call the same way, before it spends
anything on it, and says why (``draining``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bridge import HandshakeRejected
from bridge.daemon._daemon import Daemon
from bridge.dialects import Start
from bridge.dialects._twilio import TwilioPlatform
from bridge.transports import open_websocket_client

from .asclient import AudioSocketCaller
from .conftest import make_config

ROUTES = """
[[routes]]
name = "as-echo"
match = { listener = "audiosocket" }
app = { url = "echo:", encapsulation = "sln" }

[[routes]]
name = "twilio"
match = { listener = "websocket", path = "/twilio" }
carrier = "twilio"
app = { url = "echo:", encapsulation = "sln" }

[[routes]]
name = "rtp-echo"
match = { listener = "rtp" }
app = { url = "echo:", encapsulation = "sln" }
"""


def refused(daemon: Daemon, listener: str, reason: str) -> float:
    counter = daemon.metrics.registry.get_sample_value(
        "bridge_streams_refused_total", {"listener": listener, "reason": reason}
    )
    return counter or 0.0


async def test_a_draining_daemon_refuses_on_every_listener(
    daemon_factory: Any, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        daemon: Daemon = await daemon_factory(make_config(tmp_path, routes=ROUTES))
        # The moment a SIGTERM arrives (before the stream manager drains, too).
        daemon.stopping = True

        # AudioSocket: the hangup frame, nothing else.
        host, port = daemon.bound["audiosocket"]
        caller = await AudioSocketCaller.connect(host, port)
        await caller.receive_forever()
        await caller.stream.aclose()
        assert caller.hung_up and not caller.received

        # Carrier WebSocket: 503 before the upgrade.
        host, port = daemon.bound["websocket"]
        with pytest.raises(HandshakeRejected) as info:
            async with open_websocket_client(f"ws://{host}:{port}/twilio") as ws:
                for msg in TwilioPlatform("MZ1", "CA1", "AC1").send(Start("MZ1", "CA1")):
                    await ws.send(msg)
        assert info.value.status == 503

        # RTP: 503 before a port is bound.
        host, port = daemon.bound["admin"]
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5) as http:
            r = await http.post("/v1/streams", json={"call_id": "c-1", "route": "rtp-echo"})
        assert r.status_code == 503 and r.json()["reason"] == "draining"

        assert daemon.manager.started_total == 0
        for listener in ("audiosocket", "websocket", "rtp"):
            assert refused(daemon, listener, "draining") == 1, listener
