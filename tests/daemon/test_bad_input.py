"""Every bad connection counted once and logged with its peer, the log rate limited.

The attacker-style finding: bad opcodes, unmasked client frames, invalid UTF-8 and
oversize messages before ``start`` (about 73,000 of 180,000 fuzzed WebSocket
connections) reached neither ``bridge_bad_input_total`` nor a WARNING; bad handshakes
named their peer ``:0``; and bad-peer logging had no rate limit (123 MB per fuzz run).

Here a seeded generator makes bad connections of every class -- on the carrier
WebSocket listener: handshake garbage, a stalled request, a plain HTTP request, each
framing violation (bad opcode, unmasked frame, invalid UTF-8, oversize, bad close
code) before and after ``start``, no ``start``, bad JSON, a close before ``start``; on
the AudioSocket listener: garbage, a stall, a cut-off UUID frame, bad frames after the
UUID -- and fires them at a live daemon while a good Twilio call runs. Asserted:
exactly one ``bridge_bad_input_total{leg,kind}`` per bad connection, of the expected
kind; every WARNING line names the right peer; at most the configured lines in any
interval, plus a summary of the rest; and the good call loses no frame.
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
import random
import struct
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from websockets.frames import Frame, Opcode

from bridge.daemon._config import Config
from bridge.daemon._daemon import Daemon
from bridge.dialects import Audio, Connected, Start
from bridge.dialects._twilio import TwilioPlatform
from bridge.transports import open_websocket_client

from .conftest import make_config
from .test_garbage import read_to_eof, ulaw_exact_pcm, wait_until

SEED = 0xBAD1
CONNECTIONS = 96
CONCURRENCY = 8
LINES_PER_INTERVAL = 6
INTERVAL_S = 2.0
MAX_MESSAGE_BYTES = 2048

ROUTES = """
[[routes]]
name = "as-echo"
match = { listener = "audiosocket" }
app = { url = "echo:", encapsulation = "sln" }

[[routes]]
name = "twilio-echo"
match = { listener = "websocket", path = "/twilio" }
carrier = "twilio"
app = { url = "echo:", encapsulation = "sln" }
"""


def fuzz_config(tmp_path: Path) -> Config:
    config = make_config(tmp_path, routes=ROUTES)
    replace = msgspec.structs.replace
    return replace(
        config,
        daemon=replace(
            config.daemon,
            bad_input_log_per_interval=LINES_PER_INTERVAL,
            bad_input_log_interval=f"{INTERVAL_S:g}s",
        ),
        audiosocket=replace(config.audiosocket, first_frame_timeout="400ms", max_frame_bytes=1024),
        websocket=replace(
            config.websocket, handshake_timeout="400ms", max_message_bytes=MAX_MESSAGE_BYTES
        ),
    )


# ------------------------------------------------------------------------ raw frames


def frame(opcode: int, data: bytes, *, mask: bool = True, fin: bool = True) -> bytes:
    """One client frame byte by byte (RFC 6455 §5.2), whatever the opcode."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(data)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + data
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(data))


def text(message: str | bytes) -> bytes:
    data = message.encode() if isinstance(message, str) else message
    return Frame(Opcode.TEXT, data).serialize(mask=True)


def upgrade_request(host: str, port: int, path: str = "/twilio") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def twilio_opening(sid: str, call: str) -> bytes:
    twilio = TwilioPlatform(sid, call, "AC1")
    out = b""
    for event in (Connected(), Start(sid, call)):
        for message in twilio.send(event):
            out += text(message)
    return out + text(twilio.send_audio(ulaw_exact_pcm(1)))


#: Framing violations: (kind, bytes). The oversize one declares a length over the limit
#: and sends a little of it; the parser gives up at the header (RFC 6455 §5.2).
def violations(rng: random.Random) -> list[tuple[str, bytes]]:
    return [
        ("bad_frame", frame(rng.choice([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]), rng.randbytes(8))),
        ("bad_frame", frame(0x1, b'{"event":"media"}', mask=False)),  # unmasked
        ("bad_frame", frame(0x9, rng.randbytes(130))),  # control frame over 125 bytes
        ("invalid_utf8", frame(0x1, b'{"event": "\xff\xfe"}')),
        ("message_too_big", frame(0x1, rng.randbytes(MAX_MESSAGE_BYTES + 1 + rng.randrange(4000)))[:64]),
        ("bad_close", frame(0x8, struct.pack("!H", rng.choice([0, 999, 1005, 1006, 1015, 2999])))),
        ("bad_close", frame(0x8, b"\x03")),  # one byte
    ]


# ------------------------------------------------------------------------ the generator


