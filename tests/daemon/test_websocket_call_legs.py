"""The WebSocket call legs the registry added, against a real daemon, driven by an
independent peer (``wspeer``: the ``websockets`` library's threaded client, written to
each platform's documented protocol, sharing no code with bridge's dialects).

Each test is one call through ``[websocket]`` to a scripted sln app: the caller's audio
is echoed by the app and comes back whole and in order; a mark comes back when the peer
echoes it; a mark in flight is settled by a clear; the caller's DTMF reaches the app and
the app's DTMF is answered ``dtmf_unsupported``; the app's hangup hangs up the call.
Then ``bridge call --transport <dialect>`` (in-process) against the daemon: every frame
comes back.
"""

from __future__ import annotations

import base64
import functools
import json
import struct
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from bridge._errors import ConnectionClosed
from bridge.daemon._daemon import Daemon
from bridge.dialects import Audio, Clear, Dtmf, Event, Hangup, Mark
from bridge.dialects._sln import SlnApp
from bridge.tools import CallGenerator, CallOptions
from bridge.transports import WebSocketConnection, WebSocketRequest, serve_websocket

from .conftest import make_config
from .wspeer import WsPeer


@attrs.define(eq=False)
class App:
    """An sln app that echoes the caller's audio (when ``echo``) and records the rest."""

    echo: bool = True
    dialect: SlnApp = attrs.field(factory=SlnApp)
    ws: WebSocketConnection | None = None
    controls: list[dict[str, Any]] = attrs.field(factory=list)
    events: list[Event] = attrs.field(factory=list)
    frames_in: int = 0
    connected: trio.Event = attrs.field(factory=trio.Event)
    closed: trio.Event = attrs.field(factory=trio.Event)

    async def handle(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        self.ws = ws
        self.connected.set()
        try:
            while True:
                message = await ws.receive()
                if isinstance(message, str):
                    self.controls.append(json.loads(message))
                for event in self.dialect.receive(message):
                    if isinstance(event, Audio):
                        self.frames_in += 1
                        if self.echo:
                            ws.send_nowait(event.frame.pcm)
                    else:
                        self.events.append(event)
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def send(self, *items: Event | bytes) -> None:
        assert self.ws is not None
        for item in items:
            if isinstance(item, bytes):
                await self.ws.send(item)
            else:
                for message in self.dialect.send(item):
                    await self.ws.send(message)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [c for c in self.controls if c.get("event") == event]


def caller_frame(n: int) -> bytes:
    """20 ms of slin 8 kHz whose samples carry the frame's number (1000 + n)."""
    return struct.pack("<h", 1000 + n) * 160


def app_frame(n: int) -> bytes:
    return struct.pack("<h", 3000 + n) * 160


def numbers(chunks: list[bytes], base: int, size: int = 320) -> list[int]:
    """The numbered frames in what the peer received (silence and others skipped)."""
    out = []
    for chunk in chunks:
        for i in range(0, len(chunk) - size + 1, size):
            value = struct.unpack_from("<h", chunk, i)[0]
            if base <= value < base + 1000 and chunk[i : i + size] == struct.pack("<h", value) * (size // 2):
                out.append(value - base)
    return out


async def start(
    nursery: trio.Nursery, daemon_factory: Any, tmp_path: Path, route: str, *, echo: bool = True
) -> tuple[Daemon, App]:
    app = App(echo=echo)
    addresses = await nursery.start(functools.partial(serve_websocket, app.handle, "127.0.0.1", 0))
    host, port = addresses[0]
    daemon: Daemon = await daemon_factory(
        make_config(tmp_path, routes=route.replace("APP_URL", f"ws://{host}:{port}/agent"))
    )
    return daemon, app


async def until(predicate: Any, timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.01)


# ======================================================================= Asterisk

ASTERISK_ROUTE = """
[[routes]]
name = "asterisk"
match = { listener = "websocket", subprotocol = "media" }
carrier = "asterisk_ws"
carrier_options = { answer = true, call_id_query = "callid" }
app = { url = "APP_URL", encapsulation = "sln" }
"""
CHANNEL_ID = "1733150000.42"
MEDIA_START = (
    "MEDIA_START connection_id:bridge_media channel:WebSocket/bridge_media/0x7f3a2c001230 "
    f"channel_id:{CHANNEL_ID} format:slin optimal_frame_size:320 ptime:20"
)


async def test_asterisk_chan_websocket_call_leg(daemon_factory: Any, tmp_path: Path) -> None:
    """chan_websocket as PROTOCOLS.md §3 observed it: Dial(WebSocket/<client>/c(slin)n)
    with v(callid=call-77) on the URL. Today's main answers its first message with close
    1008 "protocol error"."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            daemon, app = await start(nursery, daemon_factory, tmp_path, ASTERISK_ROUTE)
            host, port = daemon.bound["websocket"]
            peer = WsPeer(f"ws://{host}:{port}/bridge?callid=call-77", ["media"])
            await peer.call(peer.open)
            assert peer.subprotocol == "media"  # echoed, though Asterisk does not need it
            await peer.call(peer.send, MEDIA_START)
            # The n dial option: bridge answers once it has taken the call.
            await peer.wait_for(lambda: peer.texts())
            assert peer.texts()[0] == "ANSWER"
            await until(lambda: app.named("start"))
            (start_msg,) = app.named("start")
            assert start_msg["call_id"] == "call-77"  # from the v() parameter
            assert start_msg["metadata"]["channel_id"] == CHANNEL_ID
            assert start_msg["metadata"]["call_leg"] == "asterisk_ws"

            # Echo: 50 caller frames, paced, come back whole and in order.
            await peer.call(peer.send_paced, [caller_frame(n) for n in range(50)], 0.02)
            await peer.wait_for(lambda: numbers(peer.binary(), 1000)[-1:] == [49])
            assert numbers(peer.binary(), 1000) == list(range(50))
            assert all(len(b) == 320 for b in peer.binary())  # whole optimal frames only
            app.echo = False

            # A mark after its audio: MARK_MEDIA under a short id, echoed by Asterisk.
            await app.send(*(app_frame(n) for n in range(5)), Mark("greeting done"))
            await peer.wait_for(lambda: "MARK_MEDIA m1" in peer.texts())
            assert numbers(peer.binary(), 3000)[-5:] == [0, 1, 2, 3, 4]  # audio first
            await peer.call(peer.send, "MEDIA_MARK_PROCESSED m1")
            await until(lambda: app.named("mark"))
            assert app.named("mark") == [{"event": "mark", "name": "greeting done"}]

            # A mark in flight when the app clears: FLUSH_MEDIA drops it on Asterisk's
            # side without an event, so bridge settles it: played or cleared.
            await app.send(*(app_frame(n) for n in range(5, 8)), Mark(7))
            await peer.wait_for(lambda: "MARK_MEDIA m2" in peer.texts())
            await app.send(Clear())
            await peer.wait_for(lambda: "FLUSH_MEDIA" in peer.texts())
            await until(lambda: app.named("cleared"))
            marks_and_cleared = [c for c in app.controls if c["event"] in ("mark", "cleared")]
            assert marks_and_cleared[1:] == [{"event": "mark", "name": 7}, {"event": "cleared"}]

            # DTMF: the caller's reaches the app; the app's cannot reach the caller.
            await peer.call(peer.send, f"DTMF_END digit:5 channel_id:{CHANNEL_ID}")
            await until(lambda: app.named("dtmf"))
            assert app.named("dtmf") == [{"event": "dtmf", "digit": "5"}]
            await app.send(Dtmf("1"))
            await until(lambda: app.named("error"))
            (error,) = app.named("error")
            assert error["error"] == "dtmf_unsupported" and "asterisk_ws" in error["message"]

            # Flow control: after MEDIA_XOFF nothing goes to Asterisk, not even silence;
            # the app's audio waits, and follows MEDIA_XON in order.
            await peer.call(peer.send, "MEDIA_XOFF")
            await trio.sleep(0.1)
            before = len(peer.binary())
            for n in range(10, 20):
                await app.send(app_frame(n))
                await trio.sleep(0.02)
            await trio.sleep(0.1)
            assert len(peer.binary()) == before
            await peer.call(peer.send, "MEDIA_XON")
            await peer.wait_for(lambda: numbers(peer.binary()[before:], 3000) == list(range(10, 20)))

            # The app hangs up: HANGUP, then Asterisk closes with 1000 (here: bridge).
            await app.send(Hangup())
            await peer.call(peer.closed.wait, 5)
            assert peer.texts()[-1] == "HANGUP"
            assert peer.close_code == 1000
            await until(lambda: daemon.manager.live_count == 0)
            await peer.call(peer.close)
            nursery.cancel_scope.cancel()
    assert app.frames_in >= 50


async def test_asterisk_hangs_up_and_gaps_are_not_loss(daemon_factory: Any, tmp_path: Path) -> None:
    """Asterisk sends no media while the channel is silent (Wait, SendDTMF): the stream
    simply goes on; its hangup is a close 1000, and the app gets stop(call_hangup)."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            daemon, app = await start(
                nursery, daemon_factory, tmp_path, ASTERISK_ROUTE.replace("answer = true", "answer = false")
            )
            host, port = daemon.bound["websocket"]
            peer = WsPeer(f"ws://{host}:{port}/asterisk", ["media"])
            await peer.call(peer.open)
            await peer.call(peer.send, MEDIA_START)
            await until(lambda: app.named("start"))
            assert app.named("start")[0]["call_id"] == CHANNEL_ID  # no v() parameter here
            await peer.call(peer.send_paced, [caller_frame(n) for n in range(10)], 0.02)
            await trio.sleep(1.0)  # a gap: no media at all
            # The last piece of a playback comes short (276 B here): padded, not lost.
            await peer.call(peer.send_paced, [caller_frame(n) for n in range(10, 20)] + [caller_frame(20)[:276]], 0.02)
            await until(lambda: app.frames_in >= 21)
            (stream,) = daemon.manager.live()
            assert stream.frames_in == 21
            assert "ANSWER" not in peer.texts()
            await peer.call(peer.close, 1000)
            await until(lambda: daemon.manager.live_count == 0)
            await until(lambda: app.named("stop"))
            nursery.cancel_scope.cancel()
    assert app.named("stop") == [{"event": "stop", "reason": "call_hangup"}]
    assert stream.reason == "call_hangup"


# ======================================================================= Exotel

EXOTEL_ROUTE = """
[[routes]]
name = "exotel"
match = { listener = "websocket", path = "/exotel" }
carrier = "exotel"
app = { url = "APP_URL", encapsulation = "sln" }
"""


def exotel(event: str, **fields: Any) -> str:
    return json.dumps({"event": event, "stream_sid": "ST-9", **fields})


def exotel_media(n: int, chunk: int, pcm: bytes) -> str:
    payload = base64.b64encode(pcm).decode()
    return exotel("media", sequence_number=str(n + 2), media={"chunk": str(chunk), "timestamp": str(100 * chunk), "payload": payload})


async def test_exotel_call_leg(daemon_factory: Any, tmp_path: Path) -> None:
    """Exotel's Voicebot applet per its AgentStream WebSocket protocol page."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            daemon, app = await start(nursery, daemon_factory, tmp_path, EXOTEL_ROUTE)
            host, port = daemon.bound["websocket"]
            peer = WsPeer(f"ws://{host}:{port}/exotel")
            await peer.call(peer.open)
            await peer.call(peer.send, json.dumps({"event": "connected"}))
            start_body = {
                "stream_sid": "ST-9",
                "call_sid": "CALL-9",
                "account_sid": "acct",
                "from": "+911234",
                "to": "+915678",
                "custom_parameters": {},
                "media_format": {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "128"},
            }
            await peer.call(peer.send, exotel("start", sequence_number="1", start=start_body))
            await until(lambda: app.named("start"))
            assert app.named("start")[0]["call_id"] == "CALL-9"

            # Exotel sends ~100 ms chunks: 10 of them, each five numbered frames.
            chunks = [b"".join(caller_frame(5 * c + i) for i in range(5)) for c in range(10)]
            await peer.call(
                peer.send_paced, [exotel_media(c, c + 1, pcm) for c, pcm in enumerate(chunks)], 0.1
            )
            back: list[bytes] = []

            def media_back() -> list[bytes]:
                back[:] = [
                    base64.b64decode(json.loads(t)["media"]["payload"])
                    for t in peer.texts()
                    if json.loads(t)["event"] == "media"
                ]
                return back

            await peer.wait_for(lambda: numbers(media_back(), 1000)[-1:] == [49], 10)
            assert numbers(back, 1000) == list(range(50))
            # What bridge sends Exotel keeps Exotel's rule: multiples of 320 bytes, at
            # least 3.2 KB (the route's min_chunk_bytes, by default the documented one).
            assert all(len(b) % 320 == 0 and len(b) >= 3200 for b in back)
            app.echo = False

            # Marks: Exotel echoes a mark once the audio before it played.
            await app.send(*(app_frame(n) for n in range(3)), Mark("m-a"))
            await peer.wait_for(lambda: any(json.loads(t)["event"] == "mark" for t in peer.texts()))
            mark = next(json.loads(t) for t in peer.texts() if json.loads(t)["event"] == "mark")
            assert mark == {"event": "mark", "stream_sid": "ST-9", "mark": {"name": "m1"}}
            await peer.call(peer.send, exotel("mark", sequence_number="20", mark={"name": "m1"}))
            await until(lambda: app.named("mark"))
            assert app.named("mark") == [{"event": "mark", "name": "m-a"}]
            # A mark still in flight at a clear is settled by bridge (UNCONFIRMED on Exotel).
            await app.send(app_frame(9), Mark("m-b"))
            await peer.wait_for(lambda: sum(json.loads(t)["event"] == "mark" for t in peer.texts()) == 2)
            await app.send(Clear())
            await peer.wait_for(lambda: any(json.loads(t)["event"] == "clear" for t in peer.texts()))
            await until(lambda: app.named("cleared"))
            assert app.named("mark")[1:] == [{"event": "mark", "name": "m-b"}]

            # DTMF both ways.
            await peer.call(peer.send, exotel("dtmf", sequence_number="30", dtmf={"digit": "7", "duration": "100"}))
            await until(lambda: app.named("dtmf"))
            assert app.named("dtmf") == [{"event": "dtmf", "digit": "7"}]
            await app.send(Dtmf("1"))
            await until(lambda: app.named("error"))
            assert app.named("error")[0]["error"] == "dtmf_unsupported"

            # The app hangs up: closing the socket is how an Exotel stream ends.
            await app.send(Hangup())
            await peer.call(peer.closed.wait, 5)
            assert peer.close_code == 1000
            await until(lambda: daemon.manager.live_count == 0)
            await peer.call(peer.close)
            nursery.cancel_scope.cancel()


async def test_exotel_stop_ends_the_stream(daemon_factory: Any, tmp_path: Path) -> None:
    route = EXOTEL_ROUTE.replace('carrier = "exotel"', 'carrier = "exotel"\ncarrier_options = { min_chunk_bytes = 320 }')
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            daemon, app = await start(nursery, daemon_factory, tmp_path, route)
            host, port = daemon.bound["websocket"]
            peer = WsPeer(f"ws://{host}:{port}/exotel")
            await peer.call(peer.open)
            start_body = {"stream_sid": "ST-1", "call_sid": "CALL-1", "media_format": {"encoding": "raw", "sample_rate": 16000, "bit_rate": "16"}}
            await peer.call(peer.send, json.dumps({"event": "start", "sequence_number": 1, "stream_sid": "ST-1", "start": start_body}))
            with trio.fail_after(5):
                await app.connected.wait()
            frames = [struct.pack("<h", 1000 + n) * 320 for n in range(5)]  # 20 ms at 16 kHz
            await peer.call(peer.send_paced, [json.dumps({"event": "media", "stream_sid": "ST-1", "media": {"chunk": n + 1, "timestamp": 20 * n, "payload": base64.b64encode(f).decode()}}) for n, f in enumerate(frames)], 0.02)
            await until(lambda: app.frames_in >= 5)
            # min_chunk_bytes = 320: every 20 ms frame goes out at once (640 B at 16 kHz).
            await peer.wait_for(lambda: len([t for t in peer.texts() if '"media"' in t]) >= 5)
            sizes = {len(base64.b64decode(json.loads(t)["media"]["payload"])) for t in peer.texts() if '"media"' in t}
            assert sizes == {640}
            await peer.call(peer.send, json.dumps({"event": "stop", "stream_sid": "ST-1", "stop": {"call_sid": "CALL-1", "reason": "callended"}}))
            await until(lambda: daemon.manager.live_count == 0)
            await until(lambda: app.named("stop"))
            await peer.call(peer.close)
            nursery.cancel_scope.cancel()
    assert app.named("stop") == [{"event": "stop", "reason": "call_hangup"}]


# ======================================================================= bridge call

@pytest.mark.parametrize(
    ("transport", "route", "rate"),
    [
        ("asterisk-ws", ASTERISK_ROUTE, 8000),
        ("asterisk-ws", ASTERISK_ROUTE, 16000),
        ("exotel", EXOTEL_ROUTE, 8000),
    ],
)
async def test_bridge_call_places_calls_over_the_new_legs(
    daemon_factory: Any, tmp_path: Path, transport: str, route: str, rate: int
) -> None:
    """``bridge call --transport <dialect>`` against the daemon (echo app): every frame
    comes back, once, in order."""
    frames = 50
    with trio.fail_after(30):
        daemon: Daemon = await daemon_factory(
            make_config(tmp_path, routes=route.replace("APP_URL", "echo:").replace(
                'encapsulation = "sln"', f'encapsulation = "sln", sample_rate = {rate}'
            ).replace("answer = true", "answer = false"))
        )
        host, port = daemon.bound["websocket"]
        path = "/asterisk" if transport == "asterisk-ws" else "/exotel"
        options = CallOptions(
            transport=transport,
            target=f"ws://{host}:{port}{path}",
            duration_s=frames * 0.02,
            sample_rate=rate,
            tail_s=3.0,
        )
        report = await CallGenerator(options).run()
        await until(lambda: daemon.manager.live_count == 0)
    (call,) = report.calls
    assert call.connected and call.hangup == "caller_hangup", (call.hangup, call.error)
    sent = call.frames_sent
    assert sent >= frames - 3
    assert (call.frames_echoed, call.lost, call.duplicates, call.out_of_order) == (sent, 0, 0, 0)


# ======================================================================= Vonage

VONAGE_ROUTE = """
[[routes]]
name = "vonage"
match = { listener = "websocket", path = "/vonage" }
carrier = "vonage"
app = { url = "APP_URL", encapsulation = "sln", sample_rate = 16000 }
"""


def frame16(n: int, base: int = 1000) -> bytes:
    return struct.pack("<h", base + n) * 320  # 20 ms at 16 kHz: 640 bytes


async def test_vonage_call_leg(daemon_factory: Any, tmp_path: Path) -> None:
    """Vonage's Voice API WebSocket (NCCO connect to a websocket endpoint) per its
    WebSockets guide: websocket:connected with the NCCO headers at the top level, then
    BINARY L16 little-endian, one 20 ms frame per message, both ways."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            daemon, app = await start(nursery, daemon_factory, tmp_path, VONAGE_ROUTE)
            host, port = daemon.bound["websocket"]
            peer = WsPeer(f"ws://{host}:{port}/vonage")
            await peer.call(peer.open)
            connected = {
                "event": "websocket:connected",
                "content-type": "audio/l16;rate=16000",
                "uuid": "63f61863-4a51-4f6b-86e1-46edebcf9356",
                "caller": "447700900000",
            }
            await peer.call(peer.send, json.dumps(connected))
            await until(lambda: app.named("start"))
            (start_msg,) = app.named("start")
            assert start_msg["call_id"] == connected["uuid"]  # from the NCCO headers
            assert start_msg["metadata"]["headers"]["caller"] == "447700900000"

            await peer.call(peer.send_paced, [frame16(n) for n in range(50)], 0.02)
            await peer.wait_for(lambda: numbers(peer.binary(), 1000, 640)[-1:] == [49])
            assert numbers(peer.binary(), 1000, 640) == list(range(50))
            assert {len(b) for b in peer.binary()} == {640}  # exactly one frame per message
            app.echo = False

            # A mark is a notify; Vonage echoes its payload once the audio before it played.
            await app.send(*(frame16(n, 3000) for n in range(3)), Mark("bye"))
            await peer.wait_for(lambda: any('"notify"' in t for t in peer.texts()))
            notify = json.loads(next(t for t in peer.texts() if '"notify"' in t))
            assert notify == {"action": "notify", "payload": {"mark": "m1"}}
            await peer.call(
                peer.send, json.dumps({"event": "websocket:notify", "payload": notify["payload"]})
            )
            await until(lambda: app.named("mark"))
            assert app.named("mark") == [{"event": "mark", "name": "bye"}]
            # A notify in flight at a clear: bridge settles it (UNCONFIRMED on Vonage).
            await app.send(frame16(9, 3000), Mark("again"))
            await peer.wait_for(lambda: sum('"notify"' in t for t in peer.texts()) == 2)
            await app.send(Clear())
            await peer.wait_for(lambda: '{"action":"clear"}' in peer.texts())
            await peer.call(peer.send, json.dumps({"event": "websocket:cleared"}))
            await until(lambda: app.named("cleared"))
            assert app.named("mark")[1:] == [{"event": "mark", "name": "again"}]

            await peer.call(
                peer.send, json.dumps({"event": "websocket:dtmf", "digit": "5", "duration": 260})
            )
            await until(lambda: app.named("dtmf"))
            assert app.named("dtmf") == [{"event": "dtmf", "digit": "5"}]
            await app.send(Dtmf("1"))
            await until(lambda: app.named("error"))
            assert app.named("error")[0]["error"] == "dtmf_unsupported"

            # An unknown event is ignored, as Vonage's guide asks.
            await peer.call(peer.send, json.dumps({"event": "websocket:media:update"}))
            # The app hangs up: bridge closes the socket (Vonage then hangs up or moves on).
            await app.send(Hangup())
            await peer.call(peer.closed.wait, 5)
            assert peer.close_code == 1000
            await until(lambda: daemon.manager.live_count == 0)
            await peer.call(peer.close)
            nursery.cancel_scope.cancel()


async def test_vonage_close_ends_the_stream(daemon_factory: Any, tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            daemon, app = await start(nursery, daemon_factory, tmp_path, VONAGE_ROUTE)
            host, port = daemon.bound["websocket"]
            peer = WsPeer(f"ws://{host}:{port}/vonage")
            await peer.call(peer.open)
            await peer.call(
                peer.send, json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=8000"})
            )
            await until(lambda: app.named("start"))
            assert app.named("start")[0]["call_id"]  # bridge's own id: the NCCO gave none
            await peer.call(peer.send_paced, [caller_frame(n) for n in range(5)], 0.02)
            await until(lambda: app.frames_in >= 5)
            await peer.call(peer.close, 1000)  # the call ended on Vonage's side
            await until(lambda: daemon.manager.live_count == 0)
            await until(lambda: app.named("stop"))
            nursery.cancel_scope.cancel()
    assert app.named("stop") == [{"event": "stop", "reason": "call_hangup"}]


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_bridge_call_places_vonage_calls(
    daemon_factory: Any, tmp_path: Path, rate: int
) -> None:
    frames = 50
    with trio.fail_after(30):
        route = VONAGE_ROUTE.replace('"APP_URL"', '"echo:"').replace("16000", str(rate))
        daemon: Daemon = await daemon_factory(make_config(tmp_path, routes=route))
        host, port = daemon.bound["websocket"]
        options = CallOptions(
            transport="vonage",
            target=f"ws://{host}:{port}/vonage",
            duration_s=frames * 0.02,
            sample_rate=rate,
            tail_s=3.0,
        )
        report = await CallGenerator(options).run()
        await until(lambda: daemon.manager.live_count == 0)
    (call,) = report.calls
    assert call.connected and call.hangup == "caller_hangup", (call.hangup, call.error)
    sent = call.frames_sent
    assert sent >= frames - 3
    assert (call.frames_echoed, call.lost, call.duplicates, call.out_of_order) == (sent, 0, 0, 0)
