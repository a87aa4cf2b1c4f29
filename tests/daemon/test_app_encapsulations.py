"""Every app-leg encapsulation end to end through the daemon, with a real app server.

An AudioSocket call (``bridge call``'s :class:`CallGenerator`, in-process) goes through
the daemon to ``bridge echo-server`` (in-process, ``serve_echo``) speaking the route's
encapsulation, and back. Every frame carries its number as a watermark, so each one that
returns is accounted for (lost, duplicated, out of order); what came back is also
compared sample by sample with what was sent: exactly on L16 paths, and as the G.711
round trip of what was sent on µ-law/A-law paths.

Then the sln control messages with a small scripted app (``serve_websocket`` +
``SlnApp``): the caller's DTMF, a mark echoed after its audio was played, ``clear``
returning pending marks then ``cleared``, and ``hangup`` hanging up the caller.
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from bridge._errors import ConfigError, ConnectionClosed
from bridge.daemon._config import Config
from bridge.daemon._daemon import Daemon
from bridge.dialects import Audio, Clear, Dtmf, Event, Hangup, Mark
from bridge.dialects._sln import SlnApp
from bridge.media import PCMA, PCMU
from bridge.tools import CallGenerator, CallOptions, EchoOptions, EchoServer, Watermark, serve_echo
from bridge.transports import WebSocketConnection, WebSocketRequest, serve_websocket

from .asclient import AudioSocketCaller
from .conftest import make_config

FRAMES = 50  # 1 s of 20 ms frames per call


def app_route(url: str, encapsulation: str, sample_rate: int, codec: str | None) -> str:
    codec_field = f', codec = "{codec}"' if codec else ""
    return f"""
