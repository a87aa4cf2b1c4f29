"""Two daemons in one cluster (a real Redis), each on its own WebSocket port so a test
can send a re-dial or an app connection to the process that does *not* own the stream:
it must be carried to the owner and resume there exactly as on one process.

Both ways of carrying are tested: the descriptor over a Unix socket (same host,
``socket_dir`` set) and the byte relay over the cluster's TCP port (``socket_dir = ""``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from bridge import HandshakeRejected
from bridge.daemon._config import Config
from bridge.daemon._daemon import Daemon
from bridge.dialects import Audio, Start
from bridge.dialects._sln import SlnApp
from bridge.dialects._twilio import TwilioPlatform
from bridge.transports import open_websocket_client

from ..daemon.asclient import AudioSocketCaller
from ..daemon.callback_receiver import open_callback_receiver
from ..daemon.conftest import make_config
from ..daemon.test_app_leg import AppServer, free_port, wait_until
from ..daemon.test_carrier_leg import tone_frame
from .conftest import cluster_section


def _config(tmp: Path, name: str, redis_url: str, prefix: str, routes: str, socket_dir: str) -> Config:
    extra = cluster_section(redis_url, prefix, name, socket_dir) + "\n[daemon]\nread_poller = false\n"
    # make_config writes [daemon] itself: merge the read_poller line into it instead.
    extra = extra.replace("\n[daemon]\nread_poller = false\n", "")
    config = make_config(tmp / name, extra, routes=routes)
    import msgspec

    return msgspec.structs.replace(
        config, daemon=msgspec.structs.replace(config.daemon, read_poller=False)
    )


def _twilio_routes(app_url: str, callback: str = "") -> str:
    return f"""
