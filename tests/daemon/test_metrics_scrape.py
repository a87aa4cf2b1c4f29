"""``/metrics`` of a running daemon, scraped over HTTP: every labelled series exists at 0
from the start, live streams by route, the stream setup latency, the RTP port pool."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import trio

from bridge.daemon._config import parse_config
from bridge.daemon._metrics import (
    BAD_INPUT_KINDS,
    HANGUP_REASONS,
    REFUSAL_REASONS,
    SETUP_STAGES,
)

from .asclient import AudioSocketCaller
from .conftest import make_config
from .scrape import label_sets, scrape, value

ROUTES = """
[[routes]]
name = "as-echo"
match = { listener = "audiosocket" }
app = { url = "echo:", encapsulation = "sln", sample_rate = 8000 }

[[routes]]
name = "rtp-echo"
match = { listener = "rtp" }
app = { url = "echo:", encapsulation = "sln", sample_rate = 8000 }

[[routes]]
name = "tw"
match = { listener = "websocket", path = "/twilio" }
carrier = "twilio"
app = { url = "echo:", encapsulation = "twilio" }
"""
PCM = b"\x10\x00" * 160


async def test_every_labelled_series_exists_at_zero_before_any_call(
    daemon_factory: Any, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        daemon = await daemon_factory(make_config(tmp_path, routes=ROUTES))
        m = await scrape(daemon.bound["admin"])
    routes = {"as-echo": "audiosocket", "rtp-echo": "rtp", "tw": "websocket"}
    for route, listener in routes.items():
        assert value(m, "bridge_streams_started_total", listener=listener, route=route) == 0
        for reason in HANGUP_REASONS:
            assert value(m, "bridge_streams_ended_total", route=route, reason=reason) == 0
        assert value(m, "bridge_app_reconnects_total", route=route) == 0
        assert value(m, "bridge_app_connect_failures_total", route=route) == 0
        assert value(m, "bridge_streams_live", route=route) == 0
    for listener in ("audiosocket", "websocket", "rtp"):
        for reason in REFUSAL_REASONS[listener]:
            assert value(m, "bridge_streams_refused_total", listener=listener, reason=reason) == 0
    for leg, kinds in BAD_INPUT_KINDS.items():
        for kind in kinds:
            assert value(m, "bridge_bad_input_total", leg=leg, kind=kind) == 0, (leg, kind)
    for stage in SETUP_STAGES:
        assert value(m, "bridge_stream_setup_seconds_count", stage=stage) == 0
    assert value(m, "bridge_rtp_ports_total") == 50  # 41000-41099, even ports
    assert value(m, "bridge_rtp_ports_in_use") == 0
    # The outbox's own labelled counters too.
    for cause in ("held_full", "shutdown"):
        assert value(m, "bridge_events_lost_total", cause=cause) == 0
    assert value(m, "bridge_outbox_healthy") == 1
    assert value(m, "bridge_ready") == 1


async def test_only_enabled_listeners_get_listener_series(
    daemon_factory: Any, tmp_path: Path
) -> None:
    config = parse_config(f"""
[admin]
listen = "127.0.0.1:0"
[audiosocket]
listen = "127.0.0.1:0"
[websocket]
listen = ""
[rtp]
ports = "41200-41209"
[records]
path = "{tmp_path / "r.db"}"
[[routes]]
name = "as-echo"
match = {{ listener = "audiosocket" }}
app = {{ url = "echo:" }}
""")
    with trio.fail_after(10):
        daemon = await daemon_factory(config)
        m = await scrape(daemon.bound["admin"])
    refused = {dict(ls)["listener"] for ls in label_sets(m, "bridge_streams_refused_total")}
    assert refused == {"audiosocket", "rtp"}  # [websocket] is off: no series for it
    legs = {dict(ls)["leg"] for ls in label_sets(m, "bridge_bad_input_total")}
    assert legs == {"audiosocket", "rtp", "app"}
    assert value(m, "bridge_rtp_ports_total") == 5


async def test_live_by_route_setup_latency_and_rtp_pool_move_with_calls(
    daemon_factory: Any, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        daemon = await daemon_factory(make_config(tmp_path, routes=ROUTES))
        host, port = daemon.bound["admin"]
        caller = await AudioSocketCaller.connect(*daemon.bound["audiosocket"])
        async with trio.open_nursery() as nursery, httpx.AsyncClient(
            base_url=f"http://{host}:{port}", timeout=5
        ) as http:
            nursery.start_soon(caller.receive_forever)
            while not caller.received:
                await caller.send_frame(PCM)
                await trio.sleep(0.02)
            r = await http.post("/v1/streams", json={"call_id": "c-rtp", "route": "rtp-echo"})
            assert r.status_code == 201, r.text
            rtp_id = r.json()["stream_id"]
            # First audio is read by the once-a-second sampler.
            while True:
                m = await scrape(daemon.bound["admin"])
                if value(m, "bridge_stream_setup_seconds_count", stage="first_audio") >= 1:
                    break
                await caller.send_frame(PCM)
                await trio.sleep(0.1)
            assert value(m, "bridge_streams_live", route="as-echo") == 1
            assert value(m, "bridge_streams_live", route="rtp-echo") == 1
            assert value(m, "bridge_streams_live", route="tw") == 0
            assert value(m, "bridge_rtp_ports_in_use") == 1
            connected = value(m, "bridge_stream_setup_seconds_count", stage="app_connected")
            assert connected >= 1  # the echo app connects at once
            first = value(m, "bridge_stream_setup_seconds_sum", stage="first_audio")
            assert 0 < first < 5
            # Echo: the first audio is out within a frame or two of the first caller frame.
            assert value(m, "bridge_stream_setup_seconds_bucket", stage="first_audio", le="1.0") == 1

            assert (await http.delete(f"/v1/streams/{rtp_id}")).status_code == 202
            await caller.aclose()
            nursery.cancel_scope.cancel()
        while daemon.manager.live_count:
            await trio.sleep(0.02)
        m = await scrape(daemon.bound["admin"])
    assert value(m, "bridge_streams_live", route="as-echo") == 0
    assert value(m, "bridge_streams_live", route="rtp-echo") == 0
    assert value(m, "bridge_rtp_ports_in_use") == 0
    assert value(m, "bridge_streams_ended_total", route="as-echo", reason="call_hangup") == 1
    assert not math.isnan(value(m, "bridge_stream_setup_seconds_count", stage="app_connected"))