class Fuzz:
    """The bad connections, drawn from one seeded generator. Each records the local
    address it came from (the peer the daemon must name) and the (leg, kind) it must
    be counted under."""

    def __init__(self, daemon: Daemon, seed: int) -> None:
        self.daemon = daemon
        self.rng = random.Random(seed)
        self.expected: Counter[tuple[str, str]] = Counter()
        self.peers: set[str] = set()

    def plan(self, n: int) -> list[Callable[[], Awaitable[None]]]:
        makers: list[Callable[[random.Random], Callable[[], Awaitable[None]]]] = [
            self.ws_garbage,
            self.ws_stalled,
            self.ws_not_upgrade,
            self.ws_violation_before_start,
            self.ws_violation_after_start,
            self.ws_no_start,
            self.ws_bad_json_before_start,
            self.ws_closed_before_start,
            self.as_garbage,
            self.as_stalled,
            self.as_cut_uuid,
            self.as_bad_after_uuid,
        ]
        # Every class at least once, then a seeded mix.
        picks = makers + [self.rng.choice(makers) for _ in range(n - len(makers))]
        return [make(random.Random(self.rng.getrandbits(64))) for make in picks]

    async def _tcp(self, listener: str) -> trio.SocketStream:
        stream = await trio.open_tcp_stream(*self.daemon.bound[listener])
        host, port = stream.socket.getsockname()[:2]
        self.peers.add(f"{host}:{port}")
        return stream

    async def _ws(self, kind: str, payload: bytes, *, upgrade: bool = True, eof: bool = False) -> None:
        self.expected["websocket", kind] += 1
        stream = await self._tcp("websocket")
        async with stream:
            host, port = self.daemon.bound["websocket"]
            if upgrade:
                await stream.send_all(upgrade_request(host, port))
                answer = b""
                while b"\r\n\r\n" not in answer:
                    chunk = await stream.receive_some(4096)
                    assert chunk, answer
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 101"), answer[:40]
            if payload:
                await stream.send_all(payload)
            if eof:
                await stream.send_eof()
            await read_to_eof(stream)

    # -- WebSocket listener

    def ws_garbage(self, rng: random.Random) -> Callable[[], Awaitable[None]]:
        blob = rng.randbytes(rng.randrange(1, 3000))
        return lambda: self._ws("bad_handshake", blob, upgrade=False, eof=True)

    def ws_stalled(self, rng: random.Random) -> Callable[[], Awaitable[None]]:
        cut = upgrade_request("x", 1)[: rng.randrange(0, 60)]
        return lambda: self._ws("handshake_timeout", cut, upgrade=False)

    def ws_not_upgrade(self, rng: random.Random) -> Callable[[], Awaitable[None]]:
        request = b"GET /twilio HTTP/1.1\r\nHost: x\r\n\r\n"
        return lambda: self._ws("bad_handshake", request, upgrade=False)

    def ws_violation_before_start(self, rng: random.Random) -> Callable[[], Awaitable[None]]:
        kind, data = rng.choice(violations(rng))
        return lambda: self._ws(kind, data)

    def ws_violation_after_start(self, rng: random.Random) -> Callable[[], Awaitable[None]]:
        kind, data = rng.choice(violations(rng))
        opening = twilio_opening(f"MZ{rng.getrandbits(64):x}", f"CA{rng.getrandbits(64):x}")
        return lambda: self._ws(kind, opening + data)

    def ws_no_start(self, rng: random.Random) -> Callable[[], Awaitable[None]]:
        connected = text(TwilioPlatform("MZ", "CA", "AC").send(Connected())[0])
        return lambda: self._ws("no_start", connected if rng.random() < 0.5 else b"")

    def ws_bad_json_before_start(self, rng: random.Random) -> Callable[[], Awaitable[None]]:
        return lambda: self._ws("protocol_error", text('{"event": "start", ]]'))

    def ws_closed_before_start(self, rng: random.Random) -> Callable[[], Awaitable[None]]:
        return lambda: self._ws("closed_before_start", frame(0x8, struct.pack("!H", 1000)))

    # -- AudioSocket listener

    async def _as(self, kind: str, payload: bytes) -> None:
        self.expected["audiosocket", kind] += 1
        stream = await self._tcp("audiosocket")
        async with stream:
            if payload:
                await stream.send_all(payload)
            if kind == "closed_before_uuid":
                await stream.send_eof()
            await read_to_eof(stream)

    def as_garbage(self, rng: random.Random) -> Callable[[], Awaitable[None]]:
        """A first frame that is whole but not a UUID (any other kind, any length up to
        the limit), then more garbage. (A header that promises more bytes than follow
        is a stall instead: first_frame_timeout.)"""
        kind = rng.choice([k for k in range(256) if k != 0x01])
        length = rng.randrange(0, 300)
        blob = bytes([kind]) + struct.pack("!H", length) + rng.randbytes(length)
        return lambda: self._as("protocol_error", blob + rng.randbytes(rng.randrange(0, 200)))

    def as_stalled(self, rng: random.Random) -> Callable[[], Awaitable[None]]:
        return lambda: self._as("first_frame_timeout", b"\x01\x00" if rng.random() < 0.5 else b"")

    def as_cut_uuid(self, rng: random.Random) -> Callable[[], Awaitable[None]]:
        return lambda: self._as("closed_before_uuid", b"\x01\x00\x10" + uuid.uuid4().bytes[:7])

    def as_bad_after_uuid(self, rng: random.Random) -> Callable[[], Awaitable[None]]:
        bad = rng.choice([b"\x10\xff\xfe" + bytes(40), b"\x03\x00\x01x", b"\x01\x00\x10" + bytes(16)])
        opening = b"\x01\x00\x10" + uuid.uuid4().bytes + b"\x10\x01\x40" + bytes(320)
        return lambda: self._as("protocol_error", opening + bad)


