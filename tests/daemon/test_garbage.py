"""Garbage on every leg while good calls run (the issue's must-show).

"Each leg fed random bytes, oversized frames and stalled handshakes while a good call
runs. The good call loses no frames and the daemon logs one clear line per bad peer."
(ARCHITECTURE.md, "Reliability policy": bad input gets a clear log line and a counted
metric; it ends that stream at most, never the daemon and never another stream.)

One daemon, three good calls (AudioSocket, RTP and Twilio, each 3 s of numbered frames
through the built-in echo), and a barrage of bad peers fired at every listener while
they run. Every bad peer is deterministic (its own ``random.Random``, seeded from SEED
and its name, so concurrency cannot reorder the draws) and tagged by
something the daemon's log line carries (its source port, its call id, its path), so the
WARNING lines can be counted per peer.

Each kind of bad peer is also checked on its own at the bottom: one count and one
line each. test_bad_input.py fuzzes every class of bad WebSocket and AudioSocket
connection in numbers, against the log's rate limit.
"""

from __future__ import annotations

import logging
import random
import re
import struct
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

from bridge import HandshakeRejected
from bridge._errors import ConnectionClosed
from bridge.daemon._config import Config
from bridge.daemon._daemon import Daemon
from bridge.dialects import Audio, Connected, Start
from bridge.dialects._twilio import TwilioPlatform
from bridge.media import audioop
from bridge.transports import open_websocket_client

from .asclient import AudioSocketCaller
from .conftest import make_config
from .rtpclient import RtpPeer, ulaw_frame

SEED = 0x6A7BA6E
GOOD_FRAMES = 150  # 3 s of 20 ms frames per good call
MAX_FRAME_BYTES = 1024  # [audiosocket] max_frame_bytes (the good frames are 320 B)
MAX_MESSAGE_BYTES = 2048  # [websocket] max_message_bytes (good Twilio media is ~330 B)

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
name = "twilio-echo"
match = { listener = "websocket", path = "/twilio" }
carrier = "twilio"
app = { url = "echo:", encapsulation = "sln" }
"""


# ------------------------------------------------------------------------------ helpers


def garbage_config(tmp_path: Path) -> Config:
    """conftest's config with ROUTES, short handshake timeouts and small size limits."""
    config = make_config(tmp_path, routes=ROUTES)
    replace = msgspec.structs.replace
    return replace(
        config,
        audiosocket=replace(
            config.audiosocket, first_frame_timeout="500ms", max_frame_bytes=MAX_FRAME_BYTES
        ),
        websocket=replace(
            config.websocket, handshake_timeout="500ms", max_message_bytes=MAX_MESSAGE_BYTES
        ),
        # A range of its own: other test files use 41000-41099.
        rtp=replace(config.rtp, ports="43300-43319"),
    )


def audiosocket_kinds(data: bytes) -> list[int]:
    """The kind of every complete AudioSocket frame in ``data`` (kind, u16 length, payload)."""
    kinds = []
    pos = 0
    while pos + 3 <= len(data):
        kind, length = data[pos], int.from_bytes(data[pos + 1 : pos + 3], "big")
        if pos + 3 + length > len(data):
            break
        kinds.append(kind)
        pos += 3 + length
    return kinds


def numbered(n: int) -> bytes:
    return struct.pack("<h", n + 1) * 160


def ulaw_exact_pcm(n: int) -> bytes:
    """160 samples that survive PCM -> µ-law -> PCM exactly (distinct for n < 12544)."""
    return audioop.ulaw2lin(ulaw_frame(n), 2)


