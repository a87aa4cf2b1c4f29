"""The HTTP/1.1 server (transports.serve_http): requests, limits, refusals, disconnects.

Real sockets on 127.0.0.1 port 0 with short real timeouts; the per-peer policy object is
tested on its own (pure, with hypothesis).
"""

from __future__ import annotations

import logging
import re
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import attrs
import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.transports import (
    HttpLimits,
    HttpRequest,
    HttpResponse,
    HttpStats,
    PeerLimiter,
    render_response,
    serve_http,
)

LOGGER = "test.http"


@attrs.define
class Server:
    host: str
    port: int
    stats: HttpStats
    seen: list[HttpRequest]

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream(self.host, self.port)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


async def default_handler(seen: list[HttpRequest], request: HttpRequest) -> HttpResponse:
    seen.append(request)
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    if request.path == "/slow":
        await trio.sleep(10)
    if request.path == "/big":
        return HttpResponse(200, b"x" * 4_000_000)
    if request.path == "/bad-header":
        return HttpResponse(200, b"", headers=(("x-evil", "a\r\nset-cookie: 1"),))
    body = f"{request.method} {request.path} {len(request.body)}".encode()
    return HttpResponse(200, body, headers=(("x-query", request.query_string),))


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start(nursery: trio.Nursery) -> AsyncIterator[StartServer]:
    async def start_server(
        handler: Callable[[HttpRequest], Awaitable[HttpResponse]] | None = None, **limits: Any
    ) -> Server:
        seen: list[HttpRequest] = []
        stats = HttpStats()
        addresses = await nursery.start(
            partial(
                serve_http,
                handler or partial(default_handler, seen),
                "127.0.0.1",
                0,
                limits=HttpLimits(**limits),
                stats=stats,
                logger=logging.getLogger(LOGGER),
            )
        )
        return Server(addresses[0][0], addresses[0][1], stats, seen)

    yield start_server


async def read_until_closed(stream: trio.SocketStream, timeout_s: float = 5.0) -> bytes:
    data = b""
    with trio.fail_after(timeout_s):
        while True:
            try:
                chunk = await stream.receive_some()
            except trio.BrokenResourceError:
                return data
            if not chunk:
                return data
            data += chunk


async def exchange(server: Server, raw: bytes, timeout_s: float = 5.0) -> bytes:
    async with await server.connect() as stream:
        await stream.send_all(raw)
        return await read_until_closed(stream, timeout_s)


