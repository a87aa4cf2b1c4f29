"""Our WebSocket client against our WebSocket server, over real loopback sockets."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import struct

import pytest
import trio
import trio.testing
import trustme

from bridge import (
    ConnectionClosed,
    FramingError,
    HandshakeError,
    HandshakeRejected,
    MessageTooBig,
    TransportTimeout,
)
from bridge.transports import WebSocketConnection, WebSocketRequest, open_websocket_client

from .conftest import Pki, StartServer, echo_handler

UPGRADE_REQUEST = (
    b"GET / HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


def url(port: int, path: str = "/") -> str:
    return f"ws://127.0.0.1:{port}{path}"


async def read_until_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


# ------------------------------------------------------------------------- messages


async def test_echo_text_and_binary(start_server: StartServer) -> None:
    port = await start_server(echo_handler)
    with trio.fail_after(5):
        async with open_websocket_client(url(port)) as ws:
            await ws.send("héllo")
            assert await ws.receive() == "héllo"
            await ws.send(b"\x00\x01binary")
            assert await ws.receive() == b"\x00\x01binary"
            await ws.send("")
            assert await ws.receive() == ""
            await ws.send(b"")
            assert await ws.receive() == b""
            assert ws.remote == ("127.0.0.1", port)
            assert ws.local[0] == "127.0.0.1"
            assert not ws.closed and ws.close_code is None
        assert ws.closed and ws.close_code == 1000


async def test_thousand_messages_each_way_in_order(start_server: StartServer) -> None:
    count = 1000
    server_got: list[bytes | str] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()

        async def writer() -> None:
            for i in range(count):
                await ws.send(f"s{i}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            for _ in range(count):
                server_got.append(await ws.receive())
        with pytest.raises(ConnectionClosed):
            await ws.receive()

    port = await start_server(handler)
    with trio.fail_after(10):
        async with open_websocket_client(url(port)) as ws:
            client_got: list[bytes | str] = []

            async def writer() -> None:
                for i in range(count):
                    await ws.send(i.to_bytes(4, "big"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                for _ in range(count):
                    client_got.append(await ws.receive())
        assert client_got == [f"s{i}" for i in range(count)]
        # The server finishes receiving before our close reaches it.
        assert server_got == [i.to_bytes(4, "big") for i in range(count)]


async def test_large_message_at_limit_passes_and_over_limit_is_1009(start_server: StartServer) -> None:
    limit = 256 * 1024
    server_errors: list[Exception] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send(await ws.receive())
        except (MessageTooBig, ConnectionClosed) as exc:
            server_errors.append(exc)
        # After MessageTooBig once, the connection reports closed.
        with pytest.raises(ConnectionClosed) as info:
            await ws.receive()
        assert info.value.code == 1009
        done.set()

    done = trio.Event()
    port = await start_server(handler, max_message_bytes=limit)
    with trio.fail_after(5):
        async with open_websocket_client(url(port)) as ws:
            big = os.urandom(limit)
            await ws.send(big)
            assert await ws.receive() == big
            await ws.send(b"x" * (limit + 1))
            with pytest.raises(ConnectionClosed) as info:
                await ws.receive()
            assert info.value.code == 1009
            assert ws.close_code == 1009
        await done.wait()
    assert len(server_errors) == 1 and isinstance(server_errors[0], MessageTooBig)


async def test_client_side_limit(start_server: StartServer) -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send("x" * 2000)
        with pytest.raises(ConnectionClosed) as info:
            await ws.receive()
        assert info.value.code == 1009

    port = await start_server(handler)
    with trio.fail_after(5):
        async with open_websocket_client(url(port), max_message_bytes=1000) as ws:
            with pytest.raises(MessageTooBig):
                await ws.receive()
            with pytest.raises(ConnectionClosed):
                await ws.receive()
            with pytest.raises(ConnectionClosed):
                await ws.send("late")


async def test_fragmented_message_is_reassembled(start_server: StartServer) -> None:
    port = await start_server(echo_handler)
    with trio.fail_after(5):
        async with open_websocket_client(url(port)) as ws:
            # RFC 6455 §5.4: a message in three frames; our API never fragments, so
            # drive the protocol object directly.
            ws._protocol.send_text(b"frag", fin=False)
            ws._protocol.send_continuation(b"ment", fin=False)
            ws._protocol.send_continuation("ed é".encode(), fin=True)
            await ws._flush(wait=True)
            assert await ws.receive() == "fragmented é"


async def test_invalid_utf8_fails_with_1007(start_server: StartServer) -> None:
    seen: list[int | None] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        # Bad input, reported once as such (so it can be counted), then closed.
        with pytest.raises(FramingError) as bad:
            await ws.receive()
        assert bad.value.kind == "invalid_utf8"
        with pytest.raises(ConnectionClosed) as info:
            await ws.receive()
        seen.append(info.value.code)
        done.set()

    done = trio.Event()
    port = await start_server(handler)
    with trio.fail_after(5):
        async with open_websocket_client(url(port)) as ws:
            ws._protocol.send_text(b"\xff\xfe")
            await ws._flush(wait=True)
            with pytest.raises(ConnectionClosed) as info:
                await ws.receive()
            assert info.value.code == 1007
        await done.wait()
    assert seen == [1007]


# ------------------------------------------------------------------------- closing


async def test_client_close_code_and_reason_reach_server(start_server: StartServer) -> None:
    seen: list[tuple[int | None, str]] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await ws.receive()
        except ConnectionClosed as exc:
            seen.append((exc.code, exc.reason))
        assert ws.closed and ws.close_code == 4000 and ws.close_reason == "bye now"
        done.set()

    done = trio.Event()
    port = await start_server(handler)
    with trio.fail_after(5):
        async with open_websocket_client(url(port)) as ws:
            await ws.close(4000, "bye now")
            assert ws.close_code == 4000 and ws.close_reason == "bye now"
            await ws.close()  # idempotent
            with pytest.raises(ConnectionClosed):
                await ws.send("after close")
            with pytest.raises(ConnectionClosed):
                await ws.receive()
        await done.wait()
    assert seen == [(4000, "bye now")]


async def test_server_close_code_and_reason_reach_client(start_server: StartServer) -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send("last words")
        await ws.close(4001, "server says bye")

    port = await start_server(handler)
    with trio.fail_after(5):
        async with open_websocket_client(url(port)) as ws:
            # Messages sent before the close frame are still delivered.
            assert await ws.receive() == "last words"
            with pytest.raises(ConnectionClosed) as info:
                await ws.receive()
            assert (info.value.code, info.value.reason) == (4001, "server says bye")
            assert ws.closed


async def test_handler_return_closes_with_1000(start_server: StartServer) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.accept()

    port = await start_server(handler)
    with trio.fail_after(5):
        async with open_websocket_client(url(port)) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.receive()
            assert info.value.code == 1000


async def test_close_while_another_task_is_receiving(start_server: StartServer) -> None:
    port = await start_server(echo_handler)
    with trio.fail_after(5):
        async with open_websocket_client(url(port)) as ws:
            outcome: list[BaseException] = []

            async def reader() -> None:
                try:
                    await ws.receive()
                except ConnectionClosed as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                await ws.close(1001, "going away")
            assert len(outcome) == 1
            assert isinstance(outcome[0], ConnectionClosed) and outcome[0].code == 1001


async def test_close_timeout_when_peer_never_answers(nursery: trio.Nursery) -> None:
    """A peer that completes the upgrade but never reads: close() gives up in time."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    held: list[trio.SocketStream] = []

    async def mute_peer() -> None:
        stream = await listener.accept()
        held.append(stream)
        request = await stream.receive_some(65536)
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key")
        )
        from websockets.utils import accept_key

        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(key.decode()).encode()
            + b"\r\n\r\n"
        )
        await trio.sleep_forever()

    nursery.start_soon(mute_peer)
    with trio.fail_after(5):
        async with open_websocket_client(url(port), close_timeout_s=0.3, ping_interval_s=None) as ws:
            start = trio.current_time()
            await ws.close()
            elapsed = trio.current_time() - start
        assert 0.25 <= elapsed < 2.5
        assert ws.closed and ws.close_code == 1000  # what we sent; the peer never echoed
    await listener.aclose()


