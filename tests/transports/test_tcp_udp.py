"""TCP listener helpers and the UDP (RTP) port pool, on real loopback sockets."""

from __future__ import annotations

import errno
import functools
import random
import socket

import pytest
import trio

from bridge import TransportError
from bridge.transports import (
    UdpPortPool,
    open_tcp_listener,
    open_tcp_listeners,
    open_udp_socket,
    serve_tcp,
    set_nodelay,
)

# ------------------------------------------------------------------------------ TCP


async def test_open_tcp_listener_port_zero_reports_real_port() -> None:
    listener = await open_tcp_listener("127.0.0.1", 0)
    try:
        host, port = listener.socket.getsockname()
        assert host == "127.0.0.1" and port > 0
        assert listener.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        with trio.fail_after(5):
            client = await trio.open_tcp_stream("127.0.0.1", port)
            server = await listener.accept()
            await client.send_all(b"ping")
            assert await server.receive_some(10) == b"ping"
            await client.aclose()
            await server.aclose()
    finally:
        await listener.aclose()


async def test_reuse_port_lets_two_listeners_share_a_port() -> None:
    first = await open_tcp_listener("127.0.0.1", 0, reuse_port=True)
    port = first.socket.getsockname()[1]
    try:
        second = await open_tcp_listener("127.0.0.1", port, reuse_port=True)
        assert second.socket.getsockname()[1] == port
        await second.aclose()
        # Without SO_REUSEPORT on the newcomer the port is taken.
        with pytest.raises(OSError) as info:
            await open_tcp_listener("127.0.0.1", port)
        assert info.value.errno == errno.EADDRINUSE
    finally:
        await first.aclose()


async def test_open_tcp_listeners_binds_every_address() -> None:
    listeners = await open_tcp_listeners("127.0.0.1", 0, backlog=16)
    try:
        assert len(listeners) == 1
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_set_nodelay() -> None:
    listener = await open_tcp_listener("127.0.0.1", 0)
    port = listener.socket.getsockname()[1]
    with trio.fail_after(5):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        set_nodelay(client, False)
        assert client.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        set_nodelay(client)
        assert client.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        await client.aclose()
    await listener.aclose()


async def test_serve_tcp_reports_addresses_and_sets_nodelay(nursery: trio.Nursery) -> None:
    nodelay: list[int] = []

    async def handler(stream: trio.SocketStream) -> None:
        nodelay.append(stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        async with stream:
            while data := await stream.receive_some(1024):
                await stream.send_all(data.upper())

    addresses = await nursery.start(
        functools.partial(serve_tcp, handler, "127.0.0.1", 0, reuse_port=True)
    )
    assert len(addresses) == 1 and addresses[0][0] == "127.0.0.1" and addresses[0][1] > 0
    with trio.fail_after(5):
        async with await trio.open_tcp_stream(*addresses[0]) as client:
            await client.send_all(b"audio socket")
            assert await client.receive_some(1024) == b"AUDIO SOCKET"
    assert nodelay and nodelay[0] != 0


# ------------------------------------------------------------------------------ UDP


async def test_open_udp_socket_port_zero_and_datagrams() -> None:
    a = await open_udp_socket("127.0.0.1", 0)
    b = await open_udp_socket("127.0.0.1", 0)
    with a, b:
        port_a, port_b = a.getsockname()[1], b.getsockname()[1]
        assert port_a > 0 and port_b > 0 and port_a != port_b
        with trio.fail_after(5):
            await a.sendto(b"rtp", ("127.0.0.1", port_b))
            data, source = await b.recvfrom(2048)
        assert data == b"rtp" and source == ("127.0.0.1", port_a)


def free_udp_range(size: int) -> int:
    """A first port such that ``size`` consecutive UDP ports are free right now."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(20000, 60000 - size)
        probes: list[socket.socket] = []
        try:
            for port in range(first, first + size):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return first
    raise RuntimeError("no free UDP port range")  # pragma: no cover


async def test_pool_allocates_until_exhausted_then_reuses_released_ports() -> None:
    first = free_udp_range(4)
    pool = UdpPortPool("127.0.0.1", first, first + 3)
    try:
        assert pool.size == 4 and pool.in_use == 0
        allocated = [await pool.allocate() for _ in range(4)]
        ports = [port for _, port in allocated]
        assert ports == [first, first + 1, first + 2, first + 3]
        assert all(sock.getsockname()[1] == port for sock, port in allocated)
        assert pool.in_use == 4
        with pytest.raises(TransportError, match="RTP port range exhausted"):
            await pool.allocate()

        pool.release(first + 1)
        assert pool.in_use == 3
        assert allocated[1][0].fileno() == -1  # the pool closed the socket
        pool.release(first + 1)  # idempotent
        sock, port = await pool.allocate()
        assert port == first + 1 and pool.in_use == 4
        assert sock.getsockname()[1] == first + 1
    finally:
        pool.close()
    assert pool.in_use == 0


async def test_pool_round_robin_does_not_reuse_a_just_released_port() -> None:
    first = free_udp_range(4)
    pool = UdpPortPool("127.0.0.1", first, first + 3)
    try:
        _, a = await pool.allocate()
        pool.release(a)
        _, b = await pool.allocate()
        assert (a, b) == (first, first + 1)
    finally:
        pool.close()


async def test_pool_skips_ports_held_by_others() -> None:
    first = free_udp_range(3)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", first + 1))  # another program holds the middle port
    pool = UdpPortPool("127.0.0.1", first, first + 2)
    try:
        ports = [(await pool.allocate())[1] for _ in range(2)]
        assert ports == [first, first + 2]
        with pytest.raises(TransportError, match="exhausted"):
            await pool.allocate()
        squatter.close()
        _, port = await pool.allocate()
        assert port == first + 1
    finally:
        squatter.close()
        pool.close()


async def test_pool_even_ports_for_rtp() -> None:
    first = free_udp_range(6)
    first += first % 2  # start even
    pool = UdpPortPool("127.0.0.1", first, first + 4, step=2)
    try:
        ports = [(await pool.allocate())[1] for _ in range(pool.size)]
        assert ports == [first, first + 2, first + 4]
    finally:
        pool.close()


def test_pool_rejects_bad_range() -> None:
    with pytest.raises(ValueError):
        UdpPortPool("127.0.0.1", 5000, 4000)
    with pytest.raises(ValueError):
        UdpPortPool("127.0.0.1", 0, 10)
