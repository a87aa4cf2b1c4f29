"""``bridge echo-server``: every encapsulation echoes, and the fault injections work.

The client side is our own app-leg machinery: ``open_websocket_client`` plus the
*platform* role of each dialect, exactly what bridge's app leg uses.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio

from bridge._errors import ConnectionClosed, HandshakeRejected
from bridge.dialects import Audio, Connected, Mark, Start, Stop
from bridge.dialects._encapsulated import AudioSocketWsPlatform, RtpWsPlatform
from bridge.dialects._plivo import PlivoPlatform
from bridge.dialects._sln import SlnPlatform
from bridge.dialects._telnyx import TelnyxPlatform
from bridge.dialects._twilio import TwilioPlatform
from bridge.media import audioop
from bridge.tools import EchoOptions, EchoServer, serve_echo
from bridge.transports import WebSocketConnection, open_websocket_client

from ..daemon.rtpclient import ulaw_frame

FRAMES = 50


def pcm_frame(n: int) -> bytes:
    """160 distinct samples for frame n; µ-law exact (decoded from µ-law codes)."""
    return audioop.ulaw2lin(ulaw_frame(n), 2)


@pytest.fixture
async def echo() -> AsyncIterator[Callable[..., Any]]:
    async with trio.open_nursery() as nursery:

        async def start(**kw: Any) -> EchoServer:
            server: EchoServer = await nursery.start(serve_echo, EchoOptions(port=0, **kw))
            return server

        yield start
        nursery.cancel_scope.cancel()


def platform_for(enc: str) -> Any:
    if enc == "sln":
        return SlnPlatform("s1", "c1", 8000)
    if enc == "audiosocket":
        return AudioSocketWsPlatform("s1", "c1", 8000)
    if enc == "rtp":
        return RtpWsPlatform("s1", "c1", "pcmu", 8000)
    if enc == "twilio":
        return TwilioPlatform("MZ1", "CA1", "AC1")
    if enc == "telnyx":
        return TelnyxPlatform("s1", "v3:c1")
    if enc == "plivo":
        return PlivoPlatform("s1", "c1", "MA1", content_type="audio/x-mulaw;rate=8000")
    raise AssertionError(enc)


def start_messages(enc: str, platform: Any) -> list[Any]:
    out = list(platform.send(Connected())) if enc in ("twilio", "telnyx") else []
    return out + list(platform.send(Start("s1", "c1", 8000)))


def wire_payload(enc: str, message: Any) -> bytes:
    """The audio bytes inside one wire message, as they travel (no decoding)."""
    if enc == "sln":
        return bytes(message)
    if enc == "audiosocket":
        return bytes(message[3:])
    if enc == "rtp":
        return bytes(message[12:])
    obj = json.loads(message)
    media = obj["media"]
    return base64.b64decode(media["payload"])


async def receive_audio(
    ws: WebSocketConnection, platform: Any, n: int, within_s: float
) -> list[Any]:
    """Up to n audio messages (raw) that arrive within ``within_s``; control is skipped."""
    got: list[Any] = []
    with trio.move_on_after(within_s):
        while len(got) < n:
            message = await ws.receive()
            if any(isinstance(e, Audio) for e in platform.receive(message)):
                got.append(message)
    return got


@pytest.mark.parametrize("enc", ["sln", "audiosocket", "rtp", "twilio", "telnyx", "plivo"])
async def test_every_encapsulation_echoes_frames_identically(
    echo: Callable[..., Any], enc: str
) -> None:
    with trio.fail_after(10):
        server = await echo(encapsulation=enc)
        async with open_websocket_client(server.url, ping_interval_s=None) as ws:
            platform = platform_for(enc)
            for message in start_messages(enc, platform):
                await ws.send(message)
            sent = []
            for n in range(FRAMES):
                message = platform.send_audio(pcm_frame(n))
                sent.append(message)
                await ws.send(message)
            got = await receive_audio(ws, platform, FRAMES, 5)
            assert len(got) == FRAMES
            # Same audio back, byte for byte as it travels: L16 for sln/audiosocket,
            # the µ-law payload for rtp and the JSON carriers.
            assert [wire_payload(enc, m) for m in got] == [wire_payload(enc, m) for m in sent]
            for message in platform.send(Stop()):
                await ws.send(message)
        assert server.stats.frames == FRAMES
        assert server.stats.connections == 1


async def test_reject_answers_every_upgrade_with_the_status(echo: Callable[..., Any]) -> None:
    with trio.fail_after(5):
        server = await echo(reject=503)
        with pytest.raises(HandshakeRejected) as info:
            async with open_websocket_client(server.url, ping_interval_s=None):
                pass
        assert info.value.status == 503
        assert server.stats.rejected == 1


async def test_drop_after_aborts_without_a_closing_handshake(echo: Callable[..., Any]) -> None:
    with trio.fail_after(5):
        server = await echo(drop_after=10)
        async with open_websocket_client(server.url, ping_interval_s=None) as ws:
            platform = SlnPlatform("s1", "c1", 8000)
            for message in start_messages("sln", platform):
                await ws.send(message)
            for n in range(20):
                try:
                    await ws.send(pcm_frame(n))
                except ConnectionClosed:
                    break
            echoed = 0
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    message = await ws.receive()
                    echoed += isinstance(message, bytes)
        assert echoed == 10
        assert info.value.code != 1000  # abnormal closure (1006): no close frame came
        assert server.stats.dropped == 1


async def test_stall_after_stops_echoing_but_keeps_the_socket(echo: Callable[..., Any]) -> None:
    with trio.fail_after(5):
        server = await echo(stall_after=5)
        # A stalled server never answers our close frame: don't wait the default 2 s.
        async with open_websocket_client(
            server.url, ping_interval_s=None, close_timeout_s=0.2
        ) as ws:
            platform = SlnPlatform("s1", "c1", 8000)
            for message in start_messages("sln", platform):
                await ws.send(message)
            for n in range(20):
                await ws.send(pcm_frame(n))
            got = await receive_audio(ws, platform, 20, 0.5)
            assert len(got) == 5
            assert not ws.closed  # still open: stalled, not gone
        assert server.stats.stalled == 1


async def test_a_mark_is_echoed_once(echo: Callable[..., Any]) -> None:
    """The platform's mark comes back once; the same name coming back again (the
    platform echoing the echo) is not bounced a second time."""
    with trio.fail_after(5):
        server = await echo()
        async with open_websocket_client(server.url, ping_interval_s=None) as ws:
            platform = SlnPlatform("s1", "c1", 8000)
            for message in start_messages("sln", platform):
                await ws.send(message)
            for message in platform.send(Mark("m1")):
                await ws.send(message)
            first = await ws.receive()
            assert platform.receive(first) == [Mark("m1")]
            for message in platform.send(Mark("m1")):  # as bridge would echo it
                await ws.send(message)
            await ws.send(pcm_frame(0))
            # The next thing back is the audio, not another mark.
            assert isinstance(await ws.receive(), bytes)
        assert server.stats.marks == 2


async def test_malformed_input_closes_with_protocol_error(echo: Callable[..., Any]) -> None:
    with trio.fail_after(5):
        server = await echo()
        async with open_websocket_client(server.url, ping_interval_s=None) as ws:
            await ws.send("this is not json")
            with pytest.raises(ConnectionClosed) as info:
                await ws.receive()
        assert info.value.code == 1002
        assert server.stats.protocol_errors == 1


async def test_rtp_codec_follows_start_and_l16_is_exact(echo: Callable[..., Any]) -> None:
    with trio.fail_after(5):
        server = await echo(encapsulation="rtp")
        async with open_websocket_client(server.url, ping_interval_s=None) as ws:
            platform = RtpWsPlatform("s1", "c1", "l16", 16000)
            for message in platform.send(Start("s1", "c1", 16000)):
                await ws.send(message)
            frames = [struct.pack("<320h", *range(n, n + 320)) for n in range(10)]
            for pcm in frames:
                await ws.send(platform.send_audio(pcm))
            got = await receive_audio(ws, platform, 10, 3)
        back = [
            e.frame.pcm
            for m in got
            for e in RtpWsPlatform("s", "c", "l16", 16000).receive(m)
            if isinstance(e, Audio)
        ]
        assert back == frames


def test_cli_ready_line_serves_and_stops_on_sigterm() -> None:
    """`bridge echo-server --listen 127.0.0.1:0`: a ready line with the port, a working
    server, and a quiet exit 0 on SIGTERM."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridge",
            "echo-server",
            "--listen",
            "127.0.0.1:0",
            "--encapsulation",
            "twilio",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready ws://127.0.0.1:"), line
        url = line.split()[1]

        async def one_frame() -> None:
            async with open_websocket_client(url, ping_interval_s=None) as ws:
                platform = TwilioPlatform("MZ1", "CA1", "AC1")
                for message in start_messages("twilio", platform):
                    await ws.send(message)
                await ws.send(platform.send_audio(pcm_frame(1)))
                got = await receive_audio(ws, platform, 1, 3)
                assert len(got) == 1

        trio.run(one_frame)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
