"""``bridge call``'s legs on the transports' pipes: how a broken or stalled peer ends a
call (reason and detail), on real sockets."""

from __future__ import annotations

import socket

import pytest
import trio

from bridge.tools._call import _MAX_PENDING, CallFailed, _tcp_leg

FRAME = bytes(323)  # one 20 ms AudioSocket slin frame with its header


def _pair() -> tuple[trio.SocketStream, socket.socket]:
    a, b = socket.socketpair()
    # Small kernel buffers, so that the leg's own backlog is what fills up.
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), b


async def test_a_peer_that_stops_reading_fails_the_call_at_the_byte_limit() -> None:
    stream, peer = _pair()
    with peer:
        async with stream:
            leg = _tcp_leg(stream)
            sent = 0
            with pytest.raises(CallFailed) as info:
                while sent < 4 * _MAX_PENDING:
                    leg.send_nowait(FRAME)
                    sent += len(FRAME)
            assert info.value.reason == "send_failed"
            assert info.value.detail == "connection closed: send backlog over its limit"
            # The limit is bridge call's (256 KiB), not the daemon's 4 MiB default.
            assert _MAX_PENDING <= sent <= _MAX_PENDING + 256 * 1024


async def test_a_backlog_is_flushed_by_the_writer_once_the_peer_reads() -> None:
    stream, peer = _pair()
    with peer:
        async with stream, trio.open_nursery() as nursery:
            leg = _tcp_leg(stream)
            nursery.start_soon(leg.serve)
            for _ in range(100):
                leg.send_nowait(FRAME)
            peer.setblocking(False)
            got = 0
            with trio.fail_after(5):
                while got < 100 * len(FRAME):
                    await trio.lowlevel.wait_readable(peer)
                    got += len(peer.recv(65536))
            assert got == 100 * len(FRAME)
            nursery.cancel_scope.cancel()


async def test_the_server_closing_is_a_remote_hangup_that_says_eof() -> None:
    class Sink:
        def on_message(self, message: object, now: float) -> None:
            raise AssertionError("nothing was sent")

    stream, peer = _pair()
    async with stream:
        leg = _tcp_leg(stream)
        peer.close()
        with trio.fail_after(5), pytest.raises(CallFailed) as info:
            await leg.receive_loop(Sink())  # type: ignore[arg-type]
    assert info.value.reason == "remote_hangup"
    assert info.value.detail == "connection closed: EOF"


async def test_sending_to_a_closed_peer_is_send_failed() -> None:
    stream, peer = _pair()
    async with stream:
        leg = _tcp_leg(stream)
        peer.close()
        with pytest.raises(CallFailed) as info:
            for _ in range(100):  # the first write may still be accepted
                leg.send_nowait(FRAME)
                await trio.sleep(0.001)
    assert info.value.reason == "send_failed"
    assert info.value.detail.startswith("connection closed: ")
