"""Carrier WebSocket call legs end to end: trio-websocket as the carrier (an independent
WebSocket implementation) and our own client; auth; re-dial resume; inbound app mode."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from bridge import HandshakeRejected
from bridge.daemon._carrier import twilio_signature
from bridge.dialects import Audio, Start, Stop
from bridge.dialects._plivo import PlivoPlatform
from bridge.dialects._sln import SlnApp
from bridge.dialects._telnyx import TelnyxPlatform
from bridge.dialects._twilio import TwilioPlatform
from bridge.transports import open_websocket_client

from .asclient import AudioSocketCaller
from .conftest import make_config
from .test_app_leg import AppServer, free_port, wait_until


def tone_frame(n: int) -> bytes:
    # Values that survive G.711 exactly are not needed here: compare µ-law payloads.
    return struct.pack("<h", 800 + (n % 50) * 100) * 160


def carrier_routes(app_url: str = "echo:", extra: str = "", auth: str = "") -> str:
    return "\n".join(
        f"""
[[routes]]
name = "{carrier}"
match = {{ listener = "websocket", path = "/{carrier}" }}
carrier = "{carrier}"
app = {{ url = "{app_url}", encapsulation = "sln" }}
{auth if carrier == "twilio" else ""}
stream = {{ {extra} }}
"""
        for carrier in ("twilio", "telnyx", "plivo")
    )


async def test_twilio_via_trio_websocket_echo(daemon_factory: Any, tmp_path: Path) -> None:
    with trio.fail_after(20):
        daemon = await daemon_factory(make_config(tmp_path, routes=carrier_routes()))
        host, port = daemon.bound["websocket"]
        twilio = TwilioPlatform("MZ0001", "CA0001", "AC0001", {"agent": "x"})
        received: list[dict[str, Any]] = []
        closes: list[int] = []
        async with trio_websocket.open_websocket(host, port, "/twilio", use_ssl=False) as ws:
            from bridge.dialects import Connected

            for ev in (Connected(), Start("MZ0001", "CA0001")):
                for msg in twilio.send(ev):
                    await ws.send_message(msg)

            async def reader() -> None:
                try:
                    while True:
                        received.append(json.loads(await ws.get_message()))
                except trio_websocket.ConnectionClosed as exc:
                    closes.append(exc.reason.code)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                for n in range(50):
                    msg = twilio.send_audio(tone_frame(n))
                    await ws.send_message(msg)
                    await trio.sleep(0.02)
                await trio.sleep(0.3)
                for msg in twilio.send(Stop()):
                    await ws.send_message(msg)
                await wait_until(lambda: daemon.manager.live_count == 0)
                nursery.cancel_scope.cancel()
    media = [m for m in received if m["event"] == "media"]
    sent_payloads = set()
    probe = TwilioPlatform("MZ0001", "CA0001", "AC0001")
    for n in range(50):
        sent_payloads.add(json.loads(probe.send_audio(tone_frame(n)))["media"]["payload"])
    echoed = [m["media"]["payload"] for m in media]
    # Every caller frame came back (µ-law payload identical); the rest is silence.
    assert sent_payloads <= set(echoed)
    assert all(set(m) == {"event", "streamSid", "media"} for m in media)  # Twilio's exact shape
    assert all(m["streamSid"] == "MZ0001" for m in media)
    assert closes == [1000]  # after Twilio's stop, bridge closes the stream normally


@pytest.mark.parametrize("carrier", ["telnyx", "plivo"])
async def test_telnyx_and_plivo_with_our_client(
    daemon_factory: Any, tmp_path: Path, carrier: str
) -> None:
    with trio.fail_after(20):
        daemon = await daemon_factory(make_config(tmp_path, routes=carrier_routes()))
        host, port = daemon.bound["websocket"]
        platform: Any = (
            TelnyxPlatform("st-1", "cc-1")
            if carrier == "telnyx"
            else PlivoPlatform("st-1", "call-1", "acc-1")
        )
        got: list[bytes] = []
        async with open_websocket_client(f"ws://{host}:{port}/{carrier}") as ws:
            from bridge.dialects import Connected

            for ev in (Connected(), Start("st-1", "cc-1" if carrier == "telnyx" else "call-1")):
                for msg in platform.send(ev):
                    await ws.send(msg)

            async def reader() -> None:
                while True:
                    for ev in platform.receive(await ws.receive()):
                        if isinstance(ev, Audio):
                            got.append(ev.frame.pcm)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                for n in range(40):
                    await ws.send(platform.send_audio(tone_frame(n)))
                    await trio.sleep(0.02)
                await trio.sleep(0.3)
                nursery.cancel_scope.cancel()
        await wait_until(lambda: daemon.manager.live_count == 0)
    loud = [p for p in got if any(p)]
    assert len(loud) == 40


async def test_auth_token_and_twilio_signature(daemon_factory: Any, tmp_path: Path) -> None:
    auth = 'auth = { token = "s3cret", twilio_auth_token = "tw-token" }'
    with trio.fail_after(20):
        daemon = await daemon_factory(make_config(tmp_path, routes=carrier_routes(auth=auth)))
        host, port = daemon.bound["websocket"]
        base = f"ws://{host}:{port}/twilio"
        with pytest.raises(HandshakeRejected) as info:
            async with open_websocket_client(base + "?token=wrong"):
                pass
        assert info.value.status == 401
        good_sig = twilio_signature("tw-token", f"wss://{host}:{port}/twilio?token=s3cret")
        with pytest.raises(HandshakeRejected):  # right token, no signature
            async with open_websocket_client(base + "?token=s3cret"):
                pass
        async with open_websocket_client(
            base + "?token=s3cret", headers=[("X-Twilio-Signature", good_sig)]
        ) as ws:
            assert not ws.closed
        with pytest.raises(HandshakeRejected) as info:
            async with open_websocket_client(f"ws://{host}:{port}/nowhere"):
                pass
        assert info.value.status == 404
    refusals = daemon.metrics.streams_refused
    assert refusals.labels(listener="websocket", reason="bad_token")._value.get() >= 1
    assert refusals.labels(listener="websocket", reason="bad_signature")._value.get() >= 1


async def test_max_streams_answers_503(daemon_factory: Any, tmp_path: Path) -> None:
    config = make_config(tmp_path, "", routes=carrier_routes())
    import msgspec

    config = msgspec.structs.replace(
        config, daemon=msgspec.structs.replace(config.daemon, max_streams=1)
    )
    with trio.fail_after(20):
        daemon = await daemon_factory(config)
        host, port = daemon.bound["websocket"]
        first = TwilioPlatform("MZ1", "CA1", "AC1")
        async with open_websocket_client(f"ws://{host}:{port}/twilio") as ws:
            for msg in first.send(Start("MZ1", "CA1")):
                await ws.send(msg)
            await wait_until(lambda: daemon.manager.live_count == 1)
            with pytest.raises(HandshakeRejected) as info:
                async with open_websocket_client(f"ws://{host}:{port}/twilio"):
                    pass
            assert info.value.status == 503


async def _twilio_call(host: str, port: int, sid: str, frames: int) -> None:
    platform = TwilioPlatform(sid, "CA-redial", "AC1")
    async with open_websocket_client(f"ws://{host}:{port}/twilio") as ws:
        for msg in platform.send(Start(sid, "CA-redial")):
            await ws.send(msg)
        for n in range(frames):
            await ws.send(platform.send_audio(tone_frame(n)))
            await trio.sleep(0.02)
        # Leave without a stop message or close frame: the carrier's socket dropped.
        await ws._abort(1006, "carrier dropped")


@pytest.mark.parametrize("window, gap, resumed", [("2s", 0.3, True), ("300ms", 1.0, False)])
async def test_carrier_redial_resumes_inside_window(
    daemon_factory: Any, tmp_path: Path, window: str, gap: float, resumed: bool
) -> None:
    app_port = free_port()
    routes = carrier_routes(f"ws://127.0.0.1:{app_port}/agent", f'reconnect_window = "{window}"')
    with trio.fail_after(30):
        daemon = await daemon_factory(make_config(tmp_path, routes=routes))
        host, port = daemon.bound["websocket"]
        async with trio.open_nursery() as nursery:
            app = AppServer(app_port, "--echo")
            await nursery.start(app.run)
            await _twilio_call(host, port, "MZ-redial", 20)
            await trio.sleep(gap)
            if resumed:
                assert daemon.manager.live_count == 1
                stream = daemon.manager.live()[0]
                await _twilio_call(host, port, "MZ-redial", 20)
                await trio.sleep(0.2)
                assert stream.call_resumes == 1
            await wait_until(lambda: daemon.manager.live_count == 0, 10)
            app.kill()
            nursery.cancel_scope.cancel()
    connects = [ln for ln in app.lines if "connect" in ln]
    assert len(connects) == 1  # never a new app connection for the same call
    frames = [ln for ln in app.lines if "frame" in ln]
    assert len(frames) == (40 if resumed else 20)


async def test_inbound_app_mode(daemon_factory: Any, tmp_path: Path) -> None:
    routes = """
