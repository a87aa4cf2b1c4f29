"""Hostile clients of the admin port, and good calls that must not notice them.

Shared by tests/daemon/test_admin_fuzz.py (in-process daemon, a fast seeded run) and
bench/admin_load.py (a real ``bridge run``, thousands of rounds). Every attack opens its
own connections to ``(host, port)`` and returns what the server sent back; a seeded
``random.Random`` makes a run repeatable.

Attack classes: the external test's crash request; malformed request lines; huge
headers; bad chunked bodies; oversize bodies; slow headers (slowloris: many connections
trickling a head, to hit the per-peer connection cap and the header timeout); pipelined
requests; half-closed sockets (request then FIN, or FIN mid-request); clients that
disconnect mid-body and mid-response; random bytes; an unauthenticated 404 flood.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from .asclient import AudioSocketCaller

CRASH = (
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc\r\n0\r\n\r\n"
)

Attack = Callable[[str, int, random.Random], Awaitable[bytes]]


async def _connect(host: str, port: int) -> trio.SocketStream | None:
    try:
        return await trio.open_tcp_stream(host, port)
    except OSError:
        return None


async def _read_some(stream: trio.SocketStream, timeout_s: float) -> bytes:
    with trio.move_on_after(timeout_s):
        try:
            return await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""
    return b""


async def _read_to_eof(stream: trio.SocketStream, timeout_s: float) -> bytes:
    got = bytearray()
    with trio.move_on_after(timeout_s):
        try:
            while chunk := await stream.receive_some(65536):
                got += chunk
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    return bytes(got)


async def _send(stream: trio.SocketStream, data: bytes) -> bool:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


async def _one_shot(host: str, port: int, data: bytes, *, read: str = "once") -> bytes:
    stream = await _connect(host, port)
    if stream is None:
        return b""
    try:
        if not await _send(stream, data):
            return b""
        if read == "once":
            return await _read_some(stream, 5.0)
        if read == "eof":
            return await _read_to_eof(stream, 10.0)
        return b""
    finally:
        await stream.aclose()


# -- the attack classes ---------------------------------------------------------------


async def crash_request(host: str, port: int, rng: random.Random) -> bytes:
    return await _one_shot(host, port, CRASH)


async def malformed_request_line(host: str, port: int, rng: random.Random) -> bytes:
    line = rng.choice(
        [
            b"GARBAGE",
            b"GET",
            b"GET /",
            b"GET / HTTP/9.9",
            b"GET  / HTTP/1.1",
            b"GET /\x00 HTTP/1.1",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
            b"PRI * HTTP/2.0",
            b"G\xffT / HTTP/1.1",
            bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 200))),
        ]
    )
    return await _one_shot(host, port, line + b"\r\nHost: x\r\n\r\n")


async def huge_headers(host: str, port: int, rng: random.Random) -> bytes:
    size = rng.choice([17_000, 64_000, 300_000])
    if rng.random() < 0.5:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    else:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-H: v\r\n" * (size // 8) + b"\r\n"
    return await _one_shot(host, port, head)


async def bad_chunked_body(host: str, port: int, rng: random.Random) -> bytes:
    body = rng.choice(
        [
            b"5\r\nabc\r\n0\r\n\r\n",
            b"zz\r\nabc\r\n0\r\n\r\n",
            b"-1\r\nabc\r\n",
            b"ffffffffffffffffffff\r\n",
            b"3\r\nabcdef\r\n0\r\n\r\n",
            b"3;ext=" + b"e" * 20000 + b"\r\nabc\r\n0\r\n\r\n",
            b"3\r\nabc\r\n0\r\nTrailer: " + b"t" * 20000 + b"\r\n\r\n",
            (b"8000\r\n" + b"z" * 0x8000 + b"\r\n") * 3 + b"0\r\n\r\n",  # over 64 KiB
        ]
    )
    method = rng.choice([b"POST /v1/streams", b"POST /healthz", b"PUT /v1/log-level"])
    head = method + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    return await _one_shot(host, port, head + body)


async def oversize_body(host: str, port: int, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return await _one_shot(
            host, port, b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n"
        )
    return await _one_shot(
        host,
        port,
        b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n" + b"{" * 70000,
    )


async def slow_headers(host: str, port: int, rng: random.Random) -> bytes:
    """Slowloris: 24 connections each trickling a head a byte at a time for 2 s (the
    server's per-peer cap refuses some at once; its header timeout ends the rest)."""
    answers: list[bytes] = []

    async def one() -> None:
        stream = await _connect(host, port)
        if stream is None:
            return
        try:
            got = b""
            with trio.move_on_after(2.0):
                for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 10_000:
                    if not await _send(stream, bytes([byte])):
                        break
                    await trio.sleep(0.05)
            got = await _read_some(stream, 0.5)
            answers.append(got)
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(24):
            nursery.start_soon(one)
    return b"".join(answers)


async def pipelined(host: str, port: int, rng: random.Random) -> bytes:
    paths = [b"/healthz", b"/readyz", b"/nowhere", b"/v1/streams", b"/metrics"]
    requests = b"".join(
        b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % rng.choice(paths)
        for _ in range(rng.randrange(2, 40))
    )
    if rng.random() < 0.3:
        requests += b"GARBAGE\r\n\r\n" + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    return await _one_shot(host, port, requests, read="eof")


async def half_closed(host: str, port: int, rng: random.Random) -> bytes:
    stream = await _connect(host, port)
    if stream is None:
        return b""
    try:
        if rng.random() < 0.5:
            ok = await _send(stream, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        else:  # FIN in the middle of a head or body
            ok = await _send(
                stream,
                rng.choice(
                    [
                        b"GET /hea",
                        b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{",
                    ]
                ),
            )
        if ok:
            try:
                await stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
        return await _read_to_eof(stream, 5.0)
    finally:
        await stream.aclose()


async def disconnect_mid_body(host: str, port: int, rng: random.Random) -> bytes:
    return await _one_shot(
        host,
        port,
        b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"{" * 100,
        read="none",
    )


async def disconnect_mid_response(host: str, port: int, rng: random.Random) -> bytes:
    """Ask for /metrics (the largest answer) and reset the connection while it arrives."""
    stream = await _connect(host, port)
    if stream is None:
        return b""
    import socket

    try:
        await _send(stream, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 20)
        got = await _read_some(stream, 2.0)
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return got
    finally:
        await stream.aclose()


async def random_bytes(host: str, port: int, rng: random.Random) -> bytes:
    blob = rng.randbytes(rng.choice([1, 10, 100, 2000, 20000]))
    return await _one_shot(host, port, blob + rng.choice([b"", b"\r\n\r\n"]))


async def unauthenticated_flood(host: str, port: int, rng: random.Random) -> bytes:
    """50 unauthenticated requests on one keep-alive connection: 404s and 401s."""
    reqs = b"".join(
        rng.choice(
            [
                b"GET /nope%d HTTP/1.1\r\nHost: x\r\n\r\n" % i,
                b"DELETE /v1/streams/x%d HTTP/1.1\r\nHost: x\r\n\r\n" % i,
            ]
        )
        for i in range(50)
    )
    return await _one_shot(
        host,
        port,
        reqs + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        read="eof",
    )


ATTACKS: dict[str, Attack] = {
    "crash_request": crash_request,
    "malformed_request_line": malformed_request_line,
    "huge_headers": huge_headers,
    "bad_chunked_body": bad_chunked_body,
    "oversize_body": oversize_body,
    "slow_headers": slow_headers,
    "pipelined": pipelined,
    "half_closed": half_closed,
    "disconnect_mid_body": disconnect_mid_body,
    "disconnect_mid_response": disconnect_mid_response,
    "random_bytes": random_bytes,
    "unauthenticated_flood": unauthenticated_flood,
}


async def run_fuzz(
    host: str,
    port: int,
    *,
    seed: int,
    rounds: int,
    concurrency: int = 8,
    attacks: dict[str, Attack] | None = None,
) -> dict[str, int]:
    """``rounds`` attacks picked at random (every class at least once, slowloris at most
    once per 50 rounds), ``concurrency`` at a time; how many of each ran."""
    table = attacks or ATTACKS
    rng = random.Random(seed)
    names = list(table)
    plan = names + [
        rng.choice([n for n in names if n != "slow_headers"])
        for _ in range(max(0, rounds - len(names)))
    ]
    plan += ["slow_headers"] * (rounds // 50)
    rng.shuffle(plan)
    ran: dict[str, int] = dict.fromkeys(names, 0)
    limiter = trio.CapacityLimiter(concurrency)

    async def one(name: str, sub_seed: int) -> None:
        async with limiter:
            await table[name](host, port, random.Random(sub_seed))
            ran[name] += 1

    async with trio.open_nursery() as nursery:
        for name in plan:
            nursery.start_soon(one, name, rng.getrandbits(32))
    return ran


# -- good calls --------------------------------------------------------------------------


def numbered(n: int) -> bytes:
    """160 samples holding n + 1 (never silence), echoed back unchanged by ``echo:``."""
    return struct.pack("<h", (n % 32000) + 1) * 160


@attrs.define
class EchoCall:
    """One AudioSocket call to the ``echo:`` route: numbered frames on a 20 ms grid;
    after :meth:`run`, ``lost`` frames never came back and ``in_order`` says whether
    every echoed frame came back once, in order."""

    host: str
    port: int
    #: Frames to send; or, with ``stop``, at most this many, ending when ``stop`` is set.
    frames: int
    stop: trio.Event | None = None
    sent: int = 0
    echoed: list[int] = attrs.field(factory=list)
    hung_up: bool = False
    streaming: trio.Event = attrs.field(factory=trio.Event)

    @property
    def lost(self) -> int:
        return self.sent - len(set(self.echoed))

    @property
    def in_order(self) -> bool:
        return self.echoed == list(range(len(self.echoed)))

    async def run(self) -> None:
        caller = await AudioSocketCaller.connect(self.host, self.port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller.receive_forever)
            start = trio.current_time()
            for n in range(self.frames):
                if self.stop is not None and self.stop.is_set():
                    break
                await trio.sleep_until(start + n * 0.02)
                if not await caller.send_frame(numbered(n)):
                    self.hung_up = True
                    break
                self.sent += 1
                if n == 10:
                    self.streaming.set()
            with trio.move_on_after(5.0):
                while sum(1 for _, p in caller.received if any(p)) < self.sent:
                    await trio.sleep(0.02)
            await trio.sleep(0.1)  # a duplicate would arrive now
            await caller.aclose()
            nursery.cancel_scope.cancel()
        self.echoed = [(struct.unpack_from("<h", p)[0] - 1) for _, p in caller.received if any(p)]
        self.streaming.set()


def summary(calls: list[EchoCall]) -> dict[str, Any]:
    return {
        "calls": len(calls),
        "sent": sum(c.sent for c in calls),
        "lost": sum(c.lost for c in calls),
        "in_order": all(c.in_order for c in calls),
        "hung_up": sum(c.hung_up for c in calls),
    }