[[routes]]
name = "twilio"
match = {{ listener = "websocket", path = "/twilio" }}
carrier = "twilio"
app = {{ url = "{app_url}", encapsulation = "sln" }}
stream = {{ reconnect_window = "1500ms" }}
{callback}
"""


async def _twilio_leg(host: str, port: int, sid: str, first: int, frames: int) -> None:
    platform = TwilioPlatform(sid, "CA-cluster", "AC1")
    async with open_websocket_client(f"ws://{host}:{port}/twilio") as ws:
        for msg in platform.send(Start(sid, "CA-cluster")):
            await ws.send(msg)
        for n in range(first, first + frames):
            await ws.send(platform.send_audio(tone_frame(n)))
            await trio.sleep(0.02)
        await ws._abort(1006, "carrier dropped")  # no stop, no close frame: a lost socket


@pytest.fixture
async def pair(tmp_path: Path, redis_url: str, prefix: str) -> Any:
    """``await start(routes, socket_dir)`` -> (daemon A, daemon B), both running."""
    async with trio.open_nursery() as nursery:

        async def start(routes: str, socket_dir: str) -> tuple[Daemon, Daemon]:
            out = []
            for name in ("a", "b"):
                daemon = Daemon(_config(tmp_path, name, redis_url, prefix, routes, socket_dir))
                await nursery.start(daemon.serve)
                out.append(daemon)
            return out[0], out[1]

        yield start
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("via", ["fd", "relay"])
async def test_redial_on_the_other_process_resumes_on_the_owner(
    pair: Any, tmp_path: Path, via: str
) -> None:
    app_port = free_port()
    socket_dir = str(tmp_path / "run") if via == "fd" else ""
    with trio.fail_after(40):
        async with open_callback_receiver() as rx:
            routes = _twilio_routes(
                f"ws://127.0.0.1:{app_port}/agent", f'callback = {{ url = "{rx.url}" }}'
            )
            a, b = await pair(routes, socket_dir)
            async with trio.open_nursery() as nursery:
                app = AppServer(app_port, "--echo")
                await nursery.start(app.run)
                await _twilio_leg(*a.bound["websocket"], "MZ-1", 0, 20)
                await wait_until(lambda: a.manager.live_count == 1)
                stream = a.manager.live()[0]
                await wait_until(lambda: stream.awaiting_call)
                # The re-dial lands on B, which does not own the stream.
                await _twilio_leg(*b.bound["websocket"], "MZ-1", 20, 20)
                assert stream.call_resumes == 1
                assert b.manager.live_count == 0
                assert a.manager.live_count == 1
                await wait_until(lambda: a.manager.live_count == 0, 10)
                await rx.wait_for(lambda rx: {"StartStream", "StopStream"} <= {
                    body["event"] for body in rx.delivered_bodies()
                })
                app.kill()
                nursery.cancel_scope.cancel()
    connects = [ln for ln in app.lines if "connect" in ln]
    assert len(connects) == 1  # one app connection for the whole call
    assert len(app.frames()) == 40  # both legs' audio reached the one app session
    starts = [b for b in rx.delivered_bodies() if b["event"] == "StartStream"]
    assert len(starts) == 1 and starts[0]["stream_id"] == stream.stream_id
    sent = a.metrics.registry.get_sample_value(
        "bridge_cluster_handoffs_total", {"kind": "carrier", "via": via, "outcome": "adopted"}
    )
    assert sent == 1
    got = b.metrics.registry.get_sample_value(
        "bridge_cluster_handoffs_total", {"kind": "carrier", "via": via, "outcome": "sent"}
    )
    assert got == 1


_ACCEPT_ROUTE = """
[[routes]]
name = "as-accept"
match = { listener = "audiosocket" }
app = { mode = "accept", token = "app-token", encapsulation = "sln" }
stream = { accept_timeout = "5s" }
"""


@pytest.mark.parametrize("via", ["fd", "relay"])
async def test_inbound_app_on_the_other_process_reaches_its_stream(
    pair: Any, tmp_path: Path, via: str
) -> None:
    socket_dir = str(tmp_path / "run") if via == "fd" else ""
    with trio.fail_after(30):
        a, b = await pair(_ACCEPT_ROUTE, socket_dir)
        caller = await AudioSocketCaller.connect(*a.bound["audiosocket"])
        await wait_until(lambda: a.manager.live_count == 1)
        stream_id = a.live_streams()[0]["stream_id"]
        await wait_until(lambda: a.cluster.registry.dirty_count == 0)
        host, port = b.bound["websocket"]
        media = f"ws://{host}:{port}/v1/streams/{stream_id}/media"
        # B checks the route's token itself before carrying anything.
        with pytest.raises(HandshakeRejected) as info:
            async with open_websocket_client(media + "?token=nope"):
                pass
        assert info.value.status == 401
        app = SlnApp()
        frames = 0
        async with (
            open_websocket_client(media + "?token=app-token") as ws,
            trio.open_nursery() as nursery,
        ):

            async def talk() -> None:
                for n in range(30):
                    await caller.send_frame(tone_frame(n))
                    await trio.sleep(0.02)

            nursery.start_soon(talk)
            while frames < 30:
                for ev in app.receive(await ws.receive()):
                    if isinstance(ev, Audio):
                        frames += 1
                        await ws.send(ev.frame.pcm)
            nursery.cancel_scope.cancel()
        assert app.stream_id == stream_id
        await caller.aclose()
        await wait_until(lambda: a.manager.live_count == 0)
    assert frames == 30
    assert b.manager.live_count == 0


async def test_admin_api_is_cluster_wide(pair: Any, tmp_path: Path) -> None:
    from bridge.cluster import ClusterBackend

    with trio.fail_after(30):
        a, b = await pair(_ACCEPT_ROUTE, str(tmp_path / "run"))
        caller = await AudioSocketCaller.connect(*a.bound["audiosocket"])
        await wait_until(lambda: a.manager.live_count == 1)
        stream_id = a.live_streams()[0]["stream_id"]
        await wait_until(lambda: a.cluster.registry.dirty_count == 0)
        backend = ClusterBackend(b, b.cluster)
        # The async listing reads Redis afresh; the sync one within about a second.
        listed = await backend.list_streams(state="live", since=None, limit=100)
        assert [(s["stream_id"], s["owner"]) for s in listed] == [(stream_id, "a")]
        await wait_until(lambda: [s["stream_id"] for s in backend.live_streams()] == [stream_id], 5)
        snap = await backend.get_stream(stream_id)
        assert snap is not None and snap["owner"] == "a" and snap["stream_id"] == stream_id
        assert await backend.get_stream("no-such-stream") is None
        assert await backend.stop_stream(stream_id)
        await wait_until(lambda: a.manager.live_count == 0)
        ended = await backend.get_stream(stream_id)  # ended: from the owner's records
        assert ended is not None and ended["owner"] == "a"
        await caller.aclose()