async def test_body_exception_propagates_unwrapped_and_closes_1011(start_server: StartServer) -> None:
    seen: list[int | None] = []
    done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        with pytest.raises(ConnectionClosed) as info:
            await ws.receive()
        seen.append(info.value.code)
        done.set()

    port = await start_server(handler)
    with trio.fail_after(5):
        with pytest.raises(KeyError):  # not an ExceptionGroup: the nursery is internal
            async with open_websocket_client(url(port)):
                raise KeyError("app bug")
        await done.wait()
    assert seen == [1011]


async def test_cancelled_body_closes_the_socket(start_server: StartServer) -> None:
    port = await start_server(echo_handler)
    fds = len(os.listdir("/proc/self/fd"))
    with trio.fail_after(5):
        with trio.move_on_after(0.1) as scope:
            async with open_websocket_client(url(port)) as ws:
                await ws.receive()  # nothing comes; cancelled here
        assert scope.cancelled_caught
        assert ws.closed
        await trio.testing.wait_all_tasks_blocked()
    assert len(os.listdir("/proc/self/fd")) <= fds


async def test_concurrent_senders_are_serialised(start_server: StartServer) -> None:
    port = await start_server(echo_handler)
    with trio.fail_after(10):
        async with open_websocket_client(url(port)) as ws:
            got: list[bytes | str] = []

            async def sender(tag: str) -> None:
                for i in range(200):
                    await ws.send(f"{tag}{i}:" + "x" * 3000)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender, "a")
                nursery.start_soon(sender, "b")
                for _ in range(400):
                    got.append(await ws.receive())
            # Every message intact; each sender's messages in its own order.
            for tag in "ab":
                mine = [m for m in got if isinstance(m, str) and m.startswith(tag)]
                assert mine == [f"{tag}{i}:" + "x" * 3000 for i in range(200)]


