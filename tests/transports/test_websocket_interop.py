"""Interop with an independent implementation: trio-websocket (on wsproto).

Our client against a trio-websocket server, and a trio-websocket client against our
server: echo of text and binary both ways, pings, and close codes seen correctly.
"""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from bridge import ConnectionClosed, HandshakeRejected
from bridge.transports import WebSocketRequest, open_websocket_client

from .conftest import StartServer, echo_handler


async def start_tws_server(
    nursery: trio.Nursery,
    handler: object,
    **kwargs: object,
) -> int:
    server = await nursery.start(
        lambda task_status: trio_websocket.serve_websocket(
            handler, "127.0.0.1", 0, None, task_status=task_status, **kwargs
        )
    )
    return int(server.port)


# ----------------------------------------------------------------- our client -> tws server


async def test_our_client_to_trio_websocket_server(nursery: trio.Nursery) -> None:
    closes: list[tuple[int, str | None]] = []
    done = trio.Event()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                message = await ws.get_message()
                if message == "close-me":
                    await ws.aclose(4001, "server bye")
                    return
                await ws.send_message(message)
        except trio_websocket.ConnectionClosed as exc:
            closes.append((exc.reason.code, exc.reason.reason))
        finally:
            done.set()

    port = await start_tws_server(nursery, handler)
    with trio.fail_after(5):
        async with open_websocket_client(f"ws://127.0.0.1:{port}/interop") as ws:
            for i in range(100):
                await ws.send(f"text {i} é")
                await ws.send(bytes([i]) * (i + 1))
            for i in range(100):
                assert await ws.receive() == f"text {i} é"
                assert await ws.receive() == bytes([i]) * (i + 1)
            big = b"\xab" * 60_000  # several TCP segments, 64-bit length header
            await ws.send(big)
            assert await ws.receive() == big
            await ws.close(4000, "client bye")
        await done.wait()
    assert closes == [(4000, "client bye")]

    # Server-initiated close, seen by our client with its code and reason.
    with trio.fail_after(5):
        async with open_websocket_client(f"ws://127.0.0.1:{port}/interop") as ws:
            await ws.send("close-me")
            with pytest.raises(ConnectionClosed) as info:
                await ws.receive()
            assert (info.value.code, info.value.reason) == (4001, "server bye")


async def test_our_client_answers_trio_websocket_pings(nursery: trio.Nursery) -> None:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        for i in range(5):
            with trio.fail_after(2):
                await ws.ping(f"p{i}".encode())  # returns when our pong arrives
        await ws.send_message("all pongs received")
        try:
            await ws.get_message()
        except trio_websocket.ConnectionClosed:
            pass

    port = await start_tws_server(nursery, handler)
    with trio.fail_after(5):
        async with open_websocket_client(f"ws://127.0.0.1:{port}/") as ws:
            assert await ws.receive() == "all pongs received"


async def test_our_client_subprotocol_with_trio_websocket(nursery: trio.Nursery) -> None:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        assert request.proposed_subprotocols == ("audio.v1", "audio.v2")
        ws = await request.accept(subprotocol="audio.v2")
        await ws.send_message(ws.path)
        try:
            await ws.get_message()
        except trio_websocket.ConnectionClosed:
            pass

    port = await start_tws_server(nursery, handler)
    with trio.fail_after(5):
        async with open_websocket_client(
            f"ws://127.0.0.1:{port}/p?x=1", subprotocols=["audio.v1", "audio.v2"]
        ) as ws:
            assert ws.subprotocol == "audio.v2"
            assert await ws.receive() == "/p?x=1"


async def test_trio_websocket_rejection_seen_by_our_client(nursery: trio.Nursery) -> None:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        await request.reject(403, body=b"forbidden here")

    port = await start_tws_server(nursery, handler)
    with trio.fail_after(5), pytest.raises(HandshakeRejected) as info:
        async with open_websocket_client(f"ws://127.0.0.1:{port}/"):
            pass  # pragma: no cover
    assert info.value.status == 403
    assert "forbidden here" in str(info.value)


async def test_trio_websocket_server_message_limit_gives_1009(nursery: trio.Nursery) -> None:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await ws.get_message()
        except trio_websocket.ConnectionClosed:
            pass

    port = await start_tws_server(nursery, handler, max_message_size=1000)
    with trio.fail_after(5):
        async with open_websocket_client(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send(b"x" * 5000)
            with pytest.raises(ConnectionClosed) as info:
                await ws.receive()
            assert info.value.code == 1009


# ----------------------------------------------------------------- tws client -> our server


async def test_trio_websocket_client_to_our_server(start_server: StartServer) -> None:
    port = await start_server(echo_handler)
    with trio.fail_after(5):
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/x") as ws:
            for i in range(100):
                await ws.send_message(f"hello {i} ü")
                assert await ws.get_message() == f"hello {i} ü"
                await ws.send_message(i.to_bytes(2, "big") * 50)
                assert await ws.get_message() == i.to_bytes(2, "big") * 50
            big = bytes(range(256)) * 300
            await ws.send_message(big)
            assert await ws.get_message() == big
            # Our server answers pings (RFC 6455 §5.5.2); ping() waits for the pong.
            await ws.ping(b"are you there")


async def test_trio_websocket_client_close_code_seen_by_our_server(start_server: StartServer) -> None:
    seen: list[tuple[int | None, str]] = []
    done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send(await ws.receive())
        except ConnectionClosed as exc:
            seen.append((exc.code, exc.reason))
        done.set()

    port = await start_server(handler)
    with trio.fail_after(5):
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send_message("one")
            assert await ws.get_message() == "one"
            await ws.aclose(4002, "tws client bye")
        await done.wait()
    assert seen == [(4002, "tws client bye")]


async def test_our_server_close_code_seen_by_trio_websocket_client(start_server: StartServer) -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send(b"bye soon")
        await ws.close(4003, "our server bye")

    port = await start_server(handler)
    with trio.fail_after(5):
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
            assert await ws.get_message() == b"bye soon"
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason.code == 4003
            assert info.value.reason.reason == "our server bye"


async def test_our_server_rejection_seen_by_trio_websocket_client(start_server: StartServer) -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.reject(401, '{"error":"token"}', headers={"Content-Type": "application/json"})

    port = await start_server(handler)
    with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/"):
            pass  # pragma: no cover
    assert info.value.status_code == 401
    assert info.value.body == b'{"error":"token"}'


async def test_our_server_limit_closes_trio_websocket_client_with_1009(start_server: StartServer) -> None:
    port = await start_server(echo_handler, max_message_bytes=1000)
    with trio.fail_after(5):
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send_message(b"y" * 1000)
            assert await ws.get_message() == b"y" * 1000
            await ws.send_message(b"y" * 1001)
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await ws.get_message()
            assert info.value.reason.code == 1009