[[routes]]
name = "as-accept"
match = { listener = "audiosocket" }
app = { mode = "accept", token = "app-token", encapsulation = "sln" }
stream = { accept_timeout = "5s" }
"""
    with trio.fail_after(20):
        daemon = await daemon_factory(make_config(tmp_path, routes=routes))
        wshost, wsport = daemon.bound["websocket"]
        caller = await AudioSocketCaller.connect(*daemon.bound["audiosocket"])
        await wait_until(lambda: daemon.manager.live_count == 1)
        stream_id = daemon.live_streams()[0]["stream_id"]
        media = f"ws://{wshost}:{wsport}/v1/streams/{stream_id}/media"
        with pytest.raises(HandshakeRejected) as info:
            async with open_websocket_client(media + "?token=nope"):
                pass
        assert info.value.status == 401
        with pytest.raises(HandshakeRejected) as info:
            async with open_websocket_client(
                f"ws://{wshost}:{wsport}/v1/streams/unknown/media?token=app-token"
            ):
                pass
        assert info.value.status == 404
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
                        await ws.send(ev.frame.pcm)  # the app echoes
            nursery.cancel_scope.cancel()
        assert app.stream_id == stream_id
        await caller.aclose()
        await wait_until(lambda: daemon.manager.live_count == 0)
    assert frames == 30