# ------------------------------------------------------------------------- handshake


async def test_handshake_timeout(nursery: trio.Nursery) -> None:
    """A server that accepts TCP but never answers the upgrade."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    accepted: list[trio.SocketStream] = []

    async def silent() -> None:
        accepted.append(await listener.accept())
        await trio.sleep_forever()

    nursery.start_soon(silent)
    with trio.fail_after(5):
        start = trio.current_time()
        with pytest.raises(TransportTimeout) as info:
            async with open_websocket_client(url(port), handshake_timeout_s=0.3):
                pass  # pragma: no cover
        assert info.value.step == "handshake"
        assert 0.25 <= trio.current_time() - start < 2.5
    await listener.aclose()


async def test_connection_refused_is_handshake_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with trio.fail_after(5), pytest.raises(HandshakeError) as info:
        async with open_websocket_client(url(port)):
            pass  # pragma: no cover
    assert isinstance(info.value.__cause__, OSError)


async def test_bad_url_is_value_error() -> None:
    with pytest.raises(ValueError):
        async with open_websocket_client("http://example.com/"):
            pass  # pragma: no cover


async def test_request_path_query_headers_subprotocol(start_server: StartServer) -> None:
    seen: list[WebSocketRequest] = []

    async def handler(request: WebSocketRequest) -> None:
        seen.append(request)
        ws = await request.accept(subprotocol="v2", headers={"X-Server": "bridge-test"})
        assert ws.request is request and ws.subprotocol == "v2"
        await ws.send("ok")
        with pytest.raises(ConnectionClosed):
            await ws.receive()

    port = await start_server(handler)
    with trio.fail_after(5):
        async with open_websocket_client(
            url(port, "/media/stream?call=abc&codec=pcmu&empty="),
            headers=[("Authorization", "Bearer t0ken"), ("X-Multi", "1"), ("X-Multi", "2")],
            subprotocols=["v1", "v2"],
        ) as ws:
            assert await ws.receive() == "ok"
            assert ws.subprotocol == "v2"
            assert ws.response_headers is not None
            assert ws.response_headers["X-Server"] == "bridge-test"
    request = seen[0]
    assert request.path == "/media/stream"
    assert request.query == {"call": "abc", "codec": "pcmu", "empty": ""}
    assert request.headers["authorization"] == "Bearer t0ken"
    assert request.headers.get_all("X-Multi") == ["1", "2"]
    assert request.subprotocols == ("v1", "v2")
    assert request.remote[0] == "127.0.0.1"


async def test_accept_rejects_subprotocol_not_offered(start_server: StartServer) -> None:
    errors: list[Exception] = []

    async def handler(request: WebSocketRequest) -> None:
        try:
            await request.accept(subprotocol="nope")
        except ValueError as exc:
            errors.append(exc)
            await request.reject(400, "bad subprotocol")

    port = await start_server(handler)
    with trio.fail_after(5), pytest.raises(HandshakeRejected) as info:
        async with open_websocket_client(url(port), subprotocols=["v1"]):
            pass  # pragma: no cover
    assert info.value.status == 400
    assert len(errors) == 1


async def test_reject_401_with_json_body(start_server: StartServer) -> None:
    async def handler(request: WebSocketRequest) -> None:
        if request.headers.get("Authorization") != "Bearer good":
            await request.reject(
                401,
                json.dumps({"error": "unauthorized"}),
                headers={"Content-Type": "application/json", "WWW-Authenticate": "Bearer"},
            )
            return
        await echo_handler(request)

    port = await start_server(handler)
    with trio.fail_after(5):
        with pytest.raises(HandshakeRejected) as info:
            async with open_websocket_client(url(port), headers={"Authorization": "Bearer bad"}):
                pass  # pragma: no cover
        assert info.value.status == 401
        assert '{"error": "unauthorized"}' in str(info.value)
        async with open_websocket_client(url(port), headers={"Authorization": "Bearer good"}) as ws:
            await ws.send("in")
            assert await ws.receive() == "in"


async def test_reject_response_on_the_wire(start_server: StartServer) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.reject(404, b'{"error":"no route"}', headers=[("Content-Type", "application/json")])

    port = await start_server(handler)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(UPGRADE_REQUEST)
        response = await read_until_eof(stream)
        await stream.aclose()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"Content-Type: application/json" in head
    assert b"Content-Length: 20" in head
    assert body == b'{"error":"no route"}'


async def test_handler_returning_without_answer_is_500(start_server: StartServer) -> None:
    async def handler(request: WebSocketRequest) -> None:
        return

    port = await start_server(handler)
    with trio.fail_after(5), pytest.raises(HandshakeRejected) as info:
        async with open_websocket_client(url(port)):
            pass  # pragma: no cover
    assert info.value.status == 500


async def test_not_a_websocket_request_is_refused(start_server: StartServer) -> None:
    called: list[str] = []

    async def handler(request: WebSocketRequest) -> None:
        called.append(request.path)  # pragma: no cover

    port = await start_server(handler)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await read_until_eof(stream)
        await stream.aclose()
    assert response.startswith(b"HTTP/1.1 426 ")
    assert called == []


async def test_handler_exception_does_not_stop_the_server(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: WebSocketRequest) -> None:
        if request.path == "/boom-before":
            raise RuntimeError("boom before accept")
        ws = await request.accept()
        if request.path == "/boom-after":
            raise RuntimeError("boom after accept")
        await ws.send(await ws.receive())

    port = await start_server(handler)
    with trio.fail_after(5):
        with pytest.raises(HandshakeRejected) as info:
            async with open_websocket_client(url(port, "/boom-before")):
                pass  # pragma: no cover
        assert info.value.status == 500
        async with open_websocket_client(url(port, "/boom-after")) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.receive()
            # RFC 6455 §7.4.1: 1011, the server hit an unexpected condition.
            assert closed.value.code == 1011
        async with open_websocket_client(url(port, "/fine")) as ws:
            await ws.send("still serving")
            assert await ws.receive() == "still serving"
    crashes = [r for r in caplog.records if r.name == "bridge.transports" and "crashed" in r.message]
    assert len(crashes) == 2 and all(r.exc_info for r in crashes)


async def test_garbage_and_vanishing_clients_do_not_hurt_the_server(start_server: StartServer) -> None:
    answered = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        if request.path == "/slow-reject":
            await trio.sleep(0.1)  # the client is gone by now
            try:
                await request.reject(403, "too late")
            finally:
                answered.set()
            return
        await echo_handler(request)

    port = await start_server(handler)
    with trio.fail_after(5):
        # Not HTTP at all.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"\x16\x03\x01 this is not an upgrade request\r\n\r\n")
        assert await read_until_eof(stream) == b""
        await stream.aclose()
        # Connects and leaves at once.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.aclose()
        # Leaves while the handler deliberates; the rejection hits a closed socket.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(UPGRADE_REQUEST.replace(b"GET / ", b"GET /slow-reject "))
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        await stream.aclose()  # RST
        await answered.wait()
        # Still serving.
        async with open_websocket_client(url(port)) as ws:
            await ws.send("alive")
            assert await ws.receive() == "alive"


async def test_slowloris_is_dropped_after_handshake_timeout(start_server: StartServer) -> None:
    port = await start_server(echo_handler, handshake_timeout_s=0.3)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(UPGRADE_REQUEST[:40])  # half a request, then silence
        start = trio.current_time()
        assert await read_until_eof(stream) == b""  # dropped without an answer
        assert 0.25 <= trio.current_time() - start < 2.5
        await stream.aclose()


async def test_oversized_request_is_refused(start_server: StartServer) -> None:
    port = await start_server(echo_handler)
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        request = UPGRADE_REQUEST[:-2] + b"".join(
            b"X-Padding-%d: %s\r\n" % (i, b"a" * 1000) for i in range(40)
        )
        await stream.send_all(request + b"\r\n")
        response = await read_until_eof(stream)
        await stream.aclose()
    assert response.startswith(b"HTTP/1.1 431 ")


async def test_max_handshakes_answers_503(start_server: StartServer) -> None:
    port = await start_server(echo_handler, max_handshakes=2, handshake_timeout_s=5)
    with trio.fail_after(5):
        # Two clients that open TCP and stall hold both handshake slots.
        stalled = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        await trio.sleep(0.05)
        with pytest.raises(HandshakeRejected) as info:
            async with open_websocket_client(url(port)):
                pass  # pragma: no cover
        assert info.value.status == 503
        for stream in stalled:
            await stream.aclose()
        await trio.sleep(0.05)
        async with open_websocket_client(url(port)) as ws:
            await ws.send("room again")
            assert await ws.receive() == "room again"


async def test_bad_handshake_names_the_peer_even_after_a_reset(start_server: StartServer) -> None:
    """A client that sends half a request and resets: the report used to name it ":0"
    (getpeername() fails with ENOTCONN once the peer has reset; the address accept(2)
    returned is kept instead)."""
    reports: list[tuple[str, str, str]] = []
    port = await start_server(
        echo_handler, on_bad_handshake=lambda *report: reports.append(report)
    )
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        host, client_port = stream.socket.getsockname()[:2]
        await stream.send_all(b"GET /twilio HTTP/1.1\r\nHost: x\r\n")
        await trio.sleep(0.05)  # the server has read it
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()  # RST
        while not reports:
            await trio.sleep(0.01)
    peer, kind, why = reports[0]
    assert peer == f"{host}:{client_port}", (peer, why)
    assert kind == "bad_handshake"


async def test_nothing_sent_is_not_a_bad_handshake(start_server: StartServer) -> None:
    """Connect and close (a TCP health check): no report; the next request is served."""
    reports: list[tuple[str, str, str]] = []
    port = await start_server(echo_handler, on_bad_handshake=lambda *r: reports.append(r))
    with trio.fail_after(5):
        for _ in range(3):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.aclose()
        async with open_websocket_client(url(port)) as ws:
            await ws.send("hi")
            assert await ws.receive() == "hi"
    assert reports == []


async def test_handshakes_per_peer_are_limited_and_counted(start_server: StartServer) -> None:
    """Over max_handshakes_per_peer a connection is reset at accept (no 503, no task);
    another address is still served, and the stalled ones keep their places."""
    refusals: list[tuple[str, str]] = []
    port = await start_server(
        echo_handler,
        max_handshakes=8,
        max_handshakes_per_peer=2,
        handshake_timeout_s=5,
        on_refused=lambda peer, why: refusals.append((peer, why)),
    )
    with trio.fail_after(5):
        stalled = [
            await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")
            for _ in range(2)
        ]
        await trio.sleep(0.05)
        with pytest.raises(HandshakeError):
            async with open_websocket_client(url(port), local_address="127.0.0.2"):
                pass  # pragma: no cover
        async with open_websocket_client(url(port), local_address="127.0.0.3") as ws:
            await ws.send("another peer")
            assert await ws.receive() == "another peer"
        assert [why for _, why in refusals] == ["too_many_pending_per_peer"]
        assert refusals[0][0].startswith("127.0.0.2:")
        for stream in stalled:
            await stream.aclose()


async def test_keep_pending_holds_the_slot_until_released(start_server: StartServer) -> None:
    """accept(keep_pending=True): the connection still counts against the limits (a
    carrier stream waiting for its start message) until release_pending()."""
    go = trio.Event()
    handlers = 0

    async def handler(request: WebSocketRequest) -> None:
        nonlocal handlers
        handlers += 1
        ws = await request.accept(keep_pending=True)
        assert request.deadline > trio.current_time()
        if handlers == 1:
            await ws.receive()  # the "start" message
            await go.wait()
        request.release_pending()
        await echo_handler_on(ws)

    port = await start_server(handler, max_handshakes=1, handshake_timeout_s=5)
    with trio.fail_after(5):
        async with open_websocket_client(url(port)) as first:
            await first.send("start")
            await trio.sleep(0.05)
            with pytest.raises(HandshakeRejected) as info:  # the one slot is still held
                async with open_websocket_client(url(port)):
                    pass  # pragma: no cover
            assert info.value.status == 503
            go.set()
            await first.send("ok")
            assert await first.receive() == "ok"
            async with open_websocket_client(url(port)) as second:  # the slot is free
                await second.send("two")
                assert await second.receive() == "two"


async def echo_handler_on(ws: WebSocketConnection) -> None:
    try:
        while True:
            await ws.send(await ws.receive())
    except ConnectionClosed:
        pass


# ------------------------------------------------------------------------- liveness


async def test_send_timeout_when_peer_stops_reading(start_server: StartServer) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.accept()
        await trio.sleep_forever()  # never reads: the socket buffers fill up

    port = await start_server(handler)
    with trio.fail_after(10):
        async with open_websocket_client(url(port), send_timeout_s=0.3, ping_interval_s=None) as ws:
            chunk = b"\x00" * 65536
            with pytest.raises(TransportTimeout) as info:
                while True:
                    started = trio.current_time()
                    await ws.send(chunk)
            assert info.value.step == "send"
            assert 0.25 <= trio.current_time() - started < 2.5
            assert ws.closed
            with pytest.raises(ConnectionClosed):
                await ws.send(b"more")
            with pytest.raises(ConnectionClosed):
                await ws.receive()


async def test_keepalive_aborts_when_peer_never_answers_pings(start_server: StartServer) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.accept()
        await trio.sleep_forever()  # never reads, so never answers a ping

    port = await start_server(handler)
    with trio.fail_after(5):
        async with open_websocket_client(url(port), ping_interval_s=0.2, ping_timeout_s=0.2) as ws:
            start = trio.current_time()
            with pytest.raises(ConnectionClosed) as info:
                await ws.receive()
            assert (info.value.code, info.value.reason) == (1011, "keepalive ping timeout")
            assert 0.35 <= trio.current_time() - start < 2.5
            assert ws.close_code == 1011


async def test_keepalive_keeps_a_healthy_connection(start_server: StartServer) -> None:
    port = await start_server(echo_handler, ping_interval_s=0.05, ping_timeout_s=0.2)
    with trio.fail_after(5):
        async with open_websocket_client(url(port), ping_interval_s=0.05, ping_timeout_s=0.2) as ws:
            for i in range(10):
                await ws.send(f"{i}")
                assert await ws.receive() == f"{i}"
                await trio.sleep(0.05)
            assert not ws.closed


async def test_peer_reset_is_connection_closed_1006(nursery: trio.Nursery, start_server: StartServer) -> None:
    holder: list[WebSocketConnection] = []
    accepted = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        holder.append(await request.accept())
        accepted.set()
        await trio.sleep_forever()

    port = await start_server(handler)
    with trio.fail_after(5):
        async with open_websocket_client(url(port)) as ws:
            await accepted.wait()
            # The server side vanishes without a close frame (SO_LINGER 0: RST).
            server_ws = holder[0]
            sock = server_ws._sock
            assert sock is not None
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            await server_ws._abort(1006, "test")
            with pytest.raises(ConnectionClosed) as info:
                await ws.receive()
            assert info.value.code == 1006


# ------------------------------------------------------------------------- send_nowait


async def test_send_nowait_with_serve_writer_keeps_order(start_server: StartServer) -> None:
    port = await start_server(echo_handler)
    with trio.fail_after(10):
        async with open_websocket_client(url(port)) as ws, trio.open_nursery() as nursery:
            nursery.start_soon(ws.serve_writer)
            for i in range(1000):
                ws.send_nowait(i.to_bytes(4, "big") * 40)
                if i % 100 == 0:
                    await ws.send(f"async {i}")  # mixes with the non-blocking path
            expected: list[bytes | str] = []
            for i in range(1000):
                expected.append(i.to_bytes(4, "big") * 40)
                if i % 100 == 0:
                    expected.append(f"async {i}")
            assert [await ws.receive() for _ in expected] == expected
            assert ws.backlog_bytes == 0
            nursery.cancel_scope.cancel()


async def test_send_nowait_backlog_drains_and_reports(start_server: StartServer) -> None:
    start_reading = trio.Event()
    all_read = trio.Event()
    got: list[bytes | str] = []

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await start_reading.wait()
        while (message := await ws.receive()) != "end":
            got.append(message)
        all_read.set()

    port = await start_server(handler)
    drained: list[int] = []
    sent: list[bytes] = []
    with trio.fail_after(10):
        async with (
            open_websocket_client(url(port), send_timeout_s=5) as ws,
            trio.open_nursery() as nursery,
        ):
            ws.max_backlog_bytes = 256 << 20
            nursery.start_soon(ws.serve_writer, lambda: drained.append(ws.backlog_bytes))
            chunk = b"\x07" * 65536
            # The peer is not reading: fill the kernel buffers until a backlog forms.
            while ws.backlog_bytes == 0 or len(sent) < 20:
                assert len(sent) < 5000
                sent.append(len(sent).to_bytes(4, "big") + chunk)
                ws.send_nowait(sent[-1])
            ws.send_nowait("end")
            start_reading.set()
            await all_read.wait()
            nursery.cancel_scope.cancel()
    assert got == sent
    assert drained and drained[-1] == 0


async def test_serve_writer_times_out_on_a_peer_that_stopped_reading(start_server: StartServer) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.accept()
        await trio.sleep_forever()

    port = await start_server(handler)
    with trio.fail_after(10):
        async with open_websocket_client(url(port), send_timeout_s=0.3, ping_interval_s=None) as ws:
            ws.max_backlog_bytes = 256 << 20
            chunk = b"\x00" * 65536

            async def producer() -> None:
                # Paced frames keep coming while the peer reads nothing.
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        ws.send_nowait(chunk)
                        await trio.sleep(0.005)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer)
                with pytest.raises(TransportTimeout) as info:
                    await ws.serve_writer()
            assert info.value.step == "send"
            assert ws.closed
            with pytest.raises(ConnectionClosed):
                ws.send_nowait(b"more")


async def test_send_nowait_backlog_limit_fails_the_connection(start_server: StartServer) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.accept()
        await trio.sleep_forever()

    port = await start_server(handler)
    with trio.fail_after(10):
        async with open_websocket_client(url(port)) as ws:
            ws.max_backlog_bytes = 1 << 20
            chunk = b"\x00" * 65536
            with pytest.raises(ConnectionClosed) as info:
                for _ in range(10_000):
                    ws.send_nowait(chunk)
            assert "backlog" in info.value.reason
            assert ws.closed and ws.close_code == 1006


# ------------------------------------------------------------------------- TLS


async def test_wss_with_test_ca(start_server: StartServer, pki: Pki) -> None:
    port = await start_server(echo_handler, ssl_context=pki.server_context())
    with trio.fail_after(5):
        async with open_websocket_client(f"wss://127.0.0.1:{port}/", ca_file=pki.ca_file) as ws:
            for i in range(50):
                await ws.send(f"secure {i}")
                assert await ws.receive() == f"secure {i}"
            await ws.send(b"\x01" * 100_000)
            assert await ws.receive() == b"\x01" * 100_000
            await ws.close(4000, "tls bye")
        assert ws.close_code == 4000


async def test_wss_with_wrong_ca_fails(start_server: StartServer, pki: Pki) -> None:
    port = await start_server(echo_handler, ssl_context=pki.server_context())
    with trio.fail_after(5), pytest.raises(HandshakeError) as info:
        async with open_websocket_client(f"wss://127.0.0.1:{port}/", ca_file=pki.other_ca_file):
            pass  # pragma: no cover
    assert "certificate verify failed" in str(info.value)


def _trustme_pair() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context pinned to its CA) from a fresh trustme CA."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def test_tls_context_is_looked_up_per_connection(start_server: StartServer) -> None:
    (server_a, client_a), (server_b, client_b) = _trustme_pair(), _trustme_pair()
    current = [server_a]
    port = await start_server(echo_handler, ssl_context=lambda: current[0])
    with trio.fail_after(10):
        async with open_websocket_client(f"wss://127.0.0.1:{port}/", ssl_context=client_a) as old:
            await old.send("before")
            assert await old.receive() == "before"
            current[0] = server_b  # a certificate reload
            async with open_websocket_client(
                f"wss://127.0.0.1:{port}/", ssl_context=client_b
            ) as new:
                await new.send("after")
                assert await new.receive() == "after"
            # The connection made before the swap is untouched.
            await old.send("still")
            assert await old.receive() == "still"
        with pytest.raises(HandshakeError, match="certificate verify failed"):
            async with open_websocket_client(f"wss://127.0.0.1:{port}/", ssl_context=client_a):
                pass  # pragma: no cover


async def test_tls_handshake_deadline_and_failures_are_reported(
    start_server: StartServer,
) -> None:
    server, client = _trustme_pair()
    reports: list[tuple[str, str]] = []
    port = await start_server(
        echo_handler,
        ssl_context=server,
        handshake_timeout_s=30.0,  # the TLS deadline is its own
        tls_handshake_timeout_s=0.2,
        on_tls_error=lambda peer, kind, why: reports.append((kind, why)),
    )
    with trio.fail_after(10):
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        with contextlib.suppress(trio.BrokenResourceError):
            assert await silent.receive_some(1) == b""  # dropped at the deadline
        await silent.aclose()
        plain = await trio.open_tcp_stream("127.0.0.1", port)
        await plain.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(trio.BrokenResourceError):
            await plain.receive_some(100)
        await plain.aclose()
        while len(reports) < 2:
            await trio.sleep(0.01)
        async with open_websocket_client(f"wss://127.0.0.1:{port}/", ssl_context=client) as ws:
            await ws.send("ok")
            assert await ws.receive() == "ok"
    assert reports[0] == ("tls_handshake_timeout", "no TLS handshake within 0.2s")
    assert reports[1][0] == "tls_handshake_failed" and "TLS handshake failed" in reports[1][1]
    assert len(reports) == 2


async def test_request_target_is_the_raw_request_line(start_server: StartServer) -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []

    async def handler(request: WebSocketRequest) -> None:
        seen.append((request.path, request.target, request.query))
        await request.reject(404)

    port = await start_server(handler)
    with trio.fail_after(5), pytest.raises(HandshakeRejected):
        async with open_websocket_client(f"ws://127.0.0.1:{port}/a%20b?x=1%2F2&y"):
            pass  # pragma: no cover
    assert seen == [("/a%20b", "/a%20b?x=1%2F2&y", {"x": "1/2", "y": ""})]


# ------------------------------------------------------------------------- leaks


def _count_tasks(task: trio.lowlevel.Task) -> int:
    return 1 + sum(_count_tasks(child) for nursery in task.child_nurseries for child in nursery.child_tasks)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
async def test_no_fd_or_task_leak_after_200_cycles(start_server: StartServer) -> None:
    port = await start_server(echo_handler, ping_interval_s=5.0, ping_timeout_s=5.0)
    root = trio.lowlevel.current_root_task()
    with trio.fail_after(30):
        # One warm-up cycle so lazily created resources exist in the baseline.
        async with open_websocket_client(url(port)) as ws:
            await ws.send("warm")
            await ws.receive()
        await trio.testing.wait_all_tasks_blocked()
        fds, tasks = _open_fds(), _count_tasks(root)
        for i in range(200):
            async with open_websocket_client(url(port)) as ws:
                await ws.send(f"m{i}")
                assert await ws.receive() == f"m{i}"
                await ws.send(b"b")
                assert await ws.receive() == b"b"
        await trio.testing.wait_all_tasks_blocked()
        assert _open_fds() <= fds + 2
        assert _count_tasks(root) == tasks
