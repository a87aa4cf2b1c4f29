"""The read poller and poll-mode reading (``read_ready``) of TCP pipes and WebSockets."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
import trio_websocket

from bridge import ConnectionClosed
from bridge.dialects import Message
from bridge.streams._polled import serve_polled
from bridge.transports import Poller, open_websocket_client
from bridge.transports._pipes import TcpPipe


@pytest.fixture
async def poller(nursery: trio.Nursery) -> AsyncIterator[Poller]:
    p = Poller()
    nursery.start_soon(p.serve)
    yield p


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def test_one_wake_up_serves_every_ready_socket(poller: Poller) -> None:
    pairs = [pair() for _ in range(5)]
    got: list[tuple[int, bytes]] = []
    regs = []
    for i, (a, _) in enumerate(pairs):

        def on_readable(i: int = i, a: socket.socket = a) -> None:
            got.append((i, a.recv(100)))

        regs.append(poller.register(a.fileno(), on_readable))
    with trio.fail_after(5):
        await trio.testing.wait_all_tasks_blocked()
        before = poller.wakeups
        for i, (_, b) in enumerate(pairs):
            b.send(b"x%d" % i)
        while len(got) < 5:
            await trio.sleep(0.001)
    assert sorted(got) == [(i, b"x%d" % i) for i in range(5)]
    assert poller.wakeups - before <= 2  # all five in one or two wake-ups, not five
    assert poller.registered == 5
    for reg in regs:
        reg.cancel()
    assert poller.registered == 0
    for a, b in pairs:
        a.close()
        b.close()


async def test_unregistered_fd_is_not_called_and_a_failing_callback_is_dropped(
    poller: Poller, caplog: pytest.LogCaptureFixture
) -> None:
    (a1, b1), (a2, b2) = pair(), pair()
    calls: list[str] = []

    def boom() -> None:
        calls.append("boom")
        raise RuntimeError("a bug")

    def fine() -> None:
        calls.append("fine")
        a2.recv(100)

    poller.register(a1.fileno(), boom)
    with poller.register(a2.fileno(), fine):
        with trio.fail_after(5):
            b1.send(b"1")
            b2.send(b"2")
            while "fine" not in calls or "boom" not in calls:
                await trio.sleep(0.001)
            b1.send(b"again")  # boom is unregistered: never called again
            b2.send(b"again")
            while calls.count("fine") < 2:
                await trio.sleep(0.001)
        assert calls.count("boom") == 1
        assert poller.registered == 1
    assert poller.registered == 0
    assert "read callback failed" in caplog.text
    b2.send(b"after")
    await trio.sleep(0.01)
    assert calls.count("fine") == 2  # out of the with block: not called
    for s in (a1, b1, a2, b2):
        s.close()


async def test_a_reused_fd_number_registers_again(poller: Poller) -> None:
    a, b = pair()
    old = poller.register(a.fileno(), lambda: None)
    fd = a.fileno()
    a.close()  # closed while registered: the kernel drops it from the epoll
    c, d = pair()
    os_fd = c.fileno()
    got: list[bytes] = []
    new = poller.register(os_fd, lambda: got.append(c.recv(10)))
    old.cancel()  # a no-op for the newer registration, even on the same number
    with trio.fail_after(5):
        d.send(b"hi")
        while not got:
            await trio.sleep(0.001)
    assert got == [b"hi"]
    assert fd == os_fd or poller.registered == 1
    new.cancel()
    for s in (b, c, d):
        s.close()


async def test_serve_ends_cleanly_and_late_cancels_are_harmless() -> None:
    p = Poller()
    a, b = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(p.serve)
        reg = p.register(a.fileno(), lambda: None)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    reg.cancel()  # after the poller closed: nothing to do, no error
    with pytest.raises(trio.ClosedResourceError):
        p.register(b.fileno(), lambda: None)
    a.close()
    b.close()


async def test_tcp_pipe_read_ready() -> None:
    a, b = trio.socket.socketpair()
    pipe = TcpPipe(trio.SocketStream(a))
    assert pipe.read_ready() == []  # nothing there
    await b.send(b"abc")
    assert pipe.read_ready() == [b"abc"]
    b.close()
    assert pipe.read_ready() is None  # EOF: receive() takes over, and sees it too
    with pytest.raises(ConnectionClosed):
        await pipe.receive()
    await pipe.aclose()
    assert pipe.read_ready() is None and pipe.fileno() == -1


async def test_serve_polled_tcp_pipe_reads_then_hands_over_at_eof(poller: Poller) -> None:
    a, b = trio.socket.socketpair()
    pipe = TcpPipe(trio.SocketStream(a))
    got: list[Message] = []

    def handle(message: Message) -> bool:
        got.append(message)
        return False

    async def peer() -> None:
        for i in range(20):
            await b.send(b"%02d" % i)
            await trio.sleep(0.002)
        b.close()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer)
            assert await serve_polled(pipe, poller, handle) is False  # EOF
    assert b"".join(got) == b"".join(b"%02d" % i for i in range(20))  # type: ignore[arg-type]
    assert poller.registered == 0
    with pytest.raises(ConnectionClosed):
        await pipe.receive()
    await pipe.aclose()


async def test_serve_polled_wakes_when_another_task_closes_the_pipe(poller: Poller) -> None:
    a, b = trio.socket.socketpair()
    pipe = TcpPipe(trio.SocketStream(a))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def close_soon() -> None:
                await trio.sleep(0.05)
                await pipe.aclose()

            nursery.start_soon(close_soon)
            assert await serve_polled(pipe, poller, lambda m: False) is False
    assert poller.registered == 0
    b.close()


async def test_serve_polled_reraises_the_handlers_error_in_the_reader(poller: Poller) -> None:
    a, b = trio.socket.socketpair()
    pipe = TcpPipe(trio.SocketStream(a))

    def handle(message: Message) -> bool:
        raise ValueError("bad input")

    with trio.fail_after(5):
        await b.send(b"x")
        with pytest.raises(ValueError, match="bad input"):
            await serve_polled(pipe, poller, handle)
    assert poller.registered == 0
    await pipe.aclose()
    b.close()


async def test_websocket_poll_mode_against_trio_websocket(
    poller: Poller, nursery: trio.Nursery
) -> None:
    """trio-websocket as the independent peer: messages in poll mode, a ping answered
    from inside the poller's callback, then a normal close handed to receive()."""
    pong_ok = trio.Event()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        for i in range(50):
            await ws.send_message(b"frame %d" % i)
            await trio.sleep(0.001)
        with trio.fail_after(3):
            await ws.ping(b"are you there")  # returns once our pong arrives
        pong_ok.set()
        await ws.send_message("last")
        await ws.aclose(1000, "bye")

    server = await nursery.start(
        trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None
    )
    port = server.port
    got: list[Message] = []

    def handle(message: Message) -> bool:
        got.append(message)
        return False

    with trio.fail_after(10):
        async with open_websocket_client(f"ws://127.0.0.1:{port}/") as conn:
            polled = 0
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    if not await serve_polled(conn, poller, handle):
                        polled += 1
                    handle(await conn.receive())
    assert polled >= 1  # the close frame went back to receive()
    assert pong_ok.is_set()
    assert got == [b"frame %d" % i for i in range(50)] + ["last"]
    assert info.value.code == 1000
    assert poller.registered == 0


async def test_poll_mode_does_not_log_for_a_normal_run(
    poller: Poller, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    a, b = trio.socket.socketpair()
    pipe = TcpPipe(trio.SocketStream(a))
    with trio.fail_after(5):
        await b.send(b"hello")
        assert await serve_polled(pipe, poller, lambda m: True) is True
    assert not caplog.records
    await pipe.aclose()
    b.close()