async def wait_until(pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    with trio.fail_after(timeout_s):
        while not pred():
            await trio.sleep(0.01)


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    """Everything the daemon sends until it closes the connection (or resets it)."""
    got = bytearray()
    try:
        while data := await stream.receive_some(65536):
            got += data
    except trio.BrokenResourceError:
        pass
    return bytes(got)


def local_tag(stream: trio.SocketStream) -> str:
    host, port = stream.socket.getsockname()[:2]
    return f"{host}:{port}"


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    counter = getattr(daemon.metrics, name)
    return float(counter.labels(**labels)._value.get())


def bad_input_total(daemon: Daemon) -> float:
    """Every bridge_bad_input_total sample, whatever its labels."""
    return sum(
        s.value
        for family in daemon.metrics.registry.collect()
        if family.name == "bridge_bad_input"
        for s in family.samples
        if s.name.endswith("_total")
    )


class LogIndex:
    """WARNING+ records attributed to peers: a record belongs to a peer when its message
    contains one of the peer's tags, or when it carries the ``stream_id`` of a stream
    whose call id (from the daemon's "stream started" line) is one of the tags."""

    def __init__(self, records: Iterable[logging.LogRecord]) -> None:
        self.records = [r for r in records if r.name.startswith("bridge")]
        self.call_of: dict[str, str] = {
            r.stream_id: r.call_id  # type: ignore[attr-defined]
            for r in self.records
            if r.getMessage() == "stream started"
        }
        self.warnings = [r for r in self.records if r.levelno >= logging.WARNING]

    def stream_of(self, call_id: str) -> str | None:
        return next((s for s, c in self.call_of.items() if c == call_id), None)

    def for_tags(self, *tags: str) -> list[str]:
        # "127.0.0.1:4986" must not match "127.0.0.1:49860".
        patterns = [re.compile(re.escape(t) + r"(?!\d)") for t in tags]
        out = []
        for r in self.warnings:
            text = r.getMessage()
            call = self.call_of.get(getattr(r, "stream_id", ""), None)
            if any(p.search(text) for p in patterns) or call in tags:
                out.append(text)
        return out


# ------------------------------------------------------------------------- good calls


async def good_audiosocket_call(daemon: Daemon, frames: int, out: dict[str, Any]) -> None:
    """Numbered frames through the echo: every one must come back once, in order."""
    caller = await AudioSocketCaller.connect(*daemon.bound["audiosocket"])
    out["call_id"] = caller.dialect.call_uuid
    out["caller"] = caller
    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller.receive_forever)
        start = trio.current_time()
        for n in range(frames):
            await trio.sleep_until(start + n * 0.02)
            assert await caller.send_frame(numbered(n)), "the daemon hung up the good call"
        await wait_until(lambda: sum(1 for _, p in caller.received if any(p)) >= frames)
        await trio.sleep(0.1)  # a duplicate would arrive now
        await caller.aclose()
        nursery.cancel_scope.cancel()
    out["echoed"] = [struct.unpack_from("<h", p)[0] - 1 for _, p in caller.received if any(p)]


async def good_rtp_call(daemon: Daemon, http: httpx.AsyncClient, out: dict[str, Any]) -> None:
    r = await http.post("/v1/streams", json={"call_id": "good-rtp", "route": "rtp-echo"})
    assert r.status_code == 201, r.text
    answer = r.json()
    out["stream_id"] = answer["stream_id"]
    host, _, port = answer["local"].rpartition(":")
    local = (host, int(port))
    out["local"] = local
    peer = await RtpPeer.open()
    out["peer"] = peer
    frames = [ulaw_frame(n) for n in range(GOOD_FRAMES)]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.receive_forever)
            await peer.play(frames, local, preamble=3)
            await wait_until(lambda: len(peer.payloads()) >= GOOD_FRAMES)
            await trio.sleep(0.1)
            r = await http.delete(f"/v1/streams/{answer['stream_id']}")
            assert r.status_code == 202, r.text
            await wait_until(lambda: daemon.manager.get(answer["stream_id"]) is None)
            nursery.cancel_scope.cancel()
    finally:
        peer.close()
    echoed = peer.payloads()
    out["in_order"] = echoed[:GOOD_FRAMES] == frames
    # After the last frame only the jitter buffer's fading concealment may follow.
    out["extra_known"] = set(echoed[GOOD_FRAMES:]) & set(frames)