def statuses(data: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


# -- requests and responses ------------------------------------------------------------


async def test_get_with_httpx_keep_alive(start: StartServer) -> None:
    server = await start()
    async with httpx.AsyncClient() as client:
        for i in range(3):
            r = await client.get(server.url(f"/path%20x?i={i}"))
            assert r.status_code == 200
            assert r.text == "GET /path x 0"
            assert r.headers["x-query"] == f"i={i}"
            assert "date" in r.headers
    assert server.stats.connections == 1  # one kept-alive connection
    assert server.stats.requests == 3
    assert server.seen[0].peer[0] == "127.0.0.1"


async def test_pipelined_requests_are_answered_in_order(start: StartServer) -> None:
    server = await start()
    raw = (
        b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
        + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = await exchange(server, raw)
    assert statuses(data) == [200] * 6
    assert [r.path for r in server.seen] == ["/0", "/1", "/2", "/3", "/4", "/last"]
    assert data.endswith(b"GET /last 0")


async def test_post_bodies_content_length_and_chunked(start: StartServer) -> None:
    server = await start()
    async with httpx.AsyncClient() as client:
        r = await client.post(server.url("/p"), content=b"a" * 1000)
        assert r.text == "POST /p 1000"

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"b" * 100

        r = await client.post(server.url("/c"), content=chunks())
        assert r.text == "POST /c 1000"
    assert server.seen[-1].body == b"b" * 1000


async def test_head_has_headers_but_no_body(start: StartServer) -> None:
    server = await start()
    data = await exchange(server, b"HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-length: 9" in head  # "HEAD /h 0"
    assert body == b""


async def test_expect_100_continue(start: StartServer) -> None:
    server = await start()
    async with await server.connect() as stream:
        await stream.send_all(
            b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        with trio.fail_after(5):
            interim = await stream.receive_some()
        assert interim.startswith(b"HTTP/1.1 100 ")
        await stream.send_all(b"abcd")
        with trio.fail_after(5):
            final = await stream.receive_some()
        assert final.startswith(b"HTTP/1.1 200 ") and final.endswith(b"POST /e 4")


async def test_http_1_0_and_connection_close_close(start: StartServer) -> None:
    server = await start()
    for raw in (
        b"GET /a HTTP/1.0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ):
        data = await exchange(server, raw)
        assert statuses(data) == [200]
        assert b"connection: close" in data


async def test_request_cap_per_connection(start: StartServer) -> None:
    server = await start(max_requests_per_connection=3)
    raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 5
    data = await exchange(server, raw)
    assert statuses(data) == [200, 200, 200]
    assert data.count(b"connection: close") == 1


def test_render_refuses_a_header_that_splits_the_response() -> None:
    with pytest.raises(ValueError):
        render_response(HttpResponse(200, headers=(("x", "a\r\nb: c"),)))
    with pytest.raises(ValueError):
        render_response(HttpResponse(200, headers=(("x: y", "z"),)))
    ok = render_response(HttpResponse(204, b"", ""), close=True)
    assert ok.startswith(b"HTTP/1.1 204 No Content\r\n") and b"content-type" not in ok


# -- malformed input ---------------------------------------------------------------------

CRASH = (
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc\r\n0\r\n\r\n"
)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host (RFC 9112 §3.2)
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (CRASH, 400),  # a chunk that does not end where its size says
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n", 413),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"4000\r\n" + b"z" * 0x4000 + b"\r\n") * 5,
            413,
        ),
    ],
)
async def test_malformed_requests_get_a_status_and_a_close(
    start: StartServer, raw: bytes, status: int
) -> None:
    server = await start()
    data = await exchange(server, raw)
    assert statuses(data) == [status], data[:200]
    assert b"connection: close" in data
    # ... and the server goes on.
    async with httpx.AsyncClient() as client:
        assert (await client.get(server.url("/ok"))).status_code == 200


async def test_crash_request_many_times_fast(start: StartServer) -> None:
    """The external test's request, 200 times, each read once and closed at once."""
    server = await start(rate_per_peer=0)
    for _ in range(200):
        async with await server.connect() as stream:
            await stream.send_all(CRASH)
            with trio.fail_after(5):
                await stream.receive_some()
    assert server.stats.errors["malformed"] == 200
    async with httpx.AsyncClient() as client:
        assert (await client.get(server.url("/ok"))).status_code == 200


async def test_handler_exception_is_a_500_logged_once(
    start: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start(rate_per_peer=0)
    async with httpx.AsyncClient() as client:
        for _ in range(5):
            r = await client.get(server.url("/boom"))
            assert r.status_code == 500
            assert "handler bug" not in r.text
        assert (await client.get(server.url("/ok"))).status_code == 200
        r = await client.get(server.url("/bad-header"))
        assert r.status_code == 500
    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info  # throttled: one traceback a minute
    assert server.stats.errors["handler_error"] == 6


async def test_handler_timeout_is_a_503(start: StartServer) -> None:
    server = await start(handler_timeout_s=0.2)
    async with httpx.AsyncClient() as client:
        r = await client.get(server.url("/slow"))
    assert r.status_code == 503
    assert server.stats.errors["handler_timeout"] == 1


# -- time limits ---------------------------------------------------------------------------


async def test_slow_headers_get_408(start: StartServer) -> None:
    server = await start(request_timeout_s=0.3)
    async with await server.connect() as stream:
        t0 = trio.current_time()
        await stream.send_all(b"GET / HTTP/1.1\r\n")
        for _ in range(3):
            await trio.sleep(0.05)
            await stream.send_all(b"X-Slow: 1\r\n")
        data = await read_until_closed(stream)
        elapsed = trio.current_time() - t0
    assert statuses(data) == [408]
    assert 0.25 < elapsed < 3
    assert server.stats.errors["timeout"] == 1


async def test_slow_body_gets_408(start: StartServer) -> None:
    server = await start(request_timeout_s=0.3)
    data = b""
    async with await server.connect() as stream:
        await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        data = await read_until_closed(stream)
    assert statuses(data) == [408]


async def test_idle_connection_is_closed_quietly(start: StartServer) -> None:
    server = await start(idle_timeout_s=0.2)
    async with await server.connect() as stream:
        t0 = trio.current_time()
        data = await read_until_closed(stream)
        assert data == b""
        assert trio.current_time() - t0 < 3
        # A kept-alive connection, too, after its last response.
    async with await server.connect() as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await read_until_closed(stream)
    assert statuses(data) == [200]
    assert server.stats.errors.get("timeout", 0) == 0


async def test_a_client_that_does_not_read_is_dropped(start: StartServer) -> None:
    server = await start(send_timeout_s=0.3)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((server.host, server.port))
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5):
            while server.stats.errors.get("send_timeout", 0) == 0:
                await trio.sleep(0.05)
    assert server.stats.errors["send_timeout"] == 1


# -- disconnects are not errors ------------------------------------------------------------


async def test_disconnects_mid_body_and_mid_response_log_no_error(
    start: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await start(rate_per_peer=0)
    # Mid-body: half a body, then gone.
    for _ in range(3):
        async with await server.connect() as stream:
            await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
    # Mid-response: a 4 MB answer, the client resets after the first bytes.
    for _ in range(3):
        stream = await server.connect()
        await stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await stream.receive_some(100)
        # SO_LINGER 0: close() resets the connection under the server's send.
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()
    with trio.fail_after(5):
        while server.stats.errors.get("disconnected", 0) < 6 or server.stats.active:
            await trio.sleep(0.02)
    assert server.stats.errors["disconnected"] == 6
    mine = [r for r in caplog.records if r.name == LOGGER]
    assert mine and all(r.levelno == logging.DEBUG and not r.exc_info for r in mine)


async def test_half_closed_client_gets_its_answer(start: StartServer) -> None:
    server = await start()
    async with await server.connect() as stream:
        await stream.send_all(b"GET /half HTTP/1.1\r\nHost: x\r\n\r\n")
        await stream.send_eof()
        data = await read_until_closed(stream)
    assert statuses(data) == [200]


# -- connection and rate limits ------------------------------------------------------------


async def test_per_peer_connection_cap_then_total_cap(start: StartServer) -> None:
    server = await start(
        max_connections_per_peer=3, max_connections=100, rate_per_peer=0, refusal_delay_s=0.3
    )
    held = [await server.connect() for _ in range(3)]
    with trio.fail_after(5):
        while server.stats.active < 3:
            await trio.sleep(0.01)
    t0 = trio.current_time()
    data = await exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    # The canned refusal, after the tarpit's delay.
    assert statuses(data) == [429]
    assert trio.current_time() - t0 >= 0.25
    assert server.stats.refused["max_connections_per_peer"] == 1
    for stream in held:
        await stream.aclose()
    with trio.fail_after(5):
        while server.stats.active:
            await trio.sleep(0.01)
    async with httpx.AsyncClient() as client:
        assert (await client.get(server.url("/"))).status_code == 200


async def test_total_connection_cap_is_503(start: StartServer) -> None:
    server = await start(max_connections=2, max_connections_per_peer=10, rate_per_peer=0)
    held = [await server.connect() for _ in range(2)]
    with trio.fail_after(5):
        while server.stats.active < 2:
            await trio.sleep(0.01)
    data = await exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(data) in ([503], [])
    assert server.stats.refused["max_connections"] == 1
    for stream in held:
        await stream.aclose()


async def test_rate_limit_429_with_retry_after_then_recovers(start: StartServer) -> None:
    server = await start(rate_per_peer=2, burst_per_peer=3, max_throttle_s=0.1)
    async with httpx.AsyncClient() as client:
        codes = [(await client.get(server.url("/"))).status_code for _ in range(5)]
        assert codes[:3] == [200] * 3
        assert 429 in codes[3:]
        r = await client.get(server.url("/"))
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        await trio.sleep(0.6)  # a token back at 2/s
        assert (await client.get(server.url("/"))).status_code == 200
    assert server.stats.refused["rate_limited"] >= 2
    # A 429 for a request without a body keeps the connection: one connection in all.
    assert server.stats.connections == 1


async def test_rate_limit_throttles_a_kept_alive_client(start: StartServer) -> None:
    """Over the rate, a request waits for its token (nothing is read meanwhile) rather
    than being refused: the client is slowed to the rate."""
    server = await start(rate_per_peer=20, burst_per_peer=2, max_throttle_s=1.0)
    async with httpx.AsyncClient() as client:
        t0 = trio.current_time()
        codes = [(await client.get(server.url("/"))).status_code for _ in range(6)]
        elapsed = trio.current_time() - t0
    assert codes == [200] * 6
    assert elapsed >= 0.15  # 4 requests over the burst at 20/s
    assert server.stats.refused["throttled"] >= 3
    assert server.stats.refused.get("rate_limited", 0) == 0


async def test_rate_limited_request_with_a_body_closes(start: StartServer) -> None:
    server = await start(rate_per_peer=1, burst_per_peer=1, max_throttle_s=0.1)
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" * 3
    data = await exchange(server, raw)
    assert statuses(data) == [200, 429]
    assert data.count(b"connection: close") == 1


# -- the per-peer policy, pure ---------------------------------------------------------------


def test_peer_limiter_caps_and_release() -> None:
    lim = PeerLimiter(max_connections=3, max_connections_per_peer=2, rate_per_s=0, burst=1)
    assert lim.admit("a", 0) is None
    assert lim.admit("a", 0) is None
    assert lim.admit("a", 0) == "max_connections_per_peer"
    assert lim.admit("b", 0) is None
    assert lim.admit("c", 0) == "max_connections"
    lim.release("a")
    assert lim.admit("c", 0) is None
    assert lim.active == 3


def test_peer_limiter_remembers_a_bounded_number_of_peers() -> None:
    lim = PeerLimiter(1000, 1000, rate_per_s=1.0, burst=2.0, max_tracked_peers=100)
    for i in range(10_000):
        lim.take(f"10.0.{i // 256}.{i % 256}", float(i) * 1e-3)
        assert lim.tracked() <= 100


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.5, 100),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=300),
)
def test_token_bucket_never_allows_more_than_burst_plus_rate_times_time(
    rate: float, burst: int, gaps: list[float]
) -> None:
    lim = PeerLimiter(10, 10, rate_per_s=rate, burst=float(burst))
    now = 0.0
    allowed = 0
    for gap in gaps:
        now += gap
        wait = lim.take("p", now)
        if wait == 0.0:
            allowed += 1
        else:
            assert 0 < wait <= 1 / rate + 1e-9
    assert allowed <= burst + rate * now + 1e-6