[[routes]]
name = "as-app"
match = {{ listener = "audiosocket" }}
app = {{ url = "{url}", encapsulation = "{encapsulation}", sample_rate = {sample_rate}{codec_field} }}
"""


def config_for(tmp_path: Path, url: str, enc: str, rate: int, codec: str | None) -> Config:
    return make_config(tmp_path, routes=app_route(url, enc, rate, codec))


async def wait_until(pred: Any, timeout_s: float = 10.0) -> None:
    with trio.fail_after(timeout_s):
        while not pred():
            await trio.sleep(0.01)


# ---------------------------------------------------------------- every encapsulation

# (encapsulation, codec, app sample rate, caller sample rate, what the round trip does)
CASES = [
    pytest.param("sln", None, 8000, 8000, "exact", id="sln-8k"),
    pytest.param("sln", None, 16000, 16000, "exact", id="sln-16k"),
    pytest.param(
        "sln",
        None,
        16000,
        8000,
        "resampled",
        id="sln-16k-caller-8k",
    ),
    pytest.param("twilio", None, 8000, 8000, "pcmu", id="twilio"),
    pytest.param("telnyx", "pcmu", 8000, 8000, "pcmu", id="telnyx-pcmu"),
    pytest.param("telnyx", "l16", 8000, 8000, "exact", id="telnyx-l16"),
    pytest.param("plivo", "pcmu", 8000, 8000, "pcmu", id="plivo-pcmu"),
    pytest.param("plivo", "l16", 8000, 8000, "exact", id="plivo-l16"),
    pytest.param("rtp", "pcmu", 8000, 8000, "pcmu", id="rtp-pcmu"),
    pytest.param("rtp", "pcma", 8000, 8000, "pcma", id="rtp-pcma"),
    pytest.param("rtp", "l16", 16000, 16000, "exact", id="rtp-l16-16k"),
    pytest.param("audiosocket", None, 8000, 8000, "exact", id="audiosocket"),
    # Registered through the dialect registry: bridge plays Asterisk chan_websocket
    # (slin/slin16/ulaw channels) and Exotel's Voicebot applet toward the app.
    pytest.param("asterisk_ws", None, 8000, 8000, "exact", id="asterisk_ws-slin"),
    pytest.param("asterisk_ws", None, 16000, 16000, "exact", id="asterisk_ws-slin16"),
    pytest.param("asterisk_ws", "pcmu", 8000, 8000, "pcmu", id="asterisk_ws-ulaw"),
    pytest.param("exotel", None, 8000, 8000, "exact", id="exotel-8k"),
    pytest.param("exotel", None, 16000, 16000, "exact", id="exotel-16k"),
    pytest.param("vonage", None, 8000, 8000, "exact", id="vonage-8k"),
    pytest.param("vonage", None, 16000, 16000, "exact", id="vonage-16k"),
]


def round_trip_snr_db(options: CallOptions, recording: list[bytes], sent: int) -> float:
    """SNR of what came back against what was sent (both at the caller's rate), at the
    best alignment, over the middle of the call."""
    import numpy as np

    from bench.quality.metrics import snr_db

    watermark = Watermark(options.sample_rate)
    signal = options.signal_frames()
    sent_pcm = b"".join(watermark.stamp(signal[n % len(signal)], n) for n in range(sent))
    ref = np.frombuffer(sent_pcm, "<i2").astype(np.float64)
    out = np.frombuffer(b"".join(recording), "<i2").astype(np.float64)
    return snr_db(out, ref, edge=options.sample_rate // 10)


def expected_back(sent: bytes, path: str) -> bytes | None:
    """What a frame must look like after the round trip (None: not comparable)."""
    if path == "exact":
        return sent
    if path == "pcmu":
        return PCMU.decode(PCMU.encode(sent))
    if path == "pcma":
        return PCMA.decode(PCMA.encode(sent))
    return None  # resampled 8k -> 16k -> 8k: only the watermark could be compared


@pytest.mark.parametrize("enc, codec, app_rate, caller_rate, path", CASES)
async def test_encapsulation_round_trip_through_the_daemon(
    daemon_factory: Any,
    tmp_path: Path,
    enc: str,
    codec: str | None,
    app_rate: int,
    caller_rate: int,
    path: str,
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            echo: EchoServer = await nursery.start(
                serve_echo, EchoOptions(port=0, encapsulation=enc)
            )
            daemon: Daemon = await daemon_factory(
                config_for(tmp_path, echo.url + "/", enc, app_rate, codec)
            )
            host, port = daemon.bound["audiosocket"]
            options = CallOptions(
                transport="audiosocket",
                target=f"{host}:{port}",
                duration_s=FRAMES * 0.02,
                sample_rate=caller_rate,
                tail_s=3.0,  # an upper bound: the call ends as soon as all are back
                record=str(tmp_path / "back.wav"),
            )
            generator = CallGenerator(options)
            report = await generator.run()
            await wait_until(lambda: daemon.manager.live_count == 0)
            nursery.cancel_scope.cancel()
        assert daemon.store is not None
        await daemon.store.flush()
        (ended,) = await daemon.list_streams(state="ended", since=None, limit=10)
        record = await daemon.get_stream(ended["stream_id"])

    (call,) = report.calls
    assert call.connected and call.hangup == "caller_hangup", (call.hangup, call.error)
    # The generator sends FRAMES frames in a fixed time; on a starved machine its own
    # clock may skip a slot (and so send fewer): that shortfall is the generator's, and
    # everything below is checked against what it actually sent.
    sent = call.frames_sent
    assert sent + call.pacing_skipped == FRAMES and sent >= FRAMES - 3
    if path == "resampled":
        # bridge call's sample-exact watermark does not survive a band-limited
        # resampler (docs/tools.md): the audio itself is compared instead. The app saw
        # every frame, and what came back is the signal sent, through an 8 -> 16 -> 8 kHz
        # round trip of bridge's resampler, at a signal-to-noise ratio no lost, doubled
        # or misplaced frame would leave (one gives about 0 dB).
        assert echo.stats.frames == sent and record is not None
        assert record["frames_in"] == sent
        recording = generator.calls[0].recording
        assert recording is not None
        snr = round_trip_snr_db(options, recording, sent)
        assert snr >= 30.0, snr
        return
    # Every frame came back, once, in order.
    assert (call.frames_echoed, call.lost, call.duplicates, call.out_of_order) == (
        sent,
        0,
        0,
        0,
    )
    # The app saw exactly the caller's frames, on one connection, without complaint.
    assert echo.stats.frames == sent
    assert (echo.stats.connections, echo.stats.protocol_errors) == (1, 0)
    assert record is not None
    assert record["encapsulation"] == enc and record["reason"] == "call_hangup"
    assert record["frames_in"] == sent and record["reconnects"] == 0

    # Sample by sample: each watermarked frame that came back is what was sent, after
    # the codec round trip the path implies.
    watermark = Watermark(caller_rate)
    signal = options.signal_frames()
    recording = generator.calls[0].recording
    assert recording is not None
    back = {}
    for pcm in recording:
        n = watermark.read(pcm)
        if n >= 0:
            back[n] = pcm
    assert sorted(back) == list(range(sent))
    for n in range(sent):
        want = expected_back(watermark.stamp(signal[n % len(signal)], n), path)
        if want is not None:
            assert back[n] == want, f"frame {n} changed on the {enc} path"


def test_plivo_route_with_pcma_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pcma"):
        config_for(tmp_path, "ws://127.0.0.1:9/", "plivo", 8000, "pcma")


# --------------------------------------------------------------- sln control messages


@attrs.define(eq=False)
class ScriptedSlnApp:
    """An sln application the test drives: it records what bridge sends (raw JSON and
    decoded events, with arrival times) and sends what the test tells it to."""

    dialect: SlnApp = attrs.field(factory=SlnApp)
    ws: WebSocketConnection | None = None
    texts: list[tuple[float, dict[str, Any]]] = attrs.field(factory=list)
    events: list[Event] = attrs.field(factory=list)
    frames_in: int = 0
    close_code: int | None = None
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
                    self.texts.append((trio.current_time(), json.loads(message)))
                for event in self.dialect.receive(message):
                    if isinstance(event, Audio):
                        self.frames_in += 1
                    else:
                        self.events.append(event)
        except ConnectionClosed as exc:
            self.close_code = exc.code
        finally:
            self.closed.set()

    async def send(self, *events: Event) -> None:
        assert self.ws is not None
        for event in events:
            for message in self.dialect.send(event):
                await self.ws.send(message)

    def controls(self) -> list[dict[str, Any]]:
        """The TEXT messages after ``start``, in order."""
        return [msg for _, msg in self.texts if msg.get("event") != "start"]


def app_frame(n: int) -> bytes:
    """A recognisable 20 ms frame of app audio (sample value 1000 + n, never silence)."""
    return struct.pack("<h", 1000 + n) * 160


def app_frames_heard(caller: AudioSocketCaller) -> list[int]:
    return [
        struct.unpack_from("<h", pcm)[0] - 1000
        for _, pcm in caller.received
        if pcm[:2] != b"\x00\x00" and 1000 <= struct.unpack_from("<h", pcm)[0] < 2000
    ]


@attrs.define(eq=False)
class SlnCall:
    daemon: Daemon
    app: ScriptedSlnApp
    caller: AudioSocketCaller
    #: Set when the caller's receiver saw the daemon close the connection (EOF).
    caller_eof: trio.Event = attrs.field(factory=trio.Event)

    async def receive(self) -> None:
        await self.caller.receive_forever()
        self.caller_eof.set()


async def _talk(caller: AudioSocketCaller) -> None:
    """The caller talks like Asterisk: one frame every 20 ms until the call is gone."""
    start = trio.current_time()
    n = 0
    while await caller.send_frame(struct.pack("<h", 7) * 160):
        n += 1
        await trio.sleep_until(start + n * 0.02)


async def sln_call(nursery: trio.Nursery, daemon_factory: Any, tmp_path: Path) -> SlnCall:
    app = ScriptedSlnApp()
    addresses = await nursery.start(functools.partial(serve_websocket, app.handle, "127.0.0.1", 0))
    host, port = addresses[0]
    daemon: Daemon = await daemon_factory(
        config_for(tmp_path, f"ws://{host}:{port}/", "sln", 8000, None)
    )
    caller = await AudioSocketCaller.connect(*daemon.bound["audiosocket"])
    call = SlnCall(daemon, app, caller)
    nursery.start_soon(call.receive)
    nursery.start_soon(_talk, caller)
    with trio.fail_after(5):
        await app.connected.wait()
    await wait_until(lambda: app.frames_in >= 3)  # streaming both ways
    return call


async def test_dtmf_reaches_the_app_and_a_mark_comes_back_after_its_audio(
    daemon_factory: Any, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            call = await sln_call(nursery, daemon_factory, tmp_path)
            app, caller = call.app, call.caller
            # The caller presses 5 (AudioSocket kind 0x03).
            await caller.stream.send_all(caller.dialect.send(Dtmf("5"))[0])
            await wait_until(lambda: any(isinstance(e, Dtmf) for e in app.events))

            # 25 frames (500 ms) at once, faster than real time, then a mark.
            n_audio = 25
            sent_at = trio.current_time()
            assert app.ws is not None
            for n in range(n_audio):
                await app.ws.send(app_frame(n))
            await app.send(Mark("m1"))
            await wait_until(lambda: Mark("m1") in app.events)
            marked_at = next(t for t, m in app.texts if m == {"event": "mark", "name": "m1"})
            heard_at_mark = len(app_frames_heard(caller))
            await wait_until(lambda: len(app_frames_heard(caller)) >= n_audio)
            await trio.sleep(0.1)
            heard = app_frames_heard(caller)
            await caller.aclose()
            await wait_until(lambda: call.daemon.manager.live_count == 0)
            nursery.cancel_scope.cancel()

    # DTMF: exactly one message, in exactly the documented shape.
    dtmf = [m for m in app.controls() if m.get("event") == "dtmf"]
    assert dtmf == [{"event": "dtmf", "digit": "5"}]
    # The mark came back once, after its audio was played: bridge paces 500 ms of audio
    # out in real time, so an echo before that means the mark jumped the queue (the
    # margin is one-sided: a slow machine only makes the echo later) ...
    assert [m for m in app.controls() if m.get("event") == "mark"] == [
        {"event": "mark", "name": "m1"}
    ]
    assert marked_at - sent_at >= 0.4
    # ... and by then the caller had the audio (give or take what is still in flight
    # on the loopback socket when the app's task runs first).
    assert heard_at_mark >= n_audio - 3
    assert heard == list(range(n_audio))  # every app frame played once, in order


async def test_clear_returns_pending_marks_then_cleared(
    daemon_factory: Any, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            call = await sln_call(nursery, daemon_factory, tmp_path)
            app, caller = call.app, call.caller
            assert app.ws is not None
            # 4 s of audio queued with two marks behind it, then clear at once.
            for n in range(200):
                await app.ws.send(app_frame(n))
            await app.send(Mark("m2"), Mark("m3"), Clear())
            await wait_until(lambda: any(m.get("event") == "cleared" for m in app.controls()))
            await trio.sleep(0.3)  # what the caller hears after the clear: nothing more
            heard_before = app_frames_heard(caller)
            # The stream goes on: audio sent after the clear is played.
            for n in range(500, 505):
                await app.ws.send(app_frame(n))
            await wait_until(lambda: app_frames_heard(caller)[-1:] == [504])
            await trio.sleep(0.1)
            heard = app_frames_heard(caller)
            await caller.aclose()
            await wait_until(lambda: call.daemon.manager.live_count == 0)
            nursery.cancel_scope.cancel()

    after_start = [m for m in app.controls() if m.get("event") in ("mark", "cleared")]
    # Pending marks come back at once, in order, then cleared; each exactly once.
    assert after_start == [
        {"event": "mark", "name": "m2"},
        {"event": "mark", "name": "m3"},
        {"event": "cleared"},
    ]
    # The queued audio was dropped: the caller heard only the first frames, in order,
    # then exactly the audio sent after the clear.
    assert heard_before == list(range(len(heard_before)))
    assert len(heard_before) < 100, len(heard_before)
    assert heard == [*heard_before, *range(500, 505)]


async def test_app_hangup_hangs_up_the_caller(daemon_factory: Any, tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            call = await sln_call(nursery, daemon_factory, tmp_path)
            app, caller, daemon = call.app, call.caller, call.daemon
            live = daemon.live_streams()
            await app.send(Hangup())
            await wait_until(lambda: caller.hung_up)  # 00 00 00, the AudioSocket hangup
            with trio.fail_after(5):
                await app.closed.wait()
            await wait_until(lambda: daemon.manager.live_count == 0)
            with trio.fail_after(5):
                await call.caller_eof.wait()  # and the socket closed after it
            nursery.cancel_scope.cancel()
        assert daemon.store is not None
        await daemon.store.flush()
        record = await daemon.get_stream(live[0]["stream_id"])
    assert record is not None and record["reason"] == "app_hangup"
    # bridge tells the app the stream is ending, then closes normally.
    assert app.controls() == [{"event": "stop", "reason": "app_hangup"}]
    assert app.close_code == 1000