async def good_twilio_call(daemon: Daemon, out: dict[str, Any]) -> None:
    host, port = daemon.bound["websocket"]
    twilio = TwilioPlatform("MZgood", "CAgood", "AC1")
    index = {ulaw_exact_pcm(n): n for n in range(GOOD_FRAMES)}
    got: list[int] = []
    async with open_websocket_client(f"ws://{host}:{port}/twilio", ping_interval_s=None) as ws:
        for event in (Connected(), Start("MZgood", "CAgood")):
            for message in twilio.send(event):
                await ws.send(message)

        async def reader() -> None:
            while True:
                for event in twilio.receive(await ws.receive()):
                    if isinstance(event, Audio) and any(event.frame.pcm):
                        got.append(index.get(event.frame.pcm, -1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            start = trio.current_time()
            for n in range(GOOD_FRAMES):
                await trio.sleep_until(start + n * 0.02)
                await ws.send(twilio.send_audio(ulaw_exact_pcm(n)))
            await wait_until(lambda: len(got) >= GOOD_FRAMES)
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    out["echoed"] = got


# -------------------------------------------------------------------------- bad peers


class Barrage:
    """The bad peers. Each records ``tags`` (what its log lines carry), what it saw of
    the daemon (``seen``) and the text its WARNING line must contain (``needle``; None
    see the per-peer tests below)."""

    def __init__(self, daemon: Daemon, http: httpx.AsyncClient, rtp_local: tuple[str, int]):
        self.daemon = daemon
        self.http = http
        self.rtp_local = rtp_local
        self.tags: dict[str, tuple[str, ...]] = {}
        self.seen: dict[str, Any] = {}
        self.needles: dict[str, str | None] = {}

    @staticmethod
    def rng(name: str) -> random.Random:
        """Each peer's own generator: the same bytes on every run."""
        return random.Random(f"{SEED}:{name}")

    def peers(self) -> list[Callable[[], Any]]:
        return [
            self.as_random_bytes,
            self.as_oversize_before_uuid,
            self.as_oversize_after_uuid,
            self.as_stalled,
            self.as_audio_before_uuid,
            self.as_bad_dtmf,
            self.ws_random_bytes,
            self.ws_stalled_handshake,
            self.ws_unknown_path,
            self.twilio_garbage_json,
            self.twilio_binary_frame,
            self.twilio_oversize_message,
            self.rtp_random_datagrams,
            self.rtp_truncated_headers,
            self.admin_bad_bodies,
            self.admin_garbage_request,
            self.admin_garbage_unterminated,
        ]

    # -- AudioSocket

    async def _as_peer(self, name: str, needle: str, *chunks: bytes) -> None:
        stream = await trio.open_tcp_stream(*self.daemon.bound["audiosocket"])
        self.tags[name] = (local_tag(stream),)
        self.needles[name] = needle
        for chunk in chunks:
            await stream.send_all(chunk)
        self.seen[name] = await read_to_eof(stream)
        await stream.aclose()

    async def as_random_bytes(self) -> None:
        blob = self.rng("as_random_bytes").randbytes(4000)
        assert blob[0] != 0x01, "pick a SEED whose bytes do not start with a UUID frame"
        await self._as_peer("as_random_bytes", "kind 0x", blob)

    async def as_oversize_before_uuid(self) -> None:
        await self._as_peer(
            "as_oversize_before_uuid", "over the limit", b"\x10\xea\x60" + bytes(200)
        )

    async def as_stalled(self) -> None:
        await self._as_peer("as_stalled", "no UUID frame within")

    async def as_audio_before_uuid(self) -> None:
        await self._as_peer("as_audio_before_uuid", "before the UUID", b"\x10\x01\x40" + bytes(320))

    async def _as_after_uuid(self, name: str, needle: str, bad: bytes) -> None:
        """A real call (a valid UUID, some audio) that then sends ``bad``: only this
        call's stream may end."""
        call_id = str(uuid.uuid4())
        stream = await trio.open_tcp_stream(*self.daemon.bound["audiosocket"])
        self.tags[name] = (local_tag(stream), call_id)
        self.needles[name] = needle
        await stream.send_all(b"\x01\x00\x10" + uuid.UUID(call_id).bytes)
        for n in range(5):
            await stream.send_all(b"\x10\x01\x40" + numbered(n))
            await trio.sleep(0.02)
        await stream.send_all(bad)
        self.seen[name] = await read_to_eof(stream)
        await stream.aclose()

    async def as_oversize_after_uuid(self) -> None:
        await self._as_after_uuid(
            "as_oversize_after_uuid", "over the limit", b"\x10\xff\xfe" + bytes(1000)
        )

    async def as_bad_dtmf(self) -> None:
        await self._as_after_uuid("as_bad_dtmf", "DTMF frame carries", b"\x03\x00\x01x")

    # -- WebSocket listener

    async def _ws_raw(self, name: str, needle: str, data: bytes) -> None:
        stream = await trio.open_tcp_stream(*self.daemon.bound["websocket"])
        self.tags[name] = (local_tag(stream),)
        self.needles[name] = needle
        await stream.send_all(data)
        t0 = trio.current_time()
        self.seen[name] = (await read_to_eof(stream), trio.current_time() - t0)
        await stream.aclose()

    async def ws_random_bytes(self) -> None:
        blob = self.rng("ws_random_bytes").randbytes(4000)
        await self._ws_raw("ws_random_bytes", "(bad_handshake)", blob)

    async def ws_stalled_handshake(self) -> None:
        await self._ws_raw("ws_stalled_handshake", "(handshake_timeout)", b"GET /twilio HT")

    async def ws_unknown_path(self) -> None:
        host, port = self.daemon.bound["websocket"]
        self.tags["ws_unknown_path"] = ("/garbage-unknown-path",)
        self.needles["ws_unknown_path"] = "no_route"
        with pytest.raises(HandshakeRejected) as info:
            async with open_websocket_client(
                f"ws://{host}:{port}/garbage-unknown-path", ping_interval_s=None
            ):
                pass
        self.seen["ws_unknown_path"] = info.value.status

    async def _twilio_then(self, name: str, needle: str | None, bad: str | bytes) -> None:
        """A valid Twilio stream (connected, start, some media) that then sends ``bad``."""
        host, port = self.daemon.bound["websocket"]
        sid, call_sid = f"MZ{uuid.uuid4().hex}", f"CA{uuid.uuid4().hex}"
        self.tags[name] = (call_sid,)
        self.needles[name] = needle
        twilio = TwilioPlatform(sid, call_sid, "AC1")
        async with open_websocket_client(
            f"ws://{host}:{port}/twilio", ping_interval_s=None, close_timeout_s=1.0
        ) as ws:
            for event in (Connected(), Start(sid, call_sid)):
                for message in twilio.send(event):
                    await ws.send(message)
            for n in range(5):
                await ws.send(twilio.send_audio(ulaw_exact_pcm(n)))
                await trio.sleep(0.02)
            await ws.send(bad)
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    await ws.receive()
            self.seen[name] = info.value.code

    async def twilio_garbage_json(self) -> None:
        await self._twilio_then("twilio_garbage_json", "not valid JSON", '{"event": "media", ]]')

    async def twilio_binary_frame(self) -> None:
        await self._twilio_then(
            "twilio_binary_frame", "BINARY", self.rng("twilio_binary_frame").randbytes(160)
        )

    async def twilio_oversize_message(self) -> None:
        big = '{"event":"media","media":{"payload":"' + "A" * (2 * MAX_MESSAGE_BYTES) + '"}}'
        await self._twilio_then("twilio_oversize_message", "(message_too_big)", big)

    # -- RTP: garbage at the good stream's port, from other sockets

    async def _rtp_peer(self, name: str, datagrams: list[bytes]) -> None:
        peer = await RtpPeer.open()
        self.tags[name] = ("malformed RTP",)
        self.needles[name] = "malformed RTP"
        try:
            for data in datagrams:
                await peer.send_raw(data, self.rtp_local)
                await trio.sleep(0.01)
        finally:
            peer.close()
        self.seen[name] = len(datagrams)

    async def rtp_random_datagrams(self) -> None:
        rng = self.rng("rtp_random_datagrams")
        datagrams = []
        for _ in range(20):
            data = bytearray(rng.randbytes(rng.randrange(12, 400)))
            data[0] &= 0x3F  # version 0: never mistaken for a stranger's RTP (probation)
            datagrams.append(bytes(data))
        await self._rtp_peer("rtp_random_datagrams", datagrams)

    async def rtp_truncated_headers(self) -> None:
        header = b"\x80\x00\x12\x34\x00\x00\x01\x40\xde\xad\xbe"
        await self._rtp_peer("rtp_truncated_headers", [header[:n] for n in range(1, 12)])

    # -- admin HTTP

    async def admin_bad_bodies(self) -> None:
        self.tags["admin_bad_bodies"] = ()
        self.needles["admin_bad_bodies"] = None  # answered 400; the admin API logs nothing
        answers = []
        for body in (
            b"{not json",
            b'{"call_id": 5, "route": "rtp-echo"}',
            self.rng("admin_bad_bodies").randbytes(300),
        ):
            r = await self.http.post(
                "/v1/streams", content=body, headers={"Content-Type": "application/json"}
            )
            answers.append((r.status_code, r.json().get("message", "")))
        self.seen["admin_bad_bodies"] = answers

    async def admin_garbage_request(self) -> None:
        stream = await trio.open_tcp_stream(*self.daemon.bound["admin"])
        self.tags["admin_garbage_request"] = ()
        self.needles["admin_garbage_request"] = None
        blob = self.rng("admin_garbage_request").randbytes(2000).replace(b"\r\n\r\n", b"")
        await stream.send_all(blob + b"\r\n\r\n")
        self.seen["admin_garbage_request"] = await read_to_eof(stream)
        await stream.aclose()

    async def admin_garbage_unterminated(self) -> None:
        """Random bytes and no end of headers: the admin server holds the connection until
        its request timeout (5 s), then answers 408 and closes it."""
        stream = await trio.open_tcp_stream(*self.daemon.bound["admin"])
        self.tags["admin_garbage_unterminated"] = ()
        self.needles["admin_garbage_unterminated"] = None
        blob = self.rng("admin_garbage_unterminated").randbytes(2000)
        await stream.send_all(blob.replace(b"\r", b"").replace(b"\n", b""))
        self.seen["admin_garbage_unterminated"] = await read_to_eof(stream)
        await stream.aclose()


# ------------------------------------------------------------------------------- test


async def test_garbage_on_every_leg_while_good_calls_run(
    daemon_factory: Any, tmp_path: Path, bridge_logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        daemon: Daemon = await daemon_factory(garbage_config(tmp_path))
        admin_host, admin_port = daemon.bound["admin"]
        async with httpx.AsyncClient(
            base_url=f"http://{admin_host}:{admin_port}", timeout=10
        ) as http:
            good_as: dict[str, Any] = {}
            good_rtp: dict[str, Any] = {}
            good_tw: dict[str, Any] = {}
            barrage: Barrage | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(good_audiosocket_call, daemon, GOOD_FRAMES, good_as)
                nursery.start_soon(good_rtp_call, daemon, http, good_rtp)
                nursery.start_soon(good_twilio_call, daemon, good_tw)
                # The barrage starts once every good call is streaming both ways.
                await wait_until(
                    lambda: (
                        "caller" in good_as
                        and len(good_as["caller"].received) >= 10
                        and "peer" in good_rtp
                        and len(good_rtp["peer"].payloads()) >= 10
                        and daemon.manager.live_count >= 3
                    )
                )
                barrage = Barrage(daemon, http, good_rtp["local"])
                async with trio.open_nursery() as bad:
                    for peer in barrage.peers():
                        bad.start_soon(peer)
                # Every bad peer but the admin one held for 5 s (request timeout) is done well
                # inside the good calls' 3 s; the good calls end on their own meanwhile.
            assert barrage is not None

            # ---- the good calls lost nothing
            assert good_as["echoed"] == list(range(GOOD_FRAMES))  # every frame, once, in order
            assert good_tw["echoed"] == list(range(GOOD_FRAMES))
            assert good_rtp["in_order"] and not good_rtp["extra_known"]
            assert daemon.store is not None
            await daemon.store.flush()
            rtp_record = await daemon.get_stream(good_rtp["stream_id"])
            assert rtp_record is not None
            assert rtp_record["reason"] == "api_request"
            assert rtp_record["jitter"]["played"] == GOOD_FRAMES
            assert rtp_record["jitter"]["lost"] == 0

            # ---- the daemon is still serving: health, and a NEW good call works
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
            after: dict[str, Any] = {}
            await good_audiosocket_call(daemon, 50, after)
            assert after["echoed"] == list(range(50))
            await wait_until(lambda: daemon.manager.live_count == 0)  # no stream leaked

    # ---- what each bad peer saw
    seen = barrage.seen
    for name in (
        "as_random_bytes",
        "as_oversize_before_uuid",
        "as_stalled",
        "as_audio_before_uuid",
    ):
        assert seen[name] == b"", name  # closed, nothing sent before the UUID
    for name in ("as_oversize_after_uuid", "as_bad_dtmf"):
        # Its call was ended (socket closed) after some echoed audio (or silence, if the
        # pacing clock started first); no hangup frame is sent for a call-side failure
        # (reason call_hangup). Parsed frame by frame: a silence frame ends in zeros too.
        assert 0x00 not in audiosocket_kinds(seen[name]), name
    for name in ("ws_random_bytes", "ws_stalled_handshake"):
        data, took = seen[name]
        assert data == b"" or data.startswith(b"HTTP/1.1 4"), (name, data[:60])
        assert took < 5, name  # bounded by handshake_timeout (500 ms), not held open
    assert seen["ws_unknown_path"] == 404
    assert seen["twilio_garbage_json"] is not None and seen["twilio_binary_frame"] is not None
    assert seen["twilio_oversize_message"] == 1009  # "message too big"
    statuses = [status for status, _ in seen["admin_bad_bodies"]]
    assert statuses == [400, 400, 400]
    assert "JSON" in seen["admin_bad_bodies"][0][1] and "call_id" in seen["admin_bad_bodies"][1][1]
    assert seen["admin_garbage_request"].startswith(b"HTTP/1.1 400")
    # Never a complete request: answered 408 at the request timeout (or dropped).
    unterminated = seen["admin_garbage_unterminated"]
    assert unterminated == b"" or unterminated.startswith(b"HTTP/1.1 4"), unterminated[:60]

    # ---- the log: one clear WARNING line per bad peer, no flood, nothing worse
    logs = LogIndex(bridge_logs.records)
    errors = [r.getMessage() for r in logs.records if r.levelno >= logging.ERROR]
    assert errors == []  # no crash, no traceback
    for name, tags in barrage.tags.items():
        if name.startswith("rtp_"):
            continue  # both RTP peers hit one stream: checked together below
        lines = logs.for_tags(*tags) if tags else []
        needle = barrage.needles[name]
        assert len(lines) <= 3, (name, lines)  # not a flood
        if needle is not None:
            assert len(lines) >= 1, (name, tags)
            assert any(needle in line for line in lines), (name, needle, lines)
    # Both RTP peers: one line for the stream ("further ones are only counted").
    rtp_lines = logs.for_tags("malformed RTP")
    assert 1 <= len(rtp_lines) <= 2, rtp_lines
    # The good calls' streams logged no warning of their own (the RTP stream's only line
    # is the garbage it ignored).
    for call_id in (good_as["call_id"], "CAgood", after["call_id"]):
        assert logs.for_tags(call_id) == [], call_id
    assert [line for line in logs.for_tags("good-rtp") if "malformed RTP" not in line] == []
    # Nothing else warned: every WARNING line is one of the bad peers'.
    every_tag = [t for tags in barrage.tags.values() for t in tags]
    assert len(logs.for_tags(*every_tag)) == len(logs.warnings), [
        r.getMessage() for r in logs.warnings
    ]

    # ---- the metrics counted them
    # 3 before a stream started (garbage, oversize before the UUID, audio before the
    # UUID) and 2 mid-call (a bad DTMF digit, an oversize frame after the UUID).
    assert metric(daemon, "bad_input", leg="audiosocket", kind="protocol_error") == 3 + 2
    assert metric(daemon, "bad_input", leg="audiosocket", kind="first_frame_timeout") == 1
    # Twilio streams that sent bad JSON, a binary frame, and an oversize message.
    assert metric(daemon, "bad_input", leg="websocket", kind="protocol_error") == 2
    assert metric(daemon, "bad_input", leg="websocket", kind="message_too_big") == 1
    # WebSocket handshakes that never became one: random bytes, a stalled request.
    assert metric(daemon, "bad_input", leg="websocket", kind="bad_handshake") == 1
    assert metric(daemon, "bad_input", leg="websocket", kind="handshake_timeout") == 1
    assert metric(daemon, "streams_refused", listener="websocket", reason="no_route") == 1
    assert metric(daemon, "bad_input", leg="rtp", kind="malformed_rtp") == 20 + 11
    assert rtp_record["jitter"]["rtp_malformed"] == 20 + 11
    # The streams the mid-call garbage ended are the only ones that ended early.
    assert metric(daemon, "streams_ended", route="as-echo", reason="call_hangup") == 4
    assert metric(daemon, "streams_ended", route="twilio-echo", reason="call_hangup") == 4


# ------------------------------------------------ each kind of bad peer: logged and counted


async def _one_bad_peer(daemon_factory: Any, tmp_path: Path, peer: str) -> tuple[Daemon, Barrage]:
    daemon: Daemon = await daemon_factory(garbage_config(tmp_path))
    host, port = daemon.bound["admin"]
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as http:
        barrage = Barrage(daemon, http, ("127.0.0.1", 9))
        await getattr(barrage, peer)()
    await wait_until(lambda: daemon.manager.live_count == 0)
    return daemon, barrage


@pytest.mark.parametrize("peer", ["ws_random_bytes", "ws_stalled_handshake"])
async def test_ws_handshake_garbage_is_logged_and_counted(
    daemon_factory: Any, tmp_path: Path, bridge_logs: pytest.LogCaptureFixture, peer: str
) -> None:
    with trio.fail_after(15):
        daemon, barrage = await _one_bad_peer(daemon_factory, tmp_path, peer)
    lines = LogIndex(bridge_logs.records).for_tags(*barrage.tags[peer])
    assert len(lines) == 1, lines
    assert barrage.needles[peer] in lines[0]
    assert bad_input_total(daemon) == 1


async def test_oversized_carrier_message_is_logged_and_counted(
    daemon_factory: Any, tmp_path: Path, bridge_logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(15):
        daemon, barrage = await _one_bad_peer(daemon_factory, tmp_path, "twilio_oversize_message")
    assert barrage.seen["twilio_oversize_message"] == 1009
    lines = LogIndex(bridge_logs.records).for_tags(*barrage.tags["twilio_oversize_message"])
    assert len(lines) == 1, lines
    assert re.search(r"too big|exceeds|over the limit|max_message_bytes", lines[0])
    assert bad_input_total(daemon) == 1


@pytest.mark.parametrize(
    "peer",
    ["as_bad_dtmf", "as_oversize_after_uuid", "twilio_garbage_json", "twilio_binary_frame"],
)
async def test_mid_call_protocol_errors_are_counted(
    daemon_factory: Any, tmp_path: Path, bridge_logs: pytest.LogCaptureFixture, peer: str
) -> None:
    with trio.fail_after(15):
        daemon, barrage = await _one_bad_peer(daemon_factory, tmp_path, peer)
    lines = LogIndex(bridge_logs.records).for_tags(*barrage.tags[peer])
    assert len(lines) == 1, lines
    assert bad_input_total(daemon) == 1