# ------------------------------------------------------------------------ the good call


async def good_twilio_call(daemon: Daemon, stop: trio.Event, out: dict[str, Any]) -> None:
    """Numbered frames every 20 ms until ``stop``; every one must come back, in order."""
    host, port = daemon.bound["websocket"]
    twilio = TwilioPlatform("MZgood", "CAgood", "AC1")
    index = {ulaw_exact_pcm(n): n for n in range(4000)}
    got: list[int] = []
    sent = 0
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
            out["streaming"] = True
            start = trio.current_time()
            while not stop.is_set() and sent < 4000:
                await trio.sleep_until(start + sent * 0.02)
                await ws.send(twilio.send_audio(ulaw_exact_pcm(sent)))
                sent += 1
            await wait_until(lambda: len(got) >= sent)
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    out["sent"] = sent
    out["echoed"] = got


# ------------------------------------------------------------------------ the test


def bad_input_counts(daemon: Daemon) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for family in daemon.metrics.registry.collect():
        if family.name == "bridge_bad_input":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.value:
                    counts[sample.labels["leg"], sample.labels["kind"]] += int(sample.value)
    return counts


async def test_fuzz_every_bad_connection_counted_once_logged_within_budget(
    daemon_factory: Any, tmp_path: Path, bridge_logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(60):
        daemon: Daemon = await daemon_factory(fuzz_config(tmp_path))
        fuzz = Fuzz(daemon, SEED)
        jobs = fuzz.plan(CONNECTIONS)
        good: dict[str, Any] = {}
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(good_twilio_call, daemon, stop, good)
            await wait_until(lambda: "streaming" in good and daemon.manager.live_count >= 1)
            await trio.sleep(0.2)
            limiter = trio.CapacityLimiter(CONCURRENCY)

            async def run(job: Callable[[], Awaitable[None]]) -> None:
                async with limiter:
                    await job()

            async with trio.open_nursery() as bad:
                for job in jobs:
                    bad.start_soon(run, job)
            stop.set()
        # The streams the mid-call garbage ended count when their readers see it.
        await wait_until(lambda: daemon.manager.live_count == 0)
        await wait_until(lambda: sum(bad_input_counts(daemon).values()) >= CONNECTIONS)
        # The summary of what was held back comes out once its interval is over.
        await wait_until(
            lambda: any("suppressed" in r.getMessage() for r in bridge_logs.records),
            INTERVAL_S + 2,
        )

    # ---- the good call lost nothing
    assert good["sent"] > 50
    assert good["echoed"] == list(range(good["sent"]))

    # ---- exactly one count per bad connection, of the expected kind
    assert sum(fuzz.expected.values()) == CONNECTIONS
    assert bad_input_counts(daemon) == fuzz.expected

    # ---- the log: lines name the right peer, within the budget, plus summaries
    records = [
        r for r in bridge_logs.records if r.name.startswith("bridge") and r.levelno >= logging.WARNING
    ]
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []
    summaries = [r for r in records if r.getMessage().startswith("suppressed ")]
    lines = [r for r in records if r not in summaries]
    assert lines, "no bad-input line at all"
    for r in lines:
        peer = getattr(r, "peer", None)
        assert peer in fuzz.peers, (peer, r.getMessage())
        assert ":0 " not in r.getMessage() and not peer.endswith(":0")
    times = sorted(r.created for r in lines)
    for i, t in enumerate(times):
        in_window = sum(1 for u in times[i:] if u - t < INTERVAL_S - 0.01)
        assert in_window <= LINES_PER_INTERVAL, (i, in_window)
    # Everything not written is in a summary; summaries come at most once an interval.
    assert len(lines) + sum(getattr(r, "suppressed", 0) for r in summaries) == CONNECTIONS
    summary_times = sorted(r.created for r in summaries)
    assert all(b - a >= INTERVAL_S - 0.05 for a, b in itertools.pairwise(summary_times))
    by_kind: Counter[str] = Counter()
    for r in summaries:
        by_kind.update(r.by_kind)  # type: ignore[attr-defined]
    assert set(by_kind) <= {kind for _, kind in fuzz.expected}
